//! The `RateLimit-Policy` and `RateLimit` headers (IETF draft `ratelimit-headers`) on every
//! answer of `POST /api/external/process`: a client's share of the upstream budget, from
//! [`BudgetShared::client_share`].
//!
//! ```text
//! RateLimit-Policy: 750;w=60                   its weighted share of the upstream's limit per minute
//! RateLimit: limit=750, remaining=12, reset=1  its share of the permits free now; seconds until full
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

/// Header names built at compile time (`from_static` at run time checks every byte again).
const POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Policies a worker thread keeps; more distinct limits than this only cost a re-render.
const POLICIES_KEPT: usize = 16;

thread_local! {
    /// The policies rendered on this thread, by limit.
    static POLICIES: RefCell<Vec<(u64, HeaderValue)>> = const { RefCell::new(Vec::new()) };
}

/// The `RateLimit-Policy` and `RateLimit` headers for `client` at `now`.
pub fn headers(budget: &BudgetShared, client: usize, now: Instant) -> [(HeaderName, HeaderValue); 2] {
    let share = budget.client_share(client, now);
    let (mut limit, mut remaining, mut reset) = (itoa::Buffer::new(), itoa::Buffer::new(), itoa::Buffer::new());
    let value = [
        "limit=",
        limit.format(share.limit),
        ", remaining=",
        remaining.format(share.remaining),
        ", reset=",
        reset.format(share.reset_seconds),
    ]
    .concat();
    let value = HeaderValue::try_from(value).expect("digits and ASCII punctuation");
    [(POLICY, policy(share.limit)), (RATELIMIT, value)]
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
        let [(_, policy), (_, limit)] = headers(&shared, 0, now);
        assert_eq!(policy, "750;w=60");
        assert_eq!(limit, "limit=750, remaining=7, reset=0");
        let [(_, policy), _] = headers(&shared, 1, now);
        assert_eq!(policy, "250;w=60");
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
