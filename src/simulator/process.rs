//! `POST /v2/process`: the rate-limited data-processing endpoint.

use std::time::Instant;

use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::{Map, Value};

use super::quota::Admission;
use super::quota_headers::MinuteView;
use super::ratelimit::Decision;
use super::reply::{dropped_connection, json_response, raw_json, ApiError, RETRY_AFTER_ONE};
use super::state::{header_value, Shared};
use super::stats::ProcessOutcome;
use super::tokens::{unix_ms, TokenError};

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(super) const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub(super) const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
pub(super) const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
pub(super) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub(super) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const BEARER_CHALLENGE: HeaderValue = HeaderValue::from_static("Bearer error=\"invalid_token\"");

/// How a request ends: an HTTP answer, or a deliberately broken connection.
enum Reply {
    Respond(HttpResponse),
    Drop,
}

/// Handles `POST /v2/process`, counting the outcome and tracking concurrency.
pub(crate) async fn process(
    req: HttpRequest,
    body: Result<web::Bytes, actix_web::Error>,
    sim: web::Data<Shared>,
) -> HttpResponse {
    let _in_flight = sim.stats.enter();
    if let Some(traceparent) = req.headers().get(TRACEPARENT) {
        sim.stats.note_traceparent(traceparent.as_bytes());
    }
    let started = Instant::now();
    match handle(&req, body, &sim, started).await {
        Reply::Drop => {
            sim.stats.record_process(ProcessOutcome::Dropped);
            dropped_connection()
        }
        Reply::Respond(mut resp) => {
            let status = resp.status().as_u16();
            sim.stats.record_process(ProcessOutcome::from_status(status));
            if let Some(id) = req.headers().get(X_REQUEST_ID) {
                sim.stats.note_request_id(id.as_bytes());
                resp.headers_mut().insert(X_REQUEST_ID, id.clone());
            }
            resp
        }
    }
}

async fn handle(
    req: &HttpRequest,
    body: Result<web::Bytes, actix_web::Error>,
    sim: &Shared,
    started: Instant,
) -> Reply {
    if sim.faults.outage() {
        let err = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "the service is temporarily unavailable",
        );
        return Reply::Respond(with_retry_after(err.into_response(), RETRY_AFTER_ONE));
    }
    if let Err(err) = check_api_key(req, sim) {
        return Reply::Respond(err.into_response());
    }
    if let Err(err) = check_token(req, sim) {
        let mut resp = err.into_response();
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, BEARER_CHALLENGE);
        return Reply::Respond(resp);
    }

    // Past authentication: every answer from here on carries the rate-limit headers. A request
    // the minute limiter lets through counts in every quota window (or is refused by a spent one).
    let decision = sim.limiter.check(sim.clock.now_ns());
    let quota = sim.quotas.admit(unix_ms(), decision.allowed);
    let with_limits = |mut resp: HttpResponse| {
        rate_headers(resp.headers_mut(), sim, &decision, quota.as_ref());
        Reply::Respond(resp)
    };
    if !decision.allowed {
        sim.stats.record_limiter_refusal();
        let err = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "rate limit exceeded");
        let retry_after = HeaderValue::from(decision.retry_after_secs);
        return with_limits(with_retry_after(err.into_response(), retry_after));
    }
    if let Some(spent) = quota.as_ref().and_then(|q| q.refused.as_ref()) {
        sim.stats.record_quota_refusal();
        let err = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", "quota exceeded");
        let retry_after = HeaderValue::from(spent.reset_secs);
        return with_limits(with_retry_after(err.into_response(), retry_after));
    }
    let input = match parse_body(body) {
        Ok(input) => input,
        Err(err) => return with_limits(err.into_response()),
    };

    if let Some(delay) = sim.faults.latency() {
        actix_rt::time::sleep(delay).await;
    }
    if sim.faults.take_drop() {
        return Reply::Drop;
    }
    if let Some(status) = sim.faults.take_error() {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let resp = ApiError::new(status, "injected_error", "injected upstream error").into_response();
        return with_limits(if status == StatusCode::SERVICE_UNAVAILABLE {
            with_retry_after(resp, RETRY_AFTER_ONE)
        } else {
            resp
        });
    }

    let depth = sim.faults.nested_depth();
    if depth > 0 {
        return with_limits(raw_json(StatusCode::OK, nested_answer(depth as usize, &sim.next_request_id())));
    }
    let body = Success {
        success: true,
        result: SuccessResult {
            processed_data: processed_data(&input),
            metadata: Metadata { processing_time: started.elapsed().as_secs_f64(), version: "v2.1" },
        },
        request_id: sim.next_request_id(),
    };
    with_limits(json_response(StatusCode::OK, &body))
}

/// A success answer whose `processed_data` is `depth` arrays nested in each other.
fn nested_answer(depth: usize, request_id: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(2 * depth + 128);
    body.extend_from_slice(br#"{"success":true,"result":{"processed_data":"#);
    body.resize(body.len() + depth, b'[');
    body.resize(body.len() + depth, b']');
    body.extend_from_slice(br#","metadata":{"version":"v2.1"}},"request_id":"#);
    serde_json::to_writer(&mut body, request_id).expect("writing into memory cannot fail");
    body.push(b'}');
    body
}

fn with_retry_after(mut resp: HttpResponse, secs: HeaderValue) -> HttpResponse {
    resp.headers_mut().insert(header::RETRY_AFTER, secs);
    resp
}

fn check_api_key(req: &HttpRequest, sim: &Shared) -> Result<(), ApiError> {
    let forbidden = |message| ApiError::new(StatusCode::FORBIDDEN, "forbidden", message);
    match req.headers().get(X_API_KEY) {
        Some(key) if sim.credentials.api_key(key.as_bytes()) => Ok(()),
        Some(_) => Err(forbidden("invalid API key")),
        None => Err(forbidden("missing X-API-Key header")),
    }
}

fn check_token(req: &HttpRequest, sim: &Shared) -> Result<(), ApiError> {
    let token = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer_token);
    let message = match token.map(|t| sim.tokens.validate(t, unix_ms())) {
        Some(Ok(())) => return Ok(()),
        None => "missing bearer token",
        Some(Err(TokenError::Expired)) => "access token expired",
        Some(Err(TokenError::Revoked)) => "access token revoked",
        Some(Err(TokenError::Malformed | TokenError::BadMac)) => "invalid access token",
    };
    Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", message))
}

/// Extracts the token from `Bearer <token>` (scheme is case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn rate_headers(headers: &mut HeaderMap, sim: &Shared, d: &Decision, quota: Option<&Admission>) {
    headers.insert(X_RATELIMIT_LIMIT, sim.headers.limit.clone());
    headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(d.remaining));
    headers.insert(X_RATELIMIT_RESET, HeaderValue::from(d.reset_secs));
    if let Some(policy) = &sim.headers.policy {
        headers.insert(RATELIMIT_POLICY, policy.clone());
        let value = format!("limit={}, remaining={}, reset={}", sim.rate_limit_per_minute, d.remaining, d.reset_secs);
        headers.insert(RATELIMIT, header_value(&value));
    }
    if let Some(quota) = quota {
        let minute = MinuteView {
            limit: u64::from(sim.rate_limit_per_minute),
            remaining: d.remaining,
            reset_secs: d.reset_secs,
        };
        quota.write_headers(headers, minute);
    }
}

/// Validates the request body and returns `data.input`.
fn parse_body(body: Result<web::Bytes, actix_web::Error>) -> Result<Value, ApiError> {
    let bytes = body.map_err(|err| {
        let status = err.as_response_error().status_code();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(status, "payload_too_large", "request body is too large")
        } else {
            ApiError::invalid(format!("could not read request body: {err}"))
        }
    })?;
    let doc: Value = serde_json::from_slice(&bytes)
        .map_err(|err| ApiError::invalid(format!("request body is not valid JSON: {err}")))?;
    let Value::Object(mut doc) = doc else {
        return Err(ApiError::invalid("request body must be a JSON object"));
    };
    let mut data: Map<String, Value> = match doc.remove("data") {
        Some(Value::Object(data)) => data,
        Some(_) => return Err(ApiError::invalid("data must be a JSON object")),
        None => return Err(ApiError::invalid("data is required")),
    };
    if let Some(format) = data.get("format") {
        if !matches!(format.as_str(), Some("json" | "text")) {
            let shown = format.as_str().map_or_else(|| format.to_string(), str::to_owned);
            return Err(ApiError::invalid(format!("unsupported format '{shown}'")));
        }
    }
    match data.remove("input") {
        None | Some(Value::Null) => Err(ApiError::invalid("data.input is required")),
        Some(input) => Ok(input),
    }
}

/// The deterministic "processing": uppercase the string, or the compact JSON of anything else.
fn processed_data(input: &Value) -> String {
    match input {
        Value::String(s) => s.to_uppercase(),
        other => other.to_string().to_uppercase(),
    }
}

#[derive(Serialize)]
struct Success {
    success: bool,
    result: SuccessResult,
    request_id: String,
}

#[derive(Serialize)]
struct SuccessResult {
    processed_data: String,
    metadata: Metadata,
}

#[derive(Serialize)]
struct Metadata {
    processing_time: f64,
    version: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: &str) -> Result<Value, String> {
        parse_body(Ok(web::Bytes::copy_from_slice(v.as_bytes()))).map_err(|e| {
            assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "invalid_request"));
            e.message.into_owned()
        })
    }

    #[test]
    fn body_validation() {
        assert_eq!(parse(r#"{"data":{"input":"x"}}"#).unwrap(), json!("x"));
        assert!(parse("nope").unwrap_err().contains("not valid JSON"));
        assert!(parse("[1]").unwrap_err().contains("must be a JSON object"));
        assert!(parse(r#"{"data":1}"#).unwrap_err().contains("data must be"));
        assert!(parse(r#"{"data":{}}"#).unwrap_err().contains("data.input is required"));
        let err = parse(r#"{"data":{"input":1,"format":"xml"}}"#).unwrap_err();
        assert!(err.contains("unsupported format 'xml'"), "{err}");
        assert!(parse(r#"{"data":{"input":1,"format":"text"}}"#).is_ok());
    }

    #[test]
    fn processing_is_deterministic() {
        assert_eq!(processed_data(&json!("hello")), "HELLO");
        assert_eq!(processed_data(&json!({"a": [1, "b"]})), r#"{"A":[1,"B"]}"#);
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer"), None);
    }
}
