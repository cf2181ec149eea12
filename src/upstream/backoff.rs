//! Exponential backoff with full jitter.
//!
//! Full jitter (a uniform sleep between zero and the exponential ceiling) spreads retries of
//! many clients that failed together, so a recovering upstream is not hit by synchronised
//! waves. Tests turn the jitter off and get the ceiling itself, deterministically.

use std::time::Duration;

/// Backoff parameters that cannot describe nonsense.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    jitter: bool,
}

/// Why backoff parameters were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid backoff: the maximum ({max:?}) is below the base ({base:?})")]
pub struct InvalidBackoff {
    base: Duration,
    max: Duration,
}

impl Backoff {
    /// A backoff starting at `base`, doubling per retry, capped at `max`.
    pub fn try_new(base: Duration, max: Duration, jitter: bool) -> Result<Backoff, InvalidBackoff> {
        if max < base {
            return Err(InvalidBackoff { base, max });
        }
        Ok(Backoff { base, max, jitter })
    }

    /// The ceiling for the sleep before retry number `retry` (0 for the first retry).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The sleep before retry number `retry`; `unit` is a uniform sample of [0, 1).
    pub fn delay(&self, retry: u32, unit: f64) -> Duration {
        let ceiling = self.ceiling(retry);
        if self.jitter {
            ceiling.mul_f64(unit.clamp(0.0, 1.0))
        } else {
            ceiling
        }
    }

    /// The sleep before retry number `retry`, jittered from the thread's RNG.
    pub fn next_delay(&self, retry: u32) -> Duration {
        let unit = if self.jitter { rand::random::<f64>() } else { 0.0 };
        self.delay(retry, unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_up_to_the_cap() {
        let b = Backoff::try_new(100 * MS, 500 * MS, false).unwrap();
        let delays: Vec<_> = (0..5).map(|r| b.delay(r, 0.9)).collect();
        assert_eq!(delays, [100 * MS, 200 * MS, 400 * MS, 500 * MS, 500 * MS]);
        assert_eq!(b.ceiling(200), 500 * MS);
    }

    #[test]
    fn full_jitter_stays_within_the_ceiling() {
        let b = Backoff::try_new(100 * MS, 10_000 * MS, true).unwrap();
        assert_eq!(b.delay(2, 0.0), Duration::ZERO);
        assert_eq!(b.delay(2, 0.5), 200 * MS);
        for _ in 0..100 {
            assert!(b.next_delay(3) <= 800 * MS);
        }
    }

    #[test]
    fn refuses_a_cap_below_the_base() {
        assert!(Backoff::try_new(2 * MS, MS, true).is_err());
    }
}
