//! How metrics are created and registered: the `courier` namespace, the bucket sets, a list of
//! every registered name (for the start-up checks), and [`Metrics::new`], which registers each
//! field of [`Metrics`] with its doc comment as help text.

use super::Metrics;

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

const NAMESPACE: &str = "courier";

/// Latency buckets in seconds, from sub-millisecond (cache hits, fast rejections) to the
/// longest deadline.
const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Buckets of job durations in seconds, up to the longest job deadline.
const JOB_BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];

/// Creates metrics in the `courier` namespace and registers each once, noting its name.
pub(super) struct Registrar(pub(super) Registry, pub(super) std::cell::RefCell<Vec<String>>);

impl Registrar {
    pub(super) fn add<M: prometheus::core::Collector + Clone + 'static>(&self, metric: M) -> M {
        self.1.borrow_mut().extend(metric.desc().iter().map(|d| d.fq_name.clone()));
        self.0.register(Box::new(metric.clone())).expect("metric registered once");
        metric
    }

    pub(super) fn opts(name: &str, help: &str) -> Opts {
        Opts::new(name, help).namespace(NAMESPACE)
    }

    pub(super) fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::with_opts(Self::opts(name, help)).expect("valid metric"))
    }

    pub(super) fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Self::opts(name, help), labels).expect("valid metric"))
    }

    pub(super) fn gauge(&self, name: &str, help: &str) -> Gauge {
        self.add(Gauge::with_opts(Self::opts(name, help)).expect("valid metric"))
    }

    pub(super) fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        self.add(GaugeVec::new(Self::opts(name, help), labels).expect("valid metric"))
    }

    pub(super) fn int_gauge(&self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::with_opts(Self::opts(name, help)).expect("valid metric"))
    }

    pub(super) fn int_gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Self::opts(name, help), labels).expect("valid metric"))
    }

    pub(super) fn histogram(&self, name: &str, help: &str) -> Histogram {
        self.histogram_buckets(name, help, LATENCY_BUCKETS)
    }

    pub(super) fn histogram_buckets(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        let opts = HistogramOpts::new(name, help).namespace(NAMESPACE).buckets(buckets.to_vec());
        self.add(Histogram::with_opts(opts).expect("valid metric"))
    }

    pub(super) fn histogram_vec(&self, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).namespace(NAMESPACE).buckets(LATENCY_BUCKETS.to_vec());
        self.add(HistogramVec::new(opts, labels).expect("valid metric"))
    }
}

/// The process collector, clonable so it registers like the other metrics.
#[derive(Clone)]
pub(super) struct ProcessMetrics(pub(super) std::sync::Arc<prometheus::process_collector::ProcessCollector>);

impl prometheus::core::Collector for ProcessMetrics {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.collect()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let r = Registrar(Registry::new(), Default::default());
        let metrics = Metrics {
            http_requests: r.counter_vec(
                "http_requests_total",
                "Inbound requests answered, by route, status code and client.",
                &["route", "status", "client"],
            ),
            http_duration: r.histogram_vec(
                "http_request_duration_seconds",
                "Time from receiving an inbound request to answering it, by route, status class (2xx, 4xx, 5xx) and client.",
                &["route", "status_class", "client"],
            ),
            upstream_attempts: r.counter_vec(
                "upstream_attempts_total",
                "Upstream attempts (retries included), by classified outcome.",
                &["outcome"],
            ),
            upstream_duration: r
                .histogram("upstream_attempt_duration_seconds", "Duration of one upstream attempt, head and body."),
            upstream_retries: r.counter_vec(
                "upstream_retries_total",
                "Retries of upstream attempts, by the reason of the failed attempt.",
                &["reason"],
            ),
            token_refreshes: r.counter_vec(
                "token_refreshes_total",
                "Requests to the upstream token endpoint, by result.",
                &["result"],
            ),
            token_expiry: r.gauge(
                "token_expiry_timestamp_seconds",
                "Unix time at which the current upstream token expires (0 when there is none).",
            ),
            ready: r.int_gauge("ready", "1 while a usable upstream token is held (what /readyz checks), else 0."),
            token_expires_in: r.gauge(
                "token_expires_in_seconds",
                "Seconds until the current upstream token expires (negative once it has; 0 without one).",
            ),
            log_dropped: r.counter("log_lines_dropped_total", "Log lines dropped because the log writer fell behind."),
            build_info: r.int_gauge_vec(
                "build_info",
                "Build information: the version and the git commit courier was built from (12 hex digits, or unknown); the value is always 1.",
                &["version", "commit"],
            ),
            budget_limit: r.gauge(
                "budget_limit_requests_per_second",
                "Upstream requests per second the budget allows (EXTERNAL_API_RATE_LIMIT / 60).",
            ),
            budget_burst: r.int_gauge(
                "budget_burst_requests",
                "Upstream requests the budget lets through at once (EXTERNAL_API_RATE_BURST).",
            ),
            budget_available: r.int_gauge("budget_permits_available", "Permits available right now."),
            budget_queue_depth: r
                .int_gauge("budget_queue_depth", "Requests waiting in the budget's queue for a permit."),
            budget_grants: r.counter_vec(
                "budget_grants_total",
                "Permits granted, by path (fast: free at once, lock-free; queued: after waiting).",
                &["path"],
            ),
            budget_wait: r.histogram(
                "budget_wait_seconds",
                "Time a request waited in the budget's queue before it got a permit.",
            ),
            budget_rejections: r.counter_vec(
                "budget_rejections_total",
                "Requests refused a permit, by reason (queue_full, deadline).",
                &["reason"],
            ),
            budget_pauses: r.counter_vec(
                "budget_pauses_total",
                "Pauses learned from the upstream, by source (retry_after, remaining).",
                &["source"],
            ),
            retry_budget_refusals: r.counter(
                "retry_budget_refusals_total",
                "Retries the retry budget refused (the failure was returned instead).",
            ),
            quota_limit: r.int_gauge_vec(
                "quota_limit_requests",
                "Upstream attempts allowed in the window's current instance (the configured limit, or the upstream's when lower).",
                &["window"],
            ),
            quota_used: r.int_gauge_vec(
                "quota_used_requests",
                "Attempts counted in the current instance (reserved blocks included: never below the true count).",
                &["window"],
            ),
            quota_reset: r.gauge_vec(
                "quota_reset_timestamp_seconds",
                "Unix time at which the current instance ends.",
                &["window"],
            ),
            quota_window: r.gauge_vec(
                "quota_window_seconds",
                "Length of the current instance (a month 28–31 days, a day 23–25 hours in zones with DST).",
                &["window"],
            ),
            quota_pace: r.gauge_vec(
                "quota_pace_requests_per_second",
                "Remaining count over remaining time: the even pace that lasts to the reset.",
                &["window"],
            ),
            quota_client_used: r.int_gauge_vec(
                "quota_client_used_requests",
                "Attempts counted for the client in the current instance.",
                &["window", "client"],
            ),
            quota_refusals: r.counter_vec(
                "quota_refusals_total",
                "Counts refused: window_spent, client_max, reserved (answered 429 quota_exhausted), unavailable (503 quota_unavailable).",
                &["reason"],
            ),
            quota_state_writes: r.counter_vec(
                "quota_state_writes_total",
                "Writes of the quota state file (ok, failed).",
                &["result"],
            ),
            breaker_state: r.int_gauge_vec(
                "breaker_state",
                "Circuit breaker state: 1 for the current state (closed, open, half_open), else 0.",
                &["state"],
            ),
            breaker_mode: r.int_gauge_vec(
                "breaker_mode",
                "Circuit breaker mode: 1 for the current mode (auto, forced_open, forced_closed), else 0.",
                &["mode"],
            ),
            breaker_transitions: r.counter_vec(
                "breaker_transitions_total",
                "Circuit breaker transitions, by the state entered.",
                &["to"],
            ),
            breaker_rejections: r.counter(
                "breaker_rejections_total",
                "Requests failed fast because the circuit was open (or its probes were taken).",
            ),
            breaker_reports_dropped: r.counter(
                "breaker_reports_dropped_total",
                "Outcome reports the breaker could not take because its mailbox was full.",
            ),
            breaker_probes: r.counter_vec(
                "breaker_probes_total",
                "Probes of the upstream's health, by kind (background: sent by courier while the circuit is open; half_open: a client request let through while half-open) and result (success, failure, no_verdict: no attempt made, or an answer that says nothing).",
                &["kind", "result"],
            ),
            cache_lookups: r.counter_vec(
                "cache_lookups_total",
                "Answers by what the cache did (hit, miss, coalesced, stale, bypass).",
                &["result"],
            ),
            cache_entries: r.int_gauge("cache_entries", "Answers held in the response cache."),
            cache_bytes: r
                .int_gauge("cache_bytes", "Bytes held in the response cache (answers plus per-entry overhead)."),
            cache_evictions: r.counter_vec(
                "cache_evictions_total",
                "Answers removed from the cache, by cause (expired, size, explicit, replaced).",
                &["cause"],
            ),
            jobs_accepted: r.counter("jobs_accepted_total", "Async jobs accepted (202)."),
            jobs: r.int_gauge_vec(
                "jobs",
                "Jobs by state: pending (accepted, not yet running) and processing (running in this process).",
                &["state"],
            ),
            jobs_finished: r.counter_vec(
                "jobs_finished_total",
                "Jobs that reached a final state in this process, by state (completed, failed).",
                &["state"],
            ),
            job_duration: r.histogram_buckets(
                "job_duration_seconds",
                "Time from accepting a job to its final state.",
                JOB_BUCKETS,
            ),
            jobs_taken_over: r.counter("jobs_taken_over_total", "Jobs taken over from a runner that died."),
            jobs_run_interrupted: r.counter(
                "jobs_run_interrupted_total",
                "Jobs failed with job_run_interrupted instead of being run again: each of their runs ended with its process, COURIER_JOB_MAX_RUNS times (counted in jobs_finished_total too).",
            ),
            callbacks: r.counter_vec(
                "callbacks_total",
                "Callback deliveries, by result (delivered, gave_up, refused).",
                &["result"],
            ),
            callback_attempts: r.counter_vec(
                "callback_attempts_total",
                "Callback delivery attempts, by result (success, failure).",
                &["result"],
            ),
            status_records_dropped: r.counter(
                "status_records_dropped_total",
                "Status entries of sync requests the store could not take (dropped, not blocking).",
            ),
            shared_state: r.int_gauge_vec(
                "shared_state",
                "Shared state through Redis: 1 for the current mode (off: no REDIS_URL; shared; degraded: Redis failing, replica on its own), else 0.",
                &["mode"],
            ),
            redis_errors: r.counter_vec(
                "redis_errors_total",
                "Failed or timed-out Redis calls, by operation (shared state: budget_*, token_*, cache_*, quota_*, fleet_*, lockout_*; the job store: job_*).",
                &["operation"],
            ),
            redis_refusals: r.counter_vec(
                "redis_refusals_total",
                "Redis calls refused by Redis's ACL or in the TLS handshake, by reason (acl_wrongpass: the user or password is not accepted; acl_noauth; acl_noperm; tls_*: a certificate refused either way); also counted in courier_redis_errors_total.",
                &["reason"],
            ),
            fleet_replicas: r.int_gauge(
                "fleet_replicas",
                "Replicas sharing this replica's Redis, as its last heartbeat counted them (COURIER_REPLICAS until the first answer; 1 without Redis).",
            ),
            token_shared_uses: r.counter(
                "token_shared_uses_total",
                "Upstream token requests avoided because another replica's token was used.",
            ),
            token_shared_looks: r.counter_vec(
                "token_shared_looks_total",
                "Looks for another replica's token in Redis while this replica's token refresh backs off, by result (adopted, none: nothing newer there, error: Redis failed).",
                &["result"],
            ),
            cache_l2_reads: r.counter_vec(
                "cache_l2_reads_total",
                "Second-level (Redis) cache reads, by result (hit, miss, error: failed, timed out, or not tried while shared state is degraded).",
                &["result"],
            ),
            config_reloads: r.counter_vec(
                "config_reloads_total",
                "Credential reloads (secrets from *_FILE variables and the clients file), by result (ok, failed: every previous value kept) and trigger (signal, file_change).",
                &["result", "trigger"],
            ),
            config_last_reload_successful: r.int_gauge(
                "config_last_reload_successful",
                "1 when the last credential reload succeeded (or none was tried yet), 0 when it failed.",
            ),
            config_last_reload_success: r.gauge(
                "config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful credential reload (0 until one succeeds).",
            ),
            limit_rejections: r.counter_vec(
                "limit_rejections_total",
                "Inbound requests refused by a limit of the gateway listener, by limit (client_in_flight, header_size, body_timeout, header_timeout, malformed_head: not valid HTTP/1.1).",
                &["limit"],
            ),
            admin_requests: r.counter_vec(
                "admin_requests_total",
                "Requests to the locked admin routes (every route but /metrics, /healthz and /readyz), by outcome (allowed, unlocked: no admin token configured, missing_token, wrong_token); each also writes an admin_request audit log line.",
                &["outcome"],
            ),
            trace_spans: r.counter_vec(
                "trace_spans_total",
                "Trace spans by what became of them (exported; failed: the export was refused or did not arrive; dropped: the export queue was full); all 0 while tracing is off.",
                &["result"],
            ),
            security: super::security::SecurityMetrics::register(&r),
            tls_handshakes: r.counter_vec(
                "tls_handshakes_total",
                "TLS handshakes on the gateway listener, by result (ok; no_client_certificate; bad_client_certificate: expired, from another CA, not for client use; incompatible: an old protocol version, no common cipher suite or ALPN protocol, not TLS at all; timeout; failed: anything else, e.g. the caller hung up).",
                &["result"],
            ),
            tls_certificate_expiry: r.gauge_vec(
                "tls_certificate_expiry_timestamp_seconds",
                "When each listener's TLS material in use expires: the earliest notAfter in the file, in Unix seconds, by certificate (gateway, gateway_client_ca, admin); 0 where none is configured. Updated at start and by every reload that puts new files in use.",
                &["certificate"],
            ),
            registry: r.0.clone(),
            names: Vec::new(),
        };
        metrics.build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), env!("COURIER_GIT_COMMIT")]).set(1);
        metrics.create_known_label_sets();
        metrics.config_last_reload_successful.set(1);
        r.add(ProcessMetrics(std::sync::Arc::new(prometheus::process_collector::ProcessCollector::for_self())));
        let mut metrics = metrics;
        metrics.names = r.1.into_inner();
        metrics
    }
}
