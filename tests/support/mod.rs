//! Builds a simulator and a courier wired to it, both on loopback port 0 in this process,
//! and talks to them over real HTTP.
#![allow(dead_code)]

pub mod failover;
pub mod otlp;
pub mod process;
pub mod prometheus;
pub mod quota;
pub mod receiver;
pub mod redis;
pub mod security;
pub mod sentinel;
pub mod tls;

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use awc::http::StatusCode;
use courier::config::{Config, MapEnv};
use courier::logging::{LogCapture, LogTarget, Logging};
use courier::metrics::Metrics;
use courier::simulator::{SimConfig, Simulator};
use courier::{Gateway, Running};
use serde_json::{json, Value};

/// The simulator's credentials, as the tests configure them.
pub const CLIENT_SECRET: &str = "test-client-secret-5f2a";
/// The upstream API key the tests use.
pub const API_KEY: &str = "test-api-key-91c7";

/// What a test starts from.
pub struct PairBuilder {
    pub sim: SimConfig,
    pub env: MapEnv,
    pub log_level: &'static str,
}

impl Default for PairBuilder {
    fn default() -> Self {
        let sim = SimConfig {
            client_secret: CLIENT_SECRET.into(),
            api_key: API_KEY.into(),
            rate_limit_per_minute: 1_000_000,
            rate_burst: 100_000,
            workers: 1,
            ..SimConfig::default()
        };
        let env = MapEnv::new([
            ("COURIER_LISTEN", "127.0.0.1:0"),
            ("COURIER_ADMIN_LISTEN", "127.0.0.1:0"),
            ("COURIER_WORKERS", "2"),
            ("EXTERNAL_API_RETRY_DELAY", "0.01"),
            ("EXTERNAL_API_TIMEOUT", "5"),
            // Tests of other features run with a budget that never binds; budget tests set their own.
            ("EXTERNAL_API_RATE_LIMIT", "6000000"),
            ("EXTERNAL_API_RATE_BURST", "100000"),
            // The cache is off unless a test is about it, so upstream counts stay exact.
            ("EXTERNAL_API_CACHE_TTL", "0"),
        ]);
        PairBuilder { sim, env, log_level: "info" }
    }
}

impl PairBuilder {
    /// Sets a courier variable.
    pub fn env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.env.set(name, value.into());
        self
    }

    /// Exports courier's traces to `otlp`, in batches every 50 ms, sampling every trace that has
    /// no sampled-out parent.
    pub fn tracing(self, otlp: &otlp::Otlp) -> Self {
        self.env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", otlp.endpoint())
            .env("OTEL_BSP_SCHEDULE_DELAY", "50")
            .env("OTEL_TRACES_SAMPLER", "parentbased_always_on")
    }

    /// Sets courier's log level.
    pub fn log_level(mut self, level: &'static str) -> Self {
        self.log_level = level;
        self
    }

    /// Changes the simulator's configuration.
    pub fn sim(mut self, change: impl FnOnce(&mut SimConfig)) -> Self {
        change(&mut self.sim);
        self
    }

    /// Starts both, and waits until courier holds a token unless the test says otherwise.
    pub async fn start(self) -> Pair {
        let pair = self.start_unready().await;
        pair.wait_ready().await;
        pair
    }

    /// Starts both without waiting for readiness.
    pub async fn start_unready(self) -> Pair {
        let sim = Simulator::start(self.sim.clone()).await.expect("simulator starts");
        self.start_with(Rc::new(sim)).await
    }

    /// Starts another courier talking to `first`'s simulator (as a second replica would), and
    /// waits until it holds a token. This builder's simulator settings only give the
    /// credentials the new courier is configured with.
    pub async fn start_beside(self, first: &Pair) -> Pair {
        let pair = self.start_with(first.sim.clone()).await;
        pair.wait_ready().await;
        pair
    }

    async fn start_with(mut self, sim: Rc<Simulator>) -> Pair {
        self.env.set("EXTERNAL_API_BASE_URL", sim.base_url());
        self.env.set("EXTERNAL_API_KEY", self.sim.api_key.clone());
        self.env.set("EXTERNAL_OAUTH_CLIENT_ID", self.sim.client_id.clone());
        self.env.set("EXTERNAL_OAUTH_CLIENT_SECRET", self.sim.client_secret.clone());
        self.env.set("COURIER_LOG_LEVEL", self.log_level);
        let config = Config::from_sources(&self.env, None).expect("test configuration is valid");
        let metrics = Arc::new(Metrics::new());
        let logs = LogCapture::default();
        let logging = Logging::start(config.log_level, LogTarget::Capture(logs.clone()), metrics.log_dropped.clone());
        let running = Gateway::start(config, metrics, logging.logger.clone())
            .await
            .and_then(Gateway::serve)
            .expect("courier starts");
        let http = http_client(Duration::from_secs(30));
        Pair { sim, courier: running, logs, logging: Some(logging), http }
    }
}

/// An HTTP client for courier's listeners, each request bounded by `timeout`. It reuses a kept-alive
/// connection only while it has been idle less than 3 s: courier's listeners (actix-web's default)
/// close one idle for 5 s, and a request sent on a connection as the server closes it gets no
/// answer (awc: `Connect(Disconnected)`).
pub fn http_client(timeout: Duration) -> awc::Client {
    let connector = awc::Connector::new().conn_keep_alive(Duration::from_secs(3));
    awc::Client::builder().connector(connector).timeout(timeout).finish()
}

/// A simulator and a courier talking to it (the simulator perhaps shared with other couriers).
pub struct Pair {
    pub sim: Rc<Simulator>,
    pub courier: Running,
    pub logs: LogCapture,
    logging: Option<Logging>,
    pub http: awc::Client,
}

/// An answer from courier.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: awc::http::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the error shape and returns the error code.
    pub fn error_code(&self) -> &str {
        assert_eq!(self.body["success"], false, "{self:?}");
        let error = &self.body["error"];
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{self:?}");
        assert!(error["retryable"].is_boolean(), "{self:?}");
        assert!(self.body["request_id"].as_str().is_some_and(|id| !id.is_empty()), "{self:?}");
        error["code"].as_str().expect("error.code")
    }
}

/// A valid process request body.
pub fn body(input: &str) -> Value {
    json!({"data": {"input": input, "format": "text"}, "options": {}})
}

impl Pair {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.courier.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.courier.admin_addr, path)
    }

    pub fn sim_url(&self, path: &str) -> String {
        format!("http://{}{}", self.sim.addr(), path)
    }

    /// POSTs a JSON body to the process route with extra headers.
    pub async fn process_with(&self, body: impl std::borrow::Borrow<Value>, headers: &[(&str, &str)]) -> Answer {
        let mut request = self.http.post(self.url("/api/external/process"));
        for (name, value) in headers {
            request = request.insert_header((*name, *value));
        }
        let response = request.send_json(body.borrow()).await.expect("courier answers");
        read_answer(response).await
    }

    /// POSTs a JSON body to the process route.
    pub async fn process(&self, body: impl std::borrow::Borrow<Value>) -> Answer {
        self.process_with(body, &[]).await
    }

    /// Sends raw bytes with a content type.
    pub async fn process_raw(&self, content_type: &str, bytes: Vec<u8>) -> Answer {
        let response = self
            .http
            .post(self.url("/api/external/process"))
            .insert_header(("content-type", content_type))
            .send_body(bytes)
            .await
            .expect("courier answers");
        read_answer(response).await
    }

    /// The simulator's counters, over HTTP.
    pub async fn sim_stats(&self) -> Value {
        let mut response = self.http.get(self.sim_url("/_sim/stats")).send().await.expect("sim stats");
        response.json().limit(1 << 20).await.expect("stats JSON")
    }

    /// Changes the simulator's faults, over HTTP.
    pub async fn faults(&self, patch: Value) -> Value {
        let mut response = self.http.post(self.sim_url("/_sim/faults")).send_json(&patch).await.expect("sim faults");
        assert!(response.status().is_success(), "fault patch {patch} refused: {}", response.status());
        response.json().await.expect("faults JSON")
    }

    /// courier's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let mut response = self.http.get(self.admin_url("/metrics")).send().await.expect("metrics");
        let body = response.body().limit(4 << 20).await.expect("metrics body");
        String::from_utf8(body.to_vec()).expect("utf-8 metrics")
    }

    /// The value of one sample of `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics().await, name, labels)
    }

    /// `GET` on the admin listener.
    pub async fn admin_get(&self, path: &str) -> Answer {
        read_answer(self.http.get(self.admin_url(path)).send().await.expect("admin answers")).await
    }

    /// Sends process requests every `every` until one is answered 200, failing after `bound`;
    /// every answer before it must be a 503 with `code`. Returns how long it took.
    pub async fn until_served(&self, code: &str, every: Duration, bound: Duration) -> Duration {
        let started = Instant::now();
        let mut n = 0;
        loop {
            n += 1;
            let answer = self.process(body(&format!("until served {n}"))).await;
            if answer.status == StatusCode::OK {
                return started.elapsed();
            }
            assert_eq!((answer.status.as_u16(), answer.error_code()), (503, code), "{answer:?}");
            assert!(started.elapsed() < bound, "not served within {bound:?}: {answer:?}");
            actix_rt::time::sleep(every).await;
        }
    }

    /// Waits (bounded) until `/readyz` says 200.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(response) = self.http.get(self.admin_url("/readyz")).send().await {
                if response.status() == StatusCode::OK {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "courier did not become ready");
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops courier and the simulator (unless another courier still uses it) and returns
    /// everything courier logged.
    pub async fn stop(mut self) -> LogCapture {
        self.courier.stop().await;
        if Rc::strong_count(&self.sim) == 1 {
            self.sim.handle().stop(false).await;
        }
        drop(self.logging.take());
        self.logs.clone()
    }
}

/// Reads courier's answer as JSON.
pub async fn read_answer(
    mut response: awc::ClientResponse<
        impl futures_util::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>> + Unpin,
    >,
) -> Answer {
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.body().limit(4 << 20).await.expect("answer body");
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    Answer { status, headers, body }
}

/// Finds `name{labels...}` in a Prometheus text exposition; 0 when absent.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let all = labels.iter().all(|(k, v)| series_labels.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Counts from the simulator's stats document.
pub fn count(stats: &Value, path: &[&str]) -> u64 {
    let mut v = stats;
    for key in path {
        v = &v[*key];
    }
    v.as_u64().unwrap_or_else(|| panic!("stats have no {path:?}: {stats}"))
}

/// A clients file with the clients `alpha` (key `alpha-key`) and `beta` (key `beta-key`), in a
/// directory of its own named by `tag`.
pub fn two_clients_file(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("courier-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("clients.toml");
    let text = format!(
        "[[client]]\nname = \"alpha\"\nkey_sha256 = \"{}\"\n\n[[client]]\nname = \"beta\"\nkey_sha256 = \"{}\"\n",
        courier::config::key_sha256_hex("alpha-key"),
        courier::config::key_sha256_hex("beta-key"),
    );
    std::fs::write(&path, text).unwrap();
    path
}
