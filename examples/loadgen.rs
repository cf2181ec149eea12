//! A small HTTP/1.1 load generator for `bench/run`: keep-alive connections, closed loop (as
//! fast as answers come) or fixed rate (each request has an intended send time; when its
//! connection was still busy at that time, latency is counted from it, so a stall is not hidden
//! by requests that were never sent: no coordinated omission). One thread, like `wrk -t1`.
//!
//! ```text
//! loadgen URL [--connections 64] [--seconds 10] [--rate 0] [--method POST] [--body TEXT]
//!             [--header 'Name: value']... [--unique] [--idle]
//!             [--ca FILE] [--close] [--no-resume]
//! ```
//! With `--unique`, `{n}` in the body is replaced by a counter (distinct requests). With
//! `--idle`, it opens the connections, sends one request on each, prints `ready` and keeps
//! them open until killed. An `https://` URL is reached over TLS (rustls, ring), trusting the CA
//! certificates of `--ca`; `--no-resume` makes every handshake a full one (no session
//! resumption). With `--close`, every request goes on a new connection (`Connection: close`)
//! and its latency includes connecting and the handshake. Prints one JSON line of results.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A connection, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}
type Stream = Box<dyn Io>;

/// TLS handshakes made, and how many of them resumed a session.
static HANDSHAKES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static RESUMED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

struct Options {
    addr: String,
    path: String,
    host: String,
    connections: usize,
    seconds: f64,
    rate: f64,
    method: String,
    body: String,
    headers: Vec<String>,
    unique: bool,
    idle: bool,
    tls: Option<(Arc<rustls::ClientConfig>, rustls::pki_types::ServerName<'static>)>,
    close: bool,
}

fn options() -> Options {
    let mut args = std::env::args().skip(1);
    let url = args.next().expect("usage: loadgen URL [options]");
    let https = url.starts_with("https://");
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")).expect("http:// or https:// URL");
    let (host, path) =
        rest.split_once('/').map(|(h, p)| (h.to_owned(), format!("/{p}"))).unwrap_or((rest.to_owned(), "/".into()));
    let mut o = Options {
        addr: host.clone(),
        path,
        host,
        connections: 64,
        seconds: 10.0,
        rate: 0.0,
        method: "GET".into(),
        body: String::new(),
        headers: Vec::new(),
        unique: false,
        idle: false,
        tls: None,
        close: false,
    };
    let (mut ca, mut resume) = (None, true);
    while let Some(flag) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--connections" => o.connections = value().parse().unwrap(),
            "--seconds" => o.seconds = value().parse().unwrap(),
            "--rate" => o.rate = value().parse().unwrap(),
            "--method" => o.method = value(),
            "--body" => o.body = value(),
            "--header" => o.headers.push(value()),
            "--unique" => o.unique = true,
            "--idle" => o.idle = true,
            "--ca" => ca = Some(value()),
            "--close" => o.close = true,
            "--no-resume" => resume = false,
            other => panic!("unknown option {other}"),
        }
    }
    if https {
        o.tls = Some(tls_config(&o.host, ca.as_deref(), resume));
    }
    if o.close {
        o.headers.push("Connection: close".into());
    }
    o
}

/// A client configuration trusting the CA certificates of `ca`, for the host of the URL.
fn tls_config(
    host: &str,
    ca: Option<&str>,
    resume: bool,
) -> (Arc<rustls::ClientConfig>, rustls::pki_types::ServerName<'static>) {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca.expect("https needs --ca FILE")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    let name = host.rsplit_once(':').map_or(host, |(name, _)| name).to_owned();
    (Arc::new(config), rustls::pki_types::ServerName::try_from(name).expect("a host name"))
}

#[derive(Default)]
struct Results {
    latencies_us: Vec<u32>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
    counter: u64,
}

fn request(o: &Options, results: &RefCell<Results>) -> Vec<u8> {
    let body = if o.unique {
        let mut r = results.borrow_mut();
        r.counter += 1;
        o.body.replace("{n}", &r.counter.to_string())
    } else {
        o.body.clone()
    };
    let mut head = format!("{} {} HTTP/1.1\r\nHost: {}\r\n", o.method, o.path, o.host);
    for h in &o.headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    if !body.is_empty() || o.method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

/// Reads one response; returns its status, or None when the connection ended.
async fn response(stream: &mut Stream, buf: &mut Vec<u8>) -> Option<(u16, bool)> {
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let status: u16 = head.get(9..12)?.parse().ok()?;
    let lower = head.to_ascii_lowercase();
    let length: usize =
        lower.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    let close = lower.contains("connection: close");
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some((status, close))
}

async fn connect(o: &Options) -> Option<Stream> {
    let stream = TcpStream::connect(&o.addr).await.ok()?;
    stream.set_nodelay(true).ok()?;
    match &o.tls {
        None => Some(Box::new(stream)),
        Some((config, name)) => {
            let tls = tokio_rustls::TlsConnector::from(config.clone()).connect(name.clone(), stream).await.ok()?;
            HANDSHAKES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                RESUMED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Some(Box::new(tls))
        }
    }
}

async fn run_connection(o: Rc<Options>, results: Rc<RefCell<Results>>, index: usize, start: Instant, end: Instant) {
    let mut stream = None;
    let mut buf = Vec::with_capacity(16 * 1024);
    // Fixed rate: this connection's share, spread evenly across connections.
    let interval = (o.rate > 0.0).then(|| Duration::from_secs_f64(o.connections as f64 / o.rate));
    let offset = interval.map_or(Duration::ZERO, |i| i.mul_f64(index as f64 / o.connections as f64));
    let mut k = 0u32;
    let mut free_at = start;
    loop {
        let intended = match interval {
            Some(i) => start + offset + i * k,
            None => Instant::now(),
        };
        if intended >= end {
            break;
        }
        k += 1;
        if interval.is_some() {
            tokio::time::sleep_until(intended.into()).await;
        }
        // A new connection per request: its latency includes connecting and the handshake.
        let connecting = Instant::now();
        if stream.is_none() {
            stream = connect(&o).await;
            if stream.is_none() {
                results.borrow_mut().errors += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        }
        let bytes = request(&o, &results);
        // Latency counts from the intended time when this connection was still busy then
        // (the wait is the target's doing), else from the actual send (a timer waking late
        // is the load generator's doing, not the target's).
        let sent = if o.close { connecting } else { Instant::now() };
        let from = if free_at <= intended { sent } else { intended };
        let s = stream.as_mut().expect("connected");
        let answered = match s.write_all(&bytes).await {
            Ok(()) => response(s, &mut buf).await,
            Err(_) => None,
        };
        let mut r = results.borrow_mut();
        match answered {
            Some((status, close)) => {
                free_at = Instant::now();
                r.latencies_us.push(from.elapsed().as_micros().min(u32::MAX as u128) as u32);
                *r.statuses.entry(status).or_default() += 1;
                if close {
                    stream = None;
                }
            }
            None => {
                free_at = Instant::now();
                r.errors += 1;
                stream = None;
            }
        }
    }
}

async fn idle(o: Rc<Options>) {
    let results = RefCell::new(Results::default());
    let mut open = Vec::with_capacity(o.connections);
    let mut buf = Vec::new();
    for _ in 0..o.connections {
        let Some(mut stream) = connect(&o).await else { continue };
        let bytes = request(&o, &results);
        if stream.write_all(&bytes).await.is_ok() && response(&mut stream, &mut buf).await.is_some() {
            open.push(stream);
        }
    }
    println!("ready {}", open.len());
    std::future::pending::<()>().await;
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    f64::from(sorted[i]) / 1000.0
}

fn main() {
    let o = Rc::new(options());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        if o.idle {
            idle(o).await;
            return;
        }
        let results = Rc::new(RefCell::new(Results::default()));
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(o.seconds);
        let tasks: Vec<_> = (0..o.connections)
            .map(|i| tokio::task::spawn_local(run_connection(o.clone(), results.clone(), i, start, end)))
            .collect();
        for task in tasks {
            let _ = task.await;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let mut r = results.borrow_mut();
        r.latencies_us.sort_unstable();
        let n = r.latencies_us.len();
        let statuses: BTreeMap<String, u64> = r.statuses.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        println!(
            "{}",
            serde_json::json!({
                "requests": n,
                "seconds": elapsed,
                "rps": n as f64 / elapsed,
                "p50_ms": percentile(&r.latencies_us, 0.50),
                "p99_ms": percentile(&r.latencies_us, 0.99),
                "max_ms": percentile(&r.latencies_us, 1.0),
                "statuses": statuses,
                "errors": r.errors,
                "tls_handshakes": HANDSHAKES.load(std::sync::atomic::Ordering::Relaxed),
                "tls_resumed": RESUMED.load(std::sync::atomic::Ordering::Relaxed),
            })
        );
    });
}
