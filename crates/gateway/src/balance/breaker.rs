//! Per-server circuit breaker: closed → open on the error ratio over a
//! sliding window (once `min_requests` were seen), open → half-open after
//! `open_for`; in half-open a bounded number of probes decide: one failure
//! re-opens, all succeeding closes.
//!
//! A probe always ends: with an outcome (`record`), cancelled when its
//! request went away without one (`cancel`, called by the in-flight guard
//! when it is dropped), or, as a last resort, when it is still out after
//! `half_open_timeout`: then its slot is given to a new probe.

use std::time::Duration;

use centinela_config::Breaker as Config;
use tokio::time::Instant;

const BUCKETS: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    Open {
        until: Instant,
    },
    HalfOpen {
        issued: u32,
        succeeded: u32,
        /// When the last probe was issued.
        since: Instant,
    },
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half-open",
        }
    }
}

/// Request and failure counts over a sliding window, in `BUCKETS` slices.
#[derive(Debug)]
struct Window {
    slice: Duration,
    /// (slice index since `origin`, requests, failures)
    buckets: [(u64, u32, u32); BUCKETS],
    origin: Instant,
}

impl Window {
    fn new(window: Duration, now: Instant) -> Self {
        Window {
            slice: (window / BUCKETS as u32).max(Duration::from_millis(1)),
            buckets: [(u64::MAX, 0, 0); BUCKETS],
            origin: now,
        }
    }

    fn index(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.origin).as_nanos() / self.slice.as_nanos()) as u64
    }

    fn record(&mut self, now: Instant, failed: bool) {
        let idx = self.index(now);
        let b = &mut self.buckets[(idx % BUCKETS as u64) as usize];
        if b.0 != idx {
            *b = (idx, 0, 0);
        }
        b.1 += 1;
        b.2 += failed as u32;
    }

    fn totals(&self, now: Instant) -> (u32, u32) {
        let idx = self.index(now);
        self.buckets
            .iter()
            .filter(|b| b.0 != u64::MAX && b.0 + (BUCKETS as u64) > idx && b.0 <= idx)
            .fold((0, 0), |(r, f), b| (r + b.1, f + b.2))
    }

    fn reset(&mut self) {
        self.buckets = [(u64::MAX, 0, 0); BUCKETS];
    }
}

#[derive(Debug)]
pub struct CircuitBreaker {
    state: State,
    window: Window,
    /// Counts half-open periods, so that a probe of an earlier one is never
    /// cancelled against a later one.
    epoch: u32,
    /// State changes so far, by the state entered: closed, open, half-open.
    transitions: [u64; 3],
}

/// What `admit` decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Admitted as a probe of the half-open period `epoch`.
    Probe(u32),
    No,
}

impl CircuitBreaker {
    pub fn new(cfg: &Config, now: Instant) -> Self {
        CircuitBreaker {
            state: State::Closed,
            window: Window::new(cfg.window, now),
            epoch: 0,
            transitions: [0; 3],
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// State changes so far, by the state entered: `closed`, `open`,
    /// `half_open`.
    pub fn transitions(&self) -> [(&'static str, u64); 3] {
        [
            ("closed", self.transitions[0]),
            ("open", self.transitions[1]),
            ("half_open", self.transitions[2]),
        ]
    }

    fn entered(&mut self) {
        let i = match self.state {
            State::Closed => 0,
            State::Open { .. } => 1,
            State::HalfOpen { .. } => 2,
        };
        self.transitions[i] += 1;
    }

    /// Would a request be admitted now? Does not take a probe slot, but moves
    /// open → half-open when `open_for` has passed.
    pub fn would_admit(&mut self, cfg: &Config, now: Instant) -> bool {
        if !cfg.enabled {
            return true;
        }
        self.tick(cfg, now);
        match self.state {
            State::Closed => true,
            State::Open { .. } => false,
            State::HalfOpen { issued, .. } => issued < cfg.half_open_requests,
        }
    }

    /// Admits a request, taking a probe slot when half-open.
    pub fn admit(&mut self, cfg: &Config, now: Instant) -> Admit {
        if !cfg.enabled {
            return Admit::Yes;
        }
        self.tick(cfg, now);
        match &mut self.state {
            State::Closed => Admit::Yes,
            State::Open { .. } => Admit::No,
            State::HalfOpen { issued, since, .. } => {
                if *issued < cfg.half_open_requests {
                    *issued += 1;
                    *since = now;
                    Admit::Probe(self.epoch)
                } else {
                    Admit::No
                }
            }
        }
    }

    /// A probe of period `epoch` ended without an outcome (its request was
    /// cancelled, or timed out before it was sent): its slot is free again.
    pub fn cancel(&mut self, epoch: u32) {
        if let State::HalfOpen {
            issued, succeeded, ..
        } = &mut self.state
        {
            if epoch == self.epoch && *issued > *succeeded {
                *issued -= 1;
            }
        }
    }

    fn tick(&mut self, cfg: &Config, now: Instant) {
        match &mut self.state {
            State::Open { until } if now >= *until => {
                self.epoch = self.epoch.wrapping_add(1);
                self.state = State::HalfOpen {
                    issued: 0,
                    succeeded: 0,
                    since: now,
                };
                self.entered();
            }
            // Probes still out after half_open_timeout are given up on.
            State::HalfOpen {
                issued,
                succeeded,
                since,
            } if *issued > *succeeded
                && now.saturating_duration_since(*since) >= cfg.half_open_timeout =>
            {
                *issued = *succeeded;
                *since = now;
            }
            _ => {}
        }
    }

    /// Records the outcome of an admitted request. Returns the state change,
    /// if any, as (old, new).
    pub fn record(&mut self, cfg: &Config, now: Instant, ok: bool) -> Option<(State, State)> {
        if !cfg.enabled {
            return None;
        }
        self.tick(cfg, now);
        let old = self.state;
        match &mut self.state {
            State::Closed => {
                self.window.record(now, !ok);
                let (requests, failures) = self.window.totals(now);
                if requests >= cfg.min_requests
                    && f64::from(failures) >= cfg.error_ratio * f64::from(requests)
                {
                    self.state = State::Open {
                        until: now + cfg.open_for,
                    };
                    self.window.reset();
                }
            }
            // Results of requests admitted before the circuit opened.
            State::Open { .. } => {}
            State::HalfOpen { succeeded, .. } => {
                if !ok {
                    self.state = State::Open {
                        until: now + cfg.open_for,
                    };
                } else {
                    *succeeded += 1;
                    if *succeeded >= cfg.half_open_requests {
                        self.state = State::Closed;
                        self.window.reset();
                    }
                }
            }
        }
        let changed = std::mem::discriminant(&old) != std::mem::discriminant(&self.state);
        if changed {
            self.entered();
        }
        changed.then_some((old, self.state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use centinela_config::default_breaker;

    fn cfg() -> Config {
        Config {
            min_requests: 10,
            half_open_requests: 3,
            ..default_breaker()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_error_ratio_then_half_opens_then_closes() {
        let cfg = cfg();
        let mut b = CircuitBreaker::new(&cfg, Instant::now());
        // 9 failures: below min_requests, stays closed.
        for _ in 0..9 {
            assert_eq!(b.record(&cfg, Instant::now(), false), None);
        }
        assert_eq!(b.state(), State::Closed);
        // The 10th request reaches min_requests with ratio 1.0 ≥ 0.5.
        let (old, new) = b.record(&cfg, Instant::now(), false).unwrap();
        assert_eq!((old.name(), new.name()), ("closed", "open"));
        assert_eq!(b.admit(&cfg, Instant::now()), Admit::No);

        tokio::time::advance(cfg.open_for - Duration::from_millis(1)).await;
        assert_eq!(b.admit(&cfg, Instant::now()), Admit::No);
        tokio::time::advance(Duration::from_millis(1)).await;
        // Half-open: exactly 3 probes admitted.
        for _ in 0..3 {
            assert_eq!(b.admit(&cfg, Instant::now()), Admit::Probe(1));
        }
        assert_eq!(b.admit(&cfg, Instant::now()), Admit::No);
        assert!(b.record(&cfg, Instant::now(), true).is_none());
        assert!(b.record(&cfg, Instant::now(), true).is_none());
        let (_, new) = b.record(&cfg, Instant::now(), true).unwrap();
        assert_eq!(new, State::Closed);
        assert_eq!(b.admit(&cfg, Instant::now()), Admit::Yes);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_ends_without_an_outcome_frees_its_slot() {
        let cfg = Config {
            half_open_requests: 1,
            ..cfg()
        };
        let mut b = CircuitBreaker::new(&cfg, Instant::now());
        for _ in 0..10 {
            b.record(&cfg, Instant::now(), false);
        }
        tokio::time::advance(cfg.open_for).await;
        let Admit::Probe(epoch) = b.admit(&cfg, Instant::now()) else {
            panic!("half-open admits a probe");
        };
        assert_eq!(b.admit(&cfg, Instant::now()), Admit::No);
        // Cancelled (say, an HTTP/2 RST_STREAM): another probe may go.
        b.cancel(epoch);
        assert!(matches!(b.admit(&cfg, Instant::now()), Admit::Probe(_)));
        // Never resolved at all: after half_open_timeout, freed anyway.
        assert_eq!(b.admit(&cfg, Instant::now()), Admit::No);
        tokio::time::advance(cfg.half_open_timeout).await;
        assert!(matches!(b.admit(&cfg, Instant::now()), Admit::Probe(_)));
        // A cancel from an earlier half-open period changes nothing.
        b.record(&cfg, Instant::now(), false);
        tokio::time::advance(cfg.open_for).await;
        assert!(matches!(b.admit(&cfg, Instant::now()), Admit::Probe(e) if e != epoch));
        b.cancel(epoch);
        assert_eq!(b.admit(&cfg, Instant::now()), Admit::No);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens() {
        let cfg = cfg();
        let mut b = CircuitBreaker::new(&cfg, Instant::now());
        for _ in 0..10 {
            b.record(&cfg, Instant::now(), false);
        }
        tokio::time::advance(cfg.open_for).await;
        assert_eq!(b.admit(&cfg, Instant::now()), Admit::Probe(1));
        let (old, new) = b.record(&cfg, Instant::now(), false).unwrap();
        assert_eq!((old.name(), new.name()), ("half-open", "open"));
        assert_eq!(b.admit(&cfg, Instant::now()), Admit::No);
    }

    #[tokio::test(start_paused = true)]
    async fn ratio_below_threshold_and_old_failures_expire() {
        let cfg = cfg();
        let mut b = CircuitBreaker::new(&cfg, Instant::now());
        // 40% errors: stays closed.
        for i in 0..50 {
            b.record(&cfg, Instant::now(), i % 5 < 3);
        }
        assert_eq!(b.state(), State::Closed);
        // Failures older than the window no longer count.
        for _ in 0..9 {
            b.record(&cfg, Instant::now(), false);
        }
        tokio::time::advance(cfg.window + Duration::from_secs(1)).await;
        for _ in 0..10 {
            b.record(&cfg, Instant::now(), true);
        }
        b.record(&cfg, Instant::now(), false);
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_breaker_admits_everything() {
        let cfg = Config {
            enabled: false,
            ..cfg()
        };
        let mut b = CircuitBreaker::new(&cfg, Instant::now());
        for _ in 0..100 {
            b.record(&cfg, Instant::now(), false);
        }
        assert_eq!(b.admit(&cfg, Instant::now()), Admit::Yes);
    }
}
