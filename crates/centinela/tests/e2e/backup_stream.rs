//! `wal = "stream"`: `centinela run` supervises `pg_receivewal` against a
//! real PostgreSQL 15 and ships what it writes to the repo, the segment
//! still being written included, so a host lost with its disks loses
//! about a second of commits.

use std::path::Path;
use std::time::{Duration, SystemTime};

use centinela_testkit::pg::{as_server, program, Postgres};
use centinela_testkit::{bin, eventually, TempDir};
use serde_json::Value;

use crate::backup::keygen;

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The newest time a `.partial` of the backup reached the repo.
fn partial_mtime(wal: &Path) -> Option<SystemTime> {
    std::fs::read_dir(wal)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial.sum"))
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max()
}

fn status(admin: std::net::SocketAddr) -> Value {
    let out = std::process::Command::new(bin("centinela"))
        .args(["status", "--json", "--admin", &admin.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn receiver(admin: std::net::SocketAddr) -> Value {
    let v = status(admin);
    v["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "pg_receivewal.products-db")
        .map(|s| s["instances"][0].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_wal_reaches_the_repo_within_seconds_and_restores_after_the_host_is_lost() {
    let dir = TempDir::new("backup-stream");
    let key = dir.path("backup.key");
    let recipient = keygen(&key);
    let pg = Postgres::init(&dir.path("primary")).await;
    let cfg = dir.path("centinela.toml");
    std::fs::write(
        &cfg,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n{}[backup.products-db]\nkind = \"postgres\"\nconnect = \"{}\"\nwal = \"stream\"\nschedule = \"0 3 * * *\"\nrepos = [\"local\"]\nencrypt_to = [\"{recipient}\"]\n[runtime]\naccess_log = false\nshutdown_timeout = \"2s\"\n",
            crate::backup::PREAMBLE,
            pg.conninfo()
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap().to_string();
    let out = std::process::Command::new(bin("centinela"))
        .args(["check", "--config", &c])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(
            "WAL streamed by the supervised service pg_receivewal.products-db (replication slot centinela_products_db)"
        ),
        "{}",
        text(&out)
    );

    let gw = crate::lifecycle::run_gateway(&cfg).await;
    let wal = dir.path("repo/wal/products-db");
    // The supervisor runs pg_receivewal, which made its slot.
    let running = eventually(Duration::from_secs(30), || async {
        receiver(gw.admin)["state"] == "ready" && partial_mtime(&wal).is_some()
    })
    .await;
    assert!(running, "{}", status(gw.admin));
    assert_eq!(
        pg.psql("SELECT slot_name || ' ' || active FROM pg_replication_slots"),
        "centinela_products_db true"
    );

    let out = std::process::Command::new(bin("centinela"))
        .args(["backup", "run", "products-db", "--config", &c])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    pg.psql("CREATE TABLE products (id serial PRIMARY KEY, batch text NOT NULL)");
    pg.psql("INSERT INTO products (batch) SELECT 'a' FROM generate_series(1, 1000)");
    // A complete segment goes to the repo, and leaves the local directory
    // and its partial copy in the repo behind.
    let seg = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.psql("SELECT pg_switch_wal()");
    let shipped = eventually(Duration::from_secs(20), || async {
        wal.join(format!("{seg}.sum")).is_file()
            && !wal.join(format!("{seg}.partial")).exists()
            && !dir
                .path(&format!("centinela-data/wal-stream/products-db/{seg}"))
                .exists()
    })
    .await;
    assert!(
        shipped,
        "{seg}: {:?}",
        std::fs::read_dir(&wal).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );

    // Killed, the receiver is restarted by the supervisor and resumes
    // from its slot.
    let pid = receiver(gw.admin)["pid"].as_u64().unwrap();
    kill9(pid as i32);
    let restarted = eventually(Duration::from_secs(30), || async {
        let r = receiver(gw.admin);
        r["state"] == "ready" && r["restarts"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    assert!(restarted, "{}", status(gw.admin));

    // The last batch is committed and is in no complete segment: the
    // repo has it within seconds, in the partial one.
    pg.psql("INSERT INTO products (batch) SELECT 'b' FROM generate_series(1, 1000)");
    let committed = SystemTime::now();
    let reached = eventually(Duration::from_secs(10), || async {
        partial_mtime(&wal).is_some_and(|t| t > committed)
    })
    .await;
    assert!(reached, "the partial segment did not reach the repo");
    let lag = partial_mtime(&wal)
        .unwrap()
        .duration_since(committed)
        .unwrap_or_default();
    eprintln!("streamed WAL reached the repo {lag:?} after the commit");

    // The host is lost: the server and centinela with it.
    drop(gw);
    drop(pg);
    // wal-fetch that cannot read (here: no key) exits 126, which stops
    // recovery; 1 would tell PostgreSQL the archive ends there, and it
    // would promote without the rest.
    let out = std::process::Command::new(bin("centinela"))
        .args(["wal-fetch", "products-db", &seg, "RECOVERYXLOG"])
        .args(["--identity", "/nonexistent/backup.key", "--config", &c])
        .current_dir(dir.path(""))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(126), "{}", text(&out));
    assert!(
        text(&out).contains("/nonexistent/backup.key"),
        "{}",
        text(&out)
    );
    // restore_command runs as the server's user: it reads the key (a
    // test shortcut; a real host keeps the key for restores only).
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let port = centinela_testkit::free_port_range(1);
    let target = dir.path("restored/data");
    let out = std::process::Command::new(bin("centinela"))
        .args(["restore", "products-db", "--latest", "--target"])
        .arg(&target)
        .arg("--identity")
        .arg(&key)
        .args(["--start", &port.to_string(), "--config", &c])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let count = std::process::Command::new(program("psql"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(["-d", "postgres", "-At", "-c"])
        .arg("SELECT batch || count(*) FROM products WHERE NOT pg_is_in_recovery() GROUP BY batch ORDER BY batch")
        .output()
        .unwrap();
    let _ = as_server(
        &program("pg_ctl"),
        &["-D", target.to_str().unwrap(), "-m", "immediate", "stop"],
    )
    .output();
    assert_eq!(
        String::from_utf8_lossy(&count.stdout).trim(),
        "a1000\nb1000",
        "{}",
        text(&count)
    );
}

fn kill9(pid: i32) {
    let ok = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -9 {pid}");
}
