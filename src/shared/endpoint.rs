//! How courier reaches Redis: the URL (a secret: it may hold the ACL user's password) and the
//! TLS material of a `rediss://` URL, made into a `redis::Client` in one place, so every
//! connection courier opens (shared state, the job store) gets TLS and the ACL user the same
//! way. Also: what a refused connection says, in words that hold no secret.
//!
//! Redis's certificate is verified against the system roots plus `REDIS_CA_FILE` (the redis
//! crate takes one PEM bundle of roots, which replaces the system roots, so both go into it).
//!
//! A Redis Cluster (`REDIS_CLUSTER=true`) is reached through the node of the URL, which names
//! the others; its connections learn the slot map and follow `MOVED`, `ASK` and failovers.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::{
    AsyncConnectionConfig, ClientTlsConfig, ConnectionInfo, ErrorKind, RedisError, RedisResult, TlsCertificates,
};
use rustls::pki_types::CertificateDer;
use rustls::{AlertDescription, CertificateError};
use secrecy::{ExposeSecret, SecretString};

use super::follow::FollowedConn;
use super::sentinel::Target;
use super::RedisConn;
use crate::config::RedisTls;

/// Redirections and retries a cluster connection may make for one call (`MOVED`, `ASK`,
/// `TRYAGAIN`, a primary gone): each call is bounded by the caller's timeout all the same.
const CLUSTER_RETRIES: u32 = 4;

/// The least and most a cluster connection waits (ms) before it retries a call the cluster
/// could not take (`CLUSTERDOWN`, `TRYAGAIN`, its node gone from the slot map): the redis
/// crate's default (at least 1.28 s a retry) holds a call through a failover until courier's
/// own bound ends it, and with it the request waiting for the call; courier's answer to a
/// failing Redis is to degrade at once and ask again a second later.
const CLUSTER_RETRY_WAIT_MS: (u64, u64) = (10, 100);

/// The response timeout of connections for blocking reads: the caller bounds each call.
const NO_RESPONSE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Why courier could not connect to Redis at start (no secret in it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot connect to Redis: {0}")]
pub struct ConnectError(pub String);

/// Where Redis is and how to talk to it. `Debug` shows neither the URL nor the key.
#[derive(Clone)]
pub struct RedisEndpoint {
    url: SecretString,
    tls: RedisTls,
    cluster: bool,
    /// With Sentinels: the primary they name, which connections follow (`sentinel`).
    sentinel: Option<Arc<Target>>,
}

impl fmt::Debug for RedisEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisEndpoint")
            .field("url", &"[REDACTED]")
            .field("tls", &self.tls)
            .field("cluster", &self.cluster)
            .field("sentinel", &self.sentinel.is_some())
            .finish()
    }
}

impl From<SecretString> for RedisEndpoint {
    /// A URL alone: `rediss://` is verified against the system roots.
    fn from(url: SecretString) -> RedisEndpoint {
        RedisEndpoint { url, tls: RedisTls::default(), cluster: false, sentinel: None }
    }
}

impl From<&SecretString> for RedisEndpoint {
    fn from(url: &SecretString) -> RedisEndpoint {
        RedisEndpoint::from(url.clone())
    }
}

impl RedisEndpoint {
    /// A URL and the TLS material read with the configuration.
    pub fn new(url: SecretString, tls: RedisTls) -> RedisEndpoint {
        RedisEndpoint { url, tls, cluster: false, sentinel: None }
    }

    /// The same, as a seed node of a Redis Cluster when `cluster`.
    pub fn with_cluster(self, cluster: bool) -> RedisEndpoint {
        RedisEndpoint { cluster, ..self }
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The same, reaching the primary that Sentinels name through `target` (its address
    /// replaces the URL's; everything else is the URL's).
    pub fn with_sentinel(self, target: Arc<Target>) -> RedisEndpoint {
        RedisEndpoint { sentinel: Some(target), ..self }
    }

    /// How to talk to a data node at another address: the URL's scheme, user, password,
    /// database and TLS (for the nodes Sentinels name).
    pub fn node_template(&self) -> Result<ConnectionInfo, &'static str> {
        self.client().map(|client| client.get_connection_info().clone())
    }

    /// The generation of the node connections go to now: it changes when Sentinels name a new
    /// primary (always 0 without them).
    pub fn generation(&self) -> u64 {
        self.sentinel.as_ref().map_or(0, |target| target.generation())
    }

    /// A call failed: with Sentinels, an error that may mean the primary moved makes courier
    /// ask them at once.
    pub fn saw(&self, e: &RedisError) {
        if let Some(target) = &self.sentinel {
            target.saw(e);
        }
    }

    /// What makes these settings unusable, if anything (without quoting the URL).
    pub fn problem(&self) -> Option<&'static str> {
        match self.cluster {
            false => self.client().err(),
            true => self.cluster_client(Duration::from_secs(1), Duration::from_secs(1)).err(),
        }
    }

    /// The connection for every call but blocking reads: reconnecting (single Redis),
    /// following the cluster, or following the primary Sentinels name; connecting and each
    /// answer bounded by `timeout`.
    pub async fn connect(&self, timeout: Duration) -> RedisResult<RedisConn> {
        if self.cluster {
            let client = self.cluster_client(timeout, timeout).map_err(invalid)?;
            return client.get_async_connection().await.map(RedisConn::Cluster);
        }
        // No reconnection retries inside the manager: a failed reconnect fails the calls
        // waiting on it at once, and the next call starts a new attempt.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_number_of_retries(0);
        if let Some(target) = &self.sentinel {
            return FollowedConn::connect(target.clone(), config).await.map(RedisConn::Followed);
        }
        let client = self.client().map_err(invalid)?;
        ConnectionManager::new_with_config(client, config).await.map(RedisConn::Single)
    }

    /// A connection of its own for blocking reads (a blocking read holds its connection until
    /// it answers): no response timeout, the caller bounds each call; connecting bounded by
    /// `timeout`.
    pub async fn connect_dedicated(&self, timeout: Duration) -> RedisResult<RedisConn> {
        if self.cluster {
            let client = self.cluster_client(timeout, NO_RESPONSE_TIMEOUT).map_err(invalid)?;
            return client.get_async_connection().await.map(RedisConn::Cluster);
        }
        let config = AsyncConnectionConfig::new().set_connection_timeout(timeout);
        let client = match &self.sentinel {
            Some(target) => target.current().1,
            None => self.client().map_err(invalid)?,
        };
        client.get_multiplexed_async_connection_with_config(&config).await.map(RedisConn::Plain)
    }

    fn cluster_client(&self, connect: Duration, response: Duration) -> Result<ClusterClient, &'static str> {
        let mut builder = ClusterClient::builder(vec![self.url.expose_secret()])
            .connection_timeout(connect)
            .response_timeout(response)
            .retries(CLUSTER_RETRIES)
            .min_retry_wait(CLUSTER_RETRY_WAIT_MS.0)
            .max_retry_wait(CLUSTER_RETRY_WAIT_MS.1);
        if self.is_tls() && !self.tls.is_empty() {
            builder = builder.certs(self.certificates());
        }
        builder.build().map_err(|_| "the Redis URL cannot name a cluster node")
    }

    /// Whether the URL asks for TLS (`rediss://`).
    pub fn is_tls(&self) -> bool {
        self.url.expose_secret().starts_with("rediss:")
    }

    /// The client of a single Redis's connections. The error says what is wrong without
    /// quoting the URL.
    fn client(&self) -> Result<redis::Client, &'static str> {
        let url = self.url.expose_secret();
        if !self.is_tls() || self.tls.is_empty() {
            // Plain, or TLS against the system roots alone (the redis crate's default).
            return redis::Client::open(url).map_err(|_| "the Redis URL is not valid");
        }
        redis::Client::build_with_tls(url, self.certificates()).map_err(|_| "the Redis TLS settings cannot be used")
    }

    fn certificates(&self) -> TlsCertificates {
        TlsCertificates {
            client_tls: self.tls.client.as_ref().map(|c| ClientTlsConfig {
                client_cert: c.cert_pem.clone(),
                client_key: c.key_pem.expose_secret().as_bytes().to_vec(),
            }),
            root_cert: (!self.tls.ca.is_empty()).then(|| roots_pem(&self.tls.ca)),
        }
    }
}

/// A setting found unusable, as a Redis error (the text quotes nothing of the URL).
fn invalid(problem: &'static str) -> RedisError {
    RedisError::from((ErrorKind::InvalidClientConfig, problem))
}

/// The system roots (those usable as trust anchors) and `extra`, as one PEM bundle.
fn roots_pem(extra: &[CertificateDer<'static>]) -> Vec<u8> {
    let native = rustls_native_certs::load_native_certs().certs;
    let usable = native.into_iter().filter(|cert| rustls::RootCertStore::empty().add(cert.clone()).is_ok());
    let mut pem = Vec::new();
    for cert in usable.chain(extra.iter().cloned()) {
        pem_encode(&cert, &mut pem);
    }
    pem
}

fn pem_encode(cert: &CertificateDer<'_>, out: &mut Vec<u8>) {
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    out.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.extend_from_slice(b"-----END CERTIFICATE-----\n");
}

/// What a refusal by Redis or of Redis means, when `e` is one: a certificate refused (either
/// way) or the ACL user refused. Never the server's message, the URL or an argument.
pub fn refusal(e: &RedisError) -> Option<&'static str> {
    if e.kind() == ErrorKind::AuthenticationFailed || e.code() == Some("WRONGPASS") {
        return Some("ACL: Redis refused the user name or password of REDIS_URL (WRONGPASS)");
    }
    match e.code() {
        Some("NOPERM") => return Some("ACL: the Redis user may not run a command or use a key courier needs (NOPERM)"),
        Some("NOAUTH") => return Some("ACL: Redis requires a password and REDIS_URL has none (NOAUTH)"),
        _ => {}
    }
    let tls = tls_error(e)?;
    Some(match tls {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "TLS: Redis's certificate is not issued by a trusted CA (the system roots or REDIS_CA_FILE)"
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "TLS: Redis's certificate is not valid for the host of REDIS_URL",
        rustls::Error::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => "TLS: Redis's certificate has expired or is not valid yet",
        rustls::Error::InvalidCertificate(_) => "TLS: Redis's certificate was refused",
        rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::NoCertificate
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateUnknown
            | AlertDescription::AccessDenied,
        ) => "TLS: Redis refused courier's client certificate (none given, or not one Redis trusts: REDIS_CLIENT_CERT_FILE)",
        _ => "TLS: the handshake with Redis failed",
    })
}

/// Whether a [`super::describe`] text is a refusal (see [`refusal`]).
pub fn is_refusal(why: &str) -> bool {
    why.starts_with("ACL: ") || why.starts_with("TLS: ")
}

/// The TLS error behind a Redis I/O error, if it is one.
fn tls_error(e: &RedisError) -> Option<&rustls::Error> {
    let io = std::error::Error::source(e)?.downcast_ref::<std::io::Error>()?;
    io.get_ref()?.downcast_ref::<rustls::Error>()
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::pem::PemObject;

    use super::*;

    fn io_tls(error: rustls::Error) -> RedisError {
        RedisError::from(std::io::Error::new(std::io::ErrorKind::InvalidData, error))
    }

    #[test]
    fn certificate_and_acl_refusals_are_named() {
        let unknown = io_tls(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));
        assert!(refusal(&unknown).unwrap().contains("not issued by a trusted CA"));
        let client = io_tls(rustls::Error::AlertReceived(AlertDescription::CertificateRequired));
        assert!(refusal(&client).unwrap().contains("refused courier's client certificate"));
        let auth = RedisError::from((ErrorKind::AuthenticationFailed, "Password authentication failed"));
        assert!(refusal(&auth).unwrap().contains("WRONGPASS"));
        let plain = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(refusal(&plain), None);
    }

    #[test]
    fn the_roots_bundle_holds_the_extra_ca_after_the_system_roots() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let der = ca.der().clone();
        let pem = roots_pem(std::slice::from_ref(&der));
        let certs: Vec<CertificateDer<'_>> = CertificateDer::pem_slice_iter(&pem).map(Result::unwrap).collect();
        assert_eq!(certs.last(), Some(&der));
    }

    #[test]
    fn debug_shows_neither_the_password_nor_the_url() {
        let endpoint = RedisEndpoint::from(SecretString::from("rediss://courier:hunter2@cache.internal:6380/0"));
        let shown = format!("{endpoint:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("cache.internal"), "{shown}");
    }
}
