//! Operators, compiled once at load: regular expressions over bytes,
//! phrase lists as Aho-Corasick automata, networks, byte ranges.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aho_corasick::AhoCorasick;
use regex_automata::meta;
use regex_automata::util::syntax;

use super::target::Expand;

/// An operator's kind, compiled.
#[derive(Debug, Clone)]
pub enum OpKind {
    Rx(Rx),
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
    /// Literals (ASCII lower case) one of which any value this operator
    /// matches contains: `@rx` where its pattern requires them, `@pm`'s
    /// phrases. See [`crate::prefilter`].
    pub literals: Option<Arc<Vec<Vec<u8>>>>,
    /// Bytes one of which any value this operator matches contains.
    pub bytes: Option<crate::prefilter::ByteSet>,
}

/// A phrase list, compiled, with its phrases for the prefilter.
#[derive(Clone)]
pub(super) struct Phrases(Arc<AhoCorasick>, Arc<Vec<Vec<u8>>>);

/// An operator, compiled; `@pmFromFile` lists are read once per file
/// (`data`) and shared.
pub(super) fn operator(
    text: &str,
    dir: &Path,
    data: &mut HashMap<PathBuf, Phrases>,
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
    let pm = |Phrases(ac, words): Phrases| Operator {
        negated,
        kind: OpKind::Pm(ac),
        text: text.to_string(),
        bytes: crate::prefilter::phrase_bytes(&words),
        literals: Some(words),
    };
    let kind = match name {
        "rx" => {
            let (re, unicode) = compile_rx_mode(arg)?;
            return Ok(Operator {
                negated,
                kind: OpKind::Rx(re),
                text: text.to_string(),
                literals: crate::prefilter::required_literals(arg, unicode).map(Arc::new),
                bytes: crate::prefilter::required_bytes(arg, unicode),
            });
        }
        "pm" => {
            let words: Vec<&str> = arg.split_ascii_whitespace().collect();
            if words.is_empty() {
                return Err("@pm needs at least one phrase".into());
            }
            return Ok(pm(phrases(&words)?));
        }
        "pmFromFile" | "pmf" => {
            let mut all = Vec::new();
            for f in arg.split_ascii_whitespace() {
                let path = dir.join(f);
                if let Some(p) = data.get(&path) {
                    if arg.split_ascii_whitespace().count() == 1 {
                        return Ok(pm(p.clone()));
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
                    let p = phrases(&refs)?;
                    data.insert(path, p.clone());
                    return Ok(pm(p));
                }
                all.extend(words);
            }
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            return Ok(pm(phrases(&refs)?));
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
        literals: None,
        bytes: None,
    })
}

/// An `@rx` regular expression, over bytes.
///
/// Built without the regex engine's own literal prefilter: the engine's
/// prefilter (`crate::prefilter`) has already found a literal that every
/// match needs before the regex runs, and on a value that holds such a
/// literal many times (a body of quotes and parentheses), the regex's
/// prefilter restarts its search at each one, which costs more than
/// one pass of its DFA.
#[derive(Debug, Clone)]
pub struct Rx(meta::Regex);

impl Rx {
    pub fn is_match(&self, v: &[u8]) -> bool {
        self.0.is_match(v)
    }

    /// The whole match and each group (empty when a group took no
    /// part), or `None` without a match.
    pub fn captures(&self, v: &[u8]) -> Option<Vec<Vec<u8>>> {
        let mut caps = self.0.create_captures();
        self.0.captures(v, &mut caps);
        if !caps.is_match() {
            return None;
        }
        Some(
            (0..caps.group_len())
                .map(|i| {
                    caps.get_group(i)
                        .map_or(Vec::new(), |s| v[s.range()].to_vec())
                })
                .collect(),
        )
    }
}

/// A regular expression with PCRE's byte semantics where it can (`.`
/// and classes over bytes, `(?i)` over ASCII), else with Unicode's (a
/// pattern that names code points above U+00FF).
pub fn compile_rx(pattern: &str) -> Result<Rx, String> {
    compile_rx_mode(pattern).map(|(re, _)| re)
}

/// [`compile_rx`], and whether it took Unicode mode.
fn compile_rx_mode(pattern: &str) -> Result<(Rx, bool), String> {
    let build = |unicode: bool| {
        meta::Regex::builder()
            .syntax(syntax::Config::new().unicode(unicode).utf8(false))
            .configure(
                meta::Config::new()
                    .utf8_empty(false)
                    .auto_prefilter(false)
                    .nfa_size_limit(Some(256 << 20))
                    .hybrid_cache_capacity(64 << 20),
            )
            .build(pattern)
            .map(|re| (Rx(re), unicode))
            .map_err(|e| format!("@rx: {e}"))
    };
    build(false).or_else(|_| build(true))
}

fn phrases(words: &[&str]) -> Result<Phrases, String> {
    let ac = AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .build(words)
        .map_err(|e| format!("phrase list: {e}"))?;
    let lits = words.iter().map(|w| w.as_bytes().to_ascii_lowercase());
    Ok(Phrases(Arc::new(ac), Arc::new(lits.collect())))
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
