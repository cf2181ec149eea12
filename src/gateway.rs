//! Starting courier: the actors, the gateway listener with one pipeline per worker, the
//! admin listener, and a graceful stop.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Actor;
use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpServer};
use slog::{info, o, warn, Logger};

use crate::actors::budget::{Budget, BudgetHandle, BudgetShared};
use crate::actors::{Breaker, BreakerCell};
use crate::actors::{TokenCell, TokenManager, TokenSettings};
use crate::cache::{CacheSettings, ResponseCache};
use crate::config::Config;
use crate::http::limits::InFlight;
use crate::http::{self, Shared, Worker};
use crate::jobs::runner::RunnerHandle;
use crate::metrics::{Metrics, ReloadTrigger};
use crate::pipeline::{LaneSettings, Pipeline, Prober, RetryPolicy};
use crate::reload::{Credentials, ReloadHandle, Reloader, Targets, TlsCells};
use crate::security::Lockout;
use crate::shared::budget::SharedRate;
use crate::shared::{self, RedisEndpoint, SharedRedis};
use crate::systemd;
use crate::trace::Tracing;
use crate::upstream::{self, Backoff};

mod fleet;
mod jobs;
mod quota;
mod sentinel;

use jobs::{jobs_shared, start_runner};

/// Why courier could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting passed validation but cannot be used (e.g. an unreadable CA file).
    #[error("{0}")]
    Setting(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: io::Error,
    },
}

/// The started actors and everything workers are built from.
pub struct Gateway {
    shared: Arc<Shared>,
    lane: LaneSettings,
    fleet: Option<fleet::Heartbeat>,
    /// Where Redis is, for reloads to rotate its credentials.
    redis: Option<RedisEndpoint>,
}

impl Gateway {
    /// Starts the TokenManager (inside the running actix System) and prepares the workers.
    pub async fn start(config: Config, metrics: Arc<Metrics>, log: Logger) -> Result<Gateway, StartError> {
        // The CA file was read and checked with the configuration; one TLS configuration
        // serves the token fetcher and every worker's API client.
        let tls =
            upstream::tls_config_with(&config.api_ca).map_err(|e| StartError::Setting(format!("upstream TLS: {e}")))?;
        let process_uri = format!("{}/process", config.base_url)
            .parse()
            .map_err(|e| StartError::Setting(format!("EXTERNAL_API_BASE_URL: cannot form /process URI: {e}")))?;
        let credentials = Arc::new(Credentials::from_config(&config).map_err(StartError::Setting)?);
        let backoff =
            Backoff::try_new(config.retry_delay, config.retry_max_delay.max(config.retry_delay), config.retry_jitter)
                .map_err(|e| StartError::Setting(e.to_string()))?;
        let policy = RetryPolicy {
            max_retries: config.max_retries,
            backoff,
            attempt_timeout: config.attempt_timeout,
            max_body: config.upstream_max_body_bytes,
            max_depth: config.limits.max_json_depth + crate::json::WRAPPING_DEPTH,
        };
        let weights = match &config.clients {
            Some(clients) => clients.entries().iter().map(|c| c.weight).collect(),
            None => vec![1],
        };
        let endpoint = sentinel::endpoint(&config, &log).await?;
        let shared_redis = match endpoint.clone() {
            Some(endpoint) => Some(Arc::new(
                SharedRedis::connect(endpoint, "courier", REDIS_TIMEOUT, metrics.clone(), &log)
                    .await
                    .map_err(|e| StartError::Setting(format!("REDIS_URL: {e}")))?,
            )),
            None => {
                shared::run_without_redis(&metrics, &crate::jobs::redis::OPERATION_LABELS);
                None
            }
        };
        let shared_rate = shared_redis.as_ref().map(|redis| {
            let rate = SharedRate::new(redis.clone(), config.rate_limit_per_minute, config.rate_burst);
            (Arc::new(rate), config.replicas)
        });
        let budget_shared = Arc::new(
            BudgetShared::try_with_shared(config.rate_limit_per_minute, config.rate_burst, weights, shared_rate)
                .map_err(|e| StartError::Setting(format!("EXTERNAL_API_RATE_LIMIT / EXTERNAL_API_RATE_BURST: {e}")))?,
        );
        let heartbeat =
            fleet::start(shared_redis.clone(), config.replicas, budget_shared.clone(), &metrics, &log).await;
        let quota = quota::start(&config, shared_redis.clone(), budget_shared.clone(), &metrics, &log)?;
        let budget_actor = Budget::new(budget_shared.clone(), config.queue_max, metrics.clone(), &log).start();
        let budget = BudgetHandle::new(budget_shared.clone(), budget_actor, &metrics);
        let retry_budget = (config.retry_budget_ratio, config.retry_budget_min_per_second / config.workers as f64);
        let cache = Arc::new(ResponseCache::new(
            CacheSettings {
                ttl: config.cache_ttl,
                max_bytes: config.cache_max_bytes,
                stale_if_error: config.cache_stale_if_error,
                stale_while_revalidate: config.cache_stale_while_revalidate,
            },
            &metrics,
            shared_redis.clone(),
        ));
        let jobs = jobs_shared(&config, shared_redis.clone(), endpoint.clone()).await?;
        let breaker_cell = Arc::new(BreakerCell::new());
        // A probe that never reports (its request was dropped) frees its slot after this.
        let probe_lease = config.attempt_timeout + Duration::from_secs(1);
        let breaker = Breaker::new(&config.breaker, probe_lease, breaker_cell.clone(), metrics.clone(), &log)
            .map_err(|e| StartError::Setting(format!("COURIER_BREAKER_*: {e}")))?
            .start();
        let tracing = Tracing::start(&config.tracing, &metrics, &log);
        let token_cell = Arc::new(TokenCell::default());
        let token_manager = TokenManager::new(
            TokenSettings {
                url: config.token_url.clone(),
                client_id: config.client_id.clone(),
                client_secret: config.client_secret.clone(),
                timeout: config.attempt_timeout,
                tls: tls.clone(),
            },
            token_cell.clone(),
            metrics.clone(),
            &log,
        )
        .with_shared(shared_redis.clone())
        .with_tracing(tracing.clone())
        .start();
        if config.clients.is_none() {
            warn!(log, "open_mode"; "detail" => "COURIER_CLIENTS_FILE is not set: every caller is accepted as client \"open\"");
        }
        let in_flight =
            InFlight::new(config.clients.as_ref().map_or(1, |c| c.entries().len()), config.limits.client_max_in_flight);
        // Open mode authenticates nobody, so there is nothing to lock out.
        let lockout = match config.clients {
            Some(_) => Lockout::new(&config.security.lockout, shared_redis.clone(), metrics.clone(), &log)
                .map_err(StartError::Setting)?,
            None => None,
        };
        if let Some(lockout) = &lockout {
            lockout.start_sync();
        }
        crate::security::spend::start(&config.security.spend, metrics.clone(), &log);
        let shared = Arc::new(Shared {
            in_flight,
            config: Arc::new(config),
            credentials: credentials.clone(),
            metrics: metrics.clone(),
            token_cell: token_cell.clone(),
            budget: budget_shared,
            quota: quota.clone(),
            breaker: breaker.clone(),
            cache,
            jobs,
            redis: shared_redis.clone(),
            fleet: heartbeat.as_ref().map(|h| h.membership().clone()),
            log: log.clone(),
            tracing: tracing.clone(),
            lockout,
        });
        let lane = LaneSettings {
            process_uri,
            api_key: credentials.api_key.clone(),
            policy,
            budget,
            quota,
            breaker_cell,
            breaker,
            retry_budget,
            tls,
            token_cell,
            token_manager,
            metrics,
            log,
            tracing,
        };
        // Background probes of an open circuit, from the main arbiter.
        Prober::start_here(lane.clone());
        Ok(Gateway { shared, lane, fleet: heartbeat, redis: endpoint })
    }

    /// Shared state (config, metrics, token cell).
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// A pipeline for the calling thread (an actix-web worker, the job runner's arbiter).
    pub fn pipeline(&self) -> Pipeline {
        let refresh_deadline = self.shared.config.request_deadline;
        Pipeline::start_here(self.lane.clone(), self.shared.cache.clone(), refresh_deadline)
    }

    /// The state of one worker; starts that worker's pipeline on the calling thread.
    pub fn worker(&self) -> web::Data<Worker> {
        web::Data::new(Worker::new(self.shared.clone(), self.pipeline(), self.shared.log.new(o!())))
    }

    /// Binds both listeners and starts serving. Signals are not handled here: see
    /// [`Running::stop_on_signal`].
    pub fn serve(self) -> Result<Running, StartError> {
        let config = self.shared.config.clone();
        let grace = config.shutdown_grace;
        let grace_secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        let gateway = Arc::new(self);
        let factory = {
            let gateway = gateway.clone();
            move || App::new().app_data(gateway.worker()).configure(http::configure)
        };
        let limits = &config.limits;
        let bind_error = |source| StartError::Bind { addr: config.listen, source };
        let listener = http::connection::bind(config.listen).map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let rejections = &gateway.shared.metrics.limit_rejections;
        let guard = http::connection::Guard {
            max_head: limits.max_header_bytes,
            too_large: rejections.with_label_values(&["header_size"]),
            malformed: rejections.with_label_values(&["malformed_head"]),
            head_timeout: limits.client_header_timeout,
            slow_head: rejections.with_label_values(&["header_timeout"]),
        };
        let how = http::connection::Listening {
            workers: config.workers,
            max_connections_per_worker: limits.max_connections_per_worker,
            client_header_timeout: limits.client_header_timeout,
            client_disconnect_timeout: limits.client_disconnect_timeout,
            shutdown_grace_secs: grace_secs,
        };
        let tls = TlsCells::from_config(&config);
        let handshakes = tls.gateway.clone().map(|cell| {
            http::tls::Handshakes::new(cell, limits.client_header_timeout, &gateway.shared.metrics, &gateway.shared.log)
        });
        let server = http::connection::server(listener, &how, guard, handshakes, factory).map_err(bind_error)?;

        let admin_shared = web::Data::new(gateway.shared.clone());
        let admin = HttpServer::new(move || {
            App::new()
                .app_data(admin_shared.clone())
                .wrap(actix_web::middleware::from_fn(http::admin_lock::lock))
                .configure(http::admin::configure)
        })
        .workers(1)
        .shutdown_timeout(1)
        .disable_signals();
        let admin = match (&config.tls.admin, &tls.admin) {
            (Some(admin_tls), Some(cell)) => {
                let resolver = Arc::new(http::tls::CurrentCertificate(cell.clone()));
                let mut server_config = Arc::unwrap_or_clone(admin_tls.loaded.server_config(Some(resolver)));
                // actix-web sets the ALPN protocols it speaks itself.
                server_config.alpn_protocols.clear();
                admin.bind_rustls_0_23(config.admin_listen, server_config)
            }
            _ => admin.bind(config.admin_listen),
        }
        .map_err(|source| StartError::Bind { addr: config.admin_listen, source })?;
        let admin_addr = admin.addrs()[0];
        let admin = admin.run();

        let (runner, callback_secret) = start_runner(&gateway)?;
        let targets = Targets {
            credentials: gateway.shared.credentials.clone(),
            token_manager: gateway.lane.token_manager.clone(),
            callback_secret,
            quota: gateway.shared.quota.clone(),
            redis: gateway.redis.clone().map(|endpoint| (endpoint, REDIS_TIMEOUT)),
            tls: tls.clone(),
        };
        let poll = Some(config.secret_poll_interval).filter(|p| !p.is_zero());
        let reload = Reloader::new(&config, targets, gateway.shared.metrics.clone(), &gateway.shared.log).start(poll);
        let running = Running {
            addr,
            admin_addr,
            server: server.handle(),
            admin: admin.handle(),
            runner,
            reload,
            quota: gateway.shared.quota.clone(),
            fleet: gateway.fleet.clone(),
            tracing: gateway.shared.tracing.clone(),
            log: gateway.shared.log.clone(),
            grace,
        };
        actix_rt::spawn(server);
        actix_rt::spawn(admin);
        info!(running.log, "listening"; "gateway" => %addr, "admin" => %admin_addr, "upstream" => &config.base_url,
            "gateway_tls" => tls.gateway.is_some(), "admin_tls" => tls.admin.is_some(),
            "client_certificates" => config.tls.gateway.as_ref().is_some_and(|t| t.files.client_ca_file.is_some()),
            "tracing" => running.tracing.is_on(),
            "max_connections" => limits.max_connections_per_worker.saturating_mul(config.workers),
            "client_max_in_flight" => limits.client_max_in_flight, "admin_locked" => config.admin.token.is_some());
        Ok(running)
    }
}

/// A serving courier.
pub struct Running {
    /// The gateway listener's address.
    pub addr: SocketAddr,
    /// The admin listener's address.
    pub admin_addr: SocketAddr,
    server: ServerHandle,
    admin: ServerHandle,
    runner: RunnerHandle,
    reload: ReloadHandle,
    quota: Option<Arc<crate::actors::quota::Quota>>,
    fleet: Option<fleet::Heartbeat>,
    tracing: Tracing,
    log: Logger,
    grace: Duration,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish within the grace period, stops.
    pub async fn stop(&self) {
        info!(self.log, "shutting_down"; "grace_seconds" => self.grace.as_secs_f64());
        // Requests in flight and jobs running get the same grace period, side by side; the
        // fleet counts one replica less at once.
        let flush_by = Instant::now() + self.grace;
        let leave = async {
            if let Some(fleet) = &self.fleet {
                fleet.stop().await;
            }
        };
        futures_util::future::join3(self.server.stop(true), self.runner.shutdown(self.grace), leave).await;
        // No attempt is sent any more: unspent counts go back, the store gets the exact count.
        if let Some(quota) = &self.quota {
            quota.stop().await;
        }
        // The spans of the last requests and jobs, within what is left of the grace period
        // (at least a second).
        let left = flush_by.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
        self.tracing.shutdown(left).await;
        self.admin.stop(true).await;
        info!(self.log, "stopped");
    }

    /// Asks for credential reloads (see [`crate::reload`]).
    pub fn reload_handle(&self) -> ReloadHandle {
        self.reload.clone()
    }

    /// Reloads credentials on every SIGHUP received by `hangups`. Create the stream before
    /// the gateway starts (`tokio::signal::unix::signal(SignalKind::hangup())`), so that a
    /// SIGHUP arriving early is caught rather than ending the process.
    pub fn reload_on_sighup(&self, mut hangups: tokio::signal::unix::Signal) {
        let reload = self.reload.clone();
        actix_rt::spawn(async move {
            while hangups.recv().await.is_some() {
                reload.request(ReloadTrigger::Signal);
            }
        });
    }

    /// Tells a service manager (systemd's `Type=notify`) that courier serves: see
    /// [`crate::systemd`]. Nothing is sent when no manager asked (no `NOTIFY_SOCKET`).
    pub fn notify_ready(&self) {
        systemd::ready(self.addr, self.admin_addr, &self.log);
    }

    /// Waits for SIGTERM or SIGINT, tells a service manager that courier is stopping, then stops
    /// gracefully.
    pub async fn stop_on_signal(&self) -> io::Result<()> {
        wait_for_signal().await?;
        systemd::stopping(&self.log);
        self.stop().await;
        Ok(())
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn wait_for_signal() -> io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}

/// Bound of every Redis call.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// The Redis of `REDIS_URL` with its TLS settings, when set: every connection courier opens to
/// it (shared state, the job store) is made from this.
fn redis_endpoint(config: &Config) -> Option<RedisEndpoint> {
    let url = config.redis_url.as_ref()?;
    Some(RedisEndpoint::new(url.clone(), config.redis_tls.clone()).with_cluster(config.redis_cluster))
}
