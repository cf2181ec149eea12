//! The writer of `record`ed status entries. Sync requests record one entry each, so the
//! caller only puts the job into a bounded channel (never waiting); this task drains it and
//! writes what it finds in one pipeline per round trip. Entries that find the channel full,
//! or whose write fails, are counted as dropped: the status of a sync request is a
//! convenience, its answer has been sent already.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::errors::Health;
use super::scripts::RECORD;
use crate::jobs::Job;
use crate::shared::RedisConn;

/// Most entries written in one pipeline.
const BATCH_MAX: usize = 256;

/// What the writer task owns.
pub(super) struct Writer {
    pub(super) conn: RedisConn,
    pub(super) queue: mpsc::Receiver<Job>,
    pub(super) job_prefix: String,
    pub(super) ttl_ms: u64,
    pub(super) op_timeout: Duration,
    pub(super) dropped: Arc<AtomicU64>,
    pub(super) health: Health,
}

/// Writes entries until every sender (the store) is gone and the channel is drained.
pub(super) async fn write(mut w: Writer) {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    while w.queue.recv_many(&mut batch, BATCH_MAX).await > 0 {
        let mut pipe = redis::pipe();
        let mut queued = 0u64;
        for job in batch.drain(..) {
            let Ok(doc) = serde_json::to_string(&job) else {
                w.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            // EVAL rather than EVALSHA: a pipeline would not reload a script Redis forgot.
            pipe.cmd("EVAL")
                .arg(RECORD)
                .arg(1)
                .arg(format!("{}{}", w.job_prefix, job.id()))
                .arg(job.doc.status.as_str())
                .arg(doc)
                .arg(w.ttl_ms)
                .ignore();
            queued += 1;
        }
        if queued == 0 {
            continue;
        }
        let mut conn = w.conn.clone();
        let written = w
            .health
            .bounded("record", w.op_timeout, async {
                w.health.refresh(&conn).await;
                pipe.query_async::<()>(&mut conn).await.map_err(w.health.fail("record"))
            })
            .await;
        match written {
            Ok(()) => w.health.answered(),
            Err(_) => {
                w.dropped.fetch_add(queued, Ordering::Relaxed);
            }
        }
    }
}
