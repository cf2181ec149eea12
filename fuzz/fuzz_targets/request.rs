//! What courier parses from a client: the process request body, `X-Request-Id` and
//! `X-Request-Timeout`. None of them may panic or overflow a worker's stack, and each answer
//! keeps its promises. (Run with `-max_len` of 64 KiB or more: a body that nests 9,000 levels
//! deep is 18 KB.)
#![no_main]

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use courier::http::body;
use courier::http::process::deadline_of;
use courier::http::ApiError;
use courier::request_id::{RequestId, MAX_LEN};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

type Object<'a> = BTreeMap<String, &'a RawValue>;

fuzz_target!(|data: &[u8]| {
    // The body is parsed on a worker thread in courier: checked on a stack of that size.
    let body = data.to_vec();
    common::on_worker_stack(move || check_body(&body));
    check_request_id(data);
    check_timeout(data);
});

fn check_body(data: &[u8]) {
    let Ok(request) = body::parse(data, body::Rules::new(true)) else { return };
    // With the cache on, `data`'s fields are read from the members its key reads: what that
    // accepts, the cache-off reading (serde's) accepts too.
    assert!(body::parse(data, body::Rules::new(false)).is_ok(), "valid with the cache on only");
    // What goes upstream is JSON of the API's shape, without courier's own options. (Read
    // with `RawValue`: numbers pass through as written, even past f64's range.)
    let upstream: Object<'_> = serde_json::from_slice(&request.upstream_body).expect("the upstream body is JSON");
    assert_eq!(upstream.keys().map(String::as_str).collect::<Vec<_>>(), ["data", "options"]);
    let data: Object<'_> = serde_json::from_str(upstream["data"].get()).expect("data is an object");
    assert!(data.get("input").is_some_and(|input| input.get() != "null"), "{data:?}");
    let options: Object<'_> = serde_json::from_str(upstream["options"].get()).expect("options is an object");
    assert!(!options.contains_key("async") && !options.contains_key("callback_url"), "{options:?}");
    // Parsing what courier forwards gives the same cache key: the key depends on nothing
    // that forwarding drops or reorders.
    let again =
        body::parse(&request.upstream_body, body::Rules::new(true)).expect("the upstream body is a valid request");
    assert_eq!(again.cache_key, request.cache_key);
    assert!(!again.is_async && again.callback_url.is_none());
}

fn check_request_id(data: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(data) else { return };
    let id = RequestId::from_client(Some(&value));
    let text = id.as_str();
    let safe = |t: &str| {
        !t.is_empty() && t.len() <= MAX_LEN && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b))
    };
    assert!(safe(text), "an id that is unsafe in a header or a log line: {text:?}");
    assert_eq!(text.as_bytes() == data, safe(&String::from_utf8_lossy(data)), "kept iff acceptable: {data:?}");
}

fn check_timeout(data: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(data) else { return };
    let mut headers = HeaderMap::new();
    headers.insert(HeaderName::from_static("x-request-timeout"), value);
    let default = Duration::from_secs(30);
    match deadline_of(&headers, default) {
        // (A tiny positive number of seconds may round to a zero deadline: it fails fast.)
        Ok(deadline) => assert!(deadline <= Duration::from_secs(3600), "{deadline:?}"),
        Err(error) => assert!(matches!(error, ApiError::InvalidRequest(_)), "{error:?}"),
    }
}
