//! The PROXY protocol (HAProxy's, versions 1 and 2): a load balancer in
//! front says, before the first byte of the connection's own data, which
//! client it carries. Read only from `[client_ip] trusted_proxies`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header is at most 107 bytes; v2's fixed part is 16.
pub const MAX_V1: usize = 107;

/// What a header said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    /// The client's address and port.
    Proxied(SocketAddr),
    /// `UNKNOWN` (v1) or `LOCAL` (v2, a health check of the balancer
    /// itself) or an address family other than TCP over IPv4/IPv6: the
    /// connection's own peer stands.
    Local,
}

/// Parses a header at the start of `buf`: `Ok(Some((header, length)))`,
/// `Ok(None)` when more bytes are needed, or why it is not one.
pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, &'static str> {
    if buf.len() < 12 {
        let n = buf.len();
        if !V2_SIG.starts_with(buf) && !b"PROXY ".starts_with(&buf[..n.min(6)]) {
            return Err("no PROXY protocol header");
        }
        return Ok(None);
    }
    if buf.starts_with(V2_SIG) {
        return v2(buf);
    }
    if buf.starts_with(b"PROXY ") {
        return v1(buf);
    }
    Err("no PROXY protocol header")
}

fn v1(buf: &[u8]) -> Result<Option<(Header, usize)>, &'static str> {
    let end = match buf.windows(2).position(|w| w == b"\r\n") {
        Some(i) => i,
        None if buf.len() >= MAX_V1 => return Err("PROXY v1 header too long"),
        None => return Ok(None),
    };
    if end + 2 > MAX_V1 {
        return Err("PROXY v1 header too long");
    }
    let line = std::str::from_utf8(&buf[6..end]).map_err(|_| "PROXY v1 header is not text")?;
    let mut parts = line.split(' ');
    let bad = "malformed PROXY v1 header";
    let header = match parts.next() {
        Some("UNKNOWN") => Header::Local,
        Some(fam @ ("TCP4" | "TCP6")) => {
            let src: IpAddr = parts.next().ok_or(bad)?.parse().map_err(|_| bad)?;
            let _dst: IpAddr = parts.next().ok_or(bad)?.parse().map_err(|_| bad)?;
            let sport: u16 = port(parts.next().ok_or(bad)?).ok_or(bad)?;
            let _dport: u16 = port(parts.next().ok_or(bad)?).ok_or(bad)?;
            if parts.next().is_some() || (fam == "TCP4") != src.is_ipv4() {
                return Err(bad);
            }
            Header::Proxied(SocketAddr::new(src, sport))
        }
        _ => return Err(bad),
    };
    Ok(Some((header, end + 2)))
}

/// A port in decimal without a sign or leading zeros.
fn port(s: &str) -> Option<u16> {
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    s.parse().ok()
}

fn v2(buf: &[u8]) -> Result<Option<(Header, usize)>, &'static str> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err("PROXY v2 header of an unknown version");
    }
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if buf.len() < 16 + len {
        return Ok(None);
    }
    let body = &buf[16..16 + len];
    let total = 16 + len;
    match ver_cmd & 0x0f {
        0 => return Ok(Some((Header::Local, total))),
        1 => {}
        _ => return Err("PROXY v2 header with an unknown command"),
    }
    let short = "PROXY v2 addresses too short";
    let header = match buf[13] {
        // TCP over IPv4: src, dst, sport, dport.
        0x11 => {
            let a: [u8; 12] = body.get(..12).ok_or(short)?.try_into().map_err(|_| short)?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Header::Proxied(SocketAddr::new(ip.into(), u16::from_be_bytes([a[8], a[9]])))
        }
        // TCP over IPv6.
        0x21 => {
            let a: [u8; 36] = body.get(..36).ok_or(short)?.try_into().map_err(|_| short)?;
            let src: [u8; 16] = a[..16].try_into().map_err(|_| short)?;
            Header::Proxied(SocketAddr::new(
                Ipv6Addr::from(src).into(),
                u16::from_be_bytes([a[32], a[33]]),
            ))
        }
        // UDP, UNIX sockets, unspecified: no client address to use.
        _ => Header::Local,
    };
    Ok(Some((header, total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1() {
        let h = b"PROXY TCP4 198.51.100.22 203.0.113.7 35646 80\r\nGET / HTTP/1.1\r\n";
        let (hdr, n) = parse(h).unwrap().unwrap();
        assert_eq!(hdr, Header::Proxied("198.51.100.22:35646".parse().unwrap()));
        assert_eq!(&h[n..n + 3], b"GET");
        let (hdr, _) = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 443\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(hdr, Header::Proxied("[2001:db8::1]:4000".parse().unwrap()));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap().0,
            Header::Local
        );
        // Incomplete: more is needed.
        assert_eq!(parse(b"PROXY TCP4 198.51.100.22 20").unwrap(), None);
        assert_eq!(parse(b"PRO").unwrap(), None);
        for bad in [
            &b"PROXY TCP4 198.51.100.22 203.0.113.7 35646\r\n"[..],
            b"PROXY TCP4 2001:db8::1 203.0.113.7 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 070 80\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 80\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(parse(&long).is_err());
    }

    #[test]
    fn version_2() {
        let mut h = V2_SIG.to_vec();
        h.extend_from_slice(&[
            0x21, 0x11, 0, 12, 198, 51, 100, 22, 203, 0, 113, 7, 0x8b, 0x3e, 0, 80,
        ]);
        h.extend_from_slice(b"rest");
        let (hdr, n) = parse(&h).unwrap().unwrap();
        assert_eq!(hdr, Header::Proxied("198.51.100.22:35646".parse().unwrap()));
        assert_eq!(&h[n..], b"rest");
        // LOCAL.
        let mut l = V2_SIG.to_vec();
        l.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&l).unwrap().unwrap(), (Header::Local, 16));
        // Waiting for the addresses.
        assert_eq!(parse(&h[..20]).unwrap(), None);
        // Version 1 in the v2 byte, a bad command.
        let mut bad = h.clone();
        bad[12] = 0x11;
        assert!(parse(&bad).is_err());
        bad[12] = 0x25;
        assert!(parse(&bad).is_err());
        // Addresses shorter than the family needs.
        let mut short = V2_SIG.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert!(parse(&short).is_err());
    }
}
