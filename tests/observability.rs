//! What SREs see: the dashboard is well formed, names only metrics courier exports and links its
//! latency panels to their slow traces (Tempo, Jaeger), and a real Prometheus scraping courier
//! through traffic and faults gets data for every dashboard panel and fires the breaker-open
//! alert's expression. (The alert rules with promtool: tests/alert_rules.rs.)

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{json, Value};
use support::prometheus::Prometheus;
use support::receiver::Receiver;
use support::redis::RedisServer;
use support::{body, PairBuilder};

const DASHBOARD: &str = "grafana/provisioning/dashboards/courier.json";
const RULES: &str = "grafana/alerts/courier.rules.yml";

fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).expect("the dashboard is JSON")
}

/// Every panel that shows data (rows are layout), with rows' nested panels.
fn panels(dashboard: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            out.extend(panel["panels"].as_array().into_iter().flatten().cloned());
        } else {
            out.push(panel.clone());
        }
    }
    out
}

fn exprs(panel: &Value) -> Vec<String> {
    panel["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_owned()).collect()
}

/// Metric names an expression mentions.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &expr[i..];
        let starts = (rest.starts_with("courier_") || rest.starts_with("process_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if starts {
            let len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            names.insert(rest[..len].to_owned());
            i += len;
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn the_dashboard_is_well_formed_and_names_only_exported_metrics() {
    let dashboard = dashboard();
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 39);
    let variables: Vec<&str> =
        dashboard["templating"]["list"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(variables, ["DS_PROMETHEUS", "instance", "client", "DS_TEMPO", "DS_JAEGER", "trace_service"]);
    let rows: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == "row")
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        rows,
        [
            "Traffic (RED)",
            "Upstream health",
            "Rate budget",
            "Quotas",
            "Circuit breaker",
            "Token lifecycle",
            "Response cache",
            "Async jobs and callbacks",
            "Redis and the fleet",
            "Security",
            "Process"
        ]
    );

    let exported: BTreeSet<String> = courier::metrics::Metrics::new().names().iter().cloned().collect();
    let panels = panels(&dashboard);
    assert!(panels.len() >= 20);
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel without a title: {panel}");
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no target");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
            let expr = target["expr"].as_str().expect("expr");
            for name in metric_names(expr) {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix).filter(|b| exported.contains(*b)))
                    .unwrap_or(&name);
                assert!(exported.contains(base), "{title}: {name} is not a metric courier exports");
            }
        }
    }
}

/// Percent-decodes a URL component (`%XX`, nothing else).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("a bad escape %{hex} in {text}")));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// The one pane of a data link into Grafana Explore, its JSON decoded. Grafana fills in `${...}`
/// placeholders only where they stand unquoted, so everything else must be percent-encoded and
/// they must not be.
fn explore_pane(url: &str) -> Value {
    let (path, query) = url.split_once('?').unwrap_or_else(|| panic!("no query: {url}"));
    assert_eq!(path, "/explore", "{url}");
    let panes: Vec<&str> = query.split('&').filter_map(|p| p.strip_prefix("panes=")).collect();
    assert_eq!(panes.len(), 1, "{url}");
    let raw = panes[0];
    assert!(!raw.contains("%24%7B"), "a quoted placeholder Grafana will not fill in: {raw}");
    let unquoted = regex_lite::Regex::new(r"\$\{[A-Za-z_.]+\}").unwrap().replace_all(raw, "");
    assert!(unquoted.chars().all(|c| c.is_ascii_alphanumeric() || "%-_.~".contains(c)), "not percent-encoded: {raw}");
    let panes: Value = serde_json::from_str(&percent_decode(raw)).expect("the panes are JSON");
    let panes = panes.as_object().unwrap();
    assert_eq!(panes.len(), 1, "{panes:?}");
    panes.values().next().unwrap().clone()
}

#[test]
fn every_latency_panel_links_to_its_slow_traces_in_tempo_and_jaeger() {
    let dashboard = dashboard();
    let latency: Vec<Value> = panels(&dashboard)
        .into_iter()
        .filter(|p| {
            p["fieldConfig"]["defaults"]["unit"] == "s" && exprs(p).iter().all(|e| e.starts_with("histogram_quantile("))
        })
        .collect();
    let titles: Vec<&str> = latency.iter().map(|p| p["title"].as_str().unwrap()).collect();
    for title in [
        "Latency p50 / p99 by route",
        "Latency p99 by status class",
        "Upstream attempt latency",
        "Job duration p50 / p99",
    ] {
        assert!(titles.contains(&title), "{title} is not among the latency panels {titles:?}");
    }
    let range = json!({"from": "${__from}", "to": "${__to}"});
    for panel in &latency {
        let title = panel["title"].as_str().unwrap();
        let links = panel["fieldConfig"]["defaults"]["links"].as_array().unwrap_or_else(|| panic!("{title}: no links"));
        let names: Vec<&str> = links.iter().map(|l| l["title"].as_str().unwrap()).collect();
        assert_eq!(names, ["Slow traces in Tempo", "Slow traces in Jaeger"], "{title}");
        // Spans carry courier.route = the metric's route label: a panel by route filters by it.
        let by_route = exprs(panel).iter().any(|e| e.contains("by (le, route)"));

        let tempo = explore_pane(links[0]["url"].as_str().unwrap());
        assert_eq!(tempo["datasource"], "${DS_TEMPO}", "{title}");
        assert_eq!(tempo["range"], range, "{title}");
        let query = &tempo["queries"][0];
        assert_eq!(query["datasource"], json!({"type": "tempo", "uid": "${DS_TEMPO}"}), "{title}");
        assert_eq!(query["queryType"], "traceql", "{title}");
        let traceql = query["query"].as_str().unwrap();
        assert!(traceql.starts_with(r#"{resource.service.name="${trace_service}" && "#), "{title}: {traceql}");
        assert!(traceql.ends_with(" && duration >= ${__value.raw}s}"), "{title}: {traceql}");
        assert_eq!(
            traceql.contains(r#" && span.courier.route="${__field.labels.route}""#),
            by_route,
            "{title}: {traceql}"
        );

        let jaeger = explore_pane(links[1]["url"].as_str().unwrap());
        assert_eq!(jaeger["datasource"], "${DS_JAEGER}", "{title}");
        assert_eq!(jaeger["range"], range, "{title}");
        let query = &jaeger["queries"][0];
        assert_eq!(query["datasource"], json!({"type": "jaeger", "uid": "${DS_JAEGER}"}), "{title}");
        assert_eq!(query["queryType"], "search", "{title}");
        assert_eq!(query["service"], "${trace_service}", "{title}");
        assert_eq!(query["minDuration"], "${__value.raw}s", "{title}");
        let tags = query["tags"].as_str().unwrap_or_default();
        assert_eq!(tags.split(' ').any(|t| t == "courier.route=${__field.labels.route}"), by_route, "{title}: {tags}");
        let operation = query["operation"].as_str().unwrap_or_default();
        assert!(!(tags.is_empty() && operation.is_empty()), "{title}: the search is not narrowed to its spans");
    }
    // The variables the links name.
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let variable = |name: &str| variables.iter().find(|v| v["name"] == name).unwrap().clone();
    for (name, plugin) in [("DS_TEMPO", "tempo"), ("DS_JAEGER", "jaeger")] {
        assert_eq!(variable(name)["type"], "datasource", "{name}");
        assert_eq!(variable(name)["query"], plugin, "{name} lists the {plugin} data sources");
    }
    assert_eq!(variable("trace_service")["type"], "textbox");
    assert_eq!(variable("trace_service")["current"]["value"], "courier", "service.name defaults to courier");
}

/// The dashboard's variables filled in, as Grafana would with "All" selected.
fn filled(expr: &str) -> String {
    expr.replace("$instance", ".*").replace("$client", ".*").replace("$__rate_interval", "1m")
}

#[actix_rt::test]
async fn prometheus_gets_data_for_every_panel_and_the_breaker_alert_fires() {
    let receiver = Receiver::start(&[]).await;
    // Shared state through a real Redis, so the "Redis and the fleet" row has data.
    let redis = RedisServer::start();
    let pair = PairBuilder::default()
        .env("REDIS_URL", redis.url())
        .sim(|s| {
            s.rate_limit_per_minute = 1200;
            s.rate_burst = 40;
        })
        .env("EXTERNAL_API_CACHE_TTL", "300")
        .env("EXTERNAL_API_RATE_LIMIT", "1200")
        .env("EXTERNAL_API_RATE_BURST", "2")
        .env("EXTERNAL_API_MAX_RETRIES", "1")
        .env("COURIER_BREAKER_FAILURES", "3")
        .env("COURIER_BREAKER_OPEN", "60")
        .env("COURIER_CALLBACK_SECRET", "whsec_prom")
        .env("COURIER_CALLBACK_ALLOW", "127.0.0.1")
        // Quota windows, so the Quotas row has data; far from spent by this test's attempts.
        .env("EXTERNAL_API_QUOTAS", "100000/day, 5000/1h")
        .log_level("warning")
        .start()
        .await;
    // A second replica with a clients file, so the Security row has failed authentications and a
    // lockout to show.
    let (guarded, clients_file) = support::security::guarded_beside(&pair, "observability-security").await;
    // A third serving HTTPS, so the TLS panels have a certificate to show.
    let pki = support::tls::Pki::new("observability");
    let (ca, _) = pki.ca("ca");
    let server = pki.server("server", &ca, "courier");
    let tls = PairBuilder::default()
        .env("COURIER_TLS_CERT_FILE", server.cert.display().to_string())
        .env("COURIER_TLS_KEY_FILE", server.key.display().to_string())
        .log_level("warning")
        .start()
        .await;
    let targets = [pair.courier.admin_addr, guarded.courier.admin_addr, tls.courier.admin_addr].map(|a| a.to_string());
    let prometheus = Prometheus::start(&targets, &[Path::new(RULES)]).await;
    // Scraped before the traffic, so that increase() counts its first events.
    let scraped = prometheus.wait_for("count(up == 1) == 3", Duration::from_secs(10)).await;
    assert_eq!(scraped.len(), 1, "the three replicas scraped: {scraped:?}");
    support::security::lock_out(&guarded, "127.0.0.2").await;
    for i in 0..5 {
        let served = guarded.process_with(body(&format!("alpha {i}")), &[("authorization", "Bearer alpha-key")]).await;
        assert_eq!(served.status, 200, "{served:?}");
    }
    // An invalid request, refused before the upstream.
    assert_eq!(pair.process_raw("application/json", b"{not json".to_vec()).await.status, 400);

    // Misses that queue for permits, then hits of the same answers.
    let misses = join_all((0..12).map(|i| pair.process(body(&format!("panel {i}"))))).await;
    assert!(misses.iter().all(|a| a.status == 200), "{misses:?}");
    for i in 0..6 {
        assert_eq!(pair.process(body(&format!("panel {i}"))).await.header("x-cache"), Some("HIT"));
    }
    // Over budget: immediate 429s.
    let refused =
        join_all((0..20).map(|i| pair.process_with(body(&format!("rush {i}")), &[("x-request-timeout", "0.05")])))
            .await;
    assert!(refused.iter().any(|a| a.status == 429));
    // A transient upstream failure, retried.
    pair.faults(json!({"error_count": 1, "error_status": 503})).await;
    assert_eq!(pair.process(body("retried")).await.status, 200);
    // The upstream's own rate limit, learned as a pause.
    pair.faults(json!({"rate_consume": 1000})).await;
    assert_eq!(pair.process(body("paused")).await.status, 200);
    // An async job with a callback.
    let job = pair
        .process(json!({"data": {"input": "job"}, "options": {"async": true, "callback_url": receiver.url("/cb")}}))
        .await;
    assert_eq!(job.status, 202);
    receiver.wait_for(1).await;
    // A purge, for the evictions panel.
    let key = misses[0].header("x-cache-key").unwrap().to_owned();
    pair.http.delete(pair.admin_url(&format!("/admin/cache/{key}"))).send().await.unwrap();
    // An outage that opens the breaker.
    pair.faults(json!({"outage": true})).await;
    let mut outcome = Vec::new();
    for i in 0..10 {
        let answer = pair.process(body(&format!("outage {i}"))).await;
        outcome.push(answer.status.as_u16());
        if answer.status == 503 {
            assert_eq!(answer.error_code(), "circuit_open");
            break;
        }
        assert_eq!(answer.status, 502);
    }
    assert_eq!(outcome.last(), Some(&503), "the breaker opened: {outcome:?}");

    // The breaker-open alert's expression fires during the outage.
    let rules = std::fs::read_to_string(RULES).unwrap();
    let alert_expr = rules
        .lines()
        .skip_while(|l| !l.contains("alert: CourierBreakerOpen"))
        .find_map(|l| l.trim().strip_prefix("expr: "))
        .unwrap();
    let firing = prometheus.wait_for(alert_expr, Duration::from_secs(15)).await;
    assert_eq!(firing.len(), 1, "{alert_expr} returned {firing:?}");
    assert_eq!(firing[0]["metric"]["instance"], pair.courier.admin_addr.to_string());
    let alerts = prometheus.wait_for(r#"ALERTS{alertname="CourierBreakerOpen"}"#, Duration::from_secs(10)).await;
    assert_eq!(alerts[0]["metric"]["alertstate"], "pending", "pending until its minute is up: {alerts:?}");

    // Every panel's queries return data.
    let mut empty = Vec::new();
    for panel in panels(&dashboard()) {
        for expr in exprs(&panel) {
            let result = prometheus.wait_for(&filled(&expr), Duration::from_secs(10)).await;
            if result.is_empty() {
                empty.push(format!("{}: {expr}", panel["title"]));
            }
        }
    }
    assert!(empty.is_empty(), "panels without data:\n{}", empty.join("\n"));
    // The variables' own queries too.
    let instances = prometheus.query("count by (instance) (courier_build_info)").await;
    assert_eq!(instances.len(), 3);
    let clients = prometheus.query("count by (client) (courier_http_requests_total)").await;
    assert!(!clients.is_empty());

    drop(prometheus);
    tls.stop().await;
    guarded.stop().await;
    pair.stop().await;
    receiver.stop().await;
    let _ = std::fs::remove_dir_all(clients_file.parent().unwrap());
}

#[actix_rt::test]
async fn admin_state_is_one_snapshot_of_the_actors() {
    let pair =
        PairBuilder::default().env("EXTERNAL_API_CACHE_TTL", "60").env("EXTERNAL_API_RATE_LIMIT", "600").start().await;
    pair.process(body("state of things")).await;
    let state = support::read_answer(pair.http.get(pair.admin_url("/admin/state")).send().await.unwrap()).await;
    assert_eq!(state.status, 200);
    let s = &state.body;
    assert_eq!(s["token"]["ready"], true);
    assert_eq!(s["token"]["generation"], 1);
    let expires_in = s["token"]["expires_in_seconds"].as_f64().unwrap();
    assert!(expires_in > 3500.0 && expires_in <= 3600.0, "{s}");
    assert_eq!(s["budget"]["limit_per_minute"], 600);
    assert!(s["budget"]["permits_available"].as_i64().is_some());
    assert_eq!(s["budget"]["queue_depth"], 0);
    assert_eq!(s["breaker"]["state"], "closed");
    assert_eq!(s["breaker"]["mode"], "auto");
    assert_eq!(s["cache"]["entries"], 1);
    assert!(s["cache"]["bytes"].as_i64().unwrap() > 0);
    assert_eq!(s["jobs"]["store"], "memory");
    assert_eq!(s["jobs"]["pending"], 0);
    pair.stop().await;
}

#[test]
fn the_dashboard_is_what_its_generator_writes() {
    let output = Command::new("python3").arg("grafana/gen_dashboard.py").output().expect("python3 runs the generator");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let generated: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(generated, dashboard(), "regenerate: python3 grafana/gen_dashboard.py > {DASHBOARD}");
}
