//! What one upstream attempt came to, decided once.

use std::time::{Duration, SystemTime};

use actix_web::http::header::{HeaderMap, HeaderValue, HttpDate};
use bytes::Bytes;

use super::policy::{self, Policies, QuotaSignal, Triple};

/// The classified result of one upstream attempt.
#[derive(Debug)]
pub enum Attempt {
    /// 2xx with a body.
    Success(Bytes),
    /// 400 / 413 / 422: the upstream refused the request's content; its message is kept.
    Rejected {
        /// The upstream's status code.
        status: u16,
        /// The upstream's error message, sanitised and shortened.
        message: String,
    },
    /// 401: the token was not accepted.
    Unauthorized,
    /// 403: the API key was not accepted.
    Forbidden,
    /// 429: the upstream's rate limit was hit.
    RateLimited,
    /// 5xx.
    ServerError(u16),
    /// Any other status (3xx with redirects off, 404, 409, ...).
    OtherStatus(u16),
    /// No complete answer within the attempt's time.
    Timeout,
    /// The connection could not be made or broke before an answer.
    Connect(&'static str),
    /// An answer that cannot be used (body unreadable, not the spec's shape).
    Invalid(&'static str),
    /// No trusted TLS connection: the upstream's certificate was refused (unknown CA, wrong
    /// host name, expired) or the handshake failed. A fixed reason from [`tls_failure`].
    Tls(&'static str),
    /// A 2xx whose body is larger than `COURIER_UPSTREAM_MAX_BODY_BYTES`.
    TooLarge,
}

/// The outcome label of an attempt, for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A usable 2xx.
    Success,
    /// 400 / 413 / 422.
    Rejected,
    /// 401.
    Unauthorized,
    /// 403.
    Forbidden,
    /// 429.
    RateLimited,
    /// 5xx.
    ServerError,
    /// Another status.
    OtherStatus,
    /// Timed out.
    Timeout,
    /// Connection failed.
    ConnectError,
    /// Unusable answer.
    InvalidResponse,
    /// No trusted TLS connection.
    TlsError,
    /// An answer over the size limit.
    TooLarge,
}

impl Outcome {
    /// Every outcome, for pre-registering metric children.
    pub const ALL: [Outcome; 12] = [
        Outcome::Success,
        Outcome::Rejected,
        Outcome::Unauthorized,
        Outcome::Forbidden,
        Outcome::RateLimited,
        Outcome::ServerError,
        Outcome::OtherStatus,
        Outcome::Timeout,
        Outcome::ConnectError,
        Outcome::InvalidResponse,
        Outcome::TlsError,
        Outcome::TooLarge,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Rejected => "rejected",
            Outcome::Unauthorized => "unauthorized",
            Outcome::Forbidden => "forbidden",
            Outcome::RateLimited => "rate_limited",
            Outcome::ServerError => "server_error",
            Outcome::OtherStatus => "other_status",
            Outcome::Timeout => "timeout",
            Outcome::ConnectError => "connect_error",
            Outcome::InvalidResponse => "invalid_response",
            Outcome::TlsError => "tls_error",
            Outcome::TooLarge => "too_large",
        }
    }
}

impl Attempt {
    /// The outcome label.
    pub fn outcome(&self) -> Outcome {
        match self {
            Attempt::Success(_) => Outcome::Success,
            Attempt::Rejected { .. } => Outcome::Rejected,
            Attempt::Unauthorized => Outcome::Unauthorized,
            Attempt::Forbidden => Outcome::Forbidden,
            Attempt::RateLimited => Outcome::RateLimited,
            Attempt::ServerError(_) => Outcome::ServerError,
            Attempt::OtherStatus(_) => Outcome::OtherStatus,
            Attempt::Timeout => Outcome::Timeout,
            Attempt::Connect(_) => Outcome::ConnectError,
            Attempt::Invalid(_) => Outcome::InvalidResponse,
            Attempt::Tls(_) => Outcome::TlsError,
            Attempt::TooLarge => Outcome::TooLarge,
        }
    }

    /// Whether another attempt may succeed where this one failed: connection errors,
    /// timeouts, 500/502/503/504 and 429. Never other 4xx, and never a TLS failure: a refused
    /// certificate is refused again until someone changes the certificate or the CA file.
    pub fn retryable(&self) -> bool {
        match self {
            Attempt::Timeout | Attempt::Connect(_) | Attempt::RateLimited => true,
            Attempt::ServerError(status) => matches!(status, 500 | 502 | 503 | 504),
            _ => false,
        }
    }

    /// Whether this attempt says the upstream is unhealthy (for the breaker): 5xx, timeouts,
    /// connection errors and unusable answers. 4xx, 429 included, are not upstream failures,
    /// and neither are TLS failures: like a refused API key they are a configuration fault
    /// that an open circuit cannot heal, and `circuit_open` would hide the cause.
    pub fn is_upstream_failure(&self) -> bool {
        matches!(
            self,
            Attempt::ServerError(_) | Attempt::Timeout | Attempt::Connect(_) | Attempt::Invalid(_) | Attempt::TooLarge
        )
    }

    /// What this attempt says about the upstream's health, for the breaker: healthy, failing,
    /// or nothing (`None`): a 429 is the budget's business, not the circuit's, and a refused
    /// certificate is configuration's, which an open circuit cannot heal.
    pub fn breaker_verdict(&self) -> Option<bool> {
        match self {
            Attempt::RateLimited | Attempt::Tls(_) => None,
            other => Some(!other.is_upstream_failure()),
        }
    }

    /// The upstream status code, when an answer arrived.
    pub fn status(&self) -> Option<u16> {
        match self {
            Attempt::Success(_) => Some(200),
            Attempt::Rejected { status, .. } => Some(*status),
            Attempt::Unauthorized => Some(401),
            Attempt::Forbidden => Some(403),
            Attempt::RateLimited => Some(429),
            Attempt::ServerError(s) | Attempt::OtherStatus(s) => Some(*s),
            Attempt::Timeout | Attempt::Connect(_) | Attempt::Invalid(_) | Attempt::Tls(_) | Attempt::TooLarge => None,
        }
    }

    /// A short, secret-free description of a failure, for logs.
    pub fn error(&self) -> Option<&'static str> {
        match self {
            Attempt::Success(_) => None,
            Attempt::Rejected { .. } => Some("rejected"),
            Attempt::Unauthorized => Some("token rejected"),
            Attempt::Forbidden => Some("api key rejected"),
            Attempt::RateLimited => Some("rate limited"),
            Attempt::ServerError(_) => Some("server error"),
            Attempt::OtherStatus(_) => Some("unexpected status"),
            Attempt::Timeout => Some("timeout"),
            Attempt::Connect(what) | Attempt::Invalid(what) | Attempt::Tls(what) => Some(what),
            Attempt::TooLarge => Some("answer body too large"),
        }
    }
}

/// When a connection error is a TLS failure (rustls refused the peer's certificate or the
/// handshake), a short, fixed, secret-free reason for logs; `None` for other I/O errors.
pub fn tls_failure(error: &std::io::Error) -> Option<&'static str> {
    use rustls::{CertificateError, Error};
    let tls = error.get_ref()?.downcast_ref::<Error>()?;
    Some(match tls {
        Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => "tls: certificate signed by an unknown CA",
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "tls: certificate not valid for the upstream's host name"
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "tls: certificate expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "tls: certificate not yet valid"
            }
            CertificateError::Revoked => "tls: certificate revoked",
            _ => "tls: certificate refused",
        },
        Error::AlertReceived(_) => "tls: the upstream refused the handshake",
        Error::NoCertificatesPresented => "tls: the upstream presented no certificate",
        Error::InvalidMessage(_) => "tls: the upstream did not speak TLS",
        _ => "tls: handshake failed",
    })
}

/// What the upstream said about its rate limit in one answer's headers.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RateSignal {
    /// `Retry-After`, as a delay from now.
    pub retry_after: Option<Duration>,
    /// `X-RateLimit-Limit` (or the IETF `RateLimit` `limit`).
    pub limit: Option<u64>,
    /// `X-RateLimit-Remaining` (or the IETF `RateLimit` `remaining`).
    pub remaining: Option<u64>,
    /// `X-RateLimit-Reset` (or the IETF `RateLimit` `reset`), as a delay from now.
    pub reset: Option<Duration>,
    /// The items of `RateLimit-Policy`.
    pub policies: Policies,
    /// A triple that describes a window longer than a minute (then not in the three fields
    /// above, which the budget reads as the per-minute rate).
    pub quota: Option<QuotaSignal>,
}

/// Resets above this many seconds are taken as Unix times, not delays.
const EPOCH_THRESHOLD: u64 = 1_000_000_000;

impl RateSignal {
    /// Reads the rate headers of an answer; absent or malformed headers stay `None`. A header sent
    /// more than once counts by its first value. A triple that describes a window longer than a
    /// minute goes to `quota`, not to the minute fields (`policy.rs` says how it is told).
    pub fn from_headers(headers: &HeaderMap) -> RateSignal {
        // One pass over the answer's few headers: each `HeaderMap::get` hashes the name with
        // SipHash, and six of them cost more than reading every header once.
        let (mut retry_after, mut limit, mut remaining, mut reset) = (None, None, None, None);
        let (mut ratelimit, mut policy) = (None, None);
        for (name, value) in headers.iter() {
            let slot = match name.as_str() {
                "retry-after" => &mut retry_after,
                "x-ratelimit-limit" => &mut limit,
                "x-ratelimit-remaining" => &mut remaining,
                "x-ratelimit-reset" => &mut reset,
                "ratelimit" => &mut ratelimit,
                "ratelimit-policy" => &mut policy,
                _ => continue,
            };
            slot.get_or_insert(value);
        }
        fn text(value: Option<&HeaderValue>) -> Option<&str> {
            value.and_then(|v| v.to_str().ok())
        }
        fn number(value: Option<&HeaderValue>) -> Option<u64> {
            text(value).and_then(|v| v.trim().parse::<u64>().ok())
        }
        let x = Triple { limit: number(limit), remaining: number(remaining), reset: number(reset).map(reset_delay) };
        let ietf = text(ratelimit).map(policy::ietf_triple).unwrap_or_default();
        let policies = text(policy).map(Policies::parse).unwrap_or_default();
        let (minute, quota) = policy::split(x, ietf, &policies);
        RateSignal {
            retry_after: text(retry_after).and_then(parse_retry_after),
            limit: minute.limit,
            remaining: minute.remaining,
            reset: minute.reset,
            policies,
            quota,
        }
    }

    /// Whether the answer carried any rate information.
    pub fn is_empty(&self) -> bool {
        *self == RateSignal::default()
    }
}

/// A reset value as a delay from now: Unix times (above [`EPOCH_THRESHOLD`]) are converted.
pub(super) fn reset_delay(value: u64) -> Duration {
    if value > EPOCH_THRESHOLD {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
        Duration::from_secs(value.saturating_sub(now))
    } else {
        Duration::from_secs(value)
    }
}

/// `Retry-After` as delta-seconds (fractions tolerated) or an HTTP date.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)));
    }
    let date: HttpDate = value.parse().ok()?;
    let at: SystemTime = date.into();
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderName;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(HeaderName::from_static(k), HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn retry_and_failure_follow_the_status_classes() {
        assert!(Attempt::ServerError(503).retryable() && Attempt::ServerError(503).is_upstream_failure());
        assert!(!Attempt::ServerError(501).retryable() && Attempt::ServerError(501).is_upstream_failure());
        assert!(Attempt::RateLimited.retryable() && !Attempt::RateLimited.is_upstream_failure());
        assert!(Attempt::Timeout.retryable() && Attempt::Connect("refused").retryable());
        for not_retried in [Attempt::Unauthorized, Attempt::Forbidden, Attempt::OtherStatus(404)] {
            assert!(!not_retried.retryable() && !not_retried.is_upstream_failure(), "{not_retried:?}");
        }
        let rejected = Attempt::Rejected { status: 400, message: "bad".into() };
        assert!(!rejected.retryable() && !rejected.is_upstream_failure());
        let tls = Attempt::Tls("tls: certificate signed by an unknown CA");
        assert!(!tls.retryable() && !tls.is_upstream_failure());
        assert_eq!((tls.outcome().as_str(), tls.status()), ("tls_error", None));
    }

    #[test]
    fn the_breaker_hears_health_not_rate_limits_or_certificates() {
        assert_eq!(Attempt::ServerError(500).breaker_verdict(), Some(false));
        assert_eq!(Attempt::Timeout.breaker_verdict(), Some(false));
        assert_eq!(Attempt::Success(bytes::Bytes::new()).breaker_verdict(), Some(true));
        assert_eq!(Attempt::OtherStatus(404).breaker_verdict(), Some(true), "the upstream answered");
        assert_eq!(Attempt::RateLimited.breaker_verdict(), None);
        assert_eq!(Attempt::Tls("tls: certificate expired").breaker_verdict(), None);
    }

    #[test]
    fn outcomes_index_their_metric_children() {
        for (i, outcome) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*outcome as usize, i, "{outcome:?}");
        }
    }

    #[test]
    fn tls_failures_are_told_from_other_io_errors() {
        use std::io::{Error, ErrorKind};
        let unknown = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let wrapped = Error::new(ErrorKind::InvalidData, unknown);
        assert_eq!(tls_failure(&wrapped), Some("tls: certificate signed by an unknown CA"));
        let name = rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName);
        assert_eq!(tls_failure(&Error::other(name)), Some("tls: certificate not valid for the upstream's host name"));
        assert_eq!(tls_failure(&Error::from(ErrorKind::ConnectionRefused)), None);
        assert_eq!(tls_failure(&Error::new(ErrorKind::InvalidData, "not tls")), None);
    }

    #[test]
    fn reads_x_ratelimit_and_ietf_headers() {
        let s = RateSignal::from_headers(&headers(&[
            ("retry-after", "3"),
            ("x-ratelimit-limit", "1000"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "12"),
        ]));
        assert_eq!(s.retry_after, Some(Duration::from_secs(3)));
        assert_eq!((s.limit, s.remaining, s.reset), (Some(1000), Some(0), Some(Duration::from_secs(12))));
        let ietf = RateSignal::from_headers(&headers(&[("ratelimit", "limit=60, remaining=7, reset=4")]));
        assert_eq!((ietf.limit, ietf.remaining, ietf.reset), (Some(60), Some(7), Some(Duration::from_secs(4))));
        assert!(RateSignal::from_headers(&headers(&[("x-ratelimit-remaining", "many")])).is_empty());
    }

    #[test]
    fn rate_headers_are_found_among_others_and_a_repeated_one_counts_by_its_first_value() {
        let mut map = headers(&[("content-type", "application/json"), ("x-request-id", "r1"), ("retry-after", "2")]);
        map.append(HeaderName::from_static("x-ratelimit-remaining"), HeaderValue::from_static("5"));
        map.append(HeaderName::from_static("x-ratelimit-remaining"), HeaderValue::from_static("9"));
        map.append(HeaderName::from_static("ratelimit"), HeaderValue::from_static("limit=60, remaining=7"));
        let s = RateSignal::from_headers(&map);
        assert_eq!(s.retry_after, Some(Duration::from_secs(2)));
        // X-RateLimit-Remaining wins over the IETF header's; the IETF header fills the limit.
        assert_eq!((s.limit, s.remaining, s.reset), (Some(60), Some(5), None));
        let plain = headers(&[("content-type", "application/json"), ("content-length", "12")]);
        assert!(RateSignal::from_headers(&plain).is_empty());
    }

    #[test]
    fn retry_after_takes_seconds_or_dates() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
