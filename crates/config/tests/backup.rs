//! `[repo.NAME]` and `[backup.NAME]`: the issue's example loads, and every
//! mistake is reported with its position and without a secret.

use std::time::Duration;

use centinela_config::backup::{Source, Store, Wal, When};
use centinela_config::parse;

const BASE: &str = "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [\"127.0.0.1:1\"]\n";
const RECIPIENT: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";

#[test]
fn the_issue_example_loads() {
    std::env::set_var("CENTINELA_TEST_S3_KEY", "AKIA-TEST");
    let src = format!(
        r#"{BASE}
[repo.local]
path = "backups"

[repo.offsite]
s3 = {{ endpoint = "https://s3.example.com", bucket = "backups", prefix = "portal", region = "us-east-1", access_key = "env:CENTINELA_TEST_S3_KEY", secret_key = "s3cr3t-literal" }}

[backup.products-db]
kind = "postgres"
connect = "host=127.0.0.1 port=5432 user=backup dbname=postgres"
schedule = "0 3 * * *"
wal = "archive"
repos = ["local", "offsite"]
encrypt_to = ["{RECIPIENT}"]
compression = {{ zstd = 3 }}
keep = {{ last = 3, daily = 30, weekly = 13, monthly = 12 }}
restore_test = {{ schedule = "0 5 * * 0", checks = [ {{ sql = "SELECT count(*) FROM products", min = 1 }} ], max_rto = "30m", max_rpo = "15m" }}

[backup.catalogue]
kind = "sqlite"
path = "products.db"
repos = ["local"]
encrypt_to = ["{RECIPIENT}"]

[backup.uploads]
kind = "files"
paths = ["/etc/portal", "uploads"]
every = "6h"
repos = ["local"]
encrypt_to = ["{RECIPIENT}"]
keep = {{ daily = 7 }}
"#
    );
    let loaded = parse(&src, "/etc/centinela/centinela.toml").unwrap();
    // What does not run yet is said.
    let warnings: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
    // And a secret written in the file is warned about.
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings
        .iter()
        .any(|w| w.contains("secret_key holds its value in the config file")));
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("restore_test has no `identity`")),
        "{warnings:?}"
    );
    let cfg = loaded.config;
    assert_eq!(cfg.repos.len(), 2);
    let local = cfg.repos.iter().find(|r| r.name == "local").unwrap();
    assert_eq!(local.store, Store::Local("/etc/centinela/backups".into()));
    let Store::S3(s3) = &cfg
        .repos
        .iter()
        .find(|r| r.name == "offsite")
        .unwrap()
        .store
    else {
        panic!("offsite is S3");
    };
    assert_eq!(
        (s3.bucket.as_str(), s3.prefix.as_str()),
        ("backups", "portal")
    );
    assert_eq!(s3.access_key.expose(), "AKIA-TEST");
    assert!(!format!("{s3:?}").contains("s3cr3t"), "{s3:?}");

    let pg = cfg
        .backups
        .iter()
        .find(|b| b.name == "products-db")
        .unwrap();
    assert!(matches!(
        pg.source,
        Source::Postgres {
            wal: Wal::Archive,
            ..
        }
    ));
    assert!(matches!(&pg.when, When::Cron(c) if c.to_string() == "0 3 * * *"));
    assert_eq!(pg.repos, ["local", "offsite"]);
    assert_eq!(
        (pg.keep.last, pg.keep.daily, pg.keep.weekly, pg.keep.monthly),
        (3, 30, 13, 12)
    );
    let t = pg.restore_test.as_ref().unwrap();
    assert_eq!(t.checks[0].sql, "SELECT count(*) FROM products");
    assert_eq!(
        (t.max_rto, t.max_rpo),
        (Duration::from_secs(1800), Duration::from_secs(900))
    );

    // SQLite snapshots every minute by default, kept by the default policy.
    let lite = cfg.backups.iter().find(|b| b.name == "catalogue").unwrap();
    assert_eq!(
        lite.source,
        Source::Sqlite {
            path: "/etc/centinela/products.db".into()
        }
    );
    assert_eq!(lite.when, When::Every(Duration::from_secs(60)));
    assert_eq!(lite.zstd_level, 3);
    let files = cfg.backups.iter().find(|b| b.name == "uploads").unwrap();
    assert_eq!(
        files.source,
        Source::Files {
            paths: vec!["/etc/portal".into(), "/etc/centinela/uploads".into()]
        }
    );
    assert_eq!(files.when, When::Every(Duration::from_secs(6 * 3600)));
    assert_eq!((files.keep.last, files.keep.daily), (0, 7));
    // Delta chunks: on for databases, off for files unless asked.
    assert_eq!((pg.delta, lite.delta, files.delta), (true, true, false));
    let flipped = src
        .replace("kind = \"sqlite\"", "kind = \"sqlite\"\ndelta = false")
        .replace("kind = \"files\"", "kind = \"files\"\ndelta = true");
    let cfg = parse(&flipped, "/etc/centinela/centinela.toml")
        .unwrap()
        .config;
    let d = |n: &str| cfg.backups.iter().find(|b| b.name == n).unwrap().delta;
    assert_eq!((d("catalogue"), d("uploads")), (false, true));
    let bad = src.replace("kind = \"files\"", "kind = \"files\"\ndelta = \"yes\"");
    let e = parse(&bad, "/etc/centinela/centinela.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("backup.uploads.delta"), "{e}");
}

#[test]
fn mistakes_are_reported_with_positions() {
    let src = format!(
        r#"{BASE}
[repo.local]
path = "b"
s3 = {{ endpoint = "ftp://x", bucket = "b", access_key = "k", secret_key = "s" }}

[repo.nowhere]

[backup.db]
kind = "mysql"
schedule = "0 3 * *"
repos = ["local", "elsewhere"]
encrypt_to = ["age1notakey", "{RECIPIENT}"]
compression = {{ zstd = 30 }}
keep = {{ last = 0 }}

[backup.lite]
kind = "sqlite"
schedule = "0 3 * * *"
every = "1m"
repos = ["local"]
encrypt_to = []
restore_test = {{ checks = [ {{ min = 1 }} ] }}
"#
    );
    let err = parse(&src, "c.toml").unwrap_err();
    let lines: Vec<String> = err.errors.iter().map(|d| d.to_string()).collect();
    let all = lines.join("\n");
    for want in [
        "c.toml:11:19: repo.local.s3.endpoint: \"ftp://x\" is not an http:// or https:// URL",
        "c.toml:13:1: repo.nowhere: a repo needs `path` (a directory) or `s3`",
        "c.toml:16:8: backup.db.kind: unknown kind \"mysql\"",
        "c.toml:17:12: backup.db.schedule: \"0 3 * *\" is not a cron expression",
        "c.toml:18:19: backup.db.repos: no repo named \"elsewhere\"",
        "c.toml:19:15: backup.db.encrypt_to: \"age1notakey\" is not an age recipient",
        "c.toml:20:24: backup.db.compression.zstd: must be at most 19",
        "c.toml:21:8: backup.db.keep: keep would keep nothing",
        "backup.lite: missing required key `path`",
        "backup.lite: a backup has `schedule` or `every`, not both",
        "backup.lite: a backup needs `encrypt_to`",
        "backup.lite.restore_test: missing required key `schedule`",
        "backup.lite.restore_test.checks[0]: missing required key `sql`",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
    // The repo with both places is reported too.
    assert!(
        all.contains("repo.local: a repo has one of `path` or `s3`"),
        "{all}"
    );
}
