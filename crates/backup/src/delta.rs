//! Delta chunks: a changed chunk stored as its difference from the chunk
//! it replaced.
//!
//! Content-defined chunks make unchanged data free, but a database page
//! that changed by a few bytes (a tuple's `xmax`, the page LSN) changes
//! its whole chunk, and a busy PostgreSQL changes most of its pages
//! between two backups. Such a chunk is stored zstd-compressed with the
//! chunk it resembles in the previous snapshot as the dictionary: a few
//! hundred bytes instead of the whole chunk. Its index entry names that
//! base, so a restore reads the base first, and prune keeps it.
//!
//! Finding the base needs the previous snapshot's content, which this
//! host cannot read from the repo (it holds no identity). So each backup
//! leaves a local cache of what it read, in `state_dir/delta/NAME.*`:
//! every chunk compressed (zstd level 1), and a table of their ids,
//! places, bases and features. A new chunk's features (the smallest
//! values of a rolling hash: content-defined, so a shifted chunk boundary
//! keeps most of them) vote for the old chunk that shares most of them. The cache holds what the host already has (its own database as
//! of the last backup), never anything older; it is mode 0600. Without it
//! (a first backup, another host, a deleted cache) chunks are stored
//! whole: the cache only ever saves space.
//!
//! A delta's base is always a whole chunk: a chunk that resembles a delta
//! is compressed against that delta's base (kept in the cache beside it),
//! so a restore reads at most one extra chunk, and a delta that would
//! not be much smaller than the chunk stored whole is stored whole.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::repo::Result;

/// The longest chain of deltas a chunk may stand at the end of: a delta
/// is always against a whole chunk.
pub const MAX_DEPTH: u8 = 1;

/// The lowest zstd level delta chunks are compressed at: from level 6 on
/// (lazy matching) zstd finds the long matches around a page's few
/// changed bytes, and a delta's input is small.
pub const LEVEL: i32 = 8;

/// How many features describe a chunk.
const FEATURES: usize = 8;

/// A feature that many cached chunks share (runs of spaces or zeros,
/// repeated rows) tells nothing: it is ignored beyond this many.
const COMMON: u32 = 4;

/// The gear table of the rolling hash: fixed pseudo-random words
/// (splitmix64 of 0..256).
fn gear() -> &'static [u64; 256] {
    static GEAR: std::sync::OnceLock<[u64; 256]> = std::sync::OnceLock::new();
    GEAR.get_or_init(|| {
        let mut t = [0u64; 256];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for v in t.iter_mut() {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            *v = z ^ (z >> 31);
        }
        t
    })
}

/// A chunk's features: the smallest distinct values of a gear hash
/// (which depends on the last 64 bytes) over every position, mixed. Like
/// the chunk boundaries they are content-defined, so they survive a
/// shifted boundary, and a few changed bytes touch few of them.
pub fn features(plain: &[u8]) -> Vec<u64> {
    let g = gear();
    let mut h = 0u64;
    // The first 64 bytes only fill the hash.
    let (head, rest) = plain.split_at(plain.len().min(64));
    for b in head {
        h = (h << 1).wrapping_add(g[*b as usize]);
    }
    // The FEATURES smallest distinct values, ascending; `worst` is the
    // largest of them once there are enough (one compare per byte).
    let mut best: Vec<u64> = Vec::with_capacity(FEATURES + 1);
    let mut worst = u64::MAX;
    for b in rest {
        h = (h << 1).wrapping_add(g[*b as usize]);
        if h < worst {
            if let Err(at) = best.binary_search(&h) {
                best.insert(at, h);
                best.truncate(FEATURES);
                if best.len() == FEATURES {
                    worst = best[FEATURES - 1];
                }
            }
        }
    }
    // Mixed, so that a feature is not a small number; 0 means none.
    best.iter()
        .map(|v| v.wrapping_mul(0xff51_afd7_ed55_8ccd) | 1)
        .collect()
}

/// One chunk in the cache: 32-byte id, offset, length, its base's id
/// (zeros: stored whole), features.
const RECORD: usize = 32 + 8 + 4 + 32 + 8 * FEATURES;

struct Entry {
    offset: u64,
    len: u32,
    base: Option<String>,
    features: Vec<u64>,
}

/// The previous snapshot's chunks, as read back from the local cache.
pub struct Cache {
    data: File,
    entries: HashMap<String, Entry>,
    by_feature: HashMap<u64, String>,
}

fn paths(dir: &Path, backup: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{backup}.chunks")),
        dir.join(format!("{backup}.table")),
    )
}

impl Cache {
    /// The cache of `backup` in `dir`, if there is a whole one.
    pub fn open(dir: &Path, backup: &str) -> Option<Cache> {
        let (data_path, table_path) = paths(dir, backup);
        let table = std::fs::read(&table_path).ok()?;
        let data = File::open(&data_path).ok()?;
        let data_len = data.metadata().ok()?.len();
        if table.len() % RECORD != 0 {
            return None;
        }
        let mut entries = HashMap::new();
        let mut by_feature = HashMap::new();
        for r in table.chunks_exact(RECORD) {
            let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
            let id = hex(&r[..32]);
            let offset = u64::from_le_bytes(r[32..40].try_into().ok()?);
            let len = u32::from_le_bytes(r[40..44].try_into().ok()?);
            let base = Some(&r[44..76])
                .filter(|b| b.iter().any(|x| *x != 0))
                .map(hex);
            if offset + u64::from(len) > data_len {
                return None;
            }
            let mut features = Vec::with_capacity(FEATURES);
            for f in r[76..].chunks_exact(8) {
                let f = u64::from_le_bytes(f.try_into().ok()?);
                if f != 0 {
                    by_feature.entry(f).or_insert_with(|| (id.clone(), 0)).1 += 1;
                    features.push(f);
                }
            }
            entries.insert(
                id,
                Entry {
                    offset,
                    len,
                    base,
                    features,
                },
            );
        }
        let by_feature = by_feature
            .into_iter()
            .filter(|(_, (_, n))| *n <= COMMON)
            .map(|(f, (id, _))| (f, id))
            .collect();
        Some(Cache {
            data,
            entries,
            by_feature,
        })
    }

    /// The whole chunk to store `plain` against: the old chunk it most
    /// resembles (most features shared, at least two), or, when that one
    /// is a delta, its base; with its content. `usable(id)`: the repo has
    /// it.
    pub fn base_for(
        &self,
        feats: &[u64],
        usable: impl Fn(&str) -> bool,
    ) -> Option<(String, Vec<u8>)> {
        let mut votes: HashMap<&str, usize> = HashMap::new();
        for f in feats {
            if let Some(id) = self.by_feature.get(f) {
                *votes.entry(id.as_str()).or_default() += 1;
            }
        }
        let (id, n) = votes.into_iter().max_by_key(|(id, n)| (*n, *id))?;
        if n < 2.min(feats.len()) {
            return None;
        }
        let whole = match &self.entries.get(id)?.base {
            Some(b) => b.as_str(),
            None => id,
        };
        if !usable(whole) {
            return None;
        }
        Some((whole.to_string(), self.content(whole)?))
    }

    /// A cached chunk's content, checked against its name: a stale or
    /// damaged cache never makes a wrong base.
    pub fn content(&self, id: &str) -> Option<Vec<u8>> {
        let (packed, _) = self.packed(id)?;
        let content = zstd::stream::decode_all(&packed[..]).ok()?;
        (blake3::hash(&content).to_hex().as_str() == id).then_some(content)
    }

    /// A cached chunk as cached (compressed), with its features: an
    /// unchanged chunk goes into the next cache without work. Unchecked;
    /// [`content`](Self::content) checks it when it is used.
    pub fn packed(&self, id: &str) -> Option<(Vec<u8>, Vec<u64>)> {
        let e = self.entries.get(id)?;
        let mut packed = vec![0u8; e.len as usize];
        std::os::unix::fs::FileExt::read_exact_at(&self.data, &mut packed, e.offset).ok()?;
        Some((packed, e.features.clone()))
    }
}

/// The cache of the snapshot being written: filled by the upload threads,
/// in place of the old one once the snapshot is complete.
pub struct CacheWriter {
    dir: PathBuf,
    backup: String,
    inner: Mutex<Inner>,
}

struct Inner {
    data: Option<File>,
    len: u64,
    table: Vec<u8>,
    seen: HashSet<String>,
    error: Option<String>,
}

impl CacheWriter {
    pub fn create(dir: &Path, backup: &str) -> Result<CacheWriter> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let tmp = dir.join(format!("{backup}.chunks.tmp"));
        let data = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode_0600()
            .open(&tmp)
            .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        Ok(CacheWriter {
            dir: dir.to_path_buf(),
            backup: backup.to_string(),
            inner: Mutex::new(Inner {
                data: Some(data),
                len: 0,
                table: Vec::new(),
                seen: HashSet::new(),
                error: None,
            }),
        })
    }

    /// Whether `id` still needs adding (claims it).
    pub fn wants(&self, id: &str) -> bool {
        self.inner
            .lock()
            .map(|mut i| i.error.is_none() && i.seen.insert(id.to_string()))
            .unwrap_or(false)
    }

    /// Adds a chunk claimed by [`wants`](Self::wants); compresses outside
    /// the lock. A failure only disables the cache (logged once).
    /// `feats`: its features, when they were computed already.
    pub fn add(&self, id: &str, plain: &[u8], base: Option<&str>, feats: Option<Vec<u64>>) {
        let Ok(packed) = zstd(plain, 1, &[]) else {
            return;
        };
        let feats = feats.unwrap_or_else(|| features(plain));
        self.add_packed(id, &packed, base, &feats);
    }

    /// Adds a chunk as [`Cache::packed`] gave it.
    pub fn add_packed(&self, id: &str, packed: &[u8], base: Option<&str>, feats: &[u64]) {
        let Some(raw_id) = hex32(id) else { return };
        let raw_base = base.and_then(hex32).unwrap_or([0; 32]);
        let Ok(mut i) = self.inner.lock() else { return };
        let offset = i.len;
        let written = match i.data.as_mut() {
            Some(f) => f.write_all(packed),
            None => return,
        };
        if let Err(e) = written {
            i.error.get_or_insert(e.to_string());
            i.data = None;
            return;
        }
        i.len += packed.len() as u64;
        i.table.extend_from_slice(&raw_id);
        i.table.extend_from_slice(&offset.to_le_bytes());
        i.table
            .extend_from_slice(&(packed.len() as u32).to_le_bytes());
        i.table.extend_from_slice(&raw_base);
        for k in 0..FEATURES {
            i.table
                .extend_from_slice(&feats.get(k).copied().unwrap_or(0).to_le_bytes());
        }
    }

    /// The snapshot is complete: this cache replaces the old one.
    pub fn commit(self) -> Result<()> {
        let (data_path, table_path) = paths(&self.dir, &self.backup);
        let tmp_data = self.dir.join(format!("{}.chunks.tmp", self.backup));
        let tmp_table = self.dir.join(format!("{}.table.tmp", self.backup));
        let i = self
            .inner
            .into_inner()
            .map_err(|_| "the delta cache's lock was poisoned".to_string())?;
        if let Some(e) = i.error {
            let _ = std::fs::remove_file(&tmp_data);
            return Err(format!("the delta cache could not be written: {e}"));
        }
        if let Some(f) = i.data {
            f.sync_all()
                .map_err(|e| format!("cannot write {}: {e}", tmp_data.display()))?;
        }
        // The table goes first: a table without its data is never read
        // (its offsets pass the data's end), and the pair is renamed
        // table last so that a crash leaves the old pair or the new one.
        let _ = std::fs::remove_file(&table_path);
        std::fs::write(&tmp_table, &i.table)
            .and_then(|()| std::fs::rename(&tmp_data, &data_path))
            .and_then(|()| std::fs::rename(&tmp_table, &table_path))
            .map_err(|e| {
                format!(
                    "cannot write the delta cache in {}: {e}",
                    self.dir.display()
                )
            })
    }
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

fn hex32(id: &str) -> Option<[u8; 32]> {
    if id.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (k, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(id.get(2 * k..2 * k + 2)?, 16).ok()?;
    }
    Some(out)
}

/// zstd at `level` with `dict` (empty: none), through one compression
/// context per thread (making one per chunk showed in profiles).
pub(crate) fn zstd(plain: &[u8], level: i32, dict: &[u8]) -> Result<Vec<u8>> {
    thread_local! {
        static CCTX: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    CCTX.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = Some(zstd::bulk::Compressor::new(level).map_err(|e| format!("zstd: {e}"))?);
        }
        let c = c.as_mut().ok_or("zstd: no compression context")?;
        c.set_dictionary(level, dict)
            .map_err(|e| format!("zstd: {e}"))?;
        c.compress(plain).map_err(|e| format!("zstd: {e}"))
    })
}

/// zstd with `base` as the dictionary.
pub fn compress(plain: &[u8], base: &[u8], level: i32) -> Result<Vec<u8>> {
    zstd(plain, level, base)
}

/// The inverse of [`compress`] (one decompression context per thread).
pub fn decompress(packed: &[u8], base: &[u8]) -> Result<Vec<u8>> {
    thread_local! {
        static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    // The frame says how big its content is ([`compress`] writes it);
    // nothing bigger than a chunk is accepted.
    let size = zstd::zstd_safe::get_frame_content_size(packed)
        .ok()
        .flatten()
        .filter(|n| *n <= 4 * u64::from(crate::repo::MAX_CHUNK))
        .ok_or("zstd: a delta chunk without a valid content size")?;
    DCTX.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?);
        }
        let d = d.as_mut().ok_or("zstd: no decompression context")?;
        d.set_dictionary(base).map_err(|e| format!("zstd: {e}"))?;
        d.decompress(packed, size as usize)
            .map_err(|e| format!("zstd: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_with_sparse_changes_finds_its_old_self_and_compresses_to_little() {
        let dir = std::env::temp_dir().join(format!("centinela-delta-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut rng = fastrand::Rng::with_seed(7);
        let old: Vec<u8> = (0..64 * 1024).map(|_| rng.u8(..)).collect();
        let other: Vec<u8> = old.iter().rev().copied().collect();
        let id = |b: &[u8]| blake3::hash(b).to_hex().to_string();
        let w = CacheWriter::create(&dir, "db").unwrap();
        // A delta of `old`, which names it as its base, first: its
        // features stand for both.
        let mut delta_of_old = old.clone();
        delta_of_old[5000] ^= 1;
        assert!(w.wants(&id(&delta_of_old)));
        w.add(&id(&delta_of_old), &delta_of_old, Some(&id(&old)), None);
        for c in [&old, &other] {
            assert!(w.wants(&id(c)));
            w.add(&id(c), c, None, None);
        }
        assert!(!w.wants(&id(&old)), "each chunk once");
        w.commit().unwrap();

        let mut new = old.clone();
        for page in 0..8 {
            new[page * 8192 + 40..page * 8192 + 48].copy_from_slice(b"changed!");
        }
        let cache = Cache::open(&dir, "db").unwrap();
        // It resembles the delta most: the delta's base, a whole chunk.
        let (base, content) = cache.base_for(&features(&new), |_| true).expect("a base");
        assert_eq!(base, id(&old));
        assert_eq!(content, old);
        assert_eq!(cache.content(&id(&delta_of_old)).unwrap(), delta_of_old);
        // Not in the repo: no base.
        assert!(cache.base_for(&features(&new), |_| false).is_none());
        let delta = compress(&new, &content, 3).unwrap();
        assert!(delta.len() < 1000, "{} bytes", delta.len());
        assert_eq!(decompress(&delta, &content).unwrap(), new);
        // Unrelated content finds nothing.
        let unrelated = vec![9u8; 64 * 1024];
        assert!(cache.base_for(&features(&unrelated), |_| true).is_none());
        // A damaged cache gives no base rather than a wrong one.
        let data = dir.join("db.chunks");
        let mut bytes = std::fs::read(&data).unwrap();
        let n = bytes.len();
        bytes.truncate(n / 2);
        std::fs::write(&data, bytes).unwrap();
        assert!(Cache::open(&dir, "db").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
