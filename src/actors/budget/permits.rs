//! Where a permit comes from, lock-free: [`BudgetShared`], the half of the budget every worker
//! reads and takes from on its own thread.
//!
//! Why it is separate from the actor: a request that finds a permit free, while nobody waits,
//! must not pay a cross-thread round trip for it. So the permits live in atomics ([`Gcra`]
//! for this replica's rate; with shared state, the [`Lease`] of permits taken from the fleet's
//! budget in Redis), and the fast path is one compare-and-swap. The actor only publishes how
//! many wait ([`BudgetShared::waiting`]), so that newcomers queue behind them instead of
//! jumping the queue.
//!
//! Every method takes `now`, so tests drive it on virtual time. What the upstream says folds
//! in here too ([`BudgetShared::learn`]): the worker that read the answer applies the pause at
//! once, and only tells the actor afterwards.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::gcra::{Gcra, InvalidRate};
use super::lease::{Fleet, Lease};
use crate::metrics::Metrics;
use crate::shared::budget::SharedRate;
use crate::upstream::RateSignal;

/// Where a pause came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PauseSource {
    /// A 429 with `Retry-After` (or `X-RateLimit-Reset`).
    RetryAfter,
    /// `X-RateLimit-Remaining: 0`.
    Remaining,
}

impl PauseSource {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            PauseSource::RetryAfter => "retry_after",
            PauseSource::Remaining => "remaining",
        }
    }
}

/// A client's part of the budget now, as the `RateLimit` headers describe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientShare {
    /// The client's weighted share of the upstream's limit, per minute (at least 1).
    pub limit: u64,
    /// That share of the permits free now.
    pub remaining: u64,
    /// Whole seconds until the budget is full again.
    pub reset_seconds: u64,
}

/// The lock-free half of the budget, shared by every worker.
pub struct BudgetShared {
    /// This replica's GCRA: the whole budget, or, with shared state, its fallback share.
    gcra: Gcra,
    /// The budget shared by all replicas (Redis), with this replica's leased permits.
    fleet: Option<Fleet>,
    /// Waiters in the actor's queue, as the actor last published it.
    waiting: AtomicUsize,
    per_minute: u32,
    /// Replicas sharing the fleet's budget, as last heard (1 without shared state).
    replicas: AtomicU32,
    weights: Vec<u32>,
    total_weight: u32,
}

impl BudgetShared {
    /// A full budget of `per_minute` with bursts of `burst`, shared by clients of `weights`.
    pub fn try_new(per_minute: u32, burst: u32, weights: Vec<u32>) -> Result<BudgetShared, InvalidRate> {
        Self::try_with_shared(per_minute, burst, weights, None)
    }

    /// A budget shared through `shared` (Redis) by `replicas` replicas, until the fleet's
    /// heartbeat says how many there are ([`BudgetShared::set_replicas`]); while Redis fails,
    /// this replica falls back to its share: `1/replicas` of the rate and of the burst.
    pub fn try_with_shared(
        per_minute: u32,
        burst: u32,
        weights: Vec<u32>,
        shared: Option<(Arc<SharedRate>, u32)>,
    ) -> Result<BudgetShared, InvalidRate> {
        let gcra = Gcra::try_new(per_minute, burst)?;
        let interval = gcra.emission_interval();
        let replicas = shared.as_ref().map_or(1, |(_, n)| (*n).max(1));
        gcra.set_share(replicas);
        let fleet = shared.map(|(rate, _)| Fleet { rate, lease: Lease::new(interval) });
        if weights.is_empty() {
            return Err(InvalidRate("no clients"));
        }
        let total_weight = weights.iter().sum::<u32>().max(1);
        Ok(BudgetShared {
            gcra,
            fleet,
            waiting: AtomicUsize::new(0),
            per_minute,
            replicas: AtomicU32::new(replicas),
            weights,
            total_weight,
        })
    }

    /// Paces the budget (quota pacing): permits at most every `interval` across the fleet
    /// (`None`: the configured rate). A replica on its own while Redis fails keeps its share
    /// of that pace.
    pub fn set_pace(&self, interval: Option<Duration>) {
        self.gcra.set_pace(interval);
        if let Some(fleet) = &self.fleet {
            fleet.rate.set_pace(interval);
        }
    }

    /// The fleet has `replicas` replicas now (its heartbeat's count): this replica's fallback
    /// share becomes `1/replicas` of the budget (and of its pace), and a queued request here
    /// expects one permit in `replicas`. Only the fleet's heartbeat calls this, so a replica
    /// cut off from Redis keeps the last count it heard.
    pub fn set_replicas(&self, replicas: u32) {
        let replicas = replicas.max(1);
        self.replicas.store(replicas, Ordering::Relaxed);
        self.gcra.set_share(replicas);
    }

    /// Replicas sharing the budget, as last heard (1 without shared state).
    pub fn replicas(&self) -> u32 {
        self.replicas.load(Ordering::Relaxed)
    }

    /// The rate algorithm.
    pub fn gcra(&self) -> &Gcra {
        &self.gcra
    }

    /// The clients' weights, by index.
    pub(super) fn weights(&self) -> &[u32] {
        &self.weights
    }

    /// The fleet's budget, when replicas share one (whether Redis works or not).
    pub(super) fn fleet(&self) -> Option<&Fleet> {
        self.fleet.as_ref()
    }

    /// This replica's lease of the fleet's budget while Redis works; `None` without Redis, or
    /// while degraded (then the local GCRA is the budget).
    fn lease_up(&self) -> Option<&Lease> {
        self.fleet.as_ref().filter(|fleet| fleet.rate.redis().is_up()).map(|fleet| &fleet.lease)
    }

    /// Takes a permit at once when one is free and nobody waits for one: from the local GCRA,
    /// or with shared state from this replica's leased permits.
    pub fn try_fast(&self, now: Instant) -> bool {
        if self.waiting.load(Ordering::Acquire) != 0 {
            return false;
        }
        match self.lease_up() {
            Some(lease) => lease.take(now),
            None => self.gcra.try_acquire(now).is_ok(),
        }
    }

    /// Time until the next permit (the shared budget's, as last heard, when shared).
    pub(super) fn next_free(&self, now: Instant) -> Duration {
        match self.lease_up() {
            Some(lease) => lease.next_free(now),
            None => self.gcra.next_free(now),
        }
    }

    /// The interval at which a queued request here can expect permits.
    pub(super) fn local_interval(&self) -> Duration {
        match self.lease_up() {
            Some(lease) => lease.local_interval(self.replicas()),
            None => self.gcra.emission_interval(),
        }
    }

    /// Permits free now.
    fn available(&self, now: Instant) -> u32 {
        match self.lease_up() {
            Some(lease) => lease.available(now),
            None => self.gcra.available(now),
        }
    }

    /// Requests waiting in the queue.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Publishes how many wait in the actor's queue (only the actor calls this).
    pub(super) fn set_waiting(&self, waiting: usize) {
        self.waiting.store(waiting, Ordering::Release);
    }

    /// A rough wait for a newcomer: the next free permit plus one interval per waiter.
    pub fn queue_wait(&self, now: Instant) -> Duration {
        self.next_free(now) + self.local_interval() * self.waiting() as u32
    }

    /// Folds what the upstream said into the budget; returns a pause when the budget is now
    /// held back because of it.
    pub fn learn(&self, now: Instant, signal: &RateSignal, rate_limited: bool) -> Option<(PauseSource, Duration)> {
        if rate_limited {
            let wait = signal.retry_after.or(signal.reset).unwrap_or(Duration::from_secs(1));
            if self.gcra.pause_until(now + wait) {
                return Some((PauseSource::RetryAfter, wait));
            }
            return None;
        }
        match signal.remaining {
            Some(remaining) if self.gcra.cap_remaining(now, remaining) && remaining == 0 => {
                Some((PauseSource::Remaining, self.gcra.next_free(now)))
            }
            _ => None,
        }
    }

    /// `client`'s weighted share of the upstream budget per minute, that share of the permits
    /// free now, and the seconds until the budget is full again. A client added by a reload
    /// after start has weight 1.
    pub fn client_share(&self, client: usize, now: Instant) -> ClientShare {
        let weight = self.weights.get(client).copied().unwrap_or(1);
        let available = u64::from(self.available(now));
        ClientShare {
            limit: share(self.per_minute, weight, self.total_weight),
            remaining: available * u64::from(weight) / u64::from(self.total_weight),
            reset_seconds: self.gcra.until_full(now).as_secs_f64().ceil() as u64,
        }
    }

    /// Sets the gauges that describe the budget now (called when /metrics is scraped).
    pub fn export(&self, metrics: &Metrics, now: Instant) {
        metrics.budget_limit.set(f64::from(self.per_minute) / 60.0);
        metrics.budget_burst.set(i64::from(self.gcra.burst()));
        metrics.budget_available.set(i64::from(self.available(now)));
        metrics.budget_queue_depth.set(self.waiting() as i64);
    }
}

/// `weight / total` of `per_minute`, at least 1.
fn share(per_minute: u32, weight: u32, total: u32) -> u64 {
    (u64::from(per_minute) * u64::from(weight) / u64::from(total.max(1))).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn remaining_zero_is_a_pause_and_remaining_above_the_burst_is_nothing() {
        let shared = BudgetShared::try_new(600, 5, vec![1]).unwrap();
        let now = Instant::now();
        let some = RateSignal { remaining: Some(50), ..RateSignal::default() };
        assert_eq!(shared.learn(now, &some, false), None);
        assert_eq!(shared.gcra().available(now), 5);
        let none = RateSignal { remaining: Some(0), ..RateSignal::default() };
        let (source, wait) = shared.learn(now, &none, false).unwrap();
        assert_eq!(source, PauseSource::Remaining);
        assert_eq!(wait, 100 * MS);
        assert!(!shared.try_fast(now));
    }

    #[test]
    fn a_429_pauses_for_retry_after_or_reset_or_a_second() {
        let shared = BudgetShared::try_new(600, 5, vec![1]).unwrap();
        let t0 = Instant::now();
        let retry_after = RateSignal { retry_after: Some(300 * MS), reset: Some(900 * MS), ..RateSignal::default() };
        assert_eq!(shared.learn(t0, &retry_after, true), Some((PauseSource::RetryAfter, 300 * MS)));
        assert!(!shared.try_fast(t0 + 299 * MS));
        assert_eq!(shared.learn(t0, &retry_after, true), None, "already paused that long");
        let reset = RateSignal { reset: Some(900 * MS), ..RateSignal::default() };
        assert_eq!(shared.learn(t0, &reset, true), Some((PauseSource::RetryAfter, 900 * MS)));
        assert_eq!(shared.learn(t0, &RateSignal::default(), true), Some((PauseSource::RetryAfter, 1000 * MS)));
        assert!(shared.try_fast(t0 + 1000 * MS));
    }

    #[test]
    fn nobody_jumps_the_queue_while_anyone_waits() {
        let shared = BudgetShared::try_new(600, 5, vec![1]).unwrap();
        let now = Instant::now();
        shared.set_waiting(1);
        assert!(!shared.try_fast(now), "a permit is free, but someone waits for it");
        assert_eq!(shared.queue_wait(now), 100 * MS, "the next permit, plus one interval per waiter");
        shared.set_waiting(0);
        assert!(shared.try_fast(now));
    }

    #[test]
    fn a_clients_share_follows_its_weight() {
        let shared = BudgetShared::try_new(1000, 10, vec![3, 1]).unwrap();
        let t0 = Instant::now();
        assert_eq!(shared.client_share(0, t0), ClientShare { limit: 750, remaining: 7, reset_seconds: 0 });
        assert_eq!(shared.client_share(1, t0), ClientShare { limit: 250, remaining: 2, reset_seconds: 0 });
        // A client added by a reload has weight 1 of the same total.
        assert_eq!(shared.client_share(2, t0).limit, 250);
        for _ in 0..10 {
            assert!(shared.try_fast(t0));
        }
        // Ten permits spent at 60 ms each: 600 ms until full, shown as a whole second.
        assert_eq!(shared.client_share(0, t0), ClientShare { limit: 750, remaining: 0, reset_seconds: 1 });
    }

    #[test]
    fn the_fallback_share_follows_the_fleets_size_and_its_pace() {
        // 600/min with bursts of 10 for the whole fleet.
        let shared = BudgetShared::try_new(600, 10, vec![1]).unwrap();
        assert_eq!((shared.replicas(), shared.gcra().emission_interval(), shared.gcra().burst()), (1, 100 * MS, 10));
        shared.set_replicas(5);
        assert_eq!((shared.replicas(), shared.gcra().emission_interval(), shared.gcra().burst()), (5, 500 * MS, 2));
        // The fleet paced to one per 250 ms: a fifth of it is one per 1250 ms.
        shared.set_pace(Some(250 * MS));
        assert_eq!(shared.gcra().emission_interval(), 1250 * MS);
        // Back to two replicas: half of the pace, half of the burst.
        shared.set_replicas(2);
        assert_eq!((shared.gcra().emission_interval(), shared.gcra().burst()), (500 * MS, 5));
        shared.set_pace(None);
        assert_eq!(shared.gcra().emission_interval(), 200 * MS);
        let t0 = Instant::now();
        let granted = (0..20).filter(|_| shared.try_fast(t0)).count();
        assert_eq!(granted, 5, "half of the burst");
        shared.set_replicas(0);
        assert_eq!(shared.replicas(), 1, "a count of 0 (never heard) is taken as 1");
    }

    #[test]
    fn without_clients_there_is_no_budget() {
        assert!(BudgetShared::try_new(60, 1, vec![]).is_err());
    }
}
