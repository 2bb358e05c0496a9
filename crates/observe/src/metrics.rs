//! Lock-free metrics the data plane feeds: a relaxed atomic add per event,
//! no lock, no allocation, no map lookup. They are read at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A monotonic count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Bounds of `centinela_http_request_duration_seconds`: 1 ms to 30 s.
pub const LATENCY_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A histogram of durations with fixed bounds (seconds). Each bucket
/// counts the observations at most its bound and above the one before;
/// the last counts the rest (`+Inf`).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// `bounds` in microseconds, for the comparison on the hot path.
    micros: Box<[u64]>,
    counts: Box<[AtomicU64]>,
    sum_micros: AtomicU64,
}

/// What a histogram held when it was read.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    pub bounds: &'static [f64],
    /// Per bucket, not cumulative; one more than `bounds` (`+Inf`).
    pub counts: Vec<u64>,
    /// Seconds.
    pub sum: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        Histogram {
            bounds,
            micros: bounds.iter().map(|b| (b * 1e6).round() as u64).collect(),
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    #[inline]
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let i = self.micros.partition_point(|b| *b < us);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(us, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

impl HistogramSnapshot {
    /// No observations, with `bounds`.
    pub fn empty(bounds: &'static [f64]) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds `other`'s observations (same bounds) to these.
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum += other.sum;
    }

    /// What was observed since `earlier`, a snapshot of the same histogram.
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            counts: self
                .counts
                .iter()
                .zip(&earlier.counts)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
            sum: (self.sum - earlier.sum).max(0.0),
        }
    }

    /// The `q`-quantile (0..=1) in seconds, interpolated linearly inside
    /// its bucket as Prometheus's `histogram_quantile` does; the highest
    /// bound when it falls in `+Inf`. `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            if c > 0 && (below + c) as f64 >= rank {
                let Some(&hi) = self.bounds.get(i) else {
                    return self.bounds.last().copied();
                };
                let lo = if i == 0 { 0.0 } else { self.bounds[i - 1] };
                let within = ((rank - below as f64) / c as f64).clamp(0.0, 1.0);
                return Some(lo + (hi - lo) * within);
            }
            below += c;
        }
        self.bounds.last().copied()
    }

    /// Observations at most `seconds` (exact at a bound, interpolated
    /// between two).
    pub fn at_most(&self, seconds: f64) -> f64 {
        let mut below = 0.0;
        let mut lo = 0.0;
        for (i, &c) in self.counts.iter().enumerate() {
            let Some(&hi) = self.bounds.get(i) else {
                return below;
            };
            if seconds >= hi {
                below += c as f64;
                lo = hi;
                continue;
            }
            return below + c as f64 * ((seconds - lo) / (hi - lo)).clamp(0.0, 1.0);
        }
        below
    }
}

/// Responses of one listener to one upstream: a count per status code and
/// their durations (to the response head).
#[derive(Debug)]
pub struct RequestStats {
    /// Index `status - 100`, for 100..=599.
    codes: Box<[AtomicU64]>,
    /// Anything outside 100..=599.
    other: AtomicU64,
    pub duration: Histogram,
    /// The durations of 5xx responses alone, so that an SLO with a latency
    /// objective counts a slow error once (`crate::slo`).
    pub error_duration: Histogram,
}

impl Default for RequestStats {
    fn default() -> Self {
        RequestStats {
            codes: (100..600).map(|_| AtomicU64::new(0)).collect(),
            other: AtomicU64::new(0),
            duration: Histogram::new(LATENCY_BOUNDS),
            error_duration: Histogram::new(LATENCY_BOUNDS),
        }
    }
}

impl RequestStats {
    #[inline]
    pub fn record(&self, status: u16, took: Duration) {
        match self.codes.get((status as usize).wrapping_sub(100)) {
            Some(c) => c.fetch_add(1, Ordering::Relaxed),
            None => self.other.fetch_add(1, Ordering::Relaxed),
        };
        self.duration.observe(took);
        if (500..600).contains(&status) {
            self.error_duration.observe(took);
        }
    }

    /// Counts per status code seen at least once.
    pub fn codes(&self) -> Vec<(u16, u64)> {
        self.codes
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let n = c.load(Ordering::Relaxed);
                (n > 0).then_some((i as u16 + 100, n))
            })
            .collect()
    }

    /// All responses, and those that were errors (5xx).
    pub fn totals(&self) -> (u64, u64) {
        let mut all = self.other.load(Ordering::Relaxed);
        let mut errors = 0;
        for (i, c) in self.codes.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            all += n;
            if i >= 400 {
                errors += n;
            }
        }
        (all, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_belongs_to_its_own_bucket() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_micros(1001));
        h.observe(Duration::from_secs(5));
        assert_eq!(h.snapshot().counts, vec![1, 1, 1]);
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let h = Histogram::new(LATENCY_BOUNDS);
        // 100 requests: 90 at 2 ms, 10 at 200 ms.
        for _ in 0..90 {
            h.observe(Duration::from_millis(2));
        }
        for _ in 0..10 {
            h.observe(Duration::from_millis(200));
        }
        let s = h.snapshot();
        let p50 = s.quantile(0.5).unwrap();
        assert!((0.001..=0.0025).contains(&p50), "{p50}");
        let p99 = s.quantile(0.99).unwrap();
        assert!((0.1..=0.25).contains(&p99), "{p99}");
        assert_eq!(s.at_most(0.1), 90.0);
        assert_eq!(s.at_most(0.25), 100.0);
        assert_eq!(
            Histogram::new(LATENCY_BOUNDS).snapshot().quantile(0.5),
            None
        );
        // Beyond the last bound: the last bound.
        let h = Histogram::new(&[0.001]);
        h.observe(Duration::from_secs(9));
        assert_eq!(h.snapshot().quantile(0.99), Some(0.001));
    }

    #[test]
    fn request_stats_count_by_code_and_errors() {
        let r = RequestStats::default();
        r.record(200, Duration::from_millis(1));
        r.record(200, Duration::from_millis(1));
        r.record(503, Duration::from_millis(1));
        r.record(404, Duration::from_millis(1));
        r.record(999, Duration::from_millis(1));
        assert_eq!(r.codes(), vec![(200, 2), (404, 1), (503, 1)]);
        assert_eq!(r.totals(), (5, 1));
        assert_eq!(r.duration.snapshot().count(), 5);
        // The 503 alone, as in totals().
        assert_eq!(r.error_duration.snapshot().count(), 1);
    }
}
