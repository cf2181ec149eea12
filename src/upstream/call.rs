//! One upstream attempt: send the request, read the answer within the attempt's time,
//! classify it.

use std::time::Duration;

use actix_web::http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use actix_web::http::Uri;
use awc::error::{PayloadError, SendRequestError};
use bytes::Bytes;

use super::classify::{tls_failure, Attempt, RateSignal};
use super::wire::upstream_error_message;

/// Error bodies are read only this far: enough for a message, and to keep the connection.
const ERROR_BODY_LIMIT: usize = 16 * 1024;
/// The upstream's API key header, built once (a name given as text is copied on every use).
const API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Everything one attempt sends.
pub struct AttemptRequest<'a> {
    /// `POST` target: the upstream's `/process` URI.
    pub uri: &'a Uri,
    /// `Authorization: Bearer <token>` (marked sensitive).
    pub authorization: &'a HeaderValue,
    /// `X-API-Key` (marked sensitive).
    pub api_key: &'a HeaderValue,
    /// `X-Request-Id`, passed through.
    pub request_id: &'a HeaderValue,
    /// The JSON body.
    pub body: Bytes,
    /// Bound of the whole attempt, head and body.
    pub timeout: Duration,
    /// Largest accepted success body.
    pub max_body: usize,
    /// Deepest nesting accepted in a success body.
    pub max_depth: usize,
    /// `traceparent`/`tracestate` for the attempt's span (none when tracing is off).
    pub trace: &'a [(HeaderName, HeaderValue)],
}

/// Sends one attempt and classifies what came back, with the rate headers of the answer.
pub async fn send_attempt(client: &awc::Client, req: AttemptRequest<'_>) -> (Attempt, RateSignal) {
    let exchange = async {
        let mut outbound = client
            .post(req.uri.clone())
            .insert_header((AUTHORIZATION, req.authorization.clone()))
            .insert_header((API_KEY, req.api_key.clone()))
            .insert_header((crate::request_id::HEADER, req.request_id.clone()))
            .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")));
        for header in req.trace {
            outbound = outbound.insert_header(header.clone());
        }
        let mut response = outbound.send_body(req.body).await.map_err(classify_send_error)?;
        let status = response.status().as_u16();
        let signal = RateSignal::from_headers(response.headers());
        let attempt = if response.status().is_success() {
            match response.body().limit(req.max_body).await {
                Ok(body) => read_success(body, req.max_depth),
                Err(PayloadError::Overflow) => Attempt::TooLarge,
                Err(_) => Attempt::Connect("answer body broken off"),
            }
        } else {
            let body = response.body().limit(ERROR_BODY_LIMIT).await.unwrap_or_default();
            match status {
                // The request's content refused: the same request gets the same answer.
                400 | 413 | 422 => Attempt::Rejected { status, message: upstream_error_message(&body, status) },
                401 => Attempt::Unauthorized,
                403 => Attempt::Forbidden,
                429 => Attempt::RateLimited,
                500..=599 => Attempt::ServerError(status),
                _ => Attempt::OtherStatus(status),
            }
        };
        Ok::<_, Attempt>((attempt, signal))
    };
    match actix_rt::time::timeout(req.timeout, exchange).await {
        Ok(Ok(done)) => done,
        Ok(Err(failed)) => (failed, RateSignal::default()),
        Err(_elapsed) => (Attempt::Timeout, RateSignal::default()),
    }
}

/// A 2xx answer's whole body: a success, unless it nests deeper than `max_depth`. Checked
/// before anything parses it: a buggy or compromised upstream must not make courier walk an
/// arbitrarily deep document. (Public for the fuzz targets.)
pub fn read_success(body: Bytes, max_depth: usize) -> Attempt {
    match crate::json::check_depth(&body, max_depth) {
        Ok(()) => Attempt::Success(body),
        Err(_) => Attempt::Invalid("answer nests too deep"),
    }
}

fn classify_send_error(error: SendRequestError) -> Attempt {
    match error {
        SendRequestError::Timeout => Attempt::Timeout,
        SendRequestError::Connect(awc::error::ConnectError::Timeout) => Attempt::Timeout,
        SendRequestError::Connect(awc::error::ConnectError::Io(e)) => match tls_failure(&e) {
            Some(reason) => Attempt::Tls(reason),
            None => Attempt::Connect("connection failed"),
        },
        SendRequestError::Connect(_) => Attempt::Connect("connection failed"),
        SendRequestError::Send(_) | SendRequestError::Response(_) => Attempt::Connect("connection broken off"),
        _ => Attempt::Connect("request could not be sent"),
    }
}
