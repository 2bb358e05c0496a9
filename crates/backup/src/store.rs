//! Where a repository's objects live: a local directory or an
//! S3-compatible bucket, behind the few blocking operations the repository
//! needs (put, create-only put, get, size, list, delete).
//!
//! S3 goes through `object_store` (its `AmazonS3`), driven by one small
//! tokio runtime of its own, so that the repository code stays blocking
//! and can be called from any thread, inside `centinela run`'s runtime or
//! not. The local store is written here rather than with `object_store`'s
//! `LocalFileSystem`, because a backup must be on disk when it is listed:
//! every object is flushed (`fsync`) before its rename, and the directory
//! after it.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use centinela_config::backup::{Store as StoreCfg, S3 as S3Cfg};
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::repo::Result;

/// A repository's storage. Cheap to clone.
#[derive(Clone)]
pub enum Store {
    Local(Arc<PathBuf>),
    S3(Arc<S3Store>),
}

pub struct S3Store {
    client: Arc<dyn ObjectStore>,
    /// `prefix/` or empty.
    prefix: String,
    /// `s3://bucket/prefix`, for messages.
    url: String,
    /// Values that must never reach a message (the keys).
    secrets: [String; 2],
}

/// How many times an S3 request is retried, and for how long at most: a
/// dead store fails a `wal-push` in seconds, so PostgreSQL keeps the
/// segment and says so, instead of waiting minutes.
const S3_RETRIES: usize = 3;
const S3_RETRY_FOR: Duration = Duration::from_secs(15);

/// The runtime that drives every S3 request.
fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RT: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("centinela-s3")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the S3 client's runtime: {e}"))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Runs `fut` on the S3 runtime and waits for it, from any thread (a
/// runtime's own worker included: the wait is on a channel, not a nested
/// `block_on`).
fn block<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime()?.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv()
        .map_err(|_| "the S3 client's runtime stopped".to_string())
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

impl Store {
    /// The store a `[repo.NAME]` names.
    pub fn from_config(cfg: &StoreCfg) -> Result<Store> {
        match cfg {
            StoreCfg::Local(p) => Ok(Store::Local(Arc::new(p.clone()))),
            StoreCfg::S3(s) => Ok(Store::S3(Arc::new(S3Store::new(s)?))),
        }
    }

    /// A local directory.
    pub fn local(root: &Path) -> Store {
        Store::Local(Arc::new(root.to_path_buf()))
    }

    /// `/var/backups/centinela` or `s3://bucket/prefix`.
    pub fn describe(&self) -> String {
        match self {
            Store::Local(p) => p.display().to_string(),
            Store::S3(s) => s.url.clone(),
        }
    }

    /// The directory of a local store.
    pub fn local_root(&self) -> Option<&Path> {
        match self {
            Store::Local(p) => Some(p),
            Store::S3(_) => None,
        }
    }

    /// Writes `bytes` under `key`, replacing what is there, atomically: a
    /// reader sees the old object or the whole new one.
    pub fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        match self {
            Store::Local(root) => local_put(root, key, bytes, false).map(|_| ()),
            Store::S3(s) => s.put(key, bytes, PutMode::Overwrite).map(|_| ()),
        }
    }

    /// Writes `bytes` under `key` unless an object is there (`Ok(false)`):
    /// a conditional PUT on S3, a hard link on a directory.
    pub fn put_new(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        match self {
            Store::Local(root) => local_put(root, key, bytes, true),
            Store::S3(s) => s.put(key, bytes, PutMode::Create),
        }
    }

    /// The object under `key`; `None` when there is none.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Store::Local(root) => {
                let p = root.join(key);
                match std::fs::read(&p) {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(io_err("cannot read", &p, e)),
                }
            }
            Store::S3(s) => s.get(key),
        }
    }

    /// Every object whose key starts with `prefix` (a directory, ending in
    /// `/`), as (key, size), in no set order.
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        match self {
            Store::Local(root) => {
                let mut out = Vec::new();
                local_walk(root, &root.join(prefix), &mut out)?;
                Ok(out)
            }
            Store::S3(s) => s.list(prefix),
        }
    }

    /// When the newest object under `prefix` was written (Unix seconds).
    pub fn newest(&self, prefix: &str) -> Result<Option<u64>> {
        match self {
            Store::Local(root) => {
                let mut newest = None;
                for (key, _) in self.list(prefix)? {
                    let t = std::fs::metadata(root.join(&key))
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_secs());
                    newest = newest.max(t);
                }
                Ok(newest)
            }
            Store::S3(s) => s.newest(prefix),
        }
    }

    /// Deletes `key`; one that is not there is no error.
    pub fn delete(&self, key: &str) -> Result<()> {
        match self {
            Store::Local(root) => {
                let p = root.join(key);
                match std::fs::remove_file(&p) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(io_err("cannot delete", &p, e)),
                }
            }
            Store::S3(s) => s.delete(key),
        }
    }
}

/// tmp file, flushed, then renamed (or, create-only, linked) into place,
/// and the directory flushed.
fn local_put(root: &Path, key: &str, bytes: &[u8], create_only: bool) -> Result<bool> {
    let dest = root.join(key);
    let tmp_dir = root.join("tmp");
    std::fs::create_dir_all(&tmp_dir).map_err(|e| io_err("cannot create", &tmp_dir, e))?;
    let tmp = tmp_dir.join(format!("{:016x}", fastrand::u64(..)));
    let write = || -> std::io::Result<bool> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let placed = if create_only {
            let linked = std::fs::hard_link(&tmp, &dest);
            std::fs::remove_file(&tmp)?;
            match linked {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
                Err(e) => return Err(e),
            }
        } else {
            std::fs::rename(&tmp, &dest)?;
            true
        };
        if let Some(parent) = dest.parent() {
            std::fs::File::open(parent)?.sync_all()?;
        }
        Ok(placed)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err("cannot write", &dest, e)
    })
}

fn local_walk(root: &Path, dir: &Path, out: &mut Vec<(String, u64)>) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("cannot read", dir, e)),
    };
    for e in entries {
        let e = e.map_err(|e| io_err("cannot read", dir, e))?;
        let t = e
            .file_type()
            .map_err(|err| io_err("cannot read", &e.path(), err))?;
        if t.is_dir() {
            local_walk(root, &e.path(), out)?;
        } else if t.is_file() {
            let size = e.metadata().map_or(0, |m| m.len());
            let path = e.path();
            if let Ok(rel) = path.strip_prefix(root) {
                out.push((rel.to_string_lossy().into_owned(), size));
            }
        }
    }
    Ok(())
}

impl S3Store {
    fn new(cfg: &S3Cfg) -> Result<S3Store> {
        let retry = object_store::RetryConfig {
            max_retries: S3_RETRIES,
            retry_timeout: S3_RETRY_FOR,
            ..Default::default()
        };
        let options = object_store::ClientOptions::new()
            .with_allow_http(cfg.endpoint.starts_with("http://"))
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(60));
        let secrets = [
            cfg.access_key.expose().to_string(),
            cfg.secret_key.expose().to_string(),
        ];
        let client = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(cfg.endpoint.trim_end_matches('/'))
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_access_key_id(cfg.access_key.expose())
            .with_secret_access_key(cfg.secret_key.expose())
            .with_virtual_hosted_style_request(false)
            .with_client_options(options)
            .with_retry(retry)
            .build()
            .map_err(|e| scrub(&secrets, &format!("S3 client for {}: {e}", cfg.endpoint)))?;
        let prefix = cfg.prefix.trim_matches('/');
        Ok(S3Store {
            client: Arc::new(client),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            url: format!("s3://{}/{prefix}", cfg.bucket),
            secrets,
        })
    }

    fn path(&self, key: &str) -> object_store::path::Path {
        object_store::path::Path::from(format!("{}{key}", self.prefix))
    }

    fn err(&self, what: &str, key: &str, e: object_store::Error) -> String {
        scrub(
            &self.secrets,
            &format!("{what} {}{key}: {e}", self.url_slash()),
        )
    }

    fn url_slash(&self) -> String {
        if self.url.ends_with('/') {
            self.url.clone()
        } else {
            format!("{}/", self.url)
        }
    }

    fn put(&self, key: &str, bytes: &[u8], mode: PutMode) -> Result<bool> {
        let (client, path) = (self.client.clone(), self.path(key));
        let payload = PutPayload::from(bytes.to_vec());
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        match block(async move { client.put_opts(&path, payload, opts).await })? {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(self.err("cannot write", key, e)),
        }
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let (client, path) = (self.client.clone(), self.path(key));
        let got = block(async move {
            match client.get(&path).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        got.map(|b| b.map(|b| b.to_vec()))
            .map_err(|e| self.err("cannot read", key, e))
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        use futures_util::StreamExt;
        let client = self.client.clone();
        let path = self.path(prefix.trim_end_matches('/'));
        let all = block(async move {
            let mut out = Vec::new();
            let mut s = client.list(Some(&path));
            while let Some(m) = s.next().await {
                out.push(m?);
            }
            Ok::<_, object_store::Error>(out)
        })?
        .map_err(|e| self.err("cannot list", prefix, e))?;
        Ok(all
            .into_iter()
            .filter_map(|m| {
                let k = m.location.as_ref().strip_prefix(&self.prefix)?.to_string();
                Some((k, m.size))
            })
            .collect())
    }

    fn newest(&self, prefix: &str) -> Result<Option<u64>> {
        use futures_util::StreamExt;
        let client = self.client.clone();
        let path = self.path(prefix.trim_end_matches('/'));
        block(async move {
            let mut newest: Option<i64> = None;
            let mut s = client.list(Some(&path));
            while let Some(m) = s.next().await {
                newest = newest.max(Some(m?.last_modified.timestamp()));
            }
            Ok::<_, object_store::Error>(newest.map(|t| t.max(0) as u64))
        })?
        .map_err(|e| self.err("cannot list", prefix, e))
    }

    fn delete(&self, key: &str) -> Result<()> {
        let (client, path) = (self.client.clone(), self.path(key));
        match block(async move { client.delete(&path).await })? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("cannot delete", key, e)),
        }
    }
}

/// `text` with every secret value replaced: an S3 error may quote the
/// request it refused.
fn scrub(secrets: &[String], text: &str) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(s.as_str(), "[redacted]");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_reach_a_message() {
        let s = [
            "AKIAEXAMPLEKEY".to_string(),
            "s3cr3t/with+chars".to_string(),
        ];
        let m = scrub(&s, "refused AKIAEXAMPLEKEY signed with s3cr3t/with+chars");
        assert_eq!(m, "refused [redacted] signed with [redacted]");
    }

    #[test]
    fn local_create_only_put_refuses_a_second_writer() {
        let root = std::env::temp_dir().join(format!("centinela-store-{}", fastrand::u64(..)));
        let st = Store::Local(Arc::new(root.clone()));
        assert!(st.put_new("locks/exclusive", b"one").unwrap());
        assert!(!st.put_new("locks/exclusive", b"two").unwrap());
        assert_eq!(st.get("locks/exclusive").unwrap().unwrap(), b"one");
        st.put("a/b", b"x").unwrap();
        let mut l = st.list("a/").unwrap();
        l.sort();
        assert_eq!(l, vec![("a/b".to_string(), 1)]);
        st.delete("a/b").unwrap();
        st.delete("a/b").unwrap();
        assert!(st.get("a/b").unwrap().is_none());
        let _ = std::fs::remove_dir_all(root);
    }
}
