//! The Lua scripts of the Redis store. Each runs atomically on the server: no other command
//! runs between its reads and its writes, which is what makes submit all-or-nothing and the
//! state changes compare-and-set.
//!
//! No script decodes or re-encodes JSON (cjson would turn `[]` into `{}` and round large
//! numbers in the upstream's `result`); documents are built by serde in Rust and scripts
//! only compare the `state` and `ver` fields.

use redis::Script;

/// Stores a new job and queues it, only if its key is absent and the queue has room; with a
/// hold token, the job is held until its submit confirms it (see `durable`).
///
/// KEYS: job key, stream. ARGV: state, doc, ttl (ms), stream max length, request id, and
/// optionally a hold token. Returns 1 when stored and queued (or already stored under this
/// hold token: a submit tried again), 0 when the job exists, -1 when the queue is full, -2 when
/// the job exists and another submit holds it, waiting for replicas.
const SUBMIT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  local held = redis.call('HGET', KEYS[1], 'held')
  if held and held == ARGV[6] then return 1 end
  if held then return -2 end
  return 0
end
if redis.call('XLEN', KEYS[2]) >= tonumber(ARGV[4]) then return -1 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'doc', ARGV[2], 'ver', 0)
if ARGV[6] then redis.call('HSET', KEYS[1], 'held', ARGV[6]) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'id', ARGV[5])
return 1
";

/// Stores a status entry only if its key is absent; no stream entry. Sent as plain `EVAL`
/// in pipelines (pipelines do not reload a script the server forgot).
///
/// KEYS: job key. ARGV: state, doc, ttl (ms). Returns 1 when stored, 0 when the key exists.
pub(super) const RECORD: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'doc', ARGV[2], 'ver', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

/// Replaces a job's state and document if its version is the one read (optimistic
/// compare-and-set); bumps the version and ends a hold (a runner that starts a held job has
/// waited the hold out). The key's expiry is kept (HSET does not touch it).
///
/// KEYS: job key. ARGV: expected version, state, doc. Returns 1 when written, 0 when the
/// version changed, -1 when the job is gone.
const REPLACE_IF_VERSION: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local ver = redis.call('HGET', KEYS[1], 'ver') or ''
if ver ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'doc', ARGV[3])
redis.call('HDEL', KEYS[1], 'held')
redis.call('HINCRBY', KEYS[1], 'ver', 1)
return 1
";

/// Ends the hold of a job whose replicas acknowledged it, if this submit still holds it.
///
/// KEYS: job key. ARGV: hold token. Returns 1 when confirmed, 0 when not held by this token.
const CONFIRM: &str = r"
if redis.call('HGET', KEYS[1], 'held') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'held')
return 1
";

/// Deletes a job whose replicas did not acknowledge it, if this submit still holds it (then
/// no runner has started it). Its stream entry stays: the runner that reads it finds no job
/// and acknowledges it.
///
/// KEYS: job key. ARGV: hold token. Returns 1 when withdrawn, 0 when there is no such job, 2
/// when the job is not held by this token any more (a runner started it).
const WITHDRAW: &str = r"
if redis.call('HGET', KEYS[1], 'held') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
if redis.call('EXISTS', KEYS[1]) == 1 then return 2 end
return 0
";

/// Saves a final state, only if the stored state is `processing`; bumps the version.
///
/// KEYS: job key. ARGV: state, doc. Returns 1 when written, 0 otherwise.
const FINISH: &str = r"
if redis.call('HGET', KEYS[1], 'state') ~= 'processing' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'doc', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'ver', 1)
return 1
";

/// Resets the idle time of the given entries, but only of those this consumer still owns:
/// an entry another runner took over is not taken back.
///
/// KEYS: stream. ARGV: group, consumer, entry ids... Returns how many leases were renewed.
const HEARTBEAT: &str = r"
local renewed = 0
for i = 3, #ARGV do
  local owned = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if owned[1] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    renewed = renewed + 1
  end
end
return renewed
";

/// The scripts, hashed once.
pub(super) struct Scripts {
    pub(super) submit: Script,
    pub(super) replace_if_version: Script,
    pub(super) finish: Script,
    pub(super) heartbeat: Script,
    pub(super) confirm: Script,
    pub(super) withdraw: Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        Scripts {
            submit: Script::new(SUBMIT),
            replace_if_version: Script::new(REPLACE_IF_VERSION),
            finish: Script::new(FINISH),
            heartbeat: Script::new(HEARTBEAT),
            confirm: Script::new(CONFIRM),
            withdraw: Script::new(WITHDRAW),
        }
    }
}
