//! Whether another replica's token, read from Redis, replaces the one a refresh is for.
//! Kept apart from the Redis calls so the rule is tested with plain values.
//!
//! A refresh is for one of three things: a first token (anything valid will do), the
//! refresh-ahead of a token that is about to expire (a newer generation or a later expiry
//! will do: another replica got there first), or a token the upstream rejected (only a later
//! generation will do: the same generation is the rejected token itself).

use std::time::{Duration, Instant};

use super::lifecycle;
use crate::shared::token::SharedToken;

/// A shared token must be valid at least this long beyond its refresh margin to be adopted;
/// one due for refresh sooner is as good as none.
const MIN_USEFUL: Duration = Duration::from_millis(20);

/// What a refresh is for, and so which shared token will do instead of a token request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// No token is held yet: any valid one.
    Any,
    /// The held token is due for refresh: one of a later generation or a later expiry.
    Replacing {
        /// Generation of the held token.
        generation: u64,
        /// Its expiry, in Unix milliseconds.
        expires_at_unix_ms: u64,
    },
    /// The upstream rejected this generation: one of a later generation.
    After {
        /// The rejected generation.
        rejected: u64,
    },
}

impl Wanted {
    /// Whether `shared` will do at `now_unix_ms`.
    pub fn accepts(&self, shared: &SharedToken, now_unix_ms: u64) -> bool {
        if !worth_adopting(shared.remaining(now_unix_ms)) {
            return false;
        }
        match *self {
            Wanted::Any => true,
            Wanted::Replacing { generation, expires_at_unix_ms } => {
                shared.generation > generation || shared.expires_at_unix_ms > expires_at_unix_ms
            }
            Wanted::After { rejected } => shared.generation > rejected,
        }
    }
}

/// Whether a token valid for `remaining` is worth adopting: it would not be due for its own
/// refresh ahead of expiry within 20 ms.
pub fn worth_adopting(remaining: Duration) -> bool {
    let now = Instant::now();
    lifecycle::refresh_at(now, remaining).saturating_duration_since(now) >= MIN_USEFUL
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn shared(generation: u64, expires_in_ms: u64) -> SharedToken {
        SharedToken { access_token: SecretString::from("t"), expires_at_unix_ms: NOW + expires_in_ms, generation }
    }

    #[test]
    fn a_first_token_takes_any_valid_one() {
        assert!(Wanted::Any.accepts(&shared(1, 3_600_000), NOW));
        assert!(!Wanted::Any.accepts(&shared(1, 0), NOW), "expired");
        assert!(!Wanted::Any.accepts(&shared(1, 30), NOW), "due for refresh at once");
    }

    #[test]
    fn a_refresh_ahead_takes_a_newer_generation_or_a_later_expiry() {
        let held = Wanted::Replacing { generation: 4, expires_at_unix_ms: NOW + 50 };
        assert!(!held.accepts(&shared(4, 50), NOW), "the held token itself");
        assert!(held.accepts(&shared(5, 1_000), NOW), "another replica refreshed");
        assert!(held.accepts(&shared(3, 1_000), NOW), "later expiry, after an outage's local generations");
        assert!(!held.accepts(&shared(3, 40), NOW), "older and sooner");
    }

    #[test]
    fn after_a_rejection_only_a_later_generation_will_do() {
        let rejected = Wanted::After { rejected: 4 };
        assert!(!rejected.accepts(&shared(4, 3_600_000), NOW), "the rejected token itself");
        assert!(!rejected.accepts(&shared(3, 3_600_000), NOW));
        assert!(rejected.accepts(&shared(5, 3_600_000), NOW));
    }

    #[test]
    fn worth_adopting_needs_time_beyond_the_refresh_margin() {
        assert!(worth_adopting(Duration::from_secs(1)));
        assert!(worth_adopting(Duration::from_millis(40)));
        assert!(!worth_adopting(Duration::from_millis(30)));
        assert!(!worth_adopting(Duration::ZERO));
    }
}
