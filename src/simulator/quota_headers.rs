//! The headers that describe the quota windows, beside the per-minute limiter's.

use actix_web::http::header::{HeaderMap, HeaderValue};

use super::process::{RATELIMIT, RATELIMIT_POLICY, X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, X_RATELIMIT_RESET};
use super::quota::{Admission, QuotaHeaders};
use super::state::header_value;

/// The per-minute limiter's numbers at one request, as the headers give them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MinuteView {
    /// Requests per minute.
    pub(crate) limit: u64,
    /// Whole permits left.
    pub(crate) remaining: u64,
    /// Whole seconds until the bucket is full.
    pub(crate) reset_secs: u64,
}

impl Admission {
    /// Adds the quota headers on top of the per-minute ones. `ietf`: `RateLimit-Policy` lists
    /// the minute item then one item per window (`<limit>;w=<seconds>`), and `RateLimit`
    /// describes the policy with the fewest requests left (the longest reset among equals, so a
    /// refusal names the spent window). `x-ratelimit`: the `X-RateLimit-*` triple describes the
    /// longest window, its reset as Unix seconds.
    pub(crate) fn write_headers(&self, headers: &mut HeaderMap, minute: MinuteView) {
        match self.style {
            QuotaHeaders::Ietf => {
                let mut policy = format!("{};w=60", minute.limit);
                for w in &self.windows {
                    policy.push_str(&format!(", {};w={}", w.limit, w.len_secs));
                }
                let minute_item = (minute.limit, minute.remaining, minute.reset_secs);
                let items = self.windows.iter().map(|w| (w.limit, w.remaining, w.reset_secs));
                let (limit, remaining, reset) = std::iter::once(minute_item)
                    .chain(items)
                    .min_by_key(|&(_, remaining, reset)| (remaining, std::cmp::Reverse(reset)))
                    .unwrap_or(minute_item);
                headers.insert(RATELIMIT_POLICY, header_value(&policy));
                let value = format!("limit={limit}, remaining={remaining}, reset={reset}");
                headers.insert(RATELIMIT, header_value(&value));
            }
            QuotaHeaders::XRateLimit => {
                if let Some(w) = self.windows.iter().max_by_key(|w| w.len_secs) {
                    headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(w.limit));
                    headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(w.remaining));
                    headers.insert(X_RATELIMIT_RESET, HeaderValue::from(w.reset_at));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::quota::tests::{windows, T0};
    use crate::simulator::quota::QuotasPatch;

    fn header(h: &HeaderMap, name: &str) -> String {
        h.get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
    }

    const MINUTE: MinuteView = MinuteView { limit: 600, remaining: 49, reset_secs: 1 };

    #[test]
    fn headers_ietf_and_x_ratelimit() {
        let q = windows("5/2s, 7/10s");
        let mut h = HeaderMap::new();
        q.admit(T0 + 500, true).unwrap().write_headers(&mut h, MINUTE);
        assert_eq!(header(&h, "ratelimit-policy"), "600;w=60, 5;w=2, 7;w=10");
        assert_eq!(header(&h, "ratelimit"), "limit=5, remaining=4, reset=2");
        for i in 1..5 {
            q.admit(T0 + 500 + i, true);
        }
        q.admit(T0 + 1_000, true).unwrap().write_headers(&mut h, MINUTE);
        assert_eq!(header(&h, "ratelimit"), "limit=5, remaining=0, reset=1");
        // When the minute has fewer left, it is the one described.
        let tight = MinuteView { remaining: 0, reset_secs: 30, ..MINUTE };
        q.admit(T0 + 2_000, true).unwrap().write_headers(&mut h, tight);
        assert_eq!(header(&h, "ratelimit"), "limit=600, remaining=0, reset=30");

        q.apply(&QuotasPatch { headers: Some(QuotaHeaders::XRateLimit), ..QuotasPatch::default() }, T0 + 2_001)
            .unwrap();
        let mut h = HeaderMap::new();
        q.admit(T0 + 2_002, true).unwrap().write_headers(&mut h, MINUTE);
        assert_eq!(header(&h, "x-ratelimit-limit"), "7");
        assert_eq!(header(&h, "x-ratelimit-remaining"), "0");
        assert_eq!(header(&h, "x-ratelimit-reset"), ((T0 + 10_000) / 1000).to_string());
        assert!(h.get("ratelimit-policy").is_none());
    }

    #[test]
    fn calendar_month_policy_names_its_current_length() {
        let q = windows("100/month");
        let mut h = HeaderMap::new();
        // 2023-11-14 (T0) is in November: 30 days.
        q.admit(T0, true).unwrap().write_headers(&mut h, MINUTE);
        assert_eq!(header(&h, "ratelimit-policy"), format!("600;w=60, 100;w={}", 30 * 86_400));
    }
}
