//! `courier probe`: asks the admin listener whether this courier is ready (`/readyz`: it holds a
//! usable upstream token) or alive (`--live`: `/healthz`, it answers HTTP), prints one line and
//! exits 0 on 200, 1 otherwise. It is the container image's `HEALTHCHECK` and an exec probe: the
//! image has no shell and no curl, only courier.
//!
//! One HTTP/1.1 GET over a plain `std::net` connection with `Connection: close`, bounded by one
//! deadline across connecting, writing and reading: a health check starts no runtime and no
//! client, and never hangs past its timeout. When the admin listener serves HTTPS
//! (`COURIER_ADMIN_TLS_CERT_FILE` is set, as it is for `serve` in the same container), the GET
//! goes over TLS ([`tls`]), trusting exactly the certificate of that file. It never exits 2, which Docker reserves in health
//! checks; a bad `COURIER_ADMIN_LISTEN` is an unhealthy 1 with the configuration's own line.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::config::{self, Env};

mod tls;

/// Flags of `courier probe`.
#[derive(clap::Args, Debug, Clone)]
pub struct ProbeArgs {
    /// Ask /healthz (the process answers HTTP) instead of /readyz (it holds a usable upstream
    /// token).
    #[arg(long)]
    pub live: bool,
    /// The admin listener to ask [default: COURIER_ADMIN_LISTEN, else 127.0.0.1:9090]. An
    /// unspecified address (0.0.0.0, [::]) is asked on loopback.
    #[arg(long, value_name = "HOST:PORT")]
    pub admin: Option<SocketAddr>,
    /// Seconds to wait for the answer, connecting included.
    #[arg(long, value_name = "SECONDS", default_value = "2", value_parser = seconds)]
    pub timeout: Duration,
}

/// Runs the probe with `env` for `COURIER_ADMIN_LISTEN`: one line (stdout on 200, else
/// stderr), exit 0 on 200, 1 otherwise.
pub fn run(args: &ProbeArgs, env: &dyn Env) -> ExitCode {
    let listen = match args.admin {
        Some(addr) => addr,
        None => match config::admin_listen(env) {
            Ok(addr) => addr,
            Err(errors) => {
                eprintln!("courier probe: {errors}");
                return ExitCode::from(1);
            }
        },
    };
    let target = reachable(listen);
    let path = if args.live { "/healthz" } else { "/readyz" };
    let pinned = config::admin_tls_cert(env);
    let scheme = if pinned.is_some() { "https" } else { "http" };
    let answer = match pinned.as_deref().map(tls::pinned_config).transpose() {
        Ok(tls) => get(target, path, args.timeout, tls),
        Err(problem) => Err(ProbeError::Tls(problem)),
    };
    match answer {
        Ok(answer) if answer.status == 200 => {
            println!("courier probe: {scheme}://{target}{path}: {answer}");
            ExitCode::SUCCESS
        }
        Ok(answer) => {
            eprintln!("courier probe: {scheme}://{target}{path}: {answer}");
            ExitCode::from(1)
        }
        Err(error) => {
            eprintln!("courier probe: {scheme}://{target}{path}: {error}");
            ExitCode::from(1)
        }
    }
}

/// Seconds, whole milliseconds (so the line says `300ms`, not `299.999999ms`), 1 ms to 1 hour.
fn seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(s) if (0.001..=3600.0).contains(&s) => Ok(Duration::from_millis((s * 1000.0).round() as u64)),
        _ => Err("expected a number of seconds from 0.001 to 3600, e.g. 2 or 0.5".to_owned()),
    }
}

/// Where to ask a listener bound to `listen`: an unspecified address accepts on loopback too,
/// and is not an address to connect to.
fn reachable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port()),
        _ => listen,
    }
}

/// Why the probe got no HTTP answer.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    #[error("connection failed: {0}")]
    Io(std::io::Error),
    #[error("not an HTTP answer: {0:?}")]
    NotHttp(String),
    #[error("TLS: {0}")]
    Tls(String),
}

/// An HTTP answer: its status and the start of its body (one line, for the probe's line).
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    body: String,
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.status)?;
        if !self.body.is_empty() {
            write!(f, " {}", self.body)?;
        }
        Ok(())
    }
}

/// The most of an answer read: the admin listener's health answers are a few hundred bytes.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The most of a body printed on the probe's line.
const MAX_BODY_CHARS: usize = 300;

fn get(
    target: SocketAddr,
    path: &str,
    timeout: Duration,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> Result<Answer, ProbeError> {
    let deadline = Instant::now() + timeout;
    let left = || deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero());
    let socket = TcpStream::connect_timeout(&target, timeout).map_err(|e| match e.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => ProbeError::TimedOut(timeout),
        _ => ProbeError::Connect(e),
    })?;
    let timed_out = |e: std::io::Error| match e.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => ProbeError::TimedOut(timeout),
        _ => match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            Some(tls) => ProbeError::Tls(tls.to_string()),
            None => ProbeError::Io(e),
        },
    };
    // The timeouts are set on the socket, which the TLS stream reads and writes through.
    let mut stream: Box<dyn ReadWrite> = match tls {
        Some(config) => Box::new(tls::stream(config, socket.try_clone().map_err(ProbeError::Io)?)?),
        None => Box::new(socket.try_clone().map_err(ProbeError::Io)?),
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: courier-probe/{}\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    let Some(wait) = left() else { return Err(ProbeError::TimedOut(timeout)) };
    socket.set_write_timeout(Some(wait)).map_err(ProbeError::Io)?;
    stream.write_all(request.as_bytes()).map_err(timed_out)?;
    let mut raw = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    while raw.len() < MAX_ANSWER_BYTES && !complete(&raw) {
        let Some(wait) = left() else { return Err(ProbeError::TimedOut(timeout)) };
        socket.set_read_timeout(Some(wait)).map_err(ProbeError::Io)?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(timed_out(e)),
        }
    }
    parse(&raw)
}

/// A connection to read from and write to, plain or TLS.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Whether `raw` holds a whole answer by its `Content-Length`: a server that keeps the
/// connection open despite `Connection: close` does not make a good answer a timeout.
fn complete(raw: &[u8]) -> bool {
    let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let length = head.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim().eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().ok()).flatten()
    });
    length.is_some_and(|length| raw.len() >= head_end + 4 + length)
}

/// The status and the body's first line of a raw HTTP/1.x answer.
fn parse(raw: &[u8]) -> Result<Answer, ProbeError> {
    let text = String::from_utf8_lossy(raw);
    let status_line = text.split("\r\n").next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let status = match (parts.next(), parts.next().and_then(|s| s.parse::<u16>().ok())) {
        (Some(version), Some(status)) if version.starts_with("HTTP/1.") && (100..600).contains(&status) => status,
        _ => return Err(ProbeError::NotHttp(status_line.chars().take(80).collect())),
    };
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let body = body.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default();
    Ok(Answer { status, body: body.chars().take(MAX_BODY_CHARS).collect() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MapEnv;

    #[test]
    fn an_answer_is_its_status_and_the_first_line_of_its_body() {
        let raw = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\r\n{\"ready\":false}\n";
        assert_eq!(parse(raw).unwrap(), Answer { status: 503, body: "{\"ready\":false}".into() });
        let empty = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").unwrap();
        assert_eq!(empty.to_string(), "200");
        let long = format!("HTTP/1.1 200 OK\r\n\r\n{}", "x".repeat(1000));
        assert_eq!(parse(long.as_bytes()).unwrap().body.len(), MAX_BODY_CHARS);
    }

    #[test]
    fn an_answer_is_whole_once_its_content_length_is_read() {
        assert!(!complete(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n"));
        assert!(!complete(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nabc"));
        assert!(complete(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nabcd"));
        assert!(
            !complete(b"HTTP/1.1 200 OK\r\n\r\nabcd"),
            "without a length, the answer ends when the connection does"
        );
    }

    #[test]
    fn what_is_not_http_is_refused() {
        for raw in [&b""[..], b"SSH-2.0-OpenSSH_9.2\r\n", b"HTTP/1.1 abc\r\n\r\n", b"HTTP/2 200\r\n\r\n"] {
            assert!(matches!(parse(raw), Err(ProbeError::NotHttp(_))), "{raw:?}");
        }
    }

    #[test]
    fn an_unspecified_listener_is_asked_on_loopback() {
        assert_eq!(reachable("0.0.0.0:9090".parse().unwrap()), "127.0.0.1:9090".parse().unwrap());
        assert_eq!(reachable("[::]:9090".parse().unwrap()), "[::1]:9090".parse().unwrap());
        assert_eq!(reachable("10.1.2.3:9090".parse().unwrap()), "10.1.2.3:9090".parse().unwrap());
    }

    #[test]
    fn the_admin_address_is_read_as_serve_reads_it() {
        assert_eq!(config::admin_listen(&MapEnv::default()).unwrap(), "127.0.0.1:9090".parse().unwrap());
        let set = MapEnv::new([("COURIER_ADMIN_LISTEN", "0.0.0.0:9191")]);
        assert_eq!(config::admin_listen(&set).unwrap(), "0.0.0.0:9191".parse().unwrap());
        let bad = config::admin_listen(&MapEnv::new([("COURIER_ADMIN_LISTEN", "9090")])).unwrap_err();
        assert!(bad.to_string().starts_with("COURIER_ADMIN_LISTEN: \"9090\" is not valid"), "{bad}");
    }

    #[test]
    fn timeouts_are_positive_seconds() {
        assert_eq!(seconds("0.3").unwrap(), Duration::from_millis(300));
        assert_eq!(format!("{:?}", seconds("2").unwrap()), "2s");
        for bad in ["0", "-1", "soon", "NaN", "inf", "3601"] {
            assert!(seconds(bad).is_err(), "{bad}");
        }
    }
}
