//! Tracing settings from the standard OpenTelemetry variables (`OTEL_*`), read by courier itself.
//!
//! The OpenTelemetry SDK can read these variables too, but it falls back silently on a bad
//! value, reads the process environment rather than [`super::Env`], and gives way to any value
//! set in code. So courier reads every one here, through the [`Reader`] (the TOML file may set
//! them too), reports each bad one like any other bad setting, and hands the SDK explicit values.
//! Tracing is off unless an endpoint is set, and off again with `OTEL_SDK_DISABLED=true` or
//! `OTEL_TRACES_EXPORTER=none`; the other variables are checked all the same, so a mistake shows
//! before the day tracing is turned on. Only what courier implements is accepted (OTLP over
//! HTTP/protobuf, uncompressed; W3C trace context): a value the specification names that courier
//! does not implement (`grpc`, `gzip`, `xray`, `b3`, …) is an error naming what it does, never a
//! silent fallback. Header values are secrets: never quoted in errors, `[REDACTED]` in `Debug`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use actix_http::header::{HeaderName, HeaderValue};
use rustls::pki_types::CertificateDer;
use secrecy::SecretString;

use super::reader::Reader;

const DEFAULT_SERVICE_NAME: &str = "courier";
const DEFAULT_TIMEOUT_MS: u64 = 10_000;
const DEFAULT_QUEUE_MAX: u64 = 2048;
const DEFAULT_BATCH_MAX: u64 = 512;
const DEFAULT_DELAY_MS: u64 = 5000;
const DEFAULT_EXPORT_TIMEOUT_MS: u64 = 30_000;

const ENDPOINT: &str = "an absolute http(s) URL without user name, password, query or fragment, e.g. \
                        http://collector:4318 (credentials go in OTEL_EXPORTER_OTLP_HEADERS)";
const HEADERS: &str = "key=value pairs separated by commas, values percent-encoded, e.g. api-key=abc%20def";
const ATTRIBUTES: &str =
    "key=value pairs separated by commas, values percent-encoded, e.g. deployment.environment=prod";
const SAMPLERS: &str = "one of always_on, always_off, traceidratio, parentbased_always_on, \
                        parentbased_always_off, parentbased_traceidratio";

/// Tracing settings from the OpenTelemetry variables; `endpoint: None` = tracing off.
#[derive(Clone)]
pub struct TracingConfig {
    /// The full URL traces are posted to (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as is, or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`); `None` when tracing is off.
    pub endpoint: Option<String>,
    /// Time one export request may take (`OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT`).
    pub timeout: Duration,
    /// Headers sent with each export, names lower-cased, values percent-decoded.
    pub headers: Vec<(String, SecretString)>,
    /// PEM file of extra CA certificates for an https endpoint (`OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE`).
    pub ca_file: Option<PathBuf>,
    /// The certificates of `ca_file`, read and checked at start-up (empty without it).
    pub ca: Vec<CertificateDer<'static>>,
    /// `service.name` of the resource (`OTEL_SERVICE_NAME`, else from `OTEL_RESOURCE_ATTRIBUTES`).
    pub service_name: String,
    /// The other resource attributes of `OTEL_RESOURCE_ATTRIBUTES`, in their order.
    pub resource: Vec<(String, String)>,
    /// Which spans are recorded and exported.
    pub sampler: SamplerChoice,
    /// Whether `traceparent`/`tracestate` are read from requests and sent upstream and to
    /// callbacks (`OTEL_PROPAGATORS`).
    pub propagate: bool,
    /// Most spans waiting for export; more are dropped and counted (`OTEL_BSP_MAX_QUEUE_SIZE`).
    pub queue_max: usize,
    /// Most spans in one export request, at most `queue_max` (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`).
    pub batch_max: usize,
    /// Time between two exports (`OTEL_BSP_SCHEDULE_DELAY`).
    pub delay: Duration,
    /// Time one export may take in the batch processor (`OTEL_BSP_EXPORT_TIMEOUT`).
    pub export_timeout: Duration,
}

/// The sampler named by `OTEL_TRACES_SAMPLER` (+ `OTEL_TRACES_SAMPLER_ARG` for the ratio ones).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SamplerChoice {
    /// Every trace (`always_on`).
    AlwaysOn,
    /// No trace (`always_off`).
    AlwaysOff,
    /// This fraction of traces, by trace id (`traceidratio`).
    Ratio(f64),
    /// The parent's decision; every root (`parentbased_always_on`, the default).
    ParentBasedAlwaysOn,
    /// The parent's decision; no root (`parentbased_always_off`).
    ParentBasedAlwaysOff,
    /// The parent's decision; this fraction of roots (`parentbased_traceidratio`).
    ParentBasedRatio(f64),
}

impl TracingConfig {
    /// Whether spans are made and exported at all.
    pub fn is_on(&self) -> bool {
        self.endpoint.is_some()
    }

    /// Tracing off, every other setting at its default: for code that builds settings by hand.
    pub fn off() -> TracingConfig {
        TracingConfig {
            endpoint: None,
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            headers: Vec::new(),
            ca_file: None,
            ca: Vec::new(),
            service_name: DEFAULT_SERVICE_NAME.into(),
            resource: Vec::new(),
            sampler: SamplerChoice::ParentBasedAlwaysOn,
            propagate: true,
            queue_max: DEFAULT_QUEUE_MAX as usize,
            batch_max: DEFAULT_BATCH_MAX as usize,
            delay: Duration::from_millis(DEFAULT_DELAY_MS),
            export_timeout: Duration::from_millis(DEFAULT_EXPORT_TIMEOUT_MS),
        }
    }

    /// Reads the `OTEL_*` variables, recording each bad one.
    pub(super) fn read(r: &mut Reader<'_>) -> TracingConfig {
        let disabled = r.parsed("OTEL_SDK_DISABLED", false, "true or false", |s| s.to_ascii_lowercase().parse().ok());
        let exporting = exporter(r);
        let endpoint = endpoint(r).filter(|_| exporting && !disabled);
        let protocol = pick(r, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL");
        only(r, protocol, "http/protobuf", "http/protobuf");
        let compression = pick(r, "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION");
        only(r, compression, "none", "none");
        let timeout = pick(r, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT");
        let timeout = r.millis(timeout, DEFAULT_TIMEOUT_MS, 1..=600_000);
        let headers = headers(r);
        let certificate = pick(r, "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE");
        let (ca_file, ca) = super::ca_file(r, certificate);
        let (service_name, resource) = resource(r);
        let sampler = sampler(r);
        let propagate = propagate(r);
        let queue_max = r.count("OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_QUEUE_MAX, 1..=1_000_000);
        let mut batch_max = r.count("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", DEFAULT_BATCH_MAX, 1..=1_000_000);
        if batch_max > queue_max && !r.reported("OTEL_BSP_MAX_QUEUE_SIZE") {
            let problem = format!("{batch_max} is above OTEL_BSP_MAX_QUEUE_SIZE ({queue_max})");
            r.problem("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", problem, "at most the queue size");
            batch_max = queue_max;
        }
        TracingConfig {
            endpoint,
            timeout,
            headers,
            ca_file,
            ca,
            service_name,
            resource,
            sampler,
            propagate,
            queue_max: queue_max as usize,
            batch_max: batch_max as usize,
            delay: r.millis("OTEL_BSP_SCHEDULE_DELAY", DEFAULT_DELAY_MS, 1..=3_600_000),
            export_timeout: r.millis("OTEL_BSP_EXPORT_TIMEOUT", DEFAULT_EXPORT_TIMEOUT_MS, 1..=3_600_000),
        }
    }
}

impl fmt::Debug for TracingConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self.headers.iter().map(|(name, _)| (name.as_str(), "[REDACTED]")).collect();
        f.debug_struct("TracingConfig")
            .field("endpoint", &self.endpoint)
            .field("timeout", &self.timeout)
            .field("headers", &headers)
            .field("ca_file", &self.ca_file)
            .field("service_name", &self.service_name)
            .field("resource", &self.resource)
            .field("sampler", &self.sampler)
            .field("propagate", &self.propagate)
            .field("queue_max", &self.queue_max)
            .field("batch_max", &self.batch_max)
            .field("delay", &self.delay)
            .field("export_timeout", &self.export_timeout)
            .finish()
    }
}

/// Of a traces-only variable and its form for every signal, the one that applies: the traces one
/// when set (the specification's precedence). Both are asked for, so both are settings courier
/// knows (a key of the TOML file).
fn pick(r: &mut Reader<'_>, traces: &'static str, generic: &'static str) -> &'static str {
    let specific = r.optional(traces).is_some();
    r.optional(generic);
    if specific {
        traces
    } else {
        generic
    }
}

/// A variable whose one supported value is `supported` (case-insensitive, as the specification
/// reads its enumerations).
fn only(r: &mut Reader<'_>, var: &'static str, supported: &str, expected: &'static str) {
    if let Some(raw) = r.optional(var) {
        if !raw.eq_ignore_ascii_case(supported) {
            r.problem(var, format!("{raw:?} is not supported"), expected);
        }
    }
}

/// `OTEL_TRACES_EXPORTER`: whether traces are exported (`otlp`, the default) or not (`none`).
fn exporter(r: &mut Reader<'_>) -> bool {
    const VAR: &str = "OTEL_TRACES_EXPORTER";
    let Some(raw) = r.optional(VAR) else { return true };
    let items: Vec<&str> = raw.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    match items[..] {
        [one] if one.eq_ignore_ascii_case("otlp") => true,
        [one] if one.eq_ignore_ascii_case("none") => false,
        [_] => {
            r.problem(VAR, format!("{raw:?} is not supported"), "otlp or none");
            true
        }
        _ => {
            r.problem(VAR, format!("{raw:?} is not one exporter"), "otlp or none");
            true
        }
    }
}

/// The traces URL: the traces variable as is, or the base one with `/v1/traces` appended to its
/// path (`http://h:4318` and `http://h:4318/` both give `http://h:4318/v1/traces`).
fn endpoint(r: &mut Reader<'_>) -> Option<String> {
    const TRACES: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
    const BASE: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
    let traces = r.optional(TRACES);
    let base = r.optional(BASE);
    match (traces, base) {
        (Some(url), _) => endpoint_ok(r, TRACES, &url).then_some(url),
        (None, Some(url)) => endpoint_ok(r, BASE, &url).then(|| format!("{}/v1/traces", url.trim_end_matches('/'))),
        (None, None) => None,
    }
}

/// Whether `raw` is an http(s) URL with a host and nothing that must not show in logs or `Debug`
/// (user name, password, query). A URL that may hold credentials is not quoted.
fn endpoint_ok(r: &mut Reader<'_>, var: &str, raw: &str) -> bool {
    let shown = if raw.contains(['@', '?', '#']) { String::new() } else { format!("{raw:?} ") };
    let problem = match url::Url::parse(raw) {
        Err(e) => format!("{shown}is not a URL ({e})"),
        Ok(u) if !matches!(u.scheme(), "http" | "https") || u.host().is_none() => {
            format!("{shown}is not an http(s) URL with a host")
        }
        Ok(u) if !u.username().is_empty() || u.password().is_some() => {
            "holds a user name or password, which would show in logs".into()
        }
        Ok(u) if u.query().is_some() || u.fragment().is_some() => "has a query or fragment".into(),
        Ok(_) => return true,
    };
    r.problem(var, problem, ENDPOINT);
    false
}

/// `OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`. Entries are named by their place, never quoted: a
/// value (or a line pasted whole, `Authorization: Bearer …`) is a secret.
fn headers(r: &mut Reader<'_>) -> Vec<(String, SecretString)> {
    let var = pick(r, "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS");
    let Some(raw) = r.optional(var) else { return Vec::new() };
    let mut headers = Vec::new();
    for (i, entry) in raw.split(',').enumerate().filter(|(_, e)| !e.trim().is_empty()) {
        let n = i + 1;
        let problem = match entry.split_once('=') {
            None => format!("entry {n} has no \"=\""),
            Some((name, value)) => {
                let name = name.trim().to_ascii_lowercase();
                match percent_decode(value.trim()) {
                    _ if HeaderName::from_bytes(name.as_bytes()).is_err() => {
                        format!("entry {n} has no valid header name before its \"=\"")
                    }
                    None => format!("entry {n} ({name}) is not valid percent-encoded UTF-8"),
                    Some(value) if value.is_empty() => format!("entry {n} ({name}) has an empty value"),
                    Some(value) if HeaderValue::from_str(&value).is_err() => {
                        format!("entry {n} ({name}) holds characters a header value cannot")
                    }
                    Some(value) => {
                        headers.push((name, SecretString::from(value)));
                        continue;
                    }
                }
            }
        };
        r.problem(var, problem, HEADERS);
        return Vec::new();
    }
    headers
}

/// `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`: the service name (the variable, else the
/// attributes' `service.name`, else `courier`) and the other attributes.
fn resource(r: &mut Reader<'_>) -> (String, Vec<(String, String)>) {
    const VAR: &str = "OTEL_RESOURCE_ATTRIBUTES";
    let mut attributes: Vec<(String, String)> = Vec::new();
    if let Some(raw) = r.optional(VAR) {
        for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let problem = match entry.split_once('=') {
                None => format!("entry {entry:?} has no \"=\""),
                Some((key, _)) if key.trim().is_empty() => format!("entry {entry:?} has no key"),
                Some((key, value)) => match percent_decode(value.trim()) {
                    None => format!("entry {entry:?} is not valid percent-encoded UTF-8"),
                    Some(value) if key.trim() == "service.name" && value.is_empty() => "service.name is empty".into(),
                    Some(value) => {
                        // A key given twice: the later value wins, in the first one's place.
                        let key = key.trim();
                        match attributes.iter_mut().find(|(k, _)| k == key) {
                            Some(earlier) => earlier.1 = value,
                            None => attributes.push((key.to_owned(), value)),
                        }
                        continue;
                    }
                },
            };
            r.problem(VAR, problem, ATTRIBUTES);
            attributes.clear();
            break;
        }
    }
    let from_attributes = attributes.iter().position(|(k, _)| k == "service.name").map(|i| attributes.remove(i).1);
    let name = r.optional("OTEL_SERVICE_NAME").or(from_attributes).unwrap_or_else(|| DEFAULT_SERVICE_NAME.into());
    (name, attributes)
}

/// `OTEL_TRACES_SAMPLER`, with `OTEL_TRACES_SAMPLER_ARG` for the ratio samplers (ignored by the
/// others, as the specification says).
fn sampler(r: &mut Reader<'_>) -> SamplerChoice {
    const VAR: &str = "OTEL_TRACES_SAMPLER";
    const ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
    let raw = r.optional(VAR);
    let name = raw.as_deref().map(str::to_ascii_lowercase);
    let choice = match name.as_deref() {
        None | Some("parentbased_always_on") => SamplerChoice::ParentBasedAlwaysOn,
        Some("always_on") => SamplerChoice::AlwaysOn,
        Some("always_off") => SamplerChoice::AlwaysOff,
        Some("parentbased_always_off") => SamplerChoice::ParentBasedAlwaysOff,
        Some("traceidratio") => return SamplerChoice::Ratio(r.fraction(ARG, 1.0, true)),
        Some("parentbased_traceidratio") => return SamplerChoice::ParentBasedRatio(r.fraction(ARG, 1.0, true)),
        Some("jaeger_remote" | "parentbased_jaeger_remote" | "xray") => {
            r.problem(VAR, format!("{:?} is not supported by courier", raw.unwrap_or_default()), SAMPLERS);
            SamplerChoice::ParentBasedAlwaysOn
        }
        Some(_) => {
            r.problem(VAR, format!("{:?} is not a sampler", raw.unwrap_or_default()), SAMPLERS);
            SamplerChoice::ParentBasedAlwaysOn
        }
    };
    r.optional(ARG);
    choice
}

/// `OTEL_PROPAGATORS`: whether W3C trace context is read and sent (`tracecontext`, the default;
/// `baggage` is accepted and ignored) or not (`none`).
fn propagate(r: &mut Reader<'_>) -> bool {
    const VAR: &str = "OTEL_PROPAGATORS";
    const EXPECTED: &str = "tracecontext (baggage may be listed too, and is ignored) or none";
    let Some(raw) = r.optional(VAR) else { return true };
    let items: Vec<String> = raw.split(',').map(|s| s.trim().to_ascii_lowercase()).filter(|s| !s.is_empty()).collect();
    if items == ["none"] {
        return false;
    }
    match items.iter().find(|item| !matches!(item.as_str(), "tracecontext" | "baggage")) {
        Some(item) if item == "none" => r.problem(VAR, format!("{raw:?} lists none with other propagators"), EXPECTED),
        Some(item) => r.problem(VAR, format!("{item:?} is not supported"), EXPECTED),
        None => return items.iter().any(|item| item == "tracecontext"),
    }
    true
}

/// `%XX` escapes decoded (the W3C baggage form of the OpenTelemetry lists); `None` for a broken
/// escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut bytes = s.bytes();
    let mut out = Vec::with_capacity(s.len());
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let high = hex(bytes.next()?)?;
            let low = hex(bytes.next()?)?;
            out.push((high * 16 + low) as u8);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}
