//! Delivering a callback: signed POSTs with bounded retries, each preceded by a fresh policy
//! check, each recorded in the job's [`CallbackState`].
//!
//! Why check again before every attempt: the host's DNS answer at submit time proves nothing
//! about its answer minutes later. A name that was public may now point at 169.254.169.254.
//! A refusal at delivery time gives up at once and sends nothing.
//!
//! Why connect by address: for `http` URLs the request goes to the address the check just
//! approved (the URL's host is replaced by it and the original `Host` header is sent), so a
//! second DNS lookup inside the HTTP client cannot point the request elsewhere (DNS rebinding).
//! For `https` the client must connect by name for SNI and certificate checks, so it resolves
//! again: between the check and that lookup (milliseconds) a hostile DNS server could switch
//! to an internal address. What it gains is small: the internal host would have to present a
//! certificate valid for the attacker's name, so the handshake fails before any HTTP byte is
//! sent; a TCP connection and a TLS ClientHello reach the internal address, nothing more.
//!
//! # The client
//! The caller builds the `awc::Client` (one per worker; awc clients are not `Send`). It must:
//! - have redirects disabled (`ClientBuilder::disable_redirects`): a followed redirect would
//!   skip the policy. A 3xx counts as a failed attempt;
//! - verify TLS certificates with the system roots (as `crate::upstream::tls_config` does);
//! - not depend on its own timeout: each attempt is bounded here (`disable_timeout` is fine).
//!
//! `crate::upstream::build_client` builds a client with these settings.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use awc::error::SendRequestError;
use awc::http::header::{CONTENT_TYPE, HOST};
use awc::http::StatusCode;
use bytes::Bytes;
use secrecy::{ExposeSecret, SecretString};
use slog::{info, o, warn, Logger};

use super::policy::{CallbackPolicy, RefusalKind, Refused, Target};
use super::sign::{sign, SIGNATURE_HEADER};
use crate::jobs::{CallbackState, DeliveryState, Timestamp};
use crate::published::Published;
use crate::trace::{attrs, LogIds, Parent, Span, Tracing};
use crate::upstream::Backoff;
use opentelemetry::trace::SpanKind;

mod spans;

use spans::{attempt_span_end, attempt_span_start};

/// The `User-Agent` of callback requests.
pub const USER_AGENT: &str = concat!("courier/", env!("CARGO_PKG_VERSION"));

/// How a delivery ended, for the caller's metrics and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The receiver answered 2xx.
    Delivered,
    /// Every allowed attempt failed.
    GaveUp,
    /// The policy refused the URL before an attempt; nothing was sent after the refusal.
    Refused(Refused),
}

impl DeliveryOutcome {
    /// A label value for metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::GaveUp => "gave_up",
            DeliveryOutcome::Refused(_) => "refused",
        }
    }
}

/// Why delivery settings were refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDelivery {
    /// An empty signing secret would make every signature forgeable.
    #[error("the callback signing secret is empty")]
    EmptySecret,
    /// At least one attempt must be allowed.
    #[error("callback max attempts must be at least 1")]
    NoAttempts,
    /// An attempt needs some time.
    #[error("the callback attempt timeout must be above zero")]
    ZeroTimeout,
}

/// Delivers callbacks: the signing secret, the URL policy, and the retry settings.
pub struct Delivery {
    /// Replaced by a reload; each attempt signs with the secret current when it starts.
    secret: Arc<Published<SecretString>>,
    policy: Arc<CallbackPolicy>,
    max_attempts: u32,
    backoff: Backoff,
    timeout: Duration,
    log: Logger,
    tracing: Tracing,
}

/// The result of one attempt.
enum Attempt {
    /// The receiver answered with this status.
    Answered(StatusCode),
    /// No answer; the reason is a short label for the log.
    NoAnswer(&'static str),
}

impl Delivery {
    /// Delivery settings: at most `max_attempts` attempts (at least 1), `backoff` between
    /// them, each attempt bounded by `timeout`. Logs nothing until [`Delivery::with_logger`].
    pub fn try_new(
        secret: SecretString,
        policy: Arc<CallbackPolicy>,
        max_attempts: u32,
        backoff: Backoff,
        timeout: Duration,
    ) -> Result<Delivery, InvalidDelivery> {
        if secret.expose_secret().is_empty() {
            return Err(InvalidDelivery::EmptySecret);
        }
        if max_attempts == 0 {
            return Err(InvalidDelivery::NoAttempts);
        }
        if timeout.is_zero() {
            return Err(InvalidDelivery::ZeroTimeout);
        }
        let log = Logger::root(slog::Discard, o!());
        let secret = Arc::new(Published::new(secret));
        Ok(Delivery { secret, policy, max_attempts, backoff, timeout, log, tracing: Tracing::off() })
    }

    /// Traces deliveries (`courier.callback` and a client span per attempt, whose
    /// `traceparent` the receiver gets).
    pub fn with_tracing(mut self, tracing: Tracing) -> Delivery {
        self.tracing = tracing;
        self
    }

    /// Logs each attempt (host, attempt, status or error, body size; never the path, query,
    /// body or signature) to `log`.
    pub fn with_logger(mut self, log: Logger) -> Delivery {
        self.log = log;
        self
    }

    /// The signing secret's cell, for a reload to replace the secret.
    pub fn secret_cell(&self) -> Arc<Published<SecretString>> {
        self.secret.clone()
    }

    /// The URL policy, for the check at submit time.
    pub fn policy(&self) -> &Arc<CallbackPolicy> {
        &self.policy
    }

    /// Delivers `body` (the status document, JSON) to `url`, updating `state` and awaiting
    /// `on_attempt(state)` after every change: each attempt, and a refusal. Resumes a state
    /// taken over from another runner (counting its attempts); a state already `Delivered` or
    /// `GaveUp` is left as it is. See the module doc for what `client` must be.
    ///
    /// A host that does not resolve counts as a failed attempt (DNS failures are often
    /// transient); any other refusal gives up at once.
    pub async fn deliver<F, Fut>(
        &self,
        client: &awc::Client,
        url: &str,
        body: Bytes,
        state: &mut CallbackState,
        trace: &Parent,
        on_attempt: F,
    ) -> DeliveryOutcome
    where
        F: FnMut(&CallbackState) -> Fut,
        Fut: Future<Output = ()>,
    {
        match state.state {
            DeliveryState::Delivered => return DeliveryOutcome::Delivered,
            DeliveryState::GaveUp => return DeliveryOutcome::GaveUp,
            DeliveryState::Pending | DeliveryState::Failing => {}
        }
        let mut span = self.tracing.child(trace, "courier.callback", SpanKind::Internal);
        let outcome = self.attempts(client, url, body, state, span.as_ref(), on_attempt).await;
        if let Some(span) = span.as_mut() {
            let result = match &outcome {
                DeliveryOutcome::Delivered => "delivered",
                DeliveryOutcome::GaveUp => "gave_up",
                DeliveryOutcome::Refused(_) => "refused",
            };
            span.set(attrs::CALLBACK_RESULT, result);
            if result != "delivered" {
                span.fail(result);
            }
        }
        outcome
    }

    async fn attempts<F, Fut>(
        &self,
        client: &awc::Client,
        url: &str,
        body: Bytes,
        state: &mut CallbackState,
        span: Option<&Span>,
        mut on_attempt: F,
    ) -> DeliveryOutcome
    where
        F: FnMut(&CallbackState) -> Fut,
        Fut: Future<Output = ()>,
    {
        let parent = span.map_or(Parent::NONE, Span::parent);
        let mut first = true;
        while state.attempts < self.max_attempts {
            if !first {
                actix_rt::time::sleep(self.backoff.next_delay(state.attempts - 1)).await;
            }
            first = false;
            let checked = match self.policy.check(url).await {
                Ok(target) => Ok(target),
                Err(refused) if refused.kind() == RefusalKind::Unresolvable => Err(refused),
                Err(refused) => {
                    warn!(self.log, "callback_refused";
                        "reason" => refused.kind().as_str(), "message" => %refused,
                        "address" => refused.address().map(|a| a.to_string()), "attempts" => state.attempts);
                    state.state = DeliveryState::GaveUp;
                    on_attempt(state).await;
                    return DeliveryOutcome::Refused(refused);
                }
            };
            state.attempts += 1;
            state.last_attempt_at = Some(Timestamp::now());
            let started = Instant::now();
            let mut span = self.tracing.child(&parent, "POST", SpanKind::Client);
            if let (Some(span), Ok(target)) = (span.as_mut().filter(|s| s.recording()), &checked) {
                attempt_span_start(span, target, state.attempts);
            }
            let attempt = match &checked {
                Ok(target) => self.attempt(client, target, &body, state.attempts, span.as_ref()).await,
                Err(_) => Attempt::NoAnswer("unresolvable"),
            };
            let ids = LogIds::of(span.as_ref());
            if let Some(span) = span {
                attempt_span_end(span, &attempt);
            }
            let (status, error) = match attempt {
                Attempt::Answered(status) => (Some(status), None),
                Attempt::NoAnswer(why) => (None, Some(why)),
            };
            state.last_status_code = status.map(|s| s.as_u16());
            let delivered = status.is_some_and(|s| s.is_success());
            state.state = if delivered {
                DeliveryState::Delivered
            } else if state.attempts >= self.max_attempts {
                DeliveryState::GaveUp
            } else {
                DeliveryState::Failing
            };
            info!(self.log, "callback_attempt";
                "host" => checked.as_ref().ok().and_then(|t| t.url().host_str()).unwrap_or("-"),
                "attempt" => state.attempts, "status_code" => state.last_status_code, "error" => error,
                "state" => format!("{:?}", state.state), "body_bytes" => body.len(),
                "duration_ms" => started.elapsed().as_millis() as u64,
                ids);
            on_attempt(state).await;
            if delivered {
                return DeliveryOutcome::Delivered;
            }
        }
        if state.state != DeliveryState::GaveUp {
            // A state taken over with every attempt already spent.
            state.state = DeliveryState::GaveUp;
            on_attempt(state).await;
        }
        DeliveryOutcome::GaveUp
    }

    /// One POST to `target`, bounded by the attempt timeout.
    async fn attempt(
        &self,
        client: &awc::Client,
        target: &Target,
        body: &Bytes,
        attempt: u32,
        span: Option<&Span>,
    ) -> Attempt {
        let Some((uri, host)) = request_url(target, attempt) else { return Attempt::NoAnswer("bad_url") };
        let signature = sign(self.secret.load().expose_secret().as_bytes(), unix_now(), body);
        let mut request = client
            .post(uri.as_str())
            .insert_header((CONTENT_TYPE, "application/json"))
            .insert_header(("user-agent", USER_AGENT))
            .insert_header((SIGNATURE_HEADER, signature))
            .timeout(self.timeout);
        if let Some(host) = host {
            request = request.insert_header((HOST, host));
        }
        for header in self.tracing.headers(span) {
            request = request.insert_header(header);
        }
        match actix_rt::time::timeout(self.timeout, request.send_body(body.clone())).await {
            Ok(Ok(response)) => Attempt::Answered(response.status()),
            Ok(Err(SendRequestError::Connect(_))) => Attempt::NoAnswer("connect"),
            Ok(Err(SendRequestError::Timeout)) | Err(_) => Attempt::NoAnswer("timeout"),
            Ok(Err(_)) => Attempt::NoAnswer("send"),
        }
    }
}

/// The URL to request and the `Host` header to send with it. For `http` URLs with a host
/// name, the host is replaced by one of the checked addresses (rotating per attempt, so a
/// dead address is not tried forever) and the original host goes into the `Host` header.
fn request_url(target: &Target, attempt: u32) -> Option<(String, Option<String>)> {
    let url = target.url();
    if url.scheme() != "http" || target.ip_literal {
        return Some((url.to_string(), None));
    }
    let addrs = target.addrs();
    let addr = addrs.get((attempt.saturating_sub(1) as usize) % addrs.len().max(1))?;
    let mut pinned = url.clone();
    pinned.set_ip_host(addr.ip()).ok()?;
    let name = url.host_str()?;
    let host = match url.port() {
        Some(port) => format!("{name}:{port}"),
        None => name.to_owned(),
    };
    Some((pinned.to_string(), Some(host)))
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str, addrs: &[&str], ip_literal: bool) -> Target {
        Target { url: url.parse().unwrap(), addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(), ip_literal }
    }

    #[test]
    fn http_names_are_pinned_to_the_checked_address() {
        let t = target("http://hooks.example:8080/cb?x=1", &["10.0.0.5:8080", "[fd00::7]:8080"], false);
        assert_eq!(
            request_url(&t, 1),
            Some(("http://10.0.0.5:8080/cb?x=1".to_owned(), Some("hooks.example:8080".to_owned())))
        );
        assert_eq!(
            request_url(&t, 2),
            Some(("http://[fd00::7]:8080/cb?x=1".to_owned(), Some("hooks.example:8080".to_owned())))
        );
        assert_eq!(request_url(&t, 3).unwrap().0, "http://10.0.0.5:8080/cb?x=1");
        let default_port = target("http://hooks.example/cb", &["10.0.0.5:80"], false);
        assert_eq!(request_url(&default_port, 1).unwrap().1.as_deref(), Some("hooks.example"));
    }

    #[test]
    fn https_and_literals_are_requested_as_given() {
        let https = target("https://hooks.example/cb", &["93.184.216.34:443"], false);
        assert_eq!(request_url(&https, 1), Some(("https://hooks.example/cb".to_owned(), None)));
        let literal = target("http://93.184.216.34:81/cb", &["93.184.216.34:81"], true);
        assert_eq!(request_url(&literal, 1), Some(("http://93.184.216.34:81/cb".to_owned(), None)));
    }

    #[test]
    fn settings_are_checked() {
        let policy = Arc::new(CallbackPolicy::default());
        let backoff = Backoff::try_new(Duration::from_millis(1), Duration::from_millis(2), false).unwrap();
        let build = |secret: &str, attempts, timeout| {
            Delivery::try_new(SecretString::from(secret), policy.clone(), attempts, backoff, timeout).err()
        };
        assert_eq!(build("", 3, Duration::from_secs(1)), Some(InvalidDelivery::EmptySecret));
        assert_eq!(build("s", 0, Duration::from_secs(1)), Some(InvalidDelivery::NoAttempts));
        assert_eq!(build("s", 3, Duration::ZERO), Some(InvalidDelivery::ZeroTimeout));
        assert_eq!(build("s", 3, Duration::from_secs(1)), None);
    }
}
