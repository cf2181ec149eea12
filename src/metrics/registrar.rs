//! How metrics are created and registered: the `courier` namespace, the bucket sets, and a
//! list of every registered name (for the start-up checks).

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

const NAMESPACE: &str = "courier";

/// Latency buckets in seconds, from sub-millisecond (cache hits, fast rejections) to the
/// longest deadline.
const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Buckets of job durations in seconds, up to the longest job deadline.
pub(super) const JOB_BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];

/// Creates metrics in the `courier` namespace and registers each once, noting its name.
pub(super) struct Registrar(pub(super) Registry, pub(super) std::cell::RefCell<Vec<String>>);

impl Registrar {
    pub(super) fn add<M: prometheus::core::Collector + Clone + 'static>(&self, metric: M) -> M {
        self.1.borrow_mut().extend(metric.desc().iter().map(|d| d.fq_name.clone()));
        self.0.register(Box::new(metric.clone())).expect("metric registered once");
        metric
    }

    pub(super) fn opts(name: &str, help: &str) -> Opts {
        Opts::new(name, help).namespace(NAMESPACE)
    }

    pub(super) fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::with_opts(Self::opts(name, help)).expect("valid metric"))
    }

    pub(super) fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Self::opts(name, help), labels).expect("valid metric"))
    }

    pub(super) fn gauge(&self, name: &str, help: &str) -> Gauge {
        self.add(Gauge::with_opts(Self::opts(name, help)).expect("valid metric"))
    }

    pub(super) fn int_gauge(&self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::with_opts(Self::opts(name, help)).expect("valid metric"))
    }

    pub(super) fn int_gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Self::opts(name, help), labels).expect("valid metric"))
    }

    pub(super) fn histogram(&self, name: &str, help: &str) -> Histogram {
        self.histogram_buckets(name, help, LATENCY_BUCKETS)
    }

    pub(super) fn histogram_buckets(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        let opts = HistogramOpts::new(name, help).namespace(NAMESPACE).buckets(buckets.to_vec());
        self.add(Histogram::with_opts(opts).expect("valid metric"))
    }

    pub(super) fn histogram_vec(&self, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).namespace(NAMESPACE).buckets(LATENCY_BUCKETS.to_vec());
        self.add(HistogramVec::new(opts, labels).expect("valid metric"))
    }
}

/// The process collector, clonable so it registers like the other metrics.
#[derive(Clone)]
pub(super) struct ProcessMetrics(pub(super) std::sync::Arc<prometheus::process_collector::ProcessCollector>);

impl prometheus::core::Collector for ProcessMetrics {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.collect()
    }
}
