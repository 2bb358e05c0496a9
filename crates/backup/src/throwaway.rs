//! A throwaway PostgreSQL server for a restore test: the restored data
//! directory started on a free loopback port, with its own trust-only
//! `pg_hba.conf` in the scratch directory and no Unix socket, archiving
//! off (a restore test must never push a new timeline into the repo),
//! stopped (`immediate`) however the test ends. As root it runs as the
//! `postgres` user, as PostgreSQL requires.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::repo::Result;

pub struct Throwaway {
    bin: PathBuf,
    data: PathBuf,
    pub port: u16,
    user: String,
}

/// Running as root? `/proc/self` belongs to the process's effective user.
fn root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The directory of the PostgreSQL programs for the major version of the
/// cluster in `data` (Debian: /usr/lib/postgresql/N/bin), else the PATH's.
fn bindir(data: &Path) -> Result<PathBuf> {
    let version = std::fs::read_to_string(data.join("PG_VERSION"))
        .map_err(|e| format!("{}: not a PostgreSQL data directory: {e}", data.display()))?;
    let debian = PathBuf::from(format!("/usr/lib/postgresql/{}/bin", version.trim()));
    if debian.join("pg_ctl").is_file() {
        return Ok(debian);
    }
    let out = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .map_err(|_| {
            format!(
                "no PostgreSQL {} programs found (/usr/lib/postgresql/{}/bin or pg_config)",
                version.trim(),
                version.trim()
            )
        })?;
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn command(program: &Path, as_postgres: bool) -> Command {
    if as_postgres {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

impl Throwaway {
    /// Starts the cluster in `data` (scratch files go in `scratch`) and
    /// waits until it takes connections.
    pub fn start(data: &Path, scratch: &Path, wait: Duration) -> Result<Throwaway> {
        let bin = bindir(data)?;
        let hba = scratch.join("pg_hba.conf");
        std::fs::write(&hba, "host all all 127.0.0.1/32 trust\n")
            .map_err(|e| format!("{}: {e}", hba.display()))?;
        let ident = scratch.join("pg_ident.conf");
        std::fs::write(&ident, "").map_err(|e| format!("{}: {e}", ident.display()))?;
        // Debian keeps postgresql.conf in /etc: the data directory of a
        // base backup may have none.
        let conf = data.join("postgresql.conf");
        if !conf.exists() {
            std::fs::write(&conf, "").map_err(|e| format!("{}: {e}", conf.display()))?;
        }
        let as_postgres = root();
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(scratch)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(format!(
                    "cannot give {} to the postgres user (PostgreSQL does not run as root)",
                    scratch.display()
                ));
            }
        }
        let port = free_port()?;
        let opts = format!(
            "-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' \
             -c hba_file='{}' -c ident_file='{}' -c archive_mode=off -c ssl=off \
             -c hot_standby=on -c logging_collector=off",
            hba.display(),
            ident.display()
        );
        let log = scratch.join("postgres.log");
        let out = command(&bin.join("pg_ctl"), as_postgres)
            .arg("-D")
            .arg(data)
            .arg("-l")
            .arg(&log)
            .args([
                "-w",
                "-t",
                &wait.as_secs().max(1).to_string(),
                "-o",
                &opts,
                "start",
            ])
            .output()
            .map_err(|e| format!("cannot run pg_ctl: {e}"))?;
        let user = "postgres".to_string();
        let mut server = Throwaway {
            bin,
            data: data.to_path_buf(),
            port,
            user,
        };
        if !out.status.success() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            return Err(format!(
                "the restored PostgreSQL did not start: {}{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                tail.into_iter()
                    .rev()
                    .map(|l| format!("\n  {l}"))
                    .collect::<String>()
            ));
        }
        // The cluster's superuser: `postgres` as Debian makes them, else
        // the name of the user who ran initdb, as initdb does.
        if server.query("SELECT 1").is_err() {
            if let Ok(me) = std::env::var("USER") {
                server.user = me;
            }
        }
        Ok(server)
    }

    /// One value (the first column of the first row) of `sql`.
    pub fn query(&self, sql: &str) -> Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                &self.user,
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .output()
            .map_err(|e| format!("cannot run psql: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string())
    }

    /// Waits until recovery has replayed all the WAL it was given and the
    /// server was promoted.
    pub fn wait_promoted(&self, wait: Duration) -> Result<()> {
        let end = Instant::now() + wait;
        loop {
            match self.query("SELECT pg_is_in_recovery()") {
                Ok(v) if v == "f" => return Ok(()),
                Ok(_) => {}
                Err(e) if Instant::now() >= end => return Err(e),
                Err(_) => {}
            }
            if Instant::now() >= end {
                return Err(format!(
                    "the restored PostgreSQL was still in recovery after {} s",
                    wait.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        let _ = command(&self.bin.join("pg_ctl"), root())
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// `restore --start PORT`: starts the restored cluster in `data` on
/// `port` (its own settings otherwise), as the `postgres` user when root,
/// and waits until recovery has finished (PostgreSQL removes
/// `recovery.signal` when it promotes). The server keeps running; its log
/// is `DATA/centinela-restore.log`.
pub fn start_restored(data: &Path, port: u16, wait: Duration) -> Result<()> {
    let bin = bindir(data)?;
    let conf = data.join("postgresql.conf");
    if !conf.exists() {
        std::fs::write(&conf, "").map_err(|e| format!("{}: {e}", conf.display()))?;
    }
    let as_postgres = root();
    if as_postgres {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(data)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(format!(
                "cannot give {} to the postgres user",
                data.display()
            ));
        }
    }
    let log = data.join("centinela-restore.log");
    let out = command(&bin.join("pg_ctl"), as_postgres)
        .arg("-D")
        .arg(data)
        .arg("-l")
        .arg(&log)
        .args(["-w", "-t", &wait.as_secs().max(1).to_string()])
        .args(["-o", &format!("-c port={port}"), "start"])
        .output()
        .map_err(|e| format!("cannot run pg_ctl: {e}"))?;
    let tail = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let last: Vec<&str> = text.lines().rev().take(5).collect();
        last.into_iter()
            .rev()
            .map(|l| format!("\n  {l}"))
            .collect::<String>()
    };
    if !out.status.success() {
        return Err(format!(
            "PostgreSQL did not start on port {port}: {}{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            tail()
        ));
    }
    let end = Instant::now() + wait;
    while data.join("recovery.signal").exists() {
        // Recovery stopped (wal-fetch failed hard): the server is gone.
        if !data.join("postmaster.pid").exists() {
            return Err(format!(
                "PostgreSQL on port {port} stopped during recovery:{}",
                tail()
            ));
        }
        if Instant::now() >= end {
            return Err(format!(
                "PostgreSQL on port {port} was still recovering after {} s (see {})",
                wait.as_secs(),
                log.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The file goes a moment before the server says it is out of
    // recovery: ask it, where its pg_hba lets us in without a password.
    loop {
        let asked = command(&bin.join("psql"), as_postgres)
            .args(["-X", "-A", "-t", "--no-password", "-h", "127.0.0.1"])
            .args(["-p", &port.to_string(), "-U", "postgres", "-d", "postgres"])
            .args(["-c", "SELECT pg_is_in_recovery()"])
            .output();
        match asked {
            Ok(o) if o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "t" => {}
            _ => return Ok(()),
        }
        if Instant::now() >= end {
            return Err(format!(
                "PostgreSQL on port {port} was still recovering after {} s",
                wait.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
