//! Retry budget: retries may be at most `budget_percent` of requests over a
//! sliding 10 s window, plus a floor of `budget_min` per window, so retries
//! can never multiply an outage.

use std::sync::Mutex;

use centinela_observe::metrics::Counter;
use std::time::Duration;

use tokio::time::Instant;

const BUCKETS: usize = 10;
const SLICE: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct RetryBudget {
    origin: Instant,
    /// (second since origin, requests, retries)
    buckets: Mutex<[(u64, u64, u64); BUCKETS]>,
    /// Retries granted, ever (`centinela_upstream_retries_total`).
    pub retries: Counter,
    /// Retries refused because the budget was spent
    /// (`centinela_upstream_retry_budget_exhausted_total`).
    pub exhausted: Counter,
}

impl RetryBudget {
    pub fn new() -> Self {
        RetryBudget {
            origin: Instant::now(),
            buckets: Mutex::new([(u64::MAX, 0, 0); BUCKETS]),
            retries: Counter::default(),
            exhausted: Counter::default(),
        }
    }

    fn with_current<R>(&self, f: impl FnOnce(&mut (u64, u64, u64), u64, u64) -> R) -> R {
        let idx = Instant::now()
            .saturating_duration_since(self.origin)
            .as_secs()
            / SLICE.as_secs();
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (mut req, mut ret) = (0, 0);
        for x in b.iter() {
            if x.0 != u64::MAX && x.0 + BUCKETS as u64 > idx && x.0 != idx {
                req += x.1;
                ret += x.2;
            }
        }
        let cur = &mut b[(idx % BUCKETS as u64) as usize];
        if cur.0 != idx {
            *cur = (idx, 0, 0);
        }
        f(cur, req + cur.1, ret + cur.2)
    }

    /// Counts one client request.
    pub fn record_request(&self) {
        self.with_current(|cur, _, _| cur.1 += 1);
    }

    /// Takes one retry from the budget if there is room.
    pub fn try_retry(&self, percent: u32, min: u32) -> bool {
        let granted = self.with_current(|cur, requests, retries| {
            let allowed = (requests * u64::from(percent) / 100).max(u64::from(min));
            if retries < allowed {
                cur.2 += 1;
                true
            } else {
                false
            }
        });
        match granted {
            true => self.retries.inc(),
            false => self.exhausted.inc(),
        }
        granted
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn caps_retries_at_percent_with_floor() {
        let b = RetryBudget::new();
        for _ in 0..1000 {
            b.record_request();
        }
        let granted = (0..1000).filter(|_| b.try_retry(20, 10)).count();
        assert_eq!(granted, 200);
        // The window slides: after 10 s, old requests and retries are gone and
        // only the floor remains.
        tokio::time::advance(Duration::from_secs(11)).await;
        let granted = (0..100).filter(|_| b.try_retry(20, 10)).count();
        assert_eq!(granted, 10);
    }
}
