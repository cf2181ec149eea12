//! A callback sink, so `courier demo` can show a whole async request, callback included,
//! without a receiver of one's own: `POST /_sim/callbacks` records each callback it gets and
//! checks its `X-Courier-Signature` the way a receiver would, `GET /_sim/callbacks` lists what
//! arrived with `verified: true|false`.
//!
//! The check is written here from the documented scheme (HMAC-SHA256 of `"<t>.<body>"`, hex,
//! a timestamp within five minutes), not borrowed from courier's signing code: the simulator
//! shares no code with the gateway, and a sink that reused the signer would agree with any
//! mistake in it. Only the last [`KEPT`] callbacks are kept, each body up to 64 KiB, so the
//! sink's memory is bounded however long a demo runs.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::tokens::constant_time_eq;

/// Callbacks kept; older ones are dropped (and counted).
pub const KEPT: usize = 100;
/// Largest body kept as it came; a larger one is checked, then kept as a note of its size.
const BODY_KEPT_BYTES: usize = 64 * 1024;
/// How far a signature's timestamp may be from now, either way, as receivers are told to check.
const TOLERANCE: Duration = Duration::from_secs(300);

/// One callback the sink received.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReceivedCallback {
    /// When it arrived (RFC 3339, UTC).
    pub received_at: String,
    /// The body's `request_id`, when the body is a JSON object with one.
    pub request_id: Option<String>,
    /// The body's `status`, when it has one.
    pub status: Option<String>,
    /// Whether `X-Courier-Signature` is a valid, fresh signature of the body under the sink's
    /// callback secret.
    pub verified: bool,
    /// Why not, when `verified` is false.
    pub problem: Option<String>,
    /// The body: JSON as sent, or the text when it is not JSON (a note of its size past 64 KiB).
    pub body: serde_json::Value,
}

/// What `GET /_sim/callbacks` answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallbacksReport {
    /// The callbacks kept, oldest first.
    pub callbacks: Vec<ReceivedCallback>,
    /// Callbacks received but no longer kept.
    pub dropped: u64,
}

/// The sink's state: the secret signatures are checked with, and what arrived.
#[derive(Default)]
pub(crate) struct Sink {
    secret: Mutex<Option<Vec<u8>>>,
    kept: Mutex<VecDeque<ReceivedCallback>>,
    dropped: AtomicU64,
}

impl Sink {
    /// A sink checking signatures with `secret` (none: every callback is unverified).
    pub(crate) fn new(secret: Option<&str>) -> Sink {
        let sink = Sink::default();
        sink.set_secret(secret.map(str::as_bytes));
        sink
    }

    /// Replaces the secret signatures are checked with.
    pub(crate) fn set_secret(&self, secret: Option<&[u8]>) {
        *self.secret.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = secret.map(<[u8]>::to_vec);
    }

    /// Records one callback and returns what was recorded.
    pub(crate) fn receive(&self, signature: Option<&str>, body: &[u8]) -> ReceivedCallback {
        let now = SystemTime::now();
        let unix = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let problem = {
            let secret = self.secret.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match (secret.as_deref(), signature) {
                (None, _) => Some("the simulator has no callback secret (courier simulate --callback-secret)"),
                (Some(_), None) => Some("no X-Courier-Signature header"),
                (Some(secret), Some(header)) => check(secret, header, body, unix).err(),
            }
        };
        let json: Option<serde_json::Value> =
            if body.len() <= BODY_KEPT_BYTES { serde_json::from_slice(body).ok() } else { None };
        let field = |name: &str| json.as_ref().and_then(|v| v[name].as_str()).map(str::to_owned);
        let received = ReceivedCallback {
            received_at: humantime::format_rfc3339_seconds(now).to_string(),
            request_id: field("request_id"),
            status: field("status"),
            verified: problem.is_none(),
            problem: problem.map(str::to_owned),
            body: match (&json, body.len() <= BODY_KEPT_BYTES) {
                (Some(json), _) => json.clone(),
                (None, true) => String::from_utf8_lossy(body).into_owned().into(),
                (None, false) => format!("({} bytes, not kept)", body.len()).into(),
            },
        };
        let mut kept = self.kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if kept.len() == KEPT {
            kept.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        kept.push_back(received.clone());
        received
    }

    /// What arrived, oldest first.
    pub(crate) fn report(&self) -> CallbacksReport {
        let kept = self.kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        CallbacksReport { callbacks: kept.iter().cloned().collect(), dropped: self.dropped.load(Ordering::Relaxed) }
    }
}

/// Checks `t=<unix time>,v1=<hex>[,v1=…]` against `body` at `now` (unix seconds).
fn check(secret: &[u8], header: &str, body: &[u8], now: u64) -> Result<(), &'static str> {
    let mut t = None;
    let mut macs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = Some(value.parse::<u64>().map_err(|_| "the signature's t is not a number")?),
            Some(("v1", value)) => macs.push(value),
            _ => {}
        }
    }
    let t = t.ok_or("the signature has no t=")?;
    if now.abs_diff(t) > TOLERANCE.as_secs() {
        return Err("the signature's timestamp is more than 300 s from now");
    }
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).map_err(|_| "unusable secret")?;
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let expected = hex::encode(mac.finalize().into_bytes());
    if macs.iter().any(|given| constant_time_eq(given.as_bytes(), expected.as_bytes())) {
        Ok(())
    } else {
        Err("the signature does not match the body under the simulator's callback secret")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"request_id":"req_1","status":"completed"}"#;

    /// A signature made as the README tells a receiver to check it (python3:
    /// `hmac.new(b"whsec_test_secret", b"1705314600." + body, hashlib.sha256).hexdigest()`).
    const HEADER: &str = "t=1705314600,v1=b70dc4c000e9ff1b9c16df5749c256a4c389d778a6427ea986be7f5df4462513";
    const SECRET: &[u8] = b"whsec_test_secret";
    const T: u64 = 1_705_314_600;

    #[test]
    fn a_valid_signature_passes_and_anything_else_says_why_not() {
        assert_eq!(check(SECRET, HEADER, BODY, T + 299), Ok(()));
        assert_eq!(check(SECRET, &format!("v1=00,{HEADER}"), BODY, T), Ok(()), "any v1 may match");
        let mismatch = Err("the signature does not match the body under the simulator's callback secret");
        assert_eq!(check(b"other", HEADER, BODY, T), mismatch);
        assert_eq!(check(SECRET, HEADER, br#"{"request_id":"req_2"}"#, T), mismatch);
        assert_eq!(check(SECRET, HEADER, BODY, T + 301), Err("the signature's timestamp is more than 300 s from now"));
        assert_eq!(check(SECRET, "v1=abc", BODY, T), Err("the signature has no t="));
    }

    #[test]
    fn the_sink_records_fields_and_verdicts_and_keeps_only_the_last() {
        let sink = Sink::new(None);
        let got = sink.receive(Some(HEADER), BODY);
        assert_eq!((got.request_id.as_deref(), got.status.as_deref()), (Some("req_1"), Some("completed")));
        assert!(!got.verified && got.problem.unwrap().contains("no callback secret"));
        sink.set_secret(Some(b"whsec_test_secret"));
        // The fixed vector is older than five minutes now, so only freshness fails.
        let got = sink.receive(Some(HEADER), BODY);
        assert_eq!(got.problem.as_deref(), Some("the signature's timestamp is more than 300 s from now"));
        let got = sink.receive(None, b"not json");
        assert_eq!((got.verified, got.body), (false, serde_json::Value::from("not json")));
        let big = format!("[{}0]", "0,".repeat(BODY_KEPT_BYTES));
        assert_eq!(sink.receive(None, big.as_bytes()).body, format!("({} bytes, not kept)", big.len()).as_str());
        for _ in 0..KEPT {
            sink.receive(None, BODY);
        }
        let report = sink.report();
        assert_eq!((report.callbacks.len(), report.dropped), (KEPT, 4));
    }
}
