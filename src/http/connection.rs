//! The gateway listener's connections: what actix-http answers on its own is answered in the
//! one error shape too.
//!
//! actix-http refuses a few requests before any handler sees them: a request line with a
//! target over the `http` crate's 64 KiB, more than 96 header lines, a head over its 128 KiB
//! buffer, anything that is not HTTP/1.x, and a first head that does not arrive in time. It
//! writes a bare `400`, `431` or `408` with an empty body for them, and offers no hook to
//! change that. [`Guarded`] wraps each connection's socket: when the dispatcher writes one of
//! those bare answers (no handler of courier ever writes an empty 400, 431 or 408), the guard
//! sends courier's answer instead: 431 `headers_too_large` when the request head read since the
//! last answer was over `COURIER_MAX_HEADER_BYTES`, else 400 `invalid_request`; 408
//! `request_head_timeout`; each with a request id, counted in `courier_limit_rejections_total`. Everything else passes through untouched; the
//! cost per read and write is a counter and a comparison of the first bytes.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use actix_http::error::DispatchError;
use actix_http::HttpService;
use actix_rt::net::TcpStream;
use actix_server::Server;
use actix_service::{fn_service, map_config, IntoServiceFactory, ServiceFactoryExt};
use actix_web::dev::{AppConfig, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::{App, Error};
use bytes::Bytes;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::errors::ApiError;
use super::tls::Handshakes;
use crate::request_id::RequestId;

/// The answers actix-http writes for a request it could not parse: status line and the start
/// of its head, which is always `content-length: 0` then `connection: close`.
const BARE_BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n";
const BARE_TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n";
const BARE_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n";

/// What a guard needs to know and count, shared by the connections of a worker.
#[derive(Clone)]
pub struct Guard {
    /// `COURIER_MAX_HEADER_BYTES`.
    pub max_head: usize,
    /// `courier_limit_rejections_total{limit="header_size"}`.
    pub too_large: IntCounter,
    /// `courier_limit_rejections_total{limit="malformed_head"}`.
    pub malformed: IntCounter,
    /// `COURIER_CLIENT_HEADER_TIMEOUT`.
    pub head_timeout: std::time::Duration,
    /// `courier_limit_rejections_total{limit="header_timeout"}`.
    pub slow_head: IntCounter,
}

/// A connection's socket with its bare parse-error answers replaced; see the module doc.
pub struct Guarded<IO> {
    io: IO,
    guard: Guard,
    /// Bytes read since the last answer was written: the head of the request being parsed.
    read_since_answer: usize,
    /// The answer being written in place of a bare one, and how much of it is written.
    replacement: Option<(Bytes, usize)>,
}

impl<IO> Guarded<IO> {
    /// Wraps a freshly accepted connection.
    pub fn new(io: IO, guard: Guard) -> Guarded<IO> {
        Guarded { io, guard, read_since_answer: 0, replacement: None }
    }

    /// The wrapped connection (e.g. to read its TLS session).
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// courier's answer in place of actix-http's bare one.
    fn replace(&self, bare: &[u8]) -> Bytes {
        let error = if bare.starts_with(BARE_TIMEOUT) {
            self.guard.slow_head.inc();
            ApiError::RequestHeadTimeout(self.guard.head_timeout)
        } else if bare.starts_with(BARE_TOO_LARGE) || self.read_since_answer > self.guard.max_head {
            self.guard.too_large.inc();
            ApiError::HeadersTooLarge(self.guard.max_head)
        } else {
            self.guard.malformed.inc();
            ApiError::InvalidRequest("the request is not valid HTTP/1.1".into())
        };
        answer_bytes(&error)
    }
}

/// The whole HTTP/1.1 answer for `error`, closing the connection.
fn answer_bytes(error: &ApiError) -> Bytes {
    let request_id = RequestId::generate();
    let body = error.body(&request_id);
    let status = error.status();
    let reason = status.canonical_reason().unwrap_or("");
    let head = format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nx-request-id: {}\r\n\r\n",
        status.as_u16(),
        body.len(),
        request_id.as_str(),
    );
    let mut out = Vec::with_capacity(head.len() + body.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(&body);
    debug_assert!(matches!(
        status,
        StatusCode::BAD_REQUEST | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
    ));
    Bytes::from(out)
}

impl<IO: AsyncWrite + Unpin> Guarded<IO> {
    /// Writes what is left of the replacement answer; ready when all of it is written.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.replacement {
            if *written == bytes.len() {
                self.replacement = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
        self.read_since_answer = self.read_since_answer.saturating_add(buf.filled().len() - before);
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.poll_replacement(cx))?;
        if [BARE_BAD_REQUEST, BARE_TOO_LARGE, BARE_TIMEOUT].iter().any(|bare| buf.starts_with(bare)) {
            // The bare answer is taken whole (it is the connection's last: it says close) and
            // ours is written in its place, here and in the flush that follows.
            let replacement = self.replace(buf);
            self.replacement = Some((replacement, 0));
            self.read_since_answer = 0;
            // Pending here would leave the bare answer to be offered again: report it written.
            let _ = self.poll_replacement(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        let n = ready!(Pin::new(&mut self.io).poll_write(cx, buf))?;
        self.read_since_answer = 0;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// How the gateway listener serves.
pub struct Listening {
    /// HTTP worker threads.
    pub workers: usize,
    /// Connections one worker holds at most.
    pub max_connections_per_worker: usize,
    /// Time a new connection has to send its first head.
    pub client_header_timeout: std::time::Duration,
    /// Time a client has to acknowledge a close.
    pub client_disconnect_timeout: std::time::Duration,
    /// Seconds in-flight requests get when the server stops.
    pub shutdown_grace_secs: u64,
}

/// Binds a listening socket the way actix-web does (address reuse, a backlog of 1024), so that
/// its address, port 0 resolved, is known before serving.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// The gateway's HTTP/1.1 server on `listener`: actix-web's `HttpServer` put together by hand,
/// for the one thing it does not offer, a say in the socket (every connection is [`Guarded`]),
/// over TLS when `tls` is given (see [`super::tls`]).
pub fn server<F, T>(
    listener: TcpListener,
    how: &Listening,
    guard: Guard,
    tls: Option<Handshakes>,
    app: F,
) -> io::Result<Server>
where
    F: Fn() -> App<T> + Send + Clone + 'static,
    T: ServiceFactory<ServiceRequest, Config = (), Response = ServiceResponse, Error = Error, InitError = ()> + 'static,
{
    let local = listener.local_addr()?;
    let (header_timeout, disconnect_timeout) = (how.client_header_timeout, how.client_disconnect_timeout);
    // The same HTTP service over either kind of connection (one macro, two connection types).
    macro_rules! http {
        () => {
            HttpService::build()
                .client_request_timeout(header_timeout)
                .client_disconnect_timeout(disconnect_timeout)
                .local_addr(local)
        };
    }
    let app = move || map_config(app().into_factory(), |_| AppConfig::default()).map_err(|e: Error| e.error_response());
    let builder = Server::build()
        .workers(how.workers)
        .max_concurrent_connections(how.max_connections_per_worker)
        .shutdown_timeout(how.shutdown_grace_secs)
        .disable_signals();
    let builder = match tls {
        None => builder.listen("courier-gateway", listener, move || {
            let guard = guard.clone();
            fn_service(move |io: TcpStream| {
                let peer = io.peer_addr().ok();
                std::future::ready(Ok((Guarded::new(io, guard.clone()), peer)))
            })
            .and_then(http!().h1(app()))
        }),
        Some(tls) => builder.listen("courier-gateway", listener, move || {
            let (guard, tls) = (guard.clone(), tls.clone());
            fn_service(move |io: TcpStream| {
                let peer = io.peer_addr().ok();
                let (guard, tls) = (guard.clone(), tls.clone());
                async move {
                    // A failed handshake is counted by `accept`; the connection just ends.
                    let stream =
                        tls.accept(io, peer).await.map_err(|_| DispatchError::Io(io::ErrorKind::Other.into()))?;
                    Ok((Guarded::new(stream, guard), peer))
                }
            })
            .and_then(http!().secure().on_connect_ext(super::tls::on_connect).h1(app()))
        }),
    };
    builder.map(|builder| builder.run())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn guard() -> Guard {
        let counter = |name| IntCounter::new(name, name).unwrap();
        Guard {
            max_head: 100,
            too_large: counter("t"),
            malformed: counter("m"),
            head_timeout: std::time::Duration::from_secs(5),
            slow_head: counter("s"),
        }
    }

    async fn written_for(read: &[u8], write: &[u8]) -> (String, Guard) {
        let (mut peer, ours) = tokio::io::duplex(64 * 1024);
        let guard = guard();
        let mut guarded = Guarded::new(ours, guard.clone());
        peer.write_all(read).await.unwrap();
        let mut buf = vec![0u8; read.len()];
        guarded.read_exact(&mut buf).await.unwrap();
        guarded.write_all(write).await.unwrap();
        guarded.shutdown().await.unwrap();
        let mut out = String::new();
        peer.read_to_string(&mut out).await.unwrap();
        (out, guard)
    }

    #[actix_rt::test]
    async fn bare_parse_errors_become_courier_answers() {
        let bare_400 = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\ndate: x\r\n\r\n";
        let (long, guard) = written_for(&[b'a'; 200], bare_400).await;
        assert!(long.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{long}");
        assert!(long.contains(r#""code":"headers_too_large""#) && long.contains("connection: close"), "{long}");
        assert_eq!((guard.too_large.get(), guard.malformed.get()), (1, 0));

        let (junk, guard) = written_for(b"\x16\x03\x01 not http\r\n\r\n", bare_400).await;
        assert!(junk.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{junk}");
        assert!(junk.contains(r#""code":"invalid_request""#), "{junk}");
        let body: serde_json::Value = serde_json::from_str(junk.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["success"], false);
        assert_eq!((guard.too_large.get(), guard.malformed.get()), (0, 1));

        let bare_431 =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        let (many, _) = written_for(b"GET / HTTP/1.1\r\n", bare_431).await;
        assert!(many.starts_with("HTTP/1.1 431 ") && many.contains("headers_too_large"), "{many}");

        let bare_408 = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        let (slow, guard) = written_for(b"GET / HT", bare_408).await;
        assert!(slow.starts_with("HTTP/1.1 408 ") && slow.contains("request_head_timeout"), "{slow}");
        assert_eq!(guard.slow_head.get(), 1);
    }

    #[actix_rt::test]
    async fn every_other_write_passes_through() {
        let answer = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n{\"a\":\"bcd\"}";
        let (out, guard) = written_for(&[b'a'; 200], answer).await;
        assert_eq!(out.as_bytes(), answer);
        assert_eq!((guard.too_large.get(), guard.malformed.get()), (0, 0));
    }
}
