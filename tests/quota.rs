//! Quota windows against the simulator over HTTP, on the embedded store (the state file):
//! a window is never overrun, hits and coalesced waits count nothing, retries count, caps and
//! reservations hold, the upstream's own count is adopted, async jobs wait for the reset, and
//! an operator can set a window's count.
//!
//! Windows are short fixed windows (20 s) that the simulator enforces too, so an overrun
//! would show as its `quota_refused`. Each test first makes sure its counts fall in one
//! window: it waits for the next boundary when too little of the current one is left.

mod support;

use std::rc::Rc;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;
use support::quota::{admin_quota, left_in_window, set_sim_quotas, sim_quotas, state_dir, used, window_with};
use support::{body, count, metric_value, Pair, PairBuilder};

const WINDOW: Duration = Duration::from_secs(20);

/// A pair with `quota` on both sides (courier embedded, with a state dir).
fn quota_pair(tag: &str, quota: &str) -> PairBuilder {
    let quota = quota.to_owned();
    PairBuilder::default()
        .env("EXTERNAL_API_QUOTAS", quota.clone())
        .env("COURIER_STATE_DIR", state_dir(tag))
        .sim(move |sim| sim.quotas = vec![quota])
}

/// Sends `n` distinct requests, `at_once` at a time; the answers in order.
async fn burst(pair: &Rc<Pair>, tag: &str, n: usize, at_once: usize, headers: &[(&str, &str)]) -> Vec<support::Answer> {
    let mut answers = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(at_once) {
        let sends = chunk.iter().map(|i| pair.process_with(body(&format!("{tag} {i}")), headers));
        answers.extend(join_all(sends).await);
    }
    answers
}

#[actix_rt::test]
async fn a_window_is_never_overrun_and_a_spent_window_answers_429() {
    let pair = Rc::new(quota_pair("overrun", "30/20s").start().await);
    window_with(WINDOW, Duration::from_secs(8)).await;
    let answers = burst(&pair, "overrun", 60, 10, &[]).await;
    let ok = answers.iter().filter(|a| a.status == 200).count();
    assert_eq!(ok, 30, "exactly the window's limit is served");
    let refused: Vec<_> = answers.iter().filter(|a| a.status == 429).collect();
    assert_eq!(refused.len(), 30);
    let left = left_in_window(WINDOW).as_secs() + 1;
    for answer in &refused {
        assert_eq!(answer.error_code(), "quota_exhausted");
        assert_eq!(answer.body["error"]["retryable"], true);
        let retry_after: u64 = answer.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=left + 1).contains(&retry_after), "Retry-After {retry_after} is the window's reset ({left} s)");
    }
    let last = refused.last().unwrap();
    let policy = last.header("ratelimit-policy").unwrap();
    assert!(policy.contains("30;w=20;name=\"20s\""), "{policy}");
    assert!(last.header("ratelimit").unwrap().starts_with("limit=30, remaining=0, reset="), "{last:?}");
    // The simulator saw exactly 30 and refused none.
    let sim = sim_quotas(&pair).await;
    assert_eq!(sim["windows"][0]["used"], 30, "{sim}");
    assert_eq!(count(&pair.sim_stats().await, &["quota_refused"]), 0);
    let quota = admin_quota(&pair).await;
    assert_eq!(quota["store"], "file");
    assert_eq!(quota["windows"][0]["used"], 30, "{quota}");
    assert_eq!(quota["windows"][0]["remaining"], 0);
    let text = pair.metrics().await;
    assert_eq!(metric_value(&text, "courier_quota_refusals_total", &[("reason", "window_spent")]), 30.0);
    assert_eq!(metric_value(&text, "courier_quota_used_requests", &[("window", "20s")]), 30.0);
    assert_eq!(metric_value(&text, "courier_quota_limit_requests", &[("window", "20s")]), 30.0);
}

#[actix_rt::test]
async fn hits_and_coalesced_waits_count_nothing_and_are_served_while_spent() {
    let pair = quota_pair("hits", "5/20s").env("EXTERNAL_API_CACHE_TTL", "60").start().await;
    window_with(WINDOW, Duration::from_secs(10)).await;
    let first = pair.process(body("hit me")).await;
    assert_eq!((first.status.as_u16(), first.header("x-cache")), (200, Some("MISS")));
    for _ in 0..2 {
        assert_eq!(pair.process(body("hit me")).await.header("x-cache"), Some("HIT"));
    }
    assert_eq!(used(&pair).await, 1, "hits count nothing");
    // Three identical requests at once: one goes upstream, two wait for it.
    pair.faults(json!({"latency_ms": 300})).await;
    let three = join_all((0..3).map(|_| pair.process(body("together")))).await;
    assert!(three.iter().all(|a| a.status == 200), "{three:?}");
    assert_eq!(used(&pair).await, 2, "a coalesced wait counts nothing");
    pair.faults(json!({"latency_ms": 0})).await;
    for i in 0..3 {
        assert_eq!(pair.process(body(&format!("spend {i}"))).await.status, 200);
    }
    let spent = pair.process(body("one too many")).await;
    assert_eq!((spent.status.as_u16(), spent.error_code()), (429, "quota_exhausted"));
    let hit = pair.process(body("hit me")).await;
    assert_eq!((hit.status.as_u16(), hit.header("x-cache")), (200, Some("HIT")), "hits are served while spent");
    assert_eq!(count(&pair.sim_stats().await, &["quota_refused"]), 0);
}

#[actix_rt::test]
async fn every_attempt_counts_retries_included() {
    let pair = quota_pair("retries", "10/20s").start().await;
    window_with(WINDOW, Duration::from_secs(8)).await;
    pair.faults(json!({"error_count": 1, "error_status": 503})).await;
    let answer = pair.process(body("second time lucky")).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(used(&pair).await, 2, "the failed attempt and the retry");
    assert_eq!(sim_quotas(&pair).await["windows"][0]["used"], 2);
}

/// A clients file: `a` may use half, `b` has 30% reserved, `c` may use a fifth.
fn allocations_file(tag: &str) -> String {
    let dir = std::path::PathBuf::from(state_dir(&format!("{tag}-clients")));
    let entry = |name: &str, extra: &str| {
        let hash = courier::config::key_sha256_hex(&format!("{name}-key"));
        format!("[[client]]\nname = \"{name}\"\nkey_sha256 = \"{hash}\"\n{extra}\n")
    };
    let text =
        [entry("a", "quota_max = 0.5"), entry("b", "quota_reserved = 0.3"), entry("c", "quota_max = 0.2")].join("\n");
    let path = dir.join("clients.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[actix_rt::test]
async fn caps_and_reservations_hold_under_contention() {
    let pair =
        Rc::new(quota_pair("alloc", "100/20s").env("COURIER_CLIENTS_FILE", allocations_file("alloc")).start().await);
    window_with(WINDOW, Duration::from_secs(10)).await;
    let (a, c) = ([("authorization", "Bearer a-key")], [("authorization", "Bearer c-key")]);
    let (from_a, from_c) = futures_util::join!(burst(&pair, "a", 80, 8, &a), burst(&pair, "c", 80, 8, &c));
    let served = |answers: &[support::Answer]| answers.iter().filter(|x| x.status == 200).count();
    assert_eq!(served(&from_a), 50, "a's cap: half of 100");
    assert_eq!(served(&from_c), 20, "c's cap: a fifth");
    let capped = from_a.iter().find(|x| x.status == 429).unwrap();
    assert_eq!(capped.error_code(), "quota_exhausted");
    assert!(capped.body["error"]["message"].as_str().unwrap().contains("client's share"), "{capped:?}");
    // b's 30 were held for it, and it gets all of them.
    let from_b = burst(&pair, "b", 40, 8, &[("authorization", "Bearer b-key")]).await;
    assert_eq!(served(&from_b), 30);
    assert_eq!(count(&pair.sim_stats().await, &["quota_refused"]), 0);
    assert_eq!(sim_quotas(&pair).await["windows"][0]["used"], 100);
    let text = pair.metrics().await;
    for (client, n) in [("a", 50.0), ("b", 30.0), ("c", 20.0)] {
        let labels = [("window", "20s"), ("client", client)];
        assert_eq!(metric_value(&text, "courier_quota_client_used_requests", &labels), n, "{client}");
    }
}

#[actix_rt::test]
async fn the_upstreams_own_count_is_adopted() {
    for headers in ["ietf", "x-ratelimit"] {
        // An hour's window, so its reset is far enough that x-ratelimit reads as a quota.
        let pair = quota_pair(&format!("adopt-{headers}"), "50/1h").start().await;
        window_with(Duration::from_secs(3600), Duration::from_secs(180)).await;
        set_sim_quotas(&pair, json!({"used": {"1h": 40}, "headers": headers})).await;
        let answers = burst(&Rc::new(pair), headers, 15, 1, &[]).await;
        let codes: Vec<u16> = answers.iter().map(|a| a.status.as_u16()).collect();
        assert_eq!(codes, [[200; 10].as_slice(), [429; 5].as_slice()].concat(), "{headers}: {answers:?}");
        assert!(answers[10..].iter().all(|a| a.body["error"]["code"] == "quota_exhausted"));
    }
}

fn job(input: &str) -> serde_json::Value {
    json!({"data": {"input": input, "format": "text"}, "options": {"async": true}})
}

#[actix_rt::test]
async fn an_async_job_waits_for_the_reset_when_its_deadline_allows() {
    let pair = quota_pair("jobs-wait", "3/10s").env("COURIER_JOB_DEADLINE", "30").start().await;
    window_with(Duration::from_secs(10), Duration::from_secs(4)).await;
    for i in 0..3 {
        assert_eq!(pair.process(body(&format!("spend {i}"))).await.status, 200);
    }
    let accepted = pair.process(job("after the reset")).await;
    assert_eq!(accepted.status, 202);
    let reset_at = std::time::SystemTime::now() + left_in_window(Duration::from_secs(10));
    let done = final_status(&pair, &accepted).await;
    assert_eq!(done["status"], "completed", "{done}");
    let completed = humantime::parse_rfc3339(done["completed_at"].as_str().unwrap()).unwrap();
    assert!(completed + Duration::from_millis(1) >= reset_at, "completed after the window reset");
    assert_eq!(count(&pair.sim_stats().await, &["quota_refused"]), 0);
}

#[actix_rt::test]
async fn an_async_job_whose_deadline_comes_first_fails_with_quota_exhausted() {
    let pair = quota_pair("jobs-fail", "3/20s").env("COURIER_JOB_DEADLINE", "2").start().await;
    window_with(WINDOW, Duration::from_secs(8)).await;
    for i in 0..3 {
        assert_eq!(pair.process(body(&format!("spend {i}"))).await.status, 200);
    }
    let accepted = pair.process(job("no time to wait")).await;
    assert_eq!(accepted.status, 202);
    let failed = final_status(&pair, &accepted).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["error"]["code"], "quota_exhausted");
}

/// Polls a job (bounded) until its status is final.
async fn final_status(pair: &Pair, accepted: &support::Answer) -> serde_json::Value {
    let url = pair.url(accepted.body["status_url"].as_str().unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = support::read_answer(pair.http.get(&url).send().await.unwrap()).await;
        if matches!(answer.body["status"].as_str(), Some("completed" | "failed")) {
            return answer.body;
        }
        assert!(std::time::Instant::now() < deadline, "job never finished: {answer:?}");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_rt::test]
async fn an_admin_sets_the_used_count_and_it_is_audited() {
    let token = "quota-admin-token-1f3c";
    let pair = Rc::new(quota_pair("admin", "20/20s").env("COURIER_ADMIN_TOKEN", token).start().await);
    window_with(WINDOW, Duration::from_secs(10)).await;
    let put = |window: &str, body: serde_json::Value, auth: bool| {
        let mut request = pair.http.put(pair.admin_url(&format!("/admin/quota/{window}")));
        if auth {
            request = request.insert_header(("authorization", format!("Bearer {token}")));
        }
        async move { support::read_answer(request.send_json(&body).await.unwrap()).await }
    };
    assert_eq!(put("20s", json!({"used": 15}), false).await.status, 401);
    let set = put("20s", json!({"used": 15}), true).await;
    assert_eq!(set.status, 200, "{set:?}");
    assert_eq!((set.body["used"].as_u64(), set.body["remaining"].as_u64()), (Some(15), Some(5)));
    let answers = burst(&pair, "after set", 7, 1, &[]).await;
    assert_eq!(answers.iter().filter(|a| a.status == 200).count(), 5, "only what is left after the set");
    let unknown = put("nope", json!({"used": 1}), true).await;
    assert_eq!(unknown.status, 404);
    assert!(unknown.body["error"]["message"].as_str().unwrap().contains("20s"), "{unknown:?}");
    assert_eq!(put("20s", json!({"used": -1}), true).await.status, 400);
    assert_eq!(put("20s", json!({"count": 1}), true).await.status, 400);
    let logs = Rc::try_unwrap(pair).ok().expect("one owner").stop().await;
    let lines = logs.lines();
    let set_line = lines.iter().find(|l| l["event"] == "quota_used_set").expect("the change is logged");
    assert_eq!(
        (set_line["window"].as_str(), set_line["before"].as_u64(), set_line["after"].as_u64()),
        (Some("20s"), Some(0), Some(15))
    );
    let audited = lines.iter().filter(|l| l["event"] == "admin_request" && l["outcome"] == "allowed").count();
    assert!(audited >= 1, "the admin lock audits the request");
    assert!(!logs.text().contains(token), "the admin token is never logged");
}
