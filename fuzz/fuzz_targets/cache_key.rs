//! Canonical-JSON cache keys: never a panic, and the same key for the same JSON however it is
//! written (key order, whitespace, string escapes), checked against an independent rewriter.
#![no_main]

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write;

use courier::key::{key_of, Members};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

type Options<'a> = Members<'a>;

fuzz_target!(|data: &[u8]| {
    // Keys are computed only for bodies within the depth bound (`courier::json::check_depth`
    // runs first); this target's own rewriter below recurses, so it stays within it too.
    if courier::json::check_depth(data, courier::json::DEFAULT_MAX_DEPTH).is_err() {
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(value) = serde_json::from_str::<&RawValue>(text) else { return };
    let none = Options::new();
    let Ok(key) = key_of(value, &none) else { return };
    assert_eq!(key_of(value, &none).ok(), Some(key), "deterministic");

    let rewritten = rewrite(value).expect("a value that has a key can be rewritten");
    let other: &RawValue = serde_json::from_str(&rewritten).expect("the rewrite is JSON");
    assert_eq!(key_of(other, &none).ok(), Some(key), "{text} and {rewritten} differ");

    // The same value as options (when it is an object) keys the same, rewritten or not.
    if let (Ok(options), Ok(rewritten_options)) =
        (serde_json::from_str::<Options<'_>>(text), serde_json::from_str::<Options<'_>>(&rewritten))
    {
        let data: &RawValue = serde_json::from_str("{\"input\":1}").unwrap();
        assert_eq!(key_of(data, &options).ok(), key_of(data, &rewritten_options).ok());
    }
});

/// The same JSON value written differently: object keys in reverse order (a value with a
/// member named twice has no key, so never gets here), whitespace everywhere, every string
/// character past ASCII letters and digits written as a `\u` escape. Numbers stay as written:
/// the key keeps `1` and `1.0` apart on purpose.
fn rewrite(value: &RawValue) -> Option<String> {
    let raw = value.get().trim();
    let mut out = String::new();
    match raw.as_bytes().first()? {
        b'{' => {
            let object: BTreeMap<Cow<'_, str>, &RawValue> = serde_json::from_str(raw).ok()?;
            out.push_str("{ ");
            for (i, (name, inner)) in object.iter().rev().enumerate() {
                if i > 0 {
                    out.push_str(" ,\n");
                }
                out.push_str(&escape(name));
                out.push_str(" :\t");
                out.push_str(&rewrite(inner)?);
            }
            out.push_str(" }");
        }
        b'[' => {
            let items: Vec<&RawValue> = serde_json::from_str(raw).ok()?;
            out.push_str("[ ");
            for (i, inner) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(" , ");
                }
                out.push_str(&rewrite(inner)?);
            }
            out.push_str(" ]");
        }
        b'"' => out.push_str(&escape(&serde_json::from_str::<Cow<'_, str>>(raw).ok()?)),
        _ => out.push_str(raw),
    }
    Some(out)
}

fn escape(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                write!(out, "\\u{unit:04X}").unwrap();
            }
        }
    }
    out.push('"');
    out
}
