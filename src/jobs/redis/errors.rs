//! Every Redis failure becomes `StoreError::Unavailable` with a short text naming the
//! operation and the kind of failure: never the URL (it may hold a password), the server's
//! full message or an argument. Each failure, and each answer, is also reported to the
//! replica's view of Redis ([`RedisHealth`]), under a bounded `job_*` operation label.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::RedisError;

use crate::jobs::StoreError;
use crate::shared::{describe, RedisConn, RedisHealth};

/// The `operation` label of each store operation in `courier_redis_errors_total`.
pub(super) const OPERATIONS: [(&str, &str); 13] = [
    ("connect", "job_connect"),
    ("create group", "job_create_group"),
    ("submit", "job_submit"),
    ("record", "job_record"),
    ("get", "job_get"),
    ("next", "job_next"),
    ("heartbeat", "job_heartbeat"),
    ("start", "job_start"),
    ("release", "job_release"),
    ("finish", "job_finish"),
    ("update callback", "job_update_callback"),
    ("ack", "job_ack"),
    ("backlog", "job_backlog"),
];

/// The `operation` labels of the store's calls in `courier_redis_errors_total`.
pub const OPERATION_LABELS: [&str; OPERATIONS.len()] = {
    let mut labels = [""; OPERATIONS.len()];
    let mut i = 0;
    while i < OPERATIONS.len() {
        labels[i] = OPERATIONS[i].1;
        i += 1;
    }
    labels
};

/// The label of `op` (an operation not listed is `job_other`).
fn label(op: &str) -> &'static str {
    OPERATIONS.iter().find(|(name, _)| *name == op).map_or("job_other", |(_, label)| label)
}

/// Where the store's Redis calls report what they show; nowhere when the store runs alone.
/// Also remembers whether the last call failed, so the next one refreshes the connection
/// first (see `shared`'s module documentation).
#[derive(Clone, Default)]
pub(super) struct Health {
    sink: Option<Arc<dyn RedisHealth>>,
    suspect: Arc<AtomicBool>,
}

impl Health {
    pub(super) fn new(sink: Option<Arc<dyn RedisHealth>>) -> Health {
        if let Some(sink) = &sink {
            sink.operations(&OPERATION_LABELS);
        }
        Health { sink, suspect: Arc::default() }
    }

    /// A call got an answer.
    pub(super) fn answered(&self) {
        self.suspect.store(false, Ordering::Release);
        if let Some(sink) = &self.sink {
            sink.answered();
        }
    }

    /// A call failed: reported, and the connection refreshed before the next call.
    fn failed(&self, op: &'static str, why: &str) {
        self.suspect.store(true, Ordering::Release);
        if let Some(sink) = &self.sink {
            sink.failed(label(op), why);
        }
    }

    /// After a failed call: a `PING` that meets a stale failed reconnect, if any, so the
    /// next call does not.
    pub(super) async fn refresh(&self, conn: &RedisConn) {
        if self.suspect.load(Ordering::Acquire) {
            let _: Result<(), RedisError> = redis::cmd("PING").query_async(&mut conn.clone()).await;
        }
    }

    /// Maps a Redis error to `Unavailable` with a short text (the operation and the kind of
    /// failure) and reports it.
    pub(super) fn fail(&self, op: &'static str) -> impl Fn(RedisError) -> StoreError + '_ {
        move |e| {
            let why = describe(&e);
            self.failed(op, &why);
            StoreError::Unavailable(format!("redis {op}: {why}"))
        }
    }

    /// Runs `call` for at most `limit`; past it, `Unavailable`, reported.
    pub(super) async fn bounded<T>(
        &self,
        op: &'static str,
        limit: Duration,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(limit, call).await {
            Ok(answer) => answer,
            Err(_) => {
                let why = format!("no answer within {} ms", limit.as_millis());
                self.failed(op, &why);
                Err(StoreError::Unavailable(format!("redis {op}: {why}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records what is reported.
    #[derive(Default)]
    struct Seen(Mutex<Vec<String>>);

    impl RedisHealth for Seen {
        fn answered(&self) {
            self.0.lock().unwrap().push("answered".into());
        }
        fn failed(&self, operation: &'static str, why: &str) {
            self.0.lock().unwrap().push(format!("{operation}: {why}"));
        }
        fn operations(&self, operations: &[&'static str]) {
            self.0.lock().unwrap().push(operations.join(","));
        }
    }

    #[test]
    fn error_texts_are_short_and_generic_and_reported() {
        let seen = Arc::new(Seen::default());
        let health = Health::new(Some(seen.clone()));
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(health.fail("get")(io), StoreError::Unavailable("redis get: connection refused".into()));
        let server = RedisError::from((redis::ErrorKind::ReadOnly, "READONLY", "secret detail".to_string()));
        let StoreError::Unavailable(text) = health.fail("update callback")(server) else { panic!("not Unavailable") };
        assert_eq!(text, "redis update callback: server error READONLY");
        health.answered();
        let seen = seen.0.lock().unwrap();
        assert!(seen[0].split(',').any(|l| l == "job_submit") && seen[0].contains("job_backlog"), "{seen:?}");
        assert_eq!(
            seen[1..],
            ["job_get: connection refused", "job_update_callback: server error READONLY", "answered"]
        );
    }

    #[test]
    fn every_operation_has_a_job_label() {
        for (op, label) in OPERATIONS {
            assert_eq!(super::label(op), label);
            assert!(label.starts_with("job_") && !label.contains(' '), "{label}");
        }
    }

    #[actix_rt::test]
    async fn a_call_past_its_limit_is_unavailable() {
        let never = std::future::pending::<Result<(), StoreError>>();
        let err = Health::default().bounded("get", Duration::from_millis(5), never).await.unwrap_err();
        assert_eq!(err, StoreError::Unavailable("redis get: no answer within 5 ms".into()));
    }
}
