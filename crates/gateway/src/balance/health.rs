//! Active health checks: one task per server, jittered, counting consecutive
//! passes and failures against `rise` and `fall`.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use centinela_config::Health as Config;
use http_body_util::Empty;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::http::client::Tls;
use crate::http::io::Stream;

use crate::balance::server::Server;

/// Up/down with the streak counters that move between them.
#[derive(Clone, Copy, Debug)]
pub struct HealthState {
    pub up: bool,
    ok_streak: u32,
    fail_streak: u32,
}

impl HealthState {
    /// Servers start up: a gateway started next to healthy servers serves at once.
    pub fn new() -> Self {
        HealthState {
            up: true,
            ok_streak: 0,
            fail_streak: 0,
        }
    }

    /// Records one check. Returns true when up/down changed.
    pub fn on_check(&mut self, ok: bool, rise: u32, fall: u32) -> bool {
        if ok {
            self.fail_streak = 0;
            self.ok_streak = self.ok_streak.saturating_add(1);
            if !self.up && self.ok_streak >= rise {
                self.up = true;
                return true;
            }
        } else {
            self.ok_streak = 0;
            self.fail_streak = self.fail_streak.saturating_add(1);
            if self.up && self.fail_streak >= fall {
                self.up = false;
                return true;
            }
        }
        false
    }
}

impl Default for HealthState {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs checks for one server until the task is aborted.
pub async fn run(upstream: Arc<str>, server: Arc<Server>, cfg: Config) {
    // Spread the first checks so that servers are not probed in lockstep.
    let first = cfg.interval.mul_f64(fastrand::f64() * 0.1);
    tokio::time::sleep(first).await;
    loop {
        match check(server.addr, &cfg, server.pool.tls().as_deref()).await {
            // Out of file descriptors or buffers here: says nothing of the
            // server.
            Err(Failed::Local(e)) => {
                tracing::warn!(upstream = &*upstream, server = %server.addr, error = %e, "Health check not run: out of local resources");
            }
            result => {
                let err = result.err().map(|e| e.to_string());
                server.on_health_check(
                    &upstream,
                    err.is_none(),
                    cfg.rise,
                    cfg.fall,
                    err.as_deref(),
                );
            }
        }
        let jitter = cfg.interval.mul_f64(fastrand::f64() * 0.1);
        tokio::time::sleep(cfg.interval - jitter / 2 + jitter).await;
    }
}

/// Why a check failed.
#[derive(Debug)]
pub enum Failed {
    /// The server failed it.
    Server(String),
    /// This host could not run it (EMFILE, ENFILE, ENOBUFS...).
    Local(String),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Server(e) | Failed::Local(e) => f.write_str(e),
        }
    }
}

impl From<String> for Failed {
    fn from(e: String) -> Failed {
        Failed::Server(e)
    }
}

/// One check: a fresh connection and `GET path`, expecting a status in
/// `expect_status`, all within `timeout`.
pub async fn check(addr: SocketAddr, cfg: &Config, tls: Option<&Tls>) -> Result<(), Failed> {
    match tokio::time::timeout(cfg.timeout, check_inner(addr, cfg, tls)).await {
        Ok(r) => r,
        Err(_) => Err(Failed::Server(format!("timed out after {:?}", cfg.timeout))),
    }
}

async fn check_inner(addr: SocketAddr, cfg: &Config, tls: Option<&Tls>) -> Result<(), Failed> {
    let stream = TcpStream::connect(addr).await.map_err(|e| {
        if crate::http::client::is_local_error(&e) {
            Failed::Local(format!("connect: {e}"))
        } else {
            Failed::Server(format!("connect: {e}"))
        }
    })?;
    let _ = stream.set_nodelay(true);
    let stream = match tls {
        None => Stream::Tcp(stream),
        Some(tls) => {
            let name = tls.name.clone().unwrap_or_else(|| addr.ip().into());
            match tls.connector.connect(name, stream).await {
                Ok(s) => Stream::TlsClient(Box::new(s)),
                Err(e) => return Err(Failed::Server(format!("TLS: {e}"))),
            }
        }
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let host = cfg.host.clone().unwrap_or_else(|| addr.to_string());
    let req = Request::get(&cfg.path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "centinela-health-check")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    conn.abort();
    let status = resp.status().as_u16();
    if cfg.expect_status.contains(status) {
        Ok(())
    } else {
        Err(Failed::Server(format!("unexpected status {status}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_and_fall_thresholds() {
        let mut h = HealthState::new();
        assert!(h.up);
        assert!(!h.on_check(false, 2, 3));
        assert!(!h.on_check(false, 2, 3));
        // A pass in between resets the failure streak.
        assert!(!h.on_check(true, 2, 3));
        assert!(!h.on_check(false, 2, 3));
        assert!(!h.on_check(false, 2, 3));
        assert!(h.on_check(false, 2, 3));
        assert!(!h.up);
        assert!(!h.on_check(true, 2, 3));
        assert!(h.on_check(true, 2, 3));
        assert!(h.up);
    }
}
