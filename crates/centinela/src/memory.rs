//! Giving freed heap memory back to the kernel.
//!
//! glibc keeps memory freed in the middle of the heap: after a burst of
//! traffic (read and write buffers of many connections), RSS stays at the
//! burst's level. HAProxy calls `malloc_trim` when it releases its pools;
//! centinela does it every 10 s. The call walks the allocator's free lists
//! (well under a millisecond for a heap of tens of MiB) and `madvise`s whole
//! free pages away.
#![allow(unsafe_code)]

use std::time::Duration;

/// Runs forever: trims the heap every `every`. Only on glibc.
pub async fn trim_periodically(every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        trim();
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim(3) takes a size and touches only the allocator's
    // own state, under the allocator's own locks; it is safe to call at any
    // time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
