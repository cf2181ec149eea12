//! A thread's lane to the upstream: what the attempt loop ([`super::attempts`]) runs with on
//! one thread (an actix-web worker, the job runner's arbiter, the prober's), in named parts.
//!
//! Why per thread, and why not an actor: the awc client, the token and key copies, the report
//! batch, the latency estimate and the retry budget are state with one owner, the thread, and
//! anything on the same thread is reached without a wake-up. The attempt loop runs in place on
//! the request's own task; a message to an actor on the same thread would only add a boxed
//! envelope, a channel and an extra poll per request (the Dispatcher actor that once held this
//! handled no message at all). The one timer, the breaker reports' flush, is a task of its own.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Instant;

use actix::Addr;
use actix_web::http::header::HeaderValue;
use actix_web::http::Uri;
use prometheus::IntCounter;
use slog::{o, Logger};

use super::circuit::Circuit;
use super::credentials::Credentials;
use super::latency::AttemptLatency;
use super::retry::RetryPolicy;
use super::retry_budget::RetryBudget;
use crate::actors::budget::BudgetHandle;
use crate::actors::quota::Quota;
use crate::actors::{Breaker, BreakerCell, TokenCell, TokenManager};
use crate::metrics::Metrics;
use crate::published::Published;
use crate::trace::Tracing;
use crate::upstream::{self, Outcome};

/// The outcomes an attempt is retried after (`courier_upstream_retries_total{reason}`, whose
/// label values `metrics::RETRY_REASONS` lists): a success, a refused request or a refused key
/// is never a reason to retry.
pub const RETRY_REASONS: [Outcome; 4] =
    [Outcome::RateLimited, Outcome::ServerError, Outcome::Timeout, Outcome::ConnectError];

/// Everything a lane is built from; shared by all threads.
#[derive(Clone)]
pub struct LaneSettings {
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
    /// The quota windows (`None` without `EXTERNAL_API_QUOTAS`).
    pub quota: Option<Arc<Quota>>,
    /// The circuit breaker's published state.
    pub breaker_cell: Arc<BreakerCell>,
    /// The circuit breaker.
    pub breaker: Addr<Breaker>,
    /// Retry budget: fraction of first attempts, and floor per second for this thread.
    pub retry_budget: (f64, f64),
    /// Where the TokenManager publishes tokens.
    pub token_cell: Arc<TokenCell>,
    /// The TokenManager.
    pub token_manager: Addr<TokenManager>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Parent logger.
    pub log: Logger,
    /// Traces (off without an OTLP endpoint).
    pub tracing: Tracing,
}

/// Attempts and retries counted by outcome, their children resolved once.
pub struct Counters {
    attempts: Vec<IntCounter>,
    retries: Vec<Option<IntCounter>>,
}

impl Counters {
    fn new(metrics: &Metrics) -> Counters {
        let attempts =
            Outcome::ALL.iter().map(|o| metrics.upstream_attempts.with_label_values(&[o.as_str()])).collect();
        let retries = Outcome::ALL
            .iter()
            .map(|o| RETRY_REASONS.contains(o).then(|| metrics.upstream_retries.with_label_values(&[o.as_str()])))
            .collect();
        Counters { attempts, retries }
    }

    /// Counts an attempt by its outcome.
    pub fn attempt(&self, outcome: Outcome) {
        self.attempts[outcome as usize].inc();
    }

    /// Counts a retry after an attempt that ended with `reason`.
    pub fn retry(&self, reason: Outcome) {
        if let Some(counter) = &self.retries[reason as usize] {
            counter.inc();
        }
    }
}

/// One thread's lane to the upstream; see the module documentation.
pub struct Lane {
    /// This thread's pooled awc client.
    pub client: awc::Client,
    /// The upstream's `/process` URI.
    pub process_uri: Uri,
    /// Retry and timeout policy.
    pub policy: RetryPolicy,
    /// The upstream rate budget (stage 3).
    pub budget: BudgetHandle,
    /// The quota windows (stage 3), when configured.
    pub quota: Option<Arc<Quota>>,
    /// The link to the Breaker (stages 2 and 7).
    pub circuit: Circuit,
    /// The token and API key copies (stage 4).
    pub credentials: Credentials,
    /// What an answered attempt usually takes.
    pub latency: AttemptLatency,
    /// Retries this thread may still make.
    retry_budget: RefCell<RetryBudget>,
    retry_refusals: IntCounter,
    /// Attempts and retries by outcome.
    pub counters: Counters,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// This lane's logger.
    pub log: Logger,
    /// Traces.
    pub tracing: Tracing,
    /// The upstream `/process` URL as spans name it (`url.full`, no query or credentials).
    pub url_full: Option<opentelemetry::Value>,
}

impl Lane {
    /// A lane for the calling thread. Call [`Lane::flush_reports`] every
    /// [`super::circuit::FLUSH_EVERY`] on the same thread (the pipeline spawns that task).
    pub fn new(settings: LaneSettings) -> Lane {
        let metrics = settings.metrics;
        let url_full = settings.tracing.is_on().then(|| url_full(&settings.process_uri).into());
        Lane {
            client: upstream::build_client(settings.tls.clone(), &upstream::ClientSettings::default()),
            process_uri: settings.process_uri,
            policy: settings.policy,
            budget: settings.budget,
            quota: settings.quota,
            circuit: Circuit::new(
                settings.breaker_cell,
                settings.breaker,
                metrics.breaker_rejections.clone(),
                metrics.breaker_reports_dropped.clone(),
            ),
            credentials: Credentials::new(settings.token_cell, settings.token_manager.recipient(), settings.api_key),
            latency: AttemptLatency::default(),
            retry_budget: RefCell::new(RetryBudget::new(settings.retry_budget.0, settings.retry_budget.1)),
            retry_refusals: metrics.retry_budget_refusals.clone(),
            counters: Counters::new(&metrics),
            log: settings.log.new(o!("part" => "pipeline")),
            metrics,
            url_full,
            tracing: settings.tracing,
        }
    }

    /// Sends the breaker reports not sent yet.
    pub fn flush_reports(&self) {
        self.circuit.flush();
    }

    /// A first attempt was made (a deposit in the retry budget).
    pub fn record_first_attempt(&self, now: Instant) {
        self.retry_budget.borrow_mut().record_first(now);
    }

    /// Takes a retry from this thread's retry budget; counts a refusal.
    pub fn try_retry(&self, now: Instant) -> bool {
        let granted = self.retry_budget.borrow_mut().try_retry(now);
        if !granted {
            self.retry_refusals.inc();
        }
        granted
    }
}

/// `uri` without userinfo or query, as the `url.full` attribute may show it.
fn url_full(uri: &Uri) -> String {
    let host = uri.host().unwrap_or_default();
    let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
    format!("{}://{host}{port}{}", uri.scheme_str().unwrap_or("https"), uri.path())
}
