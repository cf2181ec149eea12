//! How courier reaches Redis: the URL (a secret: it may hold the ACL user's password) and the
//! TLS material of a `rediss://` URL, made into a `redis::Client` in one place, so every
//! connection courier opens (shared state, the job store) gets TLS and the ACL user the same
//! way. What a refused connection says, in words that hold no secret, is in [`super::refusal`].
//!
//! Redis's certificate is verified against the system roots plus `REDIS_CA_FILE` (the redis
//! crate takes one PEM bundle of roots, which replaces the system roots, so both go into it).
//!
//! The ACL user and password may be rotated while courier runs: they live in a cell every
//! clone of the endpoint shares ([`super::credentials`]), read whenever a connection is opened;
//! the long-lived connections [`RedisEndpoint::connect`] returns are replaced at their next
//! call after a rotation ([`super::rotating`]).
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
    AsyncConnectionConfig, ClientTlsConfig, ConnectionInfo, ErrorKind, IntoConnectionInfo, RedisError, RedisResult,
    TlsCertificates,
};
use rustls::pki_types::CertificateDer;
use secrecy::{ExposeSecret, SecretString};

use super::credentials::{CredentialCell, RedisCredentials};
use super::follow::FollowedConn;
pub use super::refusal::{is_refusal, refusal, Refusal};
use super::rotating::RotatingConn;
use super::sentinel::{NodeClient, Target};
use super::RedisConn;
use crate::config::RedisTls;
use crate::published::Published;

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
    /// The URL read at start: where Redis is and how (its user and password are the first
    /// value of `credentials`).
    url: SecretString,
    /// The user and password every connection opens with now.
    credentials: CredentialCell,
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
        RedisEndpoint::new(url, RedisTls::default())
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
        // An unparsable URL has no credentials; `problem` reports it before any use.
        let credentials = url.expose_secret().into_connection_info().map(|info| RedisCredentials::of(&info));
        let credentials = Arc::new(Published::new(credentials.unwrap_or_default()));
        RedisEndpoint { url, credentials, tls, cluster: false, sentinel: None }
    }

    /// The cell of the user and password connections open with, for a reload to replace them
    /// (after [`RedisEndpoint::verify`]).
    pub fn credentials(&self) -> &CredentialCell {
        &self.credentials
    }

    /// The version of the credentials in use: it changes with each rotation.
    pub fn credentials_version(&self) -> u64 {
        self.credentials.version()
    }

    /// Opens one connection with `credentials` to the node connections go to now (with a
    /// Cluster: to the cluster) and asks `PING`, all within `timeout`: whether Redis takes
    /// them. The error says what failed without a secret ([`super::describe`]).
    pub async fn verify(&self, credentials: &RedisCredentials, timeout: Duration) -> Result<(), String> {
        let attempt = async {
            let mut conn = self.open_plain(timeout, timeout, credentials).await?;
            redis::cmd("PING").query_async::<()>(&mut conn).await
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(super::describe(&e)),
            Err(_) => Err(format!("Redis did not answer within {} ms", timeout.as_millis())),
        }
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

    /// How to talk to a data node at another address: the URL's scheme, database and TLS,
    /// with the user and password in use (for the nodes Sentinels name).
    pub fn node_template(&self) -> Result<ConnectionInfo, &'static str> {
        self.client(&self.credentials.load()).map(|client| client.get_connection_info().clone())
    }

    /// Makes the clients of the data nodes Sentinels name: the URL's scheme, database and TLS,
    /// and the user and password in use when each client is made.
    pub fn node_clients(&self) -> Result<NodeClient, &'static str> {
        let template = self.node_template()?;
        let credentials = self.credentials.clone();
        Ok(Arc::new(move |host, port| {
            let info = credentials.load().apply(template.clone());
            super::sentinel::node_client(&info, host, port)
        }))
    }

    /// The generation of what connections go to now: it changes when Sentinels name a new
    /// primary, and when the credentials change (0 at start). A connection opened at another
    /// generation should not be kept for new calls.
    pub fn generation(&self) -> u64 {
        // Both counters only grow, so their sum changes whenever either does.
        self.sentinel.as_ref().map_or(0, |target| target.generation()) + self.credentials_version()
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
        let credentials = self.credentials.load();
        match self.cluster {
            false => self.client(&credentials).err(),
            true => self.cluster_client(Duration::from_secs(1), Duration::from_secs(1), &credentials).err(),
        }
    }

    /// The connection for every call but blocking reads: reconnecting (single Redis),
    /// following the cluster, or following the primary Sentinels name; connecting and each
    /// answer bounded by `timeout`.
    ///
    /// After a rotation of the credentials, it is replaced by one opened with the new ones at
    /// its next call ([`RotatingConn`]).
    pub async fn connect(&self, timeout: Duration) -> RedisResult<RedisConn> {
        let (version, conn) = self.open(timeout).await?;
        Ok(RedisConn::Rotating(RotatingConn::new(self.clone(), timeout, version, conn)))
    }

    /// The reconnecting connection of [`RedisEndpoint::connect`], opened with the credentials
    /// in use, and their version.
    pub(super) async fn open(&self, timeout: Duration) -> RedisResult<(u64, RedisConn)> {
        let version = self.credentials.version();
        let credentials = self.credentials.load();
        let conn = self.open_with(timeout, &credentials).await?;
        Ok((version, conn))
    }

    async fn open_with(&self, timeout: Duration, credentials: &RedisCredentials) -> RedisResult<RedisConn> {
        if self.cluster {
            let client = self.cluster_client(timeout, timeout, credentials).map_err(invalid)?;
            return client.get_async_connection().await.map(RedisConn::Cluster);
        }
        // No reconnection retries inside the manager: a failed reconnect fails the calls
        // waiting on it at once, and the next call starts a new attempt.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_number_of_retries(0);
        if let Some(target) = &self.sentinel {
            let followed = FollowedConn::connect(target.clone(), credentials.clone(), config).await;
            return followed.map(RedisConn::Followed);
        }
        let client = self.client(credentials).map_err(invalid)?;
        ConnectionManager::new_with_config(client, config).await.map(RedisConn::Single)
    }

    /// A connection of its own for blocking reads (a blocking read holds its connection until
    /// it answers): no response timeout, the caller bounds each call; connecting bounded by
    /// `timeout`.
    ///
    /// Opened with the credentials in use; see [`RedisEndpoint::generation`] for when to stop
    /// keeping it.
    pub async fn connect_dedicated(&self, timeout: Duration) -> RedisResult<RedisConn> {
        self.open_plain(timeout, NO_RESPONSE_TIMEOUT, &self.credentials.load()).await
    }

    /// One connection that does not reconnect, to the node connections go to now (a Cluster
    /// connection with a Cluster), authenticating with `credentials`.
    async fn open_plain(
        &self,
        timeout: Duration,
        response: Duration,
        credentials: &RedisCredentials,
    ) -> RedisResult<RedisConn> {
        if self.cluster {
            let client = self.cluster_client(timeout, response, credentials).map_err(invalid)?;
            return client.get_async_connection().await.map(RedisConn::Cluster);
        }
        let config = AsyncConnectionConfig::new().set_connection_timeout(timeout);
        let client = match &self.sentinel {
            Some(target) => credentials.client_like(&target.current().1)?,
            None => self.client(credentials).map_err(invalid)?,
        };
        client.get_multiplexed_async_connection_with_config(&config).await.map(RedisConn::Plain)
    }

    fn cluster_client(
        &self,
        connect: Duration,
        response: Duration,
        credentials: &RedisCredentials,
    ) -> Result<ClusterClient, &'static str> {
        let seed = self.url.expose_secret().into_connection_info().map_err(|_| "the Redis URL is not valid")?;
        let mut builder = ClusterClient::builder(vec![credentials.apply(seed)])
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

    /// The client of a single Redis's connections, authenticating with `credentials`. The
    /// error says what is wrong without quoting the URL.
    fn client(&self, credentials: &RedisCredentials) -> Result<redis::Client, &'static str> {
        let url = self.url.expose_secret();
        let base = if !self.is_tls() || self.tls.is_empty() {
            // Plain, or TLS against the system roots alone (the redis crate's default).
            redis::Client::open(url).map_err(|_| "the Redis URL is not valid")?
        } else {
            redis::Client::build_with_tls(url, self.certificates())
                .map_err(|_| "the Redis TLS settings cannot be used")?
        };
        credentials.client_like(&base).map_err(|_| "the Redis URL is not valid")
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

#[cfg(test)]
mod tests {
    use rustls::pki_types::pem::PemObject;

    use super::*;

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
