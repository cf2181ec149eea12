//! courier speaks HTTP/1.1 to the upstream even when the upstream prefers HTTP/2, so the `h2`
//! crate's code (RUSTSEC-2026-0258, no patched 0.3 release) never runs: a TLS upstream written
//! here with rustls offers ALPN `h2` first, then `http/1.1`, records what each connection
//! negotiated and the request line of each request, and answers the token endpoint and the
//! process route. A client offering `h2` gets it from this upstream (checked first), so
//! courier's connections being `http/1.1` is courier's choice, for both of its clients: the
//! token fetcher's and the workers'.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use support::process::{signal, wait_exit, Serving};
use support::read_answer;

/// What one TLS connection negotiated, and the request lines sent on it.
#[derive(Clone, Debug)]
struct Connection {
    alpn: Option<String>,
    requests: Vec<String>,
}

/// A TLS upstream that prefers HTTP/2 but answers HTTP/1.1 only (enough to see what a client
/// chose), on a thread per connection.
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Connection>>>,
    stopping: Arc<AtomicBool>,
}

impl Upstream {
    fn start(config: Arc<rustls::ServerConfig>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        let (accept_seen, accept_stopping) = (seen.clone(), stopping.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if accept_stopping.load(Ordering::SeqCst) {
                    break;
                }
                let (config, seen) = (config.clone(), accept_seen.clone());
                std::thread::spawn(move || serve(stream.unwrap(), config, seen));
            }
        });
        Upstream { addr, seen, stopping }
    }

    fn connections(&self) -> Vec<Connection> {
        self.seen.lock().unwrap().clone()
    }

    fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accepting thread
    }
}

/// One connection: the handshake, then HTTP/1.1 requests until the client closes it.
fn serve(stream: TcpStream, config: Arc<rustls::ServerConfig>, seen: Arc<Mutex<Vec<Connection>>>) {
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut tls = rustls::StreamOwned::new(rustls::ServerConnection::new(config).unwrap(), stream);
    while tls.conn.is_handshaking() {
        if tls.conn.complete_io(&mut tls.sock).is_err() {
            return;
        }
    }
    let alpn = tls.conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned());
    let index = {
        let mut seen = seen.lock().unwrap();
        seen.push(Connection { alpn, requests: Vec::new() });
        seen.len() - 1
    };
    let mut reader = BufReader::new(tls);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end().to_owned();
        seen.lock().unwrap()[index].requests.push(line.clone());
        let mut length = 0;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end().to_ascii_lowercase();
            if header.is_empty() {
                break;
            }
            if let Some(value) = header.strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
            assert!(!header.starts_with("transfer-encoding"), "this upstream reads sized bodies only: {header}");
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let answer = if line.contains("/oauth/token ") {
            json!({"access_token": "token-over-http-1-1", "token_type": "Bearer", "expires_in": 3600})
        } else {
            json!({"success": true, "result": {"processed_data": "OVER HTTP/1.1"}, "request_id": "up_1"})
        }
        .to_string();
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        let tls = reader.get_mut();
        if tls.write_all(response.as_bytes()).and_then(|()| tls.flush()).is_err() {
            return;
        }
    }
}

/// A CA and a server certificate for 127.0.0.1; the CA's PEM is written to a file for
/// `EXTERNAL_API_CA_FILE`, removed on drop.
struct Pki {
    dir: PathBuf,
    ca_file: PathBuf,
    ca: CertificateDer<'static>,
    server: rustls::ServerConfig,
}

impl Pki {
    fn new() -> Pki {
        let dir = std::env::temp_dir().join(format!("courier-http1-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().signed_by(&key, &ca).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
            )
            .unwrap();
        // HTTP/2 first: the server's preference decides when a client offers both.
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let ca = CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap();
        Pki { dir, ca_file, ca, server }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What a client offering `alpn` negotiates with the upstream.
fn negotiate(addr: SocketAddr, ca: &CertificateDer<'static>, alpn: &[&[u8]]) -> Option<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::try_from("127.0.0.1").unwrap().to_owned();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut sock = TcpStream::connect(addr).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).unwrap();
    }
    conn.alpn_protocol().map(<[u8]>::to_vec)
}

#[actix_rt::test]
async fn courier_negotiates_http_1_1_with_an_upstream_that_prefers_h2() {
    let pki = Pki::new();
    let upstream = Upstream::start(Arc::new(pki.server.clone()));
    // The upstream gives h2 to whoever offers it.
    assert_eq!(negotiate(upstream.addr, &pki.ca, &[b"h2", b"http/1.1"]).as_deref(), Some(&b"h2"[..]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream.connections().is_empty() {
        assert!(Instant::now() < deadline, "the upstream never saw the check's connection");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    upstream.seen.lock().unwrap().clear();

    let courier = Serving::start(&[
        ("EXTERNAL_API_BASE_URL", format!("https://{}/v2", upstream.addr)),
        ("EXTERNAL_API_CA_FILE", pki.ca_file.display().to_string()),
        ("EXTERNAL_API_KEY", "api-key-http1".into()),
        ("EXTERNAL_OAUTH_CLIENT_ID", "client-http1".into()),
        ("EXTERNAL_OAUTH_CLIENT_SECRET", "secret-http1".into()),
        ("EXTERNAL_API_CACHE_TTL", "0".into()),
        ("COURIER_WORKERS", "1".into()),
        ("COURIER_SHUTDOWN_GRACE", "5".into()),
    ]);
    let http = awc::Client::builder().timeout(Duration::from_secs(20)).finish();
    let process = format!("http://{}/api/external/process", courier.gateway);
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let answer = read_answer(http.post(&process).send_json(&json!({"data": {"input": "x"}})).await.unwrap()).await;
        // 503 until the token fetcher has its first token.
        if answer.status != 503 {
            break answer;
        }
        assert!(Instant::now() < deadline, "no token within 10 s: {:?}", upstream.connections());
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(answer.status, 200, "{answer:?} {:?}", upstream.connections());
    assert_eq!(answer.body["result"]["processed_data"], "OVER HTTP/1.1");

    let mut courier = courier;
    signal(&courier.child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut courier.child).code(), Some(0));
    upstream.stop();
    let connections = upstream.connections();
    assert!(connections.len() >= 2, "the token fetcher and the worker each connected: {connections:?}");
    for connection in &connections {
        assert_eq!(connection.alpn.as_deref(), Some("http/1.1"), "{connections:?}");
        assert!(connection.requests.iter().all(|line| line.ends_with(" HTTP/1.1")), "{connections:?}");
    }
    let requests: Vec<&String> = connections.iter().flat_map(|c| &c.requests).collect();
    assert!(requests.iter().any(|line| *line == "POST /v2/oauth/token HTTP/1.1"), "{requests:?}");
    assert!(requests.iter().any(|line| *line == "POST /v2/process HTTP/1.1"), "{requests:?}");
}
