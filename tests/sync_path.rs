//! The sync path over real HTTP: happy path, input validation, client identity, secrets.

mod support;

use serde_json::json;
use support::{body, count, PairBuilder, API_KEY, CLIENT_SECRET};

#[actix_rt::test]
async fn happy_path_returns_the_upstream_result_with_both_ids() {
    let pair = PairBuilder::default().start().await;
    let answer = pair.process_with(&body("hello courier"), &[("x-request-id", "trace-42")]).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body["success"], true);
    assert_eq!(answer.body["result"]["processed_data"], "HELLO COURIER");
    assert_eq!(answer.body["result"]["metadata"]["version"], "v2.1");
    assert_eq!(answer.body["request_id"], "trace-42");
    assert_eq!(answer.header("x-request-id"), Some("trace-42"));
    assert!(answer.body["upstream_request_id"].as_str().unwrap().starts_with("up_"));

    // Without an X-Request-Id courier makes one, returns it and logs it.
    let answer = pair.process(&body("again")).await;
    let id = answer.body["request_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("req_"), "{id}");
    assert_eq!(answer.header("x-request-id"), Some(id.as_str()));
    let stats = pair.sim_stats().await;
    assert_eq!(count(&stats, &["process", "ok"]), 2);
    assert_eq!(stats["last_request_id"], id.as_str(), "the request id is sent upstream");

    let logs = pair.stop().await;
    let lines = logs.lines();
    let inbound: Vec<_> = lines.iter().filter(|l| l["event"] == "gateway_request").collect();
    assert_eq!(inbound.len(), 2);
    let upstream: Vec<_> = lines.iter().filter(|l| l["event"] == "external_api_request").collect();
    assert_eq!(upstream.len(), 2);
    for line in inbound.iter().chain(upstream.iter()) {
        for field in [
            "timestamp",
            "level",
            "event",
            "request_id",
            "endpoint",
            "method",
            "status_code",
            "response_time",
            "retry_count",
        ] {
            assert!(!line[field].is_null(), "{field} missing in {line}");
        }
    }
    assert_eq!(upstream[1]["request_id"], id.as_str());
    assert_eq!(upstream[1]["endpoint"], "/process");
    assert_eq!(upstream[1]["status_code"], 200);
    assert_eq!(inbound[1]["client"], "open");
}

#[actix_rt::test]
async fn bad_input_gets_its_status_and_the_error_shape() {
    let pair = PairBuilder::default().env("COURIER_MAX_BODY_BYTES", "2048").start().await;

    let answer = pair.process_raw("text/plain", br#"{"data":{"input":"x"}}"#.to_vec()).await;
    assert_eq!((answer.status.as_u16(), answer.error_code()), (415, "unsupported_media_type"));

    let big = json!({"data": {"input": "x".repeat(4096)}});
    let answer = pair.process(&big).await;
    assert_eq!((answer.status.as_u16(), answer.error_code()), (413, "payload_too_large"));

    let answer = pair.process_raw("application/json", b"{\"data\": ".to_vec()).await;
    assert_eq!((answer.status.as_u16(), answer.error_code()), (400, "invalid_json"));

    let answer = pair.process(&json!({"data": {"format": "text"}})).await;
    assert_eq!((answer.status.as_u16(), answer.error_code()), (400, "invalid_request"));
    assert_eq!(answer.body["error"]["message"], "data.input is required");

    let answer = pair.process(&json!({"data": "text"})).await;
    assert_eq!(answer.body["error"]["message"], "data must be an object");

    let answer = pair.process_with(&body("x"), &[("x-request-timeout", "soon")]).await;
    assert_eq!((answer.status.as_u16(), answer.error_code()), (400, "invalid_request"));

    // None of these reached the upstream.
    assert_eq!(count(&pair.sim_stats().await, &["process", "total"]), 0);

    // The upstream's own 400 comes back as 400 with its message.
    let answer = pair.process(&json!({"data": {"input": "x", "format": "xml"}})).await;
    assert_eq!((answer.status.as_u16(), answer.error_code()), (400, "upstream_rejected"));
    assert_eq!(answer.body["error"]["message"], "unsupported format 'xml'");
    assert_eq!(answer.body["error"]["retryable"], false);
    assert_eq!(count(&pair.sim_stats().await, &["process", "bad_request"]), 1, "an upstream 400 is not retried");

    let response = pair.http.get(pair.url("/nowhere")).send().await.unwrap();
    let answer = support::read_answer(response).await;
    assert_eq!((answer.status.as_u16(), answer.error_code()), (404, "not_found"));
    let response = pair.http.get(pair.url("/api/external/process")).send().await.unwrap();
    let answer = support::read_answer(response).await;
    assert_eq!((answer.status.as_u16(), answer.error_code()), (405, "method_not_allowed"));
    pair.stop().await;
}

fn clients_file(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("courier-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("clients.toml");
    let text = format!(
        "[[client]]\nname = \"billing\"\nkey_sha256 = \"{}\"\nweight = 3\n\n[[client]]\nname = \"search\"\nkey_sha256 = \"{}\"\n",
        courier::config::key_sha256_hex("billing-key-0001"),
        courier::config::key_sha256_hex("search-key-0002"),
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[actix_rt::test]
async fn known_clients_are_identified_and_others_get_401() {
    let path = clients_file("auth");
    let pair = PairBuilder::default().env("COURIER_CLIENTS_FILE", path.to_str().unwrap()).start().await;

    let answer = pair.process(&body("x")).await;
    assert_eq!((answer.status.as_u16(), answer.error_code()), (401, "unauthorized"));
    assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
    let answer = pair.process_with(&body("x"), &[("authorization", "Bearer wrong-key")]).await;
    assert_eq!((answer.status.as_u16(), answer.error_code()), (401, "unauthorized"));
    assert_eq!(count(&pair.sim_stats().await, &["process", "total"]), 0);

    let answer = pair.process_with(&body("x"), &[("authorization", "Bearer search-key-0002")]).await;
    assert_eq!(answer.status, 200);
    let served = pair
        .metric("courier_http_requests_total", &[("route", "process"), ("status", "200"), ("client", "search")])
        .await;
    assert_eq!(served, 1.0);
    let refused = pair
        .metric("courier_http_requests_total", &[("route", "process"), ("status", "401"), ("client", "unknown")])
        .await;
    assert_eq!(refused, 2.0);
    let logs = pair.stop().await;
    assert!(!logs.text().contains("search-key-0002"));
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[actix_rt::test]
async fn no_secret_reaches_logs_metrics_or_answers() {
    let pair = PairBuilder::default()
        .log_level("trace")
        .sim(|s| s.token_ttl = std::time::Duration::from_secs(2))
        .start()
        .await;
    let mut answers = Vec::new();
    answers.push(pair.process(&body("one")).await);
    pair.faults(json!({"revoke_tokens": true})).await;
    answers.push(pair.process(&body("after revocation")).await);
    pair.faults(json!({"error_count": 1, "error_status": 503})).await;
    answers.push(pair.process(&body("after a 503")).await);
    pair.faults(json!({"token_failure": true, "revoke_tokens": true})).await;
    answers.push(pair.process(&body("token endpoint down")).await);
    assert_eq!(answers.last().unwrap().status, 503);
    let metrics = pair.metrics().await;
    let stats = pair.sim_stats().await;
    assert!(count(&stats, &["token", "ok"]) >= 2);
    let logs = pair.stop().await.text();
    assert!(logs.contains("token_refreshed"), "trace-level logs were captured");

    let everything = format!("{logs}\n{metrics}\n{answers:?}");
    for secret in [CLIENT_SECRET, API_KEY, "Bearer "] {
        assert!(!everything.contains(secret), "{secret:?} leaked");
    }
    // Simulator tokens look like <epoch>.<expiry ms>.<nonce>.<mac>; none may appear either.
    let token_like = everything.split(|c: char| !(c.is_ascii_alphanumeric() || c == '.')).any(|word| {
        let parts: Vec<&str> = word.split('.').collect();
        parts.len() == 4 && parts[1].len() >= 13 && parts.iter().all(|p| !p.is_empty())
    });
    assert!(!token_like, "a token-shaped value leaked");
}
