//! W3C Trace Context: `traceparent` and `tracestate` read from an inbound request, written on
//! each upstream attempt and callback delivery, and kept with an async job as text. Parsing
//! and formatting are the SDK's propagator's; a malformed header gives an empty context, so
//! the request starts a trace of its own and is never refused for it.

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use serde::{Deserialize, Serialize};

/// `traceparent`.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate`.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Reads the two headers from an actix header map.
pub struct Extract<'a>(pub &'a HeaderMap);

impl Extractor for Extract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// The context an inbound request's headers carry; empty when they carry none or a bad one.
pub(super) fn extract(headers: &HeaderMap) -> Context {
    if !headers.contains_key(TRACEPARENT) {
        return Context::new();
    }
    TraceContextPropagator::new().extract(&Extract(headers))
}

/// The headers that carry a span to the next service: `traceparent`, and `tracestate` when
/// the trace has one (empty when tracing is off: no allocation).
pub type Headers = Vec<(HeaderName, HeaderValue)>;

struct Inject<'a>(&'a mut Headers);

impl Injector for Inject<'_> {
    fn set(&mut self, key: &str, value: String) {
        // The propagator writes `tracestate` even when it is empty: an empty one is not sent.
        let Ok(value) = HeaderValue::try_from(value) else { return };
        match key {
            "traceparent" => self.0.insert(0, (TRACEPARENT, value)),
            "tracestate" if !value.is_empty() => self.0.push((TRACESTATE, value)),
            _ => {}
        }
    }
}

pub(super) fn headers(span: &SpanContext) -> Headers {
    let mut headers = Headers::default();
    let cx = Context::new().with_remote_span_context(span.clone());
    TraceContextPropagator::new().inject_context(&cx, &mut Inject(&mut headers));
    headers
}

/// A span's context kept as text with an async job, so the job's spans join the trace of the
/// request that submitted it (serde: both fields are left out of records made without one).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    /// W3C `traceparent`.
    pub traceparent: String,
    /// W3C `tracestate`, when the trace has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

impl Stored {
    /// `span`'s context as text.
    pub fn of(span: &super::Span) -> Stored {
        let headers = headers(span.span_context());
        let text = |name: &HeaderName| {
            headers.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.to_str().ok().map(str::to_owned))
        };
        Stored { traceparent: text(&TRACEPARENT).unwrap_or_default(), tracestate: text(&TRACESTATE) }
    }
}

pub(super) fn from_stored(stored: &Stored) -> Context {
    let mut map = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&stored.traceparent) {
        map.insert(TRACEPARENT, value);
    }
    if let Some(Ok(value)) = stored.tracestate.as_deref().map(HeaderValue::from_str) {
        map.insert(TRACESTATE, value);
    }
    extract(&map)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    fn inbound(traceparent: &str, tracestate: Option<&str>) -> Context {
        let mut map = HeaderMap::new();
        map.insert(TRACEPARENT, HeaderValue::from_str(traceparent).unwrap());
        if let Some(state) = tracestate {
            map.insert(TRACESTATE, HeaderValue::from_str(state).unwrap());
        }
        extract(&map)
    }

    #[test]
    fn a_valid_traceparent_is_read_and_written_back_with_its_state() {
        let cx = inbound(&format!("00-{TRACE}-00f067aa0ba902b7-01"), Some("vendor=a1"));
        let span = cx.span().span_context().clone();
        assert!(span.is_valid() && span.is_remote() && span.is_sampled());
        assert_eq!(span.trace_id().to_string(), TRACE);
        let out = headers(&span);
        assert_eq!(out[0], (TRACEPARENT, HeaderValue::from_str(&format!("00-{TRACE}-00f067aa0ba902b7-01")).unwrap()));
        assert_eq!(out[1], (TRACESTATE, HeaderValue::from_static("vendor=a1")));
        let stored = Stored { traceparent: format!("00-{TRACE}-00f067aa0ba902b7-00"), tracestate: None };
        let back = from_stored(&stored).span().span_context().clone();
        assert_eq!((back.trace_id().to_string(), back.is_sampled()), (TRACE.to_owned(), false));
        assert_eq!(headers(&back).len(), 1, "no empty tracestate is sent");
    }

    #[test]
    fn a_malformed_traceparent_gives_no_parent() {
        for bad in [
            "00-zz".to_owned(),
            format!("ff-{TRACE}-00f067aa0ba902b7-01"),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_owned(),
            format!("00-{TRACE}-0000000000000000-01"),
            format!("00-{}-00f067aa0ba902b7-01", TRACE.to_uppercase()),
            format!("00-{TRACE}-00f067aa0ba902b7"),
        ] {
            assert!(!inbound(&bad, None).span().span_context().is_valid(), "{bad}");
        }
    }
}
