//! Where Redis is: `REDIS_URL`'s, or with Sentinels the primary they name, followed from now on.

use slog::Logger;

use super::{redis_endpoint, StartError, REDIS_TIMEOUT};
use crate::config::Config;
use crate::shared::sentinel::{NodeClient, SentinelSettings, Target};
use crate::shared::RedisEndpoint;

/// The endpoint every Redis connection is made from (`None` without `REDIS_URL`). With
/// `REDIS_SENTINELS`, its connections go to the primary the Sentinels name (asked now, in the
/// main arbiter, which runs the follower for as long as courier does); `REDIS_URL` then gives
/// everything but the address (user, password, database, TLS and its certificates).
pub(super) async fn endpoint(config: &Config, log: &Logger) -> Result<Option<RedisEndpoint>, StartError> {
    let Some(endpoint) = redis_endpoint(config) else { return Ok(None) };
    let Some(master) = config.redis_ha.sentinel_master.clone().filter(|_| !config.redis_ha.sentinels.is_empty()) else {
        return Ok(Some(endpoint));
    };
    let node_client: NodeClient =
        endpoint.node_clients().map_err(|e| StartError::Setting(format!("REDIS_URL: {e}")))?;
    let tls = match config.redis_ha.sentinel_tls {
        true => Some(endpoint.node_template().map_err(|e| StartError::Setting(format!("REDIS_URL: {e}")))?),
        false => None,
    };
    let auth = config.redis_ha.sentinel_auth.clone();
    let settings = SentinelSettings { sentinels: config.redis_ha.sentinels.clone(), master, auth, tls };
    let target = Target::sentinel(settings, node_client, REDIS_TIMEOUT, log)
        .await
        .map_err(|why| StartError::Setting(format!("REDIS_SENTINELS: {why}")))?;
    Ok(Some(endpoint.with_sentinel(target)))
}
