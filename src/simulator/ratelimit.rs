//! Lock-free GCRA (generic cell rate algorithm) limiter.
//!
//! The whole bucket is one `AtomicU64`: the *theoretical arrival time* (TAT),
//! in nanoseconds since the simulator started. A request at `now` is allowed
//! when `max(TAT, now) + interval - now <= tolerance`, where `interval` is the
//! time one permit takes to refill and `tolerance = burst * interval`.
//! `TAT - now` is therefore the bucket's "debt": 0 means full, `tolerance`
//! means empty. Updates are a compare-and-swap loop, so concurrent workers
//! never block each other. Every method takes `now` explicitly, which keeps
//! the arithmetic deterministic and testable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

const NANOS_PER_SEC: u64 = 1_000_000_000;
const NANOS_PER_MINUTE: u64 = 60 * NANOS_PER_SEC;

/// Monotonic nanosecond clock anchored at the simulator's start.
#[derive(Debug)]
pub(crate) struct Clock(Instant);

impl Clock {
    /// Starts the clock at zero.
    pub(crate) fn new() -> Self {
        Self(Instant::now())
    }

    /// Nanoseconds elapsed since [`Clock::new`].
    pub(crate) fn now_ns(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Outcome of one rate-limit check, with the numbers the response headers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    /// Whether the request took a permit and may proceed.
    pub(crate) allowed: bool,
    /// Whole permits left right now (floor).
    pub(crate) remaining: u64,
    /// Whole seconds (ceil) until the bucket is full again.
    pub(crate) reset_secs: u64,
    /// Whole seconds (ceil, at least 1) until a request would be allowed; 0 when allowed.
    pub(crate) retry_after_secs: u64,
}

/// GCRA limiter whose entire state is one atomic word.
#[derive(Debug)]
pub(crate) struct Gcra {
    interval: u64,
    tolerance: u64,
    tat: AtomicU64,
}

impl Gcra {
    /// A full bucket refilling at `per_minute` permits per minute, holding at most `burst`.
    /// Zero values are treated as 1.
    pub(crate) fn new(per_minute: u32, burst: u32) -> Self {
        let interval = (NANOS_PER_MINUTE / u64::from(per_minute.max(1))).max(1);
        Self { interval, tolerance: interval.saturating_mul(u64::from(burst.max(1))), tat: AtomicU64::new(0) }
    }

    /// Tries to take one permit at time `now` (ns since the clock's start).
    pub(crate) fn check(&self, now: u64) -> Decision {
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let next = tat.max(now).saturating_add(self.interval);
            let debt = next - now;
            if debt > self.tolerance {
                return self.denied(tat.max(now) - now);
            }
            match self.tat.compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return self.snapshot(debt, true),
                Err(actual) => tat = actual,
            }
        }
    }

    /// Takes `n` permits at `now` on behalf of another consumer of the same account.
    /// Never refuses: if fewer than `n` permits are left, the bucket ends up empty.
    /// Returns the permits left afterwards.
    pub(crate) fn consume(&self, n: u64, now: u64) -> u64 {
        let ceiling = now.saturating_add(self.tolerance);
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let wanted = tat.max(now).saturating_add(n.saturating_mul(self.interval)).min(ceiling);
            // Never move TAT backwards (another thread may have used a later `now`).
            let next = wanted.max(tat);
            match self.tat.compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return self.remaining(next.saturating_sub(now)),
                Err(actual) => tat = actual,
            }
        }
    }

    fn remaining(&self, debt: u64) -> u64 {
        self.tolerance.saturating_sub(debt) / self.interval
    }

    fn snapshot(&self, debt: u64, allowed: bool) -> Decision {
        Decision {
            allowed,
            remaining: self.remaining(debt),
            reset_secs: debt.div_ceil(NANOS_PER_SEC),
            retry_after_secs: 0,
        }
    }

    fn denied(&self, debt: u64) -> Decision {
        let wait = (debt + self.interval).saturating_sub(self.tolerance);
        Decision { retry_after_secs: wait.div_ceil(NANOS_PER_SEC).max(1), ..self.snapshot(debt, false) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = NANOS_PER_SEC;
    const MS: u64 = 1_000_000;

    #[test]
    fn burst_then_denied() {
        let g = Gcra::new(60, 5);
        for expected_remaining in (0..5).rev() {
            let d = g.check(0);
            assert!(d.allowed);
            assert_eq!(d.remaining, expected_remaining);
            assert_eq!(d.retry_after_secs, 0);
        }
        let d = g.check(0);
        assert_eq!(d, Decision { allowed: false, remaining: 0, reset_secs: 5, retry_after_secs: 1 });
    }

    #[test]
    fn refills_at_the_configured_rate() {
        let g = Gcra::new(60, 5);
        for _ in 0..5 {
            assert!(g.check(0).allowed);
        }
        // One permit per second at 60/min.
        assert!(!g.check(999 * MS).allowed);
        let d = g.check(SEC);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        assert!(!g.check(SEC).allowed);
        // After 2.5 more seconds, two whole permits are back (floor).
        let d = g.check(3 * SEC + 500 * MS);
        assert!(d.allowed);
        assert_eq!(d.remaining, 1);
    }

    #[test]
    fn reset_is_time_until_full() {
        let g = Gcra::new(600, 10); // one permit per 100 ms
        let d = g.check(0);
        assert_eq!((d.remaining, d.reset_secs), (9, 1));
        for _ in 0..9 {
            g.check(0);
        }
        let d = g.check(0);
        assert!(!d.allowed);
        assert_eq!(d.reset_secs, 1); // 10 permits * 100 ms = 1 s
        assert_eq!(d.retry_after_secs, 1); // 100 ms, rounded up
    }

    #[test]
    fn retry_after_rounds_up_and_counts_elapsed_time() {
        let g = Gcra::new(6, 2); // one permit per 10 s
        assert!(g.check(0).allowed);
        assert!(g.check(0).allowed);
        assert_eq!(g.check(0).retry_after_secs, 10);
        assert_eq!(g.check(2500 * MS).retry_after_secs, 8);
        assert_eq!(g.check(9999 * MS).retry_after_secs, 1);
        assert!(g.check(10 * SEC).allowed);
    }

    #[test]
    fn idle_time_does_not_exceed_capacity() {
        let g = Gcra::new(60, 3);
        let later = 3600 * SEC;
        let results: Vec<bool> = (0..4).map(|_| g.check(later).allowed).collect();
        assert_eq!(results, [true, true, true, false]);
    }

    #[test]
    fn consume_takes_permits_and_empties_at_most() {
        let g = Gcra::new(60, 5);
        assert_eq!(g.consume(3, 0), 2);
        assert!(g.check(0).allowed);
        assert!(g.check(0).allowed);
        assert!(!g.check(0).allowed);

        let g = Gcra::new(60, 5);
        assert_eq!(g.consume(1_000_000, 0), 0);
        let d = g.check(0);
        assert!(!d.allowed);
        // Empty, not in debt: the next permit arrives after one interval.
        assert_eq!((d.reset_secs, d.retry_after_secs), (5, 1));
        assert!(g.check(SEC).allowed);
    }

    #[test]
    fn consume_never_refunds_with_a_stale_clock() {
        let g = Gcra::new(60, 5);
        g.consume(5, 10 * SEC);
        g.consume(1, 0); // older `now` must not move TAT backwards
        assert!(!g.check(10 * SEC).allowed);
    }

    #[test]
    fn zero_config_is_clamped() {
        let g = Gcra::new(0, 0);
        assert!(g.check(0).allowed);
        let d = g.check(0);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_secs, 60);
    }

    #[test]
    fn concurrent_checks_never_overgrant() {
        let g = std::sync::Arc::new(Gcra::new(60, 100));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || (0..100).filter(|_| g.check(0).allowed).count())
            })
            .collect();
        let granted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(granted, 100);
    }
}
