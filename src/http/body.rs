//! The process request body: validated without building a DOM, and turned into the upstream
//! body by copying the client's raw `data` bytes (serde borrows them as `RawValue`).

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use actix_web::http::header::{HeaderValue, CONTENT_TYPE};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, HttpResponseBuilder};

use super::errors::ApiError;
use crate::key::{key_of_object, sorted_members, Key, Members, NotJson};
use crate::request_id::{self, RequestId};

/// Option keys that are courier's, not the upstream's; they are not forwarded.
const COURIER_OPTIONS: [&str; 2] = ["async", "callback_url"];

/// A valid process request.
#[derive(Clone, Debug)]
pub struct ProcessRequest {
    /// The body to send upstream: `{"data": <client's data>, "options": <upstream options>}`.
    pub upstream_body: Bytes,
    /// `options.async`.
    pub is_async: bool,
    /// `options.callback_url`.
    pub callback_url: Option<String>,
    /// The cache key of `data` and the upstream options, when it was asked for.
    pub cache_key: Option<Key>,
}

#[derive(Deserialize)]
struct Top<'a> {
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default, borrow)]
    options: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct DataFields<'a> {
    #[serde(default, borrow)]
    input: Option<&'a RawValue>,
    #[serde(default, borrow)]
    format: Option<&'a RawValue>,
}

fn is_object(raw: &str) -> bool {
    raw.trim_start().starts_with('{')
}

/// Why a body has no cache key, as an answer.
fn not_keyed(why: NotJson) -> ApiError {
    match why {
        NotJson::Invalid => ApiError::InvalidJson("unreadable value".into()),
        NotJson::DuplicateName => ApiError::InvalidRequest(why.to_string().into()),
    }
}

fn invalid(message: &'static str) -> ApiError {
    ApiError::InvalidRequest(Cow::Borrowed(message))
}

/// How a body is read: whether its cache key is wanted, and how deep its JSON may nest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Compute the cache key (the cache is on).
    pub want_key: bool,
    /// `COURIER_MAX_JSON_DEPTH`.
    pub max_depth: usize,
}

impl Rules {
    /// The rules with the default depth bound.
    pub fn new(want_key: bool) -> Rules {
        Rules { want_key, max_depth: crate::json::DEFAULT_MAX_DEPTH }
    }
}

/// Validates a process request body: a JSON object whose `data` is an object with `input`,
/// and whose optional `options` is an object (`async` a boolean, `callback_url` a string).
/// With `want_key`, also computes the cache key (courier's own options are not part of it).
///
/// The nesting depth is checked first, in one pass without recursion, so nothing after it
/// (serde, the cache key's walk) ever sees a document deeper than `max_depth`.
pub fn parse(body: &[u8], rules: Rules) -> Result<ProcessRequest, ApiError> {
    let Rules { want_key, max_depth } = rules;
    crate::json::check_depth(body, max_depth).map_err(|too_deep| {
        ApiError::InvalidRequest(format!("{too_deep} (COURIER_MAX_JSON_DEPTH); send a flatter document").into())
    })?;
    let text = std::str::from_utf8(body).map_err(|_| ApiError::InvalidJson("not UTF-8".into()))?;
    if !is_object(text) {
        // serde would accept an array for a struct; the API takes only an object.
        serde_json::from_str::<&RawValue>(text).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
        return Err(invalid("the body must be a JSON object"));
    }
    let top: Top<'_> = serde_json::from_str(text).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let data = top.data.ok_or_else(|| invalid("data is required"))?;
    if !is_object(data.get()) {
        return Err(invalid("data must be an object"));
    }
    // With the cache on, `data`'s members are read once, for its fields and for its key.
    let (fields, members) = match want_key {
        true => {
            let members = sorted_members(data.get()).map_err(not_keyed)?;
            // `null` reads as absent, as serde reads it into an `Option`.
            let field = |name: &str| {
                let at = members.binary_search_by(|(member, _)| member.0.as_ref().cmp(name)).ok();
                at.map(|at| members[at].1).filter(|raw| raw.get() != "null")
            };
            (DataFields { input: field("input"), format: field("format") }, Some(members))
        }
        false => (serde_json::from_str(data.get()).map_err(|e| ApiError::InvalidJson(e.to_string()))?, None),
    };
    if fields.input.is_none() {
        return Err(invalid("data.input is required"));
    }
    if fields.format.is_some_and(|f| !f.get().starts_with('"')) {
        return Err(invalid("data.format must be a string"));
    }

    let mut options: Members<'_> = match top.options {
        None => Members::new(),
        Some(raw) if raw.get() == "null" => Members::new(),
        Some(raw) if is_object(raw.get()) => {
            serde_json::from_str(raw.get()).map_err(|e| ApiError::InvalidJson(e.to_string()))?
        }
        Some(_) => return Err(invalid("options must be an object")),
    };
    let is_async = match options.get("async").map(|v| v.get()) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(invalid("options.async must be true or false")),
    };
    let callback_url = match options.get("callback_url") {
        None => None,
        Some(raw) => Some(
            serde_json::from_str::<String>(raw.get()).map_err(|_| invalid("options.callback_url must be a string"))?,
        ),
    };
    for key in COURIER_OPTIONS {
        options.remove(key);
    }
    let cache_key = match members {
        Some(members) => Some(key_of_object(members, &options).map_err(not_keyed)?),
        None => None,
    };

    let mut out = BytesMut::with_capacity(data.get().len() + 64);
    out.put_slice(b"{\"data\":");
    out.put_slice(data.get().as_bytes());
    out.put_slice(b",\"options\":");
    if options.is_empty() {
        // The usual case, written without serde.
        out.put_slice(b"{}");
    } else {
        let mut writer = (&mut out).writer();
        serde_json::to_writer(&mut writer, &options).expect("writing into memory cannot fail");
    }
    out.put_u8(b'}');
    Ok(ProcessRequest { upstream_body: out.freeze(), is_async, callback_url, cache_key })
}

/// `application/json`, built at compile time: `from_static` at run time checks every byte again.
pub const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// The head every JSON answer of the gateway carries: `status`, `X-Request-Id` and a
/// `Content-Type` built from a static value (no copy per answer).
pub fn json_head(status: StatusCode, request_id: &RequestId) -> HttpResponseBuilder {
    let mut head = HttpResponse::build(status);
    head.insert_header((request_id::HEADER, request_id.header().clone())).insert_header((CONTENT_TYPE, JSON));
    head
}

/// The success answer: `{"success":true,"result":..,"request_id":..,"upstream_request_id":..}`,
/// with `result` copied as raw bytes from the upstream's answer.
pub fn success_body(result: &[u8], request_id: &str, upstream_request_id: Option<&str>) -> Bytes {
    // 65 bytes of fixed text, the ids, and room for a few escapes: one allocation, no regrowth.
    let ids = request_id.len() + upstream_request_id.map_or(4, |id| id.len() + 2);
    let mut out = BytesMut::with_capacity(result.len() + ids + 80);
    out.put_slice(b"{\"success\":true,\"result\":");
    out.put_slice(result);
    out.put_slice(b",\"request_id\":\"");
    // Request ids are restricted to characters that need no JSON escaping.
    out.put_slice(request_id.as_bytes());
    out.put_slice(b"\",\"upstream_request_id\":");
    match upstream_request_id {
        // An id with nothing to escape (the usual case) is written as it is, between quotes.
        Some(id) if crate::key::needs_no_escape(id) => {
            out.put_u8(b'"');
            out.put_slice(id.as_bytes());
            out.put_u8(b'"');
        }
        id => {
            let mut writer = (&mut out).writer();
            serde_json::to_writer(&mut writer, &id).expect("writing into memory cannot fail");
        }
    }
    out.put_u8(b'}');
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_plain(body: &[u8]) -> Result<ProcessRequest, ApiError> {
        parse(body, Rules::new(false))
    }

    #[test]
    fn the_cache_key_ignores_courier_options_and_key_order() {
        let a = parse(br#"{"data": {"a": 1, "input": "x"}, "options": {"async": true, "p": 1}}"#, Rules::new(true))
            .unwrap();
        let b = parse(br#"{"options": {"p": 1}, "data": {"input": "x", "a": 1}}"#, Rules::new(true)).unwrap();
        assert_eq!(a.cache_key, b.cache_key);
        assert!(a.cache_key.is_some());
        let c = parse(br#"{"data": {"input": "x", "a": 1}, "options": {"p": 2}}"#, Rules::new(true)).unwrap();
        assert_ne!(a.cache_key, c.cache_key);
        assert_eq!(parse(br#"{"data": {"input": "x"}}"#, Rules::new(false)).unwrap().cache_key, None);
    }

    fn message(body: &str) -> String {
        match parse_plain(body.as_bytes()).unwrap_err() {
            ApiError::InvalidRequest(m) => m.into_owned(),
            ApiError::InvalidJson(m) => format!("json: {m}"),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn forwards_data_raw_and_strips_courier_options() {
        let req = parse_plain(
            br#"{"data": {"input": "hi", "format": "json"}, "options": {"priority": 2, "async": false, "callback_url": "https://x/cb"}}"#,
        )
        .unwrap();
        assert_eq!(&req.upstream_body[..], br#"{"data":{"input": "hi", "format": "json"},"options":{"priority":2}}"#);
        assert!(!req.is_async);
        assert_eq!(req.callback_url.as_deref(), Some("https://x/cb"));
        let plain = parse_plain(br#"{"data":{"input":1}}"#).unwrap();
        assert_eq!(&plain.upstream_body[..], br#"{"data":{"input":1},"options":{}}"#);
        let upstream: serde_json::Value = serde_json::from_slice(&plain.upstream_body).unwrap();
        assert_eq!(upstream["data"]["input"], 1);
    }

    #[test]
    fn names_the_field_that_is_wrong() {
        assert_eq!(message(r#"{"options":{}}"#), "data is required");
        assert_eq!(message(r#"{"data":[1]}"#), "data must be an object");
        assert_eq!(message(r#"{"data":{"format":"json"}}"#), "data.input is required");
        assert_eq!(message(r#"{"data":{"input":null}}"#), "data.input is required");
        assert_eq!(message(r#"{"data":{"input":1,"format":3}}"#), "data.format must be a string");
        assert_eq!(message(r#"{"data":{"input":1},"options":[]}"#), "options must be an object");
        assert_eq!(message(r#"{"data":{"input":1},"options":{"async":"yes"}}"#), "options.async must be true or false");
        assert_eq!(message(r#"[{"data":{"input":1}}]"#), "the body must be a JSON object");
        assert!(message(r#"{"data": "#).starts_with("json: EOF while parsing"));
        assert!(message(r#"{"data":{"input":1},"data":{"input":2}}"#).contains("duplicate field"));
    }

    /// `{"data": {"input": ..}}` with `depth` arrays in `input`, and the same in another
    /// `data` field and in `options`.
    fn nested_bodies(depth: usize) -> [String; 3] {
        let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        [
            format!(r#"{{"data": {{"input": {deep}}}}}"#),
            format!(r#"{{"data": {{"input": 1, "other": {deep}}}}}"#),
            format!(r#"{{"data": {{"input": 1}}, "options": {{"o": {deep}}}}}"#),
        ]
    }

    #[test]
    fn too_deep_is_refused_before_any_walk_naming_the_limit() {
        let rules = Rules { want_key: true, max_depth: 64 };
        for body in nested_bodies(62) {
            parse(body.as_bytes(), rules).unwrap();
        }
        for depth in [63, 10_000, 1_000_000] {
            for body in nested_bodies(depth) {
                // On a thread with a small stack: nothing may recurse per level.
                let refused = std::thread::Builder::new()
                    .stack_size(128 * 1024)
                    .spawn(move || parse(body.as_bytes(), rules))
                    .unwrap()
                    .join()
                    .expect("no stack overflow");
                match refused {
                    Err(ApiError::InvalidRequest(message)) => {
                        assert!(message.contains("deeper than 64 levels") && message.contains("COURIER_MAX_JSON_DEPTH"))
                    }
                    other => panic!("depth {depth}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn a_member_named_twice_is_refused_when_keyed() {
        // The key could keep only one of the two while the upstream reads the other: the
        // cache entry of one request could then answer another.
        for body in [
            &br#"{"data": {"input": 1, "a": "x", "a": "y"}}"#[..],
            br#"{"data": {"input": {"a": 1, "a": 2}}}"#,
            br#"{"data": {"input": [{"b": 1, "\u0062": 2}]}}"#,
        ] {
            match parse(body, Rules::new(true)) {
                Err(ApiError::InvalidRequest(message)) => assert!(message.contains("twice"), "{message}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn the_cache_on_or_off_reads_data_the_same_way() {
        // With the cache on, `data`'s fields come from the members its key reads; off, from
        // serde. Only a member named twice is refused by the first alone (it has no key).
        for body in [
            r#"{"data":{"input":"x"}}"#,
            r#"{"data":{"input":null}}"#,
            r#"{"data":{"format":"text"}}"#,
            r#"{"data":{"input":"x","format":null}}"#,
            r#"{"data":{"input":"x","format":1}}"#,
            r#"{"data":{"input":{"a":[1,{"b":2}]},"format":"json","z":0}}"#,
            r#"{"data":{"\u0069nput":"x"}}"#,
            r#"{"data":{ "input" : [] , "format" : "t" }, "options": {"p": 1}}"#,
            r#"{"data":{}}"#,
        ] {
            let (on, off) = (parse(body.as_bytes(), Rules::new(true)), parse(body.as_bytes(), Rules::new(false)));
            assert_eq!(on.is_ok(), off.is_ok(), "{body}: {on:?} / {off:?}");
            if let (Err(on), Err(off)) = (on, off) {
                assert_eq!(on.code(), off.code(), "{body}");
            }
        }
        let twice = parse(br#"{"data":{"input":"x","input":"y"}}"#, Rules::new(true)).unwrap_err();
        assert_eq!(twice.code(), "invalid_request");
    }

    #[test]
    fn success_body_is_valid_json() {
        let body = success_body(br#"{"processed_data":"HI"}"#, "req_1", Some("up_\"q"));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["success"], true);
        assert_eq!(v["result"]["processed_data"], "HI");
        assert_eq!(v["request_id"], "req_1");
        assert_eq!(v["upstream_request_id"], "up_\"q");
        let plain: serde_json::Value = serde_json::from_slice(&success_body(b"1", "r", Some("up_1\u{e9}"))).unwrap();
        assert_eq!(plain["upstream_request_id"], "up_1\u{e9}");
        let none: serde_json::Value = serde_json::from_slice(&success_body(b"1", "r", None)).unwrap();
        assert!(none["upstream_request_id"].is_null());
    }
}
