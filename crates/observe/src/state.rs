//! State on disk: one SQLite file, `state.db` in `[runtime] state_dir`,
//! holding alert state, silences and metric history (`crate::history`).
//!
//! Writes go through a channel to a thread of their own, which commits
//! whatever has queued up in one transaction: no caller ever waits for the
//! disk, and the request path never writes at all. A file that is not
//! centinela's, or is corrupt, is moved aside with an error log line and a
//! fresh one is made: centinela never refuses to proxy because of its
//! state. Only a directory that cannot be created or written is an error,
//! at start.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use rusqlite::{params, Connection, OpenFlags};

/// Marks the file as centinela's (`PRAGMA application_id`, "CENT").
const APPLICATION_ID: i32 = 0x4345_4E54;
const SCHEMA_VERSION: i32 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS alert (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    active_since INTEGER,
    fired_at INTEGER,
    resolved_at INTEGER,
    last_sent INTEGER
);
CREATE TABLE IF NOT EXISTS chunk (
    tier INTEGER NOT NULL,
    start INTEGER NOT NULL,
    series TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (tier, start, series)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS slo_slot (
    slo TEXT NOT NULL,
    tier INTEGER NOT NULL,
    start INTEGER NOT NULL,
    total INTEGER NOT NULL,
    bad REAL NOT NULL,
    PRIMARY KEY (slo, tier, start)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS silence (
    name TEXT PRIMARY KEY,
    until_ms INTEGER NOT NULL,
    comment TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
";

/// Why the state directory cannot be used.
#[derive(Debug)]
pub struct StateError(pub String);

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StateError {}

/// An alert's state as stored. Times are Unix milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertRow {
    pub name: String,
    pub state: String,
    pub active_since: Option<u64>,
    pub fired_at: Option<u64>,
    pub resolved_at: Option<u64>,
    pub last_sent: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SilenceRow {
    pub name: String,
    pub until_ms: u64,
    pub comment: String,
    pub created_ms: u64,
}

/// The requests of one SLO in one time slot (`crate::slo`): tier 0 is a
/// 10 s slot, tier 1 a 5 min one.
#[derive(Clone, Debug, PartialEq)]
pub struct SloSlotRow {
    pub slo: String,
    pub tier: u8,
    pub start: u64,
    pub total: u64,
    /// Bad requests; fractional where a latency objective falls inside a
    /// histogram bucket.
    pub bad: f64,
}

enum Write {
    Alert(AlertRow),
    ForgetAlert(String),
    Silence(SilenceRow),
    Unsilence(String),
    /// A history chunk, written whole.
    Chunk {
        tier: u8,
        start: u64,
        series: String,
        data: Vec<u8>,
    },
    /// Deletes the chunks of `tier` that start before `before`.
    Prune {
        tier: u8,
        before: u64,
    },
    SloSlot(SloSlotRow),
    /// Deletes the slots of `slo` in `tier` that start before `before`.
    SloPrune {
        slo: String,
        tier: u8,
        before: u64,
    },
    Flush(mpsc::SyncSender<()>),
}

/// What was in the file at start.
#[derive(Debug, Default)]
pub struct Loaded {
    pub alerts: Vec<AlertRow>,
    pub silences: Vec<SilenceRow>,
    pub slo_slots: Vec<SloSlotRow>,
    /// Where a bad file was moved, if one was.
    pub moved_aside: Option<PathBuf>,
}

/// The handle writers use. Cloning is cheap; the thread ends when every
/// handle is dropped.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Write>,
    path: PathBuf,
}

impl Store {
    /// Opens (or makes) `dir/state.db` and starts the writer thread.
    pub fn open(dir: &Path) -> Result<(Store, Loaded), StateError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StateError(format!(
                "cannot create the state directory {} ([runtime] state_dir): {e}",
                dir.display()
            ))
        })?;
        let probe = dir.join(format!(".write-test-{}", std::process::id()));
        std::fs::write(&probe, b"").map_err(|e| {
            StateError(format!(
                "the state directory {} ([runtime] state_dir) is not writable: {e}",
                dir.display()
            ))
        })?;
        let _ = std::fs::remove_file(&probe);
        let path = dir.join("state.db");
        let (conn, loaded) = match open_checked(&path) {
            Ok(c) => c,
            Err(why) => {
                let aside = move_aside(&path)?;
                tracing::error!(
                    file = %path.display(),
                    moved_to = %aside.display(),
                    reason = %why,
                    "The state file is corrupt or not centinela's: moved it aside, starting with fresh state"
                );
                let (conn, mut loaded) = open_checked(&path)
                    .map_err(|e| StateError(format!("cannot create {}: {e}", path.display())))?;
                loaded.moved_aside = Some(aside);
                (conn, loaded)
            }
        };
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("centinela-state".into())
            .spawn(move || writer(conn, rx))
            .map_err(|e| StateError(format!("cannot start the state writer: {e}")))?;
        Ok((Store { tx, path }, loaded))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn save_alert(&self, row: AlertRow) {
        let _ = self.tx.send(Write::Alert(row));
    }

    pub fn forget_alert(&self, name: &str) {
        let _ = self.tx.send(Write::ForgetAlert(name.to_string()));
    }

    pub fn save_silence(&self, row: SilenceRow) {
        let _ = self.tx.send(Write::Silence(row));
    }

    pub fn remove_silence(&self, name: &str) {
        let _ = self.tx.send(Write::Unsilence(name.to_string()));
    }

    pub fn save_chunk(&self, tier: u8, start: u64, series: &str, data: Vec<u8>) {
        let _ = self.tx.send(Write::Chunk {
            tier,
            start,
            series: series.to_string(),
            data,
        });
    }

    pub fn prune(&self, tier: u8, before: u64) {
        let _ = self.tx.send(Write::Prune { tier, before });
    }

    pub fn save_slo_slot(&self, row: SloSlotRow) {
        let _ = self.tx.send(Write::SloSlot(row));
    }

    pub fn prune_slo(&self, slo: &str, tier: u8, before: u64) {
        let _ = self.tx.send(Write::SloPrune {
            slo: slo.to_string(),
            tier,
            before,
        });
    }

    /// A read-only connection to the file, for history queries (WAL lets
    /// it read while the writer writes).
    pub fn reader(&self) -> Result<Connection, String> {
        let c = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| e.to_string())?;
        let _ = c.busy_timeout(std::time::Duration::from_secs(1));
        // Queries read a few chunks: a small page cache keeps idle RSS low.
        let _ = c.execute_batch("PRAGMA cache_size = -256");
        Ok(c)
    }

    /// Waits until everything sent before is committed (shutdown, tests).
    pub fn flush(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.tx.send(Write::Flush(tx)).is_ok() {
            let _ = rx.recv();
        }
    }
}

/// Opens the file, checks that it is centinela's and sound, makes the
/// schema, reads what it holds.
fn open_checked(path: &Path) -> Result<(Connection, Loaded), String> {
    let fresh = std::fs::metadata(path).map_or(true, |m| m.len() == 0);
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| e.to_string())?;
    let app: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if !fresh && app != APPLICATION_ID {
        return Err(format!(
            "application_id is {app:#x}, not centinela's {APPLICATION_ID:#x}"
        ));
    }
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if check != "ok" {
        return Err(format!("integrity check failed: {check}"));
    }
    let version: i32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if version > SCHEMA_VERSION {
        return Err(format!(
            "schema version {version} is newer than this centinela's {SCHEMA_VERSION}"
        ));
    }
    // Small pages: history chunks (3 to 11 KB) waste less of their last
    // overflow page. Takes effect only on a new file.
    conn.execute_batch(&format!(
        "PRAGMA page_size = 2048; PRAGMA cache_size = -256; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
         PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION};
         {SCHEMA}"
    ))
    .map_err(|e| e.to_string())?;
    let loaded = read_all(&conn).map_err(|e| e.to_string())?;
    Ok((conn, loaded))
}

fn read_all(conn: &Connection) -> rusqlite::Result<Loaded> {
    let ms = |v: Option<i64>| v.map(|v| v.max(0) as u64);
    let mut st = conn
        .prepare("SELECT name, state, active_since, fired_at, resolved_at, last_sent FROM alert")?;
    let alerts = st
        .query_map([], |r| {
            Ok(AlertRow {
                name: r.get(0)?,
                state: r.get(1)?,
                active_since: ms(r.get(2)?),
                fired_at: ms(r.get(3)?),
                resolved_at: ms(r.get(4)?),
                last_sent: ms(r.get(5)?),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut st = conn.prepare("SELECT name, until_ms, comment, created_ms FROM silence")?;
    let silences = st
        .query_map([], |r| {
            Ok(SilenceRow {
                name: r.get(0)?,
                until_ms: r.get::<_, i64>(1)?.max(0) as u64,
                comment: r.get(2)?,
                created_ms: r.get::<_, i64>(3)?.max(0) as u64,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut st = conn
        .prepare("SELECT slo, tier, start, total, bad FROM slo_slot ORDER BY slo, tier, start")?;
    let slo_slots = st
        .query_map([], |r| {
            Ok(SloSlotRow {
                slo: r.get(0)?,
                tier: r.get::<_, i64>(1)?.clamp(0, 255) as u8,
                start: r.get::<_, i64>(2)?.max(0) as u64,
                total: r.get::<_, i64>(3)?.max(0) as u64,
                bad: r.get::<_, f64>(4)?.max(0.0),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Loaded {
        alerts,
        silences,
        slo_slots,
        moved_aside: None,
    })
}

/// Renames the file (and its WAL and shared-memory files) to
/// `state.db.bad-UNIXTIME`.
fn move_aside(path: &Path) -> Result<PathBuf, StateError> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut aside = path.with_extension(format!("db.bad-{stamp}"));
    let mut n = 1;
    while aside.exists() {
        aside = path.with_extension(format!("db.bad-{stamp}.{n}"));
        n += 1;
    }
    std::fs::rename(path, &aside).map_err(|e| {
        StateError(format!(
            "the state file {} is unusable and cannot be moved aside: {e}",
            path.display()
        ))
    })?;
    for suffix in ["-wal", "-shm"] {
        let mut from = path.as_os_str().to_owned();
        from.push(suffix);
        let mut to = aside.as_os_str().to_owned();
        to.push(suffix);
        let _ = std::fs::rename(&from, &to);
    }
    Ok(aside)
}

fn writer(mut conn: Connection, rx: mpsc::Receiver<Write>) {
    let mut failing = false;
    while let Ok(first) = rx.recv() {
        // Bounded batches keep the WAL small when writes pile up.
        let mut batch = vec![first];
        while batch.len() < 2000 {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let mut acks = Vec::new();
        let result = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            for w in batch {
                match w {
                    Write::Alert(a) => {
                        tx.execute(
                            "INSERT OR REPLACE INTO alert
                             (name, state, active_since, fired_at, resolved_at, last_sent)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                            params![
                                a.name,
                                a.state,
                                a.active_since.map(|v| v as i64),
                                a.fired_at.map(|v| v as i64),
                                a.resolved_at.map(|v| v as i64),
                                a.last_sent.map(|v| v as i64),
                            ],
                        )?;
                    }
                    Write::ForgetAlert(n) => {
                        tx.execute("DELETE FROM alert WHERE name = ?1", params![n])?;
                    }
                    Write::Silence(s) => {
                        tx.execute(
                            "INSERT OR REPLACE INTO silence (name, until_ms, comment, created_ms)
                             VALUES (?1, ?2, ?3, ?4)",
                            params![s.name, s.until_ms as i64, s.comment, s.created_ms as i64],
                        )?;
                    }
                    Write::Unsilence(n) => {
                        tx.execute("DELETE FROM silence WHERE name = ?1", params![n])?;
                    }
                    Write::Chunk {
                        tier,
                        start,
                        series,
                        data,
                    } => {
                        tx.execute(
                            "INSERT OR REPLACE INTO chunk (tier, start, series, data)
                             VALUES (?1, ?2, ?3, ?4)",
                            params![tier, start as i64, series, data],
                        )?;
                    }
                    Write::Prune { tier, before } => {
                        tx.execute(
                            "DELETE FROM chunk WHERE tier = ?1 AND start < ?2",
                            params![tier, before as i64],
                        )?;
                    }
                    Write::SloSlot(r) => {
                        tx.execute(
                            "INSERT OR REPLACE INTO slo_slot (slo, tier, start, total, bad)
                             VALUES (?1, ?2, ?3, ?4, ?5)",
                            params![r.slo, r.tier, r.start as i64, r.total as i64, r.bad],
                        )?;
                    }
                    Write::SloPrune { slo, tier, before } => {
                        tx.execute(
                            "DELETE FROM slo_slot WHERE slo = ?1 AND tier = ?2 AND start < ?3",
                            params![slo, tier, before.min(i64::MAX as u64) as i64],
                        )?;
                    }
                    Write::Flush(ack) => acks.push(ack),
                }
            }
            tx.commit()
        })();
        match result {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("Writing the state file works again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::error!(error = %e, "Cannot write the state file; alert state and silences may not survive a restart");
            }
            Err(_) => {}
        }
        for a in acks {
            let _ = a.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "centinela-state-{name}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn rows_survive_a_reopen() {
        let dir = tmp("reopen");
        let (s, loaded) = Store::open(&dir).unwrap();
        assert!(loaded.alerts.is_empty() && loaded.moved_aside.is_none());
        let row = AlertRow {
            name: "a".into(),
            state: "firing".into(),
            active_since: Some(1),
            fired_at: Some(2),
            resolved_at: None,
            last_sent: Some(3),
        };
        s.save_alert(row.clone());
        s.save_silence(SilenceRow {
            name: "a".into(),
            until_ms: 9,
            comment: "maintenance".into(),
            created_ms: 1,
        });
        s.save_silence(SilenceRow {
            name: "b".into(),
            until_ms: 9,
            comment: String::new(),
            created_ms: 1,
        });
        s.remove_silence("b");
        s.flush();
        drop(s);
        let (_s, loaded) = Store::open(&dir).unwrap();
        assert_eq!(loaded.alerts, vec![row]);
        assert_eq!(loaded.silences.len(), 1);
        assert_eq!(loaded.silences[0].comment, "maintenance");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_foreign_or_corrupt_file_is_moved_aside() {
        let dir = tmp("corrupt");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("state.db"), vec![0x55u8; 8192]).unwrap();
        let (s, loaded) = Store::open(&dir).unwrap();
        let aside = loaded.moved_aside.expect("moved aside");
        assert_eq!(std::fs::read(&aside).unwrap(), vec![0x55u8; 8192]);
        s.flush();
        drop(s);
        // Another program's SQLite database: kept, not overwritten.
        let foreign = dir.join("state.db");
        std::fs::remove_file(&foreign).unwrap();
        let c = Connection::open(&foreign).unwrap();
        c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (42);")
            .unwrap();
        drop(c);
        let (_s, loaded) = Store::open(&dir).unwrap();
        let aside = loaded.moved_aside.expect("moved aside");
        let c = Connection::open(&aside).unwrap();
        let x: i64 = c.query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(x, 42);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_directory_is_an_error() {
        // A path under a regular file can be neither made nor written.
        let dir = tmp("unwritable");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("file"), b"x").unwrap();
        let err = Store::open(&dir.join("file").join("sub"))
            .err()
            .expect("an error");
        assert!(err.0.contains("[runtime] state_dir"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
