//! A set of IP networks (CIDR), IPv4 and IPv6, looked up with a
//! path-compressed binary prefix tree (a radix tree): a lookup visits one
//! node per branching bit on the address's path, about log2(n) nodes, not
//! one per bit. IPv4 networks live in the tree as IPv4-mapped IPv6
//! (`::ffff:a.b.c.d/96+n`), so one tree holds both; an IPv4-mapped client
//! address matches IPv4 networks.

use std::net::IpAddr;

use centinela_config::Cidr;

const NONE: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Node {
    /// The prefix's bits (those past `len` are zero).
    key: u128,
    len: u8,
    /// A network of the set ends here.
    term: bool,
    child: [u32; 2],
}

/// A set of networks.
#[derive(Clone, Debug, Default)]
pub struct IpSet {
    nodes: Vec<Node>,
    networks: usize,
}

fn mask(x: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        x & (!0u128 << (128 - u32::from(len)))
    }
}

fn bit(x: u128, i: u8) -> usize {
    ((x >> (127 - u32::from(i))) & 1) as usize
}

/// An address as 128 bits; IPv4 (and IPv4-mapped IPv6) as `::ffff:a.b.c.d`.
pub fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(v4.to_ipv6_mapped()),
            None => u128::from(v6),
        },
    }
}

fn prefix(c: &Cidr) -> (u128, u8) {
    match c.addr {
        IpAddr::V4(_) => (mask(bits(c.addr), 96 + c.len), 96 + c.len),
        IpAddr::V6(_) => (mask(bits(c.addr), c.len), c.len),
    }
}

impl IpSet {
    pub fn new<'a>(networks: impl IntoIterator<Item = &'a Cidr>) -> IpSet {
        let mut s = IpSet::default();
        for c in networks {
            s.insert(c);
        }
        s
    }

    /// Networks inserted (duplicates included).
    pub fn len(&self) -> usize {
        self.networks
    }

    pub fn is_empty(&self) -> bool {
        self.networks == 0
    }

    fn push(&mut self, key: u128, len: u8, term: bool) -> u32 {
        self.nodes.push(Node {
            key,
            len,
            term,
            child: [NONE; 2],
        });
        (self.nodes.len() - 1) as u32
    }

    pub fn insert(&mut self, c: &Cidr) {
        self.networks += 1;
        let (key, len) = prefix(c);
        if self.nodes.is_empty() {
            self.push(key, len, true);
            return;
        }
        // The link to `node`: its parent and side, or the root.
        let mut parent: Option<(u32, usize)> = None;
        let mut node = 0u32;
        loop {
            let n = self.nodes[node as usize];
            let common = ((key ^ n.key).leading_zeros() as u8).min(len).min(n.len);
            if common < n.len {
                // The new prefix branches off (or ends) above this node.
                let up = if common == len {
                    let up = self.push(key, len, true);
                    self.nodes[up as usize].child[bit(n.key, len)] = node;
                    up
                } else {
                    let up = self.push(mask(key, common), common, false);
                    let leaf = self.push(key, len, true);
                    self.nodes[up as usize].child[bit(key, common)] = leaf;
                    self.nodes[up as usize].child[bit(n.key, common)] = node;
                    up
                };
                self.relink(parent, node, up);
                return;
            }
            if len == n.len {
                self.nodes[node as usize].term = true;
                return;
            }
            let side = bit(key, n.len);
            let next = n.child[side];
            if next == NONE {
                let leaf = self.push(key, len, true);
                self.nodes[node as usize].child[side] = leaf;
                return;
            }
            parent = Some((node, side));
            node = next;
        }
    }

    fn relink(&mut self, parent: Option<(u32, usize)>, old: u32, new: u32) {
        match parent {
            Some((p, side)) => self.nodes[p as usize].child[side] = new,
            None => {
                // The root is node 0: swap the new node into its place.
                debug_assert_eq!(old, 0);
                self.nodes.swap(0, new as usize);
                for c in self.nodes[0].child.iter_mut() {
                    if *c == 0 {
                        *c = new;
                    }
                }
            }
        }
    }

    /// Is `ip` in one of the networks?
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.contains_bits(bits(ip))
    }

    pub fn contains_bits(&self, addr: u128) -> bool {
        let mut node = if self.nodes.is_empty() { NONE } else { 0 };
        while node != NONE {
            let n = &self.nodes[node as usize];
            if mask(addr, n.len) != n.key {
                return false;
            }
            if n.term {
                return true;
            }
            if n.len == 128 {
                return false;
            }
            node = n.child[bit(addr, n.len)];
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        Cidr::parse(s).unwrap().0
    }

    fn set(list: &[&str]) -> IpSet {
        let v: Vec<Cidr> = list.iter().map(|s| cidr(s)).collect();
        IpSet::new(&v)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v4_and_v6_networks_match_their_addresses_only() {
        let s = set(&[
            "192.0.2.0/24",
            "10.0.0.0/8",
            "2001:db8::/32",
            "198.51.100.7",
            "::1",
        ]);
        assert!(s.contains(ip("192.0.2.1")));
        assert!(s.contains(ip("192.0.2.255")));
        assert!(!s.contains(ip("192.0.3.0")));
        assert!(s.contains(ip("10.200.1.1")));
        assert!(!s.contains(ip("11.0.0.1")));
        assert!(s.contains(ip("198.51.100.7")));
        assert!(!s.contains(ip("198.51.100.8")));
        assert!(s.contains(ip("2001:db8:ffff::1")));
        assert!(!s.contains(ip("2001:db9::1")));
        assert!(s.contains(ip("::1")));
        assert!(!s.contains(ip("::2")));
        // IPv4-mapped IPv6 clients match IPv4 networks.
        assert!(s.contains(ip("::ffff:192.0.2.9")));
        assert!(!set(&[]).contains(ip("192.0.2.1")));
        assert!(set(&["0.0.0.0/0"]).contains(ip("8.8.8.8")));
        assert!(!set(&["0.0.0.0/0"]).contains(ip("2001:db8::1")));
        assert!(set(&["::/0"]).contains(ip("2001:db8::1")));
    }

    /// Random networks and addresses against a linear scan.
    #[test]
    fn agrees_with_a_linear_scan() {
        let mut rng = fastrand::Rng::with_seed(11);
        for round in 0..50 {
            let mut nets = Vec::new();
            for _ in 0..(round * 20 + 1) {
                let v4 = rng.bool();
                let (addr, len) = if v4 {
                    // A few short prefixes, many long ones, in a small space
                    // so that they overlap.
                    let a = std::net::Ipv4Addr::from(0x0a00_0000 | rng.u32(..0x0001_0000) << 8);
                    (IpAddr::V4(a), rng.u8(8..=32))
                } else {
                    let a = std::net::Ipv6Addr::from(
                        0x2001_0db8u128 << 96 | u128::from(rng.u32(..)) << 64,
                    );
                    (IpAddr::V6(a), rng.u8(16..=128))
                };
                nets.push(Cidr::new(addr, len));
            }
            let s = IpSet::new(&nets);
            for _ in 0..500 {
                let probe = if rng.bool() {
                    IpAddr::V4(std::net::Ipv4Addr::from(
                        0x0a00_0000 | rng.u32(..0x0100_0000),
                    ))
                } else {
                    IpAddr::V6(std::net::Ipv6Addr::from(
                        0x2001_0db8u128 << 96
                            | u128::from(rng.u32(..)) << 64
                            | u128::from(rng.u64(..)),
                    ))
                };
                let want = nets.iter().any(|c| {
                    let (k, l) = prefix(c);
                    mask(bits(probe), l) == k
                });
                assert_eq!(
                    s.contains(probe),
                    want,
                    "{probe} in {} networks",
                    nets.len()
                );
                // Every network's own address is in the set.
            }
            for c in &nets {
                assert!(s.contains(c.addr), "{:?}", c);
            }
        }
    }
}
