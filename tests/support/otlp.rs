//! An OTLP/HTTP trace receiver in this process, on loopback, for the tracing tests.
//!
//! No OpenTelemetry Collector or Jaeger can be installed here (issue 21's design, §6.1), so the
//! tests receive courier's spans themselves. The receiver decodes each `POST /v1/traces` body
//! with the types `opentelemetry-proto` generates from the official .proto files, so a span that
//! reaches [`Otlp::spans`] is one a real collector would have read the same way. Its modes stand
//! in for a collector that fails (`Status`) or hangs (`Hang`); stopping it stands for one that is
//! down.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prost::Message;
use serde_json::Value;

/// The largest body accepted, compressed or not: actix's default of 256 KiB would refuse a
/// large batch before the receiver saw it.
const BODY_LIMIT: usize = 16 << 20;

/// How the receiver answers `POST /v1/traces`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Decode and keep the spans; 200 with an empty `ExportTraceServiceResponse`.
    #[default]
    Accept,
    /// Answer this status without reading the spans (a collector that fails).
    Status(u16),
    /// Never answer (a collector that hangs); the connection is dropped by [`Otlp::stop`].
    Hang,
}

/// A link of a received span.
#[derive(Clone, Debug)]
pub struct GotLink {
    /// The linked span's trace id, 32 lowercase hex digits.
    pub trace_id: String,
    /// The linked span's id, 16 lowercase hex digits.
    pub span_id: String,
    /// The link's attributes.
    pub attrs: BTreeMap<String, Value>,
}

/// An event of a received span.
#[derive(Clone, Debug)]
pub struct GotEvent {
    /// The event's name.
    pub name: String,
    /// The event's attributes.
    pub attrs: BTreeMap<String, Value>,
}

/// One received span, flattened with its resource.
#[derive(Clone, Debug)]
pub struct Got {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// The parent span's id, or "" for a root.
    pub parent: String,
    /// The W3C tracestate the span was exported with.
    pub trace_state: String,
    /// The span's name.
    pub name: String,
    /// proto SpanKind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    /// Attributes: strings, integers, doubles and booleans as JSON (arrays, maps and bytes
    /// become JSON arrays, objects and hex strings).
    pub attrs: BTreeMap<String, Value>,
    /// The span's links.
    pub links: Vec<GotLink>,
    /// The span's events.
    pub events: Vec<GotEvent>,
    /// 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    /// The status description ("" unless an error says why).
    pub status_message: String,
    /// Start, in nanoseconds since the Unix epoch.
    pub start_ns: u64,
    /// End, in nanoseconds since the Unix epoch.
    pub end_ns: u64,
    /// The span's flags (bit 0: sampled; bits 8 and 9: whether the parent is remote).
    pub flags: u32,
    /// The instrumentation scope's name.
    pub scope: String,
    /// The resource's attributes, each value as text.
    pub resource: BTreeMap<String, String>,
}

impl Got {
    /// A string attribute.
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attrs.get(key).and_then(Value::as_str)
    }

    /// An integer attribute.
    pub fn attr_i64(&self, key: &str) -> Option<i64> {
        self.attrs.get(key).and_then(Value::as_i64)
    }

    /// A double attribute.
    pub fn attr_f64(&self, key: &str) -> Option<f64> {
        self.attrs.get(key).and_then(Value::as_f64)
    }

    /// A boolean attribute.
    pub fn attr_bool(&self, key: &str) -> Option<bool> {
        self.attrs.get(key).and_then(Value::as_bool)
    }
}

/// `Got::kind` of a server span (OTLP's `SpanKind`).
pub const SERVER: i32 = 2;
/// `Got::kind` of a client span.
pub const CLIENT: i32 = 3;
/// `Got::kind` of a consumer span.
pub const CONSUMER: i32 = 5;
/// `Got::status_code` of a span marked failed.
pub const ERROR: i32 = 2;

/// The one span of `spans`; panics naming `what` (and listing them) otherwise.
pub fn only<'a>(spans: Vec<&'a Got>, what: &str) -> &'a Got {
    assert_eq!(spans.len(), 1, "one {what}: {spans:#?}");
    spans[0]
}

/// The spans whose parent is `parent` (same trace), in order of start.
pub fn children<'a>(spans: &'a [Got], parent: &Got) -> Vec<&'a Got> {
    let mut found: Vec<&Got> =
        spans.iter().filter(|s| s.trace_id == parent.trace_id && s.parent == parent.span_id).collect();
    found.sort_by_key(|s| s.start_ns);
    found
}

/// The spans of one trace, in order of start.
pub fn in_trace<'a>(spans: &'a [Got], trace_id: &str) -> Vec<&'a Got> {
    let mut found: Vec<&Got> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    found.sort_by_key(|s| s.start_ns);
    found
}

/// The spans with this name, in order of start.
pub fn named<'a>(spans: &'a [Got], name: &str) -> Vec<&'a Got> {
    let mut found: Vec<&Got> = spans.iter().filter(|s| s.name == name).collect();
    found.sort_by_key(|s| s.start_ns);
    found
}

/// Splits a `traceparent` header into (trace id, parent id, flags); `None` unless it has the
/// version 00 shape.
pub fn split_traceparent(header: &str) -> Option<(&str, &str, &str)> {
    let mut parts = header.split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (version == "00" && parts.next().is_none() && hex(trace, 32) && hex(parent, 16) && hex(flags, 2))
        .then_some((trace, parent, flags))
}

#[derive(Default)]
struct State {
    mode: Mode,
    spans: Vec<Got>,
    requests: usize,
    decode_failures: usize,
    headers: Vec<(String, String)>,
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panicking test thread must not hide what was received from the others.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The running receiver.
pub struct Otlp {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Shared,
    handle: ServerHandle,
}

impl Otlp {
    /// Starts a receiver on a free loopback port.
    pub async fn start(mode: Mode) -> Otlp {
        Self::start_on("127.0.0.1:0".parse().unwrap(), mode).await
    }

    /// Starts a receiver on `addr` (e.g. the port of one stopped before: a collector coming back).
    pub async fn start_on(addr: SocketAddr, mode: Mode) -> Otlp {
        let state: Shared = Arc::new(Mutex::new(State { mode, ..State::default() }));
        let data = web::Data::new(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(BODY_LIMIT))
                .route("/v1/traces", web::post().to(traces))
        })
        .workers(1)
        .disable_signals()
        .bind(addr)
        .unwrap_or_else(|err| panic!("the OTLP receiver cannot bind {addr}: {err}"));
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Otlp { addr, state, handle }
    }

    /// The URL for `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    /// Changes how the next requests are answered.
    pub fn set_mode(&self, mode: Mode) {
        lock(&self.state).mode = mode;
    }

    /// Every span received so far (in `Accept` mode), in order of arrival.
    pub fn spans(&self) -> Vec<Got> {
        lock(&self.state).spans.clone()
    }

    /// Requests received, in any mode.
    pub fn requests(&self) -> usize {
        lock(&self.state).requests
    }

    /// Requests answered 400 because their body did not decode.
    pub fn decode_failures(&self) -> usize {
        lock(&self.state).decode_failures
    }

    /// The headers of the last request (lowercase names, in the order received).
    pub fn headers_seen(&self) -> Vec<(String, String)> {
        lock(&self.state).headers.clone()
    }

    /// Waits (polling every 20 ms, for at most 10 s) until `f` holds for the spans received, and
    /// returns them; panics naming `what` and the spans it has.
    pub async fn wait_for<F: Fn(&[Got]) -> bool>(&self, what: &str, f: F) -> Vec<Got> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let spans = self.spans();
            if f(&spans) {
                return spans;
            }
            if Instant::now() >= deadline {
                let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
                panic!(
                    "the OTLP receiver did not get {what} within 10 s: {} requests, {} undecodable, spans {names:?}",
                    self.requests(),
                    self.decode_failures()
                );
            }
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the server at once, dropping its connections (hanging ones too).
    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

async fn traces(req: HttpRequest, body: web::Bytes, state: web::Data<Shared>) -> HttpResponse {
    let mode = {
        let mut state = lock(&state);
        state.requests += 1;
        state.headers = req
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
            .collect();
        state.mode
    };
    match mode {
        Mode::Accept => {}
        Mode::Status(code) => return HttpResponse::build(StatusCode::from_u16(code).unwrap()).finish(),
        Mode::Hang => std::future::pending::<()>().await,
    }
    let encoding = req.headers().get("content-encoding").map(|v| v.as_bytes().to_ascii_lowercase());
    let decoded = match encoding.as_deref() {
        None | Some(b"identity") => Ok(body.to_vec()),
        Some(b"gzip") => gunzip(&body),
        Some(other) => Err(format!("unsupported content-encoding {:?}", String::from_utf8_lossy(other))),
    }
    .and_then(|bytes| ExportTraceServiceRequest::decode(bytes.as_slice()).map_err(|err| err.to_string()));
    match decoded {
        Err(problem) => {
            lock(&state).decode_failures += 1;
            HttpResponse::BadRequest().body(problem)
        }
        Ok(request) => {
            lock(&state).spans.extend(flatten(request));
            HttpResponse::Ok()
                .content_type("application/x-protobuf")
                .body(ExportTraceServiceResponse::default().encode_to_vec())
        }
    }
}

fn gunzip(body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(BODY_LIMIT as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|err| format!("gzip: {err}"))?;
    if out.len() > BODY_LIMIT {
        return Err(format!("gzip body inflates past {BODY_LIMIT} bytes"));
    }
    Ok(out)
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<Got> {
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let resource: BTreeMap<String, String> = resource_spans
            .resource
            .map(|r| attrs(r.attributes))
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
            .collect();
        for scope_spans in resource_spans.scope_spans {
            let scope = scope_spans.scope.map(|s| s.name).unwrap_or_default();
            for span in scope_spans.spans {
                let status = span.status.unwrap_or_default();
                spans.push(Got {
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent: hex::encode(&span.parent_span_id),
                    trace_state: span.trace_state,
                    name: span.name,
                    kind: span.kind,
                    attrs: attrs(span.attributes),
                    links: span
                        .links
                        .into_iter()
                        .map(|l| GotLink {
                            trace_id: hex::encode(&l.trace_id),
                            span_id: hex::encode(&l.span_id),
                            attrs: attrs(l.attributes),
                        })
                        .collect(),
                    events: span
                        .events
                        .into_iter()
                        .map(|e| GotEvent { name: e.name, attrs: attrs(e.attributes) })
                        .collect(),
                    status_code: status.code,
                    status_message: status.message,
                    start_ns: span.start_time_unix_nano,
                    end_ns: span.end_time_unix_nano,
                    flags: span.flags,
                    scope: scope.clone(),
                    resource: resource.clone(),
                });
            }
        }
    }
    spans
}

fn attrs(list: Vec<KeyValue>) -> BTreeMap<String, Value> {
    list.into_iter().map(|kv| (kv.key, kv.value.map_or(Value::Null, json))).collect()
}

fn json(value: AnyValue) -> Value {
    match value.value {
        None | Some(any_value::Value::StringValueStrindex(_)) => Value::Null,
        Some(any_value::Value::StringValue(s)) => Value::String(s),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(b),
        Some(any_value::Value::IntValue(i)) => Value::from(i),
        Some(any_value::Value::DoubleValue(d)) => Value::from(d),
        Some(any_value::Value::BytesValue(b)) => Value::String(hex::encode(b)),
        Some(any_value::Value::ArrayValue(a)) => Value::Array(a.values.into_iter().map(json).collect()),
        Some(any_value::Value::KvlistValue(l)) => Value::Object(attrs(l.values).into_iter().collect()),
    }
}
