//! Configuration: environment variables (the spec's `EXTERNAL_API_*` names plus `COURIER_*`),
//! an optional TOML file, and secrets read from `*_FILE` paths.
//!
//! Every setting is read through [`Reader`], which records a problem and keeps going, so a
//! misconfigured deployment learns about *every* bad variable in one start, one line each
//! (`VARIABLE: problem (expected: form)`), instead of fixing them one restart at a time.
//! A setting is never silently left at its default by mistake: a key in the file that names no
//! setting is an error (with the closest name), and so is a variable set to nothing.
//! The environment is read through the small [`Env`] trait so tests pass a map instead of
//! mutating the process environment. Secrets are held in [`SecretString`] and never printed:
//! `Debug` of [`Config`] shows `[REDACTED]` in their place.

mod admin;
mod clients;
mod errors;
mod limits;
mod listener_tls;
mod pem;
mod quota;
mod reader;
mod redis_ha;
mod redis_tls;
mod sections;
mod security;
mod tls_names;
mod tracing;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use secrecy::SecretString;

pub use admin::{admin_listen, admin_tls_cert, is_loopback, token_fingerprint, token_problem, AdminConfig, AdminToken};
pub use clients::{key_sha256_hex, ClientEntry, Clients};
pub use errors::{ConfigError, ConfigErrors};
pub use limits::{LimitsConfig, PARSER_MAX_HEAD_BYTES};
pub use listener_tls::{ClientAuth, ListenerTls, LoadedTls, ServerTls, TlsExpiry, TlsFiles, TlsProblem, TlsVars};
pub use pem::load_ca_file;
pub use quota::{Pacing, QuotaConfig, QuotaSpec, WindowKind};
pub use reader::{read_secret_file, redis_url_problem, Env, Layered, MapEnv, ProcessEnv};
use reader::{FileValues, Reader};
pub use redis_ha::{RedisHaConfig, SentinelAuth};
pub use redis_tls::{RedisClientCert, RedisTls};
pub use sections::{BreakerConfig, JobsConfig};
pub use security::{LockoutConfig, SecurityConfig, SpendConfig};
pub use tls_names::{PeerNames, TlsName};
pub use tracing::{SamplerChoice, TracingConfig};

/// Where a secret came from, kept so that a reload can read it again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// The variable itself held the value.
    Inline,
    /// The value was read from this file (`<VAR>_FILE`).
    File(PathBuf),
}

/// courier's whole configuration, validated.
#[derive(Clone)]
pub struct Config {
    /// Upstream base URL without a trailing slash, e.g. `https://api.example.com/v2`.
    pub base_url: String,
    /// OAuth2 token endpoint (default: base URL + `/oauth/token`).
    pub token_url: String,
    /// PEM file of extra CA certificates trusted for the upstream (`EXTERNAL_API_CA_FILE`).
    pub api_ca_file: Option<PathBuf>,
    /// The certificates of `api_ca_file`, read and checked at start-up (empty without it).
    pub api_ca: Vec<CertificateDer<'static>>,
    /// Upstream API key, sent as `X-API-Key`.
    pub api_key: SecretString,
    /// Where the API key came from.
    pub api_key_source: SecretSource,
    /// OAuth2 client id.
    pub client_id: String,
    /// OAuth2 client secret.
    pub client_secret: SecretString,
    /// Where the client secret came from.
    pub client_secret_source: SecretSource,
    /// Timeout of one upstream attempt (head and body).
    pub attempt_timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Base of the exponential backoff between retries.
    pub retry_delay: Duration,
    /// Upper bound of one backoff sleep.
    pub retry_max_delay: Duration,
    /// Lifetime of a cached answer.
    pub cache_ttl: Duration,
    /// Upstream requests per minute.
    pub rate_limit_per_minute: u32,
    /// Redis URL for shared state, when set (it may hold the ACL user's password).
    pub redis_url: Option<SecretString>,
    /// Where the Redis URL came from (`REDIS_URL_FILE`: a reload reads it again).
    pub redis_url_source: SecretSource,
    /// A replicated Redis: replicas a job must reach, Sentinels that name the primary.
    pub redis_ha: RedisHaConfig,
    /// TLS material for a `rediss://` Redis URL (`REDIS_CA_FILE`, `REDIS_CLIENT_*_FILE`).
    pub redis_tls: RedisTls,
    /// Whether the Redis URL names a node of a Redis Cluster (`REDIS_CLUSTER`).
    pub redis_cluster: bool,
    /// Address of the gateway listener.
    pub listen: SocketAddr,
    /// Address of the admin listener (/metrics, /healthz, /readyz).
    pub admin_listen: SocketAddr,
    /// Client identities; `None` runs courier open.
    pub clients: Option<Clients>,
    /// Path of the clients file, when set.
    pub clients_file: Option<PathBuf>,
    /// How often the `*_FILE` secrets and the clients file are checked for changes (zero:
    /// only on SIGHUP).
    pub secret_poll_interval: Duration,
    /// Minimum log level.
    pub log_level: slog::Level,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Largest accepted upstream response body.
    pub upstream_max_body_bytes: usize,
    /// Default overall deadline of a request when the client sends no `X-Request-Timeout`.
    pub request_deadline: Duration,
    /// Time in-flight requests get to finish on SIGTERM.
    pub shutdown_grace: Duration,
    /// HTTP worker threads of the gateway listener.
    pub workers: usize,
    /// Whether retry backoff is randomised (full jitter); off only in tests.
    pub retry_jitter: bool,
    /// Upstream attempts the budget lets through at once.
    pub rate_burst: u32,
    /// Most requests waiting for a budget permit.
    pub queue_max: usize,
    /// Circuit breaker thresholds.
    pub breaker: BreakerConfig,
    /// Retries may add at most this fraction of recent first attempts.
    pub retry_budget_ratio: f64,
    /// Retries allowed per second regardless of the ratio.
    pub retry_budget_min_per_second: f64,
    /// Most bytes the response cache keeps.
    pub cache_max_bytes: u64,
    /// How long past its TTL an answer may replace an error (zero: never).
    pub cache_stale_if_error: Duration,
    /// How long past its TTL an answer is served while it is refreshed (zero: never).
    pub cache_stale_while_revalidate: Duration,
    /// Job and callback settings.
    pub jobs: JobsConfig,
    /// Replicas sharing the upstream budget, assumed until the fleet's first heartbeat in
    /// Redis answers (then the live count replaces it); optional, default 1.
    pub replicas: u32,
    /// Limits of the gateway listener.
    pub limits: LimitsConfig,
    /// The admin token (`COURIER_ADMIN_TOKEN` / `_FILE`).
    pub admin: AdminConfig,
    /// Traces: the `OTEL_*` variables (off without an endpoint).
    pub tracing: TracingConfig,
    /// Quota windows, pacing and where counts are kept (`EXTERNAL_API_QUOTAS` and others).
    pub quota: QuotaConfig,
    /// Lockouts of sources that keep failing authentication; the spending baseline.
    pub security: SecurityConfig,
    /// TLS on the gateway and admin listeners (`COURIER_TLS_*`, `COURIER_ADMIN_TLS_*`).
    pub tls: ServerTls,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const REDACTED: &str = "[REDACTED]";
        f.debug_struct("Config")
            .field("base_url", &self.base_url)
            .field("token_url", &self.token_url)
            .field("api_ca_file", &self.api_ca_file)
            .field("api_key", &REDACTED)
            .field("client_id", &self.client_id)
            .field("client_secret", &REDACTED)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("max_retries", &self.max_retries)
            .field("retry_delay", &self.retry_delay)
            .field("retry_max_delay", &self.retry_max_delay)
            .field("cache_ttl", &self.cache_ttl)
            .field("rate_limit_per_minute", &self.rate_limit_per_minute)
            .field("redis_url", &self.redis_url.as_ref().map(|_| REDACTED))
            .field("redis_ha", &self.redis_ha)
            .field("redis_tls", &self.redis_tls)
            .field("redis_cluster", &self.redis_cluster)
            .field("listen", &self.listen)
            .field("admin_listen", &self.admin_listen)
            .field("clients", &self.clients)
            .field("secret_poll_interval", &self.secret_poll_interval)
            .field("log_level", &self.log_level)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("upstream_max_body_bytes", &self.upstream_max_body_bytes)
            .field("request_deadline", &self.request_deadline)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("workers", &self.workers)
            .field("retry_jitter", &self.retry_jitter)
            .field("rate_burst", &self.rate_burst)
            .field("queue_max", &self.queue_max)
            .field("breaker", &self.breaker)
            .field("retry_budget_ratio", &self.retry_budget_ratio)
            .field("retry_budget_min_per_second", &self.retry_budget_min_per_second)
            .field("cache_max_bytes", &self.cache_max_bytes)
            .field("cache_stale_if_error", &self.cache_stale_if_error)
            .field("cache_stale_while_revalidate", &self.cache_stale_while_revalidate)
            .field("jobs", &self.jobs)
            .field("replicas", &self.replicas)
            .field("limits", &self.limits)
            .field("admin", &self.admin)
            .field("tracing", &self.tracing)
            .field("quota", &self.quota)
            .field("security", &self.security)
            .field("tls", &self.tls)
            .finish()
    }
}

impl Config {
    /// Reads the configuration from the process environment and an optional TOML file
    /// (keys are the variable names; the environment wins).
    pub fn load(file: Option<&std::path::Path>) -> Result<Config, ConfigErrors> {
        Self::from_sources(&ProcessEnv, file)
    }

    /// Reads the configuration from `env` and an optional TOML file.
    pub fn from_sources(env: &dyn Env, file: Option<&std::path::Path>) -> Result<Config, ConfigErrors> {
        let file_values = match file {
            Some(path) => FileValues::read(path).map_err(|e| ConfigErrors(vec![e]))?,
            None => FileValues::default(),
        };
        let mut r = Reader::new(env, &file_values);
        let config = Self::read(&mut r);
        r.finish().map(|()| config)
    }

    fn read(r: &mut Reader<'_>) -> Config {
        let base_url = r.url("EXTERNAL_API_BASE_URL", None).unwrap_or_default();
        // Without a valid base URL there is no default to report on twice.
        let token_url = match (base_url.is_empty(), r.optional("EXTERNAL_OAUTH_TOKEN_URL")) {
            (true, None) => String::new(),
            (_, explicit) => {
                let default = explicit.unwrap_or_else(|| format!("{base_url}/oauth/token"));
                r.url("EXTERNAL_OAUTH_TOKEN_URL", Some(default)).unwrap_or_default()
            }
        };
        let (api_ca_file, api_ca) = ca_file(r, "EXTERNAL_API_CA_FILE");
        let (api_key, api_key_source) = r.secret("EXTERNAL_API_KEY");
        let client_id = r.required("EXTERNAL_OAUTH_CLIENT_ID", "a non-empty OAuth2 client id");
        let (client_secret, client_secret_source) = r.secret("EXTERNAL_OAUTH_CLIENT_SECRET");
        let attempt_timeout = r.seconds("EXTERNAL_API_TIMEOUT", 30.0);
        let max_retries = r.count("EXTERNAL_API_MAX_RETRIES", 3, 0..=20);
        let retry_delay = r.seconds_or_zero("EXTERNAL_API_RETRY_DELAY", 1.0);
        let retry_max_delay = r.seconds("COURIER_RETRY_MAX_DELAY", 20.0);
        let cache_ttl = r.seconds_or_zero("EXTERNAL_API_CACHE_TTL", 300.0);
        let rate_limit_per_minute = r.count("EXTERNAL_API_RATE_LIMIT", 1000, 1..=10_000_000);
        let (redis_url, redis_url_source) = r.optional_secret_url("REDIS_URL").unzip();
        let redis_url_source = redis_url_source.unwrap_or(SecretSource::Inline);
        let scheme = redis_url.as_ref().and_then(|url| secrecy::ExposeSecret::expose_secret(url).split_once(':'));
        let redis_tls = RedisTls::read(r, redis_url.as_ref());
        let redis_cluster = RedisTls::read_cluster(r, redis_url.as_ref());
        let redis_ha = RedisHaConfig::read(r, scheme.map(|(scheme, _)| scheme), redis_cluster);
        let listen = r.addr("COURIER_LISTEN", "127.0.0.1:8080");
        let admin_listen = r.addr("COURIER_ADMIN_LISTEN", "127.0.0.1:9090");
        let admin = AdminConfig::read(r, admin_listen);
        let clients_file = r.optional("COURIER_CLIENTS_FILE").map(PathBuf::from);
        let clients = clients_file.as_deref().and_then(|path| match Clients::load(path) {
            Ok(clients) => Some(clients),
            Err(problem) => {
                r.problem("COURIER_CLIENTS_FILE", problem, clients::EXPECTED);
                None
            }
        });
        let secret_poll_interval = r.seconds_or_zero("COURIER_SECRET_POLL_INTERVAL", 5.0);
        let log_level = r.parsed(
            "COURIER_LOG_LEVEL",
            slog::Level::Info,
            "one of trace, debug, info, warning, error, critical",
            parse_level,
        );
        let max_body_bytes = r.count("COURIER_MAX_BODY_BYTES", 1 << 20, 1..=(1 << 30)) as usize;
        let upstream_max_body_bytes = r.count("COURIER_UPSTREAM_MAX_BODY_BYTES", 8 << 20, 1..=(1 << 30)) as usize;
        let request_deadline = r.seconds("COURIER_REQUEST_DEADLINE", 30.0);
        let shutdown_grace = r.seconds("COURIER_SHUTDOWN_GRACE", 30.0);
        let default_workers = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
        let workers = r.count("COURIER_WORKERS", default_workers, 1..=1024) as usize;
        let retry_jitter = r.parsed("COURIER_RETRY_JITTER", true, "true or false", |s| s.parse().ok());
        let rate_burst = r.count("EXTERNAL_API_RATE_BURST", 5, 1..=1_000_000) as u32;
        let queue_max = r.count("COURIER_QUEUE_MAX", 1000, 0..=1_000_000) as usize;
        let breaker = BreakerConfig {
            consecutive_failures: r.count("COURIER_BREAKER_FAILURES", 5, 1..=1_000_000) as u32,
            failure_rate: r.fraction("COURIER_BREAKER_FAILURE_RATE", 0.5, false),
            window: Duration::from_secs(r.count("COURIER_BREAKER_WINDOW", 30, 1..=3600)),
            min_requests: r.count("COURIER_BREAKER_MIN_REQUESTS", 20, 1..=1_000_000) as u32,
            open: r.seconds("COURIER_BREAKER_OPEN", 5.0),
            open_max: r.seconds("COURIER_BREAKER_OPEN_MAX", 60.0),
            probes: r.count("COURIER_BREAKER_PROBES", 3, 1..=1000) as u32,
            probe_interval: r.seconds("COURIER_BREAKER_PROBE_INTERVAL", 1.0),
        };
        if breaker.open_max < breaker.open {
            r.problem("COURIER_BREAKER_OPEN_MAX", "is below COURIER_BREAKER_OPEN", "seconds >= COURIER_BREAKER_OPEN");
        }
        let cache_max_bytes = r.count("COURIER_CACHE_MAX_BYTES", 64 << 20, 1024..=(1 << 40));
        let cache_stale_if_error = r.seconds_or_zero("COURIER_CACHE_STALE_IF_ERROR", 0.0);
        let cache_stale_while_revalidate = r.seconds_or_zero("COURIER_CACHE_SWR", 0.0);
        let (callback_secret, callback_secret_source) = match r.optional_secret("COURIER_CALLBACK_SECRET") {
            Some((secret, source)) => (Some(secret), source),
            None => (None, SecretSource::Inline),
        };
        let (callback_ca_file, callback_ca) = ca_file(r, "COURIER_CALLBACK_CA_FILE");
        let jobs = JobsConfig {
            deadline: r.seconds("COURIER_JOB_DEADLINE", 600.0),
            ttl: r.seconds("COURIER_JOB_TTL", 86_400.0),
            max: r.count("COURIER_JOB_MAX", 100_000, 1..=100_000_000) as usize,
            concurrency: r.count("COURIER_JOB_CONCURRENCY", 64, 1..=100_000) as usize,
            lease: r.seconds("COURIER_JOB_LEASE", 30.0),
            max_runs: r.count("COURIER_JOB_MAX_RUNS", 2, 1..=1000) as u32,
            callback_secret,
            callback_secret_source,
            callback_max_attempts: r.count("COURIER_CALLBACK_MAX_ATTEMPTS", 5, 1..=100) as u32,
            callback_retry_delay: r.seconds("COURIER_CALLBACK_RETRY_DELAY", 1.0),
            callback_timeout: r.seconds("COURIER_CALLBACK_TIMEOUT", 10.0),
            callback_allow: r.optional("COURIER_CALLBACK_ALLOW").unwrap_or_default(),
            callback_ca_file,
            callback_ca,
        };
        let replicas = r.count("COURIER_REPLICAS", 1, 1..=10_000) as u32;
        let limits = LimitsConfig::read(r);
        let retry_budget_ratio = r.fraction("COURIER_RETRY_BUDGET_RATIO", 0.2, true);
        let retry_budget_min_per_second = r.parsed(
            "COURIER_RETRY_BUDGET_MIN_PER_SECOND",
            1.0,
            "a number of retries per second >= 0, e.g. 1 or 0.5",
            |s| s.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0 && *v <= 1e6),
        );
        let tracing = TracingConfig::read(r);
        let quota = QuotaConfig::read(r, redis_url.is_some());
        let security = SecurityConfig::read(r);
        let tls = ServerTls::read(r);
        Config {
            base_url,
            token_url,
            api_ca_file,
            api_ca,
            api_key,
            api_key_source,
            client_id,
            client_secret,
            client_secret_source,
            attempt_timeout,
            max_retries: max_retries as u32,
            retry_delay,
            retry_max_delay,
            cache_ttl,
            rate_limit_per_minute: rate_limit_per_minute as u32,
            redis_url,
            redis_url_source,
            redis_ha,
            redis_tls,
            redis_cluster,
            listen,
            admin_listen,
            clients,
            clients_file,
            secret_poll_interval,
            log_level,
            max_body_bytes,
            upstream_max_body_bytes,
            request_deadline,
            shutdown_grace,
            workers,
            retry_jitter,
            rate_burst,
            queue_max,
            breaker,
            retry_budget_ratio,
            retry_budget_min_per_second,
            cache_max_bytes,
            cache_stale_if_error,
            cache_stale_while_revalidate,
            jobs,
            replicas,
            limits,
            admin,
            tracing,
            quota,
            security,
            tls,
        }
    }
}

/// An optional PEM file of extra CA certificates named by `var`: its path and its certificates,
/// read and checked now (a problem is reported like any other bad setting).
fn ca_file(r: &mut Reader<'_>, var: &'static str) -> (Option<PathBuf>, Vec<CertificateDer<'static>>) {
    let path = r.optional(var).map(PathBuf::from);
    let certs = match path.as_deref().map(pem::load_ca_file) {
        None => Vec::new(),
        Some(Ok(certs)) => certs,
        Some(Err(problem)) => {
            r.problem(var, problem, "a readable PEM file of CA certificates");
            Vec::new()
        }
    };
    (path, certs)
}

fn parse_level(s: &str) -> Option<slog::Level> {
    match s.to_ascii_lowercase().as_str() {
        "trace" => Some(slog::Level::Trace),
        "debug" => Some(slog::Level::Debug),
        "info" => Some(slog::Level::Info),
        "warn" | "warning" => Some(slog::Level::Warning),
        "error" => Some(slog::Level::Error),
        "critical" | "crit" => Some(slog::Level::Critical),
        _ => None,
    }
}

/// A valid minimal environment plus `pairs` (tests of every config part start from it).
#[cfg(test)]
pub(crate) fn test_env(pairs: &[(&str, &str)]) -> MapEnv {
    let mut env = MapEnv::new([
        ("EXTERNAL_API_BASE_URL", "http://127.0.0.1:1/v2/"),
        ("EXTERNAL_API_KEY", "key-123456"),
        ("EXTERNAL_OAUTH_CLIENT_ID", "client"),
        ("EXTERNAL_OAUTH_CLIENT_SECRET", "secret-abcdef"),
    ]);
    for (name, value) in pairs {
        env.set(*name, *value);
    }
    env
}

#[cfg(test)]
mod quota_tests;
#[cfg(test)]
mod redis_tls_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tracing_tests;
