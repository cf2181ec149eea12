//! The circuit breaker over real HTTP: an outage opens it, open fails fast without touching
//! the upstream, probes close it after recovery (background probes within about a second of
//! it, however long the open period), and operators can force it.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{body, count, read_answer, Pair, PairBuilder};

fn breaker_pair() -> PairBuilder {
    PairBuilder::default()
        .env("EXTERNAL_API_MAX_RETRIES", "0")
        .env("COURIER_BREAKER_FAILURES", "3")
        .env("COURIER_BREAKER_OPEN", "0.5")
        .env("COURIER_BREAKER_PROBES", "1")
}

async fn breaker_state(pair: &Pair) -> Value {
    let response = pair.http.get(pair.admin_url("/admin/breaker")).send().await.unwrap();
    read_answer(response).await.body
}

async fn force(pair: &Pair, mode: &str) -> (u16, Value) {
    let response = pair.http.post(pair.admin_url("/admin/breaker")).send_json(&json!({"mode": mode})).await.unwrap();
    let answer = read_answer(response).await;
    (answer.status.as_u16(), answer.body)
}

/// Polls the breaker (bounded) until `state` is what `want` says.
async fn wait_for_state(pair: &Pair, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while breaker_state(pair).await["state"] != want {
        assert!(Instant::now() < deadline, "breaker never became {want}");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

#[actix_rt::test]
async fn an_outage_opens_the_circuit_which_fails_fast_and_probes_close_it_after_recovery() {
    let pair = breaker_pair().start().await;
    pair.faults(json!({"outage": true})).await;
    for i in 0..3 {
        let answer = pair.process(body(&format!("during outage {i}"))).await;
        assert_eq!((answer.status.as_u16(), answer.error_code()), (502, "upstream_unavailable"));
    }
    assert_eq!(breaker_state(&pair).await["state"], "open");
    let reached = count(&pair.sim_stats().await, &["process", "total"]);
    assert_eq!(reached, 3);

    // Open: every request fails fast with 503 and Retry-After, and none reaches the upstream.
    for i in 0..10 {
        let started = Instant::now();
        let answer = pair.process(body(&format!("fail fast {i}"))).await;
        assert_eq!((answer.status.as_u16(), answer.error_code()), (503, "circuit_open"));
        assert_eq!(answer.header("retry-after"), Some("1"));
        assert_eq!(answer.body["error"]["retryable"], true);
        assert!(started.elapsed() < Duration::from_millis(400), "failed fast");
    }
    assert_eq!(count(&pair.sim_stats().await, &["process", "total"]), reached, "the upstream was left alone");
    assert_eq!(pair.metric("courier_breaker_state", &[("state", "open")]).await, 1.0);
    assert_eq!(pair.metric("courier_breaker_rejections_total", &[]).await, 10.0);

    // Recovery: after the open period the circuit is half-open; a probe closes it.
    pair.faults(json!({"outage": false})).await;
    wait_for_state(&pair, "half_open").await;
    assert_eq!(pair.metric("courier_breaker_state", &[("state", "half_open")]).await, 1.0);
    let answer = pair.process(body("probe")).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(breaker_state(&pair).await["state"], "closed");
    assert_eq!(pair.process(body("business as usual")).await.status, 200);
    assert_eq!(pair.metric("courier_breaker_transitions_total", &[("to", "open")]).await, 1.0);
    assert_eq!(pair.metric("courier_breaker_transitions_total", &[("to", "half_open")]).await, 1.0);
    assert_eq!(pair.metric("courier_breaker_transitions_total", &[("to", "closed")]).await, 1.0);

    let logs = pair.stop().await.lines();
    let transitions: Vec<_> =
        logs.iter().filter(|l| l["event"] == "breaker_transition").map(|l| l["to"].clone()).collect();
    assert_eq!(transitions, [json!("open"), json!("half_open"), json!("closed")]);
}

#[actix_rt::test]
async fn a_failed_probe_reopens_the_circuit_for_longer() {
    let pair = breaker_pair().start().await;
    pair.faults(json!({"outage": true})).await;
    for i in 0..3 {
        pair.process(body(&format!("trip {i}"))).await;
    }
    wait_for_state(&pair, "half_open").await;
    let answer = pair.process(body("failing probe")).await;
    assert_eq!(answer.status, 502, "the probe reached the failing upstream");
    let state = breaker_state(&pair).await;
    assert_eq!(state["state"], "open");
    let open_for = state["open_for_seconds"].as_f64().unwrap();
    assert!(open_for > 0.5, "the second open period is longer than the first: {open_for}");
    assert_eq!(count(&pair.sim_stats().await, &["process", "total"]), 4);
    pair.stop().await;
}

#[actix_rt::test]
async fn operators_can_force_the_circuit_open_closed_and_back_to_auto() {
    let pair = breaker_pair().start().await;

    let (status, snapshot) = force(&pair, "open").await;
    assert_eq!(
        (status, snapshot["mode"].clone(), snapshot["effective"].clone()),
        (200, json!("forced_open"), json!("open"))
    );
    let answer = pair.process(body("refused")).await;
    assert_eq!((answer.status.as_u16(), answer.error_code()), (503, "circuit_open"));
    assert!(answer.header("retry-after").is_some());
    assert_eq!(count(&pair.sim_stats().await, &["process", "total"]), 0);
    assert_eq!(pair.metric("courier_breaker_mode", &[("mode", "forced_open")]).await, 1.0);

    // Forced closed: even a failing upstream keeps being called.
    let (status, _) = force(&pair, "closed").await;
    assert_eq!(status, 200);
    pair.faults(json!({"outage": true})).await;
    for i in 0..6 {
        let answer = pair.process(body(&format!("forced through {i}"))).await;
        assert_eq!(answer.status, 502);
    }
    assert_eq!(count(&pair.sim_stats().await, &["process", "total"]), 6);

    // Back to auto: a fresh closed circuit, which the outage then opens.
    let (status, snapshot) = force(&pair, "auto").await;
    assert_eq!((status, snapshot["mode"].clone(), snapshot["state"].clone()), (200, json!("auto"), json!("closed")));
    for i in 0..3 {
        pair.process(body(&format!("auto {i}"))).await;
    }
    // Outcomes reach the breaker as fire-and-forget messages: wait for it to have opened.
    wait_for_state(&pair, "open").await;
    assert_eq!(pair.process(body("now open")).await.error_code(), "circuit_open");

    let (status, body) = force(&pair, "sideways").await;
    assert_eq!(status, 400, "{body}");
    let readyz = read_answer(pair.http.get(pair.admin_url("/readyz")).send().await.unwrap()).await;
    assert_eq!(readyz.status, 200, "an open circuit is reported, not a reason to be unready");
    assert_eq!(readyz.body["breaker"]["state"], "open");
    let logs = pair.stop().await.lines();
    let modes: Vec<_> = logs.iter().filter(|l| l["event"] == "breaker_mode_changed").map(|l| l["to"].clone()).collect();
    assert_eq!(modes, [json!("forced_open"), json!("forced_closed"), json!("auto")]);
}

#[actix_rt::test]
async fn background_probes_close_the_circuit_within_seconds_of_recovery_not_at_the_end_of_its_period() {
    // A first open period of 30 s: without background probes clients would get 503 that long.
    let pair = breaker_pair().env("COURIER_BREAKER_OPEN", "30").env("COURIER_BREAKER_OPEN_MAX", "60").start().await;
    pair.faults(json!({"outage": true})).await;
    for i in 0..3 {
        let answer = pair.process(body(&format!("trip {i}"))).await;
        assert_eq!(answer.status, 502);
    }
    wait_for_state(&pair, "open").await;
    let opened = Instant::now();
    let tripped = count(&pair.sim_stats().await, &["process", "total"]);

    // 2.5 s of outage while open: clients fail fast, and only the probes reach the upstream, at
    // most one a second. (The pacing is client traffic, not synchronisation.)
    let mut refused = 0;
    while opened.elapsed() < Duration::from_millis(2500) {
        let started = Instant::now();
        let answer = pair.process(body(&format!("fail fast {refused}"))).await;
        assert_eq!((answer.status.as_u16(), answer.error_code()), (503, "circuit_open"));
        assert_eq!(answer.header("retry-after"), Some("1"), "the next probe may close it, not the period's end");
        assert!(started.elapsed() < Duration::from_millis(400), "failed fast");
        refused += 1;
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    let reached = count(&pair.sim_stats().await, &["process", "total"]) - tripped;
    let probes = pair.metric("courier_breaker_probes_total", &[("kind", "background")]).await;
    let failed = pair.metric("courier_breaker_probes_total", &[("kind", "background"), ("result", "failure")]).await;
    assert!(refused >= 10, "{refused}");
    assert_eq!(reached as f64, probes, "every upstream call while open was a probe");
    assert_eq!(failed, probes, "every probe met the outage");
    let open_for = opened.elapsed().as_secs_f64();
    assert!(probes >= 1.0 && probes <= open_for.floor(), "{probes} probes in {open_for:.1} s");
    assert_eq!(breaker_state(&pair).await["state"], "open");

    // The upstream recovers: a client is served again within ~2 s, not after the open period.
    pair.faults(json!({"outage": false})).await;
    let lag = pair.until_served("circuit_open", Duration::from_millis(20), Duration::from_secs(3)).await;
    println!(
        "recovery after an upstream outage: first 200 {:.0} ms after the upstream was back",
        lag.as_secs_f64() * 1e3
    );
    assert!(lag <= Duration::from_secs(3), "{lag:?}");
    assert_eq!(breaker_state(&pair).await["state"], "closed");
    assert_eq!(
        pair.metric("courier_breaker_probes_total", &[("kind", "background"), ("result", "success")]).await,
        1.0
    );
    assert_eq!(pair.metric("courier_breaker_transitions_total", &[("to", "half_open")]).await, 0.0);
    assert_eq!(pair.metric("courier_breaker_transitions_total", &[("to", "closed")]).await, 1.0);
    assert_eq!(pair.metric("courier_breaker_probes_total", &[("kind", "half_open")]).await, 0.0);

    let logs = pair.stop().await.lines();
    let probe_lines: Vec<_> = logs.iter().filter(|l| l["event"] == "breaker_probe").collect();
    assert!(!probe_lines.is_empty() && probe_lines.len() <= 3, "logged at a bounded rate: {probe_lines:?}");
    assert_eq!(probe_lines.last().unwrap()["result"], "success");
    assert_eq!(probe_lines.last().unwrap()["state"], "closed");
}

#[actix_rt::test]
async fn a_refusal_by_the_open_circuit_is_the_requests_own_miss_in_its_log_line() {
    // With the cache on, a request that finds the circuit open went to load its answer itself:
    // its log line and X-Cache say `miss`, not `coalesced` (it waited on no other request).
    let pair = breaker_pair().env("EXTERNAL_API_CACHE_TTL", "60").start().await;
    assert_eq!(force(&pair, "forced_open").await.0, 200);
    let answer = pair.process(body("refused")).await;
    assert_eq!((answer.status.as_u16(), answer.error_code()), (503, "circuit_open"));
    assert_eq!(answer.header("x-cache"), Some("MISS"));
    let logs = pair.stop().await;
    let line = logs.lines().into_iter().find(|l| l["event"] == "gateway_request" && l["error"] == "circuit_open");
    assert_eq!(line.expect("the refusal is logged")["cache"], "miss");
}
