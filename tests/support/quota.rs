//! Helpers for the quota tests: state directories, the window clock, and both sides' counts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::Pair;

/// A fresh, empty state directory for one test.
pub fn state_dir(tag: &str) -> String {
    let dir = std::env::temp_dir().join(format!("courier-quota-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.display().to_string()
}

/// Milliseconds left in the current fixed window of `len` (aligned to the Unix epoch).
pub fn left_in_window(len: Duration) -> Duration {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis();
    let len = len.as_millis();
    Duration::from_millis((len - now % len) as u64)
}

/// Waits for the next window boundary (plus 50 ms) unless `need` is left in this one. The
/// boundary is the event a quota test waits for: its counts must all fall in one window.
pub async fn window_with(len: Duration, need: Duration) {
    let left = left_in_window(len);
    if left < need {
        actix_rt::time::sleep(left + Duration::from_millis(50)).await;
    }
}

/// Waits for the start of the next window of `len` (plus 50 ms).
pub async fn window_start(len: Duration) {
    actix_rt::time::sleep(left_in_window(len) + Duration::from_millis(50)).await;
}

/// The simulator's `/_sim/quotas` document.
pub async fn sim_quotas(pair: &Pair) -> Value {
    let mut response = pair.http.get(pair.sim_url("/_sim/quotas")).send().await.unwrap();
    response.json::<Value>().await.unwrap()
}

/// Changes the simulator's quotas (`POST /_sim/quotas`).
pub async fn set_sim_quotas(pair: &Pair, patch: Value) {
    let response = pair.http.post(pair.sim_url("/_sim/quotas")).send_json(&patch).await.unwrap();
    assert!(response.status().is_success(), "{patch}");
}

/// courier's `quota` object of `/admin/state`.
pub async fn admin_quota(pair: &Pair) -> Value {
    pair.admin_get("/admin/state").await.body["quota"].clone()
}

/// The used count of courier's first window.
pub async fn used(pair: &Pair) -> u64 {
    admin_quota(pair).await["windows"][0]["used"].as_u64().expect("a window")
}
