//! The restore test: the newest snapshot restored into a scratch directory
//! on this host, the `checks` run against it, and the two figures the
//! brief asks of a backup: RTO (wall time from the start to the checks
//! passed) and RPO (the age of what was recovered: the snapshot's time).

use std::path::{Path, PathBuf};
use std::time::Instant;

use centinela_config::backup::{Backup, Repo as RepoCfg};
use rusqlite::{Connection, OpenFlags};

use crate::ops::{self, Restored, Which};
use crate::repo::{Opener, Result};

/// What a restore test found.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Restored, checks passed, and within max_rto and max_rpo.
    pub ok: bool,
    pub snapshot: Option<String>,
    pub rto_secs: f64,
    pub rpo_secs: f64,
    /// Each check: its SQL, the number it gave, the minimum, pass.
    pub checks: Vec<(String, Option<i64>, i64, bool)>,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// Unix seconds when it ran.
    pub at: u64,
}

/// Removes the scratch directory, however the test ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the restore test of `b` (it must have `restore_test`), reading
/// the backup with the identity file `identity`, in a scratch directory
/// under `scratch_root`.
pub fn run(b: &Backup, repos: &[RepoCfg], identity: &Path, scratch_root: &Path) -> Outcome {
    let at = now();
    let started = Instant::now();
    let mut out = Outcome {
        at,
        ..Outcome::default()
    };
    let Some(t) = &b.restore_test else {
        out.error = Some(format!("backup {} has no restore_test", b.name));
        return out;
    };
    let scratch = Scratch(scratch_root.join(format!(
        "centinela-restore-test-{}-{:08x}",
        b.name,
        fastrand::u32(..)
    )));
    let result: Result<()> = (|| {
        let opener = Opener::from_file(identity)?;
        let (_, idx, restored) =
            ops::restore(b, repos, None, Which::Latest, &scratch.0, &opener, None)?;
        out.snapshot = Some(idx.id.clone());
        out.rpo_secs = at.saturating_sub(idx.finished) as f64;
        if let Restored::Postgres(data) = &restored {
            // Every archived segment from the base backup's start, then a
            // throwaway server replays them to the end and is promoted.
            let wal = scratch.0.join("wal");
            if let Some(start) = &idx.wal_start {
                crate::wal::fetch_since(b, repos, start, &wal, &opener)?;
            }
            crate::postgres::Recovery {
                restore_command: format!("cp '{}/%f' '%p'", wal.display()),
                target_time: None,
            }
            .write(data)?;
            let wait = t.max_rto.max(std::time::Duration::from_secs(600));
            let server = crate::throwaway::Throwaway::start(data, &scratch.0, wait)?;
            server.wait_promoted(wait)?;
            // RPO: the newest commit recovered, when WAL was replayed.
            if let Ok(v) =
                server.query("SELECT extract(epoch FROM pg_last_xact_replay_timestamp())::bigint")
            {
                if let Ok(last) = v.parse::<u64>() {
                    out.rpo_secs = at.saturating_sub(last.max(idx.finished)) as f64;
                }
            }
            for check in &t.checks {
                let got = server.query(&check.sql).map_err(|e| e.to_string());
                let (value, pass) =
                    match got.and_then(|v| v.parse::<i64>().map_err(|e| e.to_string())) {
                        Ok(v) => (Some(v), v >= check.min),
                        Err(_) => (None, false),
                    };
                out.checks.push((check.sql.clone(), value, check.min, pass));
            }
        }
        if let Restored::Sqlite(db) = &restored {
            let c = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(|e| format!("{}: {e}", db.display()))?;
            for check in &t.checks {
                let got: std::result::Result<i64, _> = c.query_row(&check.sql, [], |r| r.get(0));
                let (value, pass) = match got {
                    Ok(v) => (Some(v), v >= check.min),
                    Err(_) => (None, false),
                };
                out.checks.push((check.sql.clone(), value, check.min, pass));
            }
        }
        Ok(())
    })();
    out.rto_secs = started.elapsed().as_secs_f64();
    let mut why = Vec::new();
    if let Err(e) = result {
        why.push(e);
    }
    for (sql, value, min, pass) in &out.checks {
        if !pass {
            why.push(match value {
                Some(v) => format!("check {sql:?} gave {v}, at least {min} wanted"),
                None => format!("check {sql:?} failed to run"),
            });
        }
    }
    if out.snapshot.is_some() {
        if out.rto_secs > t.max_rto.as_secs_f64() {
            why.push(format!(
                "RTO {:.1} s is over max_rto {} s",
                out.rto_secs,
                t.max_rto.as_secs()
            ));
        }
        if out.rpo_secs > t.max_rpo.as_secs_f64() {
            why.push(format!(
                "RPO {:.0} s is over max_rpo {} s",
                out.rpo_secs,
                t.max_rpo.as_secs()
            ));
        }
    }
    out.ok = why.is_empty();
    out.error = (!why.is_empty()).then(|| why.join("; "));
    if let Err(e) = save(scratch_root, &b.name, &out) {
        tracing::warn!(backup = %b.name, error = %e, "Cannot record the restore test's result");
    }
    out
}

fn state_file(state_dir: &Path, backup: &str) -> PathBuf {
    state_dir
        .join("restore-tests")
        .join(format!("{backup}.json"))
}

/// Records the outcome in the state directory (`restore-tests/NAME.json`),
/// where `backup list`, and `centinela run` after a restart, read it.
pub fn save(state_dir: &Path, backup: &str, o: &Outcome) -> Result<()> {
    let v = serde_json::json!({
        "ok": o.ok, "snapshot": o.snapshot, "rto_seconds": o.rto_secs,
        "rpo_seconds": o.rpo_secs, "error": o.error, "at": o.at,
        "checks": o.checks.iter().map(|(sql, value, min, pass)| serde_json::json!({
            "sql": sql, "value": value, "min": min, "ok": pass,
        })).collect::<Vec<_>>(),
    });
    let path = state_file(state_dir, backup);
    let tmp = path.with_extension("json.tmp");
    std::fs::create_dir_all(state_dir.join("restore-tests"))
        .and_then(|()| std::fs::write(&tmp, v.to_string()))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The last recorded outcome of the backup's restore test.
pub fn load(state_dir: &Path, backup: &str) -> Option<Outcome> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state_file(state_dir, backup)).ok()?).ok()?;
    Some(Outcome {
        ok: v["ok"].as_bool()?,
        snapshot: v["snapshot"].as_str().map(str::to_string),
        rto_secs: v["rto_seconds"].as_f64()?,
        rpo_secs: v["rpo_seconds"].as_f64()?,
        checks: v["checks"]
            .as_array()?
            .iter()
            .filter_map(|c| {
                Some((
                    c["sql"].as_str()?.to_string(),
                    c["value"].as_i64(),
                    c["min"].as_i64()?,
                    c["ok"].as_bool()?,
                ))
            })
            .collect(),
        error: v["error"].as_str().map(str::to_string),
        at: v["at"].as_u64()?,
    })
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
