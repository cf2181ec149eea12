//! The admin listener over TLS, on the real binary: `courier probe` (the container's health
//! check) asks it over HTTPS, trusting exactly the certificate of `COURIER_ADMIN_TLS_CERT_FILE`,
//! and a certificate replaced on disk is served after SIGHUP, without a restart. And what an
//! operator's alert reads: when the listeners' certificates in use expire.

mod support;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use courier::simulator::Simulator;
use support::process::{signal, wait_line, Serving, BIN};
use support::tls::{pem_body_lines, replace, Pki};
use support::PairBuilder;

/// Unix seconds of midnight UTC on 1 January of these years.
const JAN_2020: f64 = 1_577_836_800.0;
const JAN_2031: f64 = 1_924_992_000.0;
const JAN_4096: f64 = 67_090_118_400.0;

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

/// A server certificate of `ca` valid from `from` to `until` (years, 1 January UTC).
fn valid(pki: &Pki, name: &str, ca: &support::tls::Ca, from: i32, until: i32) -> support::tls::Leaf {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(from, 1, 1);
    params.not_after = rcgen::date_time_ymd(until, 1, 1);
    pki.leaf(name, ca, params)
}

#[actix_rt::test]
async fn the_expiry_of_the_certificates_in_use_is_exported_and_follows_a_rotation() {
    let pki = Pki::new("expiry");
    let (ca, _) = pki.ca("ca");
    // The client CA file holds two CAs: the earlier one to expire is the one that counts.
    let (long_ca, _) = pki.ca("long-ca");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.not_after = rcgen::date_time_ymd(2031, 1, 1);
    let short = params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap();
    let client_cas = pki.path("client-cas.pem");
    std::fs::write(&client_cas, format!("{}{}", long_ca.pem(), short.pem())).unwrap();
    let first = valid(&pki, "server", &ca, 2020, 2031);
    let pair = PairBuilder::default()
        .env("COURIER_TLS_CERT_FILE", first.cert.display().to_string())
        .env("COURIER_TLS_KEY_FILE", first.key.display().to_string())
        .env("COURIER_TLS_CLIENT_CA_FILE", client_cas.display().to_string())
        .env("COURIER_TLS_CLIENT_AUTH", "optional")
        .env("COURIER_SECRET_POLL_INTERVAL", "0.1")
        .start()
        .await;
    let expiry = |certificate: &'static str| {
        let pair = &pair;
        async move { pair.metric("courier_tls_certificate_expiry_timestamp_seconds", &[("certificate", certificate)]).await }
    };
    assert_eq!(expiry("gateway").await, JAN_2031);
    assert_eq!(expiry("gateway_client_ca").await, JAN_2031);
    assert_eq!(expiry("admin").await, 0.0, "the admin listener serves plain HTTP here");

    // A later CA file, then a certificate that has already expired (a renewal gone wrong):
    // both exported once in use; the expired one is also warned of.
    replace(&client_cas, &long_ca.pem());
    let expired = Pki::new("expiry-next");
    let expired = valid(&expired, "server", &ca, 2019, 2020);
    replace(&first.key, &expired.key_pem);
    replace(&first.cert, &expired.cert_pem);
    let deadline = Instant::now() + Duration::from_secs(10);
    while expiry("gateway").await != JAN_2020 {
        assert!(Instant::now() < deadline, "the new certificate's expiry was not exported");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(expiry("gateway_client_ca").await, JAN_4096);
    let logs = pair.stop().await;
    let warned: Vec<_> = logs.lines().into_iter().filter(|l| l["event"] == "tls_certificate_expired").collect();
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!(warned[0]["certificate"], "gateway");
    assert_eq!(warned[0]["var"], "COURIER_TLS_CERT_FILE");
    assert_eq!(warned[0]["not_after"], JAN_2020 as i64);
}
