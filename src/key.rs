//! Request keys: SHA-256 of the canonical JSON of `data` and of the options that change the
//! answer, computed by walking the client's raw JSON without building a DOM.
//!
//! Canonical means: object keys sorted, no insignificant whitespace, strings re-escaped the
//! one standard way (so `"A"` and `"\u0041"` are the same string). Numbers are kept as
//! written, so `1` and `1.0` are different keys, as they may be different inputs upstream.
//!
//! A leaf module: the response cache (`cache/`) and its Redis level (`shared/cache.rs`) both
//! name answers by it, so it lives below both.

use std::borrow::{Borrow, Cow};
use std::collections::BTreeMap;
use std::{fmt, io};

use actix_web::http::header::HeaderValue;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// The key of one cached answer.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key([u8; 32]);

impl Key {
    /// The key as 64 hex digits (the `X-Cache-Key` header).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The key as an `X-Cache-Key` header value, without an intermediate string.
    pub fn header(&self) -> HeaderValue {
        let mut text = [0u8; 64];
        hex::encode_to_slice(self.0, &mut text).expect("64 hex digits fit");
        HeaderValue::from_bytes(&text).expect("hex digits are a valid header")
    }

    /// The key's 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Key> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Key(bytes))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", &self.hex()[..16])
    }
}

/// A JSON string, borrowed from the input unless it holds escapes (serde's plain `Cow<str>`
/// always copies): object keys and string values are read without an allocation each.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(transparent)]
pub struct JsonStr<'a>(#[serde(borrow)] pub Cow<'a, str>);

impl Borrow<str> for JsonStr<'_> {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// A JSON object's members by name, sorted.
pub type Members<'a> = BTreeMap<JsonStr<'a>, &'a RawValue>;

/// Why a value has no cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotJson {
    /// Not valid JSON (cannot happen for a body that already parsed).
    #[error("a value is not valid JSON")]
    Invalid,
    /// An object names a member twice. Refused rather than keyed: the key could keep only
    /// one of the two, while the upstream may read the other, and one client's request could
    /// then fill the cache entry of another's.
    #[error("an object in the body names the same member twice")]
    DuplicateName,
}

/// An object's members in the order written, read without building their values.
struct Written<'a>(Vec<(JsonStr<'a>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Written<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Written<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Written<'a>, M::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1024));
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Written(members))
            }
        }
        deserializer.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// An object's members, sorted by name (as [`sorted_members`] reads them).
pub type Sorted<'a> = Vec<(JsonStr<'a>, &'a RawValue)>;

/// The members of the object `raw`, sorted by name; refuses a name written twice.
pub fn sorted_members(raw: &str) -> Result<Sorted<'_>, NotJson> {
    let Written(mut members) = serde_json::from_str(raw).map_err(|_| NotJson::Invalid)?;
    members.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    if members.windows(2).any(|pair| pair[0].0 == pair[1].0) {
        return Err(NotJson::DuplicateName);
    }
    Ok(members)
}

/// The key of a request: its `data`, and its upstream `options` (courier's own options
/// already removed), both canonicalised.
pub fn key_of(data: &RawValue, options: &Members<'_>) -> Result<Key, NotJson> {
    key_with(Open::Value(data), options)
}

/// As [`key_of`], for a `data` object whose members the caller has read already
/// ([`sorted_members`]): they are not read again.
pub fn key_of_object(data: Sorted<'_>, options: &Members<'_>) -> Result<Key, NotJson> {
    key_with(Open::Object(data.into_iter(), false), options)
}

fn key_with(data: Open<'_>, options: &Members<'_>) -> Result<Key, NotJson> {
    let mut hasher = Sha256::new();
    hasher.update(b"data:");
    match data {
        Open::Value(value) => write_canonical(vec![], Some(value), &mut hasher)?,
        object => {
            hasher.update(b"{");
            write_canonical(vec![object], None, &mut hasher)?;
        }
    }
    hasher.update(b"\noptions:{");
    for (i, (name, value)) in options.iter().enumerate() {
        if i > 0 {
            hasher.update(b",");
        }
        write_string(&name.0, &mut hasher);
        hasher.update(b":");
        write_canonical(vec![], Some(value), &mut hasher)?;
    }
    hasher.update(b"}");
    Ok(Key(hasher.finalize().into()))
}

/// Whether `text` needs no escaping in a JSON string (no control character, `"` or `\\`):
/// serde_json then writes it as it is between quotes.
pub fn needs_no_escape(text: &str) -> bool {
    text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\')
}

/// Writes `text` quoted and escaped the standard way (serde_json's), straight into the hasher.
fn write_string(text: &str, out: &mut Sha256) {
    if needs_no_escape(text) {
        // Nothing to escape (the usual case): serde_json would write it as is between quotes.
        out.update(b"\"");
        out.update(text.as_bytes());
        out.update(b"\"");
    } else {
        serde_json::to_writer(Hashing(out), text).expect("a str serialises");
    }
}

/// `io::Write` into a hasher, so serde_json writes a string into it without a buffer.
struct Hashing<'a>(&'a mut Sha256);

impl io::Write for Hashing<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An array or object whose members are being written, innermost last, with whether one
/// has been written already (the next needs a comma).
enum Open<'a> {
    Array(std::vec::IntoIter<&'a RawValue>, bool),
    Object(std::vec::IntoIter<(JsonStr<'a>, &'a RawValue)>, bool),
    /// A value not yet opened (only where a walk starts).
    Value(&'a RawValue),
}

/// Writes the canonical form of `next` (a value), then of what is left of the arrays and
/// objects in `open` (whose opening brackets are written), into the hasher.
///
/// Iterative: the arrays and objects still open are kept on a heap stack, not the thread's,
/// so no input can overflow a worker's stack. Each level parses its own members once (serde
/// skips over what they hold without recursing), so the work grows with size times depth;
/// bodies are depth-checked before this runs ([`crate::json::check_depth`]).
fn write_canonical<'a>(
    mut open: Vec<Open<'a>>,
    mut next: Option<&'a RawValue>,
    out: &mut Sha256,
) -> Result<(), NotJson> {
    loop {
        if let Some(value) = next.take() {
            let raw = value.get().trim();
            match raw.as_bytes().first() {
                Some(b'{') => {
                    let members = sorted_members(raw)?;
                    out.update(b"{");
                    open.push(Open::Object(members.into_iter(), false));
                }
                Some(b'[') => {
                    let items: Vec<&'a RawValue> = serde_json::from_str(raw).map_err(|_| NotJson::Invalid)?;
                    out.update(b"[");
                    open.push(Open::Array(items.into_iter(), false));
                }
                // Without escapes a string is already canonical: JSON allows no raw `"` or
                // control character inside one, so decoding and re-escaping it would give the
                // same bytes.
                Some(b'"') if !raw.contains('\\') => out.update(raw.as_bytes()),
                Some(b'"') => {
                    let text: JsonStr<'_> = serde_json::from_str(raw).map_err(|_| NotJson::Invalid)?;
                    write_string(&text.0, out);
                }
                Some(_) => out.update(raw.as_bytes()),
                None => return Err(NotJson::Invalid),
            }
        }
        // The next member of the innermost open array or object, or its end.
        let Some(innermost) = open.last_mut() else { return Ok(()) };
        match innermost {
            Open::Array(items, started) => match items.next() {
                Some(item) => {
                    if std::mem::replace(started, true) {
                        out.update(b",");
                    }
                    next = Some(item);
                }
                None => {
                    out.update(b"]");
                    open.pop();
                }
            },
            Open::Object(members, started) => match members.next() {
                Some((name, inner)) => {
                    if std::mem::replace(started, true) {
                        out.update(b",");
                    }
                    write_string(&name.0, out);
                    out.update(b":");
                    next = Some(inner);
                }
                None => {
                    out.update(b"}");
                    open.pop();
                }
            },
            Open::Value(value) => {
                next = Some(*value);
                open.pop();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(data: &str, options: &str) -> Key {
        let data: &RawValue = serde_json::from_str(data).unwrap();
        let options: Members<'_> = serde_json::from_str(options).unwrap();
        key_of(data, &options).unwrap()
    }

    #[test]
    fn key_order_whitespace_and_escapes_do_not_matter() {
        let a = key(r#"{"a":1,"b":{"y":[1,2],"x":"A"}}"#, "{}");
        let b = key("{ \"b\" : { \"x\" : \"\\u0041\", \"y\" : [ 1 , 2 ] } ,\n \"a\" : 1 }", "{}");
        assert_eq!(a, b);
        // Names and strings that need escaping take serde_json's way, the others are written as
        // they came: both must give the same key for the same string.
        assert_eq!(key(r#"{"a\"b":"q\"\t"}"#, "{}"), key(r#"{"a\u0022b":"q\u0022\u0009"}"#, "{}"));
        assert_ne!(key(r#"{"a\"b":1}"#, "{}"), key(r#"{"ab":1}"#, "{}"));
        assert_eq!(key("{\"\u{e9}\":\"\u{e9}\u{7f}\"}", "{}"), key(r#"{"\u00e9":"\u00e9\u007f"}"#, "{}"));
    }

    #[test]
    fn different_inputs_and_options_differ() {
        let base = key(r#"{"input":"x"}"#, "{}");
        assert_ne!(base, key(r#"{"input":"y"}"#, "{}"));
        assert_ne!(base, key(r#"{"input":"x"}"#, r#"{"priority":1}"#));
        assert_ne!(key(r#"{"input":[1,2]}"#, "{}"), key(r#"{"input":[2,1]}"#, "{}"), "array order matters");
        assert_ne!(key(r#"{"input":"x","k":null}"#, "{}"), base);
    }

    #[test]
    fn keys_are_pinned_across_versions() {
        // Replicas of different versions share answers through Redis by these keys: the
        // canonical form and its hash must not drift (values from an independent SHA-256 of
        // the canonical text, e.g. `data:{"format":"text","input":"bench"}\noptions:{}`).
        let bench = key(r#"{"input": "bench", "format": "text"}"#, "{}");
        assert_eq!(bench.hex(), "d70c25e72a8e78e864126c08a171fd0d9885611e7ba5c6b04a3d01dc1d8a1d26");
        let escaped = key(r#"{"input": "\u0041\n \u00e9"}"#, r#"{"x": [1, "y"]}"#);
        assert_eq!(escaped.hex(), "abc045d317803a50b4409e210208d496d2e5d846bbd0a9c04f8efc63bb287432");
    }

    #[test]
    fn a_key_of_members_read_already_is_the_same_key() {
        let options: Members<'_> = serde_json::from_str(r#"{"x": [1, "y"]}"#).unwrap();
        for data in [
            r#"{"input": "bench", "format": "text"}"#,
            r#"{"input": "\u0041\n \u00e9"}"#,
            "{}",
            r#"{"b":{"y":[1,{}],"x":"A"},"a":1}"#,
        ] {
            let raw: &RawValue = serde_json::from_str(data).unwrap();
            let members = sorted_members(raw.get()).unwrap();
            assert_eq!(key_of_object(members, &options), key_of(raw, &options), "{data}");
        }
        let bench: &RawValue = serde_json::from_str(r#"{"input": "bench", "format": "text"}"#).unwrap();
        let key = key_of_object(sorted_members(bench.get()).unwrap(), &Members::new()).unwrap();
        assert_eq!(key.hex(), "d70c25e72a8e78e864126c08a171fd0d9885611e7ba5c6b04a3d01dc1d8a1d26");
    }

    #[test]
    fn hex_round_trips() {
        let k = key(r#"{"input":"x"}"#, "{}");
        assert_eq!(Key::from_hex(&k.hex()), Some(k));
        assert_eq!(k.header().to_str().unwrap(), k.hex());
        assert_eq!(Key::from_hex("zz"), None);
    }
}
