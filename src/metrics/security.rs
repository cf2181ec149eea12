//! The series of suspicious activity: failed client authentications, lockouts, refusals per
//! client and error code, and each client's upstream spending against its own baseline.
//!
//! Why the source of a failed authentication is a *class* here, not an address or a prefix: a
//! label value chosen by whoever connects is a series an attacker creates at will (a capped set
//! of prefix buckets still churns as attackers come and go, and a series born at its first
//! event is invisible to `increase()`). The class (`loopback`, `private`, `public`) is known at
//! start and says what an alert needs — are keys being guessed, and from inside or outside;
//! the sources themselves, bounded by the lockout table, are in `/admin/state` (the top failing
//! sources and their /24 or /48, every lockout) and in the `auth_failed` and `auth_lockout` log
//! lines.

use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGauge};

use super::registrar::Registrar;
use super::Metrics;

/// `courier_auth_failures_total{reason}`: no key, or a key no client has.
pub const AUTH_FAILURE_REASONS: [&str; 2] = ["missing_key", "wrong_key"];
/// `courier_auth_failures_total{source_class}` (`security::SourceClass`).
pub const SOURCE_CLASSES: [&str; 3] = ["loopback", "private", "public"];
/// `courier_auth_lockout_events_total{event}`: a lockout began here, or an operator lifted one.
pub const LOCKOUT_EVENTS: [&str; 2] = ["locked", "lifted"];

/// The 4xx error codes an identified client can be answered (`courier_http_refusals_total{code}`).
pub const CLIENT_REFUSAL_CODES: [&str; 13] = [
    "invalid_json",
    "invalid_request",
    "invalid_callback_url",
    "callbacks_unavailable",
    "upstream_rejected",
    "payload_too_large",
    "unsupported_media_type",
    "not_found",
    "request_id_in_use",
    "request_body_timeout",
    "client_concurrency_exceeded",
    "budget_exhausted",
    "quota_exhausted",
];
/// The 4xx error codes answered before the caller is known (client `unknown`); the first two
/// only with a clients file.
pub const UNKNOWN_REFUSAL_CODES: [&str; 5] =
    ["unauthorized", "auth_locked_out", "headers_too_large", "not_found", "method_not_allowed"];

/// The security series (see the module documentation).
pub struct SecurityMetrics {
    /// Failed client authentications, by reason (`missing_key`, `wrong_key`) and the class of
    /// network they came from (`loopback`, `private`, `public`).
    pub auth_failures: IntCounterVec,
    /// Lockouts of sources by this replica, by event (`locked`: a lockout began with a wrong key
    /// seen here; `lifted`: an operator lifted one here); each also writes an audit log line.
    pub lockout_events: IntCounterVec,
    /// Sources locked out now, as this replica knows them.
    pub locked_sources: IntGauge,
    /// Requests answered 4xx with an error code, by client and code.
    pub refusals: IntCounterVec,
    /// Upstream attempts made for the client (its retries included; a job's to the client that
    /// submitted it).
    pub client_attempts: IntCounterVec,
    /// The client's baseline of upstream attempts per minute (a moving average, half-life
    /// `COURIER_SPEND_BASELINE_HALF_LIFE`).
    pub spend_baseline: GaugeVec,
    /// The client's attempts per minute in the last interval over its baseline (at least
    /// `COURIER_SPEND_MIN_PER_MINUTE`).
    pub spend_ratio: GaugeVec,
    /// 1 while the client's last interval's spending is above `COURIER_SPEND_ANOMALY_MULTIPLE`
    /// times its baseline, else 0.
    pub spend_anomalous: GaugeVec,
    /// Anomalous intervals seen (each also writes a `client_spend_anomalous` log line).
    pub spend_anomalies: IntCounter,
}

impl SecurityMetrics {
    /// Registers the security series.
    pub(super) fn register(r: &Registrar) -> SecurityMetrics {
        SecurityMetrics {
            auth_failures: r.counter_vec(
                "auth_failures_total",
                "Failed client authentications, by reason (missing_key, wrong_key) and the class of network they came from (loopback, private, public).",
                &["reason", "source_class"],
            ),
            lockout_events: r.counter_vec(
                "auth_lockout_events_total",
                "Lockouts of sources by this replica, by event (locked: a lockout began with a wrong key seen here; lifted: an operator lifted one here); each also writes an audit log line.",
                &["event"],
            ),
            locked_sources: r.int_gauge("auth_locked_sources", "Sources locked out now, as this replica knows them."),
            refusals: r.counter_vec(
                "http_refusals_total",
                "Requests answered 4xx with an error code, by client and code.",
                &["client", "code"],
            ),
            client_attempts: r.counter_vec(
                "client_upstream_attempts_total",
                "Upstream attempts made for the client (its retries included; a job's to the client that submitted it).",
                &["client"],
            ),
            spend_baseline: r.gauge_vec(
                "client_spend_baseline_attempts_per_minute",
                "The client's baseline of upstream attempts per minute (a moving average, half-life COURIER_SPEND_BASELINE_HALF_LIFE).",
                &["client"],
            ),
            spend_ratio: r.gauge_vec(
                "client_spend_ratio",
                "The client's attempts per minute in the last interval over its baseline (at least COURIER_SPEND_MIN_PER_MINUTE).",
                &["client"],
            ),
            spend_anomalous: r.gauge_vec(
                "client_spend_anomalous",
                "1 while the client's last interval's spending is above COURIER_SPEND_ANOMALY_MULTIPLE times its baseline, else 0.",
                &["client"],
            ),
            spend_anomalies: r.counter(
                "client_spend_anomalies_total",
                "Anomalous intervals seen (each also writes a client_spend_anomalous log line).",
            ),
        }
    }

    /// Creates the series known at start, at 0.
    pub(super) fn create_known_label_sets(&self) {
        for reason in AUTH_FAILURE_REASONS {
            for class in SOURCE_CLASSES {
                self.auth_failures.with_label_values(&[reason, class]);
            }
        }
        for event in LOCKOUT_EVENTS {
            self.lockout_events.with_label_values(&[event]);
        }
    }
}

impl Metrics {
    /// Creates, at 0, the security series of each client (`None`: open mode, the one client
    /// `open`) and the refusals of callers not yet known. Part of [`Metrics::add_clients`].
    pub(super) fn add_client_security(&self, clients: Option<&[&str]>) {
        let s = &self.security;
        let names: &[&str] = clients.unwrap_or(&[super::OPEN_CLIENT]);
        for name in names {
            for code in CLIENT_REFUSAL_CODES {
                s.refusals.with_label_values(&[name, code]);
            }
            s.client_attempts.with_label_values(&[name]);
            s.spend_baseline.with_label_values(&[name]);
            s.spend_ratio.with_label_values(&[name]);
            s.spend_anomalous.with_label_values(&[name]);
        }
        for code in UNKNOWN_REFUSAL_CODES {
            let known_only = matches!(code, "unauthorized" | "auth_locked_out");
            if clients.is_some() || !known_only {
                s.refusals.with_label_values(&[super::UNKNOWN_CLIENT, code]);
            }
        }
    }
}
