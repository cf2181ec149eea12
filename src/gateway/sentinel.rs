//! Where Redis is when Sentinels name it: the target every Redis connection follows.

use std::sync::Arc;

use slog::Logger;

use super::{StartError, REDIS_TIMEOUT};
use crate::config::Config;
use crate::shared::sentinel::{self, NodeClient, SentinelSettings, Target};

/// With `REDIS_SENTINELS`: the primary the Sentinels name, followed from now on (asked in the
/// main arbiter, which runs the follower for as long as courier does). `None` without them:
/// each connection then goes to `REDIS_URL` itself.
pub(super) async fn sentinel_target(config: &Config, log: &Logger) -> Result<Option<Arc<Target>>, StartError> {
    let (Some(endpoint), Some(master)) = (super::redis_endpoint(config), &config.redis_ha.sentinel_master) else {
        return Ok(None);
    };
    if config.redis_ha.sentinels.is_empty() {
        return Ok(None);
    }
    // Everything but the address comes from REDIS_URL and its TLS files (user, password,
    // database, TLS and its certificates).
    let template =
        endpoint.client().map_err(|e| StartError::Setting(format!("REDIS_URL: {e}")))?.get_connection_info().clone();
    let node_client: NodeClient = Arc::new(move |host, port| sentinel::node_client(&template, host, port));
    let settings = SentinelSettings { sentinels: config.redis_ha.sentinels.clone(), master: master.clone() };
    Target::sentinel(settings, node_client, REDIS_TIMEOUT, log)
        .await
        .map(Some)
        .map_err(|why| StartError::Setting(format!("REDIS_SENTINELS: {why}")))
}
