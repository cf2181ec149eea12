//! Where the first level keeps its answers: a map from key to entry, bounded by bytes, each
//! entry leaving when its keep time has passed since it was stored.
//!
//! # Why not moka here
//!
//! moka spends about 400 bytes of its own per entry (its hash-table node, a shared key, the
//! access and write deque nodes, each their own allocation), more than the ~300-byte answers
//! courier caches. Measured with 100k such answers, that put RSS at 1.5× the target of issue 8
//! (≤ 1.5 × the answers' bytes + 32 MiB). This store spends 48 bytes per entry in a slab plus
//! about 10 in its index, and no allocation of its own per entry. moka still coalesces loads
//! (`ResponseCache::load`), where its single-flight is what is wanted and entries live only
//! while a load is in flight.
//!
//! # How
//!
//! The store is split into shards by the key's hash, each a `Mutex` held only to look up,
//! insert or remove one key (never across an `.await` and never two at once), so two workers
//! rarely meet on one. A shard is a slab of slots and a `hashbrown` table of slot numbers,
//! hashed with a seeded foldhash of the key: the keys are SHA-256 digests, but of request
//! bodies a client chooses, so their bits are not used as the table's hash directly.
//!
//! Each shard holds at most its share of the byte bound. What leaves to make room is chosen by
//! CLOCK (second chance): a read marks the slot, and the hand sweeping the slab spares a marked
//! slot once; an answer read since the hand last passed outlives one that was not. A read
//! writes one flag in the slot it already touched, where an LRU list would relink three.
//!
//! An entry past its keep time is never returned: a read that finds one removes it. Others
//! leave when the hand meets them or at the next [`Store::sweep`] (each `/metrics` scrape).

use std::hash::BuildHasher;
use std::ops::{Index, IndexMut};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hashbrown::HashTable;
use prometheus::{IntCounter, IntCounterVec};

use super::{Entry, Key};

/// Each shard holds at least this share of the byte bound (unless the bound is smaller), so
/// one large answer still fits one shard.
const MIN_SHARD_BYTES: u64 = 16 << 20;

/// At most this many shards.
const MAX_SHARDS: u64 = 16;

/// Why an entry left, the `cause` label of `courier_cache_evictions_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cause {
    /// Its keep time passed.
    Expired,
    /// A purge.
    Explicit,
    /// A newer answer for its key.
    Replaced,
    /// Room for others.
    Size,
}

impl Cause {
    const ALL: [Cause; 4] = [Cause::Expired, Cause::Explicit, Cause::Replaced, Cause::Size];

    fn label(self) -> &'static str {
        match self {
            Cause::Expired => "expired",
            Cause::Explicit => "explicit",
            Cause::Replaced => "replaced",
            Cause::Size => "size",
        }
    }
}

/// The first level's entries.
pub(super) struct Store {
    shards: Box<[Mutex<Shard>]>,
    /// Bytes (by [`Entry::weight`]) each shard may hold.
    shard_bytes: u64,
    /// How long after it was stored an entry leaves.
    keep: Duration,
    /// What slots count their expiry from.
    epoch: Instant,
    hasher: foldhash::fast::RandomState,
    evictions: [IntCounter; 4],
}

#[derive(Default)]
struct Shard {
    /// Slot numbers, hashed by their slot's key.
    index: HashTable<u32>,
    slots: Slab,
    /// Empty slots, to be filled before the slab grows.
    free: Vec<u32>,
    /// The CLOCK hand: the next slot to consider for eviction.
    hand: usize,
    bytes: u64,
}

/// Slots in chunks of a fixed size: growing never moves the slots already there, and leaves no
/// outgrown buffer behind (which mimalloc would keep: `src/allocator.rs`). A slab in one `Vec`
/// held ~40 bytes more per entry after filling 130k (the old buffers of its doublings).
#[derive(Default)]
struct Slab {
    chunks: Vec<Vec<Slot>>,
}

/// Slots per chunk of a slab (48 KiB).
const CHUNK: usize = 1024;

impl Slab {
    fn len(&self) -> usize {
        self.chunks.last().map_or(0, |last| (self.chunks.len() - 1) * CHUNK + last.len())
    }

    /// Adds a slot; returns its number.
    fn push(&mut self, slot: Slot) -> usize {
        let n = self.len();
        if n % CHUNK == 0 {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        self.chunks.last_mut().expect("a chunk with room").push(slot);
        n
    }
}

impl Index<usize> for Slab {
    type Output = Slot;

    fn index(&self, n: usize) -> &Slot {
        &self.chunks[n / CHUNK][n % CHUNK]
    }
}

impl IndexMut<usize> for Slab {
    fn index_mut(&mut self, n: usize) -> &mut Slot {
        &mut self.chunks[n / CHUNK][n % CHUNK]
    }
}

struct Slot {
    key: Key,
    entry: Option<Arc<Entry>>,
    /// The whole second (of [`Store::epoch`]) by which the entry has expired, rounded up: sweeps
    /// and the hand tell expired entries from the slab alone, without reaching into each entry.
    expires: u32,
    /// Read since the hand last passed.
    referenced: bool,
}

impl Store {
    /// A store of at most `max_bytes`, whose entries leave `keep` after they were stored,
    /// counting what leaves into `evictions` by cause.
    pub(super) fn new(max_bytes: u64, keep: Duration, evictions: &IntCounterVec) -> Store {
        let count = (max_bytes / MIN_SHARD_BYTES).clamp(1, MAX_SHARDS);
        // A power of two, so a shard is picked by a mask.
        let count = 1u64 << (63 - count.leading_zeros());
        Store {
            shards: (0..count).map(|_| Mutex::default()).collect(),
            shard_bytes: max_bytes / count,
            keep,
            epoch: Instant::now(),
            hasher: foldhash::fast::RandomState::default(),
            evictions: Cause::ALL.map(|cause| evictions.with_label_values(&[cause.label()])),
        }
    }

    fn hash(&self, key: &Key) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        // The top bits: hashbrown picks buckets with the low ones and tags with the top seven,
        // which within one shard are then all alike; bits 48.. leave those free.
        let n = (hash >> 48) as usize & (self.shards.len() - 1);
        locked(&self.shards[n])
    }

    fn expired(&self, entry: &Entry, now: Instant) -> bool {
        entry.age_at(now) >= self.keep
    }

    /// The second by which `entry` has expired (rounded up; `u32::MAX`: not in this store's life).
    fn expires(&self, entry: &Entry) -> u32 {
        let Some(end) = entry.stored().checked_add(self.keep) else { return u32::MAX };
        let after = end.saturating_duration_since(self.epoch);
        let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        u32::try_from(seconds).unwrap_or(u32::MAX)
    }

    /// Whole seconds since the epoch at `now` (rounded down): a slot whose `expires` is at most
    /// this has expired.
    fn second(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.epoch).as_secs()).unwrap_or(u32::MAX)
    }

    fn count(&self, cause: Cause, n: u64) {
        self.evictions[cause as usize].inc_by(n);
    }

    /// The entry of `key`, unless it has expired at `now`.
    pub(super) fn get(&self, key: &Key, now: Instant) -> Option<Arc<Entry>> {
        let hash = self.hash(key);
        let mut shard = self.shard(hash);
        let n = shard.find(hash, key)?;
        let slot = &mut shard.slots[n];
        let entry = slot.entry.as_ref().expect("an indexed slot is full");
        if !self.expired(entry, now) {
            slot.referenced = true;
            return Some(entry.clone());
        }
        shard.remove(hash, n);
        drop(shard);
        self.count(Cause::Expired, 1);
        None
    }

    /// Stores `entry` under `key`, replacing what was there.
    pub(super) fn insert(&self, key: Key, entry: Arc<Entry>) {
        self.put(key, entry, |_| true);
    }

    /// Stores `candidate` under `key` unless the entry there is as new or newer and not
    /// expired; returns the entry the key then has.
    pub(super) fn insert_unless_newer(&self, key: Key, candidate: Arc<Entry>, now: Instant) -> Arc<Entry> {
        let mut kept = None;
        self.put(key, candidate.clone(), |current| {
            let newer = current.stored() >= candidate.stored() && !self.expired(current, now);
            if newer {
                kept = Some(current.clone());
            }
            !newer
        });
        kept.unwrap_or(candidate)
    }

    /// Stores `entry` under `key` if `replace` says so of the entry already there.
    fn put(&self, key: Key, entry: Arc<Entry>, replace: impl FnOnce(&Arc<Entry>) -> bool) {
        let weight = u64::from(entry.weight());
        let hash = self.hash(&key);
        let mut shard = self.shard(hash);
        let mut left = [0u64; 4];
        if let Some(n) = shard.find(hash, &key) {
            if !replace(shard.slots[n].entry.as_ref().expect("an indexed slot is full")) {
                return;
            }
            shard.remove(hash, n);
            left[Cause::Replaced as usize] += 1;
        }
        if weight > self.shard_bytes {
            // Larger than a shard may hold: it would only push everything else out.
            left[Cause::Size as usize] += 1;
        } else {
            let expires = self.expires(&entry);
            let n = shard.add(hash, key, entry, weight, expires, |slot: &Slot| self.hash(&slot.key));
            if shard.bytes > self.shard_bytes {
                let second = self.second(Instant::now());
                while shard.bytes > self.shard_bytes {
                    let cause = shard.evict(n, second, |slot| self.hash(&slot.key));
                    left[cause as usize] += 1;
                }
            }
        }
        drop(shard);
        for cause in Cause::ALL {
            if left[cause as usize] > 0 {
                self.count(cause, left[cause as usize]);
            }
        }
    }

    /// Removes the entry of `key`; returns whether there was one.
    pub(super) fn remove(&self, key: &Key) -> bool {
        let hash = self.hash(key);
        let mut shard = self.shard(hash);
        let Some(n) = shard.find(hash, key) else { return false };
        shard.remove(hash, n);
        drop(shard);
        self.count(Cause::Explicit, 1);
        true
    }

    /// Removes every entry, and gives the memory of the slabs back.
    pub(super) fn clear(&self) {
        for shard in self.shards.iter() {
            let removed = {
                let mut shard = locked(shard);
                std::mem::take(&mut *shard)
            };
            self.count(Cause::Explicit, removed.index.len() as u64);
        }
    }

    /// Removes the entries expired by the last whole second before `now` (one expired since
    /// then goes at the next sweep, or at its next read). Reads only the slab, shard by shard.
    pub(super) fn sweep(&self, now: Instant) {
        let second = self.second(now);
        for shard in self.shards.iter() {
            let mut shard = locked(shard);
            let mut expired = 0;
            for n in 0..shard.slots.len() {
                let slot = &shard.slots[n];
                if slot.entry.is_some() && slot.expires <= second {
                    let hash = self.hash(&shard.slots[n].key);
                    shard.remove(hash, n);
                    expired += 1;
                }
            }
            drop(shard);
            self.count(Cause::Expired, expired);
        }
    }

    /// Entries held, and their bytes.
    pub(super) fn size(&self) -> (u64, u64) {
        self.shards.iter().fold((0, 0), |(entries, bytes), shard| {
            let shard = locked(shard);
            (entries + shard.index.len() as u64, bytes + shard.bytes)
        })
    }
}

/// A shard, locked. A panic while one was held left it consistent (no method panics between
/// two changes that belong together), so a poisoned lock is taken as it is.
fn locked(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shard {
    fn find(&self, hash: u64, key: &Key) -> Option<usize> {
        let slots = &self.slots;
        self.index.find(hash, |&n| slots[n as usize].key == *key).map(|&n| n as usize)
    }

    /// Puts an entry in a free slot (growing the slab when there is none); returns the slot.
    fn add(
        &mut self,
        hash: u64,
        key: Key,
        entry: Arc<Entry>,
        weight: u64,
        expires: u32,
        rehash: impl Fn(&Slot) -> u64,
    ) -> usize {
        let slot = Slot { key, entry: Some(entry), expires, referenced: false };
        let n = match self.free.pop() {
            Some(n) => {
                self.slots[n as usize] = slot;
                n
            }
            None => u32::try_from(self.slots.push(slot)).expect("fewer than 2^32 entries in a shard"),
        };
        let slots = &self.slots;
        self.index.insert_unique(hash, n, |&m| rehash(&slots[m as usize]));
        self.bytes += weight;
        n as usize
    }

    /// Removes the entry in slot `n`, whose key hashes to `hash`.
    fn remove(&mut self, hash: u64, n: usize) {
        if let Ok(found) = self.index.find_entry(hash, |&m| m as usize == n) {
            found.remove();
        }
        let slot = &mut self.slots[n];
        slot.referenced = false;
        if let Some(entry) = slot.entry.take() {
            self.bytes -= u64::from(entry.weight());
        }
        self.free.push(n as u32);
    }

    /// Removes one entry other than the one in slot `keep` (the hand spares a slot read since it
    /// last passed once, unless it expired by `second`); says why it left. The caller holds more
    /// than that entry's bytes, so there is another.
    fn evict(&mut self, keep: usize, second: u32, hash: impl Fn(&Slot) -> u64) -> Cause {
        loop {
            if self.hand >= self.slots.len() {
                self.hand = 0;
            }
            let n = self.hand;
            self.hand += 1;
            let slot = &mut self.slots[n];
            if slot.entry.is_none() || n == keep {
                continue;
            }
            let cause = if slot.expires <= second { Cause::Expired } else { Cause::Size };
            if slot.referenced && cause == Cause::Size {
                slot.referenced = false;
                continue;
            }
            let h = hash(slot);
            self.remove(h, n);
            return cause;
        }
    }
}

#[cfg(test)]
mod tests;
