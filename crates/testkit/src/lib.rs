//! Test support for centinela: real servers on `127.0.0.1:0`, child
//! processes that die with the test, an HTTP client, and polling with a
//! deadline instead of sleeps.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

pub mod pg;
pub mod s3;
pub mod tls;

/// Polls `check` until it returns true or `deadline` passes.
pub async fn eventually<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Asserts that `$cond` (an async expression) becomes true within `$secs`.
#[macro_export]
macro_rules! assert_eventually {
    ($secs:expr, $cond:expr, $($msg:tt)+) => {
        assert!(
            $crate::eventually(std::time::Duration::from_secs_f64($secs as f64), || async { $cond }).await,
            $($msg)+
        )
    };
}

/// Path of a binary built in this workspace (same profile as the tests).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not found: build it first (`cargo build --bins` or run the tests with `cargo nextest run --workspace`)",
        p.display()
    );
    p
}

/// A child process killed (SIGKILL) when dropped. Its stdout and stderr
/// lines are collected and can be awaited.
pub struct Proc {
    pub child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
    pub seen: Vec<String>,
}

impl Proc {
    pub fn spawn(program: &std::path::Path, args: &[&str]) -> Proc {
        Self::spawn_env(program, args, &[])
    }

    /// Like `spawn`, with extra environment variables.
    pub fn spawn_env(program: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Proc {
        Self::spawn_with(program, args, env, false)
    }

    /// Like `spawn`, in a process group of its own, so that
    /// [`Proc::kill_group`] also ends what it started (a browser).
    pub fn spawn_group(program: &std::path::Path, args: &[&str]) -> Proc {
        Self::spawn_with(program, args, &[], true)
    }

    /// SIGKILL to the process group of a [`Proc::spawn_group`] process.
    pub fn kill_group(&self) {
        let pid = self.pid();
        if pid > 0 {
            send_signal(-pid, libc::SIGKILL);
        }
    }

    fn spawn_with(
        program: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
        group: bool,
    ) -> Proc {
        let mut cmd = tokio::process::Command::new(program);
        if group {
            cmd.process_group(0);
        }
        cmd.envs(env.iter().copied());
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .env("RUST_LOG", "info");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        let (tx, rx) = mpsc::unbounded_channel();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        for stream in [
            Box::new(out) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(err),
        ] {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            });
        }
        Proc {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for an output line containing `needle`, returns it.
    pub async fn wait_line(&mut self, needle: &str, deadline: Duration) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let end = tokio::time::Instant::now() + deadline;
        loop {
            match tokio::time::timeout_at(end, self.lines.recv()).await {
                Ok(Some(l)) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Ok(None) => panic!(
                    "process exited before printing {needle:?}; output:\n{}",
                    self.seen.join("\n")
                ),
                Err(_) => panic!(
                    "no line with {needle:?} within {deadline:?}; output:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Collects whatever output arrived so far.
    pub fn drain(&mut self) -> &[String] {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        &self.seen
    }

    pub fn pid(&self) -> i32 {
        self.child.id().map(|p| p as i32).unwrap_or(-1)
    }

    pub fn signal(&self, sig: i32) {
        let pid = self.pid();
        assert!(pid > 0, "process already reaped");
        let rc = send_signal(pid, sig);
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    pub async fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(deadline, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("process did not exit within {deadline:?}"))
            .expect("wait")
    }
}

/// The one `unsafe` in the workspace: tests must send SIGSTOP, SIGHUP and
/// SIGTERM to child processes, and std has no API for signals.
fn send_signal(pid: i32, sig: i32) -> i32 {
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    unsafe { libc::kill(pid, sig) }
}

/// `n` consecutive free ports on 127.0.0.1, for configs that need a port
/// range (services). Taken from 20000-32000, below Linux's ephemeral range
/// (32768-60999), so that no outgoing connection of a concurrent test grabs
/// one between this check and the moment the service binds it.
/// `n` incompressible bytes (xorshift64 from `seed`): every chunk of them
/// is new to a repository.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn free_port_range(n: u16) -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = u64::from(std::process::id()).wrapping_mul(7919)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
    for attempt in 0..500u64 {
        let k = NEXT.fetch_add(1, Ordering::Relaxed) + attempt;
        let base =
            20000 + ((seed.wrapping_add(k.wrapping_mul(104729))) % (12000 - u64::from(n))) as u16;
        let taken: Vec<_> = (0..n)
            .map(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)))
            .collect();
        if taken.iter().all(|r| r.is_ok()) {
            return base;
        }
    }
    panic!("no range of {n} free ports found in 20000-32000");
}

/// Is `pid` a live process (a zombie counts as gone)?
pub fn alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Extracts `key=VALUE` from a log line (text format).
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!("{key}="))? + key.len() + 1;
    let rest = &line[start..];
    Some(rest.split_whitespace().next()?.trim_matches('"'))
}

/// A products-api process on an ephemeral port.
pub struct ProductsApi {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl ProductsApi {
    pub async fn spawn(db: &std::path::Path, extra: &[&str]) -> ProductsApi {
        Self::spawn_on("127.0.0.1:0", db, extra).await
    }

    pub async fn spawn_on(listen: &str, db: &std::path::Path, extra: &[&str]) -> ProductsApi {
        let db = db.to_str().expect("utf-8 path");
        let mut args = vec!["--listen", listen, "--db", db];
        args.extend_from_slice(extra);
        let mut proc = Proc::spawn(&bin("products-api"), &args);
        let line = proc
            .wait_line("listening on", Duration::from_secs(20))
            .await;
        let addr = line
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .expect("address in line");
        ProductsApi { proc, addr }
    }
}

/// A throwaway directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "centinela-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Serves one connection of a [`TestServer`].
async fn serve_conn<IO>(io: IO, handler: Handler, hits: Arc<AtomicU64>, addr: SocketAddr)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let handler = handler.clone();
        let hits = hits.clone();
        async move {
            hits.fetch_add(1, Ordering::Relaxed);
            let reply = handler(&req);
            let mut echo = Vec::new();
            for (k, v) in req.headers() {
                echo.push((format!("x-echo-{k}"), v.clone()));
            }
            let path = req.uri().to_string();
            // Read the whole body so the connection stays reusable.
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            if !reply.delay.is_zero() {
                tokio::time::sleep(reply.delay).await;
            }
            let mut resp = Response::new(Full::new(reply.body));
            *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
            let h = resp.headers_mut();
            h.insert("x-served-by", addr.to_string().parse().expect("header"));
            h.insert("x-echo-path", path.parse().expect("header"));
            h.insert(
                "x-echo-body-len",
                body.len().to_string().parse().expect("header"),
            );
            for (k, v) in echo {
                if let Ok(name) = hyper::header::HeaderName::from_bytes(k.as_bytes()) {
                    h.append(name, v);
                }
            }
            Ok::<_, Infallible>(resp)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades()
        .await;
}

/// Base64url without padding (RFC 7515 §2): how tests write JWTs and JWKs.
pub fn b64url(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut s = String::new();
    for c in b.chunks(3) {
        let n = c.iter().fold(0u32, |a, &x| a << 8 | u32::from(x)) << (8 * (3 - c.len()));
        for i in 0..=c.len() {
            s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    s
}

/// A file of the public test suites kept beside the repository
/// (`../shared/testdata/REL`; `CENTINELA_TESTDATA` names another root).
/// Panics, naming where it looked, when it is not there: a test whose
/// data is missing must fail, not pass.
pub fn testdata(rel: &str) -> PathBuf {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(r) = std::env::var("CENTINELA_TESTDATA") {
        roots.push(r.into());
    }
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for a in here.ancestors() {
        roots.push(a.join("shared/testdata"));
    }
    roots.push("/work/shared/testdata".into());
    for r in &roots {
        let p = r.join(rel);
        if p.exists() {
            return p;
        }
    }
    panic!("test data {rel} not found; looked in {roots:?} (set CENTINELA_TESTDATA)");
}

/// What an in-process test server does with a request.
pub type Handler = Arc<dyn Fn(&Request<Incoming>) -> Reply + Send + Sync>;

/// A canned answer, optionally delayed.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
    pub delay: Duration,
}

impl Reply {
    pub fn ok(body: &str) -> Reply {
        Reply {
            status: 200,
            body: Bytes::copy_from_slice(body.as_bytes()),
            delay: Duration::ZERO,
        }
    }
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            body: Bytes::new(),
            delay: Duration::ZERO,
        }
    }
    pub fn delayed(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }
}

/// An in-process HTTP/1.1 server on `127.0.0.1:0` that counts requests and
/// answers every one with `x-served-by: ADDR`. It echoes request headers as
/// `x-echo-NAME` response headers.
pub struct TestServer {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    /// TCP connections accepted.
    pub conns: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start(handler: Handler) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::on(listener, handler)
    }

    pub async fn ok() -> TestServer {
        Self::start(Arc::new(|_| Reply::ok("ok"))).await
    }

    pub fn on(listener: TcpListener, handler: Handler) -> TestServer {
        Self::serve(listener, handler, None)
    }

    /// The same server over TLS (`acceptor`: see [`tls::Leaf`]).
    pub async fn start_tls(handler: Handler, acceptor: tls::TlsAcceptor) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(listener, handler, Some(acceptor))
    }

    fn serve(listener: TcpListener, handler: Handler, tls: Option<tls::TlsAcceptor>) -> TestServer {
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicU64::new(0));
        let conns = Arc::new(AtomicU64::new(0));
        let h2 = hits.clone();
        let c2 = conns.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c2.fetch_add(1, Ordering::Relaxed);
                let handler = handler.clone();
                let hits = h2.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => serve_conn(stream, handler, hits, addr).await,
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                serve_conn(s, handler, hits, addr).await
                            }
                        }
                    }
                });
            }
        });
        TestServer {
            addr,
            hits,
            conns,
            task,
        }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Stops accepting and closes the listening socket.
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http()
}

/// A response read whole.
#[derive(Debug)]
pub struct Got {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Result<Got, String> {
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Got {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

pub async fn get(client: &HttpClient, url: &str) -> Result<Got, String> {
    send(
        client,
        Request::get(url)
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?,
    )
    .await
}

/// A webhook receiver on `127.0.0.1:0`: records every request's path and
/// body, and answers with the next status of `statuses` (200 when they
/// run out), so tests can make deliveries fail first.
pub struct Receiver {
    pub addr: SocketAddr,
    got: Arc<std::sync::Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start(statuses: Vec<u16>) -> Receiver {
        Receiver::serve(statuses, None).await
    }

    /// The same over TLS (https://), with the certificate `tls` presents.
    pub async fn start_tls(statuses: Vec<u16>, tls: tls::TlsAcceptor) -> Receiver {
        Receiver::serve(statuses, Some(tls)).await
    }

    async fn serve(statuses: Vec<u16>, tls: Option<tls::TlsAcceptor>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let got = Arc::new(std::sync::Mutex::new(Vec::new()));
        let statuses = Arc::new(std::sync::Mutex::new(
            statuses
                .into_iter()
                .collect::<std::collections::VecDeque<u16>>(),
        ));
        let g = got.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let g = g.clone();
                let statuses = statuses.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let g = g.clone();
                        let statuses = statuses.clone();
                        async move {
                            let path = req.uri().to_string();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let status = statuses.lock().expect("lock").pop_front().unwrap_or(200);
                            if status < 300 {
                                g.lock()
                                    .expect("lock")
                                    .push((path, String::from_utf8_lossy(&body).into_owned()));
                            }
                            let mut resp = Response::new(Full::new(Bytes::new()));
                            *resp.status_mut() =
                                StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                        }
                        Some(tls) => {
                            if let Ok(s) = tls.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                    }
                });
            }
        });
        Receiver { addr, got, task }
    }

    /// The (path, body) of every request answered with a 2xx, in order.
    pub fn received(&self) -> Vec<(String, String)> {
        self.got.lock().expect("lock").clone()
    }

    /// Waits until `n` requests were answered with a 2xx; their bodies.
    pub async fn wait_for(&self, n: usize, deadline: Duration) -> Vec<String> {
        let ok = eventually(deadline, || async { self.received().len() >= n }).await;
        let got = self.received();
        assert!(
            ok,
            "expected {n} deliveries within {deadline:?}, got {got:?}"
        );
        got.into_iter().map(|(_, b)| b).collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
