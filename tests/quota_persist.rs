//! Quota counts on the embedded store survive restarts, against real `courier serve`
//! processes: a graceful stop saves the exact count; after `kill -9` in the middle of traffic
//! the count is never below what the upstream received, and above it by at most the blocks
//! held (the README's bound); a second courier cannot count in the same directory; a state
//! file that is not courier's stops start-up instead of being silently reset.

mod support;

use std::rc::Rc;
use std::time::{Duration, Instant};

use courier::simulator::{SimConfig, Simulator};
use serde_json::Value;
use support::process::{signal, sim_env, wait_exit, Serving, BIN};
use support::quota::state_dir;
use support::{body, read_answer};

/// A window large enough that blocks hold 16 counts (a thousandth of the limit).
const QUOTA: &str = "16000/600s";
const BLOCK: u64 = 16;

async fn simulator() -> Simulator {
    let cfg = SimConfig {
        rate_limit_per_minute: 6_000_000,
        rate_burst: 100_000,
        quotas: vec![QUOTA.into()],
        ..SimConfig::default()
    };
    Simulator::start(cfg).await.unwrap()
}

fn serve(sim: &Simulator, dir: &str) -> Serving {
    let mut env = sim_env(sim);
    env.extend([
        ("EXTERNAL_API_QUOTAS", QUOTA.to_owned()),
        ("COURIER_STATE_DIR", dir.to_owned()),
        ("EXTERNAL_API_RATE_LIMIT", "6000000".to_owned()),
        ("EXTERNAL_API_RATE_BURST", "100000".to_owned()),
        ("EXTERNAL_API_CACHE_TTL", "0".to_owned()),
        ("COURIER_SHUTDOWN_GRACE", "0.5".to_owned()),
    ]);
    Serving::start(&env)
}

/// courier's count of the window, from `/admin/state`.
async fn used(http: &awc::Client, courier: &Serving) -> u64 {
    let url = format!("http://{}/admin/state", courier.admin);
    let state: Value = read_answer(http.get(url).send().await.unwrap()).await.body;
    state["quota"]["windows"][0]["used"].as_u64().expect("a window")
}

/// What the simulator counted in its window.
fn upstream(sim: &Simulator) -> u64 {
    sim.quotas().windows[0].used
}

/// Waits (bounded) until the simulator's count stops moving (requests cut off by a kill may
/// still arrive for a moment).
async fn settled(sim: &Simulator) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = upstream(sim);
    loop {
        actix_rt::time::sleep(Duration::from_millis(200)).await;
        let now = upstream(sim);
        if now == last {
            return now;
        }
        assert!(Instant::now() < deadline, "the simulator's count kept moving");
        last = now;
    }
}

#[actix_rt::test]
async fn a_graceful_restart_keeps_the_exact_count() {
    let sim = simulator().await;
    let dir = state_dir("graceful");
    let http = awc::Client::default();
    let mut courier = serve(&sim, &dir);
    for i in 0..20 {
        let answer = read_answer(
            http.post(courier.url("/api/external/process")).send_json(&body(&format!("g {i}"))).await.unwrap(),
        )
        .await;
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    assert_eq!(used(&http, &courier).await, 2 * BLOCK, "two blocks are counted ahead");
    signal(&courier.child, libc::SIGTERM);
    assert!(wait_exit(&mut courier.child).success());
    let courier = serve(&sim, &dir);
    assert_eq!(used(&http, &courier).await, 20, "the unspent rest was given back at the stop");
    assert_eq!(upstream(&sim), 20);
}

#[actix_rt::test]
async fn after_kill_9_the_count_is_never_below_what_was_sent() {
    let sim = Rc::new(simulator().await);
    let dir = state_dir("kill9");
    let http = awc::Client::default();
    const SENDERS: u64 = 4;
    // What earlier kills over-counted: each kill may add its own, within the bound.
    let mut excess = 0;
    for round in 0..3 {
        let mut courier = serve(&sim, &dir);
        let url = courier.url("/api/external/process");
        let before = upstream(&sim);
        let senders: Vec<_> = (0..SENDERS)
            .map(|s| {
                let (http, url) = (http.clone(), url.clone());
                actix_rt::spawn(async move {
                    for i in 0.. {
                        let sent = http.post(&url).send_json(&body(&format!("r{round} s{s} {i}"))).await;
                        if sent.is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        while upstream(&sim) < before + 50 {
            assert!(Instant::now() < deadline, "traffic reached the simulator");
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
        signal(&courier.child, libc::SIGKILL);
        wait_exit(&mut courier.child);
        for sender in senders {
            sender.await.unwrap();
        }
        let sent = settled(&sim).await;
        let restarted = serve(&sim, &dir);
        let counted = used(&http, &restarted).await;
        assert!(counted >= sent, "round {round}: counted {counted} < sent {sent}: an under-count");
        // The one client's unspent block, and the attempts in flight at the kill.
        let bound = BLOCK + SENDERS;
        let added = counted - sent - excess;
        println!("kill -9 round {round}: upstream received {sent}, counted {counted}, this kill added {added}");
        assert!(added <= bound, "round {round}: this kill over-counted by {added} > {bound}");
        excess = counted - sent;
        drop(restarted);
    }
}

/// Runs `courier serve` on `dir`, which must refuse to start (exit 1); its stderr.
fn refused_start(sim: &Simulator, dir: &str) -> String {
    let mut env = sim_env(sim);
    env.extend([("EXTERNAL_API_QUOTAS", QUOTA.to_owned()), ("COURIER_STATE_DIR", dir.to_owned())]);
    let output = std::process::Command::new(BIN)
        .arg("serve")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("COURIER_LISTEN", "127.0.0.1:0")
        .env("COURIER_ADMIN_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[actix_rt::test]
async fn a_second_courier_on_the_same_state_dir_is_refused() {
    let sim = simulator().await;
    let dir = state_dir("twice");
    let first = serve(&sim, &dir);
    let stderr = refused_start(&sim, &dir);
    assert!(stderr.contains("another courier counts quotas in this directory"), "{stderr}");
    let http = awc::Client::default();
    let answer =
        read_answer(http.post(first.url("/api/external/process")).send_json(&body("still here")).await.unwrap()).await;
    assert_eq!(answer.status, 200, "the first keeps serving");
}

#[actix_rt::test]
async fn a_state_file_that_is_not_couriers_stops_start_up() {
    let sim = simulator().await;
    let dir = state_dir("corrupt");
    std::fs::write(std::path::Path::new(&dir).join("quota-state.json"), "{").unwrap();
    let stderr = refused_start(&sim, &dir);
    assert!(stderr.contains("quota-state.json") && stderr.contains("not a courier quota state file"), "{stderr}");
}
