//! The admin listener over TLS, on the real binary: `courier probe` (the container's health
//! check) asks it over HTTPS, trusting exactly the certificate of `COURIER_ADMIN_TLS_CERT_FILE`,
//! and a certificate replaced on disk is served after SIGHUP, without a restart.

mod support;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use courier::simulator::Simulator;
use support::process::{signal, wait_line, Serving, BIN};
use support::tls::{pem_body_lines, replace, Pki};
use support::PairBuilder;

/// Runs `courier probe --admin ADMIN` with exactly `env`, off the test's runtime thread.
async fn probe(admin: &str, env: &[(&str, String)]) -> Output {
    let mut command = Command::new(BIN);
    command.args(["probe", "--admin", admin]).env_clear();
    for (name, value) in env {
        command.env(name, value);
    }
    actix_rt::task::spawn_blocking(move || command.output().unwrap()).await.unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Probes until it exits 0 (bounded), returning its output.
async fn until_healthy(admin: &str, env: &[(&str, String)]) -> Output {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let output = probe(admin, env).await;
        if output.status.success() || Instant::now() > deadline {
            return output;
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_rt::test]
async fn probe_asks_the_admin_listener_over_tls_and_a_sighup_swaps_its_certificate() {
    let sim_config = PairBuilder::default().sim;
    let sim = Simulator::start(sim_config.clone()).await.expect("simulator starts");
    let pki = Pki::new("admin");
    let (ca, _) = pki.ca("ca");
    let first = pki.server("admin", &ca, "admin first");
    let stranger = pki.server("stranger", &ca, "someone else");
    let cert_var = ("COURIER_ADMIN_TLS_CERT_FILE", first.cert.display().to_string());
    let mut courier = Serving::start(&[
        ("EXTERNAL_API_BASE_URL", sim.base_url()),
        ("EXTERNAL_API_KEY", sim_config.api_key.clone()),
        ("EXTERNAL_OAUTH_CLIENT_ID", sim_config.client_id.clone()),
        ("EXTERNAL_OAUTH_CLIENT_SECRET", sim_config.client_secret.clone()),
        cert_var.clone(),
        ("COURIER_ADMIN_TLS_KEY_FILE", first.key.display().to_string()),
        // Only SIGHUP reloads, so what the test sees after it is the signal's doing.
        ("COURIER_SECRET_POLL_INTERVAL", "0".into()),
    ]);
    let admin = courier.admin.clone();

    let ready = until_healthy(&admin, std::slice::from_ref(&cert_var)).await;
    assert_eq!(ready.status.code(), Some(0), "{}", text(&ready.stderr));
    let line = text(&ready.stdout);
    assert!(line.starts_with(&format!("courier probe: https://{admin}/readyz: 200 {{")), "{line}");
    // Plain HTTP gets no answer from a TLS listener; a certificate other than the one served
    // is not trusted.
    let plain = probe(&admin, &[]).await;
    assert_eq!(plain.status.code(), Some(1), "{}", text(&plain.stdout));
    assert!(text(&plain.stderr).starts_with(&format!("courier probe: http://{admin}/readyz: ")));
    let pinned_elsewhere = probe(&admin, &[("COURIER_ADMIN_TLS_CERT_FILE", stranger.cert.display().to_string())]).await;
    assert_eq!(pinned_elsewhere.status.code(), Some(1));
    assert!(text(&pinned_elsewhere.stderr).contains("TLS: "), "{}", text(&pinned_elsewhere.stderr));

    // The files are replaced (key first); until SIGHUP the old certificate is served, so the
    // probe, which reads the file anew, fails.
    let second = Pki::new("admin-next").server("admin", &ca, "admin second");
    replace(&first.key, &second.key_pem);
    replace(&first.cert, &second.cert_pem);
    let stale = probe(&admin, std::slice::from_ref(&cert_var)).await;
    assert_eq!(stale.status.code(), Some(1), "{}", text(&stale.stdout));
    signal(&courier.child, libc::SIGHUP);
    let changed = wait_line(&courier.logs, |line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        (v["event"] == "credentials_reloaded").then(|| v["changed"].as_str().unwrap_or_default().to_owned())
    });
    assert_eq!(changed, "admin_tls");
    let fresh = until_healthy(&admin, std::slice::from_ref(&cert_var)).await;
    assert_eq!(fresh.status.code(), Some(0), "{}", text(&fresh.stderr));

    // Nothing of either key or certificate was logged.
    signal(&courier.child, libc::SIGTERM);
    let mut logged = String::new();
    while let Ok(line) = courier.logs.recv_timeout(Duration::from_secs(10)) {
        logged.push_str(&line);
    }
    for pem in [&first.key_pem, &second.key_pem, &first.cert_pem, &second.cert_pem] {
        for line in pem_body_lines(pem) {
            assert!(!logged.contains(line), "PEM content in the logs: {line}");
        }
    }
    let _ = courier.child.wait();
    sim.stop().await;
}
