//! TLS on the gateway listener: the handshake of each new connection, the names of a verified
//! client certificate, and the admin listener's certificate resolver. What is offered and how
//! the files are read is in [`crate::config::ServerTls`]'s module; how a reload swaps them is in
//! [`crate::reload::tls`].
//!
//! Why courier runs the handshake itself instead of `HttpServer::bind_rustls_0_23`: the gateway
//! listener is put together by hand ([`super::connection`]) so that each connection's socket
//! is [`super::connection::Guarded`]; the handshake is one more step in that chain, and it
//! reads the *current* server configuration at each new connection, which is how a reloaded
//! certificate or client CA reaches new connections while open ones keep theirs.
//!
//! A client certificate is verified by rustls during the handshake (chain to the client CA,
//! validity dates, key usage): an expired one, one from another CA, or none when one is
//! required ends the handshake, counted in `courier_tls_handshakes_total`. The names of a
//! certificate that passed are read once per connection and kept with it ([`PeerNames`]), for
//! [`super::Worker::identify`] to match against the clients file.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use actix_rt::net::TcpStream;
use actix_web::dev::Extensions;
use prometheus::IntCounter;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use slog::{debug, o, Logger};
use tokio_rustls::server::TlsStream;
use x509_parser::extensions::GeneralName;

use super::connection::Guarded;
use crate::config::PeerNames;
use crate::metrics::Metrics;
use crate::published::Published;

/// How the gateway listener's handshakes are run and counted; cheap to clone (one per worker).
#[derive(Clone)]
pub struct Handshakes {
    /// The current server configuration (certificate, client verifier), replaced by reloads.
    pub config: Arc<Published<Arc<ServerConfig>>>,
    /// The time a new connection has to finish its handshake (`COURIER_CLIENT_HEADER_TIMEOUT`).
    pub timeout: Duration,
    counters: [IntCounter; 6],
    log: Logger,
}

/// How a handshake ended, for `courier_tls_handshakes_total{result}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeResult {
    /// The connection is encrypted.
    Ok,
    /// A client certificate was required and none was sent.
    NoClientCertificate,
    /// The client certificate did not verify: expired, from another CA, not for client use.
    BadClientCertificate,
    /// Nothing in common: an old protocol version, cipher suites, ALPN; or not TLS at all.
    Incompatible,
    /// The handshake did not finish in time.
    Timeout,
    /// Anything else (the caller hung up, an I/O error).
    Failed,
}

impl HandshakeResult {
    const ALL: [HandshakeResult; 6] = [
        HandshakeResult::Ok,
        HandshakeResult::NoClientCertificate,
        HandshakeResult::BadClientCertificate,
        HandshakeResult::Incompatible,
        HandshakeResult::Timeout,
        HandshakeResult::Failed,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeResult::Ok => "ok",
            HandshakeResult::NoClientCertificate => "no_client_certificate",
            HandshakeResult::BadClientCertificate => "bad_client_certificate",
            HandshakeResult::Incompatible => "incompatible",
            HandshakeResult::Timeout => "timeout",
            HandshakeResult::Failed => "failed",
        }
    }

    /// What a failed handshake's error says about its cause.
    fn of(error: &io::Error) -> HandshakeResult {
        let tls = error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
        match tls {
            Some(rustls::Error::NoCertificatesPresented) => HandshakeResult::NoClientCertificate,
            Some(rustls::Error::InvalidCertificate(_)) => HandshakeResult::BadClientCertificate,
            Some(
                rustls::Error::PeerIncompatible(_)
                | rustls::Error::InvalidMessage(_)
                | rustls::Error::NoApplicationProtocol
                | rustls::Error::InappropriateHandshakeMessage { .. }
                | rustls::Error::InappropriateMessage { .. },
            ) => HandshakeResult::Incompatible,
            _ => HandshakeResult::Failed,
        }
    }
}

impl Handshakes {
    /// Handshakes with the configuration published in `config`, counted in `metrics`; a
    /// failed one is logged at debug level (a scanner's would flood any higher level).
    pub fn new(
        config: Arc<Published<Arc<ServerConfig>>>,
        timeout: Duration,
        metrics: &Metrics,
        log: &Logger,
    ) -> Handshakes {
        let counters = HandshakeResult::ALL.map(|r| metrics.tls_handshakes.with_label_values(&[r.as_str()]));
        Handshakes { config, timeout, counters, log: log.new(o!("listener" => "gateway")) }
    }

    /// Runs the server side of the handshake on a new connection from `peer`, with the
    /// configuration current now, within the timeout.
    pub async fn accept(
        &self,
        io: TcpStream,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<TlsStream<TcpStream>, HandshakeResult> {
        let acceptor = tokio_rustls::TlsAcceptor::from((*self.config.load()).clone());
        let (result, error) = match actix_rt::time::timeout(self.timeout, acceptor.accept(io)).await {
            Ok(Ok(stream)) => (Ok(stream), None),
            Ok(Err(error)) => (Err(HandshakeResult::of(&error)), Some(error.to_string())),
            Err(_) => (Err(HandshakeResult::Timeout), None),
        };
        let counted = *result.as_ref().err().unwrap_or(&HandshakeResult::Ok);
        self.counters[counted as usize].inc();
        if counted != HandshakeResult::Ok {
            // rustls's words name what was wrong (e.g. "invalid peer certificate: Expired"),
            // never a certificate's content or a key.
            debug!(self.log, "tls_handshake_failed"; "result" => counted.as_str(),
                "peer" => peer.map(|p| p.ip().to_string()), "error" => error);
        }
        result
    }
}

/// Keeps the names of the connection's verified client certificate with the connection, for
/// the requests on it (`HttpRequest::conn_data`). Nothing is kept without a certificate.
pub fn on_connect(io: &Guarded<TlsStream<TcpStream>>, data: &mut Extensions) {
    let (_, connection) = io.get_ref().get_ref();
    if let Some(names) = connection.peer_certificates().and_then(|chain| chain.first()).and_then(peer_names) {
        data.insert(names);
    }
}

/// The URIs and DNS names of a certificate's subjectAltName and its subject's common names.
/// `None` when the certificate cannot be read (rustls verified it, so this does not happen).
pub fn peer_names(der: &rustls::pki_types::CertificateDer<'_>) -> Option<PeerNames> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let mut names = PeerNames::default();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(uri) => names.uris.push((*uri).to_owned()),
                GeneralName::DNSName(dns) => names.dns.push((*dns).to_owned()),
                _ => {}
            }
        }
    }
    names.common_names =
        cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_owned).collect();
    Some(names)
}

/// The admin listener's certificate, read from what the reloader published at each handshake
/// (actix-web's server holds one fixed `ServerConfig`; the certificate changes under it).
pub struct CurrentCertificate(pub Arc<Published<Arc<CertifiedKey>>>);

impl std::fmt::Debug for CurrentCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CurrentCertificate")
    }
}

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some((*self.0.load()).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificates_names_are_its_san_uris_and_dns_names_and_subject_cns() {
        let mut params =
            rcgen::CertificateParams::new(vec!["billing.svc.internal".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI("spiffe://example.org/billing".try_into().unwrap()));
        params.distinguished_name.push(rcgen::DnType::CommonName, "billing");
        let cert = params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap();
        let names = peer_names(cert.der()).unwrap();
        assert_eq!(names.uris, ["spiffe://example.org/billing"]);
        assert_eq!(names.dns, ["billing.svc.internal"], "an IP address is not a DNS name");
        assert_eq!(names.common_names, ["billing"]);
        assert_eq!(peer_names(&rustls::pki_types::CertificateDer::from(vec![1, 2, 3])), None);
    }

    #[test]
    fn handshake_errors_are_told_apart() {
        let tls = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        let expired = rustls::Error::InvalidCertificate(rustls::CertificateError::Expired);
        assert_eq!(HandshakeResult::of(&tls(expired)), HandshakeResult::BadClientCertificate);
        assert_eq!(
            HandshakeResult::of(&tls(rustls::Error::NoCertificatesPresented)),
            HandshakeResult::NoClientCertificate
        );
        let old = rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered);
        assert_eq!(HandshakeResult::of(&tls(old)), HandshakeResult::Incompatible);
        assert_eq!(HandshakeResult::of(&io::ErrorKind::UnexpectedEof.into()), HandshakeResult::Failed);
        let labels: Vec<&str> = HandshakeResult::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels, crate::metrics::TLS_HANDSHAKE_RESULTS);
    }
}
