//! One event function per inbound request: the JSON log line and the metrics are written
//! together, from the same values, so they cannot drift apart.

use std::cell::RefCell;
use std::time::Instant;

use actix_web::http::{Method, StatusCode};
use prometheus::{Histogram, IntCounter};
use slog::info;

use super::state::Worker;
use crate::metrics::{Metrics, Route};
use crate::request_id::RequestId;
use crate::trace::{attrs, LogIds, Span};

type Hasher = foldhash::fast::RandomState;
/// hashbrown's map for its `entry_ref`: one hash of the client's name per request, and a copy
/// of the name only the first time it is seen.
type HashMap<K, V> = hashbrown::HashMap<K, V, Hasher>;
/// A client's request counter and duration histogram, by route and status.
type ByRoute = HashMap<(Route, u16), (IntCounter, Histogram)>;

/// This worker's handles on the request counter and histogram, by client, route and status:
/// resolving a labelled child hashes the label values and takes the family's lock, twice per
/// request, so each worker does it once per label set. Label values are bounded (routes,
/// statuses, client names), so this map is too.
#[derive(Default)]
pub struct RequestMetrics {
    children: RefCell<HashMap<String, ByRoute>>,
    /// Each client's upstream attempts counter.
    attempts: RefCell<HashMap<String, IntCounter>>,
}

impl RequestMetrics {
    /// Counts `attempts` upstream attempts made for `client`.
    fn spent(&self, metrics: &Metrics, client: &str, attempts: u32) {
        let mut children = self.attempts.borrow_mut();
        let counter =
            children.entry_ref(client).or_insert_with(|| metrics.security.client_attempts.with_label_values(&[client]));
        counter.inc_by(u64::from(attempts));
    }

    fn record(&self, metrics: &Metrics, route: Route, status: StatusCode, client: &str, seconds: f64) {
        let mut children = self.children.borrow_mut();
        let by_route = children.entry_ref(client).or_default();
        let (count, duration) = by_route.entry((route, status.as_u16())).or_insert_with(|| {
            let class = match status.as_u16() {
                100..=199 => "1xx",
                200..=299 => "2xx",
                300..=399 => "3xx",
                400..=499 => "4xx",
                _ => "5xx",
            };
            (
                metrics.http_requests.with_label_values(&[route.as_str(), status.as_str(), client]),
                metrics.http_duration.with_label_values(&[route.as_str(), class, client]),
            )
        });
        count.inc();
        duration.observe(seconds);
    }
}

/// What is known about an answered inbound request.
pub struct Inbound<'a> {
    /// The route (metric label).
    pub route: Route,
    /// The route's path pattern (log field; never the raw path).
    pub endpoint: &'static str,
    /// The method.
    pub method: &'a Method,
    /// The status answered.
    pub status: StatusCode,
    /// The caller's name.
    pub client: &'a str,
    /// The request id.
    pub request_id: &'a RequestId,
    /// When the request arrived.
    pub started: Instant,
    /// When it was answered.
    pub answered: Instant,
    /// Upstream attempts made for it.
    pub attempts: u32,
    /// The error code answered, if any.
    pub error: Option<&'static str>,
    /// What the cache did, when it was asked.
    pub cache: Option<&'static str>,
    /// Its server span, when traced: ended here.
    pub span: Option<Box<Span>>,
}

/// Logs and counts one answered inbound request.
pub fn inbound(worker: &Worker, mut event: Inbound<'_>) {
    let elapsed = event.answered.saturating_duration_since(event.started).as_secs_f64();
    let metrics = &worker.shared.metrics;
    worker.request_metrics.record(metrics, event.route, event.status, event.client, elapsed);
    if event.attempts > 0 {
        worker.request_metrics.spent(metrics, event.client, event.attempts);
    }
    if let Some(code) = event.error.filter(|_| event.status.is_client_error()) {
        metrics.security.refusals.with_label_values(&[event.client, code]).inc();
    }
    let ids = LogIds::of(event.span.as_deref());
    if let Some(span) = event.span.take() {
        end_server_span(*span, &event);
    }
    info!(worker.log, "gateway_request";
        "request_id" => event.request_id.as_str(),
        "endpoint" => event.endpoint,
        "method" => event.method.as_str(),
        "status_code" => event.status.as_u16(),
        "response_time" => elapsed,
        "retry_count" => event.attempts.saturating_sub(1),
        "attempts" => event.attempts,
        "client" => event.client,
        "error" => event.error,
        "cache" => event.cache,
        ids);
}

/// Ends a server span with what the answer came to; by the HTTP server conventions only a 5xx
/// is an error of the server's.
fn end_server_span(mut span: Span, event: &Inbound<'_>) {
    if span.recording() {
        span.rename(format!("{} {}", event.method.as_str(), event.endpoint));
        span.set(attrs::HTTP_ROUTE, event.endpoint);
        span.set(attrs::ROUTE, event.route.as_str());
        span.set(attrs::HTTP_RESPONSE_STATUS_CODE, i64::from(event.status.as_u16()));
        span.set(attrs::CLIENT, event.client.to_owned());
        span.set(attrs::ATTEMPTS, i64::from(event.attempts));
        if let Some(cache) = event.cache {
            span.set(attrs::CACHE_OUTCOME, cache);
        }
        if let Some(code) = event.error {
            span.set(attrs::ERROR_CODE, code);
            if event.status.is_server_error() {
                span.set(attrs::ERROR_TYPE, code);
                span.fail(code);
            }
        }
    }
    span.end();
}

#[cfg(test)]
mod tests {
    use crate::http::ApiError;
    use crate::metrics::{CLIENT_REFUSAL_CODES, UNKNOWN_REFUSAL_CODES};

    /// `courier_http_refusals_total{code}` has a series from the start for every 4xx code courier
    /// answers through a handler (`request_head_timeout` is answered by the socket guard).
    #[test]
    fn every_4xx_code_has_its_refusal_series() {
        for error in ApiError::every() {
            let code = error.code();
            if error.status().is_client_error() && !matches!(code, "request_head_timeout" | "admin_unauthorized") {
                assert!(
                    CLIENT_REFUSAL_CODES.contains(&code) || UNKNOWN_REFUSAL_CODES.contains(&code),
                    "{code} has no courier_http_refusals_total series"
                );
            }
        }
    }
}
