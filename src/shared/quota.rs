//! Quota windows shared by every replica: the counts of each window instance live in one Redis
//! hash, and only the `RESERVE` script takes counts from it, so N replicas reserving at the
//! same time never take more than a window's limit between them (a Lua script runs alone on
//! Redis: its reads and writes cannot interleave with another replica's).
//!
//! The script decides with the allocation formula of `actors::quota::alloc`, rewritten in Lua
//! on Redis's data: it must answer exactly what [`crate::actors::quota::alloc::available`]
//! answers (`tests/quota_redis.rs` runs both on `alloc::table()`). For that:
//!
//! - fractions travel as the shortest decimal that parses back to the same `f64` (Rust's
//!   `{:?}`), so `math.floor(fraction * limit)` in Lua floors the same double as `alloc::part`;
//! - counts travel as integers; Lua's numbers are doubles, exact for every count below 2^53
//!   (and Lua 5.1 writes a number back to Redis with 14 significant digits: counts stay below
//!   10^14, far above any upstream's quota).
//!
//! The window instance (its key and expiry) is chosen by the caller with its own clock: the
//! calendar arithmetic of days and months does not belong in Lua.
//!
//! # Data model (`{ns}`: the shared-state namespace in braces, its hash tag: `{courier}`)
//!
//! **`{ns}:quota:{window}:{start_ms}`** is a hash: `total` (every count of the instance,
//! unattributed ones included) and `c:<client>` (the counts of each client), expiring at the
//! `expire_at_ms` the caller gives (`PEXPIREAT`).

use std::collections::HashMap;
use std::sync::Arc;

use redis::{ErrorKind, RedisError, Script};

use super::{Degraded, SharedRedis};

/// Takes up to `want` counts for one client in every window, atomically, or none.
///
/// KEYS: the window instances. ARGV: `[1]` `1` when the counts are the client's, `0` when
/// unattributed; `[2]` the client; `[3]` its max fraction; `[4]` want; `[5]` n, the number of
/// reserved clients; then n pairs (name, reserved fraction); then per key (limit, hold cap,
/// expire at ms). Answers `{k, {totals after}, '', -1}` or `{0, {}, reason, window index}`.
const RESERVE: &str = r#"
local attributed = ARGV[1] == '1'
local client = ARGV[2]
local max_frac = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local names, fracs = {}, {}
for i = 1, n do
  names[i] = ARGV[4 + 2 * i]
  fracs[i] = tonumber(ARGV[5 + 2 * i])
end
local base = 5 + 2 * n

-- alloc::part: floor(fraction * limit), never below 0, on the same doubles as Rust.
local function part(fraction, limit)
  local p = math.floor(fraction * limit)
  if p < 0 then p = 0 end
  return p
end

local function count(key, field)
  return tonumber(redis.call('HGET', key, field) or '0')
end

-- alloc::available per window, in its order of checks; k is the min over windows. The first
-- window that refuses ends the script before anything is written.
local k = want
for w = 1, #KEYS do
  local key = KEYS[w]
  local limit = tonumber(ARGV[base + 3 * w - 2])
  local hold_cap = tonumber(ARGV[base + 3 * w - 1])
  -- L - U: nothing left at all.
  local free = limit - count(key, 'total')
  if free <= 0 then return {0, {}, 'window_spent', w - 1} end
  -- held_d = min(max(R_d - u_d, 0), H) for every reserved client but the asking one.
  local held = 0
  for i = 1, n do
    if not (attributed and names[i] == client) then
      local h = part(fracs[i], limit) - count(key, 'c:' .. names[i])
      if h < 0 then h = 0 end
      if h > hold_cap then h = hold_cap end
      held = held + h
    end
  end
  -- M_c - u_c for a client; an unattributed count has no cap of its own.
  local own = free
  if attributed then
    own = part(max_frac, limit) - count(key, 'c:' .. client)
    if own <= 0 then return {0, {}, 'client_max', w - 1} end
  end
  -- What is free once the others' reservations are held.
  free = free - held
  if free <= 0 then return {0, {}, 'reserved', w - 1} end
  if own < k then k = own end
  if free < k then k = free end
end

-- Every window allows k: count it in each (total, and the client's), and set the expiry.
local totals = {}
for w = 1, #KEYS do
  local key = KEYS[w]
  if k > 0 then
    totals[w] = redis.call('HINCRBY', key, 'total', k)
    if attributed then redis.call('HINCRBY', key, 'c:' .. client, k) end
    redis.call('PEXPIREAT', key, ARGV[base + 3 * w])
  else
    totals[w] = count(key, 'total')
  end
end
return {k, totals, '', -1}
"#;

/// Gives `ARGV[1]` counts back on every key, to `total` and (when `ARGV[2]` is `1`) to the
/// client `ARGV[3]`, never below 0. A key that is gone (its window expired) is left gone:
/// writing to it would bring it back without an expiry.
const RELEASE: &str = r#"
local k = tonumber(ARGV[1])
local fields = {'total'}
if ARGV[2] == '1' then fields[2] = 'c:' .. ARGV[3] end
for _, key in ipairs(KEYS) do
  for _, field in ipairs(fields) do
    local v = tonumber(redis.call('HGET', key, field) or '0')
    if v > 0 then
      local left = v - k
      if left < 0 then left = 0 end
      redis.call('HSET', key, field, left)
    end
  end
end
return 0
"#;

/// Sets `total` to `ARGV[1]`, expiring at `ARGV[2]`; answers the total before.
const SET: &str = r#"
local before = tonumber(redis.call('HGET', KEYS[1], 'total') or '0')
redis.call('HSET', KEYS[1], 'total', ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return before
"#;

/// Raises `total` to at least `ARGV[1]` (never lowers it), expiring at `ARGV[2]`; answers the
/// total after.
const ADOPT: &str = r#"
local total = tonumber(redis.call('HGET', KEYS[1], 'total') or '0')
local at_least = tonumber(ARGV[1])
if at_least > total then
  redis.call('HSET', KEYS[1], 'total', ARGV[1])
  total = at_least
end
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return total
"#;

/// Why a count was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaReason {
    /// The window's limit is reached.
    WindowSpent,
    /// The client used its `quota_max`.
    ClientMax,
    /// What is left is held for other clients' `quota_reserved`.
    Reserved,
    /// The store (Redis, the state file) cannot count now and this replica holds no counts.
    Unavailable,
}

impl QuotaReason {
    /// Every reason, in the order of the `courier_quota_refusals_total{reason}` label values.
    pub const ALL: [QuotaReason; 4] =
        [QuotaReason::WindowSpent, QuotaReason::ClientMax, QuotaReason::Reserved, QuotaReason::Unavailable];

    /// The metric label, and the code the Lua script returns.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaReason::WindowSpent => "window_spent",
            QuotaReason::ClientMax => "client_max",
            QuotaReason::Reserved => "reserved",
            QuotaReason::Unavailable => "unavailable",
        }
    }

    /// The reason named by [`QuotaReason::as_str`].
    pub fn parse(name: &str) -> Option<QuotaReason> {
        QuotaReason::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

/// One window instance a reservation counts in.
#[derive(Clone, Debug)]
pub struct WindowArgs {
    /// The instance's hash ([`SharedQuota::key`]).
    pub key: String,
    /// The window's (effective) limit.
    pub limit: u64,
    /// `H` of the allocation formula: what one client could still spend before the reset.
    pub hold_cap: u64,
    /// When Redis drops the instance, in Unix milliseconds.
    pub expire_at_ms: i64,
}

/// A reservation: `want` counts for `client` (None: unattributed, counted in `total` only) in every window of `windows`.
pub struct Reserve<'a> {
    /// The window instances the counts are taken from, all or none. (With none, nothing
    /// limits the take: `want` is granted and nothing is written.)
    pub windows: &'a [WindowArgs],
    /// The client the counts are for; `None` for unattributed counts (a breaker probe, a
    /// count the upstream reported).
    pub client: Option<&'a str>,
    /// The client's quota_max fraction (ignored when unattributed).
    pub max: f64,
    /// Every active client with quota_reserved > 0: (name, fraction). The asking client may be among them.
    pub reserved: &'a [(&'a str, f64)],
    /// The most counts to take; 0 takes nothing (and is refused only where 1 would be).
    pub want: u64,
}

/// What the script decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reserved {
    /// `k` ≥ 1 counts taken in every window (0 only when `want` was 0); `totals[i]` is window
    /// i's total after the take.
    Granted {
        /// Counts taken in every window.
        k: u64,
        /// Each window's `total` after the take, in the order of `windows`.
        totals: Vec<u64>,
    },
    /// Nothing taken; why, and in which window (index into `windows`).
    Refused {
        /// Why the first window that refused did.
        reason: QuotaReason,
        /// Its index in `windows`.
        window: usize,
    },
}

/// The quota windows' counts in Redis, changed only by this type's scripts.
pub struct SharedQuota {
    redis: Arc<SharedRedis>,
    reserve: Script,
    release: Script,
    set: Script,
    adopt: Script,
}

/// A fraction as the shortest decimal that reads back as the same `f64` (in Lua too).
fn fraction(f: f64) -> String {
    format!("{f:?}")
}

/// An answer of a script that this build does not understand (a script of another version).
fn unexpected(what: &'static str) -> RedisError {
    RedisError::from((ErrorKind::TypeError, what))
}

impl SharedQuota {
    /// The quota store on `redis`.
    pub fn new(redis: Arc<SharedRedis>) -> SharedQuota {
        SharedQuota {
            redis,
            reserve: Script::new(RESERVE),
            release: Script::new(RELEASE),
            set: Script::new(SET),
            adopt: Script::new(ADOPT),
        }
    }

    /// The hash key of one window instance: the shared prefix + `quota:{window}:{start_ms}`.
    pub fn key(&self, window: &str, start_ms: i64) -> String {
        self.redis.key(&format!("quota:{window}:{start_ms}"))
    }

    /// Reserves atomically: k = min(want, min over windows of alloc::available(...)); if k = 0 refuses with the first window's reason; else HINCRBY `total` by k and (attributed) `c:<client>` by k on every key, PEXPIREAT each key at its expire_at_ms. (operation quota_reserve)
    pub async fn reserve(&self, r: &Reserve<'_>) -> Result<Reserved, Degraded> {
        let mut call = self.reserve.prepare_invoke();
        for w in r.windows {
            call.key(&w.key);
        }
        call.arg(u8::from(r.client.is_some()))
            .arg(r.client.unwrap_or(""))
            .arg(fraction(r.max))
            .arg(r.want)
            .arg(r.reserved.len());
        for (name, reserved) in r.reserved {
            call.arg(*name).arg(fraction(*reserved));
        }
        for w in r.windows {
            call.arg(w.limit).arg(w.hold_cap).arg(w.expire_at_ms);
        }
        self.redis
            .run("quota_reserve", |mut conn| async move {
                let (k, totals, reason, window): (u64, Vec<u64>, String, i64) = call.invoke_async(&mut conn).await?;
                if reason.is_empty() {
                    return Ok(Reserved::Granted { k, totals });
                }
                let reason = QuotaReason::parse(&reason).ok_or_else(|| unexpected("unknown quota refusal"))?;
                let window = usize::try_from(window).map_err(|_| unexpected("negative quota window"))?;
                Ok(Reserved::Refused { reason, window })
            })
            .await
    }

    /// Gives k unspent counts back on every key (never below 0), `total` and `c:<client>`. (quota_release)
    pub async fn release(&self, keys: &[String], client: Option<&str>, k: u64) -> Result<(), Degraded> {
        let mut call = self.release.prepare_invoke();
        for key in keys {
            call.key(key);
        }
        call.arg(k).arg(u8::from(client.is_some())).arg(client.unwrap_or(""));
        let _: i64 =
            self.redis.run("quota_release", |mut conn| async move { call.invoke_async(&mut conn).await }).await?;
        Ok(())
    }

    /// Sets `total` of one instance to `used` (admin reconciliation); returns the total before. (quota_set)
    pub async fn set_total(&self, key: &str, used: u64, expire_at_ms: i64) -> Result<u64, Degraded> {
        self.redis
            .run("quota_set", |mut conn| async move {
                self.set.key(key).arg(used).arg(expire_at_ms).invoke_async(&mut conn).await
            })
            .await
    }

    /// Raises `total` to at least `at_least` (the upstream reported more use); returns the total after. (quota_adopt)
    pub async fn adopt(&self, key: &str, at_least: u64, expire_at_ms: i64) -> Result<u64, Degraded> {
        self.redis
            .run("quota_adopt", |mut conn| async move {
                self.adopt.key(key).arg(at_least).arg(expire_at_ms).invoke_async(&mut conn).await
            })
            .await
    }

    /// HGETALL of each key as numbers (field names as stored: "total", "c:<client>"); a missing key is an empty map. (quota_read)
    ///
    /// The keys are read in one transaction: the windows of one answer are seen at one moment.
    pub async fn read(&self, keys: &[String]) -> Result<Vec<HashMap<String, u64>>, Degraded> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for key in keys {
            pipe.hgetall(key);
        }
        self.redis.run("quota_read", |mut conn| async move { pipe.query_async(&mut conn).await }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_read_back_as_the_same_double() {
        let tricky = [0.3, 0.1 + 0.2, 1.0 - f64::EPSILON / 2.0, 1e-7, 2.0 / 3.0, 0.0, 1.0];
        for f in tricky {
            assert_eq!(fraction(f).parse::<f64>().unwrap().to_bits(), f.to_bits(), "{f:?}");
        }
    }
}
