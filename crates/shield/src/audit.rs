//! The audit log: what was done through the admin API and by signals
//! (restart, stop, start, reload, silence, unsilence), one JSON line each,
//! appended to `state_dir/audit.log` (mode 0600), each line holding the
//! SHA-256 of the line before it and its own. `centinela audit verify`
//! walks the chain: an edited line no longer matches its hash, a removed
//! one breaks the sequence and the chain. (Cutting lines off the end leaves
//! a valid chain; the number of entries is printed so that it can be
//! compared with a copy kept elsewhere.)

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::Value;

/// The hash before the first line.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

pub struct AuditLog {
    path: PathBuf,
    inner: Mutex<Tail>,
}

struct Tail {
    file: File,
    seq: u64,
    last: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sha256(b: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
}

/// A line is `BODY` with `,"hash":"…"}` in place of its closing brace,
/// where the hash is over `PREV-HASH` and `BODY`.
fn seal(prev: &str, body: &str) -> String {
    sha256(format!("{prev}\n{body}").as_bytes())
}

fn split(line: &str) -> Option<(String, &str)> {
    let at = line.rfind(",\"hash\":\"")?;
    let hash = line[at + 9..].strip_suffix("\"}")?;
    Some((format!("{}}}", &line[..at]), hash))
}

impl AuditLog {
    /// Opens (or creates) the log, reading where its chain ends.
    pub fn open(path: &Path) -> Result<AuditLog, String> {
        let (seq, last) = match verify(path) {
            Ok(v) => (v.entries, v.last),
            Err(e) if !path.exists() => {
                let _ = e;
                (0, GENESIS.to_string())
            }
            Err(e) => {
                return Err(format!(
                    "{}: {e}; not appending to a broken chain",
                    path.display()
                ))
            }
        };
        let mut opts = OpenOptions::new();
        opts.create(true).append(true);
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let file = opts
            .open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            inner: Mutex::new(Tail { file, seq, last }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry: `action` (`restart`, `reload`…) on `target`,
    /// by `actor` (`admin-api`, `SIGHUP`), its `outcome` (`ok` or the
    /// error). Written and synced before it returns.
    pub fn record(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        outcome: &str,
    ) -> Result<(), String> {
        let mut t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let seq = t.seq + 1;
        let body = serde_json::json!({
            "seq": seq,
            "time": rfc3339(std::time::SystemTime::now()),
            "actor": actor,
            "action": action,
            "target": target,
            "outcome": outcome,
            "prev": t.last,
        })
        .to_string();
        let hash = seal(&t.last, &body);
        let line = format!("{},\"hash\":\"{hash}\"}}\n", &body[..body.len() - 1]);
        t.file
            .write_all(line.as_bytes())
            .and_then(|()| t.file.sync_data())
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()))?;
        t.seq = seq;
        t.last = hash;
        Ok(())
    }
}

/// What a verified log holds.
#[derive(Debug)]
pub struct Verified {
    pub entries: u64,
    /// The last line's hash.
    pub last: String,
}

/// Walks the chain: every line's hash, its `prev`, and the sequence.
pub fn verify(path: &Path) -> Result<Verified, String> {
    let f =
        File::open(path).map_err(|e| format!("cannot read {}: {}", path.display(), e.kind()))?;
    let mut prev = GENESIS.to_string();
    let mut n = 0u64;
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let no = i + 1;
        let line = line.map_err(|e| format!("line {no}: cannot read: {e}"))?;
        let (body, hash) = split(&line).ok_or(format!("line {no}: not an audit entry"))?;
        let v: Value =
            serde_json::from_str(&body).map_err(|_| format!("line {no}: not an audit entry"))?;
        if seal(&prev, &body) != hash {
            return Err(format!(
                "line {no}: its content does not match its hash (edited), or the line before it was removed"
            ));
        }
        if v["prev"].as_str() != Some(prev.as_str()) {
            return Err(format!(
                "line {no}: does not follow the line before it (a line was removed)"
            ));
        }
        n += 1;
        if v["seq"].as_u64() != Some(n) {
            return Err(format!(
                "line {no}: sequence number {} where {n} was expected (a line was removed)",
                v["seq"]
            ));
        }
        prev = hash.to_string();
    }
    Ok(Verified {
        entries: n,
        last: prev,
    })
}

fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = centinela_config::units::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_and_removals_break_the_chain() {
        let dir = std::env::temp_dir().join(format!("centinela-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.log");
        let _ = std::fs::remove_file(&path);
        let log = AuditLog::open(&path).unwrap();
        log.record("admin-api", "restart", "products", "ok")
            .unwrap();
        log.record("SIGHUP", "reload", "centinela.toml", "ok")
            .unwrap();
        log.record("admin-api", "silence", "p99-high", "ok")
            .unwrap();
        drop(log);
        // Reopened: the chain goes on.
        let log = AuditLog::open(&path).unwrap();
        log.record("admin-api", "stop", "products", "ok").unwrap();
        assert_eq!(verify(&path).unwrap().entries, 4);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("\"action\":\"restart\"") && lines[0].contains("\"hash\":\""));
        // An edited line.
        assert!(lines[0].contains("\"target\":\"products\""));
        std::fs::write(
            &path,
            text.replacen("\"target\":\"products\"", "\"target\":\"billing\"", 1),
        )
        .unwrap();
        let e = verify(&path).unwrap_err();
        assert!(e.starts_with("line 1:") && e.contains("edited"), "{e}");
        // A removed line.
        let without: String = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, l)| format!("{l}\n"))
            .collect();
        std::fs::write(&path, without).unwrap();
        let e = verify(&path).unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        // A broken log is not appended to.
        assert!(AuditLog::open(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
