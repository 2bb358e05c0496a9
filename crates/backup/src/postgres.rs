//! `kind = "postgres"`, first part: base backups. `pg_basebackup
//! --format=tar` (PostgreSQL's own tool; the protocol is not
//! reimplemented) streams into the chunker, with the WAL the backup needs
//! inside (`-X fetch`): nothing is staged on local disk, and a restored
//! directory starts on its own. WAL archiving and point-in-time recovery
//! come next.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::repo::{Reader, Result, Writer};

/// A PostgreSQL client program: on the PATH, else in Debian's
/// `/usr/lib/postgresql/VERSION/bin` (the newest).
pub fn program(name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    }) {
        return p;
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.is_file())
        .collect();
    versions.sort();
    versions.pop().unwrap_or_else(|| PathBuf::from(name))
}

/// Streams a base backup of the server `connect` names into `w`.
pub fn backup(w: &mut Writer<'_>, connect: &str, password: Option<&str>) -> Result<Value> {
    let bin = program("pg_basebackup");
    let mut cmd = Command::new(&bin);
    cmd.args([
        "-d",
        connect,
        "-D",
        "-",
        "-Ft",
        "-X",
        "fetch",
        "--checkpoint=fast",
        "--no-password",
        "--verbose",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    let mut child = cmd.spawn().map_err(|e| {
        format!(
            "cannot run {}: {e} (Debian package postgresql-client)",
            bin.display()
        )
    })?;
    let stdout = child.stdout.take().ok_or("pg_basebackup has no output")?;
    // Its messages, read beside the stream so that neither pipe fills.
    let mut stderr = child
        .stderr
        .take()
        .ok_or("pg_basebackup has no error output")?;
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let streamed = w.stream(stdout);
    let status = child.wait().map_err(|e| format!("pg_basebackup: {e}"))?;
    let messages = errors.join().unwrap_or_default();
    if !status.success() {
        // pg_basebackup's own words; the conninfo is never repeated.
        let why = messages
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.contains("skipping special file"))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(format!("pg_basebackup failed ({status}): {why}"));
    }
    let chunks = streamed?;
    // "pg_basebackup: write-ahead log start point: 0/2000028 on timeline 1"
    w.wal_start = messages.lines().find_map(|l| {
        let rest = l.split("write-ahead log start point: ").nth(1)?;
        let (lsn, tl) = rest.split_once(" on timeline ")?;
        crate::wal::segment_of(lsn.trim(), tl.trim().parse().ok()?)
    });
    Ok(json!({
        "kind": "postgres",
        "format": "tar",
        "size": w.source_bytes,
        "chunks": chunks,
    }))
}

/// Unpacks a base backup into `target` (missing or empty) with `tar`, and
/// gives the directory the mode PostgreSQL requires. Start it as the user
/// that owns it (restore as that user, or `chown -R postgres` after).
pub fn restore(r: &Reader<'_>, manifest: &Value, target: &Path) -> Result<PathBuf> {
    crate::files::empty_target(target)?;
    std::fs::create_dir_all(target)
        .map_err(|e| format!("cannot create {}: {e}", target.display()))?;
    let mut tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(target)
        .arg("-f")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run tar: {e}"))?;
    let mut stdin = tar.stdin.take().ok_or("tar has no input")?;
    let fed: Result<()> = (|| {
        let ids = manifest
            .get("chunks")
            .and_then(Value::as_array)
            .ok_or("the manifest lists no chunks")?
            .iter()
            .map(|id| id.as_str().ok_or("a chunk id is not a string"))
            .collect::<std::result::Result<Vec<&str>, _>>()?;
        r.each_chunk(&ids, |data| {
            stdin
                .write_all(&data)
                .map_err(|e| format!("tar stopped reading: {e}"))
        })
    })();
    drop(stdin);
    let out = tar.wait_with_output().map_err(|e| format!("tar: {e}"))?;
    fed?;
    if !out.status.success() {
        return Err(format!(
            "tar failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("cannot set the mode of {}: {e}", target.display()))?;
    Ok(target.to_path_buf())
}

/// What a point-in-time restore adds to the data directory:
/// `recovery.signal`, and in `postgresql.auto.conf` the command that
/// fetches archived WAL and the target.
pub struct Recovery {
    /// `restore_command`, with `%f` and `%p`.
    pub restore_command: String,
    /// RFC 3339 (`--to`); `None`: recover to the end of the archive.
    pub target_time: Option<String>,
}

impl Recovery {
    pub fn write(&self, dir: &Path) -> Result<()> {
        let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let mut conf = format!(
            "\n# Written by centinela restore\nrestore_command = {}\n",
            quote(&self.restore_command)
        );
        if let Some(t) = &self.target_time {
            conf.push_str(&format!(
                "recovery_target_time = {}\nrecovery_target_action = 'promote'\n",
                quote(&pg_time(t))
            ));
        }
        let auto = dir.join("postgresql.auto.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&auto)
            .map_err(|e| format!("cannot write {}: {e}", auto.display()))?;
        f.write_all(conf.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", auto.display()))?;
        let signal = dir.join("recovery.signal");
        std::fs::write(&signal, b"").map_err(|e| format!("cannot write {}: {e}", signal.display()))
    }
}

/// An RFC 3339 time as PostgreSQL 15's `recovery_target_time` takes it:
/// a space for the `T`, and `+00` for `Z` (which it refuses).
fn pg_time(t: &str) -> String {
    let t = t.replacen(['T', 't'], " ", 1);
    match t.strip_suffix(['Z', 'z']) {
        Some(base) => format!("{base}+00"),
        None => t,
    }
}

/// The major version in `pg_basebackup (PostgreSQL) 15.18` or `150018`.
fn major(text: &str) -> Option<u32> {
    let word = text.split_whitespace().last()?;
    if !word.contains('.') {
        return word.parse::<u32>().ok().map(|n| n / 10_000);
    }
    word.split('.').next()?.parse().ok()
}

/// What `check` asks of a PostgreSQL backup's server: reachable,
/// `pg_basebackup` of its major version, and, with `wal = "archive"`,
/// `archive_mode` on and an `archive_command` that runs this backup's
/// `wal-push`. Each problem says how to fix it; `archive_line` is the
/// exact `archive_command` line to add.
/// With `stream`, the server must take replication connections.
pub fn check(
    connect: &str,
    password: Option<&str>,
    archive_line: Option<&str>,
    stream: bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    let base = program("pg_basebackup");
    let tool = match Command::new(&base).arg("--version").output() {
        Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Err(e) => {
            problems.push(format!(
                "cannot run {}: {e} (Debian package postgresql-client)",
                base.display()
            ));
            String::new()
        }
    };
    let mut psql = Command::new(program("psql"));
    psql.args(["-X", "-A", "-t", "--no-password", "-d", connect, "-c"])
        .arg("SELECT current_setting('server_version_num') || '|' || current_setting('wal_level') || '|' || current_setting('max_wal_senders') || '|' || current_setting('archive_mode') || '|' || current_setting('archive_command')")
        .stdin(Stdio::null());
    if let Some(p) = password {
        psql.env("PGPASSWORD", p);
    }
    let out = match psql.output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(o) => {
            problems.push(format!(
                "cannot reach the PostgreSQL server: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
            return problems;
        }
        Err(e) => {
            problems.push(format!(
                "cannot run psql: {e} (Debian package postgresql-client)"
            ));
            return problems;
        }
    };
    let mut parts = out.splitn(5, '|');
    let mut next = || parts.next().unwrap_or("");
    let (version, level, senders, mode, command) = (next(), next(), next(), next(), next());
    if stream && (level == "minimal" || senders == "0") {
        problems.push(format!(
            "wal = \"stream\" but the server has wal_level = {level:?} and max_wal_senders = {senders}; set in postgresql.conf, then restart PostgreSQL:\n    wal_level = replica\n    max_wal_senders = 10"
        ));
    }
    match (major(&tool), major(version)) {
        (Some(t), Some(s)) if t != s => problems.push(format!(
            "{} is {tool:?} but the server is PostgreSQL {s}: install postgresql-client-{s} (pg_basebackup must match the server's major version)",
            base.display()
        )),
        _ => {}
    }
    if let Some(line) = archive_line {
        let pushes = command.contains("wal-push");
        if !matches!(mode, "on" | "always") || !pushes {
            problems.push(format!(
                "wal = \"archive\" but the server has archive_mode = {mode:?} and archive_command = {command:?}; add to postgresql.conf, then restart PostgreSQL:\n    archive_mode = on\n    archive_command = '{}'",
                line.replace('\'', "''")
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    #[test]
    fn major_versions_of_the_tool_and_the_server() {
        assert_eq!(super::major("pg_basebackup (PostgreSQL) 15.18"), Some(15));
        assert_eq!(super::major("150018"), Some(15));
        assert_eq!(super::major("160002"), Some(16));
        assert_eq!(super::major(""), None);
    }

    #[test]
    fn target_times_in_postgres_form() {
        assert_eq!(
            super::pg_time("2026-12-01T10:00:00Z"),
            "2026-12-01 10:00:00+00"
        );
        assert_eq!(
            super::pg_time("2026-12-01T10:00:00.25+01:00"),
            "2026-12-01 10:00:00.25+01:00"
        );
    }
}
