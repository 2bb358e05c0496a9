//! docs/runbooks/restore.md runs as it is written: every ```sh block, in
//! order, with its variables pointing at real backups of a real
//! PostgreSQL (WAL archived by wal-push) and a real SQLite file.

use std::path::Path;
use std::time::Duration;

use centinela_testkit::pg::{as_server, program, Postgres};
use centinela_testkit::{bin, eventually, TempDir};

use super::backup::{keygen, PREAMBLE};

/// The ```sh blocks of a Markdown file, in order.
fn sh_blocks(md: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in md.lines() {
        match (&mut cur, line.trim_end()) {
            (None, "```sh") => cur = Some(String::new()),
            (Some(b), "```") => {
                out.push(std::mem::take(b));
                cur = None;
            }
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    out
}

/// Waits until the wall clock is in a later second than `t` (snapshots
/// are dated to the second).
fn next_second() {
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let t = now();
    while now() == t {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_restore_runbook_runs_as_written() {
    let md = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/runbooks/restore.md"),
    )
    .unwrap();
    let blocks = sh_blocks(&md);
    assert!(blocks.len() >= 5, "{blocks:?}");

    let dir = TempDir::new("runbook");
    let key = dir.path("backup.key");
    let recipient = keygen(&key);
    // wal-fetch runs as the server's user and reads the key.
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let cfg = dir.path("centinela.toml");
    let exe = bin("centinela");
    let pg = Postgres::init_with(
        &dir.path("primary"),
        &format!(
            "archive_mode = on\narchive_command = '{} wal-push products-db %p --config {}'",
            exe.display(),
            cfg.display()
        ),
    )
    .await;
    let db = dir.path("app/products.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    let sqlite = rusqlite::Connection::open(&db).unwrap();
    sqlite
        .execute_batch("CREATE TABLE products (id INTEGER PRIMARY KEY, batch TEXT); INSERT INTO products (batch) VALUES ('a'), ('a');")
        .unwrap();
    // The backups run as the server's user (wal-push does): theirs too.
    centinela_testkit::pg::give_to_server_user(db.parent().unwrap());
    std::fs::write(
        &cfg,
        format!(
            "{PREAMBLE}[backup.products-db]\nkind = \"postgres\"\nconnect = \"{}\"\nwal = \"archive\"\nschedule = \"0 3 * * *\"\nrepos = [\"local\"]\nencrypt_to = [\"{recipient}\"]\n\n[backup.portal-db]\nkind = \"sqlite\"\npath = \"{}\"\nrepos = [\"local\"]\nencrypt_to = [\"{recipient}\"]\n",
            pg.conninfo(),
            db.display()
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap().to_string();
    std::fs::create_dir_all(dir.path("repo")).unwrap();
    centinela_testkit::pg::give_to_server_user(&dir.path("repo"));
    let run = |args: &[&str]| {
        let out = as_server(&exe, args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    };
    run(&["backup", "run", "products-db", "--config", &c]);
    run(&["backup", "run", "portal-db", "--config", &c]);
    pg.psql("CREATE TABLE products (id serial PRIMARY KEY, batch text NOT NULL)");
    pg.psql("INSERT INTO products (batch) SELECT 'a' FROM generate_series(1, 1000)");

    // The moment to go back to.
    next_second();
    let time = pg.psql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'utc', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    next_second();
    pg.psql("INSERT INTO products (batch) SELECT 'b' FROM generate_series(1, 1000)");
    sqlite
        .execute_batch("INSERT INTO products (batch) VALUES ('b');")
        .unwrap();
    run(&["backup", "run", "portal-db", "--config", &c]);
    let seg = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.psql("SELECT pg_switch_wal()");
    let archived = eventually(Duration::from_secs(20), || async {
        let last = pg.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver");
        !last.is_empty() && last.as_str() >= seg.as_str()
    })
    .await;
    assert!(archived, "{seg} not archived");
    drop(pg);

    // The runbook's blocks, in order, with its variables.
    let port = centinela_testkit::free_port_range(1);
    let pg_target = dir.path("restored-pg");
    let sqlite_target = dir.path("restored-sqlite");
    let path = format!(
        "{}:{}:{}",
        exe.parent().unwrap().display(),
        program("psql").parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut outputs = Vec::new();
    for block in &blocks {
        let out = std::process::Command::new("sh")
            .args(["-e", "-c", block])
            .env("PATH", &path)
            .env("CONFIG", &c)
            .env("KEY", &key)
            .env("TIME", &time)
            .env("PG_TARGET", &pg_target)
            .env("PORT", port.to_string())
            .env("SQLITE_TARGET", &sqlite_target)
            .output()
            .unwrap();
        assert!(out.status.success(), "{block}\n{}", text(&out));
        outputs.push(text(&out));
    }
    // Recovered to TIME: batch a, not batch b, and promoted.
    assert!(
        outputs.iter().any(|o| o.lines().any(|l| l == "f|1000")),
        "{outputs:?}"
    );
    let _ = as_server(
        &program("pg_ctl"),
        &["-D", pg_target.to_str().unwrap(), "-m", "immediate", "stop"],
    )
    .output();
    // SQLite: the snapshot before TIME.
    let restored = sqlite_target.join("products.db");
    let r = rusqlite::Connection::open(&restored).unwrap();
    let n: i64 = r
        .query_row("SELECT count(*) FROM products", [], |row| row.get(0))
        .unwrap();
    assert_eq!(n, 2);
}
