//! Every error courier answers, mapped to its HTTP status, `code`, retryability and
//! `Retry-After` in this one place. The pipeline's failures ([`pipeline::Error`]) carry their
//! own code and words, shared with the job runner; their status and headers are set here.
//!
//! One JSON shape for all of them:
//! `{"success": false, "error": {"code", "message", "retryable"}, "request_id"}`.
//! Upstream failures are 502 (504 for timeouts), never 500 or 400; the only upstream text
//! that reaches a client is the upstream's own error message for a request it refused.

use std::borrow::Cow;
use std::time::Duration;

use actix_web::http::header::{HeaderValue, ALLOW, RETRY_AFTER};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use serde::Serialize;

use crate::pipeline;
use crate::request_id::RequestId;
use crate::upstream::Outcome;

/// An error answer of courier's API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// The body is not valid JSON.
    InvalidJson(String),
    /// The body is JSON but not a valid request; the message names the field.
    InvalidRequest(Cow<'static, str>),
    /// The pipeline gave no answer: the upstream failed or refused, its budget, token or
    /// circuit stood in the way, or the deadline passed.
    Pipeline(pipeline::Error),
    /// No or an unknown client key.
    Unauthorized,
    /// The caller's source presented too many wrong keys: locked out for this long.
    AuthLockedOut(Duration),
    /// A locked admin route without the admin token (admin listener only).
    AdminUnauthorized,
    /// No such route or request id.
    NotFound,
    /// The route exists, the method does not; the methods it has (the `Allow` header).
    MethodNotAllowed(HeaderValue),
    /// The body exceeds the limit (bytes).
    PayloadTooLarge(usize),
    /// The body is not `application/json`.
    UnsupportedMediaType,
    /// The `callback_url` is refused; why.
    InvalidCallbackUrl(String),
    /// A `callback_url` was given but this courier signs no callbacks.
    CallbacksUnavailable,
    /// The request id names another client's job.
    RequestIdInUse,
    /// The job store cannot take the job now; nothing was accepted.
    JobStoreUnavailable,
    /// The job store cannot be read now, so a status is unknown (same `code` as
    /// [`ApiError::JobStoreUnavailable`]: the store is unavailable; the message says what for).
    JobStoreUnreadable,
    /// The request head is larger than the limit (bytes).
    HeadersTooLarge(usize),
    /// The client already has this many requests in flight.
    ClientConcurrencyExceeded(u32),
    /// The body did not arrive within this long after the head.
    RequestBodyTimeout(Duration),
    /// A new connection sent no complete request head within this long.
    RequestHeadTimeout(Duration),
}

impl From<pipeline::Error> for ApiError {
    fn from(error: pipeline::Error) -> Self {
        ApiError::Pipeline(error)
    }
}

/// The body of every error answer.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody<'a> {
    /// Always `false`.
    #[schema(schema_with = super::openapi::always_false)]
    success: bool,
    /// What went wrong.
    error: ErrorDetail<'a>,
    /// The request's id, as in the `X-Request-Id` header.
    request_id: &'a str,
}

/// What went wrong.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail<'a> {
    /// Machine-readable; one of the codes listed with each status.
    #[schema(schema_with = super::openapi::error_code)]
    code: &'static str,
    /// For humans; may change between versions.
    message: &'a str,
    /// Whether the same request may succeed later (with `Retry-After` when there is a wait to honour).
    retryable: bool,
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidJson(_)
            | ApiError::InvalidRequest(_)
            | ApiError::InvalidCallbackUrl(_)
            | ApiError::CallbacksUnavailable => StatusCode::BAD_REQUEST,
            ApiError::Pipeline(error) => pipeline_status(error),
            ApiError::RequestIdInUse => StatusCode::CONFLICT,
            ApiError::JobStoreUnavailable | ApiError::JobStoreUnreadable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::ClientConcurrencyExceeded(_) | ApiError::AuthLockedOut(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::RequestBodyTimeout(_) | ApiError::RequestHeadTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unauthorized | ApiError::AdminUnauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    /// The machine-readable `code`.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::Pipeline(error) => error.code(),
            ApiError::Unauthorized => "unauthorized",
            ApiError::AuthLockedOut(_) => "auth_locked_out",
            ApiError::AdminUnauthorized => "admin_unauthorized",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::InvalidCallbackUrl(_) => "invalid_callback_url",
            ApiError::CallbacksUnavailable => "callbacks_unavailable",
            ApiError::RequestIdInUse => "request_id_in_use",
            ApiError::JobStoreUnavailable | ApiError::JobStoreUnreadable => "job_store_unavailable",
            ApiError::HeadersTooLarge(_) => "headers_too_large",
            ApiError::ClientConcurrencyExceeded(_) => "client_concurrency_exceeded",
            ApiError::RequestBodyTimeout(_) => "request_body_timeout",
            ApiError::RequestHeadTimeout(_) => "request_head_timeout",
        }
    }

    /// The human-readable `message`.
    pub fn message(&self) -> Cow<'_, str> {
        match self {
            ApiError::InvalidJson(detail) => format!("the body is not valid JSON: {detail}").into(),
            ApiError::InvalidRequest(message) => Cow::Borrowed(message),
            ApiError::Pipeline(error) => Cow::Borrowed(error.message()),
            ApiError::Unauthorized => "missing or unknown client key (send Authorization: Bearer <key>)".into(),
            ApiError::AuthLockedOut(_) => {
                "too many wrong client keys from this address: it is locked out; no key is checked until \
                 Retry-After has passed"
                    .into()
            }
            ApiError::AdminUnauthorized => {
                "missing or wrong admin token (send Authorization: Bearer <the COURIER_ADMIN_TOKEN>)".into()
            }
            ApiError::NotFound => "not found".into(),
            ApiError::MethodNotAllowed(_) => "method not allowed on this route".into(),
            ApiError::PayloadTooLarge(limit) => format!("the body is larger than {limit} bytes").into(),
            ApiError::UnsupportedMediaType => "the body must be sent as Content-Type: application/json".into(),
            ApiError::InvalidCallbackUrl(why) => Cow::Borrowed(why),
            ApiError::CallbacksUnavailable => {
                "this courier has no COURIER_CALLBACK_SECRET, so it sends no callbacks; poll the status_url".into()
            }
            ApiError::RequestIdInUse => "this X-Request-Id names another client's job; send a new one".into(),
            ApiError::JobStoreUnavailable => "the job store cannot take the job now; nothing was accepted".into(),
            ApiError::JobStoreUnreadable => {
                "the job store cannot be read now, so the status cannot be given; nothing was changed, retry later"
                    .into()
            }
            ApiError::HeadersTooLarge(limit) => format!("the request head is larger than {limit} bytes").into(),
            ApiError::ClientConcurrencyExceeded(limit) => {
                format!("this client already has {limit} requests in flight; retry when one has finished").into()
            }
            ApiError::RequestBodyTimeout(limit) => {
                format!("the request body did not arrive within {} s", limit.as_secs_f64()).into()
            }
            ApiError::RequestHeadTimeout(limit) => {
                format!("no complete request head arrived within {} s of connecting", limit.as_secs_f64()).into()
            }
        }
    }

    /// Whether the same request may succeed later.
    pub fn retryable(&self) -> bool {
        match self {
            ApiError::Pipeline(error) => error.retryable(),
            ApiError::ClientConcurrencyExceeded(_)
            | ApiError::AuthLockedOut(_)
            | ApiError::RequestBodyTimeout(_)
            | ApiError::RequestHeadTimeout(_)
            | ApiError::JobStoreUnavailable
            | ApiError::JobStoreUnreadable => true,
            _ => false,
        }
    }

    /// The `Retry-After` delay, for 429 and 503.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Pipeline(error) => error.retry_after(),
            ApiError::AuthLockedOut(wait) => Some(*wait),
            ApiError::JobStoreUnavailable | ApiError::JobStoreUnreadable | ApiError::ClientConcurrencyExceeded(_) => {
                Some(Duration::from_secs(1))
            }
            _ => None,
        }
    }

    /// The error body: `{"success": false, "error": {..}, "request_id": ..}`.
    pub fn body(&self, request_id: &RequestId) -> Vec<u8> {
        let message = self.message();
        let body = ErrorBody {
            success: false,
            error: ErrorDetail { code: self.code(), message: &message, retryable: self.retryable() },
            request_id: request_id.as_str(),
        };
        serde_json::to_vec(&body).expect("error bodies serialise")
    }

    /// The full answer, carrying the request id in the body and `X-Request-Id`.
    pub fn response(&self, request_id: &RequestId) -> HttpResponse {
        let mut response = super::body::json_head(self.status(), request_id);
        if let Some(wait) = self.retry_after() {
            response.insert_header((RETRY_AFTER, retry_after_value(wait)));
        }
        match self {
            ApiError::Unauthorized | ApiError::AdminUnauthorized => {
                response.insert_header(("www-authenticate", "Bearer"));
            }
            ApiError::MethodNotAllowed(allow) => {
                response.insert_header((ALLOW, allow.clone()));
            }
            _ => {}
        }
        if matches!(self, ApiError::RequestBodyTimeout(_)) {
            // The rest of the body may still come; the connection is not worth keeping.
            response.force_close();
        }
        response.body(self.body(request_id))
    }
}

impl ApiError {
    /// One error of every `code`, for the API description (`http::openapi`).
    pub fn every() -> Vec<ApiError> {
        let wait = Duration::from_secs(1);
        let mut every = vec![
            ApiError::InvalidJson(String::new()),
            ApiError::InvalidRequest(Cow::Borrowed("")),
            ApiError::Unauthorized,
            ApiError::AuthLockedOut(wait),
            ApiError::NotFound,
            ApiError::MethodNotAllowed(HeaderValue::from_static("GET")),
            ApiError::PayloadTooLarge(0),
            ApiError::UnsupportedMediaType,
            ApiError::InvalidCallbackUrl(String::new()),
            ApiError::CallbacksUnavailable,
            ApiError::RequestIdInUse,
            ApiError::JobStoreUnavailable,
            ApiError::JobStoreUnreadable,
            ApiError::HeadersTooLarge(0),
            ApiError::ClientConcurrencyExceeded(0),
            ApiError::RequestBodyTimeout(wait),
            ApiError::RequestHeadTimeout(wait),
        ];
        every.extend(pipeline::Error::every().into_iter().map(ApiError::Pipeline));
        let mut seen = std::collections::HashSet::new();
        every.retain(|error| seen.insert(error.code()));
        // A new variant fails to compile here: add it to the list above, then describe it.
        // `AdminUnauthorized` is answered by the admin listener only, which the gateway's API
        // description does not cover (docs/api.md describes it).
        for error in &every {
            match error {
                ApiError::AdminUnauthorized => {}
                ApiError::InvalidJson(_)
                | ApiError::InvalidRequest(_)
                | ApiError::Pipeline(_)
                | ApiError::Unauthorized
                | ApiError::AuthLockedOut(_)
                | ApiError::NotFound
                | ApiError::MethodNotAllowed(_)
                | ApiError::PayloadTooLarge(_)
                | ApiError::UnsupportedMediaType
                | ApiError::InvalidCallbackUrl(_)
                | ApiError::CallbacksUnavailable
                | ApiError::RequestIdInUse
                | ApiError::JobStoreUnavailable
                | ApiError::JobStoreUnreadable
                | ApiError::HeadersTooLarge(_)
                | ApiError::ClientConcurrencyExceeded(_)
                | ApiError::RequestBodyTimeout(_)
                | ApiError::RequestHeadTimeout(_) => {}
            }
        }
        every
    }
}

/// The status that tells the client what to do about a pipeline failure: its content was
/// refused (400, or the upstream's 413 passed on), the budget is spent (429), courier will not
/// call now (503), the upstream failed (502) or took too long (504). Upstream failures are
/// never 500 or 400.
fn pipeline_status(error: &pipeline::Error) -> StatusCode {
    use pipeline::Error;
    match error {
        Error::Rejected { status: 413, .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Error::Rejected { .. } => StatusCode::BAD_REQUEST,
        Error::RateLimited(_) | Error::QuotaExhausted { .. } => StatusCode::TOO_MANY_REQUESTS,
        Error::AuthUnavailable(_) | Error::CircuitOpen(_) | Error::QuotaUnavailable(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        Error::Failed(Outcome::Timeout) | Error::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Error::Failed(_) => StatusCode::BAD_GATEWAY,
    }
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
pub fn retry_after_value(wait: Duration) -> HeaderValue {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_codes() {
        let cases = [
            (ApiError::Pipeline(pipeline::Error::Failed(Outcome::ServerError)), 502, "upstream_unavailable"),
            (ApiError::Pipeline(pipeline::Error::Failed(Outcome::Timeout)), 504, "upstream_timeout"),
            (ApiError::Pipeline(pipeline::Error::Failed(Outcome::TlsError)), 502, "upstream_tls"),
            (
                ApiError::Pipeline(pipeline::Error::AuthUnavailable(Duration::from_millis(1500))),
                503,
                "upstream_auth_unavailable",
            ),
            (ApiError::Pipeline(pipeline::Error::RateLimited(Duration::from_secs(3))), 429, "budget_exhausted"),
            (
                ApiError::Pipeline(pipeline::Error::QuotaExhausted {
                    retry_after: Duration::from_secs(30),
                    reason: crate::actors::quota::QuotaReason::WindowSpent,
                }),
                429,
                "quota_exhausted",
            ),
            (ApiError::Pipeline(pipeline::Error::QuotaUnavailable(Duration::from_secs(1))), 503, "quota_unavailable"),
            (ApiError::PayloadTooLarge(10), 413, "payload_too_large"),
            (ApiError::HeadersTooLarge(10), 431, "headers_too_large"),
            (ApiError::ClientConcurrencyExceeded(4), 429, "client_concurrency_exceeded"),
            (ApiError::AuthLockedOut(Duration::from_secs(30)), 429, "auth_locked_out"),
            (ApiError::RequestBodyTimeout(Duration::from_secs(1)), 408, "request_body_timeout"),
            (ApiError::RequestHeadTimeout(Duration::from_secs(1)), 408, "request_head_timeout"),
            (ApiError::Pipeline(pipeline::Error::Failed(Outcome::TooLarge)), 502, "upstream_response_too_large"),
            (ApiError::JobStoreUnavailable, 503, "job_store_unavailable"),
            (ApiError::JobStoreUnreadable, 503, "job_store_unavailable"),
            (ApiError::AdminUnauthorized, 401, "admin_unauthorized"),
        ];
        for (error, status, code) in cases {
            assert_eq!((error.status().as_u16(), error.code()), (status, code));
        }
        assert!(!ApiError::Pipeline(pipeline::Error::Failed(Outcome::TlsError)).retryable());
        assert!(!ApiError::Pipeline(pipeline::Error::Failed(Outcome::OtherStatus)).retryable());
        let too_large = ApiError::Pipeline(pipeline::Error::Rejected { status: 413, message: "too big".into() });
        assert_eq!(
            (too_large.status().as_u16(), too_large.code(), too_large.retryable()),
            (413, "upstream_rejected", false)
        );
        assert!(ApiError::Pipeline(pipeline::Error::Failed(Outcome::ConnectError)).retryable());
    }

    #[test]
    fn a_store_that_cannot_be_read_says_so_not_that_nothing_was_accepted() {
        let read = ApiError::JobStoreUnreadable;
        assert!(
            read.message().contains("cannot be read") && !read.message().contains("accepted"),
            "{}",
            read.message()
        );
        assert!(read.retryable());
        assert_eq!(read.retry_after(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_value(Duration::from_millis(1500)), HeaderValue::from(2u64));
        assert_eq!(retry_after_value(Duration::ZERO), HeaderValue::from(1u64));
        assert_eq!(retry_after_value(Duration::from_secs(4)), HeaderValue::from(4u64));
    }
}
