//! Per-upstream concurrency limit: `max_in_flight` slots plus a bounded
//! queue with a timeout. Overflow is refused at once.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ProxyError;

#[derive(Debug)]
pub struct Limiter {
    slots: Arc<Semaphore>,
    max: u32,
    queued: AtomicU32,
    queue: u32,
    queue_timeout: Duration,
}

impl Limiter {
    pub fn new(max_in_flight: u32, queue: u32, queue_timeout: Duration) -> Self {
        Limiter {
            slots: Arc::new(Semaphore::new(max_in_flight as usize)),
            max: max_in_flight,
            queued: AtomicU32::new(0),
            queue,
            queue_timeout,
        }
    }

    /// Slots taken: requests admitted and not finished.
    pub fn in_use(&self) -> u32 {
        self.max
            .saturating_sub(self.slots.available_permits().min(u32::MAX as usize) as u32)
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    /// Requests waiting for a slot.
    pub fn queued(&self) -> u32 {
        self.queued.load(Ordering::Relaxed)
    }

    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, ProxyError> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        // Take a queue place, or refuse at once when the queue is full.
        let taken = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q < self.queue).then_some(q + 1)
            });
        if taken.is_err() {
            return Err(ProxyError::QueueFull);
        }
        // Given back however the wait ends, a cancelled waiter included
        // (its request went away: a reset stream, a closed connection).
        let _place = QueuePlace(&self.queued);
        let r = tokio::time::timeout(self.queue_timeout, self.slots.clone().acquire_owned()).await;
        match r {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(ProxyError::QueueFull),
            Err(_) => Err(ProxyError::QueueTimeout),
        }
    }
}

/// A place in the queue, given back when dropped.
struct QueuePlace<'a>(&'a AtomicU32);

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn queue_full_and_queue_timeout() {
        let l = Arc::new(Limiter::new(1, 1, Duration::from_secs(1)));
        let held = l.acquire().await.unwrap();
        // One request may queue...
        let l2 = l.clone();
        let waiter = tokio::spawn(async move { l2.acquire().await.map(|_| ()) });
        tokio::task::yield_now().await;
        // ...the next is refused at once.
        assert!(matches!(l.acquire().await, Err(ProxyError::QueueFull)));
        // The queued one times out after queue_timeout.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(matches!(
            waiter.await.unwrap(),
            Err(ProxyError::QueueTimeout)
        ));
        drop(held);
        assert!(l.acquire().await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_gives_its_queue_place_back() {
        let l = Arc::new(Limiter::new(1, 1, Duration::from_secs(60)));
        let held = l.acquire().await.unwrap();
        for _ in 0..5 {
            // A waiter whose request goes away before a slot frees.
            let l2 = l.clone();
            let waiter = tokio::spawn(async move { l2.acquire().await.map(|_| ()) });
            tokio::task::yield_now().await;
            waiter.abort();
            let _ = waiter.await;
        }
        // The queue still has its one place.
        let l2 = l.clone();
        let waiter = tokio::spawn(async move { l2.acquire().await.map(|_| ()) });
        tokio::task::yield_now().await;
        drop(held);
        assert!(waiter.await.unwrap().is_ok());
    }
}
