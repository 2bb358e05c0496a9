//! The repository on a real filesystem: a files backup restores exactly,
//! unchanged data costs nothing, corruption and wrong keys are named, a
//! half-written snapshot is never listed, and the reference `age` tool
//! (Debian package `age`, installed by scripts/test.sh) reads what it
//! stores.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use age::secrecy::ExposeSecret;
use centinela_backup::files;
use centinela_backup::repo::{verify, Opener, Reader, Repo, Sealer, Store, Writer};

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
fn tempdir(tag: &str) -> Dir {
    let d = std::env::temp_dir().join(format!(
        "centinela-backup-{tag}-{}-{:x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

/// A key pair: the recipient, and the identity file age-keygen would
/// write.
fn keys(dir: &Path, name: &str) -> (String, PathBuf) {
    let id = age::x25519::Identity::generate();
    let file = dir.join(name);
    std::fs::write(
        &file,
        format!(
            "# created: by the test\n# public key: {}\n{}\n",
            id.to_public(),
            id.to_string().expose_secret()
        ),
    )
    .unwrap();
    (id.to_public().to_string(), file)
}

fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n).map(|_| rng.u8(..)).collect()
}

/// A tree with a large file, an empty one, nested directories, a symlink,
/// modes and times.
fn tree(root: &Path) {
    std::fs::create_dir_all(root.join("conf/nested")).unwrap();
    std::fs::write(root.join("big.bin"), noise(2 << 20, 1)).unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::fs::write(root.join("conf/app.toml"), b"port = 8080\n").unwrap();
    std::fs::write(root.join("conf/nested/secret"), b"hunter2\n").unwrap();
    std::fs::set_permissions(
        root.join("conf/nested/secret"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::set_permissions(root.join("conf"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("conf/app.toml", root.join("current")).unwrap();
    let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
    std::fs::File::open(root.join("conf/app.toml"))
        .unwrap()
        .set_modified(t)
        .unwrap();
    std::fs::File::open(root.join("conf/nested"))
        .unwrap()
        .set_modified(t)
        .unwrap();
}

/// Everything `a` holds is in `b`, byte for byte, with mode and mtime.
fn same_tree(a: &Path, b: &Path) {
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let (pa, pb) = (a.join(&rel), b.join(&rel));
        let (ma, mb) = (
            std::fs::symlink_metadata(&pa).unwrap(),
            std::fs::symlink_metadata(&pb).unwrap_or_else(|e| panic!("{}: {e}", pb.display())),
        );
        assert_eq!(ma.file_type(), mb.file_type(), "{}", rel.display());
        if ma.file_type().is_symlink() {
            assert_eq!(
                std::fs::read_link(&pa).unwrap(),
                std::fs::read_link(&pb).unwrap()
            );
            continue;
        }
        assert_eq!(ma.mode(), mb.mode(), "mode of {}", rel.display());
        assert_eq!(
            (ma.mtime(), ma.mtime_nsec()),
            (mb.mtime(), mb.mtime_nsec()),
            "mtime of {}",
            rel.display()
        );
        if ma.is_dir() {
            for e in std::fs::read_dir(&pa).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
        } else {
            assert!(
                std::fs::read(&pa).unwrap() == std::fs::read(&pb).unwrap(),
                "{}",
                rel.display()
            );
        }
    }
}

fn run_backup(repo: &Repo, sealer: &Sealer, src: &Path) -> centinela_backup::repo::Index {
    let mut w = Writer::new(repo, sealer, "site", "files").unwrap();
    let (manifest, _) = files::backup(&mut w, &[src.to_path_buf()]).unwrap();
    w.finish(manifest).unwrap()
}

fn restore(
    repo: &Repo,
    opener: &Opener,
    idx: &centinela_backup::repo::Index,
    target: &Path,
) -> Result<(), String> {
    let r = Reader::new(repo, opener, idx);
    let m = r.manifest()?;
    files::restore(&r, &m, target).map(|_| ())
}

#[test]
fn a_files_backup_restores_exactly_and_unchanged_data_costs_nothing() {
    let d = tempdir("roundtrip");
    let src = d.0.join("src");
    tree(&src);
    let (recipient, key) = keys(&d.0, "key.txt");
    let repo = Repo::open(Store::local(&d.0.join("repo"))).unwrap();
    let sealer = Sealer::new(&[recipient], 3).unwrap();
    let first = run_backup(&repo, &sealer, &src);
    assert!(first.source_bytes >= 2 << 20);

    let opener = Opener::from_file(&key).unwrap();
    let target = d.0.join("restored");
    restore(&repo, &opener, &first, &target).unwrap();
    same_tree(&src, &target.join(src.strip_prefix("/").unwrap()));

    // 100 bytes changed in the middle of 2 MiB: a chunk or two are new.
    let mut big = std::fs::read(src.join("big.bin")).unwrap();
    big[1 << 20..(1 << 20) + 100].copy_from_slice(&noise(100, 2));
    std::fs::write(src.join("big.bin"), &big).unwrap();
    let second = run_backup(&repo, &sealer, &src);
    assert_eq!(second.source_bytes, first.source_bytes);
    assert!(
        second.added_bytes < 600 * 1024,
        "a small change stored {} bytes",
        second.added_bytes
    );
    assert!(first.added_bytes > 2 << 20, "{}", first.added_bytes);
    let target2 = d.0.join("restored2");
    restore(&repo, &opener, &second, &target2).unwrap();
    same_tree(&src, &target2.join(src.strip_prefix("/").unwrap()));
    // The first snapshot still restores as it was.
    let old = std::fs::read(target.join(src.strip_prefix("/").unwrap()).join("big.bin")).unwrap();
    assert_ne!(old, big);
    assert_eq!(repo.indexes("site").unwrap().len(), 2);
    assert!(verify(&repo, "site", None).unwrap().is_empty());
    assert!(verify(&repo, "site", Some(&opener)).unwrap().is_empty());
    // Nothing is restored over existing files.
    let e = restore(&repo, &opener, &second, &target).unwrap_err();
    assert!(e.contains("is not empty"), "{e}");
}

#[test]
fn corruption_and_wrong_keys_are_named_and_never_restored() {
    let d = tempdir("corrupt");
    let src = d.0.join("src");
    tree(&src);
    let (recipient, key) = keys(&d.0, "key.txt");
    let (_, other) = keys(&d.0, "other.txt");
    let repo = Repo::open(Store::local(&d.0.join("repo"))).unwrap();
    let idx = run_backup(&repo, &Sealer::new(&[recipient], 3).unwrap(), &src);
    let chunk_path = |id: &str| d.0.join("repo/chunks").join(&id[..2]).join(id);

    // A wrong key: named, nothing written.
    let wrong = Opener::from_file(&other).unwrap();
    let e = restore(&repo, &wrong, &idx, &d.0.join("t0")).unwrap_err();
    assert!(e.contains("other.txt") && e.contains("wrong key"), "{e}");
    assert!(!d.0.join("t0").exists());
    let e = Opener::from_file(&d.0.join("nope.txt")).err().unwrap();
    assert!(e.contains("nope.txt"), "{e}");

    let opener = Opener::from_file(&key).unwrap();
    let ids: Vec<String> = idx.chunks.iter().map(|(id, _)| id.clone()).collect();
    // A flipped byte, a truncated chunk, a missing chunk.
    let flip = chunk_path(&ids[0]);
    let mut bytes = std::fs::read(&flip).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x40;
    std::fs::write(&flip, &bytes).unwrap();
    let cut = chunk_path(&ids[1]);
    let len = std::fs::metadata(&cut).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cut)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    std::fs::remove_file(chunk_path(&ids[2])).unwrap();
    let problems = verify(&repo, "site", None).unwrap();
    let all = problems.join("\n");
    assert_eq!(problems.len(), 3, "{all}");
    for (id, what) in [
        (&ids[0], "corrupt"),
        (&ids[1], "truncated"),
        (&ids[2], "missing"),
    ] {
        assert!(
            problems
                .iter()
                .any(|p| p.contains(&idx.id) && p.contains(id.as_str()) && p.contains(what)),
            "{what} not reported for {id}:\n{all}"
        );
    }
    let e = restore(&repo, &opener, &idx, &d.0.join("t1")).unwrap_err();
    assert!(e.contains(&idx.id) && e.contains("chunk "), "{e}");

    // A tampered index (a chunk id that is no hash, or another snapshot's
    // name) is refused, never followed.
    let index = d.0.join(format!("repo/snapshots/site/{}.index", idx.id));
    // zstd-compressed JSON; plain JSON is read too.
    let good =
        String::from_utf8(zstd::stream::decode_all(&std::fs::read(&index).unwrap()[..]).unwrap())
            .unwrap();
    for bad in [
        good.replacen(&ids[0], "../../x", 1),
        good.replacen(
            &format!("\"snapshot\":\"{}\"", idx.id),
            "\"snapshot\":\"../other\"",
            1,
        ),
    ] {
        assert_ne!(bad, good);
        std::fs::write(&index, &bad).unwrap();
        let e = repo.indexes("site").unwrap_err();
        assert!(e.contains("malformed"), "{e}");
        assert!(verify(&repo, "site", None).is_err());
    }
}

#[test]
fn a_half_written_snapshot_is_never_listed_and_the_next_backup_works() {
    let d = tempdir("crash");
    let src = d.0.join("src");
    tree(&src);
    let (recipient, key) = keys(&d.0, "key.txt");
    let repo = Repo::open(Store::local(&d.0.join("repo"))).unwrap();
    let sealer = Sealer::new(&[recipient], 3).unwrap();
    {
        // Chunks written, then the process "dies" before the manifest.
        let mut w = Writer::new(&repo, &sealer, "site", "files").unwrap();
        files::backup(&mut w, std::slice::from_ref(&src)).unwrap();
    }
    assert!(repo.indexes("site").unwrap().is_empty());
    let idx = run_backup(&repo, &sealer, &src);
    assert_eq!(repo.indexes("site").unwrap().len(), 1);
    assert!(verify(&repo, "site", None).unwrap().is_empty());
    let opener = Opener::from_file(&key).unwrap();
    restore(&repo, &opener, &idx, &d.0.join("t")).unwrap();

    // A directory that is not a repository is left alone.
    std::fs::create_dir_all(d.0.join("other")).unwrap();
    std::fs::write(d.0.join("other/file"), b"x").unwrap();
    let e = Repo::open(Store::local(&d.0.join("other"))).err().unwrap();
    assert!(e.contains("not a centinela repository"), "{e}");
}

#[test]
fn the_reference_age_tool_reads_what_the_repository_stores() {
    let d = tempdir("age-cli");
    let key = d.0.join("key.txt");
    let out = std::process::Command::new("age-keygen")
        .args(["-o", key.to_str().unwrap()])
        .output()
        .expect("age-keygen (Debian package age; scripts/test.sh installs it)");
    assert!(out.status.success());
    let recipient = String::from_utf8_lossy(&out.stderr)
        .trim()
        .strip_prefix("Public key: ")
        .unwrap()
        .to_string();
    let repo = Repo::open(Store::local(&d.0.join("repo"))).unwrap();
    let sealer = Sealer::new(&[recipient], 3).unwrap();
    let mut w = Writer::new(&repo, &sealer, "doc", "files").unwrap();
    let plain = b"what the reference tool must read back".to_vec();
    let id = w.chunk(&plain).unwrap();
    w.finish(serde_json::json!({})).unwrap();
    // age decrypts the stored object; zstd's frame is what is inside.
    let stored = d.0.join("repo/chunks").join(&id[..2]).join(&id);
    let out = std::process::Command::new("age")
        .args(["-d", "-i", key.to_str().unwrap(), stored.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(zstd::stream::decode_all(&out.stdout[..]).unwrap(), plain);
    // And what age encrypts, the repository's opener reads.
    let opener = Opener::from_file(&key).unwrap();
    assert_eq!(
        opener.open(&std::fs::read(&stored).unwrap()).unwrap(),
        plain
    );
}

#[test]
fn a_sqlite_snapshot_after_a_few_changed_rows_costs_a_few_chunks() {
    let d = tempdir("sqlite");
    let db = d.0.join("app.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB);")
        .unwrap();
    {
        let tx = c.unchecked_transaction().unwrap();
        for i in 0..5_000 {
            tx.execute("INSERT INTO t VALUES (?1, ?2)", (i, noise(1000, i as u64)))
                .unwrap();
        }
        tx.commit().unwrap();
    }
    let (recipient, key) = keys(&d.0, "key.txt");
    let repo = Repo::open(Store::local(&d.0.join("repo"))).unwrap();
    let sealer = Sealer::new(&[recipient], 3).unwrap();
    let snap = |repo: &Repo| {
        let mut w = Writer::new(repo, &sealer, "app", "sqlite").unwrap();
        let m = centinela_backup::sqlite::backup(&mut w, &db).unwrap();
        w.finish(m).unwrap()
    };
    let first = snap(&repo);
    assert!(first.source_bytes > 5_000_000, "{}", first.source_bytes);
    // Three rows changed (the connection stays open: the WAL holds them).
    for id in [10, 2_500, 4_990] {
        c.execute(
            "UPDATE t SET body = ?1 WHERE id = ?2",
            (noise(1000, 99), id),
        )
        .unwrap();
    }
    let second = snap(&repo);
    assert!(
        second.added_bytes < 400 * 1024,
        "three changed rows stored {} bytes",
        second.added_bytes
    );
    let opener = Opener::from_file(&key).unwrap();
    let r = Reader::new(&repo, &opener, &second);
    let restored =
        centinela_backup::sqlite::restore(&r, &r.manifest().unwrap(), &d.0.join("t")).unwrap();
    let rc = rusqlite::Connection::open(&restored).unwrap();
    let body: Vec<u8> = rc
        .query_row("SELECT body FROM t WHERE id = 2500", [], |r| r.get(0))
        .unwrap();
    assert_eq!(body, noise(1000, 99));
    let n: i64 = rc
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 5_000);
    // A database that is not there is named.
    let mut w = Writer::new(&repo, &sealer, "app", "sqlite").unwrap();
    let e = centinela_backup::sqlite::backup(&mut w, &d.0.join("nope.db")).unwrap_err();
    assert!(e.contains("nope.db"), "{e}");
}

/// The files of a flat directory, by name, with their contents.
fn contents_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Random histories: snapshots of a changing tree on synthetic dates, a
/// random `keep`, prune; every kept snapshot still restores exactly what
/// it held, every forgotten one is gone, and no chunk is left unused.
#[test]
fn after_prune_every_kept_snapshot_restores_over_random_histories() {
    use centinela_backup::retention::Keep;
    const DAY: u64 = 86_400;
    let seed = std::env::var("PRUNE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let mut rng = fastrand::Rng::with_seed(seed);
    let d = tempdir("prune");
    let (recipient, key) = keys(&d.0, "key.txt");
    let opener = Opener::from_file(&key).unwrap();
    let sealer = Sealer::new(&[recipient], 1).unwrap();
    for round in 0..6 {
        let src = d.0.join(format!("src{round}"));
        std::fs::create_dir_all(&src).unwrap();
        let repo = Repo::open(Store::local(&d.0.join(format!("repo{round}")))).unwrap();
        // What each snapshot held: file name -> content.
        let mut held = Vec::new();
        let mut t = 1_796_169_600 - 120 * DAY;
        for _ in 0..rng.usize(5..25) {
            t += rng.u64(3600..5 * DAY);
            // Change, add or remove a file or two; or change a few bytes
            // here and there, which makes delta chunks.
            for _ in 0..rng.usize(1..3) {
                let f = src.join(format!("f{}", rng.u8(0..6)));
                if rng.bool() && f.exists() {
                    if rng.bool() {
                        std::fs::remove_file(&f).unwrap();
                    } else {
                        let mut b = std::fs::read(&f).unwrap();
                        for _ in 0..rng.usize(1..20) {
                            let n = b.len();
                            b[rng.usize(..n)] ^= 0x5a;
                        }
                        std::fs::write(&f, b).unwrap();
                    }
                } else {
                    std::fs::write(&f, noise(rng.usize(10..200_000), rng.u64(..))).unwrap();
                }
            }
            let mut w = Writer::new(&repo, &sealer, "h", "files")
                .unwrap()
                .at(t)
                .delta_cache(&d.0.join("delta"), &format!("h{round}"));
            let (m, _) = files::backup(&mut w, std::slice::from_ref(&src)).unwrap();
            let idx = w.finish(m).unwrap();
            held.push((idx.id, contents_of(&src)));
        }
        let keep = Keep {
            last: rng.u32(0..3),
            daily: rng.u32(0..5),
            weekly: rng.u32(0..4),
            monthly: rng.u32(1..3),
        };
        let dry = centinela_backup::repo::prune(&repo, "h", keep, true).unwrap();
        let before = repo.indexes("h").unwrap().len();
        assert_eq!(
            before,
            held.len(),
            "a dry run deletes nothing (seed {seed})"
        );
        let p = centinela_backup::repo::prune(&repo, "h", keep, false).unwrap();
        assert_eq!(p.forgotten, dry.forgotten, "seed {seed}");
        assert_eq!(p.chunks_deleted, dry.chunks_deleted, "seed {seed}");
        let left = repo.indexes("h").unwrap();
        assert_eq!(left.len(), held.len() - p.forgotten.len(), "seed {seed}");
        assert!(
            verify(&repo, "h", Some(&opener)).unwrap().is_empty(),
            "seed {seed}"
        );
        for idx in &left {
            let (_, want) = held.iter().find(|(id, _)| *id == idx.id).unwrap();
            let target = d.0.join(format!("r{round}-{}", idx.id));
            restore(&repo, &opener, idx, &target).unwrap();
            let dir = target.join(src.strip_prefix("/").unwrap());
            let got = contents_of(&dir);
            assert!(
                got == *want,
                "snapshot {} differs after prune (seed {seed})",
                idx.id
            );
        }
        // No chunk is left that no snapshot uses.
        let again = centinela_backup::repo::prune(&repo, "h", keep, true).unwrap();
        assert_eq!(
            (again.chunks_deleted, again.forgotten.len()),
            (0, 0),
            "seed {seed}"
        );
    }
}

#[test]
fn prune_and_backups_wait_for_each_other_and_dead_locks_are_taken_over() {
    use centinela_backup::retention::Keep;
    let d = tempdir("lock");
    let (recipient, _) = keys(&d.0, "key.txt");
    let repo = Repo::open(Store::local(&d.0.join("repo"))).unwrap();
    let sealer = Sealer::new(&[recipient], 1).unwrap();
    let keep = Keep {
        last: 1,
        ..Keep::default()
    };
    let w = Writer::new(&repo, &sealer, "h", "files").unwrap();
    let e = centinela_backup::repo::prune(&repo, "h", keep, false).unwrap_err();
    assert!(
        e.contains("a backup by process") && e.contains("prune waits"),
        "{e}"
    );
    drop(w);
    centinela_backup::repo::prune(&repo, "h", keep, false).unwrap();
    // A backup that starts during a prune waits for it, then goes on.
    let held = std::fs::write(
        d.0.join("repo/locks/exclusive"),
        format!(
            "{{\"host\":\"{}\",\"pid\":{},\"time\":{}}}",
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap()
                .trim(),
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
        ),
    );
    held.unwrap();
    let lock = d.0.join("repo/locks/exclusive");
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        std::fs::remove_file(lock).unwrap();
    });
    let started = std::time::Instant::now();
    let w = Writer::new(&repo, &sealer, "h", "files").unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "it did not wait"
    );
    drop(w);
    release.join().unwrap();
    // A lock left by a process that is gone is taken over.
    std::fs::write(
        d.0.join("repo/locks/backup-dead"),
        format!(
            "{{\"host\":\"{}\",\"pid\":4194999,\"time\":1}}",
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap()
                .trim()
        ),
    )
    .unwrap();
    centinela_backup::repo::prune(&repo, "h", keep, false).unwrap();
    assert!(!d.0.join("repo/locks/backup-dead").exists());
}

/// 8 bytes changed in 60% of the 8 KiB pages, as a busy database's.
fn touch_pages(file: &mut [u8], rng: &mut fastrand::Rng) {
    for page in 0..file.len() / 8192 {
        if rng.u8(..100) < 60 {
            let at = page * 8192 + rng.usize(..8184);
            file[at..at + 8].copy_from_slice(&rng.u64(..).to_le_bytes());
        }
    }
}

/// A file of "pages" changed by a few bytes in most of them, as a busy
/// database's are between two backups: each snapshot stores its changed
/// chunks as deltas against the previous snapshot's (found through the
/// local cache), a fraction of the first; every snapshot restores
/// exactly, chains stay short, prune keeps the bases, a damaged base is
/// named, and without the cache chunks are stored whole.
#[test]
fn sparse_changes_are_stored_as_deltas_and_every_snapshot_restores() {
    let d = tempdir("delta");
    let (recipient, key) = keys(&d.0, "key.txt");
    let opener = Opener::from_file(&key).unwrap();
    let sealer = Sealer::new(&[recipient], 3).unwrap();
    let repo = Repo::open(Store::local(&d.0.join("repo"))).unwrap();
    let src = d.0.join("db");
    std::fs::create_dir_all(&src).unwrap();
    let cache = d.0.join("delta");
    let mut page_file = noise(2 << 20, 3);
    let mut rng = fastrand::Rng::with_seed(11);
    let mut held = Vec::new();
    let mut added = Vec::new();
    for round in 0..5 {
        if round > 0 {
            touch_pages(&mut page_file, &mut rng);
        }
        std::fs::write(src.join("base.1"), &page_file).unwrap();
        let mut w = Writer::new(&repo, &sealer, "db", "files")
            .unwrap()
            .delta_cache(&cache, "db.local");
        let (m, _) = files::backup(&mut w, std::slice::from_ref(&src)).unwrap();
        let idx = w.finish(m).unwrap();
        added.push(idx.added_bytes);
        held.push((idx.id.clone(), page_file.clone()));
    }
    // Each incremental costs a fraction of the first snapshot.
    for (n, a) in added.iter().enumerate().skip(1) {
        assert!(
            *a * 5 < added[0],
            "snapshot {n} added {a} bytes, the first {}",
            added[0]
        );
    }
    let check = |idx: &centinela_backup::repo::Index, want: &[u8], tag: &str| {
        let target = d.0.join(format!("r-{tag}-{}", idx.id));
        restore(&repo, &opener, idx, &target).unwrap();
        let got =
            std::fs::read(target.join(src.strip_prefix("/").unwrap()).join("base.1")).unwrap();
        assert!(got == want, "snapshot {} restored differently", idx.id);
    };
    let indexes = repo.indexes("db").unwrap();
    assert_eq!(indexes.len(), 5);
    for (idx, (id, want)) in indexes.iter().zip(&held) {
        assert_eq!(&idx.id, id);
        check(idx, want, "all");
        // Chains stay within MAX_DEPTH, and every base is listed.
        let stored: std::collections::HashMap<&str, &centinela_backup::repo::Stored> =
            idx.chunks.iter().map(|(id, s)| (id.as_str(), s)).collect();
        for (id, _) in &idx.chunks {
            let mut depth = 0;
            let mut at = id.as_str();
            while let Some(b) = stored[at].base.as_deref() {
                depth += 1;
                at = b;
            }
            assert!(depth <= centinela_backup::delta::MAX_DEPTH, "{id}: {depth}");
        }
    }
    assert!(
        indexes
            .iter()
            .any(|i| i.chunks.iter().any(|(_, s)| s.base.is_some())),
        "no delta chunk was made"
    );
    assert!(verify(&repo, "db", Some(&opener)).unwrap().is_empty());

    // Prune down to the newest: its bases stay, and it restores.
    let keep = centinela_backup::retention::Keep {
        last: 1,
        daily: 0,
        weekly: 0,
        monthly: 0,
    };
    let p = centinela_backup::repo::prune(&repo, "db", keep, false).unwrap();
    assert_eq!(p.forgotten.len(), 4);
    let last = repo.indexes("db").unwrap().pop().unwrap();
    check(&last, &held[4].1, "pruned");
    assert!(verify(&repo, "db", Some(&opener)).unwrap().is_empty());

    // A damaged base stops the restore and is named.
    let (base, _) = last
        .chunks
        .iter()
        .find(|(id, _)| {
            last.chunks
                .iter()
                .any(|(_, s)| s.base.as_deref() == Some(id.as_str()))
        })
        .expect("a base");
    let path = d.0.join("repo/chunks").join(&base[..2]).join(base);
    let good = std::fs::read(&path).unwrap();
    let mut bad = good.clone();
    let n = bad.len();
    bad[n / 2] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    let err = restore(&repo, &opener, &last, &d.0.join("r-bad")).unwrap_err();
    assert!(err.contains(base.as_str()), "{err}");
    std::fs::write(&path, &good).unwrap();

    // Without the cache, changed chunks are stored whole: more bytes,
    // the same content.
    std::fs::remove_dir_all(&cache).unwrap();
    touch_pages(&mut page_file, &mut rng);
    std::fs::write(src.join("base.1"), &page_file).unwrap();
    let mut w = Writer::new(&repo, &sealer, "db", "files")
        .unwrap()
        .delta_cache(&cache, "db.local");
    let (m, _) = files::backup(&mut w, std::slice::from_ref(&src)).unwrap();
    let idx = w.finish(m).unwrap();
    assert!(
        idx.added_bytes * 2 > added[0],
        "{} vs {}",
        idx.added_bytes,
        added[0]
    );
    check(&idx, &page_file, "nocache");
}

/// Read-ahead for restores: chunks come out in order whatever thread
/// read them, and a bad one stops it with its name.
#[test]
fn chunks_read_ahead_come_in_order_and_a_bad_one_stops_them() {
    let d = tempdir("ahead");
    let (recipient, key) = keys(&d.0, "key.txt");
    let opener = Opener::from_file(&key).unwrap();
    let sealer = Sealer::new(&[recipient], 1).unwrap();
    let repo = Repo::open(Store::local(&d.0.join("repo"))).unwrap();
    let data = noise(6 << 20, 5);
    let mut w = Writer::new(&repo, &sealer, "db", "files").unwrap();
    let ids = w.stream(&data[..]).unwrap();
    let idx = w.finish(serde_json::json!({})).unwrap();
    assert!(ids.len() > 20, "{}", ids.len());
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let r = Reader::new(&repo, &opener, &idx);
    let mut got = Vec::new();
    r.each_chunk(&ids, |c| {
        got.extend_from_slice(&c);
        Ok(())
    })
    .unwrap();
    assert!(got == data);
    // The consumer's own error stops it too.
    let mut n = 0;
    let e = r
        .each_chunk(&ids, |_| {
            n += 1;
            if n == 3 {
                Err("tar stopped reading".into())
            } else {
                Ok(())
            }
        })
        .unwrap_err();
    assert_eq!((e.as_str(), n), ("tar stopped reading", 3));
    let bad = ids[ids.len() / 2];
    let path = d.0.join("repo/chunks").join(&bad[..2]).join(bad);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let e = r.each_chunk(&ids, |_| Ok(())).unwrap_err();
    assert!(e.contains(bad), "{e}");
}
