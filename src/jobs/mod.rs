//! Jobs: async requests that are never lost, status entries for every request id, and signed
//! callbacks.
//!
//! A [`Job`] is stored before the 202 is sent, through the [`JobStore`] trait: in-process
//! ([`memory::MemoryStore`], the embedded default) or Redis ([`redis::RedisStore`], when
//! `REDIS_URL` is set, shared by every replica). The store is also the job queue: runners
//! ([`runner`]) take jobs from it, hold them under a lease, and acknowledge them only when the
//! job and its callback are done, so a job whose process died is taken up by another process.
//! State changes are compare-and-set: a job moves `pending → processing → completed | failed`
//! and never back.

pub mod callback;
pub mod memory;
pub mod redis;
pub mod runner;
mod store;
mod time;

use crate::trace::Stored;
use std::fmt;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

pub use store::{Claim, JobStore, Start, StoreError, StoreFuture};
pub use time::Timestamp;

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Accepted, not started.
    Pending,
    /// A runner holds it.
    Processing,
    /// Done, with a result.
    Completed,
    /// Done, with an error.
    Failed,
}

impl JobStatus {
    /// Every status, for metric children.
    pub const ALL: [JobStatus; 4] =
        [JobStatus::Pending, JobStatus::Processing, JobStatus::Completed, JobStatus::Failed];

    /// The label and JSON value.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Processing => "processing",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
        }
    }

    /// Whether the job is over.
    pub fn is_final(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Failed)
    }
}

/// The error of a failed job, in the API's error shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobError {
    /// Machine-readable code, as in error answers (`upstream_unavailable`, `shutdown`, ...).
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// Whether submitting the same request again may succeed.
    pub retryable: bool,
}

/// The `code` of a job that was failed without running again because each of its runs ended
/// with its process (`COURIER_JOB_MAX_RUNS`): a job that stops its process must not stop every
/// replica in turn.
pub const RUN_INTERRUPTED: &str = "job_run_interrupted";

impl JobError {
    /// The error of a job not run again after `runs` runs that each ended with their process.
    pub fn run_interrupted(runs: u32) -> JobError {
        JobError {
            code: RUN_INTERRUPTED.into(),
            message: format!(
                "{runs} {} of the job ended with {} process before finishing; it was not run again, so that \
                 it cannot stop another process",
                if runs == 1 { "run" } else { "runs" },
                if runs == 1 { "its" } else { "their" },
            ),
            // The same request would meet the same end.
            retryable: false,
        }
    }
}

impl From<&crate::pipeline::Error> for JobError {
    /// A job that failed in the pipeline fails with the pipeline's own code and words, as a
    /// sync request with that error would be answered.
    fn from(error: &crate::pipeline::Error) -> JobError {
        JobError { code: error.code().into(), message: error.message().into(), retryable: error.retryable() }
    }
}

/// Where the delivery of a job's callback stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not attempted yet.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Attempts failed; more will follow.
    Failing,
    /// Every attempt failed; no more will follow.
    GaveUp,
}

/// The callback part of the status document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CallbackState {
    /// Delivery state.
    pub state: DeliveryState,
    /// Attempts made.
    pub attempts: u32,
    /// The receiver's status code on the last attempt, if it answered.
    #[schema(required = true)]
    pub last_status_code: Option<u16>,
    /// When the last attempt was made.
    #[schema(required = true)]
    pub last_attempt_at: Option<Timestamp>,
}

impl CallbackState {
    /// Nothing attempted yet.
    pub fn new() -> CallbackState {
        CallbackState { state: DeliveryState::Pending, attempts: 0, last_status_code: None, last_attempt_at: None }
    }
}

impl Default for CallbackState {
    fn default() -> Self {
        Self::new()
    }
}

/// Raw JSON held as shared bytes: the upstream's `result`, passed on without re-serialising.
#[derive(Clone, PartialEq, Eq)]
pub struct RawJson(pub Bytes);

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawJson({} bytes)", self.0.len())
    }
}

impl Serialize for RawJson {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = std::str::from_utf8(&self.0).map_err(serde::ser::Error::custom)?;
        let raw: &RawValue = serde_json::from_str(text).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw: Box<RawValue> = Deserialize::deserialize(deserializer)?;
        Ok(RawJson(Bytes::from(raw.get().to_owned())))
    }
}

/// The status document: what `GET /api/external/status/{id}` answers and what a callback
/// carries. Nothing in it is secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusDoc {
    /// The request id.
    pub request_id: String,
    /// Where the job is.
    pub status: JobStatus,
    /// The upstream's `result`, once completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub result: Option<RawJson>,
    /// The upstream's request id, once completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub upstream_request_id: Option<String>,
    /// The error, once failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub error: Option<JobError>,
    /// When courier accepted it.
    pub created_at: Timestamp,
    /// When it reached its final status.
    #[schema(required = true)]
    pub completed_at: Option<Timestamp>,
    /// Upstream attempts made for it.
    pub attempts: u32,
    /// How often another runner took it over after its runner died (its upstream call may
    /// then have been made twice).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub takeovers: u32,
    /// The callback's delivery, when a `callback_url` was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub callback: Option<CallbackState>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What a runner needs to run a job, kept with it but never shown.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobWork {
    /// The upstream body.
    pub body: String,
    /// Its cache key (hex), when the cache is on.
    pub cache_key: Option<String>,
    /// Where to deliver the final status document.
    pub callback_url: Option<String>,
    /// The client's index for fair sharing.
    pub client: usize,
    /// When the job must be over (Unix milliseconds).
    pub deadline_unix_ms: u64,
    /// Runs of it that ended at a graceful shutdown (handed over, not interrupted): they do not
    /// count against `COURIER_JOB_MAX_RUNS`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub handoffs: u32,
    /// The submitting request's span as W3C `traceparent`/`tracestate`, when it was traced:
    /// the job's spans join that trace. Left out of records made without one, and ignored by
    /// a courier that does not know it, so replicas of either version share a store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<Stored>,
}

/// A job as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The public part.
    pub doc: StatusDoc,
    /// The name of the client that created it (`None` in open mode: anyone may read it).
    pub owner: Option<String>,
    /// What is needed to run it (async jobs only).
    pub work: Option<JobWork>,
}

/// The status entry of a finished sync request, as [`JobStore::record_sync`] takes it. Every
/// sync request records one, so it is compact: the answer is shared (the cache entry, or the
/// entry of an answer passed on, a slice of the upstream's body), the id is the store's key,
/// and the rest is small.
#[derive(Clone, Debug)]
pub struct SyncEntry {
    /// `completed` or `failed`.
    pub status: JobStatus,
    /// The upstream's answer (`result` and its request id), when completed.
    pub answer: Option<std::sync::Arc<crate::cache::Entry>>,
    /// The error, when failed.
    pub error: Option<Box<JobError>>,
    /// When courier accepted the request.
    pub created_at: Timestamp,
    /// When it was answered.
    pub completed_at: Timestamp,
    /// Upstream attempts made for it.
    pub attempts: u32,
    /// The client that sent it (`None` in open mode): client names are interned, so this is
    /// no allocation per request.
    pub owner: Option<&'static str>,
    /// The id is one courier generated for this request (see `RequestId::generated`): no entry
    /// has it, so the store may skip looking.
    pub new_id: bool,
    /// When it was answered, on the monotonic clock (the in-process store's order and expiry;
    /// the answer's own clock reading, so the store reads none of its own).
    pub recorded: std::time::Instant,
}

impl SyncEntry {
    /// The entry as a job (without work) with request id `id`, for reading and for stores that
    /// keep jobs only.
    pub fn to_job(&self, id: &str) -> Job {
        Job {
            doc: StatusDoc {
                request_id: id.to_owned(),
                status: self.status,
                result: self.answer.as_ref().map(|a| RawJson(a.result.clone())),
                upstream_request_id: self
                    .answer
                    .as_ref()
                    .and_then(|a| a.upstream_request_id.as_deref())
                    .map(str::to_owned),
                error: self.error.as_deref().cloned(),
                created_at: self.created_at,
                completed_at: Some(self.completed_at),
                attempts: self.attempts,
                takeovers: 0,
                callback: None,
            },
            owner: self.owner.map(str::to_owned),
            work: None,
        }
    }
}

#[cfg(test)]
impl Job {
    /// A fresh job with `id` and `status`, with work when `work` (a status entry without), for tests.
    pub(crate) fn for_test(id: &str, status: JobStatus, work: bool) -> Job {
        Job {
            doc: StatusDoc {
                request_id: id.into(),
                status,
                result: None,
                upstream_request_id: None,
                error: None,
                created_at: Timestamp::now(),
                completed_at: None,
                attempts: 0,
                takeovers: 0,
                callback: None,
            },
            owner: None,
            work: work.then(JobWork::default),
        }
    }
}

impl Job {
    /// The request id.
    pub fn id(&self) -> &str {
        &self.doc.request_id
    }

    /// Whether `caller` (a client name, or `None` in open mode) may read this job.
    pub fn readable_by(&self, caller: Option<&str>) -> bool {
        match (&self.owner, caller) {
            (None, _) => true,
            (Some(owner), Some(caller)) => owner == caller,
            (Some(_), None) => false,
        }
    }

    /// The job's deadline.
    pub fn deadline(&self) -> Option<SystemTime> {
        self.work.as_ref().map(|w| SystemTime::UNIX_EPOCH + Duration::from_millis(w.deadline_unix_ms))
    }
}

#[cfg(test)]
mod work_tests {
    use super::*;

    /// `JobWork` as couriers before traces wrote and read it.
    #[derive(Debug, Deserialize, PartialEq)]
    struct BeforeTraces {
        body: String,
        cache_key: Option<String>,
        callback_url: Option<String>,
        client: usize,
        deadline_unix_ms: u64,
    }

    #[test]
    fn records_with_and_without_a_trace_are_read_by_either_version() {
        let old = r#"{"body":"{}","cache_key":null,"callback_url":null,"client":1,"deadline_unix_ms":5}"#;
        let read: JobWork = serde_json::from_str(old).unwrap();
        assert_eq!(read.trace, None);
        assert!(!serde_json::to_string(&read).unwrap().contains("trace"), "no trace, no field");

        let stored =
            Stored { traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(), tracestate: None };
        let new = JobWork { trace: Some(stored.clone()), ..read };
        let text = serde_json::to_string(&new).unwrap();
        assert_eq!(serde_json::from_str::<JobWork>(&text).unwrap().trace, Some(stored));
        let by_old: BeforeTraces = serde_json::from_str(&text).unwrap();
        assert_eq!(by_old.client, 1, "a courier without traces reads the record and ignores the trace");
    }
}
