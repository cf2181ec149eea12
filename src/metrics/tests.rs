use super::*;

#[test]
fn names_follow_prometheus_conventions() {
    let metrics = Metrics::new();
    metrics.http_requests.with_label_values(&["process", "200", "open"]).inc();
    metrics.upstream_attempts.with_label_values(&["success"]).inc();
    metrics.upstream_retries.with_label_values(&["timeout"]).inc();
    metrics.token_refreshes.with_label_values(&["success"]).inc();
    metrics.http_duration.with_label_values(&["process", "2xx", "open"]).observe(0.01);
    let text = String::from_utf8(metrics.render()).unwrap();
    for family in metrics.registry.gather() {
        let name = family.name();
        assert!(name.starts_with("courier_") || name.starts_with("process_"), "{name}");
        if family.get_field_type() == prometheus::proto::MetricType::COUNTER {
            assert!(name.ends_with("_total"), "counter {name} lacks _total");
        }
    }
    assert!(text.contains("courier_build_info{"));
    assert!(text.contains("courier_http_request_duration_seconds_bucket"));
    assert!(text.contains("process_cpu_seconds_total"));
    assert!(metrics.names().iter().any(|n| n == "courier_jobs_accepted_total"));
    assert!(metrics.names().iter().any(|n| n == "process_resident_memory_bytes"));
}

#[test]
fn build_info_names_the_version_and_the_commit_built_from() {
    let metrics = Metrics::new();
    let family = metrics.registry.gather().into_iter().find(|f| f.name() == "courier_build_info").unwrap();
    let [series] = family.get_metric() else { panic!("one build_info series: {family:?}") };
    let mut labels: Vec<(&str, &str)> = series.get_label().iter().map(|l| (l.name(), l.value())).collect();
    labels.sort();
    assert_eq!(labels, [("commit", env!("COURIER_GIT_COMMIT")), ("version", env!("CARGO_PKG_VERSION"))]);
    assert_eq!(series.get_gauge().get_value(), 1.0);
    let commit = env!("COURIER_GIT_COMMIT");
    assert!(commit == "unknown" || (commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit())), "{commit}");
}
