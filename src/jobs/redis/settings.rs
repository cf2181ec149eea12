//! How the Redis store is set up.

use std::time::Duration;

/// How the Redis store is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisSettings {
    /// Prefix of every key (default `courier`).
    pub namespace: String,
    /// This process's consumer name in the group; unique per process
    /// (default [`default_consumer_name`]).
    pub consumer: String,
    /// A claimed job not heartbeated for this long may be taken over by another runner
    /// (default 30 s). Runners must heartbeat well within it (a third of it, say).
    pub lease: Duration,
    /// How long job documents are kept after they are written (default 24 h). It must exceed
    /// the longest a job may wait, run and retry its callback: a queued job whose document
    /// expired is dropped.
    pub job_ttl: Duration,
    /// The bound of every store call; a call that takes longer is `Unavailable`
    /// (default 2 s). `next` may take its `wait` on top.
    pub op_timeout: Duration,
    /// Most jobs queued and not yet acknowledged; `submit` answers `Full` beyond
    /// (default 100 000).
    pub stream_max_len: usize,
    /// Most `record`ed entries waiting to be written; more are dropped and counted
    /// (default 10 000).
    pub record_queue: usize,
    /// Runs of a job that may end with their process before it is failed with
    /// `job_run_interrupted` instead of being taken over again (default 2).
    pub max_runs: u32,
    /// Replicas that must acknowledge a new job (`WAIT`) before it is accepted; 0 (the
    /// default): accepted once the primary stored it. See `durable`.
    pub min_replicas: u32,
    /// How long a submit waits for those acknowledgements (default 500 ms), below
    /// `op_timeout` when `min_replicas` is set. Runners use it too: they leave a job whose submit is still waiting alone
    /// for up to `wait_timeout + op_timeout`, so set it alike on every replica.
    pub wait_timeout: Duration,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            namespace: "courier".into(),
            consumer: default_consumer_name(),
            lease: Duration::from_secs(30),
            job_ttl: Duration::from_secs(24 * 3600),
            op_timeout: Duration::from_secs(2),
            stream_max_len: 100_000,
            record_queue: 10_000,
            max_runs: 2,
            min_replicas: 0,
            wait_timeout: Duration::from_millis(500),
        }
    }
}

impl RedisSettings {
    /// The first setting that cannot work, if any.
    pub(super) fn problem(&self) -> Option<&'static str> {
        if self.namespace.is_empty() {
            Some("namespace is empty")
        } else if self.consumer.is_empty() {
            Some("consumer name is empty")
        } else if self.lease.as_millis() == 0 {
            Some("lease is under 1 ms")
        } else if self.job_ttl.as_millis() == 0 {
            Some("job TTL is under 1 ms")
        } else if self.op_timeout.is_zero() {
            Some("operation timeout is zero")
        } else if self.stream_max_len == 0 {
            Some("stream max length is zero")
        } else if self.record_queue == 0 {
            Some("record queue length is zero")
        } else if self.max_runs == 0 {
            Some("max runs is zero")
        } else if self.min_replicas > 0 && (self.wait_timeout.as_millis() == 0 || self.wait_timeout >= self.op_timeout)
        {
            Some("the replica wait timeout is not between 1 ms and the operation timeout")
        } else {
            None
        }
    }
}

/// A consumer name unique to this process: `hostname-pid-random`.
pub fn default_consumer_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().replace(|c: char| c.is_whitespace(), "_"))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "courier".into());
    format!("{host}-{}-{:08x}", std::process::id(), rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_settings_work_and_bad_ones_are_named() {
        assert_eq!(RedisSettings::default().problem(), None);
        let bad = RedisSettings { lease: Duration::from_micros(10), ..RedisSettings::default() };
        assert_eq!(bad.problem(), Some("lease is under 1 ms"));
        let bad = RedisSettings { stream_max_len: 0, ..RedisSettings::default() };
        assert_eq!(bad.problem(), Some("stream max length is zero"));
        let bad = RedisSettings { max_runs: 0, ..RedisSettings::default() };
        assert_eq!(bad.problem(), Some("max runs is zero"));
        let bad = RedisSettings { min_replicas: 1, wait_timeout: Duration::from_secs(2), ..RedisSettings::default() };
        assert_eq!(bad.problem(), Some("the replica wait timeout is not between 1 ms and the operation timeout"));
    }

    #[test]
    fn consumer_names_differ_per_call_and_carry_the_pid() {
        let (a, b) = (default_consumer_name(), default_consumer_name());
        assert_ne!(a, b);
        assert!(a.contains(&format!("-{}-", std::process::id())), "{a}");
        assert!(!a.contains(char::is_whitespace), "{a}");
    }
}
