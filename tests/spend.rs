//! A client's upstream spending against its own baseline, over real HTTP with the simulator: a
//! client that was idle and suddenly sends many requests is anomalous (the gauge, the ratio, a
//! `client_spend_anomalous` log line), another client that keeps its habit is not, and the burst
//! over, the client is back to normal (`client_spend_normal`). The interval is a second here.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{body, Pair, PairBuilder};

const ALPHA: (&str, &str) = ("authorization", "Bearer alpha-key");
const BETA: (&str, &str) = ("authorization", "Bearer beta-key");
/// Bound of every wait for an interval to be judged.
const PATIENCE: Duration = Duration::from_secs(10);

async fn wait_for(pair: &Pair, name: &str, labels: &[(&str, &str)], holds: impl Fn(f64) -> bool) -> f64 {
    let started = Instant::now();
    loop {
        let value = pair.metric(name, labels).await;
        if holds(value) {
            return value;
        }
        assert!(started.elapsed() < PATIENCE, "{name}{labels:?} stayed at {value}");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_rt::test]
async fn a_burst_far_above_the_clients_own_baseline_is_anomalous_until_it_ends() {
    let clients = support::two_clients_file("spend");
    let pair = PairBuilder::default()
        .env("COURIER_CLIENTS_FILE", clients.to_str().unwrap())
        .env("COURIER_SPEND_INTERVAL", "1")
        .env("COURIER_SPEND_BASELINE_HALF_LIFE", "3600")
        .env("COURIER_SPEND_MIN_PER_MINUTE", "60")
        .env("COURIER_SPEND_ANOMALY_MULTIPLE", "10")
        .start()
        .await;
    // The first look, at start, found both idle: their baselines are 0, floored at the minimum.
    let alpha = [("client", "alpha")];
    // beta: one request a second, its habit (60 a minute: the minimum, ratio about 1).
    // alpha: 40 requests at once, 2400 a minute, 40 times the minimum (at least 20 times, if
    // they straddle two intervals).
    let started = Instant::now();
    let burst =
        futures_util::future::join_all((0..40).map(|i| pair.process_with(body(&format!("burst {i}")), &[ALPHA])));
    let (answers, _) = futures_util::join!(burst, async {
        for i in 0..2 {
            assert_eq!(pair.process_with(body(&format!("habit {i}")), &[BETA]).await.status, 200);
        }
    });
    assert!(answers.iter().all(|a| a.status == 200), "{answers:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "the burst took {:?}", started.elapsed());
    assert_eq!(pair.metric("courier_client_upstream_attempts_total", &alpha).await, 40.0);
    wait_for(&pair, "courier_client_spend_anomalous", &alpha, |v| v == 1.0).await;
    let beta = [("client", "beta")];
    assert_eq!(pair.metric("courier_client_spend_anomalous", &beta).await, 0.0, "beta kept its habit");
    assert_eq!(pair.metric("courier_client_spend_anomalies_total", &[]).await, 1.0);
    // The burst over, alpha is back to normal at the next interval.
    wait_for(&pair, "courier_client_spend_anomalous", &alpha, |v| v == 0.0).await;
    let baseline = pair.metric("courier_client_spend_baseline_attempts_per_minute", &alpha).await;
    assert!(baseline > 0.0 && baseline < 60.0, "the burst moved the baseline a little: {baseline}");

    let logs = pair.stop().await;
    let lines: Vec<Value> = logs.lines().into_iter().filter(|l| l["event"] == "client_spend_anomalous").collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["client"], "alpha");
    assert!(lines[0]["ratio"].as_f64().unwrap() > 10.0, "{}", lines[0]);
    assert_eq!(lines[0]["baseline_per_minute"], 0.0);
    let normal: Vec<Value> = logs.lines().into_iter().filter(|l| l["event"] == "client_spend_normal").collect();
    assert_eq!((normal.len(), normal[0]["client"].as_str()), (1, Some("alpha")), "{normal:?}");
    let _ = std::fs::remove_dir_all(clients.parent().unwrap());
}
