//! The upstream's own quotas: `RateLimit-Policy`, and which rate-limit triple describes a quota
//! window longer than a minute rather than the per-minute rate.
//!
//! An upstream that sells "1000/minute and 50,000/day" may report either window in its
//! `X-RateLimit-*` or `RateLimit` headers. The budget paces the per-minute rate from them, so a
//! daily "remaining 20,000, reset in 9 hours" taken as a minute signal would stall it for hours;
//! such a triple is a [`QuotaSignal`] instead, for the quota windows. A triple is a quota when its
//! limit is a `RateLimit-Policy` item's with a window above a minute, or, when no item names its
//! limit, when its reset is more than [`FAR_RESET`] away (no minute window resets that late).
//! Everything else stays the minute signal it always was.

use std::time::Duration;

/// Most policy items kept: a signal is `Copy`, read once per upstream answer.
const MAX_ITEMS: usize = 6;
/// A window longer than this many seconds is a quota window, not the per-minute rate.
const MINUTE_SECS: u32 = 60;
/// A reset further away than this belongs to a window longer than a minute.
pub const FAR_RESET: Duration = Duration::from_secs(120);

/// The items of `RateLimit-Policy`, each a quota and its window in seconds: draft-07's
/// `100;w=60, 5000;w=86400` or draft-08's `"default";q=100;w=60`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policies([Option<(u64, u32)>; MAX_ITEMS]);

impl Policies {
    /// Reads the header's items; an item without a quota or a window, or counting something
    /// other than requests (draft-08 `qu`), is skipped, and items past the sixth are dropped.
    pub fn parse(text: &str) -> Policies {
        let mut items = [None; MAX_ITEMS];
        let found = split_unquoted(text, ',').filter_map(item);
        for (slot, found) in items.iter_mut().zip(found) {
            *slot = Some(found);
        }
        Policies(items)
    }

    /// The items, `(quota, window seconds)`, in the header's order.
    pub fn items(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.0.iter().map_while(|item| *item)
    }

    /// Whether the header was absent or had no usable item.
    pub fn is_empty(&self) -> bool {
        self.0[0].is_none()
    }

    /// The window (seconds) of the item whose quota is `limit`; of two with the same quota, the
    /// first that a reset `reset` from now fits in (a window cannot reset later than its length).
    fn window_of(&self, limit: u64, reset: Option<Duration>) -> Option<u32> {
        let fits = |w: u32| reset.is_none_or(|reset| reset <= Duration::from_secs(u64::from(w)));
        let mut same = self.items().filter(|(quota, _)| *quota == limit).map(|(_, window)| window);
        let first = same.next()?;
        Some(if fits(first) { first } else { same.find(|w| fits(*w)).unwrap_or(first) })
    }
}

/// One policy item: draft-07 starts with the quota, draft-08 with a name and has `q=`.
fn item(text: &str) -> Option<(u64, u32)> {
    let mut members = split_unquoted(text, ';').map(str::trim);
    let first = members.next()?;
    let (mut quota, mut window) = (first.parse::<u64>().ok(), None);
    for member in members {
        let Some((key, value)) = member.split_once('=') else { continue };
        let value = value.trim();
        match key.trim() {
            "q" => quota = quota.or(value.parse().ok()),
            "w" => window = value.parse::<u32>().ok().filter(|w| *w > 0),
            "qu" if value.trim_matches('"') != "requests" => return None,
            _ => {}
        }
    }
    Some((quota?, window?))
}

/// `text` split at `sep` outside double quotes (a `comment="a, b"` is one member).
fn split_unquoted(text: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut quoted = false;
    text.split(move |c: char| {
        if c == '"' {
            quoted = !quoted;
        }
        c == sep && !quoted
    })
}

/// A quota the upstream reports for a window longer than a minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaSignal {
    /// The window's quota, when the triple had one.
    pub limit: Option<u64>,
    /// What is left of it.
    pub remaining: u64,
    /// When the window resets, as a delay from now.
    pub reset: Option<Duration>,
    /// The window's length, from the matching `RateLimit-Policy` item.
    pub window: Option<Duration>,
}

/// One rate-limit triple as read: `X-RateLimit-*`, or the IETF `RateLimit` header's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Triple {
    pub(super) limit: Option<u64>,
    pub(super) remaining: Option<u64>,
    pub(super) reset: Option<Duration>,
}

impl Triple {
    /// The triple as a quota signal, if it describes a window longer than a minute.
    fn quota(&self, policies: &Policies) -> Option<QuotaSignal> {
        let remaining = self.remaining?;
        let window = match self.limit.and_then(|limit| policies.window_of(limit, self.reset)) {
            Some(w) if w > MINUTE_SECS => Some(Duration::from_secs(u64::from(w))),
            Some(_) => return None,
            None if self.reset.is_some_and(|reset| reset > FAR_RESET) => None,
            None => return None,
        };
        Some(QuotaSignal { limit: self.limit, remaining, reset: self.reset, window })
    }

    /// Each field of `self`, else of `other`.
    fn or(self, other: Triple) -> Triple {
        Triple {
            limit: self.limit.or(other.limit),
            remaining: self.remaining.or(other.remaining),
            reset: self.reset.or(other.reset),
        }
    }
}

/// The minute triple for the budget and the quota signal, from the `X-RateLimit-*` triple and
/// the IETF one: a triple that is a quota leaves the minute fields (the IETF one is preferred
/// when both are); the minute fields are otherwise as before, `X-RateLimit-*` first.
pub(super) fn split(x: Triple, ietf: Triple, policies: &Policies) -> (Triple, Option<QuotaSignal>) {
    match (ietf.quota(policies), x.quota(policies)) {
        (Some(quota), Some(_)) => (Triple::default(), Some(quota)),
        (Some(quota), None) => (x, Some(quota)),
        (None, Some(quota)) => (ietf, Some(quota)),
        (None, None) => (x.or(ietf), None),
    }
}

/// The IETF `RateLimit` header's triple (draft-07 `limit=, remaining=, reset=`; `r`, `t`).
pub(super) fn ietf_triple(text: &str) -> Triple {
    let mut triple = Triple::default();
    for item in text.split(',') {
        let Some((key, value)) = item.trim().split_once('=') else { continue };
        let Ok(value) = value.trim().trim_matches('"').parse::<u64>() else { continue };
        match key.trim() {
            "limit" => triple.limit = triple.limit.or(Some(value)),
            "remaining" | "r" => triple.remaining = triple.remaining.or(Some(value)),
            "reset" | "t" => triple.reset = triple.reset.or(Some(super::classify::reset_delay(value))),
            _ => {}
        }
    }
    triple
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};

    use super::*;
    use crate::upstream::RateSignal;

    fn signal(pairs: &[(&'static str, &str)]) -> RateSignal {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(HeaderName::from_static(k), HeaderValue::from_str(v).unwrap());
        }
        RateSignal::from_headers(&map)
    }

    fn items(text: &str) -> Vec<(u64, u32)> {
        Policies::parse(text).items().collect()
    }

    fn secs(s: u64) -> Option<Duration> {
        Some(Duration::from_secs(s))
    }

    #[test]
    fn policy_items_draft07_and_draft08() {
        assert_eq!(items("100;w=60, 5000;w=86400"), [(100, 60), (5000, 86_400)]);
        assert_eq!(items(r#""default";q=100;w=60, "daily";q=5000;w=86400;qu="requests""#), [(100, 60), (5000, 86_400)]);
        // Extra parameters, and a comment holding the separators, are passed over.
        assert_eq!(items(r#"10;w=60;burst=5;comment="a, b; c", 20;w=3600"#), [(10, 60), (20, 3600)]);
        // An item without a quota or a window, or counting bytes, is not a request quota.
        assert_eq!(items(r#"10, "x";w=60, 5;w=0, "b";q=9;w=60;qu="content-bytes", 7;w=30"#), [(7, 30)]);
        let many: Vec<String> = (1..=8).map(|i| format!("{i};w={}", i * 60)).collect();
        assert_eq!(items(&many.join(", ")).len(), 6, "six items are kept");
        assert!(Policies::parse("nonsense").is_empty());
        assert!(signal(&[]).policies.is_empty());
        let read = signal(&[("ratelimit-policy", "100;w=60, 5000;w=86400")]);
        assert_eq!(read.policies.items().collect::<Vec<_>>(), [(100, 60), (5000, 86_400)]);
    }

    #[test]
    fn a_long_window_triple_is_a_quota_not_a_minute_signal() {
        // The minute in X-RateLimit-*, the day in RateLimit, told apart by the policy.
        let both = signal(&[
            ("x-ratelimit-limit", "1000"),
            ("x-ratelimit-remaining", "10"),
            ("x-ratelimit-reset", "12"),
            ("ratelimit", "limit=5000, remaining=20, reset=30000"),
            ("ratelimit-policy", "1000;w=60, 5000;w=86400"),
        ]);
        assert_eq!((both.limit, both.remaining, both.reset), (Some(1000), Some(10), secs(12)));
        let day = QuotaSignal { limit: Some(5000), remaining: 20, reset: secs(30_000), window: secs(86_400) };
        assert_eq!(both.quota, Some(day));
        // The day alone leaves nothing for the budget, even with a reset close by.
        let alone = signal(&[("ratelimit", "limit=5000, remaining=0, reset=5"), ("ratelimit-policy", "5000;w=86400")]);
        assert_eq!((alone.limit, alone.remaining, alone.reset), (None, None, None));
        let spent = QuotaSignal { limit: Some(5000), remaining: 0, reset: secs(5), window: secs(86_400) };
        assert_eq!(alone.quota, Some(spent));
    }

    #[test]
    fn x_ratelimit_with_a_far_reset_is_a_quota() {
        let hourly = signal(&[
            ("x-ratelimit-limit", "50000"),
            ("x-ratelimit-remaining", "123"),
            ("x-ratelimit-reset", "3600"),
            ("ratelimit", "limit=60, remaining=7, reset=4"),
        ]);
        assert_eq!(
            hourly.quota,
            Some(QuotaSignal { limit: Some(50_000), remaining: 123, reset: secs(3600), window: None })
        );
        assert_eq!(
            (hourly.limit, hourly.remaining, hourly.reset),
            (Some(60), Some(7), secs(4)),
            "the minute is IETF's"
        );
        // A reset given as a Unix time a day ahead is far too.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let unix = signal(&[("x-ratelimit-remaining", "9"), ("x-ratelimit-reset", &(now + 86_400).to_string())]);
        let quota = unix.quota.expect("a quota");
        assert_eq!((quota.limit, quota.remaining, unix.remaining), (None, 9, None));
        assert!(quota.reset.unwrap() > Duration::from_secs(86_000));
        // A policy naming the limit's window decides, even 30 s before that window resets.
        let near = signal(&[
            ("x-ratelimit-limit", "500"),
            ("x-ratelimit-remaining", "2"),
            ("x-ratelimit-reset", "30"),
            ("ratelimit-policy", "500;w=3600"),
        ]);
        assert_eq!(
            near.quota,
            Some(QuotaSignal { limit: Some(500), remaining: 2, reset: secs(30), window: secs(3600) })
        );
        assert_eq!((near.limit, near.remaining, near.reset), (None, None, None));
    }

    #[test]
    fn a_minute_triple_stays_the_budgets() {
        let minute = [("x-ratelimit-limit", "1000"), ("x-ratelimit-remaining", "5"), ("x-ratelimit-reset", "12")];
        let plain = signal(&minute);
        assert_eq!((plain.limit, plain.remaining, plain.reset, plain.quota), (Some(1000), Some(5), secs(12), None));
        let with_policy = signal(&[minute[0], minute[1], minute[2], ("ratelimit-policy", "1000;w=60, 9000;w=3600")]);
        assert_eq!((with_policy.limit, with_policy.remaining, with_policy.reset), (Some(1000), Some(5), secs(12)));
        assert_eq!(with_policy.quota, None);
        // The policy says a minute: a late reset does not make it a quota.
        let late = signal(&[("ratelimit", "limit=100, remaining=1, reset=300"), ("ratelimit-policy", "100;w=60")]);
        assert_eq!((late.limit, late.remaining, late.reset, late.quota), (Some(100), Some(1), secs(300), None));
        // Without a remaining count there is no quota to learn; the triple stays as it was.
        let no_count = signal(&[("x-ratelimit-limit", "50000"), ("x-ratelimit-reset", "3600")]);
        assert_eq!((no_count.limit, no_count.reset, no_count.quota), (Some(50_000), secs(3600), None));
        // A minute and an hour of the same quota: the reset tells which one the triple is.
        let twin = |reset: u64| {
            let ratelimit = format!("limit=100, remaining=4, reset={reset}");
            signal(&[("ratelimit", ratelimit.as_str()), ("ratelimit-policy", "100;w=60, 100;w=3600")]).quota
        };
        assert_eq!(twin(30), None);
        assert_eq!(twin(900).and_then(|q| q.window), secs(3600));
        // At the bound: 120 s is still a minute signal, 121 s a quota.
        let at = |reset: &str| signal(&[("x-ratelimit-remaining", "3"), ("x-ratelimit-reset", reset)]).quota.is_some();
        assert!(!at("120") && at("121"));
    }
}
