//! Quota windows shared by three replicas through a real Redis: together they never overrun
//! a window, every replica sees the fleet's count, and while Redis is down they refuse
//! (fail closed) instead of counting on their own, and go on from Redis's count after.

mod support;

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use support::quota::{admin_quota, sim_quotas, window_with};
use support::redis::RedisServer;
use support::{body, count, Pair, PairBuilder};

const WINDOW: Duration = Duration::from_secs(20);

fn replica(redis: &RedisServer, quota: &str) -> PairBuilder {
    let quota = quota.to_owned();
    PairBuilder::default()
        .env("REDIS_URL", redis.url())
        .env("COURIER_REPLICAS", "3")
        .env("EXTERNAL_API_QUOTAS", quota.clone())
        .sim(move |sim| sim.quotas = vec![quota])
}

async fn three(redis: &RedisServer, quota: &str) -> Vec<Rc<Pair>> {
    let first = replica(redis, quota).start().await;
    let second = replica(redis, quota).start_beside(&first).await;
    let third = replica(redis, quota).start_beside(&first).await;
    vec![Rc::new(first), Rc::new(second), Rc::new(third)]
}

/// Waits (bounded) until `pair`'s view of the window's count is `n` (the view is read from
/// Redis each second).
async fn sees(pair: &Pair, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let used = admin_quota(pair).await["windows"][0]["used"].as_u64();
        if used == Some(n) {
            return;
        }
        assert!(Instant::now() < deadline, "the replica sees {used:?}, not {n}");
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
}

#[actix_rt::test]
async fn three_replicas_never_overrun_a_window() {
    let redis = RedisServer::start();
    let pairs = three(&redis, "30/20s").await;
    window_with(WINDOW, Duration::from_secs(8)).await;
    // 90 requests, 10 at a time on each replica at once.
    let mut answers = Vec::new();
    for round in 0..3 {
        let sends = (0..30).map(|i| pairs[i % 3].process(body(&format!("fleet {round} {i}"))));
        answers.extend(join_all(sends).await);
    }
    let ok = answers.iter().filter(|a| a.status == 200).count();
    assert_eq!(ok, 30, "the fleet serves exactly the window's limit");
    assert!(answers.iter().filter(|a| a.status != 200).all(|a| a.error_code() == "quota_exhausted"));
    assert_eq!(sim_quotas(&pairs[0]).await["windows"][0]["used"], 30);
    assert_eq!(count(&pairs[0].sim_stats().await, &["quota_refused"]), 0);
    for pair in &pairs {
        assert_eq!(admin_quota(pair).await["store"], "redis");
        sees(pair, 30).await;
    }
}

#[actix_rt::test]
async fn with_redis_down_replicas_fail_closed_and_go_on_from_its_count() {
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let pair = replica(&redis, "100/20s").env("EXTERNAL_API_CACHE_TTL", "60").start().await;
    window_with(WINDOW, Duration::from_secs(12)).await;
    for i in 0..10 {
        assert_eq!(pair.process(body(&format!("before {i}"))).await.status, 200);
    }
    redis.kill();
    let refused = pair.process(body("while redis is down")).await;
    assert_eq!((refused.status.as_u16(), refused.error_code()), (503, "quota_unavailable"));
    assert_eq!(refused.header("retry-after"), Some("1"));
    let hit = pair.process(body("before 0")).await;
    assert_eq!((hit.status.as_u16(), hit.header("x-cache")), (200, Some("HIT")), "hits need no count");
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut unavailable = 0;
    loop {
        let answer = pair.process(body("after redis is back")).await;
        if answer.status == 200 {
            break;
        }
        assert_eq!(answer.error_code(), "quota_unavailable");
        unavailable += 1;
        assert!(Instant::now() < deadline, "courier counts again once Redis is back");
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(sim_quotas(&pair).await["windows"][0]["used"], 11, "nothing was sent uncounted");
    // Redis's count goes on from the 10 it kept: never below what was sent, and above it only
    // by reservations whose answer was lost while the connection came back (each one a 503).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let used = admin_quota(&pair).await["windows"][0]["used"].as_u64().unwrap();
        if used >= 11 {
            assert!(used <= 11 + unavailable, "counted {used}, sent 11, {unavailable} answers lost");
            break;
        }
        assert!(Instant::now() < deadline, "the replica sees {used}, below the 11 sent");
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
}
