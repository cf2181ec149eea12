//! The budget's wait queue and its admission rule, as a plain struct: [`WaitQueue`].
//!
//! Why refuse at the door rather than let a request wait and time out: a request that waited
//! in vain held a connection, a task and its body all that time, and then got the same 429.
//! So a request is queued only if its place lets it be served before its deadline, less the
//! `reserve` the attempt itself needs after the permit; otherwise, or when the queue is full,
//! it is refused at once with a `Retry-After` computed from the queue.
//!
//! How a place is estimated: the next free permit, plus one permit interval for each waiter
//! served before it in weighted fair order ([`FairQueue::expected_intervals`]: its rank now,
//! or its own backlog at its client's weighted share, whichever is larger). Timers do not fire
//! exactly on time, so a little slack is kept.
//!
//! Why a plain struct: it takes `now`, the permit source and a `give` function for each grant,
//! and owns neither channels nor timers, so tests drive it on virtual time. The actor keeps
//! its waiters' oneshot senders in it and arms the timers it asks for.

use std::time::{Duration, Instant};

use super::fair::{Class, FairQueue};
use super::gcra::Gcra;
use super::permits::BudgetShared;

/// Slack kept between the estimated grant and the latest useful one, for timer jitter.
const ADMISSION_SLACK: Duration = Duration::from_millis(25);

/// Why a permit was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalReason {
    /// The queue is full.
    QueueFull,
    /// The request cannot be served before its deadline.
    Deadline,
}

impl RefusalReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::QueueFull => "queue_full",
            RefusalReason::Deadline => "deadline",
        }
    }
}

/// A refused permit: why, and when asking again makes sense.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Why.
    pub reason: RefusalReason,
    /// When to ask again.
    pub retry_after: Duration,
}

/// Where an admitted request goes in the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    lane: usize,
    class: Class,
    latest_start: Instant,
    next_free: Duration,
}

impl Place {
    /// Time until the next permit when the place was found: when the queue is next worth
    /// serving.
    pub fn next_free(&self) -> Duration {
        self.next_free
    }
}

/// What [`WaitQueue::admit`] decided for a request that found no permit on its worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A permit was free after all, and nobody waits: taken.
    Granted,
    /// The request can be served in time: [`WaitQueue::push`] it here.
    Queue(Place),
    /// Refused at once.
    Refused(Refusal),
}

struct Waiter<T> {
    item: T,
    /// The deadline less the time the attempt itself needs: a permit later is no use.
    latest_start: Instant,
    enqueued: Instant,
}

/// Waiters for a permit, in weighted fair order, each admitted only if it can be served in
/// time; `T` is what a grant is handed to (the actor's oneshot sender).
pub struct WaitQueue<T> {
    fair: FairQueue<Waiter<T>>,
    max: usize,
}

impl<T> WaitQueue<T> {
    /// A queue of at most `max` waiters of clients with these weights (index = client).
    pub fn new(weights: &[u32], max: usize) -> Self {
        WaitQueue { fair: FairQueue::new(weights), max }
    }

    /// Waiters in the queue.
    pub fn len(&self) -> usize {
        self.fair.len()
    }

    /// Whether nobody waits.
    pub fn is_empty(&self) -> bool {
        self.fair.is_empty()
    }

    /// Decides at `now` for a request of `client` in `class` that must start its attempt
    /// `reserve` before `deadline`: a permit from `permits` if one is free and nobody waits,
    /// a place in the queue if that place is served in time, else a refusal.
    pub fn admit(
        &mut self,
        now: Instant,
        permits: &BudgetShared,
        client: usize,
        class: Class,
        deadline: Instant,
        reserve: Duration,
    ) -> Verdict {
        if self.is_empty() && permits.try_fast(now) {
            return Verdict::Granted;
        }
        let interval = permits.local_interval();
        let next_free = permits.next_free(now);
        if self.len() >= self.max {
            let drain = next_free + interval * self.len() as u32;
            return Verdict::Refused(Refusal { reason: RefusalReason::QueueFull, retry_after: drain });
        }
        let lane = self.fair.lane(client);
        let wait = next_free + interval.mul_f64(self.fair.expected_intervals(lane, class));
        let latest_start = latest_start(now, deadline, reserve);
        if too_late(now, wait, latest_start) {
            return Verdict::Refused(Refusal { reason: RefusalReason::Deadline, retry_after: wait });
        }
        Verdict::Queue(Place { lane, class, latest_start, next_free })
    }

    /// Queues `item` at the place [`WaitQueue::admit`] found for it at `now`.
    pub fn push(&mut self, place: Place, now: Instant, item: T) {
        let waiter = Waiter { item, latest_start: place.latest_start, enqueued: now };
        self.fair.push(place.lane, place.class, waiter);
    }

    /// Drops the waiters that are gone (`alive` says no) or that a permit at `now` would
    /// reach too late; their clients lose no share for them.
    pub fn prune(&mut self, now: Instant, mut alive: impl FnMut(&T) -> bool) {
        self.fair.retain(|waiter| alive(&waiter.item) && waiter.latest_start > now);
    }

    /// Hands one permit to the next waiter in fair order: `give` gets it with the time it
    /// waited and says whether it was taken (a waiter that is gone takes nothing, and the
    /// permit goes to the next one). False when nobody took it.
    pub fn grant_next(&mut self, now: Instant, mut give: impl FnMut(T, Duration) -> bool) -> bool {
        while let Some((_client, waiter)) = self.fair.pop() {
            if give(waiter.item, now.duration_since(waiter.enqueued)) {
                return true;
            }
        }
        false
    }

    /// Serves waiters from `gcra` while it has permits at `now`; returns how long until its
    /// next permit when someone still waits.
    pub fn serve(&mut self, now: Instant, gcra: &Gcra, mut give: impl FnMut(T, Duration) -> bool) -> Option<Duration> {
        while !self.is_empty() {
            match gcra.try_acquire(now) {
                Ok(()) => {
                    self.grant_next(now, &mut give);
                }
                Err(wait) => return Some(wait),
            }
        }
        None
    }
}

/// Whether even a permit `next_free` from `now`, the earliest any place in the queue can get,
/// comes too late for a request that needs `reserve` before `deadline`. Then the queue would
/// refuse it too, so a worker refuses it on its own thread, without asking the actor.
pub fn hopeless(now: Instant, next_free: Duration, deadline: Instant, reserve: Duration) -> bool {
    too_late(now, next_free, latest_start(now, deadline, reserve))
}

/// The latest useful start of an attempt that needs `reserve` before `deadline`.
fn latest_start(now: Instant, deadline: Instant, reserve: Duration) -> Instant {
    deadline.checked_sub(reserve).unwrap_or(now)
}

/// Whether a permit `wait` from `now` comes after `latest_start`. The estimate is exact only
/// if timers fire on time, so a little slack is kept.
fn too_late(now: Instant, wait: Duration, latest_start: Instant) -> bool {
    now + wait + ADMISSION_SLACK + wait / 50 > latest_start
}

#[cfg(test)]
mod tests {
    //! On virtual time: every call gets its `now`, and nothing sleeps.

    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    /// A budget of `per_minute` with a burst of 1 whose permit is spent at the returned instant.
    fn spent(per_minute: u32, weights: Vec<u32>) -> (BudgetShared, Instant) {
        let budget = BudgetShared::try_new(per_minute, 1, weights).unwrap();
        let t0 = Instant::now();
        assert!(budget.try_fast(t0));
        (budget, t0)
    }

    /// Admits `item` of `client` at `now` with `deadline`, and queues it; panics on a refusal.
    fn queue_up(
        queue: &mut WaitQueue<u32>,
        budget: &BudgetShared,
        now: Instant,
        client: usize,
        deadline: Instant,
        item: u32,
    ) {
        match queue.admit(now, budget, client, Class::Interactive, deadline, Duration::ZERO) {
            Verdict::Queue(place) => queue.push(place, now, item),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_free_permit_is_granted_only_while_nobody_waits() {
        let budget = BudgetShared::try_new(600, 2, vec![1]).unwrap();
        let t0 = Instant::now();
        let mut queue = WaitQueue::new(&[1], 10);
        let far = t0 + 10 * SEC;
        assert_eq!(queue.admit(t0, &budget, 0, Class::Interactive, far, Duration::ZERO), Verdict::Granted);
        queue.push(Place { lane: 0, class: Class::Interactive, latest_start: far, next_free: Duration::ZERO }, t0, 1);
        // A permit is still free, but a waiter was first.
        let Verdict::Queue(place) = queue.admit(t0, &budget, 0, Class::Interactive, far, Duration::ZERO) else {
            panic!("a newcomer jumped the queue")
        };
        assert_eq!(place.next_free(), Duration::ZERO);
    }

    #[test]
    fn waiters_get_permits_at_the_rate_in_arrival_order() {
        let (budget, t0) = spent(600, vec![1]); // one per 100 ms
        let mut queue = WaitQueue::new(&[1], 10);
        for item in 0..3 {
            queue_up(&mut queue, &budget, t0, 0, t0 + 10 * SEC, item);
        }
        let mut served = Vec::new();
        let mut give = |item, waited| {
            served.push((item, waited));
            true
        };
        assert_eq!(queue.serve(t0, budget.gcra(), &mut give), Some(100 * MS));
        assert_eq!(queue.serve(t0 + 100 * MS, budget.gcra(), &mut give), Some(100 * MS));
        // A late timer: the next permit is one interval after the late grant, not before.
        assert_eq!(queue.serve(t0 + 250 * MS, budget.gcra(), &mut give), Some(100 * MS));
        assert_eq!(queue.serve(t0 + 350 * MS, budget.gcra(), &mut give), None);
        assert_eq!(served, [(0, 100 * MS), (1, 250 * MS), (2, 350 * MS)]);
        assert!(queue.is_empty());
    }

    #[test]
    fn a_place_served_too_late_is_refused_with_the_wait() {
        let (budget, t0) = spent(60, vec![1]); // one per second
        let mut queue: WaitQueue<u32> = WaitQueue::new(&[1], 10);
        let refused = queue.admit(t0, &budget, 0, Class::Interactive, t0 + 300 * MS, Duration::ZERO);
        assert_eq!(refused, Verdict::Refused(Refusal { reason: RefusalReason::Deadline, retry_after: SEC }));
        // The attempt's own time counts: a permit after `deadline - reserve` is no use.
        let reserved = queue.admit(t0, &budget, 0, Class::Interactive, t0 + 5 * SEC, 4500 * MS);
        assert!(matches!(reserved, Verdict::Refused(Refusal { reason: RefusalReason::Deadline, .. })));
        // The slack: a permit due just before the deadline is not worth queueing for.
        let tight = queue.admit(t0, &budget, 0, Class::Interactive, t0 + 1010 * MS, Duration::ZERO);
        assert!(matches!(tight, Verdict::Refused(_)), "{tight:?}");
        let roomy = queue.admit(t0, &budget, 0, Class::Interactive, t0 + 1100 * MS, Duration::ZERO);
        assert!(matches!(roomy, Verdict::Queue(_)), "{roomy:?}");
    }

    #[test]
    fn a_full_queue_refuses_with_the_time_to_drain_it() {
        let (budget, t0) = spent(60, vec![1]);
        let mut queue = WaitQueue::new(&[1], 2);
        queue_up(&mut queue, &budget, t0, 0, t0 + 60 * SEC, 1);
        queue_up(&mut queue, &budget, t0, 0, t0 + 60 * SEC, 2);
        let refused = queue.admit(t0, &budget, 0, Class::Interactive, t0 + 60 * SEC, Duration::ZERO);
        // The next permit in a second, then one second for each of the two waiters.
        assert_eq!(refused, Verdict::Refused(Refusal { reason: RefusalReason::QueueFull, retry_after: 3 * SEC }));
    }

    #[test]
    fn the_deadline_is_weighed_against_the_clients_fair_share() {
        let (budget, t0) = spent(600, vec![3, 1]);
        let mut queue = WaitQueue::new(&[3, 1], 100);
        for item in 0..15 {
            queue_up(&mut queue, &budget, t0, 0, t0 + 60 * SEC, item);
            queue_up(&mut queue, &budget, t0, 1, t0 + 60 * SEC, 100 + item);
        }
        // The light client's next waiter is behind 15 of its own at a quarter of the rate
        // (~6 s); the heavy client's at three quarters (~2 s).
        let deadline = t0 + 5 * SEC;
        let light = queue.admit(t0, &budget, 1, Class::Interactive, deadline, Duration::ZERO);
        assert!(matches!(light, Verdict::Refused(Refusal { reason: RefusalReason::Deadline, .. })), "{light:?}");
        assert!(matches!(queue.admit(t0, &budget, 0, Class::Interactive, deadline, Duration::ZERO), Verdict::Queue(_)));
        // Served in weighted fair order: three of the heavy client's for one of the light one's.
        let mut order = Vec::new();
        for tick in 1..=8 {
            queue.serve(t0 + tick * 100 * MS, budget.gcra(), |item, _| {
                order.push(item);
                true
            });
        }
        assert_eq!(order, [0, 100, 1, 2, 101, 3, 4, 5]);
    }

    #[test]
    fn background_waiters_are_served_after_interactive_ones() {
        let (budget, t0) = spent(600, vec![1]);
        let mut queue = WaitQueue::new(&[1], 10);
        let far = t0 + 60 * SEC;
        for item in 0..2 {
            let Verdict::Queue(place) = queue.admit(t0, &budget, 0, Class::Background, far, Duration::ZERO) else {
                panic!("refused")
            };
            queue.push(place, t0, item);
        }
        queue_up(&mut queue, &budget, t0, 0, far, 9);
        let mut order = Vec::new();
        for tick in 1..=3 {
            queue.serve(t0 + tick * 100 * MS, budget.gcra(), |item, _| {
                order.push(item);
                true
            });
        }
        assert_eq!(order, [9, 0, 1]);
    }

    #[test]
    fn waiters_gone_or_past_their_latest_start_are_dropped() {
        let (budget, t0) = spent(60, vec![1]);
        let mut queue = WaitQueue::new(&[1], 10);
        queue_up(&mut queue, &budget, t0, 0, t0 + 2 * SEC, 1);
        queue_up(&mut queue, &budget, t0, 0, t0 + 60 * SEC, 2);
        queue_up(&mut queue, &budget, t0, 0, t0 + 60 * SEC, 3);
        queue.prune(t0 + 2 * SEC, |&item| item != 3);
        assert_eq!(queue.len(), 1);
        // A permit handed to a waiter that is gone goes to the next one.
        queue_up(&mut queue, &budget, t0 + 2 * SEC, 0, t0 + 60 * SEC, 4);
        let mut taken = Vec::new();
        assert!(queue.grant_next(t0 + 3 * SEC, |item, _| {
            taken.push(item);
            item != 2
        }));
        assert_eq!(taken, [2, 4]);
        assert!(!queue.grant_next(t0 + 3 * SEC, |_, _| true), "nobody left");
    }

    #[test]
    fn a_deadline_even_the_next_permit_misses_is_hopeless() {
        let t0 = Instant::now();
        assert!(hopeless(t0, SEC, t0 + 300 * MS, Duration::ZERO));
        assert!(hopeless(t0, SEC, t0 + 5 * SEC, 4500 * MS), "the attempt's reserve counts");
        assert!(!hopeless(t0, SEC, t0 + 5 * SEC, Duration::ZERO));
        assert!(!hopeless(t0, Duration::ZERO, t0 + 100 * MS, Duration::ZERO));
    }
}
