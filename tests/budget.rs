//! The upstream budget over real HTTP: used to the full and never overrun, following the
//! upstream's own rate headers, shared fairly by weight, and retries that cannot become a
//! storm. Small limits and short windows keep each test to seconds.

mod support;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{body, count, Pair, PairBuilder};

/// One answered request of a load run.
#[derive(Clone, Debug)]
struct Outcome {
    status: u16,
    latency: Duration,
    retry_after: Option<u64>,
}

/// Sends `per_second` requests per second for `run_for`, whatever the answers (open loop),
/// each with `X-Request-Timeout: deadline`, and waits for every answer.
async fn open_loop(pair: &Rc<Pair>, per_second: u32, run_for: Duration, deadline: &str) -> Vec<Outcome> {
    let results = Rc::new(RefCell::new(Vec::new()));
    let mut tasks = Vec::new();
    let mut tick = actix_rt::time::interval(Duration::from_secs(1) / per_second);
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < run_for {
        tick.tick().await;
        n += 1;
        let (pair, results, deadline) = (pair.clone(), results.clone(), deadline.to_owned());
        tasks.push(actix_rt::spawn(async move {
            let sent = Instant::now();
            let answer = pair.process_with(body(&format!("load {n}")), &[("x-request-timeout", &deadline)]).await;
            results.borrow_mut().push(Outcome {
                status: answer.status.as_u16(),
                latency: sent.elapsed(),
                retry_after: answer.header("retry-after").and_then(|v| v.parse().ok()),
            });
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let outcomes = results.borrow().clone();
    outcomes
}

#[actix_rt::test]
async fn five_times_the_limit_uses_the_budget_fully_without_a_single_429_upstream() {
    // Upstream: 600/min (10/s), bucket of 10. courier: the same rate, burst 5.
    let pair = Rc::new(
        PairBuilder::default()
            .sim(|s| {
                s.rate_limit_per_minute = 600;
                s.rate_burst = 10;
            })
            .env("EXTERNAL_API_RATE_LIMIT", "600")
            .env("EXTERNAL_API_RATE_BURST", "5")
            .start()
            .await,
    );
    let started = Instant::now();
    let outcomes = open_loop(&pair, 50, Duration::from_secs(10), "2").await;
    let elapsed = started.elapsed().as_secs_f64();

    let stats = pair.sim_stats().await;
    let received = count(&stats, &["process", "total"]) as f64;
    let allowed = 10.0 + 10.0 * elapsed;
    assert_eq!(count(&stats, &["rate_limited_total"]), 0, "the upstream never had to refuse: {stats}");
    assert!(received <= allowed, "received {received} > allowed {allowed:.0}");
    assert!(received >= 0.95 * 10.0 * elapsed, "received {received} < 95% of {:.0}", 10.0 * elapsed);

    let ok = outcomes.iter().filter(|o| o.status == 200).count();
    let refused: Vec<_> = outcomes.iter().filter(|o| o.status == 429).collect();
    assert_eq!(ok + refused.len(), outcomes.len(), "only 200s and 429s: {outcomes:?}");
    assert_eq!(ok as f64, received);
    assert!(refused.len() > outcomes.len() / 2, "most of a 5x overload is refused");
    for outcome in &refused {
        assert!(outcome.retry_after.is_some_and(|s| s >= 1), "429 without Retry-After: {outcome:?}");
        assert!(outcome.latency < Duration::from_secs(1), "refused well before the 2 s deadline: {outcome:?}");
    }
    let over_budget = pair.metric("courier_budget_rejections_total", &[("reason", "deadline")]).await;
    assert!(over_budget >= refused.len() as f64 * 0.9, "refusals are counted: {over_budget}");
    drop(outcomes);
    Rc::try_unwrap(pair).ok().unwrap().stop().await;
}

#[actix_rt::test]
async fn a_shared_upstream_account_is_followed_through_its_rate_headers() {
    // Another consumer of the same upstream account drains the bucket every second.
    let pair = Rc::new(
        PairBuilder::default()
            .sim(|s| {
                s.rate_limit_per_minute = 600;
                s.rate_burst = 20;
            })
            .env("EXTERNAL_API_RATE_LIMIT", "600")
            .env("EXTERNAL_API_RATE_BURST", "5")
            .start()
            .await,
    );
    // Every second the other consumer takes 5 of the account's 10 per second.
    let drainer = {
        let pair = pair.clone();
        actix_rt::spawn(async move {
            let mut drains = 0;
            let mut tick = actix_rt::time::interval(Duration::from_secs(1));
            tick.tick().await;
            for _ in 0..7 {
                tick.tick().await;
                pair.faults(json!({"rate_consume": 5})).await;
                drains += 1;
            }
            drains
        })
    };
    let started = Instant::now();
    let outcomes = open_loop(&pair, 20, Duration::from_secs(8), "3").await;
    let elapsed = started.elapsed().as_secs_f64();
    let drains = drainer.await.unwrap();

    let stats = pair.sim_stats().await;
    let upstream_429s = count(&stats, &["rate_limited_total"]);
    assert!(upstream_429s <= drains, "at most one upstream 429 per drain: {upstream_429s} for {drains}: {stats}");
    let pauses = pair.metric("courier_budget_pauses_total", &[]).await;
    assert!(pauses >= 1.0, "courier learned pauses from the upstream");
    assert!(outcomes.iter().all(|o| o.status == 200 || o.status == 429), "{outcomes:?}");
    let ok = count(&stats, &["process", "ok"]) as f64;
    let left_for_courier = 20.0 + 10.0 * elapsed - 5.0 * drains as f64;
    assert!(ok <= left_for_courier, "{ok} > {left_for_courier}");
    assert!(ok >= 0.8 * 5.0 * elapsed, "courier kept using what the account had left: {ok} in {elapsed:.1} s");
    Rc::try_unwrap(pair).ok().unwrap().stop().await;
}

fn clients_file(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("courier-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("clients.toml");
    let text = format!(
        "[[client]]\nname = \"heavy\"\nkey_sha256 = \"{}\"\nweight = 3\n\n[[client]]\nname = \"light\"\nkey_sha256 = \"{}\"\nweight = 1\n",
        courier::config::key_sha256_hex("heavy-key"),
        courier::config::key_sha256_hex("light-key"),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Keeps `concurrency` requests of one client in flight until `until`; returns when each
/// 200 finished.
async fn backlog(pair: Rc<Pair>, key: &'static str, concurrency: usize, until: Instant) -> Vec<Instant> {
    let served = Rc::new(RefCell::new(Vec::new()));
    let workers: Vec<_> = (0..concurrency)
        .map(|i| {
            let (pair, served) = (pair.clone(), served.clone());
            actix_rt::spawn(async move {
                let auth = format!("Bearer {key}");
                while Instant::now() < until {
                    let headers = [("authorization", auth.as_str()), ("x-request-timeout", "3")];
                    let answer = pair.process_with(body(&format!("{key} {i}")), &headers).await;
                    match answer.status.as_u16() {
                        200 => served.borrow_mut().push(Instant::now()),
                        429 => actix_rt::time::sleep(Duration::from_millis(100)).await,
                        other => panic!("unexpected {other}: {answer:?}"),
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let times = served.borrow().clone();
    times
}

#[actix_rt::test]
async fn busy_clients_share_by_weight_and_an_idle_clients_share_goes_to_the_other() {
    let path = clients_file("fair");
    let pair = Rc::new(
        PairBuilder::default()
            .sim(|s| {
                s.rate_limit_per_minute = 1200;
                s.rate_burst = 20;
            })
            .env("EXTERNAL_API_RATE_LIMIT", "1200")
            .env("EXTERNAL_API_RATE_BURST", "1")
            .env("COURIER_CLIENTS_FILE", path.to_str().unwrap())
            .start()
            .await,
    );
    let t0 = Instant::now();
    let both_until = t0 + Duration::from_secs(6);
    let heavy = actix_rt::spawn(backlog(pair.clone(), "heavy-key", 15, both_until + Duration::from_secs(7)));
    let light = backlog(pair.clone(), "light-key", 15, both_until).await;
    // Light's last admitted requests are served up to its 3 s deadline after it stops.
    let light_done = Instant::now();
    let heavy = heavy.await.unwrap();

    let window =
        |times: &[Instant], from: Instant, to: Instant| times.iter().filter(|t| **t >= from && **t < to).count() as f64;
    // While both are backlogged (after a second of warm-up): 3:1 within 10%.
    let (from, to) = (t0 + Duration::from_secs(1), both_until);
    let (h, l) = (window(&heavy, from, to), window(&light, from, to));
    let ratio = h / l;
    assert!((2.7..=3.3).contains(&ratio), "heavy {h} : light {l} = {ratio:.2}");
    assert!(h + l >= 0.9 * 20.0 * 5.0, "the budget was used: {h} + {l}");
    // Once light is idle, heavy gets (nearly) the whole 20/s.
    let alone = window(&heavy, light_done + Duration::from_millis(500), light_done + Duration::from_millis(3500));
    assert!(alone >= 0.9 * 20.0 * 3.0, "heavy alone got {alone} in 3 s");
    let stats = pair.sim_stats().await;
    assert_eq!(count(&stats, &["rate_limited_total"]), 0, "{stats}");
    Rc::try_unwrap(pair).ok().unwrap().stop().await;
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[actix_rt::test]
async fn a_total_upstream_failure_costs_at_most_a_quarter_more_attempts_than_requests() {
    let pair = Rc::new(
        PairBuilder::default()
            .env("EXTERNAL_API_MAX_RETRIES", "3")
            // Keep the breaker out of it: this is the retry budget's test.
            .env("COURIER_BREAKER_FAILURES", "1000000")
            .env("COURIER_BREAKER_MIN_REQUESTS", "1000000")
            .start()
            .await,
    );
    pair.faults(json!({"error_rate": 1.0, "error_status": 500})).await;
    let outcomes = open_loop(&pair, 50, Duration::from_secs(6), "5").await;
    let requests = outcomes.len() as f64;
    assert!(outcomes.iter().all(|o| o.status == 502), "{outcomes:?}");
    let attempts = count(&pair.sim_stats().await, &["process", "total"]) as f64;
    assert!(attempts / requests <= 1.25, "{attempts} attempts for {requests} requests");
    assert!(attempts > requests, "some retries were still made");
    assert!(pair.metric("courier_retry_budget_refusals_total", &[]).await > 0.0);
    Rc::try_unwrap(pair).ok().unwrap().stop().await;
}

#[actix_rt::test]
async fn answers_tell_each_client_its_share_of_the_budget() {
    let path = clients_file("share");
    let pair = PairBuilder::default()
        .env("EXTERNAL_API_RATE_LIMIT", "1000")
        .env("EXTERNAL_API_RATE_BURST", "10")
        .env("COURIER_CLIENTS_FILE", path.to_str().unwrap())
        .start()
        .await;
    let answer = pair.process_with(body("x"), &[("authorization", "Bearer heavy-key")]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("ratelimit-policy"), Some("750;w=60"));
    let ratelimit = answer.header("ratelimit").unwrap();
    assert!(ratelimit.starts_with("limit=750, remaining="), "{ratelimit}");
    let answer = pair.process_with(json!({"data": {}}), &[("authorization", "Bearer light-key")]).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.header("ratelimit-policy"), Some("250;w=60"), "errors carry the headers too");
    let metrics = pair.metrics().await;
    assert_eq!(support::metric_value(&metrics, "courier_budget_limit_requests_per_second", &[]), 1000.0 / 60.0);
    assert_eq!(support::metric_value(&metrics, "courier_budget_burst_requests", &[]), 10.0);
    pair.stop().await;
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}
