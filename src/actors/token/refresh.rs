//! One refresh: where the next token comes from. Runs as the TokenManager's single refresh
//! future, so inside one replica it never runs twice at once.
//!
//! Alone (no Redis configured) it asks the token endpoint. Shared, it first reads the token
//! other replicas published and adopts it when it will do ([`Wanted`]). Otherwise it takes
//! the refresh lock, reads once more (another replica may have published between the read
//! and the lock), asks the endpoint, and publishes the token under a new shared generation.
//! When another replica holds the lock, it polls for that replica's token instead of asking
//! too, for at most the lock's lifetime, then takes the lock itself (or, if the lock never
//! frees, asks alone). So N replicas cost one token request per lifetime or revocation.
//!
//! When Redis fails at any step before the token request, the replica asks alone; after it,
//! the token is used anyway (Redis only loses the chance to share it). Generations counted
//! alone stay above every generation seen, so they never go backwards.

use opentelemetry::trace::SpanContext;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::http::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use slog::{warn, Logger};

use super::adopt::Wanted;
use super::{Token, TokenSettings};
use crate::shared::token::{unix_ms_now, RefreshLock, SharedToken, SharedTokens};
use crate::shared::Degraded;
use crate::upstream::{self, FetchedToken, TokenError};

/// How soon a replica waiting for another one's token first looks for it; the wait doubles
/// up to [`POLL_MAX`]. Starting short matters for short-lived tokens: the waiting replica's
/// own token may have only its refresh margin left.
const POLL_FIRST: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_millis(50);
/// How much longer than one token request the refresh lock lives.
const LOCK_SLACK: Duration = Duration::from_secs(1);

/// Where a refreshed token came from.
pub enum Obtained {
    /// This replica asked the token endpoint.
    Fetched {
        /// The token, ready to send.
        token: Arc<Token>,
        /// Its expiry in Unix milliseconds.
        expires_at_unix_ms: u64,
        /// When it was asked for (its lifetime counts from here).
        requested_at: Instant,
        /// Whether its generation is the shared one (false: counted alone, Redis unusable).
        shared: bool,
    },
    /// Another replica's token, read from Redis.
    Adopted {
        /// The token, ready to send.
        token: Arc<Token>,
        /// Its expiry in Unix milliseconds.
        expires_at_unix_ms: u64,
    },
}

/// Everything one refresh needs, owned so the future outlives the actor's borrow.
pub struct Refresh {
    /// The client for the token endpoint.
    pub client: awc::Client,
    /// The token endpoint and credentials.
    pub settings: TokenSettings,
    /// The shared token, when replicas share one.
    pub shared: Option<Arc<SharedTokens>>,
    /// Which shared token will do.
    pub wanted: Wanted,
    /// The highest generation this replica has seen; new ones are above it.
    pub floor: u64,
    /// The TokenManager's logger.
    pub log: Logger,
    /// This refresh's span, when traced (the tokens it obtains name it).
    pub span: Option<SpanContext>,
}

/// Why a shared refresh gave up on sharing.
enum Alone {
    /// Redis failed (already logged and counted by [`crate::shared::SharedRedis`]).
    Degraded,
    /// Another replica held the lock for its whole lifetime without publishing.
    LockNotReleased,
}

impl From<Degraded> for Alone {
    fn from(_: Degraded) -> Alone {
        Alone::Degraded
    }
}

impl Refresh {
    /// Obtains the next token.
    pub async fn run(self) -> Result<Obtained, TokenError> {
        let Some(shared) = self.shared.clone() else { return self.fetch_alone().await };
        match self.shared_refresh(&shared).await {
            Ok(obtained) => obtained,
            Err(Alone::Degraded) => self.fetch_alone().await,
            Err(Alone::LockNotReleased) => {
                warn!(self.log, "token_lock_wait_timed_out"; "waited" => self.lock_ttl().as_secs_f64());
                self.fetch_alone().await
            }
        }
    }

    /// Only looks for a usable token another replica published: no lock, no token request.
    /// `Ok(None)` when there is none (or replicas share nothing).
    pub async fn look(self) -> Result<Option<Obtained>, Degraded> {
        let Some(shared) = &self.shared else { return Ok(None) };
        Ok(self.adoptable(shared.read().await?))
    }

    fn lock_ttl(&self) -> Duration {
        self.settings.timeout + LOCK_SLACK
    }

    async fn shared_refresh(&self, shared: &SharedTokens) -> Result<Result<Obtained, TokenError>, Alone> {
        if let Some(adopted) = self.adoptable(shared.read().await?) {
            return Ok(Ok(adopted));
        }
        let deadline = Instant::now() + self.lock_ttl();
        let mut poll = POLL_FIRST;
        loop {
            if let Some(lock) = shared.try_lock(self.lock_ttl()).await? {
                return Ok(self.refresh_holding(shared, lock).await);
            }
            if Instant::now() >= deadline {
                return Err(Alone::LockNotReleased);
            }
            actix_rt::time::sleep(poll).await;
            poll = (poll * 2).min(POLL_MAX);
            if let Some(adopted) = self.adoptable(shared.read().await?) {
                return Ok(Ok(adopted));
            }
        }
    }

    /// Holding the lock: asks the endpoint unless a usable token appeared meanwhile, then
    /// publishes. Once the request is made, Redis failures no longer matter to the caller.
    async fn refresh_holding(&self, shared: &SharedTokens, lock: RefreshLock) -> Result<Obtained, TokenError> {
        if let Ok(Some(adopted)) = shared.read().await.map(|doc| self.adoptable(doc)) {
            let _ = shared.release(lock).await;
            return Ok(adopted);
        }
        let result = self.fetch_and_publish(shared).await;
        // When Redis is unusable now, the lock expires by itself.
        let _ = shared.release(lock).await;
        result
    }

    async fn fetch_and_publish(&self, shared: &SharedTokens) -> Result<Obtained, TokenError> {
        let (fetched, requested_at, requested_unix) = self.fetch().await?;
        let authorization = authorization(&fetched.access_token)?;
        let (generation, is_shared) = match shared.next_generation(self.floor).await {
            Ok(generation) => (generation, true),
            Err(_) => (self.floor + 1, false),
        };
        let expires_at_unix_ms = unix_ms(requested_unix + fetched.lifetime);
        if is_shared {
            let doc = SharedToken { access_token: fetched.access_token, expires_at_unix_ms, generation };
            // Not written (Redis failed, or a newer generation is there): the others fetch or
            // adopt the newer one; this token is still good here.
            let _ = shared.publish(&doc).await;
        }
        let token = Arc::new(Token {
            generation,
            expires_at: requested_at + fetched.lifetime,
            authorization,
            refresh: self.span.clone(),
        });
        Ok(Obtained::Fetched { token, expires_at_unix_ms, requested_at, shared: is_shared })
    }

    async fn fetch_alone(&self) -> Result<Obtained, TokenError> {
        let (fetched, requested_at, requested_unix) = self.fetch().await?;
        let authorization = authorization(&fetched.access_token)?;
        let token = Arc::new(Token {
            generation: self.floor + 1,
            expires_at: requested_at + fetched.lifetime,
            authorization,
            refresh: self.span.clone(),
        });
        let expires_at_unix_ms = unix_ms(requested_unix + fetched.lifetime);
        Ok(Obtained::Fetched { token, expires_at_unix_ms, requested_at, shared: false })
    }

    /// One token request, with the moments it was made (monotonic and wall clock).
    async fn fetch(&self) -> Result<(FetchedToken, Instant, SystemTime), TokenError> {
        let (requested_at, requested_unix) = (Instant::now(), SystemTime::now());
        let settings = &self.settings;
        let fetched = upstream::fetch_token(
            &self.client,
            &settings.url,
            &settings.client_id,
            &settings.client_secret,
            settings.timeout,
        )
        .await?;
        Ok((fetched, requested_at, requested_unix))
    }

    /// The shared token as this replica's, when it will do.
    fn adoptable(&self, doc: Option<SharedToken>) -> Option<Obtained> {
        let doc = doc.filter(|doc| self.wanted.accepts(doc, unix_ms_now()))?;
        let authorization = authorization(&doc.access_token).ok()?;
        let expires = UNIX_EPOCH + Duration::from_millis(doc.expires_at_unix_ms);
        let remaining = expires.duration_since(SystemTime::now()).ok()?;
        let token = Arc::new(Token {
            generation: doc.generation,
            expires_at: Instant::now() + remaining,
            authorization,
            refresh: self.span.clone(),
        });
        Some(Obtained::Adopted { token, expires_at_unix_ms: doc.expires_at_unix_ms })
    }
}

/// `Bearer <token>`, marked sensitive so it is never printed.
fn authorization(access_token: &SecretString) -> Result<HeaderValue, TokenError> {
    let header = format!("Bearer {}", access_token.expose_secret());
    let mut value = HeaderValue::from_str(&header)
        .map_err(|_| TokenError::Invalid("token has characters not allowed in a header"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// Unix milliseconds of `at`, rounded down (so a shared expiry is never later than the real one).
fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
