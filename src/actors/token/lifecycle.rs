//! The token lifecycle decisions, apart from the actor so they are tested with plain values:
//! when to refresh ahead of expiry, how long to back off after the token endpoint failed,
//! and how often a rejected token may cause a new one.
//!
//! Two kinds of failure back off differently. An endpoint that is down (unreachable, timing
//! out, answering 5xx) may be back any moment, and every request waits for it: it is asked
//! again at a steady pace of about one request per [`OUTAGE_PROBE_INTERVAL`] (after two quicker
//! retries), so its recovery is noticed within about that long instead of after a wait that
//! doubled for as long as the outage lasted. An endpoint that refuses the credentials (or
//! answers nonsense) will not change its mind by itself: that backs off exponentially, up to
//! 30 s, and a new client secret (a reload) starts a fetch at once anyway.

use std::time::{Duration, Instant};

use crate::upstream::Backoff;

/// Fraction of a token's lifetime kept in reserve: the refresh starts this long before expiry.
const MARGIN_FRACTION: u32 = 20;
/// Bounds of that reserve: enough for one token round trip, no more than a minute.
const MARGIN_MIN: Duration = Duration::from_millis(20);
const MARGIN_MAX: Duration = Duration::from_secs(60);
/// While the token endpoint is down, it is asked again at most about this often.
pub const OUTAGE_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// The spread added to each wait during an outage, as a fraction of it, so replicas that
/// failed together do not ask together.
const OUTAGE_SPREAD: f64 = 0.25;
/// Rejections of fresh tokens closer together than this are treated as endpoint failures,
/// so an upstream that rejects every token does not turn courier into a token stampede.
const REJECTION_INTERVAL: Duration = Duration::from_secs(1);

/// When to refresh a token obtained at `obtained` that lives `lifetime`: shortly before it
/// expires (5% of its lifetime, between 20 ms and 60 s, never before half of it).
pub fn refresh_at(obtained: Instant, lifetime: Duration) -> Instant {
    let margin = (lifetime / MARGIN_FRACTION).clamp(MARGIN_MIN, MARGIN_MAX).min(lifetime / 2);
    obtained + lifetime - margin
}

/// Failure and rejection bookkeeping of the token endpoint.
#[derive(Debug)]
pub struct Lifecycle {
    backoff: Backoff,
    failures: u32,
    blocked_until: Option<Instant>,
    last_rejection: Option<Instant>,
}

impl Lifecycle {
    /// A lifecycle backing off along `backoff` after failures.
    pub fn new(backoff: Backoff) -> Self {
        Lifecycle { backoff, failures: 0, blocked_until: None, last_rejection: None }
    }

    /// A token was obtained: the endpoint is healthy again.
    pub fn on_success(&mut self) {
        self.failures = 0;
        self.blocked_until = None;
    }

    /// The endpoint failed at `now`; returns how long to wait before asking again.
    pub fn on_failure(&mut self, now: Instant) -> Duration {
        let wait = self.backoff.next_delay(self.failures).max(Duration::from_millis(10));
        self.failures = self.failures.saturating_add(1);
        self.blocked_until = Some(now + wait);
        wait
    }

    /// The endpoint was down at `now` (unreachable, timed out, 5xx); returns how long to wait
    /// before asking again: the backoff's first steps, then [`OUTAGE_PROBE_INTERVAL`], each
    /// lengthened by up to a quarter (`unit` is a uniform sample of [0, 1)). Never shorter than
    /// that, so a dead endpoint gets at most about one request a second.
    pub fn on_outage(&mut self, now: Instant, unit: f64) -> Duration {
        let step = self.backoff.ceiling(self.failures).min(OUTAGE_PROBE_INTERVAL).max(Duration::from_millis(10));
        let wait = step + step.mul_f64(OUTAGE_SPREAD * unit.clamp(0.0, 1.0));
        self.failures = self.failures.saturating_add(1);
        self.blocked_until = Some(now + wait);
        wait
    }

    /// How long new refreshes are held back, if they are.
    pub fn blocked_for(&self, now: Instant) -> Option<Duration> {
        self.blocked_until.and_then(|until| until.checked_duration_since(now)).filter(|d| !d.is_zero())
    }

    /// The upstream rejected the current token at `now`. Returns true when a refresh may
    /// start at once, false when rejections come too fast and the refresh must back off.
    pub fn on_rejected(&mut self, now: Instant) -> bool {
        let too_soon = self.last_rejection.is_some_and(|last| now.duration_since(last) < REJECTION_INTERVAL);
        self.last_rejection = Some(now);
        if too_soon {
            self.on_failure(now);
        }
        !too_soon
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn refreshes_shortly_before_expiry() {
        let t0 = Instant::now();
        assert_eq!(refresh_at(t0, Duration::from_secs(3600)), t0 + Duration::from_secs(3540));
        assert_eq!(refresh_at(t0, Duration::from_secs(1)), t0 + 950 * MS);
        assert_eq!(refresh_at(t0, 100 * MS), t0 + 80 * MS);
        assert_eq!(refresh_at(t0, 30 * MS), t0 + 15 * MS);
    }

    #[test]
    fn failures_back_off_and_success_clears() {
        let mut life = Lifecycle::new(Backoff::try_new(100 * MS, 400 * MS, false).unwrap());
        let t0 = Instant::now();
        assert_eq!(life.on_failure(t0), 100 * MS);
        assert_eq!(life.on_failure(t0), 200 * MS);
        assert_eq!(life.on_failure(t0), 400 * MS);
        assert_eq!(life.on_failure(t0), 400 * MS);
        assert_eq!(life.blocked_for(t0 + 100 * MS), Some(300 * MS));
        assert_eq!(life.blocked_for(t0 + 400 * MS), None);
        life.on_success();
        assert_eq!(life.blocked_for(t0), None);
        assert_eq!(life.on_failure(t0), 100 * MS);
    }

    #[test]
    fn an_outage_is_asked_again_at_a_steady_pace_of_about_one_a_second() {
        let mut life = Lifecycle::new(Backoff::try_new(250 * MS, Duration::from_secs(30), true).unwrap());
        let t0 = Instant::now();
        let waits: Vec<_> = (0..6).map(|_| life.on_outage(t0, 0.0)).collect();
        let s = 1000 * MS;
        assert_eq!(waits, [250 * MS, 500 * MS, s, s, s, s], "no doubling past the probe interval");
        assert_eq!(life.blocked_for(t0), Some(s));
        let spread = life.on_outage(t0, 0.999);
        assert!(spread > 1249 * MS && spread < 1250 * MS, "spread by at most a quarter: {spread:?}");
        // Over a 60 s outage: the endpoint is asked at most once a second, plus two quick retries.
        let mut life = Lifecycle::new(Backoff::try_new(250 * MS, Duration::from_secs(30), true).unwrap());
        let (mut now, mut asked) = (t0, 0);
        while now < t0 + Duration::from_secs(60) {
            now += life.on_outage(now, 0.5);
            asked += 1;
        }
        assert!((48..=62).contains(&asked), "{asked} requests in 60 s");
        life.on_success();
        assert_eq!(life.on_outage(now, 0.0), 250 * MS, "a new outage starts with quick retries again");
    }

    #[test]
    fn rejected_credentials_keep_the_long_backoff_after_an_outage() {
        let mut life = Lifecycle::new(Backoff::try_new(100 * MS, 400 * MS, false).unwrap());
        let t0 = Instant::now();
        life.on_outage(t0, 0.0);
        life.on_outage(t0, 0.0);
        assert_eq!(life.on_failure(t0), 400 * MS, "the count of failures carries over");
    }

    #[test]
    fn rapid_rejections_back_off() {
        let mut life = Lifecycle::new(Backoff::try_new(100 * MS, 400 * MS, false).unwrap());
        let t0 = Instant::now();
        assert!(life.on_rejected(t0));
        assert!(!life.on_rejected(t0 + 10 * MS));
        assert!(life.blocked_for(t0 + 10 * MS).is_some());
        assert!(life.on_rejected(t0 + 2000 * MS));
    }
}
