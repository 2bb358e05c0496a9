//! Load-balancing policies. Each picks one of the candidate servers given
//! their effective weight (configured weight × slow-start ramp) and in-flight
//! count.

use std::sync::Mutex;

use centinela_config::Balance;

/// A server the policy may choose: its index in the group, effective weight
/// and requests in flight.
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    pub index: usize,
    pub weight: f64,
    pub in_flight: u32,
}

#[derive(Debug)]
pub struct Balancer {
    policy: Balance,
    /// Smooth weighted round robin: current weight per server index.
    current: Mutex<Vec<f64>>,
}

impl Balancer {
    pub fn new(policy: Balance, servers: usize) -> Self {
        Balancer {
            policy,
            current: Mutex::new(vec![0.0; servers]),
        }
    }

    pub fn policy(&self) -> Balance {
        self.policy
    }

    /// Chooses among `cands` (never empty). `key` is the request's hash key
    /// for `hash`; `server_keys[i]` identifies server `i` for hashing.
    pub fn pick(&self, cands: &[Candidate], key: Option<u64>, server_keys: &[u64]) -> usize {
        debug_assert!(!cands.is_empty());
        if cands.len() == 1 {
            return cands[0].index;
        }
        match self.policy {
            Balance::RoundRobin => self.smooth_wrr(cands),
            Balance::LeastConn => least_loaded(cands, fastrand::usize(..cands.len())),
            Balance::P2c => {
                let a = fastrand::usize(..cands.len());
                let mut b = fastrand::usize(..cands.len() - 1);
                if b >= a {
                    b += 1;
                }
                let (ca, cb) = (cands[a], cands[b]);
                if load(&cb) < load(&ca) {
                    cb.index
                } else {
                    ca.index
                }
            }
            Balance::Random => weighted_random(cands),
            Balance::Hash => match key {
                Some(k) => rendezvous(cands, k, server_keys),
                None => weighted_random(cands),
            },
        }
    }

    /// nginx's smooth weighted round robin: each pick adds every candidate's
    /// weight to its current value, takes the largest and subtracts the total.
    fn smooth_wrr(&self, cands: &[Candidate]) -> usize {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = 0.0;
        let mut best: Option<usize> = None;
        for c in cands {
            if c.index >= cur.len() {
                cur.resize(c.index + 1, 0.0);
            }
            cur[c.index] += c.weight;
            total += c.weight;
            if best.is_none_or(|b| cur[c.index] > cur[b]) {
                best = Some(c.index);
            }
        }
        let best = best.unwrap_or(cands[0].index);
        cur[best] -= total;
        best
    }
}

fn load(c: &Candidate) -> f64 {
    f64::from(c.in_flight + 1) / c.weight
}

/// Lowest in-flight per unit of weight; ties broken from a random start so
/// that idle servers share the load.
fn least_loaded(cands: &[Candidate], start: usize) -> usize {
    let mut best = cands[start];
    for i in 1..cands.len() {
        let c = cands[(start + i) % cands.len()];
        if load(&c) < load(&best) {
            best = c;
        }
    }
    best.index
}

fn weighted_random(cands: &[Candidate]) -> usize {
    let total: f64 = cands.iter().map(|c| c.weight).sum();
    let mut x = fastrand::f64() * total;
    for c in cands {
        if x < c.weight {
            return c.index;
        }
        x -= c.weight;
    }
    cands[cands.len() - 1].index
}

/// splitmix64 finaliser: a good 64-bit mix.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

/// Weighted rendezvous (highest random weight) hashing: the server with the
/// highest `-weight / ln(u)` wins, with `u` uniform from hash(key, server).
/// Removing a server only moves the keys it owned.
fn rendezvous(cands: &[Candidate], key: u64, server_keys: &[u64]) -> usize {
    let mut best = cands[0].index;
    let mut best_score = f64::NEG_INFINITY;
    for c in cands {
        let h = mix(key ^ server_keys.get(c.index).copied().unwrap_or(c.index as u64));
        // u in (0, 1)
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = -c.weight / u.ln();
        if score > best_score {
            best_score = score;
            best = c.index;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(weights: &[f64]) -> Vec<Candidate> {
        weights
            .iter()
            .enumerate()
            .map(|(index, &weight)| Candidate {
                index,
                weight,
                in_flight: 0,
            })
            .collect()
    }

    #[test]
    fn smooth_wrr_is_exact_and_interleaved() {
        let b = Balancer::new(Balance::RoundRobin, 3);
        let c = cands(&[5.0, 1.0, 1.0]);
        let seq: Vec<usize> = (0..7).map(|_| b.pick(&c, None, &[])).collect();
        // nginx's documented sequence for 5:1:1.
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn rendezvous_moves_about_one_nth_of_keys() {
        let keys = [11u64, 22, 33, 44];
        let all = cands(&[1.0; 4]);
        let three: Vec<Candidate> = all.iter().copied().filter(|c| c.index != 2).collect();
        let (mut moved, n) = (0, 10_000u64);
        for k in 0..n {
            let key = mix(k);
            let a = rendezvous(&all, key, &keys);
            let b = rendezvous(&three, key, &keys);
            if a != b {
                assert_eq!(a, 2, "only keys of the removed server move");
                moved += 1;
            }
        }
        let frac = moved as f64 / n as f64;
        assert!((0.2..0.3).contains(&frac), "moved {frac}");
    }

    #[test]
    fn least_conn_and_p2c_prefer_less_loaded() {
        let mut c = cands(&[1.0, 1.0, 1.0]);
        c[0].in_flight = 10;
        c[1].in_flight = 0;
        c[2].in_flight = 10;
        let lc = Balancer::new(Balance::LeastConn, 3);
        assert!((0..100).all(|_| lc.pick(&c, None, &[]) == 1));
        let p2c = Balancer::new(Balance::P2c, 3);
        let hits = (0..3000).filter(|_| p2c.pick(&c, None, &[]) == 1).count();
        // Server 1 wins whenever it is one of the two sampled: 2/3 of picks.
        assert!(hits > 1800, "{hits}");
    }
}
