//! A Redis outage as callers and operators see it, against a real `redis-server` that the
//! tests kill and start again: a status read says it cannot read (not that nothing was
//! accepted), the degraded log line names what failed and never the password, job-store
//! failures are counted, and readiness follows the job store's recovery at once.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::failover::shared_state;
use support::redis::RedisServer;
use support::{read_answer, Answer, Pair, PairBuilder};

const PASSWORD: &str = "redis-pw-6d1f0c";

fn async_body(input: &str) -> Value {
    json!({"data": {"input": input}, "options": {"async": true}})
}

async fn get(pair: &Pair, path: &str) -> Answer {
    read_answer(pair.http.get(pair.url(path)).send().await.expect("courier answers")).await
}

/// Polls `check` every 20 ms until it holds, for at most `bound`; returns how long it took.
async fn within<F: std::future::Future<Output = bool>>(
    bound: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) -> Duration {
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < bound, "{what}: not within {bound:?}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_rt::test]
async fn a_status_read_during_a_redis_outage_says_the_status_cannot_be_read() {
    let mut redis = RedisServer::start();
    let pair = PairBuilder::default().env("REDIS_URL", redis.url()).start().await;
    let accepted = pair.process(async_body("read me")).await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    let url = accepted.body["status_url"].as_str().unwrap().to_owned();
    within(Duration::from_secs(10), "the job completes", || async {
        get(&pair, &url).await.body["status"] == "completed"
    })
    .await;

    redis.kill();
    let refused = get(&pair, &url).await;
    assert_eq!((refused.status.as_u16(), refused.error_code()), (503, "job_store_unavailable"), "{refused:?}");
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("cannot be read") && message.contains("status"), "{message}");
    assert!(!message.contains("accepted"), "a read accepts nothing: {message}");
    assert_eq!(refused.body["error"]["retryable"], true);
    assert_eq!(refused.header("retry-after"), Some("1"));

    // Redis back (empty: the test server keeps nothing): reads work again; the lost job is
    // unknown, a new one is found.
    redis.restart();
    within(Duration::from_secs(10), "status reads work again", || async { get(&pair, &url).await.status != 503 }).await;
    assert_eq!(get(&pair, &url).await.status, 404);
    let again = pair.process(async_body("after the outage")).await;
    assert_eq!(again.status, 202, "{again:?}");
    assert_eq!(get(&pair, again.body["status_url"].as_str().unwrap()).await.status, 200);
    pair.stop().await;
}

#[actix_rt::test]
async fn a_redis_outage_is_logged_with_its_cause_counted_and_readiness_follows_the_recovery() {
    let mut redis = RedisServer::start_with(&["--requirepass", PASSWORD]);
    let pair = PairBuilder::default().env("REDIS_URL", redis.url_with_password(Some(PASSWORD))).start().await;
    // Every operation's error counter exists from the start, at 0.
    let metrics = pair.metrics().await;
    for op in ["job_submit", "job_get", "job_next", "job_finish", "budget_acquire", "token_read"] {
        let series = format!("courier_redis_errors_total{{operation=\"{op}\"}} 0");
        assert!(metrics.lines().any(|l| l == series), "{series} missing");
    }
    assert_eq!(shared_state(&pair).await, "shared");

    redis.kill();
    let refused = pair.process(async_body("no store")).await;
    assert_eq!((refused.status.as_u16(), refused.error_code()), (503, "job_store_unavailable"));
    // The job store's failure alone degrades the replica and is counted.
    assert_eq!(shared_state(&pair).await, "degraded");
    assert!(pair.metric("courier_redis_errors_total", &[("operation", "job_submit")]).await >= 1.0);

    redis.restart();
    within(Duration::from_secs(10), "jobs are accepted again", || async {
        pair.process(async_body("store is back")).await.status == 202
    })
    .await;
    // Readiness says so at once, not at the next shared-state call.
    let took = within(Duration::from_millis(300), "readyz follows the job store", || async {
        shared_state(&pair).await == "shared"
    })
    .await;
    assert!(took < Duration::from_millis(300), "{took:?}");

    let logs = pair.stop().await;
    let degraded: Vec<Value> = logs.lines().into_iter().filter(|l| l["event"] == "shared_state_degraded").collect();
    assert!(!degraded.is_empty(), "the outage was logged");
    for line in &degraded {
        let operation = line["operation"].as_str().unwrap_or_default();
        assert!(operation.contains('_'), "names the operation: {line}");
        let error = line["error"].as_str().unwrap_or_default();
        let named = ["connection refused", "connection lost", "I/O error", "timed out", "no answer within"];
        assert!(named.iter().any(|n| error.starts_with(n)), "names what failed: {line}");
    }
    assert!(logs.lines().iter().any(|l| l["event"] == "shared_state_restored"));
    assert!(!logs.text().contains(PASSWORD), "the Redis password never shows in the logs");
}

async fn cache_read_errors(pair: &Pair) -> f64 {
    pair.metric("courier_redis_errors_total", &[("operation", "cache_get")]).await
}

#[actix_rt::test]
async fn after_an_outage_the_first_shared_state_call_reaches_the_redis_that_is_back() {
    let mut redis = RedisServer::start();
    // With the cache on, every new request reads the shared (Redis) level first.
    let pair = PairBuilder::default().env("REDIS_URL", redis.url()).env("EXTERNAL_API_CACHE_TTL", "60").start().await;
    redis.kill();
    // Requests while Redis is down are served all the same; a degraded replica tries Redis
    // again once a second, and that read fails, leaving the connection's reconnect failed.
    let deadline = Instant::now() + Duration::from_secs(5);
    for n in 0.. {
        assert_eq!(pair.process(support::body(&format!("alone {n}"))).await.status, 200);
        if cache_read_errors(&pair).await >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no shared cache read was tried");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    redis.restart();
    within(Duration::from_secs(10), "jobs are accepted again", || async {
        pair.process(async_body("store is back")).await.status == 202
    })
    .await;
    let failed = cache_read_errors(&pair).await;
    // The next shared read goes to the Redis that is back, not to the failed reconnect: no new
    // error, and the replica stays shared.
    assert_eq!(pair.process(support::body("shared again")).await.status, 200);
    assert_eq!(cache_read_errors(&pair).await, failed);
    assert_eq!(shared_state(&pair).await, "shared");
    pair.stop().await;
}
