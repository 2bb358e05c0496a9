//! `[[alert]]` rules and `[alerting]`: what is watched, when it fires, who
//! is told. The built-in rules of `[alerting] defaults` are made here too,
//! so that `check` can list them.

use std::ops::Range;
use std::time::Duration;

use toml::de::DeValue;

use crate::diag::Sink;
use crate::read::{array_items, missing, type_name, Obj};
use crate::units::parse_duration;

/// What a rule watches. Each reads one figure of one target (see
/// [`Signal::target_kind`]) every second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// 5xx responses (gateway errors included) ÷ responses, over `over`.
    ErrorRatio,
    /// The 99th percentile of response time over `over`, in seconds.
    LatencyP99,
    /// Responses per second over `over`.
    RequestRate,
    /// Servers of the upstream that take traffic.
    HealthyServers,
    /// Servers of the upstream that do not take traffic (down, ejected,
    /// breaker open).
    ServerDown,
    /// Ready instances of the service.
    InstancesReady,
    /// Restarts of the service's instances within `over`.
    Restarts,
    /// Instances of the service that are crash-looping or gave up.
    CrashLooping,
    /// Consecutive failures of the probe.
    ProbeFailed,
    /// Days until the probe's certificate expires.
    CertExpiryDays,
    /// The SLO's error budget burn rate.
    SloBurn,
    /// Hours since the backup's last successful snapshot (or since
    /// centinela started, when it has none).
    BackupAge,
    /// 1 when the backup's last restore test failed, 0 when it passed.
    RestoreTestFailed,
    WalPushFailing,
}

/// What a signal is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    Upstream,
    Service,
    Probe,
    Slo,
    Backup,
}

impl TargetKind {
    pub fn key(self) -> &'static str {
        match self {
            TargetKind::Upstream => "upstream",
            TargetKind::Service => "service",
            TargetKind::Probe => "probe",
            TargetKind::Slo => "slo",
            TargetKind::Backup => "backup",
        }
    }
}

const SIGNALS: [(&str, Signal); 14] = [
    ("error_ratio", Signal::ErrorRatio),
    ("latency_p99", Signal::LatencyP99),
    ("request_rate", Signal::RequestRate),
    ("healthy_servers", Signal::HealthyServers),
    ("server_down", Signal::ServerDown),
    ("instances_ready", Signal::InstancesReady),
    ("restarts", Signal::Restarts),
    ("crash_looping", Signal::CrashLooping),
    ("probe_failed", Signal::ProbeFailed),
    ("cert_expiry_days", Signal::CertExpiryDays),
    ("slo_burn", Signal::SloBurn),
    ("backup_age", Signal::BackupAge),
    ("restore_test_failed", Signal::RestoreTestFailed),
    ("wal_push_failing", Signal::WalPushFailing),
];

impl Signal {
    pub fn name(self) -> &'static str {
        SIGNALS
            .iter()
            .find(|(_, s)| *s == self)
            .map_or("", |(n, _)| n)
    }

    pub fn target_kind(self) -> TargetKind {
        match self {
            Signal::ErrorRatio
            | Signal::LatencyP99
            | Signal::RequestRate
            | Signal::HealthyServers
            | Signal::ServerDown => TargetKind::Upstream,
            Signal::InstancesReady | Signal::Restarts | Signal::CrashLooping => TargetKind::Service,
            Signal::ProbeFailed | Signal::CertExpiryDays => TargetKind::Probe,
            Signal::SloBurn => TargetKind::Slo,
            Signal::BackupAge | Signal::RestoreTestFailed | Signal::WalPushFailing => {
                TargetKind::Backup
            }
        }
    }

    /// Signals computed over a window (`over`).
    pub fn windowed(self) -> bool {
        matches!(
            self,
            Signal::ErrorRatio
                | Signal::LatencyP99
                | Signal::RequestRate
                | Signal::Restarts
                | Signal::SloBurn
        )
    }

    /// Windowed signals the evaluator computes from its own per-second
    /// figures (at most [`MAX_OVER`]); an SLO keeps its own counts.
    pub fn per_second(self) -> bool {
        self.windowed() && self != Signal::SloBurn
    }

    /// The threshold when the rule gives none: signals that count failing
    /// things fire from the first one. `None`: `below` or `above` is required.
    fn default_threshold(self) -> Option<Threshold> {
        match self {
            Signal::ServerDown
            | Signal::CrashLooping
            | Signal::ProbeFailed
            | Signal::RestoreTestFailed
            | Signal::WalPushFailing => Some(Threshold::Above(0.0)),
            Signal::SloBurn => Some(Threshold::Above(1.0)),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold {
    /// Fires while the value is below this.
    Below(f64),
    /// Fires while the value is above this.
    Above(f64),
}

/// At most six decimals, without trailing zeros: `2`, `0.05`, `0.001667`.
fn short(v: f64) -> String {
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

/// `below 1`, `above 0.05`: as written in the file.
impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Threshold::Below(v) => write!(f, "below {}", short(*v)),
            Threshold::Above(v) => write!(f, "above {}", short(*v)),
        }
    }
}

impl Threshold {
    pub fn holds(self, value: f64) -> bool {
        match self {
            Threshold::Below(t) => value < t,
            Threshold::Above(t) => value > t,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Page,
    Ticket,
    Info,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Page => "page",
            Severity::Ticket => "ticket",
            Severity::Info => "info",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    pub name: String,
    pub signal: Signal,
    /// The name of the upstream, service, probe or SLO (`signal.target_kind()`).
    pub target: String,
    pub threshold: Threshold,
    /// How long the condition must hold before the alert fires.
    pub for_: Duration,
    /// The window of windowed signals.
    pub over: Duration,
    /// `slo_burn` only: a second, shorter window that must burn too (the
    /// multiwindow rules of the SRE workbook).
    pub short: Option<Duration>,
    /// How long a firing alert keeps firing after its condition stops.
    pub keep_firing_for: Duration,
    pub severity: Severity,
    /// Notifier names; empty: every notifier.
    pub notify: Vec<String>,
    /// Made by `[alerting] defaults`, not written in the file.
    pub builtin: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Alerting {
    /// The built-in rules apply (when at least one notifier exists).
    pub defaults: bool,
    /// Alerts that start within this long of each other go out together.
    pub group_wait: Duration,
    /// A firing alert is sent again this often.
    pub repeat_interval: Duration,
    pub send_resolved: bool,
}

impl Default for Alerting {
    fn default() -> Self {
        Alerting {
            defaults: true,
            group_wait: Duration::from_secs(2),
            repeat_interval: Duration::from_secs(4 * 3600),
            send_resolved: true,
        }
    }
}

/// The longest `over` a rule may use: the evaluator keeps one hour of
/// per-second figures.
pub const MAX_OVER: Duration = Duration::from_secs(3600);

pub(crate) fn alerting(sink: &mut Sink<'_>, top: &mut Obj<'_, '_>) -> Alerting {
    let d = Alerting::default();
    let Some(mut a) = top.sub(sink, "alerting") else {
        return d;
    };
    let out = Alerting {
        defaults: a.bool(sink, "defaults", d.defaults),
        group_wait: a.duration(sink, "group_wait", d.group_wait),
        repeat_interval: a.duration_min(
            sink,
            "repeat_interval",
            d.repeat_interval,
            Duration::from_secs(1),
        ),
        send_resolved: a.bool(sink, "send_resolved", d.send_resolved),
    };
    a.finish(sink);
    out
}

/// Where a rule's references were written, for the cross-checks.
pub(crate) struct AlertRef {
    pub(crate) path: String,
    pub(crate) span: Range<usize>,
    pub(crate) target_span: Option<Range<usize>>,
    pub(crate) notify_spans: Vec<Range<usize>>,
}

pub(crate) fn alerts(sink: &mut Sink<'_>, top: &mut Obj<'_, '_>) -> (Vec<Alert>, Vec<AlertRef>) {
    let mut out = Vec::new();
    let mut refs = Vec::new();
    let Some(v) = top.get("alert") else {
        return (out, refs);
    };
    for (i, item) in array_items(sink, v, "alert") {
        let path = format!("alert[{i}]");
        let Some(mut o) = Obj::new(sink, item, &path) else {
            continue;
        };
        let name = o.item_name(sink, &item.span(), "alert", |n| {
            out.iter().any(|a: &Alert| a.name == n)
        });
        let signal = match o.str(sink, "signal") {
            Some((s, span)) => match SIGNALS.iter().find(|(n, _)| *n == s) {
                Some((_, sig)) => Some(*sig),
                None => {
                    let names: Vec<&str> = SIGNALS.iter().map(|(n, _)| *n).collect();
                    sink.error(
                        &span,
                        &o.child_path("signal"),
                        format!(
                            "unknown signal {s:?}; expected one of: {}",
                            names.join(", ")
                        ),
                    );
                    None
                }
            },
            None => {
                missing(sink, &item.span(), &path, "signal");
                None
            }
        };
        // The target: exactly the key the signal needs.
        let mut targets = Vec::new();
        for kind in [
            TargetKind::Upstream,
            TargetKind::Service,
            TargetKind::Probe,
            TargetKind::Slo,
            TargetKind::Backup,
        ] {
            if let Some((t, span)) = o.str(sink, kind.key()) {
                targets.push((kind, t, span));
            }
        }
        let mut target = None;
        if let Some(sig) = signal {
            let want = sig.target_kind();
            for (kind, t, span) in &targets {
                if *kind == want {
                    target = Some((t.clone(), span.clone()));
                } else {
                    sink.error(
                        span,
                        &o.child_path(kind.key()),
                        format!(
                            "signal {:?} watches a {}: write `{} = \"…\"`, not `{}`",
                            sig.name(),
                            want.key(),
                            want.key(),
                            kind.key()
                        ),
                    );
                }
            }
            if target.is_none() && !targets.iter().any(|(k, _, _)| *k != want) {
                sink.error(
                    &item.span(),
                    &path,
                    format!(
                        "missing required key `{}`: signal {:?} watches a {}",
                        want.key(),
                        sig.name(),
                        want.key()
                    ),
                );
            }
        }
        let below = threshold_value(sink, &mut o, "below", signal);
        let above = threshold_value(sink, &mut o, "above", signal);
        let threshold = match (below, above) {
            (Some(_), Some((_, span))) => {
                sink.error(
                    &span,
                    &o.child_path("above"),
                    "write either `below` or `above`, not both",
                );
                None
            }
            (Some((b, _)), None) => Some(Threshold::Below(b)),
            (None, Some((a, _))) => Some(Threshold::Above(a)),
            (None, None) => {
                let d = signal.and_then(|s| s.default_threshold());
                if d.is_none() {
                    if let Some(s) = signal {
                        sink.error(
                            &item.span(),
                            &path,
                            format!(
                                "signal {:?} needs a threshold: `below = …` or `above = …`",
                                s.name()
                            ),
                        );
                    }
                }
                d
            }
        };
        let for_ = o.duration(sink, "for", Duration::ZERO);
        let over = match o.str(sink, "over") {
            Some((s, span)) => match parse_duration(&s) {
                Ok(d) if signal.is_some_and(|s| !s.windowed()) => {
                    sink.error(
                        &span,
                        &o.child_path("over"),
                        "`over` applies only to error_ratio, latency_p99, request_rate, restarts and slo_burn",
                    );
                    d
                }
                Ok(d) if signal == Some(Signal::SloBurn) => {
                    if d < Duration::from_secs(60) || d > crate::slo::MAX_WINDOW {
                        sink.error(&span, &o.child_path("over"), "must be between 1m and 90d");
                    }
                    d
                }
                Ok(d) if d < Duration::from_secs(1) || d > MAX_OVER => {
                    sink.error(&span, &o.child_path("over"), "must be between 1s and 1h");
                    d
                }
                Ok(d) => d,
                Err(e) => {
                    sink.error(&span, &o.child_path("over"), e);
                    Duration::ZERO
                }
            },
            None if signal == Some(Signal::SloBurn) => Duration::from_secs(3600),
            None => Duration::from_secs(60),
        };
        let keep_firing_for = o.duration(sink, "keep_firing_for", Duration::ZERO);
        let severity = match o.str(sink, "severity") {
            Some((s, span)) => match s.as_str() {
                "page" => Severity::Page,
                "ticket" => Severity::Ticket,
                "info" => Severity::Info,
                _ => {
                    sink.error(
                        &span,
                        &o.child_path("severity"),
                        format!("unknown severity {s:?}; expected page, ticket or info"),
                    );
                    Severity::Page
                }
            },
            None => Severity::Page,
        };
        let (notify, notify_spans) = o.str_list(sink, "notify");
        o.finish(sink);
        if let (Some(name), Some(signal), Some((target, target_span)), Some(threshold)) =
            (name, signal, target, threshold)
        {
            refs.push(AlertRef {
                path,
                span: item.span(),
                target_span: Some(target_span),
                notify_spans,
            });
            out.push(Alert {
                name,
                signal,
                target,
                threshold,
                for_,
                over,
                short: None,
                keep_firing_for,
                severity,
                notify,
                builtin: false,
            });
        }
    }
    (out, refs)
}

/// A threshold: a number, or for `latency_p99` also a duration
/// (`"500ms"`), kept in seconds.
fn threshold_value(
    sink: &mut Sink<'_>,
    o: &mut Obj<'_, '_>,
    key: &'static str,
    signal: Option<Signal>,
) -> Option<(f64, Range<usize>)> {
    let v = o.get(key)?;
    let path = o.child_path(key);
    let n = match v.get_ref() {
        DeValue::Integer(i) => i.as_str().replace('_', "").parse::<f64>().ok(),
        DeValue::Float(f) => f.as_str().replace('_', "").parse::<f64>().ok(),
        DeValue::String(s) if signal == Some(Signal::LatencyP99) => match parse_duration(s) {
            Ok(d) => Some(d.as_secs_f64()),
            Err(e) => {
                sink.error(&v.span(), &path, e);
                return None;
            }
        },
        other => {
            sink.error(
                &v.span(),
                &path,
                format!("expected a number, found {}", type_name(other)),
            );
            return None;
        }
    };
    match n {
        Some(n) if n.is_finite() => Some((n, v.span())),
        _ => {
            sink.error(&v.span(), &path, "not a finite number");
            None
        }
    }
}

/// What the rules point at, for [`check`].
pub(crate) struct Known<'a> {
    pub(crate) upstreams: &'a [String],
    pub(crate) services: &'a [String],
    pub(crate) probes: &'a [String],
    pub(crate) slos: &'a [String],
    pub(crate) backups: &'a [String],
    pub(crate) notifiers: &'a [String],
}

/// Every rule's target and notifiers exist.
pub(crate) fn check(sink: &mut Sink<'_>, alerts: &[Alert], refs: &[AlertRef], known: &Known<'_>) {
    for (a, r) in alerts.iter().zip(refs) {
        let kind = a.signal.target_kind();
        let names = match kind {
            TargetKind::Upstream => known.upstreams,
            TargetKind::Service => known.services,
            TargetKind::Probe => known.probes,
            TargetKind::Slo => known.slos,
            TargetKind::Backup => known.backups,
        };
        if !names.contains(&a.target) {
            let span = r.target_span.clone().unwrap_or(r.span.clone());
            let section = match kind {
                TargetKind::Upstream => "[upstream.NAME]",
                TargetKind::Service => "[service.NAME]",
                TargetKind::Probe => "[[probe]]",
                TargetKind::Slo => "[[slo]]",
                TargetKind::Backup => "[backup.NAME]",
            };
            sink.error(
                &span,
                &format!("{}.{}", r.path, kind.key()),
                format!(
                    "no {} named {:?} (defined with {section})",
                    kind.key(),
                    a.target
                ),
            );
        }
        crate::notify::check_names(sink, &a.notify, &r.notify_spans, &r.path, known.notifiers);
    }
}

/// The rules `[alerting] defaults` adds: one per upstream, service and
/// probe.
pub fn builtin(
    upstreams: &[String],
    services: &[String],
    probes: &[crate::UptimeProbe],
    backups: &[crate::backup::Backup],
) -> Vec<Alert> {
    let rule = |name: String, signal, target: &str, threshold, for_, severity| Alert {
        name,
        signal,
        target: target.to_string(),
        threshold,
        for_,
        over: Duration::from_secs(60),
        short: None,
        keep_firing_for: Duration::ZERO,
        severity,
        notify: Vec::new(),
        builtin: true,
    };
    let mut out = Vec::new();
    for u in upstreams {
        out.push(rule(
            format!("upstream-down.{u}"),
            Signal::HealthyServers,
            u,
            Threshold::Below(1.0),
            Duration::from_secs(10),
            Severity::Page,
        ));
    }
    for s in services {
        out.push(rule(
            format!("crash-looping.{s}"),
            Signal::CrashLooping,
            s,
            Threshold::Above(0.0),
            Duration::ZERO,
            Severity::Page,
        ));
    }
    for p in probes {
        out.push(rule(
            format!("probe-failing.{}", p.name),
            Signal::ProbeFailed,
            &p.name,
            Threshold::Above(2.0),
            Duration::ZERO,
            Severity::Page,
        ));
        if matches!(p.target, crate::probe::ProbeTarget::Http { tls: true, .. }) {
            out.push(rule(
                format!("cert-expiring.{}", p.name),
                Signal::CertExpiryDays,
                &p.name,
                Threshold::Below(p.tls_expiry_warn.as_secs_f64() / 86_400.0),
                Duration::ZERO,
                Severity::Ticket,
            ));
        }
    }
    for b in backups {
        // Twice the longest gap between two runs: one missed run is
        // tolerated, two are not.
        let hours = b.when.longest_gap().as_secs_f64() * 2.0 / 3600.0;
        out.push(rule(
            format!("backup-stale.{}", b.name),
            Signal::BackupAge,
            &b.name,
            Threshold::Above(hours),
            Duration::ZERO,
            Severity::Ticket,
        ));
        if matches!(
            b.source,
            crate::backup::Source::Postgres {
                wal: crate::backup::Wal::Archive | crate::backup::Wal::Stream,
                ..
            }
        ) {
            // PostgreSQL keeps every segment it cannot archive: the disk
            // fills and the RPO grows. Someone must look now.
            out.push(rule(
                format!("wal-push-failing.{}", b.name),
                Signal::WalPushFailing,
                &b.name,
                Threshold::Above(0.0),
                Duration::ZERO,
                Severity::Page,
            ));
        }
        if b.restore_test.is_some() {
            out.push(rule(
                format!("restore-test-failed.{}", b.name),
                Signal::RestoreTestFailed,
                &b.name,
                Threshold::Above(0.0),
                Duration::ZERO,
                Severity::Ticket,
            ));
        }
    }
    out
}

/// Writes a rule the way it would be written in the file (for `check`).
pub fn describe(a: &Alert) -> String {
    let mut s = format!(
        "{} ({}): {} of {} {:?} {}",
        a.name,
        a.severity.name(),
        a.signal.name(),
        a.signal.target_kind().key(),
        a.target,
        a.threshold
    );
    if a.signal.windowed() {
        s.push_str(&format!(" over {}", crate::units::format_duration(a.over)));
    }
    if let Some(short) = a.short {
        s.push_str(&format!(
            " and over {}",
            crate::units::format_duration(short)
        ));
    }
    if !a.for_.is_zero() {
        s.push_str(&format!(" for {}", crate::units::format_duration(a.for_)));
    }
    s
}
