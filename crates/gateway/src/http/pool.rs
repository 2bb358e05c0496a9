//! Keep-alive HTTP/1.1 connections to one server, reused last in, first out.
//!
//! Each [`crate::balance::server::Server`] owns one pool, so a request finds its
//! connections without hashing or a shared lock across servers. A
//! connection goes back to the pool when its response body has ended
//! cleanly ([`crate::http::client::UpBody`]); one whose body was dropped half way,
//! or that was upgraded, is closed. An idle connection the server has
//! closed is seen at checkout (it reads as end of file) and dropped.
//!
//! The pool also knows every open connection it made, idle or in use, by a
//! second handle on its socket: [`Pool::abort`] shuts them all down when
//! the server is marked down or its instance fails liveness, so that the
//! requests waiting on it end at once instead of at their timeout. That
//! costs a `dup` per connection, nothing per request.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::Response;
use tokio::time::Instant;

use crate::http::body::ReqBody;
use crate::http::client::{Conn, ConnectError, Error, RequestHead, Timeouts, Tls, UpBody};

/// Idle connections kept per server at most.
const MAX_IDLE: usize = 1024;

#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<Vec<(Conn, Instant)>>,
    /// The upstream's idle timeout, as last used by `send`, in ms.
    idle_ms: AtomicU64,
    /// `[upstream.X] tls`: how new connections speak TLS.
    tls: arc_swap::ArcSwapOption<Tls>,
    /// Every open connection made here, idle or in use: a second handle
    /// on its socket, which the connection itself holds the only strong
    /// reference to (so it closes with the connection).
    open: Mutex<Vec<Weak<std::net::TcpStream>>>,
    /// How many times the pool was aborted: a request that sees it change
    /// while it waited knows why its connection failed.
    aborts: AtomicU64,
}

/// Why a request could not be sent.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made: nothing was sent.
    Connect(ConnectError),
    /// The connection failed after the request was (maybe partly) sent.
    Failed(Error),
    /// The pool was aborted while the request waited: the server was marked
    /// down or failed liveness. Whatever reached it is lost with it.
    Aborted,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Conn, Instant)>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives back a connection whose exchange has ended cleanly.
    pub fn put(&self, conn: Conn) {
        let now = Instant::now();
        let mut idle = self.lock();
        self.expire(&mut idle, now);
        if idle.len() < MAX_IDLE {
            idle.push((conn, now));
        }
    }

    /// Closes the connections idle for longer than the upstream's idle
    /// timeout. Called by `put`, and on a timer for pools nobody uses.
    pub fn reap(&self) {
        let mut idle = self.lock();
        self.expire(&mut idle, Instant::now());
    }

    fn expire(&self, idle: &mut Vec<(Conn, Instant)>, now: Instant) {
        let timeout = Duration::from_millis(self.idle_ms.load(Ordering::Relaxed));
        // The oldest are at the front.
        let expired = idle
            .iter()
            .take_while(|(_, since)| now.duration_since(*since) >= timeout)
            .count();
        if expired > 0 {
            idle.drain(..expired);
        }
    }

    /// Sets how new connections speak TLS; idle connections made the old
    /// way are closed when it changes.
    pub fn set_tls(&self, tls: Option<Arc<Tls>>) {
        let old = self.tls.load();
        let same = match (&*old, &tls) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        if !same {
            self.tls.store(tls);
            self.lock().clear();
        }
    }

    /// How new connections speak TLS, if they do.
    pub fn tls(&self) -> Option<Arc<Tls>> {
        self.tls.load_full()
    }

    /// Opens a new connection to `addr`, with TLS when the upstream has it.
    pub fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<Conn, ConnectError>> + Send + 'static {
        Conn::connect(addr, timeout, self.tls.load_full())
    }

    /// Ends every connection to the server at once, idle or in use: the
    /// requests waiting on them fail with [`SendError::Aborted`] (or, past
    /// the response head, see their body cut). Returns how many were open.
    pub fn abort(&self) -> usize {
        self.aborts.fetch_add(1, Ordering::SeqCst);
        self.lock().clear();
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut ended = 0;
        for sock in open.iter().filter_map(Weak::upgrade) {
            let _ = sock.shutdown(std::net::Shutdown::Both);
            ended += 1;
        }
        ended
    }

    /// Enters a new connection among the open ones (and forgets the closed
    /// ones). Without a second handle (out of file descriptors) it cannot
    /// be aborted, only timed out.
    fn register(&self, conn: &mut Conn) {
        let Ok(fd) = conn.tcp().as_fd().try_clone_to_owned() else {
            return;
        };
        let sock = Arc::new(std::net::TcpStream::from(fd));
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|w| w.strong_count() > 0);
        open.push(Arc::downgrade(&sock));
        conn.dup = Some(sock);
    }

    /// Idle connections kept.
    pub fn idle_count(&self) -> usize {
        self.lock().len()
    }

    /// The most recently used idle connection that is still open.
    pub(crate) fn checkout(&self, idle_timeout: Duration) -> Option<Conn> {
        loop {
            let (conn, since) = self.lock().pop()?;
            if since.elapsed() < idle_timeout && conn.is_usable() {
                return Some(conn);
            }
        }
    }

    /// Sends a request on a pooled connection or a new one and reads the
    /// response head. The response body gives its connection back to this
    /// pool when it ends cleanly.
    ///
    /// A pooled connection that the server closed just as it was taken
    /// (nothing at all came back) is not counted as a failure: a request
    /// whose body can be sent again (`replay`) goes out on a new connection.
    // Inline: the future is then built in place in the request's own, not
    // built apart and copied into it (measured: a few hundred bytes of
    // copies per request).
    #[inline]
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        head: &RequestHead<'_>,
        body: ReqBody,
        replay: bool,
        t: &Timeouts,
    ) -> Result<Response<UpBody>, SendError> {
        self.idle_ms
            .store(t.pool_idle.as_millis() as u64, Ordering::Relaxed);
        let aborts = self.aborts.load(Ordering::SeqCst);
        let aborted = || self.aborts.load(Ordering::SeqCst) != aborts;
        let mut body = body;
        loop {
            // Not a `(conn, again)` tuple: past 128 bytes, every move of it
            // is a call to memcpy.
            let again;
            let conn = match self.checkout(t.pool_idle) {
                Some(c) => {
                    again = replay.then(|| body.try_clone()).flatten();
                    c
                }
                None => {
                    let mut conn = self
                        .connect(addr, t.connect)
                        .await
                        .map_err(SendError::Connect)?;
                    self.register(&mut conn);
                    // Aborted while it connected: it was not shut down,
                    // and must not be waited on. (An idle connection
                    // checked out was open, so shut down by an abort.)
                    if aborted() {
                        return Err(SendError::Aborted);
                    }
                    again = None;
                    conn
                }
            };
            match conn.send(head, body, Some(self.clone()), t).await {
                Ok(resp) => return Ok(resp),
                Err(_) if aborted() => return Err(SendError::Aborted),
                Err(Error::Closed(e)) => match again {
                    Some(b) => body = b,
                    None => return Err(SendError::Failed(Error::Closed(e))),
                },
                Err(e) => return Err(SendError::Failed(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::client::script::scripted;
    use centinela_testkit::TestServer;
    use http::{HeaderMap, Method};
    use http_body_util::BodyExt;

    async fn get(
        pool: &Arc<Pool>,
        addr: SocketAddr,
        idle: Duration,
        replay: bool,
    ) -> Result<(), SendError> {
        let headers = HeaderMap::new();
        let head = RequestHead {
            method: &Method::GET,
            target: "/",
            headers: &headers,
            rewrite: &crate::http::headers::Rewrite::default(),
            host: b"test",
        };
        let t = Timeouts {
            connect: Duration::from_secs(1),
            pool_idle: idle,
            head: Duration::from_secs(5),
            body_idle: Duration::from_secs(5),
        };
        let resp = pool.send(addr, &head, ReqBody::Empty, replay, &t).await?;
        assert_eq!(resp.status(), 200);
        // Reading the body to its end gives the connection back.
        let _ = resp.into_body().collect().await.unwrap();
        Ok(())
    }

    #[tokio::test]
    async fn reuses_a_connection_until_it_has_been_idle_too_long() {
        let server = TestServer::ok().await;
        let pool = Arc::new(Pool::default());
        let idle = Duration::from_secs(60);
        for _ in 0..5 {
            get(&pool, server.addr, idle, true).await.unwrap();
        }
        assert_eq!(
            server.conns.load(Ordering::Relaxed),
            1,
            "five requests in a row share one connection"
        );
        assert_eq!(pool.lock().len(), 1);
        // Idle past the timeout (here: any idle time is too long): not
        // reused, a new connection is made, and the expired one is dropped.
        get(&pool, server.addr, Duration::ZERO, true).await.unwrap();
        assert_eq!(server.conns.load(Ordering::Relaxed), 2);
        assert_eq!(pool.lock().len(), 1);
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    #[tokio::test]
    async fn reaping_closes_idle_connections_nobody_takes() {
        let server = TestServer::ok().await;
        let pool = Arc::new(Pool::default());
        get(&pool, server.addr, Duration::from_secs(60), true)
            .await
            .unwrap();
        pool.reap();
        assert_eq!(pool.idle_count(), 1, "not idle for long yet");
        // Idle past a zero timeout: the reaper closes it, with no request.
        get(&pool, server.addr, Duration::ZERO, true).await.unwrap();
        assert_eq!(pool.idle_count(), 1);
        pool.reap();
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn an_idle_connection_closed_by_the_server_is_not_used_again() {
        let (addr, accepted) = scripted(vec![(OK, true)]).await;
        let pool = Arc::new(Pool::default());
        let idle = Duration::from_secs(60);
        get(&pool, addr, idle, false).await.unwrap();
        // The close is seen once the runtime has read the event.
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.lock().first().is_some_and(|(c, _)| c.is_usable()) {
            assert!(Instant::now() < deadline, "the close was never seen");
            tokio::task::yield_now().await;
        }
        // Not even a non-idempotent request is lost: the closed connection
        // is skipped, not tried.
        get(&pool, addr, idle, false).await.unwrap();
        assert_eq!(accepted.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_request_lost_on_a_pooled_connection_is_replayed_only_when_allowed() {
        // Each connection answers one request and drops the next unanswered,
        // as a server closing an idle connection just as it is reused.
        let (addr, accepted) = scripted(vec![(OK, false), (b"", true)]).await;
        let pool = Arc::new(Pool::default());
        let idle = Duration::from_secs(60);
        get(&pool, addr, idle, true).await.unwrap();
        get(&pool, addr, idle, true).await.unwrap();
        assert_eq!(
            accepted.load(Ordering::Relaxed),
            2,
            "replayed on a new connection"
        );
        match get(&pool, addr, idle, false).await {
            Err(SendError::Failed(Error::Closed(_))) => {}
            other => panic!("a request that may not be replayed fails, got {other:?}"),
        }
        assert_eq!(accepted.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn connect_errors_say_so() {
        let pool = Arc::new(Pool::default());
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        match get(&pool, addr, Duration::from_secs(1), true).await {
            Err(SendError::Connect(e)) => {
                assert!(e.message.contains(&addr.to_string()), "{}", e.message);
                assert!(!e.local, "a refused connection is the server's");
            }
            other => panic!("expected a connect error, got {other:?}"),
        }
    }
}
