//! Where Redis is when Sentinels name it: the target every Redis connection follows.

use std::sync::Arc;

use secrecy::ExposeSecret;
use slog::Logger;

use super::{StartError, REDIS_TIMEOUT};
use crate::config::Config;
use crate::shared::sentinel::{self, NodeClient, SentinelSettings, Target};

/// With `REDIS_SENTINELS`: the primary the Sentinels name, followed from now on (asked in the
/// main arbiter, which runs the follower for as long as courier does). `None` without them:
/// each connection then goes to `REDIS_URL` itself.
pub(super) async fn sentinel_target(config: &Config, log: &Logger) -> Result<Option<Arc<Target>>, StartError> {
    let (Some(url), Some(master)) = (&config.redis_url, &config.redis_ha.sentinel_master) else { return Ok(None) };
    if config.redis_ha.sentinels.is_empty() {
        return Ok(None);
    }
    // Everything but the address comes from REDIS_URL (TLS, user, password, database).
    let template = redis::Client::open(url.expose_secret())
        .map_err(|_| StartError::Setting("REDIS_URL: the Redis URL is not valid".into()))?
        .get_connection_info()
        .clone();
    let node_client: NodeClient = Arc::new(move |host, port| sentinel::node_client(&template, host, port));
    let settings = SentinelSettings { sentinels: config.redis_ha.sentinels.clone(), master: master.clone() };
    Target::sentinel(settings, node_client, REDIS_TIMEOUT, log)
        .await
        .map(Some)
        .map_err(|why| StartError::Setting(format!("REDIS_SENTINELS: {why}")))
}
