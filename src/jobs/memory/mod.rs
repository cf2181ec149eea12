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

use super::{
    CallbackState, Claim, Job, JobError, JobStatus, JobStore, Start, StoreError, StoreFuture, SyncEntry, Timestamp,
};

use ring::SyncRing;

mod ring;

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
        let now = entry.recorded;
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
            Some(synced) => Some(synced.entry(shard.synced.epoch()).to_job(id)),
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
mod tests;
