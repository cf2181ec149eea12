//! The documentation's links hold: every alert rule's `runbook` annotation points at that
//! alert's own section of docs/runbooks.md, and every relative link in README.md, docs/*.md and
//! bench/README.md reaches an existing file and, with `#anchor`, an existing heading. (The
//! commands in the docs are run by `scripts/doc-commands`, a step of `scripts/test-all`.)

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

const RULES: &str = "grafana/alerts/courier.rules.yml";
const RUNBOOKS: &str = "docs/runbooks.md";
/// The README is the front page; the rest of the manual lives in docs/ (issue 19).
const README_MAX_LINES: usize = 350;

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The lines of a Markdown file outside fenced code blocks, with their 1-based numbers.
fn prose(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<String> = None;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker: String = trimmed.chars().take_while(|&c| c == '`' || c == '~').collect();
        match &fence {
            None if marker.len() >= 3 => fence = Some(marker),
            None => out.push((i + 1, line)),
            Some(open) if marker.starts_with(open.as_str()) && trimmed[marker.len()..].trim().is_empty() => {
                fence = None
            }
            Some(_) => {}
        }
    }
    out
}

/// A heading's anchor as GitHub makes it: lower case, everything but letters, digits, `_`,
/// `-` and spaces dropped, spaces turned into `-`.
fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter(|&c| c.is_alphanumeric() || c == '_' || c == '-' || c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every heading of a Markdown file by its anchor (a repeated heading gets `-1`, `-2`, ...).
fn anchors(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (_, line) in prose(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let title = line[hashes..].trim().to_owned();
        let base = slug(&title);
        let count = seen.entry(base.clone()).or_insert(0);
        let anchor = if *count == 0 { base.clone() } else { format!("{base}-{count}") };
        *count += 1;
        out.insert(anchor, title);
    }
    out
}

/// The targets of Markdown links `[text](target)` in a line, leaving inline code out.
fn link_targets(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let outside_code: String =
        line.split('`').enumerate().map(|(i, part)| if i % 2 == 0 { part } else { "" }).collect::<Vec<_>>().join("");
    let mut rest = outside_code.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        out.push(after[..end].trim().to_owned());
        rest = &after[end..];
    }
    out
}

fn documents() -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = std::fs::read_dir("docs")
        .expect("docs/ exists")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    for expected in ["api.md", "design.md", "operations.md", "runbooks.md", "security.md"] {
        assert!(docs.contains(&Path::new("docs").join(expected)), "docs/{expected} is missing");
    }
    [PathBuf::from("README.md"), PathBuf::from("bench/README.md")].into_iter().chain(docs).collect()
}

#[test]
fn every_alert_rule_links_its_own_runbook_section() {
    let rules = read(RULES);
    let runbooks = anchors(&read(RUNBOOKS));
    let mut alerts = Vec::new();
    let mut links: Vec<(String, String)> = Vec::new(); // (alert, runbook link)
    for line in rules.lines().map(str::trim) {
        if let Some(alert) = line.strip_prefix("- alert: ") {
            alerts.push(alert.to_owned());
        } else if let Some(link) = line.strip_prefix("runbook: ") {
            let alert = alerts.last().expect("a runbook annotation belongs to an alert rule").clone();
            links.push((alert, link.trim_matches('"').to_owned()));
        }
    }
    assert!(alerts.len() >= 8, "the alert rules lost some: {alerts:?}");
    let linked: Vec<&String> = links.iter().map(|(alert, _)| alert).collect();
    assert_eq!(linked, alerts.iter().collect::<Vec<_>>(), "every alert rule has exactly one runbook link");
    for (alert, link) in &links {
        let (file, anchor) = link.split_once('#').unwrap_or_else(|| panic!("{alert}: {link} names no section"));
        assert_eq!(file, RUNBOOKS, "{alert}: the runbook link {link} points outside {RUNBOOKS}");
        let heading = runbooks.get(anchor).unwrap_or_else(|| panic!("{alert}: {RUNBOOKS} has no heading #{anchor}"));
        assert_eq!(heading, &format!("Runbook: {alert}"), "{alert}: #{anchor} is another alert's runbook");
    }
    let documented: BTreeSet<&str> =
        runbooks.values().filter_map(|heading| heading.strip_prefix("Runbook: ")).collect();
    let alerts: BTreeSet<&str> = alerts.iter().map(String::as_str).collect();
    assert_eq!(documented, alerts, "{RUNBOOKS} has a runbook for each alert rule, and none for a rule that is gone");
}

#[test]
fn every_relative_link_in_the_docs_reaches_a_file_and_heading() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let text = read(&doc);
        let own = anchors(&text);
        for (number, line) in prose(&text) {
            for target in link_targets(line) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (path, anchor) = match target.split_once('#') {
                    Some((path, anchor)) => (path, Some(anchor)),
                    None => (target.as_str(), None),
                };
                let file = if path.is_empty() { doc.clone() } else { doc.parent().unwrap().join(path) };
                let at = format!("{}:{number}: ({target})", doc.display());
                if !file.exists() {
                    broken.push(format!("{at}: no file {}", file.display()));
                    continue;
                }
                let Some(anchor) = anchor else { continue };
                let headings = if path.is_empty() { own.clone() } else { anchors(&read(&file)) };
                if !headings.contains_key(anchor) {
                    broken.push(format!("{at}: {} has no heading #{anchor}", file.display()));
                }
            }
        }
    }
    assert!(checked >= 30, "the link scan found only {checked} relative links: is it still reading the docs?");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_readme_stays_a_front_page() {
    let lines = read("README.md").lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines (at most {README_MAX_LINES}): put the details in docs/ and link them"
    );
    for doc in ["docs/api.md", "docs/operations.md", "docs/runbooks.md", "docs/security.md", "docs/design.md"] {
        assert!(read("README.md").contains(&format!("]({doc})")), "README.md does not link {doc}");
    }
}

#[test]
fn anchors_are_made_as_github_makes_them() {
    let text = "# Title\n## Async requests: `\"options\": {\"async\": true}`\n```sh\n# not a heading\n```\n\
                ## The status store's footprint\n## Logs\n## Logs\n";
    let found = anchors(text);
    for anchor in ["title", "async-requests-options-async-true", "the-status-stores-footprint", "logs", "logs-1"] {
        assert!(found.contains_key(anchor), "{anchor} in {found:?}");
    }
    assert!(!found.contains_key("not-a-heading"));
    assert_eq!(link_targets("see [a](x.md#b), `[c](not-a-link)` and [d](#e)"), ["x.md#b", "#e"]);
}
