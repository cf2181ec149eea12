//! Upstream simulator: a fast, faithful stand-in for the rate-limited
//! "Example Data Processing API v2.1" that courier sits in front of.
//!
//! Courier's integration tests and benchmarks start it on loopback and talk
//! to it over real HTTP. It implements the upstream contract (OAuth2 client
//! credentials at `POST /v2/oauth/token`, the authenticated, rate-limited
//! `POST /v2/process`) and adds an unauthenticated control plane under
//! `/_sim` to inject faults (errors, latency, outages, dropped connections,
//! token failures and revocation, foreign rate-limit consumption), to replace
//! the accepted credentials (a rotation), to set quota windows (hour, day,
//! month or fixed spans on top of the per-minute rate), to read request
//! counters, and a sink that records and verifies courier's signed callbacks.
//!
//! Because it is the upstream of benchmarks, the simulator must never be the
//! bottleneck. The request path therefore takes no locks: tokens validate
//! themselves with a MAC (no token table), faults and counters are atomics,
//! and the rate limiter is a GCRA whose whole state is a single `AtomicU64`
//! updated by compare-and-swap. (Quota windows, off by default, are the one
//! exception: their counts must be exact, so they take a lock while set.) A mutex-guarded bucket would serialise every
//! worker on one lock exactly at the point a benchmark is trying to saturate,
//! and would distort the latency and concurrency figures being measured.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use courier::simulator::{FaultsPatch, SimConfig, Simulator};
//!
//! let sim = Simulator::start(SimConfig::default()).await?;
//! println!("upstream at {}", sim.base_url());
//! sim.set_faults(FaultsPatch { error_count: Some(2), ..FaultsPatch::default() });
//! sim.stop().await;
//! # Ok(())
//! # }
//! ```

mod callbacks;
mod config;
mod credentials;
mod faults;
mod process;
mod quota;
mod quota_headers;
mod ratelimit;
mod reply;
mod routes;
mod state;
mod stats;
mod tls;
mod tokens;
mod window;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpServer};

pub use callbacks::{CallbacksReport, ReceivedCallback};
pub use config::{SimArgs, SimConfig};
pub use credentials::{CredentialUses, CredentialsPatch};
pub use faults::{Faults, FaultsPatch};
pub use quota::{QuotaHeaders, QuotaWindowStats, QuotasPatch, QuotasReport, ARRIVALS_KEPT_SECS};
pub use stats::{ProcessStats, SimStats, TokenStats, TRACEPARENTS_KEPT};
pub use tls::SimTls;

use state::Shared;

/// Seconds a graceful stop waits for in-flight requests before closing them.
const SHUTDOWN_TIMEOUT_SECS: u64 = 5;

/// A running simulator. Dropping it leaves the server running; call [`Simulator::stop`].
pub struct Simulator {
    addr: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    handle: ServerHandle,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Simulator {
    /// Binds `cfg.listen` (over TLS when `cfg.tls` is set), spawns the HTTP server on the
    /// current actix System and returns as soon as it is accepting connections. A bad
    /// `cfg.quotas` entry is an `InvalidInput` error.
    pub async fn start(cfg: SimConfig) -> io::Result<Simulator> {
        let tls = cfg.tls.as_ref().map(SimTls::server_config).transpose()?;
        let shared = Shared::new(&cfg).map_err(|why| io::Error::new(io::ErrorKind::InvalidInput, why))?;
        let shared = Arc::new(shared);
        let data = web::Data::from(Arc::clone(&shared));
        let server = HttpServer::new(move || App::new().configure(routes::configure(data.clone())))
            .workers(cfg.workers.max(1))
            .disable_signals()
            .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS);
        let server = match tls {
            Some(tls) => server.bind_rustls_0_23(cfg.listen, tls)?,
            None => server.bind(cfg.listen)?,
        };
        let addr = server
            .addrs()
            .first()
            .copied()
            .ok_or_else(|| io::Error::new(io::ErrorKind::AddrNotAvailable, "no address bound"))?;
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Ok(Simulator { addr, tls: cfg.tls.is_some(), shared, handle })
    }

    /// The bound address (with the real port when `listen` used port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Scheme and authority, e.g. `http://127.0.0.1:8081` (`https://` when serving TLS).
    pub fn origin(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Base URL of the upstream API, e.g. `http://127.0.0.1:8081/v2`.
    pub fn base_url(&self) -> String {
        format!("{}/v2", self.origin())
    }

    /// Current counters (the same document as `GET /_sim/stats`).
    pub fn stats(&self) -> SimStats {
        self.shared.stats_snapshot()
    }

    /// The quota windows and per-second arrivals (the same document as `GET /_sim/quotas`).
    pub fn quotas(&self) -> QuotasReport {
        self.shared.quotas.report(tokens::unix_ms())
    }

    /// Applies a quotas patch, like `POST /_sim/quotas`; an invalid one changes nothing and
    /// its error says why.
    pub fn set_quotas(&self, patch: &QuotasPatch) -> Result<QuotasReport, String> {
        self.shared.apply_quotas(patch)
    }

    /// Applies a fault patch, like `POST /_sim/faults`, and returns the new faults.
    /// Out-of-range values are clamped here (the HTTP endpoint rejects them with 400).
    pub fn set_faults(&self, patch: FaultsPatch) -> Faults {
        self.shared.apply_patch(&patch)
    }

    /// Replaces the accepted client secrets and/or API keys, like `POST /_sim/credentials`
    /// (to rehearse a rotation: accept old and new, then only the new).
    ///
    /// # Panics
    /// When the patch would lock every client out (an empty list or value).
    pub fn set_credentials(&self, patch: CredentialsPatch) {
        patch.validate().expect("a valid credentials patch");
        self.shared.credentials.apply(&patch);
    }

    /// Replaces the secret the callback sink checks signatures with (`None`: every callback
    /// is recorded as unverified).
    pub fn set_callback_secret(&self, secret: Option<&[u8]>) {
        self.shared.callbacks.set_secret(secret);
    }

    /// The callbacks the sink received (the same document as `GET /_sim/callbacks`).
    pub fn callbacks(&self) -> CallbacksReport {
        self.shared.callbacks.report()
    }

    /// How often each accepted client secret and API key was presented, by position.
    pub fn credential_uses(&self) -> CredentialUses {
        self.shared.credentials.uses()
    }

    /// Handle to the underlying actix-web server.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// Stops gracefully: stops accepting, lets in-flight requests finish
    /// (up to 5 s), closes idle keep-alive connections.
    pub async fn stop(self) {
        self.handle.stop(true).await;
    }
}
