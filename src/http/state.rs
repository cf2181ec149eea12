//! The state handlers run with: [`Shared`] by every thread, [`Worker`] per actix worker.

use std::cell::RefCell;
use std::sync::Arc;

use actix_web::http::header::AUTHORIZATION;
use actix_web::HttpRequest;
use slog::Logger;

use super::errors::ApiError;
use super::limits::{self, InFlight, InFlightGuard};
use crate::actors::budget::BudgetShared;
use crate::actors::{Breaker, TokenCell};
use crate::cache::ResponseCache;
use crate::config::{Clients, Config, PeerNames};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::reload::Credentials;
use crate::security::{Source, SourceClass};

/// State shared by all threads; read-only or internally synchronised.
pub struct Shared {
    /// The configuration as read at start. The credentials a reload replaces are read from
    /// `credentials`, never from here.
    pub config: Arc<Config>,
    /// The credentials a reload replaces (API key, client list), published lock-free.
    pub credentials: Arc<Credentials>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// The published upstream token (readiness reads it).
    pub token_cell: Arc<TokenCell>,
    /// The upstream rate budget (headers and gauges read it).
    pub budget: Arc<BudgetShared>,
    /// The quota windows (`None` without `EXTERNAL_API_QUOTAS`).
    pub quota: Option<Arc<crate::actors::quota::Quota>>,
    /// The response cache.
    pub cache: Arc<ResponseCache>,
    /// Jobs: the store, the callback policy, the job deadline.
    pub jobs: super::jobs::JobsShared,
    /// Shared state through Redis, when `REDIS_URL` is set.
    pub redis: Option<Arc<crate::shared::SharedRedis>>,
    /// This replica's place in the fleet sharing Redis, when `REDIS_URL` is set.
    pub fleet: Option<Arc<crate::shared::fleet::Membership>>,
    /// The circuit breaker (the admin routes force it and read its state).
    pub breaker: actix::Addr<Breaker>,
    /// The root logger.
    pub log: Logger,
    /// Process requests in flight per client.
    pub in_flight: InFlight,
    /// Traces (off without an OTLP endpoint).
    pub tracing: crate::trace::Tracing,
    /// The lockout of sources that keep presenting wrong keys (`None`: off, or no clients file).
    pub lockout: Option<Arc<crate::security::Lockout>>,
}

/// Who is calling: a client of the clients file, or anyone when courier runs open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No clients file: all traffic is one client.
    Open,
    /// A client of the clients file: its position (kept across reloads) and its name.
    Known(usize, &'static str),
}

impl Caller {
    /// The client's index for the budget (open mode is the one client 0).
    pub fn index(self) -> usize {
        match self {
            Caller::Open => 0,
            Caller::Known(i, _) => i,
        }
    }
}

/// Label value of a request whose caller is not (yet) known.
pub const UNKNOWN_CALLER: &str = "unknown";

/// Per-worker state: this worker's pipeline and logger.
pub struct Worker {
    /// Shared state.
    pub shared: Arc<Shared>,
    /// This worker's pipeline (the request's way through courier, on this thread).
    pub pipeline: Pipeline,
    /// This worker's resolved request metrics.
    pub request_metrics: super::observe::RequestMetrics,
    /// This worker's logger.
    pub log: Logger,
    /// This thread's copy of the client list and the version it was published under.
    clients: RefCell<(u64, Arc<Option<Clients>>)>,
}

impl Shared {
    /// `off` (no Redis), `shared`, or `degraded` (Redis failing: this replica on its own).
    pub fn shared_mode(&self) -> &'static str {
        match &self.redis {
            None => "off",
            Some(redis) if redis.is_up() => "shared",
            Some(_) => "degraded",
        }
    }
}

impl Worker {
    /// The state of one worker, reading shared state from `shared`.
    pub fn new(shared: Arc<Shared>, pipeline: Pipeline, log: Logger) -> Worker {
        let cell = &shared.credentials.clients;
        let clients = RefCell::new((cell.version(), cell.load()));
        Worker { shared, pipeline, request_metrics: Default::default(), log, clients }
    }

    /// Identifies the caller by `Authorization: Bearer <key>`, or by the verified TLS client
    /// certificate of its connection (see [`super::tls`]), when clients are configured. With
    /// both, they must name the same client; a key decides alone, a wrong key is never saved by
    /// a certificate. Reads this thread's copy of the client list, renewed only after a reload
    /// (one atomic load per request to notice one). A source locked out for wrong keys is
    /// refused first, before any key is compared (whatever key or certificate it presents); a
    /// missing or wrong key is counted.
    pub fn identify(&self, req: &HttpRequest) -> Result<Caller, ApiError> {
        let cell = &self.shared.credentials.clients;
        let mut local = self.clients.borrow_mut();
        let version = cell.version();
        if local.0 != version {
            *local = (version, cell.load());
        }
        let Some(clients) = local.1.as_ref() else {
            return Ok(Caller::Open);
        };
        let peer = req.peer_addr().map(|peer| peer.ip());
        let lockout = self.shared.lockout.as_ref().zip(peer);
        if let Some((lockout, ip)) = lockout {
            lockout.check(ip).map_err(ApiError::AuthLockedOut)?;
        }
        let key = req.headers().get(AUTHORIZATION).and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        let by_certificate = || req.conn_data::<PeerNames>().and_then(|names| clients.by_certificate(names));
        let known = match key {
            Some(key) => clients.authenticate(key).filter(|(i, _)| by_certificate().is_none_or(|(c, _)| c == *i)),
            None => by_certificate(),
        };
        if let Some((i, name)) = known {
            return Ok(Caller::Known(i, name));
        }
        let reason = if key.is_some() { "wrong_key" } else { "missing_key" };
        let class = peer.map_or(SourceClass::Loopback, |ip| Source::of(ip).class());
        self.shared.metrics.security.auth_failures.with_label_values(&[reason, class.as_str()]).inc();
        if let (Some((lockout, ip)), Some(_)) = (lockout, key) {
            lockout.failed(ip);
        }
        Err(ApiError::Unauthorized)
    }

    /// The name a job is owned by: the client's, or none in open mode.
    pub fn owner_name(&self, caller: Caller) -> Option<&'static str> {
        match caller {
            Caller::Open => None,
            Caller::Known(_, name) => Some(name),
        }
    }

    /// The caller's name, for logs and metrics.
    pub fn caller_name(&self, caller: Caller) -> &str {
        match caller {
            Caller::Open => "open",
            Caller::Known(_, name) => name,
        }
    }
    /// Refuses a request head larger than `COURIER_MAX_HEADER_BYTES`.
    pub fn check_head(&self, req: &HttpRequest) -> Result<(), ApiError> {
        limits::check_head(req, self.shared.config.limits.max_header_bytes).map_err(|e| self.refused(e))
    }

    /// Counts a process request of `caller` in flight, or refuses it when the caller has
    /// `COURIER_CLIENT_MAX_IN_FLIGHT` already.
    pub fn admit(&self, caller: Caller) -> Result<InFlightGuard<'_>, ApiError> {
        let in_flight = &self.shared.in_flight;
        in_flight
            .try_acquire(caller.index())
            .ok_or_else(|| self.refused(ApiError::ClientConcurrencyExceeded(in_flight.limit())))
    }

    /// Counts a refusal by one of the listener's limits in `courier_limit_rejections_total`.
    pub fn refused(&self, error: ApiError) -> ApiError {
        let limit = match error {
            ApiError::HeadersTooLarge(_) => "header_size",
            ApiError::ClientConcurrencyExceeded(_) => "client_in_flight",
            ApiError::RequestBodyTimeout(_) => "body_timeout",
            _ => return error,
        };
        self.shared.metrics.limit_rejections.with_label_values(&[limit]).inc();
        error
    }
}
