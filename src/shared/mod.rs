//! State shared by several courier replicas through Redis (`REDIS_URL`): the upstream rate
//! budget, the upstream token, and a second level of the response cache. (Jobs have their own
//! store, `jobs::redis`.)
//!
//! Redis is a dependency courier must survive: every call is bounded by a timeout, and a
//! failure marks shared state *degraded*. While degraded, callers fall back to what one
//! replica can do alone (a local share of the budget, its own token, the first cache level),
//! Redis is not asked again for a second, so a dead Redis costs no timeouts on the request
//! path, and the first success after that restores shared mode by itself. `/readyz`,
//! `/admin/state` and `courier_shared_state{mode}` say which mode a replica is in.

pub mod budget;
pub mod cache;
pub mod token;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::{ExposeSecret, SecretString};
use slog::{info, o, warn, Logger};

use crate::metrics::Metrics;

/// How long a degraded replica leaves Redis alone before trying it again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

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

/// The connection to Redis for shared state, with its health.
pub struct SharedRedis {
    conn: ConnectionManager,
    namespace: String,
    timeout: Duration,
    up: AtomicBool,
    base: Instant,
    /// Milliseconds since `base` after which a degraded replica may try again.
    retry_at_ms: AtomicU64,
    metrics: Arc<Metrics>,
    log: Logger,
}

impl SharedRedis {
    /// Connects (bounded by `timeout`); every later call is bounded by it too.
    pub async fn connect(
        url: &SecretString,
        namespace: &str,
        timeout: Duration,
        metrics: Arc<Metrics>,
        log: &Logger,
    ) -> Result<SharedRedis, Degraded> {
        let client = redis::Client::open(url.expose_secret()).map_err(|_| Degraded("the Redis URL is not valid"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_number_of_retries(0);
        let conn = tokio::time::timeout(timeout, ConnectionManager::new_with_config(client, config))
            .await
            .map_err(|_| Degraded("connect timed out"))?
            .map_err(|_| Degraded("cannot connect"))?;
        set_mode(&metrics, "shared");
        Ok(SharedRedis {
            conn,
            namespace: namespace.to_owned(),
            timeout,
            up: AtomicBool::new(true),
            base: Instant::now(),
            retry_at_ms: AtomicU64::new(0),
            metrics,
            log: log.new(o!("component" => "shared_state")),
        })
    }

    /// A key in courier's namespace.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.namespace)
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
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.run_within(op, self.timeout, call).await
    }

    /// Like [`SharedRedis::run`], bounded by `limit` (shorter than the default, for calls on
    /// the request path such as cache reads).
    pub async fn run_within<T, F, Fut>(&self, op: &'static str, limit: Duration, call: F) -> Result<T, Degraded>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.should_try() {
            return Err(Degraded("degraded; not retried yet"));
        }
        let limit = limit.min(self.timeout);
        let outcome = tokio::time::timeout(limit, call(self.conn.clone())).await;
        match outcome {
            Ok(Ok(value)) => {
                self.mark_up();
                Ok(value)
            }
            Ok(Err(_)) => {
                self.mark_down(op, "error");
                Err(Degraded("redis error"))
            }
            // Also a call with a short bound (a cache read on the request path): a Redis that
            // slow is treated as down for a second, which costs nothing but sharing (the local
            // fallbacks respect the limits) and keeps the request path fast.
            Err(_) => {
                self.mark_down(op, "timeout");
                Err(Degraded("redis timed out"))
            }
        }
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            set_mode(&self.metrics, "shared");
            info!(self.log, "shared_state_restored");
        }
    }

    fn mark_down(&self, op: &'static str, why: &'static str) {
        let next = self.base.elapsed() + RETRY_AFTER_FAILURE;
        self.retry_at_ms.store(next.as_millis() as u64, Ordering::Release);
        self.metrics.redis_errors.with_label_values(&[op]).inc();
        if self.up.swap(false, Ordering::AcqRel) {
            set_mode(&self.metrics, "degraded");
            warn!(self.log, "shared_state_degraded"; "operation" => op, "error" => why);
        }
    }
}
