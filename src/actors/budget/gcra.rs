//! GCRA (the generic cell rate algorithm), lock-free: the state every permit changes is one
//! theoretical arrival time (TAT) in an `AtomicU64`, as in the governor crate.
//!
//! Why GCRA and not a token bucket with a refill timer: it is the same budget (rate `1/T`,
//! burst `B`), but its state is a single number, so the fast path is one compare-and-swap
//! with no lock and no background task; a request may go at `t` when `TAT − t ≤ τ` with
//! `τ = (B − 1)·T`, and then `TAT := max(TAT, t) + T`. What the upstream tells us folds
//! into the same number: a pause until `p` is `TAT := max(TAT, p + τ)`, and "only `r`
//! permits left" is `TAT := max(TAT, t + τ + T − r·T)`. Both only ever move TAT forward,
//! so they are one `fetch_max` each.
//!
//! A replica's fallback share of a fleet's budget is the same GCRA on `1/n` of the rate and of
//! the burst ([`Gcra::set_share`]), and a pace (quota pacing) is a longer `T`
//! ([`Gcra::set_pace`]). Both change while requests take permits (the fleet's size comes from
//! its heartbeat, the pace from the quota's tick), so they are atomics of their own and `T`
//! and `τ` are derived from them on each call: a writer never leaves a half-changed pair.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A rate of `per_minute` upstream attempts with bursts of `burst`, or a share of them.
#[derive(Debug)]
pub struct Gcra {
    base: Instant,
    /// The interval at the configured rate.
    rate_emission_ns: u64,
    /// The interval of the whole budget in force: the rate's, or a longer one while quota
    /// pacing slows it.
    paced_ns: AtomicU64,
    /// The configured burst.
    full_burst: u32,
    /// This GCRA holds `1/share` of the rate and of the burst (1: the whole budget).
    share: AtomicU32,
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
            paced_ns: AtomicU64::new(emission_ns),
            full_burst: burst,
            share: AtomicU32::new(1),
            tat: AtomicU64::new(0),
        })
    }

    /// The time between permits at the steady rate (slower while paced, longer for a share).
    pub fn emission_interval(&self) -> Duration {
        Duration::from_nanos(self.emission())
    }

    /// The interval in force: the whole budget's (paced or not), times the share.
    fn emission(&self) -> u64 {
        let share = u64::from(self.share.load(Ordering::Relaxed));
        self.paced_ns.load(Ordering::Relaxed).saturating_mul(share)
    }

    /// The tolerance in force: the share's burst, at the share's rate (never the pace's).
    fn tolerance(&self) -> u64 {
        let share = self.share.load(Ordering::Relaxed);
        let interval = self.rate_emission_ns.saturating_mul(u64::from(share));
        interval.saturating_mul(u64::from(burst_of(self.full_burst, share) - 1))
    }

    /// Paces the budget: permits at most every `interval` (`None`: the configured rate) for
    /// the whole budget, so a share paces at `interval` times its size. The burst stays the
    /// rate's, so a paced budget still lets a short burst through.
    pub fn set_pace(&self, interval: Option<Duration>) {
        let paced = interval.map_or(0, |d| d.as_nanos().min(u128::from(u64::MAX)) as u64);
        self.paced_ns.store(paced.max(self.rate_emission_ns), Ordering::Relaxed);
    }

    /// Makes this GCRA one of `share` equal parts of the budget: `1/share` of the rate (paced
    /// or not) and of the burst (at least 1). A replica's fallback share follows the fleet's
    /// size this way.
    pub fn set_share(&self, share: u32) {
        self.share.store(share.max(1), Ordering::Relaxed);
    }

    /// The burst (of the share).
    pub fn burst(&self) -> u32 {
        burst_of(self.full_burst, self.share.load(Ordering::Relaxed))
    }

    fn ns(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_nanos() as u64
    }

    /// Takes a permit at `now`, or says how long until one is free.
    pub fn try_acquire(&self, now: Instant) -> Result<(), Duration> {
        let now = self.ns(now);
        let (emission, tolerance) = (self.emission(), self.tolerance());
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let start = tat.max(now);
            if start - now > tolerance {
                return Err(Duration::from_nanos(start - tolerance - now));
            }
            match self.tat.compare_exchange_weak(tat, start + emission, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }

    /// How long until a permit is free (zero when one is free now).
    pub fn next_free(&self, now: Instant) -> Duration {
        let now = self.ns(now);
        let start = self.tat.load(Ordering::Acquire).max(now);
        Duration::from_nanos((start - now).saturating_sub(self.tolerance()))
    }

    /// Permits that could be taken at once at `now`.
    pub fn available(&self, now: Instant) -> u32 {
        let now = self.ns(now);
        let backlog = self.tat.load(Ordering::Acquire).saturating_sub(now);
        let tolerance = self.tolerance();
        if backlog > tolerance {
            return 0;
        }
        (((tolerance - backlog) / self.emission()) as u32 + 1).min(self.burst())
    }

    /// How long until the whole burst is available again.
    pub fn until_full(&self, now: Instant) -> Duration {
        let now = self.ns(now);
        Duration::from_nanos(self.tat.load(Ordering::Acquire).saturating_sub(now))
    }

    /// Sends nothing before `until` (the upstream said `Retry-After`). Returns whether this
    /// moved the budget (false when it was already paused at least that long).
    pub fn pause_until(&self, until: Instant) -> bool {
        let target = self.ns(until) + self.tolerance();
        self.tat.fetch_max(target, Ordering::AcqRel) < target
    }

    /// Leaves at most `remaining` permits available now (the upstream said how many it has
    /// left). Returns whether this tightened the budget.
    pub fn cap_remaining(&self, now: Instant, remaining: u64) -> bool {
        let now = self.ns(now);
        let emission = self.emission();
        let Some(target) = (now + self.tolerance() + emission).checked_sub(remaining.saturating_mul(emission)) else {
            return false;
        };
        self.tat.fetch_max(target, Ordering::AcqRel) < target
    }
}

/// `1/share` of `burst`, at least 1.
fn burst_of(burst: u32, share: u32) -> u32 {
    (burst / share.max(1)).max(1)
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
    fn a_share_divides_the_rate_and_the_burst_and_composes_with_a_pace() {
        // 600/min with bursts of 10, shared by 2: one per 200 ms, bursts of 5.
        let g = Gcra::try_new(600, 10).unwrap();
        g.set_share(2);
        let t0 = g.base + Duration::from_secs(10);
        assert_eq!((g.emission_interval(), g.burst(), g.available(t0)), (200 * MS, 5, 5));
        for _ in 0..5 {
            assert_eq!(g.try_acquire(t0), Ok(()));
        }
        assert_eq!(g.try_acquire(t0), Err(200 * MS));
        // A fleet paced to one per 300 ms: this half gets one per 600 ms; the burst stays.
        g.set_pace(Some(300 * MS));
        assert_eq!((g.emission_interval(), g.burst()), (600 * MS, 5));
        // Five replicas now: one per 1500 ms paced, bursts of 2; unpaced, one per 500 ms.
        g.set_share(5);
        assert_eq!((g.emission_interval(), g.burst()), (1500 * MS, 2));
        g.set_pace(None);
        assert_eq!(g.emission_interval(), 500 * MS);
        // More replicas than the burst: still one permit at a time.
        g.set_share(40);
        assert_eq!((g.emission_interval(), g.burst()), (4000 * MS, 1));
        g.set_share(0);
        assert_eq!((g.emission_interval(), g.burst()), (100 * MS, 10), "0 is taken as 1");
    }

    #[test]
    fn refuses_nonsense() {
        assert!(Gcra::try_new(0, 1).is_err());
        assert!(Gcra::try_new(1, 0).is_err());
    }
}
