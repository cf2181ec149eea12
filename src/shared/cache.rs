//! The second level of the response cache: answers in Redis, so an answer one replica fetched
//! upstream is a hit on every other replica, and the upstream's budget is spent once per answer
//! across the fleet, not once per replica.
//!
//! # Why it is built this way
//!
//! - **A dead or slow Redis costs a request at most [`READ_LIMIT`].** Reads happen only after
//!   a first-level miss (or a first-level entry past its TTL), through
//!   [`SharedRedis::run_within`] with that short bound; once a call fails, shared state is
//!   degraded and reads are refused at once for a second, so an outage costs nothing per
//!   request after the first failure. Writes never delay an answer: they are spawned after it
//!   is stored in the first level, at most [`MAX_WRITES_IN_FLIGHT`] at once (more are dropped),
//!   and skipped while degraded.
//! - **Age and freshness survive the trip between replicas**: a record carries the wall-clock
//!   time it was stored, so a replica reading it gives it the same `Age` and the same TTL as
//!   the one that stored it (replicas' clocks must agree, as NTP keeps them; skew shifts
//!   freshness by the skew).
//! - **Coalescing stays per replica.** Two replicas that miss the same key at the same instant
//!   both call the upstream; making that impossible would take a distributed lock on every
//!   miss, paid by every request to close a window of one upstream round trip.
//! - **Purges are best effort**: they remove the Redis copy when Redis answers, and the first
//!   level of the replica asked. Other replicas keep their first-level copy until it expires
//!   or they are purged too.
//!
//! # Data model (`{ns}`: the shared-state namespace in braces, its hash tag: `{courier}`)
//!
//! **`{ns}:cache:{key}`** (`{key}`: the 64 hex digits of the `X-Cache-Key`) is a string
//! holding one [`Record`], written with `SET .. PX` so Redis drops it once it is past its TTL
//! plus the longer stale window, when no replica could serve it any more.
//!
//! # Memory, and the eviction trade-off
//!
//! The first level is bounded by `COURIER_CACHE_MAX_BYTES` per replica; the second
//! level's size is Redis's business. Key expiry alone bounds it by what the fleet fetches in
//! one TTL. For a hard bound, set `maxmemory` with `maxmemory-policy allkeys-lru` (or
//! `volatile-lru`) **on a separate Redis database or instance for the cache**: the Redis job
//! store needs `noeviction`, and an eviction policy on a shared instance applies to every key,
//! so under memory pressure it could delete job documents or the job stream. Sharing one
//! instance with `noeviction` is also possible: then a full Redis refuses cache writes (they
//! fail in the background, and shared state is marked degraded for a second each time) instead
//! of evicting anything.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prometheus::IntCounter;

use super::{Degraded, SharedRedis};
use crate::key::Key;
use crate::metrics::Metrics;

/// The longest a second-level read may hold up a request.
pub const READ_LIMIT: Duration = Duration::from_millis(50);

/// Most background writes in flight at once; answers stored beyond that are not shared.
pub const MAX_WRITES_IN_FLIGHT: usize = 256;

/// Keys asked of each `SCAN` step of a purge of everything.
const PURGE_BATCH: usize = 500;

/// The longest a purge of everything keeps scanning.
const PURGE_LIMIT: Duration = Duration::from_secs(10);

/// The first byte of a record in the current format.
const FORMAT_V1: u8 = 1;

/// Bytes before the upstream request id: format, stored-at, id length.
const HEADER: usize = 1 + 8 + 2;

/// The id length that means "no upstream request id".
const NO_ID: u16 = u16::MAX;

/// Milliseconds since the Unix epoch now (0 if the clock is before it).
pub fn unix_ms_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One answer as stored in Redis.
///
/// Encoded as: one format byte (`1`); the stored-at time in Unix milliseconds (`u64`,
/// big-endian); the byte length of the upstream request id (`u16`, big-endian, `0xFFFF` for
/// none); the id (UTF-8); then the upstream's raw `result` JSON to the end of the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// When the answer was stored, in Unix milliseconds.
    pub stored_at_ms: u64,
    /// The upstream's request id of the call that produced it.
    pub upstream_request_id: Option<Box<str>>,
    /// The upstream's `result`, raw JSON.
    pub result: Bytes,
}

impl Record {
    /// The record's bytes; `None` when the upstream request id is too long to store.
    pub fn encode(&self) -> Option<Vec<u8>> {
        let id = self.upstream_request_id.as_deref().unwrap_or("").as_bytes();
        let id_len = match &self.upstream_request_id {
            None => NO_ID,
            Some(_) => u16::try_from(id.len()).ok().filter(|n| *n != NO_ID)?,
        };
        let mut out = Vec::with_capacity(HEADER + id.len() + self.result.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&self.stored_at_ms.to_be_bytes());
        out.extend_from_slice(&id_len.to_be_bytes());
        out.extend_from_slice(id);
        out.extend_from_slice(&self.result);
        Some(out)
    }

    /// Reads a record; `None` when the bytes are not one in a format this build knows, or
    /// its result is not JSON courier would pass on (a corrupted or forged record is a miss).
    pub fn decode(bytes: &[u8]) -> Option<Record> {
        let (header, rest) = bytes.split_at_checked(HEADER)?;
        if header[0] != FORMAT_V1 {
            return None;
        }
        let stored_at_ms = u64::from_be_bytes(header[1..9].try_into().ok()?);
        let id_len = u16::from_be_bytes(header[9..11].try_into().ok()?);
        let (upstream_request_id, result) = if id_len == NO_ID {
            (None, rest)
        } else {
            let (id, result) = rest.split_at_checked(usize::from(id_len))?;
            (Some(std::str::from_utf8(id).ok()?.into()), result)
        };
        crate::json::check_depth(result, crate::json::RECORD_MAX_DEPTH).ok()?;
        serde_json::from_slice::<&serde_json::value::RawValue>(result).ok()?;
        Some(Record { stored_at_ms, upstream_request_id, result: Bytes::copy_from_slice(result) })
    }
}

/// What a second-level read found, the `courier_cache_l2_reads_total{result}` label.
#[derive(Debug)]
pub enum Read {
    /// A record.
    Hit(Record),
    /// Nothing (or a value this build cannot read).
    Miss,
    /// Redis failed or timed out, or was not asked because shared state is degraded.
    Error,
}

impl Read {
    /// Every label value, in the order of [`Read::index`].
    const LABELS: [&'static str; 3] = ["hit", "miss", "error"];

    fn index(&self) -> usize {
        match self {
            Read::Hit(_) => 0,
            Read::Miss => 1,
            Read::Error => 2,
        }
    }
}

/// What a purge of every second-level entry removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Purged {
    /// Keys removed.
    pub removed: u64,
    /// Whether the scan reached the end (false: Redis failed, or the time limit passed).
    pub complete: bool,
}

/// The response cache's second level.
pub struct SharedCache {
    redis: Arc<SharedRedis>,
    reads: [IntCounter; 3],
    writes: Arc<AtomicUsize>,
}

/// Counts one background write in flight for as long as it lives (even if its task is dropped).
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SharedCache {
    /// The second level on `redis`, counting reads into `metrics`.
    pub fn new(redis: Arc<SharedRedis>, metrics: &Metrics) -> SharedCache {
        let reads = Read::LABELS.map(|label| metrics.cache_l2_reads.with_label_values(&[label]));
        SharedCache { redis, reads, writes: Arc::new(AtomicUsize::new(0)) }
    }

    /// The Redis key of a cache key.
    pub fn name(&self, key: &Key) -> String {
        self.redis.key(&format!("cache:{}", key.hex()))
    }

    /// Reads a record, bounded by [`READ_LIMIT`]; refused at once while degraded.
    pub async fn get(&self, key: &Key) -> Read {
        let name = self.name(key);
        let reply = self
            .redis
            .run_within("cache_get", READ_LIMIT, move |mut conn| async move {
                redis::cmd("GET").arg(name).query_async::<Option<Vec<u8>>>(&mut conn).await
            })
            .await;
        let read = match reply {
            Ok(Some(bytes)) => Record::decode(&bytes).map_or(Read::Miss, Read::Hit),
            Ok(None) => Read::Miss,
            Err(_) => Read::Error,
        };
        self.reads[read.index()].inc();
        read
    }

    /// Writes a record that expires after `keep_for`, and waits for Redis.
    pub async fn write(&self, key: &Key, record: &Record, keep_for: Duration) -> Result<(), Degraded> {
        let Some(value) = record.encode() else { return Ok(()) };
        let name = self.name(key);
        let ms = u64::try_from(keep_for.as_millis()).unwrap_or(u64::MAX).max(1);
        self.redis
            .run("cache_set", move |mut conn| async move {
                redis::cmd("SET").arg(name).arg(value).arg("PX").arg(ms).query_async::<()>(&mut conn).await
            })
            .await
    }

    /// Writes a record in the background (never waited for): only when Redis is up or due for
    /// a retry, inside a tokio runtime, and with fewer than [`MAX_WRITES_IN_FLIGHT`] running.
    pub fn put(self: &Arc<Self>, key: Key, record: Record, keep_for: Duration) {
        if keep_for.is_zero() || !self.redis.should_try() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        if self.writes.fetch_add(1, Ordering::AcqRel) >= MAX_WRITES_IN_FLIGHT {
            self.writes.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let in_flight = InFlight(self.writes.clone());
        let this = self.clone();
        runtime.spawn(async move {
            // A failure is counted and marks shared state degraded inside `run`.
            let _ = this.write(&key, &record, keep_for).await;
            drop(in_flight);
        });
    }

    /// Deletes one record; whether there was one.
    pub async fn delete(&self, key: &Key) -> Result<bool, Degraded> {
        let name = self.name(key);
        self.redis
            .run("cache_purge", move |mut conn| async move {
                redis::cmd("UNLINK").arg(name).query_async::<u64>(&mut conn).await
            })
            .await
            .map(|n| n > 0)
    }

    /// Deletes every record (`SCAN` + `UNLINK`, [`PURGE_BATCH`] keys a step, each step bounded
    /// by the shared-state timeout, the whole by [`PURGE_LIMIT`]).
    pub async fn delete_all(&self) -> Purged {
        let prefix = self.redis.key("cache:");
        let pattern = format!("{}*", glob_escape(&prefix));
        let deadline = Instant::now() + PURGE_LIMIT;
        let (mut cursor, mut removed) = (0u64, 0u64);
        loop {
            let (pattern, prefix) = (pattern.clone(), prefix.clone());
            let step = self
                .redis
                .run("cache_purge", move |mut conn| async move {
                    let mut scan = redis::cmd("SCAN");
                    scan.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(PURGE_BATCH);
                    // On a Cluster, where the records live: the node of their slot.
                    let (next, keys): (u64, Vec<Vec<u8>>) = conn.query_beside(&scan, &prefix).await?;
                    let gone = if keys.is_empty() {
                        0
                    } else {
                        redis::cmd("UNLINK").arg(keys).query_async::<u64>(&mut conn).await?
                    };
                    Ok((next, gone))
                })
                .await;
            let Ok((next, gone)) = step else { return Purged { removed, complete: false } };
            removed += gone;
            if next == 0 {
                return Purged { removed, complete: true };
            }
            if Instant::now() >= deadline {
                return Purged { removed, complete: false };
            }
            cursor = next;
        }
    }
}

/// `text` with Redis glob characters escaped, to match it literally in `SCAN .. MATCH`.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: Option<&str>, result: &[u8]) -> Record {
        Record {
            stored_at_ms: 1_700_000_000_123,
            upstream_request_id: id.map(Into::into),
            result: result.to_vec().into(),
        }
    }

    #[test]
    fn records_round_trip() {
        for r in [record(Some("up-1"), br#"{"a":[1,2]}"#), record(None, b"1"), record(Some(""), b"null")] {
            assert_eq!(Record::decode(&r.encode().unwrap()), Some(r));
        }
    }

    #[test]
    fn foreign_or_broken_values_are_not_records() {
        let good = record(Some("up-1"), b"{}").encode().unwrap();
        assert_eq!(Record::decode(&good[..HEADER - 1]), None, "truncated header");
        assert_eq!(Record::decode(&good[..HEADER + 2]), None, "truncated id");
        let mut other = good.clone();
        other[0] = 2;
        assert_eq!(Record::decode(&other), None, "unknown format");
        assert_eq!(Record::decode(b"{\"json\":true}"), None);
        let with = |result: Vec<u8>| Record { stored_at_ms: 1, upstream_request_id: None, result: result.into() };
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes();
        assert_eq!(Record::decode(&with(deep).encode().unwrap()), None, "nested past any replica's bound");
        assert_eq!(Record::decode(&with(b"{\"a\":".to_vec()).encode().unwrap()), None, "not JSON");
    }

    #[test]
    fn an_id_too_long_to_store_is_not_encoded() {
        let long = "x".repeat(usize::from(u16::MAX));
        assert_eq!(record(Some(&long), b"1").encode(), None);
        let longest = "x".repeat(usize::from(u16::MAX) - 1);
        assert!(record(Some(&longest), b"1").encode().is_some());
    }

    #[test]
    fn globs_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\:cache:"), "a\\*b\\?\\[c\\]\\\\:cache:");
    }
}
