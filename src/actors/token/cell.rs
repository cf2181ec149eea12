//! The published token: written only by the TokenManager, read lock-free by every worker.

use opentelemetry::trace::SpanContext;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix_web::http::header::HeaderValue;
use arc_swap::ArcSwapOption;

/// An upstream access token, ready to send.
pub struct Token {
    /// Increases by one with every token obtained; a 401 names the generation it rejected.
    pub generation: u64,
    /// When the token stops being valid (measured from when it was requested).
    pub expires_at: Instant,
    /// `Bearer <token>`, marked sensitive so it is never printed.
    pub authorization: HeaderValue,
    /// The span of the refresh that obtained it, when traced: requests that waited for it link
    /// to that span.
    pub refresh: Option<SpanContext>,
}

impl Token {
    /// Whether the token may still be sent at `now`.
    pub fn is_valid_at(&self, now: Instant) -> bool {
        now < self.expires_at
    }

    /// A copy whose header bytes are owned by the calling thread, so cloning the header per
    /// request touches no reference count that other threads also touch.
    pub fn local_copy(&self) -> Token {
        let mut authorization =
            HeaderValue::from_bytes(self.authorization.as_bytes()).expect("a valid header stays valid");
        authorization.set_sensitive(true);
        Token { generation: self.generation, expires_at: self.expires_at, authorization, refresh: self.refresh.clone() }
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("generation", &self.generation)
            .field("expires_at", &self.expires_at)
            .field("authorization", &"[REDACTED]")
            .finish()
    }
}

/// Why no usable token is held, as `/readyz` and `/admin/state` tell it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenTrouble {
    /// What went wrong last, without secrets (e.g. "token endpoint answered status 503").
    pub reason: String,
    /// When the next token request is due, if one is scheduled.
    pub retry_at: Option<Instant>,
}

/// Whether requests can have a token now, as `/readyz` checks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenHealth {
    /// A token is held and has not expired.
    Ok,
    /// No token was ever obtained.
    Missing,
    /// Tokens were obtained before, but the current one was rejected or has expired and no
    /// new one could be had yet.
    Unavailable,
}

impl TokenHealth {
    /// The `/readyz` check value (`ok`, `missing`, `unavailable`).
    pub fn as_str(self) -> &'static str {
        match self {
            TokenHealth::Ok => "ok",
            TokenHealth::Missing => "missing",
            TokenHealth::Unavailable => "unavailable",
        }
    }
}

/// The current token, published for lock-free reads.
#[derive(Default)]
pub struct TokenCell {
    current: ArcSwapOption<Token>,
    /// Bumped on every change of `current`, so readers notice changes with one atomic load.
    version: AtomicU64,
    ready: AtomicBool,
    /// Why the last attempt to get a token failed, until one succeeds.
    trouble: ArcSwapOption<TokenTrouble>,
}

impl TokenCell {
    /// Publishes a new token (and forgets any trouble).
    pub fn publish(&self, token: Arc<Token>) {
        self.current.store(Some(token));
        self.version.fetch_add(1, Ordering::Release);
        self.ready.store(true, Ordering::Release);
        self.trouble.store(None);
    }

    /// Withdraws the current token (it was rejected).
    pub fn withdraw(&self) {
        self.current.store(None);
        self.version.fetch_add(1, Ordering::Release);
    }

    /// Records why no new token could be had (kept until one is published).
    pub fn report_trouble(&self, trouble: TokenTrouble) {
        self.trouble.store(Some(Arc::new(trouble)));
    }

    /// Why the last attempt to get a token failed, unless one succeeded since.
    pub fn trouble(&self) -> Option<Arc<TokenTrouble>> {
        self.trouble.load_full()
    }

    /// Whether requests can have a token at `now`.
    pub fn health(&self, now: Instant) -> TokenHealth {
        match self.load() {
            Some(token) if token.is_valid_at(now) => TokenHealth::Ok,
            _ if self.is_ready() => TokenHealth::Unavailable,
            _ => TokenHealth::Missing,
        }
    }

    /// The version of what is published; it changes whenever the token does.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The published token, if any.
    pub fn load(&self) -> Option<Arc<Token>> {
        self.current.load_full()
    }

    /// Whether a token has ever been obtained (see [`TokenCell::health`] for whether one is
    /// usable now).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn token(generation: u64, expires_at: Instant) -> Arc<Token> {
        Arc::new(Token { generation, expires_at, authorization: HeaderValue::from_static("Bearer t"), refresh: None })
    }

    #[test]
    fn health_tells_a_usable_token_from_a_lost_one() {
        let cell = TokenCell::default();
        let now = Instant::now();
        assert_eq!(cell.health(now), TokenHealth::Missing);
        cell.publish(token(1, now + Duration::from_secs(60)));
        assert_eq!(cell.health(now), TokenHealth::Ok);
        assert_eq!(cell.health(now + Duration::from_secs(60)), TokenHealth::Unavailable, "expired");
        cell.withdraw();
        assert_eq!(cell.health(now), TokenHealth::Unavailable, "rejected");
        cell.report_trouble(TokenTrouble { reason: "token endpoint answered status 503".into(), retry_at: None });
        assert!(cell.trouble().is_some());
        cell.publish(token(2, now + Duration::from_secs(60)));
        assert_eq!((cell.health(now), cell.trouble()), (TokenHealth::Ok, None));
    }
}
