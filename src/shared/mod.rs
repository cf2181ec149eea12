//! State shared by several courier replicas through Redis (`REDIS_URL`): the upstream rate
//! budget, the upstream token, a second level of the response cache, and the counts of the
//! quota windows. (Jobs have their own store, `jobs::redis`.) Every connection to Redis is
//! made from one [`RedisEndpoint`] (TLS, the ACL user), every key named by [`keys`].
//!
//! Redis is a dependency courier must survive: every call is bounded by a timeout, and a
//! failure marks shared state *degraded*. While degraded, callers fall back to what one
//! replica can do alone (a local share of the budget, its own token, the first cache level),
//! Redis is not asked again for a second, so a dead Redis costs no timeouts on the request
//! path, and the first success after that restores shared mode by itself. `/readyz`,
//! `/admin/state` and `courier_shared_state{mode}` say which mode a replica is in.
//!
//! The job store talks to the same Redis on connections of its own and reports every outcome
//! here ([`RedisHealth`]), so a replica has one view of Redis: a job store that fails makes it
//! degraded (and is counted in `courier_redis_errors_total`), one that answers again restores
//! shared mode at that moment, not at the next shared-state call.
//!
//! After an outage, a connection's last reconnect attempt may have failed while Redis was
//! down; the next call would await that failed attempt and fail without reaching Redis. So a
//! connection whose last call failed is first refreshed with a `PING` (which starts a new
//! reconnect when it meets that stale failure), and the call itself goes to the Redis that is
//! back instead of counting one more error and degrading the replica for another second.
//!
//! With Sentinels, the primary is the one they name ([`sentinel::Target`]), followed across
//! failovers: every connection to it ([`follow::FollowedConn`]) goes where the target points now.

pub mod budget;
pub mod cache;
pub mod conn;
pub mod credentials;
pub mod endpoint;
pub mod fleet;
pub mod follow;
pub mod keys;
pub mod lockout;
pub mod quota;
pub mod refusal;
mod reopen;
pub mod rotating;
pub mod sentinel;
pub mod token;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::RedisError;
use slog::{info, o, warn, Logger};

use crate::metrics::Metrics;
pub use conn::RedisConn;
pub use endpoint::{ConnectError, RedisEndpoint};

/// How long a degraded replica leaves Redis alone before trying it again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// The `operation` label values of shared-state calls in `courier_redis_errors_total`.
const OPERATIONS: [&str; 21] = [
    "budget_acquire",
    "budget_pause",
    "budget_cap",
    "token_read",
    "token_lock",
    "token_unlock",
    "token_generation",
    "token_write",
    "cache_get",
    "cache_set",
    "cache_purge",
    "quota_reserve",
    "quota_release",
    "quota_set",
    "quota_adopt",
    "quota_read",
    "fleet_heartbeat",
    "fleet_leave",
    "lockout_fail",
    "lockout_lift",
    "lockout_list",
];

/// Creates the `courier_redis_errors_total` series of `operations` at 0.
pub fn count_errors_of(metrics: &Metrics, operations: &[&str]) {
    for op in operations {
        metrics.redis_errors.with_label_values(&[op]);
    }
}

/// Without Redis: the shared-state mode `off`, and every `courier_redis_errors_total` series
/// (shared state's and the job store's) and `courier_redis_refusals_total` series at 0, so dashboards and alerts that query them find
/// them on every replica from its start, whether it has Redis or not.
pub fn run_without_redis(metrics: &Metrics, job_store_operations: &[&str]) {
    set_mode(metrics, "off");
    count_errors_of(metrics, &OPERATIONS);
    count_errors_of(metrics, job_store_operations);
    count_refusals(metrics);
}

/// Creates every `courier_redis_refusals_total` series at 0.
fn count_refusals(metrics: &Metrics) {
    for refusal in endpoint::Refusal::ALL {
        metrics.redis_refusals.with_label_values(&[refusal.label()]);
    }
}

/// Sets the one-hot `courier_shared_state{mode}` gauge.
pub fn set_mode(metrics: &Metrics, mode: &str) {
    for m in ["off", "shared", "degraded"] {
        metrics.shared_state.with_label_values(&[m]).set(i64::from(m == mode));
    }
}

/// Why a shared-state call did not happen or failed (never carries the URL or a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shared state unavailable: {0}")]
pub struct Degraded(pub &'static str);

/// What failed, in a few words that hold no secret: the kind of failure or the server's error
/// code, never the URL (it may hold the password), the server's full message or an argument.
pub fn describe(e: &RedisError) -> String {
    if let Some(refused) = endpoint::refusal(e) {
        refused.into()
    } else if e.is_timeout() {
        "timed out".into()
    } else if e.is_connection_refusal() {
        "connection refused".into()
    } else if e.is_connection_dropped() {
        "connection lost".into()
    } else if e.is_io_error() {
        "I/O error".into()
    } else if let Some(code) = e.code() {
        format!("server error {code}")
    } else {
        e.category().to_string()
    }
}

/// The outcomes of Redis calls made on other connections than [`SharedRedis`]'s (the job
/// store's), so the replica's view of Redis (`/readyz`, `courier_shared_state`,
/// `courier_redis_errors_total`) follows them too.
pub trait RedisHealth: Send + Sync {
    /// A call got an answer: Redis works.
    fn answered(&self);
    /// A call failed or timed out: `operation` is a bounded label value, `why` says what failed
    /// (no secret).
    fn failed(&self, operation: &'static str, why: &str);
    /// Creates the error counters of these operations at 0.
    fn operations(&self, operations: &[&'static str]);
}

/// The connection to Redis for shared state, with its health.
pub struct SharedRedis {
    conn: RedisConn,
    namespace: String,
    timeout: Duration,
    up: AtomicBool,
    /// This connection's last call failed: refresh it before the next one.
    suspect: AtomicBool,
    /// A certificate or ACL refusal was logged since Redis last worked.
    refusal_logged: AtomicBool,
    base: Instant,
    /// Milliseconds since `base` after which a degraded replica may try again.
    retry_at_ms: AtomicU64,
    metrics: Arc<Metrics>,
    log: Logger,
}

impl SharedRedis {
    /// Connects (bounded by `timeout`); every later call is bounded by it too. A refused
    /// certificate or ACL user is said as such ([`describe`]).
    pub async fn connect(
        endpoint: impl Into<RedisEndpoint>,
        namespace: &str,
        timeout: Duration,
        metrics: Arc<Metrics>,
        log: &Logger,
    ) -> Result<SharedRedis, ConnectError> {
        let endpoint = endpoint.into();
        if let Some(problem) = endpoint.problem() {
            return Err(ConnectError(problem.into()));
        }
        let conn = tokio::time::timeout(timeout, endpoint.connect(timeout))
            .await
            .map_err(|_| ConnectError("connect timed out".into()))?
            .map_err(|e| ConnectError(describe(&e)))?;
        let log = log.new(o!("component" => "shared_state"));
        if let Some(queued) = keys::legacy_queue(&conn, namespace).await {
            warn!(log, "legacy_jobs_queued"; "jobs" => queued, "stream" => format!("{namespace}:jobs"),
                "action" => "run by the older version only: see docs/operations.md, Redis in production");
        }
        set_mode(&metrics, "shared");
        count_errors_of(&metrics, &OPERATIONS);
        count_refusals(&metrics);
        Ok(SharedRedis {
            conn,
            namespace: namespace.to_owned(),
            timeout,
            up: AtomicBool::new(true),
            suspect: AtomicBool::new(false),
            refusal_logged: AtomicBool::new(false),
            base: Instant::now(),
            retry_at_ms: AtomicU64::new(0),
            metrics,
            log,
        })
    }

    /// A key in courier's namespace, with its hash tag ([`keys`]).
    pub fn key(&self, suffix: &str) -> String {
        keys::key_in(&self.namespace, suffix)
    }

    /// Whether shared state works now (the last call succeeded).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Whether a call should be made now: always when up; when degraded, once per second.
    pub fn should_try(&self) -> bool {
        self.is_up() || self.base.elapsed().as_millis() as u64 >= self.retry_at_ms.load(Ordering::Acquire)
    }

    /// Runs one Redis operation on a connection, bounded by the timeout, and records the
    /// health it shows. When degraded and not yet due for another try, fails at once.
    pub async fn run<T, F, Fut>(&self, op: &'static str, call: F) -> Result<T, Degraded>
    where
        F: FnOnce(RedisConn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.run_within(op, self.timeout, call).await
    }

    /// Like [`SharedRedis::run`], bounded by `limit` (shorter than the default, for calls on
    /// the request path such as cache reads).
    pub async fn run_within<T, F, Fut>(&self, op: &'static str, limit: Duration, call: F) -> Result<T, Degraded>
    where
        F: FnOnce(RedisConn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.should_try() {
            return Err(Degraded("degraded; not retried yet"));
        }
        let limit = limit.min(self.timeout);
        let outcome = tokio::time::timeout(limit, async {
            if self.suspect.load(Ordering::Acquire) {
                // See the module documentation: meets a stale failed reconnect, if any, so the
                // call does not. Its own outcome says nothing the call will not.
                let _: redis::RedisResult<()> = redis::cmd("PING").query_async(&mut self.conn.clone()).await;
            }
            call(self.conn.clone()).await
        })
        .await;
        match outcome {
            Ok(Ok(value)) => {
                self.suspect.store(false, Ordering::Release);
                self.mark_up();
                Ok(value)
            }
            Ok(Err(e)) => {
                self.failed_here();
                self.mark_down(op, &describe(&e));
                Err(Degraded("redis error"))
            }
            // Also a call with a short bound (a cache read on the request path): a Redis that
            // slow is treated as down for a second, which costs nothing but sharing (the local
            // fallbacks respect the limits) and keeps the request path fast.
            Err(_) => {
                self.failed_here();
                self.mark_down(op, &format!("no answer within {} ms", limit.as_millis()));
                Err(Degraded("redis timed out"))
            }
        }
    }

    fn mark_up(&self) {
        self.refusal_logged.store(false, Ordering::Release);
        if !self.up.swap(true, Ordering::AcqRel) {
            set_mode(&self.metrics, "shared");
            info!(self.log, "shared_state_restored");
        }
    }

    /// A call on this connection failed: refresh it before the next call, and leave Redis
    /// alone for a second. (A failure of the job store's calls does not delay these: each
    /// connection keeps its own pace of trying.)
    fn failed_here(&self) {
        self.suspect.store(true, Ordering::Release);
        let next = self.base.elapsed() + RETRY_AFTER_FAILURE;
        self.retry_at_ms.store(next.as_millis() as u64, Ordering::Release);
    }

    /// Counts a failed call and, on the first since Redis last worked, degrades the replica
    /// with one log line naming the operation and what failed. A refused certificate or ACL
    /// user does not heal by itself (a rotated password, an expired certificate), so the first
    /// refusal is logged too when the outage began otherwise (typically a dropped connection
    /// whose reconnects are then refused). A refusal is counted by kind as well.
    fn mark_down(&self, op: &'static str, why: &str) {
        self.metrics.redis_errors.with_label_values(&[op]).inc();
        let refusal = endpoint::Refusal::of_text(why);
        if let Some(refusal) = refusal {
            self.metrics.redis_refusals.with_label_values(&[refusal.label()]).inc();
        }
        let refused = refusal.is_some();
        if self.up.swap(false, Ordering::AcqRel) {
            self.refusal_logged.store(refused, Ordering::Release);
            set_mode(&self.metrics, "degraded");
            warn!(self.log, "shared_state_degraded"; "operation" => op, "error" => why);
        } else if refused && !self.refusal_logged.swap(true, Ordering::AcqRel) {
            warn!(self.log, "shared_state_refused"; "operation" => op, "error" => why);
        }
    }
}

impl RedisHealth for SharedRedis {
    fn answered(&self) {
        self.mark_up();
    }

    fn failed(&self, operation: &'static str, why: &str) {
        self.mark_down(operation, why);
    }

    fn operations(&self, operations: &[&'static str]) {
        count_errors_of(&self.metrics, operations);
    }
}
