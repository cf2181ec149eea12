//! Async jobs with Redis, against real processes: a courier killed with SIGKILL or stopped
//! with SIGTERM while jobs run loses none of them; another process finishes them all, except a
//! job whose runs keep ending with their process: that one is failed, not run on replica after
//! replica.

mod support;

use std::time::{Duration, Instant};

use courier::simulator::{FaultsPatch, SimConfig, Simulator};
use serde_json::{json, Value};
use support::process::{signal, wait_exit, wait_line, Serving};
use support::receiver::Receiver;
use support::redis::RedisServer;
use support::{body, metric_value, read_answer, PairBuilder};

fn env(sim: &Simulator, redis: &RedisServer) -> Vec<(&'static str, String)> {
    vec![
        ("EXTERNAL_API_BASE_URL", sim.base_url()),
        ("EXTERNAL_API_KEY", "demo-api-key".into()),
        ("EXTERNAL_OAUTH_CLIENT_ID", "courier-demo".into()),
        ("EXTERNAL_OAUTH_CLIENT_SECRET", "demo-secret".into()),
        ("EXTERNAL_API_RATE_LIMIT", "6000000".into()),
        ("EXTERNAL_API_RATE_BURST", "100000".into()),
        ("REDIS_URL", redis.url()),
        ("COURIER_JOB_LEASE", "1".into()),
        ("COURIER_JOB_CONCURRENCY", "10".into()),
        ("COURIER_WORKERS", "1".into()),
        ("COURIER_SHUTDOWN_GRACE", "0.2".into()),
    ]
}

/// Submits `n` async jobs and returns their status URLs.
async fn submit(http: &awc::Client, courier: &Serving, n: usize) -> Vec<String> {
    let mut urls = Vec::new();
    for i in 0..n {
        let request = json!({"data": {"input": format!("durable {i}")}, "options": {"async": true}});
        let answer =
            read_answer(http.post(courier.url("/api/external/process")).send_json(&request).await.unwrap()).await;
        assert_eq!(answer.status, 202, "{answer:?}");
        urls.push(answer.body["status_url"].as_str().unwrap().to_owned());
    }
    urls
}

/// Waits (bounded) until every job is final, reading through `courier`.
async fn all_final(http: &awc::Client, courier: &Serving, urls: &[String]) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut docs = Vec::new();
    for url in urls {
        loop {
            let answer = read_answer(http.get(courier.url(url)).send().await.unwrap()).await;
            assert_eq!(answer.status, 200, "{answer:?}");
            if matches!(answer.body["status"].as_str(), Some("completed" | "failed")) {
                docs.push(answer.body);
                break;
            }
            assert!(Instant::now() < deadline, "job never finished: {answer:?}");
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
    }
    docs
}

async fn slow_simulator() -> Simulator {
    let sim =
        Simulator::start(SimConfig { rate_limit_per_minute: 6_000_000, rate_burst: 100_000, ..SimConfig::default() })
            .await
            .unwrap();
    sim.set_faults(FaultsPatch { latency_ms: Some(400.0), ..FaultsPatch::default() });
    sim
}

/// Waits (bounded) until the simulator answered `done` and holds some in flight.
async fn wait_mid_run(sim: &Simulator, done: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = sim.stats();
        if stats.process.ok >= done && stats.in_flight > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "jobs never got going: {stats:?}");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
}

#[actix_rt::test]
async fn no_accepted_job_is_lost_when_courier_is_killed() {
    let redis = RedisServer::start();
    let sim = slow_simulator().await;
    let http = awc::Client::builder().timeout(Duration::from_secs(20)).finish();
    let mut first = Serving::start(&env(&sim, &redis));
    let urls = submit(&http, &first, 50).await;
    wait_mid_run(&sim, 10).await;
    signal(&first.child, libc::SIGKILL);
    wait_exit(&mut first.child);

    let second = Serving::start(&env(&sim, &redis));
    let docs = all_final(&http, &second, &urls).await;
    assert!(docs.iter().all(|d| d["status"] == "completed"), "every job completed: {docs:?}");
    // The jobs the killed process held are taken over (and say so); at most its 10 runners.
    let taken_over = docs.iter().filter(|d| d["takeovers"].as_u64().unwrap_or(0) > 0).count() as u64;
    assert!((1..=10).contains(&taken_over), "{taken_over} jobs taken over");
    // Only a job that was mid-call when its process died may have reached the upstream twice;
    // no upstream call failed, so no retry explains more.
    let total = sim.stats().process.total;
    assert!(total <= 50 + taken_over, "{total} upstream calls for 50 jobs, {taken_over} taken over");
}

#[actix_rt::test]
async fn jobs_left_at_sigterm_stay_pending_for_another_process() {
    let redis = RedisServer::start();
    let sim = slow_simulator().await;
    let http = awc::Client::builder().timeout(Duration::from_secs(20)).finish();
    // One run per job: any run that counted as interrupted would fail its job. Runs left at
    // SIGTERM are handed over, so they do not count. Calls that outlast the first process make
    // sure some are.
    sim.set_faults(FaultsPatch { latency_ms: Some(10_000.0), ..FaultsPatch::default() });
    let mut env = env(&sim, &redis);
    env.push(("COURIER_JOB_MAX_RUNS", "1".into()));
    let mut first = Serving::start(&env);
    let urls = submit(&http, &first, 30).await;
    wait_mid_run(&sim, 0).await;
    signal(&first.child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut first.child).code(), Some(0));
    sim.set_faults(FaultsPatch { latency_ms: Some(400.0), ..FaultsPatch::default() });

    let second = Serving::start(&env);
    let docs = all_final(&http, &second, &urls).await;
    let failed: Vec<&Value> = docs.iter().filter(|d| d["status"] != "completed").collect();
    assert!(failed.is_empty(), "none failed with shutdown or as interrupted: {failed:?}");
    let taken_over = docs.iter().filter(|d| d["takeovers"].as_u64().unwrap_or(0) > 0).count();
    assert!(taken_over >= 1, "no run was handed over mid-call");
}

/// Waits (bounded) until the simulator has received `n` process requests and holds one.
async fn wait_received(sim: &Simulator, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = sim.stats();
        if stats.received >= n && stats.in_flight > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the upstream never got call {n}: {stats:?}");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
}

fn kill(replica: &mut Serving) {
    signal(&replica.child, libc::SIGKILL);
    wait_exit(&mut replica.child);
}

#[actix_rt::test]
async fn a_job_whose_runs_keep_ending_with_their_process_is_failed_instead_of_run_again() {
    let redis = RedisServer::start();
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    // Every call outlasts the replicas that make it: each run ends with its process.
    sim.set_faults(FaultsPatch { latency_ms: Some(30_000.0), ..FaultsPatch::default() });
    let receiver = Receiver::start(&[]).await;
    let mut env = env(&sim, &redis);
    env.extend([
        ("COURIER_JOB_MAX_RUNS", "2".to_owned()),
        ("COURIER_CALLBACK_SECRET", "whsec_poison_3b9d".to_owned()),
        ("COURIER_CALLBACK_ALLOW", "127.0.0.1".to_owned()),
    ]);
    let http = awc::Client::builder().timeout(Duration::from_secs(20)).finish();

    let mut a = Serving::start(&env);
    let request =
        json!({"data": {"input": "poison"}, "options": {"async": true, "callback_url": receiver.url("/hook")}});
    let accepted = read_answer(http.post(a.url("/api/external/process")).send_json(&request).await.unwrap()).await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    let url = accepted.body["status_url"].as_str().unwrap().to_owned();
    wait_received(&sim, 1).await;
    kill(&mut a);
    // B takes it over once A's lease ran out, and runs it: it dies the same way.
    let mut b = Serving::start(&env);
    wait_received(&sim, 2).await;
    kill(&mut b);

    let c = Serving::start(&env);
    let doc = all_final(&http, &c, std::slice::from_ref(&url)).await.remove(0);
    assert_eq!(doc["status"], "failed", "{doc}");
    assert_eq!(doc["error"]["code"], "job_run_interrupted", "{doc}");
    assert_eq!(doc["error"]["retryable"], false, "{doc}");
    let message = doc["error"]["message"].as_str().unwrap();
    assert!(message.contains("2 runs") && message.contains("not run again"), "{message}");
    assert_eq!(doc["takeovers"], 2, "{doc}");
    assert_eq!(sim.stats().received, 2, "C did not call the upstream a third time");

    // Its callback is delivered like any final job's, signed.
    let delivered = receiver.wait_for(1).await.remove(0);
    assert!(delivered.signed_with("whsec_poison_3b9d"));
    assert_eq!(delivered.json()["error"]["code"], "job_run_interrupted");
    // Counted, and logged once.
    let mut metrics = http.get(format!("http://{}/metrics", c.admin)).send().await.unwrap();
    let text = String::from_utf8(metrics.body().limit(4 << 20).await.unwrap().to_vec()).unwrap();
    assert_eq!(metric_value(&text, "courier_jobs_run_interrupted_total", &[]), 1.0, "{text}");
    assert_eq!(metric_value(&text, "courier_jobs_finished_total", &[("state", "failed")]), 1.0);
    let id = accepted.body["request_id"].as_str().unwrap();
    let line = wait_line(&c.logs, |line| {
        let v: Value = serde_json::from_str(line).ok()?;
        (v["event"] == "job_run_interrupted").then_some(v)
    });
    assert_eq!((line["request_id"].as_str(), line["level"].as_str()), (Some(id), Some("WARNING")), "{line}");
    assert_eq!(sim.stats().received, 2, "{:?}", sim.stats());
}

#[actix_rt::test]
async fn with_redis_jobs_and_sync_status_entries_are_shared() {
    let mut redis = RedisServer::start();
    let pair = PairBuilder::default().env("REDIS_URL", redis.url()).start().await;
    let answer = pair.process(body("sync through redis")).await;
    let id = answer.body["request_id"].as_str().unwrap().to_owned();
    let accepted = pair.process(json!({"data": {"input": "async through redis"}, "options": {"async": true}})).await;
    assert_eq!(accepted.status, 202);
    let url = accepted.body["status_url"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sync =
            read_answer(pair.http.get(pair.url(&format!("/api/external/status/{id}"))).send().await.unwrap()).await;
        let job = read_answer(pair.http.get(pair.url(&url)).send().await.unwrap()).await;
        if sync.status == 200 && job.body["status"] == "completed" {
            assert_eq!(sync.body["status"], "completed");
            assert_eq!(job.body["result"]["processed_data"], "ASYNC THROUGH REDIS");
            break;
        }
        assert!(Instant::now() < deadline, "{sync:?} {job:?}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    // Redis going away: new async jobs are refused with 503, sync requests still served.
    redis.kill();
    let refused = pair.process(json!({"data": {"input": "no store"}, "options": {"async": true}})).await;
    assert_eq!((refused.status.as_u16(), refused.error_code()), (503, "job_store_unavailable"));
    assert!(refused.header("retry-after").is_some());
    assert_eq!(pair.process(body("still served")).await.status, 200);
    pair.stop().await;
}
