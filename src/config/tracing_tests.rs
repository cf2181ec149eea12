//! The `OTEL_*` variables: when tracing is on, what each value means, and every bad one
//! reported at once without quoting a secret.

use super::*;

use super::test_env as with;

fn tracing(pairs: &[(&str, &str)]) -> TracingConfig {
    Config::from_sources(&with(pairs), None).expect("valid configuration").tracing
}

/// The one error line of a configuration with `pairs` (there must be exactly one).
fn error(pairs: &[(&str, &str)]) -> String {
    let text = Config::from_sources(&with(pairs), None).expect_err("a bad setting").to_string();
    assert_eq!(text.lines().count(), 1, "one line:\n{text}");
    text
}

#[test]
fn tracing_is_off_without_an_endpoint_and_every_setting_has_its_default() {
    let off = tracing(&[]);
    assert!(!off.is_on());
    assert_eq!(format!("{off:?}"), format!("{:?}", TracingConfig::off()));
    assert_eq!(off.timeout, Duration::from_secs(10));
    assert_eq!((off.queue_max, off.batch_max), (2048, 512));
    assert_eq!((off.delay, off.export_timeout), (Duration::from_secs(5), Duration::from_secs(30)));
    assert_eq!(
        (off.service_name.as_str(), off.sampler, off.propagate),
        ("courier", SamplerChoice::ParentBasedAlwaysOn, true)
    );
}

#[test]
fn the_traces_endpoint_is_used_as_is_and_the_base_one_gets_v1_traces() {
    let endpoint = |pairs: &[(&str, &str)]| tracing(pairs).endpoint;
    let traces = "http://collector:4318/custom/traces/";
    assert_eq!(endpoint(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces)]).as_deref(), Some(traces));
    for (base, full) in [
        ("http://collector:4318", "http://collector:4318/v1/traces"),
        ("http://collector:4318/", "http://collector:4318/v1/traces"),
        ("https://collector/otlp/", "https://collector/otlp/v1/traces"),
        ("https://collector/otlp", "https://collector/otlp/v1/traces"),
    ] {
        assert_eq!(endpoint(&[("OTEL_EXPORTER_OTLP_ENDPOINT", base)]).as_deref(), Some(full), "{base}");
    }
    let both = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318"), ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces)];
    assert_eq!(endpoint(&both).as_deref(), Some(traces), "the traces variable wins");
}

#[test]
fn sdk_disabled_or_exporter_none_turn_tracing_off_despite_an_endpoint() {
    let on = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
    assert!(tracing(&[on]).is_on());
    assert!(tracing(&[on, ("OTEL_SDK_DISABLED", "false")]).is_on());
    assert!(!tracing(&[on, ("OTEL_SDK_DISABLED", "TRUE")]).is_on());
    assert!(!tracing(&[on, ("OTEL_TRACES_EXPORTER", "none")]).is_on());
    assert!(tracing(&[on, ("OTEL_TRACES_EXPORTER", "OTLP")]).is_on());
    let line = error(&[on, ("OTEL_SDK_DISABLED", "yes")]);
    assert_eq!(line, "OTEL_SDK_DISABLED: \"yes\" is not valid (expected: true or false)");
}

#[test]
fn every_sampler_maps_and_the_arg_counts_only_for_the_ratio_ones() {
    let sampler = |pairs: &[(&str, &str)]| tracing(pairs).sampler;
    let name = |value| ("OTEL_TRACES_SAMPLER", value);
    assert_eq!(sampler(&[name("always_on")]), SamplerChoice::AlwaysOn);
    assert_eq!(sampler(&[name("always_off")]), SamplerChoice::AlwaysOff);
    assert_eq!(sampler(&[name("traceidratio")]), SamplerChoice::Ratio(1.0));
    assert_eq!(sampler(&[name("parentbased_always_on")]), SamplerChoice::ParentBasedAlwaysOn);
    assert_eq!(sampler(&[name("ParentBased_Always_Off")]), SamplerChoice::ParentBasedAlwaysOff);
    let arg = ("OTEL_TRACES_SAMPLER_ARG", "0.01");
    assert_eq!(sampler(&[name("traceidratio"), arg]), SamplerChoice::Ratio(0.01));
    assert_eq!(sampler(&[name("parentbased_traceidratio"), arg]), SamplerChoice::ParentBasedRatio(0.01));
    assert_eq!(
        sampler(&[name("parentbased_traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0")]),
        SamplerChoice::ParentBasedRatio(0.0)
    );
    // The specification: samplers without an argument ignore it.
    assert_eq!(sampler(&[name("always_on"), ("OTEL_TRACES_SAMPLER_ARG", "lots")]), SamplerChoice::AlwaysOn);

    let line = error(&[name("parentbased_traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "1.5")]);
    assert_eq!(line, "OTEL_TRACES_SAMPLER_ARG: \"1.5\" is not valid (expected: a fraction from 0 to 1, e.g. 0.2)");
    for unsupported in ["jaeger_remote", "parentbased_jaeger_remote", "xray"] {
        let line = error(&[name(unsupported)]);
        let start = format!("OTEL_TRACES_SAMPLER: \"{unsupported}\" is not supported by courier (expected: one of ");
        assert!(line.starts_with(&start) && line.contains("parentbased_traceidratio)"), "{line}");
    }
    assert!(error(&[name("sometimes")])
        .starts_with("OTEL_TRACES_SAMPLER: \"sometimes\" is not a sampler (expected: one of"));
}

#[test]
fn values_courier_does_not_implement_are_errors_naming_what_it_does() {
    for (var, value, expected) in [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip", "none"),
        ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "zstd", "none"),
        ("OTEL_TRACES_EXPORTER", "zipkin", "otlp or none"),
        ("OTEL_PROPAGATORS", "b3", "tracecontext (baggage may be listed too, and is ignored) or none"),
    ] {
        assert_eq!(error(&[(var, value)]), format!("{var}: \"{value}\" is not supported (expected: {expected})"));
    }
    assert!(error(&[("OTEL_TRACES_EXPORTER", "otlp,console")]).contains("is not one exporter"));
    assert!(error(&[("OTEL_PROPAGATORS", "none,tracecontext")]).contains("lists none with other propagators"));
    // What is supported, in any case, as the specification reads its values.
    let fine = [("OTEL_EXPORTER_OTLP_PROTOCOL", "HTTP/Protobuf"), ("OTEL_EXPORTER_OTLP_COMPRESSION", "none")];
    assert!(Config::from_sources(&with(&fine), None).is_ok());
}

#[test]
fn propagators_choose_whether_trace_context_travels() {
    let propagate = |value| tracing(&[("OTEL_PROPAGATORS", value)]).propagate;
    assert!(propagate("tracecontext"));
    assert!(propagate("tracecontext, baggage"));
    assert!(!propagate("none"));
}

#[test]
fn headers_are_decoded_and_a_bad_entry_is_named_by_its_place_never_its_value() {
    let config = tracing(&[("OTEL_EXPORTER_OTLP_HEADERS", "API-Key=abc%20def%3D, x-tenant = blue")]);
    let headers: Vec<(&str, &str)> =
        config.headers.iter().map(|(n, v)| (n.as_str(), secrecy::ExposeSecret::expose_secret(v))).collect();
    assert_eq!(headers, [("api-key", "abc def="), ("x-tenant", "blue")]);
    let traces = [("OTEL_EXPORTER_OTLP_HEADERS", "a=1"), ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "b=2")];
    assert_eq!(tracing(&traces).headers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["b"]);

    let secret = "s3cr3t-t0ken";
    for (value, problem) in [
        (format!("x-tenant=blue,Authorization: Bearer {secret}"), "entry 2 has no \"=\""),
        (format!("Authorization Bearer={secret}"), "entry 1 has no valid header name before its \"=\""),
        (format!("api-key={secret}%zz"), "entry 1 (api-key) is not valid percent-encoded UTF-8"),
        (format!("api-key={secret}%0A"), "entry 1 (api-key) holds characters a header value cannot"),
        ("api-key=".to_owned(), "entry 1 (api-key) has an empty value"),
    ] {
        let line = error(&[("OTEL_EXPORTER_OTLP_HEADERS", &value)]);
        assert!(
            line.starts_with(&format!("OTEL_EXPORTER_OTLP_HEADERS: {problem} (expected: key=value pairs")),
            "{line}"
        );
        assert!(!line.contains(secret), "{line}");
    }
}

#[test]
fn debug_shows_header_names_but_never_their_values() {
    let pairs =
        [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s3cr3t-t0ken")];
    let config = Config::from_sources(&with(&pairs), None).unwrap();
    let shown = format!("{config:?}");
    assert!(shown.contains("(\"api-key\", \"[REDACTED]\")") && shown.contains("http://c:4318/v1/traces"), "{shown}");
    assert!(!shown.contains("s3cr3t-t0ken"), "{shown}");
}

#[test]
fn an_endpoint_with_credentials_or_no_host_is_refused_without_quoting_credentials() {
    let line = error(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://user:hunter2@collector:4318")]);
    assert!(line.starts_with("OTEL_EXPORTER_OTLP_ENDPOINT: holds a user name or password"), "{line}");
    assert!(!line.contains("hunter2"), "{line}");
    let line = error(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://collector:4318/v1/traces?key=hunter2")]);
    assert!(
        line.starts_with("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: has a query or fragment") && !line.contains("hunter2")
    );
    let line = error(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4318")]);
    assert!(
        line.starts_with("OTEL_EXPORTER_OTLP_ENDPOINT: \"localhost:4318\" is not an http(s) URL with a host"),
        "{line}"
    );
}

#[test]
fn the_service_name_comes_from_its_variable_else_the_resource_attributes() {
    let attributes = ("OTEL_RESOURCE_ATTRIBUTES", "service.name=checkout-gw, deployment.environment=prod%2Ceu");
    let config = tracing(&[attributes]);
    assert_eq!(config.service_name, "checkout-gw");
    assert_eq!(config.resource, [("deployment.environment".to_owned(), "prod,eu".to_owned())]);
    assert_eq!(tracing(&[attributes, ("OTEL_SERVICE_NAME", "edge")]).service_name, "edge");
    let line = error(&[("OTEL_RESOURCE_ATTRIBUTES", "region=eu,zone")]);
    assert!(
        line.starts_with("OTEL_RESOURCE_ATTRIBUTES: entry \"zone\" has no \"=\" (expected: key=value pairs"),
        "{line}"
    );
}

#[test]
fn batch_settings_are_milliseconds_and_the_batch_fits_the_queue() {
    let config = tracing(&[
        ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "100"),
        ("OTEL_BSP_SCHEDULE_DELAY", "250"),
        ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1500"),
    ]);
    assert_eq!((config.queue_max, config.batch_max), (100, 100));
    assert_eq!((config.delay, config.timeout), (Duration::from_millis(250), Duration::from_millis(1500)));
    let line = error(&[("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4096")]);
    let expected = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE: 4096 is above OTEL_BSP_MAX_QUEUE_SIZE (2048)";
    assert_eq!(line, format!("{expected} (expected: at most the queue size)"));
    let line = error(&[("OTEL_BSP_SCHEDULE_DELAY", "5s")]);
    assert_eq!(
        line,
        "OTEL_BSP_SCHEDULE_DELAY: \"5s\" is not a whole number (expected: a whole number of milliseconds)"
    );
}

#[test]
fn every_bad_otel_variable_is_one_line_of_one_error() {
    let env = with(&[
        ("OTEL_SDK_DISABLED", "maybe"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://collector"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "0"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "token s3cr3t"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/courier-ca.pem"),
        ("OTEL_TRACES_SAMPLER", "xray"),
        ("OTEL_BSP_EXPORT_TIMEOUT", "-1"),
    ]);
    let errors = Config::from_sources(&env, None).unwrap_err();
    let vars: Vec<&str> = errors.0.iter().map(|e| e.var.as_str()).collect();
    assert_eq!(
        vars,
        [
            "OTEL_SDK_DISABLED",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            "OTEL_TRACES_SAMPLER",
            "OTEL_BSP_EXPORT_TIMEOUT",
        ]
    );
    let text = errors.to_string();
    assert_eq!(text.lines().count(), 8, "{text}");
    assert!(!text.contains("s3cr3t"), "{text}");
}

#[test]
fn the_config_file_may_set_the_otel_variables() {
    let dir = std::env::temp_dir().join(format!("courier-config-otel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("courier.toml");
    // Lower-case keys too, as for every setting; the ARG of a sampler without one is still known.
    let text = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT = \"http://c:4318/v1/traces\"",
        "otel_traces_sampler = \"always_off\"",
        "OTEL_BSP_SCHEDULE_DELAY = 100",
        "OTEL_EXPORTER_OTLP_COMPRESSION = \"none\"",
        "OTEL_TRACES_SAMPLER_ARG = 0.5",
    ]
    .join("\n");
    std::fs::write(&path, text).unwrap();
    let config = Config::from_sources(&with(&[]), Some(&path)).unwrap().tracing;
    assert_eq!(config.endpoint.as_deref(), Some("http://c:4318/v1/traces"));
    assert_eq!((config.sampler, config.delay), (SamplerChoice::AlwaysOff, Duration::from_millis(100)));
    std::fs::write(&path, "OTEL_TRACES_SAMPLR = \"always_off\"\n").unwrap();
    let text = Config::from_sources(&with(&[]), Some(&path)).unwrap_err().to_string();
    assert_eq!(text, "OTEL_TRACES_SAMPLR: not a setting courier knows (did you mean OTEL_TRACES_SAMPLER?)");
    std::fs::remove_dir_all(dir).unwrap();
}
