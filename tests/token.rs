//! The TokenManager over real HTTP: reuse, refresh ahead of expiry, one refresh per
//! revocation however many requests see it, and a failing token endpoint.

mod support;

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::json;
use support::{body, count, PairBuilder};

#[actix_rt::test]
async fn two_hundred_calls_reuse_one_token() {
    let pair = PairBuilder::default().start().await;
    for batch in 0..10 {
        let calls = (0..20).map(|i| pair.process(body(&format!("call {batch}-{i}"))));
        for answer in join_all(calls).await {
            assert_eq!(answer.status, 200, "{answer:?}");
        }
    }
    let stats = pair.sim_stats().await;
    assert_eq!(count(&stats, &["process", "ok"]), 200);
    assert_eq!(count(&stats, &["token", "total"]), 1);
    pair.stop().await;
}

#[actix_rt::test]
async fn short_lived_tokens_are_refreshed_ahead_without_client_errors() {
    let ttl = Duration::from_secs(1);
    // Lifetimes are counted from before the first token is fetched.
    let started = Instant::now();
    let pair = PairBuilder::default().sim(|s| s.token_ttl = ttl).start().await;
    let run_for = Duration::from_millis(4500);
    let mut served = 0;
    while started.elapsed() < run_for {
        let answers = join_all((0..4).map(|i| pair.process(body(&format!("steady {i}"))))).await;
        for answer in answers {
            assert_eq!(answer.status, 200, "a request failed across a token expiry: {answer:?}");
            served += 1;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let stats = pair.sim_stats().await;
    let lifetimes = (elapsed.as_secs_f64() / ttl.as_secs_f64()).ceil() as u64;
    let tokens = count(&stats, &["token", "total"]);
    assert_eq!(count(&stats, &["process", "unauthorized"]), 0, "no request was sent with an expired token");
    assert!(tokens <= lifetimes, "{tokens} token requests in {elapsed:?} ({lifetimes} lifetimes begun)");
    assert!(tokens >= lifetimes - 1, "tokens were refreshed: {tokens} in {elapsed:?}");
    assert!(served > 50);
    pair.stop().await;
}

#[actix_rt::test]
async fn a_revocation_seen_by_100_concurrent_requests_costs_one_token_request() {
    let pair = PairBuilder::default().start().await;
    assert_eq!(pair.process(&body("warm up")).await.status, 200);
    let before = pair.sim_stats().await;
    pair.faults(json!({"revoke_tokens": true})).await;

    let answers = join_all((0..100).map(|i| pair.process(body(&format!("after revocation {i}"))))).await;
    for answer in &answers {
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    let after = pair.sim_stats().await;
    let token_requests = count(&after, &["token", "total"]) - count(&before, &["token", "total"]);
    assert_eq!(token_requests, 1, "one refresh for the whole revoked generation");
    assert!(count(&after, &["process", "unauthorized"]) >= 1);
    let refreshes = pair.metric("courier_token_refreshes_total", &[("result", "success")]).await;
    assert_eq!(refreshes, 2.0);
    pair.stop().await;
}

#[actix_rt::test]
async fn a_failing_token_endpoint_gives_503_with_retry_after_and_is_not_stampeded() {
    let pair = PairBuilder::default().sim(|s| s.faults.token_failure = true).start_unready().await;
    let readyz = pair.http.get(pair.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(readyz.status(), 503, "not ready without a token");
    let healthz = pair.http.get(pair.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(healthz.status(), 200);

    let answers = join_all((0..50).map(|i| pair.process(body(&format!("no token {i}"))))).await;
    for answer in &answers {
        assert_eq!((answer.status.as_u16(), answer.error_code()), (503, "upstream_auth_unavailable"));
        let retry_after: u64 = answer.header("retry-after").expect("Retry-After").parse().unwrap();
        assert!((1..=30).contains(&retry_after));
        assert_eq!(answer.body["error"]["retryable"], true);
    }
    let stats = pair.sim_stats().await;
    assert!(count(&stats, &["token", "total"]) <= 5, "token endpoint stampeded: {stats}");
    assert_eq!(count(&stats, &["process", "total"]), 0);

    pair.faults(json!({"token_failure": false})).await;
    pair.wait_ready().await;
    assert_eq!(pair.process(&body("recovered")).await.status, 200);
    assert!(pair.metric("courier_token_refreshes_total", &[("result", "failure")]).await >= 1.0);
    pair.stop().await;
}
