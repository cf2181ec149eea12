//! TLS on courier's own listeners. The gateway listener serves HTTPS with
//! `COURIER_TLS_CERT_FILE` + `COURIER_TLS_KEY_FILE` (both or neither), and asks callers for a
//! client certificate verified against `COURIER_TLS_CLIENT_CA_FILE` when that is set
//! (`COURIER_TLS_CLIENT_AUTH`: `required`, the default, refuses a handshake without one;
//! `optional` lets callers without one identify by key). The admin listener serves HTTPS with
//! `COURIER_ADMIN_TLS_CERT_FILE` + `COURIER_ADMIN_TLS_KEY_FILE`. Without them, plain HTTP, as
//! before (and as `courier demo` runs).
//!
//! What is offered is fixed, not configurable: TLS 1.3 and 1.2 only, the ring provider's cipher
//! suites (AEAD with ECDHE key exchange only: AES-GCM and ChaCha20-Poly1305; rustls has no CBC,
//! RC4 or static RSA to turn off), ALPN `http/1.1` (courier's listener speaks HTTP/1.1 only).
//!
//! Every file is read and checked here at start, so a bad one is one line naming its variable
//! and exit code 2, never a failed handshake later: unreadable, not PEM, no certificate, no
//! key, a key that is not the certificate's, a CA that cannot be a trust anchor. The reloader
//! reads them again through the same [`TlsFiles::load`], so a reload accepts exactly what a
//! start accepts. No message ever holds a file's content.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};

use super::reader::Reader;

/// Whether a caller must present a client certificate when a client CA is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// No certificate, no handshake (the default with a client CA).
    Required,
    /// A certificate is asked for and verified when sent; a caller without one may still
    /// identify with a key.
    Optional,
}

/// The variables that name one listener's files, for error lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsVars {
    /// The certificate chain's variable.
    pub cert: &'static str,
    /// The private key's variable.
    pub key: &'static str,
    /// The client CA's variable (the gateway's only).
    pub client_ca: &'static str,
}

/// The gateway listener's variables.
pub const GATEWAY_VARS: TlsVars =
    TlsVars { cert: "COURIER_TLS_CERT_FILE", key: "COURIER_TLS_KEY_FILE", client_ca: "COURIER_TLS_CLIENT_CA_FILE" };
/// The admin listener's variables (it has no client CA).
pub const ADMIN_VARS: TlsVars =
    TlsVars { cert: "COURIER_ADMIN_TLS_CERT_FILE", key: "COURIER_ADMIN_TLS_KEY_FILE", client_ca: "-" };
const CLIENT_AUTH_VAR: &str = "COURIER_TLS_CLIENT_AUTH";

const CERT: &str = "a readable PEM file of the listener's certificate (and its chain), with its key's variable";
const KEY: &str = "a readable PEM file of the certificate's private key (PKCS#8, PKCS#1 or SEC1)";
const CA: &str = "a readable PEM file of the CA certificates client certificates are issued by";
const AUTH: &str = "required or optional, with COURIER_TLS_CLIENT_CA_FILE";

/// Where one listener's TLS material comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The variables naming the files.
    pub vars: TlsVars,
    /// The certificate chain, PEM, the listener's own certificate first.
    pub cert_file: PathBuf,
    /// Its private key, PEM: a secret.
    pub key_file: PathBuf,
    /// The CA client certificates are verified against; `None`: none is asked for.
    pub client_ca_file: Option<PathBuf>,
    /// Whether a client certificate is required when `client_ca_file` is set.
    pub client_auth: ClientAuth,
}

/// One listener's TLS material, read and checked.
#[derive(Clone)]
pub struct LoadedTls {
    /// The certificate chain and the signing key made from the private key.
    pub certified_key: Arc<CertifiedKey>,
    /// The client certificate verifier, when a client CA is set.
    pub client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// SHA-256 over the bytes of the files: equal digests, nothing to reload.
    pub digest: [u8; 32],
    /// When the material stops being usable: the earliest end of validity in each file.
    pub expiry: TlsExpiry,
}

/// The earliest end of validity (`notAfter`, Unix seconds) of the certificates in a listener's
/// files: a chain is only as good as its first certificate to expire, and a client CA file
/// stops admitting the clients of a CA when that CA expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsExpiry {
    /// The earliest in the certificate chain.
    pub certificate: i64,
    /// The earliest in the client CA file, if there is one.
    pub client_ca: Option<i64>,
}

impl fmt::Debug for LoadedTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedTls")
            .field("certificates", &self.certified_key.cert.len())
            .field("key", &"[REDACTED]")
            .field("client_ca", &self.client_verifier.is_some())
            .field("expiry", &self.expiry)
            .finish()
    }
}

/// One listener's TLS: its files and what was read from them at start.
#[derive(Clone, Debug)]
pub struct ListenerTls {
    /// The files (read again on reload).
    pub files: TlsFiles,
    /// Their content as read at start.
    pub loaded: LoadedTls,
}

/// TLS of both listeners (`None`: plain HTTP).
#[derive(Clone, Debug, Default)]
pub struct ServerTls {
    /// The gateway listener's.
    pub gateway: Option<ListenerTls>,
    /// The admin listener's.
    pub admin: Option<ListenerTls>,
}

/// A problem with one file: its variable and what is wrong (a path and a reason).
pub type TlsProblem = (&'static str, String);

impl ServerTls {
    /// Reads the TLS variables of both listeners, recording each bad one.
    pub(super) fn read(r: &mut Reader<'_>) -> ServerTls {
        let gateway = files(r, GATEWAY_VARS);
        let client_ca_file = r.optional(GATEWAY_VARS.client_ca).map(PathBuf::from);
        let client_auth =
            r.parsed(CLIENT_AUTH_VAR, ClientAuth::Required, AUTH, |s| match s.to_ascii_lowercase().as_str() {
                "required" => Some(ClientAuth::Required),
                "optional" => Some(ClientAuth::Optional),
                _ => None,
            });
        let auth_set = r.optional(CLIENT_AUTH_VAR).is_some();
        match (&gateway, &client_ca_file) {
            (None, Some(_)) if !r.reported(GATEWAY_VARS.cert) && !r.reported(GATEWAY_VARS.key) => {
                r.problem(GATEWAY_VARS.client_ca, "is set without COURIER_TLS_CERT_FILE", CA);
            }
            (_, None) if auth_set && !r.reported(CLIENT_AUTH_VAR) => {
                r.problem(CLIENT_AUTH_VAR, "is set without COURIER_TLS_CLIENT_CA_FILE", AUTH);
            }
            _ => {}
        }
        let gateway = gateway.map(|(cert_file, key_file)| TlsFiles {
            vars: GATEWAY_VARS,
            cert_file,
            key_file,
            client_ca_file,
            client_auth,
        });
        let admin = files(r, ADMIN_VARS).map(|(cert_file, key_file)| TlsFiles {
            vars: ADMIN_VARS,
            cert_file,
            key_file,
            client_ca_file: None,
            client_auth: ClientAuth::Required,
        });
        let mut load = |files: TlsFiles| match files.load() {
            Ok(loaded) => Some(ListenerTls { files, loaded }),
            Err(problems) => {
                for (var, problem) in problems {
                    let expected = if var == files.vars.cert {
                        CERT
                    } else if var == files.vars.key {
                        KEY
                    } else {
                        CA
                    };
                    r.problem(var, problem, expected);
                }
                None
            }
        };
        ServerTls { gateway: gateway.and_then(&mut load), admin: admin.and_then(load) }
    }
}

/// The certificate and key variables of a listener: both or neither.
fn files(r: &mut Reader<'_>, vars: TlsVars) -> Option<(PathBuf, PathBuf)> {
    let cert = r.optional(vars.cert).map(PathBuf::from);
    let key = r.optional(vars.key).map(PathBuf::from);
    match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => {
            r.problem(vars.cert, format!("is set without {}", vars.key), CERT);
            None
        }
        (None, Some(_)) => {
            r.problem(vars.key, format!("is set without {}", vars.cert), KEY);
            None
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsFiles {
    /// Reads and checks every file; every problem is reported, not only the first.
    pub fn load(&self) -> Result<LoadedTls, Vec<TlsProblem>> {
        let mut problems = Vec::new();
        let mut digest = Sha256::new();
        let chain = read_chain(&self.cert_file, &mut digest).map_err(|p| problems.push((self.vars.cert, p))).ok();
        let key = read_key(&self.key_file, &mut digest).map_err(|p| problems.push((self.vars.key, p))).ok();
        let verifier = self.client_ca_file.as_deref().and_then(|path| {
            self.verifier(path, &mut digest).map_err(|p| problems.push((self.vars.client_ca, p))).ok()
        });
        let (Some(chain), Some(key)) = (chain, key) else { return Err(problems) };
        let certificate = earliest_end(&chain, &self.cert_file).map_err(|p| problems.push((self.vars.cert, p)));
        let client_ca = verifier.as_ref().map(|(_, end)| *end);
        let verifier = verifier.map(|(verifier, _)| verifier);
        let Ok(certificate) = certificate else { return Err(problems) };
        let certified_key = match CertifiedKey::from_der(chain, key, &provider()) {
            Ok(certified_key) => certified_key,
            Err(e) => {
                let (key, cert) = (self.key_file.display(), self.cert_file.display());
                problems.push((self.vars.key, format!("{key} cannot be used with {cert}: {e}")));
                return Err(problems);
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(LoadedTls {
            certified_key: Arc::new(certified_key),
            client_verifier: verifier,
            digest: digest.finalize().into(),
            expiry: TlsExpiry { certificate, client_ca },
        })
    }

    /// The verifier of client certificates issued by the CAs of `path`, and the earliest end
    /// of those CAs' validity.
    fn verifier(&self, path: &Path, digest: &mut Sha256) -> Result<(Arc<dyn ClientCertVerifier>, i64), String> {
        let cas = read_chain(path, digest)?;
        let end = earliest_end(&cas, path)?;
        let mut roots = RootCertStore::empty();
        for cert in cas {
            roots.add(cert).map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
        }
        let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
        let builder = match self.client_auth {
            ClientAuth::Required => builder,
            ClientAuth::Optional => builder.allow_unauthenticated(),
        };
        let verifier =
            builder.build().map_err(|e| format!("{}: cannot verify clients with it: {e}", path.display()))?;
        Ok((verifier, end))
    }
}

impl LoadedTls {
    /// A server configuration serving this certificate through `resolver` (by default, this
    /// material's own certificate): TLS 1.3 and 1.2, ALPN http/1.1, the client verifier if any.
    pub fn server_config(&self, resolver: Option<Arc<dyn ResolvesServerCert>>) -> Arc<ServerConfig> {
        let versions: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .expect("the ring provider supports TLS 1.2 and 1.3");
        let builder = match &self.client_verifier {
            Some(verifier) => builder.with_client_cert_verifier(verifier.clone()),
            None => builder.with_no_client_auth(),
        };
        let resolver = resolver.unwrap_or_else(|| Arc::new(SingleCertAndKey::from(self.certified_key.clone())));
        let mut config = builder.with_cert_resolver(resolver);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        if self.client_verifier.is_some() {
            // A resumed session skips the client certificate's verification and keeps its
            // identity for up to rustls's 24 h session lifetime, past the certificate's expiry:
            // with client certificates, every new connection shows and verifies one again.
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
        }
        Arc::new(config)
    }
}

/// The certificates of a PEM file (a chain, or CAs); the message names the file, never its content.
fn read_chain(path: &Path, digest: &mut Sha256) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    digest.update(&bytes);
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// The earliest `notAfter` (Unix seconds) of `certs`, read from `path`.
fn earliest_end(certs: &[CertificateDer<'_>], path: &Path) -> Result<i64, String> {
    let mut earliest = i64::MAX;
    for (n, der) in certs.iter().enumerate() {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|_| format!("{}: certificate {} is not a valid X.509 certificate", path.display(), n + 1))?;
        earliest = earliest.min(cert.validity().not_after.timestamp());
    }
    Ok(earliest)
}

/// The private key of a PEM file; the message names the file, never its content (not even
/// the PEM parser's words, which may quote it).
fn read_key(path: &Path, digest: &mut Sha256) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    digest.update(&bytes);
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => format!("{} holds no PEM private key", path.display()),
        _ => format!("{} is not a valid PEM private key", path.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{test_env, Config};

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A self-signed certificate and its key, as files in a directory of their own.
    fn files(test: &str) -> (Dir, String, String) {
        let dir = std::env::temp_dir().join(format!("courier-listener-tls-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().self_signed(&key).unwrap();
        let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (Dir(dir), cert_file.display().to_string(), key_file.display().to_string())
    }

    fn errors(pairs: &[(&str, &str)]) -> String {
        Config::from_sources(&test_env(pairs), None).map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn plain_by_default_and_tls_with_both_files() {
        let plain = Config::from_sources(&test_env(&[]), None).unwrap();
        assert!(plain.tls.gateway.is_none() && plain.tls.admin.is_none());
        let (_dir, cert, key) = files("both");
        let env = [
            ("COURIER_TLS_CERT_FILE", cert.as_str()),
            ("COURIER_TLS_KEY_FILE", key.as_str()),
            ("COURIER_TLS_CLIENT_CA_FILE", cert.as_str()),
            ("COURIER_TLS_CLIENT_AUTH", "optional"),
            ("COURIER_ADMIN_TLS_CERT_FILE", cert.as_str()),
            ("COURIER_ADMIN_TLS_KEY_FILE", key.as_str()),
        ];
        let config = Config::from_sources(&test_env(&env), None).unwrap();
        let gateway = config.tls.gateway.as_ref().unwrap();
        assert_eq!(gateway.files.client_auth, ClientAuth::Optional);
        assert!(gateway.loaded.client_verifier.is_some());
        let server = gateway.loaded.server_config(None);
        assert_eq!(server.alpn_protocols, [b"http/1.1".to_vec()]);
        assert_eq!(server.send_tls13_tickets, 0, "with client certificates, no session is resumed");
        assert!(config.tls.admin.as_ref().unwrap().loaded.client_verifier.is_none());
        let shown = format!("{config:?}");
        assert!(shown.contains("key: \"[REDACTED]\"") && !shown.contains("PRIVATE"), "{shown}");
        assert_eq!(gateway.files.load().unwrap().digest, gateway.loaded.digest, "the same files, the same digest");
        // rcgen's default validity ends on 4096-01-01.
        let end_of_4095 = 67_090_118_400;
        assert_eq!(gateway.loaded.expiry, TlsExpiry { certificate: end_of_4095, client_ca: Some(end_of_4095) });
    }

    #[test]
    fn a_chain_expires_with_its_first_certificate_to_expire() {
        let (dir, _, key_file) = files("chain");
        let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 1, 1);
        let leaf = params.self_signed(&key).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.not_after = rcgen::date_time_ymd(2030, 1, 1);
        let intermediate = params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap();
        let chain = dir.0.join("chain.pem");
        std::fs::write(&chain, format!("{}{}", leaf.pem(), intermediate.pem())).unwrap();
        let files = TlsFiles {
            vars: GATEWAY_VARS,
            cert_file: chain,
            key_file: key_file.into(),
            client_ca_file: None,
            client_auth: ClientAuth::Required,
        };
        let expiry = files.load().unwrap().expiry;
        assert_eq!(expiry, TlsExpiry { certificate: 1_893_456_000, client_ca: None }, "2030-01-01, the intermediate's");
    }

    #[test]
    fn client_auth_needs_a_client_ca_and_a_known_value() {
        let (_dir, cert, key) = files("auth");
        let tls = [("COURIER_TLS_CERT_FILE", cert.as_str()), ("COURIER_TLS_KEY_FILE", key.as_str())];
        let without_ca = errors(&[tls[0], tls[1], ("COURIER_TLS_CLIENT_AUTH", "optional")]);
        assert_eq!(
            without_ca,
            "COURIER_TLS_CLIENT_AUTH: is set without COURIER_TLS_CLIENT_CA_FILE (expected: required or optional, with COURIER_TLS_CLIENT_CA_FILE)"
        );
        let bad =
            errors(&[tls[0], tls[1], ("COURIER_TLS_CLIENT_CA_FILE", &cert), ("COURIER_TLS_CLIENT_AUTH", "maybe")]);
        assert!(bad.starts_with("COURIER_TLS_CLIENT_AUTH: ") && bad.lines().count() == 1, "{bad}");
        let key_alone = errors(&[("COURIER_ADMIN_TLS_KEY_FILE", &key)]);
        assert!(
            key_alone.starts_with("COURIER_ADMIN_TLS_KEY_FILE: is set without COURIER_ADMIN_TLS_CERT_FILE"),
            "{key_alone}"
        );
    }
}
