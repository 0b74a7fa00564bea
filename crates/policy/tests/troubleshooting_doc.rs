//! Keeps docs/troubleshooting.md true to the reason codes: every code in `Reason::ALL` has a
//! heading or a table row there, and no page of the docs names a reason code that does not exist.

#![allow(clippy::panic)]

use std::collections::BTreeSet;

use runnel_policy::Reason;

const PREFIXES: &[&str] = &["ingress.", "egress.", "token.", "iam.", "principal.", "invoker."];

fn docs_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs")
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// `iam.no_binding` is reason-shaped; `iam.serviceAccounts.actAs` (a permission) and
/// `ingress.rs` (a file) are not.
fn looks_like_reason(word: &str) -> bool {
    let Some(prefix) = PREFIXES.iter().find(|p| word.starts_with(**p)) else { return false };
    let rest = &word[prefix.len()..];
    let segments: Vec<&str> = rest.split('.').collect();
    let is_file = matches!(segments.last(), Some(&("rs" | "md" | "py" | "json" | "toml" | "yaml")));
    !is_file && segments.iter().all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
}

/// The code in backticks: inline spans and fenced blocks, split into words.
fn code_words(doc: &str) -> Vec<(usize, String)> {
    let mut words = Vec::new();
    let mut fenced = false;
    for (n, line) in doc.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        let spans: Vec<&str> = if fenced { vec![line] } else { line.split('`').skip(1).step_by(2).collect() };
        for span in spans {
            for word in span.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.')) {
                let word = word.trim_end_matches('.');
                if !word.is_empty() {
                    words.push((n + 1, word.to_string()));
                }
            }
        }
    }
    words
}

#[test]
fn every_reason_has_a_heading_or_a_table_row_in_troubleshooting() {
    let doc = read(&docs_dir().join("troubleshooting.md"));
    let mut listed = BTreeSet::new();
    for line in doc.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            listed.extend(line.split('`').skip(1).step_by(2).map(str::to_string));
        } else if line.starts_with('|') {
            for cell in line.split('|').map(str::trim) {
                if let Some(code) = cell.strip_prefix('`').and_then(|c| c.strip_suffix('`')) {
                    listed.insert(code.to_string());
                }
            }
        }
    }
    let missing: Vec<&str> = Reason::ALL.iter().map(|r| r.code()).filter(|c| !listed.contains(*c)).collect();
    assert!(missing.is_empty(), "docs/troubleshooting.md has no heading or table row for {missing:?}");
}

#[test]
fn the_docs_name_only_real_reasons() {
    let real: BTreeSet<&str> = Reason::ALL.iter().map(|r| r.code()).collect();
    let mut pages: Vec<std::path::PathBuf> = std::fs::read_dir(docs_dir())
        .unwrap_or_else(|e| panic!("cannot list docs/: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    pages.push(docs_dir().join("../README.md"));
    let mut unknown = Vec::new();
    for page in &pages {
        for (line, word) in code_words(&read(page)) {
            if looks_like_reason(&word) && !real.contains(word.as_str()) {
                unknown.push(format!("{}:{line}: `{word}`", page.display()));
            }
        }
    }
    assert!(unknown.is_empty(), "reason codes that do not exist:\n{}", unknown.join("\n"));
}

#[test]
fn the_checks_recognise_reasons_and_nothing_else() {
    assert!(looks_like_reason("egress.private_ranges_only.service_url_left_directly"));
    assert!(looks_like_reason("iam.no_bindings"));
    assert!(!looks_like_reason("iam.serviceAccounts.actAs"));
    assert!(!looks_like_reason("ingress.rs"));
    assert!(!looks_like_reason("run.routes.invoke"));
    let words = code_words("a `token.missing` b\n```\nx egress.vpc y\n```\nnot.code `reason=\"iam.granted\"`");
    let words: Vec<&str> = words.iter().map(|(_, w)| w.as_str()).collect();
    assert!(words.contains(&"token.missing") && words.contains(&"egress.vpc") && words.contains(&"iam.granted"));
    assert!(!words.contains(&"not.code"));
}
