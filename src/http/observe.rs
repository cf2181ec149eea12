//! One event function per inbound request: the JSON log line and the metrics are written
//! together, from the same values, so they cannot drift apart.

use std::time::Instant;

use actix_web::http::{Method, StatusCode};
use slog::info;

use super::state::Worker;
use crate::metrics::Route;
use crate::request_id::RequestId;

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
    /// Upstream attempts made for it.
    pub attempts: u32,
    /// The error code answered, if any.
    pub error: Option<&'static str>,
    /// What the cache did, when it was asked.
    pub cache: Option<&'static str>,
}

/// Logs and counts one answered inbound request.
pub fn inbound(worker: &Worker, event: Inbound<'_>) {
    let elapsed = event.started.elapsed().as_secs_f64();
    let metrics = &worker.shared.metrics;
    metrics.http_requests.with_label_values(&[event.route.as_str(), event.status.as_str(), event.client]).inc();
    let class = match event.status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics.http_duration.with_label_values(&[event.route.as_str(), class, event.client]).observe(elapsed);
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
        "cache" => event.cache);
}
