//! The Budget actor owns the upstream's rate limit: the wait queue with its deadlines, fair
//! sharing between clients, and the pauses learned from the upstream.
//!
//! Why it is shaped this way (see ARCHITECTURE.md, "the hot path"): the permit check itself
//! is lock-free. The rate lives in a [`Gcra`] (one atomic) in [`BudgetShared`], and a
//! request that finds a permit free, while nobody waits, takes it with one compare-and-swap
//! on its own thread. Only a request that finds no permit sends [`Acquire`] to the actor:
//! that is exactly when the rate is low, and when fairness and deadlines matter. While anyone
//! waits, newcomers queue too, so nobody jumps the queue.
//!
//! A queued request is admitted only if its place in the queue lets it be served before its
//! deadline; otherwise, or when the queue is full, it is refused at once with a `Retry-After`
//! computed from the queue, instead of waiting in vain. Permits are handed out in weighted
//! fair order ([`fair`]), interactive (sync) requests before background (async) ones.
//!
//! What the upstream says folds into the same GCRA: a 429 with `Retry-After` pauses all
//! dispatch until then; `X-RateLimit-Remaining` caps what courier may still send. A 429 is a
//! rate signal here, never a breaker failure.

mod fair;
mod gcra;
mod pool;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use prometheus::{Histogram, IntCounter};
use slog::{info, o, Logger};
use tokio::sync::oneshot;

pub use fair::{Class, FairQueue};
pub use gcra::{Gcra, InvalidRate};
pub use pool::Pool;

use crate::metrics::Metrics;
use crate::shared::budget::SharedRate;
use crate::upstream::RateSignal;

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
    shared: Option<Shared>,
    waiting: AtomicUsize,
    per_minute: u32,
    weights: Vec<u32>,
    total_weight: u32,
}

/// The shared half of a replica's budget.
struct Shared {
    rate: Arc<SharedRate>,
    pool: Pool,
    /// Emission interval of the whole fleet's rate.
    interval: Duration,
    /// Replicas sharing it (`COURIER_REPLICAS`): a queued request here gets about one permit
    /// in this many when every replica is busy.
    replicas: u32,
}

impl BudgetShared {
    /// A full budget of `per_minute` with bursts of `burst`, shared by clients of `weights`.
    pub fn try_new(per_minute: u32, burst: u32, weights: Vec<u32>) -> Result<BudgetShared, InvalidRate> {
        Self::try_with_shared(per_minute, burst, weights, None)
    }

    /// A budget shared by `replicas` replicas through `shared` (Redis); while Redis fails,
    /// this replica falls back to its share: `per_minute / replicas`, `burst / replicas`.
    pub fn try_with_shared(
        per_minute: u32,
        burst: u32,
        weights: Vec<u32>,
        shared: Option<(Arc<SharedRate>, u32)>,
    ) -> Result<BudgetShared, InvalidRate> {
        let replicas = shared.as_ref().map_or(1, |(_, n)| (*n).max(1));
        let gcra = Gcra::try_new((per_minute / replicas).max(1), (burst / replicas).max(1))?;
        let interval = Gcra::try_new(per_minute, burst)?.emission_interval();
        let shared =
            shared.map(|(rate, replicas)| Shared { rate, pool: Pool::new(), interval, replicas: replicas.max(1) });
        if weights.is_empty() {
            return Err(InvalidRate("no clients"));
        }
        let total_weight = weights.iter().sum::<u32>().max(1);
        Ok(BudgetShared { gcra, shared, waiting: AtomicUsize::new(0), per_minute, weights, total_weight })
    }

    /// The rate algorithm.
    pub fn gcra(&self) -> &Gcra {
        &self.gcra
    }

    /// The shared budget while Redis works; `None` without Redis, or while degraded.
    fn shared_up(&self) -> Option<&Shared> {
        self.shared.as_ref().filter(|s| s.rate.redis().is_up())
    }

    /// Takes a permit at once when one is free and nobody waits for one: from the local GCRA,
    /// or with shared state from this replica's leased permits.
    pub fn try_fast(&self, now: Instant) -> bool {
        if self.waiting.load(Ordering::Acquire) != 0 {
            return false;
        }
        match self.shared_up() {
            Some(shared) => shared.pool.take(now),
            None => self.gcra.try_acquire(now).is_ok(),
        }
    }

    /// Time until the next permit (the shared budget's, as last heard, when shared).
    fn next_free(&self, now: Instant) -> Duration {
        match self.shared_up() {
            Some(shared) => shared.pool.next_free(now),
            None => self.gcra.next_free(now),
        }
    }

    /// The interval at which a queued request here can expect permits.
    fn local_interval(&self) -> Duration {
        match self.shared_up() {
            Some(shared) => shared.interval * shared.replicas,
            None => self.gcra.emission_interval(),
        }
    }

    /// Permits free now.
    fn available(&self, now: Instant) -> u32 {
        match self.shared_up() {
            Some(shared) => shared.pool.available(now),
            None => self.gcra.available(now),
        }
    }

    /// Requests waiting in the queue.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
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

fn share(per_minute: u32, weight: u32, total: u32) -> u64 {
    (u64::from(per_minute) * u64::from(weight) / u64::from(total.max(1))).max(1)
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

/// The answer to [`Acquire`].
#[derive(Debug)]
pub enum Admission {
    /// A permit, now.
    Granted,
    /// Queued: the receiver resolves when the permit is granted (or the waiter is dropped).
    Queued(oneshot::Receiver<()>),
    /// Refused at once.
    Refused(Refusal),
}

/// Asks for a permit when the fast path found none.
#[derive(Message, Debug)]
#[rtype(result = "Admission")]
pub struct Acquire {
    /// The client (index in the clients file; 0 in open mode).
    pub client: usize,
    /// Its priority class.
    pub class: Class,
    /// When the request stops waiting.
    pub deadline: Instant,
    /// Time the attempt needs after the permit: a permit later than `deadline - reserve` is
    /// no use, so such a request is refused at once.
    pub reserve: Duration,
}

/// A worker learned a pause from the upstream (already applied to the GCRA); the actor logs
/// it, counts it and reschedules its queue.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Paused {
    /// Where the pause came from.
    pub source: PauseSource,
    /// How long the budget is held back.
    pub wait: Duration,
}

struct Waiter {
    tx: oneshot::Sender<()>,
    /// The deadline less the time the attempt itself needs: a permit later is no use.
    latest_start: Instant,
    enqueued: Instant,
}

/// The actor.
pub struct Budget {
    shared: Arc<BudgetShared>,
    queue: FairQueue<Waiter>,
    queue_max: usize,
    timer: Option<(Instant, SpawnHandle)>,
    /// A call to the shared budget is under way (one at a time per replica).
    asking: bool,
    /// Permits were handed out from the local fallback since the last shared grant.
    ran_alone: bool,
    grants_fast: IntCounter,
    grants_queued: IntCounter,
    wait: Histogram,
    metrics: Arc<Metrics>,
    log: Logger,
}

impl Budget {
    /// The actor around `shared`, queueing at most `queue_max` requests.
    pub fn new(shared: Arc<BudgetShared>, queue_max: usize, metrics: Arc<Metrics>, log: &Logger) -> Budget {
        Budget {
            queue: FairQueue::new(&shared.weights),
            shared,
            queue_max,
            timer: None,
            asking: false,
            ran_alone: false,
            grants_fast: metrics.budget_grants.with_label_values(&["fast"]),
            grants_queued: metrics.budget_grants.with_label_values(&["queued"]),
            wait: metrics.budget_wait.clone(),
            metrics,
            log: log.new(o!("actor" => "budget")),
        }
    }

    fn refuse(&self, reason: RefusalReason, retry_after: Duration) -> Admission {
        self.metrics.budget_rejections.with_label_values(&[reason.as_str()]).inc();
        Admission::Refused(Refusal { reason, retry_after })
    }

    /// Grants permits to waiters in fair order while permits are free; then sleeps until the
    /// next one frees up. With shared state the permits come from Redis (when it is due for a
    /// try), else from this replica's GCRA.
    fn serve(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        self.queue.retain(|w| !w.tx.is_closed() && w.latest_start > now);
        match &self.shared.shared {
            Some(shared) if shared.rate.redis().should_try() => self.serve_shared(ctx),
            Some(_) => {
                self.ran_alone = true;
                self.serve_local(ctx, now);
            }
            None => self.serve_local(ctx, now),
        }
        self.shared.waiting.store(self.queue.len(), Ordering::Release);
    }

    fn serve_local(&mut self, ctx: &mut Context<Self>, now: Instant) {
        while !self.queue.is_empty() {
            match self.shared.gcra.try_acquire(now) {
                Ok(()) => {
                    self.grant_next(now);
                }
                Err(wait) => {
                    self.wake_in(wait, ctx);
                    break;
                }
            }
        }
    }

    /// Hands one permit to the next waiter in fair order; false when nobody took it.
    fn grant_next(&mut self, now: Instant) -> bool {
        while let Some((_client, waiter)) = self.queue.pop() {
            if waiter.tx.send(()).is_ok() {
                self.grants_queued.inc();
                self.wait.observe(now.duration_since(waiter.enqueued).as_secs_f64());
                return true;
            }
        }
        false
    }

    /// Asks Redis for as many permits as there are waiters (one round trip for the batch);
    /// hands them out in fair order; parks what nobody took in the pool for at most one
    /// interval. If Redis fails, this round is served from the local fallback share.
    fn serve_shared(&mut self, ctx: &mut Context<Self>) {
        if self.asking || self.queue.is_empty() {
            return;
        }
        self.asking = true;
        let rate = self.shared.shared.as_ref().expect("shared").rate.clone();
        let want = self.queue.len().min(64) as u32;
        let drain = self.ran_alone;
        let ask = async move { rate.acquire(want, drain).await };
        ctx.spawn(ask.into_actor(self).map(|result, act, ctx| {
            act.asking = false;
            let now = Instant::now();
            let shared = act.shared.clone();
            let Some(parts) = shared.shared.as_ref() else { return };
            match result {
                Ok(grant) => {
                    act.ran_alone = false;
                    // Keep the fallback share spent while shared mode works, so that falling
                    // back starts at the rate, not with a burst on top of what was just sent.
                    act.shared.gcra.pause_until(now + act.shared.gcra.emission_interval());
                    parts.pool.set_next_free(now + grant.next_in);
                    let mut left = grant.granted;
                    while left > 0 && !act.queue.is_empty() && act.grant_next(now) {
                        left -= 1;
                    }
                    if left > 0 {
                        parts.pool.fill(left, now, parts.interval.min(Duration::from_millis(100)));
                    }
                    if !act.queue.is_empty() {
                        let again = if grant.granted > 0 { Duration::ZERO } else { grant.next_in };
                        act.wake_in(again.max(Duration::from_millis(1)), ctx);
                    }
                }
                Err(_) => {
                    act.ran_alone = true;
                    act.serve_local(ctx, now);
                }
            }
            act.shared.waiting.store(act.queue.len(), Ordering::Release);
        }));
    }

    fn wake_in(&mut self, wait: Duration, ctx: &mut Context<Self>) {
        let at = Instant::now() + wait;
        if let Some((scheduled, handle)) = self.timer.take() {
            if scheduled <= at {
                self.timer = Some((scheduled, handle));
                return;
            }
            ctx.cancel_future(handle);
        }
        let handle = ctx.run_later(wait, |act, ctx| {
            act.timer = None;
            act.serve(ctx);
        });
        self.timer = Some((at, handle));
    }
}

impl Actor for Budget {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(65_536);
    }
}

impl Handler<Acquire> for Budget {
    type Result = MessageResult<Acquire>;

    fn handle(&mut self, msg: Acquire, ctx: &mut Context<Self>) -> Self::Result {
        let now = Instant::now();
        if self.queue.is_empty() && self.shared.try_fast(now) {
            self.grants_fast.inc();
            return MessageResult(Admission::Granted);
        }
        let interval = self.shared.local_interval();
        let next_free = self.shared.next_free(now);
        if self.queue.len() >= self.queue_max {
            let drain = next_free + interval * self.queue.len() as u32;
            return MessageResult(self.refuse(RefusalReason::QueueFull, drain));
        }
        let client = self.queue.lane(msg.client);
        let wait = next_free + interval.mul_f64(self.queue.expected_intervals(client, msg.class));
        let latest_start = latest_start(now, msg.deadline, msg.reserve);
        if too_late(now, wait, latest_start) {
            return MessageResult(self.refuse(RefusalReason::Deadline, wait));
        }
        let (tx, rx) = oneshot::channel();
        self.queue.push(client, msg.class, Waiter { tx, latest_start, enqueued: now });
        self.shared.waiting.store(self.queue.len(), Ordering::Release);
        match &self.shared.shared {
            Some(_) => self.serve(ctx),
            None => self.wake_in(next_free, ctx),
        }
        MessageResult(Admission::Queued(rx))
    }
}

impl Handler<Paused> for Budget {
    type Result = ();

    fn handle(&mut self, msg: Paused, ctx: &mut Context<Self>) {
        self.metrics.budget_pauses.with_label_values(&[msg.source.as_str()]).inc();
        info!(self.log, "budget_paused"; "source" => msg.source.as_str(), "for_seconds" => msg.wait.as_secs_f64());
        if let Some(parts) = &self.shared.shared {
            // Every replica holds back, not only this one.
            let rate = parts.rate.clone();
            let tell = async move {
                let _ = match msg.source {
                    PauseSource::RetryAfter => rate.pause(msg.wait).await,
                    PauseSource::Remaining => rate.cap(0).await,
                };
            };
            ctx.spawn(tell.into_actor(self));
        }
        if let Some((_, handle)) = self.timer.take() {
            ctx.cancel_future(handle);
        }
        self.serve(ctx);
    }
}

/// A worker's way to the budget: the lock-free fast path, then the actor.
#[derive(Clone)]
pub struct BudgetHandle {
    shared: Arc<BudgetShared>,
    addr: Addr<Budget>,
    grants_fast: IntCounter,
    deadline_refusals: IntCounter,
}

impl BudgetHandle {
    /// A handle on the shared budget and its actor.
    pub fn new(shared: Arc<BudgetShared>, addr: Addr<Budget>, metrics: &Metrics) -> BudgetHandle {
        BudgetHandle {
            shared,
            addr,
            grants_fast: metrics.budget_grants.with_label_values(&["fast"]),
            deadline_refusals: metrics.budget_rejections.with_label_values(&[RefusalReason::Deadline.as_str()]),
        }
    }

    /// The shared half.
    pub fn shared(&self) -> &Arc<BudgetShared> {
        &self.shared
    }

    /// A permit for one upstream attempt of `client` that leaves `reserve` before `deadline`.
    pub async fn acquire(
        &self,
        client: usize,
        class: Class,
        deadline: Instant,
        reserve: Duration,
    ) -> Result<(), Refusal> {
        let now = Instant::now();
        if self.shared.try_fast(now) {
            self.grants_fast.inc();
            return Ok(());
        }
        let late = |shared: &BudgetShared| Refusal {
            reason: RefusalReason::Deadline,
            retry_after: shared.queue_wait(Instant::now()).max(Duration::from_secs(1)),
        };
        // The next free permit is the earliest any place in the queue can be served: when even
        // that comes too late, the actor would refuse too, so refuse here, on this thread,
        // without the round trip (the over-budget answer stays as fast as the fast path).
        let next_free = self.shared.next_free(now);
        if too_late(now, next_free, latest_start(now, deadline, reserve)) {
            self.deadline_refusals.inc();
            return Err(Refusal { reason: RefusalReason::Deadline, retry_after: self.shared.queue_wait(now) });
        }
        let admission = match self.addr.send(Acquire { client, class, deadline, reserve }).await {
            Ok(admission) => admission,
            Err(_) => return Err(Refusal { reason: RefusalReason::QueueFull, retry_after: Duration::from_secs(1) }),
        };
        match admission {
            Admission::Granted => Ok(()),
            Admission::Refused(refusal) => Err(refusal),
            Admission::Queued(rx) => {
                // The actor drops the waiter once a permit would come too late; this timeout
                // is only a backstop.
                let left = deadline.saturating_duration_since(Instant::now());
                match actix_rt::time::timeout(left, rx).await {
                    Ok(Ok(())) => Ok(()),
                    _ => {
                        self.deadline_refusals.inc();
                        Err(late(&self.shared))
                    }
                }
            }
        }
    }

    /// A permit only if one is free right now and nobody waits (for background work that
    /// must never take budget from live requests). Not counted as a rejection.
    pub fn try_now(&self) -> Result<(), Refusal> {
        let now = Instant::now();
        if self.shared.try_fast(now) {
            self.grants_fast.inc();
            return Ok(());
        }
        Err(Refusal { reason: RefusalReason::QueueFull, retry_after: self.shared.queue_wait(now) })
    }

    /// Folds an upstream answer's rate signal into the budget, telling the actor of pauses.
    pub fn learn(&self, signal: &RateSignal, rate_limited: bool) {
        if !rate_limited && signal.remaining.is_none() {
            return;
        }
        if let Some((source, wait)) = self.shared.learn(Instant::now(), signal, rate_limited) {
            let _ = self.addr.try_send(Paused { source, wait });
        }
    }
}

#[cfg(test)]
mod tests;
