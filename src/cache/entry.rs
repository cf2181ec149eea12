//! One cached answer, and what it weighs against `COURIER_CACHE_MAX_BYTES`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use smol_str::SmolStr;

use crate::shared::cache::{unix_ms_now, Record};

/// One cached answer. 64 bytes, so that with its `Arc` it fills one of mimalloc's size classes.
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

/// What one entry costs beyond the bytes of its answer and of its upstream request id: the
/// `Arc<Entry>`, the answer's shared header (made when it is handed to the second level), and
/// moka's own bookkeeping (its hash-table bucket and slot, the shared key, the entry's
/// metadata, its access-order and timer-wheel nodes, each a separate allocation). Measured with
/// a counting allocator by `tests/cache_footprint.rs`, which fails when the measure and this
/// constant part ways, so that the byte bound stays an honest bound on memory.
pub const ENTRY_OVERHEAD: usize = 440;

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

    /// Whether it was stored later than `other`.
    pub(super) fn newer_than(&self, other: &Entry) -> bool {
        self.stored_ns > other.stored_ns
    }

    /// The entry of a second-level record, stored when the record says; `None` when that is
    /// further back than this clock reaches.
    pub(super) fn from_record(record: Record) -> Option<Entry> {
        let age = Duration::from_millis(unix_ms_now().saturating_sub(record.stored_at_ms));
        let stored = Instant::now().checked_sub(age)?;
        Some(Entry::stored_at(record.result, record.upstream_request_id.as_deref().map(SmolStr::new), stored))
    }

    /// The second-level record of this entry, its store time on the wall clock.
    pub(super) fn to_record(&self) -> Record {
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

    /// What it counts against the cache's byte bound: its answer, its upstream request id and
    /// [`ENTRY_OVERHEAD`].
    pub fn weight(&self) -> u32 {
        let id = self.upstream_request_id.as_ref().map_or(0, |id| id.len());
        u32::try_from(self.result.len() + id + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
    }
}
