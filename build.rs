//! Records the git commit courier is built from, for `courier --version` and the
//! `courier_build_info` gauge, as the compile-time variable `COURIER_GIT_COMMIT`: 12 hex digits.
//!
//! A build without `.git` (the container's builder stage, a source tarball) names its commit
//! in the environment variable of the same name; with neither, the commit is `unknown`. Cargo
//! reruns this when HEAD moves (its file, and the file of the branch it names), not on every
//! build: a rerun that changes nothing would still recompile the crate.

use std::path::{Path, PathBuf};
use std::process::Command;

const VAR: &str = "COURIER_GIT_COMMIT";

fn main() {
    println!("cargo:rerun-if-env-changed={VAR}");
    let commit = match std::env::var(VAR) {
        Ok(given) if !given.trim().is_empty() => checked(given.trim()),
        _ => from_git().unwrap_or_else(|| "unknown".to_owned()),
    };
    println!("cargo:rustc-env={VAR}={commit}");
}

/// The commit given in the environment, shortened to 12 digits; anything but a hex commit id
/// (or `unknown`) stops the build, since it would become a label value of a metric.
fn checked(given: &str) -> String {
    let hex = given.len() >= 7 && given.len() <= 64 && given.bytes().all(|b| b.is_ascii_hexdigit());
    if given == "unknown" {
        return given.to_owned();
    }
    assert!(hex, "{VAR}={given:?} is not a git commit id (expected 7 to 64 hex digits, or unknown)");
    given.to_ascii_lowercase().chars().take(12).collect()
}

fn git(args: &[&str]) -> Option<String> {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let output = Command::new("git").args(args).current_dir(manifest_dir).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    (output.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

fn from_git() -> Option<String> {
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    // HEAD names the branch; the branch's file (or packed-refs) names the commit. Only files
    // that exist are watched: cargo reruns on every build for one that does not.
    let mut watched = vec![git_path("HEAD"), git_path("packed-refs")];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git_path(&branch));
    }
    for path in watched.into_iter().flatten().filter(|p| p.is_file()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    Some(checked(&commit))
}

/// The absolute path of a file of the git directory (worktrees keep HEAD apart from refs).
fn git_path(name: &str) -> Option<PathBuf> {
    let path = PathBuf::from(git(&["rev-parse", "--git-path", name])?);
    if path.is_absolute() {
        return Some(path);
    }
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    Some(Path::new(&manifest_dir).join(path))
}
