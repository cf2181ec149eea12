//! The job side of the start: the job store and callback policy every worker shares, and the
//! job runner with its own pipeline and callback delivery.

use std::sync::Arc;
use std::time::Duration;

use super::{Gateway, StartError, REDIS_TIMEOUT};
use crate::config::Config;
use crate::http::jobs::JobsShared;
use crate::jobs::callback::{CallbackPolicy, Delivery};
use crate::jobs::memory::MemoryStore;
use crate::jobs::redis::{RedisSettings, RedisStore};
use crate::jobs::runner::{self, RunnerHandle, RunnerSettings};
use crate::jobs::JobStore;
use crate::reload::SecretCell;
use crate::shared::{self, RedisEndpoint, SharedRedis};
use crate::upstream::{self, Backoff};

/// The job store (Redis when `REDIS_URL` is set, else in-process) and the callback policy. The
/// Redis store reports its calls' outcomes to the shared-state connection's health, so the
/// replica has one view of Redis.
pub(super) async fn jobs_shared(
    config: &Config,
    shared_redis: Option<Arc<SharedRedis>>,
    endpoint: Option<RedisEndpoint>,
) -> Result<JobsShared, StartError> {
    let jobs = &config.jobs;
    let store: Arc<dyn JobStore> = match endpoint {
        Some(endpoint) => {
            let settings = RedisSettings {
                lease: jobs.lease,
                job_ttl: jobs.ttl,
                op_timeout: REDIS_TIMEOUT,
                stream_max_len: jobs.max,
                max_runs: jobs.max_runs,
                min_replicas: config.redis_ha.min_replicas,
                wait_timeout: config.redis_ha.wait_timeout,
                ..RedisSettings::default()
            };
            let health = shared_redis.map(|redis| redis as Arc<dyn shared::RedisHealth>);
            let store = RedisStore::connect_with(endpoint, settings, health)
                .await
                .map_err(|e| StartError::Setting(format!("REDIS_URL: {e}")))?;
            Arc::new(store)
        }
        None => Arc::new(MemoryStore::new(jobs.max, jobs.ttl)),
    };
    let policy = CallbackPolicy::parse(&jobs.callback_allow)
        .map_err(|e| StartError::Setting(format!("COURIER_CALLBACK_ALLOW: {e}")))?;
    Ok(JobsShared {
        store,
        policy: Arc::new(policy),
        callbacks: jobs.callback_secret.is_some(),
        deadline: jobs.deadline,
    })
}

/// Starts the job runner on the current (main) arbiter, with a pipeline of its own. Returns
/// the callback signing secret's cell too, when callbacks are on, for reloads to replace it.
pub(super) fn start_runner(gateway: &Gateway) -> Result<(RunnerHandle, Option<SecretCell>), StartError> {
    let shared = &gateway.shared;
    let jobs = &shared.config.jobs;
    let delivery = match &jobs.callback_secret {
        Some(secret) => {
            let backoff = Backoff::try_new(
                jobs.callback_retry_delay,
                jobs.callback_retry_delay.max(Duration::from_secs(60)),
                true,
            )
            .map_err(|e| StartError::Setting(format!("COURIER_CALLBACK_RETRY_DELAY: {e}")))?;
            let delivery = Delivery::try_new(
                secret.clone(),
                shared.jobs.policy.clone(),
                jobs.callback_max_attempts,
                backoff,
                jobs.callback_timeout,
            )
            .map_err(|e| StartError::Setting(format!("COURIER_CALLBACK_*: {e}")))?;
            let log = shared.log.new(slog::o!("actor" => "callbacks"));
            Some(delivery.with_logger(log).with_tracing(shared.tracing.clone()))
        }
        None => None,
    };
    let settings = RunnerSettings { concurrency: jobs.concurrency, lease: jobs.lease };
    let callback_secret = delivery.as_ref().map(|d| d.secret_cell());
    let callback_tls =
        upstream::tls_config_with(&jobs.callback_ca).map_err(|e| StartError::Setting(format!("callback TLS: {e}")))?;
    let runner = runner::start(
        shared.jobs.store.clone(),
        gateway.pipeline(),
        delivery,
        callback_tls,
        settings,
        shared.metrics.clone(),
        &shared.log,
    );
    Ok((runner, callback_secret))
}
