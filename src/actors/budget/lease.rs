//! The fleet's budget, leased: how a replica takes permits from the one GCRA in Redis that
//! every replica shares (`shared/budget.rs` holds the Lua side).
//!
//! Why leases and not a round trip per request: a replica asks Redis only for permits it is
//! about to use, the waiters of its queue, in one round trip per batch ([`Leaser::ask`]). A
//! permit nobody took any more waits in a small pool ([`Lease`]) for at most one emission
//! interval (and never over 100 ms), where the next request takes it lock-free; so leased
//! permits cannot pile up into a burst the fleet's GCRA never granted, and the emissions of
//! all replicas together follow the shared rate, shifted by at most that interval and a round
//! trip.
//!
//! Why a fallback share, kept spent: while Redis fails, each replica runs on its own on
//! `1/replicas` of the rate in its local GCRA (`replicas` as the fleet's heartbeat last
//! counted them, `shared/fleet.rs`). While shared mode works, every grant keeps that
//! local share spent for one interval, so falling back starts at the rate, not with a burst on
//! top of what was just sent. And a replica that ran alone asks Redis to drain the fleet's
//! burst first ([`Ask::drain`]): the upstream's bucket may be spent by now.
//!
//! The actor owns the round trip; what a grant does to the queue and the pool is plain code
//! on `now` ([`Leaser::granted`]), tested here on virtual time.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::gcra::Gcra;
use super::permits::PauseSource;
use super::pool::Pool;
use super::queue::WaitQueue;
use crate::shared::budget::{Grant, SharedRate};

/// Most permits asked for in one round trip.
const MAX_BATCH: usize = 64;

/// Longest a leased permit nobody took waits in the pool.
const POOL_TTL_MAX: Duration = Duration::from_millis(100);

/// Shortest time before the queue is served again after a grant (never a busy loop).
const MIN_AGAIN: Duration = Duration::from_millis(1);

/// The fleet's budget in Redis, and this replica's lease of it.
pub(super) struct Fleet {
    /// The shared GCRA.
    pub(super) rate: Arc<SharedRate>,
    /// Permits leased and not used yet.
    pub(super) lease: Lease,
}

impl Fleet {
    /// Tells every replica to hold back after a pause learned here. Fire and forget: a
    /// failure is counted by the Redis connection's health, and the local GCRA is paused
    /// already.
    pub(super) fn hold_back(&self, source: PauseSource, wait: Duration) -> impl Future<Output = ()> + 'static {
        let rate = self.rate.clone();
        async move {
            let _ = match source {
                PauseSource::RetryAfter => rate.pause(wait).await,
                PauseSource::Remaining => rate.cap(0).await,
            };
        }
    }
}

/// Permits this replica leased from the fleet's budget and has not used yet, and the fleet's
/// pace as last heard: lock-free, read on every worker.
pub struct Lease {
    pool: Pool,
    /// Emission interval of the whole fleet's rate.
    interval: Duration,
}

impl Lease {
    /// An empty lease of a fleet rate emitting a permit every `interval`.
    pub fn new(interval: Duration) -> Lease {
        Lease { pool: Pool::new(), interval }
    }

    /// Takes a leased permit, if one is left and not expired.
    pub fn take(&self, now: Instant) -> bool {
        self.pool.take(now)
    }

    /// Leased permits usable now.
    pub fn available(&self, now: Instant) -> u32 {
        self.pool.available(now)
    }

    /// Time until the fleet's budget frees its next permit, as last heard.
    pub fn next_free(&self, now: Instant) -> Duration {
        self.pool.next_free(now)
    }

    /// The interval at which a queued request here can expect permits: when every one of
    /// `replicas` replicas is busy, this one gets about one permit in `replicas`.
    pub fn local_interval(&self, replicas: u32) -> Duration {
        self.interval * replicas.max(1)
    }
}

/// One question to Redis: take up to `want` permits now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ask {
    /// Permits wanted: one per waiter, at most [`MAX_BATCH`].
    pub want: u32,
    /// Spend the fleet's burst first: this replica ran on its own since its last grant.
    pub drain: bool,
}

/// The actor's side of the lease: one question to Redis at a time, and whether this replica
/// ran on its fallback share since the last answer.
#[derive(Debug, Default)]
pub struct Leaser {
    asking: bool,
    ran_alone: bool,
}

impl Leaser {
    /// The question for `waiting` waiters; `None` while one is under way or nobody waits.
    pub fn ask(&mut self, waiting: usize) -> Option<Ask> {
        if self.asking || waiting == 0 {
            return None;
        }
        self.asking = true;
        Some(Ask { want: waiting.min(MAX_BATCH) as u32, drain: self.ran_alone })
    }

    /// Permits were handed out from the local fallback share: Redis is down, or not due for
    /// another try.
    pub fn ran_alone(&mut self) {
        self.ran_alone = true;
    }

    /// Redis failed to answer: this round is served from the fallback share.
    pub fn failed(&mut self) {
        self.asking = false;
        self.ran_alone = true;
    }

    /// Redis granted `grant`: hands the permits to waiters in fair order, parks what nobody
    /// took in the pool, keeps the fallback share spent. Returns when to serve the queue again
    /// (`None` when nobody waits any more).
    pub fn granted<T>(
        &mut self,
        now: Instant,
        grant: Grant,
        lease: &Lease,
        fallback: &Gcra,
        queue: &mut WaitQueue<T>,
        mut give: impl FnMut(T, Duration) -> bool,
    ) -> Option<Duration> {
        self.asking = false;
        self.ran_alone = false;
        fallback.pause_until(now + fallback.emission_interval());
        lease.pool.set_next_free(now + grant.next_in);
        let mut left = grant.granted;
        while left > 0 && !queue.is_empty() && queue.grant_next(now, &mut give) {
            left -= 1;
        }
        if left > 0 {
            lease.pool.fill(left, now, lease.interval.min(POOL_TTL_MAX));
        }
        if queue.is_empty() {
            return None;
        }
        // Permits came: more may be free at once. None came: the next one is `next_in` away.
        let again = if grant.granted > 0 { Duration::ZERO } else { grant.next_in };
        Some(again.max(MIN_AGAIN))
    }
}

#[cfg(test)]
mod tests {
    use super::super::queue::Verdict;
    use super::*;
    use crate::actors::budget::{BudgetShared, Class};

    const MS: Duration = Duration::from_millis(1);

    /// A queue of `n` waiters of client 0, numbered from 0, that never gives up.
    fn queue(n: u32, now: Instant) -> WaitQueue<u32> {
        let budget = BudgetShared::try_new(60, 1, vec![1]).unwrap();
        budget.gcra().try_acquire(now).unwrap();
        let mut queue = WaitQueue::new(&[1], 100);
        for i in 0..n {
            match queue.admit(now, &budget, 0, Class::Interactive, now + Duration::from_secs(600), Duration::ZERO) {
                Verdict::Queue(place) => queue.push(place, now, i),
                other => panic!("{other:?}"),
            }
        }
        queue
    }

    #[test]
    fn one_question_at_a_time_for_a_batch_of_waiters() {
        let mut leaser = Leaser::default();
        assert_eq!(leaser.ask(0), None, "nobody waits");
        assert_eq!(leaser.ask(3), Some(Ask { want: 3, drain: false }));
        assert_eq!(leaser.ask(3), None, "a question is under way");
        leaser.failed();
        assert_eq!(leaser.ask(500), Some(Ask { want: 64, drain: true }), "after running alone, drain first");
    }

    #[test]
    fn a_grant_serves_waiters_in_order_and_asks_again_at_once() {
        let t0 = Instant::now();
        let lease = Lease::new(100 * MS);
        let fallback = Gcra::try_new(300, 1).unwrap();
        let mut queue = queue(3, t0);
        let mut leaser = Leaser { asking: true, ran_alone: true };
        let mut served = Vec::new();
        let grant = Grant { granted: 2, next_in: 100 * MS };
        let again = leaser.granted(t0 + 10 * MS, grant, &lease, &fallback, &mut queue, |i, waited| {
            served.push((i, waited));
            true
        });
        assert_eq!(served, [(0, 10 * MS), (1, 10 * MS)]);
        assert_eq!(again, Some(MIN_AGAIN), "permits came: ask again for the third waiter at once");
        assert_eq!(lease.available(t0 + 10 * MS), 0, "nothing left over for the pool");
        assert_eq!(lease.next_free(t0 + 10 * MS), 100 * MS);
        assert_eq!(lease.local_interval(2), 200 * MS, "one permit in two when both replicas are busy");
        assert_eq!(lease.local_interval(5), 500 * MS, "one in five after the fleet grew");
        assert!(fallback.try_acquire(t0 + 10 * MS).is_err(), "the fallback share is kept spent");
        assert_eq!(leaser.ask(queue.len()), Some(Ask { want: 1, drain: false }));
    }

    #[test]
    fn an_empty_grant_waits_for_the_next_permit() {
        let t0 = Instant::now();
        let lease = Lease::new(100 * MS);
        let fallback = Gcra::try_new(600, 1).unwrap();
        let mut queue = queue(1, t0);
        let mut leaser = Leaser::default();
        leaser.ask(1);
        let grant = Grant { granted: 0, next_in: 70 * MS };
        assert_eq!(leaser.granted(t0, grant, &lease, &fallback, &mut queue, |_, _| true), Some(70 * MS));
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn what_nobody_took_waits_briefly_in_the_pool() {
        let t0 = Instant::now();
        let lease = Lease::new(50 * MS);
        let fallback = Gcra::try_new(1200, 1).unwrap();
        let mut queue = queue(3, t0);
        let mut leaser = Leaser::default();
        leaser.ask(3);
        // Two waiters gave up: their permits go to the pool, for one interval at most.
        let grant = Grant { granted: 3, next_in: Duration::ZERO };
        let again = leaser.granted(t0, grant, &lease, &fallback, &mut queue, |i, _| i == 2);
        assert_eq!(again, None, "nobody waits any more");
        assert_eq!(lease.available(t0), 2);
        assert!(lease.take(t0 + 49 * MS));
        assert!(!lease.take(t0 + 50 * MS), "expired after one interval");
    }
}
