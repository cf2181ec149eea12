//! GCRA (the generic cell rate algorithm), lock-free: the whole state is one theoretical
//! arrival time (TAT) in an `AtomicU64`, as in the governor crate.
//!
//! Why GCRA and not a token bucket with a refill timer: it is the same budget (rate `1/T`,
//! burst `B`), but its state is a single number, so the fast path is one compare-and-swap
//! with no lock and no background task; a request may go at `t` when `TAT − t ≤ τ` with
//! `τ = (B − 1)·T`, and then `TAT := max(TAT, t) + T`. What the upstream tells us folds
//! into the same number: a pause until `p` is `TAT := max(TAT, p + τ)`, and "only `r`
//! permits left" is `TAT := max(TAT, t + τ + T − r·T)`. Both only ever move TAT forward,
//! so they are one `fetch_max` each.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A rate of `per_minute` upstream attempts with bursts of `burst`.
#[derive(Debug)]
pub struct Gcra {
    base: Instant,
    /// The interval at the configured rate.
    rate_emission_ns: u64,
    /// The interval in force: the rate's, or a longer one while quota pacing slows it.
    emission_ns: AtomicU64,
    tolerance_ns: u64,
    burst: u32,
    tat: AtomicU64,
}

/// Why rate parameters were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rate: {0}")]
pub struct InvalidRate(pub &'static str);

impl Gcra {
    /// A full budget of `per_minute` attempts with bursts of `burst`.
    pub fn try_new(per_minute: u32, burst: u32) -> Result<Gcra, InvalidRate> {
        if per_minute == 0 {
            return Err(InvalidRate("the rate must be at least 1 per minute"));
        }
        if burst == 0 {
            return Err(InvalidRate("the burst must be at least 1"));
        }
        let emission_ns = 60_000_000_000 / u64::from(per_minute);
        Ok(Gcra {
            base: Instant::now(),
            rate_emission_ns: emission_ns,
            emission_ns: AtomicU64::new(emission_ns),
            tolerance_ns: emission_ns * u64::from(burst - 1),
            burst,
            tat: AtomicU64::new(0),
        })
    }

    /// The time between permits at the steady rate (slower while paced).
    pub fn emission_interval(&self) -> Duration {
        Duration::from_nanos(self.emission())
    }

    fn emission(&self) -> u64 {
        self.emission_ns.load(Ordering::Relaxed)
    }

    /// Paces the budget: permits at most every `interval` (`None`: the configured rate). The
    /// burst stays the rate's, so a paced budget still lets a short burst through.
    pub fn set_pace(&self, interval: Option<Duration>) {
        let paced = interval.map_or(0, |d| d.as_nanos().min(u128::from(u64::MAX)) as u64);
        self.emission_ns.store(paced.max(self.rate_emission_ns), Ordering::Relaxed);
    }

    /// The burst.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    fn ns(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_nanos() as u64
    }

    /// Takes a permit at `now`, or says how long until one is free.
    pub fn try_acquire(&self, now: Instant) -> Result<(), Duration> {
        let now = self.ns(now);
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let start = tat.max(now);
            if start - now > self.tolerance_ns {
                return Err(Duration::from_nanos(start - self.tolerance_ns - now));
            }
            match self.tat.compare_exchange_weak(tat, start + self.emission(), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }

    /// How long until a permit is free (zero when one is free now).
    pub fn next_free(&self, now: Instant) -> Duration {
        let now = self.ns(now);
        let start = self.tat.load(Ordering::Acquire).max(now);
        Duration::from_nanos((start - now).saturating_sub(self.tolerance_ns))
    }

    /// Permits that could be taken at once at `now`.
    pub fn available(&self, now: Instant) -> u32 {
        let now = self.ns(now);
        let backlog = self.tat.load(Ordering::Acquire).saturating_sub(now);
        if backlog > self.tolerance_ns {
            return 0;
        }
        (((self.tolerance_ns - backlog) / self.emission()) as u32 + 1).min(self.burst)
    }

    /// How long until the whole burst is available again.
    pub fn until_full(&self, now: Instant) -> Duration {
        let now = self.ns(now);
        Duration::from_nanos(self.tat.load(Ordering::Acquire).saturating_sub(now))
    }

    /// Sends nothing before `until` (the upstream said `Retry-After`). Returns whether this
    /// moved the budget (false when it was already paused at least that long).
    pub fn pause_until(&self, until: Instant) -> bool {
        let target = self.ns(until) + self.tolerance_ns;
        self.tat.fetch_max(target, Ordering::AcqRel) < target
    }

    /// Leaves at most `remaining` permits available now (the upstream said how many it has
    /// left). Returns whether this tightened the budget.
    pub fn cap_remaining(&self, now: Instant, remaining: u64) -> bool {
        let now = self.ns(now);
        let Some(target) =
            (now + self.tolerance_ns + self.emission()).checked_sub(remaining.saturating_mul(self.emission()))
        else {
            return false;
        };
        self.tat.fetch_max(target, Ordering::AcqRel) < target
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn bursts_then_paces_at_the_rate() {
        // 600/min = one per 100 ms, bursts of 3.
        let g = Gcra::try_new(600, 3).unwrap();
        let t0 = g.base + Duration::from_secs(1);
        assert_eq!(g.available(t0), 3);
        for _ in 0..3 {
            assert_eq!(g.try_acquire(t0), Ok(()));
        }
        assert_eq!(g.available(t0), 0);
        assert_eq!(g.try_acquire(t0), Err(100 * MS));
        assert_eq!(g.next_free(t0 + 40 * MS), 60 * MS);
        assert_eq!(g.try_acquire(t0 + 100 * MS), Ok(()));
        assert_eq!(g.try_acquire(t0 + 150 * MS), Err(50 * MS));
        assert_eq!(g.until_full(t0 + 100 * MS), 300 * MS);
    }

    #[test]
    fn over_any_window_it_never_exceeds_rate_plus_burst() {
        let g = Gcra::try_new(6000, 5).unwrap(); // one per 10 ms
        let t0 = g.base + Duration::from_secs(1);
        let granted = (0..2000).filter(|i| g.try_acquire(t0 + Duration::from_micros(i * 500)).is_ok()).count();
        // 1 s of offered load at 2000/s: the burst, then one per 10 ms from 10 ms to 990 ms.
        assert_eq!(granted, 5 + 99);
    }

    #[test]
    fn a_pause_holds_everything_until_it_ends() {
        let g = Gcra::try_new(600, 5).unwrap();
        let t0 = g.base + Duration::from_secs(1);
        assert!(g.pause_until(t0 + 2000 * MS));
        assert!(!g.pause_until(t0 + 1000 * MS), "a shorter pause changes nothing");
        assert_eq!(g.try_acquire(t0 + 1999 * MS), Err(MS));
        assert_eq!(g.try_acquire(t0 + 2000 * MS), Ok(()));
        assert_eq!(g.try_acquire(t0 + 2000 * MS), Err(100 * MS), "no burst right after a pause");
    }

    #[test]
    fn the_upstreams_remaining_caps_what_is_available() {
        let g = Gcra::try_new(600, 10).unwrap();
        let t0 = g.base + Duration::from_secs(1);
        assert!(g.cap_remaining(t0, 2));
        assert_eq!(g.available(t0), 2);
        assert!(!g.cap_remaining(t0, 5), "a looser cap changes nothing");
        assert!(g.cap_remaining(t0, 0));
        assert_eq!(g.available(t0), 0);
        assert_eq!(g.next_free(t0), 100 * MS);
        assert!(!Gcra::try_new(600, 10).unwrap().cap_remaining(t0, 50));
    }

    #[test]
    fn refuses_nonsense() {
        assert!(Gcra::try_new(0, 1).is_err());
        assert!(Gcra::try_new(1, 0).is_err());
    }
}
