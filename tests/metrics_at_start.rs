//! Every series exists from the start: a fresh courier, before any traffic, exports every
//! `courier_` series its dashboards and alert rules query, so a panel shows 0 rather than "No
//! data", and `increase()` / `rate()` count the first event of every label set (a series born
//! at its first event has no earlier sample to count from). The queries are read from
//! `grafana/`, so a new panel or rule is checked without editing this test; the first requests
//! of each kind then must add no series, and no series may carry an unbounded or meaningless
//! label value.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::receiver::Receiver;
use support::{body, read_answer, Pair, PairBuilder};

const DASHBOARDS: &str = "grafana/provisioning/dashboards";
const ALERTS: &str = "grafana/alerts";
/// Labels Prometheus adds to every scraped series: courier does not export them.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

/// One `name{label op "value", ...}` of a query, with the matchers whose value is fixed (not a
/// dashboard variable) and whose label courier exports.
#[derive(Debug)]
struct Selector {
    metric: String,
    matchers: Vec<(String, String, String)>,
}

/// One exported sample.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Series {
    name: String,
    labels: BTreeMap<String, String>,
}

fn files(dir: &str, ext: &str) -> Vec<(String, String)> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == ext))
        .map(|path| (path.display().to_string(), std::fs::read_to_string(&path).unwrap()))
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no *.{ext} in {dir}");
    found
}

/// Every query of every dashboard: panel targets and the variables' queries.
fn dashboard_queries() -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr" | "query" | "definition", Value::String(text)) => out.push(text.clone()),
                        _ => walk(value, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (path, text) in files(DASHBOARDS, "json") {
        let dashboard: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        walk(&dashboard, &mut out);
    }
    out
}

/// Every `expr:` of every rule file, one-line or block (`expr: |`).
fn alert_queries() -> Vec<String> {
    let mut out = Vec::new();
    for (_, text) in files(ALERTS, "yml") {
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let Some(rest) = line.trim_start().strip_prefix("expr:") else { continue };
            let rest = rest.trim();
            if !rest.starts_with(['|', '>']) {
                out.push(rest.trim_matches(['"', '\'']).to_owned());
                continue;
            }
            let indent = line.len() - line.trim_start().len();
            let block = lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .map(|l| l.trim())
                .collect::<Vec<_>>()
                .join(" ");
            out.push(block);
        }
    }
    out
}

/// The `courier_` selectors of a PromQL expression.
fn selectors(expr: &str) -> Vec<Selector> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(found) = expr[i..].find("courier_") {
        let start = i + found;
        if expr[..start].chars().next_back().is_some_and(word) {
            i = start + 1;
            continue;
        }
        let end = expr[start..].find(|c: char| !word(c)).map_or(expr.len(), |n| start + n);
        let mut selector = Selector { metric: expr[start..end].to_owned(), matchers: Vec::new() };
        i = end;
        if expr[end..].trim_start().starts_with('{') {
            let open = end + expr[end..].find('{').unwrap();
            let (matchers, close) = matchers(&expr[open + 1..]);
            selector.matchers = matchers
                .into_iter()
                .filter(|(label, _, value)| !value.contains('$') && !TARGET_LABELS.contains(&label.as_str()))
                .collect();
            i = open + 1 + close;
        }
        out.push(selector);
    }
    out
}

/// Parses `label op "value", ...}`; returns the matchers and the offset past the `}`.
fn matchers(text: &str) -> (Vec<(String, String, String)>, usize) {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace() || *c == ',').is_some() {}
        match chars.next() {
            Some((i, '}')) => return (out, i + 1),
            Some((_, c)) => {
                let mut label = c.to_string();
                while let Some((_, c)) = chars.next_if(|(_, c)| c.is_ascii_alphanumeric() || *c == '_') {
                    label.push(c);
                }
                while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
                let mut op = String::new();
                while let Some((_, c)) = chars.next_if(|(_, c)| matches!(c, '=' | '!' | '~')) {
                    op.push(c);
                }
                while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
                assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "a matcher's value is quoted: {text}");
                let mut value = String::new();
                loop {
                    match chars.next().expect("a closed string").1 {
                        '\\' => value.push(chars.next().expect("an escaped character").1),
                        '"' => break,
                        c => value.push(c),
                    }
                }
                out.push((label, op, value));
            }
            None => panic!("an unclosed selector: {text}"),
        }
    }
}

fn satisfies(series: &Series, (label, op, value): &(String, String, String)) -> bool {
    let actual = series.labels.get(label).map_or("", String::as_str);
    let regex = || regex_lite::Regex::new(&format!("^(?:{value})$")).expect("a valid matcher regex");
    match op.as_str() {
        "=" => actual == value,
        "!=" => actual != value,
        "=~" => regex().is_match(actual),
        "!~" => !regex().is_match(actual),
        other => panic!("unknown matcher operator {other}"),
    }
}

/// Every sample of a text exposition (name and labels).
fn exposition(text: &str) -> BTreeSet<Series> {
    let mut out = BTreeSet::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (name, labels) = match line.split_once('{') {
            Some((name, rest)) => (name, matchers(rest).0),
            None => (line.split_once(' ').expect("name and value").0, Vec::new()),
        };
        let labels = labels.into_iter().map(|(label, _, value)| (label, value)).collect();
        out.insert(Series { name: name.to_owned(), labels });
    }
    out
}

fn clients_file(tag: &str) -> std::path::PathBuf {
    support::two_clients_file(&format!("metrics-at-start-{tag}"))
}

/// Asserts that every series a query selects is among `exported`.
fn assert_queried_series_exported(exported: &BTreeSet<Series>) {
    let queries: Vec<String> = dashboard_queries().into_iter().chain(alert_queries()).collect();
    let selectors: Vec<Selector> = queries.iter().flat_map(|q| selectors(q)).collect();
    assert!(selectors.len() >= 50, "the queries lost their selectors: {}", selectors.len());
    assert!(selectors.iter().any(|s| !s.matchers.is_empty()), "no fixed matcher found: {selectors:?}");
    let missing: BTreeSet<String> = selectors
        .iter()
        .filter(|s| {
            !exported.iter().any(|series| series.name == s.metric && s.matchers.iter().all(|m| satisfies(series, m)))
        })
        .map(|s| {
            let matchers: Vec<String> = s.matchers.iter().map(|(l, op, v)| format!("{l}{op}\"{v}\"")).collect();
            format!("{}{{{}}}", s.metric, matchers.join(", "))
        })
        .collect();
    assert!(missing.is_empty(), "queried but not exported by a fresh courier:\n{}", Vec::from_iter(missing).join("\n"));
}

/// One upstream attempt of each kind (two server errors: one retried, one not).
fn attempts_of_every_kind() -> [courier::upstream::Attempt; 13] {
    use courier::upstream::Attempt;
    [
        Attempt::Success(bytes::Bytes::new()),
        Attempt::Rejected { status: 422, message: String::new() },
        Attempt::Unauthorized,
        Attempt::Forbidden,
        Attempt::RateLimited,
        Attempt::ServerError(503),
        Attempt::ServerError(501),
        Attempt::OtherStatus(404),
        Attempt::Timeout,
        Attempt::Connect("refused"),
        Attempt::Invalid("not JSON"),
        Attempt::Tls("tls: unknown CA"),
        Attempt::TooLarge,
    ]
}

/// Asserts every label value is bounded (a name from a fixed list, a status code, a client of
/// the file) and means something.
fn assert_label_values_bounded(exported: &BTreeSet<Series>, clients: &[&str]) {
    let snake = regex_lite::Regex::new("^[a-z][a-z0-9_]{0,31}$").unwrap();
    // A quota window: a calendar window or a fixed length as configured (`20s`, `15m`).
    let window = regex_lite::Regex::new("^(hour|day|month|[1-9][0-9]*[smhd])$").unwrap();
    // One attempt of each kind: a retry's reason is the outcome of an attempt that is retried.
    let attempts = attempts_of_every_kind();
    let retry_reasons: BTreeSet<&str> =
        attempts.iter().filter(|a| a.retryable()).map(|a| a.outcome().as_str()).collect();
    let mut bad = Vec::new();
    for series in exported.iter().filter(|s| s.name.starts_with("courier_")) {
        for (label, value) in &series.labels {
            let ok = match label.as_str() {
                "client" => clients.contains(&value.as_str()),
                "status" => value.parse::<u16>().is_ok_and(|s| (200..600).contains(&s)),
                "status_class" => ["2xx", "3xx", "4xx", "5xx"].contains(&value.as_str()),
                "version" => value == env!("CARGO_PKG_VERSION"),
                "commit" => value == env!("COURIER_GIT_COMMIT"),
                "le" => value == "+Inf" || value.parse::<f64>().is_ok(),
                "window" => window.is_match(value),
                "reason" if series.name == "courier_upstream_retries_total" => retry_reasons.contains(value.as_str()),
                "state" if series.name == "courier_jobs_finished_total" => {
                    ["completed", "failed"].contains(&value.as_str())
                }
                "state" if series.name == "courier_jobs" => ["pending", "processing"].contains(&value.as_str()),
                _ => snake.is_match(value),
            };
            if !ok {
                bad.push(format!("{}{{{label}=\"{value}\"}}", series.name));
            }
        }
    }
    assert!(bad.is_empty(), "unbounded or meaningless label values:\n{}", bad.join("\n"));
}

fn values_of<'a>(exported: &'a BTreeSet<Series>, name: &str, label: &str) -> BTreeSet<&'a str> {
    exported.iter().filter(|s| s.name == name).filter_map(|s| s.labels.get(label)).map(String::as_str).collect()
}

/// The series a scrape added to `before`.
fn new_series(before: &BTreeSet<Series>, after: &BTreeSet<Series>) -> Vec<String> {
    after.difference(before).filter(|s| s.name.starts_with("courier_")).map(|s| format!("{s:?}")).collect()
}

async fn get(pair: &Pair, path: &str, headers: &[(&str, &str)]) -> u16 {
    let mut request = pair.http.get(pair.url(path));
    for header in headers {
        request = request.insert_header(*header);
    }
    read_answer(request.send().await.unwrap()).await.status.as_u16()
}

/// Polls `/metrics` (bounded) until the sample `name{labels}` reaches `value`.
async fn wait_metric(pair: &Pair, name: &str, labels: &[(&str, &str)], value: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while pair.metric(name, labels).await < value {
        assert!(Instant::now() < deadline, "{name}{labels:?} never reached {value}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_rt::test]
async fn a_fresh_courier_exports_every_series_its_dashboards_and_alerts_query() {
    let receiver = Receiver::start(&[]).await;
    let path = clients_file("clients");
    let pair = PairBuilder::default()
        .env("COURIER_CLIENTS_FILE", path.to_str().unwrap())
        .env("COURIER_CALLBACK_SECRET", "whsec_at_start")
        .env("COURIER_CALLBACK_ALLOW", "127.0.0.1")
        .env("EXTERNAL_API_QUOTAS", "100000/day, 5000/1h")
        .env("COURIER_STATE_DIR", support::quota::state_dir("at-start"))
        .start_unready()
        .await;
    let before = exposition(&pair.metrics().await);
    assert_queried_series_exported(&before);
    assert_label_values_bounded(&before, &["alpha", "beta", "unknown"]);
    // The dashboard's client variable lists every client of the file from the start.
    assert_eq!(
        values_of(&before, "courier_http_requests_total", "client"),
        BTreeSet::from(["alpha", "beta", "unknown"])
    );
    pair.wait_ready().await;

    // The first request of each kind counts in a series that was already there.
    let alpha = ("authorization", "Bearer alpha-key");
    assert_eq!(pair.process_with(body("first"), &[alpha]).await.status, 200);
    pair.faults(json!({"error_count": 1, "error_status": 503})).await;
    assert_eq!(pair.process_with(body("retried"), &[alpha]).await.status, 200);
    let job = json!({"data": {"input": "job"}, "options": {"async": true, "callback_url": receiver.url("/cb")}});
    let accepted = pair.process_with(job, &[alpha]).await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    wait_metric(&pair, "courier_callbacks_total", &[("result", "delivered")], 1.0).await;
    let status_path = format!("/api/external/status/{}", accepted.body["request_id"].as_str().unwrap());
    assert_eq!(get(&pair, &status_path, &[alpha]).await, 200);
    assert_eq!(get(&pair, "/api/external/status/no-such-job", &[alpha]).await, 404);
    assert_eq!(get(&pair, &status_path, &[]).await, 401);
    assert_eq!(pair.process(body("no key")).await.status, 401);
    // Wrong keys from another source until it is locked out (the default threshold: 10).
    let guesser = awc::Client::builder().local_address("127.0.0.2".parse().unwrap()).finish();
    for expected in [401; 10].into_iter().chain([429]) {
        let guess = guesser.post(pair.url("/api/external/process")).insert_header(("authorization", "Bearer guess"));
        assert_eq!(read_answer(guess.send_json(&body("guess")).await.unwrap()).await.status, expected);
    }
    let text = pair.http.post(pair.url("/api/external/process")).insert_header(alpha).content_type("text/plain");
    assert_eq!(read_answer(text.send_body("{}").await.unwrap()).await.status, 415);
    assert_eq!(pair.process_with(json!({"data": {}}), &[("authorization", "Bearer beta-key")]).await.status, 400);
    assert_eq!(get(&pair, "/openapi.json", &[]).await, 200);
    assert_eq!(get(&pair, "/openapi.json", &[alpha]).await, 200);
    assert_eq!(get(&pair, "/nowhere", &[]).await, 404);
    let after = exposition(&pair.metrics().await);
    let added = new_series(&before, &after);
    assert!(added.is_empty(), "series born at their first event:\n{}", added.join("\n"));

    // A client added by a reload has its series from the reload on, before its first request.
    let gamma =
        format!("[[client]]\nname = \"gamma\"\nkey_sha256 = \"{}\"\n", courier::config::key_sha256_hex("gamma-key"));
    let mut file = std::fs::read_to_string(&path).unwrap();
    file.push_str(&format!("\n{gamma}"));
    std::fs::write(&path, file).unwrap();
    pair.courier.reload_handle().request(courier::metrics::ReloadTrigger::Signal);
    wait_metric(&pair, "courier_config_reloads_total", &[("result", "ok")], 1.0).await;
    let reloaded = exposition(&pair.metrics().await);
    assert_eq!(
        values_of(&reloaded, "courier_http_requests_total", "client"),
        BTreeSet::from(["alpha", "beta", "gamma", "unknown"])
    );
    assert_eq!(pair.process_with(body("gamma"), &[("authorization", "Bearer gamma-key")]).await.status, 200);
    let added = new_series(&reloaded, &exposition(&pair.metrics().await));
    assert!(added.is_empty(), "series born at their first event:\n{}", added.join("\n"));

    pair.stop().await;
    receiver.stop().await;
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[actix_rt::test]
async fn without_a_clients_file_the_one_client_is_open_from_the_start() {
    let pair = PairBuilder::default()
        .env("EXTERNAL_API_QUOTAS", "100000/day")
        .env("COURIER_STATE_DIR", support::quota::state_dir("open-at-start"))
        .start_unready()
        .await;
    let before = exposition(&pair.metrics().await);
    assert_queried_series_exported(&before);
    assert_label_values_bounded(&before, &["open", "unknown"]);
    assert_eq!(values_of(&before, "courier_http_requests_total", "client"), BTreeSet::from(["open", "unknown"]));
    pair.wait_ready().await;
    assert_eq!(pair.process(body("first")).await.status, 200);
    assert_eq!(get(&pair, "/api/external/status/no-such-job", &[]).await, 404);
    assert_eq!(get(&pair, "/openapi.json", &[]).await, 200);
    assert_eq!(get(&pair, "/nowhere", &[]).await, 404);
    let after = exposition(&pair.metrics().await);
    let added = new_series(&before, &after);
    assert!(added.is_empty(), "series born at their first event:\n{}", added.join("\n"));
    pair.stop().await;
}

/// The label lists of `courier::metrics` that copy an enum of a module above it (which it
/// cannot import) say what the enum says.
#[test]
fn the_label_lists_match_the_enums_they_copy() {
    use courier::actors::breaker::{Mode, State};
    use courier::actors::budget::{PauseSource, RefusalReason};
    use courier::cache::CacheStatus;
    use courier::jobs::JobStatus;
    use courier::metrics as m;
    assert_eq!(State::ALL.map(State::as_str), m::BREAKER_STATES);
    assert_eq!(Mode::ALL.map(Mode::as_str), m::BREAKER_MODES);
    assert_eq!([RefusalReason::QueueFull, RefusalReason::Deadline].map(RefusalReason::as_str), m::REFUSAL_REASONS);
    assert_eq!([PauseSource::RetryAfter, PauseSource::Remaining].map(PauseSource::as_str), m::PAUSE_SOURCES);
    assert_eq!(CacheStatus::ALL.map(CacheStatus::label), m::CACHE_RESULTS);
    let (done, running): (Vec<_>, Vec<_>) = JobStatus::ALL.into_iter().partition(|s| s.is_final());
    assert_eq!(running.into_iter().map(JobStatus::as_str).collect::<Vec<_>>(), m::JOB_STATES);
    assert_eq!(done.into_iter().map(JobStatus::as_str).collect::<Vec<_>>(), m::JOB_FINAL_STATES);
    use courier::upstream::Outcome;
    assert_eq!(Outcome::ALL.map(Outcome::as_str), m::ATTEMPT_OUTCOMES);
    assert_eq!(courier::pipeline::lane::RETRY_REASONS.map(Outcome::as_str), m::RETRY_REASONS);
}

/// The retry reasons are exactly the outcomes of the attempts the retry loop may retry: a
/// `courier_upstream_retries_total{reason}` series exists for each, and for nothing else.
#[test]
fn retry_reasons_are_the_outcomes_of_the_attempts_that_are_retried() {
    use courier::pipeline::lane::RETRY_REASONS;
    use courier::upstream::Outcome;
    let attempts = attempts_of_every_kind();
    for outcome in Outcome::ALL {
        assert!(attempts.iter().any(|a| a.outcome() == outcome), "no attempt of {outcome:?}");
    }
    for attempt in &attempts {
        if attempt.retryable() {
            assert!(RETRY_REASONS.contains(&attempt.outcome()), "{attempt:?} is retried");
        }
    }
    for reason in RETRY_REASONS {
        assert!(attempts.iter().any(|a| a.outcome() == reason && a.retryable()), "{reason:?} is never retried");
    }
}
