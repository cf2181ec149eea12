//! Every metric courier exports, registered in one place.
//!
//! One struct, its own [`Registry`], the `courier` namespace, base units in names
//! (`_seconds`, `_bytes`), `_total` on counters, and label values that come from enums or
//! from the clients file, so every label is bounded. The help text of each metric is the doc
//! comment of its field. Standard `process_*` metrics (CPU, memory, open fds) come from the
//! prometheus crate's process collector under their usual names.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

const NAMESPACE: &str = "courier";

/// Latency buckets in seconds, from sub-millisecond (cache hits, fast rejections) to the
/// longest deadline.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Inbound routes, the `route` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `POST /api/external/process`.
    Process,
    /// `GET /api/external/status/{id}`.
    Status,
    /// Anything else (answered 404/405).
    Other,
}

impl Route {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Process => "process",
            Route::Status => "status",
            Route::Other => "other",
        }
    }
}

/// Results of a token refresh, the `result` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshResult {
    /// A token was obtained.
    Success,
    /// The token endpoint refused the credentials (4xx).
    Rejected,
    /// The token endpoint failed or could not be reached.
    Failure,
}

impl RefreshResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshResult::Success => "success",
            RefreshResult::Rejected => "rejected",
            RefreshResult::Failure => "failure",
        }
    }
}

/// courier's metrics.
pub struct Metrics {
    registry: Registry,
    /// Inbound requests answered, by route, status code and client.
    pub http_requests: IntCounterVec,
    /// Time from receiving an inbound request to answering it, by route.
    pub http_duration: HistogramVec,
    /// Upstream attempts (retries included), by classified outcome.
    pub upstream_attempts: IntCounterVec,
    /// Duration of one upstream attempt, head and body.
    pub upstream_duration: Histogram,
    /// Retries of upstream attempts, by the reason of the failed attempt.
    pub upstream_retries: IntCounterVec,
    /// Requests to the upstream token endpoint, by result.
    pub token_refreshes: IntCounterVec,
    /// Unix time at which the current upstream token expires (0 when there is none).
    pub token_expiry: Gauge,
    /// 1 once an upstream token has been obtained, else 0.
    pub ready: IntGauge,
    /// Log lines dropped because the log writer fell behind.
    pub log_dropped: IntCounter,
    /// Build information; the value is always 1.
    pub build_info: IntGaugeVec,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help).namespace(NAMESPACE), labels)
        .expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

fn histogram_opts(name: &str, help: &str) -> HistogramOpts {
    HistogramOpts::new(name, help)
        .namespace(NAMESPACE)
        .buckets(LATENCY_BUCKETS.to_vec())
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let reg = |m: Box<dyn prometheus::core::Collector>| {
            registry.register(m).expect("metric registered once")
        };

        let http_requests = counter_vec(
            &registry,
            "http_requests_total",
            "Inbound requests answered, by route, status code and client.",
            &["route", "status", "client"],
        );
        let http_duration = HistogramVec::new(
            histogram_opts(
                "http_request_duration_seconds",
                "Time from receiving an inbound request to answering it, by route.",
            ),
            &["route"],
        )
        .expect("valid metric");
        reg(Box::new(http_duration.clone()));
        let upstream_attempts = counter_vec(
            &registry,
            "upstream_attempts_total",
            "Upstream attempts (retries included), by classified outcome.",
            &["outcome"],
        );
        let upstream_duration = Histogram::with_opts(histogram_opts(
            "upstream_attempt_duration_seconds",
            "Duration of one upstream attempt, head and body.",
        ))
        .expect("valid metric");
        reg(Box::new(upstream_duration.clone()));
        let upstream_retries = counter_vec(
            &registry,
            "upstream_retries_total",
            "Retries of upstream attempts, by the reason of the failed attempt.",
            &["reason"],
        );
        let token_refreshes = counter_vec(
            &registry,
            "token_refreshes_total",
            "Requests to the upstream token endpoint, by result.",
            &["result"],
        );
        let token_expiry = Gauge::with_opts(
            Opts::new(
                "token_expiry_timestamp_seconds",
                "Unix time at which the current upstream token expires (0 when there is none).",
            )
            .namespace(NAMESPACE),
        )
        .expect("valid metric");
        reg(Box::new(token_expiry.clone()));
        let ready = IntGauge::with_opts(
            Opts::new(
                "ready",
                "1 once an upstream token has been obtained, else 0.",
            )
            .namespace(NAMESPACE),
        )
        .expect("valid metric");
        reg(Box::new(ready.clone()));
        let log_dropped = IntCounter::with_opts(
            Opts::new(
                "log_lines_dropped_total",
                "Log lines dropped because the log writer fell behind.",
            )
            .namespace(NAMESPACE),
        )
        .expect("valid metric");
        reg(Box::new(log_dropped.clone()));
        let build_info = IntGaugeVec::new(
            Opts::new("build_info", "Build information; the value is always 1.")
                .namespace(NAMESPACE),
            &["version"],
        )
        .expect("valid metric");
        reg(Box::new(build_info.clone()));
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        reg(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));

        Metrics {
            registry,
            http_requests,
            http_duration,
            upstream_attempts,
            upstream_duration,
            upstream_retries,
            token_refreshes,
            token_expiry,
            ready,
            log_dropped,
            build_info,
        }
    }

    /// The text exposition of every metric, for `/metrics`.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let metrics = Metrics::new();
        metrics
            .http_requests
            .with_label_values(&["process", "200", "open"])
            .inc();
        metrics
            .upstream_attempts
            .with_label_values(&["success"])
            .inc();
        metrics
            .upstream_retries
            .with_label_values(&["timeout"])
            .inc();
        metrics
            .token_refreshes
            .with_label_values(&["success"])
            .inc();
        metrics
            .http_duration
            .with_label_values(&["process"])
            .observe(0.01);
        let text = String::from_utf8(metrics.render()).unwrap();
        for family in metrics.registry.gather() {
            let name = family.name();
            assert!(
                name.starts_with("courier_") || name.starts_with("process_"),
                "{name}"
            );
            if family.get_field_type() == prometheus::proto::MetricType::COUNTER {
                assert!(name.ends_with("_total"), "counter {name} lacks _total");
            }
        }
        assert!(text.contains("courier_build_info{version=\""));
        assert!(text.contains("courier_http_request_duration_seconds_bucket"));
        assert!(text.contains("process_cpu_seconds_total"));
    }
}
