//! The Budget actor owns the upstream's rate limit where it needs one owner: the queue of
//! requests waiting for a permit, the timer that serves it, and the round trips to the fleet's
//! budget in Redis.
//!
//! Why it is shaped this way (see ARCHITECTURE.md, "the hot path"): the permit check itself
//! is lock-free. The rate lives in [`BudgetShared`] (a GCRA in one atomic, `permits.rs`), and
//! a request that finds a permit free, while nobody waits, takes it with one compare-and-swap
//! on its own thread ([`BudgetHandle`], `handle.rs`). Only a request that finds no permit
//! sends [`Acquire`] to the actor: that is exactly when the rate is low, and when fairness and
//! deadlines matter. While anyone waits, newcomers queue too, so nobody jumps the queue.
//!
//! Each part of the rest is plain code on `now`, tested on virtual time, and this file only
//! wires it to messages and timers:
//! - `queue.rs`: admission against deadlines (a request is queued only if its place lets it
//!   be served in time; else, or when the queue is full, it is refused at once with a
//!   `Retry-After` computed from the queue), and grants in weighted fair order (`fair.rs`),
//!   interactive (sync) requests before background (async) ones;
//! - `lease.rs`: with replicas sharing one budget, permits leased from Redis in batches, and
//!   the local fallback share while Redis fails;
//! - `gcra.rs`: the rate, into which what the upstream says folds: a 429 with `Retry-After`
//!   pauses all dispatch until then; `X-RateLimit-Remaining` caps what courier may still
//!   send. A 429 is a rate signal here, never a breaker failure.
//!
//! The `RateLimit` headers that show a client its share are rendered in `http/ratelimit.rs`
//! from [`BudgetShared::client_share`].

mod fair;
mod gcra;
mod handle;
mod lease;
mod permits;
mod pool;
mod queue;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use prometheus::{Histogram, IntCounter};
use slog::{info, o, Logger};
use tokio::sync::oneshot;

pub use fair::{Class, FairQueue};
pub use gcra::{Gcra, InvalidRate};
pub use handle::BudgetHandle;
use lease::Leaser;
pub use permits::{BudgetShared, ClientShare, PauseSource};
pub use pool::Pool;
pub use queue::{Refusal, RefusalReason};
use queue::{Verdict, WaitQueue};

use crate::metrics::Metrics;

/// Mailbox capacity: requests that found no permit wait here for their admission.
const MAILBOX: usize = 65_536;

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
/// it, counts it, tells the other replicas and reschedules its queue.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Paused {
    /// Where the pause came from.
    pub source: PauseSource,
    /// How long the budget is held back.
    pub wait: Duration,
}

/// A waiter's end of its permit.
type Waiter = oneshot::Sender<()>;

/// The actor.
pub struct Budget {
    shared: Arc<BudgetShared>,
    queue: WaitQueue<Waiter>,
    leaser: Leaser,
    /// The timer that serves the queue next, and the instant it fires.
    timer: Option<(Instant, SpawnHandle)>,
    grants: Grants,
    metrics: Arc<Metrics>,
    log: Logger,
}

/// Counts what the queue hands out.
struct Grants {
    fast: IntCounter,
    queued: IntCounter,
    wait: Histogram,
}

impl Grants {
    /// Hands a permit to a waiter that waited `waited`; false when it is gone.
    fn give(&self, waiter: Waiter, waited: Duration) -> bool {
        if waiter.send(()).is_err() {
            return false;
        }
        self.queued.inc();
        self.wait.observe(waited.as_secs_f64());
        true
    }
}

impl Budget {
    /// The actor around `shared`, queueing at most `queue_max` requests.
    pub fn new(shared: Arc<BudgetShared>, queue_max: usize, metrics: Arc<Metrics>, log: &Logger) -> Budget {
        Budget {
            queue: WaitQueue::new(shared.weights(), queue_max),
            shared,
            leaser: Leaser::default(),
            timer: None,
            grants: Grants {
                fast: metrics.budget_grants.with_label_values(&["fast"]),
                queued: metrics.budget_grants.with_label_values(&["queued"]),
                wait: metrics.budget_wait.clone(),
            },
            metrics,
            log: log.new(o!("actor" => "budget")),
        }
    }

    /// Drops waiters that are gone or too late, then grants permits in fair order: from Redis
    /// with shared state (when it is due for a try), else from this replica's GCRA.
    fn serve(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        self.queue.prune(now, |waiter| !waiter.is_closed());
        match self.shared.fleet() {
            Some(fleet) if fleet.rate.redis().should_try() => self.lease(ctx),
            Some(_) => {
                self.leaser.ran_alone();
                self.serve_local(ctx, now);
            }
            None => self.serve_local(ctx, now),
        }
        self.shared.set_waiting(self.queue.len());
    }

    fn serve_local(&mut self, ctx: &mut Context<Self>, now: Instant) {
        let grants = &self.grants;
        if let Some(wait) = self.queue.serve(now, self.shared.gcra(), |waiter, waited| grants.give(waiter, waited)) {
            self.wake_in(wait, ctx);
        }
    }

    /// Asks Redis for a permit per waiter, one round trip at a time; if Redis fails, this
    /// round is served from the local fallback share.
    fn lease(&mut self, ctx: &mut Context<Self>) {
        let Some(ask) = self.leaser.ask(self.queue.len()) else { return };
        let rate = self.shared.fleet().expect("a fleet budget").rate.clone();
        let call = async move { rate.acquire(ask.want, ask.drain).await };
        ctx.spawn(call.into_actor(self).map(|answer, act, ctx| {
            let now = Instant::now();
            let shared = act.shared.clone();
            let fleet = shared.fleet().expect("a fleet budget");
            match answer {
                Ok(grant) => {
                    let grants = &act.grants;
                    let give = |waiter, waited| grants.give(waiter, waited);
                    if let Some(again) =
                        act.leaser.granted(now, grant, &fleet.lease, shared.gcra(), &mut act.queue, give)
                    {
                        act.wake_in(again, ctx);
                    }
                }
                Err(_) => {
                    act.leaser.failed();
                    act.serve_local(ctx, now);
                }
            }
            act.shared.set_waiting(act.queue.len());
        }));
    }

    /// Serves the queue again in `wait`, unless a timer fires sooner already.
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
        ctx.set_mailbox_capacity(MAILBOX);
    }
}

impl Handler<Acquire> for Budget {
    type Result = MessageResult<Acquire>;

    fn handle(&mut self, msg: Acquire, ctx: &mut Context<Self>) -> Self::Result {
        let now = Instant::now();
        let admission = match self.queue.admit(now, &self.shared, msg.client, msg.class, msg.deadline, msg.reserve) {
            Verdict::Granted => {
                self.grants.fast.inc();
                Admission::Granted
            }
            Verdict::Refused(refusal) => {
                self.metrics.budget_rejections.with_label_values(&[refusal.reason.as_str()]).inc();
                Admission::Refused(refusal)
            }
            Verdict::Queue(place) => {
                let (tx, rx) = oneshot::channel();
                self.queue.push(place, now, tx);
                self.shared.set_waiting(self.queue.len());
                match self.shared.fleet() {
                    Some(_) => self.serve(ctx),
                    None => self.wake_in(place.next_free(), ctx),
                }
                Admission::Queued(rx)
            }
        };
        MessageResult(admission)
    }
}

impl Handler<Paused> for Budget {
    type Result = ();

    fn handle(&mut self, msg: Paused, ctx: &mut Context<Self>) {
        self.metrics.budget_pauses.with_label_values(&[msg.source.as_str()]).inc();
        info!(self.log, "budget_paused"; "source" => msg.source.as_str(), "for_seconds" => msg.wait.as_secs_f64());
        if let Some(fleet) = self.shared.fleet() {
            // Every replica holds back, not only this one.
            ctx.spawn(fleet.hold_back(msg.source, msg.wait).into_actor(self));
        }
        if let Some((_, handle)) = self.timer.take() {
            ctx.cancel_future(handle);
        }
        self.serve(ctx);
    }
}

#[cfg(test)]
mod tests;
