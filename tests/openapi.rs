//! `GET /openapi.json` on the gateway listener: served over HTTP, describing every route, and
//! describing the answers a running courier really gives (status, headers, required fields).
//! The contract fuzzer (`scripts/contract-fuzz`) goes further; these run with `cargo test`.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{body, read_answer, Answer, Pair, PairBuilder};

async fn get(pair: &Pair, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = pair.http.get(pair.url(path));
    for (name, value) in headers {
        request = request.insert_header((*name, *value));
    }
    read_answer(request.send().await.expect("courier answers")).await
}

async fn description(pair: &Pair) -> Value {
    let answer = get(pair, "/openapi.json", &[]).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("content-type"), Some("application/json"));
    answer.body
}

/// The schema a `$ref` (or an `allOf` starting with one) names.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    let reference = schema["$ref"].as_str().or_else(|| schema["allOf"][0]["$ref"].as_str());
    match reference {
        Some(reference) => &doc["components"]["schemas"][reference.trim_start_matches("#/components/schemas/")],
        None => schema,
    }
}

/// Asserts that the answer's status is documented for the operation, that every header courier
/// added is documented for that status, and that the body has the schema's required fields.
fn assert_documented(doc: &Value, method: &str, path: &str, answer: &Answer) {
    let responses = &doc["paths"][path][method]["responses"];
    let documented = &responses[answer.status.as_str()];
    assert!(documented.is_object(), "{method} {path} {} is not documented: {answer:?}", answer.status);
    let headers = documented["headers"].as_object().cloned().unwrap_or_default();
    for (name, _) in answer.headers.iter() {
        // Transport headers (`connection: close` follows an unread body) are not the API's.
        if ["content-length", "content-type", "date", "connection"].contains(&name.as_str()) {
            continue;
        }
        assert!(
            headers.keys().any(|h| h.eq_ignore_ascii_case(name.as_str())),
            "{method} {path} {}: header {name} is not documented",
            answer.status
        );
    }
    let schema = resolve(doc, &documented["content"]["application/json"]["schema"]);
    for field in schema["required"].as_array().into_iter().flatten() {
        let field = field.as_str().unwrap();
        assert!(answer.body.get(field).is_some(), "{method} {path}: {field} is missing from {}", answer.body);
    }
}

#[actix_rt::test]
async fn the_description_is_served_on_the_gateway_listener_and_covers_every_route() {
    let pair = PairBuilder::default().start().await;
    let answer = get(&pair, "/openapi.json", &[("x-request-id", "spec-1")]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-request-id"), Some("spec-1"));
    let doc = answer.body;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
    for (method, path) in courier::http::routes() {
        let operation = &doc["paths"][path][method.as_str().to_ascii_lowercase()];
        assert!(operation.is_object(), "{method} {path} is registered but not described");
    }
    // Open mode: no key is asked for.
    assert!(doc.get("security").is_none());
    assert_eq!(
        pair.metric("courier_http_requests_total", &[("route", "openapi"), ("status", "200"), ("client", "open")])
            .await,
        1.0
    );
    pair.stop().await;
}

fn clients_file() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("courier-test-{}-openapi", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("clients.toml");
    let key = courier::config::key_sha256_hex("openapi-key-0001");
    std::fs::write(&path, format!("[[client]]\nname = \"docs\"\nkey_sha256 = \"{key}\"\n")).unwrap();
    path
}

#[actix_rt::test]
async fn with_client_keys_the_description_needs_none_and_says_the_api_does() {
    let path = clients_file();
    let pair = PairBuilder::default()
        .env("COURIER_CLIENTS_FILE", path.to_str().unwrap())
        .env("COURIER_AUTH_LOCKOUT_THRESHOLD", "1")
        .start()
        .await;
    let doc = description(&pair).await;
    assert_eq!(doc["security"], json!([{"client_key": []}]));
    assert_eq!(doc["components"]["securitySchemes"]["client_key"]["scheme"], "bearer");

    let refused = pair.process(&body("x")).await;
    assert_eq!(refused.status, 401);
    assert_documented(&doc, "post", "/api/external/process", &refused);
    let served = pair.process_with(&body("x"), &[("authorization", "Bearer openapi-key-0001")]).await;
    assert_eq!(served.status, 200);
    assert_documented(&doc, "post", "/api/external/process", &served);
    // A wrong key from another address locks it out (threshold 1): the 429 is documented too,
    // on both routes.
    let guesser = awc::Client::builder().local_address("127.0.0.2".parse().unwrap()).finish();
    let url = |path: &str| format!("http://{}{path}", pair.courier.addr);
    let guess = |request: awc::ClientRequest| request.insert_header(("authorization", "Bearer a-guess"));
    let wrong =
        read_answer(guess(guesser.post(url("/api/external/process"))).send_json(&body("x")).await.unwrap()).await;
    assert_eq!(wrong.status, 401);
    let locked =
        read_answer(guess(guesser.post(url("/api/external/process"))).send_json(&body("x")).await.unwrap()).await;
    assert_eq!((locked.status.as_u16(), locked.error_code()), (429, "auth_locked_out"));
    assert_documented(&doc, "post", "/api/external/process", &locked);
    let status =
        read_answer(guess(guesser.get(url("/api/external/status/req_0000000000000000"))).send().await.unwrap()).await;
    assert_eq!((status.status.as_u16(), status.error_code()), (429, "auth_locked_out"));
    assert_documented(&doc, "get", "/api/external/status/{request_id}", &status);
    pair.stop().await;
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[actix_rt::test]
async fn real_answers_are_the_documented_ones() {
    let pair = PairBuilder::default().env("EXTERNAL_API_CACHE_TTL", "60").start().await;
    let doc = description(&pair).await;
    let process = "/api/external/process";

    let miss = pair.process(&body("doc")).await;
    assert_eq!((miss.status.as_u16(), miss.header("x-cache")), (200, Some("MISS")));
    assert_documented(&doc, "post", process, &miss);
    let hit = pair.process(&body("doc")).await;
    assert_eq!((hit.status.as_u16(), hit.header("x-cache")), (200, Some("HIT")));
    assert!(hit.header("age").is_some());
    assert_documented(&doc, "post", process, &hit);

    let accepted = pair.process(&json!({"data": {"input": "later"}, "options": {"async": true}})).await;
    assert_eq!(accepted.status, 202);
    assert_documented(&doc, "post", process, &accepted);
    let bad = pair.process(&json!({"data": {}})).await;
    assert_eq!((bad.status.as_u16(), bad.error_code()), (400, "invalid_request"));
    assert_documented(&doc, "post", process, &bad);
    let rejected = pair.process(&json!({"data": {"input": "x", "format": "xml"}})).await;
    assert_eq!((rejected.status.as_u16(), rejected.error_code()), (400, "upstream_rejected"));
    assert_documented(&doc, "post", process, &rejected);
    let not_json = pair.process_raw("text/plain", b"x".to_vec()).await;
    assert_eq!(not_json.status, 415);
    assert_documented(&doc, "post", process, &not_json);

    let status = "/api/external/status/{request_id}";
    let id = miss.body["request_id"].as_str().unwrap();
    let found = get(&pair, &format!("/api/external/status/{id}"), &[("x-request-id", "lookup-1")]).await;
    assert_eq!(found.status, 200);
    assert_eq!(found.header("x-request-id"), Some("lookup-1"), "a status answer carries X-Request-Id");
    assert_documented(&doc, "get", status, &found);
    let missing = get(&pair, "/api/external/status/req_0000000000000000", &[]).await;
    assert_eq!(missing.status, 404);
    assert_documented(&doc, "get", status, &missing);
    let malformed = get(&pair, "/api/external/status/has%20space", &[]).await;
    assert_eq!(malformed.status, 400);
    assert_documented(&doc, "get", status, &malformed);
    pair.stop().await;
}

#[actix_rt::test]
async fn other_methods_get_405_with_allow() {
    let pair = PairBuilder::default().start().await;
    for (method, path, allow) in [
        ("PUT", "/api/external/process", "POST"),
        ("GET", "/api/external/process", "POST"),
        ("DELETE", "/api/external/status/abc", "GET"),
        ("POST", "/openapi.json", "GET"),
    ] {
        let request = pair.http.request(method.parse().unwrap(), pair.url(path));
        let answer = read_answer(request.send().await.unwrap()).await;
        assert_eq!((answer.status.as_u16(), answer.error_code()), (405, "method_not_allowed"), "{method} {path}");
        assert_eq!(answer.header("allow"), Some(allow), "{method} {path}");
    }
    pair.stop().await;
}

/// Found by the contract fuzzer: a huge `X-Request-Timeout` overflowed `Duration` and the panic
/// took the worker thread down.
#[actix_rt::test]
async fn a_huge_request_timeout_is_capped_not_a_crash() {
    let pair = PairBuilder::default().env("COURIER_WORKERS", "1").start().await;
    for _ in 0..3 {
        let answer = pair.process_with(&body("x"), &[("x-request-timeout", "8.7e307")]).await;
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    let answer = pair.process_with(&body("x"), &[("x-request-timeout", "1e400")]).await;
    assert_eq!((answer.status.as_u16(), answer.error_code()), (400, "invalid_request"));
    pair.stop().await;
}

/// A request id may contain `/`; its `status_url` encodes it so that the URL still names it.
#[actix_rt::test]
async fn an_id_with_a_slash_is_found_at_its_status_url() {
    let pair = PairBuilder::default().start().await;
    let job = json!({"data": {"input": "slash"}, "options": {"async": true}});
    let accepted = pair.process_with(&job, &[("x-request-id", "team/a:1")]).await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    assert_eq!(accepted.body["request_id"], "team/a:1");
    let url = accepted.body["status_url"].as_str().unwrap().to_owned();
    assert_eq!(url, "/api/external/status/team%2Fa:1");
    assert_eq!(accepted.header("location"), Some(url.as_str()));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = get(&pair, &url, &[]).await;
        assert_eq!((answer.status.as_u16(), &answer.body["request_id"]), (200, &json!("team/a:1")), "{answer:?}");
        if answer.body["status"] == "completed" {
            break;
        }
        assert!(Instant::now() < deadline, "the job never completed: {answer:?}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    pair.stop().await;
}
