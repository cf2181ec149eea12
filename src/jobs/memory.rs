//! The in-process job store, the embedded default: jobs and status entries in sharded maps,
//! bounded in count (`COURIER_JOB_MAX`) and in time (`COURIER_JOB_TTL`), and a bounded queue
//! of accepted jobs for the runner.
//!
//! Jobs here die with the process: at shutdown the runner finishes what it can within the grace
//! period and marks the rest `failed` with error `shutdown`, so no job is left `processing`
//! forever. When the store is full of unfinished jobs, a new job is refused (503) rather than
//! accepted and lost; finished entries are evicted oldest first to make room.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant, UNIX_EPOCH};

use hashbrown::HashTable;
use smol_str::SmolStr;
use tokio::sync::mpsc;

use super::{
    CallbackState, Claim, Job, JobError, JobStatus, JobStore, Start, StoreError, StoreFuture, SyncEntry, Timestamp,
};
use crate::cache::Entry;

const SHARDS: usize = 16;

/// Most sync entries per shard allocated up front (1M for the store).
const PREALLOCATED: usize = 1 << 16;

/// Every sync request records a status entry, so the maps are on the request path: foldhash
/// (randomly seeded per process) instead of SipHash. Ids are `SmolStr`: up to 23 bytes (courier's
/// own ids are 20) they live inside the map and the queues, with no allocation of their own.
type Hasher = foldhash::fast::RandomState;

struct Shard {
    jobs: HashMap<SmolStr, Job, Hasher>,
    /// Insertion order of the jobs, for expiry and eviction of the oldest finished ones.
    order: VecDeque<(Instant, SmolStr)>,
    /// Status entries of sync requests: always final.
    synced: SyncRing,
}

/// The status entries of sync requests, in the order they came, with an index by id.
///
/// With the default 100k entries, a map holding the entries themselves is megabytes touched at
/// random: recording one entry and evicting the oldest each missed the CPU's caches, and the
/// map pushed the rest of the request path out of them (bench/README.md measured it). Here the
/// entries are written and evicted in order (memory the CPU streams through), and the index
/// holds only 4-byte sequence numbers.
struct SyncRing {
    entries: VecDeque<Synced>,
    /// The sequence number of `entries[0]`.
    base: u64,
    /// Sequence numbers of `entries`, hashed by id: their low 32 bits, enough to tell apart the
    /// entries of a ring shorter than 2^32.
    index: HashTable<u32>,
    hasher: Hasher,
    /// What `Synced::at` counts from.
    epoch: Instant,
}

/// A [`SyncEntry`] as the ring keeps it: 72 bytes instead of 112, since every sync request
/// records one. Times are kept in the units they are shown or compared in.
struct Synced {
    id: SmolStr,
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
    fn new(at: u64, id: SmolStr, entry: SyncEntry) -> Synced {
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

    fn entry(&self) -> SyncEntry {
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
    /// index, and mimalloc keeps the outgrown buffers (`src/allocator.rs`): grown from empty to
    /// 100k hits, the ring and index held ~270 bytes per entry. Pages become resident only as
    /// entries are written.
    fn with_room(hasher: Hasher, room: usize) -> SyncRing {
        SyncRing {
            entries: VecDeque::with_capacity(room),
            base: 0,
            index: HashTable::with_capacity(room),
            hasher,
            epoch: Instant::now(),
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Milliseconds from the ring's epoch to `t`.
    fn ms(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn get(&self, id: &str) -> Option<&Synced> {
        let n = self.index.find(self.hasher.hash_one(id), |&seq| self.at(seq).id == id)?;
        Some(self.at(*n))
    }

    fn at(&self, seq: u32) -> &Synced {
        &self.entries[offset(seq, self.base)]
    }

    /// When the oldest entry was recorded, in [`SyncRing::ms`].
    fn front_at(&self) -> Option<u64> {
        self.entries.front().map(|s| s.at)
    }

    fn push(&mut self, at: Instant, id: SmolStr, entry: SyncEntry) {
        let seq = (self.base + self.entries.len() as u64) as u32;
        let hash = self.hasher.hash_one(id.as_str());
        self.entries.push_back(Synced::new(self.ms(at), id, entry));
        let (entries, base, hasher) = (&self.entries, self.base, &self.hasher);
        self.index.insert_unique(hash, seq, |&s| hasher.hash_one(entries[offset(s, base)].id.as_str()));
    }

    /// Removes the oldest entry.
    fn pop_front(&mut self) -> bool {
        let Some(oldest) = self.entries.pop_front() else { return false };
        let seq = self.base as u32;
        self.base += 1;
        if let Ok(found) = self.index.find_entry(self.hasher.hash_one(oldest.id.as_str()), |&s| s == seq) {
            found.remove();
        }
        true
    }
}

impl Shard {
    /// A shard whose sync entries have room for `room` before they grow.
    fn new(hasher: Hasher, room: usize) -> Shard {
        Shard {
            jobs: HashMap::with_hasher(hasher.clone()),
            order: VecDeque::new(),
            synced: SyncRing::with_room(hasher, room),
        }
    }

    fn len(&self) -> usize {
        self.jobs.len() + self.synced.len()
    }

    fn contains(&self, id: &str) -> bool {
        self.synced.get(id).is_some() || self.jobs.contains_key(id)
    }

    /// Whether the job `id` is final (or gone).
    fn finished(&self, id: &str) -> bool {
        self.jobs.get(id).is_none_or(|job| job.doc.status.is_final())
    }

    /// Drops expired entries, oldest first, and finished ones while over `cap`.
    fn make_room(&mut self, cap: usize, ttl: Duration, now: Instant) {
        let (now_ms, ttl_ms) = (self.synced.ms(now), u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        loop {
            let sync_front = self.synced.front_at();
            let job_front = self.order.front().map(|(at, id)| (*at, id));
            match (sync_front, job_front) {
                (Some(at), job) if job.is_none_or(|(job_at, _)| at <= self.synced.ms(job_at)) => {
                    if !(now_ms.saturating_sub(at) > ttl_ms || self.len() >= cap) {
                        break;
                    }
                    self.synced.pop_front();
                }
                (_, Some((at, id))) => {
                    if !(now.duration_since(at) > ttl || (self.len() >= cap && self.finished(id))) {
                        break;
                    }
                    let (_, id) = self.order.pop_front().expect("front exists");
                    self.jobs.remove(&id);
                }
                _ => break,
            }
        }
        if self.len() >= cap {
            // An unfinished job at the front: the oldest finished entry further back goes.
            let job = self.order.iter().position(|(_, id)| self.jobs.get(id).is_some_and(|j| j.doc.status.is_final()));
            let older_job = match (job, self.synced.front_at()) {
                (Some(pos), Some(sync_at)) => self.synced.ms(self.order[pos].0) < sync_at,
                (job, _) => job.is_some(),
            };
            if older_job {
                let (_, id) = self.order.remove(job.expect("a finished job")).expect("position exists");
                self.jobs.remove(&id);
            } else {
                self.synced.pop_front();
            }
        }
    }

    /// Makes room for one entry `id`; `Err` when it exists or there is none.
    fn admit(&mut self, id: &str, cap: usize, ttl: Duration, now: Instant) -> Result<SmolStr, StoreError> {
        if self.contains(id) {
            return Err(StoreError::Exists);
        }
        self.admit_new(id, cap, ttl, now)
    }

    /// As [`Shard::admit`], for an id known to be new (one courier generated): no lookup.
    fn admit_new(&mut self, id: &str, cap: usize, ttl: Duration, now: Instant) -> Result<SmolStr, StoreError> {
        self.make_room(cap, ttl, now);
        if self.len() >= cap {
            return Err(StoreError::Full);
        }
        Ok(SmolStr::new(id))
    }
}

/// The in-process store.
pub struct MemoryStore {
    shards: Vec<Mutex<Shard>>,
    cap_per_shard: usize,
    ttl: Duration,
    queue: mpsc::Sender<String>,
    queued: tokio::sync::Mutex<mpsc::Receiver<String>>,
    unfinished: AtomicUsize,
    hasher: Hasher,
}

impl MemoryStore {
    /// A store of at most `max` entries, each kept `ttl`.
    pub fn new(max: usize, ttl: Duration) -> MemoryStore {
        let (queue, queued) = mpsc::channel(max.max(1));
        let hasher = Hasher::default();
        let cap_per_shard = max.div_ceil(SHARDS).max(1);
        // The index's control bytes are written when it is allocated (1 byte per entry), so up
        // to PREALLOCATED entries per shard are allocated at once, more only by growing.
        let room = cap_per_shard.min(PREALLOCATED);
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new(hasher.clone(), room))).collect(),
            cap_per_shard,
            ttl,
            queue,
            queued: tokio::sync::Mutex::new(queued),
            unfinished: AtomicUsize::new(0),
            hasher,
        }
    }

    fn shard(&self, id: &str) -> &Mutex<Shard> {
        // Bits the shards' own tables do not use for buckets or tags.
        &self.shards[(self.hasher.hash_one(id) >> 32) as usize % SHARDS]
    }

    fn with_job<T>(&self, id: &str, f: impl FnOnce(&mut Job) -> T) -> Option<T> {
        let mut shard = self.shard(id).lock().expect("shard lock");
        shard.jobs.get_mut(id).map(f)
    }

    /// Inserts if absent and there is room; `Err` says why not.
    fn insert(&self, job: Job) -> Result<(), StoreError> {
        let mut shard = self.shard(job.id()).lock().expect("shard lock");
        let now = Instant::now();
        let id = shard.admit(job.id(), self.cap_per_shard, self.ttl, now)?;
        shard.order.push_back((now, id.clone()));
        shard.jobs.insert(id, job);
        Ok(())
    }
}

fn ready<T: Send + 'static>(value: Result<T, StoreError>) -> StoreFuture<'static, T> {
    Box::pin(std::future::ready(value))
}

impl JobStore for MemoryStore {
    fn submit<'a>(&'a self, job: &'a Job) -> StoreFuture<'a, ()> {
        let result = self.insert(job.clone()).and_then(|()| {
            self.queue.try_send(job.id().to_owned()).map_err(|_| {
                // Not queued, so not accepted: take it back out.
                self.shard(job.id()).lock().expect("shard lock").jobs.remove(job.id());
                StoreError::Full
            })
        });
        if result.is_ok() {
            self.unfinished.fetch_add(1, Ordering::Relaxed);
        }
        ready(result)
    }

    fn record(&self, job: Job) {
        let _ = self.insert(job);
    }

    fn record_sync(&self, id: &str, entry: SyncEntry) {
        let mut shard = self.shard(id).lock().expect("shard lock");
        let now = Instant::now();
        let admitted = match entry.new_id {
            true => shard.admit_new(id, self.cap_per_shard, self.ttl, now),
            false => shard.admit(id, self.cap_per_shard, self.ttl, now),
        };
        if let Ok(id) = admitted {
            shard.synced.push(now, id, entry);
        }
    }

    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Job>> {
        let shard = self.shard(id).lock().expect("shard lock");
        let job = match shard.synced.get(id) {
            Some(synced) => Some(synced.entry().to_job(id)),
            None => shard.jobs.get(id).cloned(),
        };
        ready(Ok(job))
    }

    fn next<'a>(&'a self, max: usize, wait: Duration) -> StoreFuture<'a, Vec<Claim>> {
        Box::pin(async move {
            let mut queued = self.queued.lock().await;
            let mut claims = Vec::new();
            if let Ok(Some(id)) = actix_rt::time::timeout(wait, queued.recv()).await {
                claims.push(Claim { receipt: id.clone(), id });
            }
            while claims.len() < max {
                match queued.try_recv() {
                    Ok(id) => claims.push(Claim { receipt: id.clone(), id }),
                    Err(_) => break,
                }
            }
            Ok(claims)
        })
    }

    fn heartbeat<'a>(&'a self, _claims: &'a [Claim]) -> StoreFuture<'a, ()> {
        ready(Ok(()))
    }

    /// Jobs here die with the process, so none is ever taken over after its runner stopped
    /// and `COURIER_JOB_MAX_RUNS` has nothing to count.
    fn start<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Start>> {
        ready(Ok(self.with_job(id, |job| match job.doc.status {
            JobStatus::Pending => {
                job.doc.status = JobStatus::Processing;
                Start::Run(job.clone())
            }
            JobStatus::Processing => {
                job.doc.takeovers += 1;
                Start::Run(job.clone())
            }
            JobStatus::Completed | JobStatus::Failed => Start::Final(job.clone()),
        })))
    }

    fn finish<'a>(&'a self, job: &'a Job) -> StoreFuture<'a, bool> {
        let done = self.with_job(job.id(), |stored| {
            if stored.doc.status != JobStatus::Processing {
                return false;
            }
            *stored = job.clone();
            true
        });
        if done == Some(true) {
            self.unfinished.fetch_sub(1, Ordering::Relaxed);
        }
        ready(Ok(done == Some(true)))
    }

    fn update_callback<'a>(&'a self, id: &'a str, callback: &'a CallbackState) -> StoreFuture<'a, ()> {
        self.with_job(id, |job| job.doc.callback = Some(callback.clone()));
        ready(Ok(()))
    }

    fn ack<'a>(&'a self, _claim: &'a Claim) -> StoreFuture<'a, ()> {
        ready(Ok(()))
    }

    fn durable(&self) -> bool {
        false
    }

    fn backlog<'a>(&'a self) -> StoreFuture<'a, u64> {
        ready(Ok(self.unfinished.load(Ordering::Relaxed) as u64))
    }

    fn fail_unfinished<'a>(&'a self, error: &'a JobError) -> StoreFuture<'a, Vec<Job>> {
        let mut failed = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.lock().expect("shard lock");
            for job in shard.jobs.values_mut().filter(|j| j.work.is_some() && !j.doc.status.is_final()) {
                job.doc.status = JobStatus::Failed;
                job.doc.error = Some(error.clone());
                job.doc.completed_at = Some(Timestamp::now());
                failed.push(job.clone());
            }
        }
        self.unfinished.fetch_sub(failed.len().min(self.unfinished.load(Ordering::Relaxed)), Ordering::Relaxed);
        ready(Ok(failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, status: JobStatus, work: bool) -> Job {
        Job::for_test(id, status, work)
    }

    #[actix_rt::test]
    async fn jobs_move_forward_only_and_are_queued_once() {
        let store = MemoryStore::new(100, Duration::from_secs(60));
        store.submit(&job("a", JobStatus::Pending, true)).await.unwrap();
        assert_eq!(store.submit(&job("a", JobStatus::Pending, true)).await, Err(StoreError::Exists));
        assert_eq!(store.backlog().await.unwrap(), 1);
        let claims = store.next(10, Duration::from_millis(10)).await.unwrap();
        assert_eq!(claims.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["a"]);
        assert!(store.next(10, Duration::from_millis(10)).await.unwrap().is_empty());
        assert!(
            matches!(store.start("a").await.unwrap(), Some(Start::Run(j)) if j.doc.status == JobStatus::Processing)
        );
        let mut done = job("a", JobStatus::Completed, true);
        done.doc.attempts = 1;
        assert!(store.finish(&done).await.unwrap());
        assert!(!store.finish(&done).await.unwrap(), "a final job is not finished twice");
        assert_eq!(store.start("a").await.unwrap(), Some(Start::Final(done)));
        assert_eq!(store.backlog().await.unwrap(), 0);
    }

    fn synced(status: JobStatus) -> SyncEntry {
        SyncEntry {
            status,
            answer: Some(std::sync::Arc::new(crate::cache::Entry::passing(
                bytes::Bytes::from_static(br#"{"x":1}"#),
                Some("up_1".into()),
            ))),
            error: None,
            created_at: Timestamp::now(),
            completed_at: Timestamp::now(),
            attempts: 2,
            owner: Some("billing"),
            new_id: false,
        }
    }

    #[actix_rt::test]
    async fn records_never_overwrite_jobs_and_finished_entries_make_room() {
        // Two entries per shard: whichever shard "a" lands in still has room for one more.
        let store = MemoryStore::new(2 * SHARDS, Duration::from_secs(60));
        store.submit(&job("a", JobStatus::Pending, true)).await.unwrap();
        store.record_sync("a", synced(JobStatus::Completed));
        store.record(job("a", JobStatus::Completed, false));
        assert_eq!(store.get("a").await.unwrap().unwrap().doc.status, JobStatus::Pending);
        // Fill every shard with finished entries; each new one replaces the oldest finished one.
        for i in 0..200 {
            store.record_sync(&format!("sync-{i}"), synced(JobStatus::Completed));
        }
        let read = store.get("sync-199").await.unwrap().expect("the newest entry is kept");
        assert_eq!(read.doc.request_id, "sync-199");
        assert_eq!(read.doc.result.map(|r| r.0), Some(bytes::Bytes::from_static(br#"{"x":1}"#)));
        assert_eq!(read.doc.upstream_request_id.as_deref(), Some("up_1"));
        assert_eq!((read.doc.attempts, read.owner.as_deref(), read.work.is_none()), (2, Some("billing"), true));
        assert!(store.get("sync-0").await.unwrap().is_none(), "the oldest finished entries made room");
        assert!(store.get("a").await.unwrap().is_some(), "an unfinished job is never evicted");
        // A sync entry holds its id: a job cannot take it.
        assert_eq!(store.submit(&job("sync-199", JobStatus::Pending, true)).await, Err(StoreError::Exists));
    }

    #[actix_rt::test]
    async fn entries_of_generated_ids_skip_the_lookup_but_not_the_bounds() {
        let store = MemoryStore::new(2 * SHARDS, Duration::from_secs(60));
        store.submit(&job("running", JobStatus::Pending, true)).await.unwrap();
        for i in 0..200 {
            store.record_sync(&format!("req_{i:016x}"), SyncEntry { new_id: true, ..synced(JobStatus::Completed) });
        }
        let kept = store.shards.iter().map(|s| s.lock().unwrap().len()).sum::<usize>();
        assert!(kept <= 2 * SHARDS, "{kept} entries kept in a store of {}", 2 * SHARDS);
        assert!(store.get(&format!("req_{:016x}", 199)).await.unwrap().is_some(), "the newest is kept");
        assert!(store.get("running").await.unwrap().is_some(), "an unfinished job is never evicted");
    }

    #[actix_rt::test]
    async fn a_store_full_of_unfinished_jobs_refuses_new_ones() {
        let store = MemoryStore::new(SHARDS, Duration::from_secs(60));
        let mut refused = 0;
        for i in 0..100 {
            if store.submit(&job(&format!("j{i}"), JobStatus::Pending, true)).await == Err(StoreError::Full) {
                refused += 1;
            }
        }
        assert!(refused >= 100 - SHARDS, "{refused}");
        let failed = store
            .fail_unfinished(&JobError { code: "shutdown".into(), message: "stopping".into(), retryable: true })
            .await
            .unwrap();
        assert_eq!(failed.len(), 100 - refused);
        assert!(failed.iter().all(|j| j.doc.status == JobStatus::Failed && j.doc.completed_at.is_some()));
    }

    /// Records sync entry `id` in `shard` at `at`, as `record_sync` does.
    fn sync_at(shard: &mut Shard, id: &str, cap: usize, at: Instant) -> Result<(), StoreError> {
        let id = shard.admit(id, cap, Duration::from_secs(60), at)?;
        shard.synced.push(at, id, synced(JobStatus::Completed));
        Ok(())
    }

    #[test]
    fn sync_entries_leave_oldest_first_and_the_index_follows() {
        let mut shard = Shard::new(Hasher::default(), 16);
        let t0 = Instant::now();
        for i in 0..500u64 {
            sync_at(&mut shard, &format!("s-{i}"), 100, t0 + Duration::from_millis(i)).unwrap();
        }
        assert_eq!(shard.len(), 100);
        assert!((0..400).all(|i| shard.synced.get(&format!("s-{i}")).is_none()), "the oldest 400 left");
        assert!((400..500).all(|i| shard.synced.get(&format!("s-{i}")).is_some()), "the newest 100 stay");
        assert_eq!(sync_at(&mut shard, "s-450", 100, t0), Err(StoreError::Exists));
        // Past the TTL, all of them go at the next record, however much room there is.
        let later = t0 + Duration::from_secs(61);
        sync_at(&mut shard, "late", 1000, later).unwrap();
        assert_eq!(shard.len(), 1);
        assert!(shard.synced.get("late").is_some() && shard.synced.get("s-499").is_none());
    }

    #[test]
    fn the_ring_keeps_what_a_status_document_shows() {
        let mut ring = SyncRing::with_room(Hasher::default(), 4);
        let created = UNIX_EPOCH + Duration::from_millis(1_705_314_600_250);
        let failed = SyncEntry {
            status: JobStatus::Failed,
            answer: None,
            error: Some(Box::new(JobError { code: "rate_limited".into(), message: "over".into(), retryable: true })),
            created_at: Timestamp(created),
            completed_at: Timestamp(created + Duration::from_millis(2_900)),
            attempts: 3,
            owner: Some("search"),
            new_id: false,
        };
        ring.push(Instant::now(), "f".into(), failed.clone());
        ring.push(Instant::now(), "c".into(), synced(JobStatus::Completed));
        let shown = |id: &str| serde_json::to_value(ring.get(id).unwrap().entry().to_job(id)).unwrap();
        assert_eq!(shown("f"), serde_json::to_value(failed.to_job("f")).unwrap(), "the same document, to the second");
        let completed = ring.get("c").unwrap().entry();
        assert_eq!((completed.status, completed.attempts, completed.owner), (JobStatus::Completed, 2, Some("billing")));
        assert_eq!(&completed.answer.unwrap().result[..], br#"{"x":1}"#);
    }

    #[test]
    fn the_index_finds_entries_across_the_wrap_of_its_32_bit_sequence_numbers() {
        let mut ring = SyncRing::with_room(Hasher::default(), 16);
        ring.base = u64::from(u32::MAX) - 5;
        for i in 0..40 {
            ring.push(Instant::now(), format!("w-{i}").into(), synced(JobStatus::Completed));
            if ring.len() > 10 {
                assert!(ring.pop_front());
            }
        }
        assert!((0..30).all(|i| ring.get(&format!("w-{i}")).is_none()), "evicted ones are gone from the index");
        assert!((30..40).all(|i| ring.get(&format!("w-{i}")).is_some_and(|s| s.id == format!("w-{i}"))));
    }

    #[test]
    fn a_full_shard_evicts_the_oldest_finished_entry_of_either_kind() {
        let mut shard = Shard::new(Hasher::default(), 16);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let add_job = |shard: &mut Shard, id: &str, status: JobStatus, ms: u64| {
            let id = shard.admit(id, 3, Duration::from_secs(60), at(ms)).unwrap();
            shard.order.push_back((at(ms), id.clone()));
            shard.jobs.insert(id.clone(), job(&id, status, status == JobStatus::Pending));
        };
        add_job(&mut shard, "running", JobStatus::Pending, 0);
        sync_at(&mut shard, "sync-old", 3, at(1)).unwrap();
        add_job(&mut shard, "done", JobStatus::Completed, 2);
        // Full: the unfinished job stays; the oldest finished entry (the sync one) goes.
        sync_at(&mut shard, "sync-new", 3, at(3)).unwrap();
        assert!(shard.synced.get("sync-old").is_none());
        assert!(shard.jobs.contains_key("running") && shard.jobs.contains_key("done"));
        // Then the finished job, older than the remaining sync entry.
        sync_at(&mut shard, "sync-newer", 3, at(4)).unwrap();
        assert!(!shard.jobs.contains_key("done"));
        assert!(shard.synced.get("sync-new").is_some() && shard.synced.get("sync-newer").is_some());
        assert!(shard.jobs.contains_key("running"), "an unfinished job is never evicted");
    }
}
