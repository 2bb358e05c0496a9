//! Autoscaling decisions, pure: time, the wall clock and the signal go in,
//! the instance count to run comes out with its reasons. The supervisor
//! feeds it once a second (`lib.rs::autoscale`) and carries it out.
//!
//! As Kubernetes' HPA: the signal (requests in flight per ready instance,
//! or CPU%) is averaged over `up_after` to go up and over `down_after` to
//! go down, so that one burst does not flap it; going up asks for
//! `ceil(current × observed / target)` at once, going down removes one
//! instance at a time, never below `min` or the schedule's current `min`,
//! and not within `cooldown` of the last change. A ratio within 10% of the
//! target changes nothing. After going up the averages start afresh: the
//! samples before spoke of fewer instances.

use std::collections::VecDeque;
use std::time::Duration;

use centinela_config::Scale;
use tokio::time::Instant;

const TOLERANCE: f64 = 0.1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

/// A change of the instance count, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub from: u32,
    pub to: u32,
    pub direction: Direction,
    pub reason: String,
}

#[derive(Debug)]
pub struct Autoscaler {
    cfg: Scale,
    samples: VecDeque<(Instant, f64)>,
    last_change: Option<Instant>,
}

impl Autoscaler {
    pub fn new(cfg: Scale) -> Self {
        Autoscaler {
            cfg,
            samples: VecDeque::new(),
            last_change: None,
        }
    }

    pub fn config(&self) -> &Scale {
        &self.cfg
    }

    /// The lowest count allowed at `wall` (Unix seconds): `min`, or the
    /// `min` of the schedule entry that fired last.
    pub fn floor(&self, wall: u64) -> u32 {
        let scheduled = self
            .cfg
            .schedule
            .iter()
            .filter_map(|e| Some((e.cron.last_at_or_before(wall)?, e.min)))
            .max_by_key(|(t, _)| *t)
            .map(|(_, m)| m);
        scheduled
            .unwrap_or(self.cfg.min)
            .max(self.cfg.min)
            .min(self.cfg.max)
    }

    /// The signal's mean over the last `window`, once samples cover it.
    fn mean(&self, now: Instant, window: Duration) -> Option<f64> {
        let oldest = self.samples.front()?.0;
        // One sample a second: the window is covered once the oldest is a
        // second short of it.
        if now.duration_since(oldest) + Duration::from_secs(1) < window {
            return None;
        }
        let since = now.checked_sub(window).unwrap_or(oldest);
        let (sum, n) = self
            .samples
            .iter()
            .filter(|(t, _)| *t > since)
            .fold((0.0, 0u32), |(s, n), (_, v)| (s + v, n + 1));
        (n > 0).then(|| sum / f64::from(n))
    }

    /// Takes one sample of the signal (`None`: no ready instance to read
    /// it from) with `current` instances running, all ready or not, and
    /// says what to change, if anything.
    pub fn observe(
        &mut self,
        now: Instant,
        wall: u64,
        current: u32,
        all_ready: bool,
        signal: Option<f64>,
    ) -> Option<Decision> {
        let keep = self.cfg.up_after.max(self.cfg.down_after);
        if let Some(v) = signal {
            self.samples.push_back((now, v));
        }
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > keep)
        {
            self.samples.pop_front();
        }
        let floor = self.floor(wall);
        let decide = |to: u32, direction, reason: String| {
            Some(Decision {
                from: current,
                to,
                direction,
                reason,
            })
        };
        let d = if current < floor {
            decide(
                floor,
                Direction::Up,
                format!("below the minimum of {floor} instance(s)"),
            )
        } else if current > self.cfg.max {
            decide(
                self.cfg.max,
                Direction::Down,
                format!("above the maximum of {}", self.cfg.max),
            )
        } else {
            self.by_load(now, current, floor, all_ready)
        }?;
        self.last_change = Some(now);
        // More instances share the load from now on: the samples taken
        // before say nothing of it, and would scale up again at once.
        if d.direction == Direction::Up {
            self.samples.clear();
        }
        Some(d)
    }

    fn by_load(&self, now: Instant, current: u32, floor: u32, all_ready: bool) -> Option<Decision> {
        let target = match self.cfg.target {
            centinela_config::ScaleTarget::InFlight(t) | centinela_config::ScaleTarget::Cpu(t) => t,
        };
        let what = match self.cfg.target {
            centinela_config::ScaleTarget::InFlight(_) => "requests in flight per ready instance",
            centinela_config::ScaleTarget::Cpu(_) => "CPU% per instance",
        };
        // Instances just started are not counted until they are ready.
        if !all_ready {
            return None;
        }
        if let Some(up) = self.mean(now, self.cfg.up_after) {
            let want = (f64::from(current) * up / target).ceil() as u32;
            if up > target * (1.0 + TOLERANCE) && want > current && current < self.cfg.max {
                let to = want.min(self.cfg.max);
                return Some(Decision {
                    from: current,
                    to,
                    direction: Direction::Up,
                    reason: format!(
                        "{what} averaged {up:.2} over {}s, target {target}: ceil({current} × {up:.2} / {target}) = {want}{}",
                        self.cfg.up_after.as_secs(),
                        if want > to { format!(", capped at max {to}") } else { String::new() }
                    ),
                });
            }
        }
        let cooled = self
            .last_change
            .is_none_or(|t| now.duration_since(t) >= self.cfg.cooldown);
        if current > floor && cooled {
            if let Some(down) = self.mean(now, self.cfg.down_after) {
                let want = (f64::from(current) * down / target).ceil() as u32;
                if down < target * (1.0 - TOLERANCE) && want < current {
                    return Some(Decision {
                        from: current,
                        to: current - 1,
                        direction: Direction::Down,
                        reason: format!(
                            "{what} averaged {down:.2} over {}s, target {target}: ceil({current} × {down:.2} / {target}) = {want}; one instance at a time, not below {floor}",
                            self.cfg.down_after.as_secs()
                        ),
                    });
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use centinela_config::{ScaleSchedule, ScaleTarget};

    fn cfg() -> Scale {
        Scale {
            min: 2,
            max: 8,
            target: ScaleTarget::InFlight(20.0),
            up_after: Duration::from_secs(10),
            down_after: Duration::from_secs(120),
            cooldown: Duration::from_secs(30),
            schedule: vec![
                ScaleSchedule {
                    cron: centinela_config::cron::Cron::parse("0 8 * * 1-5").unwrap(),
                    min: 4,
                },
                ScaleSchedule {
                    cron: centinela_config::cron::Cron::parse("0 20 * * *").unwrap(),
                    min: 2,
                },
            ],
        }
    }

    /// 2026-12-07 was a Monday; Unix seconds at `h`:`m` UTC that day.
    fn monday(h: u64, m: u64) -> u64 {
        1_796_601_600 + h * 3600 + m * 60
    }

    #[test]
    fn the_schedule_sets_the_floor_from_its_last_entry_that_fired() {
        let a = Autoscaler::new(cfg());
        assert_eq!(a.floor(monday(7, 59)), 2, "Sunday 20:00 fired last");
        assert_eq!(a.floor(monday(8, 0)), 4);
        assert_eq!(a.floor(monday(19, 59)), 4);
        assert_eq!(a.floor(monday(20, 0)), 2);
        // Saturday 08:00: the weekday entry does not fire.
        assert_eq!(a.floor(monday(8, 0) + 5 * 86_400), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_does_not_flap_it_a_sustained_load_scales_by_the_ratio() {
        let mut a = Autoscaler::new(cfg());
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let wall = monday(12, 0);
        // A 2 s burst of 100 in flight per instance (five times the
        // target), then quiet: its 10 s average stays within the target.
        for s in 0..20 {
            let v = if s < 2 { 100.0 } else { 0.0 };
            assert_eq!(a.observe(at(s), wall, 4, true, Some(v)), None, "second {s}");
        }
        // 50 per instance for 10 s, 4 instances, target 20: ceil(4×50/20)
        // = 10, capped at 8, at once.
        let mut a = Autoscaler::new(cfg());
        let mut got = None;
        for s in 0..10 {
            got = got.or(a.observe(at(s), wall, 4, true, Some(50.0)));
        }
        let d = got.expect("scaled up");
        assert_eq!((d.from, d.to, d.direction), (4, 8, Direction::Up));
        assert!(
            d.reason
                .contains("ceil(4 × 50.00 / 20) = 10, capped at max 8"),
            "{}",
            d.reason
        );
    }

    #[tokio::test(start_paused = true)]
    async fn it_goes_down_one_at_a_time_after_down_after_and_cooldown_never_below_the_floor() {
        let mut a = Autoscaler::new(cfg());
        let t0 = Instant::now();
        let wall = monday(12, 0); // floor 4 by the schedule
        let mut current = 7;
        let mut downs = Vec::new();
        for s in 0..600u64 {
            let now = t0 + Duration::from_secs(s);
            if let Some(d) = a.observe(now, wall, current, true, Some(1.0)) {
                assert_eq!(d.direction, Direction::Down);
                assert_eq!(d.to, current - 1);
                downs.push(s);
                current = d.to;
            }
        }
        assert_eq!(current, 4, "stops at the schedule's floor");
        // First after down_after (120 s), then one per cooldown (30 s).
        assert_eq!(downs, vec![119, 149, 179]);
        // Below the floor: back up at once, whatever the load.
        let d = a
            .observe(t0 + Duration::from_secs(601), wall, 2, false, None)
            .unwrap();
        assert_eq!((d.to, d.direction), (4, Direction::Up));
    }
}
