//! SecLang's transformations (`t:NAME`), with ModSecurity's semantics:
//! each is a port of what ModSecurity v3 does byte by byte, including the
//! way it treats malformed input (an invalid escape is kept as written),
//! since CRS's rules are tuned to exactly that.

use std::borrow::Cow;

/// One transformation. `t:none` is not one: it clears the list before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transform {
    Base64Decode,
    Base64DecodeExt,
    CmdLine,
    CompressWhitespace,
    CssDecode,
    EscapeSeqDecode,
    HexDecode,
    HexEncode,
    HtmlEntityDecode,
    JsDecode,
    Length,
    Lowercase,
    NormalizePath,
    NormalizePathWin,
    RemoveComments,
    RemoveCommentsChar,
    RemoveNulls,
    RemoveWhitespace,
    ReplaceComments,
    ReplaceNulls,
    Sha1,
    Trim,
    TrimLeft,
    TrimRight,
    Uppercase,
    UrlDecode,
    UrlDecodeUni,
    UrlEncode,
    Utf8ToUnicode,
}

/// What `t:NAME` names: a transformation, `none`, or nothing known.
pub enum Named {
    None,
    Transform(Transform),
}

impl Transform {
    /// By name, as rules write it (case does not matter, as in ModSecurity
    /// v3's parser).
    pub fn named(name: &str) -> Option<Named> {
        use Transform::*;
        let t = match name.to_ascii_lowercase().as_str() {
            "none" => return Some(Named::None),
            "base64decode" => Base64Decode,
            "base64decodeext" => Base64DecodeExt,
            "cmdline" => CmdLine,
            "compresswhitespace" => CompressWhitespace,
            "cssdecode" => CssDecode,
            "escapeseqdecode" => EscapeSeqDecode,
            "hexdecode" => HexDecode,
            "hexencode" => HexEncode,
            "htmlentitydecode" => HtmlEntityDecode,
            "jsdecode" => JsDecode,
            "length" => Length,
            "lowercase" => Lowercase,
            "normalisepath" | "normalizepath" => NormalizePath,
            "normalisepathwin" | "normalizepathwin" => NormalizePathWin,
            "removecomments" => RemoveComments,
            "removecommentschar" => RemoveCommentsChar,
            "removenulls" => RemoveNulls,
            "removewhitespace" => RemoveWhitespace,
            "replacecomments" => ReplaceComments,
            "replacenulls" => ReplaceNulls,
            "sha1" => Sha1,
            "trim" => Trim,
            "trimleft" => TrimLeft,
            "trimright" => TrimRight,
            "uppercase" => Uppercase,
            "urldecode" => UrlDecode,
            "urldecodeuni" => UrlDecodeUni,
            "urlencode" => UrlEncode,
            "utf8tounicode" => Utf8ToUnicode,
            _ => return None,
        };
        Some(Named::Transform(t))
    }

    /// The value transformed; borrowed when nothing changed.
    pub fn apply<'a>(self, v: &'a [u8]) -> Cow<'a, [u8]> {
        use Transform::*;
        let owned = match self {
            Lowercase => {
                if !v.iter().any(u8::is_ascii_uppercase) {
                    return Cow::Borrowed(v);
                }
                v.to_ascii_lowercase()
            }
            Uppercase => {
                if !v.iter().any(u8::is_ascii_lowercase) {
                    return Cow::Borrowed(v);
                }
                v.to_ascii_uppercase()
            }
            UrlDecode => {
                if !v.iter().any(|&c| c == b'%' || c == b'+') {
                    return Cow::Borrowed(v);
                }
                url_decode(v, false)
            }
            UrlDecodeUni => {
                if !v.iter().any(|&c| c == b'%' || c == b'+') {
                    return Cow::Borrowed(v);
                }
                url_decode(v, true)
            }
            HtmlEntityDecode => {
                if !v.contains(&b'&') {
                    return Cow::Borrowed(v);
                }
                html_entity_decode(v)
            }
            JsDecode => {
                if !v.contains(&b'\\') {
                    return Cow::Borrowed(v);
                }
                js_decode(v)
            }
            CssDecode => {
                if !v.contains(&b'\\') {
                    return Cow::Borrowed(v);
                }
                css_decode(v)
            }
            EscapeSeqDecode => {
                if !v.contains(&b'\\') {
                    return Cow::Borrowed(v);
                }
                escape_seq_decode(v)
            }
            CmdLine => cmd_line(v),
            CompressWhitespace => compress_whitespace(v),
            RemoveWhitespace => {
                if !v.iter().any(|&c| is_space(c) || c == NBSP) {
                    return Cow::Borrowed(v);
                }
                v.iter()
                    .copied()
                    .filter(|&c| !is_space(c) && c != NBSP)
                    .collect()
            }
            RemoveNulls => {
                if !v.contains(&0) {
                    return Cow::Borrowed(v);
                }
                v.iter().copied().filter(|&c| c != 0).collect()
            }
            ReplaceNulls => {
                if !v.contains(&0) {
                    return Cow::Borrowed(v);
                }
                v.iter().map(|&c| if c == 0 { b' ' } else { c }).collect()
            }
            ReplaceComments => {
                if !v.windows(2).any(|w| w == b"/*") {
                    return Cow::Borrowed(v);
                }
                replace_comments(v)
            }
            RemoveComments => remove_comments(v),
            RemoveCommentsChar => remove_comments_char(v),
            // Without a separator, one segment: only a last `.` or `..`
            // can be folded (`a.b` is left as it is, `ab..` is not).
            NormalizePath | NormalizePathWin
                if v.last() != Some(&b'.')
                    && !v
                        .iter()
                        .any(|&c| c == b'/' || (c == b'\\' && self == NormalizePathWin)) =>
            {
                return Cow::Borrowed(v);
            }
            NormalizePath => normalize_path(v, false),
            NormalizePathWin => normalize_path(v, true),
            Base64Decode => base64_decode(v, false),
            Base64DecodeExt => base64_decode(v, true),
            HexDecode => hex_decode(v),
            HexEncode => {
                let mut out = Vec::with_capacity(v.len() * 2);
                for &c in v {
                    out.push(HEX[usize::from(c >> 4)]);
                    out.push(HEX[usize::from(c & 15)]);
                }
                out
            }
            UrlEncode => url_encode(v),
            Length => v.len().to_string().into_bytes(),
            Sha1 => ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, v)
                .as_ref()
                .to_vec(),
            Trim => return Cow::Borrowed(trim_right(trim_left(v))),
            TrimLeft => return Cow::Borrowed(trim_left(v)),
            TrimRight => return Cow::Borrowed(trim_right(v)),
            Utf8ToUnicode => {
                if v.is_ascii() {
                    return Cow::Borrowed(v);
                }
                utf8_to_unicode(v)
            }
        };
        Cow::Owned(owned)
    }
}

impl Transform {
    /// The bytes without which this transformation leaves a value as it
    /// is (`None`: it may change any value).
    pub fn triggers(&self) -> Option<[u64; 4]> {
        use Transform::*;
        const SPACE: &[u8] = b" \t\n\x0b\x0c\r";
        let bytes: Vec<u8> = match self {
            Lowercase => (b'A'..=b'Z').collect(),
            Uppercase => (b'a'..=b'z').collect(),
            UrlDecode | UrlDecodeUni => b"%+".to_vec(),
            HtmlEntityDecode => b"&".to_vec(),
            JsDecode | CssDecode | EscapeSeqDecode => b"\\".to_vec(),
            CmdLine => (b'A'..=b'Z')
                .chain(*b"\"'\\^,;")
                .chain(SPACE.iter().copied())
                .collect(),
            CompressWhitespace | RemoveWhitespace => SPACE.iter().copied().chain([NBSP]).collect(),
            Trim | TrimLeft | TrimRight => SPACE.to_vec(),
            RemoveNulls | ReplaceNulls => vec![0],
            ReplaceComments => b"/".to_vec(),
            RemoveComments => b"/<-#".to_vec(),
            RemoveCommentsChar => b"/*<-#".to_vec(),
            Utf8ToUnicode => (0x80..=0xff).collect(),
            NormalizePath => b"/.".to_vec(),
            NormalizePathWin => b"/.\\".to_vec(),
            Base64Decode | Base64DecodeExt | HexDecode | HexEncode | UrlEncode | Length | Sha1 => {
                return None
            }
        };
        let mut set = [0u64; 4];
        for b in bytes {
            set[usize::from(b >> 6)] |= 1 << (b & 63);
        }
        Some(set)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";
const NBSP: u8 = 0xa0;

/// C's `isspace` in the C locale.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn is_hex(c: u8) -> bool {
    c.is_ascii_hexdigit()
}

/// Two hex digits (already checked) as a byte.
fn x2c(a: u8, b: u8) -> u8 {
    (hex_val(a).unwrap_or(0) << 4) | hex_val(b).unwrap_or(0)
}

/// A 16-bit code point's four hex digits as ModSecurity decodes them to
/// one byte: the lower byte, and full-width ASCII (U+FF01–U+FF5E) as its
/// ASCII.
fn low_byte(h1: u8, h2: u8, h3: u8, h4: u8) -> u8 {
    let d = x2c(h3, h4);
    if d > 0 && d < 0x5f && matches!(h1, b'f' | b'F') && matches!(h2, b'f' | b'F') {
        d + 0x20
    } else {
        d
    }
}

/// Past an entity that ends at `j`: its `;` too, when there is one.
fn past_entity(v: &[u8], j: usize) -> usize {
    if v.get(j) == Some(&b';') {
        j + 1
    } else {
        j
    }
}

fn is_odigit(c: u8) -> bool {
    (b'0'..=b'7').contains(&c)
}

fn url_decode(v: &[u8], uni: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    let n = v.len();
    while i < n {
        let c = v[i];
        if c == b'%' {
            if uni && i + 1 < n && (v[i + 1] == b'u' || v[i + 1] == b'U') {
                if i + 5 < n && v[i + 2..i + 6].iter().all(|&c| is_hex(c)) {
                    out.push(low_byte(v[i + 2], v[i + 3], v[i + 4], v[i + 5]));
                    i += 6;
                } else {
                    // Invalid or too short: `%u` kept.
                    out.extend_from_slice(&v[i..i + 2]);
                    i += 2;
                }
            } else if i + 2 < n && is_hex(v[i + 1]) && is_hex(v[i + 2]) {
                out.push(x2c(v[i + 1], v[i + 2]));
                i += 3;
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(if c == b'+' { b' ' } else { c });
            i += 1;
        }
    }
    out
}

fn url_encode(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    for &c in v {
        if c == b' ' {
            out.push(b'+');
        } else if c.is_ascii_alphanumeric() || matches!(c, b'*' | b'-' | b'.' | b'_') {
            out.push(c);
        } else {
            out.push(b'%');
            out.push(HEX[usize::from(c >> 4)]);
            out.push(HEX[usize::from(c & 15)]);
        }
    }
    out
}

/// `strtol` of digits in `radix`, saturating as C's does, then cast to a
/// byte as ModSecurity does.
fn strtol_byte(digits: &[u8], radix: u32) -> u8 {
    let mut n: i64 = 0;
    for &d in digits {
        let v = (d as char).to_digit(radix).unwrap_or(0);
        n = n
            .saturating_mul(i64::from(radix))
            .saturating_add(i64::from(v));
    }
    n as u8
}

fn html_entity_decode(v: &[u8]) -> Vec<u8> {
    let n = v.len();
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let mut copy = 1;
        if v[i] == b'&' && i + 1 < n {
            let mut j = i + 1;
            if v[j] == b'#' {
                copy += 1;
                if j + 1 < n {
                    j += 1;
                    if v[j] == b'x' || v[j] == b'X' {
                        copy += 1;
                        if j + 1 < n {
                            j += 1;
                            let k = j;
                            while j < n && is_hex(v[j]) {
                                j += 1;
                            }
                            if j > k {
                                out.push(strtol_byte(&v[k..j], 16));
                                i = past_entity(v, j);
                                continue;
                            }
                        }
                    } else {
                        let k = j;
                        while j < n && v[j].is_ascii_digit() {
                            j += 1;
                        }
                        if j > k {
                            out.push(strtol_byte(&v[k..j], 10));
                            i = past_entity(v, j);
                            continue;
                        }
                    }
                }
            } else {
                let k = j;
                while j < n && v[j].is_ascii_alphanumeric() {
                    j += 1;
                }
                if j > k {
                    let name = v[k..j].to_ascii_lowercase();
                    let c = match name.as_slice() {
                        b"quot" => Some(b'"'),
                        b"amp" => Some(b'&'),
                        b"lt" => Some(b'<'),
                        b"gt" => Some(b'>'),
                        b"nbsp" => Some(NBSP),
                        _ => None,
                    };
                    match c {
                        Some(c) => {
                            out.push(c);
                            i = past_entity(v, j);
                            continue;
                        }
                        None => copy = j - k + 1,
                    }
                }
            }
        }
        let end = (i + copy).min(n);
        out.extend_from_slice(&v[i..end]);
        i = end;
    }
    out
}

/// Up to three octal digits after `v[start - 1]` (a backslash).
fn octal_run(v: &[u8], start: usize) -> usize {
    let mut j = 0;
    while start + j < v.len() && j < 3 && is_odigit(v[start + j]) {
        j += 1;
    }
    j
}

fn js_decode(v: &[u8]) -> Vec<u8> {
    let n = v.len();
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        if v[i] != b'\\' {
            out.push(v[i]);
            i += 1;
            continue;
        }
        if i + 5 < n && v[i + 1] == b'u' && v[i + 2..i + 6].iter().all(|&c| is_hex(c)) {
            out.push(low_byte(v[i + 2], v[i + 3], v[i + 4], v[i + 5]));
            i += 6;
        } else if i + 3 < n && v[i + 1] == b'x' && is_hex(v[i + 2]) && is_hex(v[i + 3]) {
            out.push(x2c(v[i + 2], v[i + 3]));
            i += 4;
        } else if i + 1 < n && is_odigit(v[i + 1]) {
            let mut j = octal_run(v, i + 1);
            // Three digits only while they fit a byte (\000–\377).
            if j == 3 && v[i + 1] > b'3' {
                j = 2;
            }
            out.push(strtol_byte(&v[i + 1..i + 1 + j], 8));
            i += 1 + j;
        } else if i + 1 < n {
            out.push(match v[i + 1] {
                b'a' => 0x07,
                b'b' => 0x08,
                b'f' => 0x0c,
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                b'v' => 0x0b,
                c => c,
            });
            i += 2;
        } else {
            out.extend_from_slice(&v[i..]);
            i = n;
        }
    }
    out
}

fn css_decode(v: &[u8]) -> Vec<u8> {
    let n = v.len();
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        if v[i] != b'\\' {
            out.push(v[i]);
            i += 1;
            continue;
        }
        if i + 1 >= n {
            // A backslash at the end: dropped.
            i += 1;
            continue;
        }
        i += 1;
        let mut j = 0;
        while j < 6 && i + j < n && is_hex(v[i + j]) {
            j += 1;
        }
        if j > 0 {
            let mut fullcheck = false;
            let d = match j {
                1 => hex_val(v[i]).unwrap_or(0),
                2 | 3 => x2c(v[i + j - 2], v[i + j - 1]),
                4 => {
                    fullcheck = true;
                    x2c(v[i + j - 2], v[i + j - 1])
                }
                5 => {
                    fullcheck = v[i] == b'0';
                    x2c(v[i + j - 2], v[i + j - 1])
                }
                _ => {
                    fullcheck = v[i] == b'0' && v[i + 1] == b'0';
                    x2c(v[i + j - 2], v[i + j - 1])
                }
            };
            let d = if fullcheck {
                low_byte(v[i + j - 4], v[i + j - 3], v[i + j - 2], v[i + j - 1])
            } else {
                d
            };
            out.push(d);
            // One whitespace after a hex escape belongs to it.
            if i + j < n && is_space(v[i + j]) {
                j += 1;
            }
            i += j;
        } else if v[i] == b'\n' {
            // A backslash-newline is a line continuation: both go.
            i += 1;
        } else {
            out.push(v[i]);
            i += 1;
        }
    }
    out
}

fn escape_seq_decode(v: &[u8]) -> Vec<u8> {
    let n = v.len();
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        if !(v[i] == b'\\' && i + 1 < n) {
            out.push(v[i]);
            i += 1;
            continue;
        }
        let simple = match v[i + 1] {
            b'a' => Some(0x07),
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'v' => Some(0x0b),
            b'\\' => Some(b'\\'),
            b'?' => Some(b'?'),
            b'\'' => Some(b'\''),
            b'"' => Some(b'"'),
            _ => None,
        };
        if let Some(c) = simple {
            out.push(c);
            i += 2;
        } else if matches!(v[i + 1], b'x' | b'X')
            && i + 3 < n
            && is_hex(v[i + 2])
            && is_hex(v[i + 3])
        {
            out.push(x2c(v[i + 2], v[i + 3]));
            i += 4;
        } else if is_odigit(v[i + 1]) {
            let j = octal_run(v, i + 1);
            out.push(strtol_byte(&v[i + 1..i + 1 + j], 8));
            i += 1 + j;
        } else {
            // Not an escape: the character after the backslash, alone.
            out.push(v[i + 1]);
            i += 2;
        }
    }
    out
}

fn cmd_line(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut space = false;
    for &c in v {
        match c {
            b'"' | b'\'' | b'\\' | b'^' => {}
            b' ' | b',' | b';' | b'\t' | b'\r' | b'\n' => {
                if !space {
                    out.push(b' ');
                    space = true;
                }
            }
            b'/' | b'(' => {
                if space {
                    out.pop();
                }
                space = false;
                out.push(c);
            }
            _ => {
                out.push(c.to_ascii_lowercase());
                space = false;
            }
        }
    }
    out
}

fn compress_whitespace(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut in_space = false;
    for &c in v {
        if is_space(c) || c == NBSP {
            if !in_space {
                in_space = true;
                out.push(b' ');
            }
        } else {
            in_space = false;
            out.push(c);
        }
    }
    out
}

fn replace_comments(v: &[u8]) -> Vec<u8> {
    let n = v.len();
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    let mut in_comment = false;
    while i < n {
        if !in_comment {
            if v[i] == b'/' && i + 1 < n && v[i + 1] == b'*' {
                in_comment = true;
                i += 2;
            } else {
                out.push(v[i]);
                i += 1;
            }
        } else if v[i] == b'*' && i + 1 < n && v[i + 1] == b'/' {
            in_comment = false;
            i += 2;
            out.push(b' ');
        } else {
            i += 1;
        }
    }
    if in_comment {
        out.push(b' ');
    }
    out
}

/// `t:removeComments`: C, HTML and SQL comments (`/* */`, `<!-- -->`,
/// `--`, `#` to the end of the line) removed.
fn remove_comments(v: &[u8]) -> Vec<u8> {
    let n = v.len();
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    let mut in_comment = false;
    while i < n {
        if !in_comment {
            if v[i] == b'/' && i + 1 < n && v[i + 1] == b'*' {
                in_comment = true;
                i += 2;
            } else if v[i] == b'<' && v[i..].starts_with(b"<!--") {
                in_comment = true;
                i += 4;
            } else if (v[i] == b'-' && i + 1 < n && v[i + 1] == b'-') || v[i] == b'#' {
                // A line comment: the rest goes.
                out.push(b' ');
                break;
            } else {
                out.push(v[i]);
                i += 1;
            }
        } else if v[i] == b'*' && i + 1 < n && v[i + 1] == b'/' {
            in_comment = false;
            i += 2;
        } else if v[i] == b'-' && v[i..].starts_with(b"-->") {
            in_comment = false;
            i += 3;
        } else {
            i += 1;
        }
    }
    out
}

fn remove_comments_char(v: &[u8]) -> Vec<u8> {
    let n = v.len();
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let rest = &v[i..];
        if rest.starts_with(b"/*") || rest.starts_with(b"*/") {
            i += 2;
        } else if rest.starts_with(b"<!--") {
            i += 4;
        } else if rest.starts_with(b"-->") {
            i += 3;
        } else if rest.starts_with(b"--") {
            i += 2;
        } else if v[i] == b'#' {
            i += 1;
        } else {
            out.push(v[i]);
            i += 1;
        }
    }
    out
}

fn trim_left(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&c| !is_space(c)).unwrap_or(v.len());
    &v[start..]
}

fn trim_right(v: &[u8]) -> &[u8] {
    let end = v.iter().rposition(|&c| !is_space(c)).map_or(0, |p| p + 1);
    &v[..end]
}

fn hex_decode(v: &[u8]) -> Vec<u8> {
    if v.len() % 2 != 0 || !v.iter().all(|&c| is_hex(c)) {
        return v.to_vec();
    }
    v.chunks(2).map(|p| x2c(p[0], p[1])).collect()
}

/// Base64 (standard or URL alphabet), read up to the first character that
/// is not one; `ext` skips such characters instead (`.` and whitespace
/// included), as `base64DecodeExt` does.
fn base64_decode(v: &[u8], ext: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &c in v {
        let d = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ if ext => continue,
            _ => break,
        };
        acc = (acc << 6) | u32::from(d);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn utf8_to_unicode(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 2);
    let mut i = 0;
    while i < v.len() {
        let c = v[i];
        let len = match c {
            0x00..=0x7f => 1,
            0xc2..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf4 => 4,
            _ => 0,
        };
        let decoded = (len > 1 && i + len <= v.len())
            .then(|| std::str::from_utf8(&v[i..i + len]).ok())
            .flatten()
            .and_then(|s| s.chars().next());
        match decoded {
            Some(ch) => {
                let hex = format!("{:x}", u32::from(ch));
                out.extend_from_slice(b"%u");
                out.extend(std::iter::repeat_n(b'0', 4usize.saturating_sub(hex.len())));
                out.extend_from_slice(hex.as_bytes());
                i += len;
            }
            None => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// ModSecurity's `normalize_path_inplace`: `.` and `..` segments resolved,
/// repeated slashes collapsed, never above the root; `win` turns
/// backslashes into slashes first.
fn normalize_path(v: &[u8], win: bool) -> Vec<u8> {
    if v.is_empty() {
        return Vec::new();
    }
    let mut b = v.to_vec();
    let is_sep = |c: u8| c == b'/' || (win && c == b'\\');
    let end = b.len() - 1;
    let relative = !is_sep(b[0]);
    let trailing = is_sep(b[end]);
    let (mut src, mut dst) = (0usize, 0usize);
    let mut hitroot = false;
    let mut done = false;
    while !done && src <= end && dst <= end {
        if win {
            if b[src] == b'\\' {
                b[src] = b'/';
            }
            if src < end && b[src + 1] == b'\\' {
                b[src + 1] = b'/';
            }
        }
        let mut skip_copy = false;
        let normalize = if src == end {
            done = true;
            true
        } else {
            b[src + 1] == b'/'
        };
        if normalize {
            if src != end && b[src] == b'/' {
                // An empty segment: the copy below collapses it.
            } else if b[src] == b'.' {
                if dst > 0 && b[dst - 1] == b'.' {
                    if relative && (hitroot || dst <= 2) {
                        hitroot = true;
                    } else {
                        // Remove the back reference and the segment before.
                        dst = dst.saturating_sub(3);
                        while dst > 0 && b[dst] != b'/' {
                            dst -= 1;
                        }
                        if dst == 0 {
                            hitroot = true;
                            if !relative && src == end {
                                dst = 1;
                            }
                        }
                        if done {
                            break;
                        }
                        src += 1;
                    }
                } else if dst == 0 {
                    if done {
                        break;
                    }
                    src += 1;
                } else if b[dst - 1] == b'/' {
                    if done {
                        break;
                    }
                    dst -= 1;
                    src += 1;
                }
            } else if dst > 0 {
                hitroot = false;
            }
        }
        // Copy, collapsing runs of slashes to their last.
        if src <= end && b[src] == b'/' {
            while src < end && is_sep(b[src + 1]) {
                src += 1;
            }
            if relative && dst == 0 {
                src += 1;
                skip_copy = true;
            }
        }
        if !skip_copy && src <= end {
            b[dst] = if b[src] == b'\\' && win { b'/' } else { b[src] };
            dst += 1;
            src += 1;
        }
    }
    if !trailing && dst > 0 && b[dst - 1] == b'/' {
        dst -= 1;
    }
    b.truncate(dst);
    b
}

#[cfg(test)]
mod tests {
    use super::Transform::{self, *};

    fn t(tr: Transform, input: &[u8]) -> Vec<u8> {
        tr.apply(input).into_owned()
    }

    fn ts(tr: Transform, input: &str) -> String {
        String::from_utf8_lossy(&t(tr, input.as_bytes())).into_owned()
    }

    #[test]
    fn url_decoding() {
        assert_eq!(ts(UrlDecode, "a%20b+c%2"), "a b c%2");
        assert_eq!(ts(UrlDecode, "%zz%41"), "%zzA");
        assert_eq!(ts(UrlDecodeUni, "%u0041%uff10%u004"), "A0%u004");
        // Full width ASCII takes its ASCII form; other code points their
        // lower byte.
        assert_eq!(ts(UrlDecodeUni, "%uff1cscript%uff1e"), "<script>");
        assert_eq!(t(UrlDecodeUni, b"%u263a"), [0x3a]);
        assert_eq!(ts(UrlDecodeUni, "%uzz41%41"), "%uzz41A");
    }

    #[test]
    fn html_entities() {
        assert_eq!(ts(HtmlEntityDecode, "&lt;a&gt; &quot;&amp;"), "<a> \"&");
        assert_eq!(ts(HtmlEntityDecode, "&#x3c;&#60;&#x3C&#60x"), "<<<<x");
        assert_eq!(t(HtmlEntityDecode, b"&nbsp;"), [0xa0]);
        assert_eq!(ts(HtmlEntityDecode, "&foo; & &# &#x"), "&foo; & &# &#x");
        assert_eq!(ts(HtmlEntityDecode, "&LT;"), "<");
    }

    #[test]
    fn js_escapes() {
        assert_eq!(ts(JsDecode, r"\x3cscript\u003e"), "<script>");
        assert_eq!(ts(JsDecode, r"\uff1c\n\'\q"), "<\n'q");
        assert_eq!(ts(JsDecode, r"\101\1010\400"), "AA0 0");
        assert_eq!(ts(JsDecode, r"end\"), r"end\");
    }

    #[test]
    fn css_escapes() {
        assert_eq!(ts(CssDecode, r"\3c script\3e"), "<script>");
        assert_eq!(ts(CssDecode, r"ja\vascript"), "javascript");
        assert_eq!(ts(CssDecode, r"\00003c"), "<");
        assert_eq!(ts(CssDecode, r"\ff1c"), "<");
        assert_eq!(ts(CssDecode, "a\\\nb\\"), "ab");
    }

    #[test]
    fn escape_sequences() {
        assert_eq!(ts(EscapeSeqDecode, r"\x41\102\n\q\\"), "AB\nq\\");
        assert_eq!(ts(EscapeSeqDecode, r"\x4"), r"x4");
    }

    #[test]
    fn command_lines() {
        // ModSecurity's documented example.
        assert_eq!(ts(CmdLine, r#"C^OMMAND /C DIR"#), "command/c dir");
        assert_eq!(ts(CmdLine, "cat  ,; /etc/passwd"), "cat/etc/passwd");
        assert_eq!(ts(CmdLine, "w\"h'o\\am^i"), "whoami");
        assert_eq!(ts(CmdLine, "a \t b ("), "a b(");
    }

    #[test]
    fn whitespace() {
        assert_eq!(ts(CompressWhitespace, "a \t\r\n b  c"), "a b c");
        assert_eq!(ts(RemoveWhitespace, " a b\tc\n"), "abc");
        assert_eq!(t(RemoveWhitespace, b"a\xa0b"), b"ab");
        assert_eq!(ts(Trim, " \t a b \n"), "a b");
        assert_eq!(ts(TrimLeft, "  a "), "a ");
        assert_eq!(ts(TrimRight, "  a "), "  a");
    }

    #[test]
    fn nulls_and_comments() {
        assert_eq!(t(RemoveNulls, b"a\0b\0"), b"ab");
        assert_eq!(t(ReplaceNulls, b"a\0b"), b"a b");
        assert_eq!(ts(ReplaceComments, "UNION/**/SELECT/* x"), "UNION SELECT ");
        assert_eq!(ts(ReplaceComments, "a*/b"), "a*/b");
        assert_eq!(ts(RemoveCommentsChar, "a/*b*/c--d#e<!--f-->"), "abcdef");
        assert_eq!(ts(RemoveComments, "a/*b*/c -- d"), "ac  ");
    }

    #[test]
    fn paths() {
        // ModSecurity's regression cases for normalizePath.
        let cases = [
            ("/foo/bar/../baz", "/foo/baz"),
            ("/foo/./bar", "/foo/bar"),
            ("/foo//bar", "/foo/bar"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("../../etc/passwd", "../../etc/passwd"),
            ("foo/../../bar", "../bar"),
            ("/foo/bar/..", "/foo"),
            ("/foo/bar/.", "/foo/bar"),
            ("/foo/bar/", "/foo/bar/"),
            ("./foo", "foo"),
            ("/", "/"),
            ("", ""),
            // As ModSecurity's code does: the root slash goes with the
            // trailing-slash rule.
            ("/..", ""),
            ("a/b/c/../../d", "a/d"),
        ];
        for (input, want) in cases {
            assert_eq!(ts(NormalizePath, input), want, "{input}");
        }
        assert_eq!(ts(NormalizePathWin, r"C:\foo\..\bar\\baz"), "C:/bar/baz");
        assert_eq!(ts(NormalizePath, r"C:\foo\..\bar"), r"C:\foo\..\bar");
    }

    #[test]
    fn a_value_without_a_transformations_trigger_bytes_is_left_as_it_is() {
        let names = [
            "base64decode",
            "cmdline",
            "compresswhitespace",
            "cssdecode",
            "escapeseqdecode",
            "htmlentitydecode",
            "jsdecode",
            "lowercase",
            "normalizepath",
            "normalizepathwin",
            "removecomments",
            "removecommentschar",
            "removenulls",
            "removewhitespace",
            "replacecomments",
            "replacenulls",
            "trim",
            "uppercase",
            "urldecode",
            "urldecodeuni",
            "utf8tounicode",
        ];
        let samples: Vec<Vec<u8>> = [
            &b"/foo/bar/../baz"[..],
            b"./a/..",
            b"C:\\foo\\..\\bar",
            b"select * from t where a='1' -- x",
            b"<script>alert(1)</script> /* c */ #",
            b"%41+%u0041&amp;\\x41\x00end\xa0\xc3\xa9 ",
            b"  Mixed Case\t\r\n",
            b"a.b.c",
            b"..",
        ]
        .iter()
        .map(|s| s.to_vec())
        .collect();
        for name in names {
            let Some(super::Named::Transform(tr)) = Transform::named(name) else {
                panic!("{name}");
            };
            let Some(set) = tr.triggers() else { continue };
            for s in &samples {
                let clean: Vec<u8> = s
                    .iter()
                    .copied()
                    .filter(|&b| set[usize::from(b >> 6)] & (1 << (b & 63)) == 0)
                    .collect();
                assert_eq!(t(tr, &clean), clean, "{name} on {clean:?}");
            }
        }
        // The shortcut and the whole algorithm agree: one segment is left
        // as it is unless it ends with a dot.
        for v in [
            "abc",
            "a b",
            "x",
            "a\\b",
            "a.b",
            ".a",
            "..a",
            "json.items.0.sku",
            "a...b",
        ] {
            assert_eq!(
                super::normalize_path(v.as_bytes(), false),
                v.as_bytes(),
                "{v}"
            );
            assert_eq!(t(NormalizePath, v.as_bytes()), v.as_bytes(), "{v}");
        }
        for (v, want) in [("ab..", ""), (".", ""), ("abc.", "abc.")] {
            assert_eq!(ts(NormalizePath, v), want, "{v}");
            assert_eq!(
                super::normalize_path(v.as_bytes(), false),
                want.as_bytes(),
                "{v}"
            );
        }
    }

    #[test]
    fn encodings_and_digests() {
        assert_eq!(ts(Base64Decode, "VGVzdENhc2U="), "TestCase");
        assert_eq!(ts(Base64Decode, "VGVz.dENhc2U="), "Tes");
        assert_eq!(ts(Base64DecodeExt, "VGVz.dENhc2U="), "TestCase");
        assert_eq!(ts(HexDecode, "414243"), "ABC");
        assert_eq!(ts(HexDecode, "41zz"), "41zz");
        assert_eq!(ts(HexEncode, "AB\n"), "41420a");
        assert_eq!(ts(Length, "héllo"), "6");
        assert_eq!(
            t(Sha1, b"abc"),
            [
                0xa9, 0x99, 0x3e, 0x36, 0x47, 0x06, 0x81, 0x6a, 0xba, 0x3e, 0x25, 0x71, 0x78, 0x50,
                0xc2, 0x6c, 0x9c, 0xd0, 0xd8, 0x9d
            ]
        );
        assert_eq!(ts(UrlEncode, "a b&c"), "a+b%26c");
        assert_eq!(ts(Lowercase, "AbC"), "abc");
        assert_eq!(ts(Uppercase, "aBc"), "ABC");
    }

    #[test]
    fn utf8_as_unicode_escapes() {
        assert_eq!(ts(Utf8ToUnicode, "aé€"), "a%u00e9%u20ac");
        assert_eq!(ts(Utf8ToUnicode, "😀"), "%u1f600");
        assert_eq!(t(Utf8ToUnicode, b"a\xff\xc3"), b"a\xff\xc3");
    }

    #[test]
    fn unchanged_values_are_borrowed() {
        use std::borrow::Cow;
        for tr in [
            Lowercase,
            UrlDecodeUni,
            HtmlEntityDecode,
            JsDecode,
            CssDecode,
            RemoveNulls,
        ] {
            assert!(
                matches!(tr.apply(b"plain text"), Cow::Borrowed(_)),
                "{tr:?}"
            );
        }
    }

    #[test]
    fn names() {
        assert!(matches!(Transform::named("none"), Some(super::Named::None)));
        assert!(matches!(
            Transform::named("urlDecodeUni"),
            Some(super::Named::Transform(UrlDecodeUni))
        ));
        assert!(matches!(
            Transform::named("normalisePath"),
            Some(super::Named::Transform(NormalizePath))
        ));
        assert!(Transform::named("rot13").is_none());
    }
}
