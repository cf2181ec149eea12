//! Where the counts are kept: the state file (one courier), or Redis (every replica).

use std::sync::{Arc, Mutex};

use slog::{warn, Logger};

use super::counts::{Counts, QuotaRefusal, Release, Target};
use super::file::StateFile;
use super::UNAVAILABLE;
use crate::shared::quota::{Reserve, Reserved, SharedQuota, WindowArgs};

/// How long a window instance's counts stay in Redis after its end (for operators to read).
const KEEP_AFTER_END_MS: i64 = 3_600_000;

/// The store of the counts.
pub enum Store {
    /// `COURIER_STATE_DIR/quota-state.json`.
    File(StateFile),
    /// Redis, shared by the replicas.
    Redis(Shared),
}

impl Store {
    /// Counts given back in memory; Redis gets them back too (in the background: a count
    /// given back late only over-counts for a while).
    pub fn released(&self, release: Release, names: &[&'static str], log: &Logger) {
        if let Store::Redis(shared) = self {
            let (shared, names, log) = (shared.clone(), names.to_vec(), log.clone());
            actix_rt::spawn(async move {
                if !shared.release(&release, &names).await {
                    warn!(log, "quota_release_failed"; "counts" => release.k);
                }
            });
        }
    }

    /// The upstream counted more than we did: Redis takes the stricter count too.
    pub fn adopted(&self, target: Target, at_least: u64, log: &Logger) {
        if let Store::Redis(shared) = self {
            let (shared, log) = (shared.clone(), log.clone());
            actix_rt::spawn(async move {
                let key = shared.key(target);
                if shared.quota.adopt(&key, at_least, expire_at(target)).await.is_err() {
                    warn!(log, "quota_adopt_failed"; "at_least" => at_least);
                }
            });
        }
    }
}

/// The Redis store, with the windows' names for its keys.
#[derive(Clone)]
pub struct Shared {
    quota: Arc<SharedQuota>,
    windows: Arc<[String]>,
}

/// A reservation as the script gets it, and where it counts.
pub struct Ask {
    /// The instances it counts in.
    pub targets: Vec<Target>,
    args: Vec<WindowArgs>,
    want: u64,
    max: f64,
    reserved: Vec<(&'static str, f64)>,
}

/// When an instance's key expires.
fn expire_at(target: Target) -> i64 {
    target.instance.end_ms + KEEP_AFTER_END_MS
}

impl Shared {
    /// The Redis store of `windows` (names in configured order).
    pub fn new(quota: SharedQuota, windows: Vec<String>) -> Shared {
        Shared { quota: Arc::new(quota), windows: windows.into() }
    }

    fn key(&self, target: Target) -> String {
        self.quota.key(&self.windows[target.window], target.instance.start_ms)
    }

    /// What to ask the script for `client` at `now`.
    pub fn ask(&self, counts: &Counts, client: Option<usize>, names: &[&'static str], now: i64) -> Ask {
        let targets = counts.targets(now);
        let args = targets
            .iter()
            .map(|t| WindowArgs {
                key: self.key(*t),
                limit: counts.windows[t.window].limit(),
                hold_cap: counts.hold_cap(t.window, now),
                expire_at_ms: expire_at(*t),
            })
            .collect();
        let want = if client.is_some() { counts.want(now) } else { 1 };
        let max = client.and_then(|c| counts.allocs.get(c)).map_or(1.0, |a| a.max);
        let reserved = counts
            .allocs
            .iter()
            .zip(names)
            .filter(|(a, _)| a.reserved > 0.0)
            .map(|(a, name)| (*name, a.reserved))
            .collect();
        Ask { targets, args, want, max, reserved }
    }

    /// Runs the script: the counts taken and each target's total after, or why none.
    pub async fn reserve(
        &self,
        ask: &Ask,
        client: Option<usize>,
        names: &[&'static str],
    ) -> Result<(u64, Vec<u64>), QuotaRefusal> {
        let reserve = Reserve {
            windows: &ask.args,
            client: client.and_then(|c| names.get(c).copied()),
            max: ask.max,
            reserved: &ask.reserved,
            want: ask.want,
        };
        match self.quota.reserve(&reserve).await {
            Ok(Reserved::Granted { k, totals }) => Ok((k, totals)),
            Ok(Reserved::Refused { reason, window }) => {
                let target = ask.targets.get(window).copied();
                let retry_after_ms = target.map_or(1000, |t| (t.instance.end_ms - super::now_ms()).max(1000));
                Err(QuotaRefusal { reason, window: target.map_or(0, |t| t.window), retry_after_ms })
            }
            Err(_) => Err(UNAVAILABLE),
        }
    }

    /// Gives a release back in Redis; false when Redis failed.
    pub async fn release(&self, release: &Release, names: &[&'static str]) -> bool {
        let keys: Vec<String> = release.targets.iter().map(|t| self.key(*t)).collect();
        let client = release.client.and_then(|c| names.get(c).copied());
        self.quota.release(&keys, client, release.k).await.is_ok()
    }

    /// Sets an instance's total; the total before.
    pub async fn set_total(&self, target: Target, used: u64) -> Result<u64, String> {
        self.quota.set_total(&self.key(target), used, expire_at(target)).await.map_err(|e| e.0.to_owned())
    }

    /// Reads every current instance's counts (every replica's) into the local view.
    pub async fn refresh(&self, counts: &Mutex<Counts>, names: &[&'static str], now: i64) {
        let targets: Vec<Target> = {
            let counts = counts.lock().unwrap_or_else(|p| p.into_inner());
            counts.targets(now).into_iter().filter(|t| !t.next).collect()
        };
        let keys: Vec<String> = targets.iter().map(|t| self.key(*t)).collect();
        let Ok(read) = self.quota.read(&keys).await else { return };
        let mut counts = counts.lock().unwrap_or_else(|p| p.into_inner());
        for (target, fields) in targets.into_iter().zip(read) {
            let total = fields.get("total").copied().unwrap_or(0);
            let clients = names.iter().map(|n| fields.get(&format!("c:{n}")).copied().unwrap_or(0)).collect();
            counts.set_total(target, total);
            counts.set_clients(target, clients);
        }
    }
}
