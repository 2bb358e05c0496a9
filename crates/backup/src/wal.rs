//! PostgreSQL's write-ahead log in the repository: `wal-push` (the
//! server's `archive_command`) and `wal-fetch` (a restore's
//! `restore_command`).
//!
//! ```text
//! REPO/wal/BACKUP/000000010000000000000002        age(zstd(segment))
//! REPO/wal/BACKUP/000000010000000000000002.sum    {"b3": …, "size": …} of the stored bytes
//! ```
//!
//! A segment is written once: pushed again with the same content (the
//! server retries after a crash) it succeeds; with other content it is
//! refused, and the server keeps the segment and retries, which raises
//! the alarm in its log.

use std::path::Path;

use centinela_config::backup::{Backup, Repo as RepoCfg};
use serde_json::json;

use crate::ops;
use crate::repo::{Opener, Repo, Result, Sealer};

/// A WAL file name as PostgreSQL names them: a segment (24 hex digits),
/// a timeline history (`00000002.history`), a backup history or a partial
/// segment. Nothing else reaches the repository (no path in a name).
pub fn valid_name(name: &str) -> bool {
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    let (stem, ext) = name.split_once('.').unwrap_or((name, ""));
    match ext {
        "" => stem.len() == 24 && hex(stem),
        "history" => stem.len() == 8 && hex(stem),
        "partial" => stem.len() == 24 && hex(stem),
        e => {
            // 000000010000000000000002.00000028.backup
            stem.len() == 24
                && hex(stem)
                && e.split_once('.')
                    .is_some_and(|(off, b)| off.len() == 8 && hex(off) && b == "backup")
        }
    }
}

fn key(backup: &str, name: &str) -> String {
    format!("wal/{backup}/{name}")
}

/// Archives the WAL file at `path` into every repo of the backup. Ok only
/// when every repo has it.
pub fn push(b: &Backup, all: &[RepoCfg], path: &Path) -> Result<()> {
    let (name, data) = read_wal(path)?;
    push_bytes(b, all, &name, &data, false)
}

fn read_wal(path: &Path) -> Result<(String, Vec<u8>)> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| valid_name(n))
        .ok_or_else(|| format!("{} is not a WAL file name", path.display()))?;
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok((name.to_string(), data))
}

/// Archives the segment `pg_receivewal` is still writing
/// (`SEGMENT.partial`), replacing the copy sent before: with `wal =
/// "stream"` the repos are at most one upload behind the server. A
/// restore that finds no complete segment uses it.
pub fn push_partial(b: &Backup, all: &[RepoCfg], path: &Path) -> Result<()> {
    let (name, data) = read_wal(path)?;
    if !name.ends_with(".partial") {
        return Err(format!("{} is not a partial segment", path.display()));
    }
    push_bytes(b, all, &name, &data, true)
}

/// Deletes the partial copy of `segment` from every repo, once the
/// complete segment is archived.
pub fn drop_partial(b: &Backup, all: &[RepoCfg], segment: &str) -> Result<()> {
    for cfg in ops::repos_of(b, all)? {
        let repo = ops::open(cfg)?;
        let k = key(&b.name, &format!("{segment}.partial"));
        repo.store().delete(&format!("{k}.sum"))?;
        repo.store().delete(&k)?;
    }
    Ok(())
}

fn push_bytes(b: &Backup, all: &[RepoCfg], name: &str, data: &[u8], replace: bool) -> Result<()> {
    let plain_b3 = blake3::hash(data).to_hex().to_string();
    let sealer = Sealer::new(&b.encrypt_to, b.zstd_level)?;
    let mut errors = Vec::new();
    let mut sealed: Option<Vec<u8>> = None;
    for cfg in ops::repos_of(b, all)? {
        let r = (|| -> Result<()> {
            let repo = ops::open(cfg)?;
            let k = key(&b.name, name);
            if let Some(sum) = repo.store().get(&format!("{k}.sum"))? {
                let v: serde_json::Value = serde_json::from_slice(&sum).unwrap_or_default();
                if v["plain_b3"] == plain_b3.as_str() {
                    return Ok(());
                }
                if !replace {
                    return Err(format!(
                        "{name} is already archived with other content; refusing to overwrite it"
                    ));
                }
            }
            let bytes = match &sealed {
                Some(s) => s.clone(),
                None => {
                    let s = sealer.seal(data)?;
                    sealed = Some(s.clone());
                    s
                }
            };
            repo.put(&k, &bytes)?;
            let sum = json!({
                "b3": blake3::hash(&bytes).to_hex().to_string(),
                "size": bytes.len(),
                "plain_b3": plain_b3,
            });
            repo.put(&format!("{k}.sum"), sum.to_string().as_bytes())
        })();
        if let Err(e) = r {
            errors.push(format!("repo {}: {e}", cfg.name));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// A WAL file's stored bytes and its checksum file, the bytes checked
/// against it. `Ok(None)`: not there. A partial segment is replaced in
/// place while `pg_receivewal` writes, so a read that meets the new bytes
/// with the old checksum (or the reverse) reads both again.
fn get_checked(repo: &Repo, k: &str) -> Result<Option<(Vec<u8>, serde_json::Value)>> {
    let mut attempts = if k.ends_with(".partial") { 5 } else { 1 };
    loop {
        attempts -= 1;
        let Some(sum) = repo.store().get(&format!("{k}.sum"))? else {
            return Ok(None);
        };
        let v: serde_json::Value = serde_json::from_slice(&sum)
            .map_err(|_| "its checksum file is malformed".to_string())?;
        let Some(bytes) = repo.store().get(k)? else {
            if attempts > 0 {
                continue;
            }
            return Err("missing (its checksum file is there)".into());
        };
        if v["size"] == bytes.len() && v["b3"] == blake3::hash(&bytes).to_hex().as_str() {
            return Ok(Some((bytes, v)));
        }
        if attempts == 0 {
            return Err("its stored bytes do not match their checksum (corrupt)".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Fetches the WAL file `name` into `dest` from the first repo that has
/// it, its stored bytes and content checked. `Ok(false)`: no repo has it
/// (the end of the archive, for a restore).
pub fn fetch(
    b: &Backup,
    all: &[RepoCfg],
    name: &str,
    dest: &Path,
    opener: &Opener,
) -> Result<bool> {
    if !valid_name(name) {
        return Err(format!("{name:?} is not a WAL file name"));
    }
    let mut last_err = None;
    for cfg in ops::repos_of(b, all)? {
        let repo = match ops::open(cfg) {
            Ok(r) => r,
            Err(e) => {
                last_err = Some(e);
                continue;
            }
        };
        let k = key(&b.name, name);
        let (bytes, v) = match get_checked(&repo, &k) {
            Ok(Some(found)) => found,
            Ok(None) => continue,
            Err(e) if e.contains("corrupt") || e.contains("malformed") => {
                return Err(format!("repo {}: {name}: {e}", cfg.name))
            }
            Err(e) => {
                last_err = Some(format!("repo {}: {name}: {e}", cfg.name));
                continue;
            }
        };
        let plain = opener.open(&bytes).map_err(|e| format!("{name}: {e}"))?;
        if v["plain_b3"] != blake3::hash(&plain).to_hex().as_str() {
            return Err(format!(
                "repo {}: {name}: its content does not match",
                cfg.name
            ));
        }
        let tmp = dest.with_extension("centinela-tmp");
        std::fs::write(&tmp, &plain)
            .and_then(|()| std::fs::rename(&tmp, dest))
            .map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
        return Ok(true);
    }
    // Not found anywhere reachable; a repo that could not be asked might
    // have it, so that is no end of the archive.
    if let Some(e) = last_err {
        return Err(e);
    }
    // With wal = "stream", the newest segment is in the repos as the
    // part pg_receivewal had written: recovery replays it to its end.
    if name.len() == 24 {
        return fetch(b, all, &format!("{name}.partial"), dest, opener);
    }
    Ok(false)
}

/// How many segments after the one asked for a `wal-fetch` fetches at
/// once, in parallel, for the next calls: recovery asks for one segment
/// at a time, and an object store's latency would otherwise be paid for
/// each.
pub const PREFETCH: u64 = 8;

/// The segment `n` after `name` on the same timeline (16 MiB segments).
pub fn next_segment(name: &str, n: u64) -> Option<String> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let tli = &name[..8];
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..], 16).ok()?;
    let pos = log * 0x100 + seg + n;
    Some(format!("{tli}{:08X}{:08X}", pos / 0x100, pos % 0x100))
}

/// Where [`fetch_with_prefetch`] keeps segments read ahead: beside
/// `pg_wal` when run in a data directory (PostgreSQL runs its
/// `restore_command` there).
pub fn prefetch_dir() -> Option<std::path::PathBuf> {
    std::env::current_dir()
        .ok()
        .filter(|d| d.join("PG_VERSION").is_file())
        .map(|d| d.join("centinela-prefetch"))
}

/// `restore_command`: [`fetch`], from the read-ahead directory when an
/// earlier call put the segment there. `Ok(Some(true))`: found, and the
/// segments after it are not read ahead yet: the caller starts
/// [`prefetch`] in the background (`wal-fetch --prefetch`, a detached
/// process, so that PostgreSQL does not wait for it). At the end of the
/// archive the directory is removed.
pub fn fetch_with_prefetch(
    b: &Backup,
    all: &[RepoCfg],
    name: &str,
    dest: &Path,
    opener: &Opener,
) -> Result<Option<bool>> {
    let Some(cache) = prefetch_dir().filter(|_| next_segment(name, 1).is_some()) else {
        return Ok(fetch(b, all, name, dest, opener)?.then_some(false));
    };
    let cached = cache.join(name);
    let found = if cached.is_file() {
        std::fs::rename(&cached, dest).map_err(|e| {
            format!(
                "cannot move {} to {}: {e}",
                cached.display(),
                dest.display()
            )
        })?;
        true
    } else {
        fetch(b, all, name, dest, opener)?
    };
    if !found {
        let _ = std::fs::remove_dir_all(&cache);
        return Ok(None);
    }
    // Segments before this one are not needed any more.
    for e in std::fs::read_dir(&cache).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().as_ref() < name {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let ahead = cache
        .join(next_segment(name, 1).unwrap_or_default())
        .is_file();
    if !ahead {
        std::fs::create_dir_all(&cache)
            .map_err(|e| format!("cannot create {}: {e}", cache.display()))?;
    }
    Ok(Some(!ahead))
}

/// Reads the [`PREFETCH`] segments after `name` into the read-ahead
/// directory, in parallel, each checked like any fetch. A segment not
/// archived yet is simply not there; an error is met again when the
/// segment is asked for. The directory must exist (removed meanwhile:
/// the restore ended, and nothing is written).
pub fn prefetch(b: &Backup, all: &[RepoCfg], name: &str, opener: &Opener) {
    let Some(cache) = prefetch_dir().filter(|d| d.is_dir()) else {
        return;
    };
    std::thread::scope(|s| {
        for n in 1..=PREFETCH {
            let Some(next) = next_segment(name, n) else {
                continue;
            };
            let path = cache.join(&next);
            if path.is_file() {
                continue;
            }
            let file = opener.file().to_path_buf();
            s.spawn(move || {
                if let Ok(opener) = Opener::from_file(&file) {
                    let _ = fetch(b, all, &next, &path, &opener);
                }
            });
        }
    });
    // Nothing was there to read (past the archive's end): no directory
    // is left in the data directory. Only an empty one goes.
    let _ = std::fs::remove_dir(&cache);
}

/// Fetches every archived WAL file a recovery from a base backup that
/// starts in `start` needs (that segment and every later one, and the
/// timeline histories) into the directory `dir`; how many. For a restore
/// test, whose throwaway server then reads them with `cp`.
pub fn fetch_since(
    b: &Backup,
    all: &[RepoCfg],
    start: &str,
    dir: &Path,
    opener: &Opener,
) -> Result<usize> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let prefix = format!("wal/{}/", b.name);
    let mut names = std::collections::BTreeSet::new();
    for cfg in ops::repos_of(b, all)? {
        let Ok(repo) = ops::open(cfg) else { continue };
        let Ok(listed) = repo.store().list(&prefix) else {
            continue;
        };
        for (key, _) in listed {
            let Some(name) = key.strip_prefix(&prefix) else {
                continue;
            };
            if !valid_name(name) || name.ends_with(".sum") {
                continue;
            }
            let seg = name.get(..24).unwrap_or("");
            if name.ends_with(".history")
                || (seg.len() == 24 && start.len() == 24 && seg[8..] >= start[8..])
            {
                names.insert(name.to_string());
            }
        }
    }
    for name in &names {
        let dest = match name.strip_suffix(".partial") {
            // The complete segment made it: the partial is stale.
            Some(seg) if names.contains(seg) => continue,
            Some(seg) => seg,
            None => name,
        };
        fetch(b, all, name, &dir.join(dest), opener)?;
    }
    Ok(names.len())
}

/// When the newest WAL file of the backup reached any of its repos (Unix
/// seconds): no recovery target after it can be reached.
pub fn archive_end(b: &Backup, all: &[RepoCfg]) -> Result<Option<u64>> {
    let mut end = None;
    for cfg in ops::repos_of(b, all)? {
        let Ok(repo) = ops::open(cfg) else { continue };
        if let Ok(t) = repo.store().newest(&format!("wal/{}/", b.name)) {
            end = end.max(t);
        }
    }
    Ok(end)
}

/// What the last `wal-push` runs of a backup did, kept in the state
/// directory (`wal-push/NAME.json`) by the pushes (PostgreSQL's archiver
/// runs them), read by `centinela run` for its metrics and alerts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PushStatus {
    pub last_success: Option<u64>,
    pub last_failure: Option<u64>,
    pub last_error: Option<String>,
}

impl PushStatus {
    /// The last push failed (and none succeeded since).
    pub fn failing(&self) -> bool {
        self.last_failure > self.last_success
    }
}

fn status_file(state_dir: &Path, backup: &str) -> std::path::PathBuf {
    state_dir.join("wal-push").join(format!("{backup}.json"))
}

/// The recorded status of the backup's pushes.
pub fn status(state_dir: &Path, backup: &str) -> Option<PushStatus> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(status_file(state_dir, backup)).ok()?).ok()?;
    Some(PushStatus {
        last_success: v["last_success"].as_u64(),
        last_failure: v["last_failure"].as_u64(),
        last_error: v["last_error"].as_str().map(str::to_string),
    })
}

/// Records a push's result.
pub fn record(state_dir: &Path, backup: &str, result: &Result<()>) -> Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut st = status(state_dir, backup).unwrap_or_default();
    match result {
        Ok(()) => st.last_success = Some(now),
        Err(e) => {
            st.last_failure = Some(now);
            st.last_error = Some(e.clone());
        }
    }
    let path = status_file(state_dir, backup);
    let tmp = path.with_extension(format!("{:08x}.tmp", fastrand::u32(..)));
    let v = json!({
        "last_success": st.last_success,
        "last_failure": st.last_failure,
        "last_error": st.last_error,
    });
    std::fs::create_dir_all(state_dir.join("wal-push"))
        .and_then(|()| std::fs::write(&tmp, v.to_string()))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot record the result in {}: {e}", path.display())
        })
}

/// Checks every archived WAL file of the backup in `repo`: present with
/// its checksum file, stored bytes matching it; with an opener, also
/// decrypted and its content re-hashed. Every problem, each naming the
/// file.
pub fn verify(repo: &Repo, backup: &str, opener: Option<&Opener>) -> Result<Vec<String>> {
    let dir = format!("wal/{backup}/");
    let listed = repo.store().list(&dir)?;
    let names: std::collections::BTreeSet<&str> = listed
        .iter()
        .filter_map(|(k, _)| k.strip_prefix(&dir))
        .collect();
    let mut problems = Vec::new();
    for name in &names {
        let (file, is_sum) = match name.strip_suffix(".sum") {
            Some(f) => (f, true),
            None => (*name, false),
        };
        if !valid_name(file) {
            continue;
        }
        if is_sum {
            if !names.contains(file) {
                problems.push(format!(
                    "WAL {file} of {backup}: missing (its checksum file is there)"
                ));
            }
            continue;
        }
        if !names.contains(format!("{file}.sum").as_str()) {
            problems.push(format!(
                "WAL {file} of {backup}: its checksum file is missing"
            ));
            continue;
        }
        let (bytes, v) = match get_checked(repo, &format!("{dir}{file}")) {
            Ok(Some(found)) => found,
            // Gone since the listing: a partial replaced by its segment.
            Ok(None) if file.ends_with(".partial") => continue,
            Ok(None) => {
                problems.push(format!("WAL {file} of {backup}: missing"));
                continue;
            }
            Err(e) => {
                problems.push(format!("WAL {file} of {backup}: {e}"));
                continue;
            }
        };
        if let Some(o) = opener {
            match o.open(&bytes) {
                Ok(plain) if v["plain_b3"] == blake3::hash(&plain).to_hex().as_str() => {}
                Ok(_) => problems.push(format!(
                    "WAL {file} of {backup}: its content does not match"
                )),
                Err(e) => problems.push(format!("WAL {file} of {backup}: {e}")),
            }
        }
    }
    Ok(problems)
}

/// The segment name of an LSN (`0/2000028`) on a timeline, with 16 MiB
/// segments: what `pg_basebackup` reports as its start.
pub fn segment_of(lsn: &str, timeline: u32) -> Option<String> {
    let (hi, lo) = lsn.split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    let pos = (hi << 32) | lo;
    let seg = pos >> 24;
    Some(format!("{timeline:08X}{:08X}{:08X}", seg / 256, seg % 256))
}

/// Deletes the archived segments older than `oldest` (the start segment
/// of the oldest kept base backup), as pg_archivecleanup does; history
/// files stay. Returns how many went.
pub fn cleanup(repo: &Repo, backup: &str, oldest: &str, dry_run: bool) -> Result<u64> {
    let dir = format!("wal/{backup}/");
    let mut n = 0;
    for (key, _) in repo.store().list(&dir)? {
        let Some(name) = key.strip_prefix(&dir) else {
            continue;
        };
        let stem = name.strip_suffix(".sum").unwrap_or(name);
        let seg = stem.get(..24).unwrap_or("");
        // Timeline first, then the position: the same order as names.
        if seg.len() == 24 && !stem.ends_with(".history") && seg[8..] < oldest[8..] {
            if !dry_run {
                repo.store().delete(&key)?;
            }
            if !name.ends_with(".sum") {
                n += 1;
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_segments() {
        for good in [
            "000000010000000000000002",
            "00000002.history",
            "000000010000000000000002.partial",
            "000000010000000000000002.00000028.backup",
        ] {
            assert!(valid_name(good), "{good}");
        }
        for bad in [
            "../x",
            "00000001000000000000000",
            "000000010000000000000002/x",
            "x.history",
            "",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert_eq!(
            segment_of("0/2000028", 1).unwrap(),
            "000000010000000000000002"
        );
        assert_eq!(
            segment_of("1/FF000000", 3).unwrap(),
            "0000000300000001000000FF"
        );
        assert_eq!(segment_of("nope", 1), None);
    }

    #[test]
    fn the_segments_after_one() {
        assert_eq!(
            next_segment("000000010000000000000002", 1).unwrap(),
            "000000010000000000000003"
        );
        assert_eq!(
            next_segment("0000000100000000000000FF", 1).unwrap(),
            "000000010000000100000000"
        );
        assert_eq!(
            next_segment("0000000200000001000000FE", 3).unwrap(),
            "000000020000000200000001"
        );
        assert_eq!(next_segment("00000002.history", 1), None);
    }

    #[test]
    fn cleanup_keeps_what_the_oldest_base_backup_needs() {
        let root = std::env::temp_dir().join(format!("centinela-wal-{}", std::process::id()));
        let repo = Repo::open(crate::store::Store::local(&root)).unwrap();
        let dir = root.join("wal/db");
        std::fs::create_dir_all(&dir).unwrap();
        let names = [
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000003",
            "000000020000000000000004",
            "00000002.history",
        ];
        for n in names {
            std::fs::write(dir.join(n), b"x").unwrap();
            std::fs::write(dir.join(format!("{n}.sum")), b"{}").unwrap();
        }
        assert_eq!(
            cleanup(&repo, "db", "000000010000000000000003", true).unwrap(),
            2
        );
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            10,
            "a dry run deletes nothing"
        );
        assert_eq!(
            cleanup(&repo, "db", "000000010000000000000003", false).unwrap(),
            2
        );
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".sum"))
            .collect();
        left.sort();
        let mut want: Vec<String> = names[2..].iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(left, want);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
