//! The retry budget: retries may add at most a fraction of recent first attempts, plus a
//! small floor per second.
//!
//! Why a budget and not only `EXTERNAL_API_MAX_RETRIES`: a per-request cap bounds one
//! request, not the fleet. When the upstream fails outright, every request retrying three
//! times quadruples the load on it exactly when it can least take it. With a budget of 20%,
//! a total outage costs at most 1.2 attempts per request (plus the floor), while a single
//! unlucky request in healthy traffic still gets its retries. (Finagle and linkerd use the
//! same idea.)
//!
//! One budget per worker, as plain state on the worker's thread: no atomics, no locks on the
//! hot path. Each worker's floor is the configured floor divided by the worker count.

use std::time::{Duration, Instant};

const SLOTS: usize = 10;
const SLOT: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Default)]
struct Slot {
    second: u64,
    firsts: u32,
    retries: u32,
}

/// Deposits from first attempts, withdrawals by retries, over the last ten seconds.
pub struct RetryBudget {
    base: Instant,
    ratio: f64,
    floor_per_window: f64,
    slots: [Slot; SLOTS],
}

impl RetryBudget {
    /// Retries may be `ratio` of first attempts plus `floor_per_second` retries per second.
    pub fn new(ratio: f64, floor_per_second: f64) -> RetryBudget {
        RetryBudget {
            base: Instant::now(),
            ratio,
            floor_per_window: floor_per_second * (SLOTS as f64) * SLOT.as_secs_f64(),
            slots: [Slot::default(); SLOTS],
        }
    }

    fn slot(&mut self, now: Instant) -> &mut Slot {
        let second = now.saturating_duration_since(self.base).as_secs() / SLOT.as_secs();
        let slot = &mut self.slots[second as usize % SLOTS];
        if slot.second != second {
            *slot = Slot { second, firsts: 0, retries: 0 };
        }
        slot
    }

    /// A first attempt was made.
    pub fn record_first(&mut self, now: Instant) {
        self.slot(now).firsts += 1;
    }

    /// Takes a retry from the budget if there is one left.
    pub fn try_retry(&mut self, now: Instant) -> bool {
        let current = self.slot(now).second;
        let recent = self.slots.iter().filter(|s| current.saturating_sub(s.second) < SLOTS as u64);
        let (firsts, retries) =
            recent.fold((0u64, 0u64), |(f, r), s| (f + u64::from(s.firsts), r + u64::from(s.retries)));
        let allowed = firsts as f64 * self.ratio + self.floor_per_window;
        if (retries as f64) < allowed {
            self.slot(now).retries += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_a_fraction_of_first_attempts_plus_the_floor() {
        let mut budget = RetryBudget::new(0.2, 0.0);
        let t0 = budget.base;
        for _ in 0..100 {
            budget.record_first(t0);
        }
        let granted = (0..100).filter(|_| budget.try_retry(t0)).count();
        assert_eq!(granted, 20);

        let mut floor_only = RetryBudget::new(0.0, 0.5);
        let granted = (0..100).filter(|_| floor_only.try_retry(t0)).count();
        assert_eq!(granted, 5, "0.5 per second over a ten second window");
    }

    #[test]
    fn old_attempts_fall_out_of_the_window() {
        let mut budget = RetryBudget::new(0.5, 0.0);
        let t0 = budget.base;
        for _ in 0..10 {
            budget.record_first(t0);
        }
        assert!(budget.try_retry(t0 + Duration::from_secs(9)));
        assert!(!budget.try_retry(t0 + Duration::from_secs(11)), "the deposits expired");
    }
}
