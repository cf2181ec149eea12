//! The response cache: answers of the upstream kept by request key, so the upstream's budget
//! is spent once per answer, and identical requests in flight coalesced into one upstream call.
//!
//! [`ResponseCache`] is the one facade in front of both levels:
//! - the first, in this process: a moka cache shared by every worker (`answers.rs`), bounded by
//!   bytes (each entry weighed by its real footprint) and by time (each entry leaving when its
//!   TTL plus the longer stale window has passed since it was stored). It is not an actor: moka
//!   is safe to share and needs no single owner.
//! - the second, with Redis (`REDIS_URL`, [`crate::shared::cache`]): shares answers between
//!   replicas. A first-level miss, or a first-level entry past its TTL, reads Redis within a
//!   short bound, and what it finds joins the first level with its original store time, so its
//!   `Age` and freshness are those of the replica that fetched it. Every answer fetched upstream
//!   and stored here is written to Redis in the background. Why, and what a dead Redis costs, is
//!   argued in that module.
//!
//! Identical requests that miss together are coalesced by moka's loader
//! (`entry().or_try_insert_with`): one caller runs the upstream call, the others wait for it, and
//! a failure reaches all of them and is not stored. An entry past its TTL is still in the cache
//! (it may stand in for an error), so the loader of the answers, which runs only for an absent
//! key, cannot coalesce its refresh: refreshes go through a second moka loader keyed the same
//! way, whose entries live only while a refresh is in flight ([`ResponseCache::load`]).
//!
//! Entries live `EXTERNAL_API_CACHE_TTL` fresh, then may still be served for a while:
//! - stale-while-revalidate (`COURIER_CACHE_SWR`): served at once while one background refresh
//!   runs, only when the budget has a spare permit, so refreshing never takes budget from live
//!   requests;
//! - stale-if-error (`COURIER_CACHE_STALE_IF_ERROR`): served instead of an error when the
//!   circuit is open or the upstream failed after retries.
//!
//! moka keeps each entry until its TTL plus the longer of the two windows have passed since it
//! was stored; freshness is decided here.

mod answers;
mod entry;

use std::cell::Cell;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::ops::compute::{CompResult, Op};
use prometheus::IntCounter;

use crate::key::Key;
use crate::metrics::Metrics;
use crate::shared::cache::{Purged, Read, SharedCache};
use crate::shared::SharedRedis;
use answers::Answers;

pub use entry::{Entry, ENTRY_OVERHEAD};

/// Cache settings.
#[derive(Clone, Copy, Debug)]
pub struct CacheSettings {
    /// How long an answer is fresh (zero turns the cache off).
    pub ttl: Duration,
    /// Most bytes the cached answers may take, with their bookkeeping ([`Entry::weight`]).
    pub max_bytes: u64,
    /// How long past its TTL an answer may replace an error.
    pub stale_if_error: Duration,
    /// How long past its TTL an answer is served while it is refreshed.
    pub stale_while_revalidate: Duration,
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// A fresh answer.
    Fresh(Arc<Entry>),
    /// Past its TTL but within stale-while-revalidate: serve it and refresh in the background.
    Revalidate(Arc<Entry>),
    /// Past its TTL: not to be served, except instead of an error within stale-if-error.
    Expired(Arc<Entry>),
    /// Nothing.
    Miss,
}

/// What the cache did for an answer, the `X-Cache` header and the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from the cache.
    Hit,
    /// Fetched upstream by this request, and stored.
    Miss,
    /// Another identical request in flight fetched it.
    Coalesced,
    /// Served past its TTL (revalidating, or instead of an error).
    Stale,
    /// The cache was skipped (off, or `Cache-Control: no-cache` / `no-store`).
    Bypass,
}

impl CacheStatus {
    /// Every status.
    pub const ALL: [CacheStatus; 5] =
        [CacheStatus::Hit, CacheStatus::Miss, CacheStatus::Coalesced, CacheStatus::Stale, CacheStatus::Bypass];

    /// The `X-Cache` value.
    pub fn header(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Coalesced => "COALESCED",
            CacheStatus::Stale => "STALE",
            CacheStatus::Bypass => "BYPASS",
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Coalesced => "coalesced",
            CacheStatus::Stale => "stale",
            CacheStatus::Bypass => "bypass",
        }
    }
}

/// The response cache.
pub struct ResponseCache {
    /// The first level's answers.
    answers: Answers,
    /// Answers of refreshes in flight, only for coalescing them ([`ResponseCache::load`]).
    refreshes: Answers,
    settings: CacheSettings,
    refreshing: Mutex<HashSet<Key>>,
    lookups: Vec<IntCounter>,
    /// The second level, with Redis.
    l2: Option<Arc<SharedCache>>,
}

impl ResponseCache {
    /// A cache with these settings, counting into `metrics`, with a second level in `l2`'s
    /// Redis when given.
    pub fn new(settings: CacheSettings, metrics: &Arc<Metrics>, l2: Option<Arc<SharedRedis>>) -> ResponseCache {
        let answers = answers::answers(settings.max_bytes, keep(&settings), &metrics.cache_evictions);
        let refreshes = answers::refreshes(settings.ttl);
        let lookups = CacheStatus::ALL.iter().map(|s| metrics.cache_lookups.with_label_values(&[s.label()])).collect();
        let l2 = l2.map(|redis| Arc::new(SharedCache::new(redis, metrics)));
        ResponseCache { answers, refreshes, settings, refreshing: Mutex::new(HashSet::new()), lookups, l2 }
    }

    /// Whether answers are cached at all.
    pub fn enabled(&self) -> bool {
        !self.settings.ttl.is_zero()
    }

    /// The settings.
    pub fn settings(&self) -> &CacheSettings {
        &self.settings
    }

    /// Counts one answer by what the cache did for it.
    pub fn count(&self, status: CacheStatus) {
        self.lookups[status as usize].inc();
    }

    /// Looks a key up and says how usable the entry is at `now`: in the first level, and in the
    /// second when the first has nothing fresh (a newer answer there replaces an older one here).
    pub async fn lookup(&self, key: &Key, now: Instant) -> Lookup {
        let local = self.answers.get(key).await.filter(|entry| entry.age_at(now) < keep(&self.settings));
        let entry = match local {
            Some(entry) if self.fresh(&entry, now) => entry,
            local => match (self.read_l2(key, local.as_ref()).await, local) {
                (Some(entry), _) | (None, Some(entry)) => entry,
                (None, None) => return Lookup::Miss,
            },
        };
        let age = entry.age_at(now);
        if age <= self.settings.ttl {
            Lookup::Fresh(entry)
        } else if age <= self.settings.ttl + self.settings.stale_while_revalidate {
            Lookup::Revalidate(entry)
        } else {
            Lookup::Expired(entry)
        }
    }

    fn fresh(&self, entry: &Entry, now: Instant) -> bool {
        entry.age_at(now) <= self.settings.ttl
    }

    /// Reads `key` from the second level and puts what it finds in the first, unless `local`
    /// is as new, or it is too old to be served at all.
    async fn read_l2(&self, key: &Key, local: Option<&Arc<Entry>>) -> Option<Arc<Entry>> {
        let Read::Hit(record) = self.l2.as_ref()?.get(key).await else { return None };
        let entry = Arc::new(Entry::from_record(record)?);
        if entry.stored().elapsed() >= keep(&self.settings) || local.is_some_and(|l| !entry.newer_than(l)) {
            return None;
        }
        Some(self.insert_unless_newer(*key, entry).await)
    }

    /// Stores `candidate` unless the entry of `key` is as new; returns the entry `key` then has.
    /// Atomic against other such inserts of the key; a load storing its answer in the same
    /// instant (between this reading the entry and replacing it) may be replaced by the older
    /// candidate, which is then still within its windows, and the next lookup past its TTL
    /// reads the newer one from the second level again.
    async fn insert_unless_newer(&self, key: Key, candidate: Arc<Entry>) -> Arc<Entry> {
        let decided = self
            .answers
            .entry(key)
            .and_compute_with(|current| {
                let op = match current {
                    Some(current) if !candidate.newer_than(current.value()) => Op::Nop,
                    _ => Op::Put(candidate.clone()),
                };
                std::future::ready(op)
            })
            .await;
        match decided {
            CompResult::Unchanged(current) => current.into_value(),
            _ => candidate,
        }
    }

    /// Writes an answer just stored here to the second level, in the background, to expire
    /// when no replica could serve it any more.
    fn share(&self, key: Key, entry: &Entry) {
        let Some(l2) = &self.l2 else { return };
        let keep_for = keep(&self.settings).saturating_sub(entry.stored().elapsed());
        l2.put(key, entry.to_record(), keep_for);
    }

    /// Whether an expired entry may stand in for an error at `now`.
    pub fn usable_if_error(&self, entry: &Entry, now: Instant) -> bool {
        entry.age_at(now) <= self.settings.ttl + self.settings.stale_if_error
    }

    /// Fetches with `load` and stores the answer, coalescing identical loads in flight. `stale`
    /// is the expired entry the caller saw, if any; it stays in the cache until the new answer
    /// replaces it, so it can still stand in for an error. Returns the entry and whether this
    /// call's `load` produced it.
    ///
    /// Without `stale`, the key is absent and moka's loader of the answers coalesces: its
    /// answer is stored by moka as the load ends. With `stale`, the key is present, and moka's
    /// loader would hand out the stale entry, so the refresh is coalesced by the loader of a
    /// second moka cache under the same key instead (`refreshes`, holding an answer only while
    /// its refresh ends), and stores its answer itself. Either way the waiters of one load share
    /// its answer or its failure.
    pub async fn load<F, E>(&self, key: Key, stale: Option<&Arc<Entry>>, load: F) -> Result<(Arc<Entry>, bool), Arc<E>>
    where
        F: std::future::Future<Output = Result<Arc<Entry>, E>>,
        E: Send + Sync + 'static,
    {
        // Pinned here, so that a load not started by moka's loader can still be run below.
        let mut load = std::pin::pin!(load);
        if stale.is_none() {
            let loaded = self.answers.entry(key).or_try_insert_with(load.as_mut()).await?;
            let loaded_here = loaded.is_fresh();
            let entry = loaded.into_value();
            if loaded_here {
                self.share(key, &entry);
                return Ok((entry, true));
            }
            if self.fresh(&entry, Instant::now()) {
                return Ok((entry, false));
            }
            // An entry past its TTL arrived since the caller's lookup (from the second level):
            // it is refreshed like any other.
        }
        let loaded_here = Cell::new(false);
        let refresh = async {
            // Another refresh of the key may have ended between the caller's lookup and now.
            if let Some(current) = self.answers.get(&key).await.filter(|e| self.fresh(e, Instant::now())) {
                return Ok(current);
            }
            let entry = load.as_mut().await?;
            self.answers.insert(key, entry.clone()).await;
            self.share(key, &entry);
            loaded_here.set(true);
            Ok(entry)
        };
        let refreshed = self.refreshes.entry(key).or_try_insert_with(refresh).await?;
        if refreshed.is_fresh() {
            self.refreshes.invalidate(&key).await;
        }
        Ok((refreshed.into_value(), loaded_here.get()))
    }

    /// Stores an answer (a refresh or a `no-cache` fetch), here and in the second level.
    pub async fn insert(&self, key: Key, entry: Arc<Entry>) {
        self.share(key, &entry);
        self.answers.insert(key, entry).await;
    }

    /// Marks a background refresh of `key` as running; false when one already is.
    pub fn begin_refresh(&self, key: Key) -> bool {
        self.refreshing.lock().expect("refresh set").insert(key)
    }

    /// Marks the background refresh of `key` as done.
    pub fn end_refresh(&self, key: &Key) {
        self.refreshing.lock().expect("refresh set").remove(key);
    }

    /// Removes one entry, here and in the second level (best effort: skipped while Redis is
    /// down); returns whether there was one in either. Other replicas keep their first-level
    /// copy until it expires or they are purged too.
    pub async fn purge(&self, key: &Key) -> bool {
        // The second level first, so a lookup in between cannot bring the entry back here.
        let shared = match &self.l2 {
            Some(l2) => l2.delete(key).await.unwrap_or(false),
            None => false,
        };
        self.refreshes.invalidate(key).await;
        self.answers.remove(key).await.is_some() || shared
    }

    /// Removes every entry, here and in the second level (best effort, see [`Purged`]);
    /// returns what was removed from the second level, `None` without one.
    pub async fn purge_all(&self) -> Option<Purged> {
        let shared = match &self.l2 {
            Some(l2) => Some(l2.delete_all().await),
            None => None,
        };
        self.answers.invalidate_all();
        self.refreshes.invalidate_all();
        shared
    }

    /// Applies moka's pending evictions and expiries, and sets the entry and byte gauges (when
    /// `/metrics` is scraped).
    pub async fn export(&self, metrics: &Metrics) {
        self.answers.run_pending_tasks().await;
        metrics.cache_entries.set(i64::try_from(self.answers.entry_count()).unwrap_or(i64::MAX));
        metrics.cache_bytes.set(i64::try_from(self.answers.weighted_size()).unwrap_or(i64::MAX));
    }
}

/// How long an entry may still be served after it was stored: its TTL plus the longer window.
fn keep(settings: &CacheSettings) -> Duration {
    settings.ttl + settings.stale_if_error.max(settings.stale_while_revalidate)
}

#[cfg(test)]
mod tests;
