//! Rate limits: at most `limit` requests in any window of `window`, per key.
//!
//! # The algorithm: a sliding window of sub-buckets, counted conservatively
//!
//! The window is cut into [`SUB`] buckets of `window / SUB`. A key keeps
//! one counter per bucket for the last `SUB + 1` buckets: the current one
//! and the `SUB` before it, a span between `window` and `window × (1 +
//! 1/SUB)` long that always contains the exact window ending now. A request
//! is admitted only if that span holds fewer than `limit + burst`.
//!
//! - **Overshoot: none.** The exact window ending at any admission lies
//!   inside the span counted, so no window of length `window` ever holds
//!   more than `limit + burst` admitted requests (tested by brute force
//!   against the exact count).
//! - **Undershoot, bounded.** The span may reach one bucket further back,
//!   so a client can be held to `limit` per `window × 1.1`: it may wait up
//!   to one bucket (`window / SUB`, 30 s of a 5 min window) longer than an
//!   exact sliding log would make it.
//! - Two-bucket sliding counters (Cloudflare's, nginx's leaky bucket) and
//!   GCRA (governor) let up to about twice the limit through in some
//!   window; a sliding log is exact but keeps every timestamp
//!   (`limit × 8` bytes per key).
//!
//! Memory: one [`Slot`] per key (`SUB + 1` counters and the current bucket
//! number), 56 bytes with its key, which is kept as a 64-bit keyed hash
//! (SipHash with a random key: two of a million keys share a count with a
//! chance of about 3 in 100 million, and no one can choose keys that do). Keys with nothing in their span
//! are dropped by [`Local::sweep`], and at `max_keys` the least recently
//! seen of a sample of keys is forgotten (Redis's approximate LRU): a
//! forgotten key starts afresh, and memory stays bounded however many
//! source addresses a flood uses.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::Duration;

/// Buckets per window.
pub const SUB: u32 = 10;
/// Counters kept per key: the window's buckets and the current one.
const SPAN: usize = SUB as usize + 1;
/// Independent locks.
const SHARDS: usize = 64;
/// Keys looked at to choose one to forget at `max_keys`.
const SAMPLE: usize = 16;

/// What a limit decided for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted; `remaining` more fit in the current span.
    Allow { remaining: u32 },
    /// Over the limit: the request that would be admitted first may come
    /// after `retry_after`.
    Deny { retry_after: Duration },
}

/// Where a limit keeps its counts: in this process ([`Local`]), or, with
/// the Scale-out issue, in Redis, shared by several hosts.
pub trait Store: Send + Sync {
    /// Counts a request of `key` at `now` (time since the limiter's
    /// start), if the limit admits it.
    fn hit(&self, key: u128, now: Duration) -> Verdict;
    /// Forgets keys with nothing left in their span.
    fn sweep(&self, now: Duration);
    /// Keys tracked.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The shape of a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Requests admitted per window: `limit + burst`.
    pub capacity: u32,
    pub window: Duration,
}

impl Shape {
    fn bucket_ms(&self) -> u64 {
        (self.window.as_millis() as u64 / u64::from(SUB)).max(1)
    }
}

/// One key's counts.
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// The bucket number `counts[last % SPAN]` counts.
    last: u32,
    counts: [u32; SPAN],
}

impl Slot {
    /// Moves the slot to bucket `k`, zeroing buckets that left the span.
    fn advance(&mut self, k: u32) {
        let gap = k.wrapping_sub(self.last);
        if gap as usize >= SPAN {
            self.counts = [0; SPAN];
        } else {
            for b in 1..=gap {
                self.counts[(self.last.wrapping_add(b)) as usize % SPAN] = 0;
            }
        }
        self.last = k;
    }

    fn hit(&mut self, shape: &Shape, now_ms: u64) -> Verdict {
        let bucket_ms = shape.bucket_ms();
        let k = (now_ms / bucket_ms) as u32;
        if k.wrapping_sub(self.last) as i32 >= 0 {
            self.advance(k);
        }
        let total: u64 = self.counts.iter().map(|&c| u64::from(c)).sum();
        let cap = u64::from(shape.capacity);
        if total < cap {
            self.counts[k as usize % SPAN] += 1;
            return Verdict::Allow {
                remaining: (cap - total - 1) as u32,
            };
        }
        // The oldest buckets leave the span one by one: bucket m leaves
        // when bucket m + SPAN begins.
        let mut left = total;
        for j in 0..SPAN as i64 {
            let m = i64::from(k) - i64::from(SUB) + j;
            left -= u64::from(self.counts[m.rem_euclid(SPAN as i64) as usize]);
            if left < cap {
                let at = (m + SPAN as i64).max(0) as u64 * bucket_ms;
                return Verdict::Deny {
                    retry_after: Duration::from_millis(at.saturating_sub(now_ms)),
                };
            }
        }
        Verdict::Deny {
            retry_after: shape.window,
        }
    }

    /// Nothing counted in the span that `k` begins.
    fn is_dead(&self, k: u32) -> bool {
        k.wrapping_sub(self.last) as usize >= SPAN || self.counts.iter().all(|&c| c == 0)
    }
}

/// Keys are hashed already: the maps use the hash as it is.
#[derive(Clone, Copy, Default)]
struct Hashed;

#[derive(Default)]
struct Passthrough(u64);

impl std::hash::Hasher for Passthrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl BuildHasher for Hashed {
    type Hasher = Passthrough;
    fn build_hasher(&self) -> Passthrough {
        Passthrough(0)
    }
}

type Shard = Mutex<HashMap<u64, Slot, Hashed>>;

/// A limit's counts in this process: sharded maps of key → [`Slot`].
pub struct Local {
    shape: Shape,
    shards: Box<[Shard]>,
    /// Keys per shard at most.
    per_shard: usize,
    hasher: std::hash::RandomState,
}

impl Local {
    pub fn new(shape: Shape, max_keys: usize) -> Local {
        Local {
            shape,
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(Hashed)))
                .collect(),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
            hasher: std::hash::RandomState::new(),
        }
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The key's keyed hash, and its shard (from the hash's top bits;
    /// the map indexes by its low bits).
    fn locate(&self, key: u128) -> (u64, &Shard) {
        let h = self.hasher.hash_one(key);
        (h, &self.shards[(h >> 58) as usize % SHARDS])
    }

    /// The bytes one key takes in the maps, its control byte included
    /// (hashbrown keeps one per bucket, and at most 7 of 8 buckets full).
    pub const fn bytes_per_key() -> usize {
        (std::mem::size_of::<(u64, Slot)>() + 1) * 8 / 7
    }

    /// Bytes the maps hold now (buckets allocated, full or not).
    pub fn bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let cap = s.lock().unwrap_or_else(|p| p.into_inner()).capacity();
                // Buckets: the next power of two above cap × 8/7.
                let buckets = (cap * 8 / 7).next_power_of_two();
                buckets * (std::mem::size_of::<(u64, Slot)>() + 1)
            })
            .sum()
    }
}

impl Store for Local {
    fn hit(&self, key: u128, now: Duration) -> Verdict {
        let now_ms = now.as_millis() as u64;
        let (key, shard) = self.locate(key);
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = map.get_mut(&key) {
            return slot.hit(&self.shape, now_ms);
        }
        if map.len() >= self.per_shard {
            make_room(&mut map, (now_ms / self.shape.bucket_ms()) as u32);
        }
        let mut slot = Slot {
            last: (now_ms / self.shape.bucket_ms()) as u32,
            counts: [0; SPAN],
        };
        let v = slot.hit(&self.shape, now_ms);
        map.insert(key, slot);
        v
    }

    fn sweep(&self, now: Duration) {
        let k = (now.as_millis() as u64 / self.shape.bucket_ms()) as u32;
        for shard in self.shards.iter() {
            let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, s| !s.is_dead(k));
            if map.capacity() > 64 && map.len() < map.capacity() / 4 {
                map.shrink_to_fit();
            }
        }
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

/// A full shard: drop its dead keys, else the least recently seen of a
/// sample.
fn make_room(map: &mut HashMap<u64, Slot, Hashed>, k: u32) {
    let before = map.len();
    map.retain(|_, s| !s.is_dead(k));
    if map.len() < before {
        return;
    }
    let victim = map
        .iter()
        .take(SAMPLE)
        .min_by_key(|(_, s)| s.last)
        .map(|(key, _)| *key);
    if let Some(key) = victim {
        map.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn shape(capacity: u32, window_ms: u64) -> Shape {
        Shape {
            capacity,
            window: ms(window_ms),
        }
    }

    #[test]
    fn admits_the_limit_then_denies_with_the_time_to_wait() {
        let l = Local::new(shape(3, 10_000), 100);
        for i in 0..3 {
            assert_eq!(l.hit(7, ms(100)), Verdict::Allow { remaining: 2 - i });
        }
        // Bucket width 1 s; the three hits are in bucket 0, which leaves
        // the span when bucket 11 begins (11 s).
        assert_eq!(
            l.hit(7, ms(100)),
            Verdict::Deny {
                retry_after: ms(10_900)
            }
        );
        // Another key has its own count.
        assert!(matches!(l.hit(8, ms(100)), Verdict::Allow { .. }));
        assert!(matches!(l.hit(7, ms(10_999)), Verdict::Deny { .. }));
        assert!(matches!(l.hit(7, ms(11_000)), Verdict::Allow { .. }));
    }

    /// Brute force: random arrivals, every admission checked against the
    /// exact count of admissions in the window ending at it.
    #[test]
    fn no_window_ever_holds_more_than_the_capacity() {
        let mut rng = fastrand::Rng::with_seed(7);
        for (cap, window) in [(5u32, 1_000u64), (20, 10_000), (2000, 300_000), (1, 500)] {
            let l = Local::new(shape(cap, window), 10);
            let mut admitted: Vec<u64> = Vec::new();
            let mut now = 0u64;
            let mut denied = 0;
            for _ in 0..20_000 {
                // Bursts and pauses.
                now += if rng.u8(..) < 200 {
                    rng.u64(0..=window / u64::from(cap).max(1) / 2 + 1)
                } else {
                    rng.u64(0..=window)
                };
                match l.hit(1, ms(now)) {
                    Verdict::Allow { .. } => {
                        admitted.push(now);
                        let from = now.saturating_sub(window - 1);
                        let n = admitted.iter().rev().take_while(|&&t| t >= from).count();
                        assert!(
                            n as u32 <= cap,
                            "{n} > {cap} in a window of {window} ms ending at {now}"
                        );
                    }
                    Verdict::Deny { retry_after } => {
                        denied += 1;
                        assert!(retry_after <= ms(window + window / u64::from(SUB)));
                    }
                }
            }
            assert!(admitted.len() > cap as usize);
            assert!(denied > 0 || cap > 100, "{cap}: nothing denied");
        }
    }

    #[test]
    fn retry_after_is_when_a_request_is_admitted_again() {
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..200 {
            let l = Local::new(shape(10, 60_000), 10);
            let mut now = 0;
            loop {
                now += rng.u64(0..3_000);
                if let Verdict::Deny { retry_after } = l.hit(1, ms(now)) {
                    let at = now + retry_after.as_millis() as u64;
                    // A moment before: still denied; at the time: admitted.
                    if at > now + 1 {
                        assert!(matches!(l.hit(1, ms(at - 1)), Verdict::Deny { .. }));
                    }
                    assert!(matches!(l.hit(1, ms(at)), Verdict::Allow { .. }));
                    break;
                }
            }
        }
    }

    #[test]
    fn a_steady_client_gets_at_least_the_limit_per_window_and_a_tenth() {
        // One request a millisecond against 100 per second: the span is
        // at most 1.1 s, so at least 100 per 1.1 s get through.
        let l = Local::new(shape(100, 1_000), 10);
        let mut ok = 0;
        for i in 0..11_000u64 {
            if matches!(l.hit(1, ms(i)), Verdict::Allow { .. }) {
                ok += 1;
            }
        }
        // 11 s at 1 request per ms: between 1000 and 1100 admitted.
        assert!((1000..=1100).contains(&ok), "{ok}");
    }

    #[test]
    fn keys_expire_and_max_keys_bounds_the_map() {
        let l = Local::new(shape(5, 1_000), 640);
        for k in 0..10_000u128 {
            l.hit(k, ms(10));
        }
        // At most max_keys (rounded up per shard) are kept.
        assert!(l.len() <= 640, "{}", l.len());
        assert!(l.len() >= 600, "{}", l.len());
        // A key forgotten starts afresh; one still kept is still counted.
        l.sweep(ms(10));
        assert!(l.len() > 0);
        // After the span has passed, every key is dead.
        l.sweep(ms(1_200));
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn one_key_takes_under_150_bytes() {
        assert_eq!(std::mem::size_of::<(u64, Slot)>(), 56);
        assert_eq!(Local::bytes_per_key(), 65);
        // Measured: the maps' buckets for 200,000 keys, including the room
        // hashbrown keeps free.
        let l = Local::new(shape(10, 60_000), 1_000_000);
        for k in 0..200_000u128 {
            l.hit(k, ms(1));
        }
        assert_eq!(l.len(), 200_000);
        let per_key = l.bytes() / l.len();
        println!("rate limit: {per_key} bytes per key with 200,000 keys");
        assert!(per_key < 150, "{per_key}");
    }
}
