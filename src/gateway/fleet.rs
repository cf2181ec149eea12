//! Starting the fleet's heartbeat (`shared::fleet`): one beat before courier serves, so the
//! budget's fallback share is the live count from the first request on, then one every
//! [`HEARTBEAT_EVERY`] on the calling arbiter, each count handed to the budget.

use std::sync::Arc;

use slog::Logger;
use tokio::task::AbortHandle;
use tokio::time::MissedTickBehavior;

use crate::actors::budget::BudgetShared;
use crate::metrics::Metrics;
use crate::shared::fleet::{Membership, HEARTBEAT_EVERY};
use crate::shared::SharedRedis;

/// The running heartbeat of this replica.
#[derive(Clone)]
pub struct Heartbeat {
    membership: Arc<Membership>,
    task: AbortHandle,
}

impl Heartbeat {
    /// This replica's place in the fleet.
    pub fn membership(&self) -> &Arc<Membership> {
        &self.membership
    }

    /// Stops beating and leaves the fleet at once. A beat under way when this is called was
    /// sent on the same connection before the leave, so it cannot bring the replica back.
    pub async fn stop(&self) {
        self.task.abort();
        let _ = self.membership.leave().await;
    }
}

/// Joins the fleet sharing `redis` (assumed `initial` strong until the first answer) and keeps
/// `budget` on its size; `None` without Redis, where a replica is alone.
pub async fn start(
    redis: Option<Arc<SharedRedis>>,
    initial: u32,
    budget: Arc<BudgetShared>,
    metrics: &Metrics,
    log: &Logger,
) -> Option<Heartbeat> {
    let Some(redis) = redis else {
        metrics.fleet_replicas.set(1);
        return None;
    };
    let membership = Arc::new(Membership::new(redis, initial, metrics, log));
    // A failure here is counted and logged by the connection; the initial count stays.
    if let Ok(replicas) = membership.heartbeat().await {
        budget.set_replicas(replicas);
    }
    let beating = membership.clone();
    let task = actix_rt::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The first tick is at once: that beat was just sent.
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Ok(replicas) = beating.heartbeat().await {
                budget.set_replicas(replicas);
            }
        }
    });
    Some(Heartbeat { membership, task: task.abort_handle() })
}
