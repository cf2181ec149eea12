//! Durable acceptance (`COURIER_REDIS_MIN_REPLICAS`): a job is accepted only once at least
//! `min_replicas` replicas of the primary hold it, so a failover to one of them cannot lose it.
//!
//! Redis replication is asynchronous; `WAIT n timeout` after a write blocks until `n` replicas
//! acknowledged every earlier write of the same connection. So the submit runs on a dedicated
//! connection (a `WAIT` on the shared multiplexed connection would stall every other call
//! behind it for up to its timeout): the script that stores the job, then `WAIT` on the same
//! connection, then the call that settles the job:
//!
//! 1. The script stores the job and its stream entry as always, plus a hold token (`held`).
//! 2. `WAIT min_replicas wait_timeout`.
//! 3. Enough acknowledgements: the hold is ended (`CONFIRM`) and the answer is 202. Too few in
//!    time: the job is deleted again (`WITHDRAW`, only while this submit still holds it) and
//!    the answer is 503 `job_store_unavailable`: nothing was accepted, and a retry with the same
//!    `X-Request-Id` submits it afresh. A submit that fails or is dropped after the write (the
//!    client went away, a bound passed) withdraws the job too, in the background.
//!
//! Why the hold: a runner reads the stream entry at once, long before `WAIT` answers. A runner
//! that finds a held job waits (polling, up to `wait_timeout + op_timeout`) until the hold ends
//! or the job is gone, so a withdrawn job is never started. The hold is waited out only if its
//! submit never settled it (its process died, or Redis failed in between): the runner then
//! starts the job, which ends the hold, and a late `WITHDRAW` finds it started and leaves it.
//! If the replicas acknowledged the job but the `CONFIRM` was lost in a failover, the new
//! primary holds the job with its hold: runners wait the hold out and run it, as the 202 said.
//!
//! What remains (stated in docs/operations.md): a job answered 503 may still run when its
//! submit could not withdraw it (Redis failing right then, the submitting process gone) or when
//! the primary fails over after the replicas got the job but before they got its withdrawal;
//! a client that retries with the same `X-Request-Id` then gets that job (202), never a second.

use std::time::Duration;

use redis::Script;

use super::RedisStore;
use crate::jobs::{Job, StoreError};
use crate::shared::RedisConn;

/// How often a runner looks again at a held job.
const HOLD_POLL: Duration = Duration::from_millis(10);

/// The text of a submit that met another submit of the same id waiting for its replicas.
pub(super) const HELD_ELSEWHERE: &str = "redis submit: another submit of this request id awaits its replicas";

/// A job stored and held, not yet confirmed or withdrawn: dropped unsettled (the caller gave
/// up), it withdraws the job in the background.
struct Unsettled {
    conn: RedisConn,
    withdraw: Script,
    key: String,
    token: String,
    armed: bool,
}

impl Unsettled {
    fn settle(&mut self) {
        self.armed = false;
    }
}

impl Drop for Unsettled {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (mut conn, withdraw, key, token) =
            (self.conn.clone(), self.withdraw.clone(), std::mem::take(&mut self.key), std::mem::take(&mut self.token));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _: Result<i64, _> = withdraw.key(key).arg(token).invoke_async(&mut conn).await;
            });
        }
    }
}

impl RedisStore {
    /// Stores a job, waits for `min_replicas` to acknowledge it, and confirms or withdraws it.
    /// See the module documentation. Each step is bounded: the store by `op_timeout`, the wait
    /// by `wait_timeout + op_timeout`, the confirmation or withdrawal by `op_timeout`.
    pub(super) async fn submit_replicated(&self, job: &Job) -> Result<(), StoreError> {
        let limit = self.settings.op_timeout;
        let doc = super::encode(job)?;
        let key = self.keys.job(job.id());
        let token = format!("{:016x}", rand::random::<u64>());
        let (pooled, (generation, conn)) = match self.pooled() {
            Some(found) => (true, found),
            None => (false, self.open_dedicated("submit").await?),
        };
        let mut unsettled = Unsettled {
            conn: self.conn.clone(),
            withdraw: self.scripts.withdraw.clone(),
            key: key.clone(),
            token: token.clone(),
            armed: true,
        };
        let (key_ref, doc_ref, token_ref) = (&key, &doc, &token);
        let store = |mut conn: RedisConn| async move {
            let stored: i64 = self
                .scripts
                .submit
                .key(key_ref)
                .key(&self.keys.stream)
                .arg(job.doc.status.as_str())
                .arg(doc_ref)
                .arg(self.settings.job_ttl.as_millis() as u64)
                .arg(self.settings.stream_max_len)
                .arg(job.id())
                .arg(token_ref)
                .invoke_async(&mut conn)
                .await?;
            Ok::<_, redis::RedisError>((stored, conn))
        };
        let (stored, mut conn, generation) = self
            .health
            .bounded("submit", limit, async {
                match store(conn).await {
                    Ok((stored, conn)) => Ok((stored, conn, generation)),
                    // A pooled connection that died while idle (Redis restarted): once more on a
                    // new one. Storing is idempotent under the same hold token.
                    Err(e) if pooled && (e.is_io_error() || e.is_connection_dropped()) => {
                        let (generation, fresh) = self.open_dedicated("submit").await?;
                        let (stored, conn) = store(fresh).await.map_err(self.health.fail("submit"))?;
                        Ok((stored, conn, generation))
                    }
                    Err(e) => Err(self.health.fail("submit")(e)),
                }
            })
            .await?;
        if stored != 1 {
            unsettled.settle();
            self.keep(generation, conn);
            return Err(match stored {
                0 => StoreError::Exists,
                -1 => StoreError::Full,
                _ => StoreError::Unavailable(HELD_ELSEWHERE.into()),
            });
        }
        let needed = self.settings.min_replicas;
        let wait = self.settings.wait_timeout;
        let acked: i64 = self
            .health
            .bounded("submit", wait + limit, async {
                let mut call = redis::cmd("WAIT");
                call.arg(needed).arg(wait.as_millis() as u64);
                // On a Cluster, to the node that took the write (the job key's slot).
                conn.query_beside(&call, &key).await.map_err(self.health.fail("submit"))
            })
            .await?;
        self.keep(generation, conn);
        unsettled.settle();
        if acked >= i64::from(needed) {
            // A lost confirmation only delays the job: runners wait the hold out.
            let _ = self.settle(&self.scripts.confirm, &key, &token).await;
            return Ok(());
        }
        // Redis answered; only its replicas are behind: not a Redis failure.
        self.health.answered();
        let withdrawn = self.settle(&self.scripts.withdraw, &key, &token).await;
        let outcome = match withdrawn {
            Ok(1) => "withdrawn",
            Ok(2) => "already started by a runner",
            Ok(_) => "gone",
            Err(_) => "not withdrawn",
        };
        Err(StoreError::Unavailable(format!(
            "redis submit: {acked} of {needed} replicas acknowledged within {} ms; the job was {outcome}",
            wait.as_millis()
        )))
    }

    /// Runs `CONFIRM` or `WITHDRAW` on the shared connection, bounded by `op_timeout`.
    async fn settle(&self, script: &Script, key: &str, token: &str) -> Result<i64, StoreError> {
        self.health
            .bounded("submit", self.settings.op_timeout, async {
                script
                    .key(key)
                    .arg(token)
                    .invoke_async(&mut self.conn.clone())
                    .await
                    .map_err(self.health.fail("submit"))
            })
            .await
    }

    /// The longest a runner leaves a held job alone: the submit's wait, and the bound of the
    /// call that confirms or withdraws it.
    pub(super) fn hold_limit(&self) -> Duration {
        self.settings.wait_timeout + self.settings.op_timeout
    }

    /// Before a runner starts job `id`: waits while a submit holds it, up to
    /// [`RedisStore::hold_limit`]. Returns at once for a job that is not held.
    pub(super) async fn await_hold(&self, id: &str) -> Result<(), StoreError> {
        let key = self.keys.job(id);
        let until = tokio::time::Instant::now() + self.hold_limit();
        loop {
            let held: bool = redis::cmd("HEXISTS")
                .arg(&key)
                .arg("held")
                .query_async(&mut self.conn.clone())
                .await
                .map_err(self.health.fail("start"))?;
            if !held || tokio::time::Instant::now() >= until {
                return Ok(());
            }
            tokio::time::sleep(HOLD_POLL).await;
        }
    }
}
