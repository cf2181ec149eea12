//! What the quota windows look like from outside: a client's headers, the gauges, and the
//! `/admin/state` document.

use serde_json::{json, Value};

use super::alloc::part;
use super::counts::pace;
use super::{now_ms, Quota, Store};
use crate::config::Pacing;

/// One window as a client's `RateLimit-Policy` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyItem {
    /// The client's cap in the window (`floor(quota_max · limit)`).
    pub cap: u64,
    /// The current instance's length in seconds.
    pub window_seconds: u64,
    /// The window's name (`day`, `20s`).
    pub name: String,
}

/// A client's view of the windows: every policy, and the one closest to exhaustion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientQuota {
    /// One item per window.
    pub items: Vec<PolicyItem>,
    /// `(cap, remaining, seconds to reset)` of the window with least left for the client.
    pub tightest: Option<(u64, u64, u64)>,
}

impl Quota {
    /// `client`'s policies and its tightest window now.
    pub fn client_quota(&self, client: usize) -> ClientQuota {
        let now = now_ms();
        let counts = self.counts();
        let alloc = counts.allocs.get(client).copied().unwrap_or_default();
        let mut items = Vec::with_capacity(counts.windows.len());
        let mut tightest: Option<(u64, u64, u64)> = None;
        for w in &counts.windows {
            let instance = w.current.instance;
            let cap = part(alloc.max, w.limit());
            let used = w.current.clients.get(client).copied().unwrap_or(0);
            let remaining = cap.saturating_sub(used).min(w.remaining());
            let reset = ((instance.end_ms - now).max(0) as u64).div_ceil(1000);
            items.push(PolicyItem {
                cap,
                window_seconds: (instance.len_ms() / 1000) as u64,
                name: w.spec.name.clone(),
            });
            if tightest.is_none_or(|(_, r, _)| remaining < r) {
                tightest = Some((cap, remaining, reset));
            }
        }
        ClientQuota { items, tightest }
    }

    /// Sets the gauges of every window (called when /metrics is scraped).
    pub fn export(&self) {
        let now = now_ms();
        let names = self.names();
        let counts = self.counts();
        let m = &self.metrics;
        for w in &counts.windows {
            let name = w.spec.name.as_str();
            let instance = w.current.instance;
            m.quota_limit.with_label_values(&[name]).set(w.limit() as i64);
            m.quota_used.with_label_values(&[name]).set(w.current.total as i64);
            m.quota_reset.with_label_values(&[name]).set(instance.end_ms as f64 / 1000.0);
            m.quota_window.with_label_values(&[name]).set(instance.len_ms() as f64 / 1000.0);
            let pace = pace(w.remaining(), instance.end_ms - now).unwrap_or(0.0);
            m.quota_pace.with_label_values(&[name]).set(pace);
            for (client, used) in names.iter().zip(w.current.clients.iter().chain(std::iter::repeat(&0))) {
                m.quota_client_used.with_label_values(&[name, client]).set(*used as i64);
            }
        }
    }

    /// The `quota` object of `/admin/state`.
    pub fn state_json(&self) -> Value {
        let now = now_ms();
        let names = self.names();
        let counts = self.counts();
        let windows: Vec<Value> = counts
            .windows
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let instance = w.current.instance;
                let attributed: u64 = w.current.clients.iter().sum();
                let clients: serde_json::Map<String, Value> = names
                    .iter()
                    .enumerate()
                    .map(|(c, name)| {
                        let alloc = counts.allocs.get(c).copied().unwrap_or_default();
                        let used = w.current.clients.get(c).copied().unwrap_or(0);
                        let entry = json!({"used": used, "max": part(alloc.max, w.limit()),
                            "reserved": part(alloc.reserved, w.limit())});
                        ((*name).to_owned(), entry)
                    })
                    .collect();
                let upstream = w.upstream.map(|u| {
                    json!({"limit": u.limit, "remaining": u.remaining,
                        "seen_seconds_ago": (now - u.seen_ms).max(0) as f64 / 1000.0})
                });
                json!({
                    "window": w.spec.name,
                    "limit": w.limit(),
                    "configured_limit": w.spec.limit,
                    "used": w.current.total,
                    "remaining": w.remaining(),
                    "started_at": rfc3339(instance.start_ms),
                    "reset_at": rfc3339(instance.end_ms),
                    "resets_in_seconds": (instance.end_ms - now).max(0) as f64 / 1000.0,
                    "length_seconds": instance.len_ms() as f64 / 1000.0,
                    "pace_per_second": pace(w.remaining(), instance.end_ms - now),
                    "hold_cap": counts.hold_cap(i, now),
                    "upstream": upstream,
                    "unattributed": w.current.total.saturating_sub(attributed),
                    "clients": clients,
                })
            })
            .collect();
        let (store, state_file) = match &self.store {
            Store::File(file) => ("file", Some(file.path().display().to_string())),
            Store::Redis(_) => ("redis", None),
        };
        json!({
            "store": store,
            "state_file": state_file,
            "pacing": match self.pacing { Pacing::Off => "off", Pacing::Even => "even" },
            "paced_interval_seconds": counts.pace_interval(now).map(|d| d.as_secs_f64()),
            "zone": self.zone_name(),
            "block_size": counts.block_size(),
            "unspent_in_blocks": counts.unspent(),
            "windows": windows,
        })
    }
}

/// Unix milliseconds as an RFC 3339 time in UTC.
fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}
