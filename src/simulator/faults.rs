//! Fault injection: the serialisable [`Faults`] / [`FaultsPatch`] documents
//! and the atomic state the request path reads without locking.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Active faults, as returned by `GET /_sim/faults` and `POST /_sim/faults`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Faults {
    /// Probability (0..=1) that an accepted `/v2/process` request fails with `error_status`.
    pub error_rate: f64,
    /// HTTP status of injected errors (400..=599); 503 also carries `Retry-After: 1`.
    pub error_status: u16,
    /// The next this-many accepted requests fail with `error_status` (checked before `error_rate`).
    pub error_count: u64,
    /// Latency added to every accepted request, in milliseconds.
    pub latency_ms: f64,
    /// When true, `/v2/process` answers 503 `service_unavailable` before any other check.
    pub outage: bool,
    /// Probability (0..=1) that an accepted request's connection is dropped without a response.
    pub drop_rate: f64,
    /// The next this-many accepted requests are dropped (checked before `drop_rate`).
    pub drop_count: u64,
    /// When true, the token endpoint answers 503 `temporarily_unavailable` to valid requests.
    pub token_failure: bool,
    /// Current token epoch; tokens minted under another epoch are rejected.
    pub revocation_epoch: u64,
    /// When above 0, every successful `/v2/process` answer's `result.processed_data` is this
    /// many arrays nested in each other, as a buggy or hostile upstream might send.
    #[serde(default)]
    pub nested_depth: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            error_rate: 0.0,
            error_status: 500,
            error_count: 0,
            latency_ms: 0.0,
            outage: false,
            drop_rate: 0.0,
            drop_count: 0,
            token_failure: false,
            revocation_epoch: 0,
            nested_depth: 0,
        }
    }
}

/// A change to the active faults (`POST /_sim/faults`); every field is optional.
///
/// Application order: `reset`, then the plain fields, then `revoke_tokens`,
/// then `rate_consume`. Unknown fields are rejected.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsPatch {
    /// Clear all faults (back to [`Faults::default`]) before applying the rest; keeps the token epoch.
    #[serde(default, skip_serializing_if = "is_false")]
    pub reset: bool,
    /// New value for [`Faults::error_rate`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    /// New value for [`Faults::error_status`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_status: Option<u16>,
    /// New value for [`Faults::error_count`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_count: Option<u64>,
    /// New value for [`Faults::latency_ms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// New value for [`Faults::outage`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outage: Option<bool>,
    /// New value for [`Faults::drop_rate`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_rate: Option<f64>,
    /// New value for [`Faults::drop_count`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_count: Option<u64>,
    /// New value for [`Faults::token_failure`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_failure: Option<bool>,
    /// Set the token epoch explicitly (tokens of every other epoch become invalid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_epoch: Option<u64>,
    /// New value for [`Faults::nested_depth`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nested_depth: Option<u64>,
    /// Bump the token epoch, invalidating every token issued so far.
    #[serde(default, skip_serializing_if = "is_false")]
    pub revoke_tokens: bool,
    /// Take this many permits from the rate-limit bucket now, as another consumer of the
    /// same account would; if fewer are left, the bucket is simply empty afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_consume: Option<u64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl FaultsPatch {
    /// Checks value ranges; the message names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [("error_rate", self.error_rate), ("drop_rate", self.drop_rate)] {
            if value.is_some_and(|v| !(0.0..=1.0).contains(&v)) {
                return Err(format!("{name} must be between 0 and 1"));
            }
        }
        if self.latency_ms.is_some_and(|v| !(0.0..=MAX_LATENCY_MS).contains(&v)) {
            return Err(format!("latency_ms must be between 0 and {MAX_LATENCY_MS}"));
        }
        if self.error_status.is_some_and(|s| !(400..=599).contains(&s)) {
            return Err("error_status must be between 400 and 599".to_owned());
        }
        if self.nested_depth.is_some_and(|d| d > MAX_NESTED_DEPTH) {
            return Err(format!("nested_depth must be between 0 and {MAX_NESTED_DEPTH}"));
        }
        Ok(())
    }
}

/// Deepest nesting the simulator writes: 2 MB of brackets, within the upstream body limit
/// courier accepts by default, so the depth bound, not the size limit, is what refuses it.
pub const MAX_NESTED_DEPTH: u64 = 1_000_000;

/// One day; keeps `Duration::from_secs_f64` far from overflow.
const MAX_LATENCY_MS: f64 = 86_400_000.0;

/// Lock-free fault settings read on every request.
#[derive(Debug)]
pub(crate) struct FaultState {
    error_rate: AtomicU64,
    error_status: AtomicU16,
    error_count: AtomicU64,
    latency_ms: AtomicU64,
    outage: AtomicBool,
    drop_rate: AtomicU64,
    drop_count: AtomicU64,
    token_failure: AtomicBool,
    nested_depth: AtomicU64,
}

impl FaultState {
    /// State initialised from `faults` (its `revocation_epoch` is ignored here).
    pub(crate) fn new(faults: &Faults) -> Self {
        let state = Self {
            error_rate: AtomicU64::new(0),
            error_status: AtomicU16::new(500),
            error_count: AtomicU64::new(0),
            latency_ms: AtomicU64::new(0),
            outage: AtomicBool::new(false),
            drop_rate: AtomicU64::new(0),
            drop_count: AtomicU64::new(0),
            token_failure: AtomicBool::new(false),
            nested_depth: AtomicU64::new(0),
        };
        state.set_all(faults);
        state
    }

    /// Overwrites every fault (not the epoch, which lives with the tokens).
    pub(crate) fn set_all(&self, f: &Faults) {
        self.apply(&FaultsPatch {
            error_rate: Some(f.error_rate),
            error_status: Some(f.error_status),
            error_count: Some(f.error_count),
            latency_ms: Some(f.latency_ms),
            outage: Some(f.outage),
            drop_rate: Some(f.drop_rate),
            drop_count: Some(f.drop_count),
            token_failure: Some(f.token_failure),
            nested_depth: Some(f.nested_depth),
            ..FaultsPatch::default()
        });
    }

    /// Applies the plain fault fields of `p`, clamping out-of-range values.
    /// `reset`, `revoke_tokens`, `revocation_epoch` and `rate_consume` are handled by the caller.
    pub(crate) fn apply(&self, p: &FaultsPatch) {
        if let Some(v) = p.error_rate {
            store_f64(&self.error_rate, clamp(v, 1.0));
        }
        if let Some(v) = p.error_status {
            self.error_status.store(v.clamp(400, 599), Ordering::Relaxed);
        }
        if let Some(v) = p.error_count {
            self.error_count.store(v, Ordering::Relaxed);
        }
        if let Some(v) = p.latency_ms {
            store_f64(&self.latency_ms, clamp(v, MAX_LATENCY_MS));
        }
        if let Some(v) = p.outage {
            self.outage.store(v, Ordering::Relaxed);
        }
        if let Some(v) = p.drop_rate {
            store_f64(&self.drop_rate, clamp(v, 1.0));
        }
        if let Some(v) = p.drop_count {
            self.drop_count.store(v, Ordering::Relaxed);
        }
        if let Some(v) = p.token_failure {
            self.token_failure.store(v, Ordering::Relaxed);
        }
        if let Some(v) = p.nested_depth {
            self.nested_depth.store(v.min(MAX_NESTED_DEPTH), Ordering::Relaxed);
        }
    }

    /// The current settings, with the given token epoch.
    pub(crate) fn snapshot(&self, revocation_epoch: u64) -> Faults {
        Faults {
            error_rate: load_f64(&self.error_rate),
            error_status: self.error_status.load(Ordering::Relaxed),
            error_count: self.error_count.load(Ordering::Relaxed),
            latency_ms: load_f64(&self.latency_ms),
            outage: self.outage.load(Ordering::Relaxed),
            drop_rate: load_f64(&self.drop_rate),
            drop_count: self.drop_count.load(Ordering::Relaxed),
            token_failure: self.token_failure.load(Ordering::Relaxed),
            revocation_epoch,
            nested_depth: self.nested_depth.load(Ordering::Relaxed),
        }
    }

    /// Whether the outage fault is on.
    pub(crate) fn outage(&self) -> bool {
        self.outage.load(Ordering::Relaxed)
    }

    /// Whether the token endpoint should fail.
    pub(crate) fn token_failure(&self) -> bool {
        self.token_failure.load(Ordering::Relaxed)
    }

    /// How deep a successful answer's `processed_data` nests (0: the normal answer).
    pub(crate) fn nested_depth(&self) -> u64 {
        self.nested_depth.load(Ordering::Relaxed)
    }

    /// Latency to add to an accepted request, if any.
    pub(crate) fn latency(&self) -> Option<Duration> {
        let ms = load_f64(&self.latency_ms);
        (ms > 0.0).then(|| Duration::from_secs_f64(ms / 1000.0))
    }

    /// Decides whether to drop this request's connection (consumes `drop_count` first).
    pub(crate) fn take_drop(&self) -> bool {
        take_one(&self.drop_count) || roll(&self.drop_rate)
    }

    /// Decides whether to fail this request, returning the status (consumes `error_count` first).
    pub(crate) fn take_error(&self) -> Option<u16> {
        (take_one(&self.error_count) || roll(&self.error_rate)).then(|| self.error_status.load(Ordering::Relaxed))
    }
}

/// Decrements `counter` if it is positive; true when a unit was taken.
fn take_one(counter: &AtomicU64) -> bool {
    counter.load(Ordering::Relaxed) > 0
        && counter.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok()
}

/// True with the probability stored in `rate` (no RNG call when the rate is 0).
fn roll(rate: &AtomicU64) -> bool {
    let p = load_f64(rate);
    p > 0.0 && (p >= 1.0 || rand::random::<f64>() < p)
}

fn clamp(v: f64, max: f64) -> f64 {
    if v.is_nan() {
        0.0
    } else {
        v.clamp(0.0, max)
    }
}

fn store_f64(cell: &AtomicU64, v: f64) {
    cell.store(v.to_bits(), Ordering::Relaxed);
}

fn load_f64(cell: &AtomicU64) -> f64 {
    f64::from_bits(cell.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_consumed_then_rates_apply() {
        let s = FaultState::new(&Faults::default());
        s.apply(&FaultsPatch {
            error_count: Some(2),
            error_status: Some(503),
            drop_count: Some(1),
            ..FaultsPatch::default()
        });
        assert!(s.take_drop());
        assert!(!s.take_drop());
        assert_eq!(s.take_error(), Some(503));
        assert_eq!(s.take_error(), Some(503));
        assert_eq!(s.take_error(), None);
        s.apply(&FaultsPatch { error_rate: Some(1.0), ..FaultsPatch::default() });
        assert_eq!(s.take_error(), Some(503));
        assert_eq!(s.snapshot(7).revocation_epoch, 7);
    }

    #[test]
    fn validation_and_clamping() {
        let bad = FaultsPatch { error_rate: Some(1.5), ..FaultsPatch::default() };
        assert!(bad.validate().unwrap_err().contains("error_rate"));
        let s = FaultState::new(&Faults::default());
        s.apply(&bad);
        assert_eq!(s.snapshot(0).error_rate, 1.0);
        let status = FaultsPatch { error_status: Some(200), ..FaultsPatch::default() };
        assert!(status.validate().is_err());
        assert!(FaultsPatch::default().validate().is_ok());
    }

    #[test]
    fn patch_json_rejects_unknown_fields() {
        assert!(serde_json::from_str::<FaultsPatch>(r#"{"outage":true}"#).is_ok());
        assert!(serde_json::from_str::<FaultsPatch>(r#"{"outrage":true}"#).is_err());
    }
}
