//! A replicated Redis: how sure an accepted job must be (`COURIER_REDIS_MIN_REPLICAS`,
//! `COURIER_REDIS_WAIT_TIMEOUT`) and where the primary is (`REDIS_SENTINELS`,
//! `REDIS_SENTINEL_MASTER`). See docs/operations.md, "Redis failover".

use std::fmt;
use std::time::Duration;

use secrecy::SecretString;

use super::reader::Reader;

/// Every Redis call is bounded by 2 s; the wait for replicas must leave room for the calls
/// around it.
const WAIT_TIMEOUT_MAX: Duration = Duration::from_millis(1500);

const SENTINELS: &str = "host:port of each Sentinel, separated by commas, e.g. 10.0.0.5:26379,10.0.0.6:26379";

/// Settings of a replicated Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisHaConfig {
    /// Replicas that must hold a new job before it is accepted (0: the primary alone).
    pub min_replicas: u32,
    /// How long a submit waits for them before it answers 503.
    pub wait_timeout: Duration,
    /// `host:port` of each Sentinel; empty: `REDIS_URL` names the one Redis.
    pub sentinels: Vec<String>,
    /// The master name the Sentinels monitor (set when `sentinels` is not empty).
    pub sentinel_master: Option<String>,
    /// How to authenticate to the Sentinels (`REDIS_SENTINEL_PASSWORD` or `_FILE`,
    /// `REDIS_SENTINEL_USERNAME`); `None`: they ask for nothing.
    pub sentinel_auth: Option<SentinelAuth>,
    /// Whether the Sentinels are asked over TLS (`REDIS_SENTINEL_TLS`), with `REDIS_URL`'s
    /// (`rediss://`) CA and client certificate.
    pub sentinel_tls: bool,
}

/// The credentials Sentinels ask for (`requirepass`, or an ACL user on Sentinels): distinct
/// from the data nodes', which `REDIS_URL` gives.
#[derive(Clone)]
pub struct SentinelAuth {
    /// The ACL user; `None`: the default user (`requirepass`).
    pub username: Option<String>,
    /// The password: a secret.
    pub password: SecretString,
}

impl fmt::Debug for SentinelAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentinelAuth").field("username", &self.username).field("password", &"[REDACTED]").finish()
    }
}

impl PartialEq for SentinelAuth {
    fn eq(&self, other: &Self) -> bool {
        use secrecy::ExposeSecret;
        self.username == other.username && self.password.expose_secret() == other.password.expose_secret()
    }
}

impl Eq for SentinelAuth {}

impl RedisHaConfig {
    /// Reads the variables; `redis_url`: the scheme of `REDIS_URL` when it is set and valid;
    /// `cluster`: whether `REDIS_CLUSTER` is on (a Cluster fails over by itself).
    pub(super) fn read(r: &mut Reader<'_>, redis_url: Option<&str>, cluster: bool) -> RedisHaConfig {
        let min_replicas = r.count("COURIER_REDIS_MIN_REPLICAS", 0, 0..=100) as u32;
        let wait_timeout = r.seconds("COURIER_REDIS_WAIT_TIMEOUT", 0.5);
        if wait_timeout > WAIT_TIMEOUT_MAX {
            let problem =
                format!("{} s is above 1.5 s (every Redis call is bounded by 2 s)", wait_timeout.as_secs_f64());
            r.problem("COURIER_REDIS_WAIT_TIMEOUT", problem, "a number of seconds > 0, at most 1.5");
        }
        if min_replicas > 0 && redis_url.is_none() && !r.reported("REDIS_URL") {
            r.problem("COURIER_REDIS_MIN_REPLICAS", "is set without REDIS_URL", "0, or REDIS_URL set");
        }
        let sentinels = r.optional("REDIS_SENTINELS").map(|raw| sentinels(r, &raw)).unwrap_or_default();
        let sentinel_master = r.optional("REDIS_SENTINEL_MASTER");
        match (sentinels.is_empty(), &sentinel_master) {
            (false, None) => {
                r.problem("REDIS_SENTINEL_MASTER", "is not set", "the master name the Sentinels monitor, e.g. mymaster")
            }
            (true, Some(_)) if !r.reported("REDIS_SENTINELS") => {
                r.problem("REDIS_SENTINELS", "is not set, but REDIS_SENTINEL_MASTER is", SENTINELS)
            }
            _ => {}
        }
        if !sentinels.is_empty() && cluster {
            r.problem(
                "REDIS_SENTINELS",
                "is set with REDIS_CLUSTER=true",
                "one of them: a Cluster fails over by itself",
            );
        }
        if !sentinels.is_empty() {
            match redis_url {
                None if !r.reported("REDIS_URL") => r.problem(
                    "REDIS_URL",
                    "is not set, but REDIS_SENTINELS is",
                    "redis://[user:password@]any-host/[db]: with Sentinels it gives the credentials and database",
                ),
                Some("unix" | "redis+unix") => r.problem(
                    "REDIS_URL",
                    "is a socket path, but Sentinels name primaries by host and port",
                    "redis://[user:password@]any-host/[db] or rediss://…",
                ),
                _ => {}
            }
        }
        let sentinel_auth = sentinel_auth(r, !sentinels.is_empty());
        let sentinel_tls = sentinel_tls(r, !sentinels.is_empty(), redis_url);
        RedisHaConfig { min_replicas, wait_timeout, sentinels, sentinel_master, sentinel_auth, sentinel_tls }
    }
}

/// The Sentinels' credentials: a password (and perhaps a user), only with Sentinels.
fn sentinel_auth(r: &mut Reader<'_>, sentinels: bool) -> Option<SentinelAuth> {
    let username = r.optional("REDIS_SENTINEL_USERNAME");
    let password = r.optional_secret("REDIS_SENTINEL_PASSWORD").map(|(password, _)| password);
    const AUTH: &str = "the password Sentinels ask for (their requirepass, or the ACL user's), with REDIS_SENTINELS";
    match (&username, &password) {
        (_, Some(_)) if !sentinels => {
            r.problem("REDIS_SENTINEL_PASSWORD", "is set without REDIS_SENTINELS", AUTH);
            None
        }
        (Some(_), None) if !r.reported("REDIS_SENTINEL_PASSWORD") && !r.reported("REDIS_SENTINEL_PASSWORD_FILE") => {
            r.problem("REDIS_SENTINEL_USERNAME", "is set without REDIS_SENTINEL_PASSWORD", AUTH);
            None
        }
        _ => password.map(|password| SentinelAuth { username, password }),
    }
}

/// `REDIS_SENTINEL_TLS`: only with Sentinels, and with a `rediss://` `REDIS_URL`, whose CA
/// (`REDIS_CA_FILE`) and client certificate the Sentinels are asked with too.
fn sentinel_tls(r: &mut Reader<'_>, sentinels: bool, redis_url: Option<&str>) -> bool {
    const EXPECTED: &str = "true (the Sentinels serve TLS, trusted like REDIS_URL's rediss:// nodes) or false";
    let tls = r.parsed("REDIS_SENTINEL_TLS", false, EXPECTED, |s| s.to_ascii_lowercase().parse().ok());
    if tls && !sentinels {
        r.problem("REDIS_SENTINEL_TLS", "is true without REDIS_SENTINELS", EXPECTED);
    } else if tls && redis_url.is_some_and(|scheme| scheme != "rediss") {
        r.problem("REDIS_SENTINEL_TLS", "is true, but REDIS_URL is not rediss://", EXPECTED);
    }
    tls
}

/// The entries of `REDIS_SENTINELS`; a bad one is reported once, naming it.
fn sentinels(r: &mut Reader<'_>, raw: &str) -> Vec<String> {
    let entries: Vec<String> = raw.split(',').map(|e| e.trim().to_owned()).collect();
    for entry in &entries {
        let valid = entry.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && !host.contains(['/', '@', ' ']) && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !valid {
            r.problem("REDIS_SENTINELS", format!("{entry:?} is not host:port"), SENTINELS);
            return Vec::new();
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::super::{reader::FileValues, MapEnv};
    use super::*;

    fn read(pairs: &[(&str, &str)], redis_url: Option<&str>) -> Result<RedisHaConfig, String> {
        read_in(pairs, redis_url, false)
    }

    fn read_in(pairs: &[(&str, &str)], redis_url: Option<&str>, cluster: bool) -> Result<RedisHaConfig, String> {
        let env = MapEnv::new(pairs.iter().copied());
        let file = FileValues::default();
        let mut r = Reader::new(&env, &file);
        let config = RedisHaConfig::read(&mut r, redis_url, cluster);
        r.finish().map(|()| config).map_err(|e| e.to_string())
    }

    #[test]
    fn the_defaults_wait_for_no_replica_and_use_no_sentinel() {
        let config = read(&[], Some("redis")).unwrap();
        assert_eq!(config.min_replicas, 0);
        assert_eq!(config.wait_timeout, Duration::from_millis(500));
        assert!(config.sentinels.is_empty() && config.sentinel_master.is_none());
    }

    #[test]
    fn sentinels_may_ask_for_a_password_of_their_own_never_shown_and_serve_tls() {
        let sentinels = [("REDIS_SENTINELS", "127.0.0.1:26379"), ("REDIS_SENTINEL_MASTER", "m")];
        let with = |extra: &[(&'static str, &'static str)]| {
            read(&[&sentinels[..], extra].concat(), Some("redis")).map(|c| c.sentinel_auth)
        };
        assert_eq!(with(&[]).unwrap(), None);
        let auth = with(&[("REDIS_SENTINEL_PASSWORD", "s3cret"), ("REDIS_SENTINEL_USERNAME", "watcher")]).unwrap();
        let auth = auth.unwrap();
        assert_eq!(auth.username.as_deref(), Some("watcher"));
        assert!(!format!("{auth:?}").contains("s3cret"));
        let alone = with(&[("REDIS_SENTINEL_USERNAME", "watcher")]).unwrap_err();
        assert!(alone.starts_with("REDIS_SENTINEL_USERNAME: is set without REDIS_SENTINEL_PASSWORD"), "{alone}");
        let plain = with(&[("REDIS_SENTINEL_TLS", "true")]).unwrap_err();
        assert!(plain.starts_with("REDIS_SENTINEL_TLS: is true, but REDIS_URL is not rediss://"), "{plain}");
        let tls = read(&[sentinels[0], sentinels[1], ("REDIS_SENTINEL_TLS", "true")], Some("rediss")).unwrap();
        assert!(tls.sentinel_tls);
        let stray = read(&[("REDIS_SENTINEL_PASSWORD", "s3cret")], Some("redis")).unwrap_err();
        assert!(
            stray.starts_with("REDIS_SENTINEL_PASSWORD: is set without REDIS_SENTINELS") && !stray.contains("s3cret")
        );
    }

    #[test]
    fn sentinels_and_a_master_name_are_read_together() {
        let pairs = [("REDIS_SENTINELS", "10.0.0.5:26379, s2.internal:26380"), ("REDIS_SENTINEL_MASTER", "m")];
        let config = read(&pairs, Some("redis")).unwrap();
        assert_eq!(config.sentinels, ["10.0.0.5:26379", "s2.internal:26380"]);
        assert_eq!(config.sentinel_master.as_deref(), Some("m"));
    }

    #[test]
    fn every_bad_variable_is_named_once() {
        let pairs = [
            ("COURIER_REDIS_MIN_REPLICAS", "1"),
            ("COURIER_REDIS_WAIT_TIMEOUT", "3"),
            ("REDIS_SENTINELS", "10.0.0.5:26379,nohost"),
        ];
        let errors = read(&pairs, None).unwrap_err();
        assert!(errors.contains("COURIER_REDIS_WAIT_TIMEOUT: 3 s is above 1.5 s"), "{errors}");
        assert!(errors.contains("COURIER_REDIS_MIN_REPLICAS: is set without REDIS_URL"), "{errors}");
        assert!(errors.contains("REDIS_SENTINELS: \"nohost\" is not host:port"), "{errors}");
        assert_eq!(errors.lines().count(), 3, "{errors}");

        let errors = read(&[("REDIS_SENTINELS", "127.0.0.1:26379")], None).unwrap_err();
        assert!(errors.contains("REDIS_SENTINEL_MASTER: is not set"), "{errors}");
        assert!(errors.contains("REDIS_URL: is not set, but REDIS_SENTINELS is"), "{errors}");
        let errors = read(&[("REDIS_SENTINEL_MASTER", "m")], Some("redis")).unwrap_err();
        assert!(errors.contains("REDIS_SENTINELS: is not set, but REDIS_SENTINEL_MASTER is"), "{errors}");
        let pairs = [("REDIS_SENTINELS", "127.0.0.1:26379"), ("REDIS_SENTINEL_MASTER", "m")];
        let errors = read(&pairs, Some("unix")).unwrap_err();
        assert!(errors.contains("REDIS_URL: is a socket path"), "{errors}");
        let errors = read_in(&pairs, Some("redis"), true).unwrap_err();
        assert!(errors.contains("REDIS_SENTINELS: is set with REDIS_CLUSTER=true"), "{errors}");
    }
}
