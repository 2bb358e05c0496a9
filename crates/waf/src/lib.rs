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
pub mod request;
pub mod rule;
pub mod transform;
mod xml;

pub use engine::{Matched, Outcome, Settings, Waf};
pub use request::Request;
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
