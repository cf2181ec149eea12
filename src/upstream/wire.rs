//! The upstream's wire formats, as the integration spec defines them.

use std::borrow::Cow;
use std::time::Duration;

use awc::error::{ConnectError, SendRequestError};
use bytes::Bytes;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::value::RawValue;
use smol_str::SmolStr;

use super::classify::tls_failure;
use crate::key::JsonStr;

/// A token from the token endpoint.
pub struct FetchedToken {
    /// The access token.
    pub access_token: SecretString,
    /// Its lifetime, from `expires_in` (default one hour when the endpoint omits it).
    pub lifetime: Duration,
}

/// Why no token was obtained. Never carries a secret or a raw body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The endpoint could not be reached.
    #[error("token endpoint unreachable: {0}")]
    Unreachable(&'static str),
    /// No trusted TLS connection to the endpoint (a reason from [`super::tls_failure`]).
    #[error("token endpoint unreachable: {0}")]
    Tls(&'static str),
    /// No answer in time.
    #[error("token endpoint timed out")]
    Timeout,
    /// The endpoint refused courier's client credentials.
    #[error("token endpoint rejected the client credentials (status {0})")]
    Rejected(u16),
    /// The endpoint failed.
    #[error("token endpoint answered status {0}")]
    Status(u16),
    /// The answer was not a usable token.
    #[error("token endpoint answer unusable: {0}")]
    Invalid(&'static str),
}

impl TokenError {
    /// Whether the endpoint looks down (unreachable, timing out, 5xx) rather than refusing or
    /// misunderstood: it may be back any moment, so it is worth asking again soon.
    pub fn is_outage(&self) -> bool {
        match self {
            TokenError::Unreachable(_) | TokenError::Timeout => true,
            TokenError::Status(status) => *status >= 500,
            TokenError::Tls(_) | TokenError::Rejected(_) | TokenError::Invalid(_) => false,
        }
    }
}

#[derive(Deserialize)]
struct TokenForm {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<f64>,
}

const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
const TOKEN_BODY_LIMIT: usize = 64 * 1024;

/// Fetches a token with the client-credentials grant, bounded by `timeout` overall.
pub async fn fetch_token(
    client: &awc::Client,
    url: &str,
    client_id: &str,
    client_secret: &SecretString,
    timeout: Duration,
) -> Result<FetchedToken, TokenError> {
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
        ("client_secret", client_secret.expose_secret()),
    ];
    let exchange = async {
        let mut response =
            client.post(url).insert_header(("accept", "application/json")).send_form(&form).await.map_err(
                |e| match e {
                    SendRequestError::Timeout | SendRequestError::Connect(ConnectError::Timeout) => TokenError::Timeout,
                    SendRequestError::Connect(ConnectError::Io(io)) => match tls_failure(&io) {
                        Some(reason) => TokenError::Tls(reason),
                        None => TokenError::Unreachable("connection failed"),
                    },
                    _ => TokenError::Unreachable("connection failed"),
                },
            )?;
        let status = response.status().as_u16();
        if status == 400 || status == 401 || status == 403 {
            return Err(TokenError::Rejected(status));
        }
        if !response.status().is_success() {
            return Err(TokenError::Status(status));
        }
        let body = response
            .body()
            .limit(TOKEN_BODY_LIMIT)
            .await
            .map_err(|_| TokenError::Unreachable("answer body unreadable"))?;
        parse_token(&body)
    };
    actix_rt::time::timeout(timeout, exchange).await.map_err(|_| TokenError::Timeout)?
}

/// Deepest nesting read in a token document or an error answer: what courier reads of them
/// sits at the first or second level.
const SMALL_DOCUMENT_DEPTH: usize = 16;

fn parse_token(body: &[u8]) -> Result<FetchedToken, TokenError> {
    crate::json::check_depth(body, SMALL_DOCUMENT_DEPTH).map_err(|_| TokenError::Invalid("nests too deep"))?;
    let form: TokenForm = serde_json::from_slice(body).map_err(|_| TokenError::Invalid("not a token document"))?;
    if form.access_token.is_empty() {
        return Err(TokenError::Invalid("empty access_token"));
    }
    if let Some(kind) = &form.token_type {
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(TokenError::Invalid("token_type is not Bearer"));
        }
    }
    let lifetime = match form.expires_in {
        None => DEFAULT_LIFETIME,
        Some(secs) if secs.is_finite() && secs > 0.0 => Duration::from_secs_f64(secs.min(1e7)),
        Some(_) => return Err(TokenError::Invalid("expires_in is not a positive number")),
    };
    Ok(FetchedToken { access_token: SecretString::from(form.access_token), lifetime })
}

/// A successful process answer: the `result` and the upstream's `request_id`.
#[derive(Clone, Debug)]
pub struct SuccessBody {
    /// The raw JSON of `result`, a slice of the upstream's body (no copy).
    pub result: Bytes,
    /// The upstream's request id, when it sent one.
    pub upstream_request_id: Option<SmolStr>,
}

#[derive(Deserialize)]
struct SuccessShape<'a> {
    #[serde(default)]
    success: Option<bool>,
    #[serde(borrow)]
    result: &'a RawValue,
    #[serde(default, borrow)]
    request_id: Option<JsonStr<'a>>,
}

impl SuccessBody {
    /// Parses a 2xx process answer; `None` when it is not the spec's shape.
    pub fn parse(body: &Bytes) -> Option<SuccessBody> {
        let text = std::str::from_utf8(body).ok()?;
        let shape: SuccessShape<'_> = serde_json::from_str(text).ok()?;
        if shape.success == Some(false) {
            return None;
        }
        Some(SuccessBody {
            result: body.slice_ref(shape.result.get().as_bytes()),
            upstream_request_id: shape.request_id.map(|id| SmolStr::new(&*id.0)),
        })
    }
}

#[derive(Deserialize)]
struct ErrorShape<'a> {
    #[serde(default, borrow)]
    error: Option<ErrorField<'a>>,
    #[serde(default, borrow)]
    message: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    error_description: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorField<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Object {
        #[serde(default, borrow)]
        message: Option<Cow<'a, str>>,
    },
}

const MESSAGE_CHARS: usize = 300;

/// The upstream's own error message from an error answer, cleaned of control characters and
/// shortened; a generic sentence when the body has none. Nothing else of the body is kept.
pub fn upstream_error_message(body: &[u8], status: u16) -> String {
    let readable = crate::json::check_depth(body, SMALL_DOCUMENT_DEPTH).is_ok();
    let shape: Option<ErrorShape<'_>> = readable.then(|| serde_json::from_slice(body).ok()).flatten();
    let found = shape.and_then(|s| {
        let from_error = s.error.and_then(|e| match e {
            ErrorField::Text(t) => Some(t),
            ErrorField::Object { message } => message,
        });
        s.error_description.or(s.message).or(from_error)
    });
    let cleaned: String =
        found.as_deref().unwrap_or("").chars().filter(|c| !c.is_control()).take(MESSAGE_CHARS).collect();
    if cleaned.trim().is_empty() {
        format!("the upstream rejected the request (status {status})")
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_documents() {
        let t = parse_token(br#"{"access_token":"abc","token_type":"bearer","expires_in":1.5}"#).unwrap();
        assert_eq!(t.lifetime, Duration::from_millis(1500));
        assert_eq!(parse_token(br#"{"access_token":"abc"}"#).unwrap().lifetime, DEFAULT_LIFETIME);
        assert!(parse_token(br#"{"access_token":"abc","token_type":"mac"}"#).is_err());
        assert!(parse_token(br#"{"access_token":"","expires_in":10}"#).is_err());
        assert!(parse_token(b"<html>").is_err());
        let deep = format!(r#"{{"access_token":"abc","x":{}{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(parse_token(deep.as_bytes()), Err(TokenError::Invalid("nests too deep"))));
    }

    #[test]
    fn only_a_down_endpoint_is_an_outage() {
        for down in
            [TokenError::Unreachable("x"), TokenError::Timeout, TokenError::Status(503), TokenError::Status(500)]
        {
            assert!(down.is_outage(), "{down:?}");
        }
        for refused in
            [TokenError::Rejected(401), TokenError::Status(429), TokenError::Tls("x"), TokenError::Invalid("x")]
        {
            assert!(!refused.is_outage(), "{refused:?}");
        }
    }

    #[test]
    fn success_body_keeps_result_raw_without_copying() {
        let body = Bytes::from_static(
            br#"{"success": true, "result": {"processed_data": "X", "metadata": {"version": "v2.1"}}, "request_id": "up_1"}"#,
        );
        let parsed = SuccessBody::parse(&body).unwrap();
        assert_eq!(&parsed.result[..], br#"{"processed_data": "X", "metadata": {"version": "v2.1"}}"#);
        assert_eq!(parsed.upstream_request_id.as_deref(), Some("up_1"));
        assert!(SuccessBody::parse(&Bytes::from_static(br#"{"success": false, "result": 1}"#)).is_none());
        assert!(SuccessBody::parse(&Bytes::from_static(br#"{"data": 1}"#)).is_none());
    }

    #[test]
    fn error_messages_are_extracted_and_cleaned() {
        let nested = br#"{"success":false,"error":{"code":"invalid_request","message":"unsupported format 'xml'"}}"#;
        assert_eq!(upstream_error_message(nested, 400), "unsupported format 'xml'");
        assert_eq!(upstream_error_message(br#"{"error":"bad\nthing"}"#, 400), "badthing");
        assert_eq!(upstream_error_message(b"<html>", 422), "the upstream rejected the request (status 422)");
        let long = format!(r#"{{"message":"{}"}}"#, "a".repeat(1000));
        assert_eq!(upstream_error_message(long.as_bytes(), 400).len(), MESSAGE_CHARS);
        let deep = format!(r#"{{"message":"m","details":{}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(upstream_error_message(deep.as_bytes(), 400), "the upstream rejected the request (status 400)");
    }
}
