//! The names of courier's Redis keys: every one is `{ns}:…`, the namespace (`courier`) in
//! braces. The braces are a Redis Cluster *hash tag*: only the part inside them picks the
//! slot, so every key courier writes lives in one slot, and every Lua script and multi-key
//! command (the quota's windows, a job's document and the queue) stays within one slot as
//! Cluster requires. On a single Redis the braces are just characters.
//!
//! Versions before the tag wrote `courier:…`. Their keys are not read any more; what that
//! costs on an upgrade is said in docs/operations.md ("Redis in production"). Queued jobs are
//! the one loss that matters, so a start finding the old queue non-empty says so.

use super::RedisConn;

/// The key `suffix` in `namespace`: `{namespace}:suffix`.
pub fn key_in(namespace: &str, suffix: &str) -> String {
    format!("{{{namespace}}}:{suffix}")
}

/// The hash tag of a key: the text between its first `{` and the next `}`, when not empty
/// (the rule Redis Cluster applies).
pub fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = key[open + 1..].find('}')?;
    Some(&key[open + 1..open + 1 + close]).filter(|tag| !tag.is_empty())
}

/// How many jobs an older version left queued under its untagged names (`{ns}:jobs` without
/// braces), if any and if this user may read them: they are not run by this version.
pub async fn legacy_queue(conn: &RedisConn, namespace: &str) -> Option<u64> {
    let stream = format!("{namespace}:jobs");
    let queued: redis::RedisResult<u64> = redis::cmd("XLEN").arg(stream).query_async(&mut conn.clone()).await;
    queued.ok().filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_carries_the_namespace_as_its_hash_tag() {
        let suffixes =
            ["budget:tat", "token", "token:lock", "cache:00ff", "quota:day:1700000000000", "jobs", "job:r-1"];
        for suffix in suffixes {
            let key = key_in("courier", suffix);
            assert_eq!(hash_tag(&key), Some("courier"), "{key}");
            assert!(key.ends_with(suffix), "{key}");
        }
    }

    #[test]
    fn the_hash_tag_follows_the_cluster_rule() {
        assert_eq!(hash_tag("{courier}:jobs"), Some("courier"));
        assert_eq!(hash_tag("courier:jobs"), None);
        assert_eq!(hash_tag("{}:x{y}"), None, "an empty first tag hashes the whole key");
        assert_eq!(hash_tag("a{b}{c}"), Some("b"));
    }
}
