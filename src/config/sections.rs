//! Settings grouped by the part of courier they configure.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use secrecy::SecretString;

use super::SecretSource;

/// Async job and callback settings.
#[derive(Clone)]
pub struct JobsConfig {
    /// How long after acceptance a job must be over.
    pub deadline: Duration,
    /// How long job and status entries are kept.
    pub ttl: Duration,
    /// Most entries the in-process store keeps.
    pub max: usize,
    /// Jobs run at once by this process.
    pub concurrency: usize,
    /// A job whose runner has not shown signs of life for this long is taken over (Redis).
    pub lease: Duration,
    /// Runs of a job that may end with their process before it is failed with
    /// `job_run_interrupted` instead of being taken over again (Redis).
    pub max_runs: u32,
    /// Key of the HMAC signature on callbacks; callbacks are refused without it.
    pub callback_secret: Option<SecretString>,
    /// Where the callback secret came from.
    pub callback_secret_source: SecretSource,
    /// Delivery attempts per callback.
    pub callback_max_attempts: u32,
    /// Base of the backoff between delivery attempts.
    pub callback_retry_delay: Duration,
    /// Bound of one delivery attempt.
    pub callback_timeout: Duration,
    /// Hosts and CIDRs callbacks may go to although they are loopback, private or link-local.
    pub callback_allow: String,
    /// PEM file of extra CA certificates trusted for `https` callbacks, beside the system roots.
    pub callback_ca_file: Option<PathBuf>,
    /// The certificates of `callback_ca_file`, read and checked at start-up (empty without it).
    pub callback_ca: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for JobsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobsConfig")
            .field("deadline", &self.deadline)
            .field("ttl", &self.ttl)
            .field("max", &self.max)
            .field("concurrency", &self.concurrency)
            .field("lease", &self.lease)
            .field("max_runs", &self.max_runs)
            .field("callback_secret", &self.callback_secret.as_ref().map(|_| "[REDACTED]"))
            .field("callback_max_attempts", &self.callback_max_attempts)
            .field("callback_retry_delay", &self.callback_retry_delay)
            .field("callback_timeout", &self.callback_timeout)
            .field("callback_allow", &self.callback_allow)
            .field("callback_ca_file", &self.callback_ca_file)
            .finish()
    }
}

/// Circuit breaker settings.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive upstream failures that open the circuit.
    pub consecutive_failures: u32,
    /// Failure rate over the window that opens the circuit.
    pub failure_rate: f64,
    /// Window of the failure rate (whole seconds).
    pub window: Duration,
    /// Attempts within the window before the failure rate counts.
    pub min_requests: u32,
    /// First open period; doubles on each failed probe.
    pub open: Duration,
    /// Longest open period.
    pub open_max: Duration,
    /// Probes let through at once while half-open.
    pub probes: u32,
    /// Spacing of the background probes sent while open.
    pub probe_interval: Duration,
}
