//! A lint, run as a test: no code outside tests decides anything by searching the words of an
//! error message (`e.message.contains("too late")`, `err.starts_with("QEMU exited")`, ...).
//! Errors carry an `ErrorKind`, a typed reason (`VmStatus.ended`) or a `StoreError` variant
//! for that. Tests may read messages: they check what a user sees.

use std::path::{Path, PathBuf};

/// Names an error or its text is usually bound to.
const RECEIVERS: &[&str] = &["message", "msg", "err", "error", "e", "m", "why", "reason", "to_string()"];
const SEARCHES: &[&str] = &["contains", "starts_with", "ends_with", "find"];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if p.is_dir() {
            // Test code may read messages.
            if name != "tests" && name != "target" {
                sources(&p, out);
            }
        } else if name.ends_with(".rs") && name != "tests.rs" {
            out.push(p);
        }
    }
}

/// `text` has `recv.search(` where `recv` starts a name (not the tail of a longer one).
fn searches_words(line: &str) -> Option<String> {
    for r in RECEIVERS {
        for s in SEARCHES {
            let pat = format!("{r}.{s}(");
            let mut from = 0;
            while let Some(i) = line[from..].find(&pat) {
                let at = from + i;
                let before = line[..at].chars().last();
                if !before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    return Some(pat);
                }
                from = at + pat.len();
            }
        }
    }
    None
}

#[test]
fn no_decision_depends_on_the_words_of_an_error() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = vec![];
    sources(&crates, &mut files);
    assert!(files.len() > 50, "the workspace's sources were not found from {}", crates.display());
    let mut found = vec![];
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        // Unit tests live at the end of a file, after `#[cfg(test)]`.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (n, line) in code.lines().enumerate() {
            let l = line.trim_start();
            if l.starts_with("//") {
                continue;
            }
            if let Some(p) = searches_words(l) {
                found.push(format!("{}:{}: `{p}` in: {l}", f.display(), n + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "decisions on the words of an error (use ErrorKind, a typed reason or a StoreError variant):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_lint_sees_what_it_forbids() {
    assert!(searches_words(r#"Err(e) if e.message.contains("too late") => {"#).is_some());
    assert!(searches_words(r#"st.error.as_deref().is_some_and(|e| e.starts_with("QEMU exited"))"#).is_some());
    assert!(searches_words(r#"Err(StoreError::Backend(m)) if m.contains("lease not found")"#).is_some());
    assert!(searches_words(r#".filter(|l| line.starts_with(name))"#).is_none());
    assert!(searches_words(r#"if name.ends_with(".rs")"#).is_none());
}
