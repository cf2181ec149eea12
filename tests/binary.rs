//! The `courier` binary itself: configuration errors, graceful shutdown on SIGTERM, and the
//! demo a newcomer runs first.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use courier::simulator::{SimConfig, Simulator};
use serde_json::{json, Value};
use support::process::{lines_of, signal, wait_exit, wait_line, BIN};
use support::{count, read_answer};

#[test]
fn every_bad_setting_is_reported_on_its_own_line_without_secrets() {
    let output = Command::new(BIN)
        .arg("serve")
        .env_clear()
        .env("EXTERNAL_API_BASE_URL", "not a url")
        .env("EXTERNAL_API_KEY", "very-secret-key")
        .env("EXTERNAL_OAUTH_CLIENT_SECRET", "very-secret-secret")
        .env("EXTERNAL_API_TIMEOUT", "-3")
        .env("COURIER_ADMIN_LISTEN", "9090")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 4, "{stderr}");
    assert!(lines[0].starts_with("courier: EXTERNAL_API_BASE_URL: \"not a url\" is not a URL"), "{stderr}");
    assert!(lines[1].starts_with("courier: EXTERNAL_OAUTH_CLIENT_ID: is not set (expected:"), "{stderr}");
    assert!(lines[2].starts_with("courier: EXTERNAL_API_TIMEOUT: \"-3\" is not valid (expected: a number of seconds"));
    assert!(lines[3].starts_with("courier: COURIER_ADMIN_LISTEN:"), "{stderr}");
    assert!(!stderr.contains("very-secret"));
}

#[test]
fn help_is_available_for_every_subcommand() {
    for sub in ["serve", "simulate", "demo", "probe"] {
        let output = Command::new(BIN).args([sub, "--help"]).output().unwrap();
        assert!(output.status.success());
        assert!(String::from_utf8_lossy(&output.stdout).contains("Usage: courier"), "{sub}");
    }
}

#[test]
fn version_names_the_version_and_the_git_commit() {
    let output = Command::new(BIN).arg("--version").output().unwrap();
    assert!(output.status.success());
    let commit = env!("COURIER_GIT_COMMIT");
    let line = String::from_utf8(output.stdout).unwrap();
    assert_eq!(line.trim_end(), format!("courier {} (commit {commit})", env!("CARGO_PKG_VERSION")));
    // build.rs took it from git: this test runs in a clone (a build without one says `unknown`).
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success());
    match head {
        Some(head) => assert!(String::from_utf8_lossy(&head.stdout).starts_with(commit), "{commit} is not HEAD"),
        None => assert_eq!(commit, "unknown"),
    }
}

#[actix_rt::test]
async fn sigterm_lets_in_flight_requests_finish_then_exits_zero() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    sim.set_faults(courier::simulator::FaultsPatch { latency_ms: Some(600.0), ..Default::default() });
    let mut child = Command::new(BIN)
        .arg("serve")
        .env_clear()
        .env("EXTERNAL_API_BASE_URL", sim.base_url())
        .env("EXTERNAL_API_KEY", "demo-api-key")
        .env("EXTERNAL_OAUTH_CLIENT_ID", "courier-demo")
        .env("EXTERNAL_OAUTH_CLIENT_SECRET", "demo-secret")
        .env("COURIER_LISTEN", "127.0.0.1:0")
        .env("COURIER_ADMIN_LISTEN", "127.0.0.1:0")
        .env("COURIER_WORKERS", "1")
        .env("COURIER_SHUTDOWN_GRACE", "10")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let logs = lines_of(child.stderr.take().unwrap());
    let gateway = wait_line(&logs, |line| {
        let v: Value = serde_json::from_str(line).ok()?;
        (v["event"] == "listening").then(|| v["gateway"].as_str().unwrap().to_owned())
    });
    let http = awc::Client::builder().timeout(Duration::from_secs(20)).finish();
    let url = format!("http://{gateway}/api/external/process");
    let in_flight = http.post(&url).send_json(&json!({"data": {"input": "finish me"}}));
    let request = actix_rt::spawn(async move { read_answer(in_flight.await.expect("answered")).await });

    // Signal once the simulator holds the request.
    let deadline = Instant::now() + Duration::from_secs(10);
    while sim.stats().in_flight == 0 {
        assert!(Instant::now() < deadline, "request never reached the simulator");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    signal(&child, libc::SIGTERM);
    let answer = request.await.unwrap();
    assert_eq!(answer.status, 200, "the in-flight request finished: {answer:?}");
    assert_eq!(answer.body["result"]["processed_data"], "FINISH ME");
    let status = actix_rt::task::spawn_blocking(move || wait_exit(&mut child)).await.unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(http.post(&url).send_json(&json!({"data": {"input": "late"}})).await.is_err(), "no longer accepting");
    sim.stop().await;
}

#[actix_rt::test]
async fn the_demo_serves_the_printed_curl_command() {
    // The gateway's address from the environment, as a container image sets it (the flags of
    // the other listeners are what tests/newcomer.rs runs).
    let mut child = Command::new(BIN)
        .args(["demo", "--admin-listen", "127.0.0.1:0", "--sim-listen", "127.0.0.1:0"])
        .env("COURIER_LISTEN", "127.0.0.1:0")
        .env_remove("COURIER_CLIENTS_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = lines_of(child.stdout.take().unwrap());
    let gateway = wait_line(&out, |line| line.trim().strip_prefix("gateway:").map(|url| url.trim().to_owned()));
    let sim_stats = wait_line(&out, |line| {
        let at = line.find("stats: GET ")?;
        Some(line[at + "stats: GET ".len()..].trim_end_matches(')').trim().to_owned())
    });
    let curl = wait_line(&out, |line| line.trim().starts_with("curl -s -X POST http").then(|| line.to_owned()));
    assert!(curl.contains(&gateway), "the printed command calls the gateway: {curl}");
    let payload = curl.split("-d '").nth(1).unwrap().trim_end_matches('\'');
    let payload: Value = serde_json::from_str(payload).unwrap();

    let http = awc::Client::builder().timeout(Duration::from_secs(20)).finish();
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let response = http.post(&gateway).send_json(&payload).await.unwrap();
        let answer = read_answer(response).await;
        if answer.status != 503 || Instant::now() > deadline {
            break answer;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body["result"]["processed_data"], "HELLO COURIER");
    let mut stats = http.get(&sim_stats).send().await.unwrap();
    let stats: Value = stats.json().await.unwrap();
    assert!(count(&stats, &["process", "ok"]) >= 1);

    signal(&child, libc::SIGINT);
    let status = actix_rt::task::spawn_blocking(move || wait_exit(&mut child)).await.unwrap();
    assert_eq!(status.code(), Some(0));
}
