//! The job runner: takes accepted jobs from the store's queue and runs them through the same
//! path as sync requests (cache, breaker, budget, token, retries), in the budget's background
//! class so sync requests go first when the budget is short, each within its own deadline.
//!
//! It runs on the main arbiter with a pipeline of its own, at most `COURIER_JOB_CONCURRENCY`
//! jobs at once. While a job runs, its claim is heartbeated so no other process takes it over;
//! it is acknowledged only after its final state is saved and its callback delivered (or given
//! up), so a process that dies at any point leaves the job to be taken over.
//!
//! A job whose runs kept ending with their process is not run again: the store fails it with
//! `job_run_interrupted` when a runner would start it (`COURIER_JOB_MAX_RUNS`), and the runner
//! counts it, logs it and delivers its callback like any final job's.
//!
//! At shutdown it stops taking jobs and lets running ones finish within the grace period. With
//! a durable store (Redis) unfinished jobs stay queued for another process, released (their run
//! was handed over, not interrupted); with the in-process store they are marked `failed` with
//! error `shutdown`, never left `processing`.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use slog::{info, o, warn, Logger};
use tokio::sync::{Notify, Semaphore};

use super::callback::Delivery;
use super::{Claim, Job, JobError, JobStatus, JobStore, RawJson, Start, Timestamp, RUN_INTERRUPTED};
use crate::actors::budget::Class;
use crate::key::Key;
use crate::metrics::Metrics;
use crate::pipeline::{self, Directives, Pipeline, Request};
use crate::request_id::RequestId;
use crate::trace::{attrs, LogIds, Parent, Span};
use opentelemetry::trace::SpanKind;

mod deliver;

use deliver::deliver;

/// How long the runner waits for new jobs before looking again.
const POLL: Duration = Duration::from_secs(1);
/// Shortest pause before trying a job again after a passing refusal (budget, circuit).
const MIN_PAUSE: Duration = Duration::from_millis(100);

/// Runner settings.
#[derive(Clone, Copy, Debug)]
pub struct RunnerSettings {
    /// Jobs run at once.
    pub concurrency: usize,
    /// Claims are heartbeated three times per lease.
    pub lease: Duration,
}

struct State {
    store: Arc<dyn JobStore>,
    pipeline: Pipeline,
    delivery: Option<Delivery>,
    callback_client: awc::Client,
    settings: RunnerSettings,
    metrics: Arc<Metrics>,
    log: Logger,
    running: Cell<usize>,
    /// The jobs this process has started and not yet finished, to release at shutdown.
    started: RefCell<HashSet<String>>,
    idle: Notify,
    stop: Notify,
    stopping: Cell<bool>,
}

/// The running runner; [`RunnerHandle::shutdown`] stops it.
pub struct RunnerHandle {
    state: Rc<State>,
}

/// Starts the runner on the current arbiter.
pub fn start(
    store: Arc<dyn JobStore>,
    pipeline: Pipeline,
    delivery: Option<Delivery>,
    callback_tls: Arc<rustls::ClientConfig>,
    settings: RunnerSettings,
    metrics: Arc<Metrics>,
    log: &Logger,
) -> RunnerHandle {
    // The upstream's client settings: redirects off, each attempt bounded by the delivery,
    // HTTP/1.1 only, and certificates checked against `callback_tls`'s roots. awc's default
    // connector has no TLS of its own with the features courier builds it with.
    let callback_client = crate::upstream::build_client(callback_tls, &crate::upstream::ClientSettings::default());
    let state = Rc::new(State {
        store,
        pipeline,
        delivery,
        callback_client,
        settings,
        metrics,
        log: log.new(o!("actor" => "job_runner")),
        running: Cell::new(0),
        started: RefCell::default(),
        idle: Notify::new(),
        stop: Notify::new(),
        stopping: Cell::new(false),
    });
    actix_rt::spawn(take_jobs(state.clone()));
    RunnerHandle { state }
}

async fn take_jobs(state: Rc<State>) {
    let slots = Arc::new(Semaphore::new(state.settings.concurrency));
    let mut failures = 0u32;
    while !state.stopping.get() {
        let first = tokio::select! {
            _ = state.stop.notified() => break,
            slot = slots.clone().acquire_owned() => slot.expect("semaphore never closes"),
        };
        let max = 1 + slots.available_permits();
        let claims = tokio::select! {
            _ = state.stop.notified() => break,
            claims = state.store.next(max, POLL) => claims,
        };
        let claims = match claims {
            Ok(claims) => {
                failures = 0;
                claims
            }
            Err(error) => {
                if failures == 0 {
                    warn!(state.log, "job_store_unavailable"; "error" => %error);
                }
                failures += 1;
                actix_rt::time::sleep(POLL).await;
                continue;
            }
        };
        let mut first = Some(first);
        for claim in claims {
            let slot = match first.take() {
                Some(slot) => slot,
                None => slots.clone().try_acquire_owned().expect("claimed no more than the free slots"),
            };
            state.running.set(state.running.get() + 1);
            state.metrics.jobs.with_label_values(&["processing"]).inc();
            let state = state.clone();
            actix_rt::spawn(async move {
                run_claim(&state, &claim).await;
                drop(slot);
                state.metrics.jobs.with_label_values(&["processing"]).dec();
                state.running.set(state.running.get() - 1);
                if state.running.get() == 0 {
                    state.idle.notify_waiters();
                }
            });
        }
    }
}

/// Runs one claimed job to its end (unless the process stops first), then acknowledges it.
async fn run_claim(state: &State, claim: &Claim) {
    let heartbeat = {
        let (store, claim, every) = (state.store.clone(), claim.clone(), state.settings.lease / 3);
        actix_rt::spawn(async move {
            let mut tick = actix_rt::time::interval(every.max(Duration::from_millis(10)));
            loop {
                tick.tick().await;
                let _ = store.heartbeat(std::slice::from_ref(&claim)).await;
            }
        })
    };
    let done = run_job(state, &claim.id).await;
    heartbeat.abort();
    if done {
        if let Err(error) = state.store.ack(claim).await {
            warn!(state.log, "job_ack_failed"; "request_id" => &claim.id, "error" => %error);
        }
    }
}

/// Returns true when the job and its callback are settled. Traced, the job's span
/// (`courier.job`) is a child of the span of the request that submitted it.
async fn run_job(state: &State, id: &str) -> bool {
    let start = match state.store.start(id).await {
        Ok(Some(start)) => start,
        Ok(None) => return true,
        Err(error) => {
            warn!(state.log, "job_start_failed"; "request_id" => id, "error" => %error);
            return false;
        }
    };
    let (Start::Run(job) | Start::Final(job) | Start::Abandoned(job)) = &start;
    let tracing = state.pipeline.tracing();
    let submitted = tracing.stored_parent(job.work.as_ref().and_then(|w| w.trace.as_ref()));
    let mut span = tracing.child(&submitted, "courier.job", SpanKind::Consumer);
    let trace = span.as_ref().map_or(Parent::NONE, Span::parent);
    let job = match start {
        Start::Run(job) => match run_started(state, job, &trace).await {
            Ok(job) => job,
            Err(settled) => return settled,
        },
        Start::Final(job) => job,
        Start::Abandoned(job) => {
            record_abandoned(state, &job, LogIds::of_parent(&trace));
            job
        }
    };
    if let Some(span) = span.as_mut() {
        span.set(attrs::JOB_STATUS, job.doc.status.as_str());
        span.set(attrs::JOB_ATTEMPTS, i64::from(job.doc.attempts));
        if let Some(error) = &job.doc.error {
            span.fail(error.code.clone());
        }
    }
    deliver(state, job, &trace).await;
    true
}

/// Runs a started job and saves its final state; returns it as stored, or whether the job is
/// settled although there is nothing to deliver (false: its final state was not saved).
async fn run_started(state: &State, job: Job, trace: &Parent) -> Result<Job, bool> {
    let id = job.id().to_owned();
    if job.doc.takeovers > 0 {
        state.metrics.jobs_taken_over.inc();
        info!(state.log, "job_taken_over"; "request_id" => &id, "takeovers" => job.doc.takeovers);
    }
    state.started.borrow_mut().insert(id.clone());
    let finished = execute(state, job, trace.clone()).await;
    let saved = state.store.finish(&finished).await;
    state.started.borrow_mut().remove(&id);
    match saved {
        Ok(true) => {
            record_final(state, &finished, LogIds::of_parent(trace));
            Ok(finished)
        }
        Ok(false) => {
            // Settled meanwhile (failed at shutdown, or by another runner): what is stored
            // stands, callback state included.
            info!(state.log, "job_finished_elsewhere"; "request_id" => &id);
            match state.store.get(&id).await {
                Ok(Some(stored)) => Ok(stored),
                _ => Err(true),
            }
        }
        Err(error) => {
            warn!(state.log, "job_finish_failed"; "request_id" => &id, "error" => %error);
            Err(false)
        }
    }
}

fn record_final(state: &State, job: &Job, ids: LogIds) {
    let status = job.doc.status.as_str();
    state.metrics.jobs_finished.with_label_values(&[status]).inc();
    let took = SystemTime::now().duration_since(job.doc.created_at.0).unwrap_or_default();
    state.metrics.job_duration.observe(took.as_secs_f64());
    info!(state.log, "job_finished";
        "request_id" => job.id(),
        "status" => status,
        "attempts" => job.doc.attempts,
        "takeovers" => job.doc.takeovers,
        "error" => job.doc.error.as_ref().map(|e| e.code.as_str()),
        "duration" => took.as_secs_f64(),
        ids);
}

/// A job failed without running again because its runs kept ending with their process: a
/// failed job, and one of `courier_jobs_run_interrupted_total`, with one warning.
fn record_abandoned(state: &State, job: &Job, ids: LogIds) {
    state.metrics.jobs_finished.with_label_values(&[JobStatus::Failed.as_str()]).inc();
    state.metrics.jobs_run_interrupted.inc();
    let took = SystemTime::now().duration_since(job.doc.created_at.0).unwrap_or_default();
    state.metrics.job_duration.observe(took.as_secs_f64());
    warn!(state.log, "job_run_interrupted";
        "request_id" => job.id(),
        "status" => JobStatus::Failed.as_str(),
        "error" => RUN_INTERRUPTED,
        "takeovers" => job.doc.takeovers,
        "detail" => job.doc.error.as_ref().map(|e| e.message.as_str()),
        "duration" => took.as_secs_f64(),
        ids);
}

/// Passing refusals: the same request may go through a little later, within the job's deadline.
fn passing(error: &pipeline::Error) -> Option<Duration> {
    match error {
        pipeline::Error::RateLimited(wait)
        | pipeline::Error::CircuitOpen(wait)
        | pipeline::Error::AuthUnavailable(wait)
        | pipeline::Error::QuotaUnavailable(wait)
        | pipeline::Error::QuotaExhausted { retry_after: wait, .. } => Some((*wait).max(MIN_PAUSE)),
        _ => None,
    }
}

/// Runs the upstream part of a job and returns it in its final state.
async fn execute(state: &State, mut job: Job, trace: Parent) -> Job {
    let work = job.work.clone().unwrap_or_default();
    let deadline = job
        .deadline()
        .and_then(|at| at.duration_since(SystemTime::now()).ok())
        .map_or_else(Instant::now, |left| Instant::now() + left);
    let request = Request {
        request_id: RequestId::parse(job.id()).unwrap_or_else(RequestId::generate),
        body: Bytes::from(work.body.clone()),
        deadline,
        client: work.client,
        key: work.cache_key.as_deref().and_then(Key::from_hex),
        directives: Directives::default(),
        class: Class::Background,
        trace,
    };
    let outcome = loop {
        let served = state.pipeline.serve(request.clone()).await;
        job.doc.attempts += served.attempts;
        if served.attempts > 0 {
            // The client's spending (`security::spend`): its name from the clients file, or open.
            let client = job.owner.as_deref().unwrap_or(crate::metrics::OPEN_CLIENT);
            state.metrics.security.client_attempts.with_label_values(&[client]).inc_by(u64::from(served.attempts));
        }
        match served.result {
            Ok(entry) => break Ok(entry),
            Err(error) => match passing(&error) {
                Some(pause) if Instant::now() + pause < deadline => actix_rt::time::sleep(pause).await,
                _ => break Err(error),
            },
        }
    };
    job.doc.completed_at = Some(Timestamp::now());
    match outcome {
        Ok(entry) => {
            job.doc.status = JobStatus::Completed;
            job.doc.result = Some(RawJson(entry.result.clone()));
            job.doc.upstream_request_id = entry.upstream_request_id.as_deref().map(str::to_owned);
        }
        Err(error) => {
            job.doc.status = JobStatus::Failed;
            job.doc.error = Some(JobError::from(&error));
        }
    }
    job
}

impl RunnerHandle {
    /// Stops taking jobs, lets running ones finish within `grace`, then settles the rest:
    /// left queued for another process (durable store) or failed with `shutdown`.
    pub async fn shutdown(&self, grace: Duration) {
        let state = &self.state;
        state.stopping.set(true);
        state.stop.notify_waiters();
        let deadline = Instant::now() + grace;
        while state.running.get() > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || actix_rt::time::timeout(left, state.idle.notified()).await.is_err() {
                break;
            }
        }
        if state.store.durable() {
            // Their runs are handed over, not interrupted: they do not count against
            // COURIER_JOB_MAX_RUNS. Best effort: a job not released counts one run more.
            let started: Vec<String> = state.started.borrow().iter().cloned().collect();
            let released = futures_util::future::join_all(started.iter().map(|id| state.store.release(id))).await;
            let failed = released.iter().filter(|r| r.is_err()).count();
            info!(state.log, "jobs_left_for_others";
                "running" => state.running.get(), "released" => started.len() - failed, "not_released" => failed);
            return;
        }
        let error = JobError {
            code: "shutdown".into(),
            message: "courier stopped before the job finished; submit it again".into(),
            retryable: true,
        };
        match state.store.fail_unfinished(&error).await {
            Ok(failed) => {
                info!(state.log, "jobs_failed_at_shutdown"; "count" => failed.len());
                let quick = failed.into_iter().map(|job| {
                    let submitted = job.work.as_ref().and_then(|w| w.trace.as_ref());
                    let trace = state.pipeline.tracing().stored_parent(submitted);
                    record_final(state, &job, LogIds::of_parent(&trace));
                    async move { actix_rt::time::timeout(Duration::from_secs(2), deliver(state, job, &trace)).await }
                });
                futures_util::future::join_all(quick).await;
            }
            Err(error) => warn!(state.log, "jobs_not_failed_at_shutdown"; "error" => %error),
        }
    }
}
