//! Clients identified by their TLS client certificate: the `tls_names` of a client in the
//! clients file, matched against the names of a certificate the gateway listener verified
//! against `COURIER_TLS_CLIENT_CA_FILE`.
//!
//! A name is one of three kinds, told apart by its form, and matched against one part of the
//! certificate only, so that a name of one kind can never be satisfied by a field of another:
//! - a URI (it has `://`, e.g. a SPIFFE ID `spiffe://example.org/ns/billing/sa/api`): a
//!   subjectAltName URI, compared exactly;
//! - `CN=<name>`: the subject's common name, compared exactly (for CAs that issue client
//!   certificates without subjectAltNames);
//! - anything else is a DNS name (`billing.svc.internal`): a subjectAltName DNS name, compared
//!   without regard to ASCII case. No wildcards: a certificate for `*.svc.internal` matches the
//!   name `*.svc.internal` only, never `billing.svc.internal`.
//!
//! A name belongs to one client only (the clients file is refused otherwise), and a certificate
//! whose names match two clients identifies nobody: an identity is never a guess.

use std::fmt;

/// One name a client's certificate may carry.
#[derive(Clone, PartialEq, Eq)]
pub enum TlsName {
    /// A subjectAltName URI.
    Uri(String),
    /// A subjectAltName DNS name, lower case.
    Dns(String),
    /// The subject's common name.
    CommonName(String),
}

impl fmt::Debug for TlsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsName::Uri(uri) => write!(f, "{uri}"),
            TlsName::Dns(dns) => write!(f, "{dns}"),
            TlsName::CommonName(cn) => write!(f, "CN={cn}"),
        }
    }
}

/// The longest name accepted (a DNS name is at most 253 bytes; URIs are kept as short).
const MAX_NAME_BYTES: usize = 255;

impl TlsName {
    /// Parses a `tls_names` entry; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<TlsName, String> {
        if text.is_empty() || text.len() > MAX_NAME_BYTES || text.chars().any(|c| c.is_control() || c == ' ') {
            return Err(format!("tls_name {text:?} is empty, longer than {MAX_NAME_BYTES} bytes, or has spaces"));
        }
        if let Some(cn) = text.strip_prefix("CN=") {
            return if cn.is_empty() { Err("tls_name \"CN=\" names no common name".into()) } else { Ok(Self::cn(cn)) };
        }
        if let Some((scheme, rest)) = text.split_once("://") {
            let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
            if !scheme_ok || rest.is_empty() {
                return Err(format!("tls_name {text:?} is not a URI (scheme://rest)"));
            }
            return Ok(TlsName::Uri(text.to_owned()));
        }
        let labels_ok = text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'*')
        });
        if !labels_ok {
            return Err(format!("tls_name {text:?} is neither a URI (scheme://...), CN=<common name>, nor a DNS name"));
        }
        Ok(TlsName::Dns(text.to_ascii_lowercase()))
    }

    fn cn(cn: &str) -> TlsName {
        TlsName::CommonName(cn.to_owned())
    }

    /// Whether a certificate with these names carries this one.
    pub fn matches(&self, peer: &PeerNames) -> bool {
        match self {
            TlsName::Uri(uri) => peer.uris.iter().any(|u| u == uri),
            TlsName::Dns(dns) => peer.dns.iter().any(|d| d.eq_ignore_ascii_case(dns)),
            TlsName::CommonName(cn) => peer.common_names.iter().any(|c| c == cn),
        }
    }
}

/// The names of a verified client certificate, read once per connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerNames {
    /// subjectAltName URIs.
    pub uris: Vec<String>,
    /// subjectAltName DNS names.
    pub dns: Vec<String>,
    /// The subject's common names (usually one).
    pub common_names: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uris: &[&str], dns: &[&str], cns: &[&str]) -> PeerNames {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        PeerNames { uris: own(uris), dns: own(dns), common_names: own(cns) }
    }

    #[test]
    fn each_kind_matches_its_own_field_only() {
        let spiffe = TlsName::parse("spiffe://example.org/ns/billing/sa/api").unwrap();
        let dns = TlsName::parse("Billing.SVC.internal").unwrap();
        let cn = TlsName::parse("CN=billing").unwrap();
        assert_eq!(dns, TlsName::Dns("billing.svc.internal".into()));
        let cert = peer(&["spiffe://example.org/ns/billing/sa/api"], &["BILLING.svc.internal"], &["billing"]);
        assert!(spiffe.matches(&cert) && dns.matches(&cert) && cn.matches(&cert));
        // The same text in another field is no match: a CN is not a DNS name, a DNS name no CN.
        let crossed = peer(&[], &["billing"], &["billing.svc.internal", "spiffe://example.org/ns/billing/sa/api"]);
        assert!(!spiffe.matches(&crossed) && !dns.matches(&crossed) && !cn.matches(&crossed));
        // No wildcard expansion, and URIs compare exactly.
        assert!(!dns.matches(&peer(&[], &["*.svc.internal"], &[])));
        assert!(!spiffe.matches(&peer(&["spiffe://example.org/ns/billing/sa/API"], &[], &[])));
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in ["", "CN=", "has space.example", "://x", "1http://x", "a..b", "spiffe://", "é.example"] {
            assert!(TlsName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(TlsName::parse(&"a".repeat(256)).is_err());
    }
}
