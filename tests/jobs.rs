//! Async jobs over real HTTP with the in-process store: 202 then status, signed callbacks with
//! retries, refused callback URLs, ids, ownership, deadlines and shutdown.

mod support;

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{json, Value};
use support::receiver::Receiver;
use support::{body, count, read_answer, Answer, Pair, PairBuilder};

const SECRET: &str = "whsec_test_2b9d";

fn with_callbacks() -> PairBuilder {
    PairBuilder::default()
        .env("COURIER_CALLBACK_SECRET", SECRET)
        .env("COURIER_CALLBACK_ALLOW", "127.0.0.1")
        .env("COURIER_CALLBACK_RETRY_DELAY", "0.02")
}

fn async_body(input: &str, callback: Option<&str>) -> Value {
    let mut options = json!({"async": true});
    if let Some(url) = callback {
        options["callback_url"] = json!(url);
    }
    json!({"data": {"input": input, "format": "text"}, "options": options})
}

async fn status(pair: &Pair, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = pair.http.get(pair.url(path));
    for (name, value) in headers {
        request = request.insert_header((*name, *value));
    }
    read_answer(request.send().await.unwrap()).await
}

/// Polls the status (bounded) until it is final.
async fn final_status(pair: &Pair, path: &str, headers: &[(&str, &str)]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = status(pair, path, headers).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        if matches!(answer.body["status"].as_str(), Some("completed" | "failed")) {
            return answer.body;
        }
        assert!(Instant::now() < deadline, "job never finished: {answer:?}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_rfc3339(value: &Value) -> bool {
    value.as_str().is_some_and(|s| s.ends_with('Z') && humantime::parse_rfc3339(s).is_ok())
}

#[actix_rt::test]
async fn an_async_request_is_accepted_at_once_and_completes_in_the_background() {
    let pair = PairBuilder::default().start().await;
    pair.faults(json!({"latency_ms": 300})).await;
    let started = Instant::now();
    let accepted = pair.process(async_body("later please", None)).await;
    assert!(started.elapsed() < Duration::from_millis(250), "202 without waiting for the upstream");
    assert_eq!(accepted.status, 202, "{accepted:?}");
    assert_eq!(accepted.body["success"], true);
    assert_eq!(accepted.body["status"], "pending");
    let id = accepted.body["request_id"].as_str().unwrap().to_owned();
    let url = accepted.body["status_url"].as_str().unwrap().to_owned();
    assert_eq!(url, format!("/api/external/status/{id}"));
    assert_eq!(accepted.header("location"), Some(url.as_str()));

    let done = final_status(&pair, &url, &[]).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["request_id"], id.as_str());
    assert_eq!(done["result"]["processed_data"], "LATER PLEASE");
    assert_eq!(done["attempts"], 1);
    assert!(is_rfc3339(&done["created_at"]) && is_rfc3339(&done["completed_at"]), "{done}");
    assert!(done.get("error").is_none());
    assert_eq!(count(&pair.sim_stats().await, &["process", "ok"]), 1);
    assert_eq!(pair.metric("courier_jobs_accepted_total", &[]).await, 1.0);
    assert_eq!(pair.metric("courier_jobs_finished_total", &[("state", "completed")]).await, 1.0);
    let logs = pair.stop().await.lines();
    assert!(logs
        .iter()
        .any(|l| l["event"] == "job_finished" && l["request_id"] == id.as_str() && l["status"] == "completed"));
}

#[actix_rt::test]
async fn every_sync_request_id_can_be_looked_up_too() {
    let pair = PairBuilder::default().start().await;
    let answer = pair.process(body("sync and findable")).await;
    let id = answer.body["request_id"].as_str().unwrap();
    let found = status(&pair, &format!("/api/external/status/{id}"), &[]).await;
    assert_eq!(found.status, 200);
    assert_eq!(found.body["status"], "completed");
    assert_eq!(found.body["result"], answer.body["result"]);
    let refused = pair.process(json!({"data": {}})).await;
    let id = refused.body["request_id"].as_str().unwrap();
    let found = status(&pair, &format!("/api/external/status/{id}"), &[]).await;
    assert_eq!(found.body["status"], "failed");
    assert_eq!(found.body["error"]["code"], "invalid_request");
    pair.stop().await;
}

#[actix_rt::test]
async fn unknown_and_malformed_ids() {
    let pair = PairBuilder::default().start().await;
    let unknown = status(&pair, "/api/external/status/req_0000000000000000", &[]).await;
    assert_eq!((unknown.status.as_u16(), unknown.error_code()), (404, "not_found"));
    let malformed = status(&pair, "/api/external/status/has%20space", &[]).await;
    assert_eq!((malformed.status.as_u16(), malformed.error_code()), (400, "invalid_request"));
    let long = status(&pair, &format!("/api/external/status/{}", "x".repeat(200)), &[]).await;
    assert_eq!(long.status, 400);
    pair.stop().await;
}

#[actix_rt::test]
async fn the_callback_is_signed_and_carries_the_final_status() {
    let receiver = Receiver::start(&[]).await;
    let pair = with_callbacks().start().await;
    let accepted = pair.process(async_body("call me back", Some(&receiver.url("/hook")))).await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    let id = accepted.body["request_id"].as_str().unwrap().to_owned();
    let got = receiver.wait_for(1).await;
    assert!(got[0].signed_with(SECRET), "the signature verifies: {:?}", got[0].signature);
    assert!(!got[0].signed_with("another secret"));
    let doc = got[0].json();
    assert_eq!(doc["request_id"], id.as_str());
    assert_eq!(doc["status"], "completed");
    assert_eq!(doc["result"]["processed_data"], "CALL ME BACK");
    let text = String::from_utf8_lossy(&got[0].body);
    for secret in [support::CLIENT_SECRET, support::API_KEY, SECRET] {
        assert!(!text.contains(secret), "the callback body holds no secret");
    }
    let done = final_status(&pair, &format!("/api/external/status/{id}"), &[]).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut callback = done["callback"].clone();
    while callback["state"] != "delivered" {
        assert!(Instant::now() < deadline, "{callback}");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
        callback = status(&pair, &format!("/api/external/status/{id}"), &[]).await.body["callback"].clone();
    }
    assert_eq!((callback["attempts"].clone(), callback["last_status_code"].clone()), (json!(1), json!(200)));
    pair.stop().await;
    receiver.stop().await;
}

#[actix_rt::test]
async fn a_receiver_that_fails_twice_gets_the_callback_on_the_third_attempt() {
    let receiver = Receiver::start(&[500, 503]).await;
    let pair = with_callbacks().start().await;
    let accepted = pair.process(async_body("persist", Some(&receiver.url("/flaky")))).await;
    let id = accepted.body["request_id"].as_str().unwrap().to_owned();
    let got = receiver.wait_for(3).await;
    assert!(got.iter().all(|d| d.signed_with(SECRET)));
    assert!(got.iter().all(|d| d.json()["request_id"] == id.as_str()));
    let path = format!("/api/external/status/{id}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let callback = status(&pair, &path, &[]).await.body["callback"].clone();
        if callback["state"] == "delivered" {
            assert_eq!(callback["attempts"], 3);
            assert_eq!(callback["last_status_code"], 200);
            break;
        }
        assert!(Instant::now() < deadline, "{callback}");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(receiver.got().len(), 3, "no delivery after the success");
    assert_eq!(pair.metric("courier_callbacks_total", &[("result", "delivered")]).await, 1.0);
    assert_eq!(pair.metric("courier_callback_attempts_total", &[("result", "failure")]).await, 2.0);
    pair.stop().await;
    receiver.stop().await;
}

#[actix_rt::test]
async fn callback_urls_that_reach_inside_are_refused() {
    let pair = PairBuilder::default().env("COURIER_CALLBACK_SECRET", SECRET).start().await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost:9/hook",
        "http://[::1]/hook",
        "ftp://example.com/hook",
        "/relative",
    ] {
        let answer = pair.process(async_body("nope", Some(url))).await;
        assert_eq!((answer.status.as_u16(), answer.error_code()), (400, "invalid_callback_url"), "{url}: {answer:?}");
    }
    assert_eq!(count(&pair.sim_stats().await, &["process", "total"]), 0, "nothing was accepted");
    assert_eq!(pair.metric("courier_jobs_accepted_total", &[]).await, 0.0);
    pair.stop().await;

    // Without a signing secret courier refuses callbacks rather than send unsigned ones.
    let pair = PairBuilder::default().start().await;
    let answer = pair.process(async_body("unsigned", Some("http://93.184.216.34/hook"))).await;
    assert_eq!((answer.status.as_u16(), answer.error_code()), (400, "callbacks_unavailable"));
    pair.stop().await;
}

fn clients_file() -> std::path::PathBuf {
    support::two_clients_file("jobs")
}

#[actix_rt::test]
async fn only_the_client_that_created_a_job_can_read_it_and_resubmitting_is_idempotent() {
    let path = clients_file();
    let pair = PairBuilder::default().env("COURIER_CLIENTS_FILE", path.to_str().unwrap()).start().await;
    let alpha = [("authorization", "Bearer alpha-key"), ("x-request-id", "alpha-job-1")];
    let accepted = pair.process_with(async_body("mine", None), &alpha).await;
    assert_eq!((accepted.status.as_u16(), accepted.body["request_id"].clone()), (202, json!("alpha-job-1")));
    let url = "/api/external/status/alpha-job-1";
    let done = final_status(&pair, url, &alpha[..1]).await;
    assert_eq!(done["status"], "completed");

    let beta = status(&pair, url, &[("authorization", "Bearer beta-key")]).await;
    assert_eq!((beta.status.as_u16(), beta.error_code()), (404, "not_found"), "another client sees nothing");
    let anonymous = status(&pair, url, &[]).await;
    assert_eq!(anonymous.status, 401);

    // The same client resubmitting the same id gets the same job, not a second one.
    let again = pair.process_with(async_body("mine", None), &alpha).await;
    assert_eq!((again.status.as_u16(), again.body["status"].clone()), (202, json!("completed")));
    assert_eq!(count(&pair.sim_stats().await, &["process", "total"]), 1);
    let stolen = pair
        .process_with(
            async_body("theirs", None),
            &[("authorization", "Bearer beta-key"), ("x-request-id", "alpha-job-1")],
        )
        .await;
    assert_eq!((stolen.status.as_u16(), stolen.error_code()), (409, "request_id_in_use"));
    pair.stop().await;
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[actix_rt::test]
async fn a_job_waits_out_passing_refusals_within_its_own_deadline_then_fails() {
    let pair =
        PairBuilder::default().env("COURIER_JOB_DEADLINE", "1.5").env("COURIER_BREAKER_OPEN", "0.2").start().await;
    let forced = pair.http.post(pair.admin_url("/admin/breaker")).send_json(&json!({"mode": "open"})).await.unwrap();
    assert_eq!(forced.status(), 200);
    let started = Instant::now();
    let accepted = pair.process(async_body("patient", None)).await;
    let url = accepted.body["status_url"].as_str().unwrap().to_owned();
    let done = final_status(&pair, &url, &[]).await;
    let waited = started.elapsed();
    assert_eq!(done["status"], "failed");
    assert_eq!(done["error"]["code"], "circuit_open");
    assert!(waited >= Duration::from_millis(1200), "the job kept trying until its deadline: {waited:?}");

    // A circuit that closes within the deadline lets the next job through.
    pair.http.post(pair.admin_url("/admin/breaker")).send_json(&json!({"mode": "open"})).await.unwrap();
    let accepted = pair.process(async_body("patient again", None)).await;
    actix_rt::time::sleep(Duration::from_millis(300)).await; // the job is waiting on the open circuit
    pair.http.post(pair.admin_url("/admin/breaker")).send_json(&json!({"mode": "auto"})).await.unwrap();
    let done = final_status(&pair, accepted.body["status_url"].as_str().unwrap(), &[]).await;
    assert_eq!(done["status"], "completed");
    pair.stop().await;
}

#[actix_rt::test]
async fn stopping_finishes_or_fails_every_job_and_their_callbacks_say_so() {
    let receiver = Receiver::start(&[]).await;
    let pair = with_callbacks().env("COURIER_SHUTDOWN_GRACE", "0.5").env("COURIER_JOB_CONCURRENCY", "2").start().await;
    pair.faults(json!({"latency_ms": 2000})).await;
    let accepted =
        join_all((0..6).map(|i| pair.process(async_body(&format!("shutdown {i}"), Some(&receiver.url("/bye")))))).await;
    assert!(accepted.iter().all(|a| a.status == 202));
    let deadline = Instant::now() + Duration::from_secs(5);
    while pair.sim_stats().await["in_flight"].as_u64() != Some(2) {
        assert!(Instant::now() < deadline, "two jobs running");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    let logs = pair.stop().await;
    let got = receiver.wait_for(6).await;
    for delivery in &got {
        let doc = delivery.json();
        assert_eq!(doc["status"], "failed", "{doc}");
        assert_eq!(doc["error"]["code"], "shutdown");
        assert!(delivery.signed_with(SECRET));
    }
    assert!(logs.lines().iter().any(|l| l["event"] == "jobs_failed_at_shutdown" && l["count"] == 6));
    receiver.stop().await;
}
