//! Traces: W3C Trace Context in and out, and OpenTelemetry spans for courier's stages, exported
//! over OTLP/HTTP (protobuf) by the OpenTelemetry Rust SDK.
//!
//! Why it is built this way:
//! - **Off is one branch.** Without an endpoint, [`Tracing`] holds nothing: no thread, no
//!   header parsed, no span, no header sent, log lines unchanged. Every hook is an `Option`.
//! - **Explicit parents.** courier owns its tracer provider and never installs it globally
//!   (tests run several couriers in one process), and a span's parent travels with the request
//!   as a [`Parent`], never through a thread-local "current context": a request's stages run
//!   on one worker, but its job runs later on another thread, its token refresh in an actor.
//! - **Requests never wait for the exporter.** Spans go into a bounded queue that a thread of
//!   the SDK drains; a full queue drops the span and counts it ([`export`]). The export's HTTP
//!   requests go through courier's own awc client on an arbiter of their own ([`transport`]),
//!   HTTP/1.1 only, like every other request courier makes.

pub mod attrs;
mod export;
mod propagate;
mod span;
mod transport;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::{SpanContext, SpanKind, TraceContextExt, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use secrecy::ExposeSecret;
use slog::Logger;

pub use export::SpanCounters;
pub use propagate::{Extract, Headers, Stored};
pub use span::{LogIds, Span};

use crate::config::{SamplerChoice, TracingConfig};
use crate::metrics::Metrics;

/// courier's tracing: the tracer and what it exports through, or nothing when tracing is off.
/// Cheap to clone; shared by every thread.
#[derive(Clone, Default)]
pub struct Tracing(Option<Arc<Inner>>);

struct Inner {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
    /// Whether `traceparent`/`tracestate` are read and sent (`OTEL_PROPAGATORS`).
    propagate: bool,
    /// Whether the sampler follows the parent's decision (then an unsampled parent's children
    /// are made without the SDK: see [`Span::start`]).
    parent_based: bool,
    /// The cache span of the load last started per key slot, for coalesced waiters' links.
    loads: Loads,
    /// The export arbiter, stopped after the provider has flushed.
    transport: Mutex<Option<transport::Transport>>,
}

/// Where a span's parent comes from: a span of this request, an inbound or stored
/// `traceparent`, or none (tracing off). `Parent::NONE` makes no span. Boxed: every request
/// carries one, and untraced it is a null pointer.
#[derive(Clone, Debug, Default)]
pub struct Parent(Option<Box<Context>>);

impl Parent {
    /// No parent: tracing is off for this request, or it is not traced.
    pub const NONE: Parent = Parent(None);

    /// Whether spans are made under this parent.
    pub fn is_some(&self) -> bool {
        self.0.is_some()
    }

    /// The parent's span context, when there is one.
    pub fn span_context(&self) -> Option<SpanContext> {
        self.0.as_ref().map(|cx| cx.span().span_context().clone())
    }

    fn of(span_context: SpanContext) -> Parent {
        Parent(Some(Box::new(Context::new().with_remote_span_context(span_context))))
    }
}

impl Tracing {
    /// Tracing off.
    pub fn off() -> Tracing {
        Tracing(None)
    }

    /// Starts the exporter and the tracer when `config` names an endpoint, else returns
    /// [`Tracing::off`]. Call inside an actix System (the export arbiter is started here).
    pub fn start(config: &TracingConfig, metrics: &Metrics, log: &Logger) -> Tracing {
        let Some(endpoint) = &config.endpoint else {
            return Tracing::off();
        };
        let counters = SpanCounters::new(metrics, config.queue_max, endpoint, log);
        // The SDK's batch thread has no bound of its own on an export (OTEL_BSP_EXPORT_TIMEOUT
        // applies only to its async-runtime variant): the exporter's, retries included, is it,
        // and each of its requests is bounded by the same.
        let timeout = config.timeout.min(config.export_timeout);
        let transport = transport::Transport::start(&config.ca, timeout, counters.clone());
        let headers = config.headers.iter().map(|(name, value)| (name.clone(), value.expose_secret().to_owned()));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(transport.client())
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint.clone())
            .with_timeout(timeout)
            .with_headers(headers.collect())
            .build()
            .expect("an OTLP/HTTP exporter with a client and an endpoint builds");
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(config.queue_max)
            .with_max_export_batch_size(config.batch_max.min(config.queue_max))
            .with_scheduled_delay(config.delay)
            .build();
        let processor = BatchSpanProcessor::builder(export::Counting::new(exporter, counters.clone()))
            .with_batch_config(batch)
            .build();
        let resource = Resource::builder_empty()
            .with_service_name(config.service_name.clone())
            .with_attributes(config.resource.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())))
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(export::Gate::new(processor, counters))
            .with_sampler(sampler(config.sampler))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("courier");
        Tracing(Some(Arc::new(Inner {
            tracer,
            provider,
            propagate: config.propagate,
            parent_based: matches!(
                config.sampler,
                SamplerChoice::ParentBasedAlwaysOn
                    | SamplerChoice::ParentBasedAlwaysOff
                    | SamplerChoice::ParentBasedRatio(_)
            ),
            loads: Loads::new(),
            transport: Mutex::new(Some(transport)),
        })))
    }

    /// Whether spans are made at all.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// The server span of an inbound request: a child of its `traceparent` when it carries a
    /// valid one (and propagation is on), else the root of a new trace.
    pub fn server(&self, name: &'static str, headers: &actix_web::http::header::HeaderMap) -> Option<Span> {
        let inner = self.0.as_ref()?;
        let parent = match inner.propagate {
            true => propagate::extract(headers),
            false => Context::new(),
        };
        Some(Span::start(&inner.tracer, name, SpanKind::Server, &parent, inner.parent_based))
    }

    /// A span under `parent`, or `None` when there is no parent (tracing off).
    pub fn child(&self, parent: &Parent, name: &'static str, kind: SpanKind) -> Option<Span> {
        let (inner, cx) = (self.0.as_ref()?, parent.0.as_ref()?);
        Some(Span::start(&inner.tracer, name, kind, cx, inner.parent_based))
    }

    /// The root span of a new trace (work no request asked for), or `None` when tracing is off.
    pub fn root(&self, name: &'static str, kind: SpanKind) -> Option<Span> {
        let inner = self.0.as_ref()?;
        Some(Span::start(&inner.tracer, name, kind, &Context::new(), inner.parent_based))
    }

    /// The parent a stored `traceparent` (an async job's) stands for; a new root when it is
    /// missing or malformed; `Parent::NONE` when tracing is off.
    pub fn stored_parent(&self, stored: Option<&Stored>) -> Parent {
        if self.0.is_none() {
            return Parent::NONE;
        }
        Parent(Some(Box::new(stored.map_or_else(Context::new, propagate::from_stored))))
    }

    /// The `traceparent`/`tracestate` headers that carry `span` to the next service, when
    /// propagation is on.
    pub fn headers(&self, span: Option<&Span>) -> Headers {
        match (self.0.as_ref(), span) {
            (Some(inner), Some(span)) if inner.propagate => propagate::headers(span.span_context()),
            _ => Headers::new(),
        }
    }

    /// The coalesced loads' table, when tracing is on.
    pub fn loads(&self) -> Option<&Loads> {
        self.0.as_ref().map(|inner| &inner.loads)
    }

    /// Exports what is queued, within `within`, then stops the export arbiter. Spans ended
    /// later are dropped.
    pub async fn shutdown(&self, within: Duration) {
        let Some(inner) = self.0.clone() else {
            return;
        };
        let Some(transport) = inner.transport.lock().expect("not poisoned").take() else {
            return;
        };
        // The provider's shutdown blocks until the processor thread has exported; the export
        // itself runs on the transport's arbiter, which must stay up until then.
        let flushing = inner.clone();
        let _ = actix_rt::task::spawn_blocking(move || flushing.provider.shutdown_with_timeout(within)).await;
        transport.stop();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // A gateway dropped without `shutdown` (a test's): flush briefly, then stop the thread.
        if let Some(transport) = self.transport.get_mut().expect("not poisoned").take() {
            let _ = self.provider.shutdown_with_timeout(Duration::from_secs(1));
            transport.stop();
        }
    }
}

fn sampler(choice: SamplerChoice) -> Sampler {
    let parent_based = |root: Sampler| Sampler::ParentBased(Box::new(root));
    match choice {
        SamplerChoice::AlwaysOn => Sampler::AlwaysOn,
        SamplerChoice::AlwaysOff => Sampler::AlwaysOff,
        SamplerChoice::Ratio(ratio) => Sampler::TraceIdRatioBased(ratio),
        SamplerChoice::ParentBasedAlwaysOn => parent_based(Sampler::AlwaysOn),
        SamplerChoice::ParentBasedAlwaysOff => parent_based(Sampler::AlwaysOff),
        SamplerChoice::ParentBasedRatio(ratio) => parent_based(Sampler::TraceIdRatioBased(ratio)),
    }
}

/// Slots in [`Loads`]: enough that concurrent loads of different keys rarely share one.
const LOAD_SLOTS: usize = 1024;

/// The `courier.cache` span of the load last started in each of [`LOAD_SLOTS`] key slots, so a
/// request that waited on another's load can link to it: moka hands a waiter the loaded answer
/// and nothing about who loaded it, and a span context in every cached entry would grow them
/// all. Written when a load starts, never cleared: a later load of another key in the same
/// slot replaces it, and the key check then finds no link rather than a wrong one.
pub struct Loads {
    slots: Box<[Slot]>,
}

/// A key and the span of its load.
type Slot = Mutex<Option<([u8; 32], SpanContext)>>;

impl Loads {
    fn new() -> Loads {
        Loads { slots: (0..LOAD_SLOTS).map(|_| Mutex::new(None)).collect() }
    }

    fn slot(&self, key: &[u8; 32]) -> &Slot {
        let at = u16::from_le_bytes([key[0], key[1]]) as usize % LOAD_SLOTS;
        &self.slots[at]
    }

    /// The load of `key` started under `span`.
    pub fn started(&self, key: &[u8; 32], span: SpanContext) {
        *self.slot(key).lock().expect("not poisoned") = Some((*key, span));
    }

    /// The span of the load of `key` last started, if its slot still holds it.
    pub fn of(&self, key: &[u8; 32]) -> Option<SpanContext> {
        match &*self.slot(key).lock().expect("not poisoned") {
            Some((held, span)) if held == key => Some(span.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};

    use super::*;

    #[test]
    fn a_load_slot_answers_only_for_its_own_key() {
        let loads = Loads::new();
        let span = |n: u64| {
            SpanContext::new(TraceId::from(7u128), SpanId::from(n), TraceFlags::SAMPLED, false, TraceState::default())
        };
        let (a, mut b) = ([1u8; 32], [1u8; 32]);
        b[31] = 2; // the same slot, another key
        assert_eq!(loads.of(&a), None);
        loads.started(&a, span(1));
        assert_eq!(loads.of(&a).map(|s| s.span_id()), Some(SpanId::from(1)));
        assert_eq!(loads.of(&b), None, "another key in the same slot finds no link");
        loads.started(&b, span(2));
        assert_eq!(loads.of(&a), None, "a replaced slot gives no link rather than a wrong one");
    }
}
