//! `DELETE /admin/lockouts/{source}`: an operator ends a source's lockout (on every replica,
//! through Redis when there is one) and forgets its strikes. The admin lock has already written
//! the `admin_request` audit line (with the token's fingerprint); the lockout writes an
//! `auth_lockout_lifted` audit line naming the source and the request id.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::admin::error;
use super::state::Shared;
use crate::request_id::RequestId;
use crate::security::{Lifted, Source};

/// Ends the lockout of `{source}`: an IPv4 address, or any IPv6 address of the /64 (for the
/// `2001:db8:1:2::/64` that `/admin/state` shows, `2001:db8:1:2::` will do).
pub(super) async fn lift(shared: web::Data<Arc<Shared>>, req: HttpRequest, source: web::Path<String>) -> HttpResponse {
    let Some(lockout) = &shared.lockout else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "lockouts are off (no COURIER_CLIENTS_FILE, or COURIER_AUTH_LOCKOUT_THRESHOLD=0)",
        );
    };
    let Some(source) = Source::parse(&source) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "name the source by an IP address (for IPv6, any address of the /64)",
        );
    };
    let request_id = RequestId::of(req.headers());
    match lockout.lift(source, request_id.as_str()).await {
        Lifted::Ended => HttpResponse::Ok().json(json!({"source": source.to_string(), "lifted": true})),
        Lifted::NotLocked => error(StatusCode::NOT_FOUND, "not_found", "this source is not locked out"),
        Lifted::SharedUnavailable => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shared_state_unavailable",
            "lifted on this replica only: Redis could not be reached, so other replicas keep the lockout; retry",
        ),
    }
}
