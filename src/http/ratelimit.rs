//! The `RateLimit-Policy` and `RateLimit` headers (IETF draft `ratelimit-headers`) on every
//! answer of `POST /api/external/process`: a client's share of the upstream budget, from
//! [`BudgetShared::client_share`].
//!
//! ```text
//! RateLimit-Policy: 750;w=60                   its weighted share of the upstream's limit per minute
//! RateLimit: limit=750, remaining=12, reset=1  its share of the permits free now; seconds until full
//! ```
//!
//! With quota windows (`EXTERNAL_API_QUOTAS`), the policy lists each window after the minute
//! share, as the client's cap in it, with the window's length and name, and `RateLimit`
//! describes the policy closest to exhaustion for the client:
//!
//! ```text
//! RateLimit-Policy: 750;w=60, 15000;w=86400;name="day"
//! RateLimit: limit=15000, remaining=0, reset=3600
//! ```
//!
//! Why it is written with care: it runs on every answer, errors included. The `RateLimit`
//! value is joined from `itoa` parts into one exactly sized buffer that the header value then
//! owns (one allocation, no copy). The policy depends only on the limit, which takes as many
//! values as there are client weights, so each worker thread keeps the few it rendered and
//! hands out a shared copy; the budget itself stays free of HTTP types.

use std::cell::RefCell;
use std::time::Instant;

use actix_web::http::header::{HeaderName, HeaderValue};

use crate::actors::budget::BudgetShared;
use crate::actors::quota::ClientQuota;

/// Header names built at compile time (`from_static` at run time checks every byte again).
const POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Policies a worker thread keeps; more distinct limits than this only cost a re-render.
const POLICIES_KEPT: usize = 16;

thread_local! {
    /// The policies rendered on this thread, by limit.
    static POLICIES: RefCell<Vec<(u64, HeaderValue)>> = const { RefCell::new(Vec::new()) };
}

/// The `RateLimit-Policy` and `RateLimit` headers for `client` at `now`; `quota` is the
/// client's view of the quota windows, when there are any.
pub fn headers(
    budget: &BudgetShared,
    quota: Option<&ClientQuota>,
    client: usize,
    now: Instant,
) -> [(HeaderName, HeaderValue); 2] {
    let share = budget.client_share(client, now);
    let mut tightest = (share.limit, share.remaining, share.reset_seconds);
    let policy = match quota {
        None => policy(share.limit),
        Some(quota) => {
            if let Some(window) = quota.tightest.filter(|(_, remaining, _)| *remaining < share.remaining) {
                tightest = window;
            }
            quota_policy(share.limit, quota)
        }
    };
    let (mut limit, mut remaining, mut reset) = (itoa::Buffer::new(), itoa::Buffer::new(), itoa::Buffer::new());
    let value = [
        "limit=",
        limit.format(tightest.0),
        ", remaining=",
        remaining.format(tightest.1),
        ", reset=",
        reset.format(tightest.2),
    ]
    .concat();
    let value = HeaderValue::try_from(value).expect("digits and ASCII punctuation");
    [(POLICY, policy), (RATELIMIT, value)]
}

/// The minute share's item, then one per quota window: `{cap};w={seconds};name="{window}"`.
fn quota_policy(minute: u64, quota: &ClientQuota) -> HeaderValue {
    let mut value = [itoa::Buffer::new().format(minute), ";w=60"].concat();
    for item in &quota.items {
        let (mut cap, mut seconds) = (itoa::Buffer::new(), itoa::Buffer::new());
        value.extend([
            ", ",
            cap.format(item.cap),
            ";w=",
            seconds.format(item.window_seconds),
            ";name=\"",
            &item.name,
            "\"",
        ]);
    }
    HeaderValue::try_from(value).expect("window names are digits and letters")
}

/// `{limit};w=60`, rendered once per thread and limit.
fn policy(limit: u64) -> HeaderValue {
    POLICIES.with_borrow_mut(|kept| {
        if let Some((_, value)) = kept.iter().find(|(kept, _)| *kept == limit) {
            return value.clone();
        }
        let value = [itoa::Buffer::new().format(limit), ";w=60"].concat();
        let value = HeaderValue::try_from(value).expect("digits and ASCII punctuation");
        if kept.len() == POLICIES_KEPT {
            kept.clear();
        }
        kept.push((limit, value.clone()));
        value
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_headers_describe_the_weighted_share() {
        let shared = BudgetShared::try_new(1000, 10, vec![3, 1]).unwrap();
        let now = Instant::now();
        let [(_, policy), (_, limit)] = headers(&shared, None, 0, now);
        assert_eq!(policy, "750;w=60");
        assert_eq!(limit, "limit=750, remaining=7, reset=0");
        let [(_, policy), _] = headers(&shared, None, 1, now);
        assert_eq!(policy, "250;w=60");
    }

    #[test]
    fn quota_windows_follow_the_minute_share_and_a_spent_one_is_the_ratelimit() {
        use crate::actors::quota::PolicyItem;
        let shared = BudgetShared::try_new(1000, 10, vec![3, 1]).unwrap();
        let now = Instant::now();
        let item = |cap, window_seconds, name: &str| PolicyItem { cap, window_seconds, name: name.into() };
        let mut quota = ClientQuota {
            items: vec![item(15_000, 86_400, "day"), item(300_000, 2_678_400, "month")],
            tightest: Some((15_000, 9_000, 3_600)),
        };
        let [(_, policy), (_, limit)] = headers(&shared, Some(&quota), 0, now);
        assert_eq!(policy, "750;w=60, 15000;w=86400;name=\"day\", 300000;w=2678400;name=\"month\"");
        assert_eq!(limit, "limit=750, remaining=7, reset=0", "the minute share has less left");
        quota.tightest = Some((15_000, 0, 3_600));
        let [_, (_, limit)] = headers(&shared, Some(&quota), 0, now);
        assert_eq!(limit, "limit=15000, remaining=0, reset=3600", "the spent day is the closest to exhaustion");
    }

    #[test]
    fn more_limits_than_a_thread_keeps_still_render_right() {
        for round in 0..2 {
            for limit in 1..=2 * POLICIES_KEPT as u64 {
                assert_eq!(policy(limit), format!("{limit};w=60"), "round {round}");
            }
        }
        assert!(POLICIES.with_borrow(Vec::len) <= POLICIES_KEPT);
    }
}
