//! Where the first level keeps its answers: a moka cache bounded by bytes, each entry weighed
//! by its real footprint and leaving when its keep time has passed since it was *stored*.
//!
//! - **Bounded by bytes, honestly**: the weigher counts an answer's bytes, its upstream request
//!   id and [`ENTRY_OVERHEAD`] (the `Arc<Entry>` and moka's own bookkeeping, measured), so
//!   `COURIER_CACHE_MAX_BYTES` bounds what the cache keeps alive, not only its answers.
//! - **Expiry from the store time** ([`AfterStored`]): an answer another replica stored a minute
//!   ago, read from Redis now, leaves a minute earlier than one fetched now. moka's own
//!   `time_to_live` counts from the insertion, which would keep it a minute too long.
//! - **Least recently used leaves first** (moka's LRU policy, not its default TinyLFU): every
//!   answer here cost a unit of the upstream's budget, and TinyLFU may refuse a new answer at
//!   once in favour of older, more often read ones, so that the next identical request pays
//!   the upstream again.
//! - **The table's hash is a seeded foldhash of the key**: keys are SHA-256 digests, but of
//!   bodies a client chooses, so their bits are not used as the hash directly.
//!
//! What leaves is counted in `courier_cache_evictions_total` by moka's own cause, from its
//! eviction listener. moka applies evictions and expiries in batches (on reads and writes, and
//! before each `/metrics` scrape), so between two batches the weighed size may pass the bound
//! by the writes of one batch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::policy::{EvictionPolicy, Expiry};
use prometheus::{IntCounter, IntCounterVec};

use super::entry::Entry;
#[cfg(doc)]
use super::entry::ENTRY_OVERHEAD;
use crate::key::Key;

/// Answers by key.
pub(super) type Answers = Cache<Key, Arc<Entry>, foldhash::fast::RandomState>;

/// The answers of the first level: at most `max_bytes` by [`Entry::weight`], each leaving
/// `keep` after it was stored; what leaves is counted into `evictions` by cause.
pub(super) fn answers(max_bytes: u64, keep: Duration, evictions: &IntCounterVec) -> Answers {
    let counters: [IntCounter; 4] = CAUSES.map(|(_, label)| evictions.with_label_values(&[label]));
    Cache::<Key, Arc<Entry>>::builder()
        .max_capacity(max_bytes)
        .weigher(|_key: &Key, entry: &Arc<Entry>| entry.weight())
        .eviction_policy(EvictionPolicy::lru())
        .expire_after(AfterStored { lifetime: keep })
        .eviction_listener(move |_key, _entry, cause| counters[index(cause)].inc())
        .build_with_hasher(foldhash::fast::RandomState::default())
}

/// Answers of refreshes in flight, by key: only for coalescing (see `ResponseCache::load`),
/// each leaving as soon as its refresh is done, and at the latest when it is no longer fresh
/// (`ttl` after it was stored), so one left behind by a cancelled refresh is never served
/// stale. Bounded by count: it holds one entry per refresh in flight.
pub(super) fn refreshes(ttl: Duration) -> Answers {
    Cache::<Key, Arc<Entry>>::builder()
        .max_capacity(MAX_REFRESHES)
        .expire_after(AfterStored { lifetime: ttl })
        .build_with_hasher(foldhash::fast::RandomState::default())
}

/// Most refreshes whose answers the coalescing map holds at once.
const MAX_REFRESHES: u64 = 10_000;

/// moka's removal causes and the `cause` labels of `courier_cache_evictions_total`.
const CAUSES: [(RemovalCause, &str); 4] = [
    (RemovalCause::Expired, "expired"),
    (RemovalCause::Explicit, "explicit"),
    (RemovalCause::Replaced, "replaced"),
    (RemovalCause::Size, "size"),
];

fn index(cause: RemovalCause) -> usize {
    CAUSES.iter().position(|(c, _)| *c == cause).expect("every cause has a label")
}

/// Expiry counted from each entry's store time: an entry leaves `lifetime` after it was
/// stored, however late it arrived here, and an entry replaced by a newer one gets the newer
/// one's time.
#[derive(Clone, Copy, Debug)]
pub(super) struct AfterStored {
    /// How long after its store time an entry leaves.
    pub(super) lifetime: Duration,
}

impl AfterStored {
    /// How long `entry` may still stay at `now` (zero: it has expired).
    pub(super) fn remaining(&self, entry: &Entry, now: Instant) -> Duration {
        self.lifetime.saturating_sub(entry.age_at(now))
    }
}

impl Expiry<Key, Arc<Entry>> for AfterStored {
    fn expire_after_create(&self, _key: &Key, entry: &Arc<Entry>, created_at: Instant) -> Option<Duration> {
        Some(self.remaining(entry, created_at))
    }

    fn expire_after_update(
        &self,
        _key: &Key,
        entry: &Arc<Entry>,
        updated_at: Instant,
        _until_now: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.remaining(entry, updated_at))
    }
}

#[cfg(test)]
mod tests;
