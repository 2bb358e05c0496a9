//! Header rules: request framing checks, hop-by-hop removal (RFC 9110
//! §7.6.1), X-Forwarded-*, and X-Request-Id.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Version;

use crate::error::ProxyError;
use crate::http::codec;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Rejects requests whose framing is ambiguous (request smuggling): an
/// invalid or conflicting `Content-Length` (read by
/// [`codec::parse_length`], the parser the body decoder uses too), both
/// `Content-Length` and `Transfer-Encoding`, a coding other than chunked,
/// and `Transfer-Encoding` in HTTP/1.0 (RFC 9112 §6.1).
pub fn check_framing(version: Version, h: &HeaderMap) -> Result<(), ProxyError> {
    let has_te = h.contains_key(header::TRANSFER_ENCODING);
    let mut cl: Option<u64> = None;
    for v in h.get_all(header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|&b| b == b',') {
            let Some(n) = codec::parse_length(part.trim_ascii()) else {
                return Err(ProxyError::BadRequest("invalid Content-Length"));
            };
            match cl {
                Some(prev) if prev != n => {
                    return Err(ProxyError::BadRequest("conflicting Content-Length values"))
                }
                _ => cl = Some(n),
            }
        }
    }
    if has_te {
        if version == Version::HTTP_10 {
            return Err(ProxyError::BadRequest(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        if cl.is_some() {
            return Err(ProxyError::BadRequest(
                "both Content-Length and Transfer-Encoding present",
            ));
        }
        let mut codings = h
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii);
        let only_chunked = matches!(codings.next(), Some(c) if c.eq_ignore_ascii_case(b"chunked"))
            && codings.next().is_none();
        if !only_chunked {
            return Err(ProxyError::BadRequest("unsupported Transfer-Encoding"));
        }
    }
    Ok(())
}

/// Is this an `Upgrade` request (e.g. WebSocket)?
pub fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE) && connection_has(h, "upgrade")
}

fn connection_has(h: &HeaderMap, token: &str) -> bool {
    h.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .unwrap_or("")
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    })
}

/// Is this header hop-by-hop (RFC 9110 §7.6.1)? `Upgrade` is kept for
/// upgrades.
pub fn is_hop_by_hop(name: &HeaderName, upgrade: bool) -> bool {
    if *name == header::CONNECTION
        || *name == header::PROXY_AUTHENTICATE
        || *name == header::PROXY_AUTHORIZATION
        || *name == header::TE
        || *name == header::TRAILER
        || *name == header::TRANSFER_ENCODING
    {
        return true;
    }
    if *name == header::UPGRADE {
        return !upgrade;
    }
    // Those that are not standard names in `http`.
    let s = name.as_str();
    s == "keep-alive" || s == "proxy-connection" || s == "http2-settings"
}

/// The header names a `Connection` header lists, other than the tokens
/// that only steer the connection (`close`, `keep-alive`, `upgrade`):
/// those headers are hop-by-hop too.
pub fn connection_named(h: &HeaderMap) -> Vec<HeaderName> {
    h.get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| {
            !(t.is_empty()
                || t.eq_ignore_ascii_case(b"close")
                || t.eq_ignore_ascii_case(b"keep-alive")
                || t.eq_ignore_ascii_case(b"upgrade"))
        })
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .collect()
}

/// How a request head is rewritten on its way to a server, decided once
/// per request and applied as each attempt's head is written
/// ([`crate::http::client`]): hop-by-hop headers and those `Connection`
/// names are dropped; so are the headers only the gateway may set
/// (`Forwarded`, `X-Real-IP`, every `X-Forwarded-*`: no proxy in front is
/// trusted yet) and the client's `Host` (the client writes the checked
/// authority as `Host` and `X-Forwarded-Host`); X-Forwarded-For,
/// X-Forwarded-Proto and X-Request-Id are set. The client's header map is
/// never changed.
#[derive(Debug, Default)]
pub struct Rewrite<'a> {
    named: Vec<HeaderName>,
    upgrade: bool,
    /// The fields the gateway sets (none for its own health checks).
    added: Option<Added<'a>>,
}

/// What [`Rewrite::write_lines`] writes after the kept fields, written
/// straight into each attempt's head: no buffer of its own per request.
#[derive(Debug)]
struct Added<'a> {
    client: IpAddr,
    proto: &'static str,
    /// The peer is a trusted proxy: the `X-Forwarded-For` it sent goes on,
    /// with the peer added, and its `X-Forwarded-Proto` is kept.
    trusted: Option<&'a HeaderMap>,
    request_id: &'a HeaderValue,
    /// Replaces the client's `traceparent`.
    trace: Option<&'a Trace>,
}

impl<'a> Rewrite<'a> {
    /// `trace`: the `traceparent` to send (the client's, checked, or a new
    /// one), which replaces the client's; `None` forwards theirs untouched.
    pub fn request(
        h: &'a HeaderMap,
        client: IpAddr,
        trusted: bool,
        proto: &'static str,
        request_id: &'a HeaderValue,
        trace: Option<&'a Trace>,
        upgrade: bool,
    ) -> Rewrite<'a> {
        let named = if h.contains_key(header::CONNECTION) {
            connection_named(h)
        } else {
            Vec::new()
        };
        Rewrite {
            named,
            upgrade,
            added: Some(Added {
                client,
                proto,
                trusted: trusted.then_some(h),
                request_id,
                trace,
            }),
        }
    }

    /// The header lines written after the kept ones (`name: value\r\n`).
    pub fn write_lines(&self, w: &mut Vec<u8>) {
        if let Some(a) = &self.added {
            w.extend_from_slice(b"x-forwarded-for: ");
            if let Some(h) = a.trusted {
                for v in h.get_all("x-forwarded-for") {
                    w.extend_from_slice(v.as_bytes());
                    w.extend_from_slice(b", ");
                }
            }
            push_ip(w, a.client);
            w.extend_from_slice(b"\r\nx-forwarded-proto: ");
            let proto = a
                .trusted
                .and_then(|h| h.get("x-forwarded-proto"))
                .filter(|p| matches!(p.as_bytes(), b"http" | b"https"))
                .map_or(a.proto.as_bytes(), |p| p.as_bytes());
            w.extend_from_slice(proto);
            w.extend_from_slice(b"\r\nx-request-id: ");
            w.extend_from_slice(a.request_id.as_bytes());
            w.extend_from_slice(b"\r\n");
            if let Some(t) = &a.trace {
                w.extend_from_slice(b"traceparent: ");
                w.extend_from_slice(t.as_bytes());
                w.extend_from_slice(b"\r\n");
            }
        }
        if self.upgrade {
            w.extend_from_slice(b"connection: upgrade\r\n");
        }
    }

    /// Does the header go to the server as the client sent it?
    pub fn keeps(&self, name: &HeaderName) -> bool {
        // By string: comparing with a `const` header name builds and drops
        // a temporary on every call.
        let s = name.as_str();
        !(is_hop_by_hop(name, self.upgrade)
            || s == "host"
            || s.starts_with("x-forwarded-")
            || s == "forwarded"
            || s == "x-real-ip"
            || s == "x-request-id"
            || (s == "traceparent" && self.added.as_ref().is_some_and(|a| a.trace.is_some()))
            || self.named.contains(name))
    }
}

/// What a route adds to and removes from its responses: security headers
/// the server did not set, and the server's `Server` and `X-Powered-By`.
/// HTTP/1 writes them as it encodes the head (one pass over the fields it
/// walks anyway: no header map grown per response); HTTP/2 applies them
/// to the map.
#[derive(Debug)]
pub struct EdgeHeaders {
    /// Added when absent (at most 16).
    add: Vec<(HeaderName, HeaderValue)>,
    /// Remove `Server` and `X-Powered-By`.
    strip: bool,
}

impl EdgeHeaders {
    /// `None` when there is nothing to do.
    pub fn new(mut add: Vec<(HeaderName, HeaderValue)>, strip: bool) -> Option<EdgeHeaders> {
        add.truncate(16);
        (!add.is_empty() || strip).then_some(EdgeHeaders { add, strip })
    }

    /// Is this field left out of the response?
    #[inline]
    pub fn drops(&self, name: &HeaderName) -> bool {
        self.strip && (*name == header::SERVER || name.as_str() == "x-powered-by")
    }

    /// The bit of `name` among the added headers, if it is one.
    #[inline]
    pub fn bit(&self, name: &HeaderName) -> u16 {
        self.add
            .iter()
            .position(|(n, _)| n == name)
            .map_or(0, |i| 1 << i)
    }

    /// Writes the added headers whose bit is not in `present`.
    pub fn write_missing(&self, present: u16, w: &mut Vec<u8>) {
        for (i, (n, v)) in self.add.iter().enumerate() {
            if present & (1 << i) == 0 {
                w.extend_from_slice(n.as_str().as_bytes());
                w.extend_from_slice(b": ");
                w.extend_from_slice(v.as_bytes());
                w.extend_from_slice(b"\r\n");
            }
        }
    }

    /// The same on a header map (HTTP/2).
    pub fn apply(&self, h: &mut HeaderMap) {
        if self.strip {
            h.remove(header::SERVER);
            h.remove("x-powered-by");
        }
        for (n, v) in &self.add {
            if !h.contains_key(n) {
                h.insert(n.clone(), v.clone());
            }
        }
    }
}

/// Writes an address as text; IPv4 without the formatting machinery (once
/// per request).
pub(crate) fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            // Into a buffer on the stack, then one copy: at most 15 bytes.
            let mut buf = [0u8; 15];
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    buf[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    buf[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                buf[n] = b'0' + octet % 10;
                n += 1;
            }
            out.extend_from_slice(&buf[..n]);
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// The client's request id if it sent a sane one, else a new random one.
pub fn request_id(h: &HeaderMap) -> HeaderValue {
    if let Some(v) = h.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    new_request_id()
}

pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    let (a, b) = (fastrand::u64(..), fastrand::u64(..));
    for i in 0..16 {
        out[i] = HEX[((a >> (i * 4)) & 0xf) as usize];
        out[16 + i] = HEX[((b >> (i * 4)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&out).expect("hex is a valid header value")
}

/// The `traceparent` a request sends upstream: the client's when it sent
/// exactly one valid one (passed on as is: the gateway records no span of
/// its own), else a new one with a random trace id and parent id, not
/// sampled. A new one is built on the stack: no allocation per request.
#[derive(Debug, Clone)]
pub enum Trace {
    Client(HeaderValue),
    New([u8; 55]),
}

impl Trace {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Trace::Client(v) => v.as_bytes(),
            Trace::New(b) => b,
        }
    }

    /// The trace id: 32 lowercase hex digits.
    pub fn id(&self) -> &str {
        // Checked (or written) as ASCII hex, so this never fails.
        let id = self.as_bytes().get(3..35).unwrap_or_default();
        std::str::from_utf8(id).unwrap_or_default()
    }
}

/// W3C Trace Context (level 1, §3.2) for a request's headers.
pub fn traceparent(h: &HeaderMap) -> Trace {
    let mut all = h.get_all(&TRACEPARENT).iter();
    if let (Some(v), None) = (all.next(), all.next()) {
        if valid_traceparent(v.as_bytes()) {
            return Trace::Client(v.clone());
        }
    }
    new_traceparent()
}

/// `VERSION-TRACEID-PARENTID-FLAGS` in lowercase hex (W3C Trace Context
/// level 1, §3.2): version `ff` is invalid; version `00` is exactly 55
/// bytes; a later version may carry more after a `-`. All-zero ids are
/// invalid.
fn valid_traceparent(b: &[u8]) -> bool {
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return false;
    }
    let hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let nonzero = |s: &[u8]| s.iter().any(|c| *c != b'0');
    let (version, trace, parent, flags) = (&b[0..2], &b[3..35], &b[36..52], &b[53..55]);
    let tail_ok = if version == b"00" {
        b.len() == 55
    } else {
        b.len() == 55 || b[55] == b'-'
    };
    hex(version)
        && version != b"ff"
        && hex(trace)
        && nonzero(trace)
        && hex(parent)
        && nonzero(parent)
        && hex(flags)
        && tail_ok
}

pub fn new_traceparent() -> Trace {
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    // Ids of 128 and 64 random bits: all zeros is all but impossible, and
    // the low bit is set anyway to rule it out.
    let (a, b, c) = (fastrand::u64(..), fastrand::u64(..), fastrand::u64(..) | 1);
    put_hex(&mut out[3..19], a);
    put_hex(&mut out[19..35], b);
    put_hex(&mut out[36..52], c);
    Trace::New(out)
}

/// The 16 lowercase hex digits of `v`, most significant first.
fn put_hex(out: &mut [u8], v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, d) in out.iter_mut().enumerate() {
        *d = HEX[((v >> (60 - i * 4)) & 0xf) as usize];
    }
}

pub fn is_idempotent(method: &http::Method, h: &HeaderMap) -> bool {
    use http::Method;
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    ) || h.contains_key(&IDEMPOTENCY_KEY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_kept_and_anything_else_replaced() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            traceparent(&hm(&[("traceparent", good)])).as_bytes(),
            good.as_bytes()
        );
        // A later version may carry more.
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-comes";
        assert_eq!(
            traceparent(&hm(&[("traceparent", later)])).as_bytes(),
            later.as_bytes()
        );
        for bad in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "",
        ] {
            let got = traceparent(&hm(&[("traceparent", bad)]));
            assert_ne!(got.as_bytes(), bad.as_bytes());
            assert!(valid_traceparent(got.as_bytes()), "{got:?}");
        }
        // Two of them: neither is trusted.
        let two = hm(&[("traceparent", good), ("traceparent", good)]);
        assert_ne!(traceparent(&two).as_bytes(), good.as_bytes());
        let fresh = traceparent(&HeaderMap::new());
        assert!(valid_traceparent(fresh.as_bytes()));
        assert!(fresh.as_bytes().starts_with(b"00-") && fresh.as_bytes().ends_with(b"-00"));
        assert_eq!(fresh.id().len(), 32);
        assert_eq!(fresh.id().as_bytes(), &fresh.as_bytes()[3..35]);
        assert_ne!(fresh.id(), traceparent(&HeaderMap::new()).id());
        assert_eq!(
            traceparent(&hm(&[("traceparent", good)])).id(),
            &good[3..35]
        );
    }

    fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn framing() {
        assert!(check_framing(Version::HTTP_11, &hm(&[("content-length", "5")])).is_ok());
        assert!(check_framing(
            Version::HTTP_11,
            &hm(&[("content-length", "5"), ("content-length", "5")])
        )
        .is_ok());
        assert!(check_framing(
            Version::HTTP_11,
            &hm(&[("content-length", "5"), ("content-length", "6")])
        )
        .is_err());
        assert!(check_framing(Version::HTTP_11, &hm(&[("content-length", "5, 6")])).is_err());
        assert!(check_framing(Version::HTTP_11, &hm(&[("transfer-encoding", "chunked")])).is_ok());
        assert!(check_framing(
            Version::HTTP_11,
            &hm(&[("transfer-encoding", "chunked"), ("content-length", "5")])
        )
        .is_err());
        assert!(check_framing(
            Version::HTTP_11,
            &hm(&[("transfer-encoding", "gzip, chunked")])
        )
        .is_err());
        assert!(
            check_framing(Version::HTTP_11, &hm(&[("transfer-encoding", "identity")])).is_err()
        );
        assert!(
            check_framing(Version::HTTP_11, &hm(&[("transfer-encoding", "chunked, ")])).is_err()
        );
        // Leading zeros are a valid length; past u64 it is not one.
        assert!(check_framing(
            Version::HTTP_11,
            &hm(&[("content-length", "00000000000000000005")])
        )
        .is_ok());
        assert!(check_framing(
            Version::HTTP_11,
            &hm(&[("content-length", "18446744073709551616")])
        )
        .is_err());
        assert!(check_framing(
            Version::HTTP_11,
            &hm(&[("content-length", "5"), ("content-length", "005")])
        )
        .is_ok());
        assert!(check_framing(Version::HTTP_10, &hm(&[("transfer-encoding", "chunked")])).is_err());
    }

    #[test]
    fn hop_by_hop_and_forwarded() {
        let h = hm(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-port", "1"),
            ("forwarded", "for=10.0.0.1"),
            ("x-real-ip", "10.0.0.1"),
            ("host", "a"),
            ("http2-settings", "AAA"),
            ("x-request-id", "from-client"),
            ("accept", "*/*"),
        ]);
        let rid = HeaderValue::from_static("abc");
        let client = "127.0.0.1".parse().unwrap();
        let r = Rewrite::request(&h, client, false, "http", &rid, None, false);
        let kept: Vec<&str> = h
            .keys()
            .filter(|n| r.keeps(n))
            .map(|n| n.as_str())
            .collect();
        assert_eq!(kept, ["accept"]);
        assert_eq!(
            lines(&r),
            "x-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\nx-request-id: abc\r\n"
        );
        // From a trusted proxy: its X-Forwarded-For goes on with the peer
        // added, and its X-Forwarded-Proto is kept (http or https only).
        let mut h2 = h.clone();
        h2.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h2.append("x-forwarded-for", HeaderValue::from_static("198.51.100.7"));
        let r = Rewrite::request(&h2, client, true, "http", &rid, None, false);
        assert_eq!(
            lines(&r),
            "x-forwarded-for: 10.0.0.1, 198.51.100.7, 127.0.0.1\r\nx-forwarded-proto: https\r\nx-request-id: abc\r\n"
        );
        h2.insert("x-forwarded-proto", HeaderValue::from_static("gopher"));
        let r = Rewrite::request(&h2, client, true, "http", &rid, None, false);
        assert!(lines(&r).contains("x-forwarded-proto: http\r\n"));
        assert_eq!(connection_named(&h), [HeaderName::from_static("x-secret")]);
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ] {
            assert!(
                is_hop_by_hop(&HeaderName::from_static(name), false),
                "{name}"
            );
        }
        assert!(!is_hop_by_hop(&header::UPGRADE, true));
        assert!(!is_hop_by_hop(&header::ACCEPT, false));

        let up = hm(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade(&up));
        let r = Rewrite::request(&up, client, false, "http", &rid, None, true);
        assert!(r.keeps(&header::UPGRADE));
        assert!(!r.keeps(&header::CONNECTION));
        assert!(lines(&r).ends_with("connection: upgrade\r\n"));
        let t = new_traceparent();
        let r = Rewrite::request(&up, client, false, "http", &rid, Some(&t), false);
        assert!(!r.keeps(&TRACEPARENT));
        let want = format!("traceparent: {}\r\n", t.id());
        assert!(!lines(&r).contains(&want), "the id alone is not the field");
        let want = format!(
            "traceparent: {}\r\n",
            std::str::from_utf8(t.as_bytes()).unwrap()
        );
        assert!(lines(&r).ends_with(&want), "{}", lines(&r));
        assert_eq!(lines(&Rewrite::default()), "");
    }

    fn lines(r: &Rewrite) -> String {
        let mut w = Vec::new();
        r.write_lines(&mut w);
        String::from_utf8(w).unwrap()
    }

    #[test]
    fn addresses_are_written_as_display_does() {
        for ip in [
            "127.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "10.20.3.4",
            "100.0.99.209",
            "9.10.199.200",
            "::1",
            "2001:db8::5",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
        }
    }

    #[test]
    fn request_ids() {
        let a = new_request_id();
        assert_eq!(a.len(), 32);
        assert_ne!(a, new_request_id());
        assert_eq!(request_id(&hm(&[("x-request-id", "abc-1")])), "abc-1");
        assert_eq!(request_id(&hm(&[("x-request-id", "has space")])).len(), 32);
    }
}
