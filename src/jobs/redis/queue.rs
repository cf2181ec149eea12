//! The queue side: taking jobs (over from dead runners, then new ones), keeping their
//! leases, acknowledging them.
//!
//! A blocking `XREADGROUP` occupies its connection until it answers, so it never runs on the
//! shared multiplexed connection (every other call would queue behind it): it runs on a
//! dedicated connection from a small pool, bounded by `wait + op_timeout`. A dedicated
//! connection that failed or timed out is dropped, not pooled. Entries Redis delivered to a
//! read the caller gave up on stay pending on this consumer; the next `XAUTOCLAIM` after
//! the lease hands them out again.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use redis::aio::ConnectionLike;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::RedisError;

use super::{RedisStore, GROUP};
use crate::jobs::{Claim, StoreError};
use crate::shared::RedisConn;

/// Most idle dedicated connections kept for blocking calls (reads, and `WAIT` after a submit).
const IDLE_BLOCKING_MAX: usize = 32;

/// Creates the consumer group (and the stream) if missing. From `0`, not `$`: jobs queued
/// before the group existed are delivered too.
pub(super) async fn create_group(conn: &mut impl ConnectionLike, stream: &str) -> Result<(), RedisError> {
    let created: Result<(), RedisError> =
        redis::cmd("XGROUP").arg("CREATE").arg(stream).arg(GROUP).arg("0").arg("MKSTREAM").query_async(conn).await;
    match created {
        Err(e) if e.code() != Some("BUSYGROUP") => Err(e),
        _ => Ok(()),
    }
}

impl RedisStore {
    pub(super) async fn next_claims(&self, max: usize, wait: Duration) -> Result<Vec<Claim>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let limit = self.settings.op_timeout;
        let deadline = Instant::now() + wait + limit;
        let mut claims = self.health.bounded("next", limit, self.take_over(max)).await?;
        if claims.len() < max {
            // Having taken some over, do not wait for more.
            let wait = if claims.is_empty() { wait } else { Duration::ZERO };
            let left = deadline.saturating_duration_since(Instant::now());
            match self.health.bounded("next", left, self.read_new(max - claims.len(), wait)).await {
                Ok(new) => claims.extend(new),
                // The taken-over ones are ours now: hand them out rather than sit on them.
                Err(_) if !claims.is_empty() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(claims)
    }

    /// `XAUTOCLAIM`: entries pending on any consumer and idle longer than the lease. The scan
    /// continues where the previous one stopped, so a long pending list is covered over calls.
    async fn take_over(&self, max: usize) -> Result<Vec<Claim>, StoreError> {
        let cursor = self.autoclaim_cursor.load_full();
        let reply: Result<StreamAutoClaimReply, RedisError> = redis::cmd("XAUTOCLAIM")
            .arg(&self.keys.stream)
            .arg(GROUP)
            .arg(&self.settings.consumer)
            .arg(self.settings.lease.as_millis() as u64)
            .arg(cursor.as_str())
            .arg("COUNT")
            .arg(max)
            .query_async(&mut self.conn.clone())
            .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => return self.recover_group(e, "next").await.map(|()| Vec::new()),
        };
        self.autoclaim_cursor.store(Arc::new(reply.next_stream_id));
        Ok(self.to_claims(reply.claimed).await)
    }

    /// `XREADGROUP ... >`: entries never delivered to any consumer, waiting up to `wait`.
    async fn read_new(&self, count: usize, wait: Duration) -> Result<Vec<Claim>, StoreError> {
        let wait_ms = wait.as_millis() as u64;
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP").arg(GROUP).arg(&self.settings.consumer).arg("COUNT").arg(count);
        if wait_ms > 0 {
            read.arg("BLOCK").arg(wait_ms);
        }
        read.arg("STREAMS").arg(&self.keys.stream).arg(">");

        let reply: Result<Option<StreamReadReply>, RedisError> = if wait_ms == 0 {
            read.query_async(&mut self.conn.clone()).await
        } else {
            self.read_blocking(&read).await?
        };
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => return self.recover_group(e, "next").await.map(|()| Vec::new()),
        };
        let entries = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).collect();
        Ok(self.to_claims(entries).await)
    }

    /// Runs a blocking read on a dedicated connection. A pooled connection that turns out
    /// dead (Redis restarted, or the thread that opened it stopped) is replaced once. The
    /// caller bounds the whole; a connection whose read is abandoned is dropped with it.
    async fn read_blocking(
        &self,
        read: &redis::Cmd,
    ) -> Result<Result<Option<StreamReadReply>, RedisError>, StoreError> {
        if let Some((generation, mut conn)) = self.pooled() {
            let reply = read.query_async(&mut conn).await;
            if !matches!(&reply, Err(e) if e.is_io_error() || e.is_unrecoverable_error()) {
                self.pool(generation, conn, &reply);
                return Ok(reply);
            }
        }
        let (generation, mut conn) = self.open_dedicated("next").await?;
        let reply = read.query_async(&mut conn).await;
        self.pool(generation, conn, &reply);
        Ok(reply)
    }

    /// An idle dedicated connection to the current node, if any (those to an earlier node,
    /// before a Sentinel failover, are dropped).
    pub(super) fn pooled(&self) -> Option<(u64, RedisConn)> {
        let generation = self.endpoint.generation();
        let mut idle = self.idle_blocking.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|(g, _)| *g == generation);
        idle.pop()
    }

    /// Keeps a dedicated connection for the next blocking call, unless its call failed (a
    /// failure that may mean the primary moved is reported).
    fn pool<T>(&self, generation: u64, conn: RedisConn, reply: &Result<T, RedisError>) {
        match reply {
            Ok(_) => self.keep(generation, conn),
            Err(e) => self.endpoint.saw(e),
        }
    }

    /// Keeps a dedicated connection whose last call answered, for the next blocking call.
    pub(super) fn keep(&self, generation: u64, conn: RedisConn) {
        let mut idle = self.idle_blocking.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < IDLE_BLOCKING_MAX {
            idle.push((generation, conn));
        }
    }

    /// A new dedicated connection to the current node and its generation, bounded by
    /// `op_timeout`.
    pub(super) async fn open_dedicated(&self, op: &'static str) -> Result<(u64, RedisConn), StoreError> {
        let limit = self.settings.op_timeout;
        let generation = self.endpoint.generation();
        let conn = self
            .health
            .bounded(op, limit, async {
                self.endpoint.connect_dedicated(limit).await.map_err(|e| {
                    self.endpoint.saw(&e);
                    self.health.fail(op)(e)
                })
            })
            .await?;
        Ok((generation, conn))
    }

    /// `NOGROUP` (the stream was deleted under us): recreates the group and reports no jobs;
    /// any other error is `Unavailable`.
    async fn recover_group(&self, e: RedisError, op: &'static str) -> Result<(), StoreError> {
        if e.code() != Some("NOGROUP") {
            return Err(self.health.fail(op)(e));
        }
        create_group(&mut self.conn.clone(), &self.keys.stream).await.map_err(self.health.fail(op))
    }

    /// The claims of stream entries. An entry without a job id cannot be run: it is removed
    /// (best effort) rather than handed out forever.
    async fn to_claims(&self, entries: Vec<StreamId>) -> Vec<Claim> {
        let mut claims = Vec::with_capacity(entries.len());
        for entry in entries {
            match entry.get::<String>("id") {
                Some(id) => claims.push(Claim { id, receipt: entry.id }),
                None => {
                    let claim = Claim { id: String::new(), receipt: entry.id };
                    let _ = self.acknowledge(&claim).await;
                }
            }
        }
        claims
    }

    /// Resets the idle time of the claims this consumer still owns.
    pub(super) async fn renew(&self, claims: &[Claim]) -> Result<(), StoreError> {
        if claims.is_empty() {
            return Ok(());
        }
        let mut call = self.scripts.heartbeat.key(&self.keys.stream);
        call.arg(GROUP).arg(&self.settings.consumer);
        for claim in claims {
            call.arg(&claim.receipt);
        }
        let _renewed: i64 = call.invoke_async(&mut self.conn.clone()).await.map_err(self.health.fail("heartbeat"))?;
        Ok(())
    }

    /// `XACK` and `XDEL` together: the entry leaves the pending list and the stream.
    pub(super) async fn acknowledge(&self, claim: &Claim) -> Result<(), StoreError> {
        redis::pipe()
            .atomic()
            .cmd("XACK")
            .arg(&self.keys.stream)
            .arg(GROUP)
            .arg(&claim.receipt)
            .ignore()
            .cmd("XDEL")
            .arg(&self.keys.stream)
            .arg(&claim.receipt)
            .ignore()
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(self.health.fail("ack"))
    }
}
