//! Header rules: request framing checks, hop-by-hop removal (RFC 9110
//! §7.6.1), X-Forwarded-*, and X-Request-Id.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::error::ProxyError;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Rejects requests whose framing is ambiguous (request smuggling).
pub fn check_framing(h: &HeaderMap) -> Result<(), ProxyError> {
    let has_te = h.contains_key(header::TRANSFER_ENCODING);
    let mut cl: Option<&[u8]> = None;
    for v in h.get_all(header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return Err(ProxyError::BadRequest("invalid Content-Length"));
            }
            match cl {
                Some(prev) if prev != part => {
                    return Err(ProxyError::BadRequest("conflicting Content-Length values"))
                }
                _ => cl = Some(part),
            }
        }
    }
    if has_te {
        if cl.is_some() {
            return Err(ProxyError::BadRequest(
                "both Content-Length and Transfer-Encoding present",
            ));
        }
        let mut codings = h
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|c| !c.is_empty());
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

/// Removes hop-by-hop headers, including those named in `Connection`. For
/// upgrades, `Connection: upgrade` and `Upgrade` are kept.
pub fn remove_hop_by_hop(h: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(upgrade && *n == header::UPGRADE))
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP.iter() {
        h.remove(n);
    }
    if upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::UPGRADE);
    }
}

/// Appends the client to `X-Forwarded-For`, sets `X-Forwarded-Proto` and
/// `X-Forwarded-Host`.
pub fn add_forwarded(h: &mut HeaderMap, client: IpAddr, proto: &'static str, host: Option<&str>) {
    let xff = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {client}"),
        _ => client.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert(X_FORWARDED_FOR, v);
    }
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(v) = host.and_then(|s| HeaderValue::from_str(s).ok()) {
        h.insert(X_FORWARDED_HOST, v);
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
        assert!(check_framing(&hm(&[("content-length", "5")])).is_ok());
        assert!(check_framing(&hm(&[("content-length", "5"), ("content-length", "5")])).is_ok());
        assert!(check_framing(&hm(&[("content-length", "5"), ("content-length", "6")])).is_err());
        assert!(check_framing(&hm(&[("content-length", "5, 6")])).is_err());
        assert!(check_framing(&hm(&[("transfer-encoding", "chunked")])).is_ok());
        assert!(check_framing(&hm(&[
            ("transfer-encoding", "chunked"),
            ("content-length", "5")
        ]))
        .is_err());
        assert!(check_framing(&hm(&[("transfer-encoding", "gzip, chunked")])).is_err());
        assert!(check_framing(&hm(&[("transfer-encoding", "identity")])).is_err());
    }

    #[test]
    fn hop_by_hop_and_forwarded() {
        let mut h = hm(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("x-forwarded-for", "10.0.0.1"),
            ("accept", "*/*"),
        ]);
        remove_hop_by_hop(&mut h, false);
        for gone in ["connection", "x-secret", "keep-alive", "te", "upgrade"] {
            assert!(!h.contains_key(gone), "{gone} kept");
        }
        assert!(h.contains_key("accept"));
        add_forwarded(
            &mut h,
            "127.0.0.1".parse().unwrap(),
            "http",
            Some("api.example.com"),
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.example.com");

        let mut up = hm(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade(&up));
        remove_hop_by_hop(&mut up, true);
        assert_eq!(up["upgrade"], "websocket");
        assert_eq!(up["connection"], "upgrade");
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
