//! The repository: content-defined chunks named by their BLAKE3 hash,
//! compressed with zstd and encrypted with age to the backup's recipients;
//! per snapshot an encrypted manifest and a plaintext index.
//!
//! ```text
//! REPO/centinela-repo                      format marker
//! REPO/chunks/ab/ab…(64 hex)               age(zstd(chunk)), named BLAKE3(chunk); a delta chunk
//!                                          is age(zstd(chunk, dictionary = its base's content)),
//!                                          its base named in the index (see crate::delta)
//! REPO/snapshots/BACKUP/ID.manifest        age(zstd(JSON)): what to rebuild, and how
//! REPO/snapshots/BACKUP/ID.index           zstd(JSON), not encrypted: time, sizes, and the BLAKE3 of the stored
//!                                          bytes of the manifest and of every chunk it uses
//! REPO/tmp/                                writes in progress
//! ```
//!
//! Every object is written under `tmp/` and renamed into place once
//! flushed to disk; a snapshot is listed once its index exists, and the
//! index is written last, so a backup killed half-way lists nothing and
//! leaves only unreferenced chunks. The index needs no key: `verify`
//! checks every stored byte without being able to read any of them.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

pub use crate::store::Store;

/// What stands first in a repository's marker file.
const MARKER: &str = "centinela-repo 1\n";

/// Chunk sizes of FastCDC (2020): small enough that a change to a page
/// costs a few tens of KiB, large enough to keep the object count low.
pub const MIN_CHUNK: u32 = 16 * 1024;
pub const AVG_CHUNK: u32 = 64 * 1024;
pub const MAX_CHUNK: u32 = 256 * 1024;

pub type Result<T> = std::result::Result<T, String>;

/// A repository: a local directory or an S3 bucket (see [`Store`]).
#[derive(Clone)]
pub struct Repo {
    store: Store,
}

/// A stored object's checksum (BLAKE3 of its bytes as stored) and size;
/// for a delta chunk, the chunk it was compressed against (see
/// [`crate::delta`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub b3: String,
    pub size: u64,
    pub base: Option<String>,
}

/// The listed part of a snapshot: its plaintext index.
#[derive(Clone, Debug)]
pub struct Index {
    pub id: String,
    pub backup: String,
    pub kind: String,
    /// Unix seconds when the backup started and finished.
    pub started: u64,
    pub finished: u64,
    pub source_bytes: u64,
    /// Bytes this snapshot added to the repository (new chunks and its
    /// manifest).
    pub added_bytes: u64,
    pub manifest: Stored,
    /// Every chunk the snapshot uses, once each.
    pub chunks: Vec<(String, Stored)>,
    /// PostgreSQL: the WAL segment the base backup starts in (recovery
    /// needs it and every later one).
    pub wal_start: Option<String>,
}

impl Repo {
    /// Opens the repository in `store`, making it when the place is
    /// missing or empty. A non-empty place that is not a repository is
    /// refused (nothing in it is touched).
    pub fn open(store: Store) -> Result<Repo> {
        let repo = Repo { store };
        match repo.store.get("centinela-repo")? {
            Some(m) if m == MARKER.as_bytes() => Ok(repo),
            Some(_) => Err(format!(
                "{} is a repository of another format version",
                repo.describe()
            )),
            None => {
                let empty = match repo.store.local_root() {
                    Some(root) => {
                        std::fs::create_dir_all(root)
                            .map_err(|e| format!("cannot create {}: {e}", root.display()))?;
                        std::fs::read_dir(root)
                            .map_err(|e| format!("cannot read {}: {e}", root.display()))?
                            .next()
                            .is_none()
                    }
                    None => repo.store.list("")?.is_empty(),
                };
                if !empty {
                    return Err(format!(
                        "{} is not empty and not a centinela repository; refusing to write into it",
                        repo.describe()
                    ));
                }
                repo.store.put("centinela-repo", MARKER.as_bytes())?;
                Ok(repo)
            }
        }
    }

    /// Where it is, for messages: a path or `s3://bucket/prefix`.
    pub fn describe(&self) -> String {
        self.store.describe()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn chunk_key(id: &str) -> String {
        format!("chunks/{}/{id}", &id[..2])
    }

    /// Writes `bytes` under `key` atomically.
    pub fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        self.store.put(key, bytes)
    }

    /// The object under `key`; a missing one is an error that says so.
    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.store
            .get(key)?
            .ok_or_else(|| format!("{key} is missing from {}", self.describe()))
    }

    /// The backups that have snapshots here.
    pub fn backups(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .store
            .list("snapshots/")?
            .into_iter()
            .filter_map(|(k, _)| Some(k.strip_prefix("snapshots/")?.split_once('/')?.0.to_string()))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Every snapshot index of `backup`, oldest first.
    pub fn indexes(&self, backup: &str) -> Result<Vec<Index>> {
        let dir = format!("snapshots/{backup}/");
        let mut out = Vec::new();
        for (key, _) in self.store.list(&dir)? {
            let Some(name) = key.strip_prefix(&dir) else {
                continue;
            };
            if let Some(id) = name.strip_suffix(".index") {
                let Some(bytes) = self.store.get(&key)? else {
                    continue; // pruned meanwhile
                };
                let bytes = unpack_index(bytes)
                    .map_err(|e| format!("snapshot {id}: its index cannot be read: {e}"))?;
                let v: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("snapshot {id}: its index is not valid JSON: {e}"))?;
                // A tampered index cannot name another file or a path.
                let idx = parse_index(&v)
                    .filter(|i| i.id == id && i.backup == backup)
                    .ok_or_else(|| format!("snapshot {id}: its index is malformed"))?;
                out.push(idx);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The chunks a new snapshot can use without writing them: present in
    /// the store and listed by a snapshot (which records their checksum).
    /// Reading the indexes for it, the size of `backup`'s newest snapshot
    /// goes to the progress bar as the estimate.
    fn known_chunks(&self, backup: &str) -> Result<HashMap<String, Stored>> {
        let mut listed = HashMap::new();
        for b in self.backups()? {
            let indexes = self.indexes(&b)?;
            if b == backup {
                if let Some(last) = indexes.last() {
                    crate::progress::expect(last.source_bytes);
                }
            }
            for idx in indexes {
                listed.extend(idx.chunks);
            }
        }
        let mut known = HashMap::new();
        for (key, size) in self.store.list("chunks/")? {
            let id = key.rsplit('/').next().unwrap_or("");
            if let Some(s) = listed.remove(id) {
                if s.size == size {
                    known.insert(id.to_string(), s);
                }
            }
        }
        // A delta chunk is only usable with its whole chain of bases.
        loop {
            let broken: Vec<String> = known
                .iter()
                .filter(|(_, s)| s.base.as_ref().is_some_and(|b| !known.contains_key(b)))
                .map(|(id, _)| id.clone())
                .collect();
            if broken.is_empty() {
                break;
            }
            for id in broken {
                known.remove(&id);
            }
        }
        Ok(known)
    }
}

/// An index as stored: zstd-compressed JSON (or plain JSON, as the first
/// snapshots were written), at most 1 GiB once decompressed.
fn unpack_index(bytes: Vec<u8>) -> std::result::Result<Vec<u8>, String> {
    if !bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Ok(bytes);
    }
    let d = zstd::stream::read::Decoder::new(&bytes[..]).map_err(|e| format!("zstd: {e}"))?;
    let mut out = Vec::new();
    d.take(1 << 30)
        .read_to_end(&mut out)
        .map_err(|e| format!("zstd: {e}"))?;
    Ok(out)
}

/// 64 lowercase hex digits: a BLAKE3 hash as chunks are named.
fn is_chunk_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn parse_index(v: &Value) -> Option<Index> {
    let stored = |v: &Value| -> Option<Stored> {
        let base = match v.get("base") {
            None | Some(Value::Null) => None,
            Some(b) => Some(b.as_str().filter(|b| is_chunk_id(b))?.to_string()),
        };
        Some(Stored {
            b3: v.get("b3")?.as_str()?.to_string(),
            size: v.get("size")?.as_u64()?,
            base,
        })
    };
    Some(Index {
        id: v.get("snapshot")?.as_str()?.to_string(),
        backup: v.get("backup")?.as_str()?.to_string(),
        kind: v.get("kind")?.as_str()?.to_string(),
        started: v.get("started")?.as_u64()?,
        finished: v.get("finished")?.as_u64()?,
        source_bytes: v.get("source_bytes")?.as_u64()?,
        added_bytes: v.get("added_bytes")?.as_u64()?,
        manifest: stored(v.get("manifest")?)?,
        chunks: v
            .get("chunks")?
            .as_array()?
            .iter()
            .map(|c| {
                let id = c.get("id")?.as_str()?;
                is_chunk_id(id).then(|| Some((id.to_string(), stored(c)?)))?
            })
            .collect::<Option<_>>()?,
        wal_start: v
            .get("wal_start")
            .and_then(Value::as_str)
            .filter(|w| w.len() == 24 && w.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_string),
    })
}

/// Seals bytes: zstd, then age to every recipient.
#[derive(Clone)]
pub struct Sealer {
    recipients: Vec<age::x25519::Recipient>,
    level: i32,
}

impl Sealer {
    pub fn new(recipients: &[String], level: i32) -> Result<Sealer> {
        let recipients = recipients
            .iter()
            .map(|r| {
                r.parse::<age::x25519::Recipient>()
                    .map_err(|e| format!("{r:?} is not an age recipient: {e}"))
            })
            .collect::<Result<Vec<_>>>()?;
        if recipients.is_empty() {
            return Err("no age recipient to encrypt to".into());
        }
        Ok(Sealer { recipients, level })
    }

    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>> {
        Ok(self.seal_keep(plain)?.0)
    }

    /// Sealed bytes, and the zstd frame they encrypt.
    fn seal_keep(&self, plain: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
        let packed = crate::delta::zstd(plain, self.level, &[])
            .map_err(|e| format!("compression failed: {e}"))?;
        Ok((self.encrypt(&packed)?, packed))
    }

    /// A delta chunk: compressed with `base` as the dictionary.
    /// At level [`crate::delta::LEVEL`] at least: measured on pgbench's
    /// pages, a third smaller than at level 3 for 1.6 times the time.
    pub fn seal_delta(&self, plain: &[u8], base: &[u8]) -> Result<Vec<u8>> {
        let level = self.level.max(crate::delta::LEVEL);
        self.encrypt(&crate::delta::compress(plain, base, level)?)
    }

    fn encrypt(&self, packed: &[u8]) -> Result<Vec<u8>> {
        let enc = age::Encryptor::with_recipients(
            self.recipients.iter().map(|r| r as &dyn age::Recipient),
        )
        .map_err(|e| format!("age: {e}"))?;
        let mut out = Vec::with_capacity(packed.len() + 256);
        let mut w = enc.wrap_output(&mut out).map_err(|e| format!("age: {e}"))?;
        w.write_all(packed).map_err(|e| format!("age: {e}"))?;
        w.finish().map_err(|e| format!("age: {e}"))?;
        Ok(out)
    }
}

/// Opens sealed bytes with the identities of an age identity file.
pub struct Opener {
    identities: Vec<Box<dyn age::Identity>>,
    file: PathBuf,
}

impl Opener {
    /// Reads an age identity file (`AGE-SECRET-KEY-1…` lines, as
    /// age-keygen writes).
    pub fn from_file(path: &Path) -> Result<Opener> {
        let f = age::IdentityFile::from_file(path.to_string_lossy().into_owned())
            .map_err(|e| format!("cannot read the age identity file {}: {e}", path.display()))?;
        let identities = f
            .into_identities()
            .map_err(|e| format!("{} holds no usable age identity: {e}", path.display()))?;
        if identities.is_empty() {
            return Err(format!("{} holds no age identity", path.display()));
        }
        Ok(Opener {
            identities,
            file: path.to_path_buf(),
        })
    }

    /// The identity file it was read from (age identities are not
    /// `Send`: another thread reads the file again).
    pub fn file(&self) -> &Path {
        &self.file
    }

    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>> {
        let packed = self.decrypt(sealed)?;
        zstd::stream::decode_all(&packed[..]).map_err(|e| format!("zstd: {e}"))
    }

    /// A delta chunk, with its base's content.
    pub fn open_delta(&self, sealed: &[u8], base: &[u8]) -> Result<Vec<u8>> {
        crate::delta::decompress(&self.decrypt(sealed)?, base)
    }

    fn decrypt(&self, sealed: &[u8]) -> Result<Vec<u8>> {
        let dec =
            age::Decryptor::new_buffered(sealed).map_err(|e| format!("not an age file: {e}"))?;
        let mut r = dec
            .decrypt(
                self.identities
                    .iter()
                    .map(|i| i.as_ref() as &dyn age::Identity),
            )
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => format!(
                    "the age identity in {} cannot decrypt this repository's data (a wrong key?)",
                    self.file.display()
                ),
                e => format!("cannot decrypt: {e}"),
            })?;
        let mut packed = Vec::new();
        r.read_to_end(&mut packed)
            .map_err(|e| format!("cannot decrypt: {e}"))?;
        Ok(packed)
    }
}

fn b3(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// How many chunks are sealed and written at once, and how many more may
/// wait for them: what bounds a backup's memory (each at most
/// [`MAX_CHUNK`] plain and about as much sealed), whatever the source's
/// size, and what hides an object store's latency.
pub const UPLOADS: usize = 6;

/// How many threads read a restore's chunks, and how far ahead.
pub const READERS: usize = 4;
pub const READ_AHEAD: usize = 16;

/// Writes one snapshot: chunks as they come (sealed and stored by
/// [`UPLOADS`] threads), the manifest, then the index.
pub struct Writer<'a> {
    repo: &'a Repo,
    sealer: &'a Sealer,
    backup: String,
    kind: String,
    id: String,
    started: u64,
    known: std::sync::Arc<HashMap<String, Stored>>,
    /// Every chunk the snapshot uses, once each, in first-use order.
    used: Vec<String>,
    used_ids: std::collections::HashSet<String>,
    uploads: Uploads,
    pub source_bytes: u64,
    pub added_bytes: u64,
    /// Synthetic times (tests, imports): started and finished at this.
    at: Option<u64>,
    /// PostgreSQL: the base backup's first WAL segment.
    pub wal_start: Option<String>,
    /// Delta chunks: the previous snapshot's local cache, and this one's.
    delta: Option<Delta>,
    _lock: Lock,
}

struct Delta {
    prev: Option<std::sync::Arc<crate::delta::Cache>>,
    next: std::sync::Arc<crate::delta::CacheWriter>,
}

/// What an upload thread does with a chunk.
enum Job {
    /// Seal and store it (against `base`'s content when given and worth
    /// it), and put it in the delta cache.
    Store { id: String, plain: Vec<u8> },
    /// The repo has it: only the delta cache wants it (and the whole
    /// chunk it is a delta of, with that one's content when the old cache
    /// had it).
    Cache {
        id: String,
        plain: Vec<u8>,
        base: Option<String>,
    },
    /// The same, as the old cache holds it (compressed, with features),
    /// and the same for its base.
    Packed {
        id: String,
        packed: Vec<u8>,
        feats: Vec<u64>,
        base: Option<(String, Option<Cached>)>,
    },
}

/// A chunk as the delta cache holds it: compressed, and its features.
type Cached = (Vec<u8>, Vec<u64>);

/// What the upload threads find delta bases with, and fill the next cache.
#[derive(Clone, Default)]
struct DeltaCtx {
    next: Option<std::sync::Arc<crate::delta::CacheWriter>>,
    prev: Option<std::sync::Arc<crate::delta::Cache>>,
    /// The repo's chunks: a base must be one of them, stored whole.
    known: std::sync::Arc<HashMap<String, Stored>>,
}

/// What the upload threads have done.
#[derive(Default)]
struct Done {
    stored: HashMap<String, Stored>,
    added: u64,
    error: Option<String>,
}

/// A bounded queue of chunks to seal and store, and the threads that do.
struct Uploads {
    tx: Option<std::sync::mpsc::SyncSender<Job>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    done: std::sync::Arc<std::sync::Mutex<Done>>,
}

/// A chunk sealed as a delta against `base` when that is less than half
/// the size of the chunk sealed whole; whether it is a delta.
/// A chunk stored whole also gives its zstd frame (before encryption),
/// which the delta cache keeps as it is instead of compressing it again.
fn seal_chunk(
    sealer: &Sealer,
    plain: &[u8],
    base: Option<&(String, Vec<u8>)>,
) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
    let Some((_, content)) = base else {
        let (sealed, packed) = sealer.seal_keep(plain)?;
        return Ok((sealed, Some(packed)));
    };
    let delta = sealer.seal_delta(plain, content)?;
    // Small next to the chunk itself: surely better than whole.
    if delta.len() < plain.len() / 16 {
        return Ok((delta, None));
    }
    let (whole, packed) = sealer.seal_keep(plain)?;
    Ok(if delta.len() * 2 < whole.len() {
        (delta, None)
    } else {
        (whole, Some(packed))
    })
}

impl Uploads {
    fn start(repo: &Repo, sealer: &Sealer, delta: DeltaCtx) -> Uploads {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(UPLOADS);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let done = std::sync::Arc::new(std::sync::Mutex::new(Done::default()));
        let workers = (0..UPLOADS)
            .map(|_| {
                let (rx, done, repo, sealer, delta) = (
                    rx.clone(),
                    done.clone(),
                    repo.clone(),
                    sealer.clone(),
                    delta.clone(),
                );
                let cache = delta.next.clone();
                std::thread::spawn(move || loop {
                    let job = rx.lock().map(|r| r.recv());
                    let Ok(Ok(job)) = job else { return };
                    if done.lock().map_or(true, |d| d.error.is_some()) {
                        continue; // failed already: drain the queue
                    }
                    let (id, plain, base, feats) = match job {
                        Job::Cache { id, plain, base } => {
                            if let Some(c) = &cache {
                                c.add(&id, &plain, base.as_deref(), None);
                            }
                            continue;
                        }
                        Job::Packed {
                            id,
                            packed,
                            feats,
                            base,
                        } => {
                            if let Some(c) = &cache {
                                let b = base.as_ref().map(|(b, _)| b.as_str());
                                c.add_packed(&id, &packed, b, &feats);
                                if let Some((b, Some((packed, feats)))) = &base {
                                    if c.wants(b) {
                                        c.add_packed(b, packed, None, feats);
                                    }
                                }
                            }
                            continue;
                        }
                        Job::Store { id, plain } => {
                            // The whole chunk it resembles most in the
                            // previous snapshot, if the repo has it.
                            let feats = delta.prev.as_ref().map(|_| crate::delta::features(&plain));
                            let base =
                                delta.prev.as_ref().zip(feats.as_ref()).and_then(|(p, f)| {
                                    p.base_for(f, |b| {
                                        b != id
                                            && delta.known.get(b).is_some_and(|s| s.base.is_none())
                                    })
                                });
                            (id, plain, base, feats)
                        }
                    };
                    let r =
                        seal_chunk(&sealer, &plain, base.as_ref()).and_then(|(sealed, whole)| {
                            repo.put(&Repo::chunk_key(&id), &sealed)?;
                            Ok((
                                Stored {
                                    b3: b3(&sealed),
                                    size: sealed.len() as u64,
                                    base: base
                                        .as_ref()
                                        .filter(|_| whole.is_none())
                                        .map(|(b, _)| b.clone()),
                                },
                                whole,
                            ))
                        });
                    let r = r.map(|(s, whole)| {
                        if let Some(c) = cache.as_ref().filter(|c| c.wants(&id)) {
                            match whole {
                                Some(packed) => {
                                    let f = feats.unwrap_or_else(|| crate::delta::features(&plain));
                                    c.add_packed(&id, &packed, None, &f);
                                }
                                None => c.add(&id, &plain, s.base.as_deref(), feats),
                            }
                        }
                        s
                    });
                    if let (Some(c), Ok(s)) = (&cache, &r) {
                        if let Some((b, content)) = base.as_ref().filter(|_| s.base.is_some()) {
                            if c.wants(b) {
                                c.add(b, content, None, None);
                            }
                        }
                    }
                    if let Ok(mut d) = done.lock() {
                        match r {
                            Ok(s) => {
                                d.added += s.size;
                                d.stored.insert(id, s);
                            }
                            Err(e) => {
                                d.error.get_or_insert(e);
                            }
                        }
                    }
                })
            })
            .collect();
        Uploads {
            tx: Some(tx),
            workers,
            done,
        }
    }

    fn failed(&self) -> Option<String> {
        self.done.lock().ok().and_then(|d| d.error.clone())
    }

    fn send(&self, job: Job) -> Result<()> {
        if let Some(e) = self.failed() {
            return Err(e);
        }
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(job).ok())
            .ok_or_else(|| "the upload threads stopped".to_string())
    }

    /// Waits for every queued chunk; what they stored.
    fn finish(&mut self) -> Result<Done> {
        self.tx = None;
        for w in self.workers.drain(..) {
            w.join()
                .map_err(|_| "an upload thread panicked".to_string())?;
        }
        let mut d = self
            .done
            .lock()
            .map_err(|_| "an upload thread panicked".to_string())?;
        let d = std::mem::take(&mut *d);
        match d.error {
            Some(e) => Err(e),
            None => Ok(d),
        }
    }
}

impl Drop for Uploads {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `20261202T183000.123Z-1a2b3c4d`: sorts by the time it started, to the
/// millisecond.
fn snapshot_id(ms: u128) -> String {
    let t = (ms / 1000) as u64;
    let dt = centinela_config::units::civil_from_days((t / 86_400) as i64);
    let rem = t % 86_400;
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z-{:08x}",
        dt.0,
        dt.1,
        dt.2,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000,
        fastrand::u32(..)
    )
}

impl<'a> Writer<'a> {
    pub fn new(repo: &'a Repo, sealer: &'a Sealer, backup: &str, kind: &str) -> Result<Self> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let started = now.as_secs();
        let lock = Lock::shared(repo)?;
        Ok(Writer {
            repo,
            sealer,
            backup: backup.to_string(),
            kind: kind.to_string(),
            id: snapshot_id(now.as_millis()),
            started,
            known: std::sync::Arc::new(repo.known_chunks(backup)?),
            used: Vec::new(),
            used_ids: Default::default(),
            uploads: Uploads::start(repo, sealer, Default::default()),
            source_bytes: 0,
            added_bytes: 0,
            at: None,
            wal_start: None,
            delta: None,
            _lock: lock,
        })
    }

    /// Stores changed chunks as deltas against the chunks they resemble
    /// in the previous snapshot of this backup, found in the local cache
    /// in `dir` (see [`crate::delta`]); leaves this snapshot's cache there
    /// once it is complete. Call before writing any chunk.
    /// `name` tells the caches of one backup in several repos apart.
    /// A cache that cannot be made only costs the deltas (logged).
    pub fn delta_cache(mut self, dir: &Path, name: &str) -> Self {
        let next = match crate::delta::CacheWriter::create(dir, name) {
            Ok(n) => std::sync::Arc::new(n),
            Err(e) => {
                tracing::warn!(backup = %self.backup, error = %e, "No delta cache: changed chunks are stored whole");
                return self;
            }
        };
        let prev = crate::delta::Cache::open(dir, name).map(std::sync::Arc::new);
        // Nothing was queued yet: the threads end at once.
        let _ = self.uploads.finish();
        self.uploads = Uploads::start(
            self.repo,
            self.sealer,
            DeltaCtx {
                next: Some(next.clone()),
                prev: prev.clone(),
                known: self.known.clone(),
            },
        );
        self.delta = Some(Delta { prev, next });
        self
    }

    /// Dates the snapshot `t` (Unix seconds) instead of now: for tests of
    /// retention over synthetic histories, and for imports.
    pub fn at(mut self, t: u64) -> Self {
        self.started = t;
        self.at = Some(t);
        self.id = snapshot_id(u128::from(t) * 1000 + u128::from(fastrand::u16(..1000)));
        self
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Cuts `r` into content-defined chunks, stores those the repository
    /// does not have, and returns the chunk ids in order.
    pub fn stream(&mut self, r: impl Read) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        for chunk in fastcdc::v2020::StreamCDC::new(r, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK) {
            let chunk = chunk.map_err(|e| format!("reading the source: {e}"))?;
            ids.push(self.chunk_owned(chunk.data)?);
        }
        Ok(ids)
    }

    /// Stores one chunk unless the repository has it; its id.
    pub fn chunk(&mut self, plain: &[u8]) -> Result<String> {
        self.chunk_owned(plain.to_vec())
    }

    fn chunk_owned(&mut self, plain: Vec<u8>) -> Result<String> {
        self.source_bytes += plain.len() as u64;
        crate::progress::add(plain.len() as u64);
        let id = b3(&plain);
        if !self.used_ids.insert(id.clone()) {
            return Ok(id);
        }
        self.used.push(id.clone());
        if let Some(known) = self.known.get(&id) {
            let base = known.base.clone();
            if let Some(d) = self.delta.as_ref().filter(|d| d.next.wants(&id)) {
                // Unchanged since the last snapshot: copied from the old
                // cache as it is, its base with it.
                let job = match d.prev.as_ref().and_then(|p| p.packed(&id)) {
                    Some((packed, feats)) => Job::Packed {
                        id: id.clone(),
                        packed,
                        feats,
                        base: base.map(|b| {
                            let old = d.prev.as_ref().and_then(|p| p.packed(&b));
                            (b, old)
                        }),
                    },
                    None => Job::Cache {
                        id: id.clone(),
                        plain,
                        base,
                    },
                };
                self.uploads.send(job)?;
            }
            return Ok(id);
        }
        self.uploads.send(Job::Store {
            id: id.clone(),
            plain,
        })?;
        Ok(id)
    }

    /// Waits for the chunks, seals the manifest, then writes the index:
    /// the snapshot exists from here on.
    pub fn finish(mut self, manifest: Value) -> Result<Index> {
        let done = self.uploads.finish()?;
        self.added_bytes += done.added;
        let mut used = std::mem::take(&mut self.used)
            .into_iter()
            .map(|id| {
                let s = self
                    .known
                    .get(&id)
                    .or_else(|| done.stored.get(&id))
                    .cloned()
                    .ok_or_else(|| format!("chunk {id} was not stored"))?;
                Ok((id, s))
            })
            .collect::<Result<Vec<_>>>()?;
        // The bases of its delta chunks (whole chunks the repo has) are
        // part of the snapshot: prune keeps them, verify checks them.
        let bases: Vec<String> = used
            .iter()
            .filter_map(|(_, s)| s.base.clone())
            .filter(|b| self.used_ids.insert(b.clone()))
            .collect();
        for b in bases {
            let s = self
                .known
                .get(&b)
                .cloned()
                .ok_or_else(|| format!("the base chunk {b} is not in the repository"))?;
            used.push((b, s));
        }
        let sealed = self.sealer.seal(manifest.to_string().as_bytes())?;
        let manifest = Stored {
            b3: b3(&sealed),
            size: sealed.len() as u64,
            base: None,
        };
        let base = format!("snapshots/{}/{}", self.backup, self.id);
        self.repo.put(&format!("{base}.manifest"), &sealed)?;
        self.added_bytes += manifest.size;
        let finished = self.at.unwrap_or_else(now_secs);
        let chunks: Vec<Value> = used
            .iter()
            .map(|(id, s)| match &s.base {
                Some(b) => json!({ "id": id, "b3": s.b3, "size": s.size, "base": b }),
                None => json!({ "id": id, "b3": s.b3, "size": s.size }),
            })
            .collect();
        let index = json!({
            "snapshot": self.id,
            "backup": self.backup,
            "kind": self.kind,
            "started": self.started,
            "finished": finished,
            "source_bytes": self.source_bytes,
            "added_bytes": self.added_bytes,
            "manifest": { "b3": manifest.b3, "size": manifest.size },
            "chunks": chunks,
            "wal_start": self.wal_start,
        });
        // Compressed (zstd), not encrypted: it lists hashes and sizes.
        let packed = zstd::bulk::compress(index.to_string().as_bytes(), 3)
            .map_err(|e| format!("zstd compression failed: {e}"))?;
        self.repo.put(&format!("{base}.index"), &packed)?;
        // The snapshot exists: its content is the next one's delta base.
        if let Some(d) = self.delta.take() {
            drop(d.prev);
            match std::sync::Arc::try_unwrap(d.next) {
                Ok(next) => {
                    if let Err(e) = next.commit() {
                        tracing::warn!(backup = %self.backup, error = %e, "The delta cache was not kept; the next snapshot stores changed chunks whole");
                    }
                }
                Err(_) => {
                    tracing::warn!(backup = %self.backup, "The delta cache is still in use; not kept")
                }
            }
        }
        Ok(Index {
            id: std::mem::take(&mut self.id),
            backup: std::mem::take(&mut self.backup),
            kind: std::mem::take(&mut self.kind),
            started: self.started,
            finished,
            source_bytes: self.source_bytes,
            added_bytes: self.added_bytes,
            manifest,
            chunks: used,
            wal_start: self.wal_start.take(),
        })
    }
}

/// Reads what a snapshot holds, checking every byte on the way.
pub struct Reader<'a> {
    repo: &'a Repo,
    opener: &'a Opener,
    index: &'a Index,
    stored: HashMap<&'a str, &'a Stored>,
}

impl<'a> Reader<'a> {
    pub fn new(repo: &'a Repo, opener: &'a Opener, index: &'a Index) -> Self {
        let stored = index
            .chunks
            .iter()
            .map(|(id, s)| (id.as_str(), s))
            .collect();
        Reader {
            repo,
            opener,
            index,
            stored,
        }
    }

    pub fn manifest(&self) -> Result<Value> {
        let key = format!("snapshots/{}/{}.manifest", self.index.backup, self.index.id);
        let sealed = self
            .repo
            .get(&key)
            .map_err(|e| self.broken("its manifest", &e))?;
        check_stored(&sealed, &self.index.manifest).map_err(|e| self.broken("its manifest", &e))?;
        let plain = self.opener.open(&sealed)?;
        serde_json::from_slice(&plain).map_err(|e| self.broken("its manifest", &e.to_string()))
    }

    /// One chunk's content, its stored bytes and its content checked
    /// (a delta chunk's base first, the same way).
    pub fn chunk(&self, id: &str) -> Result<Vec<u8>> {
        self.chunk_at(id, 0)
    }

    fn chunk_at(&self, id: &str, depth: u8) -> Result<Vec<u8>> {
        let what = format!("chunk {id}");
        let stored = self
            .stored
            .get(id)
            .ok_or_else(|| self.broken(&what, "not listed in the snapshot's index"))?;
        let sealed = self
            .repo
            .get(&Repo::chunk_key(id))
            .map_err(|e| self.broken(&what, &e))?;
        check_stored(&sealed, stored).map_err(|e| self.broken(&what, &e))?;
        let plain = match &stored.base {
            Some(_) if depth >= crate::delta::MAX_DEPTH => {
                return Err(self.broken(&what, "its chain of delta bases is too long"))
            }
            Some(base) => {
                let base = self.chunk_at(base, depth + 1)?;
                self.opener.open_delta(&sealed, &base)
            }
            None => self.opener.open(&sealed),
        }
        .map_err(|e| self.broken(&what, &e))?;
        if b3(&plain) != id {
            return Err(self.broken(&what, "its content does not match its name"));
        }
        crate::progress::add(plain.len() as u64);
        Ok(plain)
    }

    /// Each of `ids`' contents, in order, to `each`: read ahead on
    /// [`READERS`] threads, at most [`READ_AHEAD`] chunks ahead of `each`
    /// (memory stays bounded). The first error (a bad chunk, or `each`'s)
    /// stops it all.
    pub fn each_chunk(
        &self,
        ids: &[&str],
        mut each: impl FnMut(Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::{Condvar, Mutex};
        struct Shared {
            ready: std::collections::BTreeMap<usize, Result<Vec<u8>>>,
            consumed: usize,
        }
        let shared = Mutex::new(Shared {
            ready: Default::default(),
            consumed: 0,
        });
        let changed = Condvar::new();
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let file = self.opener.file().to_path_buf();
        std::thread::scope(|s| {
            for _ in 0..READERS.min(ids.len()) {
                s.spawn(|| {
                    // age identities are not Send: each thread reads the
                    // identity file itself.
                    let opener = Opener::from_file(&file);
                    let reader = opener
                        .as_ref()
                        .map(|o| Reader::new(self.repo, o, self.index))
                        .map_err(Clone::clone);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= ids.len() || stop.load(Ordering::Relaxed) {
                            return;
                        }
                        {
                            let mut g = shared.lock().unwrap_or_else(|p| p.into_inner());
                            while i >= g.consumed + READ_AHEAD && !stop.load(Ordering::Relaxed) {
                                g = changed.wait(g).unwrap_or_else(|p| p.into_inner());
                            }
                        }
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let r = match &reader {
                            Ok(reader) => reader.chunk(ids[i]),
                            Err(e) => Err(e.clone()),
                        };
                        let mut g = shared.lock().unwrap_or_else(|p| p.into_inner());
                        g.ready.insert(i, r);
                        changed.notify_all();
                    }
                });
            }
            let result = (|| {
                for i in 0..ids.len() {
                    let data = {
                        let mut g = shared.lock().unwrap_or_else(|p| p.into_inner());
                        loop {
                            if let Some(r) = g.ready.remove(&i) {
                                g.consumed = i + 1;
                                changed.notify_all();
                                break r;
                            }
                            g = changed.wait(g).unwrap_or_else(|p| p.into_inner());
                        }
                    }?;
                    each(data)?;
                }
                Ok(())
            })();
            stop.store(true, Ordering::Relaxed);
            let _g = shared.lock().unwrap_or_else(|p| p.into_inner());
            changed.notify_all();
            result
        })
    }

    fn broken(&self, what: &str, why: &str) -> String {
        format!(
            "snapshot {} of {}: {what}: {why}",
            self.index.id, self.index.backup
        )
    }
}

fn check_stored(bytes: &[u8], want: &Stored) -> Result<()> {
    if bytes.len() as u64 != want.size {
        return Err(format!(
            "{} bytes stored, {} expected (truncated or replaced)",
            bytes.len(),
            want.size
        ));
    }
    if b3(bytes) != want.b3 {
        return Err("its stored bytes do not match their checksum (corrupt)".into());
    }
    Ok(())
}

/// Checks every listed snapshot of `backup`: its manifest and each chunk
/// present with the stored checksum its index records; with an opener,
/// also decrypted and re-hashed. Every problem is returned, each naming
/// the snapshot and the object.
pub fn verify(repo: &Repo, backup: &str, opener: Option<&Opener>) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let indexes = repo.indexes(backup)?;
    crate::progress::expect(
        indexes
            .iter()
            .flat_map(|i| &i.chunks)
            .map(|(_, s)| s.size)
            .sum(),
    );
    for idx in indexes {
        let mut check = |what: String, key: String, want: &Stored| -> Option<Vec<u8>> {
            match repo.store.get(&key) {
                Ok(None) => {
                    problems.push(format!("snapshot {} of {backup}: {what}: missing", idx.id));
                    None
                }
                Err(e) => {
                    problems.push(format!("snapshot {} of {backup}: {what}: {e}", idx.id));
                    None
                }
                Ok(Some(bytes)) => {
                    crate::progress::add(bytes.len() as u64);
                    match check_stored(&bytes, want) {
                        Ok(()) => Some(bytes),
                        Err(e) => {
                            problems.push(format!("snapshot {} of {backup}: {what}: {e}", idx.id));
                            None
                        }
                    }
                }
            }
        };
        let manifest = check(
            "its manifest".into(),
            format!("snapshots/{backup}/{}.manifest", idx.id),
            &idx.manifest,
        );
        let mut chunks = Vec::new();
        for (id, s) in &idx.chunks {
            if let Some(bytes) = check(format!("chunk {id}"), Repo::chunk_key(id), s) {
                chunks.push((id, bytes));
            }
        }
        let Some(opener) = opener else { continue };
        if let Some(m) = manifest {
            if let Err(e) = opener.open(&m) {
                problems.push(format!(
                    "snapshot {} of {backup}: its manifest: {e}",
                    idx.id
                ));
            }
        }
        let reader = Reader::new(repo, opener, &idx);
        let deltas: std::collections::HashSet<&str> = idx
            .chunks
            .iter()
            .filter(|(_, s)| s.base.is_some())
            .map(|(id, _)| id.as_str())
            .collect();
        for (id, bytes) in chunks {
            if deltas.contains(id.as_str()) {
                // A delta: opened against its base, read the same way.
                if let Err(e) = reader.chunk(id) {
                    problems.push(e);
                }
                continue;
            }
            match opener.open(&bytes) {
                Ok(plain) if b3(&plain) == *id => {}
                Ok(_) => problems.push(format!(
                    "snapshot {} of {backup}: chunk {id}: its content does not match its name",
                    idx.id
                )),
                Err(e) => {
                    problems.push(format!("snapshot {} of {backup}: chunk {id}: {e}", idx.id))
                }
            }
        }
    }
    Ok(problems)
}

/// A lock in the repository: backups hold shared ones, prune the
/// exclusive one. Each is an object under `locks/` saying who holds it,
/// written create-only (a conditional PUT on S3); one whose holder is
/// gone (a dead process on this host) or that is older than
/// [`STALE_AFTER`] (a dead host) is taken over, and the take-over is
/// logged. The protocol never lets both sides proceed: each writes its
/// own object first, then looks for the other kind.
pub struct Lock {
    held: Option<(Store, String)>,
}

/// How long a backup waits for a prune to finish.
pub const PRUNE_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// A lock file this old is from a holder that died elsewhere.
pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

impl Lock {
    fn body() -> Vec<u8> {
        json!({ "host": host(), "pid": std::process::id(), "time": now_secs() })
            .to_string()
            .into_bytes()
    }

    /// Who holds the lock at `key`, when it is still held; stale locks
    /// are removed (and logged).
    fn holder(repo: &Repo, key: &str) -> Result<Option<String>> {
        let Some(bytes) = repo.store.get(key)? else {
            return Ok(None);
        };
        let v: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let (h, pid, time) = (
            v["host"].as_str().unwrap_or("?").to_string(),
            v["pid"].as_u64().unwrap_or(0),
            v["time"].as_u64().unwrap_or(0),
        );
        let dead_here = h == host() && !Path::new(&format!("/proc/{pid}")).exists();
        let old = now_secs().saturating_sub(time) > STALE_AFTER.as_secs();
        if dead_here || old {
            tracing::warn!(repo = %repo.describe(), lock = key, holder_host = %h, holder_pid = pid, "Taking over a stale repository lock");
            repo.store.delete(key)?;
            return Ok(None);
        }
        Ok(Some(format!("process {pid} on {h}")))
    }

    /// A backup's lock: while a prune holds the repository (another
    /// backup's, a moment), it waits, up to [`PRUNE_WAIT`].
    pub fn shared(repo: &Repo) -> Result<Lock> {
        let deadline = std::time::Instant::now() + PRUNE_WAIT;
        loop {
            let key = format!("locks/backup-{:016x}", fastrand::u64(..));
            repo.store.put_new(&key, &Lock::body())?;
            let lock = Lock {
                held: Some((repo.store.clone(), key)),
            };
            let Some(who) = Lock::holder(repo, "locks/exclusive")? else {
                return Ok(lock);
            };
            drop(lock);
            if std::time::Instant::now() >= deadline {
                return Err(format!(
                    "{} has been pruned by {who} for {} s; try again when it is done",
                    repo.describe(),
                    PRUNE_WAIT.as_secs()
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Prune's lock: refused while a backup or another prune runs.
    pub fn exclusive(repo: &Repo) -> Result<Lock> {
        let key = "locks/exclusive";
        if let Some(who) = Lock::holder(repo, key)? {
            return Err(format!("{} is being pruned by {who}", repo.describe()));
        }
        if !repo.store.put_new(key, &Lock::body())? {
            return Err(format!(
                "{} is being pruned by another process",
                repo.describe()
            ));
        }
        let lock = Lock {
            held: Some((repo.store.clone(), key.to_string())),
        };
        for (k, _) in repo.store.list("locks/")? {
            if k.starts_with("locks/backup-") {
                if let Some(who) = Lock::holder(repo, &k)? {
                    return Err(format!(
                        "a backup by {who} is writing to {}; prune waits for it",
                        repo.describe()
                    ));
                }
            }
        }
        Ok(lock)
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if let Some((store, key)) = self.held.take() {
            if let Err(e) = store.delete(&key) {
                tracing::warn!(lock = %key, error = %e, "Cannot release a repository lock; it will be taken over as stale");
            }
        }
    }
}

/// What a prune removed (or, dry, would remove).
#[derive(Debug, Default)]
pub struct Pruned {
    pub forgotten: Vec<String>,
    pub kept: Vec<(String, Vec<&'static str>)>,
    pub chunks_deleted: u64,
    pub bytes_deleted: u64,
    /// PostgreSQL: archived WAL segments older than every kept base backup.
    pub wal_deleted: u64,
}

/// Forgets the snapshots of `backup` that `keep` does not keep, then
/// deletes every chunk that no listed snapshot (of any backup in the repo)
/// uses. Holds the exclusive lock throughout.
pub fn prune(
    repo: &Repo,
    backup: &str,
    keep: centinela_config::backup::Keep,
    dry_run: bool,
) -> Result<Pruned> {
    let _lock = Lock::exclusive(repo)?;
    let indexes = repo.indexes(backup)?;
    let snaps: Vec<crate::retention::Snap> = indexes
        .iter()
        .map(|i| crate::retention::Snap {
            id: i.id.clone(),
            time: i.finished,
        })
        .collect();
    let mut out = Pruned::default();
    for d in crate::retention::apply(keep, &snaps) {
        if d.kept() {
            out.kept.push((d.id, d.reasons));
        } else {
            out.forgotten.push(d.id);
        }
    }
    if !dry_run {
        for id in &out.forgotten {
            // Unlisted first: from here the snapshot does not exist.
            for ext in ["index", "manifest"] {
                repo.store
                    .delete(&format!("snapshots/{backup}/{id}.{ext}"))?;
            }
        }
    }
    // Chunks still in use, by every backup of the repo.
    let mut used: std::collections::HashSet<String> = std::collections::HashSet::new();
    for name in repo.backups()? {
        for idx in repo.indexes(&name)? {
            if dry_run && name == backup && out.forgotten.contains(&idx.id) {
                continue;
            }
            used.extend(idx.chunks.into_iter().map(|(id, _)| id));
        }
    }
    // What dead writers left half-written. No backup runs now, but a
    // wal-push or a backup taking its lock may be writing through tmp/
    // this very moment: only what is an hour old goes.
    if let (false, Some(root)) = (dry_run, repo.store.local_root()) {
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for t in std::fs::read_dir(root.join("tmp"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let old = t
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|m| m < hour_ago);
            if old {
                let _ = std::fs::remove_file(t.path());
            }
        }
    }
    for (key, size) in repo.store.list("chunks/")? {
        let id = key.rsplit('/').next().unwrap_or("");
        if used.contains(id) {
            continue;
        }
        out.chunks_deleted += 1;
        out.bytes_deleted += size;
        if !dry_run {
            repo.store.delete(&key)?;
        }
    }
    Ok(out)
}
