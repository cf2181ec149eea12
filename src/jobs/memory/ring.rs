//! The ring of sync requests' status entries, in the order they came, with an index by id.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use hashbrown::HashTable;
use smol_str::SmolStr;

use super::Hasher;
use crate::cache::Entry;
use crate::jobs::{JobError, JobStatus, SyncEntry, Timestamp};

/// The status entries of sync requests, in the order they came, with an index by id.
///
/// With the default 100k entries, a map holding the entries themselves is megabytes touched at
/// random: recording one entry and evicting the oldest each missed the CPU's caches, and the
/// map pushed the rest of the request path out of them (bench/README.md measured it). Here the
/// entries are written and evicted in order (memory the CPU streams through), and the index
/// ([`Slots`]) holds only their sequence numbers, and is not touched when the oldest leaves.
pub(super) struct SyncRing {
    entries: VecDeque<Synced>,
    /// The sequence number of `entries[0]`.
    pub(super) base: u64,
    index: Slots,
    /// Entries recorded but not yet in the index (id hash, sequence number), placed
    /// [`PENDING`] at a time; lookups read them here meanwhile.
    pending: Vec<(u64, u32)>,
    hasher: Hasher,
    /// What `Synced::at` counts from.
    epoch: Instant,
}

/// Entries placed in the index together: each placement reads a random group of slots, cold in
/// the CPU's caches, and reading a batch's groups one after the other lets the CPU wait for
/// them all at once instead of once per request.
const PENDING: usize = 32;

/// Slots per group: an id's entry is in its group (two cache lines), or in the overflow.
const GROUP: usize = 16;

/// The ring's index: sequence numbers of entries by their id's hash, in an open-addressed table
/// probed within one aligned group of [`GROUP`] slots. A slot whose sequence number is no longer
/// in the ring is free, so an entry leaving the ring is not looked for here: every request
/// records an entry and evicts one, and a hash map's removal was a second walk to a random,
/// cold place in memory for each (bench/README.md, "Issue 19: the cache-hit path, again").
struct Slots {
    /// `tag << 32 | sequence number`, the tag being the id hash's upper half (so most slots of a
    /// group are told apart without reading the ring). Kept at most half full.
    table: Box<[u64]>,
    /// Entries whose group was full when they came (rare at that load), by id hash; removed
    /// when they leave the ring.
    overflow: HashTable<u32>,
}

/// The slot value of sequence number `seq` with `hash`'s tag.
fn slot(hash: u64, seq: u32) -> u64 {
    (hash & !u64::from(u32::MAX)) | u64::from(seq)
}

impl Slots {
    /// A table for `room` entries, every slot free in a ring starting at sequence number `base`.
    fn new(room: usize, base: u64) -> Slots {
        let len = (room * 2).next_power_of_two().max(GROUP);
        // One below the ring's first sequence number: not in the ring until 2^32 entries later.
        let free = slot(0, (base as u32).wrapping_sub(1));
        Slots { table: vec![free; len].into_boxed_slice(), overflow: HashTable::new() }
    }

    /// The slots of `hash`'s group.
    fn group(&self, hash: u64) -> std::ops::Range<usize> {
        let start = (hash as usize) & (self.table.len() - 1) & !(GROUP - 1);
        start..start + GROUP
    }
}

/// A [`SyncEntry`] as the ring keeps it: 72 bytes instead of 112, since every sync request
/// records one. Times are kept in the units they are shown or compared in.
pub(super) struct Synced {
    pub(super) id: SmolStr,
    answer: Option<Arc<Entry>>,
    error: Option<Box<JobError>>,
    owner: Option<&'static str>,
    /// When it was recorded: milliseconds since the ring's epoch (a monotonic clock, for expiry).
    at: u64,
    /// When it was answered: whole seconds since the Unix epoch, as status documents show it.
    completed_s: u32,
    /// Whole seconds from acceptance to answer, as shown (saturating at ~18 h).
    took_s: u16,
    /// Upstream attempts (saturating at 255; retries are far fewer).
    attempts: u8,
    status: JobStatus,
}

const _: () = assert!(std::mem::size_of::<Synced>() == 72);

/// Whole seconds since the Unix epoch (0 before it, `u32::MAX` after 2106).
fn unix_seconds(t: Timestamp) -> u64 {
    t.0.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Synced {
    pub(super) fn new(at: u64, id: SmolStr, entry: SyncEntry) -> Synced {
        let completed = unix_seconds(entry.completed_at);
        let took = completed.saturating_sub(unix_seconds(entry.created_at));
        Synced {
            id,
            answer: entry.answer,
            error: entry.error,
            owner: entry.owner,
            at,
            completed_s: u32::try_from(completed).unwrap_or(u32::MAX),
            took_s: u16::try_from(took).unwrap_or(u16::MAX),
            attempts: u8::try_from(entry.attempts).unwrap_or(u8::MAX),
            status: entry.status,
        }
    }

    /// The entry as recorded, in a ring whose epoch is `epoch`.
    pub(super) fn entry(&self, epoch: Instant) -> SyncEntry {
        let completed = UNIX_EPOCH + Duration::from_secs(u64::from(self.completed_s));
        SyncEntry {
            status: self.status,
            answer: self.answer.clone(),
            error: self.error.clone(),
            created_at: Timestamp(completed - Duration::from_secs(u64::from(self.took_s))),
            completed_at: Timestamp(completed),
            attempts: u32::from(self.attempts),
            owner: self.owner,
            new_id: false,
            recorded: epoch + Duration::from_millis(self.at),
        }
    }
}

/// Where the entry of index sequence number `seq` sits in a ring whose front has `base` (the
/// index keeps the low 32 bits, so the difference wraps).
fn offset(seq: u32, base: u64) -> usize {
    seq.wrapping_sub(base as u32) as usize
}

impl SyncRing {
    /// A ring with room for `room` entries before it grows. Growing doubles the ring and the
    /// index, and mimalloc keeps the outgrown buffers (`src/allocator.rs`), so a ring grown from
    /// empty holds several times the memory of one allocated up front (bench/README.md, "the
    /// status store's footprint"). Pages become resident only as entries are written.
    pub(super) fn with_room(hasher: Hasher, room: usize) -> SyncRing {
        Self::starting_at(hasher, room, 0)
    }

    /// As [`SyncRing::with_room`], whose first entry has sequence number `base`.
    pub(super) fn starting_at(hasher: Hasher, room: usize, base: u64) -> SyncRing {
        SyncRing {
            entries: VecDeque::with_capacity(room),
            base,
            index: Slots::new(room, base),
            pending: Vec::with_capacity(PENDING),
            hasher,
            epoch: Instant::now(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// What its entries' record times count from.
    pub(super) fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Milliseconds from the ring's epoch to `t`.
    pub(super) fn ms(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// The entry of sequence number `seq` (its low 32 bits), if it is still in the ring.
    fn live(&self, seq: u32) -> Option<&Synced> {
        self.entries.get(offset(seq, self.base))
    }

    pub(super) fn get(&self, id: &str) -> Option<&Synced> {
        let hash = self.hasher.hash_one(id);
        let pending = self.pending.iter().filter(|(h, _)| *h == hash);
        if let Some(found) = pending.filter_map(|(_, seq)| self.live(*seq)).find(|e| e.id == id) {
            return Some(found);
        }
        let tag = slot(hash, 0);
        let found = self.index.table[self.index.group(hash)]
            .iter()
            .filter(|s| slot(**s, 0) == tag)
            .find_map(|s| self.live(*s as u32).filter(|e| e.id == id));
        if found.is_some() || self.index.overflow.is_empty() {
            return found;
        }
        let seq = self.index.overflow.find(hash, |&seq| self.live(seq).is_some_and(|e| e.id == id))?;
        self.live(*seq)
    }

    /// When the oldest entry was recorded, in [`SyncRing::ms`].
    pub(super) fn front_at(&self) -> Option<u64> {
        self.entries.front().map(|s| s.at)
    }

    pub(super) fn push(&mut self, at: Instant, id: SmolStr, entry: SyncEntry) {
        if self.entries.len() + 1 > self.index.table.len() / 2 {
            self.regrow();
        }
        let seq = (self.base + self.entries.len() as u64) as u32;
        let hash = self.hasher.hash_one(id.as_str());
        self.entries.push_back(Synced::new(self.ms(at), id, entry));
        self.pending.push((hash, seq));
        if self.pending.len() == PENDING {
            self.place_pending();
        }
    }

    /// Places the pending entries still in the ring.
    fn place_pending(&mut self) {
        let mut pending = std::mem::take(&mut self.pending);
        // Their groups read first, each independent of the others, so their cache misses
        // overlap; the placement after finds them in the cache.
        let first = pending.iter().fold(0, |sum, (hash, _)| sum ^ self.index.table[self.index.group(*hash).start]);
        std::hint::black_box(first);
        for (hash, seq) in pending.drain(..) {
            if self.live(seq).is_some() {
                self.place(hash, seq);
            }
        }
        self.pending = pending;
    }

    /// Puts `seq` in a free slot of `hash`'s group, or in the overflow.
    fn place(&mut self, hash: u64, seq: u32) {
        let (base, len) = (self.base, self.entries.len());
        let group = self.index.group(hash);
        match self.index.table[group].iter_mut().find(|s| offset(**s as u32, base) >= len) {
            Some(free) => *free = slot(hash, seq),
            None => {
                let (entries, hasher) = (&self.entries, &self.hasher);
                self.index
                    .overflow
                    .insert_unique(hash, seq, |&s| hasher.hash_one(entries[offset(s, base)].id.as_str()));
            }
        }
    }

    /// Doubles the index and places every entry again (the ring outgrew its room).
    fn regrow(&mut self) {
        self.pending.clear();
        self.index = Slots::new(self.index.table.len(), self.base);
        for n in 0..self.entries.len() {
            let hash = self.hasher.hash_one(self.entries[n].id.as_str());
            self.place(hash, (self.base + n as u64) as u32);
        }
    }

    /// Removes the oldest entry.
    pub(super) fn pop_front(&mut self) -> bool {
        let Some(oldest) = self.entries.pop_front() else { return false };
        let seq = self.base as u32;
        self.base += 1;
        if !self.index.overflow.is_empty() {
            if let Ok(found) = self.index.overflow.find_entry(self.hasher.hash_one(oldest.id.as_str()), |&s| s == seq) {
                found.remove();
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> SyncEntry {
        SyncEntry {
            status: JobStatus::Completed,
            answer: None,
            error: None,
            created_at: Timestamp::now(),
            completed_at: Timestamp::now(),
            attempts: 1,
            owner: None,
            new_id: false,
            recorded: Instant::now(),
        }
    }

    #[test]
    fn an_entry_whose_group_is_full_is_found_in_the_overflow_until_it_leaves() {
        // Room for 4: one group of 16 slots, 8 of them used by 8 entries.
        let mut ring = SyncRing::with_room(Hasher::default(), 4);
        assert_eq!(ring.index.table.len(), GROUP);
        for i in 0..7 {
            ring.push(Instant::now(), format!("e-{i}").into(), entry());
        }
        ring.place_pending();
        // The free slots taken by entries still in the ring (no tag of any id): the group is full.
        let live = ring.index.table.iter().copied().find(|s| offset(*s as u32, ring.base) < ring.len()).unwrap();
        for s in ring.index.table.iter_mut().filter(|s| offset(**s as u32, 0) >= 7) {
            *s = live & u64::from(u32::MAX);
        }
        ring.push(Instant::now(), "late".into(), entry());
        assert!(ring.get("late").is_some(), "found while pending");
        ring.place_pending();
        assert_eq!(ring.index.overflow.len(), 1);
        assert!((0..7).all(|i| ring.get(&format!("e-{i}")).is_some()));
        assert_eq!(ring.get("late").map(|e| e.id.as_str()), Some("late"));
        assert!(ring.get("never").is_none());
        for _ in 0..8 {
            assert!(ring.pop_front());
        }
        assert!(ring.index.overflow.is_empty(), "an entry leaving the ring leaves the overflow");
        assert!(ring.get("late").is_none());
    }

    /// A ring with room for 4 through which `count` entries `{prefix}-{i}` passed, keeping the
    /// newest `keep`.
    fn passed_through(prefix: &str, count: usize, keep: usize) -> SyncRing {
        let mut ring = SyncRing::with_room(Hasher::default(), 4);
        for i in 0..count {
            ring.push(Instant::now(), format!("{prefix}-{i}").into(), entry());
            if ring.len() > keep {
                ring.pop_front();
            }
        }
        ring
    }

    #[test]
    fn a_ring_grown_past_its_room_finds_every_entry() {
        let ring = passed_through("g", 1000, 700);
        assert!(ring.index.table.len() >= 2 * 700);
        assert!((300..1000).all(|i| ring.get(&format!("g-{i}")).is_some_and(|e| e.id == format!("g-{i}"))));
        assert!((0..300).all(|i| ring.get(&format!("g-{i}")).is_none()));
    }

    #[test]
    fn slots_of_entries_that_left_are_used_again() {
        // A ring that never holds more than 3 entries keeps its 16 slots through 10k of them.
        let ring = passed_through("r", 10_000, 3);
        assert_eq!(ring.index.table.len(), GROUP);
        assert!(ring.index.overflow.is_empty());
        assert!((9_997..10_000).all(|i| ring.get(&format!("r-{i}")).is_some()));
    }
}
