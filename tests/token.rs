//! The TokenManager over real HTTP: reuse, refresh ahead of expiry, one refresh per
//! revocation however many requests see it, a failing token endpoint, recovery within about a
//! second of the endpoint's, and `/readyz` and `/admin/state` telling the truth meanwhile.

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

/// Revokes every token and takes the token endpoint down: every request now needs a token
/// nobody can have. Returns once a request has seen it.
async fn lose_the_token(pair: &support::Pair) {
    assert_eq!(pair.process(&body("before")).await.status, 200);
    pair.faults(json!({"revoke_tokens": true, "token_failure": true})).await;
    let answer = pair.process(&body("revoked")).await;
    assert_eq!((answer.status.as_u16(), answer.error_code()), (503, "upstream_auth_unavailable"));
}

#[actix_rt::test]
async fn after_a_token_endpoint_outage_requests_are_served_within_seconds_of_its_recovery() {
    let pair = PairBuilder::default().start().await;
    lose_the_token(&pair).await;
    let down = Instant::now();
    let before = count(&pair.sim_stats().await, &["token", "total"]);

    // 5 s of outage: a doubling backoff would be waiting 4-8 s by now; a steady probe waits ~1 s.
    // (The pacing is client traffic, not synchronisation.)
    while down.elapsed() < Duration::from_secs(5) {
        let answer = pair.process(&body("during the outage")).await;
        assert_eq!((answer.status.as_u16(), answer.error_code()), (503, "upstream_auth_unavailable"));
        let retry_after: u64 = answer.header("retry-after").expect("Retry-After").parse().unwrap();
        assert!(retry_after <= 2, "Retry-After {retry_after} while probing about once a second");
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    let asked = count(&pair.sim_stats().await, &["token", "total"]) - before;
    let outage = down.elapsed().as_secs_f64();
    assert!(asked >= 3 && asked as f64 <= outage + 2.0, "{asked} token requests in {outage:.1} s: not hammered");

    pair.faults(json!({"token_failure": false})).await;
    let lag = pair.until_served("upstream_auth_unavailable", Duration::from_millis(20), Duration::from_secs(3)).await;
    println!(
        "recovery after a token endpoint outage: first 200 {:.0} ms after the endpoint was back",
        lag.as_secs_f64() * 1e3
    );
    assert!(lag <= Duration::from_secs(3), "{lag:?}");
    pair.stop().await;
}

#[actix_rt::test]
async fn readyz_and_admin_state_say_when_no_usable_token_is_held() {
    let pair = PairBuilder::default().start().await;
    let ready = pair.admin_get("/readyz").await;
    assert_eq!((ready.status.as_u16(), ready.body["checks"]["upstream_token"].as_str()), (200, Some("ok")));

    lose_the_token(&pair).await;
    // While every request gets 503 upstream_auth_unavailable, readiness says so too, and why.
    let ready = pair.admin_get("/readyz").await;
    assert_eq!(ready.status, 503, "{:?}", ready.body);
    assert_eq!(ready.body["ready"], false);
    assert_eq!(ready.body["checks"]["upstream_token"], "unavailable");
    let error = ready.body["upstream_token_error"].as_str().expect("the reason");
    assert!(error.contains("503"), "{error}");
    assert!(!ready.body.to_string().contains(support::CLIENT_SECRET));
    let state = pair.admin_get("/admin/state").await.body;
    let token = &state["token"];
    assert_eq!((token["ready"].clone(), token["state"].clone()), (json!(false), json!("unavailable")), "{state}");
    assert_eq!(token["generation"], json!(null));
    assert_eq!(token["error"], json!(error));
    let retry_in = token["retry_in_seconds"].as_f64().expect("when the next token request is due");
    assert!((0.0..=1.25).contains(&retry_in), "{retry_in}");
    assert_eq!(pair.metric("courier_ready", &[]).await, 0.0);
    let answer = pair.process(&body("still none")).await;
    assert_eq!(answer.error_code(), "upstream_auth_unavailable", "readiness agrees with what requests get");

    // The endpoint recovers: ready again within ~2 s, with the new generation.
    pair.faults(json!({"token_failure": false})).await;
    let back = Instant::now();
    pair.wait_ready().await;
    let lag = back.elapsed();
    assert!(lag <= Duration::from_secs(3), "{lag:?}");
    let state = pair.admin_get("/admin/state").await.body;
    assert_eq!((state["token"]["ready"].clone(), state["token"]["state"].clone()), (json!(true), json!("ok")));
    assert_eq!((state["token"]["generation"].clone(), state["token"]["error"].clone()), (json!(2), json!(null)));
    assert_eq!(pair.metric("courier_ready", &[]).await, 1.0);
    pair.stop().await;
}
