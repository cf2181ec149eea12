//! The upstream HTTP client: awc with a connection pool, redirects off, no compression,
//! and rustls with an explicit crypto provider (ring), the system's root certificates and,
//! when `EXTERNAL_API_CA_FILE` names one, the CA certificates of a PEM file.
//!
//! One client per actix worker thread (awc clients are not `Send`); the TLS configuration
//! is built once and shared, because loading the system roots reads many files.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

/// Pool and identity settings of a client.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// Most connections one client keeps open to the upstream.
    pub pool_limit: usize,
    /// How long an idle pooled connection is kept.
    pub keep_alive: Duration,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings { pool_limit: 256, keep_alive: Duration::from_secs(30) }
    }
}

/// Builds the TLS configuration: system roots plus, when given, the CA certificates of a PEM
/// file. Fails with a message naming the file when it cannot be used.
pub fn tls_config(extra_ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let extra = match extra_ca {
        Some(path) => crate::config::load_ca_file(path)?,
        None => Vec::new(),
    };
    tls_config_with(&extra)
}

/// Builds the TLS configuration from the system roots plus `extra` CA certificates (already
/// read by [`crate::config::load_ca_file`]).
pub fn tls_config_with(extra: &[CertificateDer<'static>]) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    for cert in extra {
        roots.add(cert.clone()).map_err(|e| format!("unusable CA certificate: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Builds one upstream client. awc's own timeout is disabled: each attempt is bounded by
/// the caller over head and body together.
pub fn build_client(tls: Arc<rustls::ClientConfig>, settings: &ClientSettings) -> awc::Client {
    let connector = awc::Connector::new()
        .rustls_0_23(tls)
        .limit(settings.pool_limit)
        .conn_keep_alive(settings.keep_alive)
        .timeout(Duration::from_secs(10));
    awc::Client::builder()
        .connector(connector)
        .disable_redirects()
        .disable_timeout()
        .no_default_headers()
        .add_default_header(("user-agent", concat!("courier/", env!("CARGO_PKG_VERSION"))))
        .finish()
}
