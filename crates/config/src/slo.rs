//! `[[slo]]`: service level objectives on an upstream's real traffic, with
//! an error budget and the multiwindow burn-rate alerts of the SRE
//! workbook (chapter 5, "Alerting on SLOs").

use std::ops::Range;
use std::time::Duration;

use crate::alert::{Alert, Severity, Signal, Threshold};
use crate::diag::Sink;
use crate::read::{array_items, missing, Obj};

#[derive(Clone, Debug, PartialEq)]
pub struct Slo {
    pub name: String,
    pub upstream: String,
    /// Percent of good requests, below 100.
    pub objective: f64,
    /// The window the objective and the budget are counted over.
    pub window: Duration,
    /// A good request is also at most this slow.
    pub latency: Option<Duration>,
    /// No burn alert from fewer requests than this in the short window.
    pub min_requests: u64,
    /// Notifier names for the burn alerts; empty: every notifier.
    pub notify: Vec<String>,
}

impl Slo {
    /// The share of requests that may be bad: `1 - objective`.
    pub fn budget(&self) -> f64 {
        1.0 - self.objective / 100.0
    }
}

/// The burn-rate alerts every SLO gets (SRE workbook, table 5-8): a burn
/// rate above `factor` over both the long and the short window.
pub const BURN_RULES: [BurnRule; 3] = [
    BurnRule {
        suffix: "fast",
        factor: 14.4,
        long: Duration::from_secs(3600),
        short: Duration::from_secs(300),
        severity: Severity::Page,
    },
    BurnRule {
        suffix: "medium",
        factor: 6.0,
        long: Duration::from_secs(6 * 3600),
        short: Duration::from_secs(1800),
        severity: Severity::Page,
    },
    BurnRule {
        suffix: "slow",
        factor: 1.0,
        long: Duration::from_secs(3 * 86_400),
        short: Duration::from_secs(6 * 3600),
        severity: Severity::Ticket,
    },
];

pub struct BurnRule {
    pub suffix: &'static str,
    pub factor: f64,
    pub long: Duration,
    pub short: Duration,
    pub severity: Severity,
}

/// The longest `window` an SLO may have.
pub const MAX_WINDOW: Duration = Duration::from_secs(90 * 86_400);

/// Where an SLO's references were written, for the cross-checks.
pub(crate) struct SloRef {
    upstream_span: Range<usize>,
    notify_spans: Vec<Range<usize>>,
    path: String,
}

pub(crate) fn slos(sink: &mut Sink<'_>, top: &mut Obj<'_, '_>) -> (Vec<Slo>, Vec<SloRef>) {
    let mut out: Vec<Slo> = Vec::new();
    let mut refs = Vec::new();
    let Some(v) = top.get("slo") else {
        return (out, refs);
    };
    for (i, item) in array_items(sink, v, "slo") {
        let path = format!("slo[{i}]");
        let Some(mut o) = Obj::new(sink, item, &path) else {
            continue;
        };
        let name = o.item_name(sink, &item.span(), "SLO", |n| {
            out.iter().any(|s| s.name == n)
        });
        let upstream = o.str(sink, "upstream");
        if upstream.is_none() {
            missing(sink, &item.span(), &path, "upstream");
        }
        let objective = match o.get("objective") {
            Some(v) => {
                let span = v.span();
                let obj = o.float(sink, "objective", 99.9, 0.0, 100.0);
                if obj >= 100.0 {
                    sink.error(
                        &span,
                        &o.child_path("objective"),
                        "an objective of 100% leaves no error budget: write a percentage below 100, such as 99.9",
                    );
                }
                obj
            }
            None => {
                missing(sink, &item.span(), &path, "objective");
                99.9
            }
        };
        let window_span = o.get("window").map(|v| v.span());
        let window = o.duration_min(
            sink,
            "window",
            Duration::from_secs(30 * 86_400),
            Duration::from_secs(3600),
        );
        if window > MAX_WINDOW {
            sink.error(
                &window_span.unwrap_or(item.span()),
                &o.child_path("window"),
                "must be at most 90d",
            );
        }
        let latency = o.get("latency").is_some().then(|| {
            o.duration_min(
                sink,
                "latency",
                Duration::from_millis(1),
                Duration::from_millis(1),
            )
        });
        let min_requests = o.int(sink, "min_requests", 100, 0, u64::from(u32::MAX));
        let (notify, notify_spans) = o.str_list(sink, "notify");
        o.finish(sink);
        if let (Some(name), Some((upstream, upstream_span))) = (name, upstream) {
            refs.push(SloRef {
                upstream_span,
                notify_spans,
                path,
            });
            out.push(Slo {
                name,
                upstream,
                objective,
                window,
                latency,
                min_requests,
                notify,
            });
        }
    }
    (out, refs)
}

/// Every SLO's upstream and notifiers exist.
pub(crate) fn check(
    sink: &mut Sink<'_>,
    slos: &[Slo],
    refs: &[SloRef],
    upstreams: &[String],
    notifiers: &[String],
) {
    for (s, r) in slos.iter().zip(refs) {
        if !upstreams.contains(&s.upstream) {
            sink.error(
                &r.upstream_span,
                &format!("{}.upstream", r.path),
                format!(
                    "no upstream named {:?} (defined with [upstream.NAME])",
                    s.upstream
                ),
            );
        }
        crate::notify::check_names(sink, &s.notify, &r.notify_spans, &r.path, notifiers);
    }
}

/// The burn-rate rules of every SLO: `slo-burn-fast.NAME` and
/// `slo-burn-medium.NAME` page, `slo-burn-slow.NAME` is a ticket.
pub fn burn_alerts(slos: &[Slo]) -> Vec<Alert> {
    let mut out = Vec::new();
    for s in slos {
        for b in &BURN_RULES {
            out.push(Alert {
                name: format!("slo-burn-{}.{}", b.suffix, s.name),
                signal: Signal::SloBurn,
                target: s.name.clone(),
                threshold: Threshold::Above(b.factor),
                for_: Duration::ZERO,
                over: b.long,
                short: Some(b.short),
                keep_firing_for: Duration::ZERO,
                severity: b.severity,
                notify: s.notify.clone(),
                builtin: true,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::parse;

    const BASE: &str = r#"
[[listener]]
name = "web"
listen = "127.0.0.1:0"
[[route]]
upstream = "products"
[upstream.products]
servers = ["127.0.0.1:9"]
[notify.ops]
webhook = "http://127.0.0.1:9/hook"
"#;

    fn errors(extra: &str) -> String {
        match parse(&format!("{BASE}{extra}"), "c.toml") {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn an_slo_reads_with_defaults_and_gets_three_burn_rules() {
        let l = parse(
            &format!(
                "{BASE}[[slo]]\nname = \"avail\"\nupstream = \"products\"\nobjective = 99.9\nlatency = \"500ms\"\nnotify = [\"ops\"]\n"
            ),
            "c.toml",
        )
        .unwrap();
        let s = &l.config.slos[0];
        assert_eq!(s.window.as_secs(), 30 * 86_400);
        assert_eq!(s.min_requests, 100);
        assert_eq!(s.latency.unwrap().as_millis(), 500);
        assert!((s.budget() - 0.001).abs() < 1e-12);
        let names: Vec<&str> = l
            .config
            .alerts
            .iter()
            .filter(|a| a.target == "avail")
            .map(|a| a.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "slo-burn-fast.avail",
                "slo-burn-medium.avail",
                "slo-burn-slow.avail"
            ]
        );
    }

    #[test]
    fn bad_slos_are_errors_with_their_place() {
        let e = errors("[[slo]]\nname = \"a\"\nupstream = \"nope\"\nobjective = 99\n");
        assert!(
            e.contains("c.toml:13:") && e.contains("no upstream named \"nope\""),
            "{e}"
        );
        let e = errors("[[slo]]\nname = \"a\"\nupstream = \"products\"\nobjective = 100\n");
        assert!(e.contains("leaves no error budget"), "{e}");
        let e = errors("[[slo]]\nname = \"a\"\nupstream = \"products\"\n");
        assert!(e.contains("objective"), "{e}");
        let e = errors(
            "[[slo]]\nname = \"a\"\nupstream = \"products\"\nobjective = 99\nnotify = [\"pager\"]\n",
        );
        assert!(e.contains("no notifier named \"pager\""), "{e}");
        let e = errors(
            "[[slo]]\nname = \"a\"\nupstream = \"products\"\nobjective = 99\nwindow = \"91d\"\n",
        );
        assert!(e.contains("at most 90d"), "{e}");
        let e = errors(
            "[[alert]]\nname = \"b\"\nsignal = \"slo_burn\"\nslo = \"missing\"\nabove = 2\n",
        );
        assert!(e.contains("no slo named \"missing\""), "{e}");
    }
}
