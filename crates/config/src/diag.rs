//! Diagnostics: every problem found in a config file, with `file:line:column`,
//! the key path and what is wrong.

use std::fmt;
use std::ops::Range;

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Dotted key path, e.g. `upstream.products.servers[1].weight`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        } else {
            write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file, self.line, self.column, self.path, self.message
            )
        }
    }
}

/// Where a table was defined: `file:line:column`. Never part of a
/// comparison (a table that moved in the file has not changed).
#[derive(Clone, Debug, Default)]
pub struct Location(pub String);

impl PartialEq for Location {
    fn eq(&self, _: &Location) -> bool {
        true
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The config was rejected. Holds every error found, in source order.
#[derive(Clone, Debug)]
pub struct ConfigError {
    pub errors: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(
            f,
            "invalid configuration: {n} error{}",
            if n == 1 { "" } else { "s" }
        )?;
        for (i, d) in self.errors.iter().enumerate() {
            if i + 1 < n {
                writeln!(f, "  {d}")?;
            } else {
                write!(f, "  {d}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Collects diagnostics while walking a document.
pub(crate) struct Sink<'a> {
    file: &'a str,
    line_starts: Vec<usize>,
    src: &'a str,
    pub(crate) errors: Vec<(usize, Diagnostic)>,
    pub(crate) warnings: Vec<(usize, Diagnostic)>,
}

impl<'a> Sink<'a> {
    pub(crate) fn new(file: &'a str, src: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        Sink {
            file,
            line_starts,
            src,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn diag(&self, span: &Range<usize>, path: &str, msg: String) -> Diagnostic {
        let offset = span.start.min(self.src.len());
        let line_idx = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let line_start = self.line_starts[line_idx];
        let column = self
            .src
            .get(line_start..offset)
            .map(|s| s.chars().count())
            .unwrap_or(0)
            + 1;
        Diagnostic {
            file: self.file.to_string(),
            line: line_idx + 1,
            column,
            path: path.to_string(),
            message: msg,
        }
    }

    /// `file:line:column` of a span, for problems found after reading
    /// (`check`'s look at a repo or a server).
    pub(crate) fn location(&self, span: &Range<usize>) -> Location {
        let d = self.diag(span, "", String::new());
        Location(format!("{}:{}:{}", d.file, d.line, d.column))
    }

    pub(crate) fn error(&mut self, span: &Range<usize>, path: &str, msg: impl Into<String>) {
        let d = self.diag(span, path, msg.into());
        self.errors.push((span.start, d));
    }

    pub(crate) fn warn(&mut self, span: &Range<usize>, path: &str, msg: impl Into<String>) {
        let d = self.diag(span, path, msg.into());
        self.warnings.push((span.start, d));
    }

    pub(crate) fn finish(self) -> (Vec<Diagnostic>, Vec<Diagnostic>) {
        let sort = |mut v: Vec<(usize, Diagnostic)>| {
            v.sort_by_key(|(o, _)| *o);
            v.into_iter().map(|(_, d)| d).collect::<Vec<_>>()
        };
        (sort(self.errors), sort(self.warnings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based_and_count_chars() {
        let src = "a = 1\nbé = \"x\"\n";
        let mut s = Sink::new("f.toml", src);
        let off = src.find('=').unwrap();
        s.error(&(off..off + 1), "a", "first");
        let off2 = src.rfind('=').unwrap();
        s.error(&(off2..off2 + 1), "bé", "second");
        let (errs, _) = s.finish();
        assert_eq!((errs[0].line, errs[0].column), (1, 3));
        assert_eq!((errs[1].line, errs[1].column), (2, 4));
        assert_eq!(errs[1].to_string(), "f.toml:2:4: bé: second");
    }
}
