//! The label values of every labelled metric, known in advance: enums here, and fixed lists
//! for the labels whose enum lives with the code that counts (upstream outcomes, the budget,
//! the breaker, the cache, the job runner), which sits above this leaf module and cannot be
//! imported from it; `tests/metrics_at_start.rs` checks that each list matches its enum. Every
//! combination of them exists at 0 from start-up ([`Metrics::new`]), every client's from the
//! moment the clients file is read ([`Metrics::add_clients`]), and every quota window's from
//! the moment the quotas are set up ([`Metrics::add_quota`]): a fresh process exports every
//! series a dashboard or an alert asks for, and `increase()` sees the first event of each (a
//! series born at its first event has no earlier sample to count from).

use super::tls::{TlsCertificate, TLS_HANDSHAKE_RESULTS};
use super::Metrics;

/// Inbound routes, the `route` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// `POST /api/external/process`.
    Process,
    /// `GET /api/external/status/{id}`.
    Status,
    /// `GET /openapi.json`.
    OpenApi,
    /// Anything else (answered 404/405).
    Other,
}

impl Route {
    /// Every route, in label order.
    pub const ALL: [Route; 4] = [Route::Process, Route::Status, Route::OpenApi, Route::Other];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Process => "process",
            Route::Status => "status",
            Route::OpenApi => "openapi",
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
    /// Every result, in label order.
    pub const ALL: [RefreshResult; 3] = [RefreshResult::Success, RefreshResult::Rejected, RefreshResult::Failure];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshResult::Success => "success",
            RefreshResult::Rejected => "rejected",
            RefreshResult::Failure => "failure",
        }
    }
}

/// How a probe ended, the `result` label of `courier_breaker_probes_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeResult {
    /// The upstream answered.
    Success,
    /// The upstream failed.
    Failure,
    /// No verdict: no attempt was made, the answer said nothing about health, or the lease ran out.
    NoVerdict,
}

impl ProbeResult {
    /// Every result, in label order.
    pub const ALL: [ProbeResult; 3] = [ProbeResult::Success, ProbeResult::Failure, ProbeResult::NoVerdict];

    /// From a probe's verdict.
    pub fn of(success: Option<bool>) -> ProbeResult {
        match success {
            Some(true) => ProbeResult::Success,
            Some(false) => ProbeResult::Failure,
            None => ProbeResult::NoVerdict,
        }
    }

    /// The label value (`success`, `failure`, `no_verdict`).
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeResult::Success => "success",
            ProbeResult::Failure => "failure",
            ProbeResult::NoVerdict => "no_verdict",
        }
    }
}

/// Which probe, the `kind` label of `courier_breaker_probes_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// Sent by courier itself while the circuit is open.
    Background,
    /// A client request let through while half-open.
    HalfOpen,
}

impl ProbeKind {
    /// Every kind, in label order.
    pub const ALL: [ProbeKind; 2] = [ProbeKind::Background, ProbeKind::HalfOpen];

    /// The label value (`background`, `half_open`).
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Background => "background",
            ProbeKind::HalfOpen => "half_open",
        }
    }
}

/// How a look for another replica's token ended, the `result` label of
/// `courier_token_shared_looks_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookResult {
    /// A usable token was there and is now this replica's.
    Adopted,
    /// Nothing newer than what this replica has.
    Nothing,
    /// Redis failed.
    Error,
}

impl LookResult {
    /// Every result, in label order.
    pub const ALL: [LookResult; 3] = [LookResult::Adopted, LookResult::Nothing, LookResult::Error];

    /// The label value (`adopted`, `none`, `error`).
    pub fn as_str(self) -> &'static str {
        match self {
            LookResult::Adopted => "adopted",
            LookResult::Nothing => "none",
            LookResult::Error => "error",
        }
    }
}

/// What started a credential reload, the `trigger` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadTrigger {
    /// SIGHUP.
    Signal,
    /// A watched file changed (seen by the poll).
    FileChange,
}

impl ReloadTrigger {
    /// Every trigger, in label order.
    pub const ALL: [ReloadTrigger; 2] = [ReloadTrigger::Signal, ReloadTrigger::FileChange];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadTrigger::Signal => "signal",
            ReloadTrigger::FileChange => "file_change",
        }
    }
}

/// How a request to a locked admin route was judged, the `outcome` label of
/// `courier_admin_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminOutcome {
    /// The admin token was presented.
    Allowed,
    /// No admin token is configured (the listener is on loopback): let through unchecked.
    Unlocked,
    /// Refused: no `Authorization: Bearer` token.
    MissingToken,
    /// Refused: a token that is not the admin token.
    WrongToken,
}

impl AdminOutcome {
    /// Every outcome, in label order.
    pub const ALL: [AdminOutcome; 4] =
        [AdminOutcome::Allowed, AdminOutcome::Unlocked, AdminOutcome::MissingToken, AdminOutcome::WrongToken];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminOutcome::Allowed => "allowed",
            AdminOutcome::Unlocked => "unlocked",
            AdminOutcome::MissingToken => "missing_token",
            AdminOutcome::WrongToken => "wrong_token",
        }
    }

    /// Whether the request was let through.
    pub fn allowed(self) -> bool {
        matches!(self, AdminOutcome::Allowed | AdminOutcome::Unlocked)
    }
}

/// How a credential reload ended, the `result` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadResult {
    /// Everything read validated and is in use.
    Ok,
    /// Something did not validate; every previous value is kept.
    Failed,
}

impl ReloadResult {
    /// Every result, in label order.
    pub const ALL: [ReloadResult; 2] = [ReloadResult::Ok, ReloadResult::Failed];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Ok => "ok",
            ReloadResult::Failed => "failed",
        }
    }
}

/// `courier_upstream_attempts_total{outcome}` (the upstream's `Outcome`, in its order).
pub const ATTEMPT_OUTCOMES: [&str; 12] = [
    "success",
    "rejected",
    "unauthorized",
    "forbidden",
    "rate_limited",
    "server_error",
    "other_status",
    "timeout",
    "connect_error",
    "invalid_response",
    "tls_error",
    "too_large",
];

/// The outcomes a failed attempt is retried for, the `reason` label values of
/// `courier_upstream_retries_total`: connection errors, timeouts, 5xx and 429. A success, any
/// other 4xx or a refused certificate is never a reason to retry (see `Attempt::retryable`).
pub const RETRY_REASONS: [&str; 4] = ["rate_limited", "server_error", "timeout", "connect_error"];

/// `courier_budget_grants_total{path}`.
pub const GRANT_PATHS: [&str; 2] = ["fast", "queued"];
/// `courier_budget_rejections_total{reason}` (the budget's `RefusalReason`).
pub const REFUSAL_REASONS: [&str; 2] = ["queue_full", "deadline"];
/// `courier_budget_pauses_total{source}` (the budget's `PauseSource`).
pub const PAUSE_SOURCES: [&str; 2] = ["retry_after", "remaining"];
/// `courier_quota_refusals_total{reason}` (the quota's `QuotaReason`).
pub const QUOTA_REFUSAL_REASONS: [&str; 4] = ["window_spent", "client_max", "reserved", "unavailable"];
/// `courier_quota_state_writes_total{result}`.
pub const QUOTA_WRITE_RESULTS: [&str; 2] = ["ok", "failed"];
/// `courier_breaker_state{state}`, and the `to` of `courier_breaker_transitions_total` (the
/// breaker's `State`: each is entered from another).
pub const BREAKER_STATES: [&str; 3] = ["closed", "open", "half_open"];
/// `courier_breaker_mode{mode}` (the breaker's `Mode`).
pub const BREAKER_MODES: [&str; 3] = ["auto", "forced_open", "forced_closed"];
/// `courier_cache_lookups_total{result}` (the cache's `CacheStatus`).
pub const CACHE_RESULTS: [&str; 5] = ["hit", "miss", "coalesced", "stale", "bypass"];
/// `courier_cache_evictions_total{cause}`.
pub const EVICTION_CAUSES: [&str; 4] = ["expired", "explicit", "replaced", "size"];
/// `courier_jobs{state}`: the states a job is in before its end.
pub const JOB_STATES: [&str; 2] = ["pending", "processing"];
/// `courier_jobs_finished_total{state}`: the final states.
pub const JOB_FINAL_STATES: [&str; 2] = ["completed", "failed"];
/// `courier_callbacks_total{result}`: how a delivery ended.
pub const CALLBACK_RESULTS: [&str; 3] = ["delivered", "gave_up", "refused"];
/// `courier_callback_attempts_total{result}`.
pub const CALLBACK_ATTEMPT_RESULTS: [&str; 2] = ["success", "failure"];
/// `courier_shared_state{mode}`.
pub const SHARED_MODES: [&str; 3] = ["off", "shared", "degraded"];
/// `courier_limit_rejections_total{limit}`.
pub const LIMITS: [&str; 5] = ["client_in_flight", "header_size", "body_timeout", "header_timeout", "malformed_head"];

/// The `client` of requests without a clients file: every caller is this one client.
pub const OPEN_CLIENT: &str = "open";
/// The `client` of requests answered before their caller was known (no or a wrong key, a
/// refused head, an unknown route).
pub const UNKNOWN_CLIENT: &str = "unknown";

/// The statuses a route answers an identified client: success, refusals of the request
/// itself, limits, and upstream failures (see `ApiError::status`).
fn identified_statuses(route: Route) -> &'static [u16] {
    match route {
        Route::Process => &[200, 202, 400, 408, 409, 413, 415, 429, 502, 503, 504],
        Route::Status => &[200, 400, 404, 503],
        Route::OpenApi => &[200],
        Route::Other => &[],
    }
}

/// The statuses a route answers before the caller is known: a head over the size limit, and,
/// with a clients file, a missing or wrong key and a locked-out source (the OpenAPI document
/// needs none).
fn unknown_statuses(route: Route, keys: bool) -> &'static [u16] {
    match (route, keys) {
        (Route::Process | Route::Status, true) => &[401, 429, 431],
        (Route::Process | Route::Status, false) => &[431],
        (Route::OpenApi, true) => &[200],
        (Route::OpenApi, false) => &[],
        (Route::Other, _) => &[404, 405, 431],
    }
}

/// The `result` label values of `courier_trace_spans_total`.
pub const TRACE_SPAN_RESULTS: [&str; 3] = ["exported", "failed", "dropped"];

/// The `status_class` label of a status.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

impl Metrics {
    /// Creates every label set known in advance, at 0.
    pub(super) fn create_known_label_sets(&self) {
        let each = |vec: &prometheus::IntCounterVec, values: &[&str]| {
            for value in values {
                vec.with_label_values(&[value]);
            }
        };
        each(&self.upstream_attempts, &ATTEMPT_OUTCOMES);
        each(&self.upstream_retries, &RETRY_REASONS);
        each(&self.token_refreshes, &RefreshResult::ALL.map(RefreshResult::as_str));
        each(&self.budget_grants, &GRANT_PATHS);
        each(&self.budget_rejections, &REFUSAL_REASONS);
        each(&self.budget_pauses, &PAUSE_SOURCES);
        each(&self.quota_refusals, &QUOTA_REFUSAL_REASONS);
        each(&self.quota_state_writes, &QUOTA_WRITE_RESULTS);
        each(&self.breaker_transitions, &BREAKER_STATES);
        each(&self.cache_lookups, &CACHE_RESULTS);
        each(&self.cache_evictions, &EVICTION_CAUSES);
        each(&self.jobs_finished, &JOB_FINAL_STATES);
        each(&self.callbacks, &CALLBACK_RESULTS);
        each(&self.callback_attempts, &CALLBACK_ATTEMPT_RESULTS);
        each(&self.token_shared_looks, &LookResult::ALL.map(LookResult::as_str));
        each(&self.limit_rejections, &LIMITS);
        each(&self.admin_requests, &AdminOutcome::ALL.map(AdminOutcome::as_str));
        each(&self.trace_spans, &TRACE_SPAN_RESULTS);
        each(&self.tls_handshakes, &TLS_HANDSHAKE_RESULTS);
        for (gauge, values) in [
            (&self.breaker_state, &BREAKER_STATES[..]),
            (&self.breaker_mode, &BREAKER_MODES[..]),
            (&self.jobs, &JOB_STATES[..]),
            (&self.shared_state, &SHARED_MODES[..]),
        ] {
            for value in values {
                gauge.with_label_values(&[value]);
            }
        }
        for certificate in TlsCertificate::ALL {
            self.tls_certificate_expiry.with_label_values(&[certificate.as_str()]);
        }
        for kind in ProbeKind::ALL {
            for result in ProbeResult::ALL {
                self.breaker_probes.with_label_values(&[kind.as_str(), result.as_str()]);
            }
        }
        for result in ReloadResult::ALL {
            for trigger in ReloadTrigger::ALL {
                self.config_reloads.with_label_values(&[result.as_str(), trigger.as_str()]);
            }
        }
        self.security.create_known_label_sets();
    }

    /// Creates the request series of every client named in the clients file (`None`: no
    /// file, the one client `open`) and of callers not yet known, at 0. Called when the clients
    /// file is read, at start and at each reload (a client already known keeps its series).
    pub fn add_clients(&self, clients: Option<&[&str]>) {
        let names: &[&str] = clients.unwrap_or(&[OPEN_CLIENT]);
        for route in Route::ALL {
            for name in names {
                self.add_request_series(route, identified_statuses(route), name);
            }
            self.add_request_series(route, unknown_statuses(route, clients.is_some()), UNKNOWN_CLIENT);
        }
        self.add_client_security(clients);
    }

    fn add_request_series(&self, route: Route, statuses: &[u16], client: &str) {
        for &status in statuses {
            self.http_requests.with_label_values(&[route.as_str(), &status.to_string(), client]);
            self.http_duration.with_label_values(&[route.as_str(), status_class(status), client]);
        }
    }
}
