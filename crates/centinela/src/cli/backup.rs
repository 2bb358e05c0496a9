//! `centinela backup run|list|verify NAME` and `centinela restore NAME`:
//! a `[backup.NAME]` of the config, by hand (schedules come later).
//!
//! Exit codes: 0 done; 1 the operation failed or found problems (verify);
//! 2 a bad config or command line. `wal-fetch`: 0 fetched, 1 not in any
//! repo (the end of the archive), 126 any other failure (PostgreSQL then
//! stops recovery instead of promoting early).

use std::path::PathBuf;
use std::process::ExitCode;

use centinela_backup::ops::{self, Restored, Which};
use centinela_backup::repo::Opener;
use centinela_config::backup::{Backup, Source, Wal};
use centinela_config::Config;

use super::progress::Progress;
use super::{load, EXIT_CONFIG};

#[derive(clap::Args)]
pub(super) struct BackupCmd {
    #[command(subcommand)]
    action: Action,
    #[arg(long, short, global = true, default_value = "centinela.toml")]
    config: PathBuf,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Take a snapshot now, into every repo of the backup.
    Run { name: String },
    /// List the backup's snapshots in each repo.
    List {
        name: String,
        /// Only this repo.
        #[arg(long)]
        repo: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Forget the snapshots that `keep` does not keep, and delete the
    /// chunks no snapshot uses any more.
    Prune {
        name: String,
        /// Only this repo.
        #[arg(long)]
        repo: Option<String>,
        /// Say what would go; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check that every manifest and chunk is present and intact; with
    /// --read-data, also decrypt and re-hash them (needs --identity).
    Verify {
        name: String,
        /// Only this repo.
        #[arg(long)]
        repo: Option<String>,
        #[arg(long, requires = "identity")]
        read_data: bool,
        /// The age identity file (age-keygen's output).
        #[arg(long)]
        identity: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
pub(super) struct RestoreCmd {
    /// The [backup.NAME] to restore.
    name: String,
    /// Into this directory (missing or empty).
    #[arg(long)]
    target: PathBuf,
    /// The age identity file that reads the backups.
    #[arg(long)]
    identity: PathBuf,
    /// The newest snapshot.
    #[arg(
        long,
        conflicts_with_all = ["snapshot", "to"],
        required_unless_present_any = ["snapshot", "to"]
    )]
    latest: bool,
    /// A snapshot by id (see `backup list`).
    #[arg(long, conflicts_with = "to")]
    snapshot: Option<String>,
    /// The newest snapshot finished at or before this RFC 3339 time
    /// (2026-12-01T10:00:00Z).
    #[arg(long, value_name = "TIME")]
    to: Option<String>,
    /// From this repo (default: the first of the backup's repos that has it).
    #[arg(long)]
    repo: Option<String>,
    /// PostgreSQL: start the restored server on this port and wait until
    /// its recovery has finished.
    #[arg(long, value_name = "PORT")]
    start: Option<u16>,
    #[arg(long, short, default_value = "centinela.toml")]
    config: PathBuf,
}

#[derive(clap::Args)]
pub(super) struct RestoreTestCmd {
    /// The [backup.NAME] whose restore_test to run now.
    name: String,
    /// The age identity file (default: restore_test.identity).
    #[arg(long)]
    identity: Option<PathBuf>,
    #[arg(long, short, default_value = "centinela.toml")]
    config: PathBuf,
}

fn find<'a>(cfg: &'a Config, name: &str) -> Result<&'a Backup, ExitCode> {
    cfg.backups.iter().find(|b| b.name == name).ok_or_else(|| {
        let known: Vec<&str> = cfg.backups.iter().map(|b| b.name.as_str()).collect();
        eprintln!(
            "error: no backup named {name:?} in the config (defined: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        );
        ExitCode::from(EXIT_CONFIG)
    })
}

fn opener(path: &std::path::Path) -> Result<Opener, ExitCode> {
    Opener::from_file(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

pub(super) fn backup(cmd: BackupCmd) -> ExitCode {
    let loaded = match load(&cmd.config) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let cfg = &loaded.config;
    match cmd.action {
        Action::Run { name } => {
            let b = match find(cfg, &name) {
                Ok(b) => b,
                Err(c) => return c,
            };
            let mut failed = false;
            let shown = Progress::start(format!("backup {name}"));
            let results = ops::run(b, &cfg.repos, Some(&cfg.runtime.state_dir));
            drop(shown);
            for (repo, result) in results {
                match result {
                    Ok(idx) => println!(
                        "{name}: snapshot {} in repo {repo}: {} read, {} stored new, {} s",
                        idx.id,
                        mib(idx.source_bytes),
                        mib(idx.added_bytes),
                        idx.finished.saturating_sub(idx.started)
                    ),
                    Err(e) => {
                        failed = true;
                        eprintln!("error: {name}: repo {repo}: {e}");
                    }
                }
            }
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Action::List { name, repo, json } => {
            let b = match find(cfg, &name) {
                Ok(b) => b,
                Err(c) => return c,
            };
            if let Some(r) = &repo {
                if !b.repos.contains(r) {
                    eprintln!(
                        "error: backup {name} does not go to a repo named {r:?} (its repos: {})",
                        b.repos.join(", ")
                    );
                    return ExitCode::from(EXIT_CONFIG);
                }
            }
            // Each repo on its own: one that cannot be read is reported,
            // and the others are still listed.
            let mut list = Vec::new();
            let mut failed = Vec::new();
            for r in b
                .repos
                .iter()
                .filter(|r| repo.as_ref().is_none_or(|o| o == *r))
            {
                match ops::list(b, &cfg.repos, Some(r)) {
                    Ok(l) => list.extend(l),
                    Err(e) => {
                        eprintln!("error: {e}");
                        failed.push(serde_json::json!({ "repo": r, "error": e }));
                    }
                }
            }
            let tested = centinela_backup::restore_test::load(&cfg.runtime.state_dir, &name);
            let verdict = |id: &str| {
                tested
                    .as_ref()
                    .filter(|t| t.snapshot.as_deref() == Some(id))
                    .map(|t| if t.ok { "passed" } else { "failed" })
            };
            if json {
                let v: Vec<serde_json::Value> = list
                    .iter()
                    .map(|(repo, i)| {
                        serde_json::json!({
                            "repo": repo, "snapshot": i.id, "kind": i.kind,
                            "started": i.started, "finished": i.finished,
                            "source_bytes": i.source_bytes, "added_bytes": i.added_bytes,
                            "chunks": i.chunks.len(), "restore_test": verdict(&i.id),
                        })
                    })
                    .collect();
                let t = tested.as_ref().map(|t| {
                    serde_json::json!({
                        "ok": t.ok, "snapshot": t.snapshot, "at": centinela_backup::rfc3339(t.at),
                        "rto_seconds": t.rto_secs, "rpo_seconds": t.rpo_secs, "error": t.error,
                    })
                });
                println!(
                    "{}",
                    serde_json::json!({
                        "backup": name, "snapshots": v, "unreadable": failed, "restore_test": t,
                    })
                );
            } else {
                println!(
                    "{:<28} {:<10} {:>12} {:>12} {:>8}",
                    "SNAPSHOT", "REPO", "SOURCE", "STORED NEW", "CHUNKS"
                );
                for (repo, i) in &list {
                    println!(
                        "{:<28} {:<10} {:>12} {:>12} {:>8}",
                        i.id,
                        repo,
                        mib(i.source_bytes),
                        mib(i.added_bytes),
                        i.chunks.len()
                    );
                }
                match &tested {
                    None => println!("restore test: never run"),
                    Some(t) => println!(
                        "restore test: {} at {} (snapshot {}, RTO {:.1} s, RPO {:.0} s){}",
                        if t.ok { "passed" } else { "FAILED" },
                        centinela_backup::rfc3339(t.at),
                        t.snapshot.as_deref().unwrap_or("-"),
                        t.rto_secs,
                        t.rpo_secs,
                        t.error
                            .as_deref()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    ),
                }
            }
            if failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Action::Prune {
            name,
            repo,
            dry_run,
        } => {
            let b = match find(cfg, &name) {
                Ok(b) => b,
                Err(c) => return c,
            };
            match ops::prune(b, &cfg.repos, repo.as_deref(), dry_run) {
                Ok(results) => {
                    let verb = if dry_run { "would forget" } else { "forgot" };
                    for (repo, p) in results {
                        for (id, why) in &p.kept {
                            println!("{name}: repo {repo}: keep {id} ({})", why.join(", "));
                        }
                        for id in &p.forgotten {
                            println!("{name}: repo {repo}: {verb} {id}");
                        }
                        println!(
                            "{name}: repo {repo}: {verb} {} snapshot(s); {} {} unused chunk(s), {}, and {} WAL file(s)",
                            p.forgotten.len(),
                            if dry_run { "would delete" } else { "deleted" },
                            p.chunks_deleted,
                            mib(p.bytes_deleted),
                            p.wal_deleted
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Action::Verify {
            name,
            repo,
            read_data,
            identity,
        } => {
            let b = match find(cfg, &name) {
                Ok(b) => b,
                Err(c) => return c,
            };
            let opener = match identity
                .filter(|_| read_data)
                .map(|p| opener(&p))
                .transpose()
            {
                Ok(o) => o,
                Err(c) => return c,
            };
            let shown = Progress::start(format!("verify {name}"));
            let result = ops::check(b, &cfg.repos, repo.as_deref(), opener.as_ref());
            drop(shown);
            match result {
                Ok(problems) if problems.is_empty() => {
                    println!("{name}: every snapshot is intact");
                    ExitCode::SUCCESS
                }
                Ok(problems) => {
                    for p in &problems {
                        eprintln!("{p}");
                    }
                    eprintln!("{name}: {} problem(s) found", problems.len());
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

pub(super) fn restore(cmd: RestoreCmd) -> ExitCode {
    let loaded = match load(&cmd.config) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let cfg = &loaded.config;
    let b = match find(cfg, &cmd.name) {
        Ok(b) => b,
        Err(c) => return c,
    };
    let opener = match opener(&cmd.identity) {
        Ok(o) => o,
        Err(c) => return c,
    };
    let which = match (&cmd.snapshot, &cmd.to) {
        (Some(id), _) => Which::Id(id),
        (None, Some(t)) => match centinela_backup::parse_rfc3339(t) {
            Ok(t) => Which::At(t),
            Err(e) => {
                eprintln!("error: --to: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        (None, None) => Which::Latest,
    };
    if cmd.start.is_some() && !matches!(b.source, Source::Postgres { .. }) {
        eprintln!(
            "error: --start is for PostgreSQL backups; {} is not one",
            b.name
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    if let Which::At(t) = which {
        if let Err(e) = ops::check_target(b, &cfg.repos, cmd.repo.as_deref(), t) {
            eprintln!("error: --to: {e}");
            return ExitCode::FAILURE;
        }
    }
    // PostgreSQL with archived WAL: recovery fetches it through this
    // binary, to the target time or the end of the archive.
    let recovery = match &b.source {
        Source::Postgres { wal, .. } if *wal != Wal::Off => {
            match recovery(&cmd.name, &cmd.identity, &cmd.config, cmd.to.clone()) {
                Ok(r) => Some(r),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        _ => None,
    };
    let shown = Progress::start(format!("restore {}", cmd.name));
    let result = ops::restore(
        b,
        &cfg.repos,
        cmd.repo.as_deref(),
        which,
        &cmd.target,
        &opener,
        recovery.as_ref(),
    );
    drop(shown);
    match result {
        Ok((repo, idx, restored)) => {
            if let (Some(port), Restored::Postgres(dir)) = (cmd.start, &restored) {
                let wait = std::time::Duration::from_secs(3600);
                if let Err(e) = centinela_backup::throwaway::start_restored(dir, port, wait) {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
                println!(
                    "{}: PostgreSQL recovered and running on port {port} (data {})",
                    cmd.name,
                    dir.display()
                );
            }
            let what = match restored {
                Restored::Files(w) => format!(
                    "{} files, {} directories, {} links",
                    w.files, w.dirs, w.links
                ),
                Restored::Sqlite(db) => format!("{} (integrity_check: ok)", db.display()),
                Restored::Postgres(dir) => format!(
                    "a PostgreSQL data directory at {} (start it as the user that owns it)",
                    dir.display()
                ),
            };
            println!(
                "{}: snapshot {} from repo {repo} restored into {}: {what}",
                cmd.name,
                idx.id,
                cmd.target.display(),
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `centinela restore-test NAME`: restores the newest snapshot into a
/// scratch directory, runs the checks, prints RTO and RPO; exit 1 when it
/// fails.
pub(super) fn restore_test(cmd: RestoreTestCmd) -> ExitCode {
    let loaded = match load(&cmd.config) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let cfg = &loaded.config;
    let b = match find(cfg, &cmd.name) {
        Ok(b) => b,
        Err(c) => return c,
    };
    let Some(t) = &b.restore_test else {
        eprintln!("error: backup {} has no restore_test in the config", b.name);
        return ExitCode::from(EXIT_CONFIG);
    };
    let Some(identity) = cmd.identity.or_else(|| t.identity.clone()) else {
        eprintln!("error: give --identity KEY (or restore_test.identity in the config)");
        return ExitCode::from(EXIT_CONFIG);
    };
    let o = centinela_backup::restore_test::run(b, &cfg.repos, &identity, &cfg.runtime.state_dir);
    for (sql, value, min, pass) in &o.checks {
        let v = value.map_or("error".to_string(), |v| v.to_string());
        println!(
            "{}: check {sql:?}: {v} (at least {min}): {}",
            b.name,
            if *pass { "ok" } else { "FAILED" }
        );
    }
    println!(
        "{}: restore test {}: snapshot {}, RTO {:.1} s (max {} s), RPO {:.0} s (max {} s)",
        b.name,
        if o.ok { "passed" } else { "FAILED" },
        o.snapshot.as_deref().unwrap_or("-"),
        o.rto_secs,
        t.max_rto.as_secs(),
        o.rpo_secs,
        t.max_rpo.as_secs()
    );
    match o.error {
        None => ExitCode::SUCCESS,
        Some(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A word for a POSIX shell: as it is when it holds nothing a shell
/// reads, else in `'…'`.
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:=@%,".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The archive_command that `check` asks for: this binary's `wal-push`,
/// with absolute paths.
pub(super) fn archive_command(name: &str, config: &std::path::Path) -> String {
    let exe = std::env::current_exe()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "centinela".into());
    let config = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
    format!(
        "{} wal-push {} %p --config {}",
        shell_quote(&exe),
        shell_quote(name),
        shell_quote(&config.to_string_lossy())
    )
}

/// The restore_command of a point-in-time restore: this binary's
/// `wal-fetch`, with absolute paths.
fn recovery(
    name: &str,
    identity: &std::path::Path,
    config: &std::path::Path,
    to: Option<String>,
) -> Result<centinela_backup::postgres::Recovery, String> {
    let abs =
        |p: &std::path::Path| std::fs::canonicalize(p).map_err(|e| format!("{}: {e}", p.display()));
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    Ok(centinela_backup::postgres::Recovery {
        restore_command: format!(
            "{} wal-fetch {} %f %p --identity {} --config {}",
            shell_quote(&exe.to_string_lossy()),
            shell_quote(name),
            shell_quote(&abs(identity)?.to_string_lossy()),
            shell_quote(&abs(config)?.to_string_lossy()),
        ),
        target_time: to,
    })
}

#[derive(clap::Args)]
pub(super) struct WalPushCmd {
    /// The [backup.NAME] (kind = "postgres") whose repos take the WAL.
    name: String,
    /// The WAL file (archive_command's %p).
    path: PathBuf,
    #[arg(long, short, default_value = "centinela.toml")]
    config: PathBuf,
}

#[derive(clap::Args)]
pub(super) struct WalFetchCmd {
    name: String,
    /// The WAL file's name (restore_command's %f).
    file: String,
    /// Where to write it (restore_command's %p).
    dest: PathBuf,
    #[arg(long)]
    identity: PathBuf,
    #[arg(long, short, default_value = "centinela.toml")]
    config: PathBuf,
    /// Internal: read the segments after FILE ahead, then exit (started
    /// in the background by wal-fetch itself).
    #[arg(long, hide = true)]
    prefetch: bool,
}

fn postgres_backup<'a>(cfg: &'a Config, name: &str) -> Result<&'a Backup, ExitCode> {
    let b = find(cfg, name)?;
    if !matches!(b.source, Source::Postgres { .. }) {
        eprintln!("error: backup {name} is not kind = \"postgres\"");
        return Err(ExitCode::from(EXIT_CONFIG));
    }
    Ok(b)
}

/// `archive_command`: 0 only when every repo has the file, so that
/// PostgreSQL keeps it and retries otherwise.
pub(super) fn wal_push(cmd: WalPushCmd) -> ExitCode {
    let loaded = match load(&cmd.config) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let b = match postgres_backup(&loaded.config, &cmd.name) {
        Ok(b) => b,
        Err(c) => return c,
    };
    let result = centinela_backup::wal::push(b, &loaded.config.repos, &cmd.path);
    // For centinela run's metrics and its wal-push-failing alert.
    let state = &loaded.config.runtime.state_dir;
    if let Err(e) = centinela_backup::wal::record(state, &cmd.name, &result) {
        eprintln!("centinela wal-push {}: {e}", cmd.name);
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "centinela wal-push {}: {e}; PostgreSQL keeps the segment and retries",
                cmd.name
            );
            ExitCode::FAILURE
        }
    }
}

/// `wal-fetch`'s exit code for anything but "no repo has it": above 125,
/// PostgreSQL treats it as a hard failure and stops recovery, where any
/// other code means the end of the archive, so that a bad key, an
/// unreachable repo or a corrupt file would end recovery early and
/// promote a server with data missing.
const EXIT_WAL_FETCH_FAILED: u8 = 126;

/// `restore_command`: 0 fetched; 1 when no repo has the file (the
/// archive's end); 126 on any error, which stops recovery.
pub(super) fn wal_fetch(cmd: WalFetchCmd) -> ExitCode {
    let failed = ExitCode::from(EXIT_WAL_FETCH_FAILED);
    let Ok(loaded) = load(&cmd.config) else {
        return failed;
    };
    let Ok(b) = postgres_backup(&loaded.config, &cmd.name) else {
        return failed;
    };
    let Ok(opener) = opener(&cmd.identity) else {
        return failed;
    };
    if cmd.prefetch {
        centinela_backup::wal::prefetch(b, &loaded.config.repos, &cmd.file, &opener);
        return ExitCode::SUCCESS;
    }
    match centinela_backup::wal::fetch_with_prefetch(
        b,
        &loaded.config.repos,
        &cmd.file,
        &cmd.dest,
        &opener,
    ) {
        Ok(Some(read_ahead)) => {
            if read_ahead {
                // In the background: PostgreSQL replays this segment
                // meanwhile, and finds the next ones in place.
                let spawned = std::env::current_exe().and_then(|exe| {
                    std::process::Command::new(exe)
                        .args(["wal-fetch", &cmd.name, &cmd.file, "-", "--prefetch"])
                        .arg("--identity")
                        .arg(&cmd.identity)
                        .arg("--config")
                        .arg(&cmd.config)
                        .stdin(std::process::Stdio::null())
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .spawn()
                });
                if let Err(e) = spawned {
                    eprintln!("centinela wal-fetch {}: no read-ahead: {e}", cmd.name);
                }
            }
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!(
                "centinela wal-fetch {}: {e}; recovery stops here rather than end early",
                cmd.name
            );
            failed
        }
    }
}
