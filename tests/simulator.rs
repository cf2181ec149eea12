//! Black-box tests of the upstream simulator over real HTTP on loopback.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use actix_web::http::header::HeaderMap;
use actix_web::http::StatusCode;
use courier::simulator::{FaultsPatch, QuotaHeaders, QuotasReport, SimConfig, SimStats, Simulator};
use futures_util::future::join_all;
use serde_json::{json, Value};

/// A running simulator plus an HTTP client pointed at it.
struct Harness {
    sim: Simulator,
    client: awc::Client,
    root: String,
}

/// A response with its body already read as JSON.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn header_u64(&self, name: &str) -> u64 {
        let raw = self.header(name).unwrap_or_else(|| panic!("missing {name}"));
        raw.parse().unwrap_or_else(|_| panic!("{name}: {raw:?}"))
    }

    fn error_code(&self) -> &str {
        assert_eq!(self.body["success"], false, "{}", self.body);
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
}

async fn read(mut resp: awc::ClientResponse) -> Reply {
    let bytes = resp.body().await.expect("response body");
    let body =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)));
    Reply { status: resp.status(), headers: resp.headers().clone(), body }
}

impl Harness {
    async fn start(cfg: SimConfig) -> Self {
        let sim = Simulator::start(cfg).await.expect("simulator starts");
        let root = format!("http://{}", sim.addr());
        Self { sim, client: awc::Client::default(), root }
    }

    async fn default() -> Self {
        Self::start(SimConfig::default()).await
    }

    async fn token_request(&self, form: &[(&str, &str)]) -> Reply {
        let url = format!("{}/oauth/token", self.sim.base_url());
        read(self.client.post(url).send_form(&form).await.expect("token request")).await
    }

    async fn token(&self) -> String {
        let reply = self
            .token_request(&[
                ("grant_type", "client_credentials"),
                ("client_id", "courier-demo"),
                ("client_secret", "demo-secret"),
            ])
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        reply.body["access_token"].as_str().unwrap().to_owned()
    }

    fn process_request(&self, token: &str) -> awc::ClientRequest {
        self.client
            .post(format!("{}/process", self.sim.base_url()))
            .insert_header(("X-API-Key", "demo-api-key"))
            .bearer_auth(token)
    }

    async fn try_process(&self, token: &str, body: &Value) -> Result<Reply, String> {
        match self.process_request(token).send_json(body).await {
            Ok(resp) => Ok(read(resp).await),
            Err(err) => Err(format!("{err:?}")),
        }
    }

    async fn process(&self, token: &str, body: &Value) -> Reply {
        self.try_process(token, body).await.expect("a response")
    }

    async fn ok(&self, token: &str) -> Reply {
        let reply = self.process(token, &json!({"data": {"input": "x"}})).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        reply
    }

    async fn patch(&self, patch: Value) -> Reply {
        let url = format!("{}/_sim/faults", self.root);
        read(self.client.post(url).send_json(&patch).await.unwrap()).await
    }

    async fn stats(&self) -> SimStats {
        let url = format!("{}/_sim/stats", self.root);
        let reply = read(self.client.get(url).send().await.unwrap()).await;
        assert_eq!(reply.status, StatusCode::OK);
        let stats: SimStats = serde_json::from_value(reply.body).expect("stats shape");
        stats
    }

    async fn quotas(&self) -> QuotasReport {
        let reply = read(self.client.get(format!("{}/_sim/quotas", self.root)).send().await.unwrap()).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        serde_json::from_value(reply.body).expect("quotas shape")
    }

    async fn set_quotas(&self, patch: Value) -> Reply {
        read(self.client.post(format!("{}/_sim/quotas", self.root)).send_json(&patch).await.unwrap()).await
    }

    /// Polls `/_sim/quotas` (bounded) until the first window's instance starts at or after
    /// `unix_s`: the window boundary is the event waited for.
    async fn until_window_starts(&self, unix_s: u64) -> QuotasReport {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let report = self.quotas().await;
            if report.windows[0].start >= unix_s {
                return report;
            }
            assert!(Instant::now() < deadline, "no window started at {unix_s}: {report:?}");
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Drops the client (closing its keep-alive connections) and stops the server.
    async fn finish(self) {
        drop(self.client);
        self.sim.stop().await;
    }
}

/// Sends one raw HTTP/1.1 request; returns every byte received until the server closed.
async fn raw_exchange(addr: SocketAddr, request: String) -> std::io::Result<Vec<u8>> {
    actix_rt::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(request.as_bytes())?;
        let mut received = Vec::new();
        stream.read_to_end(&mut received)?;
        Ok(received)
    })
    .await
    .expect("blocking task")
}

fn rate_limited(per_minute: u32, burst: u32) -> SimConfig {
    SimConfig { rate_limit_per_minute: per_minute, rate_burst: burst, ..SimConfig::default() }
}

#[actix_rt::test]
async fn token_flow() {
    let h = Harness::start(SimConfig { token_ttl: Duration::from_millis(90_500), ..SimConfig::default() }).await;
    let good = [("grant_type", "client_credentials"), ("client_id", "courier-demo"), ("client_secret", "demo-secret")];
    let reply = h.token_request(&good).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["token_type"], "Bearer");
    assert_eq!(reply.body["expires_in"].as_f64(), Some(90.5));
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert!(reply.body["access_token"].as_str().is_some_and(|t| t.len() > 20));

    // (grant_type, client_id, client_secret); `None` leaves the field out.
    let cases = [
        (Some("client_credentials"), "courier-demo", "nope", StatusCode::UNAUTHORIZED, "invalid_client"),
        (Some("client_credentials"), "someone", "demo-secret", StatusCode::UNAUTHORIZED, "invalid_client"),
        (Some("password"), "courier-demo", "demo-secret", StatusCode::BAD_REQUEST, "unsupported_grant_type"),
        (None, "courier-demo", "demo-secret", StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    ];
    for (grant, id, secret, status, error) in cases {
        let mut form = vec![("client_id", id), ("client_secret", secret)];
        form.extend(grant.map(|g| ("grant_type", g)));
        let reply = h.token_request(&form).await;
        assert_eq!((reply.status, &reply.body), (status, &json!({ "error": error })));
    }

    h.patch(json!({"token_failure": true})).await;
    let reply = h.token_request(&good).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body, json!({"error": "temporarily_unavailable"}));

    let token = h.stats().await.token;
    assert_eq!((token.total, token.ok, token.rejected, token.failed), (6, 1, 4, 1));
    h.finish().await;
}

#[actix_rt::test]
async fn process_happy_path() {
    let h = Harness::default().await;
    let token = h.token().await;
    let resp = h
        .process_request(&token)
        .insert_header(("X-Request-Id", "req-42"))
        .send_json(&json!({"data": {"input": "hello world", "format": "text"}, "options": {}}))
        .await
        .unwrap();
    let reply = read(resp).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-request-id"), Some("req-42"));
    assert_eq!(reply.body["success"], true);
    assert_eq!(reply.body["result"]["processed_data"], "HELLO WORLD");
    assert_eq!(reply.body["result"]["metadata"]["version"], "v2.1");
    assert!(reply.body["result"]["metadata"]["processing_time"].as_f64().unwrap() >= 0.0);
    let id = reply.body["request_id"].as_str().unwrap().to_owned();
    assert!(id.len() == 19 && id.starts_with("up_"), "{id}");
    assert!(id[3..].bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(reply.header_u64("x-ratelimit-limit"), 1000);
    assert_eq!(reply.header_u64("x-ratelimit-remaining"), 49);
    assert_eq!(reply.header_u64("x-ratelimit-reset"), 1);
    assert!(reply.header("ratelimit").is_none() && reply.header("ratelimit-policy").is_none());

    let reply = h.process(&token, &json!({"data": {"input": {"a": [1, "b"]}, "format": "json"}})).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["result"]["processed_data"], r#"{"A":[1,"B"]}"#);
    assert_ne!(reply.body["request_id"].as_str().unwrap(), id);
    assert!(reply.header("x-request-id").is_none());

    let stats = h.stats().await;
    assert_eq!((stats.process.total, stats.process.ok), (2, 2));
    assert_eq!(stats.token.ok, 1);
    assert_eq!(h.sim.stats(), stats);
    h.finish().await;
}

#[actix_rt::test]
async fn auth_errors() {
    let h = Harness::default().await;
    let token = h.token().await;
    let body = json!({"data": {"input": "x"}});
    let url = format!("{}/process", h.sim.base_url());

    let no_key = read(h.client.post(&url).bearer_auth(&token).send_json(&body).await.unwrap()).await;
    let bad_key = read(
        h.client.post(&url).bearer_auth(&token).insert_header(("X-API-Key", "wrong")).send_json(&body).await.unwrap(),
    )
    .await;
    for reply in [&no_key, &bad_key] {
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
        assert_eq!(reply.error_code(), "forbidden");
        assert!(reply.header("x-ratelimit-limit").is_none());
    }

    let no_token =
        read(h.client.post(&url).insert_header(("X-API-Key", "demo-api-key")).send_json(&body).await.unwrap()).await;
    let bad_token = h.process("0.99999999999999.00.0123456789abcdef0123456789abcdef", &body).await;
    for reply in [&no_token, &bad_token] {
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.error_code(), "invalid_token");
        assert!(reply.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")));
        assert!(reply.header("x-ratelimit-limit").is_none());
    }

    h.ok(&token).await;
    let faults = h.patch(json!({"revoke_tokens": true})).await;
    assert_eq!(faults.body["revocation_epoch"], 1);
    let revoked = h.process(&token, &body).await;
    assert_eq!(revoked.status, StatusCode::UNAUTHORIZED);
    assert_eq!(revoked.body["error"]["message"], "access token revoked");
    h.ok(&h.token().await).await;

    let p = h.stats().await.process;
    assert_eq!((p.total, p.ok, p.forbidden, p.unauthorized), (7, 2, 2, 3));
    h.finish().await;
}

#[actix_rt::test]
async fn token_expires_after_ttl() {
    let h = Harness::start(SimConfig { token_ttl: Duration::from_secs(1), ..SimConfig::default() }).await;
    let issued = Instant::now();
    let reply = h
        .token_request(&[
            ("grant_type", "client_credentials"),
            ("client_id", "courier-demo"),
            ("client_secret", "demo-secret"),
        ])
        .await;
    assert_eq!(reply.body["expires_in"], json!(1));
    assert!(reply.body["expires_in"].is_u64());
    let token = reply.body["access_token"].as_str().unwrap().to_owned();
    h.ok(&token).await;

    let body = json!({"data": {"input": "x"}});
    let mut expired = None;
    for _ in 0..60 {
        let reply = h.process(&token, &body).await;
        if reply.status == StatusCode::UNAUTHORIZED {
            expired = Some((issued.elapsed(), reply));
            break;
        }
        assert_eq!(reply.status, StatusCode::OK);
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    let (after, reply) = expired.expect("token never expired");
    assert!(after >= Duration::from_millis(950), "expired after {after:?}");
    assert_eq!(reply.body["error"]["message"], "access token expired");
    h.finish().await;
}

#[actix_rt::test]
async fn invalid_bodies() {
    let h = Harness::default().await;
    let token = h.token().await;
    let raw = read(
        h.process_request(&token)
            .insert_header(("Content-Type", "application/json"))
            .send_body("{not json")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(raw.status, StatusCode::BAD_REQUEST);
    assert!(raw.body["error"]["message"].as_str().unwrap().contains("not valid JSON"));

    let cases = [
        (json!({"data": "x"}), "data must be a JSON object"),
        (json!({"options": {}}), "data is required"),
        (json!({"data": {"format": "text"}}), "data.input is required"),
        (json!({"data": {"input": "x", "format": "xml"}}), "unsupported format 'xml'"),
    ];
    for (body, message) in cases {
        let reply = h.process(&token, &body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(reply.error_code(), "invalid_request");
        assert_eq!(reply.body["error"]["message"], message);
        assert_eq!(reply.header_u64("x-ratelimit-limit"), 1000);
    }
    let p = h.stats().await.process;
    assert_eq!((p.total, p.bad_request), (5, 5));
    h.finish().await;
}

#[actix_rt::test]
async fn rate_limit_burst_then_429() {
    let h = Harness::start(rate_limited(60, 5)).await;
    let token = h.token().await;
    for expected in (0..5).rev() {
        let reply = h.ok(&token).await;
        assert_eq!(reply.header_u64("x-ratelimit-remaining"), expected);
        assert_eq!(reply.header_u64("x-ratelimit-limit"), 60);
    }
    let reply = h.process(&token, &json!({"data": {"input": "x"}})).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.error_code(), "rate_limited");
    assert_eq!(reply.header_u64("retry-after"), 1);
    assert_eq!(reply.header_u64("x-ratelimit-remaining"), 0);
    assert_eq!(reply.header_u64("x-ratelimit-reset"), 5);
    assert_eq!(reply.header_u64("x-ratelimit-limit"), 60);

    let stats = h.stats().await;
    assert_eq!((stats.process.ok, stats.process.rate_limited), (5, 1));
    assert_eq!(stats.rate_limited_total, 1);
    h.finish().await;
}

#[actix_rt::test]
async fn rate_consume_takes_permits() {
    let h = Harness::start(rate_limited(60, 5)).await;
    let token = h.token().await;
    assert_eq!(h.patch(json!({"rate_consume": 3})).await.status, StatusCode::OK);
    h.ok(&token).await;
    let last = h.ok(&token).await;
    assert_eq!(last.header_u64("x-ratelimit-remaining"), 0);
    let denied = h.process(&token, &json!({"data": {"input": "x"}})).await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);

    // Taking far more than the capacity leaves the bucket empty, not in debt.
    h.sim.set_faults(FaultsPatch { rate_consume: Some(1_000), ..FaultsPatch::default() });
    let denied = h.process(&token, &json!({"data": {"input": "x"}})).await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(denied.header_u64("retry-after"), 1);
    assert!(denied.header_u64("x-ratelimit-reset") <= 5);
    assert_eq!(h.stats().await.rate_limited_total, 2);
    h.finish().await;
}

#[actix_rt::test]
async fn ietf_headers() {
    let h = Harness::start(SimConfig { ietf_headers: true, ..rate_limited(60, 5) }).await;
    let reply = h.ok(&h.token().await).await;
    assert_eq!(reply.header("ratelimit-policy"), Some("60;w=60"));
    assert_eq!(reply.header("ratelimit"), Some("limit=60, remaining=4, reset=1"));
    assert_eq!(reply.header_u64("x-ratelimit-remaining"), 4);
    h.finish().await;
}

#[actix_rt::test]
async fn injected_errors_and_outage() {
    let h = Harness::default().await;
    let token = h.token().await;
    let body = json!({"data": {"input": "x"}});

    h.patch(json!({"error_count": 2})).await;
    for _ in 0..2 {
        let reply = h.process(&token, &body).await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(reply.error_code(), "injected_error");
        assert!(reply.header("retry-after").is_none());
        assert!(reply.header("x-ratelimit-remaining").is_some());
    }
    h.ok(&token).await;

    let faults = h.patch(json!({"error_count": 1, "error_status": 503})).await;
    assert_eq!((faults.body["error_count"].as_u64(), faults.body["error_status"].as_u64()), (Some(1), Some(503)));
    let reply = h.process(&token, &body).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(h.patch(json!({})).await.body["error_count"], 0);

    h.patch(json!({"error_rate": 1.0, "error_status": 502})).await;
    for _ in 0..3 {
        assert_eq!(h.process(&token, &body).await.status, StatusCode::BAD_GATEWAY);
    }
    h.patch(json!({"error_rate": 0.0})).await;
    h.ok(&token).await;

    h.patch(json!({"outage": true})).await;
    let url = format!("{}/process", h.sim.base_url());
    let outage = read(h.client.post(url).send_json(&body).await.unwrap()).await;
    assert_eq!(outage.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(outage.error_code(), "service_unavailable");
    assert_eq!(outage.header("retry-after"), Some("1"));
    let faults = h.patch(json!({"reset": true})).await;
    assert_eq!(faults.body["outage"], false);
    assert_eq!(faults.body["error_status"], 500);
    h.ok(&token).await;

    let p = h.stats().await.process;
    assert_eq!((p.total, p.ok, p.server_error), (10, 3, 7));
    h.finish().await;
}

#[actix_rt::test]
async fn latency_is_added() {
    let h = Harness::default().await;
    let token = h.token().await;
    h.patch(json!({"latency_ms": 250})).await;
    let started = Instant::now();
    let reply = h.ok(&token).await;
    assert!(started.elapsed() >= Duration::from_millis(250));
    let measured = reply.body["result"]["metadata"]["processing_time"].as_f64().unwrap();
    assert!(measured >= 0.25, "processing_time {measured}");
    h.finish().await;
}

#[actix_rt::test]
async fn dropped_connections() {
    let h = Harness::default().await;
    let token = h.token().await;
    let body = json!({"data": {"input": "x"}});

    h.patch(json!({"drop_count": 1})).await;
    let err = h.try_process(&token, &body).await.expect_err("connection should be dropped");
    // awc reports a connection closed before any response byte as `Connect(Disconnected)`.
    assert!(err.contains("Disconnected"), "{err}");
    h.ok(&token).await;

    // At the socket level: the request is read, then the connection is closed
    // without a single response byte (not even a status line).
    h.patch(json!({"drop_count": 1})).await;
    let payload = body.to_string();
    let request = format!(
        "POST /v2/process HTTP/1.1\r\nHost: sim\r\nX-API-Key: demo-api-key\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{payload}",
        payload.len()
    );
    let received = raw_exchange(h.sim.addr(), request).await;
    assert!(
        matches!(&received, Ok(bytes) if bytes.is_empty()),
        "expected a clean close with no response bytes, got {received:?}"
    );

    h.sim.set_faults(FaultsPatch { drop_rate: Some(1.0), ..FaultsPatch::default() });
    assert!(h.try_process(&token, &body).await.is_err());
    h.patch(json!({"drop_rate": 0.0})).await;
    h.ok(&token).await;

    let p = h.stats().await.process;
    assert_eq!((p.total, p.ok, p.dropped), (5, 2, 3));
    h.finish().await;
}

#[actix_rt::test]
async fn concurrency_is_tracked_across_latency() {
    let h = Harness::default().await;
    let token = h.token().await;
    h.patch(json!({"latency_ms": 600})).await;
    let body = json!({"data": {"input": "x"}});

    let started = Instant::now();
    let requests = join_all((0..4).map(|_| h.process(&token, &body)));
    let observe = async {
        // While the requests sleep in the simulator, all four must be in flight.
        for _ in 0..100 {
            if h.stats().await.in_flight == 4 {
                return true;
            }
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
        false
    };
    let (replies, seen_four) = futures_util::future::join(requests, observe).await;
    let elapsed = started.elapsed();
    assert!(seen_four, "never observed 4 requests in flight");
    assert!(replies.iter().all(|r| r.status == StatusCode::OK));
    assert!(elapsed < Duration::from_millis(4 * 600), "requests were serialised: {elapsed:?}");

    let stats = h.stats().await;
    assert_eq!((stats.in_flight, stats.peak_concurrency), (0, 4));
    assert_eq!(stats.process.ok, 4);
    h.finish().await;
}

#[actix_rt::test]
async fn control_plane() {
    let h = Harness::start(rate_limited(60, 1)).await;
    let faults_url = format!("{}/_sim/faults", h.root);
    let faults = read(h.client.get(&faults_url).send().await.unwrap()).await;
    let mut keys: Vec<_> = faults.body.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "drop_count",
            "drop_rate",
            "error_count",
            "error_rate",
            "error_status",
            "latency_ms",
            "nested_depth",
            "outage",
            "revocation_epoch",
            "token_failure"
        ]
    );

    let unknown = h.patch(json!({"outrage": true})).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown.error_code(), "invalid_request");
    let out_of_range = h.patch(json!({"error_rate": 2})).await;
    assert_eq!(out_of_range.status, StatusCode::BAD_REQUEST);
    assert!(out_of_range.body["error"]["message"].as_str().unwrap().contains("error_rate"));

    // The control plane is never rate limited (burst is 1 here).
    for _ in 0..5 {
        h.stats().await;
    }
    let token = h.token().await;
    h.ok(&token).await;
    let reset = read(h.client.post(format!("{}/_sim/stats/reset", h.root)).send().await.unwrap()).await;
    assert_eq!(reset.status, StatusCode::OK);
    assert_eq!(h.stats().await, SimStats::default());

    let missing = read(h.client.get(format!("{}/v2/nope", h.root)).send().await.unwrap()).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.error_code(), "not_found");
    let wrong_method = read(h.client.get(format!("{}/process", h.sim.base_url())).send().await.unwrap()).await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    h.finish().await;
}

#[actix_rt::test]
async fn credentials_rotate_at_run_time_with_uses_counted_by_position() {
    let h = Harness::default().await;
    let url = format!("{}/_sim/credentials", h.root);
    let token = h.token().await;
    h.ok(&token).await;
    let initial = read(h.client.get(&url).send().await.unwrap()).await;
    assert_eq!(initial.body, json!({"client_secrets": [1], "api_keys": [1]}));

    // Overlap: old and new accepted side by side.
    let both = json!({"client_secrets": ["demo-secret", "next-secret"], "api_keys": ["demo-api-key", "next-key"]});
    let applied = read(h.client.post(&url).send_json(&both).await.unwrap()).await;
    assert_eq!(applied.status, StatusCode::OK);
    assert_eq!(applied.body, json!({"client_secrets": [0, 0], "api_keys": [0, 0]}), "never the values");
    let form =
        |secret| vec![("grant_type", "client_credentials"), ("client_id", "courier-demo"), ("client_secret", secret)];
    assert_eq!(h.token_request(&form("next-secret")).await.status, StatusCode::OK);
    let with_next_key = h.client.post(format!("{}/process", h.sim.base_url())).insert_header(("X-API-Key", "next-key"));
    let reply =
        read(with_next_key.bearer_auth(&token).send_json(&json!({"data": {"input": "x"}})).await.unwrap()).await;
    assert_eq!(reply.status, StatusCode::OK, "tokens issued before the rotation stay valid");
    h.ok(&token).await;
    let counted = read(h.client.get(&url).send().await.unwrap()).await;
    assert_eq!(counted.body, json!({"client_secrets": [0, 1], "api_keys": [1, 1]}));

    // The old ones retired: refused as before.
    let only_next = json!({"client_secrets": ["next-secret"], "api_keys": ["next-key"]});
    assert_eq!(read(h.client.post(&url).send_json(&only_next).await.unwrap()).await.status, StatusCode::OK);
    assert_eq!(h.token_request(&form("demo-secret")).await.status, StatusCode::UNAUTHORIZED);
    let old_key = h.process(&token, &json!({"data": {"input": "x"}})).await;
    assert_eq!((old_key.status, old_key.error_code()), (StatusCode::FORBIDDEN, "forbidden"));

    for bad in [json!({"api_keys": []}), json!({"client_secrets": [""]}), json!({"keys": ["x"]})] {
        let refused = read(h.client.post(&url).send_json(&bad).await.unwrap()).await;
        assert_eq!((refused.status, refused.error_code()), (StatusCode::BAD_REQUEST, "invalid_request"), "{bad}");
    }
    h.finish().await;
}

#[actix_rt::test]
async fn start_and_stop() {
    let h = Harness::default().await;
    let addr = h.sim.addr();
    assert_ne!(addr.port(), 0);
    assert_eq!(h.sim.base_url(), format!("http://127.0.0.1:{}/v2", addr.port()));
    h.ok(&h.token().await).await;
    let started = Instant::now();
    h.finish().await;
    assert!(started.elapsed() < Duration::from_secs(3), "stop took {:?}", started.elapsed());
    let after = awc::Client::default().get(format!("http://{addr}/_sim/stats")).send().await;
    assert!(after.is_err(), "server still answering after stop");
}

#[actix_rt::test]
async fn traceparents_of_process_requests_are_kept_until_reset() {
    let h = Harness::default().await;
    let token = h.token().await;
    let first = format!("00-{}-{}-01", "1a".repeat(16), "2b".repeat(8));
    let second = format!("00-{}-{}-00", "3c".repeat(16), "4d".repeat(8));
    let body = json!({"data": {"input": "x"}});
    let resp = h.process_request(&token).insert_header(("traceparent", first.as_str())).send_json(&body).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    h.ok(&token).await;
    // Recorded on arrival: an attempt the upstream fails carries its traceparent too.
    h.patch(json!({"error_count": 1, "error_status": 503})).await;
    let resp =
        h.process_request(&token).insert_header(("traceparent", second.as_str())).send_json(&body).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);

    let stats = h.stats().await;
    assert_eq!(stats.traceparents, [first, second], "in order, and only requests that had one");
    assert_eq!(stats.process.total, 3);
    let reset = read(h.client.post(format!("{}/_sim/stats/reset", h.root)).send().await.unwrap()).await;
    assert_eq!(reset.body["traceparents"], json!([]));
    assert!(h.stats().await.traceparents.is_empty());
    h.finish().await;
}

fn unix_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[actix_rt::test]
async fn quota_windows_refuse_with_headers_and_reset() {
    let h = Harness::start(SimConfig { quotas: vec!["5/2s".into()], ..rate_limited(6000, 100) }).await;
    let token = h.token().await;
    // Start at a fresh 2 s instance, so the six requests below fall in one instance.
    let start = h.until_window_starts(h.quotas().await.windows[0].reset_at).await.windows[0].start;
    for remaining in (0..5).rev() {
        let reply = h.ok(&token).await;
        assert_eq!(reply.header("ratelimit-policy"), Some("6000;w=60, 5;w=2"));
        let ratelimit = reply.header("ratelimit").unwrap();
        assert!(ratelimit.starts_with(&format!("limit=5, remaining={remaining}, reset=")), "{ratelimit}");
        assert_eq!(reply.header_u64("x-ratelimit-limit"), 6000, "the minute triple is unchanged");
    }
    let refused = h.process(&token, &json!({"data": {"input": "x"}})).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.error_code(), "quota_exceeded");
    let retry_after = refused.header_u64("retry-after");
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(refused.header("ratelimit"), Some(format!("limit=5, remaining=0, reset={retry_after}").as_str()));

    let stats = h.stats().await;
    assert_eq!((stats.process.ok, stats.process.rate_limited), (5, 1));
    assert_eq!((stats.quota_refused, stats.rate_limited_total), (1, 0));
    let window = &stats.quotas[0];
    assert_eq!((window.name.as_str(), window.limit, window.used, window.refused), ("2s", 5, 5, 1));
    assert_eq!((window.start, window.reset_at), (start, start + 2), "all six in one instance");
    let arrivals: u32 = h.quotas().await.arrivals.iter().map(|&(_, n)| n).sum();
    assert_eq!(arrivals, 6, "every authenticated request arrives, the refused one too");

    // After the reset the account is served again, with the window full.
    h.until_window_starts(start + 2).await;
    let served = h.ok(&token).await;
    assert!(served.header("ratelimit").unwrap().starts_with("limit=5, remaining=4, "));
    let window = &h.stats().await.quotas[0];
    assert_eq!((window.used, window.refused), (1, 1));
    h.finish().await;
}

#[actix_rt::test]
async fn quotas_change_at_run_time_and_reset_with_the_stats() {
    let h = Harness::start(rate_limited(6000, 100)).await;
    let token = h.token().await;
    // Default: no quotas, no quota headers, nothing counted.
    let plain = h.ok(&token).await;
    assert_eq!((plain.header("ratelimit-policy"), plain.header_u64("x-ratelimit-limit")), (None, 6000));
    assert_eq!(h.quotas().await, QuotasReport::default());

    let set = h.set_quotas(json!({"quotas": "2/hour, 100/day"})).await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.body);
    let reply = h.ok(&token).await;
    assert_eq!(reply.header("ratelimit-policy"), Some("6000;w=60, 2;w=3600, 100;w=86400"));
    // Set the hour to its limit, as if another consumer had spent it.
    let set = h.set_quotas(json!({"used": {"hour": 2}})).await;
    assert_eq!(set.body["windows"][0]["remaining"], 0, "{}", set.body);
    let refused = h.process(&token, &json!({"data": {"input": "x"}})).await;
    assert_eq!((refused.status, refused.error_code()), (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded"));
    let next_hour = (unix_s() / 3600 + 1) * 3600;
    let retry_after = refused.header_u64("retry-after");
    assert!(retry_after <= next_hour - unix_s() + 1 && retry_after >= 1, "Retry-After {retry_after}");

    // The GitHub-style triple describes the longest window, its reset in Unix seconds.
    h.set_quotas(json!({"headers": "x-ratelimit"})).await;
    let refused = h.process(&token, &json!({"data": {"input": "x"}})).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!((refused.header_u64("x-ratelimit-limit"), refused.header_u64("x-ratelimit-remaining")), (100, 99));
    assert_eq!(refused.header_u64("x-ratelimit-reset"), (unix_s() / 86_400 + 1) * 86_400);
    assert_eq!(refused.header("ratelimit-policy"), None);

    // Bad patches are refused whole.
    for bad in [json!({"quotas": "10/fortnight"}), json!({"used": {"week": 1}}), json!({"quota": "1/day"})] {
        let reply = h.set_quotas(bad.clone()).await;
        assert_eq!((reply.status, reply.error_code()), (StatusCode::BAD_REQUEST, "invalid_request"), "{bad}");
    }
    let report = h.quotas().await;
    assert_eq!(report.headers, QuotaHeaders::XRateLimit);
    let counts: Vec<_> = report.windows.iter().map(|w| (w.name.as_str(), w.used, w.refused)).collect();
    assert_eq!(counts, [("hour", 2, 2), ("day", 1, 0)]);
    assert_eq!(report.arrivals.iter().map(|&(_, n)| n).sum::<u32>(), 3);

    // A stats reset zeroes the refusals and arrivals; the used counts are the account's, and stay.
    let stats = h.stats().await;
    assert_eq!((stats.quota_refused, stats.process.rate_limited), (2, 2));
    read(h.client.post(format!("{}/_sim/stats/reset", h.root)).send().await.unwrap()).await;
    let stats = h.stats().await;
    assert_eq!(stats.quota_refused, 0);
    let counts: Vec<_> = stats.quotas.iter().map(|w| (w.name.as_str(), w.used, w.refused)).collect();
    assert_eq!(counts, [("hour", 2, 0), ("day", 1, 0)]);
    assert!(h.quotas().await.arrivals.is_empty());

    // `reset` gives the windows back; removing them restores the plain simulator.
    h.set_quotas(json!({"reset": true, "headers": "ietf"})).await;
    assert!(h.ok(&token).await.header("ratelimit").unwrap().starts_with("limit=2, remaining=1, "));
    h.set_quotas(json!({"quotas": ""})).await;
    let plain = h.ok(&token).await;
    assert_eq!((plain.header("ratelimit-policy"), plain.header_u64("x-ratelimit-limit")), (None, 6000));
    assert!(h.stats().await.quotas.is_empty());
    h.finish().await;
}

#[actix_rt::test]
async fn a_bad_quota_entry_stops_the_start() {
    let err = Simulator::start(SimConfig { quotas: vec!["5/2s, 1/fortnight".into()], ..SimConfig::default() })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("quota entry 2 \"1/fortnight\": unknown window"), "{err}");
}
