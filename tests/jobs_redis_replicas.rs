//! Durable acceptance against a real primary and replica: with `COURIER_REDIS_MIN_REPLICAS=1`
//! a 202 means the replica holds the job; with the replica frozen, a submit answers 503
//! `job_store_unavailable` within its bound, nothing is left of the job and nothing runs, and
//! the same request id is accepted once the replica is back. Without the setting, a frozen
//! replica holds nothing up (today's behaviour). At the store: a runner leaves a held job
//! alone until its submit settles it, and runs it once the hold's limit passed without.

mod support;

use std::time::{Duration, Instant};

use courier::jobs::redis::{RedisSettings, RedisStore};
use courier::jobs::{Job, JobStatus, JobStore, JobWork, Start, StatusDoc, StoreError, Timestamp};
use secrecy::SecretString;
use serde_json::{json, Value};
use support::redis::RedisServer;
use support::{Answer, Pair, PairBuilder};

/// The wait for replicas these tests configure, and the bound of every Redis call.
const WAIT: Duration = Duration::from_millis(300);
const REDIS_CALL: Duration = Duration::from_secs(2);

fn async_body(input: &str) -> Value {
    json!({"data": {"input": input}, "options": {"async": true}})
}

async fn submit(pair: &Pair, request_id: &str) -> Answer {
    pair.process_with(async_body(request_id), &[("x-request-id", request_id)]).await
}

async fn status(pair: &Pair, request_id: &str) -> Answer {
    let url = pair.url(&format!("/api/external/status/{request_id}"));
    support::read_answer(pair.http.get(url).send().await.expect("courier answers")).await
}

/// Polls `check` every 20 ms until it holds, for at most `bound`.
async fn within<F: std::future::Future<Output = bool>>(bound: Duration, what: &str, mut check: impl FnMut() -> F) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < bound, "{what}: not within {bound:?}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn completes(pair: &Pair, request_id: &str) {
    within(Duration::from_secs(10), &format!("{request_id} completes"), || async {
        status(pair, request_id).await.body["status"] == "completed"
    })
    .await;
}

/// Submits `n` jobs one after another and returns the median and the largest time to the 202.
async fn submit_latency(pair: &Pair, prefix: &str, n: usize) -> (Duration, Duration) {
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let answer = submit(pair, &format!("{prefix}-{i}")).await;
        took.push(started.elapsed());
        assert_eq!(answer.status, 202, "{answer:?}");
    }
    took.sort();
    (took[n / 2], took[n - 1])
}

fn job_key(request_id: &str) -> String {
    format!("{{courier}}:job:{request_id}")
}

#[actix_rt::test]
async fn a_job_is_accepted_only_once_a_replica_holds_it_and_withdrawn_when_none_does() {
    let primary = RedisServer::start();
    let replica = RedisServer::start_replica_of(&primary);
    let pair = PairBuilder::default()
        .env("REDIS_URL", primary.url())
        .env("COURIER_REDIS_MIN_REPLICAS", "1")
        .env("COURIER_REDIS_WAIT_TIMEOUT", format!("{}", WAIT.as_secs_f64()))
        .start()
        .await;

    // Accepted: the replica holds the job the moment the 202 arrives (no waiting here).
    let accepted = submit(&pair, "replicated-1").await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    let on_replica = replica.command(&["HGET", &job_key("replicated-1"), "doc"]).unwrap_or_default();
    assert!(on_replica.contains("\"replicated-1\""), "the replica holds the accepted job: {on_replica:?}");
    // The runner waited for the submit to confirm the job, then ran it.
    completes(&pair, "replicated-1").await;
    let (median, max) = submit_latency(&pair, "timed", 30).await;
    eprintln!("submit with COURIER_REDIS_MIN_REPLICAS=1: median {median:?}, max {max:?} (30 jobs, loopback)");
    for i in 0..30 {
        completes(&pair, &format!("timed-{i}")).await;
    }

    // The replica frozen: no acknowledgement comes, so nothing is accepted.
    let upstream_before = pair.sim.stats().process.total;
    replica.pause();
    let started = Instant::now();
    let refused = submit(&pair, "unreplicated-1").await;
    let took = started.elapsed();
    assert_eq!((refused.status.as_u16(), refused.error_code()), (503, "job_store_unavailable"), "{refused:?}");
    assert!(refused.body["error"]["message"].as_str().unwrap().contains("nothing was accepted"), "{refused:?}");
    assert!(took >= WAIT, "answered before the wait for replicas ended: {took:?}");
    assert!(took < WAIT + REDIS_CALL, "not answered within the wait and one Redis call: {took:?}");
    eprintln!("submit refused for want of a replica after {took:?} (wait {WAIT:?})");
    assert_eq!(status(&pair, "unreplicated-1").await.status, 404, "the refused job does not exist");
    assert_eq!(primary.command(&["EXISTS", &job_key("unreplicated-1")]).as_deref(), Some("0"));

    // Two submits of one id at once: neither is accepted, and the second does not take the
    // first one's job for its own.
    let (a, b) = futures_util::future::join(submit(&pair, "twice-1"), submit(&pair, "twice-1")).await;
    for answer in [&a, &b] {
        assert_eq!((answer.status.as_u16(), answer.error_code()), (503, "job_store_unavailable"), "{answer:?}");
    }
    assert_eq!(status(&pair, "twice-1").await.status, 404);

    // The runner took the withdrawn jobs' queue entries, found no job and let them go:
    // the queue empties and the upstream saw none of them.
    within(Duration::from_secs(5), "the queue empties", || async {
        primary.command(&["XLEN", "{courier}:jobs"]).as_deref() == Some("0")
    })
    .await;
    assert_eq!(pair.sim.stats().process.total, upstream_before, "a refused job reached the upstream");
    assert_eq!(status(&pair, "unreplicated-1").await.status, 404, "and it never came back");

    // The replica back: the client's retry with the same request id is accepted and runs.
    replica.resume();
    within(Duration::from_secs(10), "the replica catches up", || async { replica.is_replicating() }).await;
    let retried = submit(&pair, "unreplicated-1").await;
    assert_eq!(retried.status, 202, "{retried:?}");
    completes(&pair, "unreplicated-1").await;
    assert_eq!(pair.sim.stats().process.total, upstream_before + 1, "the retry ran once");
    pair.stop().await;
}

#[actix_rt::test]
async fn without_min_replicas_a_frozen_replica_holds_nothing_up() {
    let primary = RedisServer::start();
    let replica = RedisServer::start_replica_of(&primary);
    let pair = PairBuilder::default().env("REDIS_URL", primary.url()).start().await;
    let (median, max) = submit_latency(&pair, "timed", 30).await;
    eprintln!("submit with COURIER_REDIS_MIN_REPLICAS=0: median {median:?}, max {max:?} (30 jobs, loopback)");

    replica.pause();
    let accepted = submit(&pair, "unreplicated-ok").await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    completes(&pair, "unreplicated-ok").await;
    replica.resume();
    pair.stop().await;
}

/// A pending job as the HTTP layer makes it.
fn job(id: &str) -> Job {
    Job {
        doc: StatusDoc {
            request_id: id.into(),
            status: JobStatus::Pending,
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
        work: Some(JobWork {
            body: r#"{"data":{"input":"held"}}"#.into(),
            cache_key: None,
            callback_url: None,
            client: 0,
            deadline_unix_ms: 1_900_000_000_000,
            handoffs: 0,
            trace: None,
        }),
    }
}

fn store_settings(min_replicas: u32) -> RedisSettings {
    RedisSettings {
        namespace: "t".into(),
        op_timeout: Duration::from_secs(1),
        wait_timeout: WAIT,
        min_replicas,
        ..RedisSettings::default()
    }
}

async fn hold(conn: &mut redis::aio::MultiplexedConnection, id: &str, token: Option<&str>) {
    let key = format!("{{t}}:job:{id}");
    let cmd = match token {
        Some(token) => redis::cmd("HSET").arg(&key).arg("held").arg(token).clone(),
        None => redis::cmd("HDEL").arg(&key).arg("held").clone(),
    };
    let _: i64 = cmd.query_async(conn).await.expect("hold");
}

#[actix_rt::test]
async fn a_runner_leaves_a_held_job_alone_until_its_submit_settles_or_the_hold_runs_out() {
    let server = RedisServer::start();
    let url = SecretString::from(server.url());
    let store = RedisStore::connect(&url, store_settings(0)).await.expect("connects");
    let mut raw = redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let limit = WAIT + Duration::from_secs(1);

    // Held as a submit waiting for its replicas leaves a job; the submit confirms it 100 ms on.
    store.submit(&job("confirmed")).await.unwrap();
    hold(&mut raw, "confirmed", Some("token-1")).await;
    let started = Instant::now();
    let confirm = async {
        actix_rt::time::sleep(Duration::from_millis(100)).await;
        hold(&mut raw, "confirmed", None).await;
    };
    let (start, ()) = futures_util::future::join(store.start("confirmed"), confirm).await;
    let took = started.elapsed();
    assert!(matches!(start, Ok(Some(Start::Run(_)))), "{start:?}");
    assert!(took >= Duration::from_millis(100) && took < limit, "started {took:?} after, not when confirmed");

    // A submit that never settles (its process died): the runner waits the hold out, then
    // runs the job, and its start ends the hold.
    store.submit(&job("orphan")).await.unwrap();
    hold(&mut raw, "orphan", Some("token-2")).await;
    let started = Instant::now();
    let start = store.start("orphan").await;
    assert!(matches!(start, Ok(Some(Start::Run(_)))), "{start:?}");
    assert!(started.elapsed() >= limit, "started {:?} after, before the hold ran out", started.elapsed());
    let held: bool = redis::cmd("HEXISTS").arg("{t}:job:orphan").arg("held").query_async(&mut raw).await.unwrap();
    assert!(!held, "the start ended the hold");

    // Another submit of a held id is refused, not taken for the same job.
    store.submit(&job("busy")).await.unwrap();
    hold(&mut raw, "busy", Some("token-3")).await;
    let again = store.submit(&job("busy")).await;
    assert!(matches!(&again, Err(StoreError::Unavailable(text)) if text.contains("awaits its replicas")), "{again:?}");
}

#[actix_rt::test]
async fn with_no_replica_to_acknowledge_a_submit_is_withdrawn_and_says_why() {
    let server = RedisServer::start();
    let url = SecretString::from(server.url());
    let store = RedisStore::connect(&url, store_settings(1)).await.expect("connects");
    let refused = store.submit(&job("lonely")).await;
    let Err(StoreError::Unavailable(text)) = &refused else { panic!("accepted without a replica: {refused:?}") };
    assert_eq!(text, "redis submit: 0 of 1 replicas acknowledged within 300 ms; the job was withdrawn");
    assert_eq!(store.get("lonely").await.unwrap(), None, "nothing is left of it");
}
