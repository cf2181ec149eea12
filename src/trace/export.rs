//! Where ended spans go, counted: the [`Gate`] in front of the SDK's batch processor, and the
//! [`Counting`] exporter behind it.
//!
//! Why a gate: the SDK's batch processor drops a span when its queue is full and counts that
//! only in a private counter. The gate counts every span it lets into the queue, and takes it
//! off the count when the exporter receives it in a batch; at `OTEL_BSP_MAX_QUEUE_SIZE` it drops
//! the span itself, counted in `courier_trace_spans_total{result="dropped"}`. Since the gate's
//! count is never below what the queue holds, the SDK's queue is never found full, and every
//! span ended is exported, failed, dropped or still queued: none goes uncounted. Ending a span
//! costs the request's thread an atomic add and a channel send; it never waits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use prometheus::IntCounter;
use slog::{info, o, warn, Logger};

use crate::metrics::Metrics;

/// Failure and drop lines are written at most this often (and at once when the reason changes).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Spans counted by what became of them, and the export's log lines; one per tracer.
#[derive(Clone)]
pub struct SpanCounters(Arc<Counts>);

struct Counts {
    /// Spans let into the SDK's queue and not yet handed to the exporter.
    queued: AtomicUsize,
    max: usize,
    exported: IntCounter,
    failed: IntCounter,
    dropped: IntCounter,
    /// Why the last export failed, set by the transport (a bounded word, never a URL or header).
    reason: Mutex<&'static str>,
    log: Logger,
    state: Mutex<LogState>,
}

#[derive(Default)]
struct LogState {
    /// The reason of the last failure logged, while exports fail.
    failing: Option<&'static str>,
    last_failure_line: Option<Instant>,
    failed_batches: u64,
    failed_spans: u64,
    left_out: u64,
    dropped_logged: u64,
    last_drop_line: Option<Instant>,
}

impl SpanCounters {
    /// Counters on `metrics`; `endpoint`'s host and port go on the log lines (never its path
    /// or query).
    pub fn new(metrics: &Metrics, max: usize, endpoint: &str, log: &Logger) -> SpanCounters {
        let counter = |result: &str| metrics.trace_spans.with_label_values(&[result]);
        let host = url::Url::parse(endpoint)
            .ok()
            .map(|u| format!("{}:{}", u.host_str().unwrap_or_default(), u.port_or_known_default().unwrap_or_default()))
            .unwrap_or_default();
        SpanCounters(Arc::new(Counts {
            queued: AtomicUsize::new(0),
            max,
            exported: counter("exported"),
            failed: counter("failed"),
            dropped: counter("dropped"),
            reason: Mutex::new("send"),
            log: log.new(o!("part" => "trace_export", "endpoint" => host)),
            state: Mutex::new(LogState::default()),
        }))
    }

    /// Records why the export in progress failed (the transport's view).
    pub(super) fn set_reason(&self, reason: &'static str) {
        *self.0.reason.lock().expect("not poisoned") = reason;
    }

    /// Takes a place in the queue; `false` (and counted as dropped) when it is full.
    fn admit(&self) -> bool {
        if self.0.queued.fetch_add(1, Ordering::Relaxed) >= self.0.max {
            self.0.queued.fetch_sub(1, Ordering::Relaxed);
            self.0.dropped.inc();
            return false;
        }
        true
    }

    /// The one event of an export: counts its spans and writes the bounded log lines.
    fn exported(&self, spans: usize, ok: bool) {
        let c = &self.0;
        let now = Instant::now();
        let mut state = c.state.lock().expect("not poisoned");
        if ok {
            c.exported.inc_by(spans as u64);
            if state.failing.take().is_some() {
                info!(c.log, "trace_export_recovered";
                    "failed_batches" => state.failed_batches, "failed_spans" => state.failed_spans);
                (state.failed_batches, state.failed_spans, state.left_out) = (0, 0, 0);
            }
        } else {
            c.failed.inc_by(spans as u64);
            let reason = *c.reason.lock().expect("not poisoned");
            state.failed_batches += 1;
            state.failed_spans += spans as u64;
            let due = state.last_failure_line.is_none_or(|at| now.duration_since(at) >= LOG_EVERY);
            if state.failing != Some(reason) || due {
                warn!(c.log, "trace_export_failed";
                    "reason" => reason, "spans" => spans, "left_out" => state.left_out);
                (state.failing, state.last_failure_line, state.left_out) = (Some(reason), Some(now), 0);
            } else {
                state.left_out += 1;
            }
        }
        let dropped = c.dropped.get();
        let drop_due = state.last_drop_line.is_none_or(|at| now.duration_since(at) >= LOG_EVERY);
        if dropped > state.dropped_logged && drop_due {
            warn!(c.log, "trace_spans_dropped"; "dropped" => dropped - state.dropped_logged, "queue_max" => c.max);
            (state.dropped_logged, state.last_drop_line) = (dropped, Some(now));
        }
    }
}

/// The span processor courier installs: counts and bounds what enters the SDK's batch
/// processor; see the module documentation.
#[derive(Debug)]
pub(super) struct Gate<P> {
    inner: P,
    counters: SpanCounters,
}

impl<P> Gate<P> {
    pub(super) fn new(inner: P, counters: SpanCounters) -> Gate<P> {
        Gate { inner, counters }
    }
}

impl std::fmt::Debug for SpanCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanCounters").field("queued", &self.0.queued).field("max", &self.0.max).finish()
    }
}

impl<P: SpanProcessor> SpanProcessor for Gate<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.counters.admit() {
            self.inner.on_end(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        // The provider gives the processor its resource (service.name): it must reach the exporter.
        self.inner.set_resource(resource);
    }
}

/// The exporter behind the queue: spans leave the gate's count as a batch starts, and are
/// counted exported or failed by how it ended.
#[derive(Debug)]
pub(super) struct Counting<E> {
    inner: E,
    counters: SpanCounters,
}

impl<E> Counting<E> {
    pub(super) fn new(inner: E, counters: SpanCounters) -> Counting<E> {
        Counting { inner, counters }
    }
}

impl<E: SpanExporter> SpanExporter for Counting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        self.counters.0.queued.fetch_sub(spans, Ordering::Relaxed);
        let result = self.inner.export(batch).await;
        self.counters.exported(spans, result.is_ok());
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn shutdown(&self) -> OTelSdkResult {
        self.inner.shutdown()
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use opentelemetry::trace::{SpanKind, Tracer, TracerProvider};
    use opentelemetry_sdk::error::OTelSdkError;
    use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};

    use super::*;
    use crate::logging::{LogCapture, LogTarget, Logging};

    /// An exporter that holds the first batch until released, then fails or succeeds.
    #[derive(Debug)]
    struct Held {
        release: Mutex<Option<mpsc::Receiver<()>>>,
        fail: bool,
    }

    impl SpanExporter for Held {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            if let Some(release) = self.release.lock().unwrap().take() {
                let _ = release.recv();
            }
            match self.fail {
                true => Err(OTelSdkError::InternalFailure("refused".into())),
                false => Ok(()),
            }
        }
    }

    fn run(fail: bool, spans: usize, queue: usize) -> (Metrics, String) {
        let metrics = Metrics::new();
        let capture = LogCapture::default();
        let dropped = IntCounter::new("d", "d").unwrap();
        let logging = Logging::start(slog::Level::Info, LogTarget::Capture(capture.clone()), dropped);
        let counters = SpanCounters::new(&metrics, queue, "http://127.0.0.1:4318/v1/traces", &logging.logger);
        let (release, held) = mpsc::channel();
        let exporter = Held { release: Mutex::new(Some(held)), fail };
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(queue)
            .with_max_export_batch_size(8)
            .with_scheduled_delay(Duration::from_millis(10))
            .build();
        let processor =
            BatchSpanProcessor::builder(Counting::new(exporter, counters.clone())).with_batch_config(batch).build();
        let provider = SdkTracerProvider::builder().with_span_processor(Gate::new(processor, counters.clone())).build();
        let tracer = provider.tracer("test");
        for _ in 0..spans {
            let mut span = tracer.span_builder("s").with_kind(SpanKind::Internal).start(&tracer);
            opentelemetry::trace::Span::end(&mut span);
        }
        release.send(()).unwrap();
        provider.shutdown().unwrap();
        assert_eq!(counters.0.queued.load(Ordering::Relaxed), 0, "nothing is left counted as queued");
        drop((counters, provider, tracer));
        drop(logging);
        (metrics, capture.text())
    }

    fn count(metrics: &Metrics, result: &str) -> u64 {
        metrics.trace_spans.with_label_values(&[result]).get()
    }

    #[test]
    fn every_span_ended_is_exported_or_dropped_and_counted() {
        let (metrics, log) = run(false, 500, 64);
        let (exported, dropped) = (count(&metrics, "exported"), count(&metrics, "dropped"));
        assert_eq!(exported + dropped, 500, "exported {exported} + dropped {dropped}");
        assert!(dropped > 0 && exported >= 64, "a held exporter fills the queue: {exported} / {dropped}");
        assert_eq!(count(&metrics, "failed"), 0);
        assert_eq!(log.matches("trace_spans_dropped").count(), 1, "{log}");
    }

    #[test]
    fn failures_are_counted_and_logged_once_per_reason_within_the_interval() {
        let (metrics, log) = run(true, 40, 1000);
        assert_eq!(count(&metrics, "failed"), 40);
        assert_eq!(count(&metrics, "exported") + count(&metrics, "dropped"), 0);
        assert_eq!(log.matches("trace_export_failed").count(), 1, "five failed batches, one line: {log}");
        assert!(!log.contains("/v1/traces"), "the endpoint's path stays out of the log: {log}");
    }
}
