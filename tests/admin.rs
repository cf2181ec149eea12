//! The locked admin listener, on the real binary: every admin route but `/metrics`, `/healthz`
//! and `/readyz` needs `Authorization: Bearer <COURIER_ADMIN_TOKEN>` (401 `admin_unauthorized`
//! without it or with another token, and the refused request changes nothing); the token is
//! rotated through `COURIER_ADMIN_TOKEN_FILE` without a restart; every request to a locked
//! route writes an audit line that names the token by fingerprint only; and courier refuses to
//! start with an open admin listener on an address that is not loopback.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use awc::http::Method;
use courier::http::admin::routes;
use courier::http::admin_lock::OPEN_PATHS;
use courier::simulator::{SimConfig, Simulator};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::process::{signal, sim_env, wait_exit, Serving, BIN};
use support::{metric_value, read_answer, Answer};

const TOKEN: &str = "admin-token-4f1c9a7e2b";
const NEW_TOKEN: &str = "admin-token-rotated-8d3e";
const WRONG: &str = "admin-token-guessed-0000";
/// The real token but its last character: refused like any other wrong token.
const PREFIX: &str = "admin-token-4f1c9a7e2";

/// The audit fingerprint of a token, computed here independently of courier.
fn fingerprint(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))[..12].to_owned()
}

async fn simulator() -> Simulator {
    let config = SimConfig { rate_limit_per_minute: 1_000_000, rate_burst: 100_000, ..SimConfig::default() };
    Simulator::start(config).await.unwrap()
}

/// Starts `courier serve` against `sim` (admin on 127.0.0.1:0) with `extra` settings.
fn serve(sim: &Simulator, extra: &[(&str, String)]) -> Serving {
    let mut env: Vec<(&str, String)> = sim_env(sim);
    env.extend([("EXTERNAL_API_CACHE_TTL", "300".into()), ("COURIER_SHUTDOWN_GRACE", "5".into())]);
    env.extend(extra.iter().cloned());
    Serving::start(&env)
}

fn client() -> awc::Client {
    awc::Client::builder().timeout(Duration::from_secs(20)).finish()
}

/// One admin request: `POST /admin/breaker` carries `{"mode": mode}`, `PUT /admin/quota/{window}`
/// `{"used": 0}`.
async fn call(http: &awc::Client, admin: &str, method: &Method, path: &str, token: Option<&str>) -> Answer {
    call_with(http, admin, method, path, token, "open").await
}

async fn call_with(
    http: &awc::Client,
    admin: &str,
    method: &Method,
    path: &str,
    token: Option<&str>,
    mode: &str,
) -> Answer {
    let mut request = http.request(method.clone(), format!("http://{admin}{path}"));
    if let Some(token) = token {
        request = request.insert_header(("authorization", format!("Bearer {token}")));
    }
    let sent = match *method {
        Method::POST => request.send_json(&json!({"mode": mode})).await,
        Method::PUT => request.send_json(&json!({"used": 0})).await,
        _ => request.send().await,
    };
    read_answer(sent.expect("the admin listener answers")).await
}

async fn metrics(http: &awc::Client, admin: &str) -> String {
    let answer = call(http, admin, &Method::GET, "/metrics", None).await;
    assert_eq!(answer.status, 200, "/metrics is open: {answer:?}");
    answer.body.as_str().expect("metrics text").to_owned()
}

/// Polls `cond` every 20 ms until it holds, failing after 10 s.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut cond: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_ready(http: &awc::Client, admin: &str) {
    eventually("ready", move || async move { call(http, admin, &Method::GET, "/readyz", None).await.status == 200 })
        .await;
}

/// Asserts a refusal of a locked route: 401 `admin_unauthorized` in the one error shape.
fn assert_refused(answer: &Answer, what: &str) {
    assert_eq!(answer.status, 401, "{what}: {answer:?}");
    assert_eq!(answer.error_code(), "admin_unauthorized", "{what}");
    assert_eq!(answer.header("www-authenticate"), Some("Bearer"), "{what}");
    assert!(answer.header("x-request-id").is_some(), "{what}");
}

/// Stops courier with SIGTERM and returns every line it printed, parsed.
fn stop(mut courier: Serving) -> Vec<Value> {
    signal(&courier.child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut courier.child).code(), Some(0));
    let lines: Vec<String> = courier.logs.iter().collect();
    lines.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|_| Value::String(l.clone()))).collect()
}

fn audit_lines(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|l| l["event"] == "admin_request").collect()
}

fn assert_never_logged(lines: &[Value], secrets: &[&str]) {
    for line in lines {
        let text = line.to_string();
        for secret in secrets {
            assert!(!text.contains(secret), "a token in a log line: {text}");
        }
    }
}

#[actix_rt::test]
async fn every_locked_route_answers_401_without_the_token_and_serves_with_it() {
    let sim = simulator().await;
    // A quota window, so that its admin route has something to set.
    let quota = [
        ("COURIER_ADMIN_TOKEN", TOKEN.into()),
        ("EXTERNAL_API_QUOTAS", "100000/day".into()),
        ("COURIER_STATE_DIR", support::quota::state_dir("admin-routes")),
    ];
    let courier = serve(&sim, &quota);
    let (http, admin) = (client(), courier.admin.clone());
    wait_ready(&http, &admin).await;
    let process = format!("http://{}/api/external/process", courier.gateway);
    let (gateway_http, process) = (&http, process.as_str());
    let cache_one = move || async move {
        let response = gateway_http.post(process).send_json(&json!({"data": {"input": "cached"}})).await.unwrap();
        let answer = read_answer(response).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.header("x-cache-key").expect("a cache key").to_owned()
    };
    let key = cache_one().await;
    let locked: Vec<(Method, &str)> = routes().into_iter().filter(|(_, path)| !OPEN_PATHS.contains(path)).collect();
    let patterns: Vec<&str> = locked.iter().map(|(_, path)| *path).collect();
    for route in ["/admin/state", "/admin/breaker", "/admin/cache", "/admin/cache/{key}"] {
        assert!(patterns.contains(&route), "{route} is locked: {patterns:?}");
    }

    // Without the token, with another one, with the token's prefix: refused, and nothing done
    // (the circuit is not forced open, the cached answer stays).
    for (method, pattern) in &locked {
        let path = pattern.replace("{key}", &key).replace("{window}", "day").replace("{source}", "127.0.0.9");
        for token in [None, Some(WRONG), Some(PREFIX)] {
            assert_refused(&call(&http, &admin, method, &path, token).await, &format!("{method} {path} {token:?}"));
        }
    }
    let text = metrics(&http, &admin).await;
    assert_eq!(metric_value(&text, "courier_breaker_mode", &[("mode", "auto")]), 1.0, "the circuit was not forced");
    assert_eq!(metric_value(&text, "courier_cache_entries", &[]), 1.0, "the cached answer was not purged");
    // An admin path no route serves is locked too: a new route is locked unless listed.
    assert_refused(&call(&http, &admin, &Method::GET, "/admin/not-a-route", None).await, "unknown path");
    let refused = locked.len() * 3 + 1;

    // With the token: served.
    let mut allowed = 0;
    for (method, pattern) in &locked {
        if pattern.contains("{key}") {
            assert_eq!(cache_one().await, key);
        }
        let path = pattern.replace("{key}", &key).replace("{window}", "day").replace("{source}", "127.0.0.9");
        let answer = call(&http, &admin, method, &path, Some(TOKEN)).await;
        allowed += 1;
        if *pattern == "/admin/lockouts/{source}" {
            // Open mode authenticates nobody, so nobody is locked out (tests/lockout.rs lifts one).
            assert_eq!((answer.status.as_u16(), &answer.body["error"]["code"]), (404, &json!("not_found")));
            assert!(answer.body["error"]["message"].as_str().unwrap().contains("lockouts are off"), "{answer:?}");
            continue;
        }
        assert_eq!(answer.status, 200, "{method} {path}: {answer:?}");
        if *method == Method::POST {
            assert_eq!(answer.body["mode"], "forced_open", "{answer:?}");
            let back = call_with(&http, &admin, method, &path, Some(TOKEN), "auto").await;
            assert_eq!(back.status, 200, "{back:?}");
            allowed += 1;
        }
    }
    assert_eq!(call(&http, &admin, &Method::GET, "/admin/not-a-route", Some(TOKEN)).await.status, 404);
    allowed += 1;

    // The probes and the scrape stay open, whatever the caller sends.
    for path in OPEN_PATHS {
        for token in [None, Some(WRONG)] {
            let answer = call(&http, &admin, &Method::GET, path, token).await;
            assert_eq!(answer.status, 200, "{path} {token:?}: {answer:?}");
        }
    }
    let text = metrics(&http, &admin).await;
    let count = |outcome| metric_value(&text, "courier_admin_requests_total", &[("outcome", outcome)]);
    assert_eq!(count("missing_token"), (locked.len() + 1) as f64);
    assert_eq!(count("wrong_token"), (locked.len() * 2) as f64);
    assert_eq!(count("allowed"), allowed as f64);
    assert_eq!(count("unlocked"), 0.0);

    let lines = stop(courier);
    sim.stop().await;
    let audit = audit_lines(&lines);
    assert_eq!(audit.len(), refused + allowed, "one audit line per locked request, none for the open paths");
    assert!(audit.iter().all(|l| !OPEN_PATHS.contains(&l["route"].as_str().unwrap())));
    let find = |method: &str, route: &str, print: &str| {
        audit
            .iter()
            .find(|l| l["method"] == method && l["route"] == route && l["token_fingerprint"] == print)
            .unwrap_or_else(|| panic!("no audit line for {method} {route} {print}: {audit:?}"))
    };
    let missing = find("POST", "/admin/breaker", "none");
    assert_eq!((missing["outcome"].as_str(), missing["status"].as_u64()), (Some("missing_token"), Some(401)));
    assert!(missing["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{missing}");
    assert!(missing["request_id"].as_str().is_some_and(|id| !id.is_empty()), "{missing}");
    let wrong = find("DELETE", "/admin/cache/{key}", &fingerprint(WRONG));
    assert_eq!((wrong["outcome"].as_str(), wrong["status"].as_u64()), (Some("wrong_token"), Some(401)));
    let purged = find("DELETE", "/admin/cache/{key}", &fingerprint(TOKEN));
    assert_eq!((purged["outcome"].as_str(), purged["status"].as_u64()), (Some("allowed"), Some(200)));
    let unknown = find("GET", "other", &fingerprint(TOKEN));
    assert_eq!(unknown["status"].as_u64(), Some(404));
    // The route pattern, never the raw path: the cache key is not in the audit.
    assert!(audit.iter().all(|l| !l.to_string().contains(&key)));
    assert_never_logged(&lines, &[PREFIX, WRONG]);
}

#[actix_rt::test]
async fn without_a_token_the_loopback_admin_listener_is_open_and_audited() {
    let sim = simulator().await;
    let courier = serve(&sim, &[]);
    let (http, admin) = (client(), courier.admin.clone());
    wait_ready(&http, &admin).await;
    let forced = call_with(&http, &admin, &Method::POST, "/admin/breaker", None, "auto").await;
    assert_eq!(forced.status, 200, "{forced:?}");
    let state = call(&http, &admin, &Method::GET, "/admin/state", Some(WRONG)).await;
    assert_eq!(state.status, 200, "no token configured: any caller on loopback is let through: {state:?}");
    let text = metrics(&http, &admin).await;
    assert_eq!(metric_value(&text, "courier_admin_requests_total", &[("outcome", "unlocked")]), 2.0);

    let lines = stop(courier);
    sim.stop().await;
    let audit = audit_lines(&lines);
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert!(audit.iter().all(|l| l["outcome"] == "unlocked" && l["status"] == 200), "{audit:?}");
    assert_eq!(audit[1]["token_fingerprint"], fingerprint(WRONG));
    assert_never_logged(&lines, &[WRONG]);
}

/// A directory with the token file, removed at the end.
struct TokenDir(PathBuf);

impl TokenDir {
    fn new(test: &str) -> TokenDir {
        let dir = std::env::temp_dir().join(format!("courier-admin-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TokenDir(dir)
    }

    /// Replaces the token file as an operator (or Kubernetes) should: write aside, rename.
    fn write(&self, token: &str) -> String {
        let aside = self.0.join(".token.tmp");
        std::fs::write(&aside, format!("{token}\n")).unwrap();
        let path = self.0.join("token");
        std::fs::rename(&aside, &path).unwrap();
        path.display().to_string()
    }
}

impl Drop for TokenDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[actix_rt::test]
async fn a_rotated_token_file_is_taken_without_a_restart_and_the_old_token_is_refused() {
    let sim = simulator().await;
    let dir = TokenDir::new("rotation");
    let file = dir.write(TOKEN);
    let courier = serve(&sim, &[("COURIER_ADMIN_TOKEN_FILE", file), ("COURIER_SECRET_POLL_INTERVAL", "0.1".into())]);
    let (http, admin) = (client(), courier.admin.clone());
    wait_ready(&http, &admin).await;
    let state = |token: &'static str| {
        let http = http.clone();
        let admin = admin.clone();
        async move { call(&http, &admin, &Method::GET, "/admin/state", Some(token)).await }
    };
    assert_eq!(state(TOKEN).await.status, 200);
    assert_refused(&state(NEW_TOKEN).await, "the next token before the rotation");

    dir.write(NEW_TOKEN);
    eventually("the new token is accepted", || {
        let answer = state(NEW_TOKEN);
        async move { answer.await.status == 200 }
    })
    .await;
    assert_refused(&state(TOKEN).await, "the old token after the rotation");

    // A token file that fails validation is not taken: the current token stays in use.
    dir.write("tiny-9c2");
    let (metrics_http, metrics_admin) = (&http, admin.as_str());
    eventually("the bad file is refused", move || async move {
        let text = metrics(metrics_http, metrics_admin).await;
        metric_value(&text, "courier_config_reloads_total", &[("result", "failed")]) >= 1.0
    })
    .await;
    assert_eq!(state(NEW_TOKEN).await.status, 200);
    assert_refused(&state("tiny-9c2").await, "a token that failed validation");

    let lines = stop(courier);
    sim.stop().await;
    let reloaded = lines.iter().find(|l| l["event"] == "credentials_reloaded").expect("a reload");
    assert_eq!(reloaded["changed"], "admin_token", "{reloaded}");
    let failed = lines.iter().find(|l| l["event"] == "credentials_reload_failed").expect("a failed reload");
    assert!(failed["errors"].as_str().unwrap().starts_with("COURIER_ADMIN_TOKEN_FILE: "), "{failed}");
    let prints: Vec<&str> = audit_lines(&lines).iter().map(|l| l["token_fingerprint"].as_str().unwrap()).collect();
    assert!(prints.contains(&fingerprint(TOKEN).as_str()) && prints.contains(&fingerprint(NEW_TOKEN).as_str()));
    assert_never_logged(&lines, &[TOKEN, NEW_TOKEN, "tiny-9c2"]);
}

#[test]
fn courier_refuses_to_start_with_an_open_admin_listener_off_loopback() {
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let output = Command::new(BIN)
            .arg("serve")
            .env_clear()
            .env("EXTERNAL_API_BASE_URL", "http://127.0.0.1:1/v2")
            .env("EXTERNAL_API_KEY", "key")
            .env("EXTERNAL_OAUTH_CLIENT_ID", "client")
            .env("EXTERNAL_OAUTH_CLIENT_SECRET", "secret")
            .env("COURIER_ADMIN_LISTEN", listen)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{listen}");
        assert_eq!(
            String::from_utf8(output.stderr).unwrap(),
            format!(
                "courier: COURIER_ADMIN_LISTEN: {listen} is not a loopback address and no admin token is set \
                 (expected: set COURIER_ADMIN_TOKEN or COURIER_ADMIN_TOKEN_FILE, or bind COURIER_ADMIN_LISTEN to \
                 127.0.0.1)\n"
            )
        );
    }
    // The demo binds what it is told to, under the same rule.
    let output = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0", "--admin-listen", "0.0.0.0:0", "--sim-listen", "127.0.0.1:0"])
        .env_remove("COURIER_ADMIN_TOKEN")
        .env_remove("COURIER_ADMIN_TOKEN_FILE")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("courier: cannot start: COURIER_ADMIN_LISTEN: 0.0.0.0:0 is not a loopback address"),
        "{stderr}"
    );
}

/// The alert on refused admin requests, from the rules file, evaluated by a real Prometheus
/// scraping courier: silent while only the token is used, firing after five refusals.
#[actix_rt::test]
async fn refused_admin_requests_raise_the_alert_in_a_real_prometheus() {
    const RULES: &str = "grafana/alerts/courier.rules.yml";
    let sim = simulator().await;
    let courier = serve(&sim, &[("COURIER_ADMIN_TOKEN", TOKEN.into())]);
    let (http, admin) = (client(), courier.admin.clone());
    wait_ready(&http, &admin).await;
    let prometheus =
        support::prometheus::Prometheus::start(std::slice::from_ref(&admin), &[std::path::Path::new(RULES)]).await;
    let rules = std::fs::read_to_string(RULES).unwrap();
    let expr = rules
        .lines()
        .skip_while(|l| !l.contains("alert: CourierAdminTokenRefused"))
        .find_map(|l| l.trim().strip_prefix("expr: "))
        .expect("the rule's expression");
    let scraped = prometheus.wait_for("courier_admin_requests_total", Duration::from_secs(15)).await;
    assert!(!scraped.is_empty(), "Prometheus scraped courier");

    assert_eq!(call(&http, &admin, &Method::GET, "/admin/state", Some(TOKEN)).await.status, 200);
    let allowed =
        prometheus.wait_for(r#"courier_admin_requests_total{outcome="allowed"} > 0"#, Duration::from_secs(15)).await;
    assert!(!allowed.is_empty(), "the allowed request was scraped");
    assert!(prometheus.query(expr).await.is_empty(), "no refusal, no alert");

    for token in [None, Some(WRONG), Some(PREFIX), Some(WRONG), None] {
        assert_refused(&call(&http, &admin, &Method::GET, "/admin/state", token).await, "a guess");
    }
    let firing = prometheus.wait_for(expr, Duration::from_secs(15)).await;
    assert_eq!(firing.len(), 1, "{expr} returned {firing:?}");
    let alerts = prometheus
        .wait_for(r#"ALERTS{alertname="CourierAdminTokenRefused",alertstate="firing"}"#, Duration::from_secs(15))
        .await;
    assert_eq!(alerts.len(), 1, "the alert fires: {alerts:?}");
    drop(prometheus);
    stop(courier);
    sim.stop().await;
}
