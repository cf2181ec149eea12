//! The layering of `src/`, checked over the sources: an import only points down, so no module
//! imports one above it, and no two top-level modules import each other (ARCHITECTURE.md,
//! "the request path"; docs/design.md, "Layout").
//!
//! Every top-level module has a rank below. A reference `crate::<module>` from a file of
//! another top-level module must name a module of a strictly lower rank. A new top-level
//! module fails this test until it is given its place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Top-level modules by layer, lowest first. Modules of one layer do not import each other.
const LAYERS: &[&[&str]] = &[
    // Leaves: types and tools that know nothing of courier's parts.
    &["allocator", "json", "key", "logging", "metrics", "published", "request_id", "systemd"],
    // Configuration (its settings name leaf limits).
    &["config"],
    // Talking to the upstream; shared state in Redis.
    &["upstream", "shared"],
    // Traces: the tracer, span helpers and the OTLP export (through upstream's awc client).
    &["trace"],
    // State owners (actors), the response cache, and the watch on suspicious callers.
    &["actors", "cache", "security"],
    // The one way through courier; the credential reloader.
    &["pipeline", "reload"],
    // Async jobs: their store, runner and callbacks, on the pipeline.
    &["jobs"],
    // HTTP: routes, errors, OpenAPI, admin; it maps requests to the pipeline and jobs.
    &["http"],
    // Starting the system.
    &["gateway"],
    // The upstream stand-in: a separate program in the same binary, sharing no module.
    &["simulator"],
    // The command line: serve, simulate, demo.
    &["cli"],
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text of a Rust file without its comments (a `crate::` in a doc comment is a link, not an
/// import) and without the contents of string literals.
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    match c {
                        '\\' if !escaped => escaped = true,
                        '"' if !escaped => break,
                        _ => escaped = false,
                    }
                }
                out.push_str("\"\"");
            }
            c => out.push(c),
        }
    }
    out
}

/// The top-level modules `code` names through `crate::<module>`.
fn references(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let preceded = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if preceded.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue; // `$crate::` in a macro, or a longer path ending in `crate`
        }
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if !name.is_empty() {
            found.push(name);
        }
    }
    found
}

#[test]
fn imports_only_point_down_and_no_top_level_modules_import_each_other() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut edges: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut unplaced = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&root).unwrap();
        let top =
            relative.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_owned();
        if top == "lib" || top == "main" {
            continue; // the crate root declares the modules; main only calls `courier::cli`
        }
        if rank(&top).is_none() {
            unplaced.push(top.clone());
        }
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        for target in references(&code) {
            if target != top {
                edges.entry((top.clone(), target)).or_default().push(relative.display().to_string());
            }
        }
    }
    unplaced.sort();
    unplaced.dedup();
    assert!(unplaced.is_empty(), "top-level modules without a layer in tests/layers.rs: {unplaced:?}");
    let upward: Vec<String> = edges
        .iter()
        .filter(|((from, to), _)| match (rank(from), rank(to)) {
            (Some(from), Some(to)) => to >= from,
            _ => true,
        })
        .map(|((from, to), files)| format!("{from} -> {to} (in {})", files.join(", ")))
        .collect();
    assert!(upward.is_empty(), "imports that do not point down:\n{}", upward.join("\n"));
}

#[test]
fn the_check_sees_imports_and_ignores_comments_and_strings() {
    let code = code_of(
        "use crate::pipeline::Error; // crate::http in a comment\n\
         /// a link to [`crate::jobs`]\n\
         let s = \"crate::gateway in a \\\" string\"; $crate::cli; x(crate::cache::Key)",
    );
    assert_eq!(references(&code), ["pipeline", "cache"]);
    assert!(rank("http") > rank("pipeline") && rank("pipeline") > rank("upstream"));
}
