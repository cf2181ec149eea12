//! Request ids: the client's `X-Request-Id` when it is short and printable, else one of
//! courier's own (`req_` and 16 hex digits). The id goes upstream, into every log line of
//! the request, and back to the client.

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use rand::RngExt;

/// The `X-Request-Id` header's name, built once: a name given as text is copied into a new
/// allocation on every use.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-supplied id accepted as is.
pub const MAX_LEN: usize = 128;

/// A request id that is safe in a header and a log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId {
    value: HeaderValue,
    /// Made here just now, from 64 random bits: no status entry can have it yet.
    generated: bool,
}

impl RequestId {
    /// The client's id if acceptable (1..=128 chars of `A-Z a-z 0-9 - _ . : /`), else a new one.
    pub fn from_client(header: Option<&HeaderValue>) -> RequestId {
        header.and_then(Self::accept).unwrap_or_else(Self::generate)
    }

    /// The id of a request with these headers: its `X-Request-Id` if acceptable, else a new one.
    pub fn of(headers: &HeaderMap) -> RequestId {
        Self::from_client(headers.get(&HEADER))
    }

    /// An id given as text (a status lookup, a stored job), if acceptable.
    pub fn parse(text: &str) -> Option<RequestId> {
        HeaderValue::from_str(text).ok().as_ref().and_then(Self::accept)
    }

    fn accept(value: &HeaderValue) -> Option<RequestId> {
        let bytes = value.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= MAX_LEN
            && bytes.iter().all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(b));
        ok.then(|| RequestId { value: value.clone(), generated: false })
    }

    /// A fresh id.
    pub fn generate() -> RequestId {
        let n: u64 = rand::rng().random();
        let mut text = *b"req_0000000000000000";
        hex::encode_to_slice(n.to_be_bytes(), &mut text[4..]).expect("16 hex digits fit");
        // Held by a `Bytes` that owns the array: the id is cloned into the answer's header and
        // elsewhere, and such a clone only counts a reference (a copied slice is re-allocated
        // as shared at its first clone).
        let value = HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text)).expect("ascii is a valid header");
        RequestId { value, generated: true }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        self.value.to_str().expect("only printable ascii is accepted")
    }

    /// The id as a header value.
    pub fn header(&self) -> &HeaderValue {
        &self.value
    }

    /// Whether courier generated it for this request (rather than the client sending it): the
    /// status store then need not look for an entry of the same id, since 64 random bits do not
    /// repeat among the entries it keeps (~1 in 10^14 for 100k of them).
    pub fn generated(&self) -> bool {
        self.generated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_short_printable_ids_and_replaces_others() {
        let given = HeaderValue::from_static("abc-123_x.y:z");
        assert_eq!(RequestId::from_client(Some(&given)).as_str(), "abc-123_x.y:z");
        for bad in ["has space", "quote\"", "", &"x".repeat(129)] {
            let id = RequestId::from_client(Some(&HeaderValue::from_str(bad).unwrap()));
            assert!(id.as_str().starts_with("req_") && id.as_str().len() == 20, "{bad:?} -> {id:?}");
        }
        assert_ne!(RequestId::generate(), RequestId::generate());
    }
}
