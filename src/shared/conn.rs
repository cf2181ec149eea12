//! One connection type for every deployment: a single Redis (a reconnecting multiplexed
//! [`ConnectionManager`]), a Redis Cluster (the redis crate's [`ClusterConnection`], which
//! learns the slot map, follows `MOVED` and `ASK`, and finds a new primary after a failover), or
//! the primary Sentinels name ([`FollowedConn`], which follows their failovers); the
//! long-lived ones wrapped in a [`RotatingConn`], replaced when the credentials are rotated.
//! Both run the same commands and scripts: every key carries courier's hash tag, so every
//! command and script goes to the one slot holding them all.

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value};

use super::follow::FollowedConn;
use super::rotating::RotatingConn;

/// A connection to Redis, single or cluster; cheap to clone (clones share the connection).
#[derive(Clone)]
pub enum RedisConn {
    /// One Redis, reconnecting by itself.
    Single(ConnectionManager),
    /// One plain multiplexed connection (for blocking reads on a connection of their own).
    Plain(MultiplexedConnection),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
    /// The primary that Sentinels name, followed across failovers.
    Followed(FollowedConn),
    /// One of the others, replaced by one with the new credentials after a rotation.
    Rotating(RotatingConn),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Plain(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
            RedisConn::Followed(c) => c.req_packed_command(cmd),
            RedisConn::Rotating(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Plain(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Followed(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Rotating(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Plain(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
            RedisConn::Followed(c) => c.get_db(),
            RedisConn::Rotating(c) => c.get_db(),
        }
    }
}

impl RedisConn {
    /// Runs a command that names no key (`SCAN`) where the keys of `key`'s slot live: on a
    /// single Redis, there; on a Cluster, on the primary of that slot.
    pub async fn query_beside<T: FromRedisValue>(&mut self, cmd: &Cmd, key: &str) -> RedisResult<T> {
        let mut conn = match self {
            RedisConn::Rotating(c) => c.current().await?,
            other => other.clone(),
        };
        match &mut conn {
            RedisConn::Cluster(c) => {
                let route = Route::new(slot(key), SlotAddr::Master);
                let value =
                    c.route_command(cmd, RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route))).await?;
                T::from_redis_value(&value)
            }
            other => cmd.query_async(other).await,
        }
    }
}

/// The Cluster slot of `key`: CRC16 (XMODEM) of its hash tag (or of the whole key without
/// one), modulo 16384, as Redis Cluster computes it.
pub fn slot(key: &str) -> u16 {
    let hashed = super::keys::hash_tag(key).unwrap_or(key);
    let mut crc: u16 = 0;
    for byte in hashed.bytes() {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc % 16384
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_the_clusters() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("bar"), 5061);
        assert_eq!(slot("{courier}:jobs"), slot("courier"));
        assert_eq!(slot("{courier}:cache:00"), slot("{courier}:budget:tat"));
    }
}
