//! The request target and its authority, checked and normalized once.
//!
//! Routing and forwarding both read the [`Target`] made here, so that what
//! chose the upstream is exactly what the upstream receives: the authority
//! (RFC 9112 §3.2: the absolute form's replaces `Host`; over HTTP/2,
//! `:authority` replaces `host`) is validated, lower-cased and sent as
//! `Host` and `X-Forwarded-Host`; the path is normalized (RFC 3986
//! §5.2.4 and §6.2.2) when the listener's `path_normalization` is
//! `strict`. What cannot be read one way only is refused with 400.

use std::borrow::Cow;
use std::net::Ipv6Addr;

use bytes::Bytes;
use centinela_config::PathNormalization;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Uri, Version};

use crate::error::ProxyError;
use crate::http::codec::hex_value;

/// A request's target, as routed and as forwarded.
#[derive(Debug)]
pub struct Target {
    /// Lower-case `host[:port]`; `None` for an HTTP/1.0 request that named
    /// no host.
    pub authority: Option<HeaderValue>,
    /// The host part's length in `authority`.
    host_len: usize,
    /// Origin form (`/path?query`), or `*` for `OPTIONS *`.
    pub path_and_query: PathAndQuery,
}

impl Target {
    /// The host without its port, for routing.
    pub fn host(&self) -> Option<&str> {
        let a = self.authority.as_ref()?;
        // Validated ASCII: cannot fail.
        a.to_str().ok().map(|s| &s[..self.host_len])
    }

    pub fn path(&self) -> &str {
        self.path_and_query.path()
    }
}

/// Checks a request's target and authority and normalizes them.
pub fn check(
    method: &Method,
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
    norm: PathNormalization,
) -> Result<Target, ProxyError> {
    let bad = ProxyError::BadRequest;
    if method == Method::CONNECT {
        return connect_target(version, uri);
    }
    let h2 = version == Version::HTTP_2;
    // Which authority names the target: the request line's (absolute
    // form) or `:authority` over HTTP/2, else the one Host field.
    let from_uri = match (uri.scheme(), uri.authority()) {
        (Some(s), Some(a)) => {
            let scheme = s.as_str();
            if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
                return Err(bad("request target scheme is not http or https"));
            }
            Some(a.as_str())
        }
        // `host:port` or `!`: authority form, only for CONNECT.
        (None, Some(_)) => return Err(bad("authority-form target is only for CONNECT")),
        (Some(_), None) => return Err(bad("invalid request target")),
        (None, None) => None,
    };
    let mut hosts = headers.get_all(header::HOST).iter();
    let host_field = hosts.next();
    if hosts.next().is_some() {
        return Err(bad("a request needs exactly one Host header"));
    }
    // RFC 9112 §3.2: every HTTP/1.1 request has one Host, even with an
    // absolute-form target (which then replaces it).
    if host_field.is_none() && version == Version::HTTP_11 {
        return Err(bad("a request needs exactly one Host header"));
    }
    let raw: Option<&[u8]> = match (from_uri, host_field) {
        (Some(a), _) => Some(a.as_bytes()),
        (None, Some(h)) => Some(h.as_bytes()),
        (None, None) if version == Version::HTTP_11 || h2 => {
            return Err(bad("a request needs exactly one Host header"))
        }
        (None, None) => None,
    };
    let (authority, host_len) = match raw {
        Some(raw) => {
            let (a, n) = authority(raw).map_err(bad)?;
            // The value is reused (no copy) when it is already lower-case.
            let value = match (a, from_uri, host_field) {
                (Cow::Borrowed(_), None, Some(h)) => h.clone(),
                (a, _, _) => HeaderValue::from_maybe_shared(Bytes::from(a.into_owned()))
                    .map_err(|_| bad("invalid Host"))?,
            };
            (Some(value), n)
        }
        None => (None, 0),
    };
    let pq = match uri.path_and_query() {
        Some(pq) => pq,
        None if from_uri.is_some() => &PathAndQuery::from_static("/"),
        None => return Err(bad("invalid request target")),
    };
    if h2 && !valid_target(pq.as_str().as_bytes()) {
        return Err(bad("invalid character in request target"));
    }
    let path = pq.path();
    let path_and_query = if path == "*" && pq.query().is_none() {
        if method != Method::OPTIONS {
            return Err(bad("'*' is only a target for OPTIONS"));
        }
        pq.clone()
    } else if !path.starts_with('/') {
        return Err(bad("invalid request target"));
    } else if norm == PathNormalization::Strict {
        match normalize_path(path).map_err(bad)? {
            Cow::Borrowed(_) => pq.clone(),
            Cow::Owned(mut p) => {
                if let Some(q) = pq.query() {
                    p.push('?');
                    p.push_str(q);
                }
                PathAndQuery::from_maybe_shared(Bytes::from(p))
                    .map_err(|_| bad("invalid request target"))?
            }
        }
    } else {
        pq.clone()
    };
    Ok(Target {
        authority,
        host_len,
        path_and_query,
    })
}

/// A CONNECT request's target: the authority form `host:port` alone (RFC
/// 9112 §3.2.3), port required, checked like any authority; it is what
/// the request is routed by (with the path `/`). Over HTTP/2 CONNECT is
/// not served.
fn connect_target(version: Version, uri: &Uri) -> Result<Target, ProxyError> {
    let bad = ProxyError::BadRequest;
    if version != Version::HTTP_11 {
        return Err(ProxyError::MethodNotAllowed(
            "CONNECT is served over HTTP/1.1 only",
        ));
    }
    let (None, Some(a)) = (uri.scheme(), uri.authority()) else {
        return Err(bad("CONNECT needs an authority-form target (host:port)"));
    };
    if uri.path_and_query().is_some_and(|p| !p.as_str().is_empty()) {
        return Err(bad("CONNECT needs an authority-form target (host:port)"));
    }
    let (value, host_len) = authority(a.as_str().as_bytes()).map_err(bad)?;
    if host_len == value.len() {
        return Err(bad("a CONNECT target needs a port"));
    }
    let authority = HeaderValue::from_maybe_shared(Bytes::from(value.into_owned()))
        .map_err(|_| bad("invalid authority"))?;
    Ok(Target {
        authority: Some(authority),
        host_len,
        path_and_query: PathAndQuery::from_static("/"),
    })
}

/// Bytes allowed in a request target (RFC 3986: unreserved, sub-delims,
/// `:@/?%`); `%` must start a valid percent-encoding. Fragments, spaces,
/// controls, non-ASCII, `"`, `\`, `<>^`{|}` are refused.
pub fn valid_target(t: &[u8]) -> bool {
    // An absolute form's authority may hold an IPv6 literal in brackets
    // (checked with the authority); nothing else may.
    let mut brackets = 0..0;
    if !t.starts_with(b"/") {
        if let Some(at) = t.windows(3).position(|w| w == b"://") {
            let from = at + 3;
            let len = t[from..]
                .iter()
                .position(|&b| b == b'/' || b == b'?')
                .unwrap_or(t.len() - from);
            brackets = from..from + len;
        }
    }
    let mut i = 0;
    while i < t.len() {
        let b = t[i];
        if b == b'%' {
            if i + 2 >= t.len() {
                return false;
            }
            if !(t[i + 1].is_ascii_hexdigit() && t[i + 2].is_ascii_hexdigit()) {
                return false;
            }
            i += 3;
            continue;
        }
        if !TARGET[b as usize] && !((b == b'[' || b == b']') && brackets.contains(&i)) {
            return false;
        }
        i += 1;
    }
    true
}

const fn target_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'/'
                    | b'?'
            );
        b += 1;
    }
    t
}

static TARGET: [bool; 256] = target_table();

/// Checks `host[:port]` (RFC 3986 §3.2.2, narrowed to what names an HTTP
/// server: a DNS-style name, an IPv4 address or a bracketed IPv6 address;
/// no userinfo, a port of 1-5 digits up to 65535) and lower-cases it.
/// Returns the value and the host's length.
pub fn authority(raw: &[u8]) -> Result<(Cow<'_, str>, usize), &'static str> {
    const BAD: &str = "invalid Host";
    if raw.is_empty() || raw.len() > 262 {
        return Err(BAD);
    }
    let mut upper = false;
    let host_len = if raw[0] == b'[' {
        let end = raw.iter().position(|&b| b == b']').ok_or(BAD)?;
        let inner = std::str::from_utf8(&raw[1..end]).map_err(|_| BAD)?;
        inner.parse::<Ipv6Addr>().map_err(|_| BAD)?;
        upper = inner.bytes().any(|b| b.is_ascii_uppercase());
        end + 1
    } else {
        // One pass: where the port starts, and whether a byte is not a
        // name's (or needs lower-casing).
        let mut n = raw.len();
        for (i, &b) in raw.iter().enumerate() {
            if b == b':' {
                n = i;
                break;
            }
            if !NAME[b as usize] {
                return Err(BAD);
            }
            upper |= b.is_ascii_uppercase();
        }
        if n == 0 || n > 253 {
            return Err(BAD);
        }
        n
    };
    match &raw[host_len..] {
        [] => {}
        [b':', port @ ..] => {
            if port.is_empty()
                || port.len() > 5
                || !port.iter().all(u8::is_ascii_digit)
                || port.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')) > 65535
            {
                return Err(BAD);
            }
        }
        _ => return Err(BAD),
    }
    // All ASCII by now.
    let s = std::str::from_utf8(raw).map_err(|_| BAD)?;
    if upper {
        Ok((Cow::Owned(s.to_ascii_lowercase()), host_len))
    } else {
        Ok((Cow::Borrowed(s), host_len))
    }
}

/// Bytes of a host name, and RFC 3986's unreserved characters: letters,
/// digits, `-._~`.
static NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~');
        b += 1;
    }
    t
};

/// Strict path normalization: percent-encoded unreserved characters are
/// decoded, dot segments removed (RFC 3986 §5.2.4). Refused: `%2F`,
/// `%5C`, `\`, `%00` (a path whose segments another server would split
/// differently), and `.`/`..` segments with a `;` parameter (`..;`, which
/// some servers read as `..`). Borrowed when nothing changes.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, &'static str> {
    let b = path.as_bytes();
    // The common case: nothing encoded, no backslash, no dot segment.
    let needs_work = b.contains(&b'%')
        || b.contains(&b'\\')
        || b.windows(2).any(|w| w[0] == b'/' && w[1] == b'.');
    if !needs_work {
        return Ok(Cow::Borrowed(path));
    }
    // 1. Decode what is unreserved; refuse what would change the segments.
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => return Err("backslash in path"),
            b'%' => {
                if i + 2 >= b.len() {
                    return Err("bad percent-encoding in path");
                }
                let (h, l) = (b[i + 1], b[i + 2]);
                if !(h.is_ascii_hexdigit() && l.is_ascii_hexdigit()) {
                    return Err("bad percent-encoding in path");
                }
                let c = hex_value(h) << 4 | hex_value(l);
                match c {
                    b'/' => return Err("encoded slash (%2F) in path"),
                    b'\\' => return Err("encoded backslash (%5C) in path"),
                    0 => return Err("encoded NUL (%00) in path"),
                    // Unreserved: the bytes of a host name.
                    c if NAME[c as usize] => decoded.push(c as char),
                    _ => {
                        decoded.push('%');
                        decoded.push(h.to_ascii_uppercase() as char);
                        decoded.push(l.to_ascii_uppercase() as char);
                    }
                }
                i += 3;
            }
            c => {
                decoded.push(c as char);
                i += 1;
            }
        }
    }
    // 2. Remove dot segments. The path starts with '/': segments follow.
    let mut out: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for seg in decoded[1..].split('/') {
        let name = seg.split(';').next().unwrap_or("");
        if name != seg && (name == "." || name == "..") {
            return Err("dot segment with a parameter (..;) in path");
        }
        trailing_slash = false;
        match seg {
            "." => trailing_slash = true,
            ".." => {
                out.pop();
                trailing_slash = true;
            }
            s => out.push(s),
        }
    }
    let mut p = String::with_capacity(decoded.len());
    for s in &out {
        p.push('/');
        p.push_str(s);
    }
    if trailing_slash || p.is_empty() {
        p.push('/');
    }
    if p == path {
        return Ok(Cow::Borrowed(path));
    }
    Ok(Cow::Owned(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalize_as_rfc_3986_says() {
        let ok = [
            ("/a/b", "/a/b"),
            ("/public/../internal", "/internal"),
            ("/public/%2e%2e/internal", "/internal"),
            ("/public/%2E%2E/internal", "/internal"),
            ("/a/./b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/..", "/"),
            ("/../../x", "/x"),
            ("/%41%62c", "/Abc"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/a.b/.c/..d", "/a.b/.c/..d"),
            ("//a//b", "//a//b"),
            ("/", "/"),
            ("/.well-known/x", "/.well-known/x"),
            ("/%252e%252e/x", "/%252e%252e/x"),
        ];
        for (input, want) in ok {
            assert_eq!(normalize_path(input).as_deref(), Ok(want), "{input}");
        }
        for input in [
            "/public/..%2finternal",
            "/a%2Fb",
            "/a%5cb",
            "/a\\b",
            "/a%00",
            "/public/..;/internal",
            "/public/.;x/y",
            "/a%zz",
            "/a%4",
        ] {
            assert!(normalize_path(input).is_err(), "{input}");
        }
    }

    #[test]
    fn authorities_are_checked_and_lower_cased() {
        for (input, want, host) in [
            ("example.com", "example.com", "example.com"),
            ("Example.COM:8080", "example.com:8080", "example.com"),
            ("127.0.0.1:80", "127.0.0.1:80", "127.0.0.1"),
            ("[::1]:443", "[::1]:443", "[::1]"),
            ("[::1]", "[::1]", "[::1]"),
            ("a_b.internal", "a_b.internal", "a_b.internal"),
        ] {
            let (a, n) = authority(input.as_bytes()).unwrap();
            assert_eq!(a, want);
            assert_eq!(&a[..n], host);
        }
        for input in [
            "",
            "a b",
            "x, y",
            "x/y",
            "@",
            "user@host",
            "h:abc",
            ":80:80",
            ":80",
            "h:",
            "h:123456",
            "h:65536",
            "[::1",
            "[::1]x",
            "[zz]",
            "h\u{e9}",
            "a:1:2",
            "a;b",
            "a%41",
        ] {
            assert!(authority(input.as_bytes()).is_err(), "{input:?}");
        }
    }

    #[test]
    fn target_bytes_are_rfc_3986() {
        assert!(valid_target(b"/a/b?x=1&y=%20"));
        assert!(valid_target(b"/~user/a-b_c.d!$&'()*+,;=:@"));
        assert!(valid_target(b"http://[::1]:80/x"));
        assert!(!valid_target(b"http://[::1]:80/x[1]"));
        assert!(!valid_target(b"/x[1]"));
        for bad in [
            &b"/a b"[..],
            b"/a\"b",
            b"/a\\b",
            b"/a<b",
            b"/a>b",
            b"/a^b",
            b"/a`b",
            b"/a{b",
            b"/a|b",
            b"/a}b",
            b"/a#b",
            b"/a%",
            b"/a%4",
            b"/a%g0",
            b"/\xc3\xa9",
            b"/a\x7f",
        ] {
            assert!(!valid_target(bad), "{}", String::from_utf8_lossy(bad));
        }
    }
}
