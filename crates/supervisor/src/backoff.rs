//! Restart delays: exponential from `initial` to `max`, back to `initial`
//! once an instance stayed up for `reset_after`.

use std::time::Duration;

use centinela_config::ServiceBackoff;

#[derive(Debug, Clone)]
pub struct RestartBackoff {
    cfg: ServiceBackoff,
    next: Duration,
    /// Consecutive exits that came before `reset_after` of uptime.
    pub quick_exits: u32,
}

impl RestartBackoff {
    pub fn new(cfg: ServiceBackoff) -> Self {
        RestartBackoff {
            next: cfg.initial,
            cfg,
            quick_exits: 0,
        }
    }

    /// The delay before restarting an instance that ran for `uptime`.
    pub fn on_exit(&mut self, uptime: Duration) -> Duration {
        if uptime >= self.cfg.reset_after {
            self.next = self.cfg.initial;
            self.quick_exits = 0;
        } else {
            self.quick_exits += 1;
        }
        let d = self.next;
        self.next = (self.next * 2).min(self.cfg.max);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_resets_after_stable_uptime() {
        let mut b = RestartBackoff::new(ServiceBackoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            reset_after: Duration::from_secs(60),
        });
        let quick = Duration::from_millis(5);
        let delays: Vec<u128> = (0..6).map(|_| b.on_exit(quick).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.quick_exits, 6);
        assert_eq!(
            b.on_exit(Duration::from_secs(61)),
            Duration::from_millis(100)
        );
        assert_eq!(b.quick_exits, 0);
        assert_eq!(b.on_exit(quick), Duration::from_millis(200));
    }
}
