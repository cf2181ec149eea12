//! Quota windows of the simulated account: "1000 requests per minute *and* 50 000 per day".
//!
//! Courier must never overrun an upstream quota, so its tests need an upstream that enforces one
//! exactly: each window is a count over a fixed span of wall-clock time (a duration such as `20s`
//! aligned to the Unix epoch, or a calendar `hour`, `day` or `month` in UTC; the simulator needs
//! no time zones), and a request past the limit of any window is refused until that window ends.
//!
//! Unlike the per-minute GCRA, the windows are counted under a `Mutex`: the counts must be exact
//! (a test compares them with courier's), and the lock is only taken while windows are set, so
//! the default simulator (no quotas) keeps its lock-free request path. Time is passed in as Unix
//! milliseconds, which keeps the arithmetic testable without sleeping.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};

use super::window::{instance, parse_list, QuotaSpec};

/// How many seconds of per-second arrival counts are kept.
pub const ARRIVALS_KEPT_SECS: u64 = 3600;

/// Which headers describe the quota windows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum QuotaHeaders {
    /// IETF draft `RateLimit-Policy` (the minute item, then one per window) and `RateLimit`
    /// (the policy closest to exhaustion).
    #[default]
    #[serde(rename = "ietf")]
    #[value(name = "ietf")]
    Ietf,
    /// `X-RateLimit-Limit/Remaining/Reset` describe the longest window, the reset as Unix
    /// seconds (GitHub style).
    #[serde(rename = "x-ratelimit")]
    #[value(name = "x-ratelimit")]
    XRateLimit,
}

/// A run-time change of the quotas, as `POST /_sim/quotas` takes it. Applied in this order:
/// `quotas`, `reset`, `used`, `headers`; nothing is applied when any part is invalid.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotasPatch {
    /// Replaces the windows: a comma-separated `COUNT/WINDOW` list (`""` removes them all). A
    /// window whose name stays keeps its current count.
    #[serde(default)]
    pub quotas: Option<String>,
    /// Zeroes every window's used and refused counts and the arrivals.
    #[serde(default)]
    pub reset: bool,
    /// Sets the used count of the current instance of the named windows (e.g. `{"20s": 12}`).
    #[serde(default)]
    pub used: BTreeMap<String, u64>,
    /// Switches the header style.
    #[serde(default)]
    pub headers: Option<QuotaHeaders>,
}

/// One window as `/_sim/quotas` and `/_sim/stats` show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaWindowStats {
    /// The window as written: `hour`, `day`, `month` or a duration like `20s`.
    pub name: String,
    /// Requests allowed per instance of the window.
    pub limit: u64,
    /// Requests counted in the current instance.
    pub used: u64,
    /// `limit - used` (0 when spent).
    pub remaining: u64,
    /// Requests this window refused since start or the last reset.
    pub refused: u64,
    /// Unix seconds at which the current instance started.
    pub start: u64,
    /// Unix seconds at which the current instance ends (the reset).
    pub reset_at: u64,
}

/// The `/_sim/quotas` document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotasReport {
    /// The header style in use.
    pub headers: QuotaHeaders,
    /// Every window, in the order configured.
    pub windows: Vec<QuotaWindowStats>,
    /// `/v2/process` requests that passed authentication, per Unix second, `[unix_s, n]`, oldest
    /// first (only seconds with arrivals, at most the last hour; counted while windows are set).
    pub arrivals: Vec<(u64, u32)>,
}

/// A window's state at one request, for the response headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WindowView {
    /// Requests allowed per instance.
    pub(crate) limit: u64,
    /// Requests left in the current instance.
    pub(crate) remaining: u64,
    /// Length of the current instance in seconds (a calendar month's varies).
    pub(crate) len_secs: u64,
    /// Whole seconds (ceil, at least 1) until the instance ends.
    pub(crate) reset_secs: u64,
    /// Unix seconds at which the instance ends.
    pub(crate) reset_at: u64,
}

/// What the windows say about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Admission {
    /// The header style.
    pub(crate) style: QuotaHeaders,
    /// Every window after this request was counted (or refused).
    pub(crate) windows: Vec<WindowView>,
    /// The spent window that refused the request (the latest reset when several are spent).
    pub(crate) refused: Option<WindowView>,
}

#[derive(Debug)]
struct Window {
    spec: QuotaSpec,
    start_ms: u64,
    end_ms: u64,
    used: u64,
    refused: u64,
}

impl Window {
    fn new(spec: QuotaSpec, now_ms: u64) -> Self {
        let (start_ms, end_ms) = instance(&spec.kind, now_ms);
        Self { spec, start_ms, end_ms, used: 0, refused: 0 }
    }

    /// Moves to the instance holding `now_ms` when the current one has ended. Only forward: a
    /// wall clock stepped back keeps the count (an upstream must not forget what it served).
    fn roll(&mut self, now_ms: u64) {
        if now_ms >= self.end_ms {
            (self.start_ms, self.end_ms) = instance(&self.spec.kind, now_ms);
            self.used = 0;
        }
    }

    fn view(&self, now_ms: u64) -> WindowView {
        WindowView {
            limit: self.spec.limit,
            remaining: self.spec.limit.saturating_sub(self.used),
            len_secs: (self.end_ms - self.start_ms) / 1000,
            reset_secs: (self.end_ms.saturating_sub(now_ms)).div_ceil(1000).max(1),
            reset_at: self.end_ms / 1000,
        }
    }

    fn stats(&self) -> QuotaWindowStats {
        QuotaWindowStats {
            name: self.spec.name.clone(),
            limit: self.spec.limit,
            used: self.used,
            remaining: self.spec.limit.saturating_sub(self.used),
            refused: self.refused,
            start: self.start_ms / 1000,
            reset_at: self.end_ms / 1000,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    windows: Vec<Window>,
    style: QuotaHeaders,
    /// `(unix_s, n)`, oldest first.
    arrivals: VecDeque<(u64, u32)>,
}

impl Inner {
    fn arrive(&mut self, now_ms: u64) {
        let sec = now_ms / 1000;
        match self.arrivals.back_mut() {
            Some((s, n)) if *s == sec => *n = n.saturating_add(1),
            _ => self.arrivals.push_back((sec, 1)),
        }
        while self.arrivals.front().is_some_and(|&(s, _)| s + ARRIVALS_KEPT_SECS <= sec) {
            self.arrivals.pop_front();
        }
    }
}

/// The account's quota windows (none by default).
#[derive(Debug, Default)]
pub(crate) struct QuotaWindows {
    /// Whether any window is set: read without the lock on every request.
    enabled: AtomicBool,
    inner: Mutex<Inner>,
}

impl QuotaWindows {
    /// Windows from `COUNT/WINDOW` lists (each entry may itself be a comma list), at `now_ms`.
    pub(crate) fn new(quotas: &[String], style: QuotaHeaders, now_ms: u64) -> Result<Self, String> {
        let windows = parse_list(&quotas.join(","))?;
        let windows: Vec<Window> = windows.into_iter().map(|spec| Window::new(spec, now_ms)).collect();
        let enabled = AtomicBool::new(!windows.is_empty());
        Ok(Self { enabled, inner: Mutex::new(Inner { windows, style, arrivals: VecDeque::new() }) })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts an authenticated request at `now_ms` in every window, or refuses it when a window
    /// is spent; `count == false` (the per-minute limiter refused it) only reads the windows.
    /// `None` when no windows are set.
    pub(crate) fn admit(&self, now_ms: u64, count: bool) -> Option<Admission> {
        if !self.enabled.load(Ordering::Acquire) {
            return None;
        }
        let mut inner = self.lock();
        if inner.windows.is_empty() {
            return None;
        }
        inner.arrive(now_ms);
        for w in &mut inner.windows {
            w.roll(now_ms);
        }
        let mut refused = None;
        if count {
            let spent = inner.windows.iter_mut().filter(|w| w.used >= w.spec.limit).max_by_key(|w| w.end_ms);
            match spent {
                Some(w) => {
                    w.refused += 1;
                    refused = Some(w.view(now_ms));
                }
                None => inner.windows.iter_mut().for_each(|w| w.used += 1),
            }
        }
        let windows = inner.windows.iter().map(|w| w.view(now_ms)).collect();
        Some(Admission { style: inner.style, windows, refused })
    }

    /// Applies a run-time change at `now_ms` (nothing when it is invalid) and returns the report.
    pub(crate) fn apply(&self, patch: &QuotasPatch, now_ms: u64) -> Result<QuotasReport, String> {
        let specs = patch.quotas.as_deref().map(parse_list).transpose()?;
        let mut inner = self.lock();
        let names: Vec<&str> = match &specs {
            Some(specs) => specs.iter().map(|s| s.name.as_str()).collect(),
            None => inner.windows.iter().map(|w| w.spec.name.as_str()).collect(),
        };
        if let Some(name) = patch.used.keys().find(|name| !names.contains(&name.as_str())) {
            return Err(format!("used: no window named {name:?} (windows: {})", names.join(", ")));
        }
        if let Some(specs) = specs {
            let mut old = std::mem::take(&mut inner.windows);
            let keep = |spec: QuotaSpec| match old.iter().position(|w| w.spec.name == spec.name) {
                Some(i) => Window { spec, ..old.swap_remove(i) },
                None => Window::new(spec, now_ms),
            };
            inner.windows = specs.into_iter().map(keep).collect();
        }
        for w in &mut inner.windows {
            w.roll(now_ms);
        }
        if patch.reset {
            inner.windows.iter_mut().for_each(|w| (w.used, w.refused) = (0, 0));
            inner.arrivals.clear();
        }
        for w in &mut inner.windows {
            if let Some(&used) = patch.used.get(&w.spec.name) {
                w.used = used;
            }
        }
        if let Some(style) = patch.headers {
            inner.style = style;
        }
        self.enabled.store(!inner.windows.is_empty(), Ordering::Release);
        Ok(report(&inner))
    }

    /// The `/_sim/quotas` document at `now_ms`.
    pub(crate) fn report(&self, now_ms: u64) -> QuotasReport {
        let mut inner = self.lock();
        for w in &mut inner.windows {
            w.roll(now_ms);
        }
        report(&inner)
    }

    /// Zeroes the refused counts and the arrivals (with the other stats); the used counts are
    /// the account's state, like the limiter's, and stay.
    pub(crate) fn reset_stats(&self) {
        let mut inner = self.lock();
        inner.windows.iter_mut().for_each(|w| w.refused = 0);
        inner.arrivals.clear();
    }
}

fn report(inner: &Inner) -> QuotasReport {
    QuotasReport {
        headers: inner.style,
        windows: inner.windows.iter().map(Window::stats).collect(),
        arrivals: inner.arrivals.iter().copied().collect(),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A Unix time at the start of a 2 s window (and of a 10 s one).
    pub(in crate::simulator) const T0: u64 = 1_700_000_000_000;

    pub(in crate::simulator) fn windows(list: &str) -> QuotaWindows {
        QuotaWindows::new(&[list.to_owned()], QuotaHeaders::Ietf, T0).unwrap()
    }

    #[test]
    fn no_windows_is_no_lock_and_no_answer() {
        let q = QuotaWindows::new(&[], QuotaHeaders::Ietf, T0).unwrap();
        assert_eq!(q.admit(T0, true), None);
        assert_eq!(q.report(T0), QuotasReport::default());
        assert!(QuotaWindows::new(&["5/fortnight".into()], QuotaHeaders::Ietf, T0).is_err());
    }

    #[test]
    fn windows_refuse_at_the_limit_and_reset() {
        let q = windows("5/2s, 7/10s");
        for i in 0..5 {
            let a = q.admit(T0 + 100 * i, true).unwrap();
            assert_eq!(a.refused, None);
            assert_eq!(a.windows[0].remaining, 4 - i);
        }
        let refused = q.admit(T0 + 1_200, true).unwrap().refused.expect("the 6th is refused");
        assert_eq!((refused.limit, refused.remaining, refused.reset_secs), (5, 0, 1));
        assert_eq!(refused.reset_at, (T0 + 2_000) / 1000);
        // A read (the minute limiter refused) counts nothing and refuses nothing.
        assert_eq!(q.admit(T0 + 1_300, false).unwrap().refused, None);
        // The next 2 s instance serves again; the 10 s window keeps counting and is spent at 7.
        assert_eq!(q.admit(T0 + 2_000, true).unwrap().refused, None);
        assert_eq!(q.admit(T0 + 2_001, true).unwrap().refused, None);
        let spent = q.admit(T0 + 2_002, true).unwrap().refused.expect("the 10 s window is spent");
        assert_eq!((spent.limit, spent.reset_secs), (7, 8));
        let report = q.report(T0 + 2_003);
        let counts: Vec<_> = report.windows.iter().map(|w| (w.name.as_str(), w.used, w.refused)).collect();
        assert_eq!(counts, [("2s", 2, 1), ("10s", 7, 1)]);
        assert_eq!(report.windows[1].reset_at - report.windows[1].start, 10);
        // Both spent: the refusal names the one that resets last.
        q.apply(&QuotasPatch { used: [("2s".to_owned(), 5)].into(), ..QuotasPatch::default() }, T0 + 2_004).unwrap();
        assert_eq!(q.admit(T0 + 2_005, true).unwrap().refused.unwrap().limit, 7);
        assert_eq!(q.admit(T0 + 10_000, true).unwrap().refused, None);
    }

    #[test]
    fn run_time_changes_keep_counts_by_name_and_refuse_unknown_names() {
        let q = windows("5/2s");
        q.admit(T0, true);
        let patch = |v: serde_json::Value| serde_json::from_value::<QuotasPatch>(v).unwrap();
        let r = q.apply(&patch(serde_json::json!({"quotas": "3/2s, 100/hour"})), T0 + 1).unwrap();
        let counts: Vec<_> = r.windows.iter().map(|w| (w.name.as_str(), w.limit, w.used)).collect();
        assert_eq!(counts, [("2s", 3, 1), ("hour", 100, 0)]);
        let err = q.apply(&patch(serde_json::json!({"used": {"day": 1}, "headers": "x-ratelimit"})), T0 + 2);
        assert!(err.unwrap_err().contains("no window named \"day\" (windows: 2s, hour)"));
        assert_eq!(q.report(T0 + 2).headers, QuotaHeaders::Ietf, "nothing of a refused patch is applied");
        let r = q.apply(&patch(serde_json::json!({"used": {"hour": 99}, "headers": "x-ratelimit"})), T0 + 3).unwrap();
        assert_eq!((r.windows[1].used, r.headers), (99, QuotaHeaders::XRateLimit));
        let r = q.apply(&patch(serde_json::json!({"reset": true, "used": {"2s": 2}})), T0 + 4).unwrap();
        assert_eq!((r.windows[0].used, r.windows[1].used, r.arrivals.len()), (2, 0, 0));
        assert!(serde_json::from_value::<QuotasPatch>(serde_json::json!({"quota": "1/day"})).is_err());
        let r = q.apply(&patch(serde_json::json!({"quotas": ""})), T0 + 5).unwrap();
        assert!(r.windows.is_empty());
        assert_eq!(q.admit(T0 + 6, true), None);
    }

    #[test]
    fn arrivals_are_counted_per_second() {
        let q = windows("1/10s");
        for ms in [0, 10, 999, 1_000, 3_500, 3_600, 3_700] {
            q.admit(T0 + ms, true);
        }
        q.admit(T0 + 3_800, false);
        let s = T0 / 1000;
        assert_eq!(q.report(T0 + 4_000).arrivals, [(s, 3), (s + 1, 1), (s + 3, 4)]);
        // An hour later the old seconds are gone.
        q.admit(T0 + 3_604_500, true);
        assert_eq!(q.report(T0 + 3_604_500).arrivals, [(s + 3604, 1)]);
        q.reset_stats();
        let r = q.report(T0 + 3_604_500);
        assert_eq!((r.arrivals.len(), r.windows[0].refused, r.windows[0].used), (0, 0, 1));
    }
}
