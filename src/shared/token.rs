//! The Redis side of the upstream token shared by several courier replicas.
//!
//! Why share it: every replica holding its own token asks the token endpoint once per token
//! lifetime *each*, and once more each after a revocation, so N replicas cost N token
//! requests where one would do, and all N tend to ask at the same moment (same TTL, same
//! revocation). With the token in Redis, one replica asks and the others read its answer:
//! one token request per lifetime and per revocation, however many replicas run.
//!
//! Three keys in courier's namespace (`{ns}` below: the namespace in braces, `{courier}`):
//!
//! | key | holds |
//! |---|---|
//! | `{ns}:token` | the current token: JSON `{"access_token", "expires_at_unix_ms", "generation"}`, expiring with the token (`PX`) |
//! | `{ns}:token:generation` | the generation counter (`INCR`), so generations compare across replicas |
//! | `{ns}:token:lock` | a random owner id while one replica fetches (`SET NX PX`), so the others wait instead of stampeding the endpoint |
//!
//! Every call goes through [`SharedRedis`]: bounded by its timeout, and refused at once
//! while shared state is degraded. The TokenManager treats any [`Degraded`] as "fetch on
//! your own", so a dead Redis costs what running without it costs (one token request per
//! replica per refresh), never an error.
//! The lock expires by itself, so a replica that dies holding it delays the others by at
//! most its TTL; the document is only replaced by a newer generation, so a late writer cannot
//! bring back an older token. The generation counter has no expiry, and a replica lifts it
//! above every generation it has seen, so generations stay monotonic even after Redis lost
//! its data.
//!
//! Expiry is wall-clock time (`expires_at_unix_ms`) because replicas share no monotonic
//! clock: keep their clocks synchronised (NTP). A skew shorter than the refresh margin (5% of
//! the lifetime, at most a minute) only moves refreshes; a longer one can make a replica use
//! a token past its expiry, which the upstream answers with 401 and courier treats as a
//! rejection.
//!
//! **Security:** the access token is stored in Redis in clear, because every replica must be
//! able to send it. Whoever can read that Redis can call the upstream as courier until the
//! token expires: protect it like the OAuth client secret (`requirepass`/ACLs, `rediss://`,
//! a private network, no `MONITOR` or `SLOWLOG` access for others, since both show command
//! arguments). courier never puts the token in a log line, an error or a `Debug` output.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Script;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::{Degraded, SharedRedis};

/// Writes the document only if no document of the same or a newer generation is there.
///
/// KEYS: document. ARGV: document, its generation, milliseconds until it expires.
/// Returns 1 when written, 0 when a newer (or equal) generation is stored.
const PUBLISH: &str = r"
local current = redis.call('GET', KEYS[1])
if current then
  local ok, doc = pcall(cjson.decode, current)
  if ok and type(doc) == 'table' and tonumber(doc.generation)
     and tonumber(doc.generation) >= tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
";

/// Increments the generation counter, lifting it above `floor` first when it is not already
/// (after Redis lost its data, or while replicas counted on their own during an outage).
///
/// KEYS: counter. ARGV: floor. Returns the new generation.
const NEXT_GENERATION: &str = r"
local generation = redis.call('INCR', KEYS[1])
local floor = tonumber(ARGV[1])
if generation <= floor then
  generation = floor + 1
  redis.call('SET', KEYS[1], string.format('%d', generation))
end
return generation
";

/// Deletes the lock only if it still holds this owner's id (it may have expired and been
/// taken by another replica meanwhile).
///
/// KEYS: lock. ARGV: owner. Returns 1 when released.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A token as the replicas share it. Its `Debug` never shows the token.
pub struct SharedToken {
    /// The access token.
    pub access_token: SecretString,
    /// When it stops being valid, in Unix milliseconds.
    pub expires_at_unix_ms: u64,
    /// Its generation, from the shared counter.
    pub generation: u64,
}

impl SharedToken {
    /// How long it is still valid at `now_unix_ms` (zero once expired).
    pub fn remaining(&self, now_unix_ms: u64) -> Duration {
        Duration::from_millis(self.expires_at_unix_ms.saturating_sub(now_unix_ms))
    }

    fn to_json(&self) -> String {
        let doc = DocOut {
            access_token: self.access_token.expose_secret(),
            expires_at_unix_ms: self.expires_at_unix_ms,
            generation: self.generation,
        };
        serde_json::to_string(&doc).expect("a document of strings and integers serializes")
    }

    /// Parses a stored document; `None` when it is not one (treated like no document).
    fn from_json(text: &str) -> Option<SharedToken> {
        // A flat document: anything nested is not one of ours.
        crate::json::check_depth(text.as_bytes(), 1).ok()?;
        let doc: DocIn = serde_json::from_str(text).ok()?;
        if doc.access_token.is_empty() {
            return None;
        }
        Some(SharedToken {
            access_token: SecretString::from(doc.access_token),
            expires_at_unix_ms: doc.expires_at_unix_ms,
            generation: doc.generation,
        })
    }
}

impl fmt::Debug for SharedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedToken")
            .field("access_token", &"[REDACTED]")
            .field("expires_at_unix_ms", &self.expires_at_unix_ms)
            .field("generation", &self.generation)
            .finish()
    }
}

/// The document as written (borrows the secret only for the write). No `Debug`.
#[derive(Serialize)]
struct DocOut<'a> {
    access_token: &'a str,
    expires_at_unix_ms: u64,
    generation: u64,
}

/// The document as read. No `Debug`.
#[derive(Deserialize)]
struct DocIn {
    access_token: String,
    expires_at_unix_ms: u64,
    generation: u64,
}

/// Proof of holding the refresh lock: the random id written into it.
pub struct RefreshLock {
    owner: String,
}

/// The shared token's keys and scripts, over one [`SharedRedis`].
pub struct SharedTokens {
    redis: Arc<SharedRedis>,
    doc_key: String,
    generation_key: String,
    lock_key: String,
    publish: Script,
    next_generation: Script,
    release: Script,
}

impl SharedTokens {
    /// The shared token in `redis`'s namespace.
    pub fn new(redis: Arc<SharedRedis>) -> SharedTokens {
        SharedTokens {
            doc_key: redis.key("token"),
            generation_key: redis.key("token:generation"),
            lock_key: redis.key("token:lock"),
            redis,
            publish: Script::new(PUBLISH),
            next_generation: Script::new(NEXT_GENERATION),
            release: Script::new(RELEASE),
        }
    }

    /// The stored token, if there is one (a document that does not parse counts as none).
    pub async fn read(&self) -> Result<Option<SharedToken>, Degraded> {
        let key = &self.doc_key;
        let text: Option<String> = self
            .redis
            .run("token_read", |mut conn| async move { redis::cmd("GET").arg(key).query_async(&mut conn).await })
            .await?;
        Ok(text.as_deref().and_then(SharedToken::from_json))
    }

    /// Takes the refresh lock for `ttl` if nobody holds it; `None` when another replica does.
    pub async fn try_lock(&self, ttl: Duration) -> Result<Option<RefreshLock>, Degraded> {
        let owner = format!("{:032x}", rand::random::<u128>());
        let (key, value) = (&self.lock_key, &owner);
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let reply: Option<String> = self
            .redis
            .run("token_lock", |mut conn| async move {
                redis::cmd("SET").arg(key).arg(value).arg("NX").arg("PX").arg(ttl_ms).query_async(&mut conn).await
            })
            .await?;
        Ok(reply.map(|_| RefreshLock { owner }))
    }

    /// Releases the lock if it is still ours; true when it was.
    pub async fn release(&self, lock: RefreshLock) -> Result<bool, Degraded> {
        let mut invocation = self.release.key(&self.lock_key);
        invocation.arg(&lock.owner);
        let released: i64 =
            self.redis.run("token_unlock", |mut conn| async move { invocation.invoke_async(&mut conn).await }).await?;
        Ok(released == 1)
    }

    /// A new generation, greater than `floor` (the highest this replica has seen).
    pub async fn next_generation(&self, floor: u64) -> Result<u64, Degraded> {
        let mut invocation = self.next_generation.key(&self.generation_key);
        invocation.arg(floor);
        self.redis.run("token_generation", |mut conn| async move { invocation.invoke_async(&mut conn).await }).await
    }

    /// Stores `token` for the other replicas until it expires. Returns false when it was not
    /// stored: it has already expired, or a newer generation is there.
    pub async fn publish(&self, token: &SharedToken) -> Result<bool, Degraded> {
        let ttl_ms = token.expires_at_unix_ms.saturating_sub(unix_ms_now());
        if ttl_ms == 0 {
            return Ok(false);
        }
        let mut invocation = self.publish.key(&self.doc_key);
        invocation.arg(token.to_json()).arg(token.generation).arg(ttl_ms);
        let written: i64 =
            self.redis.run("token_write", |mut conn| async move { invocation.invoke_async(&mut conn).await }).await?;
        Ok(written == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(secret: &str) -> SharedToken {
        SharedToken { access_token: SecretString::from(secret), expires_at_unix_ms: 1_700_000_000_000, generation: 7 }
    }

    #[test]
    fn the_document_round_trips_in_the_agreed_shape() {
        let json = token("abc.def").to_json();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"access_token": "abc.def", "expires_at_unix_ms": 1_700_000_000_000u64, "generation": 7})
        );
        let back = SharedToken::from_json(&json).unwrap();
        assert_eq!(back.access_token.expose_secret(), "abc.def");
        assert_eq!((back.expires_at_unix_ms, back.generation), (1_700_000_000_000, 7));
    }

    #[test]
    fn unusable_documents_count_as_none() {
        assert!(SharedToken::from_json("not json").is_none());
        assert!(SharedToken::from_json(r#"{"access_token": "", "expires_at_unix_ms": 1, "generation": 1}"#).is_none());
        assert!(SharedToken::from_json(r#"{"access_token": "x", "generation": 1}"#).is_none());
    }

    #[test]
    fn debug_never_shows_the_token() {
        let shown = format!("{:?}", token("very-secret-token"));
        assert!(!shown.contains("very-secret-token"), "{shown}");
        assert!(shown.contains("generation: 7"));
    }

    #[test]
    fn remaining_is_zero_once_expired() {
        let t = token("x");
        assert_eq!(t.remaining(t.expires_at_unix_ms - 250), Duration::from_millis(250));
        assert_eq!(t.remaining(t.expires_at_unix_ms + 1), Duration::ZERO);
    }
}
