//! The published token: written only by the TokenManager, read lock-free by every worker.

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
        Token { generation: self.generation, expires_at: self.expires_at, authorization }
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

/// The current token, published for lock-free reads.
#[derive(Default)]
pub struct TokenCell {
    current: ArcSwapOption<Token>,
    /// Bumped on every change of `current`, so readers notice changes with one atomic load.
    version: AtomicU64,
    ready: AtomicBool,
}

impl TokenCell {
    /// Publishes a new token.
    pub fn publish(&self, token: Arc<Token>) {
        self.current.store(Some(token));
        self.version.fetch_add(1, Ordering::Release);
        self.ready.store(true, Ordering::Release);
    }

    /// Withdraws the current token (it was rejected).
    pub fn withdraw(&self) {
        self.current.store(None);
        self.version.fetch_add(1, Ordering::Release);
    }

    /// The version of what is published; it changes whenever the token does.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The published token, if any.
    pub fn load(&self) -> Option<Arc<Token>> {
        self.current.load_full()
    }

    /// Whether a token has ever been obtained (readiness).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}
