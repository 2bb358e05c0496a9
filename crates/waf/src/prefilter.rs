//! One scan of a value for every rule's literals, so that most rules are
//! decided without running their operator.
//!
//! At load, each `@rx` pattern is read as a syntax tree and reduced to a
//! set of literals that every match must contain (at least one of them,
//! compared without regard to ASCII case). `@pm` phrase lists are such
//! sets already. Every set goes into one Aho-Corasick automaton. At run
//! time a value (after a rule's transformations) is scanned once and gives
//! a bit per rule: clear means the rule's operator cannot match it, so the
//! regex is not run. The sets are only ever supersets of what can match,
//! so a rule's result never changes: only its cost.
//!
//! A pattern gets no set (and always runs) when its matches need no
//! literal of at least [`MIN_LEN`] bytes: `^\d+$`, or classes too wide to
//! list.

use aho_corasick::AhoCorasick;
use regex_syntax::hir::{Class, Hir, HirKind};

/// Literals shorter than this would be found in almost every value.
const MIN_LEN: usize = 3;
/// The most literals a set may hold; a larger one is given up.
const MAX_SET: usize = 256;
/// Classes of more members than this are not listed.
const MAX_CLASS: usize = 8;
/// Literals are cut to this many bytes: a prefix of a required literal is
/// required too.
const MAX_LIT: usize = 24;

type Set = Vec<Vec<u8>>;

/// The literals every match of `pattern` contains one of (in ASCII lower
/// case), or `None` when there is no useful such set. `unicode` is the
/// mode the pattern was compiled in.
pub fn required_literals(pattern: &str, unicode: bool) -> Option<Set> {
    let hir = regex_syntax::ParserBuilder::new()
        .unicode(unicode)
        .utf8(false)
        .build()
        .parse(pattern)
        .ok()?;
    let lits = analyze(&hir);
    let set = better(usable(lits.exact), lits.required)?;
    (set.iter().all(|l| l.len() >= MIN_LEN) && set.len() <= MAX_SET).then_some(set)
}

/// A set of bytes, one bit each.
pub type ByteSet = [u64; 4];

/// Bytes one of which every match of `pattern` contains, or `None` when
/// a match may be made of any byte (or none). Where several sets would
/// do, the one of the rarest bytes in HTTP values is kept.
pub fn required_bytes(pattern: &str, unicode: bool) -> Option<ByteSet> {
    let hir = regex_syntax::ParserBuilder::new()
        .unicode(unicode)
        .utf8(false)
        .build()
        .parse(pattern)
        .ok()?;
    let set = bytes_of(&hir)?;
    // A set that most values hold saves nothing.
    (cost(&set) < 40).then_some(set)
}

/// Bytes one of which any value holding one of `phrases` (compared
/// without regard to ASCII case) contains.
pub fn phrase_bytes(phrases: &[Vec<u8>]) -> Option<ByteSet> {
    let mut s = [0u64; 4];
    for p in phrases {
        let best = p
            .iter()
            .map(|&b| {
                let mut x = [0u64; 4];
                for c in [b.to_ascii_lowercase(), b.to_ascii_uppercase()] {
                    x[usize::from(c >> 6)] |= 1 << (c & 63);
                }
                x
            })
            .min_by_key(cost)?;
        for i in 0..4 {
            s[i] |= best[i];
        }
    }
    (cost(&s) < 40).then_some(s)
}

/// The bytes in `value`.
pub fn bytes_in(value: &[u8]) -> ByteSet {
    let mut set = [0u64; 4];
    if value.len() < 256 {
        for &b in value {
            set[usize::from(b >> 6)] |= 1 << (b & 63);
        }
        return set;
    }
    // A long value: a table of seen bytes has no chain of dependent
    // updates through four words, and folds into the set once.
    let mut seen = [false; 256];
    for &b in value {
        seen[usize::from(b)] = true;
    }
    for (b, _) in seen.iter().enumerate().filter(|(_, s)| **s) {
        set[b >> 6] |= 1 << (b & 63);
    }
    set
}

/// Do two byte sets share a byte?
pub fn meets(a: &ByteSet, b: &ByteSet) -> bool {
    (a[0] & b[0]) | (a[1] & b[1]) | (a[2] & b[2]) | (a[3] & b[3]) != 0
}

/// How common a byte is in request values, roughly: letters and digits
/// are everywhere, punctuation less, control bytes almost never.
fn weight(b: u8) -> u32 {
    match b {
        b'a'..=b'z' => 6,
        b'A'..=b'Z' | b'0'..=b'9' | b' ' => 3,
        b'.' | b'/' | b'-' | b'_' | b'=' | b'&' | b'%' | b',' | b':' | b';' | b'+' => 2,
        0x21..=0x7e => 1,
        _ => 0,
    }
}

fn cost(set: &ByteSet) -> u32 {
    (0..=255u8)
        .filter(|&b| set[usize::from(b >> 6)] & (1 << (b & 63)) != 0)
        .map(weight)
        .sum()
}

fn bytes_of(h: &Hir) -> Option<ByteSet> {
    let one = |b: u8| {
        let mut s = [0u64; 4];
        s[usize::from(b >> 6)] |= 1 << (b & 63);
        s
    };
    match h.kind() {
        HirKind::Empty | HirKind::Look(_) => None,
        HirKind::Literal(l) => l.0.iter().map(|&b| one(b)).min_by_key(cost),
        HirKind::Class(Class::Bytes(c)) => {
            let mut s = [0u64; 4];
            for r in c.ranges() {
                for b in r.start()..=r.end() {
                    s[usize::from(b >> 6)] |= 1 << (b & 63);
                }
            }
            Some(s)
        }
        HirKind::Class(Class::Unicode(c)) => {
            let mut s = [0u64; 4];
            for r in c.ranges() {
                for ch in r.start()..=r.end().min('\u{7f}') {
                    let b = ch as u8;
                    s[usize::from(b >> 6)] |= 1 << (b & 63);
                }
                if u32::from(r.end()) > 0x7f {
                    // Any lead byte of a longer UTF-8 sequence.
                    for b in 0xc2..=0xf4u8 {
                        s[usize::from(b >> 6)] |= 1 << (b & 63);
                    }
                }
            }
            Some(s)
        }
        HirKind::Capture(c) => bytes_of(&c.sub),
        HirKind::Repetition(r) if r.min == 0 => None,
        HirKind::Repetition(r) => bytes_of(&r.sub),
        HirKind::Concat(subs) => subs.iter().filter_map(bytes_of).min_by_key(cost),
        HirKind::Alternation(subs) => {
            let mut s = [0u64; 4];
            for sub in subs {
                let b = bytes_of(sub)?;
                for i in 0..4 {
                    s[i] |= b[i];
                }
            }
            Some(s)
        }
    }
}

/// What a node's matches are made of: `exact`, the only strings it can
/// match; `required`, strings one of which every match contains.
struct Lits {
    exact: Option<Set>,
    required: Option<Set>,
}

impl Lits {
    fn exact(set: Set) -> Lits {
        Lits {
            exact: Some(set),
            required: None,
        }
    }
    fn none() -> Lits {
        Lits {
            exact: None,
            required: None,
        }
    }
}

fn analyze(h: &Hir) -> Lits {
    match h.kind() {
        HirKind::Empty | HirKind::Look(_) => Lits::exact(vec![Vec::new()]),
        HirKind::Literal(l) => Lits::exact(vec![l.0.to_ascii_lowercase()]),
        HirKind::Class(c) => match class_members(c) {
            Some(set) => Lits::exact(set),
            None => Lits::none(),
        },
        HirKind::Capture(c) => analyze(&c.sub),
        HirKind::Repetition(r) => {
            let sub = analyze(&r.sub);
            match (r.min, r.max) {
                (1, Some(1)) => sub,
                (0, Some(1)) => Lits {
                    exact: sub.exact.and_then(|mut e| {
                        e.push(Vec::new());
                        bounded(e)
                    }),
                    required: None,
                },
                (0, _) => Lits::none(),
                _ => Lits {
                    exact: None,
                    required: better(usable(sub.exact), sub.required),
                },
            }
        }
        HirKind::Concat(subs) => concat(subs),
        HirKind::Alternation(subs) => {
            let mut exact = Some(Vec::new());
            let mut required = Some(Vec::new());
            for s in subs {
                let l = analyze(s);
                let req = better(usable(l.exact.clone()), l.required);
                exact = match (exact, l.exact) {
                    (Some(mut a), Some(b)) => {
                        a.extend(b);
                        bounded(a)
                    }
                    _ => None,
                };
                required = match (required, req) {
                    (Some(mut a), Some(b)) => {
                        a.extend(b);
                        bounded(a)
                    }
                    _ => None,
                };
            }
            Lits { exact, required }
        }
    }
}

/// A concatenation: runs of children with exact sets multiply out; the
/// best run, or the best child's required set, is required.
fn concat(subs: &[Hir]) -> Lits {
    let mut best: Option<Set> = None;
    let mut run: Option<Set> = Some(vec![Vec::new()]);
    let mut all_exact = true;
    for s in subs {
        let l = analyze(s);
        match l.exact {
            Some(e) => {
                let product = run.as_ref().and_then(|r| cross(r, &e));
                run = match product {
                    Some(p) => Some(p),
                    None => {
                        all_exact = false;
                        best = better(best, usable(run.take()));
                        Some(e)
                    }
                };
            }
            None => {
                all_exact = false;
                best = better(best, usable(run.take()));
                best = better(best, l.required);
                run = Some(vec![Vec::new()]);
            }
        }
    }
    if all_exact {
        Lits {
            exact: run,
            required: None,
        }
    } else {
        Lits {
            exact: None,
            required: better(best, usable(run)),
        }
    }
}

fn cross(a: &Set, b: &Set) -> Option<Set> {
    if a.len() * b.len() > MAX_SET {
        return None;
    }
    let mut out = Vec::with_capacity(a.len() * b.len());
    for x in a {
        for y in b {
            let mut s = x.clone();
            s.extend_from_slice(y);
            out.push(s);
        }
    }
    bounded(out)
}

fn bounded(mut set: Set) -> Option<Set> {
    set.sort_unstable();
    set.dedup();
    (set.len() <= MAX_SET).then_some(set)
}

/// A set as a requirement: none if any member is empty (that requires
/// nothing); long members cut short.
fn usable(set: Option<Set>) -> Option<Set> {
    let set = set?;
    if set.iter().any(Vec::is_empty) {
        return None;
    }
    bounded(
        set.into_iter()
            .map(|mut s| {
                s.truncate(MAX_LIT);
                s
            })
            .collect(),
    )
}

/// The set that filters more: longer shortest member, then fewer members.
fn better(a: Option<Set>, b: Option<Set>) -> Option<Set> {
    let score = |s: &Set| {
        let min = s.iter().map(Vec::len).min().unwrap_or(0).min(8);
        (min, usize::MAX - s.len())
    };
    match (a, b) {
        (Some(a), Some(b)) => Some(if score(&b) > score(&a) { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// A small class's members, ASCII letters folded to lower case.
fn class_members(c: &Class) -> Option<Set> {
    let mut out: Set = Vec::new();
    match c {
        Class::Bytes(b) => {
            for r in b.ranges() {
                if usize::from(r.end() - r.start()) >= MAX_CLASS * 2 {
                    return None;
                }
                for x in r.start()..=r.end() {
                    out.push(vec![x.to_ascii_lowercase()]);
                }
            }
        }
        Class::Unicode(u) => {
            for r in u.ranges() {
                if (r.end() as u32 - r.start() as u32) as usize >= MAX_CLASS * 2 {
                    return None;
                }
                for x in r.start()..=r.end() {
                    let mut buf = [0u8; 4];
                    out.push(x.encode_utf8(&mut buf).as_bytes().to_ascii_lowercase());
                }
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    (out.len() <= MAX_CLASS).then_some(out)
}

/// Every prefiltered rule's literals in one automaton.
pub(crate) struct Prefilter {
    ac: AhoCorasick,
    /// Per pattern: the rules (prefilter ids) whose set holds it.
    owners: Vec<Vec<u32>>,
    /// Words of a rule bit set.
    words: usize,
}

/// Which prefiltered rules a value may match: one bit per rule.
pub(crate) type Bits = Box<[u64]>;

impl Prefilter {
    /// `sets[i]` is rule `i`'s literal set.
    pub(crate) fn new(sets: &[&[Vec<u8>]]) -> Option<Prefilter> {
        let mut index: std::collections::HashMap<&[u8], usize> = Default::default();
        let mut patterns: Vec<&[u8]> = Vec::new();
        let mut owners: Vec<Vec<u32>> = Vec::new();
        for (rule, set) in sets.iter().enumerate() {
            for lit in set.iter() {
                let p = *index.entry(lit).or_insert_with(|| {
                    patterns.push(lit);
                    owners.push(Vec::new());
                    patterns.len() - 1
                });
                owners[p].push(rule as u32);
            }
        }
        if patterns.is_empty() {
            return None;
        }
        let ac = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .kind(Some(aho_corasick::AhoCorasickKind::DFA))
            .build(&patterns)
            .ok()?;
        Some(Prefilter {
            ac,
            owners,
            words: sets.len().div_ceil(64),
        })
    }

    /// The words of a scan's bit set.
    pub(crate) fn words(&self) -> usize {
        self.words
    }

    /// One scan of `value`: the rules whose literals it holds.
    pub(crate) fn scan(&self, value: &[u8]) -> Bits {
        let mut bits = vec![0u64; self.words].into_boxed_slice();
        self.scan_into(value, &mut bits);
        bits
    }

    /// [`Prefilter::scan`] into `bits` (`words()` long, zeroed).
    pub(crate) fn scan_into(&self, value: &[u8], bits: &mut [u64]) {
        let mut state = aho_corasick::automaton::OverlappingState::start();
        while let Some(m) = {
            self.ac.find_overlapping(value, &mut state);
            state.get_match()
        } {
            for &r in &self.owners[m.pattern().as_usize()] {
                bits[r as usize / 64] |= 1 << (r % 64);
            }
        }
    }
}

/// Is rule `id`'s bit set? (Yes when there was no scan: an empty set.)
pub(crate) fn may_match(bits: &[u64], id: u32) -> bool {
    bits.get(id as usize / 64)
        .is_none_or(|w| w & (1 << (id % 64)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lits(p: &str) -> Option<Vec<String>> {
        required_literals(p, false).map(|s| {
            s.into_iter()
                .map(|l| String::from_utf8(l).unwrap())
                .collect()
        })
    }

    #[test]
    fn literals_every_match_needs() {
        assert_eq!(lits("(?i)union\\s+select").unwrap(), ["select"]);
        assert_eq!(lits("(?i:foo|bar)baz").unwrap(), ["barbaz", "foobaz"]);
        assert_eq!(lits("colou?r").unwrap(), ["color", "colour"]);
        assert_eq!(
            lits("(?:<script|javascript:)").unwrap(),
            ["<script", "javascript:"]
        );
        // Nothing long enough is required.
        assert_eq!(lits("^\\d+$"), None);
        assert_eq!(lits("a|bcd"), None);
        assert_eq!(lits("(?:abc)?def*"), None);
        assert_eq!(lits(".*"), None);
    }

    #[test]
    fn bytes_every_match_needs() {
        let has = |p: &str, v: &str| {
            let set = required_bytes(p, false).unwrap();
            meets(&set, &bytes_in(v.as_bytes()))
        };
        assert!(has("[\\n\\r]", "a\nb") && !has("[\\n\\r]", "plain"));
        assert!(has("<\\?(?:php|=)", "<?php") && !has("<\\?(?:php|=)", "php"));
        assert!(!has("(?i)(?:\\$|&dollar;?)\\{", "price 10"));
        // A match may be any byte: no set.
        assert_eq!(required_bytes("^.*$", false), None);
        assert_eq!(required_bytes("(?i)[a-z]+", false), None);
    }

    #[test]
    fn a_scan_sets_the_bits_of_rules_whose_literals_appear() {
        let a = required_literals("(?i)union\\s+select", false).unwrap();
        let b = required_literals("etc/passwd", false).unwrap();
        let p = Prefilter::new(&[&a, &b]).unwrap();
        let bits = p.scan(b"1 UNION SELECT 2");
        assert!(may_match(&bits, 0) && !may_match(&bits, 1));
        let bits = p.scan(b"../../etc/passwd");
        assert!(!may_match(&bits, 0) && may_match(&bits, 1));
        // A superset: the literal without the regex's context.
        assert!(may_match(&p.scan(b"selection"), 0));
    }

    /// Whatever the regex matches, the prefilter lets through: checked on
    /// every CRS pattern against every attack string of libinjection's
    /// data is in `tests/crs.rs`; here, a few tricky shapes.
    #[test]
    fn the_prefilter_never_refuses_what_the_regex_matches() {
        let cases = [
            ("(?i)\\b(?:s(?:elect|leep)|union)\\b", "SeLeCt x"),
            ("(?i)on(?:load|error)\\s*=", "ONERROR ="),
            ("[Ee][Tt][Cc]/passwd", "eTc/passwd"),
            ("(?:a|b)(?:c|d)(?:e|f)", "bdf"),
            ("x{2,}yz", "xxxyz"),
        ];
        for (p, hay) in cases {
            let re = regex::bytes::RegexBuilder::new(p)
                .unicode(false)
                .build()
                .unwrap();
            assert!(re.is_match(hay.as_bytes()), "{p}");
            if let Some(set) = required_literals(p, false) {
                let pf = Prefilter::new(&[&set]).unwrap();
                assert!(may_match(&pf.scan(hay.as_bytes()), 0), "{p} {set:?}");
            }
        }
    }
}
