//! Alert evaluation: every rule, every second, from the same figures as
//! the metrics. A rule's alert goes `inactive → pending → firing →
//! resolved` (and back to pending when its condition holds again).
//!
//! The evaluator is pure: it is given the time (Unix milliseconds) and the
//! figures, and returns what changed. Persistence, silences and sending are
//! the caller's ([`crate::observer`]), so tests drive it with a synthetic
//! clock.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use centinela_config::alert::Signal;
use centinela_config::Alert;

use crate::figures::Figures;
use crate::state::AlertRow;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Inactive,
    Pending,
    Firing,
    Resolved,
}

pub const STATES: [State; 4] = [
    State::Inactive,
    State::Pending,
    State::Firing,
    State::Resolved,
];

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Inactive => "inactive",
            State::Pending => "pending",
            State::Firing => "firing",
            State::Resolved => "resolved",
        }
    }

    fn parse(s: &str) -> State {
        match s {
            "pending" => State::Pending,
            "firing" => State::Firing,
            "resolved" => State::Resolved,
            _ => State::Inactive,
        }
    }
}

/// One rule's alert.
#[derive(Clone, Debug, PartialEq)]
pub struct Status {
    pub state: State,
    /// When the condition started to hold (pending and firing).
    pub active_since: Option<u64>,
    pub fired_at: Option<u64>,
    pub resolved_at: Option<u64>,
    /// When a "firing" message was last handed to the notifiers.
    pub last_sent: Option<u64>,
    /// When the condition last held.
    pub last_true: Option<u64>,
    /// The signal's value at the last evaluation (`None`: no data).
    pub value: Option<f64>,
    /// Restored from the state file: not resolved or reset before the
    /// grace period after start has passed.
    restored: bool,
}

impl Status {
    fn new() -> Status {
        Status {
            state: State::Inactive,
            active_since: None,
            fired_at: None,
            resolved_at: None,
            last_sent: None,
            last_true: None,
            value: None,
            restored: false,
        }
    }

    pub fn row(&self, name: &str) -> AlertRow {
        AlertRow {
            name: name.to_string(),
            state: self.state.name().to_string(),
            active_since: self.active_since,
            fired_at: self.fired_at,
            resolved_at: self.resolved_at,
            last_sent: self.last_sent,
        }
    }
}

/// A change worth telling or saving.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub rule: usize,
    pub to: State,
}

/// After a restart, how long a restored pending or firing alert holds its
/// state when its condition does not hold: health checks need a few
/// rounds to find again what was down.
pub const RESTORE_GRACE_MS: u64 = 15_000;

pub struct Evaluator {
    rules: Vec<Alert>,
    status: Vec<Status>,
    /// One sample a second, as long as the longest window needs.
    ring: VecDeque<(u64, Arc<Figures>)>,
    keep_ms: u64,
    started_ms: u64,
}

impl Evaluator {
    /// `restored`: rows from the state file; those of rules that no longer
    /// exist are ignored.
    pub fn new(rules: Vec<Alert>, restored: &[AlertRow], now_ms: u64) -> Evaluator {
        let mut e = Evaluator {
            rules: Vec::new(),
            status: Vec::new(),
            ring: VecDeque::new(),
            keep_ms: 0,
            started_ms: now_ms,
        };
        let old: HashMap<String, Status> = restored
            .iter()
            .map(|r| {
                let st = State::parse(&r.state);
                let s = Status {
                    state: st,
                    active_since: r.active_since,
                    fired_at: r.fired_at,
                    resolved_at: r.resolved_at,
                    last_sent: r.last_sent,
                    last_true: matches!(st, State::Pending | State::Firing).then_some(now_ms),
                    value: None,
                    restored: matches!(st, State::Pending | State::Firing),
                };
                (r.name.clone(), s)
            })
            .collect();
        e.set_rules(rules, old);
        e
    }

    /// New rules (a reload): alerts of rules whose name stays keep their
    /// state.
    pub fn reload(&mut self, rules: Vec<Alert>) {
        let old: HashMap<String, Status> = self
            .rules
            .iter()
            .map(|r| r.name.clone())
            .zip(self.status.drain(..))
            .collect();
        self.set_rules(rules, old);
    }

    fn set_rules(&mut self, rules: Vec<Alert>, mut old: HashMap<String, Status>) {
        self.status = rules
            .iter()
            .map(|r| old.remove(&r.name).unwrap_or_else(Status::new))
            .collect();
        self.keep_ms = rules
            .iter()
            .filter(|r| r.signal.per_second())
            .map(|r| r.over.as_millis() as u64)
            .max()
            .unwrap_or(0);
        self.rules = rules;
    }

    pub fn rules(&self) -> &[Alert] {
        &self.rules
    }

    pub fn status(&self) -> &[Status] {
        &self.status
    }

    pub fn status_mut(&mut self, rule: usize) -> &mut Status {
        &mut self.status[rule]
    }

    /// Evaluates every rule at `now_ms` against `figures`.
    pub fn step(&mut self, now_ms: u64, figures: Arc<Figures>) -> Vec<Change> {
        self.ring.push_back((now_ms, figures.clone()));
        // Keep one sample at or before the start of the longest window.
        while self.ring.len() > 2 && self.ring[1].0 + self.keep_ms <= now_ms {
            self.ring.pop_front();
        }
        let in_grace = now_ms < self.started_ms + RESTORE_GRACE_MS;
        let mut changes = Vec::new();
        for i in 0..self.rules.len() {
            let rule = &self.rules[i];
            let value = self.value(rule, &figures, now_ms);
            let holds = value.is_some_and(|v| rule.threshold.holds(v));
            let for_ms = rule.for_.as_millis() as u64;
            let keep_ms = rule.keep_firing_for.as_millis() as u64;
            let s = &mut self.status[i];
            s.value = value;
            if !in_grace {
                s.restored = false;
            }
            let before = s.state;
            if holds {
                // Restored state confirmed: it resolves normally from now.
                s.restored = false;
                s.last_true = Some(now_ms);
                match s.state {
                    State::Inactive | State::Resolved => {
                        s.active_since = Some(now_ms);
                        s.fired_at = None;
                        s.resolved_at = None;
                        s.state = State::Pending;
                    }
                    State::Pending | State::Firing => {}
                }
                if s.state == State::Pending && now_ms >= s.active_since.unwrap_or(now_ms) + for_ms
                {
                    s.state = State::Firing;
                    s.fired_at = Some(now_ms);
                }
            } else if !s.restored {
                match s.state {
                    State::Pending => {
                        s.state = State::Inactive;
                        s.active_since = None;
                    }
                    State::Firing if now_ms >= s.last_true.unwrap_or(0) + keep_ms => {
                        s.state = State::Resolved;
                        s.resolved_at = Some(now_ms);
                        s.active_since = None;
                    }
                    _ => {}
                }
            }
            if s.state != before {
                changes.push(Change {
                    rule: i,
                    to: s.state,
                });
            }
        }
        changes
    }

    /// The sample to take differences from for a window of `over_ms`: the
    /// newest one at or before `now - over`, else the oldest there is; with
    /// its time.
    fn base(&self, now_ms: u64, over_ms: u64) -> Option<(u64, &Figures)> {
        let start = now_ms.saturating_sub(over_ms);
        let mut best = self.ring.front()?;
        for s in &self.ring {
            if s.0 <= start {
                best = s;
            } else {
                break;
            }
        }
        (best.0 < now_ms).then_some((best.0, &*best.1))
    }

    fn value(&self, rule: &Alert, now: &Figures, now_ms: u64) -> Option<f64> {
        let over_ms = rule.over.as_millis() as u64;
        match rule.signal {
            Signal::HealthyServers => now.upstream(&rule.target).map(|u| u.healthy() as f64),
            Signal::RestoreTestFailed => now
                .backups
                .iter()
                .find(|b| b.name == rule.target)
                .and_then(|b| b.restore_test_failed)
                .map(|f| f64::from(u8::from(f))),
            Signal::WalPushFailing => now
                .backups
                .iter()
                .find(|b| b.name == rule.target)
                .and_then(|b| b.wal_push_failing)
                .map(|f| f64::from(u8::from(f))),
            Signal::BackupAge => now
                .backups
                .iter()
                .find(|b| b.name == rule.target)
                .map(|b| (now_ms / 1000).saturating_sub(b.age_from) as f64 / 3600.0),
            Signal::ServerDown => now
                .upstream(&rule.target)
                .map(|u| (u.servers.len() - u.healthy()) as f64),
            Signal::ErrorRatio | Signal::RequestRate | Signal::LatencyP99 => {
                let cur = now.upstream(&rule.target)?;
                let (base_ms, base) = self.base(now_ms, over_ms)?;
                let base = base.upstream(&rule.target)?;
                let requests = cur.requests.saturating_sub(base.requests);
                match rule.signal {
                    Signal::ErrorRatio => (requests > 0)
                        .then(|| cur.errors.saturating_sub(base.errors) as f64 / requests as f64),
                    Signal::RequestRate => {
                        let secs = now_ms.saturating_sub(base_ms) as f64 / 1000.0;
                        (secs > 0.0).then(|| requests as f64 / secs)
                    }
                    _ => cur.latency.since(&base.latency).quantile(0.99),
                }
            }
            Signal::InstancesReady => now.service(&rule.target).map(|s| f64::from(s.ready)),
            Signal::CrashLooping => now
                .service(&rule.target)
                .map(|s| f64::from(s.crash_looping)),
            Signal::Restarts => {
                let cur = now.service(&rule.target)?;
                let base = self.base(now_ms, over_ms)?.1.service(&rule.target)?;
                Some(cur.restarts.saturating_sub(base.restarts) as f64)
            }
            Signal::ProbeFailed => now
                .probes
                .iter()
                .find(|p| p.name == rule.target)
                .map(|p| f64::from(p.failures)),
            Signal::CertExpiryDays => now
                .probes
                .iter()
                .find(|p| p.name == rule.target)
                .and_then(|p| p.tls_expiry)
                .map(|s| s / 86_400.0),
            Signal::SloBurn => {
                // Over `over`, and over `short` when set; no value from
                // fewer than min_requests in the shorter window.
                let s = now.slos.iter().find(|s| s.name == rule.target)?;
                let short_ms = rule.short.map(|d| d.as_millis() as u64);
                let guard = s.window(short_ms.unwrap_or(over_ms))?;
                if guard.total < s.min_requests {
                    return None;
                }
                let long = s.burn(over_ms)?;
                match short_ms {
                    Some(ms) => Some(long.min(s.burn(ms)?)),
                    None => Some(long),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use centinela_config::alert::{Severity, Threshold};

    use super::*;
    use crate::figures::{ServerFigures, ServiceFigures, UpstreamFigures};
    use crate::metrics::{Histogram, LATENCY_BOUNDS};

    fn rule(signal: Signal, threshold: Threshold, for_s: u64) -> Alert {
        Alert {
            name: "r".into(),
            signal,
            target: "api".into(),
            threshold,
            for_: Duration::from_secs(for_s),
            over: Duration::from_secs(60),
            short: None,
            keep_firing_for: Duration::ZERO,
            severity: Severity::Page,
            notify: vec![],
            builtin: false,
        }
    }

    fn upstream(up: usize, down: usize, requests: u64, errors: u64) -> Arc<Figures> {
        let mut servers = Vec::new();
        for i in 0..up + down {
            servers.push(ServerFigures {
                name: format!("s{i}"),
                state: if i < up { "up" } else { "down" },
            });
        }
        Arc::new(Figures {
            upstreams: vec![UpstreamFigures {
                name: "api".into(),
                requests,
                errors,
                latency: Histogram::new(LATENCY_BOUNDS).snapshot(),
                error_latency: Histogram::new(LATENCY_BOUNDS).snapshot(),
                servers,
                in_flight: 0,
                max_in_flight: 0,
                queued: 0,
            }],
            ..Figures::default()
        })
    }

    #[test]
    fn pending_then_firing_after_for_then_resolved() {
        let r = rule(Signal::HealthyServers, Threshold::Below(1.0), 5);
        let mut e = Evaluator::new(vec![r], &[], 0);
        let t0 = 100_000;
        assert!(e.step(t0, upstream(2, 0, 0, 0)).is_empty());
        let ch = e.step(t0 + 1000, upstream(0, 2, 0, 0));
        assert_eq!(
            ch,
            vec![Change {
                rule: 0,
                to: State::Pending
            }]
        );
        for s in 2..6 {
            assert!(
                e.step(t0 + s * 1000, upstream(0, 2, 0, 0)).is_empty(),
                "{s}"
            );
        }
        let ch = e.step(t0 + 6000, upstream(0, 2, 0, 0));
        assert_eq!(
            ch,
            vec![Change {
                rule: 0,
                to: State::Firing
            }]
        );
        assert_eq!(e.status()[0].fired_at, Some(t0 + 6000));
        let ch = e.step(t0 + 7000, upstream(1, 1, 0, 0));
        assert_eq!(
            ch,
            vec![Change {
                rule: 0,
                to: State::Resolved
            }]
        );
        // A blip shorter than `for` never fires.
        e.step(t0 + 8000, upstream(0, 2, 0, 0));
        let ch = e.step(t0 + 9000, upstream(2, 0, 0, 0));
        assert_eq!(
            ch,
            vec![Change {
                rule: 0,
                to: State::Inactive
            }]
        );
    }

    #[test]
    fn keep_firing_for_rides_out_flapping() {
        let mut r = rule(Signal::ServerDown, Threshold::Above(0.0), 0);
        r.keep_firing_for = Duration::from_secs(3);
        let mut e = Evaluator::new(vec![r], &[], 0);
        let t0 = 100_000;
        let ch = e.step(t0, upstream(1, 1, 0, 0));
        assert_eq!(ch.last().unwrap().to, State::Firing);
        assert!(e.step(t0 + 1000, upstream(2, 0, 0, 0)).is_empty());
        assert!(e.step(t0 + 2000, upstream(1, 1, 0, 0)).is_empty());
        assert!(e.step(t0 + 3000, upstream(2, 0, 0, 0)).is_empty());
        assert!(e.step(t0 + 4000, upstream(2, 0, 0, 0)).is_empty());
        let ch = e.step(t0 + 5000, upstream(2, 0, 0, 0));
        assert_eq!(
            ch,
            vec![Change {
                rule: 0,
                to: State::Resolved
            }]
        );
    }

    #[test]
    fn error_ratio_is_taken_over_the_window() {
        let mut r = rule(Signal::ErrorRatio, Threshold::Above(0.1), 0);
        r.over = Duration::from_secs(10);
        let mut e = Evaluator::new(vec![r], &[], 0);
        let t0 = 100_000;
        // 1000 requests with 500 errors in the first second, then 100
        // good ones a second.
        e.step(t0, upstream(1, 0, 0, 0));
        let mut req = 1000;
        let mut last = e.step(t0 + 1000, upstream(1, 0, req, 500));
        assert_eq!(e.status()[0].state, State::Firing);
        for s in 2..=20 {
            req += 100;
            last = e.step(t0 + s * 1000, upstream(1, 0, req, 500));
            if s <= 10 {
                // The window still starts before the errors.
                assert_eq!(e.status()[0].state, State::Firing, "{s}");
            }
        }
        assert!(last.is_empty());
        assert_eq!(e.status()[0].state, State::Resolved);
        assert_eq!(e.status()[0].value, Some(0.0));
        // No traffic: no data, not an alert.
        let mut e = Evaluator::new(
            vec![rule(Signal::ErrorRatio, Threshold::Below(0.5), 0)],
            &[],
            0,
        );
        e.step(t0, upstream(1, 0, 5, 5));
        e.step(t0 + 1000, upstream(1, 0, 5, 5));
        assert_eq!(e.status()[0].value, None);
        assert_eq!(e.status()[0].state, State::Inactive);
    }

    #[test]
    fn restarts_count_within_the_window() {
        let mut r = rule(Signal::Restarts, Threshold::Above(2.0), 0);
        r.over = Duration::from_secs(5);
        let mut e = Evaluator::new(vec![r], &[], 0);
        let svc = |restarts| {
            Arc::new(Figures {
                upstreams: vec![],
                services: vec![ServiceFigures {
                    name: "api".into(),
                    restarts,
                    ..Default::default()
                }],
                ..Figures::default()
            })
        };
        let t0 = 100_000;
        e.step(t0, svc(10));
        e.step(t0 + 1000, svc(12));
        assert_eq!(e.status()[0].state, State::Inactive);
        e.step(t0 + 2000, svc(13));
        assert_eq!(e.status()[0].state, State::Firing);
        for s in 3..=6 {
            e.step(t0 + s * 1000, svc(13));
        }
        assert_eq!(e.status()[0].value, Some(1.0));
        assert_eq!(e.status()[0].state, State::Resolved);
    }

    #[test]
    fn restored_state_keeps_its_timer_and_rides_out_the_grace() {
        let r = rule(Signal::HealthyServers, Threshold::Below(1.0), 10);
        let t0 = 1_000_000;
        let rows = vec![AlertRow {
            name: "r".into(),
            state: "pending".into(),
            active_since: Some(t0 - 8000),
            fired_at: None,
            resolved_at: None,
            last_sent: None,
        }];
        let mut e = Evaluator::new(vec![r.clone()], &rows, t0);
        // Health checks have not found the servers down yet: held.
        assert!(e.step(t0, upstream(2, 0, 0, 0)).is_empty());
        assert_eq!(e.status()[0].state, State::Pending);
        // Found down 2 s later: 10 s after it first held, it fires.
        assert!(e.step(t0 + 1000, upstream(0, 2, 0, 0)).is_empty());
        let ch = e.step(t0 + 2000, upstream(0, 2, 0, 0));
        assert_eq!(
            ch,
            vec![Change {
                rule: 0,
                to: State::Firing
            }]
        );
        // A firing alert restored keeps its last_sent, so it is not sent again.
        let rows = vec![e.status()[0].row("r")];
        let e2 = Evaluator::new(vec![r], &rows, t0 + 5000);
        assert_eq!(e2.status()[0].state, State::Firing);
        assert_eq!(e2.status()[0].fired_at, Some(t0 + 2000));
    }
}
