//! `kind = "sqlite"`: a consistent copy through SQLite's online backup
//! API (one step: a read transaction, which in WAL mode never blocks the
//! application's writers), then stored in page-aligned chunks of 64 KiB,
//! so that a snapshot after a few changed pages costs a few chunks.
//! Restores check the file with `PRAGMA integrity_check`.

use std::io::Read;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use serde_json::{json, Value};

use crate::repo::{Reader, Result, Writer};

/// Bytes per chunk: whole pages (page sizes are powers of two up to 64 KiB).
const CHUNK: usize = 64 * 1024;

/// The copy is made beside the database (same filesystem, which has room
/// for it), named so that it is recognisable, and removed afterwards.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_file(self.0.with_extension("copy-journal"));
    }
}

/// Backs the database at `path` up into `w`; returns the manifest.
pub fn backup(w: &mut Writer<'_>, path: &Path) -> Result<Value> {
    let err = |e: rusqlite::Error| format!("{}: {e}", path.display());
    if !path.is_file() {
        return Err(format!("{}: no such database file", path.display()));
    }
    let src = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    src.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(err)?;
    let scratch = Scratch(path.with_extension(format!("centinela-{:08x}.copy", fastrand::u32(..))));
    {
        let mut dst = Connection::open(&scratch.0).map_err(err)?;
        let b = rusqlite::backup::Backup::new(&src, &mut dst).map_err(err)?;
        // Every page in one step: one read transaction, one consistent
        // state, whatever the application writes meanwhile.
        loop {
            match b.step(-1).map_err(err)? {
                rusqlite::backup::StepResult::Done => break,
                _ => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
    }
    let page_size: i64 = src
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .map_err(err)?;
    drop(src);
    let mut f =
        std::fs::File::open(&scratch.0).map_err(|e| format!("{}: {e}", scratch.0.display()))?;
    let mut chunks = Vec::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = read_full(&mut f, &mut buf).map_err(|e| format!("{}: {e}", scratch.0.display()))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        chunks.push(w.chunk(&buf[..n])?);
        if n < CHUNK {
            break;
        }
    }
    Ok(json!({
        "kind": "sqlite",
        "path": path.to_string_lossy(),
        "page_size": page_size,
        "size": size,
        "chunks": chunks,
    }))
}

fn read_full(f: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Rebuilds the database as `target/FILE` (its original file name) and
/// checks it; `target` must be missing or empty. Returns the file's path.
pub fn restore(r: &Reader<'_>, manifest: &Value, target: &Path) -> Result<PathBuf> {
    crate::files::empty_target(target)?;
    let name = manifest
        .get("path")
        .and_then(Value::as_str)
        .and_then(|p| Path::new(p).file_name().map(|n| n.to_owned()))
        .ok_or("the manifest names no database file")?;
    std::fs::create_dir_all(target)
        .map_err(|e| format!("cannot create {}: {e}", target.display()))?;
    let dest = target.join(name);
    let mut f = std::fs::File::create(&dest)
        .map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    for id in manifest
        .get("chunks")
        .and_then(Value::as_array)
        .ok_or("the manifest lists no chunks")?
    {
        let data = r.chunk(id.as_str().ok_or("a chunk id is not a string")?)?;
        std::io::Write::write_all(&mut f, &data)
            .map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
    }
    f.sync_all()
        .map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
    drop(f);
    let verdict = integrity(&dest)?;
    if verdict != "ok" {
        return Err(format!(
            "{}: the restored database fails PRAGMA integrity_check: {verdict}",
            dest.display()
        ));
    }
    Ok(dest)
}

/// `PRAGMA integrity_check`'s first line.
pub fn integrity(path: &Path) -> Result<String> {
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    c.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| format!("{}: {e}", path.display()))
}
