//! The admin listener's lock. Every admin route but the three that scrapers and probes need
//! ([`OPEN_PATHS`]: `/metrics`, `/healthz`, `/readyz`) requires the admin token as
//! `Authorization: Bearer <token>`, else 401 `admin_unauthorized` in the one error shape.
//!
//! Why an allow-list in front of the router: the lock wraps the whole admin app and runs
//! before routing, so a route added later is locked unless someone adds it to the list.
//! Forgetting makes a route too closed, never too open, and an unknown path is refused like a
//! locked one (a caller without the token learns nothing about which routes exist).
//!
//! Without a configured token the locked routes are let through (`unlocked`): config refuses
//! that unless the admin listener is bound to a loopback address (see `config::AdminConfig`).
//! The token in use is read from [`crate::reload::Credentials`] at each request, so a rotated
//! token file takes effect at the reload and the old token is refused from then on.
//!
//! Every request to a locked route, let through or refused, writes one `admin_request` audit
//! line (method, route, outcome, status, peer address, request id, token fingerprint) and
//! counts in `courier_admin_requests_total{outcome}`, both from [`audit`]. The fingerprint is
//! the first 12 hex digits of the presented token's SHA-256: enough to tell the old token from
//! the new one during a rotation, or a stranger's guess from either; never the token.

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, AUTHORIZATION};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, Error};
use slog::info;

use super::errors::ApiError;
use super::state::Shared;
use crate::config::{token_fingerprint, AdminToken};
use crate::metrics::AdminOutcome;
use crate::request_id::RequestId;

/// The admin paths open without the token: what Prometheus and health probes call.
pub const OPEN_PATHS: [&str; 3] = ["/metrics", "/healthz", "/readyz"];

/// Lets a request to an open path through, and one to any other path only with the admin
/// token (or while no token is configured). Wrap the admin app in it with
/// `actix_web::middleware::from_fn(lock)`.
pub async fn lock(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    if OPEN_PATHS.contains(&req.path()) {
        return next.call(req).await.map(ServiceResponse::map_into_left_body);
    }
    let Some(shared) = req.app_data::<web::Data<Arc<Shared>>>().cloned() else {
        // Not reachable in courier (the admin app always carries it); refuse rather than open.
        let response = ApiError::AdminUnauthorized.response(&RequestId::generate());
        return Ok(req.into_response(response).map_into_right_body());
    };
    let presented = bearer(req.headers());
    let token = shared.credentials.admin_token.load();
    let outcome = judge((*token).as_ref(), presented);
    let mut access = Access {
        method: req.method().clone(),
        route: route_of(req.method(), req.path()),
        outcome,
        status: StatusCode::UNAUTHORIZED,
        peer: req.peer_addr(),
        request_id: RequestId::of(req.headers()),
        fingerprint: presented.map(token_fingerprint),
    };
    if outcome.allowed() {
        let answered = next.call(req).await;
        access.status = match &answered {
            Ok(response) => response.status(),
            Err(error) => error.as_response_error().status_code(),
        };
        audit(&shared, &access);
        answered.map(ServiceResponse::map_into_left_body)
    } else {
        audit(&shared, &access);
        let response = ApiError::AdminUnauthorized.response(&access.request_id);
        Ok(req.into_response(response).map_into_right_body())
    }
}

/// The token of `Authorization: Bearer <token>` (the scheme in any case, as RFC 9110 allows).
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    let token = token.trim_ascii();
    (scheme.eq_ignore_ascii_case(b"bearer ") && !token.is_empty()).then_some(token)
}

/// Whether a presented token opens the locked routes.
fn judge(token: Option<&AdminToken>, presented: Option<&[u8]>) -> AdminOutcome {
    match (token, presented) {
        (None, _) => AdminOutcome::Unlocked,
        (Some(_), None) => AdminOutcome::MissingToken,
        (Some(token), Some(presented)) if token.matches(presented) => AdminOutcome::Allowed,
        (Some(_), Some(_)) => AdminOutcome::WrongToken,
    }
}

/// The route pattern a request names (`/admin/cache/{key}`), or `other`: audit lines carry
/// patterns, never raw paths, like every other log line.
fn route_of(method: &Method, path: &str) -> &'static str {
    let matches = |pattern: &str| {
        let (mut want, mut got) = (pattern.split('/'), path.split('/'));
        loop {
            match (want.next(), got.next()) {
                (None, None) => return true,
                (Some(w), Some(g)) if w == g || (w.starts_with('{') && !g.is_empty()) => {}
                _ => return false,
            }
        }
    };
    super::admin::routes().into_iter().find(|(m, p)| m == method && matches(p)).map_or("other", |(_, p)| p)
}

/// One request to a locked route, as the audit records it.
struct Access {
    method: Method,
    route: &'static str,
    outcome: AdminOutcome,
    status: StatusCode,
    peer: Option<SocketAddr>,
    request_id: RequestId,
    fingerprint: Option<String>,
}

/// The audit event: one log line and one count, so the two cannot drift.
fn audit(shared: &Shared, access: &Access) {
    shared.metrics.admin_requests.with_label_values(&[access.outcome.as_str()]).inc();
    info!(shared.log, "admin_request";
        "method" => access.method.as_str(),
        "route" => access.route,
        "outcome" => access.outcome.as_str(),
        "status" => access.status.as_u16(),
        "peer" => access.peer.map_or_else(|| "unknown".to_owned(), |peer| peer.to_string()),
        "request_id" => access.request_id.as_str(),
        "token_fingerprint" => access.fingerprint.as_deref().unwrap_or("none"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;
    use secrecy::SecretString;

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(authorization).unwrap());
        headers
    }

    #[test]
    fn the_bearer_token_is_taken_from_the_authorization_header() {
        assert_eq!(bearer(&headers("Bearer abc")), Some(&b"abc"[..]));
        assert_eq!(bearer(&headers("bearer  abc ")), Some(&b"abc"[..]));
        assert_eq!(bearer(&headers("Basic YWJj")), None);
        assert_eq!(bearer(&headers("Bearer ")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn only_the_configured_token_opens_a_locked_route() {
        let token = AdminToken::new(&SecretString::from("admin-token-0123456789"));
        assert_eq!(judge(Some(&token), Some(b"admin-token-0123456789")), AdminOutcome::Allowed);
        assert_eq!(judge(Some(&token), Some(b"admin-token-guess")), AdminOutcome::WrongToken);
        assert_eq!(judge(Some(&token), None), AdminOutcome::MissingToken);
        assert_eq!(judge(None, None), AdminOutcome::Unlocked);
        assert_eq!(judge(None, Some(b"anything")), AdminOutcome::Unlocked);
    }

    #[test]
    fn requests_are_named_by_their_route_pattern() {
        assert_eq!(route_of(&Method::DELETE, &format!("/admin/cache/{}", "a".repeat(64))), "/admin/cache/{key}");
        assert_eq!(route_of(&Method::DELETE, "/admin/cache"), "/admin/cache");
        assert_eq!(route_of(&Method::POST, "/admin/breaker"), "/admin/breaker");
        assert_eq!(route_of(&Method::PUT, "/admin/breaker"), "other");
        assert_eq!(route_of(&Method::GET, "/admin/secret-stuff"), "other");
        assert_eq!(route_of(&Method::DELETE, "/admin/cache/"), "other");
    }
}
