//! Request counters (`GET /_sim/stats`), all plain atomics, plus the last few `traceparent`
//! headers (a lock taken only for requests that carry one, which courier sends only with
//! tracing on).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use super::quota::QuotaWindowStats;

/// Snapshot of the simulator's counters, as returned by `GET /_sim/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    /// Outcomes of `POST /v2/process`.
    pub process: ProcessStats,
    /// Outcomes of `POST /v2/oauth/token`.
    pub token: TokenStats,
    /// `/v2/process` requests being handled right now (including added latency).
    pub in_flight: u64,
    /// `/v2/process` requests received, counted on arrival: one whose caller went away before
    /// its answer (a killed process) counts here and in no outcome.
    pub received: u64,
    /// Highest `in_flight` seen since start or the last reset.
    pub peak_concurrency: u64,
    /// Requests refused by the rate limiter itself (injected 429s are not counted here).
    pub rate_limited_total: u64,
    /// Requests refused because a quota window was spent (429 `quota_exceeded`).
    #[serde(default)]
    pub quota_refused: u64,
    /// The quota windows (none unless set): used and refused per window.
    #[serde(default)]
    pub quotas: Vec<QuotaWindowStats>,
    /// The `X-Request-Id` of a recent `/v2/process` request (best effort: recorded only when
    /// no other worker is recording at the same instant, so it never blocks a request).
    pub last_request_id: Option<String>,
    /// The `traceparent` headers of the last [`TRACEPARENTS_KEPT`] `/v2/process` requests that
    /// had one, oldest first, recorded on arrival.
    #[serde(default)]
    pub traceparents: Vec<String>,
}

/// How many `traceparent` values [`SimStats::traceparents`] keeps.
pub const TRACEPARENTS_KEPT: usize = 64;

/// Per-outcome counts of `POST /v2/process` answers; `total` is the sum of the others.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStats {
    /// Requests answered (or dropped).
    pub total: u64,
    /// 200 answers.
    pub ok: u64,
    /// 400, 413 and other 4xx answers not counted below (including injected ones).
    pub bad_request: u64,
    /// 401 answers.
    pub unauthorized: u64,
    /// 403 answers.
    pub forbidden: u64,
    /// 429 answers (limiter refusals, quota refusals and injected 429s).
    pub rate_limited: u64,
    /// 5xx answers (outage and injected errors).
    pub server_error: u64,
    /// Connections dropped by the drop fault.
    pub dropped: u64,
}

/// Per-outcome counts of `POST /v2/oauth/token` answers; `total` is the sum of the others.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenStats {
    /// Requests answered.
    pub total: u64,
    /// Tokens issued.
    pub ok: u64,
    /// 400 / 401 answers (bad grant, bad credentials, malformed form).
    pub rejected: u64,
    /// 503 answers caused by the token-failure fault.
    pub failed: u64,
}

/// How a `/v2/process` request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProcessOutcome {
    /// 200.
    Ok,
    /// 400, 413 or another 4xx not listed below.
    BadRequest,
    /// 401.
    Unauthorized,
    /// 403.
    Forbidden,
    /// 429.
    RateLimited,
    /// 5xx.
    ServerError,
    /// Connection deliberately broken.
    Dropped,
}

impl ProcessOutcome {
    /// Classifies an answered request by its status code.
    pub(crate) fn from_status(status: u16) -> Self {
        match status {
            401 => Self::Unauthorized,
            403 => Self::Forbidden,
            429 => Self::RateLimited,
            400..=499 => Self::BadRequest,
            500.. => Self::ServerError,
            _ => Self::Ok,
        }
    }
}

/// How a token request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenOutcome {
    /// Token issued.
    Ok,
    /// Bad form, grant type or credentials.
    Rejected,
    /// Token-failure fault.
    Failed,
}

/// The live counters behind [`SimStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    process: [AtomicU64; 7],
    token: [AtomicU64; 3],
    in_flight: AtomicU64,
    received: AtomicU64,
    peak: AtomicU64,
    limiter_refusals: AtomicU64,
    quota_refusals: AtomicU64,
    last_request_id: Mutex<Option<Box<str>>>,
    traceparents: Mutex<VecDeque<Box<str>>>,
}

impl Counters {
    /// Counts one finished `/v2/process` request.
    pub(crate) fn record_process(&self, outcome: ProcessOutcome) {
        self.process[outcome as usize].fetch_add(1, Relaxed);
    }

    /// Counts one finished token request.
    pub(crate) fn record_token(&self, outcome: TokenOutcome) {
        self.token[outcome as usize].fetch_add(1, Relaxed);
    }

    /// Remembers a request's `X-Request-Id`; skipped rather than waiting when contended.
    pub(crate) fn note_request_id(&self, id: &[u8]) {
        if let Ok(mut last) = self.last_request_id.try_lock() {
            *last = Some(String::from_utf8_lossy(id).into());
        }
    }

    /// Keeps a request's `traceparent`, dropping the oldest beyond [`TRACEPARENTS_KEPT`]. Unlike
    /// the request id it waits for the lock: a test asserts every value an attempt carried.
    pub(crate) fn note_traceparent(&self, value: &[u8]) {
        let mut ring = self.traceparents.lock().unwrap_or_else(PoisonError::into_inner);
        if ring.len() == TRACEPARENTS_KEPT {
            ring.pop_front();
        }
        ring.push_back(String::from_utf8_lossy(value).into());
    }

    /// Counts one refusal by the rate limiter.
    pub(crate) fn record_limiter_refusal(&self) {
        self.limiter_refusals.fetch_add(1, Relaxed);
    }

    /// Counts one refusal by a spent quota window.
    pub(crate) fn record_quota_refusal(&self) {
        self.quota_refusals.fetch_add(1, Relaxed);
    }

    /// Marks a `/v2/process` request as in flight until the guard is dropped.
    pub(crate) fn enter(&self) -> InFlight<'_> {
        self.received.fetch_add(1, Relaxed);
        let now = self.in_flight.fetch_add(1, Relaxed) + 1;
        self.peak.fetch_max(now, Relaxed);
        InFlight(self)
    }

    /// Zeroes the counters; the peak restarts from the current in-flight count.
    pub(crate) fn reset(&self) {
        for c in self.process.iter().chain(&self.token) {
            c.store(0, Relaxed);
        }
        self.limiter_refusals.store(0, Relaxed);
        self.quota_refusals.store(0, Relaxed);
        self.received.store(0, Relaxed);
        self.peak.store(self.in_flight.load(Relaxed), Relaxed);
        self.traceparents.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    /// A consistent-enough snapshot (each counter is read once).
    pub(crate) fn snapshot(&self) -> SimStats {
        let p = |o: ProcessOutcome| self.process[o as usize].load(Relaxed);
        let t = |o: TokenOutcome| self.token[o as usize].load(Relaxed);
        let mut process = ProcessStats {
            total: 0,
            ok: p(ProcessOutcome::Ok),
            bad_request: p(ProcessOutcome::BadRequest),
            unauthorized: p(ProcessOutcome::Unauthorized),
            forbidden: p(ProcessOutcome::Forbidden),
            rate_limited: p(ProcessOutcome::RateLimited),
            server_error: p(ProcessOutcome::ServerError),
            dropped: p(ProcessOutcome::Dropped),
        };
        process.total = process.ok
            + process.bad_request
            + process.unauthorized
            + process.forbidden
            + process.rate_limited
            + process.server_error
            + process.dropped;
        let mut token = TokenStats {
            total: 0,
            ok: t(TokenOutcome::Ok),
            rejected: t(TokenOutcome::Rejected),
            failed: t(TokenOutcome::Failed),
        };
        token.total = token.ok + token.rejected + token.failed;
        let in_flight = self.in_flight.load(Relaxed);
        SimStats {
            process,
            token,
            in_flight,
            received: self.received.load(Relaxed),
            peak_concurrency: self.peak.load(Relaxed).max(in_flight),
            rate_limited_total: self.limiter_refusals.load(Relaxed),
            quota_refused: self.quota_refusals.load(Relaxed),
            quotas: Vec::new(),
            last_request_id: self.last_request_id.lock().ok().and_then(|id| id.as_deref().map(str::to_owned)),
            traceparents: self
                .traceparents
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|v| v.to_string())
                .collect(),
        }
    }
}

/// Guard returned by [`Counters::enter`]; decrements `in_flight` on drop.
pub(crate) struct InFlight<'a>(&'a Counters);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_peak() {
        let c = Counters::default();
        {
            let _a = c.enter();
            let _b = c.enter();
            assert_eq!(c.snapshot().in_flight, 2);
        }
        let _c = c.enter();
        c.record_process(ProcessOutcome::Ok);
        c.record_process(ProcessOutcome::from_status(429));
        c.record_process(ProcessOutcome::from_status(503));
        c.record_process(ProcessOutcome::from_status(413));
        c.record_token(TokenOutcome::Failed);
        let s = c.snapshot();
        assert_eq!((s.in_flight, s.peak_concurrency, s.received), (1, 2, 3));
        assert_eq!(s.process.total, 4);
        assert_eq!((s.process.rate_limited, s.process.server_error), (1, 1));
        assert_eq!(s.process.bad_request, 1);
        assert_eq!((s.token.total, s.token.failed), (1, 1));
        c.reset();
        let s = c.snapshot();
        assert_eq!((s.process.total, s.token.total, s.peak_concurrency, s.received), (0, 0, 1, 0));
    }

    #[test]
    fn keeps_the_last_traceparents_until_reset() {
        let c = Counters::default();
        assert!(c.snapshot().traceparents.is_empty());
        for i in 0..TRACEPARENTS_KEPT + 3 {
            c.note_traceparent(format!("00-{i:032x}-{i:016x}-01").as_bytes());
        }
        let kept = c.snapshot().traceparents;
        assert_eq!(kept.len(), TRACEPARENTS_KEPT);
        assert_eq!(kept[0], format!("00-{:032x}-{:016x}-01", 3, 3), "the oldest three were dropped");
        assert_eq!(kept[TRACEPARENTS_KEPT - 1], format!("00-{0:032x}-{0:016x}-01", TRACEPARENTS_KEPT + 2));
        c.reset();
        assert!(c.snapshot().traceparents.is_empty());
    }
}
