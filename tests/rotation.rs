//! Credential rotation without a restart, on the real binary: courier reads its secrets from
//! `*_FILE` files and its clients file, the test rewrites them and sends SIGHUP (or lets the
//! poll find the change), and the simulator, which can accept old and new credentials side
//! by side and counts which one it was shown, tells what courier sent.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use courier::config::key_sha256_hex;
use courier::simulator::{CredentialUses, CredentialsPatch, FaultsPatch, SimConfig, Simulator};
use serde_json::{json, Value};
use support::process::{signal, Serving};
use support::receiver::Receiver;
use support::{metric_value, read_answer, Answer};

const OLD_SECRET: &str = "old-client-secret-0a1";
const NEW_SECRET: &str = "new-client-secret-9f3";
const OLD_KEY: &str = "old-api-key-77d";
const NEW_KEY: &str = "new-api-key-e42";
const OLD_HOOK: &str = "whsec-old-5b5";
const NEW_HOOK: &str = "whsec-new-c0c";
const EVERY_SECRET: [&str; 6] = [OLD_SECRET, NEW_SECRET, OLD_KEY, NEW_KEY, OLD_HOOK, NEW_HOOK];

/// A directory of secret files, removed at the end.
struct Files(PathBuf);

impl Files {
    fn new(test: &str) -> Files {
        let dir = std::env::temp_dir().join(format!("courier-rotation-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Files(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Replaces a file the way an operator (or Kubernetes) should: write aside, rename over.
    fn write(&self, name: &str, text: &str) -> String {
        let aside = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&aside, text).unwrap();
        std::fs::rename(&aside, self.path(name)).unwrap();
        self.path(name).display().to_string()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn clients(entries: &[(&str, &str)]) -> String {
    entries
        .iter()
        .map(|(name, key)| format!("[[client]]\nname = \"{name}\"\nkey_sha256 = \"{}\"\n", key_sha256_hex(key)))
        .collect()
}

async fn simulator() -> Simulator {
    let config = SimConfig {
        client_secret: OLD_SECRET.into(),
        api_key: OLD_KEY.into(),
        rate_limit_per_minute: 1_000_000,
        rate_burst: 100_000,
        ..SimConfig::default()
    };
    Simulator::start(config).await.unwrap()
}

/// Writes the starting files and starts `courier serve` reading them.
fn start(sim: &Simulator, files: &Files, poll: &str) -> Serving {
    let env = [
        ("EXTERNAL_API_BASE_URL", sim.base_url()),
        ("EXTERNAL_OAUTH_CLIENT_ID", SimConfig::default().client_id),
        ("EXTERNAL_OAUTH_CLIENT_SECRET_FILE", files.write("client_secret", &format!("{OLD_SECRET}\n"))),
        ("EXTERNAL_API_KEY_FILE", files.write("api_key", OLD_KEY)),
        ("COURIER_CALLBACK_SECRET_FILE", files.write("callback_secret", OLD_HOOK)),
        ("COURIER_CLIENTS_FILE", files.write("clients.toml", &clients(&[("billing", "k-billing")]))),
        ("COURIER_CALLBACK_ALLOW", "127.0.0.1".into()),
        ("COURIER_SECRET_POLL_INTERVAL", poll.into()),
        ("COURIER_WORKERS", "2".into()),
        ("EXTERNAL_API_RETRY_DELAY", "0.01".into()),
        ("EXTERNAL_API_CACHE_TTL", "0".into()),
    ];
    Serving::start(&env)
}

/// Talks to one courier process and keeps every log line it printed.
struct Courier {
    serving: Serving,
    http: awc::Client,
    lines: Vec<String>,
}

impl Courier {
    async fn new(serving: Serving) -> Courier {
        let http = awc::Client::builder().timeout(Duration::from_secs(20)).finish();
        let courier = Courier { serving, http, lines: Vec::new() };
        courier.wait_ready().await;
        courier
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let url = format!("http://{}/readyz", self.serving.admin);
            if self.http.get(url).send().await.is_ok_and(|r| r.status() == 200) {
                return;
            }
            assert!(Instant::now() < deadline, "courier did not become ready");
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn process(&self, key: &str, body: Value) -> impl std::future::Future<Output = Answer> + 'static {
        let request = self
            .http
            .post(self.serving.url("/api/external/process"))
            .insert_header(("authorization", format!("Bearer {key}")))
            .send_json(&body);
        async move { read_answer(request.await.expect("courier answers")).await }
    }

    async fn call(&self, key: &str, input: &str) -> Answer {
        self.process(key, json!({"data": {"input": input}})).await
    }

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let url = format!("http://{}/metrics", self.serving.admin);
        let mut response = self.http.get(url).send().await.expect("metrics");
        let body = response.body().limit(4 << 20).await.expect("metrics body");
        metric_value(std::str::from_utf8(&body).unwrap(), name, labels)
    }

    /// Waits (bounded) until `name{labels}` reaches `at_least`; returns how long it took.
    async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], at_least: f64) -> Duration {
        let started = Instant::now();
        loop {
            let value = self.metric(name, labels).await;
            if value >= at_least {
                return started.elapsed();
            }
            assert!(started.elapsed() < Duration::from_secs(15), "{name}{labels:?} stayed at {value}");
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything logged so far, as JSON lines.
    fn logs(&mut self) -> Vec<Value> {
        while let Ok(line) = self.serving.logs.try_recv() {
            self.lines.push(line);
        }
        self.lines.iter().filter_map(|line| serde_json::from_str(line).ok()).collect()
    }

    /// Waits (bounded) for the `n`th line of `event`.
    async fn wait_event(&mut self, event: &str, n: usize) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let found: Vec<Value> = self.logs().into_iter().filter(|v| v["event"] == event).collect();
            if found.len() >= n {
                return found[n - 1].clone();
            }
            assert!(Instant::now() < deadline, "no {event} line #{n}");
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn assert_no_secret_logged(&mut self) {
        self.logs();
        for line in &self.lines {
            for secret in EVERY_SECRET {
                assert!(!line.contains(secret), "a secret reached the log: {line}");
            }
        }
    }
}

fn accept(sim: &Simulator, secrets: &[&str], keys: &[&str]) {
    let list = |values: &[&str]| Some(values.iter().map(|v| v.to_string()).collect());
    sim.set_credentials(CredentialsPatch { client_secrets: list(secrets), api_keys: list(keys) });
}

fn uses(secrets: &[u64], keys: &[u64]) -> CredentialUses {
    CredentialUses { client_secrets: secrets.to_vec(), api_keys: keys.to_vec() }
}

#[actix_rt::test]
async fn sighup_puts_new_credentials_in_use_and_a_request_in_flight_finishes() {
    let sim = simulator().await;
    let files = Files::new("sighup");
    let mut courier = Courier::new(start(&sim, &files, "3600")).await;
    let receiver = Receiver::start(&[]).await;
    // The upstream's side of the rotation: the new secret and key work, the old ones still do.
    accept(&sim, &[OLD_SECRET, NEW_SECRET], &[OLD_KEY, NEW_KEY]);

    // A request is inside the upstream, sent with the old key, when the reload happens.
    sim.set_faults(FaultsPatch { latency_ms: Some(1500.0), ..FaultsPatch::default() });
    let in_flight = actix_rt::spawn(courier.process("k-billing", json!({"data": {"input": "across"}})));
    let deadline = Instant::now() + Duration::from_secs(10);
    while sim.stats().in_flight == 0 {
        assert!(Instant::now() < deadline, "the request never reached the simulator");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    files.write("client_secret", NEW_SECRET);
    files.write("api_key", &format!("{NEW_KEY}\n"));
    files.write("callback_secret", NEW_HOOK);
    signal(&courier.serving.child, libc::SIGHUP);
    courier.wait_metric("courier_config_reloads_total", &[("result", "ok"), ("trigger", "signal")], 1.0).await;
    assert_eq!(sim.stats().in_flight, 1, "the request was still in flight when the reload was done");
    let reloaded = courier.wait_event("credentials_reloaded", 1).await;
    assert_eq!(reloaded["changed"], "client_secret,api_key,callback_secret", "{reloaded}");
    assert_eq!(reloaded["trigger"], "signal");

    let answer = in_flight.await.unwrap();
    assert_eq!(answer.status, 200, "the request in flight across the reload finished: {answer:?}");
    assert_eq!(answer.body["result"]["processed_data"], "ACROSS");
    assert_eq!(sim.credential_uses(), uses(&[0, 0], &[1, 0]), "it was sent with the old key");
    sim.set_faults(FaultsPatch { latency_ms: Some(0.0), ..FaultsPatch::default() });

    // The next upstream request carries the new key. The token was kept: no token request yet.
    assert_eq!(courier.call("k-billing", "next").await.status, 200);
    assert_eq!(sim.credential_uses(), uses(&[0, 0], &[1, 1]));
    let replaced = courier.wait_event("client_secret_replaced", 1).await;
    assert_eq!(replaced["token_kept"], true, "{replaced}");

    // The next token is fetched with the new secret: the upstream revokes the token, courier
    // fetches another one and retries.
    sim.set_faults(FaultsPatch { revoke_tokens: true, ..FaultsPatch::default() });
    assert_eq!(courier.call("k-billing", "after revocation").await.status, 200);
    assert_eq!(sim.credential_uses(), uses(&[0, 1], &[1, 3]), "token fetched with the new secret");

    // The upstream retires the old credentials; courier does not need them any more.
    accept(&sim, &[NEW_SECRET], &[NEW_KEY]);
    assert_eq!(courier.call("k-billing", "old ones gone").await.status, 200);
    assert_eq!(sim.credential_uses(), uses(&[0], &[1]));

    // Callbacks are signed with the new secret.
    let async_body =
        json!({"data": {"input": "hook"}, "options": {"async": true, "callback_url": receiver.url("/hook")}});
    assert_eq!(courier.process("k-billing", async_body).await.status, 202);
    let delivered = receiver.wait_for(1).await;
    assert!(delivered[0].signed_with(NEW_HOOK), "signed with the new callback secret");
    assert!(!delivered[0].signed_with(OLD_HOOK));

    courier.assert_no_secret_logged();
    receiver.stop().await;
    sim.stop().await;
}

#[actix_rt::test]
async fn a_reload_that_fails_validation_keeps_every_old_value_and_says_why() {
    let sim = simulator().await;
    let files = Files::new("invalid");
    let mut courier = Courier::new(start(&sim, &files, "3600")).await;

    // Valid new secret and key, but a malformed clients file and an empty callback secret:
    // nothing of it may be used.
    files.write("client_secret", NEW_SECRET);
    files.write("api_key", NEW_KEY);
    files.write("callback_secret", "");
    files.write("clients.toml", "[[client]]\nname = \"billing\"\nkey_sha256 = \"not hex\"\n");
    signal(&courier.serving.child, libc::SIGHUP);
    courier.wait_metric("courier_config_reloads_total", &[("result", "failed"), ("trigger", "signal")], 1.0).await;
    let failed = courier.wait_event("credentials_reload_failed", 1).await;
    let errors = failed["errors"].as_str().unwrap();
    assert!(errors.contains("COURIER_CALLBACK_SECRET_FILE") && errors.contains("is empty"), "{errors}");
    assert!(errors.contains("COURIER_CLIENTS_FILE") && errors.contains("64 hex digits"), "{errors}");
    assert_eq!(failed["level"], "WARNING", "{failed}");
    assert_eq!(courier.metric("courier_config_last_reload_successful", &[]).await, 0.0);
    assert_eq!(courier.metric("courier_config_reloads_total", &[("result", "ok")]).await, 0.0);

    // The old key is still sent, the old client key still accepted, and a new token is
    // fetched with the old secret (the simulator accepts only the old credentials).
    assert_eq!(courier.call("k-billing", "still old").await.status, 200);
    sim.set_faults(FaultsPatch { revoke_tokens: true, ..FaultsPatch::default() });
    assert_eq!(courier.call("k-billing", "new token, old secret").await.status, 200);
    assert_eq!(sim.stats().process.forbidden, 0, "no request went with the new key");
    assert_eq!(sim.stats().token.rejected, 0, "no token request went with the new secret");

    // An API key that cannot be a header fails the same way.
    files.write("callback_secret", NEW_HOOK);
    files.write("clients.toml", &clients(&[("billing", "k-billing")]));
    files.write("api_key", "new\u{1}key");
    signal(&courier.serving.child, libc::SIGHUP);
    courier.wait_metric("courier_config_reloads_total", &[("result", "failed"), ("trigger", "signal")], 2.0).await;
    let failed = courier.wait_event("credentials_reload_failed", 2).await;
    assert_eq!(failed["errors"], "EXTERNAL_API_KEY_FILE: has characters not allowed in a header", "{failed}");

    // Fixed: everything new is taken at once (the token, still valid, is kept).
    files.write("api_key", NEW_KEY);
    signal(&courier.serving.child, libc::SIGHUP);
    courier.wait_metric("courier_config_reloads_total", &[("result", "ok"), ("trigger", "signal")], 1.0).await;
    assert_eq!(courier.metric("courier_config_last_reload_successful", &[]).await, 1.0);
    let reloaded = courier.wait_event("credentials_reloaded", 1).await;
    assert_eq!(reloaded["changed"], "client_secret,api_key,callback_secret", "{reloaded}");
    accept(&sim, &[OLD_SECRET], &[NEW_KEY]);
    assert_eq!(courier.call("k-billing", "all new").await.status, 200);
    assert_eq!(sim.credential_uses(), uses(&[0], &[1]));

    courier.assert_no_secret_logged();
    sim.stop().await;
}

#[actix_rt::test]
async fn a_changed_file_is_picked_up_without_sighup_within_the_poll_interval() {
    let sim = simulator().await;
    let files = Files::new("poll");
    let courier = Courier::new(start(&sim, &files, "0.2")).await;
    accept(&sim, &[OLD_SECRET], &[OLD_KEY, NEW_KEY]);

    files.write("api_key", NEW_KEY);
    let took =
        courier.wait_metric("courier_config_reloads_total", &[("result", "ok"), ("trigger", "file_change")], 1.0).await;
    assert!(took < Duration::from_secs(5), "picked up after {took:?}");
    assert_eq!(courier.call("k-billing", "polled").await.status, 200);
    assert_eq!(sim.credential_uses().api_keys, [0, 1], "sent with the new key");
    // Nothing changed since: the poll does not reload again.
    assert_eq!(courier.metric("courier_config_reloads_total", &[("result", "ok")]).await, 1.0);
    sim.stop().await;
}

#[actix_rt::test]
async fn a_reloaded_clients_file_admits_new_keys_and_refuses_removed_ones() {
    let sim = simulator().await;
    let files = Files::new("clients");
    let mut courier = Courier::new(start(&sim, &files, "3600")).await;
    files.write("clients.toml", &clients(&[("billing", "k-billing"), ("search", "k-search")]));
    signal(&courier.serving.child, libc::SIGHUP);
    courier.wait_metric("courier_config_reloads_total", &[("result", "ok"), ("trigger", "signal")], 1.0).await;
    assert_eq!(courier.call("k-search", "added").await.status, 200);

    // search is removed, billing's key rotated, reports added.
    let next = clients(&[("reports", "k-reports"), ("billing", "k-billing-2")]);
    files.write("clients.toml", &next);
    signal(&courier.serving.child, libc::SIGHUP);
    courier.wait_metric("courier_config_reloads_total", &[("result", "ok"), ("trigger", "signal")], 2.0).await;
    let reloaded = courier.wait_event("credentials_reloaded", 2).await;
    assert_eq!((reloaded["changed"].as_str(), reloaded["clients_active"].as_u64()), (Some("clients"), Some(2)));

    for (key, status) in [("k-search", 401), ("k-billing", 401), ("k-billing-2", 200), ("k-reports", 200)] {
        let answer = courier.call(key, "who").await;
        assert_eq!(answer.status.as_u16(), status, "{key}: {answer:?}");
        if status == 401 {
            assert_eq!(answer.error_code(), "unauthorized");
        }
    }
    let served = |client| [("route", "process"), ("status", "200"), ("client", client)];
    assert_eq!(courier.metric("courier_http_requests_total", &served("reports")).await, 1.0);
    assert_eq!(courier.metric("courier_http_requests_total", &served("billing")).await, 1.0);
    sim.stop().await;
}

#[actix_rt::test]
async fn a_secret_the_upstream_already_refuses_is_replaced_by_the_reload() {
    let sim = simulator().await;
    let files = Files::new("refused");
    let mut courier = Courier::new(start(&sim, &files, "3600")).await;
    // The upstream switched to the new secret before courier got it, and revoked the token.
    accept(&sim, &[NEW_SECRET], &[OLD_KEY]);
    sim.set_faults(FaultsPatch { revoke_tokens: true, ..FaultsPatch::default() });
    assert_eq!(courier.call("k-billing", "refused").await.status, 503);
    courier.wait_metric("courier_token_refreshes_total", &[("result", "rejected")], 1.0).await;

    files.write("client_secret", NEW_SECRET);
    signal(&courier.serving.child, libc::SIGHUP);
    let replaced = courier.wait_event("client_secret_replaced", 1).await;
    assert_eq!(replaced["token_kept"], false, "{replaced}");
    courier.wait_metric("courier_token_refreshes_total", &[("result", "success")], 2.0).await;
    assert_eq!(courier.call("k-billing", "recovered").await.status, 200);
    assert_eq!(sim.credential_uses().client_secrets, [1]);
    courier.assert_no_secret_logged();
    sim.stop().await;
}

#[test]
fn files_helper_replaces_atomically() {
    let files = Files::new("helper");
    files.write("x", "1");
    files.write("x", "22");
    assert_eq!(std::fs::read_to_string(files.path("x")).unwrap(), "22");
    assert!(!Path::new(&files.0.join(".x.tmp")).exists());
}
