//! What the CLI (and later the scheduler) asks of a `[backup.NAME]`: run
//! it into every repo, list its snapshots, verify them, restore one. The
//! one interface the binary calls.

use std::path::Path;

use centinela_config::backup::{Backup, Repo as RepoCfg, Source};

use crate::files;
use crate::repo::{verify, Index, Opener, Pruned, Reader, Repo, Result, Sealer, Writer};

/// Opens a configured repo: a local directory or an S3 bucket.
pub fn open(cfg: &RepoCfg) -> Result<Repo> {
    crate::store::Store::from_config(&cfg.store)
        .and_then(Repo::open)
        .map_err(|e| format!("repo {}: {e}", cfg.name))
}

/// Checks that a repo can take backups (for `check`): it is a repository
/// or an empty or missing place that can be made one, and an object can
/// be written in it and deleted. Nothing is left behind.
pub fn writable(cfg: &RepoCfg) -> Result<()> {
    let store = crate::store::Store::from_config(&cfg.store)?;
    let existed = store.local_root().map(Path::exists);
    let is_repo = store.get("centinela-repo")?.is_some();
    if !is_repo && existed != Some(false) {
        let empty = match store.local_root() {
            Some(root) => std::fs::read_dir(root)
                .map_err(|e| format!("cannot read {}: {e}", root.display()))?
                .next()
                .is_none(),
            None => store.list("")?.is_empty(),
        };
        if !empty {
            return Err(format!(
                "{} is not empty and not a centinela repository",
                store.describe()
            ));
        }
    }
    let probe = format!("tmp/check-{:08x}", fastrand::u32(..));
    let result = store
        .put(&probe, b"centinela check\n")
        .map_err(|e| format!("{} is not writable: {e}", store.describe()));
    let _ = store.delete(&probe);
    if let (Some(root), Some(false)) = (store.local_root(), existed) {
        // check changes nothing: the repository is made by the first backup.
        let _ = std::fs::remove_dir_all(root);
    } else if let Some(root) = store.local_root() {
        let _ = std::fs::remove_dir(root.join("tmp"));
    }
    result
}

/// The backup's repos, in its order.
pub fn repos_of<'a>(b: &Backup, all: &'a [RepoCfg]) -> Result<Vec<&'a RepoCfg>> {
    repos(b, all, None)
}

/// The backup's repos, in its order (all of them, or the one named).
fn repos<'a>(b: &Backup, all: &'a [RepoCfg], only: Option<&str>) -> Result<Vec<&'a RepoCfg>> {
    if let Some(r) = only {
        if !b.repos.iter().any(|x| x == r) {
            return Err(format!(
                "backup {} does not go to a repo named {r:?} (its repos: {})",
                b.name,
                b.repos.join(", ")
            ));
        }
    }
    b.repos
        .iter()
        .filter(|r| only.is_none_or(|o| o == *r))
        .map(|r| {
            all.iter()
                .find(|x| x.name == *r)
                .ok_or_else(|| format!("no repo named {r:?}"))
        })
        .collect()
}

/// Takes a snapshot into every repo of the backup; each repo gets its own
/// (a repo that fails does not stop the others, and is reported).
/// `state_dir`: where backups with `delta` (PostgreSQL's and SQLite's by
/// default) keep the local cache that lets the next snapshot store
/// changed chunks as deltas (`state_dir/delta/`, see [`crate::delta`]);
/// `None`: no deltas.
pub fn run(b: &Backup, all: &[RepoCfg], state_dir: Option<&Path>) -> Vec<(String, Result<Index>)> {
    let sealer = match Sealer::new(&b.encrypt_to, b.zstd_level) {
        Ok(s) => s,
        Err(e) => return vec![(String::new(), Err(e))],
    };
    let targets = match repos(b, all, None) {
        Ok(t) => t,
        Err(e) => return vec![(String::new(), Err(e))],
    };
    targets
        .into_iter()
        .map(|cfg| {
            let cache = state_dir
                .filter(|_| b.delta)
                .map(|d| (d.join("delta"), format!("{}.{}", b.name, cfg.name)));
            let result = open(cfg).and_then(|repo| snapshot(b, &repo, &sealer, cache.as_ref()));
            (cfg.name.clone(), result)
        })
        .collect()
}

fn snapshot(
    b: &Backup,
    repo: &Repo,
    sealer: &Sealer,
    cache: Option<&(std::path::PathBuf, String)>,
) -> Result<Index> {
    let mut w = Writer::new(repo, sealer, &b.name, b.source.kind())?;
    if let Some((dir, name)) = cache {
        w = w.delta_cache(dir, name);
    }
    let manifest = match &b.source {
        Source::Files { paths } => files::backup(&mut w, paths)?.0,
        Source::Sqlite { path } => crate::sqlite::backup(&mut w, path)?,
        Source::Postgres {
            connect, password, ..
        } => crate::postgres::backup(&mut w, connect, password.as_ref().map(|p| p.expose()))?,
    };
    w.finish(manifest)
}

/// Every snapshot of the backup in each of its repos (or the one named),
/// oldest first.
pub fn list(b: &Backup, all: &[RepoCfg], only: Option<&str>) -> Result<Vec<(String, Index)>> {
    let mut out = Vec::new();
    for cfg in repos(b, all, only)? {
        let repo = open(cfg)?;
        for idx in repo.indexes(&b.name)? {
            out.push((cfg.name.clone(), idx));
        }
    }
    Ok(out)
}

/// Problems found in each repo (empty: all is well).
pub fn check(
    b: &Backup,
    all: &[RepoCfg],
    only: Option<&str>,
    opener: Option<&Opener>,
) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for cfg in repos(b, all, only)? {
        let repo = open(cfg)?;
        problems.extend(
            verify(&repo, &b.name, opener)?
                .into_iter()
                .map(|p| format!("repo {}: {p}", cfg.name)),
        );
        if matches!(b.source, Source::Postgres { .. }) {
            problems.extend(
                crate::wal::verify(&repo, &b.name, opener)?
                    .into_iter()
                    .map(|p| format!("repo {}: {p}", cfg.name)),
            );
        }
    }
    Ok(problems)
}

/// Applies the backup's `keep` in each of its repos (or the one named).
pub fn prune(
    b: &Backup,
    all: &[RepoCfg],
    only: Option<&str>,
    dry_run: bool,
) -> Result<Vec<(String, Pruned)>> {
    repos(b, all, only)?
        .into_iter()
        .map(|cfg| {
            let repo = open(cfg)?;
            let mut p = crate::repo::prune(&repo, &b.name, b.keep, dry_run)
                .map_err(|e| format!("repo {}: {e}", cfg.name))?;
            // WAL back to the oldest kept base backup: every kept one can
            // be recovered to any point after it.
            if matches!(b.source, Source::Postgres { .. }) {
                let kept = repo.indexes(&b.name)?;
                let oldest = kept
                    .iter()
                    .filter(|i| !dry_run || !p.forgotten.contains(&i.id))
                    .filter_map(|i| i.wal_start.clone())
                    .min();
                if let Some(oldest) = oldest {
                    p.wal_deleted = crate::wal::cleanup(&repo, &b.name, &oldest, dry_run)?;
                }
            }
            Ok((cfg.name.clone(), p))
        })
        .collect()
}

/// Checks a restore's target time before anything is written: a time
/// before the oldest snapshot, or (PostgreSQL) after the newest archived
/// WAL, cannot be restored, and says why.
pub fn check_target(b: &Backup, all: &[RepoCfg], only: Option<&str>, t: u64) -> Result<()> {
    let snaps = list(b, all, only)?;
    let Some(oldest) = snaps.iter().map(|(_, i)| i.finished).min() else {
        return Err(format!("backup {} has no snapshot yet", b.name));
    };
    if t < oldest {
        return Err(format!(
            "{} is before the oldest snapshot of backup {} (finished at {}): nothing that old can be restored",
            crate::rfc3339(t),
            b.name,
            crate::rfc3339(oldest)
        ));
    }
    if let Source::Postgres { wal, .. } = &b.source {
        if *wal != centinela_config::backup::Wal::Off {
            let newest = snaps.iter().map(|(_, i)| i.finished).max().unwrap_or(0);
            let end = crate::wal::archive_end(b, all)?.unwrap_or(0);
            if t > newest.max(end) {
                return Err(format!(
                    "{} is after the end of backup {}'s archive: its newest WAL was archived at {} and its newest base backup finished at {}; recovery cannot reach a later time (PostgreSQL archives a segment when it is full, or after archive_timeout)",
                    crate::rfc3339(t),
                    b.name,
                    if end == 0 { "never".to_string() } else { crate::rfc3339(end) },
                    crate::rfc3339(newest)
                ));
            }
        }
    }
    Ok(())
}

/// Which snapshot to restore.
pub enum Which<'a> {
    Latest,
    Id(&'a str),
    /// The newest finished at or before this time (Unix seconds).
    At(u64),
}

/// What a restore wrote.
#[derive(Debug)]
pub enum Restored {
    Files(files::Walked),
    /// The database file, checked by `PRAGMA integrity_check`.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL data directory, ready to start.
    Postgres(std::path::PathBuf),
}

/// Restores a snapshot into `target` from the first repo (in the backup's
/// order, or the one named) that has it.
pub fn restore(
    b: &Backup,
    all: &[RepoCfg],
    only: Option<&str>,
    which: Which<'_>,
    target: &Path,
    opener: &Opener,
    recovery: Option<&crate::postgres::Recovery>,
) -> Result<(String, Index, Restored)> {
    let mut last_err = None;
    for cfg in repos(b, all, only)? {
        let repo = match open(cfg) {
            Ok(r) => r,
            Err(e) => {
                last_err = Some(e);
                continue;
            }
        };
        let indexes = repo.indexes(&b.name)?;
        let idx = match which {
            Which::Latest => indexes.last(),
            Which::Id(id) => indexes.iter().find(|i| i.id == id),
            Which::At(t) => indexes
                .iter()
                .filter(|i| i.finished <= t)
                .max_by_key(|i| i.finished),
        };
        let Some(idx) = idx else { continue };
        crate::progress::expect(idx.source_bytes);
        let reader = Reader::new(&repo, opener, idx);
        let manifest = reader.manifest()?;
        let restored = match manifest.get("kind").and_then(serde_json::Value::as_str) {
            Some("files") => Restored::Files(files::restore(&reader, &manifest, target)?),
            Some("sqlite") => Restored::Sqlite(crate::sqlite::restore(&reader, &manifest, target)?),
            Some("postgres") => {
                let dir = crate::postgres::restore(&reader, &manifest, target)?;
                if let Some(r) = recovery {
                    r.write(&dir)?;
                }
                Restored::Postgres(dir)
            }
            other => {
                return Err(format!(
                    "snapshot {}: cannot restore kind {other:?} yet",
                    idx.id
                ))
            }
        };
        return Ok((cfg.name.clone(), idx.clone(), restored));
    }
    Err(last_err.unwrap_or_else(|| match which {
        Which::Latest => format!("backup {} has no snapshot yet", b.name),
        Which::Id(id) => format!("backup {} has no snapshot {id}", b.name),
        Which::At(t) => format!(
            "backup {} has no snapshot finished at or before {}",
            b.name,
            crate::rfc3339(t)
        ),
    }))
}
