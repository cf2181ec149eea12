//! Serving the simulator over TLS (`--tls-cert`, `--tls-key`), so courier's https path to
//! the upstream (its trust roots, `EXTERNAL_API_CA_FILE`, TLS failures) is tested for real.
//! rustls with the ring provider, as courier's client uses.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The simulator's certificate chain and private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimTls {
    /// PEM file of the server certificate, followed by any intermediates.
    pub cert: PathBuf,
    /// PEM file of the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

fn invalid(flag: &str, path: &Path, problem: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{flag} {}: {problem}", path.display()))
}

impl SimTls {
    /// Reads both files into a server configuration; the error names the flag and file.
    pub fn server_config(&self) -> io::Result<rustls::ServerConfig> {
        let pem = std::fs::read(&self.cert).map_err(|e| invalid("--tls-cert", &self.cert, e))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("--tls-cert", &self.cert, format!("not valid PEM: {e}")))?;
        if certs.is_empty() {
            return Err(invalid("--tls-cert", &self.cert, "holds no PEM certificate"));
        }
        let pem = std::fs::read(&self.key).map_err(|e| invalid("--tls-key", &self.key, e))?;
        let key = match PrivateKeyDer::from_pem_slice(&pem) {
            Ok(key) => key,
            Err(pem::Error::NoItemsFound) => return Err(invalid("--tls-key", &self.key, "holds no PEM private key")),
            Err(e) => return Err(invalid("--tls-key", &self.key, format!("not valid PEM: {e}"))),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| io::Error::other(format!("TLS setup failed: {e}")))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| invalid("--tls-key", &self.key, format!("does not fit the certificate: {e}")))
    }
}
