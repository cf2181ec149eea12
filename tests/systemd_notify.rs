//! `courier serve` under systemd's `Type=notify` (deploy/systemd/courier.service): the real
//! binary, started with `NOTIFY_SOCKET` naming a unix datagram socket the test listens on, as
//! systemd does. `READY=1` must mean that requests are answered, and SIGTERM must announce
//! `STOPPING=1` before courier exits 0.

mod support;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use courier::simulator::{SimConfig, Simulator};
use serde_json::Value;
use support::process::{signal, sim_env, wait_exit, wait_line, Serving, BIN};

/// The next notification, waited for (bounded) on a blocking thread.
async fn next_notification(socket: &UnixDatagram) -> String {
    let socket = socket.try_clone().unwrap();
    actix_rt::task::spawn_blocking(move || {
        socket.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 4096];
        let len = socket.recv(&mut buf).expect("a notification arrived in time");
        String::from_utf8(buf[..len].to_vec()).unwrap()
    })
    .await
    .unwrap()
}

/// The address after `name ` in the STATUS line, e.g. `gateway 127.0.0.1:4711,`.
fn address_in(message: &str, name: &str) -> String {
    let status = message.lines().find_map(|l| l.strip_prefix("STATUS=")).expect("a STATUS line");
    let rest = &status[status.find(&format!("{name} ")).expect("the address is named") + name.len() + 1..];
    rest.split([',', ' ']).next().unwrap().to_owned()
}

#[actix_rt::test]
async fn ready_once_it_answers_and_stopping_on_sigterm() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let dir = std::env::temp_dir().join(format!("courier-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).unwrap();

    let mut child = Command::new(BIN)
        .arg("serve")
        .env_clear()
        .envs(sim_env(&sim))
        .env("NOTIFY_SOCKET", &path)
        .env("COURIER_LISTEN", "127.0.0.1:0")
        .env("COURIER_ADMIN_LISTEN", "127.0.0.1:0")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let ready = next_notification(&socket).await;
    assert!(ready.lines().any(|l| l == "READY=1"), "the first notification says READY=1: {ready:?}");
    // Ready means served: the first requests after READY=1 are answered, without a retry.
    let gateway = address_in(&ready, "gateway");
    let admin = address_in(&ready, "admin");
    let http = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
    let openapi = http.get(format!("http://{gateway}/openapi.json")).send().await.expect("the gateway answers");
    assert_eq!(openapi.status(), 200);
    let health = http.get(format!("http://{admin}/healthz")).send().await.expect("the admin listener answers");
    assert_eq!(health.status(), 200);

    signal(&child, libc::SIGTERM);
    let stopping = next_notification(&socket).await;
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "SIGTERM announces STOPPING=1: {stopping:?}");
    let status = actix_rt::task::spawn_blocking(move || wait_exit(&mut child)).await.unwrap();
    assert_eq!(status.code(), Some(0), "a graceful stop exits 0");

    sim.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix_rt::test]
async fn a_manager_that_cannot_be_told_is_logged_and_courier_serves_anyway() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let mut env = sim_env(&sim);
    env.push(("NOTIFY_SOCKET", "/nonexistent/courier-test/notify.sock".into()));
    let serving = Serving::start(&env);
    let state = wait_line(&serving.logs, |line| {
        let v: Value = serde_json::from_str(line).ok()?;
        (v["event"] == "service_manager_notify_failed").then(|| v["state"].as_str().unwrap_or_default().to_owned())
    });
    assert_eq!(state, "ready");
    let http = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
    let openapi = http.get(serving.url("/openapi.json")).send().await.expect("the gateway answers");
    assert_eq!(openapi.status(), 200);
    sim.stop().await;
}
