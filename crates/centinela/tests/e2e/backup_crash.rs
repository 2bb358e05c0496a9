//! Backups that die half-way, and disks that fill: nothing already backed
//! up is lost, nothing half-written is listed, and the next backup and
//! prune work.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use centinela_testkit::{bin, noise, TempDir};
use serde_json::Value;

use super::backup::{keygen, PREAMBLE};

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn config(dir: &TempDir, repo: &str, src: &std::path::Path, recipient: &str) -> String {
    let cfg = dir.path("centinela.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[backup.site]\nkind = \"files\"\npaths = [\"{}\"]\nevery = \"6h\"\nrepos = [\"local\"]\nencrypt_to = [\"{recipient}\"]\nkeep = {{ last = 5 }}\n",
            PREAMBLE.replace("path = \"repo\"", &format!("path = \"{repo}\"")),
            src.display()
        ),
    )
    .unwrap();
    cfg.to_str().unwrap().to_string()
}

fn run(args: &[&str]) -> Output {
    Command::new(bin("centinela")).args(args).output().unwrap()
}

fn snapshots(c: &str) -> usize {
    let out = run(&["backup", "list", "site", "--json", "--config", c]);
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["snapshots"].as_array().unwrap().len()
}

#[test]
fn a_backup_killed_mid_way_lists_nothing_and_the_next_backup_and_prune_work() {
    let dir = TempDir::new("backup-kill");
    let src = dir.path("portal");
    std::fs::create_dir_all(&src).unwrap();
    let data = noise(40 << 20, 7);
    std::fs::write(src.join("uploads.bin"), &data).unwrap();
    let key = dir.path("backup.key");
    let recipient = keygen(&key);
    let c = config(&dir, "repo", &src, &recipient);

    let mut child = Command::new(bin("centinela"))
        .args(["backup", "run", "site", "--config", &c])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed once it has written some chunks, long before its index.
    let chunks = dir.path("repo").join("chunks");
    let deadline = Instant::now() + Duration::from_secs(60);
    let count = || {
        std::fs::read_dir(&chunks)
            .map(|d| {
                d.flatten()
                    .map(|s| std::fs::read_dir(s.path()).map_or(0, |f| f.count()))
                    .sum::<usize>()
            })
            .unwrap_or(0)
    };
    while count() < 20 {
        assert!(Instant::now() < deadline, "no chunk written within 60 s");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        std::fs::read_dir(dir.path("repo/snapshots/site"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "a killed backup left a listed snapshot"
    );
    assert_eq!(snapshots(&c), 0);
    let out = run(&["backup", "verify", "site", "--config", &c]);
    assert!(out.status.success(), "{}", text(&out));

    // The dead backup's lock is taken over; the next backup and a prune
    // work, and the snapshot restores exactly.
    let out = run(&["backup", "run", "site", "--config", &c]);
    assert!(out.status.success(), "{}", text(&out));
    let out = run(&["backup", "prune", "site", "--config", &c]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("Taking over a stale repository lock")
            || !dir.path("repo/locks").read_dir().unwrap().any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("backup-")),
        "{}",
        text(&out)
    );
    assert_eq!(snapshots(&c), 1);
    let target = dir.path("restored");
    let out = run(&[
        "restore",
        "site",
        "--latest",
        "--target",
        target.to_str().unwrap(),
        "--identity",
        key.to_str().unwrap(),
        "--config",
        &c,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let rel = src.strip_prefix("/").unwrap();
    assert!(std::fs::read(target.join(rel).join("uploads.bin")).unwrap() == data);
    let out = run(&["backup", "verify", "site", "--config", &c]);
    assert!(out.status.success(), "{}", text(&out));
}

/// A repo on an 8 MiB tmpfs, mounted in a mount namespace of the test's
/// own (`unshare`, util-linux): a backup that does not fit fails with the
/// disk's reason, and the snapshot already there is intact and restores.
#[test]
fn a_full_disk_fails_the_backup_and_loses_nothing() {
    let dir = TempDir::new("backup-full");
    let src = dir.path("portal");
    std::fs::create_dir_all(&src).unwrap();
    let small = noise(2 << 20, 11);
    std::fs::write(src.join("a.bin"), &small).unwrap();
    let key = dir.path("backup.key");
    let recipient = keygen(&key);
    let repo = dir.path("disk");
    std::fs::create_dir_all(&repo).unwrap();
    let c = config(&dir, repo.join("repo").to_str().unwrap(), &src, &recipient);
    let big = dir.path("b.bin");
    std::fs::write(&big, noise(12 << 20, 13)).unwrap();
    let target = dir.path("restored");
    let exe = bin("centinela");
    // Everything that needs the small disk happens inside the namespace. The
    // failed backup's chunks fill the disk until a prune deletes them.
    let script = format!(
        r#"set -u
mount -t tmpfs -o size=8m tmpfs {repo} || exit 97
{exe} backup run site --config {c} || exit 10
cp {big} {src}/b.bin
{exe} backup run site --config {c}; echo "second=$?"
rm {src}/b.bin
{exe} backup list site --json --config {c} || exit 11
{exe} backup verify site --config {c} || exit 12
{exe} restore site --latest --target {target} --identity {key} --config {c} || exit 13
{exe} backup prune site --config {c} || exit 14
{exe} backup run site --config {c} || exit 15
"#,
        repo = repo.display(),
        exe = exe.display(),
        big = big.display(),
        src = src.display(),
        target = target.display(),
        key = key.display(),
    );
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c", &script])
        .output()
        .expect("unshare (util-linux)");
    let t = text(&out);
    assert_ne!(
        out.status.code(),
        Some(97),
        "cannot mount a tmpfs here: {t}"
    );
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("second=1"),
        "the backup that does not fit must fail: {t}"
    );
    assert!(t.contains("No space left on device"), "{t}");
    // The list printed between: the first snapshot only.
    let json = t
        .lines()
        .find(|l| l.starts_with("{\"backup\""))
        .expect("list output");
    let v: Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["snapshots"].as_array().unwrap().len(), 1, "{v}");
    let rel = src.strip_prefix("/").unwrap();
    assert!(std::fs::read(target.join(rel).join("a.bin")).unwrap() == small);
    assert!(!target.join(rel).join("b.bin").exists());
}
