//! Retries over real HTTP: what is retried, how often, and what the client gets at the end.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{body, count, PairBuilder};

#[actix_rt::test]
async fn a_transient_500_is_retried_to_success() {
    let pair = PairBuilder::default().start().await;
    pair.faults(json!({"error_count": 2, "error_status": 500})).await;
    let answer = pair.process(&body("flaky")).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let stats = pair.sim_stats().await;
    assert_eq!(count(&stats, &["process", "total"]), 3);
    assert_eq!(count(&stats, &["process", "server_error"]), 2);
    assert_eq!(pair.metric("courier_upstream_retries_total", &[("reason", "server_error")]).await, 2.0);
    assert_eq!(pair.metric("courier_upstream_attempts_total", &[("outcome", "success")]).await, 1.0);
    let logs = pair.stop().await;
    let inbound = logs.lines().into_iter().find(|l| l["event"] == "gateway_request").unwrap();
    assert_eq!(inbound["retry_count"], 2);
}

#[actix_rt::test]
async fn a_permanent_500_gives_502_after_max_retries_plus_one_attempts() {
    let pair = PairBuilder::default().env("EXTERNAL_API_MAX_RETRIES", "3").start().await;
    pair.faults(json!({"error_rate": 1.0, "error_status": 500})).await;
    let answer = pair.process(&body("doomed")).await;
    assert_eq!((answer.status.as_u16(), answer.error_code()), (502, "upstream_unavailable"));
    assert_eq!(answer.body["error"]["retryable"], true);
    assert_eq!(count(&pair.sim_stats().await, &["process", "total"]), 4);
    pair.stop().await;
}

#[actix_rt::test]
async fn client_errors_other_than_401_are_never_retried() {
    let pair = PairBuilder::default().start().await;
    pair.faults(json!({"error_count": 1, "error_status": 404})).await;
    let answer = pair.process(&body("missing")).await;
    assert_eq!((answer.status.as_u16(), answer.error_code()), (502, "upstream_unavailable"));
    // Nothing was retried, and a retry would get the same answer: the answer says so.
    assert_eq!(answer.body["error"]["retryable"], false, "{answer:?}");
    assert!(answer.body["error"]["message"].as_str().unwrap().contains("not retried"), "{answer:?}");
    assert_eq!(count(&pair.sim_stats().await, &["process", "total"]), 1);
    pair.stop().await;
}

#[actix_rt::test]
async fn an_upstream_413_is_passed_on_as_413_and_not_retried() {
    let pair = PairBuilder::default().start().await;
    pair.faults(json!({"error_count": 1, "error_status": 413})).await;
    let answer = pair.process(&body("too big for the upstream")).await;
    assert_eq!((answer.status.as_u16(), answer.error_code()), (413, "upstream_rejected"), "{answer:?}");
    assert_eq!(answer.body["error"]["retryable"], false);
    assert_eq!(answer.body["error"]["message"], "injected upstream error", "the upstream's own message");
    assert_eq!(count(&pair.sim_stats().await, &["process", "total"]), 1);
    assert_eq!(pair.metric("courier_upstream_attempts_total", &[("outcome", "rejected")]).await, 1.0);
    pair.stop().await;
}

#[actix_rt::test]
async fn an_upstream_slower_than_the_timeout_gives_504() {
    let pair =
        PairBuilder::default().env("EXTERNAL_API_TIMEOUT", "0.2").env("EXTERNAL_API_MAX_RETRIES", "1").start().await;
    pair.faults(json!({"latency_ms": 1000})).await;
    let started = std::time::Instant::now();
    let answer = pair.process(&body("slow")).await;
    assert_eq!((answer.status.as_u16(), answer.error_code()), (504, "upstream_timeout"));
    assert!(started.elapsed() < Duration::from_millis(900), "each attempt was cut at the timeout");
    assert_eq!(pair.metric("courier_upstream_attempts_total", &[("outcome", "timeout")]).await, 2.0);
    pair.stop().await;
}

#[actix_rt::test]
async fn the_request_deadline_bounds_retries() {
    let pair =
        PairBuilder::default().env("EXTERNAL_API_TIMEOUT", "5").env("EXTERNAL_API_MAX_RETRIES", "5").start().await;
    pair.faults(json!({"latency_ms": 400})).await;
    let answer = pair.process_with(&body("hurry"), &[("x-request-timeout", "0.25")]).await;
    assert_eq!((answer.status.as_u16(), answer.error_code()), (504, "deadline_exceeded"));
    assert_eq!(pair.metric("courier_upstream_attempts_total", &[("outcome", "timeout")]).await, 1.0);
    pair.stop().await;
}

#[actix_rt::test]
async fn dropped_connections_are_retried() {
    let pair = PairBuilder::default().start().await;
    pair.faults(json!({"drop_count": 1})).await;
    let answer = pair.process(&body("dropped once")).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(pair.metric("courier_upstream_attempts_total", &[("outcome", "connect_error")]).await, 1.0);
    pair.stop().await;
}

#[actix_rt::test]
async fn a_429_is_retried_no_sooner_than_retry_after() {
    let pair = PairBuilder::default()
        .sim(|s| {
            s.rate_limit_per_minute = 60;
            s.rate_burst = 1;
        })
        .start()
        .await;
    assert_eq!(pair.process(&body("first")).await.status, 200);
    let started = std::time::Instant::now();
    let answer = pair.process(&body("second")).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(started.elapsed() >= Duration::from_millis(950), "waited for Retry-After: {:?}", started.elapsed());
    let stats = pair.sim_stats().await;
    assert_eq!(count(&stats, &["rate_limited_total"]), 1, "one 429, then a successful retry: {stats}");
    assert_eq!(pair.metric("courier_upstream_retries_total", &[("reason", "rate_limited")]).await, 1.0);
    pair.stop().await;
}
