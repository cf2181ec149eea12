//! Permits this replica took from the shared budget (Redis) and has not used yet, and what the
//! last answer said about the next free permit: lock-free, read on the request path.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A few permits leased for immediate use, expiring quickly so they cannot pile up.
pub struct Pool {
    base: Instant,
    permits: AtomicU32,
    expires_ms: AtomicU64,
    next_free_ms: AtomicU64,
}

impl Pool {
    /// An empty pool.
    pub fn new() -> Pool {
        Pool {
            base: Instant::now(),
            permits: AtomicU32::new(0),
            expires_ms: AtomicU64::new(0),
            next_free_ms: AtomicU64::new(0),
        }
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_millis() as u64
    }

    /// Takes a leased permit, if one is left and not expired.
    pub fn take(&self, now: Instant) -> bool {
        if self.ms(now) >= self.expires_ms.load(Ordering::Acquire) {
            return false;
        }
        self.permits.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok()
    }

    /// Puts `n` permits in the pool, usable until `now + ttl`.
    pub fn fill(&self, n: u32, now: Instant, ttl: Duration) {
        self.permits.store(n, Ordering::Release);
        self.expires_ms.store(self.ms(now + ttl), Ordering::Release);
    }

    /// Permits usable now.
    pub fn available(&self, now: Instant) -> u32 {
        if self.ms(now) >= self.expires_ms.load(Ordering::Acquire) {
            0
        } else {
            self.permits.load(Ordering::Acquire)
        }
    }

    /// Records when the shared budget frees its next permit.
    pub fn set_next_free(&self, at: Instant) {
        self.next_free_ms.store(self.ms(at), Ordering::Release);
    }

    /// Time until the shared budget frees its next permit, as last heard.
    pub fn next_free(&self, now: Instant) -> Duration {
        Duration::from_millis(self.next_free_ms.load(Ordering::Acquire).saturating_sub(self.ms(now)))
    }
}

impl Default for Pool {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leased_permits_are_taken_once_and_expire() {
        let pool = Pool::new();
        let now = Instant::now();
        assert!(!pool.take(now));
        pool.fill(2, now, Duration::from_millis(100));
        assert_eq!(pool.available(now), 2);
        assert!(pool.take(now) && pool.take(now));
        assert!(!pool.take(now));
        pool.fill(3, now, Duration::from_millis(100));
        assert!(!pool.take(now + Duration::from_millis(150)), "expired");
        pool.set_next_free(now + Duration::from_millis(400));
        assert_eq!(pool.next_free(now + Duration::from_millis(100)), Duration::from_millis(300));
    }
}
