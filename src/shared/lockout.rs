//! Lockouts of sources that keep failing authentication, shared by every replica: the wrong
//! keys of a source are counted in one Redis hash whichever replica saw them, so `threshold`
//! wrong keys lock a source out of the whole fleet, not `threshold` per replica. Only the `FAIL`
//! script changes a source's count, so two replicas counting at once cannot both miss the
//! threshold (a Lua script runs alone on Redis).
//!
//! The arithmetic is `security::table`'s, rewritten in Lua: the same window, the same doubling
//! to the cap, the same probation (`tests/lockout_redis.rs` checks the two agree over real
//! connections). The clock is the caller's (Unix milliseconds), like the quota scripts'.
//!
//! # Data model (`{ns}`: the namespace in braces, its hash tag: `{courier}`)
//!
//! - **`{ns}:lockout:<source>`**, a hash: `failures` (wrong keys in the current window),
//!   `window_end`, `strikes`, `until` (the lockout's end), `forget` (when the strikes are
//!   forgotten), all Unix milliseconds or counts; it expires when there is nothing left to
//!   remember.
//! - **`{ns}:lockouts`**, a sorted set: every source locked out, scored by its lockout's end.
//!   Replicas read it every second to refuse a source another replica locked out; it holds at
//!   most `COURIER_AUTH_LOCKOUT_SOURCES` members (the lockouts ending soonest are dropped first).

use std::sync::Arc;

use redis::Script;

use super::{Degraded, SharedRedis};

/// Counts a wrong key of a source and locks it out at the threshold or on probation.
///
/// KEYS: `[1]` the source's hash, `[2]` the lockouts set. ARGV: `[1]` now (ms), `[2]` the source,
/// `[3]` threshold, `[4]` window (ms), `[5]` base (ms), `[6]` max (ms), `[7]` most lockouts kept.
/// Answers `{locked, until, strikes, new}`: `new` is 1 when this wrong key began the lockout.
const FAIL: &str = r#"
local now = tonumber(ARGV[1])
local threshold, window = tonumber(ARGV[3]), tonumber(ARGV[4])
local base, max, keep = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local h = redis.call('HMGET', KEYS[1], 'failures', 'window_end', 'strikes', 'until', 'forget')
local failures = tonumber(h[1] or '0')
local window_end = tonumber(h[2] or '0')
local strikes = tonumber(h[3] or '0')
local until_ = tonumber(h[4] or '0')
local forget = tonumber(h[5] or '0')
if until_ > now then return {1, until_, strikes, 0} end
if strikes > 0 and now >= forget then strikes = 0 end
if now >= window_end then
  failures = 0
  window_end = now + window
end
failures = failures + 1
local new = 0
if failures >= threshold or strikes > 0 then
  strikes = strikes + 1
  local length = base
  for i = 2, strikes do
    if length >= max then break end
    length = length * 2
  end
  if length > max then length = max end
  until_ = now + length
  forget = until_ + max
  failures = 0
  new = 1
  redis.call('ZADD', KEYS[2], until_, ARGV[2])
  local over = redis.call('ZCARD', KEYS[2]) - keep
  if over > 0 then redis.call('ZPOPMIN', KEYS[2], over) end
end
redis.call('HSET', KEYS[1], 'failures', failures, 'window_end', window_end, 'strikes', strikes,
  'until', until_, 'forget', forget)
local last = window_end
if forget > last then last = forget end
redis.call('PEXPIREAT', KEYS[1], last)
return {new, until_, strikes, new}
"#;

/// Ends a source's lockout and forgets its strikes. KEYS: the source's hash, the lockouts set;
/// ARGV: the source, now (ms). Answers 1 when it was locked out.
const LIFT: &str = r#"
local until_ = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if until_ > tonumber(ARGV[2]) then return 1 end
return 0
"#;

/// What a wrong key came to in the shared table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failed {
    /// Whether the source is locked out now.
    pub locked: bool,
    /// When its lockout ends (Unix ms; meaningless unless locked).
    pub until_ms: i64,
    /// Its lockouts so far.
    pub strikes: u32,
    /// Whether this wrong key began the lockout.
    pub new: bool,
}

/// The settings the scripts apply, in milliseconds.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// Wrong keys in a window that lock a source out.
    pub threshold: u32,
    /// The window.
    pub window_ms: u64,
    /// The first lockout's length.
    pub base_ms: u64,
    /// The longest lockout.
    pub max_ms: u64,
    /// Lockouts the set keeps at most.
    pub keep: usize,
}

/// The shared lockouts in Redis.
pub struct SharedLockouts {
    redis: Arc<SharedRedis>,
    rules: Rules,
    fail: Script,
    lift: Script,
}

impl SharedLockouts {
    /// The shared lockouts on `redis`.
    pub fn new(redis: Arc<SharedRedis>, rules: Rules) -> SharedLockouts {
        SharedLockouts { redis, rules, fail: Script::new(FAIL), lift: Script::new(LIFT) }
    }

    /// Whether a call should be made now (Redis up, or due for another try).
    pub fn should_try(&self) -> bool {
        self.redis.should_try()
    }

    fn source_key(&self, source: &str) -> String {
        self.redis.key(&format!("lockout:{source}"))
    }

    fn set_key(&self) -> String {
        self.redis.key("lockouts")
    }

    /// Counts a wrong key of `source` at `now_ms`. (operation lockout_fail)
    pub async fn fail(&self, source: &str, now_ms: i64) -> Result<Failed, Degraded> {
        let rules = self.rules;
        let mut call = self.fail.prepare_invoke();
        call.key(self.source_key(source))
            .key(self.set_key())
            .arg(now_ms)
            .arg(source)
            .arg(rules.threshold.max(1))
            .arg(rules.window_ms)
            .arg(rules.base_ms)
            .arg(rules.max_ms)
            .arg(rules.keep.max(1));
        let (locked, until_ms, strikes, new): (i64, i64, u32, i64) =
            self.redis.run("lockout_fail", |mut conn| async move { call.invoke_async(&mut conn).await }).await?;
        Ok(Failed { locked: locked == 1, until_ms, strikes, new: new == 1 })
    }

    /// Ends `source`'s lockout and forgets its strikes; whether it was locked out. (lockout_lift)
    pub async fn lift(&self, source: &str, now_ms: i64) -> Result<bool, Degraded> {
        let mut call = self.lift.prepare_invoke();
        call.key(self.source_key(source)).key(self.set_key()).arg(source).arg(now_ms);
        let was: i64 =
            self.redis.run("lockout_lift", |mut conn| async move { call.invoke_async(&mut conn).await }).await?;
        Ok(was == 1)
    }

    /// Every source locked out at `now_ms` with its lockout's end (ms), at most `keep`; ended
    /// lockouts are dropped from the set on the way. (lockout_list)
    pub async fn list(&self, now_ms: i64) -> Result<Vec<(String, i64)>, Degraded> {
        let key = self.set_key();
        let keep = self.rules.keep.max(1);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(now_ms)
            .ignore()
            .cmd("ZRANGE")
            .arg(&key)
            .arg(0)
            .arg(keep - 1)
            .arg("WITHSCORES");
        let (listed,): (Vec<(String, f64)>,) =
            self.redis.run("lockout_list", |mut conn| async move { pipe.query_async(&mut conn).await }).await?;
        Ok(listed.into_iter().map(|(source, until)| (source, until as i64)).collect())
    }
}
