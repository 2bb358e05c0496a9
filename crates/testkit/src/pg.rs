//! Throwaway PostgreSQL servers for tests (Debian package `postgresql`,
//! installed by scripts/test.sh): `initdb` in a temporary directory, a
//! free port on 127.0.0.1, trust authentication, killed with the test.
//! As root (CI), the server runs as the `postgres` user, as PostgreSQL
//! requires.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{eventually, free_port_range, Proc};

/// A PostgreSQL program from Debian's `/usr/lib/postgresql/VERSION/bin`
/// (the newest), else the PATH.
pub fn program(name: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| PathBuf::from(name))
}

/// Running as root? `/proc/self` belongs to the process's effective user.
fn root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The command line that runs `program` as the server's user.
fn as_server_user(program: &Path, args: &[&str]) -> (PathBuf, Vec<String>) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    if root() {
        // setpriv execs (no child of its own): killing it kills the server.
        let mut v = vec![
            "--reuid=postgres".to_string(),
            "--regid=postgres".to_string(),
            "--init-groups".to_string(),
            "--".to_string(),
            program.display().to_string(),
        ];
        v.extend(args);
        (PathBuf::from("/usr/bin/setpriv"), v)
    } else {
        (program.to_path_buf(), args)
    }
}

/// Gives `dir` (recursively) to the server's user.
pub fn give_to_server_user(dir: &Path) {
    if root() {
        let ok = std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "chown -R postgres {}", dir.display());
    }
}

pub struct Postgres {
    pub port: u16,
    pub data: PathBuf,
    pub proc: Proc,
}

impl Postgres {
    /// A new cluster in `dir/data` (the directory must be traversable).
    pub async fn init(dir: &Path) -> Postgres {
        Postgres::init_with(dir, "").await
    }

    /// The same, with `conf` appended to its postgresql.conf first.
    pub async fn init_with(dir: &Path, conf: &str) -> Postgres {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        make_traversable(dir);
        give_to_server_user(&data);
        let (prog, args) = as_server_user(
            &program("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "--auth=trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        let out = std::process::Command::new(&prog)
            .args(&args)
            .current_dir("/")
            .output()
            .expect("initdb (Debian package postgresql; scripts/test.sh installs it)");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if !conf.is_empty() {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(data.join("postgresql.conf"))
                .unwrap();
            writeln!(f, "\n{conf}").unwrap();
        }
        Postgres::start(&data).await
    }

    /// Starts a server on an existing data directory (a restored one).
    pub async fn start(data: &Path) -> Postgres {
        give_to_server_user(data);
        let port = free_port_range(1);
        let sock = data.parent().unwrap().join(format!("sock-{port}"));
        std::fs::create_dir_all(&sock).unwrap();
        give_to_server_user(&sock);
        let port_s = port.to_string();
        let (prog, args) = as_server_user(
            &program("postgres"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-p",
                &port_s,
                "-k",
                sock.to_str().unwrap(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ],
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let proc = Proc::spawn(&prog, &args);
        let pg = Postgres {
            port,
            data: data.to_path_buf(),
            proc,
        };
        let ready = eventually(Duration::from_secs(30), || async {
            std::process::Command::new(program("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port_s, "-q"])
                .status()
                .is_ok_and(|s| s.success())
        })
        .await;
        assert!(ready, "PostgreSQL did not start on {port}");
        pg
    }

    /// Runs SQL with psql; its unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> String {
        let out = std::process::Command::new(program("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The libpq conninfo of this server.
    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }
}

/// Lets the server's user reach into `dir` (and the directories above).
fn make_traversable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut d = Some(dir);
    while let Some(p) = d {
        if p == Path::new("/") || p == Path::new("/tmp") {
            break;
        }
        if let Ok(m) = std::fs::metadata(p) {
            let mode = m.permissions().mode() | 0o111;
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
        }
        d = p.parent();
    }
}

/// A command that runs `program` as the server's user (as root: the
/// `postgres` user), for what the server itself would run.
pub fn as_server(program: &Path, args: &[&str]) -> std::process::Command {
    let (prog, args) = as_server_user(program, args);
    let mut c = std::process::Command::new(prog);
    c.args(args).current_dir("/");
    c
}
