//! Whether another replica's token, read from Redis, replaces the one a refresh is for.
//! Kept apart from the Redis calls so the rule is tested with plain values.
//!
//! A refresh is for one of three things: a first token (anything valid will do), the
//! refresh-ahead of a token that is about to expire (a newer generation or a later expiry
//! will do: another replica got there first), or a token the upstream rejected (only a later
//! generation will do: the same generation is the rejected token itself).
//!
//! Also the looks a backing-off replica takes in Redis: without them, a replica whose own
//! refresh waits (say, 8 s after refused credentials) would keep answering 503 for that long
//! although another replica has stored a good token meanwhile. A look is one Redis read, about
//! once a second, only while the refresh itself is further away than that.

use std::time::{Duration, Instant};

use actix::prelude::*;

use super::{lifecycle, TokenManager};
use crate::metrics::LookResult;
use crate::shared::token::SharedToken;

/// While a refresh backs off for longer than this, Redis is read this often for a token another
/// replica got meanwhile.
pub const SHARED_LOOK_INTERVAL: Duration = Duration::from_secs(1);

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

impl TokenManager {
    /// Arms the next look in Redis, when replicas share tokens and the refresh itself (which
    /// reads Redis first) is further away than a look interval.
    pub(super) fn schedule_look(&mut self, ctx: &mut Context<Self>) {
        if let Some(previous) = self.look_timer.take() {
            ctx.cancel_future(previous);
        }
        let far = self.lifecycle.blocked_for(Instant::now()).is_some_and(|wait| wait > SHARED_LOOK_INTERVAL);
        if self.shared.is_some() && far {
            self.look_timer = Some(ctx.run_later(SHARED_LOOK_INTERVAL, |act, ctx| {
                act.look_timer = None;
                act.look(ctx);
            }));
        }
    }

    /// Reads Redis once, while backing off, and adopts a usable token found there.
    fn look(&mut self, ctx: &mut Context<Self>) {
        if self.refreshing || self.looking || self.lifecycle.blocked_for(Instant::now()).is_none() {
            return;
        }
        self.looking = true;
        let look = self.refresh().look();
        let published = self.cell.version();
        ctx.spawn(look.into_actor(self).map(move |found, act, ctx| {
            act.looking = false;
            // A refresh that started meanwhile reads Redis itself; one that ended meanwhile may
            // have got a newer token than the one read.
            let stale = act.refreshing || act.cell.version() != published;
            let result = match found {
                Ok(Some(obtained)) if !stale => {
                    act.finish_refresh(Ok(obtained), ctx);
                    LookResult::Adopted
                }
                Ok(_) => LookResult::Nothing,
                Err(_) => LookResult::Error,
            };
            act.metrics.token_shared_looks.with_label_values(&[result.as_str()]).inc();
            if result != LookResult::Adopted {
                act.schedule_look(ctx);
            }
        }));
    }
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
