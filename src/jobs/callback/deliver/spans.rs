//! The client span of a callback delivery attempt.

use super::{Attempt, Target};
use crate::trace::{attrs, Span};

/// An attempt's client span, by the HTTP client conventions: the URL without its query (it may
/// carry the receiver's token) or credentials, the host it names, the address it was pinned to.
pub(super) fn attempt_span_start(span: &mut Span, target: &Target, attempt: u32) {
    let mut url = target.url().clone();
    url.set_query(None);
    url.set_fragment(None);
    let _ = url.set_username("");
    let _ = url.set_password(None);
    span.set(attrs::HTTP_REQUEST_METHOD, "POST");
    span.set(attrs::URL_FULL, url.to_string());
    if let Some(host) = url.host_str() {
        span.set(attrs::SERVER_ADDRESS, host.to_owned());
    }
    if let Some(port) = url.port_or_known_default() {
        span.set(attrs::SERVER_PORT, i64::from(port));
    }
    if let Some(addr) = target.addrs().first().filter(|_| url.scheme() == "http" && !target.ip_literal) {
        span.set(attrs::NETWORK_PEER_ADDRESS, addr.ip().to_string());
    }
    span.set(attrs::ATTEMPT, i64::from(attempt));
    if attempt > 1 {
        span.set(attrs::HTTP_REQUEST_RESEND_COUNT, i64::from(attempt - 1));
    }
}

/// Ends an attempt's span: a status of 400 or more, or no answer, is an error.
pub(super) fn attempt_span_end(mut span: Span, attempt: &Attempt) {
    let error = match attempt {
        Attempt::Answered(status) => {
            span.set(attrs::HTTP_RESPONSE_STATUS_CODE, i64::from(status.as_u16()));
            (status.as_u16() >= 400).then(|| status.as_str().to_owned())
        }
        Attempt::NoAnswer(why) => Some((*why).to_owned()),
    };
    if let Some(error) = error {
        span.set(attrs::ERROR_TYPE, error.clone());
        span.fail(error);
    }
    span.end();
}
