//! SecLang's lexical layer: a file's lines (with `\` continuations and `#`
//! comments) into directives, each a name and its words. A word is bare
//! (up to whitespace) or double-quoted; inside quotes only `\"` is an
//! escape (it stands for `"`): every other backslash is kept as written,
//! for the regular expressions (Apache's `ap_getword_conf`, which
//! ModSecurity's own parser follows).

use std::sync::Arc;

use crate::LoadError;

/// One directive, where it was written.
#[derive(Debug, Clone)]
pub struct Directive {
    pub file: Arc<str>,
    /// The line the directive starts on (1-based).
    pub line: usize,
    pub name: String,
    pub args: Vec<String>,
}

impl Directive {
    pub fn error(&self, message: impl Into<String>) -> LoadError {
        LoadError {
            file: self.file.to_string(),
            line: self.line,
            rule: None,
            message: message.into(),
        }
    }
}

/// The directives of a file's text.
pub fn directives(text: &str, file: &Arc<str>) -> Result<Vec<Directive>, LoadError> {
    let mut out = Vec::new();
    let mut logical = String::new();
    let mut start = 0;
    for (i, raw) in text.lines().enumerate() {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if logical.is_empty() {
            start = i + 1;
            let t = raw.trim_start();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
        }
        match raw.trim_end().strip_suffix('\\') {
            Some(head) => {
                // Joined as Apache joins them: the backslash goes, the
                // next line follows as written.
                logical.push_str(head);
            }
            None => {
                logical.push_str(raw);
                out.push(directive(&logical, file, start)?);
                logical.clear();
            }
        }
    }
    if !logical.trim().is_empty() {
        out.push(directive(&logical, file, start)?);
    }
    Ok(out)
}

fn directive(text: &str, file: &Arc<str>, line: usize) -> Result<Directive, LoadError> {
    let words = words(text).map_err(|message| LoadError {
        file: file.to_string(),
        line,
        rule: None,
        message,
    })?;
    let mut words = words.into_iter();
    let name = words.next().unwrap_or_default();
    Ok(Directive {
        file: file.clone(),
        line,
        name,
        args: words.collect(),
    })
}

/// Splits a logical line into words.
pub fn words(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(_, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        if c == '"' || c == '\'' {
            let quote = c;
            chars.next();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                if c == '\\' && chars.peek().is_some_and(|&(_, n)| n == quote) {
                    word.push(quote);
                    chars.next();
                } else if c == quote {
                    closed = true;
                    break;
                } else {
                    word.push(c);
                }
            }
            if !closed {
                return Err(format!("a {quote} quote is not closed"));
            }
        } else {
            while let Some(&(_, c)) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                word.push(c);
                chars.next();
            }
        }
        out.push(word);
    }
    Ok(out)
}

/// A rule's action list, `id:1,phase:2,msg:'a, b',t:none`: names and
/// values, split at commas outside single quotes (where `\'` stands for
/// `'`), each trimmed (continuation lines leave indentation inside).
pub fn actions(text: &str) -> Result<Vec<(String, Option<String>)>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == ':' || c == ',' {
                break;
            }
            name.push(c);
            chars.next();
        }
        let name = name.trim().to_string();
        if chars.peek() != Some(&':') {
            out.push((name, None));
            continue;
        }
        chars.next();
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                if c == '\\' && chars.peek() == Some(&'\'') {
                    value.push('\'');
                    chars.next();
                } else if c == '\'' {
                    closed = true;
                    break;
                } else {
                    value.push(c);
                }
            }
            if !closed {
                return Err(format!("the value of action {name:?} has no closing quote"));
            }
            // Anything up to the next comma after a quoted value is junk.
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                if !c.is_whitespace() {
                    return Err(format!("text after the quoted value of action {name:?}"));
                }
                chars.next();
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
            value = value.trim_end().to_string();
        }
        out.push((name, Some(value)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Arc<str> {
        Arc::from("t.conf")
    }

    #[test]
    fn continuations_comments_and_lines() {
        let text = "# a comment\n\nSecRuleEngine On\nSecRule ARGS \"@rx a\\\"b\" \\\n    \"id:1,\\\n    phase:2\"\n  # indented comment\nSecMarker END";
        let d = directives(text, &file()).unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!((d[0].line, d[0].name.as_str()), (3, "SecRuleEngine"));
        assert_eq!(d[0].args, ["On"]);
        assert_eq!(d[1].line, 4);
        assert_eq!(d[1].args, ["ARGS", "@rx a\"b", "id:1,    phase:2"]);
        assert_eq!((d[2].line, d[2].name.as_str()), (8, "SecMarker"));
    }

    #[test]
    fn backslashes_other_than_quote_escapes_are_kept() {
        assert_eq!(
            words(r#"SecRule ARGS "@rx \d+\s\\x" x"#).unwrap(),
            ["SecRule", "ARGS", r"@rx \d+\s\\x", "x"]
        );
        assert!(words("SecRule \"open").unwrap_err().contains("not closed"));
    }

    #[test]
    fn action_lists() {
        let a = actions(
            "id:942100,  phase:2,block,msg:'SQL, with a comma',t:none,t:urlDecodeUni,\
             setvar:'tx.score=+%{tx.critical_anomaly_score}',ctl:ruleRemoveTargetById=1;ARGS:x,tag:'it\\'s'",
        )
        .unwrap();
        let names: Vec<_> = a.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["id", "phase", "block", "msg", "t", "t", "setvar", "ctl", "tag"]
        );
        assert_eq!(a[3].1.as_deref(), Some("SQL, with a comma"));
        assert_eq!(
            a[6].1.as_deref(),
            Some("tx.score=+%{tx.critical_anomaly_score}")
        );
        assert_eq!(a[7].1.as_deref(), Some("ruleRemoveTargetById=1;ARGS:x"));
        assert_eq!(a[8].1.as_deref(), Some("it's"));
        assert!(actions("msg:'open").is_err());
    }
}
