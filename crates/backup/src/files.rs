//! `kind = "files"`: directories and files with their modes, owners and
//! modification times, symlinks as links. Sockets, FIFOs and devices are
//! left out and counted.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::repo::{Reader, Result, Writer};

/// What a files backup saw.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Walked {
    pub files: u64,
    pub dirs: u64,
    pub links: u64,
    /// Sockets, FIFOs, devices: not backed up.
    pub skipped: u64,
}

/// A path in a manifest: a string when it is UTF-8, else its bytes.
fn path_value(p: &Path) -> (&'static str, Value) {
    match p.to_str() {
        Some(s) => ("path", json!(s)),
        None => ("path_bytes", json!(p.as_os_str().as_bytes())),
    }
}

fn path_of(e: &Value) -> Option<PathBuf> {
    if let Some(s) = e.get("path").and_then(Value::as_str) {
        return Some(PathBuf::from(s));
    }
    let bytes: Vec<u8> = e
        .get("path_bytes")?
        .as_array()?
        .iter()
        .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
        .collect::<Option<_>>()?;
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(&bytes)))
}

/// Backs up `paths` (each a directory, walked without following links,
/// or a file) into `w`; returns the manifest and what was seen.
pub fn backup(w: &mut Writer<'_>, paths: &[PathBuf]) -> Result<(Value, Walked)> {
    let mut entries = Vec::new();
    let mut walked = Walked::default();
    for p in paths {
        walk(w, p, &mut entries, &mut walked)?;
    }
    Ok((json!({ "kind": "files", "entries": entries }), walked))
}

fn walk(w: &mut Writer<'_>, p: &Path, out: &mut Vec<Value>, seen: &mut Walked) -> Result<()> {
    let md =
        std::fs::symlink_metadata(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    let (key, path) = path_value(p);
    let mut e = json!({
        key: path,
        "mode": md.mode() & 0o7777,
        "uid": md.uid(),
        "gid": md.gid(),
        "mtime": md.mtime(),
        "mtime_nsec": md.mtime_nsec(),
    });
    let ft = md.file_type();
    if ft.is_symlink() {
        let target =
            std::fs::read_link(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        let (tkey, t) = path_value(&target);
        e["type"] = json!("symlink");
        e[if tkey == "path" {
            "target"
        } else {
            "target_bytes"
        }] = t;
        seen.links += 1;
        out.push(e);
    } else if ft.is_dir() {
        e["type"] = json!("dir");
        seen.dirs += 1;
        out.push(e);
        let mut children: Vec<PathBuf> = std::fs::read_dir(p)
            .map_err(|e| format!("cannot read {}: {e}", p.display()))?
            .filter_map(|c| c.ok().map(|c| c.path()))
            .collect();
        children.sort();
        for c in children {
            walk(w, &c, out, seen)?;
        }
    } else if ft.is_file() {
        let f = std::fs::File::open(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        let chunks = w.stream(f).map_err(|e| format!("{}: {e}", p.display()))?;
        e["type"] = json!("file");
        e["size"] = json!(md.len());
        e["chunks"] = json!(chunks);
        seen.files += 1;
        out.push(e);
    } else {
        seen.skipped += 1;
    }
    Ok(())
}

/// Rebuilds a files snapshot under `target` (each source path below it,
/// without its leading `/`). `target` must be missing or empty: nothing is
/// overwritten.
pub fn restore(r: &Reader<'_>, manifest: &Value, target: &Path) -> Result<Walked> {
    empty_target(target)?;
    let entries = manifest
        .get("entries")
        .and_then(Value::as_array)
        .ok_or("the manifest lists no entries")?;
    let mut seen = Walked::default();
    let mut dirs = Vec::new();
    for e in entries {
        let src = path_of(e).ok_or("a manifest entry has no path")?;
        let rel = src.strip_prefix("/").unwrap_or(&src);
        if rel
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(format!(
                "{}: a path with '..' is never restored",
                src.display()
            ));
        }
        let dest = target.join(rel);
        let fail =
            |what: &str, err: std::io::Error| format!("cannot {what} {}: {err}", dest.display());
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| fail("create the parent of", e))?;
        }
        match e.get("type").and_then(Value::as_str) {
            Some("dir") => {
                std::fs::create_dir_all(&dest).map_err(|e| fail("create", e))?;
                dirs.push((dest, e));
                seen.dirs += 1;
            }
            Some("symlink") => {
                let t = e
                    .get("target")
                    .and_then(Value::as_str)
                    .map(PathBuf::from)
                    .or_else(|| {
                        let mut v = e.clone();
                        v["path_bytes"] = e.get("target_bytes")?.clone();
                        path_of(&v)
                    })
                    .ok_or("a symlink entry has no target")?;
                std::os::unix::fs::symlink(&t, &dest).map_err(|e| fail("create the link", e))?;
                owner(&dest, e);
                seen.links += 1;
            }
            Some("file") => {
                let mut f = std::fs::File::create(&dest).map_err(|e| fail("create", e))?;
                let ids = e
                    .get("chunks")
                    .and_then(Value::as_array)
                    .ok_or("a file entry has no chunks")?;
                for id in ids {
                    let id = id.as_str().ok_or("a chunk id is not a string")?;
                    let data = r.chunk(id)?;
                    std::io::Write::write_all(&mut f, &data).map_err(|e| fail("write", e))?;
                }
                f.sync_all().map_err(|e| fail("flush", e))?;
                drop(f);
                attributes(&dest, e).map_err(|e| fail("set the attributes of", e))?;
                seen.files += 1;
            }
            _ => return Err(format!("{}: unknown entry type", src.display())),
        }
    }
    // Directories last, deepest first: writing into them changed their
    // times.
    for (d, e) in dirs.iter().rev() {
        attributes(d, e)
            .map_err(|err| format!("cannot set the attributes of {}: {err}", d.display()))?;
    }
    Ok(seen)
}

/// A restore writes into a new or empty directory only: nothing is
/// overwritten.
pub(crate) fn empty_target(target: &Path) -> Result<()> {
    if target.exists()
        && std::fs::read_dir(target)
            .map_err(|e| format!("cannot read {}: {e}", target.display()))?
            .next()
            .is_some()
    {
        return Err(format!(
            "{} is not empty; restore into a new or empty directory",
            target.display()
        ));
    }
    Ok(())
}

/// Mode, owner (when allowed: as root) and modification time.
fn attributes(p: &Path, e: &Value) -> std::io::Result<()> {
    let mode = e.get("mode").and_then(Value::as_u64).unwrap_or(0o644) as u32;
    owner(p, e);
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    let secs = e.get("mtime").and_then(Value::as_i64).unwrap_or(0);
    let nsec = e.get("mtime_nsec").and_then(Value::as_i64).unwrap_or(0);
    if secs >= 0 {
        let t = UNIX_EPOCH + Duration::new(secs as u64, nsec.clamp(0, 999_999_999) as u32);
        std::fs::File::open(p)?.set_modified(t)?;
    }
    Ok(())
}

/// Gives the entry its owner back; only root may, and others keep theirs.
fn owner(p: &Path, e: &Value) {
    let uid = e
        .get("uid")
        .and_then(Value::as_u64)
        .and_then(|u| u32::try_from(u).ok());
    let gid = e
        .get("gid")
        .and_then(Value::as_u64)
        .and_then(|g| u32::try_from(g).ok());
    let _ = std::os::unix::fs::lchown(p, uid, gid);
}
