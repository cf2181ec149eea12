//! The upstream rate budget shared by every replica: one GCRA in Redis, changed only by Lua
//! scripts, on Redis's own clock (`TIME`), so replicas with drifting clocks still share one
//! rate.
//!
//! Why this keeps the global bound without a round trip per request: a replica asks Redis
//! only for permits it is about to use: the waiters of its queue (several at once when
//! several wait: one round trip for a batch), or the one request that found no permit in its
//! small local pool. Over-budget requests are refused locally from the last answer's "next
//! permit in …", cache hits need no permit, and pauses learned from the upstream (429,
//! `X-RateLimit-Remaining: 0`) are written to the shared GCRA so every replica holds back.
//! Permits are leased only for immediate use (a pooled surplus expires within one emission
//! interval), so the emissions of all replicas together follow the shared GCRA, shifted by at
//! most that interval and the Redis round trip.
//!
//! This file is the Redis side only; when a replica asks and what it does with a grant is
//! `actors/budget/lease.rs`.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use super::{Degraded, SharedRedis};

/// Takes up to `ARGV[3]` permits now; answers `{granted, µs until the next permit}`.
/// Without a stored state (a fresh or restarted Redis), or with `ARGV[4] == 1` (this replica
/// was on its own while Redis failed, and the upstream's bucket may be spent), it starts with
/// no burst: one permit now, then the rate.
const ACQUIRE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local emission, tolerance, want, drain = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local stored = redis.call('GET', KEYS[1])
local tat = tonumber(stored or '0')
if stored == false or drain == 1 then
  if tat < now + tolerance then tat = now + tolerance end
end
if tat < now then tat = now end
local granted = 0
while granted < want and tat - now <= tolerance do
  tat = tat + emission
  granted = granted + 1
end
redis.call('SET', KEYS[1], tostring(tat), 'PX', math.floor((tat - now) / 1000) + 60000)
local wait = 0
if tat - now > tolerance then wait = tat - tolerance - now end
return {granted, wait}
"#;

/// Holds every permit back for `ARGV[2]` µs from now (a 429's `Retry-After`).
const PAUSE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tolerance, wait = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local target = now + wait + tolerance
if target > tat then
  redis.call('SET', KEYS[1], tostring(target), 'PX', math.floor((target - now) / 1000) + 60000)
  return 1
end
return 0
"#;

/// Leaves at most `ARGV[3]` permits available now (`X-RateLimit-Remaining`).
const CAP: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local emission, tolerance, remaining = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local target = now + tolerance + emission - remaining * emission
if target > tat then
  redis.call('SET', KEYS[1], tostring(target), 'PX', math.floor((target - now) / 1000) + 60000)
  return 1
end
return 0
"#;

/// Permits granted by one call, and the time until the next one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Permits taken, to be used now.
    pub granted: u32,
    /// Time until another permit is free.
    pub next_in: Duration,
}

/// The shared GCRA.
pub struct SharedRate {
    redis: Arc<SharedRedis>,
    key: String,
    emission_us: u64,
    /// The interval in force: `emission_us`, or longer while quota pacing slows the fleet.
    paced_us: std::sync::atomic::AtomicU64,
    tolerance_us: u64,
    acquire: Script,
    pause: Script,
    cap: Script,
}

impl SharedRate {
    /// The shared rate of `per_minute` with bursts of `burst` (the whole fleet's).
    pub fn new(redis: Arc<SharedRedis>, per_minute: u32, burst: u32) -> SharedRate {
        let emission_us = 60_000_000 / u64::from(per_minute.max(1));
        SharedRate {
            key: redis.key("budget:tat"),
            redis,
            emission_us,
            paced_us: std::sync::atomic::AtomicU64::new(emission_us),
            tolerance_us: emission_us * u64::from(burst.max(1) - 1),
            acquire: Script::new(ACQUIRE),
            pause: Script::new(PAUSE),
            cap: Script::new(CAP),
        }
    }

    /// Paces the fleet: permits at most every `interval` (`None`: the configured rate); the
    /// burst stays the rate's.
    pub fn set_pace(&self, interval: Option<Duration>) {
        let paced = interval.map_or(0, |d| d.as_micros().min(u128::from(u64::MAX)) as u64);
        self.paced_us.store(paced.max(self.emission_us), std::sync::atomic::Ordering::Relaxed);
    }

    /// The connection (for its health).
    pub fn redis(&self) -> &SharedRedis {
        &self.redis
    }

    /// Takes up to `want` permits now; with `drain`, first spends any burst (after this
    /// replica ran on its own, the upstream's bucket may be empty).
    pub async fn acquire(&self, want: u32, drain: bool) -> Result<Grant, Degraded> {
        let (granted, wait_us): (u32, u64) = self
            .redis
            .run("budget_acquire", |mut conn| async move {
                self.acquire
                    .key(&self.key)
                    .arg(self.paced_us.load(std::sync::atomic::Ordering::Relaxed))
                    .arg(self.tolerance_us)
                    .arg(want)
                    .arg(u8::from(drain))
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(Grant { granted, next_in: Duration::from_micros(wait_us) })
    }

    /// Holds every replica's permits back for `wait`.
    pub async fn pause(&self, wait: Duration) -> Result<(), Degraded> {
        let wait_us = wait.as_micros() as u64;
        let _: i64 = self
            .redis
            .run("budget_pause", |mut conn| async move {
                self.pause.key(&self.key).arg(self.tolerance_us).arg(wait_us).invoke_async(&mut conn).await
            })
            .await?;
        Ok(())
    }

    /// Leaves at most `remaining` permits for all replicas.
    pub async fn cap(&self, remaining: u64) -> Result<(), Degraded> {
        let _: i64 = self
            .redis
            .run("budget_cap", |mut conn| async move {
                self.cap
                    .key(&self.key)
                    .arg(self.emission_us)
                    .arg(self.tolerance_us)
                    .arg(remaining)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(())
    }
}
