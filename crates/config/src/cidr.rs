//! IP networks in CIDR notation: `192.0.2.0/24`, `2001:db8::/32`, or a
//! bare address (`/32` or `/128`).

use std::fmt;
use std::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network's address, host bits cleared.
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    /// A network of `len` bits (at most 32 for IPv4, 128 for IPv6) with
    /// the host bits of `addr` cleared.
    pub fn new(addr: IpAddr, len: u8) -> Cidr {
        let addr = match addr {
            IpAddr::V4(a) => {
                let len = len.min(32);
                let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                IpAddr::V4((u32::from(a) & m).into())
            }
            IpAddr::V6(a) => {
                let len = len.min(128);
                let m = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len)
                };
                IpAddr::V6((u128::from(a) & m).into())
            }
        };
        Cidr { addr, len }
    }

    /// Parses `ADDR/LEN` or `ADDR`. `Ok((cidr, true))` when the address had
    /// host bits set (they are cleared: `192.0.2.7/24` is `192.0.2.0/24`).
    pub fn parse(s: &str) -> Result<(Cidr, bool), String> {
        let s = s.trim();
        let (a, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| {
            format!(
                "{s:?} is not an IP address or network (e.g. \"192.0.2.0/24\", \"2001:db8::/32\")"
            )
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max && !l.starts_with('+') => n,
                _ => return Err(format!("{s:?}: the prefix length must be 0 to {max}")),
            },
        };
        let c = Cidr::new(addr, len);
        Ok((c, c.addr != addr))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.addr.is_ipv4() && Cidr::new(ip, self.len).addr == self.addr
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_networks_and_addresses() {
        let p = |s: &str| Cidr::parse(s).map(|(c, fixed)| (c.to_string(), fixed));
        assert_eq!(p("192.0.2.0/24"), Ok(("192.0.2.0/24".into(), false)));
        assert_eq!(p("192.0.2.7/24"), Ok(("192.0.2.0/24".into(), true)));
        assert_eq!(p("10.1.2.3"), Ok(("10.1.2.3/32".into(), false)));
        assert_eq!(p("2001:db8::/32"), Ok(("2001:db8::/32".into(), false)));
        assert_eq!(p("::1"), Ok(("::1/128".into(), false)));
        assert_eq!(p("0.0.0.0/0"), Ok(("0.0.0.0/0".into(), false)));
        for bad in [
            "192.0.2.0/33",
            "2001:db8::/129",
            "example.com",
            "1.2.3.4/",
            "1.2.3.4/+8",
            "/8",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        let (c, _) = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.9.9.9".parse().unwrap()));
        assert!(c.contains("::ffff:10.9.9.9".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(!c.contains("::a09:909".parse().unwrap()));
    }
}
