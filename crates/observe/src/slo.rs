//! SLOs: good and bad requests of an upstream's real traffic, counted in
//! time slots, an error budget over the SLO's window, and burn rates over
//! the windows the alert rules need.
//!
//! A request is bad when it is a 5xx (gateway errors included) or, with
//! `latency` set, when it took longer. Requests are counted from the same
//! cumulative figures as the metrics, once a second:
//!
//! | tier | slot | kept | used for windows |
//! |---|---|---|---|
//! | 0 | 10 s | 6 h | up to 6 h (5 m, 30 m, 1 h, 6 h) |
//! | 1 | 5 min | the longest window (≥ 3 d) | longer (3 d, the SLO's) |
//!
//! Both tiers are saved to the state file as they fill, so a restart loses
//! at most the last few seconds. [`Slos`] is pure like the evaluator: it is
//! given the time, so tests drive it with a synthetic clock.

use std::collections::VecDeque;

use centinela_config::alert::Signal;
use centinela_config::slo::BURN_RULES;
use centinela_config::{Alert, Slo};

use crate::figures::{Figures, SloFigures, UpstreamFigures, WindowFigures};
use crate::state::{SloSlotRow, Store};

const FINE_MS: u64 = 10_000;
const FINE_KEEP_MS: u64 = 6 * 3600 * 1000;
const COARSE_MS: u64 = 300_000;

#[derive(Clone, Copy, Debug, PartialEq)]
struct Slot {
    start: u64,
    total: u64,
    bad: f64,
}

struct Track {
    slo: Slo,
    /// Windows (ms) to report: the burn rules', the user rules', the SLO's.
    windows: Vec<u64>,
    /// Cumulative (requests, bad) at the last observation; `None` until the
    /// first one of a track added by a reload.
    last: Option<(u64, f64)>,
    fine: VecDeque<Slot>,
    coarse: VecDeque<Slot>,
    coarse_keep_ms: u64,
}

/// Cumulative requests and bad requests of `u` for `slo`.
pub fn counts(slo: &Slo, u: &UpstreamFigures) -> (u64, f64) {
    let mut bad = u.errors as f64;
    if let Some(lat) = slo.latency {
        let s = lat.as_secs_f64();
        // Successful requests slower than the objective: the errors have a
        // histogram of their own, so none is counted twice.
        let ok = u.requests.saturating_sub(u.errors) as f64;
        let ok_fast = u.latency.at_most(s) - u.error_latency.at_most(s);
        bad += (ok - ok_fast).max(0.0);
    }
    (u.requests, bad)
}

impl Track {
    fn new(slo: &Slo, rules: &[Alert], fresh_process: bool) -> Track {
        let mut windows: Vec<u64> = BURN_RULES
            .iter()
            .flat_map(|b| [b.long, b.short])
            .chain(
                rules
                    .iter()
                    .filter(|r| r.signal == Signal::SloBurn && r.target == slo.name)
                    .flat_map(|r| std::iter::once(r.over).chain(r.short)),
            )
            .map(|d| d.as_millis() as u64)
            .chain(std::iter::once(slo.window.as_millis() as u64))
            .collect();
        windows.sort_unstable();
        windows.dedup();
        let coarse_keep_ms = windows.last().copied().unwrap_or(0) + COARSE_MS;
        Track {
            slo: slo.clone(),
            windows,
            last: fresh_process.then_some((0, 0.0)),
            fine: VecDeque::new(),
            coarse: VecDeque::new(),
            coarse_keep_ms,
        }
    }

    /// Requests and bad requests in the `ms` before `now`.
    fn sum(&self, now: u64, ms: u64) -> (u64, f64) {
        let (ring, step) = if ms <= FINE_KEEP_MS {
            (&self.fine, FINE_MS)
        } else {
            (&self.coarse, COARSE_MS)
        };
        // Slots that start within the window, the current one included.
        let from = (now + step).saturating_sub(ms);
        let from = from - from % step;
        ring.iter()
            .rev()
            .take_while(|s| s.start >= from)
            .fold((0, 0.0), |(t, b), s| (t + s.total, b + s.bad))
    }

    fn figures(&self, now: u64) -> SloFigures {
        let windows = self
            .windows
            .iter()
            .map(|&ms| {
                let (total, bad) = self.sum(now, ms);
                WindowFigures { ms, total, bad }
            })
            .collect();
        let (total, bad) = self.sum(now, self.slo.window.as_millis() as u64);
        let budget = self.slo.budget();
        SloFigures {
            name: self.slo.name.clone(),
            upstream: self.slo.upstream.clone(),
            objective: self.slo.objective,
            min_requests: self.slo.min_requests,
            window_ms: self.slo.window.as_millis() as u64,
            total,
            bad,
            budget_remaining: if total == 0 {
                1.0
            } else {
                1.0 - (bad / total as f64) / budget
            },
            windows,
        }
    }
}

/// Adds `(total, bad)` to the slot of `ring` that holds `now`, making it
/// when time moved on; returns the slot that was current before, when a
/// new one began (to be saved whole).
fn add(ring: &mut VecDeque<Slot>, step: u64, now: u64, total: u64, bad: f64) -> Option<Slot> {
    let start = now - now % step;
    match ring.back_mut() {
        Some(s) if s.start == start => {
            s.total += total;
            s.bad += bad;
            None
        }
        _ => {
            let done = ring.back().copied();
            ring.push_back(Slot { start, total, bad });
            done
        }
    }
}

/// Every SLO's tracker.
pub struct Slos {
    tracks: Vec<Track>,
    store: Option<Store>,
}

impl Slos {
    /// At start: `restored` holds the slots the state file kept.
    pub fn new(
        slos: &[Slo],
        rules: &[Alert],
        restored: &[SloSlotRow],
        store: Option<Store>,
        now: u64,
    ) -> Slos {
        let mut tracks: Vec<Track> = slos.iter().map(|s| Track::new(s, rules, true)).collect();
        for r in restored {
            let Some(t) = tracks.iter_mut().find(|t| t.slo.name == r.slo) else {
                continue;
            };
            let slot = Slot {
                start: r.start,
                total: r.total,
                bad: r.bad,
            };
            match r.tier {
                0 if r.start + FINE_KEEP_MS + FINE_MS > now => t.fine.push_back(slot),
                1 if r.start + t.coarse_keep_ms > now => t.coarse.push_back(slot),
                _ => {}
            }
        }
        if let Some(store) = &store {
            // The slots of SLOs no longer configured.
            let mut gone: Vec<&str> = restored
                .iter()
                .map(|r| r.slo.as_str())
                .filter(|n| !slos.iter().any(|s| s.name == *n))
                .collect();
            gone.dedup();
            for n in gone {
                store.prune_slo(n, 0, u64::MAX);
                store.prune_slo(n, 1, u64::MAX);
            }
        }
        Slos { tracks, store }
    }

    /// A new configuration: SLOs that keep their name keep their counts.
    pub fn reload(&mut self, slos: &[Slo], rules: &[Alert]) {
        let mut old = std::mem::take(&mut self.tracks);
        self.tracks = slos
            .iter()
            .map(|s| {
                let mut t = Track::new(s, rules, false);
                if let Some(i) = old.iter().position(|o| o.slo.name == s.name) {
                    let o = old.swap_remove(i);
                    // Same upstream and objective: its counts still apply.
                    if o.slo.upstream == s.upstream && o.slo.latency == s.latency {
                        t.last = o.last;
                        t.fine = o.fine;
                        t.coarse = o.coarse;
                    }
                }
                t
            })
            .collect();
    }

    /// Counts what each SLO's upstream served since the last call, and adds
    /// every SLO's figures to `figures`.
    pub fn record(&mut self, now: u64, figures: &mut Figures) {
        for t in &mut self.tracks {
            if let Some(u) = figures.upstream(&t.slo.upstream) {
                let (total, bad) = counts(&t.slo, u);
                let (dt, db) = match t.last {
                    // Counters start again when a reload rebuilds them.
                    Some((lt, lb)) if total >= lt => (total - lt, (bad - lb).max(0.0)),
                    Some(_) => (total, bad),
                    None => (0, 0.0),
                };
                t.last = Some((total, bad));
                let done = add(&mut t.fine, FINE_MS, now, dt, db);
                let coarse_done = add(&mut t.coarse, COARSE_MS, now, dt, db);
                if let Some(done) = done {
                    while t
                        .fine
                        .front()
                        .is_some_and(|s| s.start + FINE_KEEP_MS + FINE_MS <= now)
                    {
                        t.fine.pop_front();
                    }
                    while t
                        .coarse
                        .front()
                        .is_some_and(|s| s.start + t.coarse_keep_ms <= now)
                    {
                        t.coarse.pop_front();
                    }
                    if let Some(store) = &self.store {
                        save(store, &t.slo.name, 0, done);
                        if let Some(c) = coarse_done {
                            save(store, &t.slo.name, 1, c);
                        }
                        if let Some(c) = t.coarse.back() {
                            save(store, &t.slo.name, 1, *c);
                        }
                        if done.start % COARSE_MS == COARSE_MS - FINE_MS {
                            store.prune_slo(&t.slo.name, 0, now.saturating_sub(FINE_KEEP_MS));
                            store.prune_slo(&t.slo.name, 1, now.saturating_sub(t.coarse_keep_ms));
                        }
                    }
                }
            }
            figures.slos.push(t.figures(now));
        }
    }

    /// Saves the slots being filled (at shutdown).
    pub fn flush(&self) {
        let Some(store) = &self.store else { return };
        for t in &self.tracks {
            if let Some(s) = t.fine.back() {
                save(store, &t.slo.name, 0, *s);
            }
            if let Some(s) = t.coarse.back() {
                save(store, &t.slo.name, 1, *s);
            }
        }
    }
}

fn save(store: &Store, slo: &str, tier: u8, s: Slot) {
    store.save_slo_slot(SloSlotRow {
        slo: slo.to_string(),
        tier,
        start: s.start,
        total: s.total,
        bad: s.bad,
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use centinela_config::slo::burn_alerts;

    use super::*;
    use crate::alert::{Evaluator, State};
    use crate::metrics::{Histogram, HistogramSnapshot, LATENCY_BOUNDS};

    fn slo(latency: Option<Duration>) -> Slo {
        Slo {
            name: "avail".into(),
            upstream: "products".into(),
            objective: 99.9,
            window: Duration::from_secs(30 * 86_400),
            latency,
            min_requests: 100,
            notify: Vec::new(),
        }
    }

    /// Synthetic traffic: cumulative counters of one upstream.
    struct Traffic {
        requests: u64,
        errors: u64,
        latency: Histogram,
        error_latency: Histogram,
    }

    impl Traffic {
        fn new() -> Traffic {
            Traffic {
                requests: 0,
                errors: 0,
                latency: Histogram::new(LATENCY_BOUNDS),
                error_latency: Histogram::new(LATENCY_BOUNDS),
            }
        }

        fn serve(&mut self, n: u64, errors: u64, took: Duration) {
            for i in 0..n {
                self.requests += 1;
                self.latency.observe(took);
                if i < errors {
                    self.errors += 1;
                    self.error_latency.observe(took);
                }
            }
        }

        fn figures(&self) -> Figures {
            Figures {
                upstreams: vec![UpstreamFigures {
                    name: "products".into(),
                    requests: self.requests,
                    errors: self.errors,
                    latency: self.latency.snapshot(),
                    error_latency: self.error_latency.snapshot(),
                    servers: Vec::new(),
                    in_flight: 0,
                    max_in_flight: 0,
                    queued: 0,
                }],
                ..Figures::default()
            }
        }
    }

    const T0: u64 = 1_800_000_000_000;

    #[test]
    fn bad_requests_are_errors_plus_slow_successes_counted_once() {
        let mut t = Traffic::new();
        t.serve(100, 0, Duration::from_millis(100));
        t.serve(10, 0, Duration::from_secs(1));
        // Slow errors: bad once, not twice.
        t.serve(5, 5, Duration::from_secs(2));
        let f = t.figures();
        let u = &f.upstreams[0];
        assert_eq!(counts(&slo(None), u), (115, 5.0));
        assert_eq!(
            counts(&slo(Some(Duration::from_millis(500))), u),
            (115, 15.0)
        );
        let empty = HistogramSnapshot::empty(LATENCY_BOUNDS);
        assert_eq!(empty.at_most(0.5), 0.0);
    }

    /// A day of good traffic, then an outage: the fast burn rule pages
    /// within two minutes and not before; the budget shrinks by what the
    /// outage cost; slots saved and restored give the same figures.
    #[test]
    fn an_outage_burns_the_budget_and_pages_through_the_fast_rule() {
        let s = slo(None);
        let rules = burn_alerts(std::slice::from_ref(&s));
        let mut slos = Slos::new(std::slice::from_ref(&s), &rules, &[], None, T0);
        let mut eval = Evaluator::new(rules.clone(), &[], T0);
        let mut traffic = Traffic::new();
        let mut now = T0;
        let step = |slos: &mut Slos, eval: &mut Evaluator, traffic: &Traffic, now: u64| {
            let mut f = traffic.figures();
            slos.record(now, &mut f);
            let f = Arc::new(f);
            eval.step(now, f.clone());
            f
        };
        // 24 h at 10 requests/s with 0.05% errors: half the budget's rate.
        for i in 0..86_400u64 {
            traffic.serve(10, u64::from(i % 200 == 199), Duration::from_millis(5));
            now += 1000;
            if i % 10 == 0 {
                step(&mut slos, &mut eval, &traffic, now);
            }
        }
        let f = step(&mut slos, &mut eval, &traffic, now);
        let sf = &f.slos[0];
        assert_eq!(sf.total, 864_000);
        let ratio = sf.bad / sf.total as f64;
        assert!((ratio - 0.0005).abs() < 1e-5, "{ratio}");
        assert!(
            (sf.budget_remaining - 0.5).abs() < 0.01,
            "{}",
            sf.budget_remaining
        );
        for (r, st) in eval.rules().iter().zip(eval.status()) {
            assert_eq!(st.state, State::Inactive, "{} at {:?}", r.name, st.value);
        }

        // The upstream fails every request.
        let outage = now;
        let mut fired = None;
        for _ in 0..600u64 {
            traffic.serve(10, 10, Duration::from_millis(1));
            now += 1000;
            step(&mut slos, &mut eval, &traffic, now);
            if fired.is_none() && eval.status()[0].state == State::Firing {
                fired = Some(now - outage);
            }
        }
        let fired = fired.expect("the fast burn rule fires");
        // 1 h at 14.4× a 0.1% budget is 1.44% bad: 52 s of total outage
        // within an hour of 10 requests/s; 5 m at 14.4× is 4.3 s.
        assert!(
            (40_000..=120_000).contains(&fired),
            "fired {fired} ms after the outage began"
        );
        assert_eq!(eval.rules()[0].name, "slo-burn-fast.avail");
        assert_eq!(eval.status()[0].state, State::Firing);
        // The medium rule (6× over 6 h and 30 m) fires too within 10 min.
        assert_eq!(eval.status()[1].state, State::Firing);
        let f = step(&mut slos, &mut eval, &traffic, now);
        let sf = &f.slos[0];
        // 6000 more bad requests: the budget (0.1% of ~870 000) is spent.
        assert!(sf.budget_remaining < 0.0, "{}", sf.budget_remaining);
    }

    #[test]
    fn too_little_traffic_in_the_short_window_does_not_page() {
        let s = slo(None);
        let rules = burn_alerts(std::slice::from_ref(&s));
        let mut slos = Slos::new(std::slice::from_ref(&s), &rules, &[], None, T0);
        let mut eval = Evaluator::new(rules, &[], T0);
        let mut traffic = Traffic::new();
        let mut now = T0;
        // One failing request every 30 s for 2 h: 10 in the fast rule's
        // 5 minutes and 60 in the medium rule's 30, below 100. (The slow
        // rule's short window, 6 h, holds enough: it may fire.)
        for _ in 0..240 {
            traffic.serve(1, 1, Duration::from_millis(1));
            now += 30_000;
            let mut f = traffic.figures();
            slos.record(now, &mut f);
            eval.step(now, Arc::new(f));
            assert!(
                eval.status()[..2]
                    .iter()
                    .all(|st| st.state == State::Inactive),
                "a page from {} requests",
                traffic.requests
            );
        }
        // Enough traffic, failing: the fast rule pages within a minute.
        for _ in 0..60 {
            traffic.serve(5, 5, Duration::from_millis(1));
            now += 1000;
            let mut f = traffic.figures();
            slos.record(now, &mut f);
            eval.step(now, Arc::new(f));
        }
        assert_eq!(eval.status()[0].state, State::Firing);
    }

    #[test]
    fn saved_slots_give_the_same_figures_after_a_restart() {
        let dir = std::env::temp_dir().join(format!(
            "centinela-slo-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let s = slo(Some(Duration::from_millis(250)));
        let rules = burn_alerts(std::slice::from_ref(&s));
        let (store, _) = Store::open(&dir).unwrap();
        let mut slos = Slos::new(
            std::slice::from_ref(&s),
            &rules,
            &[],
            Some(store.clone()),
            T0,
        );
        let mut traffic = Traffic::new();
        let mut now = T0;
        for i in 0..4000u64 {
            traffic.serve(
                3,
                u64::from(i % 7 == 0),
                Duration::from_millis(10 + i % 400),
            );
            now += 1000;
            slos.record(now, &mut traffic.figures());
        }
        let mut before = traffic.figures();
        slos.record(now, &mut before);
        slos.flush();
        store.flush();
        drop(slos);
        drop(store);
        let (store, loaded) = Store::open(&dir).unwrap();
        assert!(!loaded.slo_slots.is_empty());
        // A new process: its counters start from zero.
        let mut slos = Slos::new(
            std::slice::from_ref(&s),
            &rules,
            &loaded.slo_slots,
            Some(store),
            now,
        );
        let mut after = Traffic::new().figures();
        slos.record(now, &mut after);
        assert_eq!(before.slos[0].total, after.slos[0].total);
        for (b, a) in before.slos[0].windows.iter().zip(&after.slos[0].windows) {
            assert_eq!((b.ms, b.total), (a.ms, a.total));
            assert!((b.bad - a.bad).abs() < 1e-6, "{b:?} {a:?}");
        }
        assert!(before.slos[0].bad > 0.0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
