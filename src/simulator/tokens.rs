//! Self-validating access tokens.
//!
//! A token is `<epoch>.<expiry unix ms>.<nonce>.<mac>`, where `mac` is the
//! first 16 bytes (32 hex digits) of SHA-256 over a random per-process secret
//! followed by the other three fields. Validating a token needs no shared
//! table and no lock: recompute the MAC, compare the epoch with one atomic
//! and the expiry with the clock. "Revoke all tokens" bumps the epoch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

const MAC_BYTES: usize = 16;

/// Why a presented token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenError {
    /// Not of the form this issuer produces.
    Malformed,
    /// The MAC does not match: forged, altered, or from another process.
    BadMac,
    /// Minted under an older (or other) revocation epoch.
    Revoked,
    /// Past its expiry time.
    Expired,
}

/// Mints and checks tokens; shared by all workers. (No `Debug`: it holds the secret.)
pub(crate) struct TokenIssuer {
    secret: [u8; 32],
    epoch: AtomicU64,
    nonce: AtomicU64,
    ttl_ms: u64,
}

/// Current wall-clock time in Unix milliseconds.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl TokenIssuer {
    /// An issuer with a fresh random secret, the given token lifetime and initial epoch.
    pub(crate) fn new(ttl: Duration, epoch: u64) -> Self {
        Self {
            secret: rand::random(),
            epoch: AtomicU64::new(epoch),
            nonce: AtomicU64::new(rand::random()),
            // At least 1 ms, so a token is never born expired.
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1),
        }
    }

    /// Mints a token valid from `now_ms` for the configured lifetime.
    pub(crate) fn issue(&self, now_ms: u64) -> String {
        let epoch = self.epoch();
        let expiry = now_ms.saturating_add(self.ttl_ms);
        let nonce = self.nonce.fetch_add(1, Ordering::Relaxed);
        let body = format!("{epoch}.{expiry}.{nonce:016x}");
        let mac = hex::encode(self.mac(&body));
        format!("{body}.{mac}")
    }

    /// Checks a token at `now_ms`.
    pub(crate) fn validate(&self, token: &str, now_ms: u64) -> Result<(), TokenError> {
        let (body, mac_hex) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let mut fields = body.splitn(3, '.');
        let epoch = parse_decimal(fields.next())?;
        let expiry = parse_decimal(fields.next())?;
        let mut mac = [0u8; MAC_BYTES];
        hex::decode_to_slice(mac_hex, &mut mac).map_err(|_| TokenError::Malformed)?;
        if !constant_time_eq(&mac, &self.mac(body)) {
            return Err(TokenError::BadMac);
        }
        if epoch != self.epoch() {
            return Err(TokenError::Revoked);
        }
        if now_ms >= expiry {
            return Err(TokenError::Expired);
        }
        Ok(())
    }

    /// The current revocation epoch.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Invalidates every token issued so far; returns the new epoch.
    pub(crate) fn revoke_all(&self) -> u64 {
        self.epoch.fetch_add(1, Ordering::AcqRel).wrapping_add(1)
    }

    /// Sets the epoch explicitly (tokens minted under any other epoch become invalid).
    pub(crate) fn set_epoch(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::Release);
    }

    fn mac(&self, body: &str) -> [u8; MAC_BYTES] {
        let digest = Sha256::new().chain_update(self.secret).chain_update(body.as_bytes()).finalize();
        let mut out = [0u8; MAC_BYTES];
        out.copy_from_slice(&digest[..MAC_BYTES]);
        out
    }
}

fn parse_decimal(field: Option<&str>) -> Result<u64, TokenError> {
    match field {
        Some(f) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => {
            f.parse().map_err(|_| TokenError::Malformed)
        }
        _ => Err(TokenError::Malformed),
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn issuer() -> TokenIssuer {
        TokenIssuer::new(Duration::from_secs(60), 0)
    }

    #[test]
    fn issued_token_validates_until_expiry() {
        let t = issuer();
        let tok = t.issue(NOW);
        assert_eq!(t.validate(&tok, NOW), Ok(()));
        assert_eq!(t.validate(&tok, NOW + 59_999), Ok(()));
        assert_eq!(t.validate(&tok, NOW + 60_000), Err(TokenError::Expired));
    }

    #[test]
    fn fractional_ttl_is_kept_to_the_millisecond() {
        let t = TokenIssuer::new(Duration::from_secs_f64(0.25), 0);
        let tok = t.issue(NOW);
        assert_eq!(t.validate(&tok, NOW + 249), Ok(()));
        assert_eq!(t.validate(&tok, NOW + 250), Err(TokenError::Expired));
    }

    #[test]
    fn tokens_are_unique() {
        let t = issuer();
        assert_ne!(t.issue(NOW), t.issue(NOW));
    }

    #[test]
    fn revoke_invalidates_older_tokens_only() {
        let t = issuer();
        let old = t.issue(NOW);
        assert_eq!(t.revoke_all(), 1);
        assert_eq!(t.validate(&old, NOW), Err(TokenError::Revoked));
        let new = t.issue(NOW);
        assert_eq!(t.validate(&new, NOW), Ok(()));
        t.set_epoch(0);
        assert_eq!(t.validate(&old, NOW), Ok(()));
        assert_eq!(t.validate(&new, NOW), Err(TokenError::Revoked));
    }

    #[test]
    fn tampering_is_detected() {
        let t = issuer();
        let tok = t.issue(NOW);
        let (epoch, rest) = tok.split_once('.').unwrap();
        let (expiry, rest) = rest.split_once('.').unwrap();
        let longer = format!("{epoch}.{}.{rest}", expiry.parse::<u64>().unwrap() + 1);
        assert_eq!(t.validate(&longer, NOW), Err(TokenError::BadMac));
        // Same fields, other process (other secret).
        assert_eq!(issuer().validate(&tok, NOW), Err(TokenError::BadMac));
    }

    #[test]
    fn garbage_is_malformed() {
        let t = issuer();
        for bad in [
            "",
            "abc",
            "1.2.3",
            "x.1.00.00000000000000000000000000000000",
            "0.1.00.zz",
            "0..00.00000000000000000000000000000000",
            "0.+1.00.00000000000000000000000000000000",
            "0.99999999999999999999999.00.00000000000000000000000000000000",
        ] {
            assert_eq!(t.validate(bad, NOW), Err(TokenError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn constant_time_eq_works() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
