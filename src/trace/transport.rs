//! The OTLP exporter's HTTP client: courier's own awc client (HTTP/1.1 only, rustls with the
//! system roots plus `OTEL_EXPORTER_OTLP_CERTIFICATE`), on an arbiter of its own.
//!
//! Why not the exporter's default client: it is reqwest with its own runtime thread and, one
//! default feature away, HTTP/2; courier already carries an HTTP/1.1 client with the TLS setup
//! every other outbound request uses. The SDK calls [`HttpClient::send_bytes`] from its batch
//! thread, blocking on the future; the request crosses a bounded channel to the arbiter and the
//! answer comes back on a oneshot, so nothing on that thread needs a runtime.

use std::time::Duration;

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::{Method, Uri};
use async_trait::async_trait;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use tokio::sync::{mpsc, oneshot};

use super::export::SpanCounters;
use crate::upstream::{build_client, tls_config_with, ClientSettings};
use rustls::pki_types::CertificateDer;

/// Largest answer body read from the collector (its answers are small status messages).
const ANSWER_LIMIT: usize = 64 * 1024;
/// Exports waiting for the arbiter (the SDK sends one at a time).
const WAITING: usize = 8;

type Job = (Request<Bytes>, oneshot::Sender<Result<Response<Bytes>, HttpError>>);

/// The export arbiter and the way into it.
pub(super) struct Transport {
    arbiter: actix_rt::Arbiter,
    client: AwcExport,
}

impl Transport {
    /// Starts the arbiter with its client: `ca` trusted beside the system roots, each request
    /// bounded by `timeout`.
    pub(super) fn start(ca: &[CertificateDer<'static>], timeout: Duration, counters: SpanCounters) -> Transport {
        let (tx, mut rx) = mpsc::channel::<Job>(WAITING);
        // A CA file that does not parse was refused by the configuration already.
        let tls = tls_config_with(ca).unwrap_or_else(|_| tls_config_with(&[]).expect("system roots load"));
        let reasons = counters.clone();
        let arbiter = actix_rt::Arbiter::new();
        // awc is single-threaded: the client is built, and its task spawned, on the arbiter.
        arbiter.spawn_fn(move || {
            actix_rt::spawn(async move {
                let client = build_client(tls, &ClientSettings { pool_limit: 2, keep_alive: Duration::from_secs(30) });
                while let Some((request, reply)) = rx.recv().await {
                    let answer = send(&client, request, timeout).await;
                    // The exporter turns a status that is not 2xx into a generic error of its own:
                    // the reason recorded here is what the log line says.
                    match &answer {
                        Ok(response) if response.status().is_client_error() => reasons.set_reason("status_4xx"),
                        Ok(response) if !response.status().is_success() => reasons.set_reason("status_5xx"),
                        Ok(_) => {}
                        Err(reason) => reasons.set_reason(reason),
                    }
                    let answer = answer.map_err(HttpError::from);
                    let _ = reply.send(answer);
                }
            });
        });
        Transport { arbiter, client: AwcExport { tx, counters } }
    }

    /// The client handed to the OTLP exporter.
    pub(super) fn client(&self) -> AwcExport {
        self.client.clone()
    }

    /// Stops the arbiter (after the provider has flushed).
    pub(super) fn stop(self) {
        self.arbiter.stop();
    }
}

/// The exporter's side of the channel.
#[derive(Clone)]
pub(super) struct AwcExport {
    tx: mpsc::Sender<Job>,
    counters: SpanCounters,
}

impl std::fmt::Debug for AwcExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AwcExport")
    }
}

#[async_trait]
impl HttpClient for AwcExport {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (reply, answer) = oneshot::channel();
        if self.tx.send((request, reply)).await.is_err() {
            self.counters.set_reason("stopped");
            return Err("the export arbiter has stopped".into());
        }
        answer.await.unwrap_or_else(|_| {
            self.counters.set_reason("stopped");
            Err("the export arbiter has stopped".into())
        })
    }
}

/// One export request through awc; a failure is a bounded reason for the log (never the URL,
/// which may hold credentials, nor a header, which may hold an API key).
async fn send(
    client: &awc::Client,
    request: Request<Bytes>,
    timeout: Duration,
) -> Result<Response<Bytes>, &'static str> {
    let (head, body) = request.into_parts();
    let method = Method::from_bytes(head.method.as_str().as_bytes()).map_err(|_| "send")?;
    let uri: Uri = head.uri.to_string().parse().map_err(|_| "send")?;
    let mut outbound = client.request(method, uri).timeout(timeout);
    for (name, value) in &head.headers {
        let name = HeaderName::from_bytes(name.as_str().as_bytes()).map_err(|_| "send")?;
        let value = HeaderValue::from_bytes(value.as_bytes()).map_err(|_| "send")?;
        outbound = outbound.insert_header((name, value));
    }
    let mut answer = outbound.send_body(body).await.map_err(|error| match error {
        awc::error::SendRequestError::Timeout => "timeout",
        awc::error::SendRequestError::Connect(awc::error::ConnectError::Timeout) => "timeout",
        awc::error::SendRequestError::Connect(awc::error::ConnectError::Io(e))
            if crate::upstream::tls_failure(&e).is_some() =>
        {
            "tls"
        }
        awc::error::SendRequestError::Connect(_) => "connect",
        _ => "send",
    })?;
    let body = answer.body().limit(ANSWER_LIMIT).await.unwrap_or_default();
    let status = answer.status().as_u16();
    let mut response = Response::builder().status(status);
    for (name, value) in answer.headers() {
        response = response.header(name.as_str(), value.as_bytes());
    }
    response.body(body).map_err(|_| "send")
}
