//! Backups on their schedule, inside `centinela run`: one task per
//! `[backup.NAME]`, the work itself on a blocking thread (never on the
//! request path), `keep` applied after each successful run. A run missed
//! while centinela was down (the last snapshot older than the longest gap
//! of the schedule) is made up at start. What each run did feeds metrics,
//! the `backup_age` alert signal and `/-/health/detailed`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use centinela_config::backup::{Backup, Repo as RepoCfg, Source as Kind};
use centinela_observe::{BackupFigures, Collect, Exposition, Figures, Kind as MetricKind, Source};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::ops;

/// What the last runs of one backup did.
#[derive(Clone, Debug, Default)]
pub struct Status {
    pub name: String,
    /// Unix seconds of the last successful snapshot (in every repo).
    pub last_success: Option<u64>,
    pub last_attempt: Option<u64>,
    /// Seconds the last run took.
    pub last_duration: f64,
    pub last_error: Option<String>,
    /// The last snapshot's source bytes, and the bytes it uses in a repo.
    pub source_bytes: u64,
    pub stored_bytes: u64,
    pub next_run: Option<u64>,
    pub runs_ok: u64,
    pub runs_failed: u64,
    /// The last restore test.
    pub restore_test: Option<crate::restore_test::Outcome>,
}

struct Running {
    backup: Backup,
    repos: Vec<RepoCfg>,
    status: Arc<Mutex<Status>>,
    task: JoinHandle<()>,
    /// The restore test on its own schedule.
    test: Option<JoinHandle<()>>,
    /// `wal = "stream"`: what pg_receivewal writes, shipped to the repos.
    stream: Option<JoinHandle<()>>,
}

impl Running {
    fn abort(self) {
        self.task.abort();
        for t in [self.test, self.stream].into_iter().flatten() {
            t.abort();
        }
    }
}

/// The scheduled backups.
pub struct Scheduler {
    running: Mutex<Vec<Running>>,
    /// When centinela started watching (the age of a backup with no
    /// snapshot counts from here).
    started: u64,
    /// Where restore tests restore to.
    scratch: std::path::PathBuf,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The kinds this build can run.
fn runnable(b: &Backup) -> bool {
    matches!(
        b.source,
        Kind::Files { .. } | Kind::Sqlite { .. } | Kind::Postgres { .. }
    )
}

impl Scheduler {
    /// Starts a task per runnable backup (inside a tokio runtime).
    /// `scratch`: where restore tests restore to (the state directory).
    pub fn start(backups: &[Backup], repos: &[RepoCfg], scratch: &std::path::Path) -> Scheduler {
        let s = Scheduler {
            running: Mutex::new(Vec::new()),
            started: now(),
            scratch: scratch.to_path_buf(),
        };
        s.apply(backups, repos);
        s
    }

    /// Applies a reloaded config: backups whose settings (or repos) are
    /// unchanged keep running and keep their status.
    pub fn apply(&self, backups: &[Backup], repos: &[RepoCfg]) {
        let mut running = lock(&self.running);
        let mut old: Vec<Running> = std::mem::take(&mut *running);
        for b in backups.iter().filter(|b| runnable(b)) {
            let its_repos: Vec<RepoCfg> = repos
                .iter()
                .filter(|r| b.repos.contains(&r.name))
                .cloned()
                .collect();
            match old
                .iter()
                .position(|r| r.backup == *b && r.repos == its_repos)
            {
                Some(i) => running.push(old.swap_remove(i)),
                None => {
                    let status = Arc::new(Mutex::new(Status {
                        name: b.name.clone(),
                        restore_test: crate::restore_test::load(&self.scratch, &b.name),
                        ..Status::default()
                    }));
                    let task = tokio::spawn(run_loop(
                        b.clone(),
                        its_repos.clone(),
                        status.clone(),
                        self.scratch.clone(),
                    ));
                    let test = b
                        .restore_test
                        .as_ref()
                        .filter(|t| t.identity.is_some())
                        .map(|_| {
                            tokio::spawn(test_loop(
                                b.clone(),
                                its_repos.clone(),
                                status.clone(),
                                self.scratch.clone(),
                            ))
                        });
                    let stream = matches!(
                        b.source,
                        Kind::Postgres {
                            wal: centinela_config::backup::Wal::Stream,
                            ..
                        }
                    )
                    .then(|| {
                        tokio::spawn(crate::stream::ship_loop(
                            b.clone(),
                            its_repos.clone(),
                            self.scratch.clone(),
                        ))
                    });
                    running.push(Running {
                        backup: b.clone(),
                        repos: its_repos,
                        status,
                        task,
                        test,
                        stream,
                    });
                }
            }
        }
        for r in old {
            r.abort();
        }
    }

    pub fn statuses(&self) -> Vec<Status> {
        lock(&self.running)
            .iter()
            .map(|r| lock(&r.status).clone())
            .collect()
    }

    /// `/-/health/detailed`'s backups: unhealthy while one's last run
    /// failed.
    pub fn health(&self) -> (bool, Value) {
        let list: Vec<Value> = self
            .statuses()
            .into_iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "last_success": s.last_success.map(crate::rfc3339),
                    "last_error": s.last_error,
                    "next_run": s.next_run.map(crate::rfc3339),
                    "source_bytes": s.source_bytes,
                    "stored_bytes": s.stored_bytes,
                    "restore_test": s.restore_test.as_ref().map(|t| json!({
                        "ok": t.ok,
                        "at": crate::rfc3339(t.at),
                        "snapshot": t.snapshot,
                        "rto_seconds": t.rto_secs,
                        "rpo_seconds": t.rpo_secs,
                        "error": t.error,
                    })),
                })
            })
            .collect();
        let ok = list
            .iter()
            .all(|v| v["last_error"].is_null() && v["restore_test"]["ok"] != false);
        (ok, Value::Array(list))
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        for r in lock(&self.running).drain(..) {
            r.abort();
        }
    }
}

async fn run_loop(
    b: Backup,
    repos: Vec<RepoCfg>,
    status: Arc<Mutex<Status>>,
    state_dir: std::path::PathBuf,
) {
    // The last snapshot already in the repos.
    let (bb, rr) = (b.clone(), repos.clone());
    let last = tokio::task::spawn_blocking(move || {
        ops::list(&bb, &rr, None)
            .ok()
            .and_then(|l| l.iter().map(|(_, i)| i.finished).max())
    })
    .await
    .ok()
    .flatten();
    lock(&status).last_success = last;
    let gap = b.when.longest_gap().as_secs();
    // Made up at once when a run was missed.
    let mut due = match last {
        Some(t) if now().saturating_sub(t) <= gap => b.when.next_after(now(), Some(t)),
        _ => Some(now()),
    };
    loop {
        let Some(at) = due else {
            tracing::warn!(backup = %b.name, "The schedule never fires again");
            return;
        };
        lock(&status).next_run = Some(at);
        // Wall-clock time: looked at again at least every minute.
        while now() < at {
            let left = at - now();
            tokio::time::sleep(Duration::from_secs(left.min(60))).await;
        }
        run_once(&b, &repos, &status, &state_dir).await;
        let last = lock(&status).last_success;
        due = b.when.next_after(now(), last);
    }
}

async fn test_loop(
    b: Backup,
    repos: Vec<RepoCfg>,
    status: Arc<Mutex<Status>>,
    scratch: std::path::PathBuf,
) {
    let Some(t) = b.restore_test.clone() else {
        return;
    };
    let Some(identity) = t.identity.clone() else {
        return;
    };
    while let Some(at) = t.schedule.next_after(now()) {
        while now() < at {
            tokio::time::sleep(Duration::from_secs((at - now()).min(60))).await;
        }
        let (bb, rr, id, sc) = (b.clone(), repos.clone(), identity.clone(), scratch.clone());
        let outcome =
            tokio::task::spawn_blocking(move || crate::restore_test::run(&bb, &rr, &id, &sc)).await;
        match outcome {
            Ok(o) => {
                if o.ok {
                    tracing::info!(backup = %b.name, rto_secs = o.rto_secs, rpo_secs = o.rpo_secs, "Restore test passed");
                } else {
                    tracing::error!(backup = %b.name, error = o.error.as_deref().unwrap_or(""), "Restore test failed");
                }
                lock(&status).restore_test = Some(o);
            }
            Err(e) => tracing::error!(backup = %b.name, error = %e, "Restore test task failed"),
        }
    }
}

async fn run_once(
    b: &Backup,
    repos: &[RepoCfg],
    status: &Arc<Mutex<Status>>,
    state_dir: &std::path::Path,
) {
    let started = std::time::Instant::now();
    lock(status).last_attempt = Some(now());
    let (bb, rr, sd) = (b.clone(), repos.to_vec(), state_dir.to_path_buf());
    let outcome = tokio::task::spawn_blocking(move || {
        let results = ops::run(&bb, &rr, Some(&sd));
        let errors: Vec<String> = results
            .iter()
            .filter_map(|(repo, r)| r.as_ref().err().map(|e| format!("repo {repo}: {e}")))
            .collect();
        let done = results.into_iter().find_map(|(_, r)| r.ok());
        if errors.is_empty() {
            if let Err(e) = ops::prune(&bb, &rr, None, false) {
                tracing::error!(backup = %bb.name, error = %e, "Prune after the backup failed");
            }
        }
        (done, errors)
    })
    .await;
    let took = started.elapsed().as_secs_f64();
    let mut s = lock(status);
    s.last_duration = took;
    match outcome {
        Ok((Some(idx), errors)) if errors.is_empty() => {
            s.last_success = Some(idx.finished);
            s.last_error = None;
            s.source_bytes = idx.source_bytes;
            s.stored_bytes =
                idx.manifest.size + idx.chunks.iter().map(|(_, c)| c.size).sum::<u64>();
            s.runs_ok += 1;
            tracing::info!(backup = %b.name, snapshot = %idx.id, source_bytes = idx.source_bytes, added_bytes = idx.added_bytes, duration_secs = took, "Backup done");
        }
        Ok((_, errors)) => {
            let e = errors.join("; ");
            tracing::error!(backup = %b.name, error = %e, "Backup failed");
            s.last_error = Some(e);
            s.runs_failed += 1;
        }
        Err(e) => {
            tracing::error!(backup = %b.name, error = %e, "Backup task failed");
            s.last_error = Some(e.to_string());
            s.runs_failed += 1;
        }
    }
}

impl Source for Scheduler {
    fn figures(&self, out: &mut Figures) {
        for s in self.statuses() {
            out.backups.push(BackupFigures {
                age_from: s.last_success.unwrap_or(self.started),
                last_success: s.last_success,
                restore_test_failed: s.restore_test.as_ref().map(|t| !t.ok),
                wal_push_failing: crate::wal::status(&self.scratch, &s.name).map(|w| w.failing()),
                name: s.name,
            });
        }
    }
}

impl Collect for Scheduler {
    fn collect(&self, out: &mut Exposition) {
        let all = self.statuses();
        out.family(
            "centinela_backup_last_success_timestamp_seconds",
            "When the backup's last successful snapshot finished (Unix seconds).",
            MetricKind::Gauge,
        );
        for s in &all {
            if let Some(t) = s.last_success {
                out.gauge(&[("backup", &s.name)], t as f64);
            }
        }
        out.family(
            "centinela_backup_duration_seconds",
            "How long the backup's last run took.",
            MetricKind::Gauge,
        );
        for s in all.iter().filter(|s| s.last_attempt.is_some()) {
            out.gauge(&[("backup", &s.name)], s.last_duration);
        }
        out.family(
            "centinela_backup_bytes",
            "The last snapshot's size: kind=\"source\" as read, kind=\"stored\" as stored in a repo (compressed, encrypted, shared chunks included).",
            MetricKind::Gauge,
        );
        for s in all.iter().filter(|s| s.runs_ok > 0) {
            out.gauge(
                &[("backup", &s.name), ("kind", "source")],
                s.source_bytes as f64,
            );
            out.gauge(
                &[("backup", &s.name), ("kind", "stored")],
                s.stored_bytes as f64,
            );
        }
        let tested: Vec<(&str, &crate::restore_test::Outcome)> = all
            .iter()
            .filter_map(|s| Some((s.name.as_str(), s.restore_test.as_ref()?)))
            .collect();
        for (name, help, value) in [
            (
                "centinela_restore_test_rto_seconds",
                "Wall time of the last restore test, from its start to its checks passed (RTO).",
                (|t: &crate::restore_test::Outcome| t.rto_secs) as fn(&crate::restore_test::Outcome) -> f64,
            ),
            (
                "centinela_restore_test_rpo_seconds",
                "Age of what the last restore test recovered (RPO).",
                |t| t.rpo_secs,
            ),
            (
                "centinela_restore_test_ok",
                "1 when the last restore test passed (restored, checks passed, within max_rto and max_rpo), else 0.",
                |t| f64::from(u8::from(t.ok)),
            ),
        ] {
            out.family(name, help, MetricKind::Gauge);
            for (b, t) in &tested {
                out.gauge(&[("backup", b)], value(t));
            }
        }
        let pushes: Vec<(&str, crate::wal::PushStatus)> = all
            .iter()
            .filter_map(|s| Some((s.name.as_str(), crate::wal::status(&self.scratch, &s.name)?)))
            .collect();
        out.family(
            "centinela_wal_push_last_success_timestamp_seconds",
            "When a wal-push (PostgreSQL's archive_command) last put a WAL file in every repo of the backup (Unix seconds).",
            MetricKind::Gauge,
        );
        for (b, w) in &pushes {
            if let Some(t) = w.last_success {
                out.gauge(&[("backup", b)], t as f64);
            }
        }
        out.family(
            "centinela_wal_push_failing",
            "1 when the backup's last wal-push failed (PostgreSQL keeps the segment and retries), else 0.",
            MetricKind::Gauge,
        );
        for (b, w) in &pushes {
            out.gauge(&[("backup", b)], f64::from(u8::from(w.failing())));
        }
        out.family(
            "centinela_backup_runs",
            "Scheduled backup runs by result.",
            MetricKind::Counter,
        );
        for s in &all {
            out.counter(&[("backup", &s.name), ("result", "success")], s.runs_ok);
            out.counter(&[("backup", &s.name), ("result", "error")], s.runs_failed);
        }
    }
}
