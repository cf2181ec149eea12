//! TLS to the upstream: the simulator serves HTTPS with a certificate issued in the test by a
//! CA generated in the test (rcgen); courier trusts that CA through `EXTERNAL_API_CA_FILE`.
//! A trusted certificate carries the token and the request; an untrusted one (another CA, a
//! wrong host name) ends in a quick, unretried 502 `upstream_tls`; a bad CA file stops
//! courier at start-up with one line naming the variable. Callbacks over https reach a receiver
//! whose CA courier trusts through `COURIER_CALLBACK_CA_FILE`, and not one it does not trust.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use courier::simulator::{SimConfig, SimTls, Simulator};
use courier::upstream::{build_client, tls_config, ClientSettings};
use serde_json::Value;
use support::process::{lines_of, signal, wait_exit, wait_line, BIN};
use support::tls::{Ca, Pki};
use support::{body, read_answer, Pair, PairBuilder};

/// The simulator's TLS files: a certificate for `names` issued by `ca`.
fn sim_tls(pki: &Pki, ca: &Ca, names: &[&str]) -> SimTls {
    let leaf = pki.for_names("sim", ca, names);
    SimTls { cert: leaf.cert, key: leaf.key }
}

const LOOPBACK: &[&str] = &["localhost", "127.0.0.1"];

async fn upstream_attempts(pair: &Pair, outcome: &str) -> f64 {
    pair.metric("courier_upstream_attempts_total", &[("outcome", outcome)]).await
}

#[actix_rt::test]
async fn a_trusted_ca_file_carries_the_token_and_the_request_over_tls() {
    let pki = Pki::new("trusted");
    let (ca, ca_file) = pki.ca("ca");
    let tls = sim_tls(&pki, &ca, LOOPBACK);
    let pair = PairBuilder::default()
        .sim(|s| s.tls = Some(tls))
        .env("EXTERNAL_API_CA_FILE", ca_file.to_str().unwrap())
        .start()
        .await;
    assert!(pair.sim.base_url().starts_with("https://127.0.0.1:"), "{}", pair.sim.base_url());

    let answer = pair.process(&body("over tls")).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body["result"]["processed_data"], "OVER TLS");
    let stats = pair.sim.stats();
    assert_eq!((stats.token.ok, stats.process.ok), (1, 1), "token and request both went over TLS: {stats:?}");
    assert_eq!(upstream_attempts(&pair, "success").await, 1.0);
    assert_eq!(upstream_attempts(&pair, "tls_error").await, 0.0);
    pair.stop().await;
}

/// The API's certificate comes from a CA courier does not trust (its CA file names another
/// one); the token comes from a plain-http endpoint, so only the API call meets TLS.
#[actix_rt::test]
async fn a_certificate_from_another_ca_fails_fast_with_upstream_tls_and_no_retry() {
    let pki = Pki::new("other-ca");
    let (_trusted, trusted_file) = pki.ca("trusted");
    let (other, _) = pki.ca("other");
    let tls = sim_tls(&pki, &other, LOOPBACK);
    let builder = PairBuilder::default();
    let token_sim = Simulator::start(builder.sim.clone()).await.unwrap();
    let pair = builder
        .sim(|s| s.tls = Some(tls))
        .env("EXTERNAL_API_CA_FILE", trusted_file.to_str().unwrap())
        .env("EXTERNAL_OAUTH_TOKEN_URL", format!("{}/oauth/token", token_sim.base_url()))
        .env("EXTERNAL_API_MAX_RETRIES", "3")
        .env("COURIER_BREAKER_FAILURES", "2")
        .start()
        .await;

    for i in 0..3 {
        let started = Instant::now();
        let answer = pair.process(&body(&format!("untrusted {i}"))).await;
        let took = started.elapsed();
        assert_eq!((answer.status.as_u16(), answer.error_code()), (502, "upstream_tls"), "{answer:?}");
        assert_eq!(answer.body["error"]["retryable"], false, "{answer:?}");
        assert!(answer.body["error"]["message"].as_str().unwrap().contains("TLS"), "{answer:?}");
        assert!(took < Duration::from_secs(1), "answered at once, not after backoff: {took:?}");
    }
    // One attempt per request, none retried, and the circuit stayed closed although more
    // requests failed than COURIER_BREAKER_FAILURES: the third answer above was not 503.
    assert_eq!(upstream_attempts(&pair, "tls_error").await, 3.0);
    assert_eq!(pair.metric("courier_upstream_retries_total", &[]).await, 0.0);
    assert_eq!(pair.metric("courier_breaker_state", &[("state", "closed")]).await, 1.0);
    let stats = pair.sim.stats();
    assert_eq!((stats.process.total, stats.token.total), (0, 0), "no request reached the untrusted upstream");
    assert_eq!(token_sim.stats().token.ok, 1);

    let logs = pair.stop().await;
    token_sim.stop().await;
    let failed: Vec<Value> = logs.lines().into_iter().filter(|l| l["event"] == "external_api_request").collect();
    assert_eq!(failed.len(), 3, "{failed:?}");
    assert!(failed
        .iter()
        .all(|l| l["outcome"] == "tls_error" && l["error"] == "tls: certificate signed by an unknown CA"));
    assert!(!logs.text().contains(support::CLIENT_SECRET) && !logs.text().contains(support::API_KEY));
}

/// Token endpoint and API on one host whose certificate, from the trusted CA, names another
/// host: the token cannot be fetched, and the answer says why instead of "auth unavailable".
#[actix_rt::test]
async fn a_token_endpoint_with_the_wrong_host_name_answers_upstream_tls() {
    let pki = Pki::new("wrong-name");
    let (ca, ca_file) = pki.ca("ca");
    let tls = sim_tls(&pki, &ca, &["upstream.example"]);
    let pair = PairBuilder::default()
        .sim(|s| s.tls = Some(tls))
        .env("EXTERNAL_API_CA_FILE", ca_file.to_str().unwrap())
        .start_unready()
        .await;

    let answer = pair.process(&body("no token")).await;
    assert_eq!((answer.status.as_u16(), answer.error_code()), (502, "upstream_tls"), "{answer:?}");
    assert_eq!(answer.body["error"]["retryable"], false);
    assert_eq!(pair.metric("courier_ready", &[]).await, 0.0);
    assert!(pair.metric("courier_token_refreshes_total", &[("result", "failure")]).await >= 1.0);
    let stats = pair.sim.stats();
    assert_eq!((stats.token.total, stats.process.total), (0, 0));

    let logs = pair.stop().await;
    let refresh = logs.lines().into_iter().find(|l| l["event"] == "token_refresh_failed").expect("a failed refresh");
    let error = refresh["error"].as_str().unwrap();
    assert_eq!(error, "token endpoint unreachable: tls: certificate not valid for the upstream's host name");
    assert!(!logs.text().contains(support::CLIENT_SECRET));
}

#[test]
fn a_bad_ca_file_stops_courier_with_one_line_naming_the_variable() {
    let pki = Pki::new("bad-file");
    let not_pem = pki.dir.join("not-a-ca.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    for (path, problem) in [(not_pem, "holds no PEM certificate"), (pki.dir.join("missing.pem"), "cannot read")] {
        let output = Command::new(BIN)
            .arg("serve")
            .env_clear()
            .env("EXTERNAL_API_BASE_URL", "https://127.0.0.1:1/v2")
            .env("EXTERNAL_API_KEY", "very-secret-key")
            .env("EXTERNAL_OAUTH_CLIENT_ID", "client")
            .env("EXTERNAL_OAUTH_CLIENT_SECRET", "very-secret-secret")
            .env("EXTERNAL_API_CA_FILE", &path)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2));
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("courier: EXTERNAL_API_CA_FILE: "), "{stderr}");
        assert!(stderr.contains(path.to_str().unwrap()) && stderr.contains(problem), "{stderr}");
        assert!(!stderr.contains("very-secret"), "{stderr}");
    }
}

/// `courier simulate --tls-cert --tls-key` serves HTTPS that a client trusting the CA can use.
#[actix_rt::test]
async fn the_simulate_command_serves_https_with_the_given_certificate() {
    let pki = Pki::new("simulate");
    let (ca, ca_file) = pki.ca("ca");
    let tls = sim_tls(&pki, &ca, LOOPBACK);
    let mut child = Command::new(BIN)
        .args(["simulate", "--listen", "127.0.0.1:0", "--workers", "1"])
        .arg("--tls-cert")
        .arg(&tls.cert)
        .arg("--tls-key")
        .arg(&tls.key)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = lines_of(child.stdout.take().unwrap());
    let base = wait_line(&out, |line| line.strip_prefix("simulator listening: ").map(str::to_owned));
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");
    let origin = base.trim_end_matches("/v2");

    let trusting = build_client(tls_config(Some(&ca_file)).unwrap(), &ClientSettings::default());
    let response = trusting.get(format!("{origin}/_sim/stats")).send().await.unwrap();
    let stats = read_answer(response).await;
    assert_eq!(stats.status, 200, "{stats:?}");
    assert_eq!(stats.body["process"]["total"], 0);
    let untrusting = build_client(tls_config(None).unwrap(), &ClientSettings::default());
    let refused = untrusting.get(format!("{origin}/_sim/stats")).send().await;
    assert!(refused.is_err(), "a client without the CA is refused: {refused:?}");

    signal(&child, libc::SIGINT);
    let status = actix_rt::task::spawn_blocking(move || wait_exit(&mut child)).await.unwrap();
    assert_eq!(status.code(), Some(0));

    let bad = Command::new(BIN)
        .args(["simulate", "--listen", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(&tls.cert)
        .arg("--tls-key")
        .arg(&ca_file)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8(bad.stderr).unwrap();
    assert!(stderr.contains("--tls-key") && stderr.contains("holds no PEM private key"), "{stderr}");
}

/// `SimConfig::tls` left unset keeps the simulator (and `courier demo`) on plain http.
#[actix_rt::test]
async fn without_tls_settings_the_simulator_stays_plain_http() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    assert!(sim.base_url().starts_with("http://127.0.0.1:"), "{}", sim.base_url());
    sim.stop().await;
}

const CALLBACK_SECRET: &str = "whsec_tls_7c1e";

/// A pair whose simulator serves HTTPS (upstream and callback sink alike) and checks callback
/// signatures; courier trusts the CA for the upstream and, with `trust_callbacks`, for callbacks.
async fn https_pair(pki: &Pki, trust_callbacks: bool) -> Pair {
    let (ca, ca_file) = pki.ca("ca");
    let tls = sim_tls(pki, &ca, LOOPBACK);
    let mut builder = PairBuilder::default()
        .sim(|s| {
            s.tls = Some(tls);
            s.callback_secret = Some(CALLBACK_SECRET.into());
        })
        .env("EXTERNAL_API_CA_FILE", ca_file.to_str().unwrap())
        .env("COURIER_CALLBACK_SECRET", CALLBACK_SECRET)
        .env("COURIER_CALLBACK_ALLOW", "127.0.0.1")
        .env("COURIER_CALLBACK_MAX_ATTEMPTS", "1");
    if trust_callbacks {
        builder = builder.env("COURIER_CALLBACK_CA_FILE", ca_file.to_str().unwrap());
    }
    builder.start().await
}

/// Submits an async job whose callback goes to the simulator's HTTPS sink; returns its id.
async fn submit_with_https_callback(pair: &Pair) -> String {
    let sink = format!("https://{}/_sim/callbacks", pair.sim.addr());
    let job = serde_json::json!({"data": {"input": "over tls"}, "options": {"async": true, "callback_url": sink}});
    let accepted = pair.process(&job).await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    accepted.body["request_id"].as_str().unwrap().to_owned()
}

/// The job's callback state once it is final (bounded wait).
async fn final_callback(pair: &Pair, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status =
            read_answer(pair.http.get(pair.url(&format!("/api/external/status/{id}"))).send().await.unwrap()).await;
        let callback = status.body["callback"].clone();
        if matches!(callback["state"].as_str(), Some("delivered" | "gave_up")) {
            return callback;
        }
        assert!(Instant::now() < deadline, "callback never final: {status:?}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_rt::test]
async fn an_https_callback_is_delivered_to_a_receiver_whose_ca_is_trusted() {
    let pki = Pki::new("callback-trusted");
    let pair = https_pair(&pki, true).await;
    let id = submit_with_https_callback(&pair).await;
    let callback = final_callback(&pair, &id).await;
    assert_eq!((callback["state"].as_str(), callback["last_status_code"].as_u64()), (Some("delivered"), Some(200)));
    let got = pair.sim.callbacks().callbacks;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].verified, "the signature verifies over TLS: {:?}", got[0].problem);
    assert_eq!(got[0].request_id.as_deref(), Some(id.as_str()));
    pair.stop().await;
}

#[actix_rt::test]
async fn an_https_callback_to_an_untrusted_certificate_is_not_delivered() {
    let pki = Pki::new("callback-untrusted");
    let pair = https_pair(&pki, false).await;
    let id = submit_with_https_callback(&pair).await;
    let callback = final_callback(&pair, &id).await;
    assert_eq!((callback["state"].as_str(), callback["attempts"].as_u64()), (Some("gave_up"), Some(1)), "{callback}");
    assert!(callback["last_status_code"].is_null(), "no HTTP answer: the handshake failed: {callback}");
    assert!(pair.sim.callbacks().callbacks.is_empty(), "nothing reached the receiver");
    pair.stop().await;
}
