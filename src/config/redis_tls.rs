//! How courier reaches Redis beyond its URL: TLS for `rediss://` URLs. Redis's certificate is
//! verified against the system roots plus the CA certificates of `REDIS_CA_FILE`; a client
//! certificate and key (`REDIS_CLIENT_CERT_FILE` + `REDIS_CLIENT_KEY_FILE`, both or neither)
//! serve Redis servers that ask for one (`tls-auth-clients yes`). Every file is read and checked
//! here, at start, so a bad one is one line naming its variable, never a failed connection
//! later. The ACL user and password live in the URL (a secret, `REDIS_URL` or `REDIS_URL_FILE`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::{ExposeSecret, SecretString};

use super::reader::Reader;

const CERT: &str = "a readable PEM file of the client certificate (and its chain), with REDIS_CLIENT_KEY_FILE";
const KEY: &str = "a readable PEM file of the client certificate's private key, with REDIS_CLIENT_CERT_FILE";
const TLS_ONLY: &str = "unset, or set with a rediss:// REDIS_URL";

/// TLS material for `rediss://` URLs (all empty: the system roots alone, no client certificate).
#[derive(Clone, Default)]
pub struct RedisTls {
    /// PEM file of extra CA certificates trusted for Redis, beside the system roots.
    pub ca_file: Option<PathBuf>,
    /// The certificates of `ca_file`, read and checked at start-up (empty without it).
    pub ca: Vec<CertificateDer<'static>>,
    /// The client certificate for mutual TLS, when set.
    pub client: Option<RedisClientCert>,
}

/// A client certificate chain and its private key, as PEM, checked to belong together.
#[derive(Clone)]
pub struct RedisClientCert {
    /// Where the certificate came from (`REDIS_CLIENT_CERT_FILE`).
    pub cert_file: PathBuf,
    /// Where the key came from (`REDIS_CLIENT_KEY_FILE`).
    pub key_file: PathBuf,
    /// The certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// The private key, PEM: a secret.
    pub key_pem: SecretString,
}

impl fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca_file", &self.ca_file)
            .field("ca_certificates", &self.ca.len())
            .field("client", &self.client)
            .finish()
    }
}

impl fmt::Debug for RedisClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisClientCert")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("key_pem", &"[REDACTED]")
            .finish()
    }
}

impl RedisTls {
    /// Reads `REDIS_CA_FILE`, `REDIS_CLIENT_CERT_FILE` and `REDIS_CLIENT_KEY_FILE`, recording
    /// each bad one; `url`: the Redis URL when one is set and valid.
    pub(super) fn read(r: &mut Reader<'_>, url: Option<&SecretString>) -> RedisTls {
        let (ca_file, ca) = super::ca_file(r, "REDIS_CA_FILE");
        let cert_file = r.optional("REDIS_CLIENT_CERT_FILE").map(PathBuf::from);
        let key_file = r.optional("REDIS_CLIENT_KEY_FILE").map(PathBuf::from);
        let set = [
            ("REDIS_CA_FILE", ca_file.is_some()),
            ("REDIS_CLIENT_CERT_FILE", cert_file.is_some()),
            ("REDIS_CLIENT_KEY_FILE", key_file.is_some()),
        ];
        let client = match (cert_file, key_file) {
            (None, None) => None,
            (Some(_), None) => {
                r.problem("REDIS_CLIENT_CERT_FILE", "is set without REDIS_CLIENT_KEY_FILE", CERT);
                None
            }
            (None, Some(_)) => {
                r.problem("REDIS_CLIENT_KEY_FILE", "is set without REDIS_CLIENT_CERT_FILE", KEY);
                None
            }
            (Some(cert_file), Some(key_file)) => client_cert(r, cert_file, key_file),
        };
        let tls = RedisTls { ca_file, ca, client };
        // TLS files without a rediss:// URL would be silently unused: a mistake worth a line.
        let scheme_is_tls = url.is_some_and(|u| u.expose_secret().starts_with("rediss:"));
        let url_reported = r.reported("REDIS_URL") || r.reported("REDIS_URL_FILE");
        if !scheme_is_tls && !url_reported {
            let why =
                if url.is_some() { "is set but REDIS_URL is not a rediss:// URL" } else { "is set without REDIS_URL" };
            for (var, _) in set.into_iter().filter(|(_, is_set)| *is_set) {
                if !r.reported(var) {
                    r.problem(var, why, TLS_ONLY);
                }
            }
        }
        tls
    }

    /// Reads `REDIS_CLUSTER`: whether `REDIS_URL` names a node of a Redis Cluster (which
    /// has neither unix sockets nor databases other than 0).
    pub(super) fn read_cluster(r: &mut Reader<'_>, url: Option<&SecretString>) -> bool {
        const EXPECTED: &str = "true (REDIS_URL names a node of a Redis Cluster) or false";
        let cluster = r.parsed("REDIS_CLUSTER", false, EXPECTED, |s| s.to_ascii_lowercase().parse().ok());
        if !cluster || r.reported("REDIS_URL") || r.reported("REDIS_URL_FILE") {
            return cluster;
        }
        let parsed = url.and_then(|u| url::Url::parse(u.expose_secret()).ok());
        let problem = match parsed {
            None => Some("is true without REDIS_URL"),
            Some(u) if !matches!(u.scheme(), "redis" | "rediss") => {
                Some("is true, but a Redis Cluster has no unix sockets")
            }
            Some(u) if !matches!(u.path().trim_matches('/'), "" | "0") => {
                Some("is true, but a Redis Cluster has database 0 only (REDIS_URL names another)")
            }
            Some(_) => None,
        };
        if let Some(problem) = problem {
            r.problem("REDIS_CLUSTER", problem, EXPECTED);
        }
        cluster
    }

    /// Whether anything beyond the system roots is configured.
    pub fn is_empty(&self) -> bool {
        self.ca.is_empty() && self.client.is_none()
    }
}

/// Reads and checks a client certificate and key: each file readable PEM, the key usable
/// with the certificate (rustls refuses a key that is not the certificate's).
fn client_cert(r: &mut Reader<'_>, cert_file: PathBuf, key_file: PathBuf) -> Option<RedisClientCert> {
    let chain = match read_chain(&cert_file) {
        Ok(chain) => Some(chain),
        Err(problem) => {
            r.problem("REDIS_CLIENT_CERT_FILE", problem, CERT);
            None
        }
    };
    let key = match read_key(&key_file) {
        Ok(key) => Some(key),
        Err(problem) => {
            r.problem("REDIS_CLIENT_KEY_FILE", problem, KEY);
            None
        }
    };
    let ((cert_pem, certs), (key_pem, key)) = (chain?, key?);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let fits = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(rustls::RootCertStore::empty()).with_client_auth_cert(certs, key));
    match fits {
        Ok(Ok(_)) => Some(RedisClientCert { cert_file, key_file, cert_pem, key_pem }),
        Ok(Err(e)) | Err(e) => {
            let problem = format!("{} cannot be used with {}: {e}", key_file.display(), cert_file.display());
            r.problem("REDIS_CLIENT_KEY_FILE", problem, KEY);
            None
        }
    }
}

type Chain = (Vec<u8>, Vec<CertificateDer<'static>>);

fn read_chain(path: &Path) -> Result<Chain, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok((pem, certs))
}

/// The key's PEM and the key; the message names the file, never its content.
fn read_key(path: &Path) -> Result<(SecretString, PrivateKeyDer<'static>), String> {
    let pem = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let pem = SecretString::from(pem);
    let key = PrivateKeyDer::from_pem_slice(pem.expose_secret().as_bytes()).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!("{} holds no PEM private key", path.display()),
        _ => format!("{} is not a valid PEM private key", path.display()),
    })?;
    Ok((pem, key))
}
