//! `courier probe`, the container's health check, against real `courier serve` processes: 0
//! once courier is ready, 1 while it is not (or nothing answers), one line either way.

mod support;

use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use courier::simulator::Simulator;
use support::process::{Serving, BIN};
use support::PairBuilder;

/// Runs `courier probe ARGS` with exactly `env`, off the test's runtime thread.
async fn probe(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    command.arg("probe").args(args).env_clear();
    for (name, value) in env {
        command.env(name, value);
    }
    actix_rt::task::spawn_blocking(move || command.output().unwrap()).await.unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A `courier serve` wired to `sim`, with this OAuth2 client secret.
fn serve(sim: &Simulator, client_secret: &str) -> Serving {
    let config = PairBuilder::default().sim;
    Serving::start(&[
        ("EXTERNAL_API_BASE_URL", sim.base_url()),
        ("EXTERNAL_API_KEY", config.api_key.clone()),
        ("EXTERNAL_OAUTH_CLIENT_ID", config.client_id.clone()),
        ("EXTERNAL_OAUTH_CLIENT_SECRET", client_secret.to_owned()),
    ])
}

#[actix_rt::test]
async fn probe_exits_zero_once_courier_is_ready_and_asks_where_the_admin_listener_is() {
    let config = PairBuilder::default().sim;
    let sim = Simulator::start(config.clone()).await.expect("simulator starts");
    let courier = serve(&sim, &config.client_secret);

    // The way a health check is used: asked again until it passes, within a bound.
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        let output = probe(&["--admin", &courier.admin], &[]).await;
        if output.status.success() || Instant::now() > deadline {
            break output;
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ready.status.code(), Some(0), "{}", text(&ready.stderr));
    let line = text(&ready.stdout);
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.starts_with(&format!("courier probe: http://{}/readyz: 200 {{", courier.admin)), "{line}");
    assert!(line.contains(r#""ready":true"#), "{line}");

    let live = probe(&["--live", "--admin", &courier.admin], &[]).await;
    assert_eq!(live.status.code(), Some(0));
    assert!(text(&live.stdout).starts_with(&format!("courier probe: http://{}/healthz: 200", courier.admin)));

    // Without --admin it asks COURIER_ADMIN_LISTEN, as serve reads it; a listener on every
    // address (as in a container) is asked on loopback.
    let port = courier.admin.rsplit(':').next().unwrap();
    let everywhere = format!("0.0.0.0:{port}");
    let from_env = probe(&[], &[("COURIER_ADMIN_LISTEN", &everywhere)]).await;
    assert_eq!(from_env.status.code(), Some(0), "{}", text(&from_env.stderr));
    assert!(text(&from_env.stdout).starts_with(&format!("courier probe: http://127.0.0.1:{port}/readyz: 200")));
    drop(courier);
    sim.stop().await;
}

#[actix_rt::test]
async fn probe_exits_one_while_courier_holds_no_upstream_token_but_it_is_alive() {
    let config = PairBuilder::default().sim;
    let sim = Simulator::start(config.clone()).await.expect("simulator starts");
    // The upstream refuses this secret: courier serves, and is never ready.
    let courier = serve(&sim, "not-the-secret");
    let unready = probe(&["--admin", &courier.admin], &[]).await;
    assert_eq!(unready.status.code(), Some(1));
    let line = text(&unready.stderr);
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.starts_with(&format!("courier probe: http://{}/readyz: 503 {{", courier.admin)), "{line}");
    assert!(line.contains(r#""ready":false"#), "{line}");
    assert!(!line.contains("not-the-secret"), "{line}");

    let live = probe(&["--live", "--admin", &courier.admin], &[]).await;
    assert_eq!(live.status.code(), Some(0), "{}", text(&live.stderr));
    drop(courier);
    sim.stop().await;
}

#[actix_rt::test]
async fn probe_exits_one_when_nothing_answers_in_time() {
    // Nothing listens: refused at once.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let refused = probe(&["--admin", &closed], &[]).await;
    assert_eq!(refused.status.code(), Some(1));
    let line = text(&refused.stderr);
    assert!(line.starts_with(&format!("courier probe: http://{closed}/readyz: cannot connect")), "{line}");

    // A listener that accepts (the kernel completes the handshake) and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let hung = probe(&["--admin", &addr, "--timeout", "0.3"], &[]).await;
    assert_eq!(hung.status.code(), Some(1));
    let line = text(&hung.stderr);
    assert!(line.starts_with(&format!("courier probe: http://{addr}/readyz: no answer within 300ms")), "{line}");
    drop(silent);
}

#[actix_rt::test]
async fn a_bad_admin_address_is_unhealthy_with_the_configuration_line_never_exit_two() {
    // Docker reserves exit code 2 in health checks.
    let bad = probe(&[], &[("COURIER_ADMIN_LISTEN", "9090")]).await;
    assert_eq!(bad.status.code(), Some(1));
    let line = text(&bad.stderr);
    assert!(
        line.starts_with("courier probe: COURIER_ADMIN_LISTEN: \"9090\" is not valid (expected: host:port"),
        "{line}"
    );
}
