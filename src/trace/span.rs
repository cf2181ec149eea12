//! A span as courier's stages use it: attributes set only when it records, ended once (when
//! dropped at the latest), and its ids for log lines.

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, Tracer};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::trace::SdkTracer;
use slog::{Record, Serializer, KV};

use super::Parent;

/// One span of courier's; see the module documentation.
pub struct Span {
    inner: Inner,
    /// Whether the sampler kept it: a span that does not record takes no attributes, so none
    /// is built.
    recording: bool,
}

enum Inner {
    /// Boxed: a span of the SDK's is large, and an unsampled one is held in its place.
    Sdk(Box<opentelemetry_sdk::trace::Span>),
    /// A span under a parent that was not sampled, with a parent-based sampler: the SDK would
    /// make the same decision (drop) at the cost of a sampler call, a span builder and a
    /// reference to the provider; only its ids are needed, to carry the trace on.
    Unsampled(SpanContext),
}

impl Span {
    /// Starts a span under `parent` (an empty context: a root). With `parent_based`, a parent
    /// that was not sampled gives an unsampled span without asking the SDK.
    pub(super) fn start(
        tracer: &SdkTracer,
        name: &'static str,
        kind: SpanKind,
        parent: &Context,
        parent_based: bool,
    ) -> Span {
        if parent_based && parent.has_active_span() {
            let above = parent.span().span_context().clone();
            if above.is_valid() && !above.is_sampled() {
                let id = SpanId::from(rand::random::<u64>().max(1));
                let context =
                    SpanContext::new(above.trace_id(), id, TraceFlags::default(), false, above.trace_state().clone());
                return Span { inner: Inner::Unsampled(context), recording: false };
            }
        }
        let inner = tracer.span_builder(name).with_kind(kind).start_with_context(tracer, parent);
        let recording = opentelemetry::trace::Span::is_recording(&inner);
        Span { inner: Inner::Sdk(Box::new(inner)), recording }
    }

    fn sdk(&mut self) -> Option<&mut opentelemetry_sdk::trace::Span> {
        match &mut self.inner {
            Inner::Sdk(span) if self.recording => Some(span.as_mut()),
            _ => None,
        }
    }

    /// Whether it records (was sampled): worth building an attribute value for.
    pub fn recording(&self) -> bool {
        self.recording
    }

    /// Sets an attribute.
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(span) = self.sdk() {
            opentelemetry::trace::Span::set_attribute(span, KeyValue::new(key, value));
        }
    }

    /// Marks it failed, with `code` as the status description.
    pub fn fail(&mut self, code: impl Into<std::borrow::Cow<'static, str>>) {
        if let Some(span) = self.sdk() {
            opentelemetry::trace::Span::set_status(span, Status::error(code));
        }
    }

    /// Renames it (a server span learns its route when it is answered).
    pub fn rename(&mut self, name: String) {
        if let Some(span) = self.sdk() {
            opentelemetry::trace::Span::update_name(span, name);
        }
    }

    /// Links it to `other`, with the link's `courier.link` attribute saying why.
    pub fn link(&mut self, other: SpanContext, why: &'static str) {
        if let Some(span) = self.sdk() {
            opentelemetry::trace::Span::add_link(span, other, vec![KeyValue::new("courier.link", why)]);
        }
    }

    /// Its span context.
    pub fn span_context(&self) -> &SpanContext {
        match &self.inner {
            Inner::Sdk(span) => opentelemetry::trace::Span::span_context(span.as_ref()),
            Inner::Unsampled(context) => context,
        }
    }

    /// The parent its children are made under.
    pub fn parent(&self) -> Parent {
        Parent::of(self.span_context().clone())
    }

    /// Its ids for a log line.
    pub fn ids(&self) -> LogIds {
        let cx = self.span_context();
        LogIds(Some((cx.trace_id().to_bytes(), cx.span_id().to_bytes())))
    }

    /// Ends it now (else when it is dropped).
    pub fn end(mut self) {
        if let Inner::Sdk(span) = &mut self.inner {
            opentelemetry::trace::Span::end(span.as_mut());
        }
    }
}

/// `trace_id` and `span_id` on a log line, or nothing at all when there is no span (tracing
/// off): the line is then the same as without tracing.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogIds(Option<([u8; 16], [u8; 8])>);

impl LogIds {
    /// The ids of `span`, or none.
    pub fn of(span: Option<&Span>) -> LogIds {
        span.map(Span::ids).unwrap_or_default()
    }

    /// The ids of a parent's span, or none.
    pub fn of_parent(parent: &Parent) -> LogIds {
        match parent.0.as_ref() {
            Some(cx) if cx.span().span_context().is_valid() => {
                let sc = cx.span().span_context().clone();
                LogIds(Some((sc.trace_id().to_bytes(), sc.span_id().to_bytes())))
            }
            _ => LogIds(None),
        }
    }
}

impl KV for LogIds {
    fn serialize(&self, _: &Record<'_>, serializer: &mut dyn Serializer) -> slog::Result {
        if let Some((trace_id, span_id)) = &self.0 {
            let (mut t, mut s) = ([0u8; 32], [0u8; 16]);
            hex::encode_to_slice(trace_id, &mut t).expect("32 hex digits fit");
            hex::encode_to_slice(span_id, &mut s).expect("16 hex digits fit");
            serializer.emit_str("trace_id", std::str::from_utf8(&t).expect("hex is ASCII"))?;
            serializer.emit_str("span_id", std::str::from_utf8(&s).expect("hex is ASCII"))?;
        }
        Ok(())
    }
}
