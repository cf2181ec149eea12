//! The test OTLP receiver on its own: what it decodes from a real OTLP/HTTP protobuf request
//! (plain and gzip), and how it fails, hangs and comes back. The tracing tests trust it, so it
//! is checked here against requests built from the official message types.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use awc::error::SendRequestError;
use awc::http::StatusCode;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use serde_json::json;
use support::otlp::{children, in_trace, named, split_traceparent, Mode, Otlp};

const ROOT: [u8; 8] = [0xa1, 0, 0, 0, 0, 0, 0, 0x01];
const CHILD: [u8; 8] = [0xb2, 0, 0, 0, 0, 0, 0, 0x02];
const LINKED_TRACE: [u8; 16] = [0xcc; 16];
const LINKED_SPAN: [u8; 8] = [0xdd; 8];

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

fn text(key: &str, value: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.into()))
}

/// One resource, one scope, a server span and its client child (with a link and an error).
fn export_request(trace: [u8; 16]) -> ExportTraceServiceRequest {
    let root = Span {
        trace_id: trace.to_vec(),
        span_id: ROOT.to_vec(),
        name: "POST /api/external/process".into(),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: 1_000,
        end_time_unix_nano: 9_000,
        flags: 0x301,
        attributes: vec![
            text("http.route", "/api/external/process"),
            kv("http.response.status_code", any_value::Value::IntValue(200)),
            kv("courier.budget.wait_s", any_value::Value::DoubleValue(0.25)),
            kv("courier.coalesced", any_value::Value::BoolValue(false)),
        ],
        ..Default::default()
    };
    let child = Span {
        trace_id: trace.to_vec(),
        span_id: CHILD.to_vec(),
        parent_span_id: ROOT.to_vec(),
        trace_state: "vendor=1".into(),
        name: "POST".into(),
        kind: span::SpanKind::Client as i32,
        start_time_unix_nano: 2_000,
        end_time_unix_nano: 8_000,
        flags: 0x101,
        attributes: vec![kv("http.request.resend_count", any_value::Value::IntValue(1)), text("error.type", "503")],
        links: vec![span::Link {
            trace_id: LINKED_TRACE.to_vec(),
            span_id: LINKED_SPAN.to_vec(),
            attributes: vec![text("courier.link", "load")],
            ..Default::default()
        }],
        events: vec![span::Event { name: "retry".into(), time_unix_nano: 5_000, ..Default::default() }],
        status: Some(Status { code: 2, message: "upstream 503".into() }),
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![text("service.name", "courier-test"), kv("replica", any_value::Value::IntValue(3))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope { name: "courier".into(), ..Default::default() }),
                spans: vec![child, root],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn client() -> awc::Client {
    awc::Client::builder().timeout(Duration::from_secs(10)).finish()
}

/// Posts a body as an OTLP exporter would; returns the status and the answer's body.
async fn post(otlp: &Otlp, body: Vec<u8>, headers: &[(&str, &str)]) -> (StatusCode, Option<String>, Vec<u8>) {
    let mut request = client().post(otlp.endpoint()).insert_header(("content-type", "application/x-protobuf"));
    for header in headers {
        request = request.insert_header(*header);
    }
    let mut response = request.send_body(body).await.expect("the receiver answers");
    let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    let body = response.body().await.expect("answer body").to_vec();
    (response.status(), content_type, body)
}

#[actix_rt::test]
async fn decodes_spans_plain_and_gzip() {
    let otlp = Otlp::start(Mode::Accept).await;
    let plain_trace = [0x11; 16];
    let (status, content_type, body) = post(&otlp, export_request(plain_trace).encode_to_vec(), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type.as_deref(), Some("application/x-protobuf"));
    assert_eq!(ExportTraceServiceResponse::decode(body.as_slice()).unwrap(), ExportTraceServiceResponse::default());

    let spans = otlp.spans();
    assert_eq!(spans.len(), 2, "{spans:?}");
    let trace = hex::encode(plain_trace);
    let root = named(&spans, "POST /api/external/process")[0];
    assert_eq!(
        (root.trace_id.as_str(), root.span_id.as_str(), root.parent.as_str()),
        (trace.as_str(), "a100000000000001", "")
    );
    assert_eq!((root.kind, root.status_code, root.flags), (2, 0, 0x301));
    assert_eq!((root.start_ns, root.end_ns), (1_000, 9_000));
    assert_eq!(root.attr_str("http.route"), Some("/api/external/process"));
    assert_eq!(root.attr_i64("http.response.status_code"), Some(200));
    assert_eq!(root.attrs["courier.budget.wait_s"], json!(0.25));
    assert_eq!(root.attrs["courier.coalesced"], json!(false));
    assert_eq!(root.attr_str("http.response.status_code"), None, "an int is not a string");
    assert_eq!(root.resource["service.name"], "courier-test");
    assert_eq!(root.resource["replica"], "3");
    assert_eq!(root.scope, "courier");

    let kids = children(&spans, root);
    assert_eq!(kids.len(), 1, "{spans:?}");
    let child = kids[0];
    assert_eq!((child.name.as_str(), child.parent.as_str(), child.kind), ("POST", "a100000000000001", 3));
    assert_eq!((child.status_code, child.status_message.as_str()), (2, "upstream 503"));
    assert_eq!(child.trace_state, "vendor=1");
    assert_eq!(child.attr_i64("http.request.resend_count"), Some(1));
    assert_eq!(child.attr_str("error.type"), Some("503"));
    assert_eq!(child.links.len(), 1);
    let link = &child.links[0];
    assert_eq!((link.trace_id.as_str(), link.span_id.as_str()), ("cc".repeat(16).as_str(), "dd".repeat(8).as_str()));
    assert_eq!(link.attrs["courier.link"], json!("load"));
    assert_eq!(child.events.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["retry"]);
    assert!(children(&spans, child).is_empty());

    let gzip_trace = [0x22; 16];
    let body = gzip(&export_request(gzip_trace).encode_to_vec());
    let (status, _, _) = post(&otlp, body, &[("content-encoding", "gzip"), ("x-otlp-key", "k1")]).await;
    assert_eq!(status, StatusCode::OK);
    let spans = otlp.wait_for("both traces", |s| s.len() == 4).await;
    let gzipped = in_trace(&spans, &hex::encode(gzip_trace));
    assert_eq!(gzipped.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["POST /api/external/process", "POST"]);
    assert_eq!(gzipped[1].parent, gzipped[0].span_id);
    assert_eq!(gzipped[1].attrs, named(&spans, "POST")[0].attrs, "gzip decodes to the same spans");
    let headers = otlp.headers_seen();
    for expected in [("content-encoding", "gzip"), ("x-otlp-key", "k1"), ("content-type", "application/x-protobuf")] {
        assert!(headers.iter().any(|(k, v)| (k.as_str(), v.as_str()) == expected), "{expected:?} in {headers:?}");
    }
    assert_eq!((otlp.requests(), otlp.decode_failures()), (2, 0));
    otlp.stop().await;
}

#[actix_rt::test]
async fn failing_mode_and_undecodable_bodies() {
    let otlp = Otlp::start(Mode::Status(503)).await;
    let valid = export_request([0x33; 16]).encode_to_vec();
    let (status, _, _) = post(&otlp, valid.clone(), &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(otlp.spans().is_empty(), "a failing receiver keeps nothing");

    otlp.set_mode(Mode::Accept);
    let (status, _, body) = post(&otlp, b"not protobuf at all".to_vec(), &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(&body));
    let (status, _, _) = post(&otlp, valid.clone(), &[("content-encoding", "gzip")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a body that says gzip and is not");
    assert_eq!((otlp.requests(), otlp.decode_failures()), (3, 2));
    assert!(otlp.spans().is_empty());

    let (status, _, _) = post(&otlp, valid, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(otlp.spans().len(), 2);
    otlp.stop().await;
}

#[actix_rt::test]
async fn a_hanging_receiver_answers_nothing_until_stopped_then_comes_back_on_its_port() {
    let otlp = Otlp::start(Mode::Hang).await;
    let addr = otlp.addr;
    let body = export_request([0x44; 16]).encode_to_vec();
    let hanging = awc::Client::builder().timeout(Duration::from_millis(300)).finish();
    let answer = hanging.post(otlp.endpoint()).send_body(body.clone()).await;
    assert!(matches!(answer, Err(SendRequestError::Timeout)), "a hanging receiver answered: {answer:?}");

    let request = client().post(otlp.endpoint()).insert_header(("content-type", "application/x-protobuf"));
    let in_flight = actix_rt::spawn(request.send_body(body.clone()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while otlp.requests() < 2 {
        assert!(Instant::now() < deadline, "the second request never reached the receiver");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    otlp.stop().await;
    match in_flight.await.expect("request task") {
        Err(SendRequestError::Timeout) => panic!("stop() left the hanging connection open until the client's timeout"),
        Err(_) => {}
        Ok(response) => panic!("a hanging receiver answered {}", response.status()),
    }

    let back = Otlp::start_on(addr, Mode::Accept).await;
    assert_eq!(back.addr, addr);
    let (status, _, _) = post(&back, body, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(back.spans().len(), 2);
    back.stop().await;
}

#[test]
fn traceparents_split_only_in_the_version_00_shape() {
    let header = format!("00-{}-{}-01", "ab".repeat(16), "cd".repeat(8));
    assert_eq!(split_traceparent(&header), Some(("ab".repeat(16).as_str(), "cd".repeat(8).as_str(), "01")));
    for bad in ["", "00-abc-def-01", &format!("01-{}-{}-01", "ab".repeat(16), "cd".repeat(8)), &format!("{header}-x")] {
        assert_eq!(split_traceparent(bad), None, "{bad:?}");
    }
}
