//! TLS on the gateway listener, over real TLS connections with certificates made in the test:
//! clients identified by their certificate (SAN URI, SAN DNS name, subject CN) or their key;
//! expired certificates, certificates from another CA and missing certificates refused in the
//! handshake; TLS 1.2 and 1.3 and nothing older; a rotated certificate and client CA picked up
//! without a restart while an open keep-alive connection keeps working; bad files at start one
//! line each; keys and certificates never in the logs.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use courier::config::key_sha256_hex;
use rcgen::{date_time_ymd, SanType};
use support::tls::{client_config, one_request, pem_body_lines, replace, Conn, Pki, MODERN};
use support::{Pair, PairBuilder};

const H1: &[&[u8]] = &[b"http/1.1"];

/// alpha: a key and a SPIFFE ID; beta: a DNS name only; gamma: a common name only.
fn clients_file(pki: &Pki) -> String {
    let text = format!(
        "[[client]]\nname = \"alpha\"\nkey_sha256 = \"{}\"\ntls_names = [\"spiffe://courier.test/alpha\"]\n\n\
         [[client]]\nname = \"beta\"\ntls_names = [\"beta.clients.test\"]\n\n\
         [[client]]\nname = \"gamma\"\nkey_sha256 = \"{}\"\ntls_names = [\"CN=gamma\"]\n",
        key_sha256_hex("alpha-key"),
        key_sha256_hex("gamma-key"),
    );
    let path = pki.path("clients.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// A courier serving TLS with `server`'s files, asking for client certificates of `client_ca`
/// (`auth`: required or optional), logging from debug level on.
async fn start(pki: &Pki, server: &support::tls::Leaf, client_ca: &Path, auth: &str) -> Pair {
    PairBuilder::default()
        .log_level("debug")
        .env("COURIER_TLS_CERT_FILE", server.cert.display().to_string())
        .env("COURIER_TLS_KEY_FILE", server.key.display().to_string())
        .env("COURIER_TLS_CLIENT_CA_FILE", client_ca.display().to_string())
        .env("COURIER_TLS_CLIENT_AUTH", auth)
        .env("COURIER_CLIENTS_FILE", clients_file(pki))
        .env("COURIER_SECRET_POLL_INTERVAL", "0.1")
        .start()
        .await
}

async fn served_to(pair: &Pair, client: &str) -> f64 {
    pair.metric("courier_http_requests_total", &[("route", "process"), ("status", "200"), ("client", client)]).await
}

/// Waits (bounded) until `courier_tls_handshakes_total{result}` is `count`: a refused
/// handshake may reach the client before courier has counted it.
async fn expect_handshakes(pair: &Pair, result: &str, count: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = pair.metric("courier_tls_handshakes_total", &[("result", result)]).await;
        if seen == count {
            return;
        }
        assert!(Instant::now() < deadline, "{seen} handshakes {result}, expected {count}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_rt::test]
async fn a_verified_client_certificate_identifies_its_client_and_a_key_still_does() {
    let pki = Pki::new("identify");
    let (server_ca, server_ca_file) = pki.ca("server-ca");
    let (client_ca, client_ca_file) = pki.ca("client-ca");
    let server = pki.server("server", &server_ca, "courier");
    let pair = start(&pki, &server, &client_ca_file, "optional").await;
    let spiffe = SanType::URI("spiffe://courier.test/alpha".try_into().unwrap());
    let alpha = pki.client("alpha", &client_ca, vec![spiffe], "not-a-client-name");
    let beta = pki.client("beta", &client_ca, vec![SanType::DnsName("BETA.clients.test".try_into().unwrap())], "x");
    let gamma = pki.client("gamma", &client_ca, vec![], "gamma");
    let nobody = pki.client("nobody", &client_ca, vec![SanType::DnsName("nobody.test".try_into().unwrap())], "beta");
    let with = |leaf| client_config(&server_ca_file, leaf, MODERN, H1);
    let addr = pair.courier.addr;

    for (leaf, client) in [(&alpha, "alpha"), (&beta, "beta"), (&gamma, "gamma")] {
        let reply = one_request(addr, with(Some(leaf)), None).await.unwrap();
        assert_eq!(reply.status, 200, "{client}: {reply:?}");
        assert!(reply.body.contains("OVER TLS"), "{reply:?}");
        assert_eq!(served_to(&pair, client).await, 1.0, "{client} was identified by its certificate");
    }
    // With client certificates no session is resumed: each connection shows its certificate,
    // verified again (an expired one is never let in by a session begun before it expired).
    let config = with(Some(&alpha));
    let mut first = Conn::open(addr, config.clone()).await.unwrap();
    assert_eq!(first.process("first", None).await.unwrap().status, 200);
    let mut second = Conn::open(addr, config).await.unwrap();
    assert!(!second.resumed());
    assert_eq!(second.process("second", None).await.unwrap().status, 200);
    // A certificate from the trusted CA that names no client (its CN is beta, but a CN only
    // counts where a client lists CN=...): 401 without a key, like a missing key.
    let reply = one_request(addr, with(Some(&nobody)), None).await.unwrap();
    assert_eq!(reply.status, 401, "{reply:?}");
    // A key and a certificate naming different clients: refused, neither wins.
    let reply = one_request(addr, with(Some(&gamma)), Some("alpha-key")).await.unwrap();
    assert_eq!(reply.status, 401, "{reply:?}");
    // The key and the certificate of the same client; a key alone (the certificate is
    // optional here); a wrong key is not saved by a good certificate.
    assert_eq!(one_request(addr, with(Some(&alpha)), Some("alpha-key")).await.unwrap().status, 200);
    assert_eq!(one_request(addr, with(None), Some("gamma-key")).await.unwrap().status, 200);
    assert_eq!(one_request(addr, with(Some(&alpha)), Some("wrong-key")).await.unwrap().status, 401);
    assert_eq!(one_request(addr, with(None), None).await.unwrap().status, 401);

    assert_eq!((served_to(&pair, "alpha").await, served_to(&pair, "gamma").await), (4.0, 2.0));
    let unknown = [("route", "process"), ("status", "401"), ("client", "unknown")];
    assert_eq!(pair.metric("courier_http_requests_total", &unknown).await, 4.0);
    expect_handshakes(&pair, "ok", 11.0).await;
    pair.stop().await;
}

#[actix_rt::test]
async fn expired_foreign_and_missing_client_certificates_are_refused_in_the_handshake() {
    let pki = Pki::new("refused");
    let (server_ca, server_ca_file) = pki.ca("server-ca");
    let (client_ca, client_ca_file) = pki.ca("client-ca");
    let (other_ca, _) = pki.ca("other-ca");
    let server = pki.server("server", &server_ca, "courier");
    let pair = start(&pki, &server, &client_ca_file, "required").await;
    let beta_name = || vec![SanType::DnsName("beta.clients.test".try_into().unwrap())];
    let valid = pki.client("valid", &client_ca, beta_name(), "beta");
    let mut expired = rcgen::CertificateParams::default();
    expired.subject_alt_names = beta_name();
    (expired.not_before, expired.not_after) = (date_time_ymd(2020, 1, 1), date_time_ymd(2021, 1, 1));
    let expired = pki.leaf("expired", &client_ca, expired);
    let foreign = pki.client("foreign", &other_ca, beta_name(), "beta");
    let addr = pair.courier.addr;

    for (leaf, what) in [(Some(&expired), "expired"), (Some(&foreign), "another CA's"), (None, "no certificate")] {
        for versions in [&[&rustls::version::TLS13][..], &[&rustls::version::TLS12][..]] {
            let config = client_config(&server_ca_file, leaf, versions, H1);
            let refused = one_request(addr, config, Some("gamma-key")).await;
            assert!(refused.is_err(), "{what} over {versions:?} got an answer: {refused:?}");
        }
    }
    let config = client_config(&server_ca_file, Some(&valid), MODERN, H1);
    assert_eq!(one_request(addr, config, None).await.unwrap().status, 200);
    expect_handshakes(&pair, "bad_client_certificate", 4.0).await;
    expect_handshakes(&pair, "no_client_certificate", 2.0).await;
    expect_handshakes(&pair, "ok", 1.0).await;
    let stats = pair.sim.stats();
    assert_eq!(stats.process.total, 1, "no refused caller reached the upstream: {stats:?}");
    let logs = pair.stop().await;
    let failed: Vec<String> = logs
        .lines()
        .into_iter()
        .filter(|l| l["event"] == "tls_handshake_failed")
        .map(|l| format!("{} {}", l["result"].as_str().unwrap(), l["error"].as_str().unwrap()))
        .collect();
    assert_eq!(failed.len(), 6, "{failed:?}");
    assert_eq!(failed.iter().filter(|l| l.starts_with("bad_client_certificate ")).count(), 4, "{failed:?}");
    assert!(failed.iter().any(|l| l.to_ascii_lowercase().contains("expired")), "{failed:?}");
}

/// A ClientHello of `version` (TLS 1.1: 0x0302, 1.2: 0x0303) without the supported_versions
/// extension, as an old client sends it.
fn client_hello(version: [u8; 2]) -> Vec<u8> {
    let mut body = version.to_vec();
    body.extend([7u8; 32]); // random
    body.push(0); // no session id
    let suites = [0xc0, 0x2b, 0xc0, 0x2f, 0xc0, 0x13, 0x00, 0x2f];
    body.extend((suites.len() as u16).to_be_bytes());
    body.extend(suites);
    body.extend([1, 0]); // compression: none
    let mut ext = vec![0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x17, 0x00, 0x1d]; // groups
    ext.extend([0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]); // point formats
    ext.extend([0x00, 0x0d, 0x00, 0x08, 0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01]); // signatures
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(ext);
    let mut handshake = vec![1u8];
    handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

/// The first bytes courier answers `hello` with.
async fn first_answer(addr: std::net::SocketAddr, hello: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(hello).await.unwrap();
    let mut answer = vec![0u8; 7];
    tcp.read_exact(&mut answer).await.unwrap();
    answer
}

#[actix_rt::test]
async fn tls_1_2_and_1_3_work_and_nothing_older() {
    let pki = Pki::new("versions");
    let (ca, ca_file) = pki.ca("ca");
    let server = pki.server("server", &ca, "courier");
    let pair = PairBuilder::default()
        .env("COURIER_TLS_CERT_FILE", server.cert.display().to_string())
        .env("COURIER_TLS_KEY_FILE", server.key.display().to_string())
        .start()
        .await;
    let addr = pair.courier.addr;
    for (version, expected) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let config = client_config(&ca_file, None, &[version], H1);
        let mut conn = Conn::open(addr, config.clone()).await.unwrap();
        assert_eq!(conn.version(), expected);
        assert_eq!(conn.stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        for i in 0..3 {
            assert_eq!(conn.process(&format!("kept alive {i}"), None).await.unwrap().status, 200);
        }
        // Without client certificates, a new connection resumes the session.
        let mut again = Conn::open(addr, config).await.unwrap();
        assert!(again.resumed(), "{expected:?}");
        assert_eq!(again.process("resumed", None).await.unwrap().status, 200);
    }
    // The same hand-made hello: as TLS 1.2 it gets a ServerHello, as TLS 1.1 a fatal
    // protocol_version alert.
    let tls12 = first_answer(addr, &client_hello([3, 3])).await;
    assert_eq!((tls12[0], tls12[5]), (0x16, 0x02), "a handshake record holding a ServerHello: {tls12:?}");
    let tls11 = first_answer(addr, &client_hello([3, 2])).await;
    assert_eq!((tls11[0], tls11[5], tls11[6]), (0x15, 2, 70), "a fatal protocol_version alert: {tls11:?}");
    // A client that speaks only h2 has nothing in common with courier.
    let h2 = one_request(addr, client_config(&ca_file, None, MODERN, &[b"h2"]), None).await;
    assert!(h2.is_err(), "{h2:?}");
    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = pair.http.post(pair.url("/api/external/process")).send_json(&support::body("plain")).await;
    assert!(plain.is_err(), "{:?}", plain.map(|r| r.status()));
    expect_handshakes(&pair, "ok", 4.0).await;
    expect_handshakes(&pair, "incompatible", 3.0).await;
    pair.stop().await;
}

#[actix_rt::test]
async fn a_rotated_certificate_and_client_ca_reach_new_connections_while_open_ones_keep_working() {
    let pki = Pki::new("rotation");
    let (server_ca, server_ca_file) = pki.ca("server-ca");
    let (client_ca, client_ca_file) = pki.ca("client-ca");
    let (next_client_ca, _) = pki.ca("next-client-ca");
    let first = pki.server("server", &server_ca, "courier first");
    let pair = start(&pki, &first, &client_ca_file, "required").await;
    let names = || vec![SanType::DnsName("beta.clients.test".try_into().unwrap())];
    let old_client = pki.client("old-client", &client_ca, names(), "beta");
    let new_client = pki.client("new-client", &next_client_ca, names(), "beta");
    let addr = pair.courier.addr;
    let old_config = client_config(&server_ca_file, Some(&old_client), MODERN, H1);
    let mut kept = Conn::open(addr, old_config.clone()).await.unwrap();
    assert_eq!(kept.process("before", None).await.unwrap().status, 200);
    assert_eq!(kept.server_certificate(), first.der);

    // A key that is not the certificate's fails the reload as a whole: named, not quoted.
    let second = Pki::new("rotation-next").server("server", &server_ca, "courier second");
    replace(&first.key, &second.key_pem);
    let deadline = Instant::now() + Duration::from_secs(10);
    while pair.metric("courier_config_reloads_total", &[("result", "failed")]).await < 1.0 {
        assert!(Instant::now() < deadline, "the mismatched key was not noticed");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    let mut during = Conn::open(addr, old_config.clone()).await.unwrap();
    assert_eq!(during.server_certificate(), first.der, "the old pair stays in use");
    assert_eq!(during.process("during", None).await.unwrap().status, 200);

    // The certificate follows, and the client CA is replaced by another.
    replace(&first.cert, &second.cert_pem);
    replace(&client_ca_file, &next_client_ca.pem());
    let new_config = client_config(&server_ca_file, Some(&new_client), MODERN, H1);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut fresh = loop {
        if let Ok(mut conn) = Conn::open(addr, new_config.clone()).await {
            if conn.server_certificate() == second.der
                && conn.process("after", None).await.is_ok_and(|r| r.status == 200)
            {
                break conn;
            }
        }
        assert!(Instant::now() < deadline, "the new certificate and CA were not picked up");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(fresh.process("again", None).await.unwrap().status, 200);
    // The connections opened before still work, with the certificate they negotiated, though
    // their client certificate's CA is no longer trusted for new ones.
    for conn in [&mut kept, &mut during] {
        assert_eq!(conn.process("still", None).await.unwrap().status, 200);
        assert_eq!(conn.server_certificate(), first.der);
    }
    assert!(one_request(addr, old_config, None).await.is_err(), "the old CA's client is refused now");
    assert!(pair.metric("courier_config_reloads_total", &[("result", "ok")]).await >= 1.0);

    let logs = pair.stop().await;
    let failed: Vec<_> = logs.lines().into_iter().filter(|l| l["event"] == "credentials_reload_failed").collect();
    assert!(!failed.is_empty());
    let errors = failed[0]["errors"].as_str().unwrap();
    assert!(errors.starts_with("COURIER_TLS_KEY_FILE: ") && errors.contains(first.key.to_str().unwrap()), "{errors}");
    let reloaded = logs.lines().into_iter().find(|l| l["event"] == "credentials_reloaded" && l["changed"] == "tls");
    assert!(reloaded.is_some(), "one reload named what changed");
    let text = logs.text();
    for pem in [&first.key_pem, &second.key_pem, &first.cert_pem, &second.cert_pem] {
        for line in pem_body_lines(pem) {
            assert!(!text.contains(line), "PEM content in the logs: {line}");
        }
    }
}

/// `courier serve` with exactly these variables (no upstream is reached: the files stop it).
fn serve_with(vars: &[(&str, &Path)]) -> (Option<i32>, String) {
    let output = support::process::serve_alone(vars.iter().copied());
    (output.status.code(), String::from_utf8(output.stderr).unwrap())
}

#[test]
fn a_bad_file_at_start_is_one_line_naming_its_variable_and_exit_code_2() {
    let pki = Pki::new("bad-files");
    let (ca, ca_file) = pki.ca("ca");
    let good = pki.server("good", &ca, "courier");
    let other = pki.server("other", &ca, "courier");
    let not_pem = pki.path("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let missing = pki.path("missing.pem");
    let (cert, key) = (good.cert.as_path(), good.key.as_path());
    // The variables set, the variable named in the one line, and what it says.
    type Case<'a> = (Vec<(&'a str, &'a Path)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("COURIER_TLS_CERT_FILE", &not_pem), ("COURIER_TLS_KEY_FILE", key)],
            "COURIER_TLS_CERT_FILE",
            "holds no PEM certificate",
        ),
        (
            vec![("COURIER_TLS_CERT_FILE", cert), ("COURIER_TLS_KEY_FILE", &missing)],
            "COURIER_TLS_KEY_FILE",
            "cannot read",
        ),
        (
            vec![("COURIER_TLS_CERT_FILE", cert), ("COURIER_TLS_KEY_FILE", cert)],
            "COURIER_TLS_KEY_FILE",
            "holds no PEM private key",
        ),
        (
            vec![("COURIER_TLS_CERT_FILE", cert), ("COURIER_TLS_KEY_FILE", &other.key)],
            "COURIER_TLS_KEY_FILE",
            "cannot be used with",
        ),
        (vec![("COURIER_TLS_CERT_FILE", cert)], "COURIER_TLS_CERT_FILE", "is set without COURIER_TLS_KEY_FILE"),
        (
            vec![("COURIER_TLS_CLIENT_CA_FILE", &ca_file)],
            "COURIER_TLS_CLIENT_CA_FILE",
            "is set without COURIER_TLS_CERT_FILE",
        ),
        (
            vec![("COURIER_TLS_CERT_FILE", cert), ("COURIER_TLS_KEY_FILE", key), ("COURIER_TLS_CLIENT_CA_FILE", key)],
            "COURIER_TLS_CLIENT_CA_FILE",
            "holds no PEM certificate",
        ),
        (
            vec![("COURIER_ADMIN_TLS_CERT_FILE", cert), ("COURIER_ADMIN_TLS_KEY_FILE", &other.key)],
            "COURIER_ADMIN_TLS_KEY_FILE",
            "cannot be used with",
        ),
    ];
    for (vars, var, problem) in cases {
        let (code, stderr) = serve_with(&vars);
        assert_eq!(code, Some(2), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with(&format!("courier: {var}: ")) && stderr.contains(problem), "{stderr}");
        for secret in pem_body_lines(&good.key_pem).into_iter().chain(pem_body_lines(&other.key_pem)) {
            assert!(!stderr.contains(secret), "{stderr}");
        }
        assert!(!stderr.contains("very-secret"), "{stderr}");
    }
}
