//! The offsite copy: a backup to a local repo and an S3 repo (a real
//! S3-compatible server, moto, on loopback) restores from either; an S3
//! that refuses writes or is gone fails that repo, loudly, and loses
//! nothing already stored.

use std::time::{Duration, Instant};

use centinela_testkit::s3::S3Server;
use centinela_testkit::{bin, TempDir};
use serde_json::Value;

fn cli_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(bin("centinela"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run centinela")
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn a_backup_to_local_and_s3_restores_from_either_and_a_refusing_s3_loses_nothing() {
    let mut s3 = S3Server::start("backups");
    let dir = TempDir::new("backup-s3");
    let src = dir.path("portal");
    std::fs::create_dir_all(&src).unwrap();
    let big = centinela_testkit::noise(1_500_000, 0x2545_f491_4f6c_dd1du64);
    std::fs::write(src.join("uploads.bin"), &big).unwrap();
    std::fs::write(src.join("portal.conf"), b"listen = 8080\n").unwrap();
    let key = dir.path("backup.key");
    let recipient = super::backup::keygen(&key);
    // The secret key from a file, the access key from the environment.
    std::fs::write(dir.path("s3.secret"), format!("{}\n", s3.keys.1)).unwrap();
    let cfg = dir.path("centinela.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"{preamble}[repo.offsite]
s3 = {{ endpoint = "{endpoint}", bucket = "backups", prefix = "portal", region = "us-east-1", access_key = "env:S3_KEY", secret_key = "file:s3.secret" }}

[backup.site]
kind = "files"
paths = ["{src}"]
every = "6h"
repos = ["local", "offsite"]
encrypt_to = ["{recipient}"]
"#,
            preamble = super::backup::PREAMBLE,
            endpoint = s3.endpoint,
            src = src.display(),
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let mut ro = S3Server::read_only("locked");
    let access = s3.keys.0.clone();
    let env = [("S3_KEY", access.as_str())];
    let secrets = [s3.keys.0.clone(), s3.keys.1.clone(), ro.keys.1.clone()];
    let no_secret = |o: &std::process::Output| {
        let t = text(o);
        for s in &secrets {
            assert!(!t.contains(s.as_str()), "a secret leaked: {t}");
        }
    };

    // check reaches the bucket and writes (and removes) a probe.
    let out = cli_env(&["check", "--config", c], &env);
    assert!(out.status.success(), "{}", text(&out));
    no_secret(&out);

    let out = cli_env(&["backup", "run", "site", "--config", c], &env);
    assert!(out.status.success(), "{}", text(&out));
    no_secret(&out);
    let out = cli_env(&["backup", "list", "site", "--json", "--config", c], &env);
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let snaps = v["snapshots"].as_array().unwrap();
    let repos: Vec<&str> = snaps.iter().map(|s| s["repo"].as_str().unwrap()).collect();
    assert_eq!(repos, ["local", "offsite"], "{v}");
    assert!(snaps[1]["added_bytes"].as_u64().unwrap() > 1_500_000, "{v}");
    let out = cli_env(
        &[
            "backup", "verify", "site", "--repo", "offsite", "--config", c,
        ],
        &env,
    );
    assert!(out.status.success(), "{}", text(&out));

    // The local copy is lost: the offsite one restores.
    std::fs::remove_dir_all(dir.path("repo")).unwrap();
    let target = dir.path("restored");
    let out = cli_env(
        &[
            "restore",
            "site",
            "--latest",
            "--repo",
            "offsite",
            "--target",
            target.to_str().unwrap(),
            "--identity",
            key.to_str().unwrap(),
            "--config",
            c,
        ],
        &env,
    );
    assert!(out.status.success(), "{}", text(&out));
    no_secret(&out);
    let rel = src.strip_prefix("/").unwrap();
    assert_eq!(
        std::fs::read(target.join(rel).join("uploads.bin")).unwrap(),
        big
    );
    assert_eq!(
        std::fs::read(target.join(rel).join("portal.conf")).unwrap(),
        b"listen = 8080\n"
    );

    // A second backup stores only what changed, in S3 too.
    std::fs::write(src.join("portal.conf"), b"listen = 9090\n").unwrap();
    let out = cli_env(&["backup", "run", "site", "--config", c], &env);
    assert!(out.status.success(), "{}", text(&out));
    let out = cli_env(
        &[
            "backup", "list", "site", "--repo", "offsite", "--json", "--config", c,
        ],
        &env,
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let snaps = v["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 2, "{v}");
    assert!(snaps[1]["added_bytes"].as_u64().unwrap() < 100_000, "{v}");

    // An S3 that refuses writes (a key that may only read): the run
    // fails and says which repo and why; the local repo still gets its
    // snapshot.
    let ro_cfg = dir.path("read-only.toml");
    let body = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&s3.endpoint, &ro.endpoint)
        .replace(
            "bucket = \"backups\", prefix = \"portal\"",
            "bucket = \"locked\"",
        );
    std::fs::write(&ro_cfg, body).unwrap();
    std::fs::write(dir.path("s3.secret"), &ro.keys.1).unwrap();
    let ro_access = ro.keys.0.clone();
    let renv = [("S3_KEY", ro_access.as_str())];
    let out = cli_env(
        &[
            "backup",
            "run",
            "site",
            "--config",
            ro_cfg.to_str().unwrap(),
        ],
        &renv,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("offsite"), "{}", text(&out));
    assert!(text(&out).contains("Access Denied"), "{}", text(&out));
    no_secret(&out);
    ro.stop();
    std::fs::write(dir.path("s3.secret"), &s3.keys.1).unwrap();
    let out = cli_env(
        &[
            "backup", "list", "site", "--repo", "local", "--json", "--config", c,
        ],
        &env,
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["snapshots"].as_array().unwrap().len(), 2, "{v}");

    // S3 is gone: the run fails in seconds, not minutes, and the local
    // repo still gets its snapshot.
    s3.stop();
    let t0 = Instant::now();
    let out = cli_env(&["backup", "run", "site", "--config", c], &env);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
    assert!(text(&out).contains("offsite"), "{}", text(&out));
    let out = cli_env(
        &[
            "backup", "list", "site", "--repo", "local", "--json", "--config", c,
        ],
        &env,
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["snapshots"].as_array().unwrap().len(), 3, "{v}");
    // Listing every repo says which one cannot be read.
    let out = cli_env(&["backup", "list", "site", "--config", c], &env);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("offsite"), "{}", text(&out));
}
