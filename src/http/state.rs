//! The state handlers run with: [`Shared`] by every thread, [`Worker`] per actix worker.

use std::sync::Arc;

use actix::Addr;
use actix_web::HttpRequest;
use slog::Logger;

use super::errors::ApiError;
use super::limits::InFlight;
use crate::actors::budget::BudgetShared;
use crate::actors::{Breaker, Dispatcher, TokenCell};
use crate::cache::ResponseCache;
use crate::config::{Clients, Config};
use crate::metrics::Metrics;

/// State shared by all threads; read-only or internally synchronised.
pub struct Shared {
    /// The configuration.
    pub config: Arc<Config>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// The published upstream token (readiness reads it).
    pub token_cell: Arc<TokenCell>,
    /// The upstream rate budget (headers and gauges read it).
    pub budget: Arc<BudgetShared>,
    /// The response cache.
    pub cache: Arc<ResponseCache>,
    /// Jobs: the store, the callback policy, the job deadline.
    pub jobs: super::jobs::JobsShared,
    /// Shared state through Redis, when `REDIS_URL` is set.
    pub redis: Option<Arc<crate::shared::SharedRedis>>,
    /// The circuit breaker (the admin routes force it and read its state).
    pub breaker: actix::Addr<Breaker>,
    /// The root logger.
    pub log: Logger,
    /// Process requests in flight per client.
    pub in_flight: InFlight,
}

/// Who is calling: a client of the clients file, or anyone when courier runs open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No clients file: all traffic is one client.
    Open,
    /// The client at this index of the clients file.
    Known(usize),
}

impl Caller {
    /// The client's index for the budget (open mode is the one client 0).
    pub fn index(self) -> usize {
        match self {
            Caller::Open => 0,
            Caller::Known(i) => i,
        }
    }
}

/// Label value of a request whose caller is not (yet) known.
pub const UNKNOWN_CALLER: &str = "unknown";

/// Per-worker state: this worker's Dispatcher and logger.
pub struct Worker {
    /// Shared state.
    pub shared: Arc<Shared>,
    /// This worker's Dispatcher (same thread).
    pub dispatcher: Addr<Dispatcher>,
    /// This worker's logger.
    pub log: Logger,
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
    fn clients(&self) -> Option<&Clients> {
        self.shared.config.clients.as_ref()
    }

    /// Identifies the caller by `Authorization: Bearer <key>` when clients are configured.
    pub fn identify(&self, req: &HttpRequest) -> Result<Caller, ApiError> {
        let Some(clients) = self.clients() else {
            return Ok(Caller::Open);
        };
        let key = req
            .headers()
            .get("authorization")
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .ok_or(ApiError::Unauthorized)?;
        clients.authenticate(key).map(Caller::Known).ok_or(ApiError::Unauthorized)
    }

    /// The name a job is owned by: the client's, or none in open mode.
    pub fn owner_name(&self, caller: Caller) -> Option<&str> {
        match caller {
            Caller::Open => None,
            Caller::Known(_) => Some(self.caller_name(caller)),
        }
    }

    /// The caller's name, for logs and metrics.
    pub fn caller_name(&self, caller: Caller) -> &str {
        match (caller, self.clients()) {
            (Caller::Open, _) => "open",
            (Caller::Known(i), Some(clients)) => &clients.entries()[i].name,
            (Caller::Known(_), None) => UNKNOWN_CALLER,
        }
    }
}
