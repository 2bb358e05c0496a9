//! `centinela backup run|list|verify` and `centinela restore` with the
//! real binary, a real directory tree and keys made by `age-keygen`
//! (Debian package age, installed by scripts/test.sh).

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use centinela_testkit::{bin, TempDir};
use serde_json::Value;

/// A listener (the config needs one) and the local repo `repo`.
pub(crate) const PREAMBLE: &str = "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [\"127.0.0.1:1\"]\n\n[repo.local]\npath = \"repo\"\n\n";

fn cli(args: &[&str]) -> Output {
    std::process::Command::new(bin("centinela"))
        .args(args)
        .output()
        .expect("run centinela")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A key made by age-keygen: (recipient, identity file).
pub(crate) fn keygen(path: &Path) -> String {
    let out = std::process::Command::new("age-keygen")
        .args(["-o", path.to_str().unwrap()])
        .output()
        .expect("age-keygen (Debian package age; scripts/test.sh installs it)");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stderr)
        .trim()
        .strip_prefix("Public key: ")
        .unwrap()
        .to_string()
}

#[test]
fn files_are_backed_up_listed_verified_and_restored_by_the_cli() {
    let dir = TempDir::new("backup-cli");
    let src = dir.path("portal");
    std::fs::create_dir_all(src.join("uploads")).unwrap();
    std::fs::write(src.join("portal.conf"), b"listen = 8080\n").unwrap();
    // Incompressible: xorshift64.
    let big = centinela_testkit::noise(3_000_000, 0x9e37_79b9_7f4a_7c15u64);
    std::fs::write(src.join("uploads/report.pdf"), &big).unwrap();
    let key = dir.path("backup.key");
    let recipient = keygen(&key);
    let cfg = dir.path("centinela.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[[listener]]
name = "web"
listen = "127.0.0.1:0"
[[route]]
upstream = "app"
[upstream.app]
servers = ["127.0.0.1:1"]

[repo.local]
path = "repo"

[backup.site]
kind = "files"
paths = ["{}"]
every = "6h"
repos = ["local"]
encrypt_to = ["{recipient}"]
keep = {{ last = 1 }}
"#,
            src.display()
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();

    // check names the backup, and leaves no repository behind.
    let out = cli(&["check", "--config", c]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("backup site (files): every 6h, to local"),
        "{}",
        text(&out)
    );
    assert!(!dir.path("repo").exists());
    // A repo where no directory can be made is a check error.
    let bad = dir.path("bad.toml");
    let body = std::fs::read_to_string(&cfg).unwrap().replace(
        "path = \"repo\"",
        &format!("path = \"{}/portal.conf/repo\"", src.display()),
    );
    std::fs::write(&bad, body).unwrap();
    let out = cli(&["check", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("repo.local"), "{}", text(&out));

    let out = cli(&["backup", "run", "site", "--config", c]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("snapshot "), "{}", text(&out));
    // A small change: the second snapshot stores a fraction.
    std::fs::write(src.join("portal.conf"), b"listen = 9090\n").unwrap();
    let out = cli(&["backup", "run", "site", "--config", c]);
    assert!(out.status.success(), "{}", text(&out));

    let out = cli(&["backup", "list", "site", "--json", "--config", c]);
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let snaps = v["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 2, "{v}");
    let first = snaps[0]["snapshot"].as_str().unwrap().to_string();
    assert!(snaps[0]["added_bytes"].as_u64().unwrap() > 3_000_000);
    assert!(snaps[1]["added_bytes"].as_u64().unwrap() < 100_000, "{v}");
    assert_eq!(snaps[1]["source_bytes"], snaps[0]["source_bytes"]);

    // The latest, and the first by id.
    let rel = src.strip_prefix("/").unwrap();
    let t1 = dir.path("restore-latest");
    let out = cli(&[
        "restore",
        "site",
        "--latest",
        "--target",
        t1.to_str().unwrap(),
        "--identity",
        key.to_str().unwrap(),
        "--config",
        c,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(t1.join(rel).join("portal.conf")).unwrap(),
        b"listen = 9090\n"
    );
    assert!(std::fs::read(t1.join(rel).join("uploads/report.pdf")).unwrap() == big);
    let t2 = dir.path("restore-first");
    let out = cli(&[
        "restore",
        "site",
        "--snapshot",
        &first,
        "--target",
        t2.to_str().unwrap(),
        "--identity",
        key.to_str().unwrap(),
        "--config",
        c,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(t2.join(rel).join("portal.conf")).unwrap(),
        b"listen = 8080\n"
    );

    let out = cli(&["backup", "verify", "site", "--config", c]);
    assert!(out.status.success(), "{}", text(&out));
    let out = cli(&[
        "backup",
        "verify",
        "site",
        "--read-data",
        "--identity",
        key.to_str().unwrap(),
        "--config",
        c,
    ]);
    assert!(out.status.success(), "{}", text(&out));

    // Prune keeps the last one: a dry run first, then for real.
    let out = cli(&["backup", "prune", "site", "--dry-run", "--config", c]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("would forget {first}")),
        "{}",
        text(&out)
    );
    let out = cli(&["backup", "prune", "site", "--config", c]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("forgot 1 snapshot(s)"),
        "{}",
        text(&out)
    );
    let out = cli(&["backup", "list", "site", "--json", "--config", c]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["snapshots"].as_array().unwrap().len(), 1, "{v}");
    let out = cli(&[
        "backup",
        "verify",
        "site",
        "--read-data",
        "--identity",
        key.to_str().unwrap(),
        "--config",
        c,
    ]);
    assert!(out.status.success(), "{}", text(&out));

    // A wrong key: named, exit 1, nothing restored.
    let other = dir.path("other.key");
    keygen(&other);
    let t3 = dir.path("restore-wrong");
    let out = cli(&[
        "restore",
        "site",
        "--latest",
        "--target",
        t3.to_str().unwrap(),
        "--identity",
        other.to_str().unwrap(),
        "--config",
        c,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("other.key") && text(&out).contains("wrong key"),
        "{}",
        text(&out)
    );
    assert!(!t3.exists());

    // A flipped byte in a chunk: verify names the snapshot and the chunk.
    let chunks = dir.path("repo/chunks");
    let sub = std::fs::read_dir(&chunks)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let victim = std::fs::read_dir(&sub)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&victim).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    std::fs::write(&victim, bytes).unwrap();
    let out = cli(&["backup", "verify", "site", "--config", c]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let name = victim.file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        text(&out).contains(&name) && text(&out).contains("corrupt"),
        "{}",
        text(&out)
    );

    // Usage mistakes exit 2.
    assert_eq!(
        cli(&["backup", "run", "nope", "--config", c]).status.code(),
        Some(2)
    );
    let out = cli(&[
        "restore",
        "site",
        "--target",
        "/tmp/x",
        "--identity",
        "k",
        "--config",
        c,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

async fn cli_async(args: Vec<String>) -> Output {
    tokio::process::Command::new(bin("centinela"))
        .args(&args)
        .output()
        .await
        .expect("run centinela")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_snapshots_taken_while_products_api_writes_restore_intact() {
    use crate::lifecycle::Load;
    use centinela_testkit::{client, ProductsApi};
    let dir = TempDir::new("backup-sqlite");
    let db = dir.path("products.db");
    let api = ProductsApi::spawn(&db, &[]).await;
    let key = dir.path("backup.key");
    let recipient = keygen(&key);
    let cfg = dir.path("centinela.toml");
    std::fs::write(
        &cfg,
        format!(
            "{PREAMBLE}[backup.catalogue]\nkind = \"sqlite\"\npath = \"{}\"\nrepos = [\"local\"]\nencrypt_to = [\"{recipient}\"]\n",
            db.display()
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap().to_string();
    let args = |a: &[&str]| -> Vec<String> {
        a.iter()
            .map(|s| s.to_string())
            .chain(["--config".into(), c.clone()])
            .collect()
    };

    // Writers insert products the whole time.
    let http = client();
    let load = Load::start(
        &http,
        format!("http://{}", api.addr),
        4,
        Duration::from_secs(60),
        1,
    );
    load.wait_progress(50).await;
    let mut before = Vec::new();
    for _ in 0..3 {
        // Everything created before a snapshot starts is in it.
        before.push(load.created());
        let out = cli_async(args(&["backup", "run", "catalogue"])).await;
        assert!(out.status.success(), "{}", text(&out));
        load.wait_progress(50).await;
    }
    let created_after = load.created();
    let (ok, failed, errors) = load.finish().await;
    crate::lifecycle::assert_no_failures(ok, failed, &errors);

    let out = cli_async(args(&["backup", "list", "catalogue", "--json"])).await;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let snaps = v["snapshots"].as_array().unwrap().clone();
    assert_eq!(snaps.len(), 3, "{v}");

    // The first snapshot by time (--to its finish), then the latest: each
    // passes integrity_check, and holds what was created before it began.
    let first_done = snaps[0]["finished"].as_u64().unwrap();
    let expect_first = snaps
        .iter()
        .rfind(|s| s["finished"].as_u64().unwrap() <= first_done)
        .unwrap()["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let at = centinela_backup::rfc3339(first_done);
    for (which, target, must_hold, snapshot) in [
        (
            vec!["--to", at.as_str()],
            "at",
            before[0].clone(),
            Some(expect_first.clone()),
        ),
        (vec!["--latest"], "latest", before[2].clone(), None),
    ] {
        let t = dir.path(target);
        let mut a = vec![
            "restore",
            "catalogue",
            "--target",
            t.to_str().unwrap(),
            "--identity",
            key.to_str().unwrap(),
        ];
        a.extend(which.iter().copied());
        let out = cli_async(args(&a)).await;
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("integrity_check: ok"), "{}", text(&out));
        if let Some(id) = snapshot {
            assert!(text(&out).contains(&id), "{} (expected {id})", text(&out));
        }
        // A products-api on the restored file serves what it must hold.
        let restored = ProductsApi::spawn(&t.join("products.db"), &[]).await;
        for loc in must_hold.iter().step_by(7) {
            let got = centinela_testkit::get(&http, &format!("http://{}{loc}", restored.addr))
                .await
                .unwrap();
            assert_eq!(got.status, 200, "{loc} missing from the {target} restore");
        }
        drop(restored);
    }
    assert!(created_after.len() > before[2].len());
    drop(api);

    // The restore test by hand: checks against the restored database.
    for (min, ok) in [(1, true), (1_000_000, false)] {
        let mut text_cfg = std::fs::read_to_string(&cfg).unwrap();
        if let Some(i) = text_cfg.find("restore_test") {
            text_cfg.truncate(i);
        }
        text_cfg.push_str(&format!(
            "restore_test = {{ schedule = \"0 5 * * 0\", checks = [ {{ sql = \"SELECT count(*) FROM products\", min = {min} }} ], max_rto = \"5m\", max_rpo = \"1h\" }}\n"
        ));
        std::fs::write(&cfg, text_cfg).unwrap();
        let out = cli_async(args(&[
            "restore-test",
            "catalogue",
            "--identity",
            key.to_str().unwrap(),
        ]))
        .await;
        assert_eq!(out.status.success(), ok, "{}", text(&out));
        let t = text(&out);
        if ok {
            assert!(
                t.contains("restore test passed") && t.contains("(at least 1): ok"),
                "{t}"
            );
        } else {
            assert!(
                t.contains("restore test FAILED") && t.contains("at least 1000000 wanted"),
                "{t}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_run_prune_report_and_a_failing_one_alerts() {
    use centinela_testkit::{eventually, Receiver};
    let dir = TempDir::new("backup-sched");
    let src = dir.path("site");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("index.html"), b"<h1>portal</h1>\n").unwrap();
    let key = dir.path("backup.key");
    let recipient = keygen(&key);
    let hook = Receiver::start(vec![]).await;
    let cfg = dir.path("centinela.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[admin]
listen = "127.0.0.1:0"
[[listener]]
name = "web"
listen = "127.0.0.1:0"
[[route]]
upstream = "app"
[upstream.app]
servers = ["127.0.0.1:1"]

[notify.ops]
webhook = "http://{hook}/hook"
[alerting]
group_wait = "0s"

[repo.local]
path = "repo"

[backup.site]
kind = "files"
paths = ["{src}"]
every = "3s"
repos = ["local"]
encrypt_to = ["{recipient}"]
keep = {{ last = 2 }}
restore_test = {{ schedule = "* * * * *", identity = "backup.key", max_rpo = "1h" }}

[backup.broken]
kind = "files"
paths = ["{missing}"]
every = "1s"
repos = ["local"]
encrypt_to = ["{recipient}"]

[repo.full]
path = "{src}/index.html/repo"

[backup.db]
kind = "postgres"
connect = "host=127.0.0.1 port=1 user=postgres"
wal = "archive"
schedule = "0 3 * * *"
repos = ["full"]
encrypt_to = ["{recipient}"]

[runtime]
access_log = false
shutdown_timeout = "2s"
"#,
            hook = hook.addr,
            src = src.display(),
            missing = dir.path("nowhere").display(),
        ),
    )
    .unwrap();
    let out = cli(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(
        text(&out).contains("backup-stale.site (ticket): backup_age of backup \"site\" above 0"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("wal-push-failing.db (page): wal_push_failing of backup \"db\""),
        "{}",
        text(&out)
    );
    let r = crate::lifecycle::run_gateway(&cfg).await;
    // PostgreSQL's archiver runs wal-push; its repo cannot take the file
    // (a file stands where its directory should be): exit 1, recorded,
    // and centinela run pages.
    let seg = dir.path("000000010000000000000003");
    std::fs::write(&seg, b"segment").unwrap();
    let out = cli(&[
        "wal-push",
        "db",
        seg.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("PostgreSQL keeps the segment"),
        "{}",
        text(&out)
    );
    let metric = |m: &str, key: &str| -> Option<f64> {
        m.lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
    };
    assert!(
        eventually(Duration::from_secs(20), || async {
            let m = crate::alerts::metrics(r.admin).await;
            metric(
                &m,
                "centinela_backup_runs_total{backup=\"site\",result=\"success\"}",
            )
            .is_some_and(|n| n >= 3.0)
        })
        .await,
        "{}",
        crate::alerts::metrics(r.admin).await
    );
    let m = crate::alerts::metrics(r.admin).await;
    let last = metric(
        &m,
        "centinela_backup_last_success_timestamp_seconds{backup=\"site\"}",
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(now - last < 30.0, "{m}");
    assert!(
        metric(
            &m,
            "centinela_backup_bytes{backup=\"site\",kind=\"source\"}"
        ) == Some(16.0),
        "{m}"
    );
    assert!(
        metric(
            &m,
            "centinela_backup_runs_total{backup=\"broken\",result=\"error\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{m}"
    );
    // The broken one: in health, and paged as stale (its age counts from
    // the start; 2 s is twice its interval).
    let (code, health) = crate::alerts::admin_json(r.admin, "/-/health/detailed").await;
    assert_eq!(code, 503, "{health}");
    let backups = health["backups"].as_array().unwrap();
    let broken = backups.iter().find(|b| b["name"] == "broken").unwrap();
    assert!(
        broken["last_error"].as_str().unwrap().contains("nowhere"),
        "{health}"
    );
    assert!(backups.iter().find(|b| b["name"] == "site").unwrap()["last_success"].is_string());
    assert!(
        eventually(Duration::from_secs(15), || async {
            hook.received()
                .iter()
                .any(|(_, b)| b.contains("backup-stale.broken"))
        })
        .await,
        "{:?}",
        hook.received()
    );
    assert!(
        eventually(Duration::from_secs(15), || async {
            hook.received()
                .iter()
                .any(|(_, b)| b.contains("wal-push-failing.db"))
        })
        .await,
        "{:?}",
        hook.received()
    );
    let m = crate::alerts::metrics(r.admin).await;
    assert_eq!(
        metric(&m, "centinela_wal_push_failing{backup=\"db\"}"),
        Some(1.0),
        "{m}"
    );
    assert!(
        !hook
            .received()
            .iter()
            .any(|(_, b)| b.contains("backup-stale.site")),
        "{:?}",
        hook.received()
    );
    // The restore test runs at the next minute: restored, timed, reported.
    assert!(
        eventually(Duration::from_secs(75), || async {
            let m = crate::alerts::metrics(r.admin).await;
            metric(&m, "centinela_restore_test_ok{backup=\"site\"}") == Some(1.0)
        })
        .await,
        "{}",
        crate::alerts::metrics(r.admin).await
    );
    let m = crate::alerts::metrics(r.admin).await;
    let rto = metric(&m, "centinela_restore_test_rto_seconds{backup=\"site\"}").unwrap();
    let rpo = metric(&m, "centinela_restore_test_rpo_seconds{backup=\"site\"}").unwrap();
    assert!(rto > 0.0 && rto < 30.0 && (0.0..30.0).contains(&rpo), "{m}");
    let (_, health) = crate::alerts::admin_json(r.admin, "/-/health/detailed").await;
    let site = health["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "site")
        .unwrap()
        .clone();
    assert_eq!(site["restore_test"]["ok"], true, "{site}");
    // Prune runs after each backup: at most `last = 2` remain once it has
    // (a new backup every 3 s makes a third for the moment before its
    // prune; a stop in that moment leaves it to the next run's prune).
    let list = || {
        let out = cli(&[
            "backup",
            "list",
            "site",
            "--json",
            "--config",
            cfg.to_str().unwrap(),
        ]);
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    assert!(
        eventually(Duration::from_secs(15), || async {
            let n = list()["snapshots"].as_array().map_or(0, Vec::len);
            (1..=2).contains(&n)
        })
        .await,
        "{}",
        list()
    );
    crate::alerts::stop(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_base_backup_restores_into_a_server_that_starts() {
    use centinela_testkit::pg::Postgres;
    let dir = TempDir::new("backup-pg");
    let pg = Postgres::init(&dir.path("primary")).await;
    pg.psql("CREATE TABLE products (id serial PRIMARY KEY, name text NOT NULL)");
    pg.psql("INSERT INTO products (name) SELECT 'p' || g FROM generate_series(1, 5000) g");
    let key = dir.path("backup.key");
    let recipient = keygen(&key);
    let cfg = dir.path("centinela.toml");
    std::fs::write(
        &cfg,
        format!(
            "{PREAMBLE}[backup.products-db]\nkind = \"postgres\"\nconnect = \"{}\"\nwal = \"off\"\nschedule = \"0 3 * * *\"\nrepos = [\"local\"]\nencrypt_to = [\"{recipient}\"]\n",
            pg.conninfo()
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    // check reaches the server; with wal = "archive" on a server that does
    // not archive, it says so where the backup is defined, with the exact
    // lines to add.
    let out = cli(&["check", "--config", c]);
    assert!(out.status.success(), "{}", text(&out));
    let archive = dir.path("archive.toml");
    std::fs::write(
        &archive,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("wal = \"off\"", "wal = \"archive\""),
    )
    .unwrap();
    let out = cli(&["check", "--config", archive.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let line_no = std::fs::read_to_string(&archive)
        .unwrap()
        .lines()
        .position(|l| l == "[backup.products-db]")
        .unwrap()
        + 1;
    let at = format!("{}:{line_no}:1: backup.products-db:", archive.display());
    assert!(text(&out).contains(&at), "{}", text(&out));
    assert!(
        text(&out).contains("\n    archive_mode = on\n"),
        "{}",
        text(&out)
    );
    let line = format!(
        "    archive_command = '{} wal-push products-db %p --config {}'",
        bin("centinela").display(),
        std::fs::canonicalize(&archive).unwrap().display()
    );
    assert!(text(&out).contains(&line), "{line}\n{}", text(&out));
    let out = cli(&["backup", "run", "products-db", "--config", c]);
    assert!(out.status.success(), "{}", text(&out));
    // Rows written after the backup are not in it.
    pg.psql("INSERT INTO products (name) VALUES ('after')");
    // A second base backup of a barely changed cluster stores a fraction.
    let out = cli(&["backup", "run", "products-db", "--config", c]);
    assert!(out.status.success(), "{}", text(&out));
    let out = cli(&["backup", "list", "products-db", "--json", "--config", c]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let snaps = v["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 2, "{v}");
    let (first, second) = (&snaps[0], &snaps[1]);
    assert!(
        second["added_bytes"].as_u64().unwrap() * 3 < first["added_bytes"].as_u64().unwrap(),
        "the second base backup stored about as much as the first: {v}"
    );

    let target = dir.path("restored").join("data");
    let out = cli(&[
        "restore",
        "products-db",
        "--snapshot",
        first["snapshot"].as_str().unwrap(),
        "--target",
        target.to_str().unwrap(),
        "--identity",
        key.to_str().unwrap(),
        "--config",
        c,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    drop(pg);
    let restored = Postgres::start(&target).await;
    assert_eq!(restored.psql("SELECT count(*) FROM products"), "5000");
    assert_eq!(
        restored.psql("SELECT count(*) FROM products WHERE name = 'after'"),
        "0"
    );

    // A server that cannot be reached: pg_basebackup's reason, exit 1, and
    // the conninfo is not repeated.
    let body = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&format!("port={}", restored.port), "port=1");
    std::fs::write(&cfg, body).unwrap();
    let out = cli(&["backup", "run", "products-db", "--config", c]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("pg_basebackup failed"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("dbname=postgres"), "{}", text(&out));
    let out = cli(&["check", "--config", c]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("cannot reach the PostgreSQL server"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_in_time_recovery_with_wal_archived_by_wal_push() {
    use centinela_testkit::eventually;
    use centinela_testkit::pg::{as_server, Postgres};
    let dir = TempDir::new("backup-pitr");
    let key = dir.path("backup.key");
    let recipient = keygen(&key);
    // restore_command runs as the server's user: it reads the key (a test
    // shortcut; a real host keeps the key for restores only).
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let cfg = dir.path("centinela.toml");
    let bin = bin("centinela");
    let pg = Postgres::init_with(
        &dir.path("primary"),
        &format!(
            "archive_mode = on\narchive_command = '{} wal-push products-db %p --config {}'",
            bin.display(),
            cfg.display()
        ),
    )
    .await;
    std::fs::write(
        &cfg,
        format!(
            "{PREAMBLE}[backup.products-db]\nkind = \"postgres\"\nconnect = \"{}\"\nwal = \"archive\"\nschedule = \"0 3 * * *\"\nrepos = [\"local\"]\nencrypt_to = [\"{recipient}\"]\nrestore_test = {{ schedule = \"0 5 * * 0\", checks = [ {{ sql = \"SELECT count(*) FROM products\", min = 2000 }} ], max_rto = \"5m\", max_rpo = \"1h\" }}\n",
            pg.conninfo()
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap().to_string();
    // The base backup runs as the server's user too: the repo is theirs.
    std::fs::create_dir_all(dir.path("repo")).unwrap();
    centinela_testkit::pg::give_to_server_user(&dir.path("repo"));
    let out = as_server(&bin, &["backup", "run", "products-db", "--config", &c])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    pg.psql("CREATE TABLE products (id serial PRIMARY KEY, batch text NOT NULL)");
    pg.psql("INSERT INTO products (batch) SELECT 'a' FROM generate_series(1, 1000)");
    let t = pg.psql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'utc', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    pg.psql("SELECT pg_sleep(0.05)");
    pg.psql("INSERT INTO products (batch) SELECT 'b' FROM generate_series(1, 1000)");
    let seg = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.psql("SELECT pg_switch_wal()");
    // Archived by wal-push (the server retries a failed archive_command).
    let archived = eventually(Duration::from_secs(20), || async {
        let last = pg.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver");
        !last.is_empty() && last.as_str() >= seg.as_str()
    })
    .await;
    assert!(
        archived,
        "{} not archived: {}",
        seg,
        pg.psql(
            "SELECT failed_count || ' ' || coalesce(last_failed_wal, '') FROM pg_stat_archiver"
        )
    );

    // wal-fetch in a data directory reads the next segments ahead, in
    // parallel, and the next call takes its segment from there.
    let mut segs: Vec<String> = std::fs::read_dir(dir.path("repo/wal/products-db"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24)
        .collect();
    segs.sort();
    assert!(segs.len() >= 2, "{segs:?}");
    let fake = dir.path("fake-data");
    std::fs::create_dir_all(fake.join("pg_wal")).unwrap();
    std::fs::write(fake.join("PG_VERSION"), "15\n").unwrap();
    let fetch = |seg: &str| {
        std::process::Command::new(&bin)
            .args([
                "wal-fetch",
                "products-db",
                seg,
                "pg_wal/RECOVERYXLOG",
                "--identity",
            ])
            .arg(&key)
            .args(["--config", &c])
            .current_dir(&fake)
            .output()
            .unwrap()
    };
    let out = fetch(&segs[0]);
    assert!(out.status.success(), "{}", text(&out));
    // In the background: the call returned before the read-ahead ends.
    let ahead = fake.join("centinela-prefetch").join(&segs[1]);
    assert!(
        eventually(Duration::from_secs(20), || async { ahead.is_file() }).await,
        "{} was not read ahead",
        segs[1]
    );
    let out = fetch(&segs[1]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!fake.join("centinela-prefetch").join(&segs[1]).exists());
    assert_eq!(
        std::fs::read(fake.join("pg_wal/RECOVERYXLOG"))
            .unwrap()
            .len(),
        16 << 20
    );

    let restore = |name: &str, when: Vec<&str>| {
        let target = dir.path(name).join("data");
        let mut a = vec![
            "restore".to_string(),
            "products-db".into(),
            "--target".into(),
            target.display().to_string(),
            "--identity".into(),
            key.display().to_string(),
            "--config".into(),
            c.clone(),
        ];
        a.extend(when.iter().map(|s| s.to_string()));
        let out = std::process::Command::new(&bin).args(&a).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        target
    };
    // To the time between the batches: all of a, none of b.
    let at = restore("at", vec!["--to", t.as_str()]);
    let latest = restore("latest", vec!["--latest"]);
    // Targets that cannot be reached are refused before anything is
    // written.
    for (when, why) in [
        ("2000-01-01T00:00:00Z", "before the oldest snapshot"),
        (
            "2999-01-01T00:00:00Z",
            "after the end of backup products-db's archive",
        ),
    ] {
        let target = dir.path("unreachable");
        let out = std::process::Command::new(&bin)
            .args(["restore", "products-db", "--to", when, "--target"])
            .arg(&target)
            .arg("--identity")
            .arg(&key)
            .args(["--config", &c])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains(why), "{}", text(&out));
        assert!(!target.exists());
    }
    // --start: restored, started on the port, recovered, running.
    let port = centinela_testkit::free_port_range(1);
    let started = restore("started", vec!["--latest", "--start", &port.to_string()]);
    let count = std::process::Command::new(centinela_testkit::pg::program("psql"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .args([
            "-At",
            "-c",
            "SELECT count(*) FROM products WHERE NOT pg_is_in_recovery()",
        ])
        .output()
        .unwrap();
    let _ = as_server(
        &centinela_testkit::pg::program("pg_ctl"),
        &["-D", started.to_str().unwrap(), "-m", "immediate", "stop"],
    )
    .output();
    assert_eq!(
        String::from_utf8_lossy(&count.stdout).trim(),
        "2000",
        "{count:?}"
    );
    drop(pg);
    for (data, want_b) in [(at, "0"), (latest, "1000")] {
        let r = Postgres::start(&data).await;
        let promoted = eventually(Duration::from_secs(30), || async {
            r.psql("SELECT pg_is_in_recovery()") == "f"
        })
        .await;
        assert!(promoted, "recovery of {} did not finish", data.display());
        assert_eq!(
            r.psql("SELECT count(*) FROM products WHERE batch = 'a'"),
            "1000"
        );
        assert_eq!(
            r.psql("SELECT count(*) FROM products WHERE batch = 'b'"),
            want_b,
            "{}",
            data.display()
        );
    }

    // The restore test: the newest base backup and every archived segment
    // in a throwaway server, promoted, then the check; RPO from the newest
    // replayed commit.
    let out = std::process::Command::new(&bin)
        .args(["restore-test", "products-db", "--identity"])
        .arg(&key)
        .args(["--config", &c])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("\"SELECT count(*) FROM products\": 2000"),
        "{}",
        text(&out)
    );
    let out = std::process::Command::new(&bin)
        .args(["backup", "list", "products-db", "--json", "--config", &c])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["restore_test"]["ok"], true, "{v}");
    assert!(
        v["restore_test"]["rpo_seconds"].as_f64().unwrap() < 600.0,
        "{v}"
    );
    assert_eq!(v["snapshots"][0]["restore_test"], "passed", "{v}");
    // Nothing of the throwaway server is left, and nothing was archived
    // from it into the repo (archiving is off there).
    let left: Vec<_> = std::fs::read_dir(dir.path("centinela-data"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter().any(|n| n == "restore-tests")
            && left
                .iter()
                .all(|n| !n.to_string_lossy().starts_with("centinela-restore-test")),
        "{left:?}"
    );
    // A check that does not hold fails the test, exit 1, and says so in
    // `backup list`.
    let strict = dir.path("strict.toml");
    std::fs::write(
        &strict,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("min = 2000", "min = 5000"),
    )
    .unwrap();
    let out = std::process::Command::new(&bin)
        .args(["restore-test", "products-db", "--identity"])
        .arg(&key)
        .arg("--config")
        .arg(&strict)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("at least 5000"), "{}", text(&out));
    let out = std::process::Command::new(&bin)
        .args(["backup", "list", "products-db", "--config"])
        .arg(&strict)
        .output()
        .unwrap();
    assert!(
        text(&out).contains("restore test: FAILED"),
        "{}",
        text(&out)
    );

    // A segment is written once: the same content again is fine, other
    // content is refused (PostgreSQL keeps it and says so).
    let fake = dir.path("00000001000000000000FFFF");
    std::fs::write(&fake, b"one").unwrap();
    let push = || {
        std::process::Command::new(&bin)
            .args([
                "wal-push",
                "products-db",
                fake.to_str().unwrap(),
                "--config",
                &c,
            ])
            .output()
            .unwrap()
    };
    assert!(push().status.success());
    assert!(push().status.success());
    std::fs::write(&fake, b"two").unwrap();
    let out = push();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("other content"), "{}", text(&out));

    // verify checks the archived WAL too: a flipped byte is named.
    let verify = |extra: &[&str]| {
        std::process::Command::new(&bin)
            .args(["backup", "verify", "products-db", "--config", &c])
            .args(extra)
            .output()
            .unwrap()
    };
    let key_s = key.to_str().unwrap();
    let out = verify(&["--read-data", "--identity", key_s]);
    assert!(out.status.success(), "{}", text(&out));
    let victim = dir.path("repo/wal/products-db").join(&segs[1]);
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&victim, bytes).unwrap();
    let out = verify(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("WAL {} of products-db", segs[1]))
            && text(&out).contains("corrupt"),
        "{}",
        text(&out)
    );
}

/// Off a terminal, a long backup, restore and verify print plain progress
/// lines on stderr (bytes, rate; of the total and an ETA when it is
/// known), every CENTINELA_PROGRESS_EVERY seconds; stdout keeps only the
/// result.
#[test]
fn long_operations_print_progress_lines_off_a_terminal() {
    let dir = TempDir::new("backup-progress");
    let src = dir.path("uploads");
    std::fs::create_dir_all(&src).unwrap();
    let big = centinela_testkit::noise(32_000_000, 0x2545_f491_4f6c_dd1du64);
    std::fs::write(src.join("video.bin"), &big).unwrap();
    let key = dir.path("backup.key");
    let recipient = keygen(&key);
    let cfg = dir.path("centinela.toml");
    std::fs::write(
        &cfg,
        format!(
            "{PREAMBLE}[backup.uploads]\nkind = \"files\"\npaths = [\"{}\"]\nevery = \"6h\"\nrepos = [\"local\"]\nencrypt_to = [\"{recipient}\"]\n",
            src.display()
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin("centinela"))
            .args(args)
            .env("CENTINELA_PROGRESS_EVERY", "0.02")
            .output()
            .expect("run centinela");
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("MiB/s"),
            "progress stays off stdout: {}",
            text(&out)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let progress = |err: &str, what: &str| -> Vec<String> {
        err.lines()
            .filter(|l| l.starts_with(what) && l.contains(" MiB/s"))
            .map(str::to_string)
            .collect()
    };

    let err = run(&["backup", "run", "uploads", "--config", c]);
    let lines = progress(&err, "backup uploads: ");
    assert!(!lines.is_empty(), "no progress line: {err}");
    // The first backup has nothing to estimate from: bytes and rate only.
    assert!(!lines[0].contains("eta"), "{err}");

    let target = dir.path("restored");
    let err = run(&[
        "restore",
        "uploads",
        "--latest",
        "--target",
        target.to_str().unwrap(),
        "--identity",
        key.to_str().unwrap(),
        "--config",
        c,
    ]);
    let lines = progress(&err, "restore uploads: ");
    assert!(!lines.is_empty(), "no progress line: {err}");
    // A restore knows its snapshot's size: a share of it and an ETA.
    assert!(
        lines[0].contains(" of 30.5 MiB (") && lines[0].contains(", eta "),
        "{err}"
    );
    let rel = src.strip_prefix("/").unwrap();
    assert_eq!(
        std::fs::read(target.join(rel).join("video.bin")).unwrap(),
        big
    );

    let err = run(&[
        "backup",
        "verify",
        "uploads",
        "--read-data",
        "--identity",
        key.to_str().unwrap(),
        "--config",
        c,
    ]);
    assert!(!progress(&err, "verify uploads: ").is_empty(), "{err}");

    // Bytes done only grow, and never pass the total.
    let err = run(&[
        "restore",
        "uploads",
        "--latest",
        "--target",
        dir.path("again").to_str().unwrap(),
        "--identity",
        key.to_str().unwrap(),
        "--config",
        c,
    ]);
    let done: Vec<f64> = progress(&err, "restore uploads: ")
        .iter()
        .map(|l| {
            l["restore uploads: ".len()..]
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(done.windows(2).all(|w| w[0] <= w[1]), "{err}");
    assert!(done.iter().all(|d| *d <= 30.5), "{err}");
}
