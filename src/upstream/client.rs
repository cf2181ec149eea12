//! The upstream HTTP client: awc with a connection pool, redirects off, no compression,
//! and rustls with an explicit crypto provider (ring), the system's root certificates and,
//! when `EXTERNAL_API_CA_FILE` names one, the CA certificates of a PEM file.
//!
//! One client per actix worker thread (awc clients are not `Send`); the TLS configuration
//! is built once and shared, because loading the system roots reads many files.
//!
//! **HTTP/1.1 only.** awc speaks HTTP/2 through the `h2` 0.3 crate, which has an advisory
//! without a patched 0.3 release (RUSTSEC-2026-0258: a peer can make it queue empty DATA
//! frames without limit, growing memory until it panics). awc picks HTTP/2 only when TLS's ALPN negotiates `h2` (no `dangerous-h2c`
//! feature, so plain http is always HTTP/1.1); courier offers the upstream `http/1.1` alone,
//! so no h2 code runs whatever the upstream prefers. Not through awc's
//! `Connector::max_http_version`: it replaces the TLS configuration with awc's default one,
//! dropping the roots and the CA file configured here. `tests/upstream_http1.rs` checks it
//! against a TLS upstream that prefers h2, for the API and the token endpoint.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// The one protocol courier offers the upstream by ALPN (see the module doc for why).
const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

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
pub fn tls_config(extra_ca: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let extra = match extra_ca {
        Some(path) => crate::config::load_ca_file(path)?,
        None => Vec::new(),
    };
    tls_config_with(&extra)
}

/// Builds the TLS configuration from the system roots plus `extra` CA certificates (already
/// read by [`crate::config::load_ca_file`]).
pub fn tls_config_with(extra: &[CertificateDer<'static>]) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    for cert in extra {
        roots.add(cert.clone()).map_err(|e| format!("unusable CA certificate: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    Ok(Arc::new(config))
}

/// `tls`, offering `http/1.1` alone by ALPN whoever built it.
fn http_1_1_only(tls: Arc<ClientConfig>) -> Arc<ClientConfig> {
    if tls.alpn_protocols.len() == 1 && tls.alpn_protocols[0] == ALPN_HTTP_1_1 {
        return tls;
    }
    let mut config = (*tls).clone();
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    Arc::new(config)
}

/// Builds one upstream client, speaking HTTP/1.1 only. awc's own timeout is disabled: each
/// attempt is bounded by the caller over head and body together.
pub fn build_client(tls: Arc<ClientConfig>, settings: &ClientSettings) -> awc::Client {
    let connector = awc::Connector::new()
        .rustls_0_23(http_1_1_only(tls))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_offers_http_1_1_alone() {
        let ours = tls_config_with(&[]).unwrap();
        assert_eq!(ours.alpn_protocols, [ALPN_HTTP_1_1]);
        assert!(Arc::ptr_eq(&http_1_1_only(ours.clone()), &ours), "already pinned: shared, not copied");
        let mut offering_h2 = (*ours).clone();
        offering_h2.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        assert_eq!(http_1_1_only(Arc::new(offering_h2)).alpn_protocols, [ALPN_HTTP_1_1]);
    }
}
