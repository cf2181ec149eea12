//! What a refusal by Redis or of Redis means: a certificate refused either way, or the ACL
//! user refused. Said in fixed words (never the server's message, the URL or an argument),
//! which [`super::describe`] returns, and counted by kind in `courier_redis_refusals_total`.

use redis::{ErrorKind, RedisError};
use rustls::{AlertDescription, CertificateError};

/// A refusal by Redis or of Redis: a certificate refused either way, or the ACL user refused.
/// It does not heal by itself (a rotated password, an expired certificate), so it is said as
/// such in the log and counted by kind (`courier_redis_refusals_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `WRONGPASS`: the user or password is not (or no longer) accepted.
    WrongPass,
    /// `NOPERM`: the user may not run a command or use a key.
    NoPerm,
    /// `NOAUTH`: Redis wants a password and none was given.
    NoAuth,
    /// Redis's certificate is not issued by a trusted CA.
    TlsUnknownIssuer,
    /// Redis's certificate does not name the host.
    TlsWrongName,
    /// Redis's certificate expired or is not valid yet.
    TlsExpired,
    /// Redis's certificate was refused for another reason.
    TlsCertificate,
    /// Redis refused courier's client certificate.
    TlsClientCertificate,
    /// Another TLS handshake failure.
    TlsHandshake,
}

impl Refusal {
    /// Every refusal, in label order.
    pub const ALL: [Refusal; 9] = [
        Refusal::WrongPass,
        Refusal::NoPerm,
        Refusal::NoAuth,
        Refusal::TlsUnknownIssuer,
        Refusal::TlsWrongName,
        Refusal::TlsExpired,
        Refusal::TlsCertificate,
        Refusal::TlsClientCertificate,
        Refusal::TlsHandshake,
    ];

    /// What it means, in words that hold no secret (never the server's message or the URL).
    pub fn message(self) -> &'static str {
        match self {
            Refusal::WrongPass => "ACL: Redis refused the user name or password of REDIS_URL (WRONGPASS)",
            Refusal::NoPerm => "ACL: the Redis user may not run a command or use a key courier needs (NOPERM)",
            Refusal::NoAuth => "ACL: Redis requires a password and REDIS_URL has none (NOAUTH)",
            Refusal::TlsUnknownIssuer => {
                "TLS: Redis's certificate is not issued by a trusted CA (the system roots or REDIS_CA_FILE)"
            }
            Refusal::TlsWrongName => "TLS: Redis's certificate is not valid for the host of REDIS_URL",
            Refusal::TlsExpired => "TLS: Redis's certificate has expired or is not valid yet",
            Refusal::TlsCertificate => "TLS: Redis's certificate was refused",
            Refusal::TlsClientCertificate => {
                "TLS: Redis refused courier's client certificate (none given, or not one Redis trusts: REDIS_CLIENT_CERT_FILE)"
            }
            Refusal::TlsHandshake => "TLS: the handshake with Redis failed",
        }
    }

    /// The `reason` label of `courier_redis_refusals_total`.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::WrongPass => "acl_wrongpass",
            Refusal::NoPerm => "acl_noperm",
            Refusal::NoAuth => "acl_noauth",
            Refusal::TlsUnknownIssuer => "tls_unknown_issuer",
            Refusal::TlsWrongName => "tls_wrong_name",
            Refusal::TlsExpired => "tls_expired",
            Refusal::TlsCertificate => "tls_certificate",
            Refusal::TlsClientCertificate => "tls_client_certificate",
            Refusal::TlsHandshake => "tls_handshake",
        }
    }

    /// Whether it refuses the connection itself (its credentials or a certificate), rather
    /// than one command (`NOPERM`).
    pub fn of_connection(self) -> bool {
        self != Refusal::NoPerm
    }

    /// The refusal a [`super::describe`] text says, if it says one.
    pub fn of_text(why: &str) -> Option<Refusal> {
        Refusal::ALL.into_iter().find(|refusal| refusal.message() == why)
    }

    /// The refusal `e` is, if it is one.
    pub fn of(e: &RedisError) -> Option<Refusal> {
        if e.kind() == ErrorKind::AuthenticationFailed || e.code() == Some("WRONGPASS") {
            return Some(Refusal::WrongPass);
        }
        match e.code() {
            Some("NOPERM") => return Some(Refusal::NoPerm),
            Some("NOAUTH") => return Some(Refusal::NoAuth),
            _ => {}
        }
        Some(match tls_error(e)? {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => Refusal::TlsUnknownIssuer,
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => Refusal::TlsWrongName,
            rustls::Error::InvalidCertificate(
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. },
            ) => Refusal::TlsExpired,
            rustls::Error::InvalidCertificate(_) => Refusal::TlsCertificate,
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
            ) => Refusal::TlsClientCertificate,
            _ => Refusal::TlsHandshake,
        })
    }
}

/// What a refusal by Redis or of Redis means, when `e` is one (see [`Refusal`]).
pub fn refusal(e: &RedisError) -> Option<&'static str> {
    Refusal::of(e).map(Refusal::message)
}

/// Whether a [`super::describe`] text is a refusal (see [`refusal`]).
pub fn is_refusal(why: &str) -> bool {
    Refusal::of_text(why).is_some()
}

/// The TLS error behind a Redis I/O error, if it is one.
fn tls_error(e: &RedisError) -> Option<&rustls::Error> {
    let io = std::error::Error::source(e)?.downcast_ref::<std::io::Error>()?;
    io.get_ref()?.downcast_ref::<rustls::Error>()
}

#[cfg(test)]
mod tests {
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
    fn each_refusal_is_told_by_its_text_and_has_its_own_label() {
        for refusal in Refusal::ALL {
            assert_eq!(Refusal::of_text(refusal.message()), Some(refusal));
        }
        let labels: std::collections::BTreeSet<&str> = Refusal::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), Refusal::ALL.len());
        assert_eq!(Refusal::of_text("connection lost"), None);
    }
}
