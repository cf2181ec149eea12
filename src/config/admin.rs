//! The admin token: who may use the admin routes that change courier's state or name its
//! clients (`COURIER_ADMIN_TOKEN` or `COURIER_ADMIN_TOKEN_FILE`).
//!
//! Without a token the admin routes are open, which is safe only while nobody but the host can
//! reach them: so an admin listener on a non-loopback address without a token is a
//! configuration error, reported with the other bad settings, and courier does not start.
//! `courier demo` and a default `serve` bind 127.0.0.1 and stay as simple as they were.
//!
//! The token is kept as its SHA-256 digest ([`AdminToken`]) and a presented token is compared
//! digest to digest in constant time: the digests have a fixed length, so neither the token's
//! length nor the position of the first differing byte shows in the time a refusal takes.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::reader::{Env, FileValues, Reader};
use super::{ConfigErrors, SecretSource};

/// The token variable; `<TOKEN_VAR>_FILE` names a file holding it.
pub const TOKEN_VAR: &str = "COURIER_ADMIN_TOKEN";

/// The expected form of a token, for error lines.
pub const TOKEN_FORM: &str = "at least 16 visible ASCII characters, e.g. the output of `openssl rand -hex 32`";

/// How to fix an admin listener that would be open to the network.
const OPEN_FIX: &str = "set COURIER_ADMIN_TOKEN or COURIER_ADMIN_TOKEN_FILE, or bind COURIER_ADMIN_LISTEN to 127.0.0.1";

/// The fewest characters a token may have: a short token can be guessed over the network.
const MIN_TOKEN_CHARS: usize = 16;

/// The admin listener's lock.
#[derive(Clone)]
pub struct AdminConfig {
    /// The bearer token of the locked admin routes; `None`: they are open (allowed only while
    /// the admin listener is bound to a loopback address).
    pub token: Option<SecretString>,
    /// Where the token came from (a file is watched and reloaded).
    pub token_source: SecretSource,
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .field("token_source", &self.token_source)
            .finish()
    }
}

impl AdminConfig {
    /// Reads `COURIER_ADMIN_TOKEN` / `_FILE`, and refuses an open admin listener (no token)
    /// on an address that is not loopback.
    pub(super) fn read(r: &mut Reader<'_>, listen: SocketAddr) -> AdminConfig {
        let file_var = format!("{TOKEN_VAR}_FILE");
        let (token, token_source) = match r.optional_secret(TOKEN_VAR) {
            Some((token, source)) => match token_problem(&token) {
                None => (Some(token), source),
                Some(problem) => {
                    let var = if source == SecretSource::Inline { TOKEN_VAR } else { file_var.as_str() };
                    r.problem(var, problem, TOKEN_FORM);
                    (None, source)
                }
            },
            None => (None, SecretSource::Inline),
        };
        let token_reported = r.reported(TOKEN_VAR) || r.reported(&file_var);
        if token.is_none() && !token_reported && !is_loopback(listen) {
            let problem = format!("{listen} is not a loopback address and no admin token is set");
            r.problem("COURIER_ADMIN_LISTEN", problem, OPEN_FIX);
        }
        AdminConfig { token, token_source }
    }
}

/// What is wrong with a token, if anything (never quoting it).
pub fn token_problem(token: &SecretString) -> Option<String> {
    let token = token.expose_secret();
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Some("has characters that cannot be sent in an Authorization header".into());
    }
    if token.len() < MIN_TOKEN_CHARS {
        return Some(format!("is shorter than {MIN_TOKEN_CHARS} characters"));
    }
    None
}

/// Whether only this host can reach `addr`: 127.0.0.0/8, `::1`, or `::ffff:127.x.y.z`.
pub fn is_loopback(addr: SocketAddr) -> bool {
    match addr.ip() {
        IpAddr::V4(ip) => ip.is_loopback(),
        IpAddr::V6(ip) => ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// The admin token in use, held as its SHA-256 digest.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken([u8; 32]);

impl AdminToken {
    /// The token `token` (already checked by [`token_problem`]).
    pub fn new(token: &SecretString) -> AdminToken {
        AdminToken(Sha256::digest(token.expose_secret().as_bytes()).into())
    }

    /// Whether `presented` is this token. Digest against digest in constant time: see the
    /// module doc for why.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        bool::from(self.0.ct_eq(&digest))
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken([REDACTED])")
    }
}

/// What an audit line shows of a presented token: the first 12 hex digits of its SHA-256.
/// Enough to tell which of two tokens was used (the old or the new one during a rotation),
/// useless for finding the token.
pub fn token_fingerprint(presented: &[u8]) -> String {
    let digest = Sha256::digest(presented);
    hex::encode(&digest[..6])
}

/// `COURIER_ADMIN_LISTEN` alone, read and checked as `serve` reads it, for `courier probe`: a
/// health check asks the admin listener and must not fail on settings it does not use.
pub fn admin_listen(env: &dyn Env) -> Result<SocketAddr, ConfigErrors> {
    let no_file = FileValues::default();
    let mut r = Reader::new(env, &no_file);
    let addr = r.addr("COURIER_ADMIN_LISTEN", "127.0.0.1:9090");
    r.finish().map(|()| addr)
}

/// `COURIER_ADMIN_TLS_CERT_FILE` alone, for `courier probe`: when the admin listener serves
/// HTTPS, the probe asks over TLS and trusts exactly this certificate.
pub fn admin_tls_cert(env: &dyn Env) -> Option<PathBuf> {
    env.var(super::listener_tls::ADMIN_VARS.cert).filter(|v| !v.is_empty()).map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::test_env as env;

    fn errors(pairs: &[(&str, &str)]) -> Vec<String> {
        let errors = crate::config::Config::from_sources(&env(pairs), None).unwrap_err();
        errors.0.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn an_open_admin_listener_off_loopback_is_one_error_saying_how_to_fix_it() {
        for listen in ["0.0.0.0:9090", "[::]:9090", "10.1.2.3:9090"] {
            let lines = errors(&[("COURIER_ADMIN_LISTEN", listen)]);
            assert_eq!(
                lines,
                [format!(
                    "COURIER_ADMIN_LISTEN: {listen} is not a loopback address and no admin token is set (expected: \
                     set COURIER_ADMIN_TOKEN or COURIER_ADMIN_TOKEN_FILE, or bind COURIER_ADMIN_LISTEN to 127.0.0.1)"
                )]
            );
        }
    }

    #[test]
    fn a_token_allows_any_address_and_is_never_printed() {
        let token = "admin-token-0123456789";
        let env = env(&[("COURIER_ADMIN_LISTEN", "0.0.0.0:9090"), (TOKEN_VAR, token)]);
        let config = crate::config::Config::from_sources(&env, None).unwrap();
        assert_eq!(config.admin.token.as_ref().map(|t| t.expose_secret().to_owned()), Some(token.to_owned()));
        assert_eq!(config.admin.token_source, SecretSource::Inline);
        let debug = format!("{config:?}");
        assert!(!debug.contains(token) && debug.contains("AdminConfig"), "{debug}");
        // On loopback no token is needed.
        let open = crate::config::Config::from_sources(&self::env(&[]), None).unwrap();
        assert!(open.admin.token.is_none());
    }

    #[test]
    fn a_token_file_is_read_and_its_problems_name_the_file_variable() {
        let dir = std::env::temp_dir().join(format!("courier-admin-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "admin-token-from-a-file\n").unwrap();
        let file = path.to_str().unwrap();
        let config = crate::config::Config::from_sources(&env(&[("COURIER_ADMIN_TOKEN_FILE", file)]), None).unwrap();
        assert_eq!(config.admin.token.unwrap().expose_secret(), "admin-token-from-a-file");
        assert_eq!(config.admin.token_source, SecretSource::File(path.clone()));

        std::fs::write(&path, "too-short\n").unwrap();
        let lines = errors(&[("COURIER_ADMIN_TOKEN_FILE", file), ("COURIER_ADMIN_LISTEN", "0.0.0.0:9090")]);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("COURIER_ADMIN_TOKEN_FILE: is shorter than 16"), "{lines:?}");
        assert!(!lines[0].contains("too-short"), "{lines:?}");
        let both = errors(&[("COURIER_ADMIN_TOKEN_FILE", file), (TOKEN_VAR, "admin-token-0123456789")]);
        assert_eq!(both.len(), 1, "{both:?}");
        assert!(both[0].starts_with("COURIER_ADMIN_TOKEN: is set together with COURIER_ADMIN_TOKEN_FILE"), "{both:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn loopback_addresses_are_told_from_the_others() {
        for addr in ["127.0.0.1:9090", "127.0.0.2:0", "[::1]:9090", "[::ffff:127.0.0.1]:9090"] {
            assert!(is_loopback(addr.parse().unwrap()), "{addr}");
        }
        for addr in ["0.0.0.0:9090", "[::]:9090", "10.0.0.5:9090", "[::ffff:10.0.0.5]:9090", "192.168.1.2:0"] {
            assert!(!is_loopback(addr.parse().unwrap()), "{addr}");
        }
    }

    #[test]
    fn a_token_matches_itself_only() {
        let token = AdminToken::new(&SecretString::from("admin-token-0123456789"));
        assert!(token.matches(b"admin-token-0123456789"));
        assert!(!token.matches(b"admin-token-012345678"));
        assert!(!token.matches(b""));
        assert_eq!(format!("{token:?}"), "AdminToken([REDACTED])");
    }

    #[test]
    fn a_fingerprint_is_twelve_hex_digits_of_the_digest() {
        let print = token_fingerprint(b"admin-token-0123456789");
        assert_eq!(print.len(), 12);
        assert!(print.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(print, &hex::encode(Sha256::digest(b"admin-token-0123456789"))[..12]);
        assert_ne!(print, token_fingerprint(b"admin-token-0123456780"));
    }

    #[test]
    fn short_or_unsendable_tokens_are_refused_without_quoting_them() {
        let short = token_problem(&SecretString::from("short-secret")).unwrap();
        assert!(short.contains("shorter than 16") && !short.contains("short-secret"), "{short}");
        assert!(token_problem(&SecretString::from("a token with spaces in it")).is_some());
        assert!(token_problem(&SecretString::from("0123456789abcdef")).is_none());
    }
}
