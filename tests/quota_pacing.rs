//! Pacing (`COURIER_QUOTA_PACING=even`) against the simulator over HTTP: a window's count is
//! spread evenly over the window under a 10× overload, and async jobs absorb the pacing
//! before interactive requests do.

mod support;

use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::quota::{sim_quotas, state_dir, window_start};
use support::{body, count, Pair, PairBuilder};

/// 150 per 15 s: an even pace of 10 per second, 30 per fifth of the window.
const WINDOW: Duration = Duration::from_secs(15);

fn paced(tag: &str) -> PairBuilder {
    PairBuilder::default()
        .env("EXTERNAL_API_QUOTAS", "150/15s")
        .env("COURIER_QUOTA_PACING", "even")
        .env("COURIER_STATE_DIR", state_dir(tag))
        .env("EXTERNAL_API_RATE_LIMIT", "6000")
        .env("EXTERNAL_API_RATE_BURST", "1")
        .sim(|sim| sim.quotas = vec!["150/15s".into()])
}

/// The simulator's arrivals per Unix second.
async fn arrivals(pair: &Pair) -> Vec<(u64, u64)> {
    let quotas = sim_quotas(pair).await;
    quotas["arrivals"].as_array().unwrap().iter().map(|a| (a[0].as_u64().unwrap(), a[1].as_u64().unwrap())).collect()
}

/// Arrivals in `[from, from + secs)` (Unix seconds).
fn between(arrivals: &[(u64, u64)], from: u64, secs: u64) -> u64 {
    arrivals.iter().filter(|(s, _)| (from..from + secs).contains(s)).map(|(_, n)| n).sum()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[actix_rt::test]
async fn pacing_spreads_a_window_evenly_under_a_tenfold_overload() {
    let pair = Rc::new(paced("even").start().await);
    window_start(WINDOW).await;
    let start = unix_now() / 15 * 15;
    // 100 requests per second (ten times the pace) for the whole window, each willing to wait
    // a second for the budget.
    let until = Instant::now() + WINDOW - Duration::from_millis(100);
    let mut sends = Vec::new();
    let mut n = 0;
    while Instant::now() < until && n < 1500 {
        let pair = pair.clone();
        sends.push(actix_rt::spawn(async move {
            pair.process_with(body(&format!("paced {n}")), &[("x-request-timeout", "1")]).await.status.as_u16()
        }));
        n += 1;
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    let mut statuses = Vec::new();
    for send in sends {
        statuses.push(send.await.unwrap());
    }
    // A 504: a request whose second ran out after its permit, while the attempt was on its way
    // (seen once on a loaded machine); the attempt still counts in the arrivals below.
    assert!(statuses.iter().all(|s| [200, 429, 504].contains(s)), "only answers and refusals: {statuses:?}");
    let late = statuses.iter().filter(|&&s| s == 504).count();
    assert!(late * 100 <= statuses.len(), "{late} of {} requests timed out", statuses.len());
    let arrivals = arrivals(&pair).await;
    let fifths: Vec<u64> = (0..5).map(|i| between(&arrivals, start + 3 * i, 3)).collect();
    let total: u64 = fifths.iter().sum();
    println!("arrivals per fifth of the window: {fifths:?} (total {total})");
    assert!(total <= 150, "the window is never overrun: {fifths:?}");
    for (i, n) in fifths.iter().enumerate() {
        assert!((26..=34).contains(n), "fifth {i} got {n}, expected 30 ± 15%: {fifths:?}");
    }
    assert_eq!(count(&pair.sim_stats().await, &["quota_refused"]), 0);
}

#[actix_rt::test]
async fn async_jobs_absorb_the_pacing_before_interactive_requests() {
    let pair = Rc::new(paced("background").start().await);
    window_start(WINDOW).await;
    let job = |i: usize| json!({"data": {"input": format!("job {i}"), "format": "text"}, "options": {"async": true}});
    let mut jobs = Vec::new();
    for i in 0..60 {
        let accepted = pair.process(job(i)).await;
        assert_eq!(accepted.status, 202);
        jobs.push(accepted.body["status_url"].as_str().unwrap().to_owned());
    }
    // Interactive requests at half the pace, each waiting at most a second: the jobs queued
    // before them must not hold them back.
    let mut interactive = Vec::new();
    for i in 0..45 {
        let answer = pair.process_with(body(&format!("interactive {i}")), &[("x-request-timeout", "1")]).await;
        interactive.push(answer.status.as_u16());
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(interactive.iter().all(|s| *s == 200), "interactive requests go first: {interactive:?}");
    // Every job finishes, in later windows if need be.
    let deadline = Instant::now() + Duration::from_secs(60);
    for url in &jobs {
        loop {
            let answer = support::read_answer(pair.http.get(pair.url(url)).send().await.unwrap()).await;
            let status: &Value = &answer.body["status"];
            if status == "completed" {
                break;
            }
            assert_ne!(status, "failed", "{answer:?}");
            assert!(Instant::now() < deadline, "job never finished: {answer:?}");
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(count(&pair.sim_stats().await, &["quota_refused"]), 0);
}
