//! An upstream group: its servers, balancer, retry budget, concurrency
//! limiter and connection pool. `pick` applies health, ejection, breakers,
//! panic mode and the balancing policy.

use std::cell::RefCell;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use centinela_config::Upstream as Config;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::balance::breaker::Admit;
use crate::balance::budget::RetryBudget;
use crate::balance::limit::Limiter;
use crate::balance::policy::{Balancer, Candidate};
use crate::balance::server::{Outcome, Server};
use crate::error::ProxyError;

/// Per-server state and candidates of one pick.
type Scratch = (Vec<(usize, bool, bool)>, Vec<Candidate>);

#[derive(Debug)]
pub struct Group {
    pub name: Arc<str>,
    pub cfg: Config,
    pub servers: Vec<Arc<Server>>,
    server_keys: Vec<u64>,
    balancer: Balancer,
    pub budget: Arc<RetryBudget>,
    pub limiter: Limiter,
    in_panic: AtomicBool,
}

impl Group {
    pub fn new(cfg: Config, servers: Vec<Arc<Server>>, budget: Arc<RetryBudget>) -> Self {
        let server_keys = servers
            .iter()
            .map(|s| {
                let mut h = DefaultHasher::new();
                s.addr.hash(&mut h);
                h.finish()
            })
            .collect();
        Group {
            name: cfg.name.as_str().into(),
            balancer: Balancer::new(cfg.balance, servers.len()),
            limiter: Limiter::new(
                cfg.limits.max_in_flight,
                cfg.limits.queue,
                cfg.limits.queue_timeout,
            ),
            servers,
            server_keys,
            budget,
            cfg,
            in_panic: AtomicBool::new(false),
        }
    }

    /// Number of servers currently ejected by outlier detection.
    fn ejected_count(&self, now: Instant) -> usize {
        self.servers
            .iter()
            .filter(|s| s.is_ejected(&self.name, now))
            .count()
    }

    /// True when at least one server is healthy and its breaker admits.
    pub fn has_available(&self) -> bool {
        let now = Instant::now();
        self.servers
            .iter()
            .any(|s| s.is_healthy(&self.name, now) && s.breaker_allows(&self.cfg.breaker, now))
    }

    /// Chooses a server, preferring ones not in `tried`; with it, how its
    /// breaker admitted the request (a half-open probe must be tracked).
    pub fn pick(&self, tried: &[usize], key: Option<u64>) -> Result<(usize, Admit), ProxyError> {
        thread_local! {
            /// Reused by every pick on this thread: no allocation per request.
            static SCRATCH: RefCell<Scratch> = const { RefCell::new((Vec::new(), Vec::new())) };
        }
        SCRATCH.with(|s| match s.try_borrow_mut() {
            Ok(mut s) => {
                let (state, cands) = &mut *s;
                self.pick_with(tried, key, state, cands)
            }
            Err(_) => self.pick_with(tried, key, &mut Vec::new(), &mut Vec::new()),
        })
    }

    fn pick_with(
        &self,
        tried: &[usize],
        key: Option<u64>,
        state: &mut Vec<(usize, bool, bool)>,
        cands: &mut Vec<Candidate>,
    ) -> Result<(usize, Admit), ProxyError> {
        let now = Instant::now();
        let n = self.servers.len();
        // One pass, one lock per server: (index, healthy, breaker admits).
        state.clear();
        cands.clear();
        let mut any_healthy = false;
        for (i, s) in self.servers.iter().enumerate() {
            if s.is_retired() {
                continue;
            }
            let (healthy, admits) = s.availability(&self.name, &self.cfg.breaker, now);
            any_healthy |= healthy;
            state.push((i, healthy, admits));
        }
        let panic = !any_healthy;
        if panic != self.in_panic.swap(panic, Ordering::Relaxed) {
            if panic {
                warn!(
                    upstream = &*self.name,
                    servers = n,
                    "Every server is unhealthy: panic mode, trying all of them"
                );
            } else {
                info!(
                    upstream = &*self.name,
                    "A server is healthy again: leaving panic mode"
                );
            }
        }
        let usable = |&(_, healthy, admits): &(usize, bool, bool)| admits && (panic || healthy);
        cands.extend(
            state
                .iter()
                .filter(|s| usable(s) && !tried.contains(&s.0))
                .map(|s| self.candidate(s.0, now)),
        );
        if cands.is_empty() {
            // Every usable server was tried already: allow them again.
            cands.extend(
                state
                    .iter()
                    .filter(|s| usable(s))
                    .map(|s| self.candidate(s.0, now)),
            );
        }
        while !cands.is_empty() {
            let idx = self.balancer.pick(cands, key, &self.server_keys);
            let admit = self.servers[idx].admit(&self.name, &self.cfg.breaker, now);
            if admit != Admit::No {
                return Ok((idx, admit));
            }
            // Lost the last half-open probe slot to another request.
            cands.retain(|c| c.index != idx);
        }
        if state
            .iter()
            .any(|&(_, healthy, admits)| !admits && (panic || healthy))
        {
            Err(ProxyError::CircuitOpen)
        } else {
            Err(ProxyError::NoHealthyServer)
        }
    }

    fn candidate(&self, i: usize, now: Instant) -> Candidate {
        let s = &self.servers[i];
        let (in_flight, ended) = s.load();
        Candidate {
            index: i,
            weight: f64::from(s.weight()) * s.ramp(self.cfg.slow_start, now),
            in_flight,
            ended,
        }
    }

    pub fn record(&self, idx: usize, outcome: Outcome) {
        let now = Instant::now();
        let ejected = if outcome.is_failure() {
            self.ejected_count(now)
        } else {
            0
        };
        self.servers[idx].record(
            &self.name,
            outcome,
            &self.cfg.breaker,
            &self.cfg.outlier,
            ejected,
            self.servers.len(),
            now,
        );
    }
}
