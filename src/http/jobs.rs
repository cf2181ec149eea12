//! The async half of the API: accepting a job (202), `GET /api/external/status/{request_id}`,
//! and the status entries of sync requests.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix_web::http::header::LOCATION;
use actix_web::{web, HttpResponse};
use serde::Serialize;

use super::errors::ApiError;
use super::inbound::{Done, Inbound};
use super::state::{Caller, Worker};
use crate::cache::Entry;
use crate::jobs::callback::CallbackPolicy;
use crate::jobs::{
    CallbackState, Job, JobError, JobStatus, JobStore, JobWork, StatusDoc, StoreError, SyncEntry, Timestamp,
};
use crate::key::Key;
use crate::metrics::Route;
use crate::pipeline::Served;
use crate::request_id::RequestId;

/// The route's path.
pub const STATUS_PATH: &str = "/api/external/status/{request_id}";

/// What the HTTP layer needs of the job machinery.
pub struct JobsShared {
    /// Where jobs and status entries live.
    pub store: Arc<dyn JobStore>,
    /// Which callback URLs are acceptable.
    pub policy: Arc<CallbackPolicy>,
    /// Whether callbacks can be signed (a secret is configured).
    pub callbacks: bool,
    /// How long after acceptance a job must be over.
    pub deadline: Duration,
}

/// A new async job, before it is stored.
pub struct NewJob {
    /// Its id.
    pub request_id: RequestId,
    /// The owner's name when clients are configured.
    pub owner: Option<String>,
    /// The client index, for fair sharing.
    pub client: usize,
    /// The upstream body.
    pub body: bytes::Bytes,
    /// Its cache key.
    pub key: Option<Key>,
    /// Where to deliver the final status document.
    pub callback_url: Option<String>,
    /// The submitting request's span, when traced (boxed: the handler's future holds this).
    pub trace: Option<Box<crate::trace::Stored>>,
}

/// The status route of a request id; a `/` in the id is percent-encoded, so the URL names
/// one path segment.
fn status_url(id: &str) -> String {
    format!("/api/external/status/{}", id.replace('/', "%2F"))
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// The answer to an accepted async request (202).
#[derive(Serialize, utoipa::ToSchema)]
pub struct Accepted<'a> {
    /// Always `true`.
    #[schema(schema_with = super::openapi::always_true)]
    success: bool,
    /// The job's id: the client's `X-Request-Id` when acceptable, else courier's own.
    request_id: &'a str,
    /// Where the job is now.
    status: JobStatus,
    /// Where to look the job up (also the `Location` header).
    status_url: String,
}

fn accepted(job: &Job) -> HttpResponse {
    let url = status_url(job.id());
    HttpResponse::Accepted()
        .insert_header((LOCATION, url.clone()))
        .insert_header((crate::request_id::HEADER, job.id().to_owned()))
        .json(Accepted { success: true, request_id: job.id(), status: job.doc.status, status_url: url })
}

/// Accepts an async job: validates its callback, stores it durably, answers 202. Nothing is
/// accepted that the store did not take.
pub async fn accept(worker: &Worker, new: NewJob) -> Result<HttpResponse, ApiError> {
    let jobs = &worker.shared.jobs;
    if let Some(url) = &new.callback_url {
        if !jobs.callbacks {
            return Err(ApiError::CallbacksUnavailable);
        }
        jobs.policy.check(url).await.map_err(|refused| ApiError::InvalidCallbackUrl(refused.to_string()))?;
    }
    let now = SystemTime::now();
    let body = String::from_utf8(new.body.to_vec()).map_err(|_| ApiError::InvalidJson("not UTF-8".into()))?;
    let job = Job {
        doc: StatusDoc {
            request_id: new.request_id.as_str().to_owned(),
            status: JobStatus::Pending,
            result: None,
            upstream_request_id: None,
            error: None,
            created_at: Timestamp(now),
            completed_at: None,
            attempts: 0,
            takeovers: 0,
            callback: new.callback_url.as_ref().map(|_| CallbackState::new()),
        },
        owner: new.owner.clone(),
        work: Some(JobWork {
            body,
            cache_key: new.key.map(|k| k.hex()),
            callback_url: new.callback_url,
            client: new.client,
            deadline_unix_ms: unix_ms(now + jobs.deadline),
            handoffs: 0,
            trace: new.trace.map(|stored| *stored),
        }),
    };
    match jobs.store.submit(&job).await {
        Ok(()) => {
            worker.shared.metrics.jobs_accepted.inc();
            Ok(accepted(&job))
        }
        Err(StoreError::Exists) => match jobs.store.get(job.id()).await {
            // The same client sending the same request id again: the same job (idempotent).
            Ok(Some(existing)) if existing.work.is_some() && existing.owner == new.owner => Ok(accepted(&existing)),
            Ok(_) => Err(ApiError::RequestIdInUse),
            Err(_) => Err(ApiError::JobStoreUnavailable),
        },
        Err(StoreError::Full | StoreError::Unavailable(_)) => Err(ApiError::JobStoreUnavailable),
    }
}

/// When a sync request arrived and when it was answered (monotonic): its status entry's times.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// When it arrived.
    pub started: Instant,
    /// When it was answered.
    pub answered: Instant,
}

/// Records the status entry of an answered sync request (best effort, never blocking).
pub fn record_sync(
    worker: &Worker,
    request_id: &RequestId,
    owner: Option<&'static str>,
    timing: Timing,
    served: &Served,
) {
    let (status, answer, error) = match &served.result {
        Ok(entry) => (JobStatus::Completed, Some(entry.clone()), None),
        Err(error) => (JobStatus::Failed, None, Some(Box::new(JobError::from(error)))),
    };
    record(worker, request_id, owner, timing, status, answer, error, served.attempts);
}

/// Records the status entry of a sync request refused before reaching the upstream.
pub fn record_refused(
    worker: &Worker,
    request_id: &RequestId,
    owner: Option<&'static str>,
    started: Instant,
    error: &ApiError,
) {
    let timing = Timing { started, answered: Instant::now() };
    record(worker, request_id, owner, timing, JobStatus::Failed, None, Some(job_error(error)), 0);
}

fn job_error(error: &ApiError) -> Box<JobError> {
    Box::new(JobError {
        code: error.code().into(),
        message: error.message().into_owned(),
        retryable: error.retryable(),
    })
}

#[allow(clippy::too_many_arguments)]
fn record(
    worker: &Worker,
    request_id: &RequestId,
    owner: Option<&'static str>,
    timing: Timing,
    status: JobStatus,
    answer: Option<Arc<Entry>>,
    error: Option<Box<JobError>>,
    attempts: u32,
) {
    // One wall-clock reading: the arrival is that less the time it took.
    let completed = SystemTime::now();
    let created = completed.checked_sub(timing.answered.saturating_duration_since(timing.started)).unwrap_or(completed);
    worker.shared.jobs.store.record_sync(
        request_id.as_str(),
        SyncEntry {
            status,
            answer,
            error,
            created_at: Timestamp(created),
            completed_at: Timestamp(completed),
            attempts,
            owner,
            new_id: request_id.generated(),
            recorded: timing.answered,
        },
    );
}

/// Looks up a request by its id: any id courier returned, sync or async.
#[utoipa::path(get, path = STATUS_PATH, operation_id = "status", tag = "status",
    params(super::openapi::StatusPath, super::openapi::RequestIdHeader), responses(super::openapi::StatusResponses))]
pub async fn status(inbound: Inbound, id: web::Path<String>) -> HttpResponse {
    let result = match &inbound.caller {
        Ok(caller) => lookup(&inbound.worker, *caller, &id).await,
        Err(error) => Err(error.clone()),
    };
    inbound.answer(Route::Status, STATUS_PATH, Done::plain(result), |response, _| response)
}

async fn lookup(worker: &Worker, caller: Caller, id: &str) -> Result<HttpResponse, ApiError> {
    let id = RequestId::parse(id).ok_or(ApiError::InvalidRequest("malformed request id".into()))?;
    let job = worker.shared.jobs.store.get(id.as_str()).await.map_err(|_| ApiError::JobStoreUnreadable)?;
    let owner = worker.owner_name(caller);
    match job {
        // Another client's job is as invisible as a missing one.
        Some(job) if job.readable_by(owner) => Ok(HttpResponse::Ok().json(&job.doc)),
        _ => Err(ApiError::NotFound),
    }
}
