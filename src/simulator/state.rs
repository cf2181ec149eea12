//! State shared by all workers: configuration-derived constants, the limiter,
//! the token issuer, faults and counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use actix_web::http::header::HeaderValue;

use super::callbacks::Sink;
use super::config::SimConfig;
use super::credentials::Credentials;
use super::faults::{FaultState, Faults, FaultsPatch};
use super::quota::{QuotaWindows, QuotasPatch, QuotasReport};
use super::ratelimit::{Clock, Gcra};
use super::stats::{Counters, SimStats};
use super::tokens::{unix_ms, TokenIssuer};

/// Header values that never change, computed once at start.
#[derive(Debug)]
pub(crate) struct Precomputed {
    /// `X-RateLimit-Limit` (and the IETF `limit=`).
    pub(crate) limit: HeaderValue,
    /// `RateLimit-Policy: <limit>;w=60`, when IETF headers are on.
    pub(crate) policy: Option<HeaderValue>,
    /// The JSON number for `expires_in`.
    pub(crate) expires_in: String,
}

/// Everything the handlers share; only atomics are touched on the request path.
/// (No `Debug`: it holds credentials and the token secret.)
pub(crate) struct Shared {
    /// Accepted OAuth client id.
    pub(crate) client_id: String,
    /// Accepted OAuth client secrets and `X-API-Key` values (replaceable at run time).
    pub(crate) credentials: Credentials,
    /// Configured per-minute limit, as advertised in the headers.
    pub(crate) rate_limit_per_minute: u32,
    /// Header values computed once.
    pub(crate) headers: Precomputed,
    /// Time base of the limiter.
    pub(crate) clock: Clock,
    /// The account's rate limiter.
    pub(crate) limiter: Gcra,
    /// Token minting and validation.
    pub(crate) tokens: TokenIssuer,
    /// Active faults.
    pub(crate) faults: FaultState,
    /// Request counters.
    pub(crate) stats: Counters,
    /// The account's quota windows (none by default).
    pub(crate) quotas: QuotaWindows,
    /// The callback sink (`/_sim/callbacks`).
    pub(crate) callbacks: Sink,
    /// Source of `up_…` request ids.
    request_ids: RequestIds,
    /// Serialises control-plane patches (never taken on the request path).
    patch_lock: Mutex<()>,
}

impl Shared {
    /// Builds the shared state for `cfg`; fails on a bad quota entry.
    pub(crate) fn new(cfg: &SimConfig) -> Result<Self, String> {
        let limit = cfg.rate_limit_per_minute;
        let ttl = cfg.token_ttl.as_secs_f64();
        let expires_in = if ttl.fract() == 0.0 {
            format!("{}", cfg.token_ttl.as_secs())
        } else {
            serde_json::Number::from_f64(ttl).map_or_else(|| "0".to_owned(), |n| n.to_string())
        };
        let quotas = QuotaWindows::new(&cfg.quotas, cfg.quota_headers, unix_ms())?;
        Ok(Self {
            client_id: cfg.client_id.clone(),
            credentials: Credentials::new(&cfg.client_secret, &cfg.api_key),
            rate_limit_per_minute: limit,
            headers: Precomputed {
                limit: HeaderValue::from(limit),
                policy: cfg.ietf_headers.then(|| header_value(&format!("{limit};w=60"))),
                expires_in,
            },
            clock: Clock::new(),
            limiter: Gcra::new(limit, cfg.rate_burst),
            tokens: TokenIssuer::new(cfg.token_ttl, cfg.faults.revocation_epoch),
            faults: FaultState::new(&cfg.faults),
            stats: Counters::default(),
            quotas,
            callbacks: Sink::new(cfg.callback_secret.as_deref()),
            request_ids: RequestIds::new(),
            patch_lock: Mutex::new(()),
        })
    }

    /// The `/_sim/stats` document: the counters and the quota windows.
    pub(crate) fn stats_snapshot(&self) -> SimStats {
        SimStats { quotas: self.quotas.report(unix_ms()).windows, ..self.stats.snapshot() }
    }

    /// Zeroes the counters, the windows' refused counts and the arrivals.
    pub(crate) fn reset_stats(&self) {
        self.stats.reset();
        self.quotas.reset_stats();
    }

    /// Applies a quotas patch now (nothing when it is invalid) and returns the quotas.
    pub(crate) fn apply_quotas(&self, patch: &QuotasPatch) -> Result<QuotasReport, String> {
        self.quotas.apply(patch, unix_ms())
    }

    /// The current faults document.
    pub(crate) fn faults_snapshot(&self) -> Faults {
        self.faults.snapshot(self.tokens.epoch())
    }

    /// Applies a patch (clamping out-of-range values) and returns the new faults.
    pub(crate) fn apply_patch(&self, patch: &FaultsPatch) -> Faults {
        let _serial = self.patch_lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if patch.reset {
            self.faults.set_all(&Faults::default());
        }
        self.faults.apply(patch);
        if let Some(epoch) = patch.revocation_epoch {
            self.tokens.set_epoch(epoch);
        }
        if patch.revoke_tokens {
            self.tokens.revoke_all();
        }
        if let Some(n) = patch.rate_consume.filter(|&n| n > 0) {
            self.limiter.consume(n, self.clock.now_ns());
        }
        self.faults_snapshot()
    }

    /// A fresh `up_<16 hex>` request id.
    pub(crate) fn next_request_id(&self) -> String {
        self.request_ids.next()
    }
}

/// Builds a header value from text we generated ourselves (always visible ASCII).
pub(crate) fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Unique, random-looking request ids: a counter started at a random point and
/// passed through a bijective 64-bit mixer, so no two ids of one process collide.
#[derive(Debug)]
struct RequestIds(AtomicU64);

impl RequestIds {
    fn new() -> Self {
        Self(AtomicU64::new(rand::random()))
    }

    fn next(&self) -> String {
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        format!("up_{:016x}", mix64(n))
    }
}

/// The SplitMix64 finaliser: a bijection on `u64` with good avalanche.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn expires_in_is_integer_when_whole() {
        let mut cfg = SimConfig::default();
        assert_eq!(Shared::new(&cfg).unwrap().headers.expires_in, "3600");
        cfg.token_ttl = Duration::from_millis(1500);
        assert_eq!(Shared::new(&cfg).unwrap().headers.expires_in, "1.5");
    }

    #[test]
    fn request_ids_are_unique_and_well_formed() {
        let ids = RequestIds::new();
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
        assert_eq!(a.len(), 19);
        assert!(a.starts_with("up_"));
        assert!(a[3..].bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn patch_reset_keeps_epoch_and_revoke_bumps_it() {
        let sim = Shared::new(&SimConfig::default()).unwrap();
        let f = sim.apply_patch(&FaultsPatch { outage: Some(true), revoke_tokens: true, ..FaultsPatch::default() });
        assert!(f.outage);
        assert_eq!(f.revocation_epoch, 1);
        let f = sim.apply_patch(&FaultsPatch { reset: true, ..FaultsPatch::default() });
        assert_eq!(f, Faults { revocation_epoch: 1, ..Faults::default() });
    }
}
