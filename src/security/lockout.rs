//! The lockout of sources that keep presenting wrong client keys (see [`super::table`] for the
//! arithmetic): this replica's table, shared through Redis when there is one.
//!
//! The check runs on every request of a clients-file mode, before any key is compared, so it
//! must cost nothing while no source is locked out: one atomic load of the latest end of any
//! lockout known here. Only past that does it read the table (a read lock, held for one lookup).
//! Wrong keys are rare for a healthy fleet and the very thing to slow down for anyone else, so
//! they take the write lock.
//!
//! With Redis, each wrong key is also counted in the shared table (one script call, on a task
//! of its own: the 401 does not wait for it), and its verdict is adopted here; every second the
//! replica reads the shared set of lockouts, so a source locked out through another replica is
//! refused here within a second, and one lifted through another replica is let in again. While
//! Redis fails, the local table decides alone (a source then needs `threshold` wrong keys at
//! one replica); a lockout made that way stays on this replica until it ends or is lifted here.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use slog::{info, o, warn, Logger};

use super::table::{Strike, Table};
use super::Source;
use crate::config::LockoutConfig;
use crate::metrics::Metrics;
use crate::shared::lockout::{Rules, SharedLockouts};
use crate::shared::SharedRedis;

/// Shared-table calls for wrong keys in flight at most; beyond, wrong keys count here only.
const MAX_SHARED_IN_FLIGHT: usize = 64;
/// How often the shared set of lockouts is read.
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// Sources `/admin/state` lists at most, in each list.
const LISTED: usize = 20;

/// The lockout of sources; see the module documentation.
pub struct Lockout {
    table: RwLock<Table>,
    /// Milliseconds since `base` past which no lockout known here is active.
    horizon_ms: AtomicU64,
    base: Instant,
    shared: Option<SharedLockouts>,
    in_flight: AtomicUsize,
    metrics: Arc<Metrics>,
    log: Logger,
}

/// What a lift came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifted {
    /// The source was locked out here or in the shared table; it is not any more.
    Ended,
    /// The source was not locked out.
    NotLocked,
    /// The shared table could not be changed (Redis failed); the local lockout was ended.
    SharedUnavailable,
}

fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Lockout {
    /// The lockout of these settings, shared through `redis` when given; `None` when off.
    pub fn new(
        config: &LockoutConfig,
        redis: Option<Arc<SharedRedis>>,
        metrics: Arc<Metrics>,
        log: &Logger,
    ) -> Result<Option<Arc<Lockout>>, String> {
        if !config.enabled() {
            return Ok(None);
        }
        let table = Table::new(config).map_err(|e| format!("COURIER_AUTH_LOCKOUT_*: {e}"))?;
        let rules = Rules {
            threshold: config.threshold,
            window_ms: config.window.as_millis() as u64,
            base_ms: config.base.as_millis() as u64,
            max_ms: config.max.as_millis() as u64,
            keep: config.max_sources,
        };
        Ok(Some(Arc::new(Lockout {
            table: RwLock::new(table),
            horizon_ms: AtomicU64::new(0),
            base: Instant::now(),
            shared: redis.map(|redis| SharedLockouts::new(redis, rules)),
            in_flight: AtomicUsize::new(0),
            metrics,
            log: log.new(o!("component" => "lockout")),
        })))
    }

    fn since_base(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_millis() as u64
    }

    fn extend_horizon(&self, until: Instant) {
        self.horizon_ms.fetch_max(self.since_base(until) + 1, Ordering::AcqRel);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Err(wait)` while the source of `ip` is locked out: refuse it for `wait`, before any key
    /// is compared.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        if self.since_base(now) >= self.horizon_ms.load(Ordering::Acquire) {
            return Ok(());
        }
        match self.read().locked_until(Source::of(ip), now) {
            Some(until) => Err(until - now),
            None => Ok(()),
        }
    }

    /// Counts a wrong key (a key no client has) from `ip`. A missing key is not counted here:
    /// it guesses nothing.
    pub fn failed(self: &Arc<Self>, ip: IpAddr) {
        let source = Source::of(ip);
        let now = Instant::now();
        let strike = self.write().fail(source, now);
        if strike == Strike::Counted(1) {
            info!(self.log, "auth_failed"; "source" => %source, "source_class" => source.class().as_str(),
                "reason" => "wrong_key", "detail" => "the first wrong key from this source in the window");
        }
        if let Strike::Locked { until, .. } = strike {
            self.extend_horizon(until);
        }
        let shared = self.shared.as_ref().filter(|s| s.should_try());
        let room = shared.is_some() && self.in_flight.fetch_add(1, Ordering::AcqRel) < MAX_SHARED_IN_FLIGHT;
        if !room {
            if shared.is_some() {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
            self.local_verdict(source, strike, now);
            return;
        }
        let this = self.clone();
        actix_rt::spawn(async move {
            let shared = this.shared.as_ref().expect("checked above");
            let answer = shared.fail(&source.to_string(), unix_ms(SystemTime::now())).await;
            this.in_flight.fetch_sub(1, Ordering::AcqRel);
            match answer {
                Ok(failed) if failed.locked => {
                    let left = Duration::from_millis((failed.until_ms - unix_ms(SystemTime::now())).max(0) as u64);
                    let now = Instant::now();
                    this.write().adopt(source, now + left, failed.strikes, now);
                    this.extend_horizon(now + left);
                    if failed.new {
                        this.locked_event(source, left, failed.strikes, "shared");
                    }
                }
                // The shared count is below the threshold; this replica's may not be (it counted
                // alone while Redis was away).
                Ok(_) | Err(_) => this.local_verdict(source, strike, now),
            }
        });
    }

    fn local_verdict(&self, source: Source, strike: Strike, now: Instant) {
        if let Strike::Locked { until, strike } = strike {
            self.locked_event(source, until - now, strike, "local");
        }
    }

    /// A lockout began: one audit line and one count, from one place.
    fn locked_event(&self, source: Source, length: Duration, strike: u32, scope: &'static str) {
        self.metrics.security.lockout_events.with_label_values(&["locked"]).inc();
        warn!(self.log, "auth_lockout"; "audit" => true, "source" => %source,
            "source_class" => source.class().as_str(), "strike" => strike,
            "lockout_seconds" => length.as_secs_f64().ceil(), "scope" => scope);
    }

    /// Ends the source's lockout (here and in the shared table) and forgets its strikes; writes
    /// an `auth_lockout_lifted` audit line naming the admin request.
    pub async fn lift(&self, source: Source, request_id: &str) -> Lifted {
        let local = self.write().lift(source, Instant::now());
        let shared = match &self.shared {
            Some(shared) => shared.lift(&source.to_string(), unix_ms(SystemTime::now())).await.map_err(|_| ()),
            None => Ok(false),
        };
        let lifted = match shared {
            Err(()) => Lifted::SharedUnavailable,
            Ok(was) if was || local => Lifted::Ended,
            Ok(_) => Lifted::NotLocked,
        };
        if lifted != Lifted::NotLocked {
            self.metrics.security.lockout_events.with_label_values(&["lifted"]).inc();
        }
        warn!(self.log, "auth_lockout_lifted"; "audit" => true, "source" => %source, "request_id" => request_id,
        "was_locked" => lifted != Lifted::NotLocked, "shared" => match shared {
            Ok(_) if self.shared.is_none() => "off",
            Ok(_) => "ok",
            Err(()) => "unavailable",
        });
        lifted
    }

    /// Reads the shared set of lockouts (with Redis), forgets what there is nothing left to
    /// remember of, and sets `courier_auth_locked_sources`.
    pub async fn sync(&self) {
        if let Some(shared) = self.shared.as_ref().filter(|s| s.should_try()) {
            let now_ms = unix_ms(SystemTime::now());
            if let Ok(listed) = shared.list(now_ms).await {
                let now = Instant::now();
                let mut table = self.write();
                let mut still = Vec::with_capacity(listed.len());
                for (text, until_ms) in listed {
                    let Some(source) = Source::parse(&text) else { continue };
                    let until = now + Duration::from_millis((until_ms - now_ms).max(0) as u64);
                    if table.locked_until(source, now).is_none_or(|mine| mine < until) {
                        table.adopt(source, until, 0, now);
                        self.extend_horizon(until);
                    }
                    still.push(source);
                }
                table.keep_shared(&still, now);
            }
        }
        let now = Instant::now();
        let mut table = self.write();
        table.sweep(now);
        self.metrics.security.locked_sources.set(table.locked(now).len() as i64);
    }

    /// Syncs every second on the current arbiter (see [`Lockout::sync`]).
    pub fn start_sync(self: &Arc<Self>) {
        let this = self.clone();
        actix_rt::spawn(async move {
            let mut ticks = actix_rt::time::interval(SYNC_EVERY);
            loop {
                ticks.tick().await;
                this.sync().await;
            }
        });
    }

    /// The lockouts and the sources failing most, for `/admin/state`.
    pub fn state_json(&self) -> Value {
        let now = Instant::now();
        let table = self.read();
        let backoff = table.backoff();
        let locked: Vec<Value> = table
            .locked(now)
            .into_iter()
            .take(LISTED)
            .map(|l| {
                json!({
                    "source": l.source.to_string(),
                    "retry_after_seconds": (l.until - now).as_secs_f64().ceil(),
                    "strike": l.strike,
                    "shared": l.shared,
                })
            })
            .collect();
        let failing = table.failing(now, usize::MAX);
        let mut buckets: Vec<(String, u32)> = Vec::new();
        for (source, n) in &failing {
            let bucket = source.bucket();
            match buckets.iter_mut().find(|(b, _)| *b == bucket) {
                Some((_, total)) => *total += n,
                None => buckets.push((bucket, *n)),
            }
        }
        buckets.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        json!({
            "shared": self.shared.is_some(),
            "locked_sources": table.locked(now).len(),
            "locked": locked,
            "failing": failing.iter().take(LISTED).map(|(s, n)| json!({"source": s.to_string(), "wrong_keys": n})).collect::<Vec<_>>(),
            "failing_networks": buckets.iter().take(LISTED).map(|(b, n)| json!({"network": b, "wrong_keys": n})).collect::<Vec<_>>(),
            "sources_tracked": table.len(),
            "max_lockout_seconds": backoff.max().as_secs(),
        })
    }
}
