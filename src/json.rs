//! Bounds on JSON that courier did not write itself: request bodies, upstream answers, records
//! read back from Redis.
//!
//! Why a depth bound before anything else: courier's own walks over JSON (the canonical cache
//! key, validation) are iterative, and serde_json's skipping of raw values is too, but a walk
//! is only as safe as its bound, and a body nested thousands of levels deep costs work per
//! level for no request anyone makes on purpose. [`check_depth`] scans the bytes once, with a
//! counter and no stack, and refuses before any parser or walk sees the document; whatever
//! runs after it can then rely on a small, known depth. Real payloads stay far below the
//! default ([`DEFAULT_MAX_DEPTH`]); deeper ones are refused with a message naming the limit.

use std::fmt;

/// The default of `COURIER_MAX_JSON_DEPTH`: levels of arrays and objects a request body may
/// nest, counting the body's own object as the first.
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// The largest `COURIER_MAX_JSON_DEPTH` courier accepts.
pub const MAX_DEPTH_SETTING: usize = 1024;

/// Levels courier itself may add around a value it passes on (the upstream's
/// `{"success":..,"result":..}`, a stored job document around that `result`): documents that
/// carry a client's or the upstream's JSON inside courier's own are allowed this much more.
pub const WRAPPING_DEPTH: usize = 8;

/// Deepest nesting accepted in a record read back from Redis (a job document, a cached
/// answer): what any replica may have written under the largest setting, with its wrapping.
/// Replicas of one fleet may run with different settings during a change, so a record is
/// held to the widest bound, not to this replica's own.
pub const RECORD_MAX_DEPTH: usize = MAX_DEPTH_SETTING + 2 * WRAPPING_DEPTH;

/// A document nested deeper than the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooDeep {
    /// The limit that was passed.
    pub limit: usize,
}

impl fmt::Display for TooDeep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the JSON nests arrays and objects deeper than {} levels", self.limit)
    }
}

impl std::error::Error for TooDeep {}

/// Refuses `bytes` when its arrays and objects nest deeper than `limit` levels.
///
/// Only brackets outside strings count; the bytes need not be valid JSON (the parser that
/// runs next says what else is wrong). One pass, no allocation, no recursion: safe on any
/// input, of any size.
pub fn check_depth(bytes: &[u8], limit: usize) -> Result<(), TooDeep> {
    let mut depth = 0usize;
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'"' => at = string_end(bytes, at + 1),
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return Err(TooDeep { limit });
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        at += 1;
    }
    Ok(())
}

/// The index of the `"` that closes a string whose contents start at `from` (or the end of
/// the input when it is not closed). Most of a document's bytes are inside strings: they are
/// skipped with memchr's vectorised search, not byte by byte.
fn string_end(bytes: &[u8], from: usize) -> usize {
    let mut at = from;
    while let Some(found) = bytes.get(at..).and_then(|rest| memchr::memchr2(b'"', b'\\', rest)) {
        at += found;
        if bytes[at] == b'"' {
            return at;
        }
        // A backslash: the escaped character is skipped whatever it is (`\"` does not close).
        at += 2;
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(open: &str, close: &str, depth: usize) -> String {
        format!("{}{}", open.repeat(depth), close.repeat(depth))
    }

    #[test]
    fn counts_arrays_and_objects_to_the_limit_and_no_further() {
        assert_eq!(check_depth(b"1", 0), Ok(()));
        assert_eq!(check_depth(b"[]", 0), Err(TooDeep { limit: 0 }));
        assert_eq!(check_depth(nested("[", "]", 64).as_bytes(), 64), Ok(()));
        assert_eq!(check_depth(nested("[", "]", 65).as_bytes(), 64), Err(TooDeep { limit: 64 }));
        let objects = format!("{}1{}", r#"{"a":"#.repeat(65), "}".repeat(65));
        assert_eq!(check_depth(objects.as_bytes(), 65), Ok(()));
        assert!(check_depth(objects.as_bytes(), 64).is_err());
        // Siblings do not add up: depth is nesting, not count.
        let wide = format!("[{}]", vec!["[[1]]"; 10_000].join(","));
        assert_eq!(check_depth(wide.as_bytes(), 3), Ok(()));
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        let text = format!(r#"{{"a": "{}", "b": "\"[[[", "c\\": "\\"}}"#, "[".repeat(1000));
        assert_eq!(check_depth(text.as_bytes(), 1), Ok(()));
        // An escaped backslash ends its escape: the quote after it closes the string.
        assert!(check_depth(br#"{"a": "\\", "b": [[1]]}"#, 2).is_err());
    }

    #[test]
    fn any_input_is_answered_without_a_stack_whatever_its_size() {
        // A million levels on a thread with a small stack: the scan does not recurse.
        let deep = nested("[", "]", 1_000_000);
        let verdict = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || check_depth(deep.as_bytes(), 64))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(verdict, Err(TooDeep { limit: 64 }));
        for junk in [&b"]]]]}}}"[..], b"\"unterminated \\", b"\\", b"[\"", b""] {
            assert_eq!(check_depth(junk, 1), Ok(()), "{junk:?}");
        }
    }
}
