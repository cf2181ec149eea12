//! The response cache over real HTTP: hits, coalescing, keys, TTL, client directives, stale
//! answers, purging and the byte bound, counted at the simulator and in `/metrics`.

mod support;

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::json;
use support::{body, count, read_answer, Answer, Pair, PairBuilder};

fn cached() -> PairBuilder {
    PairBuilder::default().env("EXTERNAL_API_CACHE_TTL", "300")
}

fn x_cache(answer: &Answer) -> &str {
    answer.header("x-cache").expect("X-Cache on every answer")
}

async fn upstream_calls(pair: &Pair) -> u64 {
    count(&pair.sim_stats().await, &["process", "total"])
}

/// Waits (bounded) until `check` holds, polling.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} did not happen");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

#[actix_rt::test]
async fn a_repeated_request_is_a_hit_and_costs_the_upstream_nothing() {
    let pair = cached().start().await;
    let first = pair.process(body("cache me")).await;
    assert_eq!((first.status.as_u16(), x_cache(&first)), (200, "MISS"));
    let second = pair.process(body("cache me")).await;
    assert_eq!((second.status.as_u16(), x_cache(&second)), (200, "HIT"));
    assert_eq!(second.header("age"), Some("0"));
    assert_eq!(second.header("x-cache-key"), first.header("x-cache-key"));
    assert_eq!(second.body["result"], first.body["result"]);
    assert_eq!(second.body["upstream_request_id"], first.body["upstream_request_id"]);
    assert_ne!(second.body["request_id"], first.body["request_id"], "each answer has its own request id");
    assert_eq!(upstream_calls(&pair).await, 1);
    assert_eq!(pair.metric("courier_cache_lookups_total", &[("result", "hit")]).await, 1.0);
    assert_eq!(pair.metric("courier_cache_lookups_total", &[("result", "miss")]).await, 1.0);
    assert_eq!(pair.metric("courier_cache_entries", &[]).await, 1.0);
    pair.stop().await;
}

#[actix_rt::test]
async fn fifty_concurrent_identical_requests_cost_one_upstream_call() {
    let pair = cached().start().await;
    pair.faults(json!({"latency_ms": 200})).await;
    let answers = join_all((0..50).map(|_| pair.process(body("popular")))).await;
    assert!(answers.iter().all(|a| a.status == 200), "{answers:?}");
    let misses = answers.iter().filter(|a| x_cache(a) == "MISS").count();
    let coalesced = answers.iter().filter(|a| x_cache(a) == "COALESCED").count();
    assert_eq!((misses, coalesced), (1, 49));
    assert_eq!(upstream_calls(&pair).await, 1);
    pair.stop().await;
}

#[actix_rt::test]
async fn key_order_and_whitespace_do_not_matter_but_options_do() {
    let pair = cached().start().await;
    let a = pair.process(json!({"data": {"input": "x", "a": 1, "b": 2}, "options": {"p": 1}})).await;
    let raw = br#"{ "options": {"async": false, "p": 1}, "data": {"b": 2,  "input": "x", "a": 1} }"#.to_vec();
    let b = pair.process_raw("application/json", raw).await;
    assert_eq!((x_cache(&a), x_cache(&b)), ("MISS", "HIT"));
    let c = pair.process(json!({"data": {"input": "x", "a": 1, "b": 2}, "options": {"p": 2}})).await;
    assert_eq!(x_cache(&c), "MISS");
    assert_eq!(upstream_calls(&pair).await, 2);
    pair.stop().await;
}

#[actix_rt::test]
async fn an_expired_answer_is_fetched_again() {
    let pair = cached().env("EXTERNAL_API_CACHE_TTL", "0.3").start().await;
    assert_eq!(x_cache(&pair.process(body("short-lived")).await), "MISS");
    assert_eq!(x_cache(&pair.process(body("short-lived")).await), "HIT");
    actix_rt::time::sleep(Duration::from_millis(400)).await; // the TTL itself is what is tested
    assert_eq!(x_cache(&pair.process(body("short-lived")).await), "MISS");
    assert_eq!(upstream_calls(&pair).await, 2);
    pair.stop().await;
}

#[actix_rt::test]
async fn no_cache_refreshes_and_no_store_does_not_store() {
    let pair = cached().start().await;
    let first = pair.process(body("refresh me")).await;
    let refreshed = pair.process_with(body("refresh me"), &[("cache-control", "no-cache")]).await;
    assert_eq!((refreshed.status.as_u16(), x_cache(&refreshed)), (200, "BYPASS"));
    assert_ne!(refreshed.body["upstream_request_id"], first.body["upstream_request_id"], "fetched again");
    let after = pair.process(body("refresh me")).await;
    assert_eq!(x_cache(&after), "HIT");
    assert_eq!(after.body["upstream_request_id"], refreshed.body["upstream_request_id"], "the entry was refreshed");

    let private = pair.process_with(body("do not keep"), &[("cache-control", "private, no-store")]).await;
    assert_eq!((private.status.as_u16(), x_cache(&private)), (200, "BYPASS"));
    assert_eq!(x_cache(&pair.process(body("do not keep")).await), "MISS", "nothing was stored");
    assert_eq!(upstream_calls(&pair).await, 4);
    pair.stop().await;
}

#[actix_rt::test]
async fn an_upstream_error_reaches_every_coalesced_waiter_and_is_not_cached() {
    let pair = cached().env("EXTERNAL_API_MAX_RETRIES", "0").start().await;
    pair.faults(json!({"latency_ms": 200, "error_rate": 1.0, "error_status": 500})).await;
    let answers = join_all((0..10).map(|_| pair.process(body("doomed together")))).await;
    for answer in &answers {
        assert_eq!((answer.status.as_u16(), answer.error_code()), (502, "upstream_unavailable"));
    }
    assert_eq!(answers.iter().filter(|a| x_cache(a) == "MISS").count(), 1);
    assert_eq!(upstream_calls(&pair).await, 1, "one upstream call for all ten");
    pair.faults(json!({"reset": true})).await;
    let retry = pair.process(body("doomed together")).await;
    assert_eq!((retry.status.as_u16(), x_cache(&retry)), (200, "MISS"), "the error was not cached");
    pair.stop().await;
}

#[actix_rt::test]
async fn stale_answers_stand_in_during_an_outage_only_when_enabled() {
    for (stale_if_error, expect) in [("60", 200), ("0", 502)] {
        let pair = cached()
            .env("EXTERNAL_API_CACHE_TTL", "0.2")
            .env("COURIER_CACHE_STALE_IF_ERROR", stale_if_error)
            .env("EXTERNAL_API_MAX_RETRIES", "0")
            .start()
            .await;
        let fresh = pair.process(body("keep serving")).await;
        assert_eq!(fresh.status, 200);
        actix_rt::time::sleep(Duration::from_millis(300)).await; // past the TTL
        pair.faults(json!({"outage": true})).await;
        let during = pair.process(body("keep serving")).await;
        assert_eq!(during.status, expect, "stale-if-error {stale_if_error}: {during:?}");
        if expect == 200 {
            assert_eq!(x_cache(&during), "STALE");
            assert!(during.header("age").is_some());
            assert_eq!(during.body["result"], fresh.body["result"]);
            // Also when the circuit is open.
            let response = pair.http.post(pair.admin_url("/admin/breaker")).send_json(&json!({"mode": "open"})).await;
            assert_eq!(response.unwrap().status(), 200);
            assert_eq!(x_cache(&pair.process(body("keep serving")).await), "STALE");
            assert_eq!(pair.process(body("never cached")).await.error_code(), "circuit_open");
        } else {
            assert_eq!(during.error_code(), "upstream_unavailable");
        }
        pair.stop().await;
    }
}

#[actix_rt::test]
async fn stale_while_revalidate_answers_at_once_and_refreshes_in_the_background() {
    let pair = cached().env("EXTERNAL_API_CACHE_TTL", "0.2").env("COURIER_CACHE_SWR", "30").start().await;
    let first = pair.process(body("revalidate me")).await;
    actix_rt::time::sleep(Duration::from_millis(300)).await; // past the TTL
    pair.faults(json!({"latency_ms": 300})).await;
    let started = Instant::now();
    let stale = pair.process(body("revalidate me")).await;
    assert_eq!((stale.status.as_u16(), x_cache(&stale)), (200, "STALE"));
    assert!(started.elapsed() < Duration::from_millis(250), "answered without waiting for the upstream");
    assert_eq!(stale.body["upstream_request_id"], first.body["upstream_request_id"]);
    eventually("the background refresh", async || upstream_calls(&pair).await == 2).await;
    let mut refreshed = pair.process(body("revalidate me")).await;
    eventually("the refreshed entry", async || {
        refreshed = pair.process(body("revalidate me")).await;
        x_cache(&refreshed) == "HIT"
    })
    .await;
    assert_ne!(refreshed.body["upstream_request_id"], first.body["upstream_request_id"]);
    assert_eq!(upstream_calls(&pair).await, 2, "exactly one refresh");
    pair.stop().await;
}

#[actix_rt::test]
async fn revalidation_never_takes_budget_from_live_requests() {
    // One permit per second: the first request takes it, so no refresh can run soon after.
    let pair = cached()
        .env("EXTERNAL_API_CACHE_TTL", "0.2")
        .env("COURIER_CACHE_SWR", "30")
        .env("EXTERNAL_API_RATE_LIMIT", "60")
        .env("EXTERNAL_API_RATE_BURST", "1")
        .start()
        .await;
    assert_eq!(pair.process(body("frugal")).await.status, 200);
    actix_rt::time::sleep(Duration::from_millis(300)).await; // past the TTL, before the next permit
    let stale = pair.process(body("frugal")).await;
    assert_eq!(x_cache(&stale), "STALE");
    assert_eq!(upstream_calls(&pair).await, 1, "no spare permit, so no refresh");
    pair.stop().await;
}

#[actix_rt::test]
async fn answers_can_be_purged_one_by_one_or_all_at_once() {
    let pair = cached().start().await;
    let a = pair.process(body("purge a")).await;
    pair.process(body("purge b")).await;
    let key = a.header("x-cache-key").unwrap().to_owned();
    let response = pair.http.delete(pair.admin_url(&format!("/admin/cache/{key}"))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(x_cache(&pair.process(body("purge a")).await), "MISS");
    assert_eq!(x_cache(&pair.process(body("purge b")).await), "HIT");

    let response = pair.http.delete(pair.admin_url("/admin/cache")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(x_cache(&pair.process(body("purge b")).await), "MISS");
    let unknown = pair.http.delete(pair.admin_url(&format!("/admin/cache/{}", "0".repeat(64)))).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    let malformed = read_answer(pair.http.delete(pair.admin_url("/admin/cache/xyz")).send().await.unwrap()).await;
    assert_eq!(malformed.status, 400);
    assert!(pair.metric("courier_cache_evictions_total", &[("cause", "explicit")]).await >= 2.0);
    pair.stop().await;
}

#[actix_rt::test]
async fn the_byte_bound_holds_however_much_is_inserted() {
    let bound = 64 * 1024;
    let pair = cached().env("COURIER_CACHE_MAX_BYTES", bound.to_string()).start().await;
    let filler = "z".repeat(400);
    for batch in 0..20 {
        let answers = join_all((0..25).map(|i| pair.process(body(&format!("{batch}-{i}-{filler}"))))).await;
        assert!(answers.iter().all(|a| a.status == 200 && x_cache(a) == "MISS"));
    }
    let metrics = pair.metrics().await;
    let bytes = support::metric_value(&metrics, "courier_cache_bytes", &[]);
    let entries = support::metric_value(&metrics, "courier_cache_entries", &[]);
    let evicted = support::metric_value(&metrics, "courier_cache_evictions_total", &[("cause", "size")]);
    assert!(bytes <= bound as f64, "{bytes} bytes held, bound {bound}");
    assert!(bytes > bound as f64 * 0.5, "the cache is used up to its bound: {bytes}");
    assert!(entries > 20.0 && entries < 200.0, "{entries} of 500 answers kept");
    assert!(evicted >= 300.0, "{evicted} evicted for size");
    pair.stop().await;
}
