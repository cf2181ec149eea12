//! The job store's contract: what runners and handlers ask of wherever jobs live.

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::{CallbackState, Job, JobError, SyncEntry};

/// A job taken from the queue by a runner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The job's request id.
    pub id: String,
    /// The store's handle on the queue entry (a Redis stream entry id), for heartbeats and
    /// acknowledgement.
    pub receipt: String,
}

/// What [`JobStore::start`] made of a claimed job.
#[derive(Clone, Debug, PartialEq)]
pub enum Start {
    /// It is `processing` now (from `pending`, or taken over from a runner that died): run it.
    Run(Job),
    /// It was final already: nothing to run (its callback may still be due).
    Final(Job),
    /// Each of its runs ended with its process, as often as the store allows
    /// (`COURIER_JOB_MAX_RUNS`): it is `failed` now with [`RUN_INTERRUPTED`](super::RUN_INTERRUPTED), without running
    /// again. Its callback is due.
    Abandoned(Job),
}

impl Start {
    /// The job as it now is.
    pub fn job(&self) -> &Job {
        match self {
            Start::Run(job) | Start::Final(job) | Start::Abandoned(job) => job,
        }
    }

    /// The job as it now is, taken.
    pub fn into_job(self) -> Job {
        match self {
            Start::Run(job) | Start::Final(job) | Start::Abandoned(job) => job,
        }
    }
}

/// Why the store could not do what was asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A job with this request id exists already.
    #[error("a job with this request id exists")]
    Exists,
    /// The store holds as many jobs as it may.
    #[error("the job store is full")]
    Full,
    /// The store could not be reached or answered an error (no secret in the text).
    #[error("the job store is unavailable: {0}")]
    Unavailable(String),
}

/// A boxed future of a store operation.
pub type StoreFuture<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// Where jobs and status entries live, and the queue runners take jobs from.
pub trait JobStore: Send + Sync + 'static {
    /// Stores a new pending async job and queues it, durably, before the 202 is sent.
    /// `Exists` when the request id is taken.
    fn submit<'a>(&'a self, job: &'a Job) -> StoreFuture<'a, ()>;

    /// Records the status entry of a finished sync request, best effort (never blocks the
    /// answer; never overwrites an existing job).
    fn record(&self, job: Job);

    /// Records the status entry of the finished sync request `id` (as [`JobStore::record`]).
    /// Stores that can keep it compact do; the default keeps it as a job.
    fn record_sync(&self, id: &str, entry: SyncEntry) {
        self.record(entry.to_job(id));
    }

    /// Reads a job.
    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Job>>;

    /// Waits up to `wait` for jobs to run (new ones, or ones whose runner's lease ran out),
    /// at most `max`.
    fn next<'a>(&'a self, max: usize, wait: Duration) -> StoreFuture<'a, Vec<Claim>>;

    /// Keeps the lease on claimed jobs alive while they run.
    fn heartbeat<'a>(&'a self, claims: &'a [Claim]) -> StoreFuture<'a, ()>;

    /// Moves a claimed job to `processing` (from `pending`, or again from `processing` when
    /// its previous runner died: that counts a takeover), or fails it without running when
    /// its runs kept ending with their process ([`Start::Abandoned`]). A job already final is
    /// returned unchanged; `None`: no such job.
    fn start<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Start>>;

    /// At a graceful shutdown, notes that this process hands the running job `id` over
    /// without dying, so its next start does not count the run as interrupted. Stores whose
    /// jobs die with the process do nothing.
    fn release<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        let _ = id;
        Box::pin(async { Ok(()) })
    }

    /// Saves a job's final state, only if it is `processing` (compare-and-set). Returns false
    /// when it was not.
    fn finish<'a>(&'a self, job: &'a Job) -> StoreFuture<'a, bool>;

    /// Saves the callback's delivery state of a job.
    fn update_callback<'a>(&'a self, id: &'a str, callback: &'a CallbackState) -> StoreFuture<'a, ()>;

    /// Marks a claimed job as fully done (job and callback): it leaves the queue.
    fn ack<'a>(&'a self, claim: &'a Claim) -> StoreFuture<'a, ()>;

    /// Whether jobs outlive this process (runners leave unfinished jobs for others at
    /// shutdown), or die with it (runners fail them at shutdown).
    fn durable(&self) -> bool;

    /// Jobs accepted and not yet finished (queued or running anywhere).
    fn backlog<'a>(&'a self) -> StoreFuture<'a, u64> {
        Box::pin(async { Ok(0) })
    }

    /// At shutdown of a store that is not durable: marks every unfinished job failed with
    /// `error` and returns them (so their callbacks can be attempted). Durable stores leave
    /// them for another process and return nothing.
    fn fail_unfinished<'a>(&'a self, error: &'a JobError) -> StoreFuture<'a, Vec<Job>> {
        let _ = error;
        Box::pin(async { Ok(Vec::new()) })
    }
}
