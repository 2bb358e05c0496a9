//! Load-balancing policies. Each picks one of the candidate servers given
//! their effective weight (configured weight × slow-start ramp) and in-flight
//! count.

use std::sync::Mutex;

use centinela_config::Balance;

/// A server the policy may choose: its index in the group, effective weight,
/// requests in flight and requests ended so far (wrapping).
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    pub index: usize,
    pub weight: f64,
    pub in_flight: u32,
    pub ended: u32,
}

#[derive(Debug)]
pub struct Balancer {
    policy: Balance,
    /// Smooth weighted round robin's state, per server index.
    rr: Mutex<Vec<RrSlot>>,
}

#[derive(Clone, Copy, Debug, Default)]
struct RrSlot {
    /// The current weight.
    current: f64,
    /// The server's `ended` count at the last pick...
    ended: u32,
    /// ...and how many picks in a row it has kept requests in flight
    /// without ending any.
    quiet: u32,
}

impl Balancer {
    pub fn new(policy: Balance, servers: usize) -> Self {
        Balancer {
            policy,
            rr: Mutex::new(vec![RrSlot::default(); servers]),
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
    ///
    /// A stuck server sits out: one that has ended none of its requests for
    /// [`QUIET_ROUNDS`] rounds of picks while holding more than twice its
    /// share of the requests in flight (plus one). A frozen process collects
    /// requests it never answers, and plain round robin would keep sending
    /// it its share until every client waits on it. A server that answers,
    /// however slowly, and an idle one are never skipped.
    fn smooth_wrr(&self, cands: &[Candidate]) -> usize {
        let quiet_limit = QUIET_ROUNDS * cands.len() as u32;
        let mut rr = self.rr.lock().unwrap_or_else(|p| p.into_inner());
        // One round as usual, keeping score of who ended nothing for a
        // while with requests in flight.
        let mut suspect = false;
        let best = round(&mut rr, cands, |c, slot| {
            if c.ended != slot.ended || c.in_flight == 0 {
                slot.ended = c.ended;
                slot.quiet = 0;
            } else {
                slot.quiet = slot.quiet.saturating_add(1);
                suspect |= slot.quiet >= quiet_limit && c.in_flight > 1;
            }
            true
        });
        if !suspect {
            return best;
        }
        // Rarely: that round is undone and played again without the
        // servers stuck with more than twice their share.
        let total: f64 = cands.iter().map(|c| c.weight).sum();
        rr[best].current += total;
        for c in cands {
            rr[c.index].current -= c.weight;
        }
        let least = cands
            .iter()
            .map(|c| f64::from(c.in_flight) / c.weight)
            .fold(f64::INFINITY, f64::min);
        round(&mut rr, cands, |c, slot| {
            slot.quiet < quiet_limit || f64::from(c.in_flight) <= 2.0 * c.weight * least + 1.0
        })
    }
}

/// One round of smooth weighted round robin over the candidates `take`
/// keeps (it sees each one's state first): the chosen one.
fn round(
    rr: &mut Vec<RrSlot>,
    cands: &[Candidate],
    mut take: impl FnMut(&Candidate, &mut RrSlot) -> bool,
) -> usize {
    let mut total = 0.0;
    let mut best: Option<(usize, f64)> = None;
    for c in cands {
        if c.index >= rr.len() {
            rr.resize(c.index + 1, RrSlot::default());
        }
        let slot = &mut rr[c.index];
        if !take(c, slot) {
            continue;
        }
        slot.current += c.weight;
        total += c.weight;
        if best.is_none_or(|(_, cur)| slot.current > cur) {
            best = Some((c.index, slot.current));
        }
    }
    let best = best.map_or(cands[0].index, |(i, _)| i);
    rr[best].current -= total;
    best
}

/// Rounds of picks (each as many picks as candidates) a busy server may
/// go without ending a request before round robin may skip it.
const QUIET_ROUNDS: u32 = 2;

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
                ended: 0,
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
    fn round_robin_does_not_pile_onto_a_stuck_server() {
        let b = Balancer::new(Balance::RoundRobin, 3);
        let mut c = cands(&[1.0, 1.0, 1.0]);
        // Server 0 answers nothing: the picks that land on it stay in
        // flight; the others' end at once.
        let pick = |c: &mut Vec<Candidate>| {
            let i = b.pick(c, None, &[]);
            if i == 0 {
                c[0].in_flight += 1;
            } else {
                c[i].ended += 1;
            }
            i
        };
        let picks: Vec<usize> = (0..40).map(|_| pick(&mut c)).collect();
        assert_eq!(c[0].in_flight, 2, "{picks:?}");
        assert!(picks[10..].iter().all(|&i| i != 0), "{picks:?}");
        // It answers again: back in the rotation.
        c[0].ended += 2;
        c[0].in_flight = 0;
        let picks: Vec<usize> = (0..6).map(|_| pick(&mut c)).collect();
        assert!(picks.contains(&0), "{picks:?}");
    }

    #[test]
    fn round_robin_keeps_exact_shares_for_busy_servers_that_answer() {
        // Weights 3:2:1 and uneven requests in flight, as at a moment of
        // real traffic: every server keeps ending requests, none is skipped.
        let b = Balancer::new(Balance::RoundRobin, 3);
        let mut c = cands(&[3.0, 2.0, 1.0]);
        let mut seq = Vec::new();
        for n in 0..60u32 {
            for (i, x) in c.iter_mut().enumerate() {
                x.in_flight = [4, 0, 2][i];
                x.ended = n;
            }
            seq.push(b.pick(&c, None, &[]));
        }
        let count = |i| seq.iter().filter(|&&x| x == i).count();
        assert_eq!((count(0), count(1), count(2)), (30, 20, 10));
        // An idle server in slow start (a tenth of its weight) takes its
        // share too.
        c[2].weight = 0.1;
        c[2].in_flight = 0;
        assert!((0..40).any(|_| b.pick(&c, None, &[]) == 2));
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
