//! `[repo.NAME]` (where backups are kept) and `[backup.NAME]` (what is
//! backed up, when, where to, encrypted to whom, kept how long, and how
//! its restore is tested). Issue #11; `docs/config.md` has the tables.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cron::Cron;
use crate::diag::Sink;
use crate::read::{array_items, is_name, missing, Obj, SV};
use crate::secret::Secret;
use crate::Location;

#[derive(Clone, Debug, PartialEq)]
pub struct Repo {
    pub name: String,
    pub store: Store,
    /// Where `[repo.NAME]` is in the file.
    pub at: Location,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Store {
    /// A directory (relative paths: to the config file's directory).
    Local(PathBuf),
    /// Any S3-compatible object store.
    S3(S3),
}

#[derive(Clone, Debug, PartialEq)]
pub struct S3 {
    pub endpoint: String,
    pub bucket: String,
    pub prefix: String,
    pub region: String,
    pub access_key: Secret,
    pub secret_key: Secret,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Backup {
    pub name: String,
    pub source: Source,
    pub when: When,
    /// Every backup goes to each of these repos.
    pub repos: Vec<String>,
    /// age recipients (`age1…`): this host can write backups it cannot
    /// read.
    pub encrypt_to: Vec<String>,
    pub zstd_level: i32,
    /// Changed chunks stored as deltas against the previous snapshot's,
    /// through a local cache in `state_dir/delta/` (default: postgres and
    /// sqlite).
    pub delta: bool,
    pub keep: Keep,
    pub restore_test: Option<RestoreTest>,
    /// Where `[backup.NAME]` is in the file.
    pub at: Location,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    Postgres {
        /// libpq conninfo.
        connect: String,
        password: Option<Secret>,
        wal: Wal,
    },
    Sqlite {
        path: PathBuf,
    },
    Files {
        paths: Vec<PathBuf>,
    },
}

impl Source {
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Postgres { .. } => "postgres",
            Source::Sqlite { .. } => "sqlite",
            Source::Files { .. } => "files",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wal {
    Archive,
    Stream,
    Off,
}

#[derive(Clone, Debug, PartialEq)]
pub enum When {
    Cron(Cron),
    Every(Duration),
}

impl When {
    /// The next run strictly after `after` (Unix seconds), counted for
    /// `every` from `last` (the last snapshot, or `after` itself).
    pub fn next_after(&self, after: u64, last: Option<u64>) -> Option<u64> {
        match self {
            When::Cron(c) => c.next_after(after),
            When::Every(d) => {
                let from = last.unwrap_or(after);
                Some((from + d.as_secs().max(1)).max(after + 1))
            }
        }
    }

    /// The longest time between two runs (a cron schedule's over a year).
    pub fn longest_gap(&self) -> Duration {
        match self {
            When::Every(d) => *d,
            When::Cron(c) => {
                // 2026-01-01T00:00:00Z: any year would do.
                let mut t = 1_767_225_600;
                let mut gap = 0;
                let mut prev = c.next_after(t);
                while let Some(p) = prev {
                    if p > 1_767_225_600 + 366 * 86_400 {
                        break;
                    }
                    t = p;
                    prev = c.next_after(t);
                    if let Some(n) = prev {
                        gap = gap.max(n - p);
                    }
                }
                Duration::from_secs(gap.max(60))
            }
        }
    }
}

/// How many snapshots to keep (GFS, as restic's `forget`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Keep {
    pub last: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RestoreTest {
    pub schedule: Cron,
    pub checks: Vec<Check>,
    pub max_rto: Duration,
    pub max_rpo: Duration,
    /// The age identity file the scheduled test reads the backup with.
    /// Without it the test runs only by hand (`restore-test --identity`):
    /// a host that holds it can read its backups.
    pub identity: Option<PathBuf>,
}

/// A query run against the restored data: its single number must be at
/// least `min`.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    pub sql: String,
    pub min: i64,
}

/// Where a backup's `repos` were written, to check them against the repos.
pub(crate) struct RepoRefs {
    path: String,
    repos: Vec<(String, Range<usize>)>,
}

pub(crate) fn repos(sink: &mut Sink<'_>, top: &mut Obj<'_, '_>, base: &Path) -> Vec<Repo> {
    let mut out = Vec::new();
    let Some(all) = top.sub(sink, "repo") else {
        return out;
    };
    for (k, v) in all.table.iter() {
        let name: &str = k.get_ref().as_ref();
        let path = format!("repo.{name}");
        if !is_name(name) {
            sink.error(
                &k.span(),
                &path,
                format!("{name:?} is not a valid repo name: use letters, digits, '-', '_' and '.'"),
            );
        }
        let Some(mut o) = Obj::new(sink, v, &path) else {
            continue;
        };
        let local = o.str(sink, "path");
        let s3 = o.sub(sink, "s3").map(|mut s| {
            let store = s3(sink, &mut s, &v.span(), base);
            s.finish(sink);
            store
        });
        o.finish(sink);
        let store = match (local, s3) {
            (Some((p, _)), None) => Store::Local(base.join(p)),
            (None, Some(Some(s))) => Store::S3(s),
            (None, Some(None)) => continue,
            (None, None) => {
                sink.error(
                    &v.span(),
                    &path,
                    "a repo needs `path` (a directory) or `s3`",
                );
                continue;
            }
            (Some(_), Some(_)) => {
                sink.error(
                    &v.span(),
                    &path,
                    "a repo has one of `path` or `s3`: define one [repo.NAME] per place",
                );
                continue;
            }
        };
        out.push(Repo {
            name: name.to_string(),
            store,
            at: sink.location(&v.span()),
        });
    }
    out
}

fn s3(sink: &mut Sink<'_>, s: &mut Obj<'_, '_>, span: &Range<usize>, base: &Path) -> Option<S3> {
    let endpoint = s.str(sink, "endpoint");
    let bucket = s.str(sink, "bucket");
    let prefix = s.str(sink, "prefix").map(|p| p.0).unwrap_or_default();
    let region = s
        .str(sink, "region")
        .map_or_else(|| "us-east-1".to_string(), |r| r.0);
    let access_key = s.secret(sink, "access_key", base);
    let secret_key = s.secret(sink, "secret_key", base);
    let mut ok = true;
    for (key, present) in [
        ("endpoint", endpoint.is_some()),
        ("bucket", bucket.is_some()),
        ("access_key", access_key.is_some()),
        ("secret_key", secret_key.is_some()),
    ] {
        if !present && s.table.iter().all(|(k, _)| k.get_ref().as_ref() != key) {
            missing(sink, span, &s.path.clone(), key);
            ok = false;
        }
    }
    if let Some((e, espan)) = &endpoint {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            sink.error(
                espan,
                &s.child_path("endpoint"),
                format!("{e:?} is not an http:// or https:// URL"),
            );
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    Some(S3 {
        endpoint: endpoint?.0,
        bucket: bucket?.0,
        prefix,
        region,
        access_key: access_key?,
        secret_key: secret_key?,
    })
}

pub(crate) fn backups(
    sink: &mut Sink<'_>,
    top: &mut Obj<'_, '_>,
    base: &Path,
) -> (Vec<Backup>, Vec<RepoRefs>) {
    let mut out = Vec::new();
    let mut refs = Vec::new();
    let Some(all) = top.sub(sink, "backup") else {
        return (out, refs);
    };
    for (k, v) in all.table.iter() {
        let name: &str = k.get_ref().as_ref();
        let path = format!("backup.{name}");
        if !is_name(name) || name.starts_with('.') {
            sink.error(
                &k.span(),
                &path,
                format!(
                    "{name:?} is not a valid backup name: use letters, digits, '-', '_' and '.', not first"
                ),
            );
        }
        let (b, r) = backup(sink, v, name, &path, base);
        out.extend(b);
        refs.extend(r);
    }
    (out, refs)
}

fn backup(
    sink: &mut Sink<'_>,
    v: &SV<'_>,
    name: &str,
    path: &str,
    base: &Path,
) -> (Option<Backup>, Option<RepoRefs>) {
    let Some(mut o) = Obj::new(sink, v, path) else {
        return (None, None);
    };
    let span = v.span();
    let kind = o.str(sink, "kind");
    let source = match kind.as_ref().map(|(k, s)| (k.as_str(), s)) {
        Some(("postgres", _)) => {
            let connect = o.str(sink, "connect");
            let password = o.secret(sink, "password", base);
            let wal = match o.str(sink, "wal") {
                None => Wal::Archive,
                Some((w, _)) if w == "archive" => Wal::Archive,
                Some((w, _)) if w == "stream" => Wal::Stream,
                Some((w, _)) if w == "off" => Wal::Off,
                Some((w, s)) => {
                    sink.error(
                        &s,
                        &o.child_path("wal"),
                        format!("unknown value {w:?}; expected \"archive\", \"stream\" or \"off\""),
                    );
                    Wal::Archive
                }
            };
            if connect.is_none() {
                missing(sink, &span, path, "connect");
            }
            connect.map(|(connect, _)| Source::Postgres {
                connect,
                password,
                wal,
            })
        }
        Some(("sqlite", _)) => match o.str(sink, "path") {
            Some((p, _)) => Some(Source::Sqlite { path: base.join(p) }),
            None => {
                missing(sink, &span, path, "path");
                None
            }
        },
        Some(("files", _)) => {
            let (paths, _) = o.str_list(sink, "paths");
            if paths.is_empty() {
                sink.error(
                    &span,
                    path,
                    "kind = \"files\" needs `paths`, a list of directories or files",
                );
                None
            } else {
                Some(Source::Files {
                    paths: paths.iter().map(|p| base.join(p)).collect(),
                })
            }
        }
        Some((k, s)) => {
            sink.error(
                s,
                &o.child_path("kind"),
                format!("unknown kind {k:?}; expected \"postgres\", \"sqlite\" or \"files\""),
            );
            None
        }
        None => {
            missing(sink, &span, path, "kind");
            None
        }
    };
    let when = when(sink, &mut o, &source, path, &span);
    let (repo_names, repo_spans) = o.str_list(sink, "repos");
    if repo_names.is_empty() {
        sink.error(
            &span,
            path,
            "a backup needs `repos`: the [repo.NAME]s it goes to",
        );
    }
    let (encrypt_to, enc_spans) = o.str_list(sink, "encrypt_to");
    if encrypt_to.is_empty() {
        sink.error(
            &span,
            path,
            "a backup needs `encrypt_to`: at least one age recipient (age1…, made with age-keygen); the host that writes backups never holds the key that reads them",
        );
    }
    for (r, s) in encrypt_to.iter().zip(&enc_spans) {
        if let Err(e) = age_recipient(r) {
            sink.error(s, &o.child_path("encrypt_to"), e);
        }
    }
    let zstd_level = match o.sub(sink, "compression") {
        Some(mut c) => {
            let l = c.int(sink, "zstd", 3, 1, 19) as i32;
            c.finish(sink);
            l
        }
        None => 3,
    };
    let delta = o.bool(
        sink,
        "delta",
        matches!(
            source,
            Some(Source::Postgres { .. } | Source::Sqlite { .. })
        ),
    );
    let keep_span = o.get("keep").map(|k| k.span());
    let keep = match o.sub(sink, "keep") {
        Some(mut k) => {
            let keep = Keep {
                last: k.int(sink, "last", 0, 0, 100_000) as u32,
                daily: k.int(sink, "daily", 0, 0, 100_000) as u32,
                weekly: k.int(sink, "weekly", 0, 0, 100_000) as u32,
                monthly: k.int(sink, "monthly", 0, 0, 100_000) as u32,
            };
            if keep == Keep::default() {
                sink.error(
                    keep_span.as_ref().unwrap_or(&span),
                    &k.path.clone(),
                    "keep would keep nothing: set at least one of last, daily, weekly, monthly",
                );
            }
            k.finish(sink);
            keep
        }
        None => Keep {
            last: 3,
            daily: 30,
            weekly: 13,
            monthly: 12,
        },
    };
    let restore_test = o.sub(sink, "restore_test").and_then(|mut t| {
        let r = restore_test(sink, &mut t, &span, base);
        t.finish(sink);
        r
    });
    if let (Some(Source::Files { .. }), Some(t)) = (&source, &restore_test) {
        if !t.checks.is_empty() {
            sink.error(
                &span,
                &format!("{path}.restore_test.checks"),
                "checks are SQL queries: they apply to sqlite and postgres backups",
            );
        }
    }
    o.finish(sink);
    let refs = RepoRefs {
        path: path.to_string(),
        repos: repo_names.iter().cloned().zip(repo_spans).collect(),
    };
    let backup = match (source, when) {
        (Some(source), Some(when)) => Some(Backup {
            name: name.to_string(),
            source,
            when,
            repos: repo_names,
            encrypt_to,
            zstd_level,
            delta,
            keep,
            restore_test,
            at: sink.location(&span),
        }),
        _ => None,
    };
    (backup, Some(refs))
}

/// `schedule` (cron) or `every`; SQLite snapshots default to every minute.
fn when(
    sink: &mut Sink<'_>,
    o: &mut Obj<'_, '_>,
    source: &Option<Source>,
    path: &str,
    span: &Range<usize>,
) -> Option<When> {
    let schedule = o.str(sink, "schedule");
    let every = o.get("every").is_some().then(|| {
        o.duration_min(
            sink,
            "every",
            Duration::from_secs(60),
            Duration::from_secs(1),
        )
    });
    match (schedule, every) {
        (Some(_), Some(_)) => {
            sink.error(span, path, "a backup has `schedule` or `every`, not both");
            None
        }
        (Some((s, sspan)), None) => match Cron::parse(&s) {
            Ok(c) => Some(When::Cron(c)),
            Err(e) => {
                sink.error(&sspan, &o.child_path("schedule"), e);
                None
            }
        },
        (None, Some(d)) => Some(When::Every(d)),
        (None, None) if matches!(source, Some(Source::Sqlite { .. })) => {
            Some(When::Every(Duration::from_secs(60)))
        }
        (None, None) => {
            sink.error(
                span,
                path,
                "a backup needs `schedule` (cron, e.g. \"0 3 * * *\") or `every` (e.g. \"6h\")",
            );
            None
        }
    }
}

fn restore_test(
    sink: &mut Sink<'_>,
    t: &mut Obj<'_, '_>,
    span: &Range<usize>,
    base: &Path,
) -> Option<RestoreTest> {
    let identity = t.str(sink, "identity").map(|(p, _)| base.join(p));
    if identity.is_none() {
        sink.warn(
            span,
            &t.path.clone(),
            "restore_test has no `identity`: it runs only by `centinela restore-test NAME --identity KEY`, not on its schedule",
        );
    }
    let schedule = match t.str(sink, "schedule") {
        Some((s, sspan)) => match Cron::parse(&s) {
            Ok(c) => Some(c),
            Err(e) => {
                sink.error(&sspan, &t.child_path("schedule"), e);
                None
            }
        },
        None => {
            missing(sink, span, &t.path.clone(), "schedule");
            None
        }
    };
    let mut checks = Vec::new();
    if let Some(v) = t.get("checks") {
        let cpath = t.child_path("checks");
        for (i, item) in array_items(sink, v, &cpath) {
            let ipath = format!("{cpath}[{i}]");
            let Some(mut c) = Obj::new(sink, item, &ipath) else {
                continue;
            };
            let sql = c.str(sink, "sql");
            let min = c.int(sink, "min", 1, 0, i64::MAX as u64) as i64;
            c.finish(sink);
            match sql {
                Some((sql, _)) => checks.push(Check { sql, min }),
                None => missing(sink, &item.span(), &ipath, "sql"),
            }
        }
    }
    let max_rto = t.duration_min(
        sink,
        "max_rto",
        Duration::from_secs(30 * 60),
        Duration::from_secs(1),
    );
    let max_rpo = t.duration_min(
        sink,
        "max_rpo",
        Duration::from_secs(15 * 60),
        Duration::from_secs(1),
    );
    Some(RestoreTest {
        schedule: schedule?,
        checks,
        max_rto,
        max_rpo,
        identity,
    })
}

/// Every backup's repos exist.
pub(crate) fn check(sink: &mut Sink<'_>, refs: &[RepoRefs], repos: &[Repo]) {
    for r in refs {
        for (name, span) in &r.repos {
            if !repos.iter().any(|x| x.name == *name) {
                sink.error(
                    span,
                    &format!("{}.repos", r.path),
                    format!("no repo named {name:?} (defined with [repo.NAME])"),
                );
            }
        }
    }
}

/// An age X25519 recipient: Bech32 (BIP 173) with the human-readable part
/// `age` and a 32-byte key, checksum verified.
pub fn age_recipient(r: &str) -> Result<[u8; 32], String> {
    const CHARSET: &[u8; 32] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";
    let bad = |why: &str| {
        format!("{r:?} is not an age recipient ({why}); expected age1… as age-keygen prints it")
    };
    let lower = r.to_ascii_lowercase();
    if lower != r && r.to_ascii_uppercase() != r {
        return Err(bad("mixed case"));
    }
    let Some(sep) = lower.rfind('1') else {
        return Err(bad("no separator"));
    };
    let (hrp, data) = (&lower[..sep], &lower[sep + 1..]);
    if hrp != "age" {
        return Err(bad("it does not start with age1"));
    }
    let values: Vec<u8> = data
        .bytes()
        .map(|c| CHARSET.iter().position(|&x| x == c).map(|p| p as u8))
        .collect::<Option<_>>()
        .ok_or_else(|| bad("a character outside Bech32"))?;
    if values.len() < 6 {
        return Err(bad("too short"));
    }
    let mut check: Vec<u8> = hrp.bytes().map(|b| b >> 5).collect();
    check.push(0);
    check.extend(hrp.bytes().map(|b| b & 31));
    check.extend(&values);
    if polymod(&check) != 1 {
        return Err(bad("bad checksum"));
    }
    // 5-bit groups to bytes, without the 6 checksum values.
    let (mut acc, mut bits, mut key) = (0u32, 0u32, Vec::new());
    for v in &values[..values.len() - 6] {
        acc = (acc << 5) | u32::from(*v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            key.push((acc >> bits) as u8);
        }
    }
    if bits >= 5 || (acc & ((1 << bits) - 1)) != 0 {
        return Err(bad("bad padding"));
    }
    key.try_into().map_err(|_| bad("not a 32-byte key"))
}

fn polymod(values: &[u8]) -> u32 {
    const GEN: [u32; 5] = [
        0x3b6a_57b2,
        0x2650_8e6d,
        0x1ea1_19fa,
        0x3d42_33dd,
        0x2a14_62b3,
    ];
    let mut chk = 1u32;
    for v in values {
        let top = chk >> 25;
        chk = ((chk & 0x1ff_ffff) << 5) ^ u32::from(*v);
        for (i, g) in GEN.iter().enumerate() {
            if (top >> i) & 1 == 1 {
                chk ^= g;
            }
        }
    }
    chk
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_recipients_are_checked() {
        // The example recipient of age's README.
        let good = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
        assert_eq!(age_recipient(good).unwrap().len(), 32);
        assert!(age_recipient(&good.to_ascii_uppercase()).is_ok());
        let mut flipped = good.to_string();
        flipped.replace_range(10..11, "q");
        assert!(age_recipient(&flipped).unwrap_err().contains("checksum"));
        assert!(age_recipient("age1").is_err());
        assert!(age_recipient("ssh-ed25519 AAAA").is_err());
        assert!(age_recipient("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4")
            .unwrap_err()
            .contains("age1"));
        assert!(
            age_recipient("Age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p")
                .unwrap_err()
                .contains("mixed case")
        );
    }
}
