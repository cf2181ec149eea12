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
/// holds only 4-byte sequence numbers.
pub(super) struct SyncRing {
    entries: VecDeque<Synced>,
    /// The sequence number of `entries[0]`.
    pub(super) base: u64,
    /// Sequence numbers of `entries`, hashed by id: their low 32 bits, enough to tell apart the
    /// entries of a ring shorter than 2^32.
    index: HashTable<u32>,
    hasher: Hasher,
    /// What `Synced::at` counts from.
    epoch: Instant,
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

    pub(super) fn entry(&self) -> SyncEntry {
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
        SyncRing {
            entries: VecDeque::with_capacity(room),
            base: 0,
            index: HashTable::with_capacity(room),
            hasher,
            epoch: Instant::now(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Milliseconds from the ring's epoch to `t`.
    pub(super) fn ms(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    pub(super) fn get(&self, id: &str) -> Option<&Synced> {
        let n = self.index.find(self.hasher.hash_one(id), |&seq| self.at(seq).id == id)?;
        Some(self.at(*n))
    }

    pub(super) fn at(&self, seq: u32) -> &Synced {
        &self.entries[offset(seq, self.base)]
    }

    /// When the oldest entry was recorded, in [`SyncRing::ms`].
    pub(super) fn front_at(&self) -> Option<u64> {
        self.entries.front().map(|s| s.at)
    }

    pub(super) fn push(&mut self, at: Instant, id: SmolStr, entry: SyncEntry) {
        let seq = (self.base + self.entries.len() as u64) as u32;
        let hash = self.hasher.hash_one(id.as_str());
        self.entries.push_back(Synced::new(self.ms(at), id, entry));
        let (entries, base, hasher) = (&self.entries, self.base, &self.hasher);
        self.index.insert_unique(hash, seq, |&s| hasher.hash_one(entries[offset(s, base)].id.as_str()));
    }

    /// Removes the oldest entry.
    pub(super) fn pop_front(&mut self) -> bool {
        let Some(oldest) = self.entries.pop_front() else { return false };
        let seq = self.base as u32;
        self.base += 1;
        if let Ok(found) = self.index.find_entry(self.hasher.hash_one(oldest.id.as_str()), |&s| s == seq) {
            found.remove();
        }
        true
    }
}
