//! Structure-aware: documents built to be hostile (nesting up to 60,000 deep, long runs
//! of escapes, thousands of keys, members named twice, brackets left open), placed in
//! every position a client or the upstream controls, and fed on a worker's stack to each path
//! that reads JSON courier did not write: the request body, the upstream's answer, and the
//! records read back from Redis. Nothing may panic or overflow; each path refuses what is too
//! deep with its own answer and accepts what is not.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use bytes::Bytes;
use courier::http::body::{self, Rules};
use courier::http::ApiError;
use courier::jobs::{Job, JobStatus, RawJson, StatusDoc, Timestamp};
use courier::json::{check_depth, DEFAULT_MAX_DEPTH, RECORD_MAX_DEPTH, WRAPPING_DEPTH};
use courier::shared::cache::Record;
use courier::upstream::{read_success, upstream_error_message, Attempt, SuccessBody};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(doc) = document(&mut u) else { return };
    let position = u.int_in_range(0..=3u8).unwrap_or(0);
    common::on_worker_stack(move || {
        request_path(&placed(position, &doc));
        upstream_path(&doc);
        record_path(&doc);
    });
});

/// A hostile document, built iteratively from the input's choices.
fn document(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut closers = Vec::new();
    // Levels: runs of one kind of up to 30,000 each, so that a small input reaches a large
    // depth (up to 60,000 in all).
    for _ in 0..u.int_in_range(0..=2u8)? {
        let run = usize::from(u.int_in_range(0..=30_000u16)? / u.int_in_range(1..=64u16)?);
        match u.int_in_range(0..=3u8)? {
            0 => push_levels(&mut out, &mut closers, run, b"[", b"]"),
            1 => push_levels(&mut out, &mut closers, run, br#"{"k":"#, b"}"),
            2 => push_levels(&mut out, &mut closers, run, br#"[1,"[",{"a":"#, b"}]"),
            _ => push_levels(&mut out, &mut closers, run, br#"{"\u006b\"":["#, b"]}"),
        }
    }
    // The innermost value.
    match u.int_in_range(0..=4u8)? {
        0 => {
            let count = usize::from(u.int_in_range(0..=20_000u16)?);
            out.push(b'"');
            for _ in 0..count {
                out.extend_from_slice(br#"\u00e9\n\"\\"#);
            }
            out.push(b'"');
        }
        1 => {
            let count = u.int_in_range(0..=10_000u16)?;
            let twice = u.arbitrary::<bool>()?;
            out.push(b'{');
            for i in 0..count {
                let name = if twice && i == count / 2 { 0 } else { i };
                out.extend_from_slice(format!(r#""m{name}":{i},"#).as_bytes());
            }
            out.extend_from_slice(b"\"end\":null}");
        }
        2 => {
            let len = u.int_in_range(0..=256u16)?;
            out.extend_from_slice(u.bytes(len.into())?);
        }
        3 => out.extend_from_slice(b"1e999999"),
        _ => out.extend_from_slice(b"\"x\""),
    }
    // Close what was opened, unless the input says to leave some open (or close too many).
    let unclosed = usize::from(u.int_in_range(0..=3u8)?);
    while let Some(close) = closers.pop() {
        if closers.len() >= unclosed {
            out.extend_from_slice(close);
        }
    }
    if u.arbitrary::<bool>()? {
        out.extend_from_slice(b"]]}}");
    }
    Ok(out)
}

/// Opens `run` levels with `open`, remembering `close` for each.
fn push_levels(out: &mut Vec<u8>, closers: &mut Vec<&'static [u8]>, run: usize, open: &[u8], close: &'static [u8]) {
    for _ in 0..run {
        out.extend_from_slice(open);
        closers.push(close);
    }
}

/// The document in one of the places of a request body a client controls.
fn placed(position: u8, doc: &[u8]) -> Vec<u8> {
    let doc = String::from_utf8_lossy(doc);
    match position {
        0 => format!(r#"{{"data":{{"input":{doc}}}}}"#),
        1 => format!(r#"{{"data":{{"input":1,"other":{doc}}},"options":{{"async":true}}}}"#),
        2 => format!(r#"{{"data":{{"input":1}},"options":{{"o":{doc}}}}}"#),
        _ => doc.into_owned(),
    }
    .into_bytes()
}

/// The request path: too deep is always the depth refusal; what is accepted goes upstream as
/// JSON.
fn request_path(body: &[u8]) {
    let rules = Rules { want_key: true, max_depth: DEFAULT_MAX_DEPTH };
    let too_deep = check_depth(body, DEFAULT_MAX_DEPTH).is_err();
    match body::parse(body, rules) {
        Ok(request) => {
            assert!(!too_deep, "a body past the bound was accepted");
            serde_json::from_slice::<&RawValue>(&request.upstream_body).expect("the upstream body is JSON");
            assert!(request.cache_key.is_some());
        }
        Err(ApiError::InvalidRequest(message)) if too_deep => assert!(message.contains("deeper than"), "{message}"),
        Err(error) => assert!(!too_deep, "a body past the bound got {error:?}"),
    }
}

/// The upstream's answer: a success or an error body around the document.
fn upstream_path(doc: &[u8]) {
    let mut answer = br#"{"success":true,"result":"#.to_vec();
    answer.extend_from_slice(doc);
    answer.extend_from_slice(br#","request_id":"up_1"}"#);
    let max_depth = DEFAULT_MAX_DEPTH + WRAPPING_DEPTH;
    match read_success(Bytes::from(answer.clone()), max_depth) {
        Attempt::Success(body) => {
            assert!(check_depth(&body, max_depth).is_ok());
            if let Some(success) = SuccessBody::parse(&body) {
                serde_json::from_slice::<&RawValue>(&success.result).expect("the result passed on is JSON");
            }
        }
        Attempt::Invalid(why) => assert!(check_depth(&answer, max_depth).is_err(), "{why}"),
        other => panic!("{other:?}"),
    }
    let mut error = br#"{"error":{"message":"m","details":"#.to_vec();
    error.extend_from_slice(doc);
    error.extend_from_slice(b"}}");
    assert!(upstream_error_message(&error, 400).chars().count() <= 300);
}

/// Records read back from Redis: a cached answer and a job document around the document.
fn record_path(doc: &[u8]) {
    let record =
        Record { stored_at_ms: 1, upstream_request_id: Some("up_1".into()), result: Bytes::from(doc.to_vec()) };
    let encoded = record.encode().expect("a short id encodes");
    let valid = std::str::from_utf8(doc).is_ok_and(|text| serde_json::from_str::<&RawValue>(text).is_ok());
    let decoded = Record::decode(&encoded);
    assert_eq!(decoded.is_some(), valid && check_depth(doc, RECORD_MAX_DEPTH).is_ok(), "record decode");

    let job = Job {
        doc: StatusDoc {
            request_id: "req_1".into(),
            status: JobStatus::Completed,
            result: Some(RawJson(Bytes::from_static(b"0"))),
            upstream_request_id: None,
            error: None,
            created_at: Timestamp::now(),
            completed_at: None,
            attempts: 1,
            takeovers: 0,
            callback: None,
        },
        owner: None,
        work: None,
    };
    let text = serde_json::to_string(&job).expect("a job serialises");
    let stored = text.replacen(r#""result":0"#, &format!(r#""result":{}"#, String::from_utf8_lossy(doc)), 1);
    if let Ok(read) = courier::jobs::redis::decode(&stored) {
        let result = read.doc.result.expect("a result");
        serde_json::from_slice::<&RawValue>(&result.0).expect("the stored result is JSON");
    }
}
