//! The repository: content-defined chunks named by their BLAKE3 hash,
//! compressed with zstd and encrypted with age to the backup's recipients;
//! per snapshot an encrypted manifest and a plaintext index.
//!
//! ```text
//! REPO/centinela-repo                      format marker
//! REPO/chunks/ab/ab…(64 hex)               age(zstd(chunk)), named BLAKE3(chunk)
//! REPO/snapshots/BACKUP/ID.manifest        age(zstd(JSON)): what to rebuild, and how
//! REPO/snapshots/BACKUP/ID.index           JSON: time, sizes, and the BLAKE3 of the stored
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

/// What stands first in a repository's marker file.
const MARKER: &str = "centinela-repo 1\n";

/// Chunk sizes of FastCDC (2020): small enough that a change to a page
/// costs a few tens of KiB, large enough to keep the object count low.
pub const MIN_CHUNK: u32 = 16 * 1024;
pub const AVG_CHUNK: u32 = 64 * 1024;
pub const MAX_CHUNK: u32 = 256 * 1024;

pub type Result<T> = std::result::Result<T, String>;

/// A repository in a local directory.
pub struct Repo {
    root: PathBuf,
}

/// A stored object's checksum (BLAKE3 of its bytes as stored) and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub b3: String,
    pub size: u64,
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

fn io_err(what: &str, path: &Path, e: std::io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

impl Repo {
    /// Opens the repository at `root`, making it when the directory is
    /// missing or empty. A non-empty directory that is not a repository is
    /// refused (nothing in it is touched).
    pub fn open(root: &Path) -> Result<Repo> {
        let marker = root.join("centinela-repo");
        match std::fs::read_to_string(&marker) {
            Ok(m) if m == MARKER => {}
            Ok(_) => {
                return Err(format!(
                    "{} is a repository of another format version",
                    root.display()
                ))
            }
            Err(_) => {
                std::fs::create_dir_all(root).map_err(|e| io_err("cannot create", root, e))?;
                let empty = std::fs::read_dir(root)
                    .map_err(|e| io_err("cannot read", root, e))?
                    .next()
                    .is_none();
                if !empty {
                    return Err(format!(
                        "{} is not empty and not a centinela repository; refusing to write into it",
                        root.display()
                    ));
                }
                let repo = Repo {
                    root: root.to_path_buf(),
                };
                repo.put("centinela-repo", MARKER.as_bytes())?;
                return Ok(repo);
            }
        }
        Ok(Repo {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn chunk_key(id: &str) -> String {
        format!("chunks/{}/{id}", &id[..2])
    }

    /// Writes `bytes` under `key` atomically: a temporary file, flushed,
    /// then renamed into place, and the directory flushed.
    pub fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let dest = self.root.join(key);
        let tmp_dir = self.root.join("tmp");
        std::fs::create_dir_all(&tmp_dir).map_err(|e| io_err("cannot create", &tmp_dir, e))?;
        let tmp = tmp_dir.join(format!("{:016x}", fastrand::u64(..)));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(&tmp, &dest)?;
            if let Some(parent) = dest.parent() {
                std::fs::File::open(parent)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io_err("cannot write", &dest, e)
        })
    }

    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        let p = self.root.join(key);
        std::fs::read(&p).map_err(|e| io_err("cannot read", &p, e))
    }

    fn exists(&self, key: &str) -> bool {
        self.root.join(key).is_file()
    }

    /// Every snapshot index of `backup`, oldest first.
    pub fn indexes(&self, backup: &str) -> Result<Vec<Index>> {
        let dir = self.root.join("snapshots").join(backup);
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err("cannot read", &dir, e)),
        };
        for e in entries {
            let e = e.map_err(|e| io_err("cannot read", &dir, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".index") {
                let key = format!("snapshots/{backup}/{name}");
                let v: Value = serde_json::from_slice(&self.get(&key)?)
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

    /// The stored checksum of every chunk the listed snapshots use.
    fn known_chunks(&self) -> Result<HashMap<String, Stored>> {
        let mut known = HashMap::new();
        let dir = self.root.join("snapshots");
        let Ok(backups) = std::fs::read_dir(&dir) else {
            return Ok(known);
        };
        for b in backups.flatten() {
            for idx in self.indexes(&b.file_name().to_string_lossy())? {
                known.extend(idx.chunks);
            }
        }
        Ok(known)
    }
}

/// 64 lowercase hex digits: a BLAKE3 hash as chunks are named.
fn is_chunk_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn parse_index(v: &Value) -> Option<Index> {
    let stored = |v: &Value| -> Option<Stored> {
        Some(Stored {
            b3: v.get("b3")?.as_str()?.to_string(),
            size: v.get("size")?.as_u64()?,
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
        let packed = zstd::bulk::compress(plain, self.level)
            .map_err(|e| format!("zstd compression failed: {e}"))?;
        let enc = age::Encryptor::with_recipients(
            self.recipients.iter().map(|r| r as &dyn age::Recipient),
        )
        .map_err(|e| format!("age: {e}"))?;
        let mut out = Vec::with_capacity(packed.len() + 256);
        let mut w = enc.wrap_output(&mut out).map_err(|e| format!("age: {e}"))?;
        w.write_all(&packed).map_err(|e| format!("age: {e}"))?;
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

    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>> {
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
        zstd::stream::decode_all(&packed[..]).map_err(|e| format!("zstd: {e}"))
    }
}

fn b3(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Writes one snapshot: chunks as they come, the manifest, then the index.
pub struct Writer<'a> {
    repo: &'a Repo,
    sealer: &'a Sealer,
    backup: String,
    kind: String,
    id: String,
    started: u64,
    known: HashMap<String, Stored>,
    used: Vec<(String, Stored)>,
    used_ids: std::collections::HashSet<String>,
    pub source_bytes: u64,
    pub added_bytes: u64,
    /// Synthetic times (tests, imports): started and finished at this.
    at: Option<u64>,
    /// PostgreSQL: the base backup's first WAL segment.
    pub wal_start: Option<String>,
    _lock: Lock,
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
            known: repo.known_chunks()?,
            used: Vec::new(),
            used_ids: Default::default(),
            source_bytes: 0,
            added_bytes: 0,
            at: None,
            wal_start: None,
            _lock: lock,
        })
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
            ids.push(self.chunk(&chunk.data)?);
        }
        Ok(ids)
    }

    /// Stores one chunk unless the repository has it; its id.
    pub fn chunk(&mut self, plain: &[u8]) -> Result<String> {
        self.source_bytes += plain.len() as u64;
        let id = b3(plain);
        let key = Repo::chunk_key(&id);
        let stored = match self.known.get(&id) {
            Some(s) if self.repo.exists(&key) => s.clone(),
            _ => {
                let sealed = self.sealer.seal(plain)?;
                let s = Stored {
                    b3: b3(&sealed),
                    size: sealed.len() as u64,
                };
                self.repo.put(&key, &sealed)?;
                self.added_bytes += s.size;
                self.known.insert(id.clone(), s.clone());
                s
            }
        };
        if self.used_ids.insert(id.clone()) {
            self.used.push((id.clone(), stored));
        }
        Ok(id)
    }

    /// Seals the manifest, then writes the index: the snapshot exists from
    /// here on.
    pub fn finish(mut self, manifest: Value) -> Result<Index> {
        let sealed = self.sealer.seal(manifest.to_string().as_bytes())?;
        let manifest = Stored {
            b3: b3(&sealed),
            size: sealed.len() as u64,
        };
        let base = format!("snapshots/{}/{}", self.backup, self.id);
        self.repo.put(&format!("{base}.manifest"), &sealed)?;
        self.added_bytes += manifest.size;
        let finished = self.at.unwrap_or_else(now_secs);
        let chunks: Vec<Value> = self
            .used
            .iter()
            .map(|(id, s)| json!({ "id": id, "b3": s.b3, "size": s.size }))
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
        self.repo
            .put(&format!("{base}.index"), index.to_string().as_bytes())?;
        Ok(Index {
            id: self.id,
            backup: self.backup,
            kind: self.kind,
            started: self.started,
            finished,
            source_bytes: self.source_bytes,
            added_bytes: self.added_bytes,
            manifest,
            chunks: std::mem::take(&mut self.used),
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

    /// One chunk's content, its stored bytes and its content checked.
    pub fn chunk(&self, id: &str) -> Result<Vec<u8>> {
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
        let plain = self
            .opener
            .open(&sealed)
            .map_err(|e| self.broken(&what, &e))?;
        if b3(&plain) != id {
            return Err(self.broken(&what, "its content does not match its name"));
        }
        Ok(plain)
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
    for idx in repo.indexes(backup)? {
        let mut check = |what: String, key: String, want: &Stored| -> Option<Vec<u8>> {
            match repo.get(&key) {
                Err(_) => {
                    problems.push(format!("snapshot {} of {backup}: {what}: missing", idx.id));
                    None
                }
                Ok(bytes) => match check_stored(&bytes, want) {
                    Ok(()) => Some(bytes),
                    Err(e) => {
                        problems.push(format!("snapshot {} of {backup}: {what}: {e}", idx.id));
                        None
                    }
                },
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
        for (id, bytes) in chunks {
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
/// exclusive one. Each is a file under `locks/` saying who holds it; one
/// whose holder is gone (a dead process on this host) or that is older
/// than [`STALE_AFTER`] (a dead host) is taken over, and the take-over is
/// logged. The protocol never lets both sides proceed: each creates its
/// own file first, then looks for the other kind.
pub struct Lock {
    path: Option<PathBuf>,
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
    fn dir(repo: &Repo) -> Result<PathBuf> {
        let d = repo.root.join("locks");
        std::fs::create_dir_all(&d).map_err(|e| io_err("cannot create", &d, e))?;
        Ok(d)
    }

    fn write(path: &Path) -> Result<()> {
        let body = json!({ "host": host(), "pid": std::process::id(), "time": now_secs() });
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| io_err("cannot take the lock", path, e))?;
        f.write_all(body.to_string().as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| io_err("cannot take the lock", path, e))
    }

    /// Who holds the lock at `path`, when it is still held; stale locks
    /// are removed (and logged).
    fn holder(path: &Path) -> Option<String> {
        let text = std::fs::read_to_string(path).ok()?;
        let v: Value = serde_json::from_str(&text).unwrap_or_default();
        let (h, pid, time) = (
            v["host"].as_str().unwrap_or("?").to_string(),
            v["pid"].as_u64().unwrap_or(0),
            v["time"].as_u64().unwrap_or(0),
        );
        let dead_here = h == host() && !Path::new(&format!("/proc/{pid}")).exists();
        let old = now_secs().saturating_sub(time) > STALE_AFTER.as_secs();
        if dead_here || old {
            tracing::warn!(lock = %path.display(), holder_host = %h, holder_pid = pid, "Taking over a stale repository lock");
            let _ = std::fs::remove_file(path);
            return None;
        }
        Some(format!("process {pid} on {h}"))
    }

    /// A backup's lock: while a prune holds the repository (another
    /// backup's, a moment), it waits, up to [`PRUNE_WAIT`].
    pub fn shared(repo: &Repo) -> Result<Lock> {
        let dir = Lock::dir(repo)?;
        let deadline = std::time::Instant::now() + PRUNE_WAIT;
        loop {
            let path = dir.join(format!("backup-{:016x}", fastrand::u64(..)));
            Lock::write(&path)?;
            let Some(who) = Lock::holder(&dir.join("exclusive")) else {
                return Ok(Lock { path: Some(path) });
            };
            let _ = std::fs::remove_file(&path);
            if std::time::Instant::now() >= deadline {
                return Err(format!(
                    "{} has been pruned by {who} for {} s; try again when it is done",
                    repo.root.display(),
                    PRUNE_WAIT.as_secs()
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Prune's lock: refused while a backup or another prune runs.
    pub fn exclusive(repo: &Repo) -> Result<Lock> {
        let dir = Lock::dir(repo)?;
        let path = dir.join("exclusive");
        if let Some(who) = Lock::holder(&path) {
            return Err(format!("{} is being pruned by {who}", repo.root.display()));
        }
        Lock::write(&path)?;
        let lock = Lock { path: Some(path) };
        for e in std::fs::read_dir(&dir).map_err(|e| io_err("cannot read", &dir, e))? {
            let p = e.map_err(|e| io_err("cannot read", &dir, e))?.path();
            if p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("backup-"))
            {
                if let Some(who) = Lock::holder(&p) {
                    return Err(format!(
                        "a backup by {who} is writing to {}; prune waits for it",
                        repo.root.display()
                    ));
                }
            }
        }
        Ok(lock)
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_file(p);
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
                let p = repo.root.join(format!("snapshots/{backup}/{id}.{ext}"));
                std::fs::remove_file(&p).map_err(|e| io_err("cannot delete", &p, e))?;
            }
        }
    }
    // Chunks still in use, by every backup of the repo.
    let mut used: std::collections::HashSet<String> = std::collections::HashSet::new();
    let snap_dir = repo.root.join("snapshots");
    if let Ok(backups) = std::fs::read_dir(&snap_dir) {
        for b in backups.flatten() {
            let name = b.file_name().to_string_lossy().into_owned();
            for idx in repo.indexes(&name)? {
                if dry_run && name == backup && out.forgotten.contains(&idx.id) {
                    continue;
                }
                used.extend(idx.chunks.into_iter().map(|(id, _)| id));
            }
        }
    }
    // What dead backups left half-written (no backup runs now).
    if !dry_run {
        for t in std::fs::read_dir(repo.root.join("tmp"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_file(t.path());
        }
    }
    let chunks = repo.root.join("chunks");
    if let Ok(subs) = std::fs::read_dir(&chunks) {
        for sub in subs.flatten() {
            for c in std::fs::read_dir(sub.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let id = c.file_name().to_string_lossy().into_owned();
                if used.contains(&id) {
                    continue;
                }
                out.chunks_deleted += 1;
                out.bytes_deleted += c.metadata().map_or(0, |m| m.len());
                if !dry_run {
                    std::fs::remove_file(c.path())
                        .map_err(|e| io_err("cannot delete", &c.path(), e))?;
                }
            }
        }
    }
    Ok(out)
}
