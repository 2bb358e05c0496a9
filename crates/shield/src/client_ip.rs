//! The client's real address. A peer in `[client_ip] trusted_proxies` may
//! name the client in `X-Forwarded-For`; anyone else is the client.
//!
//! The list is read from the right, as nginx's `real_ip_recursive on`
//! does: each address added by a trusted proxy is skipped, and the first
//! one that is not trusted is the client. A client can write anything at
//! the left of the list, but never past the proxies that are trusted. An
//! entry that is not an address ends the walk at the last trusted hop.

use std::net::IpAddr;

use http::HeaderMap;

use crate::iptree::IpSet;

/// The real client of a request from `peer`.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &IpSet) -> IpAddr {
    if trusted.is_empty() || !trusted.contains(peer) {
        return peer;
    }
    let mut client = peer;
    // Header lines in order, entries right to left.
    let lines: Vec<&[u8]> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    for line in lines.iter().rev() {
        for entry in line.rsplit(|&b| b == b',') {
            let Some(ip) = parse_entry(entry) else {
                return client;
            };
            client = ip;
            if !trusted.contains(ip) {
                return ip;
            }
        }
    }
    client
}

/// `1.2.3.4`, `2001:db8::1`, `[2001:db8::1]:443` or `1.2.3.4:80`.
fn parse_entry(e: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(e).ok()?.trim();
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use centinela_config::Cidr;

    fn trusted(list: &[&str]) -> IpSet {
        let v: Vec<Cidr> = list.iter().map(|s| Cidr::parse(s).unwrap().0).collect();
        IpSet::new(&v)
    }

    fn h(values: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for v in values {
            m.append("x-forwarded-for", v.parse().unwrap());
        }
        m
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_trusted_peers_name_the_client() {
        let t = trusted(&["10.0.0.0/8"]);
        // An untrusted peer is the client, whatever it says.
        assert_eq!(
            resolve(ip("203.0.113.9"), &h(&["1.1.1.1"]), &t),
            ip("203.0.113.9")
        );
        // Nothing trusted: the peer.
        assert_eq!(
            resolve(ip("10.0.0.1"), &h(&["1.1.1.1"]), &trusted(&[])),
            ip("10.0.0.1")
        );
        // A trusted load balancer: the address it added.
        assert_eq!(
            resolve(ip("10.0.0.1"), &h(&["198.51.100.4"]), &t),
            ip("198.51.100.4")
        );
        // A client that forges entries gets only its own address: the
        // right-most untrusted one.
        assert_eq!(
            resolve(ip("10.0.0.1"), &h(&["6.6.6.6, 198.51.100.4"]), &t),
            ip("198.51.100.4")
        );
        // Two trusted hops, over two header lines, with ports and IPv6.
        assert_eq!(
            resolve(
                ip("10.0.0.1"),
                &h(&["[2001:db8::7]:5555, 10.1.1.1", "10.2.2.2:80"]),
                &t
            ),
            ip("2001:db8::7")
        );
        // Every entry trusted: the left-most.
        assert_eq!(
            resolve(ip("10.0.0.1"), &h(&["10.3.3.3, 10.4.4.4"]), &t),
            ip("10.3.3.3")
        );
        // Garbage ends the walk at the last trusted hop.
        assert_eq!(
            resolve(ip("10.0.0.1"), &h(&["1.1.1.1, unknown, 10.5.5.5"]), &t),
            ip("10.5.5.5")
        );
        // No header: the peer.
        assert_eq!(
            resolve(ip("10.0.0.1"), &HeaderMap::new(), &t),
            ip("10.0.0.1")
        );
    }
}
