//! The Dispatcher actor: one per actix-web worker, on that worker's thread, owning the
//! worker's pooled awc client and its local copy of the upstream token.
//!
//! Why one per worker: a message to an actor on the same thread is nearly free, while a hop
//! to another thread costs a wake-up per request. Why an actor at all: the awc client and the
//! token copy are per-thread state with one owner. Each [`Dispatch`] is answered with a
//! future, so a slow upstream call never holds up the mailbox; the future runs the attempt
//! loop ([`super::retry`]) on this thread.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::http::header::HeaderValue;
use actix_web::http::Uri;
use bytes::Bytes;
use prometheus::IntCounter;
use slog::{o, Logger};

use super::budget::{BudgetHandle, Class};
use super::retry::{self, Dispatched, RetryPolicy};
use super::retry_budget::RetryBudget;
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
    /// The client (index in the clients file; 0 in open mode), for fair sharing.
    pub client: usize,
    /// Sync requests go before async jobs when the budget is short.
    pub class: Class,
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
    /// The upstream rate budget.
    pub budget: BudgetHandle,
    /// Retry budget: fraction of first attempts, and floor per second for this worker.
    pub retry_budget: (f64, f64),
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
    pub(super) budget: BudgetHandle,
    retry_budget: RefCell<RetryBudget>,
    latency: Cell<Duration>,
    retry_refusals: IntCounter,
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
            Outcome::ALL.iter().map(|o| vec.with_label_values(&[o.as_str()])).collect()
        };
        let local_api_key = {
            let mut key = HeaderValue::from_bytes(settings.api_key.as_bytes()).expect("valid header stays valid");
            key.set_sensitive(true);
            key
        };
        Upstream {
            client: upstream::build_client(settings.tls.clone(), &upstream::ClientSettings::default()),
            process_uri: settings.process_uri.to_string().parse().expect("a valid URI stays valid"),
            api_key: local_api_key,
            policy: settings.policy,
            budget: settings.budget,
            retry_budget: RefCell::new(RetryBudget::new(settings.retry_budget.0, settings.retry_budget.1)),
            latency: Cell::new(Duration::ZERO),
            retry_refusals: settings.metrics.retry_budget_refusals.clone(),
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
    pub(super) async fn token(&self, rejected: Option<u64>) -> Result<(HeaderValue, u64), TokenUnavailable> {
        if rejected.is_none() {
            if let Some(found) = self.local_token(Instant::now()) {
                return Ok(found);
            }
        }
        let token = self.token_manager.send(GetToken { rejected }).await.map_err(|_| TokenUnavailable {
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
        local.1.as_ref().filter(|t| t.is_valid_at(now)).map(|t| (t.authorization.clone(), t.generation))
    }

    /// A first attempt was made (a deposit in the retry budget).
    pub(super) fn record_first_attempt(&self, now: Instant) {
        self.retry_budget.borrow_mut().record_first(now);
    }

    /// Takes a retry from this worker's retry budget; counts a refusal.
    pub(super) fn try_retry(&self, now: Instant) -> bool {
        let granted = self.retry_budget.borrow_mut().try_retry(now);
        if !granted {
            self.retry_refusals.inc();
        }
        granted
    }

    /// The typical duration of an answered attempt (moving average), to judge whether a
    /// retry can still finish before the deadline.
    pub(super) fn expected_attempt(&self) -> Duration {
        self.latency.get()
    }

    /// Time to keep free before the deadline when waiting for a budget permit: what an
    /// attempt usually takes, and never less than 20 ms.
    pub(super) fn attempt_reserve(&self) -> Duration {
        (self.latency.get() * 2).max(Duration::from_millis(20))
    }

    /// Updates the moving average with an answered attempt's duration.
    pub(super) fn observe_latency(&self, took: Duration) {
        let previous = self.latency.get();
        let next = if previous.is_zero() { took } else { previous.mul_f64(0.8) + took.mul_f64(0.2) };
        self.latency.set(next);
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
        Dispatcher { upstream: Rc::new(Upstream::new(settings)) }.start()
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
