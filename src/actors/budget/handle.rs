//! A worker's way to the budget, [`BudgetHandle`]: the lock-free fast path on the worker's own
//! thread, then the actor's queue only when no permit is free.
//!
//! Why the worker also refuses on its own: when even the next free permit comes too late for
//! a request's deadline, the actor would refuse it too, so the worker refuses at once, without
//! the round trip; the over-budget answer stays as cheap as the fast path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use prometheus::IntCounter;

use super::fair::Class;
use super::permits::BudgetShared;
use super::queue::{hopeless, Refusal, RefusalReason};
use super::{Acquire, Admission, Budget, Paused};
use crate::metrics::Metrics;
use crate::upstream::RateSignal;

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
        if hopeless(now, self.shared.next_free(now), deadline, reserve) {
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
                        let retry_after = self.shared.queue_wait(Instant::now()).max(Duration::from_secs(1));
                        Err(Refusal { reason: RefusalReason::Deadline, retry_after })
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
