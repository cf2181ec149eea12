//! The Redis job store: jobs shared by every replica, queued in a Redis stream, each held by
//! one runner under a lease.
//!
//! # Data model (`{ns}`: [`RedisSettings::namespace`] in braces, `{courier}` by default)
//!
//! Every key carries the namespace as its hash tag (`{courier}:…`, see
//! [`crate::shared::keys`]), so the scripts' keys share one slot in a Redis Cluster.
//!
//! - **`{ns}:job:{id}`**, a hash per job: `state` (the [`JobStatus`](super::JobStatus)
//!   string), `doc` (the JSON of the whole [`Job`]; its `doc.status` always equals `state`),
//!   `ver` (a counter bumped by every change), and `held` while a submit waits for replicas
//!   to acknowledge it (`durable`). It expires [`RedisSettings::job_ttl`] after it
//!   is written; later changes keep that expiry.
//! - **`{ns}:jobs`**, a stream with one entry `id=<request id>` per queued job, read by the
//!   consumer group **`runners`**. Every process is one consumer ([`RedisSettings::consumer`]).
//!   `XREADGROUP ... >` hands each new entry to exactly one consumer and records it in the
//!   group's pending entries list (PEL), owned by that consumer, until `XACK`.
//! - **Lease**: a pending entry's idle time is its lease. A live runner resets it
//!   (`heartbeat`, `XCLAIM ... 0 JUSTID`, only for entries it still owns); `next` first takes
//!   over entries idle longer than [`RedisSettings::lease`] (`XAUTOCLAIM`), whose runner died.
//! - **Compare-and-set**: `finish` writes only over `state == processing`; `start` and
//!   `update_callback` read the document and its `ver`, change it in Rust (serde, so the
//!   upstream's raw `result` is stored byte for byte) and write it back in a Lua script only
//!   if `ver` is unchanged, retrying on a conflict. This optimistic read-modify-write is used
//!   instead of `WATCH`/`MULTI` because `WATCH` belongs to a connection and ours are
//!   multiplexed across tasks, and instead of editing JSON in Lua because cjson re-encodes
//!   documents lossily (`[]` becomes `{}`, large numbers are rounded).
//!
//! # Why no accepted job is lost
//!
//! 1. `submit` stores the document and adds the stream entry in one Lua script (both or
//!    neither) and returns only after Redis answered, so the 202 follows the write.
//! 2. An entry leaves the PEL only through `ack`, which a runner sends once the job is final
//!    and its callback is done. If the runner dies first, the entry's idle time passes the
//!    lease and another runner's `next` takes it over; `start` counts the takeover (and fails,
//!    rather than runs, a job whose runs ended with their process [`RedisSettings::max_runs`]
//!    times: see `cas`).
//! 3. States only move forward, so a late runner cannot undo a finished job.
//! 4. Nothing is trimmed: acked entries are deleted (`XDEL`), so the stream holds exactly the
//!    queue, and `submit` answers `Full` before the queue reaches `stream_max_len`, so
//!    `MAXLEN ~` (a safety net) never removes an entry that was not acked.
//!
//! Delivery is at least once: a runner stalled past its lease races the runner that took
//! over, and the upstream may be called twice (`takeovers` says so); only one `finish` wins.
//! A job still queued when its document expires is dropped, so `job_ttl` must exceed the
//! longest job deadline plus callback retries.
//!
//! # What Redis must be configured with
//!
//! Redis answers writes from memory; the guarantee above holds across a Redis restart only
//! with the append-only file (`appendonly yes`):
//! - `appendfsync always`: every write reaches the disk before Redis answers, so no 202'd job
//!   is lost even on power loss; each write costs an fsync (latency, throughput).
//! - `appendfsync everysec` (Redis's default): about one second of acknowledged writes can be
//!   lost on power loss or a kernel crash (a crash of `redis-server` alone loses nothing: the
//!   data is in the OS page cache). Jobs 202'd in that second may vanish.
//!
//! RDB snapshots alone lose everything since the last snapshot. Replication is asynchronous,
//! so a failover can lose the latest writes, accepted jobs among them, unless
//! [`RedisSettings::min_replicas`] makes each submit wait for replicas (`durable`).
//! `maxmemory-policy` must be `noeviction`: an evicting policy may delete job documents or the
//! stream itself.
//!
//! # Runtime
//!
//! [`RedisStore::connect`] must be called inside the actix System's main arbiter (a tokio
//! runtime that lives as long as the store): it spawns the task that writes `record`ed
//! entries there. The store itself is `Send + Sync` and may be used from every worker thread.

mod cas;
mod durable;
mod errors;
mod queue;
mod records;
mod scripts;
mod settings;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::mpsc;

use super::{CallbackState, Claim, Job, JobStore, Start, StoreError, StoreFuture};
use crate::shared::keys::key_in;
use crate::shared::{RedisConn, RedisEndpoint, RedisHealth};
use errors::Health;
pub use errors::OPERATION_LABELS;
use scripts::Scripts;
pub use settings::{default_consumer_name, RedisSettings};

/// The consumer group every runner reads the queue through.
const GROUP: &str = "runners";

/// The key names of one namespace.
#[derive(Debug)]
struct Keys {
    job_prefix: String,
    stream: String,
}

impl Keys {
    fn new(namespace: &str) -> Keys {
        Keys { job_prefix: key_in(namespace, "job:"), stream: key_in(namespace, "jobs") }
    }

    fn job(&self, id: &str) -> String {
        format!("{}{id}", self.job_prefix)
    }
}

/// Jobs and the job queue in Redis, shared by every replica. See the module documentation.
pub struct RedisStore {
    /// Multiplexed, reconnecting (or cluster) connection for every non-blocking call.
    conn: RedisConn,
    /// Opens the dedicated connections of blocking reads.
    endpoint: RedisEndpoint,
    /// Idle dedicated connections for blocking calls, with the generation of the node they go
    /// to (a Sentinel failover changes it; the lock is never held across an await).
    idle_blocking: Mutex<Vec<(u64, RedisConn)>>,
    keys: Keys,
    settings: RedisSettings,
    scripts: Scripts,
    /// Where the next `XAUTOCLAIM` scan of the pending entries starts.
    autoclaim_cursor: ArcSwap<String>,
    records: mpsc::Sender<Job>,
    dropped_records: Arc<AtomicU64>,
    health: Health,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("namespace", &self.settings.namespace)
            .field("consumer", &self.settings.consumer)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects, creates the consumer group if needed and starts the record writer on the
    /// current runtime (call it in the actix System's main arbiter). `Unavailable` when the
    /// settings cannot work or Redis does not answer (each of the three steps is bounded by
    /// `op_timeout`); the error text never contains the URL.
    pub async fn connect(
        endpoint: impl Into<RedisEndpoint>,
        settings: RedisSettings,
    ) -> Result<RedisStore, StoreError> {
        RedisStore::connect_with(endpoint, settings, None).await
    }

    /// [`RedisStore::connect`], reporting the outcome of every Redis call to `health` (the
    /// replica's view of Redis: readiness, shared-state mode, `courier_redis_errors_total`).
    pub async fn connect_with(
        endpoint: impl Into<RedisEndpoint>,
        settings: RedisSettings,
        health: Option<Arc<dyn RedisHealth>>,
    ) -> Result<RedisStore, StoreError> {
        if let Some(problem) = settings.problem() {
            return Err(StoreError::Unavailable(format!("invalid Redis settings: {problem}")));
        }
        let endpoint = endpoint.into();
        if let Some(problem) = endpoint.problem() {
            return Err(StoreError::Unavailable(problem.into()));
        }
        let keys = Keys::new(&settings.namespace);
        let limit = settings.op_timeout;
        let health = Health::new(health);

        // One plain connection first: it fails fast and clearly, and becomes the first
        // dedicated connection for blocking reads.
        let generation = endpoint.generation();
        let first = health
            .bounded("connect", limit, async {
                endpoint.connect_dedicated(limit).await.map_err(health.fail("connect"))
            })
            .await?;
        health
            .bounded("create group", limit, async {
                queue::create_group(&mut first.clone(), &keys.stream).await.map_err(health.fail("create group"))
            })
            .await?;

        let conn = health
            .bounded("connect", limit, async { endpoint.connect(limit).await.map_err(health.fail("connect")) })
            .await?;

        let dropped_records = Arc::new(AtomicU64::new(0));
        let (records, queue) = mpsc::channel(settings.record_queue);
        tokio::spawn(records::write(records::Writer {
            conn: conn.clone(),
            queue,
            job_prefix: keys.job_prefix.clone(),
            ttl_ms: settings.job_ttl.as_millis() as u64,
            op_timeout: limit,
            dropped: dropped_records.clone(),
            health: health.clone(),
        }));

        Ok(RedisStore {
            conn,
            endpoint,
            idle_blocking: Mutex::new(vec![(generation, first)]),
            keys,
            settings,
            scripts: Scripts::new(),
            autoclaim_cursor: ArcSwap::from_pointee("0-0".to_string()),
            records,
            dropped_records,
            health,
        })
    }

    /// How many `record`ed entries never reached Redis (queue full, or the write failed).
    pub fn dropped_records(&self) -> u64 {
        self.dropped_records.load(Ordering::Relaxed)
    }

    /// The settings the store runs with.
    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    async fn submit_job(&self, job: &Job) -> Result<(), StoreError> {
        let doc = encode(job)?;
        let outcome: i64 = self
            .scripts
            .submit
            .key(self.keys.job(job.id()))
            .key(&self.keys.stream)
            .arg(job.doc.status.as_str())
            .arg(doc)
            .arg(self.settings.job_ttl.as_millis() as u64)
            .arg(self.settings.stream_max_len)
            .arg(job.id())
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(self.health.fail("submit"))?;
        match outcome {
            1 => Ok(()),
            0 => Err(StoreError::Exists),
            -1 => Err(StoreError::Full),
            _ => Err(StoreError::Unavailable(durable::HELD_ELSEWHERE.into())),
        }
    }

    async fn get_job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let doc: Option<String> = redis::cmd("HGET")
            .arg(self.keys.job(id))
            .arg("doc")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(self.health.fail("get"))?;
        doc.as_deref().map(decode).transpose()
    }

    /// Bounds a call by `op_timeout`, refreshing the connection first when the last call
    /// failed, and reports an answer.
    fn bounded<'a, T: Send + 'a>(
        &'a self,
        op: &'static str,
        call: impl Future<Output = Result<T, StoreError>> + Send + 'a,
    ) -> StoreFuture<'a, T> {
        self.bounded_for(op, self.settings.op_timeout, call)
    }

    /// [`RedisStore::bounded`] by `limit`.
    fn bounded_for<'a, T: Send + 'a>(
        &'a self,
        op: &'static str,
        limit: Duration,
        call: impl Future<Output = Result<T, StoreError>> + Send + 'a,
    ) -> StoreFuture<'a, T> {
        Box::pin(async move {
            let answer = self
                .health
                .bounded(op, limit, async {
                    self.health.refresh(&self.conn).await;
                    call.await
                })
                .await;
            self.answered(&answer);
            answer
        })
    }

    /// Reports that Redis answered, when it did (a refusal such as `Exists` is an answer).
    fn answered<T>(&self, answer: &Result<T, StoreError>) {
        if matches!(answer, Ok(_) | Err(StoreError::Exists | StoreError::Full)) {
            self.health.answered();
        }
    }
}

impl JobStore for RedisStore {
    fn submit<'a>(&'a self, job: &'a Job) -> StoreFuture<'a, ()> {
        if self.settings.min_replicas == 0 {
            return self.bounded("submit", self.submit_job(job));
        }
        // Bounded step by step inside (see `durable`).
        Box::pin(async move {
            self.health.refresh(&self.conn).await;
            let answer = self.submit_replicated(job).await;
            self.answered(&answer);
            answer
        })
    }

    fn record(&self, job: Job) {
        if self.records.try_send(job).is_err() {
            self.dropped_records.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Job>> {
        self.bounded("get", self.get_job(id))
    }

    fn next<'a>(&'a self, max: usize, wait: Duration) -> StoreFuture<'a, Vec<Claim>> {
        // Bounded inside: it answers within `wait + op_timeout`.
        Box::pin(async move {
            self.health.refresh(&self.conn).await;
            let answer = self.next_claims(max, wait).await;
            self.answered(&answer);
            answer
        })
    }

    fn heartbeat<'a>(&'a self, claims: &'a [Claim]) -> StoreFuture<'a, ()> {
        self.bounded("heartbeat", self.renew(claims))
    }

    fn start<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Start>> {
        // A held job is left alone until its submit settles it (see `durable`).
        let limit = self.hold_limit() + self.settings.op_timeout;
        self.bounded_for("start", limit, async move {
            self.await_hold(id).await?;
            self.start_job(id).await
        })
    }

    fn release<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        self.bounded("release", self.release_job(id))
    }

    fn finish<'a>(&'a self, job: &'a Job) -> StoreFuture<'a, bool> {
        self.bounded("finish", self.finish_job(job))
    }

    fn update_callback<'a>(&'a self, id: &'a str, callback: &'a CallbackState) -> StoreFuture<'a, ()> {
        self.bounded("update callback", self.set_callback(id, callback))
    }

    fn ack<'a>(&'a self, claim: &'a Claim) -> StoreFuture<'a, ()> {
        self.bounded("ack", self.acknowledge(claim))
    }

    fn durable(&self) -> bool {
        true
    }

    /// The stream's length: acknowledged entries are deleted, so it holds exactly the jobs
    /// queued or running (including finished ones whose callback is still being delivered).
    fn backlog<'a>(&'a self) -> StoreFuture<'a, u64> {
        self.bounded("backlog", async {
            redis::cmd("XLEN")
                .arg(&self.keys.stream)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(self.health.fail("backlog"))
        })
    }
}

fn encode(job: &Job) -> Result<String, StoreError> {
    serde_json::to_string(job).map_err(|_| StoreError::Unavailable("a job could not be encoded".into()))
}

/// Reads a stored job document; a document nested deeper than any replica writes, or not a
/// job, is an error, never a crash. (Public for the fuzz targets.)
pub fn decode(doc: &str) -> Result<Job, StoreError> {
    crate::json::check_depth(doc.as_bytes(), crate::json::RECORD_MAX_DEPTH)
        .map_err(|_| StoreError::Unavailable("a stored job nests too deep to be read".into()))?;
    serde_json::from_str(doc).map_err(|_| StoreError::Unavailable("a stored job is not a valid document".into()))
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    #[test]
    fn keys_are_namespaced() {
        let keys = Keys::new("courier");
        assert_eq!(keys.job("r-1"), "{courier}:job:r-1");
        assert_eq!(keys.stream, "{courier}:jobs");
    }

    #[actix_rt::test]
    async fn a_bad_url_is_refused_without_echoing_it() {
        let url = SecretString::from("http://user:hunter2@example.invalid/");
        let err = RedisStore::connect(&url, RedisSettings::default()).await.unwrap_err();
        assert_eq!(err, StoreError::Unavailable("the Redis URL is not valid".into()));
    }

    #[actix_rt::test]
    async fn a_tls_url_is_tried_and_a_failure_never_echoes_it() {
        let url = SecretString::from("rediss://:hunter2@127.0.0.1:1/");
        let err = RedisStore::connect(&url, RedisSettings::default()).await.unwrap_err();
        assert!(err.to_string().contains("redis connect: ") && !err.to_string().contains("hunter2"), "{err}");
    }

    #[actix_rt::test]
    async fn unworkable_settings_are_refused_before_connecting() {
        let url = SecretString::from("redis://127.0.0.1:1/");
        let settings = RedisSettings { namespace: String::new(), ..RedisSettings::default() };
        let err = RedisStore::connect(&url, settings).await.unwrap_err();
        assert_eq!(err, StoreError::Unavailable("invalid Redis settings: namespace is empty".into()));
    }
}
