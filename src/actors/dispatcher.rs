//! The Dispatcher actor: one per actix-web worker, on that worker's thread, owning the
//! worker's pooled awc client and its local copy of the upstream token.
//!
//! Why one per worker: a message to an actor on the same thread is nearly free, while a hop
//! to another thread costs a wake-up per request. Why an actor at all: the awc client and the
//! token copy are per-thread state with one owner. Each [`Dispatch`] is answered with a
//! future, so a slow upstream call never holds up the mailbox; the future runs the attempt
//! loop ([`super::retry`]) on this thread.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::http::header::HeaderValue;
use actix_web::http::Uri;
use bytes::Bytes;
use prometheus::IntCounter;
use slog::{o, Logger};

use super::retry::{self, Dispatched, RetryPolicy};
use super::token::{GetToken, Token, TokenCell, TokenManager, TokenUnavailable};
use crate::metrics::Metrics;
use crate::request_id::RequestId;
use crate::upstream::{self, Outcome};

/// Send one request upstream, with retries, before `deadline`.
#[derive(Message)]
#[rtype(result = "Dispatched")]
pub struct Dispatch {
    /// The request's id, sent upstream as `X-Request-Id`.
    pub request_id: RequestId,
    /// The upstream JSON body (`{"data": .., "options": ..}`).
    pub body: Bytes,
    /// When the client stops waiting.
    pub deadline: Instant,
}

/// Everything a Dispatcher is built from; shared by all workers.
#[derive(Clone)]
pub struct DispatcherSettings {
    /// The upstream's `/process` URI.
    pub process_uri: Uri,
    /// `X-API-Key` value, marked sensitive.
    pub api_key: HeaderValue,
    /// Retry and timeout policy.
    pub policy: RetryPolicy,
    /// TLS configuration.
    pub tls: Arc<rustls::ClientConfig>,
    /// Where the TokenManager publishes tokens.
    pub token_cell: Arc<TokenCell>,
    /// The TokenManager.
    pub token_manager: Addr<TokenManager>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Parent logger.
    pub log: Logger,
}

/// The per-worker state the attempt loop runs with.
pub struct Upstream {
    pub(super) client: awc::Client,
    pub(super) process_uri: Uri,
    pub(super) api_key: HeaderValue,
    pub(super) policy: RetryPolicy,
    token_cell: Arc<TokenCell>,
    token_manager: Addr<TokenManager>,
    local_token: RefCell<(u64, Option<Token>)>,
    attempt_counters: Vec<IntCounter>,
    retry_counters: Vec<IntCounter>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) log: Logger,
}

impl Upstream {
    fn new(settings: DispatcherSettings) -> Upstream {
        let counters = |vec: &prometheus::IntCounterVec| {
            Outcome::ALL
                .iter()
                .map(|o| vec.with_label_values(&[o.as_str()]))
                .collect()
        };
        let local_api_key = {
            let mut key = HeaderValue::from_bytes(settings.api_key.as_bytes())
                .expect("valid header stays valid");
            key.set_sensitive(true);
            key
        };
        Upstream {
            client: upstream::build_client(
                settings.tls.clone(),
                &upstream::ClientSettings::default(),
            ),
            process_uri: settings
                .process_uri
                .to_string()
                .parse()
                .expect("a valid URI stays valid"),
            api_key: local_api_key,
            policy: settings.policy,
            token_cell: settings.token_cell,
            token_manager: settings.token_manager,
            local_token: RefCell::new((u64::MAX, None)),
            attempt_counters: counters(&settings.metrics.upstream_attempts),
            retry_counters: counters(&settings.metrics.upstream_retries),
            metrics: settings.metrics,
            log: settings.log.new(o!("actor" => "dispatcher")),
        }
    }

    /// A valid token: this thread's copy when current, else from the TokenManager. With
    /// `rejected`, the upstream refused that generation and a new token is needed.
    pub(super) async fn token(
        &self,
        rejected: Option<u64>,
    ) -> Result<(HeaderValue, u64), TokenUnavailable> {
        if rejected.is_none() {
            if let Some(found) = self.local_token(Instant::now()) {
                return Ok(found);
            }
        }
        let token = self
            .token_manager
            .send(GetToken { rejected })
            .await
            .map_err(|_| TokenUnavailable {
                retry_after: Duration::from_secs(1),
                reason: "token manager busy".into(),
            })??;
        Ok((token.authorization.clone(), token.generation))
    }

    fn local_token(&self, now: Instant) -> Option<(HeaderValue, u64)> {
        let mut local = self.local_token.borrow_mut();
        let version = self.token_cell.version();
        if local.0 != version {
            *local = (version, self.token_cell.load().map(|t| t.local_copy()));
        }
        local
            .1
            .as_ref()
            .filter(|t| t.is_valid_at(now))
            .map(|t| (t.authorization.clone(), t.generation))
    }

    pub(super) fn count_attempt(&self, outcome: Outcome) {
        self.attempt_counters[outcome as usize].inc();
    }

    pub(super) fn count_retry(&self, reason: Outcome) {
        self.retry_counters[reason as usize].inc();
    }
}

/// The actor.
pub struct Dispatcher {
    upstream: Rc<Upstream>,
}

impl Dispatcher {
    /// Starts a Dispatcher on the current thread (call from the worker's app factory).
    pub fn start_here(settings: DispatcherSettings) -> Addr<Dispatcher> {
        Dispatcher {
            upstream: Rc::new(Upstream::new(settings)),
        }
        .start()
    }
}

impl Actor for Dispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Messages come only from handlers on this thread, each answered at once with a
        // future; the mailbox is a hand-off, not a queue, so a generous bound is safe.
        ctx.set_mailbox_capacity(65_536);
    }
}

impl Handler<Dispatch> for Dispatcher {
    type Result = ResponseFuture<Dispatched>;

    fn handle(&mut self, msg: Dispatch, _ctx: &mut Context<Self>) -> Self::Result {
        Box::pin(retry::run(self.upstream.clone(), msg))
    }
}
