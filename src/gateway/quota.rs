//! Starting the quota windows: their store (the state file, or Redis), the clients'
//! allocations, and the tick that rolls windows over and paces the budget.

use std::sync::Arc;
use std::time::Duration;

use slog::{info, Logger};

use super::StartError;
use crate::actors::budget::BudgetShared;
use crate::actors::quota::file::StateFile;
use crate::actors::quota::store::Shared;
use crate::actors::quota::{allocations, Quota, Store};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::shared::quota::SharedQuota;
use crate::shared::SharedRedis;

/// How often windows roll over, the pace is set and the fleet's counts are read.
const TICK: Duration = Duration::from_secs(1);

/// The quota windows of `config`, or `None` without `EXTERNAL_API_QUOTAS`; starts their tick
/// on the calling arbiter.
pub fn start(
    config: &Config,
    redis: Option<Arc<SharedRedis>>,
    budget: Arc<BudgetShared>,
    metrics: &Arc<Metrics>,
    log: &Logger,
) -> Result<Option<Arc<Quota>>, StartError> {
    let quota = &config.quota;
    if !quota.enabled() {
        return Ok(None);
    }
    let store = match (redis, &quota.state_dir) {
        (Some(redis), _) => {
            let windows = quota.windows.iter().map(|w| w.name.clone()).collect();
            Store::Redis(Shared::new(SharedQuota::new(redis), windows))
        }
        (None, Some(dir)) => {
            let writes = metrics.quota_state_writes.clone();
            let file =
                StateFile::open(dir, move |ok| writes.with_label_values(&[if ok { "ok" } else { "failed" }]).inc())
                    .map_err(|e| StartError::Setting(format!("COURIER_STATE_DIR: {e}")))?;
            Store::File(file)
        }
        (None, None) => {
            return Err(StartError::Setting("COURIER_STATE_DIR: is required with EXTERNAL_API_QUOTAS".into()));
        }
    };
    let (names, allocs) = allocations(config.clients.as_ref());
    let quota = Quota::new(quota, names, allocs, config.rate_limit_per_minute, store, budget, metrics.clone(), log)
        .map_err(|e| StartError::Setting(format!("COURIER_STATE_DIR: {e}")))?;
    let quota = Arc::new(quota);
    info!(log, "quota_windows";
        "windows" => config.quota.windows.iter().map(|w| format!("{}/{}", w.limit, w.name)).collect::<Vec<_>>().join(", "),
        "store" => if matches!(quota.store(), Store::File(_)) { "file" } else { "redis" },
        "pacing" => if config.quota.pacing == crate::config::Pacing::Even { "even" } else { "off" },
        "zone" => quota.zone_name());
    let ticking = quota.clone();
    actix_rt::spawn(async move {
        let mut tick = actix_rt::time::interval(TICK);
        loop {
            tick.tick().await;
            ticking.tick().await;
        }
    });
    Ok(Some(quota))
}
