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
use std::sync::Mutex;
use std::time::{Duration, Instant};

use smol_str::SmolStr;
use tokio::sync::mpsc;

use super::{CallbackState, Claim, Job, JobError, JobStatus, JobStore, StoreError, StoreFuture, SyncEntry, Timestamp};

const SHARDS: usize = 16;

/// Every sync request records a status entry, so this map is on the request path: foldhash
/// (randomly seeded per process) instead of SipHash. Ids are `SmolStr`: up to 23 bytes (courier's
/// own ids are 20) they live inside the map and the order queue, with no allocation of their own,
/// so evicting the oldest entry does not reach into a cold allocation to compare and free its id.
type Hasher = foldhash::fast::RandomState;

#[derive(Default)]
struct Shard {
    jobs: HashMap<SmolStr, Job, Hasher>,
    /// Status entries of sync requests: always final, and a third of a job's size.
    synced: HashMap<SmolStr, SyncEntry, Hasher>,
    /// Insertion order, for expiry and eviction of the oldest finished entries.
    order: VecDeque<(Instant, SmolStr)>,
}

impl Shard {
    fn len(&self) -> usize {
        self.jobs.len() + self.synced.len()
    }

    fn contains(&self, id: &str) -> bool {
        self.synced.contains_key(id) || self.jobs.contains_key(id)
    }

    /// Whether the entry `id` is final (or gone).
    fn finished(&self, id: &str) -> bool {
        self.jobs.get(id).is_none_or(|job| job.doc.status.is_final())
    }

    fn remove(&mut self, id: &str) -> bool {
        self.synced.remove(id).is_some() || self.jobs.remove(id).is_some()
    }

    /// Drops expired entries from the front, and finished ones while over `cap`.
    fn make_room(&mut self, cap: usize, ttl: Duration, now: Instant) -> usize {
        let mut removed = 0;
        while let Some((at, id)) = self.order.front() {
            let expired = now.duration_since(*at) > ttl;
            if !(expired || (self.len() >= cap && self.finished(id))) {
                break;
            }
            let (_, id) = self.order.pop_front().expect("front exists");
            removed += usize::from(self.remove(&id));
        }
        if self.len() >= cap {
            // Unfinished entries at the front: look further back for a finished one.
            if let Some(pos) = self.order.iter().position(|(_, id)| {
                self.synced.contains_key(id) || self.jobs.get(id).is_some_and(|j| j.doc.status.is_final())
            }) {
                let (_, id) = self.order.remove(pos).expect("position exists");
                removed += usize::from(self.remove(&id));
            }
        }
        removed
    }

    /// Makes room for one entry `id`; `Err` when it exists or there is none.
    fn admit(&mut self, id: &str, cap: usize, ttl: Duration, now: Instant) -> Result<SmolStr, StoreError> {
        if self.contains(id) {
            return Err(StoreError::Exists);
        }
        self.make_room(cap, ttl, now);
        if self.len() >= cap {
            return Err(StoreError::Full);
        }
        let id = SmolStr::new(id);
        self.order.push_back((now, id.clone()));
        Ok(id)
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
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            cap_per_shard: max.div_ceil(SHARDS).max(1),
            ttl,
            queue,
            queued: tokio::sync::Mutex::new(queued),
            unfinished: AtomicUsize::new(0),
            hasher: Hasher::default(),
        }
    }

    fn shard(&self, id: &str) -> &Mutex<Shard> {
        &self.shards[self.hasher.hash_one(id) as usize % SHARDS]
    }

    fn with_job<T>(&self, id: &str, f: impl FnOnce(&mut Job) -> T) -> Option<T> {
        let mut shard = self.shard(id).lock().expect("shard lock");
        shard.jobs.get_mut(id).map(f)
    }

    /// Inserts if absent and there is room; `Err` says why not.
    fn insert(&self, job: Job) -> Result<(), StoreError> {
        let mut shard = self.shard(job.id()).lock().expect("shard lock");
        let id = shard.admit(job.id(), self.cap_per_shard, self.ttl, Instant::now())?;
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
        if let Ok(id) = shard.admit(id, self.cap_per_shard, self.ttl, Instant::now()) {
            shard.synced.insert(id, entry);
        }
    }

    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Job>> {
        let shard = self.shard(id).lock().expect("shard lock");
        let job = match shard.synced.get(id) {
            Some(entry) => Some(entry.to_job(id)),
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

    fn start<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Job>> {
        ready(Ok(self.with_job(id, |job| {
            match job.doc.status {
                JobStatus::Pending => job.doc.status = JobStatus::Processing,
                JobStatus::Processing => job.doc.takeovers += 1,
                JobStatus::Completed | JobStatus::Failed => {}
            }
            job.clone()
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
        assert_eq!(store.start("a").await.unwrap().unwrap().doc.status, JobStatus::Processing);
        let mut done = job("a", JobStatus::Completed, true);
        done.doc.attempts = 1;
        assert!(store.finish(&done).await.unwrap());
        assert!(!store.finish(&done).await.unwrap(), "a final job is not finished twice");
        assert_eq!(store.start("a").await.unwrap().unwrap().doc.status, JobStatus::Completed);
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
            owner: Some("billing".into()),
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
}
