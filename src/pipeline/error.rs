//! Why the pipeline gives no answer: one enum, each failure with its source, whether the same
//! request may succeed later, and when to ask again.
//!
//! The failure's own words live here (`code`, `message`, `retryable`), because two layers
//! tell them: `http/` answers them in the one error shape with a status it chooses
//! (`http/errors.rs`), and `jobs/` writes them into a failed job's status document. Neither
//! imports the other; both import this.

use std::time::Duration;

use crate::actors::quota::{QuotaReason, QuotaRefusal};
use crate::upstream::Outcome;

/// Why a request got no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The upstream refused the request's content (400/413/422): its status and message.
    #[error("the upstream refused the request")]
    Rejected {
        /// The upstream's status.
        status: u16,
        /// The upstream's message, sanitised and shortened.
        message: String,
    },
    /// No valid upstream token can be had now; ask again after this long.
    #[error("no upstream token")]
    AuthUnavailable(Duration),
    /// No budget permit before the deadline, or the upstream's rate limit holds; ask again
    /// after this long.
    #[error("the rate budget is spent")]
    RateLimited(Duration),
    /// The upstream failed; the last attempt's outcome.
    #[error("the upstream failed")]
    Failed(Outcome),
    /// The request's deadline passed.
    #[error("the deadline passed")]
    DeadlineExceeded,
    /// The circuit is open; ask again after this long.
    #[error("the circuit is open")]
    CircuitOpen(Duration),
    /// A quota window (or the client's share of one) is spent until its reset.
    #[error("the upstream quota is spent")]
    QuotaExhausted {
        /// Until the window resets.
        retry_after: Duration,
        /// Which limit: the window's, the client's cap, or other clients' reservations.
        reason: QuotaReason,
    },
    /// The quota's store (Redis, the state file) cannot count now; ask again after this long.
    #[error("the quota store is unavailable")]
    QuotaUnavailable(Duration),
}

impl From<QuotaRefusal> for Error {
    fn from(refusal: QuotaRefusal) -> Error {
        let wait = Duration::from_millis(refusal.retry_after_ms.max(0) as u64);
        match refusal.reason {
            QuotaReason::Unavailable => Error::QuotaUnavailable(wait),
            reason => Error::QuotaExhausted { retry_after: wait, reason },
        }
    }
}

impl Error {
    /// One error of every `code`, for the API description.
    pub fn every() -> Vec<Error> {
        let wait = Duration::from_secs(1);
        let mut every = vec![
            Error::Rejected { status: 400, message: String::new() },
            Error::AuthUnavailable(wait),
            Error::RateLimited(wait),
            Error::DeadlineExceeded,
            Error::CircuitOpen(wait),
            Error::QuotaExhausted { retry_after: wait, reason: QuotaReason::WindowSpent },
            Error::QuotaUnavailable(wait),
        ];
        every.extend(Outcome::ALL.into_iter().filter(|o| *o != Outcome::Success).map(Error::Failed));
        every
    }

    /// The machine-readable `code`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Rejected { .. } => "upstream_rejected",
            Error::AuthUnavailable(_) => "upstream_auth_unavailable",
            Error::RateLimited(_) => "budget_exhausted",
            Error::Failed(Outcome::Timeout) => "upstream_timeout",
            Error::Failed(Outcome::Forbidden) => "upstream_auth_rejected",
            Error::Failed(Outcome::InvalidResponse) => "upstream_invalid_response",
            Error::Failed(Outcome::TlsError) => "upstream_tls",
            Error::Failed(Outcome::TooLarge) => "upstream_response_too_large",
            Error::Failed(_) => "upstream_unavailable",
            Error::DeadlineExceeded => "deadline_exceeded",
            Error::CircuitOpen(_) => "circuit_open",
            Error::QuotaExhausted { .. } => "quota_exhausted",
            Error::QuotaUnavailable(_) => "quota_unavailable",
        }
    }

    /// The human-readable `message`.
    pub fn message(&self) -> &str {
        match self {
            Error::Rejected { message, .. } => message,
            Error::AuthUnavailable(_) => "courier cannot authenticate with the upstream right now",
            Error::RateLimited(_) => "the upstream rate budget is exhausted; retry later",
            Error::Failed(Outcome::Timeout) => "the upstream did not answer in time",
            Error::Failed(Outcome::Forbidden) => "the upstream refused courier's API key",
            Error::Failed(Outcome::InvalidResponse) => "the upstream's answer was unusable",
            Error::Failed(Outcome::TlsError) => {
                "courier could not open a trusted TLS connection to the upstream (its certificate was refused or \
                 the handshake failed); not retried, see courier's log for the reason"
            }
            Error::Failed(Outcome::TooLarge) => {
                "the upstream's answer is larger than courier accepts (COURIER_UPSTREAM_MAX_BODY_BYTES)"
            }
            Error::Failed(Outcome::OtherStatus) => {
                "the upstream answered with a status courier does not expect; not retried"
            }
            Error::Failed(_) => {
                "the upstream failed, after as many retries as the retry policy and the deadline allowed"
            }
            Error::DeadlineExceeded => "the request's deadline passed before the upstream answered",
            Error::CircuitOpen(_) => "the upstream is failing; courier is not calling it for now",
            Error::QuotaExhausted { reason: QuotaReason::ClientMax, .. } => {
                "this client's share of the upstream quota (quota_max) is spent until the window resets; retry after it"
            }
            Error::QuotaExhausted { reason: QuotaReason::Reserved, .. } => {
                "what is left of the upstream quota is reserved for other clients until the window resets; retry after it"
            }
            Error::QuotaExhausted { .. } => "the upstream quota is spent until the window resets; retry after it",
            Error::QuotaUnavailable(_) => "courier cannot count the upstream quota right now (its store is unavailable)",
        }
    }

    /// Whether the same request may succeed later. Not after a refused certificate, an
    /// answer too large or a status courier does not expect: the same request gets the same
    /// answer until someone changes something.
    pub fn retryable(&self) -> bool {
        match self {
            Error::Rejected { .. } => false,
            Error::Failed(Outcome::TlsError | Outcome::TooLarge | Outcome::OtherStatus) => false,
            Error::AuthUnavailable(_)
            | Error::RateLimited(_)
            | Error::Failed(_)
            | Error::DeadlineExceeded
            | Error::CircuitOpen(_)
            | Error::QuotaExhausted { .. }
            | Error::QuotaUnavailable(_) => true,
        }
    }

    /// When asking again makes sense, for refusals that say so.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::AuthUnavailable(wait)
            | Error::RateLimited(wait)
            | Error::CircuitOpen(wait)
            | Error::QuotaUnavailable(wait)
            | Error::QuotaExhausted { retry_after: wait, .. } => Some(*wait),
            _ => None,
        }
    }

    /// Whether an expired answer may stand in for this failure (stale-if-error): the upstream
    /// side failed (down, failing, no token, out of time), not the request.
    pub fn upstream_side(&self) -> bool {
        matches!(self, Error::CircuitOpen(_) | Error::Failed(_) | Error::DeadlineExceeded | Error::AuthUnavailable(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_listed_once_and_says_whether_to_retry() {
        let every = Error::every();
        let mut codes: Vec<&str> = every.iter().map(Error::code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), 13, "{codes:?}");
        assert!(!Error::Failed(Outcome::TlsError).retryable());
        assert!(!Error::Failed(Outcome::OtherStatus).retryable());
        assert!(Error::Failed(Outcome::ConnectError).retryable());
        assert_eq!(Error::CircuitOpen(Duration::from_secs(3)).retry_after(), Some(Duration::from_secs(3)));
        assert!(Error::Failed(Outcome::ServerError).upstream_side());
        assert!(!Error::RateLimited(Duration::ZERO).upstream_side());
    }
}
