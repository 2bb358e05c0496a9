//! `wal = "stream"`: `pg_receivewal` run by the supervisor, and what it
//! writes shipped to the repos.
//!
//! ```text
//! STATE_DIR/wal-stream/NAME/000000010000000000000005.partial   being written (--synchronous)
//! STATE_DIR/wal-stream/NAME/000000010000000000000004           complete: pushed, then deleted
//! ```
//!
//! The supervised service `pg_receivewal.NAME` creates the replication
//! slot `centinela_NAME` if it is missing (so the server keeps the WAL
//! the receiver has not had while it is down), then streams into that
//! directory, flushing each write. The shipper, a task of `centinela run`,
//! looks every second: each complete segment or history file goes to
//! every repo (as `wal-push` does) and is deleted here once all have it,
//! and the partial segment is uploaded again whenever it grew. The repos
//! are therefore about a second behind the server: the RPO of a host lost
//! with its disks.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use centinela_config::backup::{Backup, Repo as RepoCfg, Source, Wal};
use centinela_config::{Logs, Restart, Service, ServiceBackoff, Signal, Stop};

use crate::repo::Result;
use crate::wal;

/// Where `pg_receivewal` of backup `name` writes.
pub fn dir(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("wal-stream").join(name)
}

/// The supervised service's name.
pub fn service_name(backup: &str) -> String {
    format!("pg_receivewal.{backup}")
}

/// The replication slot that keeps the WAL the receiver has not had.
pub fn slot(backup: &str) -> String {
    let clean: String = backup
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("centinela_{clean}")
}

fn streams(backups: &[Backup]) -> impl Iterator<Item = &Backup> {
    backups.iter().filter(|b| {
        matches!(
            b.source,
            Source::Postgres {
                wal: Wal::Stream,
                ..
            }
        )
    })
}

/// The `pg_receivewal` services of every `wal = "stream"` backup, for the
/// supervisor: one instance each, restarted with backoff when it exits
/// (the server restarted, the network failed), its output in
/// `STATE_DIR/logs/pg_receivewal.NAME`.
pub fn services(backups: &[Backup], state_dir: &Path) -> Vec<Service> {
    streams(backups)
        .filter_map(|b| {
            let Source::Postgres {
                connect, password, ..
            } = &b.source
            else {
                return None;
            };
            let name = service_name(&b.name);
            let bin = crate::postgres::program("pg_receivewal");
            // Create the slot when it is missing, then stream; the
            // supervisor restarts the whole on any exit.
            let script = r#"mkdir -p "$4" && "$1" --create-slot --if-not-exists --slot "$2" -d "$3" --no-password && exec "$1" -D "$4" --slot "$2" -d "$3" --synchronous --no-loop --no-password"#;
            let env = password
                .as_ref()
                .map(|p| vec![("PGPASSWORD".to_string(), p.expose().to_string())])
                .unwrap_or_default();
            Some(Service {
                name: name.clone(),
                command: PathBuf::from("/bin/sh"),
                args: vec![
                    "-c".into(),
                    script.into(),
                    "pg_receivewal".into(),
                    bin.display().to_string(),
                    slot(&b.name),
                    connect.clone(),
                    dir(state_dir, &b.name).display().to_string(),
                ],
                env,
                workdir: state_dir.to_path_buf(),
                instances: 1,
                ports: None,
                upstream: None,
                restart: Restart::Always,
                backoff: ServiceBackoff {
                    initial: Duration::from_secs(1),
                    max: Duration::from_secs(30),
                    reset_after: Duration::from_secs(60),
                },
                // pg_receivewal flushes and exits on SIGINT.
                stop: Stop {
                    signal: Signal::parse("INT").unwrap_or(Signal::TERM),
                    timeout: Duration::from_secs(10),
                    drain: Duration::ZERO,
                    liveness_grace: Duration::from_secs(1),
                },
                liveness: None,
                readiness: None,
                logs: Some(Logs {
                    dir: state_dir.join("logs").join(&name),
                    max_size: 10 * 1000 * 1000,
                    keep: 3,
                }),
                give_up: None,
                ready_timeout: Duration::from_secs(60),
                limits: Default::default(),
                scale: None,
            })
        })
        .collect()
}

/// What the shipper last sent of the partial segment.
#[derive(Default)]
pub struct Shipper {
    sent: Option<(String, SystemTime, u64)>,
}

impl Shipper {
    /// One pass over the directory: complete files pushed to every repo
    /// and deleted here, then the partial segment if it changed. How many
    /// files went; an error leaves the file for the next pass.
    pub fn ship(&mut self, b: &Backup, repos: &[RepoCfg], dir: &Path) -> Result<usize> {
        let mut complete = Vec::new();
        let mut partial = None;
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            // pg_receivewal has not started yet.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !wal::valid_name(&name) {
                continue;
            }
            if name.ends_with(".partial") {
                partial = partial.max(Some(name));
            } else {
                complete.push(name);
            }
        }
        complete.sort();
        let mut shipped = 0;
        for name in &complete {
            let path = dir.join(name);
            wal::push(b, repos, &path)?;
            let _ = std::fs::remove_file(&path);
            if name.len() == 24 {
                wal::drop_partial(b, repos, name)?;
            }
            shipped += 1;
        }
        if let Some(name) = partial {
            let path = dir.join(&name);
            let Ok(meta) = std::fs::metadata(&path) else {
                // Completed and renamed meanwhile: the next pass has it.
                return Ok(shipped);
            };
            let seen = (
                name,
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                meta.len(),
            );
            if self.sent.as_ref() != Some(&seen) {
                match wal::push_partial(b, repos, &path) {
                    Ok(()) => {
                        self.sent = Some(seen);
                        shipped += 1;
                    }
                    Err(_) if !path.exists() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(shipped)
    }
}

/// Ships every second until aborted, recording each result as `wal-push`
/// does (the `wal_push_failing` signal and its metrics).
pub async fn ship_loop(b: Backup, repos: Vec<RepoCfg>, state_dir: PathBuf) {
    let dir = dir(&state_dir, &b.name);
    let mut shipper = Some(Shipper::default());
    let mut failing = false;
    loop {
        let Some(mut s) = shipper.take() else { return };
        let (bb, rr, dd) = (b.clone(), repos.clone(), dir.clone());
        let Ok((s, result)) = tokio::task::spawn_blocking(move || {
            let r = s.ship(&bb, &rr, &dd);
            (s, r)
        })
        .await
        else {
            return;
        };
        shipper = Some(s);
        match &result {
            Ok(0) => {}
            Ok(_) => {
                if failing {
                    tracing::info!(backup = %b.name, "Streamed WAL reaches every repo again");
                }
                failing = false;
                let _ = wal::record(&state_dir, &b.name, &Ok(()));
            }
            Err(e) => {
                if !failing {
                    tracing::error!(backup = %b.name, error = %e, "Cannot ship streamed WAL; it stays in {} and is retried", dir.display());
                }
                failing = true;
                let _ = wal::record(&state_dir, &b.name, &Err(e.clone()));
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
