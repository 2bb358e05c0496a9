//! Figures: what the gateway and the supervisor report once a second to
//! the alert evaluator (and, later, to history). Counters are cumulative,
//! as in the metrics; the evaluator takes differences over windows.

use crate::metrics::HistogramSnapshot;

/// Everything observed at one moment.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    pub upstreams: Vec<UpstreamFigures>,
    pub services: Vec<ServiceFigures>,
    pub probes: Vec<ProbeFigures>,
    /// Added by the observer's SLO trackers (`crate::slo`).
    pub slos: Vec<SloFigures>,
    pub backups: Vec<BackupFigures>,
}

impl Figures {
    pub fn upstream(&self, name: &str) -> Option<&UpstreamFigures> {
        self.upstreams.iter().find(|u| u.name == name)
    }

    pub fn service(&self, name: &str) -> Option<&ServiceFigures> {
        self.services.iter().find(|s| s.name == name)
    }
}

#[derive(Clone, Debug)]
pub struct UpstreamFigures {
    pub name: String,
    /// Responses sent for this upstream, all listeners (cumulative).
    pub requests: u64,
    /// Of which 5xx, gateway errors included (cumulative).
    pub errors: u64,
    /// Time to the response head (cumulative).
    pub latency: HistogramSnapshot,
    /// The same, of the 5xx responses only.
    pub error_latency: HistogramSnapshot,
    pub servers: Vec<ServerFigures>,
    pub in_flight: u64,
    pub max_in_flight: u64,
    pub queued: u64,
}

impl UpstreamFigures {
    /// Servers that take traffic.
    pub fn healthy(&self) -> usize {
        self.servers.iter().filter(|s| s.state == "up").count()
    }
}

#[derive(Clone, Debug)]
pub struct ServerFigures {
    pub name: String,
    /// `up`, `down`, `ejected`, `breaker_open` or `draining`.
    pub state: &'static str,
}

#[derive(Clone, Debug, Default)]
pub struct ServiceFigures {
    pub name: String,
    /// Instances shown (every state).
    pub instances: u32,
    pub ready: u32,
    /// Instances crash-looping or given up on.
    pub crash_looping: u32,
    /// Restarts (cumulative).
    pub restarts: u64,
    pub cpu_seconds: f64,
    pub memory_bytes: u64,
}

/// A `[backup.NAME]`'s last results.
#[derive(Clone, Debug, Default)]
pub struct BackupFigures {
    pub name: String,
    /// Unix seconds of the last successful snapshot.
    pub last_success: Option<u64>,
    /// Its age counts from here: the last success, or when centinela
    /// started watching a backup that has none.
    pub age_from: u64,
    /// Whether the last restore test failed (`None`: none ran yet).
    pub restore_test_failed: Option<bool>,
    /// PostgreSQL: whether the last `wal-push` failed (`None`: none ran).
    pub wal_push_failing: Option<bool>,
}

/// The last result of an uptime probe.
#[derive(Clone, Debug, Default)]
pub struct ProbeFigures {
    pub name: String,
    pub up: bool,
    /// Seconds the last check took.
    pub duration: f64,
    /// Consecutive failures.
    pub failures: u32,
    /// Seconds until the certificate expires (HTTPS probes).
    pub tls_expiry: Option<f64>,
}

/// An SLO's requests over its window and over the windows its alert rules
/// read.
#[derive(Clone, Debug)]
pub struct SloFigures {
    pub name: String,
    pub upstream: String,
    /// Percent of good requests.
    pub objective: f64,
    pub min_requests: u64,
    pub window_ms: u64,
    /// Requests and bad requests over the SLO's window.
    pub total: u64,
    pub bad: f64,
    /// The share of the error budget left: 1 untouched, 0 spent, below 0
    /// overspent.
    pub budget_remaining: f64,
    pub windows: Vec<WindowFigures>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WindowFigures {
    pub ms: u64,
    pub total: u64,
    pub bad: f64,
}

impl SloFigures {
    pub fn window(&self, ms: u64) -> Option<&WindowFigures> {
        self.windows.iter().find(|w| w.ms == ms)
    }

    /// How fast the budget burns over the window of `ms`: 1 spends it
    /// exactly in the SLO's window. `None` without requests.
    pub fn burn(&self, ms: u64) -> Option<f64> {
        let w = self.window(ms)?;
        let budget = 1.0 - self.objective / 100.0;
        (w.total > 0).then(|| w.bad / w.total as f64 / budget)
    }
}

/// Something that reports figures: the gateway, the supervisor.
pub trait Source: Send + Sync {
    fn figures(&self, out: &mut Figures);
}
