//! One upstream server's live state: active health, passive outlier
//! ejection, circuit breaker, in-flight count and slow start. Every state
//! change is logged as a structured event naming the server, the old state,
//! the new state and the reason.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use centinela_config::{Breaker as BreakerCfg, Outlier as OutlierCfg};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::balance::breaker::{Admit, CircuitBreaker};
use crate::balance::health::HealthState;

/// How an attempt against a server ended, as far as its health is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    ConnectError,
    Reset,
    Timeout,
    Status5xx,
}

impl Outcome {
    pub fn is_failure(self) -> bool {
        self != Outcome::Success
    }

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::ConnectError => "connect error",
            Outcome::Reset => "connection reset",
            Outcome::Timeout => "timeout",
            Outcome::Status5xx => "5xx response",
        }
    }
}

#[derive(Debug)]
struct Inner {
    health: HealthState,
    consecutive_failures: u32,
    ejected_until: Option<Instant>,
    times_ejected: u32,
    /// Ejections ever (`centinela_upstream_ejections_total`).
    ejections: u64,
    last_ejection_end: Option<Instant>,
    breaker: CircuitBreaker,
    /// When the server last came back into rotation (slow start).
    returned_at: Option<Instant>,
}

#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    /// `addr` as a URI authority, built once for every request's URI.
    pub authority: http::uri::Authority,
    addr_label: Arc<str>,
    weight: AtomicU32,
    /// Requests in flight (low 32 bits) and requests ended so far (high 32
    /// bits, wrapping): one atomic add counts both as a request ends, and
    /// round robin tells a busy server that answers from a stuck one.
    in_flight: AtomicU64,
    /// Removed from its upstream: requests that started on an older
    /// snapshot must not pick it any more (it is draining).
    retired: AtomicBool,
    /// Idle keep-alive connections to this server.
    pub pool: Arc<crate::http::pool::Pool>,
    inner: Mutex<Inner>,
}

/// A snapshot of a server for the admin API.
#[derive(Clone, Debug)]
pub struct Status {
    pub addr: SocketAddr,
    pub weight: u32,
    pub healthy: bool,
    pub ejected: bool,
    pub breaker: &'static str,
    pub in_flight: u32,
    pub consecutive_failures: u32,
    /// Up by active health checks (or without them).
    pub checked_up: bool,
    pub ejections: u64,
    pub breaker_transitions: [(&'static str, u64); 3],
}

impl Status {
    /// The one state of `centinela_upstream_server_state` (draining is the
    /// gateway's to tell): `down` by health checks, else `ejected` by
    /// outlier detection, else `breaker_open` while the breaker is not
    /// closed, else `up`.
    pub fn state(&self) -> &'static str {
        if !self.checked_up {
            "down"
        } else if self.ejected {
            "ejected"
        } else if self.breaker != "closed" {
            "breaker_open"
        } else {
            "up"
        }
    }
}

impl Server {
    pub fn new(addr: SocketAddr, weight: u32, breaker: &BreakerCfg) -> Self {
        let label = addr.to_string();
        Server {
            addr,
            authority: http::uri::Authority::try_from(label.as_str())
                .expect("a socket address is a valid authority"),
            addr_label: label.into(),
            weight: AtomicU32::new(weight),
            in_flight: AtomicU64::new(0),
            retired: AtomicBool::new(false),
            pool: Arc::default(),
            inner: Mutex::new(Inner {
                health: HealthState::new(),
                consecutive_failures: 0,
                ejected_until: None,
                times_ejected: 0,
                ejections: 0,
                last_ejection_end: None,
                breaker: CircuitBreaker::new(breaker, Instant::now()),
                returned_at: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn label(&self) -> &Arc<str> {
        &self.addr_label
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub fn set_weight(&self, w: u32) {
        self.weight.store(w, Ordering::Relaxed);
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::SeqCst) as u32
    }

    /// Requests in flight, and how many have ended (wrapping).
    pub fn load(&self) -> (u32, u32) {
        let v = self.in_flight.load(Ordering::SeqCst);
        (v as u32, (v >> 32) as u32)
    }

    /// Marks the server as removed from its upstream. Together with
    /// [`Server::track`] (both sequentially consistent), either a request
    /// counted in flight sees the mark and goes elsewhere, or whoever reads
    /// [`Server::in_flight`] after marking sees the request: a drain that
    /// reads 0 after `retire` cannot miss a request about to be sent.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    /// Counts a request in flight until the guard is dropped. A half-open
    /// probe (`admit`) the guard still holds when dropped is cancelled.
    pub fn track(self: &Arc<Self>, admit: Admit) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight {
            server: self.clone(),
            probe: match admit {
                Admit::Probe(epoch) => Some(epoch),
                _ => None,
            },
        }
    }

    /// Healthy: up by active checks and not ejected. Ends expired ejections.
    pub fn is_healthy(&self, upstream: &str, now: Instant) -> bool {
        let mut g = self.lock();
        Self::expire_ejection(&mut g, upstream, &self.addr_label, now);
        g.health.up && g.ejected_until.is_none()
    }

    pub fn is_ejected(&self, upstream: &str, now: Instant) -> bool {
        let mut g = self.lock();
        Self::expire_ejection(&mut g, upstream, &self.addr_label, now);
        g.ejected_until.is_some()
    }

    fn expire_ejection(g: &mut Inner, upstream: &str, server: &str, now: Instant) {
        if let Some(until) = g.ejected_until {
            if now >= until {
                g.ejected_until = None;
                g.last_ejection_end = Some(now);
                g.consecutive_failures = 0;
                if g.health.up {
                    g.returned_at = Some(now);
                }
                info!(
                    upstream,
                    server,
                    old = "ejected",
                    new = "active",
                    reason = "ejection time elapsed",
                    "Server state changed"
                );
            }
        }
    }

    /// (healthy, breaker would admit) under one lock, for the picker.
    pub fn availability(&self, upstream: &str, cfg: &BreakerCfg, now: Instant) -> (bool, bool) {
        let mut g = self.lock();
        Self::expire_ejection(&mut g, upstream, &self.addr_label, now);
        let healthy = g.health.up && g.ejected_until.is_none();
        (healthy, g.breaker.would_admit(cfg, now))
    }

    /// Whether the breaker would admit a request now (no probe slot taken).
    pub fn breaker_allows(&self, cfg: &BreakerCfg, now: Instant) -> bool {
        self.lock().breaker.would_admit(cfg, now)
    }

    /// Takes admission from the breaker for a chosen server.
    pub fn admit(&self, upstream: &str, cfg: &BreakerCfg, now: Instant) -> Admit {
        let mut g = self.lock();
        let before = g.breaker.state();
        let admit = g.breaker.admit(cfg, now);
        let after = g.breaker.state();
        if before.name() != after.name() {
            info!(
                upstream,
                server = &*self.addr_label,
                old = before.name(),
                new = after.name(),
                reason = "open_for elapsed",
                "Circuit breaker state changed"
            );
        }
        admit
    }

    /// Slow-start factor in [0.1, 1.0]: a returning server's weight ramps up.
    pub fn ramp(&self, slow_start: Duration, now: Instant) -> f64 {
        if slow_start.is_zero() {
            return 1.0;
        }
        let g = self.lock();
        match g.returned_at {
            Some(t) => {
                let f = now.saturating_duration_since(t).as_secs_f64() / slow_start.as_secs_f64();
                f.clamp(0.1, 1.0)
            }
            None => 1.0,
        }
    }

    /// Records an attempt's outcome for the breaker and outlier detection.
    /// `ejected_in_group` / `group_size` enforce `max_ejection_percent`.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        upstream: &str,
        outcome: Outcome,
        breaker: &BreakerCfg,
        outlier: &OutlierCfg,
        ejected_in_group: usize,
        group_size: usize,
        now: Instant,
    ) {
        let mut g = self.lock();
        if let Some((old, new)) = g.breaker.record(breaker, now, !outcome.is_failure()) {
            let reason = if outcome.is_failure() {
                format!("error ratio reached ({})", outcome.name())
            } else {
                "half-open probes succeeded".to_string()
            };
            warn!(
                upstream,
                server = &*self.addr_label,
                old = old.name(),
                new = new.name(),
                reason,
                "Circuit breaker state changed"
            );
        }
        if !outcome.is_failure() {
            g.consecutive_failures = 0;
            return;
        }
        g.consecutive_failures = g.consecutive_failures.saturating_add(1);
        if outlier.consecutive_failures == 0
            || g.consecutive_failures < outlier.consecutive_failures
            || g.ejected_until.is_some()
        {
            return;
        }
        // Never eject more than max_ejection_percent of the group.
        if (ejected_in_group + 1) * 100 > group_size * outlier.max_ejection_percent as usize {
            return;
        }
        // The multiplier decays once the server stayed in for max_ejection.
        if g.last_ejection_end
            .is_some_and(|t| now.saturating_duration_since(t) > outlier.max_ejection)
        {
            g.times_ejected = 0;
        }
        g.times_ejected += 1;
        g.ejections += 1;
        let d = outlier
            .base_ejection
            .saturating_mul(g.times_ejected)
            .min(outlier.max_ejection);
        g.ejected_until = Some(now + d);
        let failures = g.consecutive_failures;
        warn!(
            upstream,
            server = &*self.addr_label,
            old = "active",
            new = "ejected",
            reason = %format_args!("{failures} consecutive failures, last: {}", outcome.name()),
            ejection_secs = d.as_secs_f64(),
            times_ejected = g.times_ejected,
            "Server state changed"
        );
    }

    /// Records an active health check.
    pub fn on_health_check(
        &self,
        upstream: &str,
        ok: bool,
        rise: u32,
        fall: u32,
        error: Option<&str>,
    ) {
        let mut g = self.lock();
        if g.health.on_check(ok, rise, fall) {
            let now = Instant::now();
            if g.health.up {
                if g.ejected_until.is_none() {
                    g.returned_at = Some(now);
                }
                g.consecutive_failures = 0;
                info!(upstream, server = &*self.addr_label, old = "down", new = "up", reason = %format_args!("{rise} consecutive health checks passed"), "Server state changed");
            } else {
                drop(g);
                // Requests waiting on a server that fails its checks end
                // now, not at their timeout (retried elsewhere when safe).
                let ended = self.pool.abort();
                warn!(upstream, server = &*self.addr_label, old = "up", new = "down", reason = %format_args!("{fall} consecutive health checks failed, last: {}", error.unwrap_or("?")), connections_ended = ended, "Server state changed");
            }
        }
    }

    pub fn status(&self, upstream: &str, breaker: &BreakerCfg) -> Status {
        let now = Instant::now();
        let healthy = self.is_healthy(upstream, now);
        let mut g = self.lock();
        let _ = g.breaker.would_admit(breaker, now);
        Status {
            addr: self.addr,
            weight: self.weight(),
            healthy,
            ejected: g.ejected_until.is_some(),
            breaker: g.breaker.state().name(),
            in_flight: self.in_flight(),
            consecutive_failures: g.consecutive_failures,
            checked_up: g.health.up,
            ejections: g.ejections,
            breaker_transitions: g.breaker.transitions(),
        }
    }
}

/// A request in flight to a server: decrements the server's count when
/// dropped, and cancels the half-open probe it was admitted as unless its
/// outcome was recorded ([`InFlight::resolved`]).
#[derive(Debug)]
pub struct InFlight {
    server: Arc<Server>,
    probe: Option<u32>,
}

impl InFlight {
    /// The attempt's outcome was recorded: a probe is no longer pending.
    pub fn resolved(&mut self) {
        self.probe = None;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // One more ended, one fewer in flight (never 0 here: no borrow).
        self.server
            .in_flight
            .fetch_add((1 << 32) - 1, Ordering::Relaxed);
        if let Some(epoch) = self.probe {
            self.server.lock().breaker.cancel(epoch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use centinela_config::default_breaker;

    #[tokio::test(start_paused = true)]
    async fn ejection_time_grows_with_each_ejection_up_to_the_cap() {
        let breaker = BreakerCfg {
            enabled: false,
            ..default_breaker()
        };
        let outlier = OutlierCfg {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
            max_ejection_percent: 100,
        };
        let s = Server::new("127.0.0.1:1".parse().unwrap(), 1, &breaker);
        let fail = |s: &Server| {
            for _ in 0..3 {
                s.record(
                    "u",
                    Outcome::ConnectError,
                    &breaker,
                    &outlier,
                    0,
                    2,
                    Instant::now(),
                );
            }
        };
        // 1st ejection: 10 s, 2nd: 20 s, 3rd: capped at 25 s.
        for expected in [10u64, 20, 25] {
            fail(&s);
            assert!(s.is_ejected("u", Instant::now()));
            tokio::time::advance(Duration::from_secs(expected) - Duration::from_millis(1)).await;
            assert!(
                s.is_ejected("u", Instant::now()),
                "ejection shorter than {expected}s"
            );
            tokio::time::advance(Duration::from_millis(1)).await;
            assert!(
                !s.is_ejected("u", Instant::now()),
                "ejection longer than {expected}s"
            );
        }
        // Fewer than 3 consecutive failures never eject; a success resets the count.
        s.record(
            "u",
            Outcome::Timeout,
            &breaker,
            &outlier,
            0,
            2,
            Instant::now(),
        );
        s.record(
            "u",
            Outcome::Status5xx,
            &breaker,
            &outlier,
            0,
            2,
            Instant::now(),
        );
        s.record(
            "u",
            Outcome::Success,
            &breaker,
            &outlier,
            0,
            2,
            Instant::now(),
        );
        s.record(
            "u",
            Outcome::Reset,
            &breaker,
            &outlier,
            0,
            2,
            Instant::now(),
        );
        assert!(!s.is_ejected("u", Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn slow_start_ramps_from_ten_percent_to_full_weight() {
        let breaker = default_breaker();
        let s = Server::new("127.0.0.1:1".parse().unwrap(), 1, &breaker);
        let ss = Duration::from_secs(10);
        assert_eq!(
            s.ramp(ss, Instant::now()),
            1.0,
            "a server that never left is at full weight"
        );
        s.on_health_check("u", false, 1, 1, Some("down"));
        s.on_health_check("u", true, 1, 1, None);
        assert!((s.ramp(ss, Instant::now()) - 0.1).abs() < 1e-9);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!((s.ramp(ss, Instant::now()) - 0.5).abs() < 1e-9);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(s.ramp(ss, Instant::now()), 1.0);
    }
}
