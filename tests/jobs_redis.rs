//! The Redis job store against a real `redis-server` (one per test): storage, the queue and
//! its leases, compare-and-set state changes, and bounded failure when Redis is gone.

mod support;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use courier::jobs::redis::{RedisSettings, RedisStore};
use courier::jobs::{
    CallbackState, Claim, DeliveryState, Job, JobError, JobStatus, JobStore, JobWork, RawJson, Start, StatusDoc,
    StoreError, Timestamp,
};
use futures_util::future::{join_all, BoxFuture};
use futures_util::TryFutureExt;
use redis::aio::MultiplexedConnection;
use secrecy::SecretString;
use support::redis::RedisServer;

const LEASE: Duration = Duration::from_millis(300);
const OP_TIMEOUT: Duration = Duration::from_millis(400);
/// Slack on top of a bound, for a loaded test machine.
const SLACK: Duration = Duration::from_millis(400);
const NS: &str = "t";

fn settings(consumer: &str) -> RedisSettings {
    RedisSettings {
        namespace: NS.into(),
        consumer: consumer.into(),
        lease: LEASE,
        job_ttl: Duration::from_secs(60),
        op_timeout: OP_TIMEOUT,
        stream_max_len: 1_000,
        record_queue: 10_000,
        // High, so takeovers can be counted freely; the tests of the bound set their own.
        max_runs: 100,
        ..RedisSettings::default()
    }
}

async fn store(server: &RedisServer, consumer: &str) -> RedisStore {
    store_with(server, settings(consumer)).await
}

async fn store_with(server: &RedisServer, settings: RedisSettings) -> RedisStore {
    RedisStore::connect(&SecretString::from(server.url()), settings).await.expect("connects")
}

/// A plain connection for looking at what the store wrote.
async fn raw(server: &RedisServer) -> MultiplexedConnection {
    redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
}

async fn query<T: redis::FromRedisValue>(conn: &mut MultiplexedConnection, args: &[&str]) -> T {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(conn).await.unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn job(id: &str) -> Job {
    Job {
        doc: StatusDoc {
            request_id: id.into(),
            status: JobStatus::Pending,
            result: None,
            upstream_request_id: None,
            error: None,
            created_at: Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(1_705_314_600)),
            completed_at: None,
            attempts: 0,
            takeovers: 0,
            callback: None,
        },
        owner: Some("billing".into()),
        work: Some(JobWork {
            body: r#"{"data":{"input":"hello","format":"text"}}"#.into(),
            cache_key: None,
            callback_url: Some("http://127.0.0.1:9/hook".into()),
            client: 1,
            deadline_unix_ms: 1_900_000_000_000,
            handoffs: 0,
            trace: None,
        }),
    }
}

/// `job` as a runner would finish it; the result has what cjson would mangle.
fn completed(job: &Job) -> Job {
    let mut done = job.clone();
    done.doc.status = JobStatus::Completed;
    done.doc.result = Some(RawJson(Bytes::from_static(br#"{"items":[],"n":12345678901234567890,"x":0.1}"#)));
    done.doc.upstream_request_id = Some("up-1".into());
    done.doc.completed_at = Some(done.doc.created_at);
    done.doc.attempts = 1;
    done
}

fn ids(claims: &[Claim]) -> BTreeSet<String> {
    claims.iter().map(|c| c.id.clone()).collect()
}

/// Asserts `call` answers within `bound` and returns its answer.
async fn within<T>(bound: Duration, call: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let answer = call.await;
    assert!(started.elapsed() <= bound, "took {:?}, bound {bound:?}", started.elapsed());
    answer
}

fn unavailable<T: std::fmt::Debug>(answer: Result<T, StoreError>) {
    assert!(matches!(&answer, Err(StoreError::Unavailable(text)) if text.starts_with("redis ")), "{answer:?}");
}

/// A named store call, its time bound, and its answer without the value.
type Call<'a> = (&'static str, Duration, BoxFuture<'a, Result<(), StoreError>>);

/// Makes every call at once and asserts each fails as `Unavailable` within its bound:
/// `op_timeout` (plus slack), and `next` its wait on top.
async fn every_call_is_unavailable(store: &RedisStore, claim: &Claim) {
    let wait = Duration::from_millis(100);
    let bound = OP_TIMEOUT + SLACK;
    let claims = std::slice::from_ref(claim);
    let (queued, done, callback) = (job("r-2"), completed(&job("r-1")), CallbackState::new());
    let calls: Vec<Call<'_>> = vec![
        ("submit", bound, Box::pin(store.submit(&queued))),
        ("get", bound, Box::pin(store.get("r-1").map_ok(drop))),
        ("next", bound + wait, Box::pin(store.next(1, wait).map_ok(drop))),
        ("heartbeat", bound, Box::pin(store.heartbeat(claims))),
        ("start", bound, Box::pin(store.start("r-1").map_ok(drop))),
        ("release", bound, Box::pin(store.release("r-1"))),
        ("finish", bound, Box::pin(store.finish(&done).map_ok(drop))),
        ("update_callback", bound, Box::pin(store.update_callback("r-1", &callback))),
        ("ack", bound, Box::pin(store.ack(claim))),
        ("backlog", bound, Box::pin(store.backlog().map_ok(drop))),
    ];
    let answers = join_all(calls.into_iter().map(|(name, bound, call)| async move {
        let started = Instant::now();
        (name, bound, call.await, started.elapsed())
    }))
    .await;
    for (name, bound, answer, took) in answers {
        assert!(took <= bound, "{name} took {took:?}, bound {bound:?}");
        unavailable(answer);
    }
}

#[actix_rt::test]
async fn submit_then_get_round_trips_and_a_second_submit_is_refused() {
    let server = RedisServer::start();
    let store = store(&server, "a").await;
    let mut conn = raw(&server).await;
    let original = job("r-1");

    store.submit(&original).await.unwrap();
    assert_eq!(store.get("r-1").await.unwrap(), Some(original.clone()));
    assert_eq!(query::<String>(&mut conn, &["HGET", "{t}:job:r-1", "state"]).await, "pending");
    let ttl: i64 = query(&mut conn, &["PTTL", "{t}:job:r-1"]).await;
    assert!(ttl > 0 && ttl <= 60_000, "{ttl}");

    let mut other = original.clone();
    other.owner = Some("someone-else".into());
    assert_eq!(store.submit(&other).await, Err(StoreError::Exists));
    assert_eq!(store.get("r-1").await.unwrap(), Some(original));
    assert_eq!(query::<u64>(&mut conn, &["XLEN", "{t}:jobs"]).await, 1, "one stream entry");
    assert_eq!(store.get("nope").await.unwrap(), None);
    assert!(store.durable());
}

#[actix_rt::test]
async fn records_land_but_never_overwrite_a_job() {
    let server = RedisServer::start();
    let store = store(&server, "a").await;
    let mut conn = raw(&server).await;
    let submitted = job("r-1");
    store.submit(&submitted).await.unwrap();

    store.record(completed(&submitted));
    let sync = completed(&job("r-2"));
    store.record(sync.clone());

    let deadline = Instant::now() + Duration::from_secs(5);
    while store.get("r-2").await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "the record never landed");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(store.get("r-2").await.unwrap(), Some(sync));
    assert_eq!(query::<String>(&mut conn, &["HGET", "{t}:job:r-2", "state"]).await, "completed");
    assert!(query::<i64>(&mut conn, &["PTTL", "{t}:job:r-2"]).await > 0);
    // Records are written in order: r-1's came first, and changed nothing.
    assert_eq!(store.get("r-1").await.unwrap(), Some(submitted));
    assert_eq!(query::<u64>(&mut conn, &["XLEN", "{t}:jobs"]).await, 1, "records are not queued");
    assert_eq!(store.dropped_records(), 0);
}

#[actix_rt::test]
async fn next_hands_each_job_out_once_and_wakes_on_a_submit() {
    let server = RedisServer::start();
    let (one, two) = (store(&server, "one").await, store(&server, "two").await);
    for id in ["r-1", "r-2", "r-3"] {
        one.submit(&job(id)).await.unwrap();
    }
    let claims = one.next(10, Duration::from_millis(100)).await.unwrap();
    assert_eq!(ids(&claims), ["r-1", "r-2", "r-3"].map(String::from).into());
    assert!(claims.iter().all(|c| c.receipt.contains('-')), "{claims:?}");
    assert_eq!(one.next(10, Duration::ZERO).await.unwrap(), vec![]);
    assert_eq!(two.next(10, Duration::from_millis(50)).await.unwrap(), vec![]);

    // A blocked read answers as soon as a job is queued, long before its wait is over.
    let (claims, submitted) = within(Duration::from_secs(3), async {
        futures_util::future::join(two.next(5, Duration::from_secs(10)), async {
            actix_rt::time::sleep(Duration::from_millis(50)).await;
            one.submit(&job("r-4")).await
        })
        .await
    })
    .await;
    submitted.unwrap();
    assert_eq!(ids(&claims.unwrap()), ["r-4".to_string()].into());
}

#[actix_rt::test]
async fn jobs_queued_before_the_group_existed_are_delivered() {
    let server = RedisServer::start();
    let mut conn = raw(&server).await;
    let _: String = query(&mut conn, &["XADD", "{t}:jobs", "*", "id", "early"]).await;
    let store = store(&server, "a").await;
    assert_eq!(ids(&store.next(10, Duration::ZERO).await.unwrap()), ["early".to_string()].into());
}

#[actix_rt::test]
async fn a_dead_runners_jobs_are_taken_over_after_the_lease_only() {
    let server = RedisServer::start();
    let (one, two) = (store(&server, "one").await, store(&server, "two").await);
    let mut conn = raw(&server).await;
    for id in ["r-1", "r-2"] {
        one.submit(&job(id)).await.unwrap();
    }
    let held = one.next(10, Duration::ZERO).await.unwrap();
    assert_eq!(held.len(), 2);
    for claim in &held {
        assert_eq!(one.start(&claim.id).await.unwrap().unwrap().into_job().doc.status, JobStatus::Processing);
    }

    // While `one` heartbeats (every ~50 ms, lease 300 ms), `two` gets nothing.
    let alive_until = Instant::now() + 3 * LEASE;
    let mut last_beat = Instant::now();
    while Instant::now() < alive_until {
        last_beat = Instant::now();
        one.heartbeat(&held).await.unwrap();
        assert_eq!(two.next(10, Duration::from_millis(50)).await.unwrap(), vec![], "taken while alive");
    }

    // `one` dies: after the lease, `two` takes both over.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut taken = Vec::new();
    while taken.len() < 2 {
        assert!(Instant::now() < deadline, "never taken over");
        taken.extend(two.next(10, Duration::from_millis(50)).await.unwrap());
    }
    assert!(last_beat.elapsed() >= LEASE, "taken over {:?} after the last heartbeat", last_beat.elapsed());
    let receipts = |c: &[Claim]| c.iter().map(|c| c.receipt.clone()).collect::<BTreeSet<_>>();
    assert_eq!(receipts(&taken), receipts(&held), "the same queue entries");
    for claim in &taken {
        let job = two.start(&claim.id).await.unwrap().unwrap().into_job();
        assert_eq!((job.doc.status, job.doc.takeovers), (JobStatus::Processing, 1));
    }

    // A late heartbeat of the old runner does not take the jobs back.
    one.heartbeat(&held).await.unwrap();
    let pending: Vec<(String, String, u64, u64)> =
        query(&mut conn, &["XPENDING", "{t}:jobs", "runners", "-", "+", "10"]).await;
    assert!(pending.iter().all(|(_, owner, _, _)| owner == "two"), "{pending:?}");
}

#[actix_rt::test]
async fn a_job_whose_runner_died_before_starting_it_is_not_a_takeover() {
    let server = RedisServer::start();
    let (one, two) = (store(&server, "one").await, store(&server, "two").await);
    one.submit(&job("r-1")).await.unwrap();
    assert_eq!(one.next(1, Duration::ZERO).await.unwrap().len(), 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    let claim = loop {
        if let Some(claim) = two.next(1, Duration::from_millis(50)).await.unwrap().pop() {
            break claim;
        }
        assert!(Instant::now() < deadline, "never taken over");
    };
    let job = two.start(&claim.id).await.unwrap().unwrap().into_job();
    assert_eq!((job.doc.status, job.doc.takeovers), (JobStatus::Processing, 0));
}

#[actix_rt::test]
async fn start_and_finish_are_compare_and_set() {
    let server = RedisServer::start();
    let store = store(&server, "a").await;
    let mut conn = raw(&server).await;
    let submitted = job("r-1");
    store.submit(&submitted).await.unwrap();

    assert!(!store.finish(&completed(&submitted)).await.unwrap(), "finish over pending");
    assert_eq!(store.get("r-1").await.unwrap(), Some(submitted.clone()));

    let running = store.start("r-1").await.unwrap().unwrap().into_job();
    assert_eq!((running.doc.status, running.doc.takeovers), (JobStatus::Processing, 0));
    assert_eq!(store.get("r-1").await.unwrap(), Some(running.clone()));
    assert_eq!(query::<String>(&mut conn, &["HGET", "{t}:job:r-1", "state"]).await, "processing");

    let done = completed(&running);
    assert!(store.finish(&done).await.unwrap());
    assert_eq!(store.get("r-1").await.unwrap(), Some(done.clone()), "stored byte for byte");
    assert_eq!(query::<String>(&mut conn, &["HGET", "{t}:job:r-1", "state"]).await, "completed");
    assert!(query::<i64>(&mut conn, &["PTTL", "{t}:job:r-1"]).await > 0, "the expiry is kept");

    let mut failed = running.clone();
    failed.doc.status = JobStatus::Failed;
    failed.doc.error = Some(JobError { code: "late".into(), message: "late".into(), retryable: false });
    assert!(!store.finish(&failed).await.unwrap(), "second finish");
    assert_eq!(store.start("r-1").await.unwrap(), Some(Start::Final(done.clone())), "start leaves a final job alone");
    assert_eq!(store.get("r-1").await.unwrap(), Some(done));

    assert_eq!(store.start("nope").await.unwrap(), None);
    assert!(!store.finish(&completed(&job("nope"))).await.unwrap());
}

#[actix_rt::test]
async fn concurrent_changes_are_never_lost() {
    let server = RedisServer::start();
    let (one, two) = (store(&server, "one").await, store(&server, "two").await);
    one.submit(&job("r-1")).await.unwrap();
    one.start("r-1").await.unwrap();
    // Eight takeovers and a callback update at once, over two connections: every
    // read-modify-write lands (the version check sends losers round again).
    let mut callback = CallbackState::new();
    callback.attempts = 3;
    let starts = join_all((0..8).map(|i| if i % 2 == 0 { one.start("r-1") } else { two.start("r-1") }));
    let (starts, updated) = futures_util::future::join(starts, two.update_callback("r-1", &callback)).await;
    updated.unwrap();
    let counted: BTreeSet<u32> = starts.into_iter().map(|s| s.unwrap().unwrap().into_job().doc.takeovers).collect();
    assert_eq!(counted, (1..=8).collect(), "each start saw its own count");
    let stored = one.get("r-1").await.unwrap().unwrap();
    assert_eq!((stored.doc.takeovers, stored.doc.callback), (8, Some(callback)));
}

#[actix_rt::test]
async fn a_job_whose_runs_kept_ending_with_their_process_is_failed_in_redis_not_run_again() {
    let server = RedisServer::start();
    let store = store_with(&server, RedisSettings { max_runs: 2, ..settings("a") }).await;
    let mut conn = raw(&server).await;
    store.submit(&job("r-1")).await.unwrap();
    assert!(matches!(store.start("r-1").await.unwrap(), Some(Start::Run(_))), "first run");
    let second = store.start("r-1").await.unwrap().unwrap();
    assert!(matches!(&second, Start::Run(job) if job.doc.takeovers == 1), "{second:?}");

    let Some(Start::Abandoned(failed)) = store.start("r-1").await.unwrap() else { panic!("run a third time") };
    let error = failed.doc.error.clone().unwrap();
    assert_eq!(
        (failed.doc.status, error.code.as_str(), error.retryable),
        (JobStatus::Failed, "job_run_interrupted", false)
    );
    let stored = store.get("r-1").await.unwrap().unwrap();
    assert_eq!(
        (stored.doc.status, stored.doc.error.clone(), stored.doc.takeovers),
        (JobStatus::Failed, Some(error), 2)
    );
    assert_eq!(query::<String>(&mut conn, &["HGET", "{t}:job:r-1", "state"]).await, "failed");
    // Whoever starts it next finds it final: it is counted once.
    assert_eq!(store.start("r-1").await.unwrap(), Some(Start::Final(stored)));
}

#[actix_rt::test]
async fn a_run_released_at_a_graceful_shutdown_does_not_count_against_max_runs() {
    let server = RedisServer::start();
    let store = store_with(&server, RedisSettings { max_runs: 2, ..settings("a") }).await;
    store.submit(&job("r-1")).await.unwrap();
    store.release("r-1").await.unwrap();
    assert_eq!(store.get("r-1").await.unwrap().unwrap().work.unwrap().handoffs, 0, "a pending job is not released");
    store.start("r-1").await.unwrap();
    store.release("r-1").await.unwrap();
    // Run 1 was handed over: run 2 starts as a takeover, and when run 2 ends with its process,
    // one run was interrupted, so run 3 starts too; when it ends as well, that makes two.
    assert!(matches!(store.start("r-1").await.unwrap(), Some(Start::Run(_))), "run 2");
    assert!(matches!(store.start("r-1").await.unwrap(), Some(Start::Run(_))), "run 3");
    assert!(matches!(store.start("r-1").await.unwrap(), Some(Start::Abandoned(_))));
}

#[actix_rt::test]
async fn update_callback_sets_the_callback_of_any_job() {
    let server = RedisServer::start();
    let store = store(&server, "a").await;
    let submitted = job("r-1");
    store.submit(&submitted).await.unwrap();
    let mut callback = CallbackState::new();
    store.update_callback("r-1", &callback).await.unwrap();
    let mut expected = submitted.clone();
    expected.doc.callback = Some(callback.clone());
    assert_eq!(store.get("r-1").await.unwrap(), Some(expected));

    store.start("r-1").await.unwrap();
    let done = completed(&store.get("r-1").await.unwrap().unwrap());
    assert!(store.finish(&done).await.unwrap());
    callback.state = DeliveryState::Delivered;
    callback.attempts = 2;
    callback.last_status_code = Some(204);
    store.update_callback("r-1", &callback).await.unwrap();
    let stored = store.get("r-1").await.unwrap().unwrap();
    assert_eq!(stored.doc.callback, Some(callback.clone()));
    assert_eq!(stored.doc.status, JobStatus::Completed);
    assert_eq!(stored.doc.result, done.doc.result);

    store.update_callback("nope", &callback).await.unwrap();
    assert_eq!(store.get("nope").await.unwrap(), None);
}

#[actix_rt::test]
async fn ack_takes_the_job_off_the_queue_for_good() {
    let server = RedisServer::start();
    let (one, two) = (store(&server, "one").await, store(&server, "two").await);
    let mut conn = raw(&server).await;
    one.submit(&job("r-1")).await.unwrap();
    let claims = one.next(1, Duration::ZERO).await.unwrap();
    assert_eq!(one.backlog().await.unwrap(), 1, "running jobs are in the backlog");
    one.ack(&claims[0]).await.unwrap();
    assert_eq!(one.backlog().await.unwrap(), 0);
    assert_eq!(query::<u64>(&mut conn, &["XLEN", "{t}:jobs"]).await, 0);
    let pending: Vec<(String, String, u64, u64)> =
        query(&mut conn, &["XPENDING", "{t}:jobs", "runners", "-", "+", "10"]).await;
    assert_eq!(pending, vec![], "nothing pending");

    // The lease passing is the point here, so this waits for it.
    actix_rt::time::sleep(LEASE + Duration::from_millis(100)).await;
    assert_eq!(two.next(10, Duration::ZERO).await.unwrap(), vec![]);
    assert_eq!(one.next(10, Duration::ZERO).await.unwrap(), vec![]);
}

#[actix_rt::test]
async fn a_full_queue_refuses_new_jobs_without_storing_them() {
    let server = RedisServer::start();
    let store = store_with(&server, RedisSettings { stream_max_len: 2, ..settings("a") }).await;
    store.submit(&job("r-1")).await.unwrap();
    store.submit(&job("r-2")).await.unwrap();
    assert_eq!(store.submit(&job("r-3")).await, Err(StoreError::Full));
    assert_eq!(store.get("r-3").await.unwrap(), None);

    let claim = store.next(1, Duration::ZERO).await.unwrap().pop().unwrap();
    store.ack(&claim).await.unwrap();
    store.submit(&job("r-3")).await.unwrap();
}

#[actix_rt::test]
async fn one_store_serves_every_arbiter_thread() {
    let server = RedisServer::start();
    let store = Arc::new(store(&server, "a").await);
    store.submit(&job("r-1")).await.unwrap();

    // Another arbiter (its own thread and current-thread runtime) uses the same store. Two
    // blocking reads at once there: the second opens a dedicated connection on that thread.
    let worker = actix_rt::Arbiter::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let shared = store.clone();
    worker.spawn(async move {
        let wait = Duration::from_millis(100);
        let (a, b) = futures_util::future::join(shared.next(1, wait), shared.next(1, wait)).await;
        let got = shared.get("r-1").await;
        shared.record(completed(&job("s-1")));
        let _ = tx.send((a.and_then(|a| Ok([a, b?].concat())), got));
    });
    let (claims, got) = within(Duration::from_secs(5), rx).await.expect("the worker answered");
    assert_eq!(ids(&claims.unwrap()), ["r-1".to_string()].into());
    assert_eq!(got.unwrap(), Some(job("r-1")));

    // The worker stops and its connections die with its runtime; reads here still work
    // (three at once, so every pooled connection is tried, the dead one replaced).
    worker.stop();
    worker.join().unwrap();
    for id in ["r-2", "r-3", "r-4"] {
        store.submit(&job(id)).await.unwrap();
    }
    let wait = Duration::from_millis(500);
    let reads = join_all((0..3).map(|_| store.next(1, wait))).await;
    let claims: Vec<Claim> = reads.into_iter().flat_map(|r| r.unwrap()).collect();
    assert_eq!(ids(&claims), ["r-2", "r-3", "r-4"].map(String::from).into());
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.get("s-1").await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "the worker's record never landed");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
}

#[actix_rt::test]
async fn a_closed_port_fails_connect_quickly() {
    let mut server = RedisServer::start();
    server.kill();
    let url = SecretString::from(server.url());
    let answer = within(OP_TIMEOUT + SLACK, RedisStore::connect(&url, settings("a"))).await;
    unavailable(answer);
}

#[actix_rt::test]
async fn every_call_is_bounded_when_redis_dies_and_recovers_after_a_restart() {
    let mut server = RedisServer::start();
    let store = store(&server, "a").await;
    store.submit(&job("r-1")).await.unwrap();
    let claim = store.next(1, Duration::from_millis(10)).await.unwrap().pop().unwrap();
    server.kill();

    every_call_is_unavailable(&store, &claim).await;

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.submit(&job("r-3")).await.is_err() {
        assert!(Instant::now() < deadline, "the store did not recover");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    // The blocking read's pooled connection died with the server; it is replaced.
    let claims = store.next(1, Duration::from_millis(100)).await.unwrap();
    assert_eq!(ids(&claims), ["r-3".to_string()].into());
}

#[actix_rt::test]
async fn every_call_is_bounded_when_redis_hangs() {
    let server = RedisServer::start();
    let store = store_with(&server, RedisSettings { record_queue: 4, ..settings("a") }).await;
    store.submit(&job("r-1")).await.unwrap();
    let claim = store.next(1, Duration::from_millis(10)).await.unwrap().pop().unwrap();
    server.pause();

    every_call_is_unavailable(&store, &claim).await;

    // Recording never waits: what does not fit the queue is dropped and counted.
    within(Duration::from_millis(50), async {
        for i in 0..100 {
            store.record(completed(&job(&format!("s-{i}"))));
        }
    })
    .await;
    assert!(store.dropped_records() >= 90, "dropped {}", store.dropped_records());

    server.resume();
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.get("r-1").await.is_err() {
        assert!(Instant::now() < deadline, "the store did not recover");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_rt::test]
async fn the_password_never_shows() {
    let server = RedisServer::start_with(&["--requirepass", "right-pw-7d1e"]);
    let wrong = SecretString::from(server.url_with_password(Some("wrong-pw-93ab")));
    let err = RedisStore::connect(&wrong, settings("a")).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("wrong-pw-93ab"), "{err:?}");

    let right = SecretString::from(server.url_with_password(Some("right-pw-7d1e")));
    let store = RedisStore::connect(&right, settings("a")).await.unwrap();
    store.submit(&job("r-1")).await.unwrap();
    assert!(!format!("{store:?}").contains("right-pw-7d1e"), "{store:?}");
}
