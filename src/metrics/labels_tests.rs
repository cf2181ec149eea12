//! Unit tests of the label sets created at start.

use super::labels::*;
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
        ("courier_token_refreshes_total", "result", &["success", "rejected", "failure"][..]),
    ] {
        for value in values {
            let line = format!("{name}{{{label}=\"{value}\"}} 0");
            assert!(text.lines().any(|l| l == line), "{line} missing");
        }
    }
    assert!(!text.contains("courier_http_requests_total{"), "no client is known before the clients file is read");
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
