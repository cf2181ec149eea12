//! The alert rules: promtool accepts them, each has a summary, a description and a runbook, and
//! promtool's unit tests (grafana/alerts/courier.rules.test.yml) see each alert they cover fire
//! where it should and stay silent where it should not. (The dashboard and a real Prometheus:
//! tests/observability.rs.)

mod support;

use std::collections::BTreeSet;
use std::process::Command;

use support::prometheus::which;

const RULES: &str = "grafana/alerts/courier.rules.yml";
/// promtool's unit tests of the rules (`promtool test rules`).
const RULE_TESTS: &str = "grafana/alerts/courier.rules.test.yml";

/// Runs promtool with `args`; returns whether it succeeded and what it wrote. A missing promtool
/// fails the test, naming what to install.
fn promtool(args: &[&str]) -> (bool, String) {
    let promtool = which("promtool").unwrap_or_else(|| {
        panic!("promtool is missing: install the Debian package `prometheus` (scripts/test-all does)")
    });
    let output = Command::new(promtool).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[test]
fn the_alert_rules_pass_promtool() {
    let (success, text) = promtool(&["check", "rules", RULES]);
    assert!(success, "{text}");
    let rules = std::fs::read_to_string(RULES).unwrap();
    let count = rules.lines().filter(|l| l.trim().starts_with("- alert: ")).count();
    assert!(count >= 9, "the alert rules lost some: {count}");
    assert!(text.contains(&format!("SUCCESS: {count} rules found")), "{text}");
    let runbooks = std::fs::read_to_string("docs/runbooks.md").unwrap();
    for alert in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(runbooks.contains(&format!("## Runbook: {alert}")), "docs/runbooks.md has no runbook for {alert}");
    }
    assert_eq!(rules.matches("summary:").count(), count);
    assert_eq!(rules.matches("description:").count(), count);
}

/// The quota alerts on synthetic series (grafana/alerts/courier.rules.test.yml): a linear
/// forecast above the limit fires after its 30 minutes, not when the reset comes first or the
/// count is flat; a spent window pages after a minute; windows under an hour alert nothing; a
/// replica cut off from Redis pages after 2 minutes, a failover of seconds does not; wrong client
/// keys, invalid requests and spending above a client's baseline alert past their thresholds and
/// only there; certificates alert 14 and 2 days ahead (a plain listener never), refused TLS
/// handshakes past a tenth.
#[test]
fn the_quota_and_shared_state_alerts_fire_when_they_should() {
    let (success, text) = promtool(&["test", "rules", RULE_TESTS]);
    assert!(success && text.contains("SUCCESS"), "{text}");
    // Each quota alert is expected both to fire and to stay silent somewhere in the tests.
    let tests = std::fs::read_to_string(RULE_TESTS).unwrap();
    let mut cases = BTreeSet::new();
    let mut alert = "";
    for line in tests.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("alertname: ") {
            alert = name;
        } else if let Some(expected) = line.strip_prefix("exp_alerts:") {
            cases.insert((alert, expected.trim() != "[]"));
        }
    }
    let alerts = [
        "CourierQuotaExhaustionPredicted",
        "CourierQuotaExhausted",
        "CourierSharedStateDegraded",
        "CourierAuthFailuresHigh",
        "CourierInvalidRequestsHigh",
        "CourierClientSpendAnomalous",
        "CourierTlsCertificateExpiringSoon",
        "CourierTlsCertificateExpiringCritical",
        "CourierTlsHandshakesFailing",
    ];
    for alert in alerts {
        assert!(cases.contains(&(alert, true)), "{RULE_TESTS} never expects {alert} to fire");
        assert!(cases.contains(&(alert, false)), "{RULE_TESTS} never expects {alert} to stay silent");
    }
}
