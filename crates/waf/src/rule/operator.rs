//! Operators, compiled once at load: regular expressions over bytes,
//! phrase lists as Aho-Corasick automata, networks, byte ranges.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aho_corasick::AhoCorasick;
use regex::bytes::{Regex, RegexBuilder};

use super::target::Expand;

/// An operator's kind, compiled.
#[derive(Debug, Clone)]
pub enum OpKind {
    Rx(Regex),
    /// `@pm` and `@pmFromFile`: phrases, matched without regard to case.
    Pm(Arc<AhoCorasick>),
    StrEq(Expand),
    BeginsWith(Expand),
    EndsWith(Expand),
    Contains(Expand),
    ContainsWord(Expand),
    Within(Expand),
    Eq(Expand),
    Ge(Expand),
    Gt(Expand),
    Le(Expand),
    Lt(Expand),
    IpMatch(Vec<(IpAddr, u8)>),
    ValidateByteRange(Box<[bool; 256]>),
    ValidateUrlEncoding,
    ValidateUtf8Encoding,
    UnconditionalMatch,
    NoMatch,
    DetectSqli,
    DetectXss,
}

#[derive(Debug, Clone)]
pub struct Operator {
    pub negated: bool,
    pub kind: OpKind,
    /// As written, for logs.
    pub text: String,
}

/// An operator, compiled; `@pmFromFile` lists are read once per file
/// (`data`) and shared.
pub(super) fn operator(
    text: &str,
    dir: &Path,
    data: &mut HashMap<PathBuf, Arc<AhoCorasick>>,
) -> Result<Operator, String> {
    let (negated, rest) = match text.strip_prefix('!') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let (name, arg) = match rest.strip_prefix('@') {
        Some(r) => match r.split_once(|c: char| c.is_ascii_whitespace()) {
            Some((n, a)) => (n, a),
            None => (r, ""),
        },
        // No operator named: a regular expression.
        None => ("rx", rest),
    };
    let expand = |a: &str| Expand::parse(a);
    let kind = match name {
        "rx" => OpKind::Rx(compile_rx(arg)?),
        "pm" => {
            let words: Vec<&str> = arg.split_ascii_whitespace().collect();
            if words.is_empty() {
                return Err("@pm needs at least one phrase".into());
            }
            OpKind::Pm(Arc::new(phrases(&words)?))
        }
        "pmFromFile" | "pmf" => {
            let mut all = Vec::new();
            for f in arg.split_ascii_whitespace() {
                let path = dir.join(f);
                if let Some(ac) = data.get(&path) {
                    if arg.split_ascii_whitespace().count() == 1 {
                        return Ok(Operator {
                            negated,
                            kind: OpKind::Pm(ac.clone()),
                            text: text.to_string(),
                        });
                    }
                }
                let body = std::fs::read_to_string(&path)
                    .map_err(|e| format!("@pmFromFile: cannot read {}: {e}", path.display()))?;
                let words: Vec<String> = body
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_string)
                    .collect();
                if arg.split_ascii_whitespace().count() == 1 {
                    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
                    let ac = Arc::new(phrases(&refs)?);
                    data.insert(path, ac.clone());
                    return Ok(Operator {
                        negated,
                        kind: OpKind::Pm(ac),
                        text: text.to_string(),
                    });
                }
                all.extend(words);
            }
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            OpKind::Pm(Arc::new(phrases(&refs)?))
        }
        "streq" => OpKind::StrEq(expand(arg)?),
        "beginsWith" => OpKind::BeginsWith(expand(arg)?),
        "endsWith" => OpKind::EndsWith(expand(arg)?),
        "contains" => OpKind::Contains(expand(arg)?),
        "containsWord" => OpKind::ContainsWord(expand(arg)?),
        "within" => OpKind::Within(expand(arg)?),
        "eq" => OpKind::Eq(expand(arg)?),
        "ge" => OpKind::Ge(expand(arg)?),
        "gt" => OpKind::Gt(expand(arg)?),
        "le" => OpKind::Le(expand(arg)?),
        "lt" => OpKind::Lt(expand(arg)?),
        "ipMatch" => OpKind::IpMatch(parse_networks(arg)?),
        "validateByteRange" => OpKind::ValidateByteRange(parse_byte_ranges(arg)?),
        "validateUrlEncoding" => OpKind::ValidateUrlEncoding,
        "validateUtf8Encoding" => OpKind::ValidateUtf8Encoding,
        "unconditionalMatch" => OpKind::UnconditionalMatch,
        "noMatch" => OpKind::NoMatch,
        "detectSQLi" => OpKind::DetectSqli,
        "detectXSS" => OpKind::DetectXss,
        n => return Err(format!("operator @{n} is not supported")),
    };
    Ok(Operator {
        negated,
        kind,
        text: text.to_string(),
    })
}

/// A regular expression with PCRE's byte semantics where it can (`.`
/// and classes over bytes, `(?i)` over ASCII), else with Unicode's (a
/// pattern that names code points above U+00FF).
pub fn compile_rx(pattern: &str) -> Result<Regex, String> {
    let build = |unicode: bool| {
        RegexBuilder::new(pattern)
            .unicode(unicode)
            .size_limit(256 << 20)
            .dfa_size_limit(64 << 20)
            .build()
    };
    build(false)
        .or_else(|_| build(true))
        .map_err(|e| format!("@rx: {e}"))
}

fn phrases(words: &[&str]) -> Result<AhoCorasick, String> {
    AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .build(words)
        .map_err(|e| format!("phrase list: {e}"))
}

fn parse_networks(s: &str) -> Result<Vec<(IpAddr, u8)>, String> {
    s.split([',', ' '])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (ip, len) = match p.split_once('/') {
                Some((ip, len)) => (ip, Some(len)),
                None => (p, None),
            };
            let ip: IpAddr = ip
                .trim()
                .parse()
                .map_err(|_| format!("@ipMatch: {p:?} is not an address or network"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len = match len {
                Some(l) => l
                    .trim()
                    .parse::<u8>()
                    .ok()
                    .filter(|&l| l <= max)
                    .ok_or_else(|| format!("@ipMatch: {p:?} has an invalid prefix length"))?,
                None => max,
            };
            Ok((ip, len))
        })
        .collect()
}

fn parse_byte_ranges(s: &str) -> Result<Box<[bool; 256]>, String> {
    let mut ok = Box::new([false; 256]);
    for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |x: &str| {
            x.trim()
                .parse::<u8>()
                .map_err(|_| format!("@validateByteRange: {p:?} is not a byte or range of bytes"))
        };
        let (a, b) = match p.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => {
                let n = num(p)?;
                (n, n)
            }
        };
        if a > b {
            return Err(format!("@validateByteRange: {p:?} runs backwards"));
        }
        for c in a..=b {
            ok[usize::from(c)] = true;
        }
    }
    Ok(ok)
}
