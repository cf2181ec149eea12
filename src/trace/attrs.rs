//! The attribute names courier's spans carry, in one place: the OpenTelemetry semantic
//! conventions' (HTTP server and client spans) and courier's own, under `courier.`.
//! No attribute ever carries a body, a header's value, a token, a key or a query string.

pub use opentelemetry_semantic_conventions::attribute::{
    CLIENT_ADDRESS, ERROR_TYPE, HTTP_REQUEST_METHOD, HTTP_REQUEST_RESEND_COUNT, HTTP_RESPONSE_STATUS_CODE, HTTP_ROUTE,
    NETWORK_PEER_ADDRESS, SERVER_ADDRESS, SERVER_PORT, URL_FULL, URL_PATH, URL_SCHEME, USER_AGENT_ORIGINAL,
};

/// The request's id (`X-Request-Id`).
pub const REQUEST_ID: &str = "courier.request_id";
/// The caller's name, as in the metrics' `client` label.
pub const CLIENT: &str = "courier.client";
/// The metrics' `route` label.
pub const ROUTE: &str = "courier.route";
/// The error code answered (`error.code` of the error body).
pub const ERROR_CODE: &str = "courier.error.code";
/// Upstream attempts made for the request.
pub const ATTEMPTS: &str = "courier.attempts";
/// What the cache did: hit, miss, coalesced, stale, bypass.
pub const CACHE_OUTCOME: &str = "courier.cache.outcome";
/// The cache key (64 hex digits, as `X-Cache-Key`).
pub const CACHE_KEY: &str = "courier.cache.key";
/// The breaker's decision for an attempt: pass, probe, reject.
pub const BREAKER_DECISION: &str = "courier.breaker.decision";
/// Seconds an attempt waited for its budget permit.
pub const BUDGET_WAIT: &str = "courier.budget.wait_seconds";
/// The attempt's number (1 for the first).
pub const ATTEMPT: &str = "courier.attempt";
/// The attempt's outcome, as in `courier_upstream_attempts_total{outcome}`.
pub const OUTCOME: &str = "courier.outcome";
/// How a token refresh ended: fetched, failed.
pub const TOKEN_RESULT: &str = "courier.token.result";
/// Requests that waited on a token refresh.
pub const TOKEN_WAITERS: &str = "courier.token.waiters";
/// A job's final status.
pub const JOB_STATUS: &str = "courier.job.status";
/// Upstream attempts a job made.
pub const JOB_ATTEMPTS: &str = "courier.job.attempts";
/// How a callback delivery ended.
pub const CALLBACK_RESULT: &str = "courier.callback.result";
