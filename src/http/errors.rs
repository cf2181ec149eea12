//! Every error courier answers, mapped to its HTTP status, `code`, retryability and
//! `Retry-After` in this one place.
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

use crate::actors::DispatchError;
use crate::request_id::RequestId;
use crate::upstream::Outcome;

/// An error answer of courier's API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// The body is not valid JSON.
    InvalidJson(String),
    /// The body is JSON but not a valid request; the message names the field.
    InvalidRequest(Cow<'static, str>),
    /// The upstream refused the request's content: its status (400, 413, 422) and message.
    UpstreamRejected {
        /// The upstream's status: 413 is passed on (the body is too large for the upstream),
        /// the others are 400.
        status: u16,
        /// The upstream's message, sanitised.
        message: String,
    },
    /// No or an unknown client key.
    Unauthorized,
    /// No such route or request id.
    NotFound,
    /// The route exists, the method does not; the methods it has (the `Allow` header).
    MethodNotAllowed(HeaderValue),
    /// The body exceeds the limit (bytes).
    PayloadTooLarge(usize),
    /// The body is not `application/json`.
    UnsupportedMediaType,
    /// The upstream's rate budget is spent; retry after this long.
    BudgetExhausted(Duration),
    /// No upstream token can be had now; retry after this long.
    UpstreamAuthUnavailable(Duration),
    /// The upstream failed after retries; the last attempt's outcome.
    UpstreamFailed(Outcome),
    /// The request's deadline passed before an answer.
    DeadlineExceeded,
    /// courier itself is overloaded; retry after this long.
    Overloaded(Duration),
    /// The circuit to the upstream is open; retry after this long.
    CircuitOpen(Duration),
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

impl From<DispatchError> for ApiError {
    fn from(error: DispatchError) -> Self {
        match error {
            DispatchError::Rejected { status, message } => ApiError::UpstreamRejected { status, message },
            DispatchError::AuthUnavailable(wait) => ApiError::UpstreamAuthUnavailable(wait),
            DispatchError::RateLimited(wait) => ApiError::BudgetExhausted(wait),
            DispatchError::Failed(outcome) => ApiError::UpstreamFailed(outcome),
            DispatchError::DeadlineExceeded => ApiError::DeadlineExceeded,
            DispatchError::CircuitOpen(wait) => ApiError::CircuitOpen(wait),
        }
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
            ApiError::UpstreamRejected { status: 413, .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UpstreamRejected { .. } => StatusCode::BAD_REQUEST,
            ApiError::RequestIdInUse => StatusCode::CONFLICT,
            ApiError::JobStoreUnavailable | ApiError::JobStoreUnreadable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::ClientConcurrencyExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::RequestBodyTimeout(_) | ApiError::RequestHeadTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::BudgetExhausted(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::UpstreamAuthUnavailable(_) | ApiError::Overloaded(_) | ApiError::CircuitOpen(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::UpstreamFailed(Outcome::Timeout) | ApiError::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            ApiError::UpstreamFailed(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The machine-readable `code`.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::UpstreamRejected { .. } => "upstream_rejected",
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::BudgetExhausted(_) => "budget_exhausted",
            ApiError::UpstreamAuthUnavailable(_) => "upstream_auth_unavailable",
            ApiError::UpstreamFailed(Outcome::Timeout) => "upstream_timeout",
            ApiError::UpstreamFailed(Outcome::Forbidden) => "upstream_auth_rejected",
            ApiError::UpstreamFailed(Outcome::InvalidResponse) => "upstream_invalid_response",
            ApiError::UpstreamFailed(Outcome::TlsError) => "upstream_tls",
            ApiError::UpstreamFailed(Outcome::TooLarge) => "upstream_response_too_large",
            ApiError::UpstreamFailed(_) => "upstream_unavailable",
            ApiError::DeadlineExceeded => "deadline_exceeded",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::CircuitOpen(_) => "circuit_open",
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
            ApiError::UpstreamRejected { message, .. } => Cow::Borrowed(message),
            ApiError::Unauthorized => "missing or unknown client key (send Authorization: Bearer <key>)".into(),
            ApiError::NotFound => "not found".into(),
            ApiError::MethodNotAllowed(_) => "method not allowed on this route".into(),
            ApiError::PayloadTooLarge(limit) => format!("the body is larger than {limit} bytes").into(),
            ApiError::UnsupportedMediaType => "the body must be sent as Content-Type: application/json".into(),
            ApiError::BudgetExhausted(_) => "the upstream rate budget is exhausted; retry later".into(),
            ApiError::UpstreamAuthUnavailable(_) => "courier cannot authenticate with the upstream right now".into(),
            ApiError::UpstreamFailed(Outcome::Timeout) => "the upstream did not answer in time".into(),
            ApiError::UpstreamFailed(Outcome::Forbidden) => "the upstream refused courier's API key".into(),
            ApiError::UpstreamFailed(Outcome::InvalidResponse) => "the upstream's answer was unusable".into(),
            ApiError::UpstreamFailed(Outcome::TlsError) => {
                "courier could not open a trusted TLS connection to the upstream (its certificate was refused or \
                 the handshake failed); not retried, see courier's log for the reason"
                    .into()
            }
            ApiError::UpstreamFailed(Outcome::TooLarge) => {
                "the upstream's answer is larger than courier accepts (COURIER_UPSTREAM_MAX_BODY_BYTES)".into()
            }
            ApiError::UpstreamFailed(Outcome::OtherStatus) => {
                "the upstream answered with a status courier does not expect; not retried".into()
            }
            ApiError::UpstreamFailed(_) => {
                "the upstream failed, after as many retries as the retry policy and the deadline allowed".into()
            }
            ApiError::DeadlineExceeded => "the request's deadline passed before the upstream answered".into(),
            ApiError::Overloaded(_) => "courier is overloaded; retry later".into(),
            ApiError::CircuitOpen(_) => "the upstream is failing; courier is not calling it for now".into(),
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

    /// Whether the same request may succeed later. A TLS failure will not, until the
    /// upstream's certificate or courier's CA file changes.
    pub fn retryable(&self) -> bool {
        if matches!(self, ApiError::UpstreamFailed(Outcome::TlsError | Outcome::TooLarge | Outcome::OtherStatus)) {
            return false; // the same request gets the same answer
        }
        matches!(
            self,
            ApiError::BudgetExhausted(_)
                | ApiError::UpstreamAuthUnavailable(_)
                | ApiError::UpstreamFailed(_)
                | ApiError::ClientConcurrencyExceeded(_)
                | ApiError::RequestBodyTimeout(_)
                | ApiError::RequestHeadTimeout(_)
                | ApiError::DeadlineExceeded
                | ApiError::Overloaded(_)
                | ApiError::CircuitOpen(_)
                | ApiError::JobStoreUnavailable
                | ApiError::JobStoreUnreadable
        )
    }

    /// The `Retry-After` delay, for 429 and 503.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::BudgetExhausted(d)
            | ApiError::UpstreamAuthUnavailable(d)
            | ApiError::Overloaded(d)
            | ApiError::CircuitOpen(d) => Some(*d),
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
            ApiError::Unauthorized => {
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
            ApiError::UpstreamRejected { status: 400, message: String::new() },
            ApiError::Unauthorized,
            ApiError::NotFound,
            ApiError::MethodNotAllowed(HeaderValue::from_static("GET")),
            ApiError::PayloadTooLarge(0),
            ApiError::UnsupportedMediaType,
            ApiError::BudgetExhausted(wait),
            ApiError::UpstreamAuthUnavailable(wait),
            ApiError::DeadlineExceeded,
            ApiError::Overloaded(wait),
            ApiError::CircuitOpen(wait),
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
        every.extend(Outcome::ALL.into_iter().map(ApiError::UpstreamFailed));
        let mut seen = std::collections::HashSet::new();
        every.retain(|error| seen.insert(error.code()));
        // A new variant fails to compile here: add it to the list above, then describe it.
        for error in &every {
            match error {
                ApiError::InvalidJson(_)
                | ApiError::InvalidRequest(_)
                | ApiError::UpstreamRejected { .. }
                | ApiError::Unauthorized
                | ApiError::NotFound
                | ApiError::MethodNotAllowed(_)
                | ApiError::PayloadTooLarge(_)
                | ApiError::UnsupportedMediaType
                | ApiError::BudgetExhausted(_)
                | ApiError::UpstreamAuthUnavailable(_)
                | ApiError::UpstreamFailed(_)
                | ApiError::DeadlineExceeded
                | ApiError::Overloaded(_)
                | ApiError::CircuitOpen(_)
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
            (ApiError::UpstreamFailed(Outcome::ServerError), 502, "upstream_unavailable"),
            (ApiError::UpstreamFailed(Outcome::Timeout), 504, "upstream_timeout"),
            (ApiError::UpstreamFailed(Outcome::TlsError), 502, "upstream_tls"),
            (ApiError::UpstreamAuthUnavailable(Duration::from_millis(1500)), 503, "upstream_auth_unavailable"),
            (ApiError::BudgetExhausted(Duration::from_secs(3)), 429, "budget_exhausted"),
            (ApiError::PayloadTooLarge(10), 413, "payload_too_large"),
            (ApiError::HeadersTooLarge(10), 431, "headers_too_large"),
            (ApiError::ClientConcurrencyExceeded(4), 429, "client_concurrency_exceeded"),
            (ApiError::RequestBodyTimeout(Duration::from_secs(1)), 408, "request_body_timeout"),
            (ApiError::RequestHeadTimeout(Duration::from_secs(1)), 408, "request_head_timeout"),
            (ApiError::UpstreamFailed(Outcome::TooLarge), 502, "upstream_response_too_large"),
            (ApiError::JobStoreUnavailable, 503, "job_store_unavailable"),
            (ApiError::JobStoreUnreadable, 503, "job_store_unavailable"),
        ];
        for (error, status, code) in cases {
            assert_eq!((error.status().as_u16(), error.code()), (status, code));
        }
        assert!(!ApiError::UpstreamFailed(Outcome::TlsError).retryable());
        assert!(!ApiError::UpstreamFailed(Outcome::OtherStatus).retryable());
        let too_large = ApiError::UpstreamRejected { status: 413, message: "too big".into() };
        assert_eq!(
            (too_large.status().as_u16(), too_large.code(), too_large.retryable()),
            (413, "upstream_rejected", false)
        );
        assert!(ApiError::UpstreamFailed(Outcome::ConnectError).retryable());
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
