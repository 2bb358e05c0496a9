//! Uptime probes: one task per `[[probe]]`, started at a random point of
//! its first interval and jittered by up to 10% after, so that probes do
//! not run in step. Each result feeds the figures (alerts, history) and
//! the `centinela_probe_*` metrics.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use centinela_config::probe::ProbeTarget;
use centinela_config::UptimeProbe;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::expo::{Exposition, Kind};
use crate::figures::{Figures, ProbeFigures, Source};
use crate::Collect;

/// The last result of a probe.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub checked: bool,
    pub up: bool,
    pub duration: f64,
    pub failures: u32,
    /// Why the last check failed.
    pub error: Option<String>,
    /// Unix milliseconds of the last check.
    pub at: u64,
    /// HTTPS: when the server's certificate expires (Unix seconds), as of
    /// the last handshake that verified it.
    pub not_after: Option<i64>,
}

impl Outcome {
    /// Seconds until the certificate expires (negative once it has).
    pub fn tls_expiry(&self, now_ms: u64) -> Option<f64> {
        self.not_after.map(|t| t as f64 - now_ms as f64 / 1000.0)
    }
}

struct Running {
    probe: UptimeProbe,
    last: Arc<Mutex<Outcome>>,
    task: JoinHandle<()>,
}

/// The running probes.
#[derive(Default)]
pub struct Probes {
    running: Mutex<Vec<Running>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Probes {
    /// Runs `list`: probes that keep their name and settings keep running
    /// (and their last result); the others are stopped or started.
    pub fn apply(&self, list: &[UptimeProbe]) {
        let mut running = lock(&self.running);
        let mut old: Vec<Running> = std::mem::take(&mut *running);
        for p in list {
            match old.iter().position(|r| r.probe == *p) {
                Some(i) => running.push(old.swap_remove(i)),
                None => {
                    let last = Arc::new(Mutex::new(Outcome::default()));
                    let task = tokio::spawn(run(p.clone(), last.clone()));
                    running.push(Running {
                        probe: p.clone(),
                        last,
                        task,
                    });
                }
            }
        }
        for r in old {
            r.task.abort();
        }
    }

    /// Every probe's last result.
    pub fn results(&self) -> Vec<(String, Outcome)> {
        lock(&self.running)
            .iter()
            .map(|r| (r.probe.name.clone(), lock(&r.last).clone()))
            .collect()
    }

    /// `/-/health/detailed`'s probes: healthy while none has failed its
    /// last check.
    pub fn health(&self, uptime: impl Fn(&str) -> Value) -> (bool, Value) {
        let mut ok = true;
        let now = crate::observer::now_ms();
        let list: Vec<Value> = self
            .results()
            .into_iter()
            .map(|(name, r)| {
                ok &= !r.checked || r.up;
                json!({
                    "name": name,
                    "checked": r.checked,
                    "up": r.up,
                    "duration_seconds": r.duration,
                    "consecutive_failures": r.failures,
                    "error": r.error,
                    "last_check": (r.at > 0).then(|| crate::notify::rfc3339(r.at)),
                    "uptime": uptime(&name),
                    "tls_expiry_seconds": r.tls_expiry(now).map(f64::round),
                    "certificate_not_after": r.not_after.map(|t| crate::notify::rfc3339(t.max(0) as u64 * 1000)),
                })
            })
            .collect();
        (ok, Value::Array(list))
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        for r in lock(&self.running).drain(..) {
            r.task.abort();
        }
    }
}

async fn run(p: UptimeProbe, last: Arc<Mutex<Outcome>>) {
    let interval = p.interval.as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(interval * fastrand::f64())).await;
    loop {
        let started = Instant::now();
        let mut not_after = None;
        let outcome = tokio::time::timeout(p.timeout, check(&p, &mut not_after))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", p.timeout)));
        let duration = started.elapsed().as_secs_f64();
        {
            let mut r = lock(&last);
            r.checked = true;
            r.duration = duration;
            r.at = crate::observer::now_ms();
            if not_after.is_some() {
                r.not_after = not_after;
            }
            match outcome {
                Ok(()) => {
                    if !r.up && r.failures > 0 {
                        tracing::info!(probe = %p.name, "Probe passes again");
                    }
                    r.up = true;
                    r.failures = 0;
                    r.error = None;
                }
                Err(e) => {
                    if r.failures == 0 {
                        tracing::warn!(probe = %p.name, error = %e, "Probe failed");
                    }
                    r.up = false;
                    r.failures += 1;
                    r.error = Some(e);
                }
            }
        }
        let jitter = 1.0 + (fastrand::f64() - 0.5) * 0.2;
        tokio::time::sleep(Duration::from_secs_f64(interval * jitter)).await;
    }
}

/// One check. An HTTPS check sets `not_after` once the handshake has
/// verified the server's certificate.
async fn check(p: &UptimeProbe, not_after: &mut Option<i64>) -> Result<(), String> {
    match &p.target {
        ProbeTarget::Tcp { host, port } => {
            TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(|e| format!("connect: {}", e.kind()))?;
            Ok(())
        }
        ProbeTarget::Http {
            host,
            port,
            path,
            tls,
        } => {
            let s = TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(|e| format!("connect: {}", e.kind()))?;
            let default_port = if *tls { 443 } else { 80 };
            let authority = if *port == default_port {
                host.clone()
            } else if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            if *tls {
                let cfg = centinela_tls::client_config(p.ca.as_deref())?;
                let s = centinela_tls::connect(s, host, cfg).await?;
                *not_after = centinela_tls::peer_validity(&s).map(|v| v.not_after);
                exchange(s, p, path, &authority).await
            } else {
                exchange(s, p, path, &authority).await
            }
        }
    }
}

/// `GET` over an open connection, and the answer judged.
async fn exchange<S>(mut s: S, p: &UptimeProbe, path: &str, authority: &str) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: centinela-probe/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send: {}", e.kind()))?;
    // The head and up to 64 KiB of body are enough to judge.
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    while buf.len() < 64 * 1024 + 16 * 1024 {
        let n = match s.read(&mut chunk).await {
            Ok(n) => n,
            // A TLS server that closes without close_notify: what came
            // before is still judged.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => 0,
            Err(e) => return Err(format!("read: {}", e.kind())),
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(&buf) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err("not an HTTP response".into()),
    };
    let status = resp.code.unwrap_or(0);
    if !p.expect_status.contains(status) {
        return Err(format!("status {status}"));
    }
    if let Some(want) = &p.expect_body {
        // The body's first 64 KiB as received: with chunked framing, a
        // match split by a chunk boundary is missed.
        let body = &buf[head_len..];
        if memchr::memmem::find(body, want.as_bytes()).is_none() {
            return Err(format!("the body does not contain {want:?}"));
        }
    }
    Ok(())
}

impl Source for Probes {
    fn figures(&self, out: &mut Figures) {
        let now = crate::observer::now_ms();
        for (name, r) in self.results() {
            if r.checked {
                out.probes.push(ProbeFigures {
                    name,
                    up: r.up,
                    duration: r.duration,
                    failures: r.failures,
                    tls_expiry: r.tls_expiry(now),
                });
            }
        }
    }
}

impl Collect for Probes {
    fn collect(&self, out: &mut Exposition) {
        let results = self.results();
        out.family(
            "centinela_probe_up",
            "1 when the probe's last check passed, 0 when it failed.",
            Kind::Gauge,
        );
        for (name, r) in results.iter().filter(|(_, r)| r.checked) {
            out.gauge(&[("probe", name)], f64::from(u8::from(r.up)));
        }
        out.family(
            "centinela_probe_duration_seconds",
            "How long the probe's last check took.",
            Kind::Gauge,
        );
        for (name, r) in results.iter().filter(|(_, r)| r.checked) {
            out.gauge(&[("probe", name)], r.duration);
        }
        out.family(
            "centinela_probe_tls_expiry_seconds",
            "Seconds until the certificate of an HTTPS probe's server expires (negative once it has).",
            Kind::Gauge,
        );
        let now = crate::observer::now_ms();
        for (name, r) in &results {
            if let Some(s) = r.tls_expiry(now) {
                out.gauge(&[("probe", name)], s.round());
            }
        }
    }
}
