//! How far the running backup, restore or verify has got: bytes done and,
//! when it can be known, bytes expected. The CLI shows them as a progress
//! bar (a terminal) or as lines (a log). One process runs one such
//! operation at a time; inside `centinela run` nobody reads them.

use std::sync::atomic::{AtomicU64, Ordering};

static DONE: AtomicU64 = AtomicU64::new(0);
static TOTAL: AtomicU64 = AtomicU64::new(0);

pub(crate) fn add(n: u64) {
    DONE.fetch_add(n, Ordering::Relaxed);
}

/// More work expected: a restore's snapshot size, a verify's stored
/// bytes, a backup's previous snapshot (an estimate).
pub(crate) fn expect(n: u64) {
    TOTAL.fetch_add(n, Ordering::Relaxed);
}

/// Bytes done since the process started.
pub fn done() -> u64 {
    DONE.load(Ordering::Relaxed)
}

/// Bytes expected in all (0: not known).
pub fn total() -> u64 {
    TOTAL.load(Ordering::Relaxed)
}
