//! The response cache: answers of the upstream kept by request key, so the upstream's budget
//! is spent once per answer, and identical requests in flight coalesced into one upstream call.
//!
//! The answers are held in a sharded store bounded by bytes and by time ([`store`], which says
//! why it is not moka), shared by every worker; it is not an actor, because it needs no single
//! owner. Identical requests that miss together are coalesced by moka's `or_try_insert_with`:
//! one caller runs the upstream call, the others wait for it, and a failure reaches all of them
//! and is not stored.
//!
//! Entries live `EXTERNAL_API_CACHE_TTL` fresh, then may still be served for a while:
//! - stale-while-revalidate (`COURIER_CACHE_SWR`): served at once while one background refresh
//!   runs, only when the budget has a spare permit, so refreshing never takes budget from live
//!   requests;
//! - stale-if-error (`COURIER_CACHE_STALE_IF_ERROR`): served instead of an error when the
//!   circuit is open or the upstream failed after retries.
//!
//! The store keeps each entry until its TTL plus the longer of the two windows have passed
//! since it was stored; freshness is decided here.
//!
//! With Redis (`REDIS_URL`), a second level ([`crate::shared::cache`]) shares answers between
//! replicas: a first-level miss, or a first-level entry past its TTL, reads Redis within a short
//! bound, and what it finds joins the first level with its original store time, so its `Age`
//! and freshness are those of the replica that fetched it. Every answer fetched upstream and
//! stored here is written to Redis in the background. Why, and what a dead Redis costs, is
//! argued in that module.

mod store;

use std::cell::Cell;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::future::Cache;
use prometheus::IntCounter;
use smol_str::SmolStr;

use crate::key::Key;

use crate::metrics::Metrics;
use crate::shared::cache::{unix_ms_now, Purged, Read, Record, SharedCache};
use crate::shared::SharedRedis;
use store::Store;

/// Cache settings.
#[derive(Clone, Copy, Debug)]
pub struct CacheSettings {
    /// How long an answer is fresh (zero turns the cache off).
    pub ttl: Duration,
    /// Most bytes of answers kept.
    pub max_bytes: u64,
    /// How long past its TTL an answer may replace an error.
    pub stale_if_error: Duration,
    /// How long past its TTL an answer is served while it is refreshed.
    pub stale_while_revalidate: Duration,
}

/// One cached answer: 64 bytes (80 with its `Arc`, one of mimalloc's size classes), since
/// 100k of them sit beside their answers.
#[derive(Debug)]
pub struct Entry {
    /// The upstream's `result`, raw JSON.
    pub result: Bytes,
    /// The upstream's request id of the call that produced it (inline: no allocation of its
    /// own for ids up to 23 bytes).
    pub upstream_request_id: Option<SmolStr>,
    /// When it was stored: nanoseconds from [`origin`] on the monotonic clock (negative for an
    /// answer another replica stored before this process started). An `Instant` takes 16 bytes.
    stored_ns: i64,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 64);

/// The point of the monotonic clock entries' store times count from: the first use.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

impl Entry {
    /// A new entry holding its own copy of `result` (not a slice of a larger buffer, so the
    /// weigher's count is what the entry really keeps alive).
    pub fn new(result: &[u8], upstream_request_id: Option<SmolStr>) -> Entry {
        Entry::passing(Bytes::copy_from_slice(result), upstream_request_id)
    }

    /// An entry that is only passed on, never cached: it shares `result` (a slice of the
    /// upstream's body) instead of copying it.
    pub fn passing(result: Bytes, upstream_request_id: Option<SmolStr>) -> Entry {
        Entry::stored_at(result, upstream_request_id, Instant::now())
    }

    /// An entry stored at `stored`.
    pub fn stored_at(result: Bytes, upstream_request_id: Option<SmolStr>, stored: Instant) -> Entry {
        let origin = origin();
        let stored_ns = match stored.checked_duration_since(origin) {
            Some(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
            None => i64::try_from(origin.duration_since(stored).as_nanos()).map_or(i64::MIN, |before| -before),
        };
        Entry { result, upstream_request_id, stored_ns }
    }

    /// When it was stored.
    pub fn stored(&self) -> Instant {
        let origin = origin();
        let ns = Duration::from_nanos(self.stored_ns.unsigned_abs());
        if self.stored_ns >= 0 {
            origin + ns
        } else {
            origin.checked_sub(ns).unwrap_or(origin)
        }
    }

    /// Names the entry while the caller holds it: a load names the expired entry it replaces
    /// by this (its address, which no other entry can have while it is held).
    fn tag(entry: &Arc<Entry>) -> u64 {
        Arc::as_ptr(entry) as usize as u64
    }

    /// The entry of a second-level record, stored when the record says; `None` when that is
    /// further back than this clock reaches.
    fn from_record(record: Record) -> Option<Entry> {
        let age = Duration::from_millis(unix_ms_now().saturating_sub(record.stored_at_ms));
        let stored = Instant::now().checked_sub(age)?;
        Some(Entry::stored_at(record.result, record.upstream_request_id.as_deref().map(SmolStr::new), stored))
    }

    /// The second-level record of this entry, its store time on the wall clock.
    fn to_record(&self) -> Record {
        let age = u64::try_from(self.stored().elapsed().as_millis()).unwrap_or(u64::MAX);
        Record {
            stored_at_ms: unix_ms_now().saturating_sub(age),
            upstream_request_id: self.upstream_request_id.as_deref().map(Box::from),
            result: self.result.clone(),
        }
    }

    /// How long it has been stored at `now` (zero for a store time ahead of `now`).
    pub fn age_at(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.stored())
    }

    /// Whole seconds since it was stored (the `Age` header).
    pub fn age(&self, now: Instant) -> u64 {
        self.age_at(now).as_secs()
    }

    fn weight(&self) -> u32 {
        let id = self.upstream_request_id.as_ref().map_or(0, |id| id.len());
        // Bytes of the answer plus what the entry, its slot and its index cost.
        u32::try_from(self.result.len() + id + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
    }
}

/// Approximate bytes per entry beyond the answer itself.
const ENTRY_OVERHEAD: usize = 160;

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
    store: Store,
    /// Loads in flight, by key and the id of the expired entry they replace (0: none). Only
    /// for coalescing: an entry leaves as soon as its load is done.
    loads: Cache<(Key, u64), Arc<Entry>>,
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
        let store = Store::new(settings.max_bytes, keep(&settings), &metrics.cache_evictions);
        let lookups = CacheStatus::ALL.iter().map(|s| metrics.cache_lookups.with_label_values(&[s.label()])).collect();
        let loads = Cache::builder().max_capacity(100_000).time_to_live(Duration::from_secs(600)).build();
        let l2 = l2.map(|redis| Arc::new(SharedCache::new(redis, metrics)));
        ResponseCache { store, loads, settings, refreshing: Mutex::new(HashSet::new()), lookups, l2 }
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
        let local = self.store.get(key, now);
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
        if entry.stored().elapsed() >= keep(&self.settings) || local.is_some_and(|l| l.stored_ns >= entry.stored_ns) {
            return None;
        }
        // Atomic per key: a newer answer stored here meanwhile (a load finishing) is kept.
        Some(self.store.insert_unless_newer(*key, entry, Instant::now()))
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
    pub async fn load<F, E>(&self, key: Key, stale: Option<&Arc<Entry>>, load: F) -> Result<(Arc<Entry>, bool), Arc<E>>
    where
        F: std::future::Future<Output = Result<Arc<Entry>, E>>,
        E: Send + Sync + 'static,
    {
        let replaces = stale.map_or(0, Entry::tag);
        let loaded_here = Cell::new(false);
        let init = async {
            // A load of the same key may have finished between the caller's lookup and now.
            if let Some(current) = self.store.get(&key, Instant::now()) {
                if Entry::tag(&current) != replaces && current.stored().elapsed() <= self.settings.ttl {
                    return Ok(current);
                }
            }
            let entry = load.await?;
            self.store.insert(key, entry.clone());
            self.share(key, &entry);
            loaded_here.set(true);
            Ok(entry)
        };
        let entry = self.loads.entry((key, replaces)).or_try_insert_with(init).await?;
        if entry.is_fresh() {
            self.loads.invalidate(&(key, replaces)).await;
        }
        Ok((entry.into_value(), loaded_here.get()))
    }

    /// Stores an answer (a refresh or a `no-cache` fetch), here and in the second level.
    pub async fn insert(&self, key: Key, entry: Arc<Entry>) {
        self.share(key, &entry);
        self.store.insert(key, entry);
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
        self.store.remove(key) || shared
    }

    /// Removes every entry, here and in the second level (best effort, see [`Purged`]);
    /// returns what was removed from the second level, `None` without one.
    pub async fn purge_all(&self) -> Option<Purged> {
        let shared = match &self.l2 {
            Some(l2) => Some(l2.delete_all().await),
            None => None,
        };
        self.store.clear();
        self.loads.invalidate_all();
        shared
    }

    /// Removes the expired entries and sets the entry and byte gauges (when `/metrics` is
    /// scraped).
    pub async fn export(&self, metrics: &Metrics) {
        self.store.sweep(Instant::now());
        let (entries, bytes) = self.store.size();
        metrics.cache_entries.set(i64::try_from(entries).unwrap_or(i64::MAX));
        metrics.cache_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}

/// How long an entry may still be served after it was stored: its TTL plus the longer window.
fn keep(settings: &CacheSettings) -> Duration {
    settings.ttl + settings.stale_if_error.max(settings.stale_while_revalidate)
}

#[cfg(test)]
mod tests;
