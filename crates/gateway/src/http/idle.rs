//! A lazy inactivity timer for waits that usually do not wait: reading a
//! body, writing to a client. While data moves, nothing is armed and no
//! clock is read; the first wait that is pending allocates one timer, and
//! later progress only moves the deadline it is checked against. Small
//! (24 bytes), as it sits in every response body.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

#[derive(Debug)]
pub struct IdleTimer {
    timeout: Duration,
    armed: Option<Box<Armed>>,
}

#[derive(Debug)]
struct Armed {
    /// Last progress since the timer was armed.
    last: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl IdleTimer {
    pub fn new(timeout: Duration) -> IdleTimer {
        IdleTimer {
            timeout,
            armed: None,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Something moved.
    #[inline]
    pub fn progress(&mut self) {
        if let Some(a) = &mut self.armed {
            a.last = Instant::now();
        }
    }

    /// To be called when a wait is pending: `Ready` once nothing moved for
    /// the timeout. Registers `cx` to be woken then.
    // Out of line: the callers' ready paths stay small.
    #[inline(never)]
    pub fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let timeout = self.timeout;
        let armed = self.armed.get_or_insert_with(|| {
            // Until now every wait ended at once: that was progress.
            let now = Instant::now();
            Box::new(Armed {
                last: now,
                sleep: Box::pin(tokio::time::sleep_until(now + timeout)),
            })
        });
        loop {
            if armed.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let deadline = armed.last + timeout;
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            armed.sleep.as_mut().reset(deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    #[tokio::test(start_paused = true)]
    async fn fires_only_after_a_whole_timeout_without_progress() {
        assert_eq!(std::mem::size_of::<IdleTimer>(), 24);
        let mut t = IdleTimer::new(Duration::from_secs(10));
        // Armed by a pending wait.
        assert!(poll_fn(|cx| Poll::Ready(t.poll_idle(cx)))
            .await
            .is_pending());
        tokio::time::advance(Duration::from_secs(9)).await;
        t.progress();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(poll_fn(|cx| Poll::Ready(t.poll_idle(cx)))
            .await
            .is_pending());
        let start = Instant::now();
        poll_fn(|cx| t.poll_idle(cx)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }
}
