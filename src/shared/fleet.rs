//! Fleet membership: how many replicas share this Redis, counted live, so that an autoscaler
//! may change their number while they run.
//!
//! One key, `{ns}:fleet`: a sorted set of replica ids, each scored by the time its heartbeat
//! expires, on Redis's clock (`TIME`, so replicas with drifting clocks agree). Every
//! [`HEARTBEAT_EVERY`] each replica runs one script that drops the expired ids, adds its own
//! for [`TTL`] more and counts the set ([`Membership::heartbeat`]). A replica that stops
//! gracefully removes itself at once ([`Membership::leave`]); one that dies or loses Redis
//! drops out of the count within [`TTL`].
//!
//! Why a count a second old is good enough: while Redis works, every replica takes its permits
//! from the one GCRA in Redis (`shared/budget.rs`), whatever the count; the count sizes only
//! the share a replica falls back to while Redis fails, and how long a queued request expects
//! to wait. A replica cut off from Redis keeps the last count it heard: the fleet as it was
//! when Redis was lost, which is the fleet whose shares must add up to the limit.
//! `docs/operations.md` says what a stale count costs.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::IntGauge;
use redis::Script;
use slog::{info, o, Logger};

use super::{Degraded, SharedRedis};
use crate::metrics::Metrics;

/// How often a replica renews its place in the fleet (and hears the count).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// How long a place lasts without renewal: a replica that stopped without leaving is out of
/// the count within this. Three heartbeats, so one slow or lost beat does not drop a replica.
pub const TTL: Duration = Duration::from_secs(3);

/// Longest host-name part of a replica id.
const HOST_MAX: usize = 40;

/// Renews `ARGV[1]` for `ARGV[2]` ms after dropping the expired ids; answers the count. The
/// key expires when the whole fleet has stopped beating.
const BEAT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return redis.call('ZCARD', KEYS[1])
"#;

/// The count as last heard, and when: lock-free, read by `/admin/state`.
#[derive(Debug)]
struct Heard {
    count: AtomicU32,
    base: Instant,
    /// Milliseconds since `base` of the last answer, plus 1 (0: no answer yet).
    at_ms: AtomicU64,
}

impl Heard {
    fn new(initial: u32) -> Heard {
        Heard { count: AtomicU32::new(initial.max(1)), base: Instant::now(), at_ms: AtomicU64::new(0) }
    }

    /// Notes a count heard at `now` (0 is taken as 1: this replica at least); returns the
    /// count before when it changed.
    fn record(&self, count: u32, now: Instant) -> Option<u32> {
        let count = count.max(1);
        let at = now.saturating_duration_since(self.base).as_millis() as u64 + 1;
        self.at_ms.fetch_max(at, Ordering::Relaxed);
        let before = self.count.swap(count, Ordering::Relaxed);
        (before != count).then_some(before)
    }

    fn count(&self) -> u32 {
        self.count.load(Ordering::Relaxed)
    }

    /// Time since the last answer at `now`; `None` before the first.
    fn ago(&self, now: Instant) -> Option<Duration> {
        let at = self.at_ms.load(Ordering::Relaxed).checked_sub(1)?;
        Some(now.saturating_duration_since(self.base).saturating_sub(Duration::from_millis(at)))
    }
}

/// This replica's place in the fleet, and the fleet's size as last heard.
pub struct Membership {
    redis: Arc<SharedRedis>,
    key: String,
    id: String,
    beat: Script,
    heard: Heard,
    gauge: IntGauge,
    log: Logger,
}

impl Membership {
    /// A replica of a fleet assumed to have `initial` replicas (`COURIER_REPLICAS`) until the
    /// first heartbeat answers. Sends nothing yet.
    pub fn new(redis: Arc<SharedRedis>, initial: u32, metrics: &Metrics, log: &Logger) -> Membership {
        let id = replica_id(&host_name(), rand::random::<u64>());
        metrics.fleet_replicas.set(i64::from(initial.max(1)));
        Membership {
            key: redis.key("fleet"),
            redis,
            log: log.new(o!("component" => "fleet", "replica" => id.clone())),
            id,
            beat: Script::new(BEAT),
            heard: Heard::new(initial),
            gauge: metrics.fleet_replicas.clone(),
        }
    }

    /// This replica's id: its host name (at most 40 characters) and 64 random bits in hex.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The fleet's size as last heard (`COURIER_REPLICAS` before the first answer).
    pub fn replicas(&self) -> u32 {
        self.heard.count()
    }

    /// Time since the last heartbeat answered; `None` before the first.
    pub fn last_seen_ago(&self) -> Option<Duration> {
        self.heard.ago(Instant::now())
    }

    /// Renews this replica's place and returns the fleet's size, this replica included. A
    /// failure is counted and degrades the replica like any shared-state call; the count
    /// heard before stays in force.
    pub async fn heartbeat(&self) -> Result<u32, Degraded> {
        let ttl_ms = TTL.as_millis() as u64;
        let count: u32 = self
            .redis
            .run("fleet_heartbeat", |mut conn| async move {
                self.beat.key(&self.key).arg(&self.id).arg(ttl_ms).invoke_async(&mut conn).await
            })
            .await?;
        self.size_heard(count);
        Ok(self.heard.count())
    }

    /// Leaves the fleet at once (a graceful stop): the others count one less at their next
    /// heartbeat, not after [`TTL`].
    pub async fn leave(&self) -> Result<(), Degraded> {
        let _: i64 = self
            .redis
            .run("fleet_leave", |mut conn| async move {
                redis::cmd("ZREM").arg(&self.key).arg(&self.id).query_async(&mut conn).await
            })
            .await?;
        Ok(())
    }

    /// The one place a heard count is exported and a change logged.
    fn size_heard(&self, count: u32) {
        let changed = self.heard.record(count, Instant::now());
        self.gauge.set(i64::from(self.heard.count()));
        if let Some(from) = changed {
            info!(self.log, "fleet_size_changed"; "from" => from, "to" => self.heard.count());
        }
    }
}

/// The host name (from the kernel, else `HOSTNAME`), or `courier`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default()
}

/// `host-<16 hex digits>`: the host name kept to letters, digits, `.`, `_` and `-`, at most
/// [`HOST_MAX`] of them (`courier` when none is left).
fn replica_id(host: &str, random: u64) -> String {
    let host: String =
        host.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')).take(HOST_MAX).collect();
    let host = if host.is_empty() { "courier" } else { host.as_str() };
    format!("{host}-{random:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_count_is_noted_with_its_time_and_a_change_is_told_once() {
        let heard = Heard::new(3);
        let t0 = heard.base;
        assert_eq!((heard.count(), heard.ago(t0 + 500 * MS)), (3, None), "COURIER_REPLICAS until an answer");
        assert_eq!(heard.record(2, t0 + 100 * MS), Some(3));
        assert_eq!(heard.record(2, t0 + 1100 * MS), None, "the same count again is no change");
        assert_eq!(heard.ago(t0 + 1600 * MS), Some(500 * MS));
        assert_eq!(heard.record(5, t0 + 2100 * MS), Some(2));
        assert_eq!(heard.count(), 5);
        assert_eq!(heard.record(0, t0 + 3100 * MS), Some(5), "an empty fleet still has this replica");
        assert_eq!(heard.count(), 1);
        assert_eq!(Heard::new(0).count(), 1);
    }

    #[test]
    fn a_replica_id_is_a_bounded_host_name_and_64_random_bits() {
        assert_eq!(replica_id("web-7.example\n", 0xab), "web-7.example-00000000000000ab");
        assert_eq!(replica_id(" \n", 1), "courier-0000000000000001");
        assert_eq!(replica_id("pod:{x} y", u64::MAX), "podxy-ffffffffffffffff");
        let long = replica_id(&"h".repeat(300), 7);
        assert_eq!(long.len(), HOST_MAX + 17, "{long}");
    }
}
