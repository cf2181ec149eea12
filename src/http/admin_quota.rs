//! `PUT /admin/quota/{window}`: an operator sets the current count of a quota window, to
//! reconcile courier's count with the provider's billing. The admin lock has already written
//! the `admin_request` audit line (with the token's fingerprint); this writes what changed.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use slog::warn;

use super::admin::error;
use super::state::Shared;
use crate::actors::quota::SetUsedError;

/// The most a window's count may be set to.
const MAX_USED: u64 = 1_000_000_000_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetUsed {
    used: u64,
}

/// `{"used": N}`: sets the window's current count; answers once the store holds it, with the
/// window as `/admin/state` shows it.
pub(super) async fn set_used(
    shared: web::Data<Arc<Shared>>,
    window: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let Some(quota) = &shared.quota else {
        return error(StatusCode::NOT_FOUND, "not_found", "no quota windows are configured (EXTERNAL_API_QUOTAS)");
    };
    let used = match serde_json::from_slice::<SetUsed>(&body) {
        Ok(SetUsed { used }) if used <= MAX_USED => used,
        _ => return error(StatusCode::BAD_REQUEST, "invalid_request", "send {\"used\": <whole number, 0 to 10^12>}"),
    };
    match quota.set_used(&window, used).await {
        Ok(before) => {
            warn!(shared.log, "quota_used_set"; "window" => window.as_str(), "before" => before, "after" => used);
            let state = quota.state_json();
            let entry = state["windows"]
                .as_array()
                .and_then(|windows| windows.iter().find(|w| w["window"] == json!(window.as_str())))
                .cloned()
                .unwrap_or_default();
            HttpResponse::Ok().json(entry)
        }
        Err(SetUsedError::NoSuchWindow(names)) => {
            let message = format!("no quota window \"{window}\"; the windows are: {}", names.join(", "));
            error(StatusCode::NOT_FOUND, "not_found", &message)
        }
        Err(SetUsedError::Unavailable(reason)) => {
            warn!(shared.log, "quota_used_set_failed"; "window" => window.as_str(), "error" => reason);
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "quota_unavailable",
                "the quota store could not save the count; retry",
            )
        }
    }
}
