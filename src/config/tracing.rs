//! PLACEHOLDER until the helper's OTEL_* reader lands: only the interface.

use std::path::PathBuf;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use secrecy::SecretString;

use super::reader::Reader;

/// Tracing settings from the OpenTelemetry variables; `endpoint: None` = tracing off.
#[derive(Clone, Debug)]
pub struct TracingConfig {
    /// The full traces URL.
    pub endpoint: Option<String>,
    /// Export request timeout.
    pub timeout: Duration,
    /// Extra export headers.
    pub headers: Vec<(String, SecretString)>,
    /// CA file.
    pub ca_file: Option<PathBuf>,
    /// Its certificates.
    pub ca: Vec<CertificateDer<'static>>,
    /// service.name
    pub service_name: String,
    /// Other resource attributes.
    pub resource: Vec<(String, String)>,
    /// The sampler.
    pub sampler: SamplerChoice,
    /// W3C propagation on.
    pub propagate: bool,
    /// Queue bound.
    pub queue_max: usize,
    /// Batch bound.
    pub batch_max: usize,
    /// Export delay.
    pub delay: Duration,
    /// Export timeout.
    pub export_timeout: Duration,
}

/// The sampler.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SamplerChoice {
    /// always_on
    AlwaysOn,
    /// always_off
    AlwaysOff,
    /// traceidratio
    Ratio(f64),
    /// parentbased_always_on
    ParentBasedAlwaysOn,
    /// parentbased_always_off
    ParentBasedAlwaysOff,
    /// parentbased_traceidratio
    ParentBasedRatio(f64),
}

impl TracingConfig {
    /// Off.
    pub fn off() -> TracingConfig {
        TracingConfig {
            endpoint: None,
            timeout: Duration::from_secs(10),
            headers: Vec::new(),
            ca_file: None,
            ca: Vec::new(),
            service_name: "courier".into(),
            resource: Vec::new(),
            sampler: SamplerChoice::ParentBasedAlwaysOn,
            propagate: true,
            queue_max: 2048,
            batch_max: 512,
            delay: Duration::from_secs(5),
            export_timeout: Duration::from_secs(30),
        }
    }

    /// On?
    pub fn is_on(&self) -> bool {
        self.endpoint.is_some()
    }

    pub(super) fn read(r: &mut Reader<'_>) -> TracingConfig {
        let mut c = TracingConfig::off();
        c.endpoint = r.optional("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        if let Some(d) = r.optional("OTEL_BSP_SCHEDULE_DELAY") {
            c.delay = Duration::from_millis(d.parse().unwrap());
        }
        if let Some(d) = r.optional("OTEL_BSP_MAX_QUEUE_SIZE") {
            c.queue_max = d.parse().unwrap();
        }
        if let Some(d) = r.optional("OTEL_SERVICE_NAME") {
            c.service_name = d;
        }
        let arg = r.optional("OTEL_TRACES_SAMPLER_ARG").map(|a| a.parse::<f64>().unwrap()).unwrap_or(1.0);
        if let Some(s) = r.optional("OTEL_TRACES_SAMPLER") {
            c.sampler = match s.as_str() {
                "always_on" => SamplerChoice::AlwaysOn,
                "always_off" => SamplerChoice::AlwaysOff,
                "traceidratio" => SamplerChoice::Ratio(arg),
                "parentbased_always_off" => SamplerChoice::ParentBasedAlwaysOff,
                "parentbased_traceidratio" => SamplerChoice::ParentBasedRatio(arg),
                _ => SamplerChoice::ParentBasedAlwaysOn,
            };
        }
        c
    }
}
