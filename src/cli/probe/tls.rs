//! `courier probe` over TLS, when the admin listener serves HTTPS. The probe trusts exactly the
//! certificate of `COURIER_ADMIN_TLS_CERT_FILE` (its first one, the listener's own): pinned,
//! not verified by a CA and a host name, because the probe asks the listener of its own
//! container or host by address, often on loopback, which the certificate need not name; the
//! server still proves it holds the certificate's key (the handshake signature is verified).
//! The probe sends no secret. Right after the file is replaced the probe fails until courier
//! reloads it (within `COURIER_SECRET_POLL_INTERVAL`), which a health check's retries absorb.

use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};

use super::ProbeError;

/// A client configuration trusting only the first certificate of `cert_file`.
pub(super) fn pinned_config(cert_file: &Path) -> Result<Arc<ClientConfig>, String> {
    let pem = std::fs::read(cert_file).map_err(|e| format!("cannot read {}: {e}", cert_file.display()))?;
    let pinned = CertificateDer::pem_slice_iter(&pem)
        .next()
        .ok_or_else(|| format!("{} holds no PEM certificate", cert_file.display()))?
        .map_err(|e| format!("{} is not valid PEM: {e}", cert_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned { pinned, provider }))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A TLS client stream over `socket` (the handshake happens at the first write).
pub(super) fn stream(
    config: Arc<ClientConfig>,
    socket: TcpStream,
) -> Result<StreamOwned<ClientConnection, TcpStream>, ProbeError> {
    // The name is not checked (the certificate is pinned) but must be a valid one to send.
    let name = ServerName::try_from("courier-admin").expect("a valid DNS name");
    let connection = ClientConnection::new(config, name).map_err(|e| ProbeError::Tls(e.to_string()))?;
    Ok(StreamOwned::new(connection, socket))
}

/// Accepts exactly one certificate.
#[derive(Debug)]
struct Pinned {
    pinned: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.pinned.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("the admin listener's certificate is not COURIER_ADMIN_TLS_CERT_FILE's".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
