//! The TokenManager actor owns the upstream access token: its value, expiry and generation,
//! and the one refresh in flight.
//!
//! It is an actor because the token is mutable state that must change in exactly one place:
//! however many requests find the token missing, expired or rejected at the same moment,
//! they all wait on the same refresh, so the token endpoint sees one request. Each new token
//! is published in a [`TokenCell`] that workers read without a message; only a request that
//! finds no valid token there sends [`GetToken`].
//!
//! Refreshes start shortly before expiry (see [`lifecycle::refresh_at`]). When the token
//! endpoint fails, refreshes back off exponentially and waiting requests get
//! [`TokenUnavailable`] with a `Retry-After`, instead of each trying the endpoint itself.

mod cell;
pub mod lifecycle;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use actix_web::http::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use slog::{info, o, warn, Logger};
use tokio::sync::oneshot;

pub use cell::{Token, TokenCell};
use lifecycle::Lifecycle;

use crate::metrics::{Metrics, RefreshResult};
use crate::upstream::{self, Backoff, ClientSettings, FetchedToken, TokenError};

/// Most requests that may wait for one refresh; more get `TokenUnavailable` at once.
const MAX_WAITERS: usize = 100_000;

/// Why no token can be handed out now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("upstream token unavailable: {reason}")]
pub struct TokenUnavailable {
    /// When asking again makes sense.
    pub retry_after: Duration,
    /// What went wrong, without secrets.
    pub reason: String,
}

/// Asks for a valid token. `rejected` names the generation the upstream just refused with
/// 401: that token is withdrawn and a new one fetched (once, however many ask).
#[derive(Message, Debug)]
#[rtype(result = "Result<Arc<Token>, TokenUnavailable>")]
pub struct GetToken {
    /// The generation the upstream rejected, if that is why a token is asked for.
    pub rejected: Option<u64>,
}

/// What the TokenManager needs to reach the token endpoint.
#[derive(Clone)]
pub struct TokenSettings {
    /// The token endpoint.
    pub url: String,
    /// OAuth2 client id.
    pub client_id: String,
    /// OAuth2 client secret.
    pub client_secret: SecretString,
    /// Bound of one token request.
    pub timeout: Duration,
    /// TLS configuration for https endpoints.
    pub tls: Arc<rustls::ClientConfig>,
}

type Waiter = oneshot::Sender<Result<Arc<Token>, TokenUnavailable>>;

/// The actor.
pub struct TokenManager {
    settings: TokenSettings,
    client: Option<awc::Client>,
    cell: Arc<TokenCell>,
    generation: u64,
    refreshing: bool,
    waiters: Vec<Waiter>,
    lifecycle: Lifecycle,
    timer: Option<SpawnHandle>,
    metrics: Arc<Metrics>,
    log: Logger,
}

impl TokenManager {
    /// A TokenManager publishing into `cell`.
    pub fn new(settings: TokenSettings, cell: Arc<TokenCell>, metrics: Arc<Metrics>, log: &Logger) -> Self {
        let backoff = Backoff::try_new(Duration::from_millis(250), Duration::from_secs(30), true)
            .expect("constant backoff is valid");
        TokenManager {
            settings,
            client: None,
            cell,
            generation: 0,
            refreshing: false,
            waiters: Vec::new(),
            lifecycle: Lifecycle::new(backoff),
            timer: None,
            metrics,
            log: log.new(o!("actor" => "token_manager")),
        }
    }

    fn current_valid(&self, now: Instant) -> Option<Arc<Token>> {
        self.cell.load().filter(|t| t.is_valid_at(now))
    }

    fn start_refresh(&mut self, ctx: &mut Context<Self>) {
        if self.refreshing {
            return;
        }
        self.refreshing = true;
        let client = self.client.clone().expect("client built in started()");
        let settings = self.settings.clone();
        let requested_at = Instant::now();
        let fetch = async move {
            upstream::fetch_token(
                &client,
                &settings.url,
                &settings.client_id,
                &settings.client_secret,
                settings.timeout,
            )
            .await
        };
        ctx.spawn(fetch.into_actor(self).map(move |result, act, ctx| act.finish_refresh(result, requested_at, ctx)));
    }

    fn finish_refresh(
        &mut self,
        result: Result<FetchedToken, TokenError>,
        requested_at: Instant,
        ctx: &mut Context<Self>,
    ) {
        self.refreshing = false;
        let now = Instant::now();
        let outcome = result.and_then(|fetched| self.make_token(fetched, requested_at));
        match outcome {
            Ok(token) => {
                self.lifecycle.on_success();
                let lifetime = token.expires_at.saturating_duration_since(requested_at);
                self.cell.publish(token.clone());
                self.metrics.token_refreshes.with_label_values(&[RefreshResult::Success.as_str()]).inc();
                self.metrics.token_expiry.set(unix_seconds_in(lifetime));
                self.metrics.ready.set(1);
                info!(self.log, "token_refreshed";
                    "generation" => token.generation, "expires_in" => lifetime.as_secs_f64());
                for waiter in self.waiters.drain(..) {
                    let _ = waiter.send(Ok(token.clone()));
                }
                let refresh_in = lifecycle::refresh_at(requested_at, lifetime).saturating_duration_since(now);
                self.schedule_refresh(refresh_in, ctx);
            }
            Err(error) => {
                let wait = self.lifecycle.on_failure(now);
                let result = match error {
                    TokenError::Rejected(_) => RefreshResult::Rejected,
                    _ => RefreshResult::Failure,
                };
                self.metrics.token_refreshes.with_label_values(&[result.as_str()]).inc();
                warn!(self.log, "token_refresh_failed";
                    "error" => %error, "retry_in" => wait.as_secs_f64());
                let unavailable = TokenUnavailable { retry_after: wait, reason: error.to_string() };
                for waiter in self.waiters.drain(..) {
                    let _ = waiter.send(Err(unavailable.clone()));
                }
                self.schedule_refresh(wait, ctx);
            }
        }
    }

    fn make_token(&mut self, fetched: FetchedToken, requested_at: Instant) -> Result<Arc<Token>, TokenError> {
        let header = format!("Bearer {}", fetched.access_token.expose_secret());
        let mut authorization = HeaderValue::from_str(&header)
            .map_err(|_| TokenError::Invalid("token has characters not allowed in a header"))?;
        authorization.set_sensitive(true);
        self.generation += 1;
        Ok(Arc::new(Token { generation: self.generation, expires_at: requested_at + fetched.lifetime, authorization }))
    }

    fn schedule_refresh(&mut self, after: Duration, ctx: &mut Context<Self>) {
        if let Some(previous) = self.timer.take() {
            ctx.cancel_future(previous);
        }
        self.timer = Some(ctx.run_later(after, |act, ctx| {
            act.timer = None;
            act.start_refresh(ctx);
        }));
    }
}

fn unix_seconds_in(lifetime: Duration) -> f64 {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    (now + lifetime).as_secs_f64()
}

impl Actor for TokenManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
        self.client = Some(upstream::build_client(
            self.settings.tls.clone(),
            &ClientSettings { pool_limit: 4, ..ClientSettings::default() },
        ));
        // Fetch eagerly, so the gateway is ready before the first request needs a token.
        self.start_refresh(ctx);
    }
}

impl Handler<GetToken> for TokenManager {
    type Result = ResponseFuture<Result<Arc<Token>, TokenUnavailable>>;

    fn handle(&mut self, msg: GetToken, ctx: &mut Context<Self>) -> Self::Result {
        let now = Instant::now();
        if let Some(rejected) = msg.rejected {
            let current = self.cell.load().map(|t| t.generation);
            if current == Some(rejected) {
                self.cell.withdraw();
                info!(self.log, "token_rejected"; "generation" => rejected);
                if self.lifecycle.on_rejected(now) {
                    self.start_refresh(ctx);
                } else if let Some(wait) = self.lifecycle.blocked_for(now) {
                    self.schedule_refresh(wait, ctx);
                }
            }
        }
        if let Some(token) = self.current_valid(now) {
            return Box::pin(async move { Ok(token) });
        }
        if !self.refreshing {
            if let Some(wait) = self.lifecycle.blocked_for(now) {
                let unavailable = TokenUnavailable { retry_after: wait, reason: "token endpoint backing off".into() };
                return Box::pin(async move { Err(unavailable) });
            }
        }
        if self.waiters.len() >= MAX_WAITERS {
            let unavailable =
                TokenUnavailable { retry_after: Duration::from_secs(1), reason: "too many waiting".into() };
            return Box::pin(async move { Err(unavailable) });
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.push(tx);
        self.start_refresh(ctx);
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                Err(TokenUnavailable { retry_after: Duration::from_secs(1), reason: "token manager stopped".into() })
            })
        })
    }
}
