//! Every metric courier exports, registered in one place.
//!
//! One struct, its own [`Registry`], the `courier` namespace, base units in names
//! (`_seconds`, `_bytes`), `_total` on counters, and label values that come from enums or
//! from the clients file, so every label is bounded. The help text of each metric is the doc
//! comment of its field. Standard `process_*` metrics (CPU, memory, open fds) come from the
//! prometheus crate's process collector under their usual names.
//!
//! Every series exists from start-up, at 0 ([`labels`] lists the values of every label).

pub mod labels;
#[cfg(test)]
mod labels_tests;
mod quota;
mod registrar;
mod security;
mod tls;

pub use labels::*;
pub use security::{
    SecurityMetrics, AUTH_FAILURE_REASONS, CLIENT_REFUSAL_CODES, LOCKOUT_EVENTS, SOURCE_CLASSES, UNKNOWN_REFUSAL_CODES,
};
pub use tls::*;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
    TextEncoder,
};

/// courier's metrics (created and registered by [`Metrics::new`], in `registrar.rs`).
pub struct Metrics {
    registry: Registry,
    names: Vec<String>,
    /// Inbound requests answered, by route, status code and client.
    pub http_requests: IntCounterVec,
    /// Time from receiving an inbound request to answering it, by route, status class
    /// (`2xx`, `4xx`, `5xx`) and client.
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
    /// 1 while a usable upstream token is held (what /readyz checks), else 0.
    pub ready: IntGauge,
    /// Seconds until the current upstream token expires (negative once it has; 0 without one).
    pub token_expires_in: Gauge,
    /// Log lines dropped because the log writer fell behind.
    pub log_dropped: IntCounter,
    /// Build information: the version and the git commit courier was built from (12 hex
    /// digits, or `unknown`); the value is always 1.
    pub build_info: IntGaugeVec,

    /// Upstream requests per second the budget allows (`EXTERNAL_API_RATE_LIMIT` / 60).
    pub budget_limit: Gauge,
    /// Upstream requests the budget lets through at once (`EXTERNAL_API_RATE_BURST`).
    pub budget_burst: IntGauge,
    /// Permits available right now.
    pub budget_available: IntGauge,
    /// Requests waiting in the budget's queue for a permit.
    pub budget_queue_depth: IntGauge,
    /// Permits granted, by path (`fast`: free at once, lock-free; `queued`: after waiting).
    pub budget_grants: IntCounterVec,
    /// Time a request waited in the budget's queue before it got a permit.
    pub budget_wait: Histogram,
    /// Requests refused a permit, by reason (`queue_full`, `deadline`).
    pub budget_rejections: IntCounterVec,
    /// Pauses learned from the upstream, by source (`retry_after`, `remaining`).
    pub budget_pauses: IntCounterVec,
    /// Retries the retry budget refused (the failure was returned instead).
    pub retry_budget_refusals: IntCounter,

    /// Upstream attempts allowed in the window's current instance (the configured limit, or the
    /// upstream's when lower).
    pub quota_limit: IntGaugeVec,
    /// Attempts counted in the current instance (reserved blocks included: never below the true
    /// count).
    pub quota_used: IntGaugeVec,
    /// Unix time at which the current instance ends.
    pub quota_reset: GaugeVec,
    /// Length of the current instance (a month 28–31 days, a day 23–25 hours in zones with DST).
    pub quota_window: GaugeVec,
    /// Remaining count over remaining time: the even pace that lasts to the reset.
    pub quota_pace: GaugeVec,
    /// Attempts counted for the client in the current instance.
    pub quota_client_used: IntGaugeVec,
    /// Counts refused: `window_spent`, `client_max`, `reserved` (answered 429 quota_exhausted),
    /// `unavailable` (503 quota_unavailable).
    pub quota_refusals: IntCounterVec,
    /// Writes of the quota state file (`ok`, `failed`).
    pub quota_state_writes: IntCounterVec,

    /// Circuit breaker state: 1 for the current state (`closed`, `open`, `half_open`), else 0.
    pub breaker_state: IntGaugeVec,
    /// Circuit breaker mode: 1 for the current mode (`auto`, `forced_open`, `forced_closed`), else 0.
    pub breaker_mode: IntGaugeVec,
    /// Circuit breaker transitions, by the state entered.
    pub breaker_transitions: IntCounterVec,
    /// Requests failed fast because the circuit was open (or its probes were taken).
    pub breaker_rejections: IntCounter,
    /// Outcome reports the breaker could not take because its mailbox was full.
    pub breaker_reports_dropped: IntCounter,
    /// Probes of the upstream's health, by kind (`background`: sent by courier while the circuit
    /// is open; `half_open`: a client request let through while half-open) and result
    /// (`success`, `failure`, `no_verdict`: no attempt made, or an answer that says nothing).
    pub breaker_probes: IntCounterVec,

    /// Answers by what the cache did (`hit`, `miss`, `coalesced`, `stale`, `bypass`).
    pub cache_lookups: IntCounterVec,
    /// Answers held in the response cache.
    pub cache_entries: IntGauge,
    /// Bytes held in the response cache (answers plus per-entry overhead).
    pub cache_bytes: IntGauge,
    /// Answers removed from the cache, by cause (`expired`, `size`, `explicit`, `replaced`).
    pub cache_evictions: IntCounterVec,
    /// Async jobs accepted (202).
    pub jobs_accepted: IntCounter,
    /// Jobs by state: `pending` (accepted, not yet running here or anywhere) and `processing`
    /// (running in this process).
    pub jobs: IntGaugeVec,
    /// Jobs that reached a final state in this process, by state (`completed`, `failed`).
    pub jobs_finished: IntCounterVec,
    /// Time from accepting a job to its final state.
    pub job_duration: Histogram,
    /// Jobs taken over from a runner that died.
    pub jobs_taken_over: IntCounter,
    /// Jobs failed with `job_run_interrupted` instead of being run again: each of their runs
    /// ended with its process, `COURIER_JOB_MAX_RUNS` times (counted in `jobs_finished` too).
    pub jobs_run_interrupted: IntCounter,
    /// Callback deliveries, by result (`delivered`, `gave_up`, `refused`).
    pub callbacks: IntCounterVec,
    /// Callback delivery attempts, by result (`success`, `failure`).
    pub callback_attempts: IntCounterVec,
    /// Status entries of sync requests the store could not take (dropped, not blocking).
    pub status_records_dropped: IntCounter,
    /// Shared state through Redis: 1 for the current mode (`off`: no REDIS_URL; `shared`;
    /// `degraded`: Redis failing, replica on its own), else 0.
    pub shared_state: IntGaugeVec,
    /// Failed or timed-out Redis calls, by operation (shared state: `budget_*`, `token_*`,
    /// `cache_*`, `quota_*`, `fleet_*`, `lockout_*`; the job store: `job_*`).
    pub redis_errors: IntCounterVec,
    /// Redis calls refused by Redis's ACL or in the TLS handshake, by reason (`acl_wrongpass`:
    /// the user or password is not accepted; `acl_noauth`; `acl_noperm`; `tls_*`: a certificate
    /// refused either way); also counted in `courier_redis_errors_total`.
    pub redis_refusals: IntCounterVec,
    /// Replicas sharing this replica's Redis, as its last heartbeat counted them
    /// (`COURIER_REPLICAS` until the first answer; 1 without Redis).
    pub fleet_replicas: IntGauge,
    /// Upstream token requests avoided because another replica's token was used.
    pub token_shared_uses: IntCounter,
    /// Looks for another replica's token in Redis while this replica's token refresh backs off,
    /// by result (`adopted`, `none`: nothing newer there, `error`: Redis failed).
    pub token_shared_looks: IntCounterVec,
    /// Second-level (Redis) cache reads, by result (`hit`, `miss`, `error`: failed, timed out,
    /// or not tried while shared state is degraded).
    pub cache_l2_reads: IntCounterVec,
    /// Credential reloads (secrets from *_FILE variables and the clients file), by result
    /// (`ok`, `failed`: every previous value kept) and trigger (`signal`, `file_change`).
    pub config_reloads: IntCounterVec,
    /// 1 when the last credential reload succeeded (or none was tried yet), 0 when it failed.
    pub config_last_reload_successful: IntGauge,
    /// Unix time of the last successful credential reload (0 until one succeeds).
    pub config_last_reload_success: Gauge,
    /// Inbound requests refused by a limit of the gateway listener, by limit
    /// (`client_in_flight`, `header_size`, `body_timeout`, `header_timeout`, `malformed_head`).
    pub limit_rejections: IntCounterVec,
    /// Requests to the locked admin routes (every route but /metrics, /healthz and /readyz),
    /// by outcome (`allowed`, `unlocked`: no admin token configured, `missing_token`,
    /// `wrong_token`); each also writes an `admin_request` audit log line.
    pub admin_requests: IntCounterVec,
    /// Trace spans by what became of them (`exported`, `failed`: the export was refused or did
    /// not arrive, `dropped`: the export queue was full); all 0 while tracing is off.
    pub trace_spans: IntCounterVec,
    /// Suspicious activity: failed authentications, lockouts, refusals per client, spending.
    pub security: SecurityMetrics,
    /// TLS handshakes on the gateway listener, by result (`ok`; `no_client_certificate`,
    /// `bad_client_certificate`: expired, from another CA, not for client use; `incompatible`:
    /// an old protocol version, no common cipher suite or ALPN protocol, not TLS at all;
    /// `timeout`; `failed`: anything else, e.g. the caller hung up).
    pub tls_handshakes: IntCounterVec,
    /// When each listener's TLS material in use expires: the earliest `notAfter` in the file, in
    /// Unix seconds, by certificate (`gateway`, `gateway_client_ca`, `admin`); 0 where none is
    /// configured. Updated at start and by every reload that puts new files in use.
    pub tls_certificate_expiry: GaugeVec,
}

impl Metrics {
    /// The name of every metric courier exports (histograms without their `_bucket`, `_sum`
    /// and `_count` series), registered or not yet observed.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The text exposition of every metric, for `/metrics`.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding into a Vec cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests;
