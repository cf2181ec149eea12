//! The Dispatcher: one per actix-web worker, on that worker's thread, owning the worker's
//! pooled awc client and its local copy of the upstream token.
//!
//! Why one per worker: the awc client and the token copy are per-thread state with one owner,
//! and anything on the same thread is reached without a wake-up. Handlers call the attempt
//! loop ([`super::retry`]) directly through a [`DispatcherHandle`]: it used to be a message to
//! the actor, which cost a boxed envelope, a oneshot channel and an extra task poll per
//! request for nothing, since sender and actor share a thread (bench/README.md). The actor
//! remains the owner of the state and of its timer (batched breaker reports).

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

use super::breaker::{Breaker, BreakerCell, Gate, Outcomes, Permit, ProbeDone};
use super::budget::{BudgetHandle, Class};
use super::retry::{self, Dispatched, RetryPolicy};
use super::retry_budget::RetryBudget;
use super::token::{GetToken, Token, TokenCell, TokenManager, TokenUnavailable};
use crate::metrics::Metrics;
use crate::reload::Published;
use crate::request_id::RequestId;
use crate::upstream::{self, Attempt, Outcome};

/// Successes are reported to the breaker in batches of at most this many…
const REPORT_BATCH: u32 = 64;
/// …or at least this often.
const REPORT_EVERY: Duration = Duration::from_millis(100);

/// One request to send upstream, with retries, before `deadline`.
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
    /// Whether to wait for a budget permit, or go only if one is free now.
    pub patience: Patience,
}

/// How a request takes its budget permits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Patience {
    /// Wait in the budget's queue until the deadline.
    Queue,
    /// Only a permit that is free right now (background refreshes).
    NoWait,
}

/// Everything a Dispatcher is built from; shared by all workers.
#[derive(Clone)]
pub struct DispatcherSettings {
    /// The upstream's `/process` URI.
    pub process_uri: Uri,
    /// `X-API-Key` value, marked sensitive; replaced by a reload.
    pub api_key: Arc<Published<HeaderValue>>,
    /// Retry and timeout policy.
    pub policy: RetryPolicy,
    /// TLS configuration.
    pub tls: Arc<rustls::ClientConfig>,
    /// The upstream rate budget.
    pub budget: BudgetHandle,
    /// The circuit breaker's published state.
    pub breaker_cell: Arc<BreakerCell>,
    /// The circuit breaker.
    pub breaker: Addr<Breaker>,
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
    api_key_cell: Arc<Published<HeaderValue>>,
    /// This thread's copy of the API key and the version it was published under.
    api_key: RefCell<(u64, Rc<HeaderValue>)>,
    pub(super) policy: RetryPolicy,
    pub(super) budget: BudgetHandle,
    breaker_cell: Arc<BreakerCell>,
    breaker: Addr<Breaker>,
    pending_successes: Cell<u32>,
    breaker_rejections: IntCounter,
    reports_dropped: IntCounter,
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
    pub(super) fn new(settings: DispatcherSettings) -> Upstream {
        let counters = |vec: &prometheus::IntCounterVec| {
            Outcome::ALL.iter().map(|o| vec.with_label_values(&[o.as_str()])).collect()
        };
        let local_api_key = (settings.api_key.version(), local_copy(&settings.api_key.load()));
        Upstream {
            client: upstream::build_client(settings.tls.clone(), &upstream::ClientSettings::default()),
            process_uri: settings.process_uri.to_string().parse().expect("a valid URI stays valid"),
            api_key_cell: settings.api_key,
            api_key: RefCell::new(local_api_key),
            policy: settings.policy,
            budget: settings.budget,
            breaker_cell: settings.breaker_cell,
            breaker: settings.breaker,
            pending_successes: Cell::new(0),
            breaker_rejections: settings.metrics.breaker_rejections.clone(),
            reports_dropped: settings.metrics.breaker_reports_dropped.clone(),
            retry_budget: RefCell::new(RetryBudget::new(settings.retry_budget.0, settings.retry_budget.1)),
            latency: Cell::new(Duration::ZERO),
            retry_refusals: settings.metrics.retry_budget_refusals.clone(),
            token_cell: settings.token_cell,
            token_manager: settings.token_manager,
            local_token: RefCell::new((u64::MAX, None)),
            attempt_counters: counters(&settings.metrics.upstream_attempts),
            retry_counters: settings.metrics.upstream_retry_counters(),
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
            tls: false,
        })??;
        Ok((token.authorization.clone(), token.generation))
    }

    /// The `X-API-Key` value: this thread's copy, renewed only after a reload (one atomic
    /// load per attempt to notice one). An attempt keeps the key it was sent with.
    pub(super) fn api_key(&self) -> Rc<HeaderValue> {
        let mut local = self.api_key.borrow_mut();
        let version = self.api_key_cell.version();
        if local.0 != version {
            *local = (version, local_copy(&self.api_key_cell.load()));
        }
        local.1.clone()
    }

    fn local_token(&self, now: Instant) -> Option<(HeaderValue, u64)> {
        let mut local = self.local_token.borrow_mut();
        let version = self.token_cell.version();
        if local.0 != version {
            *local = (version, self.token_cell.load().map(|t| t.local_copy()));
        }
        local.1.as_ref().filter(|t| t.is_valid_at(now)).map(|t| (t.authorization.clone(), t.generation))
    }

    /// Whether the circuit lets an attempt through: `Ok(probe id)` when it does (with an id
    /// when the attempt is a half-open probe), `Err(retry after)` when it is open.
    pub(super) async fn breaker_gate(&self) -> Result<Option<u64>, Duration> {
        let verdict = match self.breaker_cell.gate(Instant::now()) {
            Gate::Pass => Ok(None),
            Gate::Reject { retry_after } => Err(retry_after),
            Gate::AskActor => match self.breaker.send(Permit).await {
                Ok(Ok(ticket)) => Ok(ticket.probe),
                Ok(Err(rejected)) => Err(rejected.retry_after),
                Err(_) => Err(Duration::from_secs(1)),
            },
        };
        if verdict.is_err() {
            self.breaker_rejections.inc();
        }
        verdict
    }

    /// Tells the breaker how an attempt went: failures at once (with the successes before
    /// them), successes in batches, probes alone. 429s are the budget's business, not the
    /// circuit's, and TLS failures are configuration's. With no attempt made, a probe's slot
    /// is just given back.
    pub(super) fn report(&self, attempt: Option<&Attempt>, probe: Option<u64>) {
        let verdict = match attempt {
            // A refused certificate says nothing about the upstream's health either way.
            None | Some(Attempt::RateLimited | Attempt::Tls(_)) => None,
            Some(attempt) => Some(!attempt.is_upstream_failure()),
        };
        if let Some(id) = probe {
            self.send_report(ProbeDone { id, success: verdict });
            return;
        }
        match verdict {
            Some(true) => {
                self.pending_successes.set(self.pending_successes.get() + 1);
                if self.pending_successes.get() >= REPORT_BATCH {
                    self.flush_successes();
                }
            }
            Some(false) => {
                let successes = self.pending_successes.replace(0);
                self.send_report(Outcomes { successes, failures: 1 });
            }
            None => {}
        }
    }

    fn flush_successes(&self) {
        let successes = self.pending_successes.replace(0);
        if successes > 0 {
            self.send_report(Outcomes { successes, failures: 0 });
        }
    }

    fn send_report<M>(&self, report: M)
    where
        M: Message<Result = ()> + Send + 'static,
        Breaker: Handler<M>,
    {
        if self.breaker.try_send(report).is_err() {
            self.reports_dropped.inc();
        }
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

/// A copy of a sensitive header whose bytes belong to this thread, so cloning it per request
/// touches no reference count that other threads also touch.
fn local_copy(value: &HeaderValue) -> Rc<HeaderValue> {
    let mut copy = HeaderValue::from_bytes(value.as_bytes()).expect("a valid header stays valid");
    copy.set_sensitive(true);
    Rc::new(copy)
}

/// The actor.
pub struct Dispatcher {
    upstream: Rc<Upstream>,
}

/// What a handler holds: the attempt loop of this thread's Dispatcher, called in place.
#[derive(Clone)]
pub struct DispatcherHandle {
    upstream: Rc<Upstream>,
    _actor: Addr<Dispatcher>,
}

impl DispatcherHandle {
    /// Sends one request upstream, with retries, before its deadline.
    pub async fn dispatch(&self, msg: Dispatch) -> Dispatched {
        // Boxed: the attempt loop's state (awc's send future included) is ~10 KB, and inline it
        // would make every handler future that large, copied whole when actix boxes it.
        Box::pin(retry::run(self.upstream.clone(), msg)).await
    }
}

impl Dispatcher {
    /// Starts a Dispatcher on the current thread (call from the worker's app factory).
    pub fn start_here(settings: DispatcherSettings) -> DispatcherHandle {
        let upstream = Rc::new(Upstream::new(settings));
        let actor = Dispatcher { upstream: upstream.clone() }.start();
        DispatcherHandle { upstream, _actor: actor }
    }
}

impl Actor for Dispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(REPORT_EVERY, |act, _| act.upstream.flush_successes());
    }
}
