//! Metric history: every 10 s, per upstream (requests/s, error ratio, p50,
//! p95 and p99 latency, in-flight, healthy servers), per service (CPU
//! cores, memory) and per probe (up, duration). Three tiers, downsampled on
//! write (the mean of the finer points in each coarser slot):
//!
//! | tier | step | kept | chunk |
//! | --- | --- | --- | --- |
//! | 0 | 10 s | 48 h | 1 h (360 slots) |
//! | 1 | 5 min | 90 d | 1 d (288 slots) |
//! | 2 | 1 h | 2 y | 1 week (168 slots) |
//!
//! Points are stored in chunks: one row per (tier, chunk start, entity)
//! whose blob holds the filled slots (`u16` slot, then one little-endian
//! `f32` per value, NaN for "no data"). A chunk is written when it is
//! complete, and the one being filled every `flush_every`; chunks past
//! their tier's retention are deleted when a new chunk starts. So the file
//! is bounded: about 50 MB for 20 upstreams, 20 probes and 10 services
//! (a test runs two years of synthetic time).

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{params, Connection};
use serde_json::{json, Value};

use crate::figures::Figures;
use crate::state::Store;

pub const STEP_MS: u64 = 10_000;

pub struct Tier {
    pub step_ms: u64,
    pub slots: u64,
    pub keep_ms: u64,
}

pub const TIERS: [Tier; 3] = [
    Tier {
        step_ms: 10_000,
        slots: 360,
        keep_ms: 48 * 3_600_000,
    },
    Tier {
        step_ms: 300_000,
        slots: 288,
        keep_ms: 90 * 86_400_000,
    },
    Tier {
        step_ms: 3_600_000,
        slots: 168,
        keep_ms: 730 * 86_400_000,
    },
];

impl Tier {
    fn chunk_ms(&self) -> u64 {
        self.step_ms * self.slots
    }
}

/// The values recorded per kind of entity, in blob order.
pub const UPSTREAM_VALUES: [&str; 7] = [
    "rps",
    "error_ratio",
    "p50",
    "p95",
    "p99",
    "in_flight",
    "healthy",
];
pub const SERVICE_VALUES: [&str; 2] = ["cpu", "memory"];
pub const PROBE_VALUES: [&str; 2] = ["up", "duration"];

fn values_of(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "upstream" => Some(&UPSTREAM_VALUES),
        "service" => Some(&SERVICE_VALUES),
        "probe" => Some(&PROBE_VALUES),
        _ => None,
    }
}

/// A chunk being filled.
struct Open {
    start: u64,
    /// Slot → values.
    points: Vec<(u16, Vec<f32>)>,
    dirty: bool,
}

/// Sums of the finer points in a coarser slot.
struct Acc {
    slot_start: u64,
    sums: Vec<f64>,
    counts: Vec<u32>,
}

pub struct History {
    store: Store,
    /// Reads back a chunk this process did not start (one being filled
    /// when centinela last stopped), so that its points are kept.
    reader: Option<Connection>,
    /// (tier, entity) → the chunk being filled.
    open: HashMap<(u8, String), Open>,
    /// (tier 1 or 2, entity) → the coarser slot being summed.
    acc: HashMap<(u8, String), Acc>,
    /// The chunk start each tier was last pruned for.
    pruned: [u64; 3],
    prev: Option<(u64, Arc<Figures>)>,
    flush_every_ms: u64,
    last_flush: u64,
}

/// The points of a chunk already in the file (none if it is not there or
/// cannot be read).
fn stored(
    reader: Option<&Connection>,
    tier: u8,
    start: u64,
    series: &str,
    width: usize,
) -> Vec<(u16, Vec<f32>)> {
    let Some(c) = reader else {
        return Vec::new();
    };
    let data: Option<Vec<u8>> = c
        .query_row(
            "SELECT data FROM chunk WHERE tier = ?1 AND start = ?2 AND series = ?3",
            params![tier, start as i64, series],
            |r| r.get(0),
        )
        .ok();
    data.map_or_else(Vec::new, |d| decode(&d, width))
}

fn encode(points: &[(u16, Vec<f32>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (slot, vals) in points {
        out.extend_from_slice(&slot.to_le_bytes());
        for v in vals {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

fn decode(data: &[u8], width: usize) -> Vec<(u16, Vec<f32>)> {
    let rec = 2 + 4 * width;
    data.chunks_exact(rec)
        .map(|r| {
            let slot = u16::from_le_bytes([r[0], r[1]]);
            let vals = r[2..]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (slot, vals)
        })
        .collect()
}

impl History {
    /// `flush_every_ms`: how often the chunks being filled are written
    /// (complete chunks are written at once).
    pub fn new(store: Store, flush_every_ms: u64) -> History {
        let reader = match store.reader() {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, "Cannot read the state file: history chunks being filled at the last stop will start over");
                None
            }
        };
        History {
            store,
            reader,
            open: HashMap::new(),
            acc: HashMap::new(),
            pruned: [0; 3],
            prev: None,
            flush_every_ms,
            last_flush: 0,
        }
    }

    /// Records the 10 s point at `now_ms` from `figures` (rates from the
    /// figures of the previous call).
    pub fn record(&mut self, now_ms: u64, figures: Arc<Figures>) {
        let prev = self.prev.replace((now_ms, figures.clone()));
        let secs = prev
            .as_ref()
            .map(|(t, _)| now_ms.saturating_sub(*t) as f64 / 1000.0)
            .filter(|s| *s > 0.0);
        let before = prev.as_ref().map(|(_, f)| &**f);
        let mut entities: Vec<(String, Vec<f32>)> = Vec::new();
        for u in &figures.upstreams {
            let old = before.and_then(|b| b.upstream(&u.name));
            let (mut rps, mut ratio, mut q) = (f32::NAN, f32::NAN, [f32::NAN; 3]);
            if let (Some(old), Some(secs)) = (old, secs) {
                let n = u.requests.saturating_sub(old.requests);
                rps = (n as f64 / secs) as f32;
                if n > 0 {
                    ratio = (u.errors.saturating_sub(old.errors) as f64 / n as f64) as f32;
                    let d = u.latency.since(&old.latency);
                    for (i, p) in [0.5, 0.95, 0.99].iter().enumerate() {
                        q[i] = d.quantile(*p).map_or(f32::NAN, |v| v as f32);
                    }
                }
            }
            entities.push((
                format!("upstream:{}", u.name),
                vec![
                    rps,
                    ratio,
                    q[0],
                    q[1],
                    q[2],
                    u.in_flight as f32,
                    u.healthy() as f32,
                ],
            ));
        }
        for s in &figures.services {
            let old = before.and_then(|b| b.service(&s.name));
            let cpu = match (old, secs) {
                (Some(o), Some(secs)) => ((s.cpu_seconds - o.cpu_seconds).max(0.0) / secs) as f32,
                _ => f32::NAN,
            };
            entities.push((
                format!("service:{}", s.name),
                vec![cpu, s.memory_bytes as f32],
            ));
        }
        for p in &figures.probes {
            entities.push((
                format!("probe:{}", p.name),
                vec![f32::from(u8::from(p.up)), p.duration as f32],
            ));
        }
        let slot_t = now_ms - now_ms % STEP_MS;
        for (entity, vals) in entities {
            // Coarser tiers: a slot's mean, written when the next begins.
            for tier in 1..3u8 {
                let step = TIERS[tier as usize].step_ms;
                let slot_start = slot_t - slot_t % step;
                let acc = self
                    .acc
                    .entry((tier, entity.clone()))
                    .or_insert_with(|| Acc {
                        slot_start,
                        sums: vec![0.0; vals.len()],
                        counts: vec![0; vals.len()],
                    });
                // A new slot: the finished one's mean goes to its tier.
                let done = (acc.slot_start != slot_start).then(|| {
                    let mean: Vec<f32> = acc
                        .sums
                        .iter()
                        .zip(&acc.counts)
                        .map(|(s, c)| {
                            if *c > 0 {
                                (*s / f64::from(*c)) as f32
                            } else {
                                f32::NAN
                            }
                        })
                        .collect();
                    let at = acc.slot_start;
                    acc.slot_start = slot_start;
                    acc.sums.iter_mut().for_each(|s| *s = 0.0);
                    acc.counts.iter_mut().for_each(|c| *c = 0);
                    (at, mean)
                });
                for (i, v) in vals.iter().enumerate() {
                    if v.is_finite() {
                        acc.sums[i] += f64::from(*v);
                        acc.counts[i] += 1;
                    }
                }
                if let Some((at, mean)) = done {
                    self.put(tier, &entity, at, mean);
                }
            }
            self.put(0, &entity, slot_t, vals);
        }
        if now_ms >= self.last_flush + self.flush_every_ms {
            self.flush();
            self.last_flush = now_ms;
        }
    }

    /// Puts a point in `tier`'s chunk being filled, writing the previous
    /// chunk when this one starts a new chunk.
    fn put(&mut self, tier: u8, entity: &str, t: u64, vals: Vec<f32>) {
        let spec = &TIERS[tier as usize];
        let start = t - t % spec.chunk_ms();
        let slot = ((t - start) / spec.step_ms) as u16;
        let key = (tier, entity.to_string());
        let open = match self.open.entry(key) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            // The first point of this entity in this process: the chunk
            // may hold points from before a restart.
            std::collections::hash_map::Entry::Vacant(v) => v.insert(Open {
                start,
                points: stored(self.reader.as_ref(), tier, start, entity, vals.len()),
                dirty: false,
            }),
        };
        if open.start != start {
            if open.dirty {
                self.store
                    .save_chunk(tier, open.start, entity, encode(&open.points));
            }
            open.start = start;
            open.points.clear();
        }
        match open.points.iter_mut().find(|(s, _)| *s == slot) {
            Some(p) => p.1 = vals,
            None => open.points.push((slot, vals)),
        }
        open.dirty = true;
        // A new chunk for this tier: drop what is past its retention.
        if start > self.pruned[tier as usize] {
            self.pruned[tier as usize] = start;
            let before = start.saturating_sub(spec.keep_ms);
            if before > 0 {
                self.store.prune(tier, before);
            }
        }
    }

    /// Writes every chunk being filled that changed.
    pub fn flush(&mut self) {
        for ((tier, entity), open) in &mut self.open {
            if open.dirty {
                self.store
                    .save_chunk(*tier, open.start, entity, encode(&open.points));
                open.dirty = false;
            }
        }
    }
}

/// Answers `GET /-/history?series=upstream:NAME:p99,…&from=UNIX&to=UNIX`
/// (seconds; `to` defaults to now, `from` to an hour before `to`). The
/// finest tier that still holds `from` and gives at most 2,000 points is
/// used. The answer is aligned for charts: `{"step": S, "t": [...],
/// "series": {"NAME": [v or null, ...]}}`.
pub fn query(conn: &Connection, q: &str, now_ms: u64) -> Result<Value, String> {
    let mut series = Vec::new();
    let mut from = None;
    let mut to = None;
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "series" => series.extend(
                v.split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.replace("%3A", ":").replace("%3a", ":")),
            ),
            "from" => {
                from = Some(
                    v.parse::<u64>()
                        .map_err(|_| format!("from={v:?} is not a Unix time in seconds"))?,
                )
            }
            "to" => {
                to = Some(
                    v.parse::<u64>()
                        .map_err(|_| format!("to={v:?} is not a Unix time in seconds"))?,
                )
            }
            _ => {
                return Err(format!(
                    "unknown parameter {k:?}; expected series, from, to"
                ))
            }
        }
    }
    if series.is_empty() {
        return Err("series is required, e.g. series=upstream:products:p99".into());
    }
    let to_ms = to.map_or(now_ms, |t| t * 1000);
    let from_ms = from.map_or(to_ms.saturating_sub(3_600_000), |f| f * 1000);
    if from_ms >= to_ms {
        return Err("from must be before to".into());
    }
    let tier = (0..3)
        .find(|&i| {
            let t = &TIERS[i];
            from_ms + t.keep_ms >= now_ms && (to_ms - from_ms) / t.step_ms <= 2000
        })
        .unwrap_or(2);
    let spec = &TIERS[tier];
    let first = from_ms - from_ms % spec.step_ms;
    let n = ((to_ms - first) / spec.step_ms + 1) as usize;
    let t: Vec<u64> = (0..n as u64)
        .map(|i| (first + i * spec.step_ms) / 1000)
        .collect();
    let mut out = serde_json::Map::new();
    for name in &series {
        let mut parts = name.splitn(3, ':');
        let (Some(kind), Some(ent), Some(value)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "series {name:?} is not KIND:NAME:VALUE, e.g. upstream:products:p99"
            ));
        };
        let values = values_of(kind).ok_or_else(|| {
            format!("unknown kind {kind:?} in {name:?}; expected upstream, service or probe")
        })?;
        let idx = values.iter().position(|v| *v == value).ok_or_else(|| {
            format!(
                "unknown value {value:?} in {name:?}; {kind} has {}",
                values.join(", ")
            )
        })?;
        let mut col: Vec<Value> = vec![Value::Null; n];
        let entity = format!("{kind}:{ent}");
        let chunk_ms = spec.chunk_ms();
        let lo = first - first % chunk_ms;
        let mut st = conn
            .prepare_cached("SELECT start, data FROM chunk WHERE tier = ?1 AND series = ?2 AND start >= ?3 AND start <= ?4")
            .map_err(|e| format!("history query failed: {e}"))?;
        let rows = st
            .query_map(params![tier as u8, entity, lo as i64, to_ms as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(|e| format!("history query failed: {e}"))?;
        for row in rows {
            let (start, data) = row.map_err(|e| format!("history query failed: {e}"))?;
            for (slot, vals) in decode(&data, values.len()) {
                let at = start as u64 + u64::from(slot) * spec.step_ms;
                if at < first || at > to_ms {
                    continue;
                }
                let i = ((at - first) / spec.step_ms) as usize;
                if let (Some(cell), Some(v)) = (col.get_mut(i), vals.get(idx)) {
                    if v.is_finite() {
                        *cell = json!(f64::from(*v));
                    }
                }
            }
        }
        out.insert(name.clone(), Value::Array(col));
    }
    Ok(json!({ "step": spec.step_ms / 1000, "t": t, "series": out }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::figures::{ProbeFigures, ServerFigures, ServiceFigures, UpstreamFigures};
    use crate::metrics::{Histogram, HistogramSnapshot, LATENCY_BOUNDS};

    fn figures(upstreams: usize, services: usize, probes: usize, n: u64) -> Arc<Figures> {
        let h = Histogram::new(LATENCY_BOUNDS);
        for _ in 0..10 {
            h.observe(std::time::Duration::from_millis(3));
        }
        let mut latency = h.snapshot();
        for c in &mut latency.counts {
            *c *= n;
        }
        Arc::new(Figures {
            upstreams: (0..upstreams)
                .map(|i| UpstreamFigures {
                    name: format!("up{i}"),
                    requests: n * 100,
                    errors: n,
                    latency: latency.clone(),
                    error_latency: HistogramSnapshot::empty(LATENCY_BOUNDS),
                    servers: vec![ServerFigures {
                        name: "127.0.0.1:1".into(),
                        state: "up",
                    }],
                    in_flight: 3,
                    max_in_flight: 100,
                    queued: 0,
                })
                .collect(),
            services: (0..services)
                .map(|i| ServiceFigures {
                    name: format!("svc{i}"),
                    cpu_seconds: n as f64,
                    memory_bytes: 100 << 20,
                    ..Default::default()
                })
                .collect(),
            probes: (0..probes)
                .map(|i| ProbeFigures {
                    name: format!("probe{i}"),
                    up: true,
                    duration: 0.01,
                    ..Default::default()
                })
                .collect(),
            slos: Vec::new(),
            backups: Vec::new(),
        })
    }

    fn tmp(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "centinela-history-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn points_come_back_by_tier_and_series() {
        let dir = tmp("query");
        let (store, _) = Store::open(&dir).unwrap();
        let mut h = History::new(store.clone(), STEP_MS);
        let t0 = 1_796_220_000_000u64; // a multiple of an hour
        for i in 0..=60u64 {
            h.record(t0 + i * STEP_MS, figures(1, 1, 1, i));
        }
        h.flush();
        store.flush();
        let conn = store.reader().unwrap();
        let now = t0 + 600_000;
        let q = format!(
            "series=upstream:up0:rps,upstream:up0:error_ratio,upstream:up0:p99,service:svc0:cpu,probe:probe0:up&from={}&to={}",
            t0 / 1000,
            now / 1000
        );
        let v = query(&conn, &q, now).unwrap();
        assert_eq!(v["step"], 10);
        assert_eq!(v["t"][0], t0 / 1000);
        let rps = &v["series"]["upstream:up0:rps"];
        // No rate at the first point; 100 requests per 10 s after.
        assert!(rps[0].is_null());
        assert_eq!(rps[1], 10.0);
        assert_eq!(rps[60], 10.0);
        assert_eq!(v["series"]["upstream:up0:error_ratio"][5], 0.01f32 as f64);
        let p99 = v["series"]["upstream:up0:p99"][5].as_f64().unwrap();
        assert!((0.0025..=0.005).contains(&p99), "{p99}");
        assert_eq!(v["series"]["service:svc0:cpu"][3], 0.1f32 as f64);
        assert_eq!(v["series"]["probe:probe0:up"][3], 1.0);
        // The 5-minute tier holds the mean of its first slot.
        let v = query(
            &conn,
            &format!(
                "series=upstream:up0:rps&from={}&to={}",
                t0 / 1000,
                (t0 + 86_400_000 * 5) / 1000
            ),
            t0 + 86_400_000 * 5,
        )
        .unwrap();
        assert_eq!(v["step"], 300);
        assert_eq!(v["series"]["upstream:up0:rps"][1], 10.0);
        // Errors name the cause.
        for (q, want) in [
            ("from=1", "series is required"),
            ("series=upstream:x", "is not KIND:NAME:VALUE"),
            ("series=disk:x:y", "unknown kind"),
            ("series=upstream:x:p42", "upstream has rps"),
            ("series=upstream:x:rps&from=soon", "not a Unix time"),
        ] {
            let e = query(&conn, q, now).unwrap_err();
            assert!(e.contains(want), "{q}: {e}");
        }
        drop(conn);
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A restart in the middle of a chunk (an hour of 10 s points, a day
    /// of 5 min points, a week of hourly ones) keeps the points written
    /// before it.
    #[test]
    fn a_restart_keeps_the_points_of_the_chunks_being_filled() {
        let dir = tmp("restart");
        let (store, _) = Store::open(&dir).unwrap();
        let t0 = 1_796_220_000_000u64; // a multiple of an hour
        let mut h = History::new(store.clone(), STEP_MS);
        for i in 0..=40u64 {
            h.record(t0 + i * STEP_MS, figures(1, 0, 0, i));
        }
        h.flush();
        store.flush();
        drop(h);
        // The next process: a new History on the same file, same chunk.
        let mut h = History::new(store.clone(), STEP_MS);
        for i in 50..=60u64 {
            h.record(t0 + i * STEP_MS, figures(1, 0, 0, i));
        }
        h.flush();
        store.flush();
        let conn = store.reader().unwrap();
        let q = format!(
            "series=upstream:up0:in_flight&from={}&to={}",
            t0 / 1000,
            (t0 + 600_000) / 1000
        );
        let v = query(&conn, &q, t0 + 600_000).unwrap();
        let col = v["series"]["upstream:up0:in_flight"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(col[10], 3.0, "a point from before the restart");
        assert_eq!(col[40], 3.0);
        assert!(col[45].is_null(), "nothing recorded while stopped");
        assert_eq!(col[55], 3.0);
        drop(conn);
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Two years of synthetic time for 20 upstreams, 20 probes and 10
    /// services stay under 100 MB. The clock is injected: hourly points
    /// for all but the last 90 days (only the hourly tier keeps those),
    /// 5-minute points until the last 48 hours, then every 10 s.
    #[test]
    fn two_years_of_history_stay_under_100_mb() {
        let dir = tmp("size");
        let (store, _) = Store::open(&dir).unwrap();
        let mut h = History::new(store.clone(), 3_600_000);
        let day = 86_400_000u64;
        let start = 1_733_000_000_000u64 - 1_733_000_000_000 % 3_600_000;
        let end = start + 730 * day;
        let mut t = start;
        let mut n = 0;
        while t < end {
            h.record(t, figures(20, 10, 20, n));
            n += 1;
            let left = end - t;
            t += if left > 90 * day {
                3_600_000
            } else if left > 2 * day {
                300_000
            } else {
                STEP_MS
            };
        }
        h.flush();
        store.flush();
        let conn = store.reader().unwrap();
        let mut size = 0;
        for f in ["state.db", "state.db-wal"] {
            let len = std::fs::metadata(dir.join(f)).map_or(0, |m| m.len());
            eprintln!("{f}: {len} bytes");
            size += len;
        }
        assert!(size < 100 << 20, "history file is {size} bytes");
        // Every tier holds what it should, and no more.
        let count = |tier: i64| -> i64 {
            conn.query_row(
                "SELECT count(*) FROM chunk WHERE tier = ?1",
                params![tier],
                |r| r.get(0),
            )
            .unwrap()
        };
        // 48 h of hourly chunks (+1 being filled) for 50 entities…
        assert!((48 * 50..=50 * 50).contains(&count(0)), "{}", count(0));
        // …91 daily chunks, and 105 weekly ones.
        assert!((90 * 50..=92 * 50).contains(&count(1)), "{}", count(1));
        assert!((104 * 50..=106 * 50).contains(&count(2)), "{}", count(2));
        eprintln!("two years of history: {size} bytes");
        drop(conn);
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
