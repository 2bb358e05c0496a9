//! centinela's configuration.
//!
//! The pipeline is: TOML text → spanned tree (`toml::de::DeTable`) → a walk
//! that checks every key and value and collects *all* problems with
//! `file:line:column` → the typed [`Config`], which cannot hold an invalid
//! value. Config is loaded from a string so tests need no files.
#![forbid(unsafe_code)]

mod diag;
mod model;
mod parse;
mod service;
pub mod units;

use std::path::Path;

pub use diag::{ConfigError, Diagnostic};
pub use model::*;
pub use parse::{
    default_breaker, default_limits, default_outlier, default_retry, default_timeouts,
};

/// A config that passed validation, and the warnings found on the way.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Diagnostic>,
}

/// Parses and validates config text. `file` names the source in diagnostics.
pub fn parse(src: &str, file: &str) -> Result<Loaded, ConfigError> {
    let mut sink = diag::Sink::new(file, src);
    let (root, syntax_errors) = toml::de::DeTable::parse_recoverable(src);
    if !syntax_errors.is_empty() {
        for e in syntax_errors {
            let span = e.span().unwrap_or(0..0);
            sink.error(
                &span,
                "",
                format!("TOML syntax error: {}", e.message().trim()),
            );
        }
        let (errors, _) = sink.finish();
        return Err(ConfigError { errors });
    }
    // Relative paths in the file (service commands, workdirs, log dirs) are
    // relative to the file's directory.
    let base_dir = std::path::Path::new(file)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let config = parse::build(&mut sink, &root, base_dir);
    let (errors, warnings) = sink.finish();
    if errors.is_empty() {
        Ok(Loaded { config, warnings })
    } else {
        Err(ConfigError { errors })
    }
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let name = path.display().to_string();
    let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
        errors: vec![Diagnostic {
            file: name.clone(),
            line: 0,
            column: 0,
            path: String::new(),
            message: format!("cannot read config file: {e}"),
        }],
    })?;
    parse(&src, &name)
}
