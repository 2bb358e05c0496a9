//! The observer: once a second it asks every [`Source`] for its figures,
//! evaluates every alert rule, saves what changed to the state file and
//! hands firing and resolved alerts to the notifiers. It owns silences.
//! It runs on its own task; the data plane only feeds the counters the
//! sources read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use centinela_config::alert::Severity;
use centinela_config::{Alert, Alerting, Config};
use serde_json::{json, Value};

use crate::alert::{Evaluator, State, STATES};
use crate::expo::{Exposition, Kind};
use crate::figures::{Figures, Source};
use crate::history::{History, STEP_MS};
use crate::notify::{Notice, Notifiers};
use crate::slo::Slos;
use crate::state::{Loaded, SilenceRow, Store};
use crate::Collect;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Locks are taken in one order, `eval`, then `silences`, then
/// `notifiers`, and never the other way round.
struct Inner {
    sources: Mutex<Vec<Arc<dyn Source>>>,
    eval: Mutex<Evaluator>,
    silences: Mutex<HashMap<String, SilenceRow>>,
    notifiers: Mutex<Notifiers>,
    alerting: Mutex<Alerting>,
    store: Store,
    external_url: String,
    last: Mutex<Arc<Figures>>,
    history: Mutex<History>,
    /// For `/-/history`; `None` if the file could not be opened to read.
    reader: Mutex<Option<rusqlite::Connection>>,
    last_step: Mutex<u64>,
    probes: Arc<crate::probes::Probes>,
    slos: Mutex<Slos>,
}

/// A handle to the running observer.
#[derive(Clone)]
pub struct Observer(Arc<Inner>);

/// Why a silence was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum SilenceError {
    NoSuchAlert(String),
    NotSilenced(String),
}

impl std::fmt::Display for SilenceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SilenceError::NoSuchAlert(n) => write!(f, "no alert named {n:?}"),
            SilenceError::NotSilenced(n) => write!(f, "alert {n:?} is not silenced"),
        }
    }
}

impl Observer {
    /// Starts the evaluation loop. `loaded` is what the state file held;
    /// `external_url` is the admin API's base URL, put in notifications.
    pub fn start(config: &Config, store: Store, loaded: Loaded, external_url: String) -> Observer {
        let now = now_ms();
        let silences = loaded
            .silences
            .into_iter()
            .filter(|s| s.until_ms > now)
            .map(|s| (s.name.clone(), s))
            .collect();
        let notifiers = Notifiers::start(&config.notifiers, &config.alerting, &external_url, &[]);
        let reader = match store.reader() {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, "Cannot open the state file to read history; /-/history is off");
                None
            }
        };
        let history = History::new(store.clone(), STEP_MS);
        let slos = Slos::new(
            &config.slos,
            &config.alerts,
            &loaded.slo_slots,
            Some(store.clone()),
            now,
        );
        let obs = Observer(Arc::new(Inner {
            sources: Mutex::new(Vec::new()),
            eval: Mutex::new(Evaluator::new(config.alerts.clone(), &loaded.alerts, now)),
            silences: Mutex::new(silences),
            notifiers: Mutex::new(notifiers),
            alerting: Mutex::new(config.alerting.clone()),
            store,
            external_url,
            last: Mutex::new(Arc::new(Figures::default())),
            history: Mutex::new(history),
            reader: Mutex::new(reader),
            last_step: Mutex::new(0),
            probes: Arc::default(),
            slos: Mutex::new(slos),
        }));
        obs.0.probes.apply(&config.probes);
        let weak = Arc::downgrade(&obs.0);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                Observer(inner).tick(now_ms());
            }
        });
        obs
    }

    pub fn add_source(&self, s: Arc<dyn Source>) {
        lock(&self.0.sources).push(s);
    }

    /// A new configuration: rules, notifiers and `[alerting]`. Alerts of
    /// rules that keep their name keep their state.
    pub fn reload(&self, config: &Config) {
        lock(&self.0.eval).reload(config.alerts.clone());
        lock(&self.0.slos).reload(&config.slos, &config.alerts);
        let mut n = lock(&self.0.notifiers);
        let old = std::mem::take(&mut n.tallies);
        *n = Notifiers::start(
            &config.notifiers,
            &config.alerting,
            &self.0.external_url,
            &old,
        );
        *lock(&self.0.alerting) = config.alerting.clone();
        drop(n);
        self.0.probes.apply(&config.probes);
    }

    /// The figures of the last evaluation.
    pub fn figures(&self) -> Arc<Figures> {
        lock(&self.0.last).clone()
    }

    /// One evaluation at `now`: figures, rules, state file, notifications.
    pub fn tick(&self, now: u64) {
        let mut figures = Figures::default();
        for s in lock(&self.0.sources).iter() {
            s.figures(&mut figures);
        }
        self.0.probes.figures(&mut figures);
        lock(&self.0.slos).record(now, &mut figures);
        let figures = Arc::new(figures);
        *lock(&self.0.last) = figures.clone();
        {
            let mut last = lock(&self.0.last_step);
            if now / STEP_MS != *last {
                *last = now / STEP_MS;
                lock(&self.0.history).record(now, figures.clone());
            }
        }
        let alerting = lock(&self.0.alerting).clone();
        let mut eval = lock(&self.0.eval);
        let mut silences = lock(&self.0.silences);
        let expired: Vec<String> = silences
            .values()
            .filter(|s| s.until_ms <= now)
            .map(|s| s.name.clone())
            .collect();
        for name in expired {
            tracing::info!(alert = %name, "Silence expired");
            silences.remove(&name);
            self.0.store.remove_silence(&name);
        }
        let changes = eval.step(now, figures);
        let notifiers = lock(&self.0.notifiers);
        let mut dirty: Vec<usize> = Vec::new();
        for c in &changes {
            let name = eval.rules()[c.rule].name.clone();
            let severity = eval.rules()[c.rule].severity.name();
            let value = eval.status()[c.rule]
                .value
                .map_or("no data".to_string(), |v| format!("{v}"));
            match c.to {
                State::Firing => {
                    tracing::warn!(alert = %name, severity, value = %value, "Alert firing")
                }
                State::Resolved => tracing::info!(alert = %name, "Alert resolved"),
                State::Pending => tracing::info!(alert = %name, value = %value, "Alert pending"),
                State::Inactive => {}
            }
            dirty.push(c.rule);
            // A resolved alert is told only to those told it was firing.
            if c.to == State::Resolved
                && eval.status_mut(c.rule).last_sent.take().is_some()
                && alerting.send_resolved
                && !silences.contains_key(&name)
            {
                let n = notice(&eval.rules()[c.rule], &eval.status()[c.rule], now);
                notifiers.send(&eval.rules()[c.rule].notify, &n);
            }
        }
        // Firing alerts go out when they start, and again every
        // repeat_interval, unless silenced.
        let repeat = alerting.repeat_interval.as_millis() as u64;
        for i in 0..eval.rules().len() {
            let st = &eval.status()[i];
            if st.state != State::Firing || silences.contains_key(&eval.rules()[i].name) {
                continue;
            }
            if st.last_sent.is_some_and(|t| now < t + repeat) {
                continue;
            }
            let n = notice(&eval.rules()[i], st, now);
            notifiers.send(&eval.rules()[i].notify, &n);
            eval.status_mut(i).last_sent = Some(now);
            dirty.push(i);
        }
        dirty.sort_unstable();
        dirty.dedup();
        for i in dirty {
            let row = eval.status()[i].row(&eval.rules()[i].name);
            self.0.store.save_alert(row);
        }
    }

    /// Silences alert `name` until `now + dur`.
    pub fn silence(&self, name: &str, dur: Duration, comment: &str) -> Result<u64, SilenceError> {
        let eval = lock(&self.0.eval);
        if !eval.rules().iter().any(|r| r.name == name) {
            return Err(SilenceError::NoSuchAlert(name.to_string()));
        }
        let now = now_ms();
        let row = SilenceRow {
            name: name.to_string(),
            until_ms: now + dur.as_millis() as u64,
            comment: comment.to_string(),
            created_ms: now,
        };
        tracing::info!(alert = %name, until = %crate::notify::rfc3339(row.until_ms), comment = %comment, "Alert silenced");
        self.0.store.save_silence(row.clone());
        let until = row.until_ms;
        lock(&self.0.silences).insert(name.to_string(), row);
        Ok(until)
    }

    pub fn unsilence(&self, name: &str) -> Result<(), SilenceError> {
        if lock(&self.0.silences).remove(name).is_none() {
            return Err(SilenceError::NotSilenced(name.to_string()));
        }
        tracing::info!(alert = %name, "Silence removed");
        self.0.store.remove_silence(name);
        Ok(())
    }

    /// Every alert with its state, and the silences: `GET /-/alerts`.
    pub fn to_json(&self) -> Value {
        let eval = lock(&self.0.eval);
        let silences = lock(&self.0.silences);
        let alerts: Vec<Value> = eval
            .rules()
            .iter()
            .zip(eval.status())
            .map(|(r, s)| {
                let silence = silences.get(&r.name).map(
                    |s| json!({"until": crate::notify::rfc3339(s.until_ms), "comment": s.comment}),
                );
                json!({
                    "name": r.name,
                    "state": s.state.name(),
                    "severity": r.severity.name(),
                    "signal": r.signal.name(),
                    r.signal.target_kind().key(): r.target,
                    "threshold": r.threshold.to_string(),
                    "for_seconds": r.for_.as_secs_f64(),
                    "value": s.value,
                    "active_since": s.active_since.map(crate::notify::rfc3339),
                    "fired_at": s.fired_at.map(crate::notify::rfc3339),
                    "resolved_at": s.resolved_at.map(crate::notify::rfc3339),
                    "silenced": silence,
                    "builtin": r.builtin,
                })
            })
            .collect();
        json!({ "alerts": alerts })
    }

    /// The alerts pending or firing, for `/-/health/detailed`; healthy
    /// while no `page` alert fires unsilenced.
    pub fn health(&self) -> (bool, Value) {
        let eval = lock(&self.0.eval);
        let silences = lock(&self.0.silences);
        let mut healthy = true;
        let active: Vec<Value> = eval
            .rules()
            .iter()
            .zip(eval.status())
            .filter(|(_, s)| matches!(s.state, State::Pending | State::Firing))
            .map(|(r, s)| {
                let silenced = silences.contains_key(&r.name);
                if s.state == State::Firing && r.severity == Severity::Page && !silenced {
                    healthy = false;
                }
                json!({
                    "name": r.name,
                    "state": s.state.name(),
                    "severity": r.severity.name(),
                    "silenced": silenced,
                })
            })
            .collect();
        (healthy, Value::Array(active))
    }

    /// The SLOs section of `/-/health/detailed`: each SLO's requests over
    /// its window, the budget left and the burn rates. An SLO does not make
    /// centinela unhealthy by itself; its burn alerts do.
    pub fn slo_health(&self) -> Value {
        let f = self.figures();
        Value::Array(f.slos.iter().map(slo_json).collect())
    }

    /// The probes section of `/-/health/detailed`, with each probe's uptime
    /// over 24 h, 7 d and 30 d from history.
    pub fn probe_health(&self) -> (bool, Value) {
        self.0.probes.health(|name| {
            let reader = lock(&self.0.reader);
            let now = now_ms();
            let mut out = serde_json::Map::new();
            for (label, days) in [("24h", 1u64), ("7d", 7), ("30d", 30)] {
                let v = reader.as_ref().and_then(|c| {
                    let q = format!(
                        "series=probe:{name}:up&from={}&to={}",
                        (now - days * 86_400_000) / 1000,
                        now / 1000
                    );
                    let v = crate::history::query(c, &q, now).ok()?;
                    let pts: Vec<f64> = v["series"][format!("probe:{name}:up")]
                        .as_array()?
                        .iter()
                        .filter_map(|x| x.as_f64())
                        .collect();
                    (!pts.is_empty()).then(|| {
                        (pts.iter().sum::<f64>() / pts.len() as f64 * 100_000.0).round() / 1000.0
                    })
                });
                out.insert(format!("percent_{label}"), json!(v));
            }
            Value::Object(out)
        })
    }

    /// Waits until the state file holds everything saved so far, history
    /// included.
    pub fn flush(&self) {
        lock(&self.0.history).flush();
        lock(&self.0.slos).flush();
        self.0.store.flush();
    }

    /// `GET /-/history?series=…&from=…&to=…` (see [`crate::history::query`]).
    pub fn history(&self, q: &str) -> (http::StatusCode, Value) {
        let reader = lock(&self.0.reader);
        let Some(conn) = reader.as_ref() else {
            return (
                http::StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "history is unavailable: the state file cannot be read"}),
            );
        };
        match crate::history::query(conn, q, now_ms()) {
            Ok(v) => (http::StatusCode::OK, v),
            Err(e) => (http::StatusCode::BAD_REQUEST, json!({ "error": e })),
        }
    }
}

fn slo_json(s: &crate::figures::SloFigures) -> Value {
    let burn: serde_json::Map<String, Value> = s
        .windows
        .iter()
        .filter(|w| w.ms != s.window_ms)
        .map(|w| {
            (
                centinela_config::units::format_duration(Duration::from_millis(w.ms)),
                json!(s.burn(w.ms)),
            )
        })
        .collect();
    json!({
        "name": s.name,
        "upstream": s.upstream,
        "objective": s.objective,
        "window": centinela_config::units::format_duration(Duration::from_millis(s.window_ms)),
        "requests": s.total,
        "bad_requests": s.bad.round() as u64,
        "error_budget_remaining": (s.budget_remaining * 10_000.0).round() / 10_000.0,
        "burn_rate": burn,
    })
}

fn notice(rule: &Alert, st: &crate::alert::Status, now: u64) -> Notice {
    let firing = st.state == State::Firing;
    let value = st.value.map_or("no data".to_string(), |v| {
        format!("{}", (v * 1000.0).round() / 1000.0)
    });
    Notice {
        alert: rule.name.clone(),
        status: if firing { "firing" } else { "resolved" },
        severity: rule.severity.name(),
        signal: rule.signal.name(),
        target_kind: rule.signal.target_kind().key(),
        target: rule.target.clone(),
        summary: format!(
            "{} of {} {:?} is {value} ({}{})",
            rule.signal.name(),
            rule.signal.target_kind().key(),
            rule.target,
            if firing { "" } else { "was " },
            rule.threshold
        ),
        starts_at: st.active_since.or(st.fired_at).unwrap_or(now),
        ends_at: (!firing).then_some(st.resolved_at.unwrap_or(now)),
    }
}

impl Collect for Observer {
    fn collect(&self, out: &mut Exposition) {
        {
            let eval = lock(&self.0.eval);
            out.family(
                "centinela_alerts",
                "1 for each alert's current state among inactive, pending, firing and resolved.",
                Kind::Gauge,
            );
            for (r, s) in eval.rules().iter().zip(eval.status()) {
                for state in STATES {
                    out.gauge(
                        &[("alert", &r.name), ("state", state.name())],
                        f64::from(u8::from(s.state == state)),
                    );
                }
            }
        }
        self.0.probes.collect(out);
        let f = self.figures();
        out.family(
            "centinela_slo_error_budget_remaining_ratio",
            "The share of the SLO's error budget left over its window: 1 untouched, 0 spent, below 0 overspent.",
            Kind::Gauge,
        );
        for s in &f.slos {
            out.gauge(&[("slo", &s.name)], s.budget_remaining);
        }
        out.family(
            "centinela_slo_burn_rate",
            "How fast the SLO's error budget burns over the window: 1 spends it exactly in the SLO's window.",
            Kind::Gauge,
        );
        for s in &f.slos {
            for w in &s.windows {
                if let Some(b) = s.burn(w.ms) {
                    let window =
                        centinela_config::units::format_duration(Duration::from_millis(w.ms));
                    out.gauge(&[("slo", &s.name), ("window", &window)], b);
                }
            }
        }
        let n = lock(&self.0.notifiers);
        out.family(
            "centinela_notifications",
            "Notification attempts, by notifier and result (success or error).",
            Kind::Counter,
        );
        for (name, t) in &n.tallies {
            out.counter(
                &[("notifier", name), ("result", "success")],
                t.success.get(),
            );
            out.counter(&[("notifier", name), ("result", "error")], t.error.get());
        }
    }
}
