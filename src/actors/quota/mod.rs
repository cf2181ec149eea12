//! Quota windows: counts of upstream attempts per hour, day, month or fixed window
//! (`EXTERNAL_API_QUOTAS`), shared by the clients by their allocations, persisted before they
//! are spent, so a restart or a `kill -9` can only over-count, never under-count.
//!
//! [`Quota`] is what the pipeline asks, on the worker's own thread: [`Quota::check`] before
//! the budget's queue (a spent window is refused at once, never queued), and
//! [`Quota::take`] right before an attempt is sent, so every attempt counts once, retries and
//! probes included, and nothing that was not sent counts. The counts ([`counts::Counts`]) sit
//! behind one mutex held for microseconds and never across an await: an actor would add a
//! cross-thread round trip to every attempt, for state that changes only at a count. What
//! must wait, the store, waits outside the lock: the state file's writer thread
//! ([`file::StateFile`]), or one Lua script on Redis that counts for every replica at once
//! ([`crate::shared::quota`]). While Redis fails, a replica spends only the counts it holds
//! and then refuses: any local fallback could overrun the window.
//!
//! A tick each second rolls windows over, sets the pace (`COURIER_QUOTA_PACING=even`: the
//! budget's rate is lowered to what makes every window last to its reset), and with Redis
//! reads what the other replicas counted.

pub mod alloc;
pub mod counts;
pub mod file;
pub mod store;
mod tally;
#[cfg(test)]
mod tests;
mod view;
pub mod window;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use slog::{debug, warn, Logger};

pub use alloc::{Allocation, QuotaReason};
pub use counts::QuotaRefusal;
use counts::{Counts, Grant};
pub use store::Store;
pub use view::{ClientQuota, PolicyItem};

use crate::actors::budget::BudgetShared;
use crate::config::{Clients, Pacing, QuotaConfig};
use crate::metrics::Metrics;
use crate::upstream::RateSignal;

/// A refusal for an unreachable store: ask again in a second.
const UNAVAILABLE: QuotaRefusal = QuotaRefusal { reason: QuotaReason::Unavailable, window: 0, retry_after_ms: 1000 };

/// How far the upstream's window length may be from ours and still be the same window.
const SAME_LENGTH: f64 = 0.05;
/// How far the upstream's reset may be from ours (without a window length) and still match.
const SAME_RESET_MS: i64 = 5000;

/// Now as Unix milliseconds (the windows are calendar windows: wall-clock time).
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The clients' names and allocations by position (`open` in open mode).
pub fn allocations(clients: Option<&Clients>) -> (Vec<&'static str>, Vec<Allocation>) {
    match clients {
        Some(clients) => clients
            .entries()
            .iter()
            .map(|c| {
                let reserved = if c.is_active() { c.quota_reserved } else { 0.0 };
                (c.name, Allocation { max: c.quota_max, reserved })
            })
            .unzip(),
        None => (vec!["open"], vec![Allocation::default()]),
    }
}

/// Why a window's count could not be set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetUsedError {
    /// No window of that name; the names there are.
    NoSuchWindow(Vec<String>),
    /// The store failed.
    Unavailable(String),
}

/// The quota windows of one courier; see the module documentation.
pub struct Quota {
    counts: Mutex<Counts>,
    /// Client names by position, as the store and the metrics name them.
    names: Mutex<Vec<&'static str>>,
    version: std::sync::atomic::AtomicU64,
    /// Held while a reservation is made (see [`Quota::take`]).
    reserving: tokio::sync::Mutex<()>,
    store: Store,
    pacing: Pacing,
    zone_name: String,
    budget: Arc<BudgetShared>,
    metrics: Arc<Metrics>,
    log: Logger,
}

impl Quota {
    /// The quotas of `config` for clients `names` with `allocs`, counted in `store`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &QuotaConfig,
        names: Vec<&'static str>,
        allocs: Vec<Allocation>,
        rate_per_minute: u32,
        store: Store,
        budget: Arc<BudgetShared>,
        metrics: Arc<Metrics>,
        log: &Logger,
    ) -> Result<Quota, String> {
        let mut counts = Counts::new(&config.windows, config.zone.clone(), allocs, rate_per_minute, now_ms());
        if let Store::File(file) = &store {
            file::load(file.path(), &mut counts, &names)?;
        }
        let windows: Vec<&str> = config.windows.iter().map(|w| w.name.as_str()).collect();
        metrics.add_quota(&windows, &names);
        if config.pacing == Pacing::Even {
            budget.set_pace(counts.pace_interval(now_ms()));
        }
        Ok(Quota {
            counts: Mutex::new(counts),
            names: Mutex::new(names),
            version: std::sync::atomic::AtomicU64::new(0),
            reserving: tokio::sync::Mutex::new(()),
            store,
            pacing: config.pacing,
            zone_name: config.zone_name.clone(),
            budget,
            metrics,
            log: log.new(slog::o!("part" => "quota")),
        })
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn names(&self) -> Vec<&'static str> {
        self.names.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Whether `client` could get a count now (`None`: unattributed); refuses at once when
    /// a window or the client's share is spent.
    pub fn check(&self, client: Option<usize>) -> Result<(), QuotaRefusal> {
        let now = now_ms();
        let mut counts = self.counts();
        self.rolled(&mut counts, now);
        counts.check(client, now).inspect_err(|r| self.refused(r))
    }

    /// A count for one attempt about to be sent: from the client's block, or reserved in the
    /// store (a file write, a Redis script) before `deadline`.
    pub async fn take(&self, client: Option<usize>, deadline: Instant) -> Result<(), TakeError> {
        if self.take_local(client) {
            return Ok(());
        }
        // One reservation at a time: whoever waited for it finds the new block, so a crash
        // can lose at most one unspent block per client, not one per waiting request.
        let reserve = async {
            let _turn = self.reserving.lock().await;
            if self.take_local(client) {
                return Ok(());
            }
            self.reserve(client, now_ms()).await
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match actix_rt::time::timeout(left, reserve).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(refusal)) => {
                self.refused(&refusal);
                Err(TakeError::Refused(refusal))
            }
            Err(_) => Err(TakeError::Deadline),
        }
    }

    /// One count from `client`'s block, after rolling the windows to now.
    fn take_local(&self, client: Option<usize>) -> bool {
        let now = now_ms();
        let mut counts = self.counts();
        self.rolled(&mut counts, now);
        client.is_some_and(|c| counts.take_local(c, now))
    }

    /// Reserves a grant in the store and keeps its rest in the client's block.
    async fn reserve(&self, client: Option<usize>, now: i64) -> Result<(), QuotaRefusal> {
        let grant = match &self.store {
            Store::File(file) => {
                let (grant, version, bytes) = {
                    let mut counts = self.counts();
                    let grant = counts.grant(client, now)?;
                    let version = self.version.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
                    (grant, version, file::snapshot(&counts, &self.names()))
                };
                if let Err(error) = file.write(version, bytes).await {
                    warn!(self.log, "quota_state_write_failed"; "error" => error);
                    self.counts().count_back(client, &grant);
                    return Err(UNAVAILABLE);
                }
                grant
            }
            Store::Redis(redis) => self.reserve_shared(redis, client, now).await?,
        };
        let release = self.counts().fill(client, grant, now_ms());
        if let Some(release) = release {
            self.store.released(release, &self.names(), &self.log);
        }
        Ok(())
    }

    /// A reservation by the Redis script; the local view takes the fleet's totals.
    async fn reserve_shared(
        &self,
        redis: &store::Shared,
        client: Option<usize>,
        now: i64,
    ) -> Result<Grant, QuotaRefusal> {
        let names = self.names();
        let ask = {
            let counts = self.counts();
            redis.ask(&counts, client, &names, now)
        };
        let (k, totals) = redis.reserve(&ask, client, &names).await?;
        let mut counts = self.counts();
        counts.count(client, k, &ask.targets);
        for (target, total) in ask.targets.iter().zip(totals) {
            counts.set_total(*target, total);
        }
        Ok(Grant { k, targets: ask.targets })
    }

    /// Rolls the windows over at `now`; blocks that ran out give their rest back.
    fn rolled(&self, counts: &mut Counts, now: i64) {
        let due = counts.due(now);
        for release in counts.roll(now) {
            self.store.released(release, &self.names(), &self.log);
        }
        if due {
            // A new window's pace holds from its first attempt, not from the next tick.
            self.pace(counts, now);
        }
    }

    /// Sets the budget's pace from the windows (`COURIER_QUOTA_PACING=even`).
    fn pace(&self, counts: &Counts, now: i64) {
        if self.pacing == Pacing::Even {
            self.budget.set_pace(counts.pace_interval(now));
        }
    }

    fn refused(&self, refusal: &QuotaRefusal) {
        self.metrics.quota_refusals.with_label_values(&[refusal.reason.as_str()]).inc();
        debug!(self.log, "quota_refused"; "reason" => refusal.reason.as_str(), "window" => refusal.window);
    }

    /// Folds the upstream's quota headers in: when they describe one of the windows, its
    /// count becomes the stricter of ours and theirs. Returns whether a 429 was the upstream
    /// refusing for that window (then it is the quota's business, not the minute budget's).
    pub fn learn(&self, signal: &RateSignal, rate_limited: bool) -> bool {
        let Some(quota) = signal.quota else { return false };
        let now = now_ms();
        let mut counts = self.counts();
        let Some(window) = matching(&counts, quota.window, quota.reset, now) else {
            debug!(self.log, "quota_signal_unmatched"; "remaining" => quota.remaining);
            return false;
        };
        let remaining = if rate_limited { 0 } else { quota.remaining };
        if let Some(at_least) = counts.adopt(window, quota.limit, remaining, now) {
            let target = counts.targets(now).into_iter().find(|t| t.window == window && !t.next);
            drop(counts);
            if let Some(target) = target {
                self.store.adopted(target, at_least, &self.log);
            }
            self.persist_later();
        }
        rate_limited
    }

    /// Sets the current instance of `window` to `used` (an operator's reconciliation with the
    /// provider's billing); answers once the store holds it, with the total before.
    pub async fn set_used(&self, window: &str, used: u64) -> Result<u64, SetUsedError> {
        let now = now_ms();
        let (index, target) = {
            let mut counts = self.counts();
            self.rolled(&mut counts, now);
            let Some(index) = counts.windows.iter().position(|w| w.spec.name == window) else {
                return Err(SetUsedError::NoSuchWindow(counts.windows.iter().map(|w| w.spec.name.clone()).collect()));
            };
            (index, counts.targets(now)[..].iter().copied().find(|t| t.window == index && !t.next))
        };
        let target = target.expect("every window has a current target");
        let before = match &self.store {
            Store::File(file) => {
                let (before, version, bytes) = {
                    let mut counts = self.counts();
                    let before = counts.set_used(index, used);
                    let version = self.version.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
                    (before, version, file::snapshot(&counts, &self.names()))
                };
                file.write(version, bytes).await.map_err(SetUsedError::Unavailable)?;
                before
            }
            Store::Redis(redis) => {
                let before = redis.set_total(target, used).await.map_err(SetUsedError::Unavailable)?;
                self.counts().set_used(index, used);
                before
            }
        };
        Ok(before)
    }

    /// Writes the file soon (counts that only went up or down in memory: safe to lose).
    fn persist_later(&self) {
        if let Store::File(file) = &self.store {
            let version = self.version.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
            let bytes = file::snapshot(&self.counts(), &self.names());
            file.write_detached(version, bytes);
        }
    }

    /// New clients (a reload): their allocations and names.
    pub fn set_clients(&self, names: Vec<&'static str>, allocs: Vec<Allocation>) {
        let windows: Vec<String> = self.counts().windows.iter().map(|w| w.spec.name.clone()).collect();
        let windows: Vec<&str> = windows.iter().map(String::as_str).collect();
        self.metrics.add_quota(&windows, &names);
        self.counts().set_allocations(allocs);
        *self.names.lock().unwrap_or_else(|p| p.into_inner()) = names;
    }

    /// Once a second: windows roll over, the pace is set, the fleet's counts are read.
    pub async fn tick(&self) {
        let now = now_ms();
        {
            let mut counts = self.counts();
            self.rolled(&mut counts, now);
            self.pace(&counts, now);
        }
        if let Store::Redis(redis) = &self.store {
            redis.refresh(&self.counts, &self.names(), now).await;
        }
    }

    /// A graceful stop: blocks give their rest back, and the store gets the exact count.
    pub async fn stop(&self) {
        let released = self.counts().release_all();
        match &self.store {
            Store::File(file) => {
                let bytes = file::snapshot(&self.counts(), &self.names());
                if let Err(error) = file.write_now(&bytes) {
                    warn!(self.log, "quota_state_write_failed"; "error" => error);
                }
            }
            Store::Redis(redis) => {
                for release in released {
                    redis.release(&release, &self.names()).await;
                }
            }
        }
    }

    /// Where the counts are kept.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The configured zone's name.
    pub fn zone_name(&self) -> &str {
        &self.zone_name
    }
}

/// Why [`Quota::take`] gave no count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeError {
    /// Refused: a window, a share, or the store.
    Refused(QuotaRefusal),
    /// The deadline passed while the store answered.
    Deadline,
}

/// The window the upstream's signal describes: the same length (within 5%), or without a
/// length, a reset within 5 s of ours.
fn matching(counts: &Counts, window: Option<Duration>, reset: Option<Duration>, now: i64) -> Option<usize> {
    counts.windows.iter().position(|w| {
        let ours = w.current.instance.end_ms - w.current.instance.start_ms;
        match (window, reset) {
            (Some(theirs), _) => {
                let theirs = theirs.as_millis() as f64;
                (theirs - ours as f64).abs() <= ours as f64 * SAME_LENGTH
            }
            (None, Some(reset)) => (now + reset.as_millis() as i64 - w.current.instance.end_ms).abs() <= SAME_RESET_MS,
            (None, None) => false,
        }
    })
}
