//! centinela's WAF engine: the SecLang subset that the OWASP Core Rule Set
//! v4 uses, loaded from the operator's files and compiled once.
//!
//! - [`parse`]: SecLang's lexical layer (lines, continuations, quoting).
//! - [`rule`]: directives into compiled rules (targets, operators,
//!   transformations, actions), with `file:line` and the rule's id on
//!   every error.
//! - [`transform`]: the transformations, with ModSecurity's semantics.
//! - [`request`]: a request's variables (arguments, headers, cookies,
//!   bodies by processor: URL-encoded, JSON, multipart, XML).
//! - [`engine`]: the phases run over a request, to an [`Outcome`].
//! - [`detect`]: libinjection's SQLi and XSS detection.
//!
//! What SecLang this engine reads, and where it differs from ModSecurity,
//! is in `docs/waf.md`.

pub mod detect;
pub mod engine;
mod multipart;
pub mod parse;
pub mod prefilter;
pub mod request;
pub mod rule;
pub mod transform;
mod xml;

pub use engine::{Exclusion, Matched, Outcome, Settings, State, Waf};
pub use request::{Request, Response};
pub use rule::{load, RuleSet};

/// Why rules could not be loaded: the file, the line, the rule's id when
/// there is one, and the cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub file: String,
    pub line: usize,
    pub rule: Option<u32>,
    pub message: String,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: ", self.file, self.line)?;
        if let Some(id) = self.rule {
            write!(f, "rule {id}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for LoadError {}

/// The files of `[waf] rules`, in order: each pattern's matches sorted
/// (`*` and `?` in the file name only). A pattern that matches nothing is
/// an error: it is a typo far more often than an empty directory.
pub fn files(patterns: &[std::path::PathBuf]) -> Result<Vec<std::path::PathBuf>, LoadError> {
    let mut out = Vec::new();
    for p in patterns {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        let is_glob = name.as_deref().is_some_and(|n| n.contains(['*', '?']));
        if !is_glob {
            if !p.is_file() {
                return Err(LoadError {
                    file: p.display().to_string(),
                    line: 0,
                    rule: None,
                    message: "no such rule file".into(),
                });
            }
            out.push(p.clone());
            continue;
        }
        let dir = p.parent().unwrap_or(std::path::Path::new("."));
        let pattern = name.unwrap_or_default();
        let entries = std::fs::read_dir(dir).map_err(|e| LoadError {
            file: dir.display().to_string(),
            line: 0,
            rule: None,
            message: format!("cannot list the rule directory: {e}"),
        })?;
        let mut found: Vec<std::path::PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|f| {
                f.is_file()
                    && f.file_name().is_some_and(|n| {
                        glob_match(pattern.as_bytes(), n.to_string_lossy().as_bytes())
                    })
            })
            .collect();
        if found.is_empty() {
            return Err(LoadError {
                file: p.display().to_string(),
                line: 0,
                rule: None,
                message: "the pattern matches no file".into(),
            });
        }
        found.sort();
        out.extend(found);
    }
    Ok(out)
}

/// `*` (any run) and `?` (any one byte).
fn glob_match(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob_match(&p[1..], s) || (!s.is_empty() && glob_match(p, &s[1..])),
        (Some(b'?'), Some(_)) => glob_match(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => glob_match(&p[1..], &s[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match(b"*.conf", b"REQUEST-901-INITIALIZATION.conf"));
        assert!(!glob_match(b"*.conf", b"x.conf.example"));
        assert!(glob_match(b"REQUEST-9??-*.conf", b"REQUEST-942-SQLI.conf"));
        let dir = centinela_testkit::TempDir::new("waf-globs");
        for f in ["b.conf", "a.conf", "c.data"] {
            std::fs::write(dir.path(f), "").unwrap();
        }
        let got = files(&[dir.path("*.conf")]).unwrap();
        assert_eq!(got, [dir.path("a.conf"), dir.path("b.conf")]);
        assert!(files(&[dir.path("*.nope")])
            .unwrap_err()
            .message
            .contains("matches no file"));
        assert!(files(&[dir.path("missing.conf")])
            .unwrap_err()
            .message
            .contains("no such"));
    }
}
