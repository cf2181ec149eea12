//! Several courier processes sharing one upstream through Redis: one budget for all of them,
//! one token, shared jobs; a replica killed mid-run, and Redis stopped and started again.

mod support;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use courier::simulator::{SimConfig, Simulator};
use serde_json::{json, Value};
use support::process::{signal, wait_exit, Serving};
use support::redis::RedisServer;
use support::{read_answer, Answer};

fn env(sim: &Simulator, redis: &RedisServer, replicas: u32) -> Vec<(&'static str, String)> {
    vec![
        ("EXTERNAL_API_BASE_URL", sim.base_url()),
        ("EXTERNAL_API_KEY", "demo-api-key".into()),
        ("EXTERNAL_OAUTH_CLIENT_ID", "courier-demo".into()),
        ("EXTERNAL_OAUTH_CLIENT_SECRET", "demo-secret".into()),
        ("EXTERNAL_API_RATE_LIMIT", "600".into()),
        ("EXTERNAL_API_RATE_BURST", "5".into()),
        ("EXTERNAL_API_CACHE_TTL", "0".into()),
        ("REDIS_URL", redis.url()),
        ("COURIER_REPLICAS", replicas.to_string()),
        ("COURIER_JOB_LEASE", "1".into()),
        ("COURIER_WORKERS", "1".into()),
    ]
}

async fn simulator(token_ttl: Duration) -> Simulator {
    let config = SimConfig { rate_limit_per_minute: 600, rate_burst: 10, token_ttl, ..SimConfig::default() };
    Simulator::start(config).await.unwrap()
}

/// Answers of a load run, by status (0: no answer, e.g. the replica was killed).
#[derive(Default, Debug)]
struct Tally {
    by_status: std::collections::BTreeMap<u16, u64>,
    bad: Vec<Value>,
}

/// Sends `per_second` requests per second for `run_for`, round-robin over the replicas
/// `alive` says are up, each with a 2 s deadline; waits for every answer.
async fn load(
    replicas: Rc<Vec<String>>,
    alive: Rc<RefCell<Vec<bool>>>,
    per_second: u32,
    run_for: Duration,
    async_allowed_503: bool,
) -> Tally {
    let http = Rc::new(awc::Client::builder().timeout(Duration::from_secs(10)).finish());
    let tally = Rc::new(RefCell::new(Tally::default()));
    let mut tick = actix_rt::time::interval(Duration::from_secs(1) / per_second);
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut n = 0usize;
    while started.elapsed() < run_for {
        tick.tick().await;
        n += 1;
        let live: Vec<usize> = (0..replicas.len()).filter(|&i| alive.borrow()[i]).collect();
        let target = format!("http://{}/api/external/process", replicas[live[n % live.len()]]);
        let (http, tally) = (http.clone(), tally.clone());
        tasks.push(actix_rt::spawn(async move {
            let request = json!({"data": {"input": format!("replicated {n}")}});
            let sent = http.post(&target).insert_header(("x-request-timeout", "2")).send_json(&request).await;
            let answer = match sent {
                Ok(response) => Some(read_answer(response).await),
                Err(_) => None,
            };
            let mut tally = tally.borrow_mut();
            match answer {
                Some(answer) => {
                    let status = answer.status.as_u16();
                    *tally.by_status.entry(status).or_default() += 1;
                    let allowed = status == 200
                        || status == 429
                        || (async_allowed_503 && answer.body["error"]["code"] == "job_store_unavailable");
                    if !allowed {
                        tally.bad.push(answer.body);
                    }
                }
                None => *tally.by_status.entry(0).or_default() += 1,
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    Rc::try_unwrap(tally).unwrap().into_inner()
}

async fn submit_job(http: &awc::Client, gateway: &str, input: &str) -> Answer {
    let request = json!({"data": {"input": input}, "options": {"async": true}});
    read_answer(http.post(format!("http://{gateway}/api/external/process")).send_json(&request).await.unwrap()).await
}

/// Waits (bounded) until every job is final, reading through `gateway`.
async fn all_completed(http: &awc::Client, gateway: &str, urls: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for url in urls {
        loop {
            let answer = read_answer(http.get(format!("http://{gateway}{url}")).send().await.unwrap()).await;
            if answer.body["status"] == "completed" {
                break;
            }
            assert_ne!(answer.body["status"], "failed", "{answer:?}");
            assert!(Instant::now() < deadline, "job never completed: {answer:?}");
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[actix_rt::test]
async fn three_replicas_share_one_budget_and_one_token_and_survive_losing_one() {
    let redis = RedisServer::start();
    let token_ttl = Duration::from_secs(5);
    let sim = simulator(token_ttl).await;
    let started = Instant::now();
    let mut replicas: Vec<Serving> = (0..3).map(|_| Serving::start(&env(&sim, &redis, 3))).collect();
    let gateways = Rc::new(replicas.iter().map(|r| r.gateway.clone()).collect::<Vec<_>>());
    let alive = Rc::new(RefCell::new(vec![true; 3]));
    let http = awc::Client::builder().timeout(Duration::from_secs(10)).finish();

    // Async jobs accepted by every replica, the third included.
    let mut jobs = Vec::new();
    for (i, gateway) in gateways.iter().enumerate() {
        for j in 0..5 {
            let accepted = submit_job(&http, gateway, &format!("job {i}-{j}")).await;
            assert_eq!(accepted.status, 202, "{accepted:?}");
            jobs.push(accepted.body["status_url"].as_str().unwrap().to_owned());
        }
    }
    let sim_before = sim.stats().process.total;

    // 5x the limit, spread over the three, for 22 s; the third replica dies after 10 s.
    let load_started = Instant::now();
    let run = actix_rt::spawn(load(gateways.clone(), alive.clone(), 50, Duration::from_secs(22), false));
    actix_rt::time::sleep(Duration::from_secs(10)).await;
    alive.borrow_mut()[2] = false;
    signal(&replicas[2].child, libc::SIGKILL);
    wait_exit(&mut replicas[2].child);
    let tally = run.await.unwrap();
    let loaded = load_started.elapsed().as_secs_f64();
    let stats = sim.stats();

    assert!(tally.bad.is_empty(), "only 200 and 429: {:?}", tally.bad);
    assert!(tally.by_status.get(&200).copied().unwrap_or(0) > 150, "{tally:?}");
    assert_eq!(stats.rate_limited_total, 0, "the upstream never refused: {stats:?}");
    let received = (stats.process.total - sim_before) as f64;
    let allowed = 10.0 + 10.0 * loaded;
    assert!(received <= allowed, "{received} upstream requests > {allowed:.0} allowed in {loaded:.1} s");
    assert!(received >= 0.95 * 10.0 * loaded, "{received} upstream requests < 95% of {:.0}", 10.0 * loaded);

    // Every accepted job completes, the dead replica's too.
    all_completed(&http, &gateways[0], &jobs).await;
    let total = started.elapsed().as_secs_f64();
    let lifetimes = (total / token_ttl.as_secs_f64()).ceil() as u64;
    let tokens = sim.stats().token.total;
    assert!(
        tokens <= lifetimes + 1,
        "{tokens} token requests for three replicas in {total:.1} s ({lifetimes} lifetimes)"
    );
}

#[actix_rt::test]
async fn a_redis_outage_degrades_without_errors_and_sharing_resumes() {
    let mut redis = RedisServer::start();
    let sim = simulator(Duration::from_secs(3600)).await;
    let replicas: Vec<Serving> = (0..2).map(|_| Serving::start(&env(&sim, &redis, 2))).collect();
    let gateways = Rc::new(replicas.iter().map(|r| r.gateway.clone()).collect::<Vec<_>>());
    let alive = Rc::new(RefCell::new(vec![true; 2]));
    let http = awc::Client::builder().timeout(Duration::from_secs(10)).finish();

    let load_started = Instant::now();
    let run = actix_rt::spawn(load(gateways.clone(), alive.clone(), 20, Duration::from_secs(12), false));
    actix_rt::time::sleep(Duration::from_secs(3)).await;
    redis.kill();
    // While Redis is down: async jobs are refused with 503, the replicas say degraded.
    let refused = submit_job(&http, &gateways[0], "no store").await;
    assert_eq!((refused.status.as_u16(), refused.error_code()), (503, "job_store_unavailable"));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let admin = state(&http, &replicas[1]).await;
        if admin["shared_state"] == "degraded" {
            break;
        }
        assert!(Instant::now() < deadline, "{admin}");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    actix_rt::time::sleep(Duration::from_secs(3)).await;
    redis.restart();
    let tally = run.await.unwrap();
    let loaded = load_started.elapsed().as_secs_f64();

    assert!(tally.bad.is_empty(), "no 5xx but the documented 503 for async jobs: {:?}", tally.bad);
    let stats = sim.stats();
    assert!((stats.process.total as f64) <= 10.0 + 10.0 * loaded, "the limit held: {stats:?}");
    assert_eq!(stats.rate_limited_total, 0, "{stats:?}");
    // Shared mode resumes by itself, and async jobs are accepted again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let admin = state(&http, &replicas[0]).await;
        let job = submit_job(&http, &gateways[0], "store is back").await;
        if admin["shared_state"] == "shared" && job.status == 202 {
            break;
        }
        assert!(Instant::now() < deadline, "shared mode did not resume: {admin} {job:?}");
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The replica's `/admin/state`, found through its log line.
async fn state(http: &awc::Client, replica: &Serving) -> Value {
    let admin = replica.admin.clone();
    let mut response = http.get(format!("http://{admin}/admin/state")).send().await.unwrap();
    response.json().await.unwrap()
}
