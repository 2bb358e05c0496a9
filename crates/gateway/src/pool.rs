//! Keep-alive HTTP/1.1 connections to one server, reused last in, first out.
//!
//! Each [`crate::server::Server`] owns one pool, so a request finds its
//! connections without hashing or a shared lock across servers. A
//! connection goes back to the pool when its response body has ended
//! ([`crate::body::RespBody`]); one whose body was dropped half way, or that
//! was upgraded, is closed. A request that could not be written on a pooled
//! connection (the server had just closed it) is sent again on another:
//! nothing of it reached the server.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::ReqBody;

/// Idle connections kept per server at most.
const MAX_IDLE: usize = 1024;

/// A connection to a server, ready for one request.
pub type Conn = SendRequest<ReqBody>;

#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<Vec<(Conn, Instant)>>,
}

/// Why a request could not be sent.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made: nothing was sent.
    Connect(String),
    /// The connection failed after the request was (maybe partly) sent.
    Failed(hyper::Error),
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Conn, Instant)>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives back a connection whose exchange has ended.
    pub fn put(&self, conn: Conn) {
        if conn.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE {
            idle.push((conn, Instant::now()));
        }
    }

    /// The most recently used idle connection that is still open, ready
    /// for a request.
    async fn checkout(&self, idle_timeout: Duration) -> Option<Conn> {
        loop {
            let (mut conn, since) = self.lock().pop()?;
            if conn.is_closed() || since.elapsed() >= idle_timeout {
                continue;
            }
            // It may still be finishing the previous exchange.
            if conn.is_ready() || conn.ready().await.is_ok() {
                return Some(conn);
            }
        }
    }

    /// Sends `req` on a pooled connection or a new one. On success the
    /// connection comes back with the response: put it back once the
    /// response body has ended.
    pub async fn send(
        &self,
        addr: SocketAddr,
        req: Request<ReqBody>,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Result<(Response<Incoming>, Conn), SendError> {
        let mut req = req;
        loop {
            let (mut conn, pooled) = match self.checkout(idle_timeout).await {
                Some(c) => (c, true),
                None => (connect(addr, connect_timeout).await?, false),
            };
            match conn.try_send_request(req).await {
                Ok(resp) => return Ok((resp, conn)),
                Err(mut e) => match e.take_message() {
                    // Not written: a pooled connection closed under it.
                    Some(r) if pooled => req = r,
                    _ => return Err(SendError::Failed(e.into_error())),
                },
            }
        }
    }
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, SendError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(SendError::Connect(format!("connect to {addr}: {e}"))),
        Err(_) => {
            return Err(SendError::Connect(format!(
                "connect to {addr}: timed out after {timeout:?}"
            )))
        }
    };
    let _ = stream.set_nodelay(true);
    let (conn, task) = http1::Builder::new()
        // See `listener::builder`: flat writes are cheaper for small requests.
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| SendError::Connect(format!("handshake with {addr}: {e}")))?;
    tokio::spawn(async move {
        let _ = task.with_upgrades().await;
    });
    Ok(conn)
}
