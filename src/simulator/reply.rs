//! Response builders shared by the handlers.

use std::borrow::Cow;
use std::io;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use bytes::Bytes;
use serde::Serialize;

/// `Retry-After: 1`.
pub(crate) const RETRY_AFTER_ONE: HeaderValue = HeaderValue::from_static("1");

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A refused request, rendered by [`ApiError::into_response`] in the API's error shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: Cow<'static, str>,
}

impl ApiError {
    /// An error with the given status, machine-readable code and human-readable message.
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self { status, code, message: message.into() }
    }

    /// A 400 `invalid_request`.
    pub(crate) fn invalid(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// Renders the error as a response.
    pub(crate) fn into_response(self) -> HttpResponse {
        api_error(self.status, self.code, &self.message)
    }
}

/// `{"success":false,"error":{"code":..,"message":..}}` with the given status.
pub(crate) fn api_error(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    json_response(status, &ErrorBody { success: false, error: ErrorDetail { code, message } })
}

/// Serialises `body` as the JSON response body.
pub(crate) fn json_response(status: StatusCode, body: &impl Serialize) -> HttpResponse {
    match serde_json::to_vec(body) {
        Ok(bytes) => raw_json(status, bytes),
        Err(_) => HttpResponse::InternalServerError().finish(),
    }
}

/// A response whose body is already-encoded JSON.
pub(crate) fn raw_json(status: StatusCode, body: impl Into<Bytes>) -> HttpResponse {
    let mut resp = HttpResponse::with_body(status, body.into());
    resp.headers_mut().insert(header::CONTENT_TYPE, APPLICATION_JSON);
    resp.map_into_boxed_body()
}

/// A response that makes actix-http abort the connection.
///
/// The body stream fails on its first poll. actix-http's HTTP/1 dispatcher has
/// by then only *buffered* the status line and headers; on the body error it
/// ends the connection task without flushing that buffer and the socket is
/// closed. The request has been read in full, so the close is a clean FIN.
/// What a client observes: zero response bytes, then EOF while waiting for
/// the status line (a raw socket's `read_to_end` returns `Ok` with nothing;
/// awc reports `SendRequestError::Connect(ConnectError::Disconnected)`),
/// like an upstream that crashed mid-request.
pub(crate) fn dropped_connection() -> HttpResponse {
    let fail = futures_util::stream::once(async {
        Err::<Bytes, _>(io::Error::new(io::ErrorKind::ConnectionAborted, "simulated connection drop"))
    });
    HttpResponse::Ok().streaming(fail)
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    success: bool,
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}
