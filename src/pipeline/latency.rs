//! What an answered attempt usually takes on this thread: a moving average, used to judge
//! whether a retry can still finish before the deadline, and how much time to keep free
//! before the deadline while waiting for a budget permit.

use std::cell::Cell;
use std::time::Duration;

/// The least time kept free before a deadline when waiting for a permit.
const MIN_RESERVE: Duration = Duration::from_millis(20);

/// An exponential moving average of answered attempts' durations (weight 0.2 to the newest).
#[derive(Debug, Default)]
pub struct AttemptLatency {
    average: Cell<Duration>,
}

impl AttemptLatency {
    /// Takes an answered attempt's duration into the average.
    pub fn observe(&self, took: Duration) {
        let previous = self.average.get();
        let next = if previous.is_zero() { took } else { previous.mul_f64(0.8) + took.mul_f64(0.2) };
        self.average.set(next);
    }

    /// The usual duration of an answered attempt (zero before the first).
    pub fn expected(&self) -> Duration {
        self.average.get()
    }

    /// Time to keep free before the deadline when waiting for a budget permit: twice what an
    /// attempt usually takes, never less than 20 ms.
    pub fn reserve(&self) -> Duration {
        (self.average.get() * 2).max(MIN_RESERVE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_average_starts_at_the_first_attempt_and_follows_slowly() {
        let latency = AttemptLatency::default();
        assert_eq!((latency.expected(), latency.reserve()), (Duration::ZERO, 20 * MS));
        latency.observe(100 * MS);
        assert_eq!((latency.expected(), latency.reserve()), (100 * MS, 200 * MS));
        latency.observe(200 * MS);
        assert_eq!(latency.expected(), 120 * MS);
        for _ in 0..50 {
            latency.observe(5 * MS);
        }
        assert!(latency.expected() < 6 * MS && latency.reserve() == MIN_RESERVE, "{:?}", latency.expected());
    }
}
