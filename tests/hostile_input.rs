//! Hostile input at the gateway over real HTTP: deeply nested JSON from a client or from the
//! upstream, huge key counts, long runs of escapes, members named twice, deep URLs. Every one
//! gets a clear answer and courier keeps serving. (These tests run courier in the test's own
//! process: a stack overflow or an abort would end the test binary, so none of them can pass
//! with courier gone.)

mod support;

use std::time::{Duration, Instant};

use awc::http::StatusCode;
use serde_json::{json, Value};
use support::process::Serving;
use support::{Answer, Pair, PairBuilder};

/// `depth` arrays nested in each other, as JSON text.
fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// Process bodies with a value nested `depth` deep in each position a client controls:
/// `data.input`, another `data` field, and `options`; sync or async.
fn bodies(depth: usize, is_async: bool) -> Vec<(&'static str, String)> {
    let deep = nested(depth);
    let asynchronous = if is_async { r#""async": true"# } else { r#""async": false"# };
    vec![
        ("data.input", format!(r#"{{"data": {{"input": {deep}}}, "options": {{{asynchronous}}}}}"#)),
        ("data.other", format!(r#"{{"data": {{"input": "x", "other": {deep}}}, "options": {{{asynchronous}}}}}"#)),
        ("options", format!(r#"{{"data": {{"input": "x"}}, "options": {{{asynchronous}, "o": {deep}}}}}"#)),
    ]
}

/// Courier still answers a plain request.
async fn still_serving(pair: &Pair) {
    let answer = pair.process(support::body("still here")).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(answer.body["result"]["processed_data"], "STILL HERE");
}

async fn send(pair: &Pair, body: &str) -> Answer {
    pair.process_raw("application/json", body.as_bytes().to_vec()).await
}

/// Polls a job's status until it is final (bounded).
async fn final_status(pair: &Pair, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut response =
            pair.http.get(pair.url(&format!("/api/external/status/{id}"))).send().await.expect("status answers");
        let doc: Value = response.json().limit(1 << 20).await.expect("status JSON");
        if doc["status"] == "completed" || doc["status"] == "failed" {
            return doc;
        }
        assert!(Instant::now() < deadline, "job {id} did not finish: {doc}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_rt::test]
async fn nesting_in_every_position_is_served_when_shallow_and_refused_when_deep_sync_and_async() {
    // The cache on, so the cache key's walk over the body runs too.
    let pair = PairBuilder::default().env("EXTERNAL_API_CACHE_TTL", "60").start().await;
    for is_async in [false, true] {
        for (position, body) in bodies(10, is_async) {
            let answer = send(&pair, &body).await;
            if is_async {
                assert_eq!(answer.status, StatusCode::ACCEPTED, "{position}: {answer:?}");
                let id = answer.body["request_id"].as_str().expect("request_id");
                assert_eq!(final_status(&pair, id).await["status"], "completed", "{position}");
            } else {
                assert_eq!(answer.status, StatusCode::OK, "{position}: {answer:?}");
            }
        }
        for depth in [1_000, 10_000, 100_000] {
            for (position, body) in bodies(depth, is_async) {
                let answer = send(&pair, &body).await;
                assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{position} at {depth}: {answer:?}");
                assert_eq!(answer.error_code(), "invalid_request", "{position} at {depth}");
                let message = answer.body["error"]["message"].as_str().unwrap();
                assert!(message.contains("deeper than 64 levels"), "{message}");
                assert!(message.contains("COURIER_MAX_JSON_DEPTH"), "{message}");
                assert_eq!(answer.body["error"]["retryable"], false);
                still_serving(&pair).await;
            }
        }
    }
    // Refused before any upstream call: the simulator refuses JSON nested past 128 levels with
    // a 400, and saw none; everything it saw it answered.
    let stats = pair.sim_stats().await;
    assert_eq!(support::count(&stats, &["process", "bad_request"]), 0, "{stats}");
    assert_eq!(support::count(&stats, &["process", "ok"]), support::count(&stats, &["process", "total"]), "{stats}");
    pair.stop().await;
}

#[actix_rt::test]
async fn the_limit_is_a_setting() {
    let pair = PairBuilder::default().env("COURIER_MAX_JSON_DEPTH", "4").start().await;
    // The body's object, `data`, and two arrays: four levels.
    assert_eq!(send(&pair, r#"{"data": {"input": [[1]]}}"#).await.status, StatusCode::OK);
    let deeper = send(&pair, r#"{"data": {"input": [[[1]]]}}"#).await;
    assert_eq!(deeper.status, StatusCode::BAD_REQUEST);
    assert!(deeper.body["error"]["message"].as_str().unwrap().contains("deeper than 4 levels"), "{deeper:?}");
    pair.stop().await;
}

#[actix_rt::test]
async fn a_deeply_nested_upstream_answer_is_a_502_and_courier_keeps_serving() {
    // Unusable answers count as upstream failures for the breaker; it must not open here.
    let pair = PairBuilder::default()
        .env("EXTERNAL_API_MAX_RETRIES", "0")
        .env("COURIER_BREAKER_FAILURES", "100")
        .env("COURIER_BREAKER_MIN_REQUESTS", "100")
        .start()
        .await;
    // Shallow: passed through as the upstream wrote it.
    pair.faults(json!({"nested_depth": 10})).await;
    let shallow = pair.process(support::body("x")).await;
    assert_eq!(shallow.status, StatusCode::OK, "{shallow:?}");
    assert_eq!(shallow.body["result"]["processed_data"], serde_json::from_str::<Value>(&nested(10)).unwrap());
    for depth in [1_000, 10_000, 100_000] {
        pair.faults(json!({"nested_depth": depth})).await;
        let answer = pair.process(support::body("x")).await;
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "depth {depth}: {answer:?}");
        assert_eq!(answer.error_code(), "upstream_invalid_response");
        // As an async job: it ends failed with the same code.
        let accepted = pair.process(json!({"data": {"input": "x"}, "options": {"async": true}})).await;
        assert_eq!(accepted.status, StatusCode::ACCEPTED, "{accepted:?}");
        let doc = final_status(&pair, accepted.body["request_id"].as_str().unwrap()).await;
        assert_eq!(
            (doc["status"].as_str(), doc["error"]["code"].as_str()),
            (Some("failed"), Some("upstream_invalid_response"))
        );
    }
    pair.faults(json!({"nested_depth": 0})).await;
    still_serving(&pair).await;
    let logs = pair.stop().await;
    assert!(logs.text().contains("answer nests too deep"), "the reason is logged");
}

#[actix_rt::test]
async fn the_reported_reproduction_gets_a_400_from_the_real_binary() {
    // The issue's reproduction, against `courier serve` as shipped: a 16 KB body of 9,000
    // nested arrays used to overflow a worker's stack and abort the process.
    let config = PairBuilder::default().sim;
    let sim = courier::simulator::Simulator::start(config.clone()).await.expect("simulator starts");
    let mut courier = Serving::start(&[
        ("EXTERNAL_API_BASE_URL", sim.base_url()),
        ("EXTERNAL_API_KEY", config.api_key.clone()),
        ("EXTERNAL_OAUTH_CLIENT_ID", config.client_id.clone()),
        ("EXTERNAL_OAUTH_CLIENT_SECRET", config.client_secret.clone()),
    ]);
    let http = awc::Client::builder().timeout(Duration::from_secs(30)).finish();
    let d = 9_000;
    let body = format!(r#"{{"data":{{"input":{}{}}}}}"#, "[".repeat(d), "]".repeat(d));
    for _ in 0..3 {
        let response = http
            .post(courier.url("/api/external/process"))
            .insert_header(("content-type", "application/json"))
            .send_body(body.clone())
            .await
            .expect("courier answers");
        let answer = support::read_answer(response).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{answer:?}");
        assert_eq!(answer.error_code(), "invalid_request");
    }
    assert!(courier.child.try_wait().unwrap().is_none(), "courier is still running");
    let ok = http
        .post(courier.url("/api/external/process"))
        .send_json(&support::body("after"))
        .await
        .expect("courier answers");
    assert_eq!(support::read_answer(ok).await.status, StatusCode::OK);
    drop(courier.child.kill());
    sim.handle().stop(false).await;
}

#[actix_rt::test]
async fn huge_key_counts_long_escapes_and_deep_urls_are_served_or_refused_cleanly() {
    let pair = PairBuilder::default().env("EXTERNAL_API_CACHE_TTL", "60").start().await;
    // 60,000 members in `data` (~900 KB, under the 1 MiB body limit): keyed and served.
    let members: String = (0..60_000).map(|i| format!(r#","k{i:05}":{i}"#)).collect();
    let wide = format!(r#"{{"data":{{"input":"wide"{members}}}}}"#);
    assert!(wide.len() < 1 << 20);
    let answer = send(&pair, &wide).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body["error"]);
    // The same members in another order are the same request: answered from the cache.
    let reversed: String = (0..60_000).rev().map(|i| format!(r#""k{i:05}":{i},"#)).collect();
    let again = send(&pair, &format!(r#"{{"data":{{{reversed}"input":"wide"}}}}"#)).await;
    assert_eq!((again.status, again.header("x-cache")), (StatusCode::OK, Some("HIT")), "{:?}", again.body["error"]);

    // A string of 150,000 escapes: re-escaped for the key, passed upstream as written.
    let escapes = format!(r#"{{"data":{{"input":"{}"}}}}"#, r"\u0041".repeat(150_000));
    let answer = send(&pair, &escapes).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body["error"]);
    assert_eq!(answer.body["result"]["processed_data"].as_str().map(str::len), Some(150_000));

    // A member named twice could make the cache answer one request with another's result.
    let twice = send(&pair, r#"{"data":{"input":"a","x":1,"x":2}}"#).await;
    assert_eq!((twice.status, twice.error_code()), (StatusCode::BAD_REQUEST, "invalid_request"));
    assert!(twice.body["error"]["message"].as_str().unwrap().contains("twice"), "{twice:?}");

    // A status URL thousands of segments deep: a clean 4xx, never a crash.
    for depth in [100, 5_000] {
        let path = format!("/api/external/status/{}", "a/".repeat(depth));
        let response = pair.http.get(pair.url(&path)).send().await.expect("courier answers");
        let answer = support::read_answer(response).await;
        assert!(answer.status.is_client_error(), "{depth}: {answer:?}");
        answer.error_code();
    }
    still_serving(&pair).await;
    pair.stop().await;
}
