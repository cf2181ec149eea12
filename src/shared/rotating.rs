//! A long-lived connection that follows the credentials of its endpoint: a reconnecting
//! connection (single Redis, Cluster or the primary Sentinels name) opened with the current
//! user and password, replaced by one opened with the new pair at its first call after a
//! reload published one ([`super::credentials`]).
//!
//! Why replace it rather than let it be: the redis crate's reconnecting connections keep the
//! credentials they were built with, and reconnect with them after any drop. Once the old
//! password is removed from the ACL user, such a connection would be refused at its next
//! reconnect, long after the rotation looked done. Replaced at its next call, no reconnect
//! after a rotation can use the old password, so the operator may remove it as soon as the
//! reload succeeded (connections opened before stay authenticated: Redis checks a password
//! only when a connection authenticates).
//!
//! Calls in flight keep the connection they started on (each holds a clone) and finish on it;
//! the old connection closes when its last call is done. Opening the new one is part of the
//! first call after the reload, bounded by that call's timeout like any call; if it fails
//! (Redis down at that moment), the call fails as in any outage and the next call tries again.
//!
//! A connection refused by Redis (the user or password, or a certificate: see
//! [`Refusal`]) is replaced the same way at the next call, with the credentials in use then.
//! Why: the redis crate's reconnecting connection retries a failed reconnect only after an I/O
//! error, so one refused reconnect would leave it failing every call even after the password
//! is back at Redis or rotated.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use super::refusal::Refusal;
use super::reopen::Reopened;
use super::{RedisConn, RedisEndpoint};

/// A connection replaced when its endpoint's credentials change. Clones share it.
#[derive(Clone)]
pub struct RotatingConn(Arc<Inner>);

struct Inner {
    endpoint: RedisEndpoint,
    timeout: Duration,
    current: Reopened<Current>,
}

struct Current {
    /// The version of the credentials `conn` was opened with.
    version: u64,
    conn: RedisConn,
    /// Redis refused it (see the module documentation): replace it at the next call.
    refused: AtomicBool,
}

impl Current {
    fn new(version: u64, conn: RedisConn) -> Current {
        Current { version, conn, refused: AtomicBool::new(false) }
    }

    /// Notes a refusal of this connection, from a call's answer.
    fn saw<T>(&self, answer: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &answer {
            if Refusal::of(e).is_some_and(Refusal::of_connection) {
                self.refused.store(true, Ordering::Release);
            }
        }
        answer
    }
}

impl RotatingConn {
    /// Wraps `conn`, opened with the credentials of `version`; replacements are opened by
    /// `endpoint` with `timeout`.
    pub(super) fn new(endpoint: RedisEndpoint, timeout: Duration, version: u64, conn: RedisConn) -> RotatingConn {
        RotatingConn(Arc::new(Inner { endpoint, timeout, current: Reopened::new(Current::new(version, conn)) }))
    }

    /// The connection opened with the current credentials, opening it first after a rotation
    /// or a refusal.
    pub async fn current(&self) -> RedisResult<RedisConn> {
        Ok(self.current_entry().await?.conn.clone())
    }

    async fn current_entry(&self) -> RedisResult<Arc<Current>> {
        let inner = &self.0;
        let fresh = |current: &Current| {
            current.version == inner.endpoint.credentials_version() && !current.refused.load(Ordering::Acquire)
        };
        let open = || async {
            let (version, conn) = inner.endpoint.open(inner.timeout).await?;
            Ok(Current::new(version, conn))
        };
        inner.current.get(fresh, open).await
    }
}

impl ConnectionLike for RotatingConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let current = self.current_entry().await?;
            let answer = current.conn.clone().req_packed_command(cmd).await;
            current.saw(answer)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let current = self.current_entry().await?;
            let answer = current.conn.clone().req_packed_commands(cmd, offset, count).await;
            current.saw(answer)
        })
    }

    fn get_db(&self) -> i64 {
        self.0.current.load().conn.get_db()
    }
}
