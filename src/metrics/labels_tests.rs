//! Unit tests of the label sets created at start.

use super::labels::*;
use super::tls::*;
use super::Metrics;

fn series(metrics: &Metrics) -> Vec<String> {
    let text = String::from_utf8(metrics.render()).unwrap();
    text.lines().filter(|l| l.starts_with("courier_")).map(|l| l.rsplit_once(' ').unwrap().0.to_owned()).collect()
}

#[test]
fn every_listed_label_value_exists_at_zero_from_the_start() {
    let metrics = Metrics::new();
    let text = String::from_utf8(metrics.render()).unwrap();
    for (name, label, values) in [
        ("courier_budget_pauses_total", "source", &PAUSE_SOURCES[..]),
        ("courier_breaker_transitions_total", "to", &BREAKER_STATES[..]),
        ("courier_callbacks_total", "result", &CALLBACK_RESULTS[..]),
        ("courier_callback_attempts_total", "result", &CALLBACK_ATTEMPT_RESULTS[..]),
        ("courier_jobs_finished_total", "state", &JOB_FINAL_STATES[..]),
        ("courier_limit_rejections_total", "limit", &LIMITS[..]),
        ("courier_tls_handshakes_total", "result", &TLS_HANDSHAKE_RESULTS[..]),
        (
            "courier_tls_certificate_expiry_timestamp_seconds",
            "certificate",
            &["gateway", "gateway_client_ca", "admin"][..],
        ),
        ("courier_token_refreshes_total", "result", &["success", "rejected", "failure"][..]),
        ("courier_quota_refusals_total", "reason", &["window_spent", "client_max", "reserved", "unavailable"][..]),
        ("courier_quota_state_writes_total", "result", &["ok", "failed"][..]),
    ] {
        for value in values {
            let line = format!("{name}{{{label}=\"{value}\"}} 0");
            assert!(text.lines().any(|l| l == line), "{line} missing");
        }
    }
    assert!(!text.contains("courier_http_requests_total{"), "no client is known before the clients file is read");
    assert!(!text.contains("courier_quota_used_requests{"), "no quota window is known before the quotas are set up");
}

#[test]
fn each_client_of_the_file_gets_its_request_series_and_unknown_callers_theirs() {
    let metrics = Metrics::new();
    metrics.add_clients(Some(&["alpha"]));
    let all = series(&metrics);
    let has = |s: &str| all.iter().any(|line| line == s);
    assert!(has(r#"courier_http_requests_total{client="alpha",route="process",status="503"}"#));
    assert!(has(r#"courier_http_requests_total{client="unknown",route="process",status="401"}"#));
    assert!(!has(r#"courier_http_requests_total{client="unknown",route="process",status="200"}"#));
    assert!(!all.iter().any(|s| s.contains(r#"client="open""#)), "a clients file has no open client");
    assert!(has(r#"courier_http_request_duration_seconds_count{client="alpha",route="status",status_class="5xx"}"#));

    let open = Metrics::new();
    open.add_clients(None);
    let all = series(&open);
    assert!(all.iter().any(|s| s == r#"courier_http_requests_total{client="open",route="process",status="200"}"#));
    assert!(!all.iter().any(|s| s.contains(r#"status="401""#)), "without keys nobody is refused one");
}

#[test]
fn each_quota_window_gets_its_series_and_each_client_one_per_window() {
    let metrics = Metrics::new();
    metrics.add_quota(&["day", "20s"], &["alpha", "beta"]);
    let all = series(&metrics);
    let has = |s: &str| all.iter().any(|line| line == s);
    for window in ["day", "20s"] {
        for name in [
            "courier_quota_limit_requests",
            "courier_quota_used_requests",
            "courier_quota_reset_timestamp_seconds",
            "courier_quota_window_seconds",
            "courier_quota_pace_requests_per_second",
        ] {
            assert!(has(&format!(r#"{name}{{window="{window}"}}"#)), "{name} {window}: {all:?}");
        }
        for client in ["alpha", "beta"] {
            assert!(has(&format!(r#"courier_quota_client_used_requests{{client="{client}",window="{window}"}}"#)));
        }
    }
    let windows = |all: &[String]| all.iter().filter(|s| s.starts_with("courier_quota_used_requests{")).count();
    assert_eq!(windows(&all), 2, "{all:?}");

    // A reload that adds a client adds its series and leaves the counts already there alone.
    metrics.quota_used.with_label_values(&["day"]).set(1234);
    metrics.quota_client_used.with_label_values(&["day", "alpha"]).set(1000);
    metrics.add_quota(&["day", "20s"], &["alpha", "beta", "gamma"]);
    let all = series(&metrics);
    assert!(all.iter().any(|s| s == r#"courier_quota_client_used_requests{client="gamma",window="20s"}"#));
    assert_eq!(windows(&all), 2, "{all:?}");
    assert_eq!(all.iter().filter(|s| s.starts_with("courier_quota_client_used_requests{")).count(), 6);
    assert_eq!(metrics.quota_used.with_label_values(&["day"]).get(), 1234);
    assert_eq!(metrics.quota_client_used.with_label_values(&["day", "alpha"]).get(), 1000);

    let none = Metrics::new();
    none.add_quota(&[], &["alpha"]);
    assert!(!series(&none).iter().any(|s| s.starts_with("courier_quota_client_used_requests")), "no quotas, no series");
}
