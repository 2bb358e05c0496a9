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
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// The upstream's idle timeout, as last used by `send`, in ms.
    idle_ms: AtomicU64,
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
        let now = Instant::now();
        let timeout = Duration::from_millis(self.idle_ms.load(Ordering::Relaxed));
        let mut idle = self.lock();
        // The oldest are at the front: close those idle for too long.
        let expired = idle
            .iter()
            .take_while(|(_, since)| now.duration_since(*since) >= timeout)
            .count();
        if expired > 0 {
            idle.drain(..expired);
        }
        if idle.len() < MAX_IDLE {
            idle.push((conn, now));
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
        self.idle_ms
            .store(idle_timeout.as_millis() as u64, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;
    use centinela_testkit::TestServer;
    use http_body_util::BodyExt;

    async fn get(pool: &Pool, addr: SocketAddr, idle: Duration) -> Conn {
        let req = Request::get("/").body(ReqBody::Empty).unwrap();
        let (resp, conn) = pool
            .send(addr, req, Duration::from_secs(1), idle)
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let _ = resp.into_body().collect().await.unwrap();
        conn
    }

    #[tokio::test]
    async fn reuses_a_connection_until_it_has_been_idle_too_long() {
        let server = TestServer::ok().await;
        let pool = Pool::default();
        let idle = Duration::from_secs(60);
        for _ in 0..5 {
            let c = get(&pool, server.addr, idle).await;
            pool.put(c);
        }
        assert_eq!(
            server.conns.load(std::sync::atomic::Ordering::Relaxed),
            1,
            "five requests in a row share one connection"
        );
        // Idle past the timeout (here: any idle time is too long): not
        // reused, a new connection is made, and the expired one is dropped.
        let c = get(&pool, server.addr, Duration::ZERO).await;
        assert_eq!(server.conns.load(std::sync::atomic::Ordering::Relaxed), 2);
        pool.put(c);
        assert_eq!(pool.lock().len(), 1);
    }

    #[tokio::test]
    async fn a_connection_closed_by_the_server_is_not_used_again() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Answers one request per connection, then closes it, as a server
        // that times out idle keep-alive connections does.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = std::sync::Arc::new(AtomicU64::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                });
            }
        });
        let pool = Pool::default();
        let idle = Duration::from_secs(60);
        let c = get(&pool, addr, idle).await;
        pool.put(c);
        // Once the connection is seen closed, it is skipped.
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.lock().first().is_some_and(|(c, _)| !c.is_closed()) {
            assert!(Instant::now() < deadline, "the close was never seen");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let c = get(&pool, addr, idle).await;
        assert_eq!(accepted.load(Ordering::Relaxed), 2);
        pool.put(c);
    }

    #[tokio::test]
    async fn connect_errors_say_so() {
        let pool = Pool::default();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let req = Request::get("/").body(ReqBody::Empty).unwrap();
        match pool
            .send(addr, req, Duration::from_secs(1), Duration::from_secs(1))
            .await
        {
            Err(SendError::Connect(e)) => assert!(e.contains(&addr.to_string()), "{e}"),
            other => panic!("expected a connect error, got {other:?}"),
        }
    }
}
