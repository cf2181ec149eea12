//! The callback signature: `t=<unix time>,v1=<lowercase hex HMAC-SHA256 of "<t>.<body>">`.
//!
//! The MAC proves the body came from someone holding the shared secret; putting the timestamp
//! inside the MAC lets a receiver refuse a captured request replayed later, because the
//! attacker cannot move `t` forward without the secret. Receivers compare in constant time
//! so the comparison leaks nothing about the expected MAC.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The request header that carries the signature.
pub const SIGNATURE_HEADER: &str = "X-Courier-Signature";

/// The MAC of `"<unix_time>.<body>"` under `secret`.
fn mac(secret: &[u8], unix_time: u64, body: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(unix_time.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// The signature header value for `body` sent at `unix_time` (seconds).
pub fn sign(secret: &[u8], unix_time: u64, body: &[u8]) -> String {
    format!("t={unix_time},v1={}", hex::encode(mac(secret, unix_time, body)))
}

/// Whether `header` is a valid signature of `body` under `secret`, made within `tolerance` of
/// `now` (unix seconds, either direction). Several `v1` entries are accepted (any may match,
/// for secret rotation); unknown entries are ignored; the MAC is compared in constant time.
pub fn verify(secret: &[u8], header: &str, body: &[u8], now: u64, tolerance: Duration) -> bool {
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => {
                if timestamp.is_some() {
                    return false;
                }
                match value.parse::<u64>() {
                    Ok(t) => timestamp = Some(t),
                    Err(_) => return false,
                }
            }
            Some(("v1", value)) => candidates.push(value),
            _ => {}
        }
    }
    let Some(t) = timestamp else { return false };
    if Duration::from_secs(now.abs_diff(t)) > tolerance {
        return false;
    }
    let expected = mac(secret, t, body);
    let mut matched = false;
    for candidate in candidates {
        if let Ok(given) = hex::decode(candidate) {
            // No early exit: every candidate is compared.
            matched |= bool::from(given.ct_eq(&expected));
        }
    }
    matched
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_test_secret";
    const BODY: &[u8] = br#"{"request_id":"req_1","status":"completed"}"#;
    const T: u64 = 1_705_314_600;
    const FIVE_MIN: Duration = Duration::from_secs(300);

    #[test]
    fn matches_a_vector_computed_independently() {
        // python3: hmac.new(b"whsec_test_secret", b"1705314600." + body, hashlib.sha256).hexdigest()
        assert_eq!(
            sign(SECRET, T, BODY),
            "t=1705314600,v1=b70dc4c000e9ff1b9c16df5749c256a4c389d778a6427ea986be7f5df4462513"
        );
        // python3: hmac.new(b"key", b"0.", hashlib.sha256).hexdigest()
        assert_eq!(sign(b"key", 0, b""), "t=0,v1=85841b4efc3cd7776c3c8f9b7cca9e281c550e5d19889d78e9e669c6337f000d");
    }

    #[test]
    fn round_trips_within_the_tolerance() {
        let header = sign(SECRET, T, BODY);
        assert!(verify(SECRET, &header, BODY, T, FIVE_MIN));
        assert!(verify(SECRET, &header, BODY, T + 300, FIVE_MIN));
        assert!(verify(SECRET, &header, BODY, T - 300, FIVE_MIN), "small clock skew is tolerated");
        assert!(verify(SECRET, &header.replace(',', " , "), BODY, T, FIVE_MIN));
    }

    #[test]
    fn refuses_a_tampered_body_timestamp_or_secret() {
        let header = sign(SECRET, T, BODY);
        assert!(!verify(SECRET, &header, br#"{"request_id":"req_2","status":"completed"}"#, T, FIVE_MIN));
        let moved = header.replace("t=1705314600", "t=1705314601");
        assert!(!verify(SECRET, &moved, BODY, T, FIVE_MIN));
        assert!(!verify(b"another secret", &header, BODY, T, FIVE_MIN));
    }

    #[test]
    fn refuses_stale_and_future_timestamps() {
        let header = sign(SECRET, T, BODY);
        assert!(!verify(SECRET, &header, BODY, T + 301, FIVE_MIN));
        assert!(!verify(SECRET, &header, BODY, T - 301, FIVE_MIN));
    }

    #[test]
    fn refuses_malformed_headers() {
        let v1 = sign(SECRET, T, BODY).split_once(",v1=").unwrap().1.to_owned();
        for header in [
            String::new(),
            format!("v1={v1}"),
            "t=1705314600".to_owned(),
            format!("t=abc,v1={v1}"),
            format!("t=1705314600,t=1705314600,v1={v1}"),
            format!("t=1705314600,v1={}", &v1[..62]),
            "t=1705314600,v1=zz".to_owned(),
        ] {
            assert!(!verify(SECRET, &header, BODY, T, FIVE_MIN), "{header:?}");
        }
    }

    #[test]
    fn accepts_any_matching_v1_and_ignores_unknown_schemes() {
        let header = sign(SECRET, T, BODY);
        let v1 = header.split_once(",v1=").unwrap().1;
        let rotated = format!("t={T},v1={},v0=legacy,v1={v1}", "00".repeat(32));
        assert!(verify(SECRET, &rotated, BODY, T, FIVE_MIN));
    }
}
