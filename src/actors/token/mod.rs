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
//! endpoint fails, refreshes back off and waiting requests get [`TokenUnavailable`] with a
//! `Retry-After`, instead of each trying the endpoint itself: a down endpoint is asked again
//! about once a second, so its recovery is noticed quickly; refused credentials back off
//! exponentially (see [`lifecycle`]). The reason is published in the cell for `/readyz`.
//!
//! With Redis ([`TokenManager::with_shared`]) the replicas share one token: a refresh first
//! looks for a token another replica published, and only one replica at a time asks the
//! endpoint (see `refresh.rs`, [`adopt`] and [`crate::shared::token`]). N replicas then cost one token
//! request per lifetime and per revocation. Every replica keeps its own refresh timer; the
//! first to fire asks, the others find its token when theirs fire. When Redis fails, each
//! replica asks on its own, as without Redis: requests keep being served. While its own
//! refresh backs off for longer than a second, a replica still looks in Redis about once a
//! second ([`adopt::SHARED_LOOK_INTERVAL`]) and adopts a token another replica got
//! meanwhile, rather than answering 503 until its own timer fires.

pub mod adopt;
mod cell;
mod get;
pub mod lifecycle;
mod refresh;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use secrecy::SecretString;
use slog::{info, o, warn, Logger};
use tokio::sync::oneshot;

use adopt::Wanted;
use opentelemetry::trace::{SpanContext, SpanKind};

pub use cell::{Token, TokenCell, TokenHealth, TokenTrouble};
use lifecycle::Lifecycle;
use refresh::{Obtained, Refresh};

use crate::metrics::{Metrics, RefreshResult};
use crate::shared::token::SharedTokens;
use crate::shared::SharedRedis;
use crate::trace::{attrs, Parent, Span, Tracing};
use crate::upstream::{self, Backoff, ClientSettings, TokenError};

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
    /// Whether the last refresh failed for want of a trusted TLS connection (not transient).
    pub tls: bool,
    /// The span of the failed refresh this answer waited on, when traced.
    pub refresh: Option<SpanContext>,
}

/// Asks for a valid token. `rejected` names the generation the upstream just refused with
/// 401: that token is withdrawn and a new one fetched (once, however many ask).
#[derive(Message, Debug)]
#[rtype(result = "Result<Arc<Token>, TokenUnavailable>")]
pub struct GetToken {
    /// The generation the upstream rejected, if that is why a token is asked for.
    pub rejected: Option<u64>,
    /// The asking request's `courier.token` span: a refresh it starts goes under it.
    pub trace: Parent,
}

/// A reload replaced the OAuth client secret. The token held stays in use while it is valid
/// (the upstream issued it; a new secret does not make it wrong); the next token is fetched
/// with the new secret. Without a valid token (the old secret was already refused), a fetch
/// with the new secret starts at once instead of waiting out the failure backoff.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetClientSecret(pub SecretString);

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

/// The token last obtained, as far as choosing its successor goes.
#[derive(Debug, Clone, Copy)]
struct Held {
    generation: u64,
    expires_at_unix_ms: u64,
    rejected: bool,
}

/// The actor.
pub struct TokenManager {
    settings: TokenSettings,
    client: Option<awc::Client>,
    cell: Arc<TokenCell>,
    shared: Option<Arc<SharedTokens>>,
    /// The highest generation seen (obtained or adopted); new ones are counted above it.
    generation: u64,
    held: Option<Held>,
    refreshing: bool,
    /// Whether the last refresh failed on TLS (cleared by a success).
    failed_on_tls: bool,
    /// Bumped by every [`SetClientSecret`]; the refresh in flight started under `refresh_secret`.
    secret_version: u64,
    refresh_secret: u64,
    waiters: Vec<Waiter>,
    lifecycle: Lifecycle,
    timer: Option<SpawnHandle>,
    /// The next look in Redis while backing off, and whether one is out.
    look_timer: Option<SpawnHandle>,
    looking: bool,
    metrics: Arc<Metrics>,
    log: Logger,
    tracing: Tracing,
    /// The span of the refresh in flight, when traced.
    refresh_span: Option<Span>,
}

impl TokenManager {
    /// A TokenManager publishing into `cell`, fetching its own token (see
    /// [`TokenManager::with_shared`] to share one with other replicas).
    pub fn new(settings: TokenSettings, cell: Arc<TokenCell>, metrics: Arc<Metrics>, log: &Logger) -> Self {
        let backoff = Backoff::try_new(Duration::from_millis(250), Duration::from_secs(30), true)
            .expect("constant backoff is valid");
        TokenManager {
            settings,
            client: None,
            cell,
            shared: None,
            generation: 0,
            held: None,
            refreshing: false,
            failed_on_tls: false,
            secret_version: 0,
            refresh_secret: 0,
            waiters: Vec::new(),
            lifecycle: Lifecycle::new(backoff),
            timer: None,
            look_timer: None,
            looking: false,
            metrics,
            log: log.new(o!("actor" => "token_manager")),
            tracing: Tracing::off(),
            refresh_span: None,
        }
    }

    /// Traces refreshes (`courier.token.refresh`) with `tracing`.
    pub fn with_tracing(mut self, tracing: Tracing) -> Self {
        self.tracing = tracing;
        self
    }

    /// Shares the token with other replicas through `shared` (Redis); `None` keeps this
    /// replica on its own token, exactly as [`TokenManager::new`] alone.
    pub fn with_shared(mut self, shared: Option<Arc<SharedRedis>>) -> Self {
        self.shared = shared.map(|redis| Arc::new(SharedTokens::new(redis)));
        self
    }

    fn current_valid(&self, now: Instant) -> Option<Arc<Token>> {
        self.cell.load().filter(|t| t.is_valid_at(now))
    }

    /// Which shared token would do instead of the one held.
    fn wanted(&self) -> Wanted {
        match self.held {
            None => Wanted::Any,
            Some(held) if held.rejected => Wanted::After { rejected: held.generation },
            Some(held) => {
                Wanted::Replacing { generation: held.generation, expires_at_unix_ms: held.expires_at_unix_ms }
            }
        }
    }

    fn refresh(&self) -> Refresh {
        Refresh {
            client: self.client.clone().expect("client built in started()"),
            settings: self.settings.clone(),
            shared: self.shared.clone(),
            wanted: self.wanted(),
            floor: self.generation,
            log: self.log.clone(),
            span: self.refresh_span.as_ref().map(|s| s.span_context().clone()),
        }
    }

    /// Starts a refresh unless one is out; `trace` is the span of the request that caused it
    /// (`Parent::NONE` for the timer's: a refresh of its own then starts a trace when traced).
    fn start_refresh(&mut self, trace: &Parent, ctx: &mut Context<Self>) {
        if self.refreshing {
            return;
        }
        self.refreshing = true;
        self.refresh_span = match trace.is_some() {
            true => self.tracing.child(trace, "courier.token.refresh", SpanKind::Internal),
            false => self.tracing.root("courier.token.refresh", SpanKind::Internal),
        };
        self.refresh_secret = self.secret_version;
        let refresh = self.refresh();
        ctx.spawn(refresh.run().into_actor(self).map(|result, act, ctx| act.finish_refresh(result, ctx)));
    }

    fn finish_refresh(&mut self, result: Result<Obtained, TokenError>, ctx: &mut Context<Self>) {
        self.refreshing = false;
        let now = Instant::now();
        let refresh_span = self.refresh_span.take();
        let refresh = refresh_span.as_ref().map(|s| s.span_context().clone());
        if let Some(mut span) = refresh_span {
            span.set(attrs::TOKEN_RESULT, if result.is_ok() { "fetched" } else { "failed" });
            span.set(attrs::TOKEN_WAITERS, self.waiters.len() as i64);
            if result.is_err() {
                span.fail("token_refresh_failed");
            }
            span.end();
        }
        match result {
            Ok(obtained) => {
                self.lifecycle.on_success();
                self.failed_on_tls = false;
                let (token, expires_at_unix_ms, refresh_at) = match obtained {
                    Obtained::Fetched { token, expires_at_unix_ms, requested_at, shared } => {
                        let lifetime = token.expires_at.saturating_duration_since(requested_at);
                        self.metrics.token_refreshes.with_label_values(&[RefreshResult::Success.as_str()]).inc();
                        info!(self.log, "token_refreshed";
                            "generation" => token.generation, "expires_in" => lifetime.as_secs_f64(), "shared" => shared);
                        (token, expires_at_unix_ms, lifecycle::refresh_at(requested_at, lifetime))
                    }
                    Obtained::Adopted { token, expires_at_unix_ms } => {
                        let remaining = token.expires_at.saturating_duration_since(now);
                        self.metrics.token_shared_uses.inc();
                        info!(self.log, "token_adopted";
                            "generation" => token.generation, "expires_in" => remaining.as_secs_f64());
                        (token, expires_at_unix_ms, lifecycle::refresh_at(now, remaining))
                    }
                };
                self.generation = self.generation.max(token.generation);
                self.held = Some(Held { generation: token.generation, expires_at_unix_ms, rejected: false });
                self.cell.publish(token.clone());
                self.metrics.token_expiry.set(expires_at_unix_ms as f64 / 1000.0);
                if let Some(look) = self.look_timer.take() {
                    ctx.cancel_future(look);
                }
                for waiter in self.waiters.drain(..) {
                    let _ = waiter.send(Ok(token.clone()));
                }
                self.schedule_refresh(refresh_at.saturating_duration_since(now), ctx);
            }
            Err(error) => {
                let result = match error {
                    TokenError::Rejected(_) => RefreshResult::Rejected,
                    _ => RefreshResult::Failure,
                };
                self.metrics.token_refreshes.with_label_values(&[result.as_str()]).inc();
                if self.refresh_secret != self.secret_version {
                    // The secret was replaced while this refresh was out: the waiters wait
                    // for a fetch with the new one, which starts now.
                    warn!(self.log, "token_refresh_failed"; "error" => %error, "retry_in" => 0.0);
                    self.start_refresh(&Parent::NONE, ctx);
                    return;
                }
                let wait = if error.is_outage() {
                    self.lifecycle.on_outage(now, rand::random::<f64>())
                } else {
                    self.lifecycle.on_failure(now)
                };
                warn!(self.log, "token_refresh_failed";
                    "error" => %error, "retry_in" => wait.as_secs_f64());
                self.cell.report_trouble(TokenTrouble { reason: error.to_string(), retry_at: Some(now + wait) });
                self.failed_on_tls = matches!(error, TokenError::Tls(_));
                let unavailable =
                    TokenUnavailable { retry_after: wait, reason: error.to_string(), tls: self.failed_on_tls, refresh };
                for waiter in self.waiters.drain(..) {
                    let _ = waiter.send(Err(unavailable.clone()));
                }
                self.schedule_refresh(wait, ctx);
                self.schedule_look(ctx);
            }
        }
    }

    fn schedule_refresh(&mut self, after: Duration, ctx: &mut Context<Self>) {
        if let Some(previous) = self.timer.take() {
            ctx.cancel_future(previous);
        }
        self.timer = Some(ctx.run_later(after, |act, ctx| {
            act.timer = None;
            act.start_refresh(&Parent::NONE, ctx);
        }));
    }
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
        self.start_refresh(&Parent::NONE, ctx);
    }
}

impl Handler<SetClientSecret> for TokenManager {
    type Result = ();

    fn handle(&mut self, msg: SetClientSecret, ctx: &mut Context<Self>) {
        self.settings.client_secret = msg.0;
        self.secret_version += 1;
        let has_valid = self.current_valid(Instant::now()).is_some();
        info!(self.log, "client_secret_replaced";
            "token_kept" => has_valid, "refreshing" => self.refreshing, "next_fetch" => "uses the new secret");
        if !has_valid && !self.refreshing {
            self.lifecycle.on_success();
            self.start_refresh(&Parent::NONE, ctx);
        }
    }
}
