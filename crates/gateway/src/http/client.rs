//! HTTP/1.1 to servers, driven inline by the request's own task.
//!
//! hyper's client runs every connection as a task of its own and hands
//! requests and responses to it over channels. A proxy waits for the answer
//! anyway, so that costs two extra task switches, a channel and a body
//! channel per request. Here the request's task writes the request head
//! (with a small body) in one `send`, parses the response head with
//! httparse, and streams the response body straight out of the
//! connection's read buffer ([`UpBody`]). The connection goes back to its
//! pool when the body has ended cleanly on a keep-alive response.
//!
//! Framing follows RFC 9112 §6: no body for HEAD, 1xx, 204 and 304;
//! `Transfer-Encoding: chunked` (which overrides `Content-Length`); a
//! `Content-Length`; otherwise the body runs to the end of the connection,
//! which is then not reused.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::{Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http::io::Stream;

use crate::http::body::ReqBody;
use crate::http::codec::{self, BodyError, Decoder, InBuf, Spans, MAX_HEAD, MIN_READ};
use crate::http::headers::Rewrite;
use crate::http::idle::IdleTimer;
use crate::http::pool::Pool;

/// A body at most this large is sent in the same write as the head.
const INLINE_BODY: usize = 16 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection ended before a single byte of a response came back.
    #[error("connection closed before any response: {0}")]
    Closed(String),
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The server answered something that is not valid HTTP/1.x.
    #[error("invalid response: {0}")]
    Invalid(&'static str),
    /// The server closed the connection in the middle of a response.
    #[error("connection closed before the response ended")]
    Incomplete,
    #[error("reading the client's body: {0}")]
    ClientBody(String),
    /// The client stopped sending its body for `timeouts.body_idle`.
    #[error("the client stopped sending its body")]
    ClientIdle,
    /// The client's body went over the route's `max_body`.
    #[error("the request body is larger than max_body")]
    ClientTooLarge,
    /// The server was too slow: no response head in time, or it stopped
    /// reading the request body or sending the response body.
    #[error("{0}")]
    Timeout(&'static str),
}

/// Why no connection could be made.
#[derive(Debug)]
pub struct ConnectError {
    pub message: String,
    /// The cause is on this host (out of file descriptors, buffers or
    /// ports), not the server: not charged to its health.
    pub local: bool,
}

/// Errors of this host, not of the server it tried to reach.
pub fn is_local_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
    )
}

/// How long an exchange may wait, and on what.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// Idle pooled connections older than this are not reused.
    pub pool_idle: Duration,
    /// For the response head, counted from when the request body has been
    /// sent (a slow upload is not the server's delay).
    pub head: Duration,
    /// For each move of a body, either way.
    pub body_idle: Duration,
}

impl From<BodyError> for Error {
    fn from(e: BodyError) -> Error {
        match e {
            BodyError::Invalid(why) => Error::Invalid(why),
            BodyError::Incomplete => Error::Incomplete,
            BodyError::Io(e) => Error::Io(e),
        }
    }
}

/// A keep-alive connection to one server.
#[derive(Debug)]
pub struct Conn {
    /// A second handle on its socket, by which its pool can shut it down
    /// (see `Pool::abort`); closed with it.
    pub(crate) dup: Option<Arc<std::net::TcpStream>>,
    io: Stream,
    /// Read but not yet consumed; empty between exchanges.
    buf: InBuf,
    /// The request head being written; kept to reuse its allocation.
    wbuf: Vec<u8>,
}

/// What is sent: everything but the body.
pub struct RequestHead<'a> {
    pub method: &'a Method,
    /// Origin form: `/path?query`.
    pub target: &'a str,
    /// The client's headers, written as `rewrite` says; framing headers
    /// in it are replaced.
    pub headers: &'a HeaderMap,
    pub rewrite: &'a Rewrite<'a>,
    /// Sent as `Host` and `X-Forwarded-Host`: the request's checked
    /// authority, or the server's address when the client named none.
    /// Checked bytes: written as they are.
    pub host: &'a [u8],
}

/// Where the response is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Body(Decoder),
    /// `101 Switching Protocols`: the connection now belongs to the upgrade.
    Upgrade,
}

impl Conn {
    /// The socket alone (a CONNECT tunnel: nothing was read from it).
    pub fn into_io(self) -> Stream {
        self.io
    }

    /// Opens a connection to `addr` (with TLS when `tls` is given), the
    /// handshake included in `timeout`.
    pub async fn connect(
        addr: SocketAddr,
        timeout: Duration,
        tls: Option<Arc<Tls>>,
    ) -> Result<Conn, ConnectError> {
        let start = tokio::time::Instant::now();
        let io = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(ConnectError {
                    message: format!("connect to {addr}: {e}"),
                    local: is_local_error(&e),
                })
            }
            Err(_) => {
                return Err(ConnectError {
                    message: format!("connect to {addr}: timed out after {timeout:?}"),
                    local: false,
                })
            }
        };
        let _ = io.set_nodelay(true);
        let io = match tls {
            None => Stream::Tcp(io),
            // Boxed: the handshake's state is large, and would otherwise
            // sit in every request's future, TLS or not.
            Some(tls) => Box::pin(tls_connect(io, addr, tls, start + timeout, timeout)).await?,
        };
        Ok(Conn {
            dup: None,
            io,
            buf: InBuf::default(),
            wbuf: Vec::new(),
        })
    }

    /// The TCP socket under it.
    pub fn tcp(&self) -> &TcpStream {
        self.io.tcp()
    }

    /// Can an idle connection take a request? A server that closed it made
    /// it readable (end of file), as would any byte it sent unasked.
    pub fn is_usable(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // Under TLS too: a close_notify, like any record, makes the socket
        // readable.
        let tcp = self.io.tcp();
        match tcp.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Maybe stale readiness: only "would block" proves it idle.
            Poll::Ready(Ok(())) => matches!(
                tcp.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            ),
        }
    }

    /// Drops what a large body grew, before the connection idles.
    pub fn shrink(&mut self) {
        self.buf.shrink();
        if self.wbuf.capacity() > 4 * MIN_READ {
            self.wbuf = Vec::new();
        }
    }

    /// Sends a request and reads the response head. The response body is
    /// read through the returned [`UpBody`], which owns the connection.
    pub async fn send(
        mut self,
        head: &RequestHead<'_>,
        body: ReqBody,
        pool: Option<Arc<Pool>>,
        t: &Timeouts,
    ) -> Result<Response<UpBody>, Error> {
        let length = match &body {
            ReqBody::Empty | ReqBody::Full(None) => None,
            ReqBody::Full(Some(b)) => Some(b.len() as u64),
            ReqBody::Stream(s) => s.size.exact(),
        };
        let streamed = matches!(body, ReqBody::Stream(_));
        let chunked = streamed && length.is_none();
        encode_head(&mut self.wbuf, head, length, chunked);
        let is_head = head.method == Method::HEAD;
        let mut early = None;
        match body {
            ReqBody::Full(Some(b)) if b.len() <= INLINE_BODY => {
                self.wbuf.extend_from_slice(&b);
                write(&mut self.io, &self.wbuf).await?;
            }
            ReqBody::Empty | ReqBody::Full(None) => write(&mut self.io, &self.wbuf).await?,
            body => {
                write(&mut self.io, &self.wbuf).await?;
                // Boxed: a rare path whose future would otherwise make every
                // request's future larger (and costlier to move).
                early = Box::pin(self.send_body(body, chunked, is_head, t.body_idle)).await?;
            }
        }
        // A response that came before the whole body was sent leaves the
        // connection in an unknown state: it is not reused.
        let sent_all = early.is_none();
        let (status, version, headers, state, keep_alive) = match early {
            Some(Early::Head(parsed)) => parsed,
            // The response timeout starts now that the body has been sent.
            _ => match tokio::time::timeout(t.head, self.read_head(is_head)).await {
                Ok(parsed) => parsed?,
                Err(_) => return Err(Error::Timeout("no response head in time")),
            },
        };
        let mut resp = Response::new(UpBody {
            conn: Some(self),
            state,
            keep_alive: keep_alive && sent_all,
            pool,
            idle: IdleTimer::new(t.body_idle),
        });
        *resp.status_mut() = status;
        *resp.version_mut() = version;
        *resp.headers_mut() = headers;
        Ok(resp)
    }

    /// Reads a response head, skipping interim ones.
    async fn read_head(&mut self, is_head: bool) -> Result<Parsed, Error> {
        let mut scanned = 0;
        loop {
            if let Some(parsed) = next_head(&mut self.buf, &mut scanned, is_head)? {
                return Ok(parsed);
            }
            let got_any = !self.buf.is_empty();
            match self.fill().await {
                Ok(0) if got_any => return Err(Error::Incomplete),
                Ok(0) => return Err(Error::Closed("end of file".into())),
                Ok(_) => {}
                Err(e) if !got_any => return Err(Error::Closed(e.to_string())),
                Err(e) => return Err(Error::Io(e)),
            }
        }
    }

    /// Streams a body that is too large to send with the head, while
    /// watching for a response: a server may answer (say, 413) before it
    /// has read the whole body, or close the connection. `None`: the whole
    /// body was sent.
    async fn send_body(
        &mut self,
        body: ReqBody,
        chunked: bool,
        is_head: bool,
        body_idle: Duration,
    ) -> Result<Option<Early>, Error> {
        let (mut rd, mut wr) = self.io.split();
        let buf = &mut self.buf;
        // A server that stops reading the body is too slow, like one that
        // does not answer.
        let stalled = |_| Error::Timeout("the server stopped reading the request body");
        let mut sending = pin!(async move {
            let mut body = body;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| {
                    if crate::http::body::is_client_idle(&e) {
                        Error::ClientIdle
                    } else if crate::http::body::is_too_large(&e) {
                        Error::ClientTooLarge
                    } else {
                        Error::ClientBody(e.to_string())
                    }
                })?;
                let Ok(mut data) = frame.into_data() else {
                    continue; // trailers of the client's body are dropped
                };
                if data.is_empty() {
                    continue;
                }
                if chunked {
                    let mut line = [0u8; 18];
                    let size = codec::chunk_line(data.len(), &mut line);
                    let mut chain = Buf::chain(size, &mut data).chain(&b"\r\n"[..]);
                    tokio::time::timeout(body_idle, wr.write_all_buf(&mut chain))
                        .await
                        .map_err(stalled)??;
                } else {
                    tokio::time::timeout(body_idle, wr.write_all_buf(&mut data))
                        .await
                        .map_err(stalled)??;
                }
                // Out of TLS's buffer before the next wait on the client.
                tokio::time::timeout(body_idle, wr.flush())
                    .await
                    .map_err(stalled)??;
            }
            if chunked {
                tokio::time::timeout(body_idle, async {
                    wr.write_all(b"0\r\n\r\n").await?;
                    wr.flush().await
                })
                .await
                .map_err(stalled)??;
            }
            Ok::<(), Error>(())
        });
        let mut scanned = 0;
        loop {
            buf.reserve(MIN_READ);
            tokio::select! {
                biased;
                done = &mut sending => return match done {
                    Ok(()) => Ok(None),
                    Err(
                        e @ (Error::ClientBody(_)
                        | Error::ClientIdle
                        | Error::ClientTooLarge
                        | Error::Timeout(_)),
                    ) => Err(e),
                    // The server stopped reading: look for its answer.
                    Err(_) => Ok(Some(Early::Stopped)),
                },
                n = rd.read_buf(&mut **buf) => match n {
                    // Interim (1xx) answers are skipped; a final one ends
                    // the upload.
                    Ok(n) if n > 0 => {
                        if let Some(parsed) = next_head(buf, &mut scanned, is_head)? {
                            return Ok(Some(Early::Head(parsed)));
                        }
                    }
                    _ => return Ok(Some(Early::Stopped)),
                },
            }
        }
    }

    /// Reads more into `buf`: how many bytes came (0 at end of file).
    async fn fill(&mut self) -> io::Result<usize> {
        poll_fn(|cx| self.buf.poll_fill(&mut self.io, cx)).await
    }
}

async fn write(io: &mut Stream, bytes: &[u8]) -> Result<(), Error> {
    // Nothing of a failed first write reached the server.
    let closed = |e: io::Error| match e.kind() {
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => Error::Closed(e.to_string()),
        _ => Error::Io(e),
    };
    io.write_all(bytes).await.map_err(closed)?;
    if io.is_tls() {
        io.flush().await.map_err(closed)?;
    }
    Ok(())
}

/// How a connection to one upstream's servers speaks TLS.
pub struct Tls {
    pub connector: tokio_rustls::TlsConnector,
    /// The name checked in certificates and sent as SNI; `None`: the
    /// server's IP address.
    pub name: Option<rustls_pki_types::ServerName<'static>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("name", &self.name).finish()
    }
}

/// The TLS handshake of a new connection to a server, by `deadline`.
async fn tls_connect(
    io: TcpStream,
    addr: SocketAddr,
    tls: Arc<Tls>,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<Stream, ConnectError> {
    let name = tls.name.clone().unwrap_or_else(|| addr.ip().into());
    let handshake = tls.connector.connect(name, io);
    match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(s)) => Ok(Stream::TlsClient(Box::new(s))),
        Ok(Err(e)) => Err(ConnectError {
            message: format!("TLS to {addr}: {}", tls_error(&e)),
            local: false,
        }),
        Err(_) => Err(ConnectError {
            message: format!("TLS to {addr}: handshake timed out after {timeout:?}"),
            local: false,
        }),
    }
}

/// A handshake failure in words: rustls's reason when it has one.
fn tls_error(e: &io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => tls.to_string(),
        None => e.to_string(),
    }
}

fn encode_head(w: &mut Vec<u8>, head: &RequestHead<'_>, length: Option<u64>, chunked: bool) {
    w.clear();
    w.extend_from_slice(head.method.as_str().as_bytes());
    w.push(b' ');
    w.extend_from_slice(head.target.as_bytes());
    w.extend_from_slice(b" HTTP/1.1\r\n");
    // The checked authority, never the client's own Host field (which
    // `rewrite` drops): what was routed is what the server reads.
    w.extend_from_slice(b"host: ");
    w.extend_from_slice(head.host);
    w.extend_from_slice(b"\r\nx-forwarded-host: ");
    w.extend_from_slice(head.host);
    w.extend_from_slice(b"\r\n");
    for (name, value) in head.headers {
        if name == header::CONTENT_LENGTH || !head.rewrite.keeps(name) {
            continue;
        }
        w.extend_from_slice(name.as_str().as_bytes());
        w.extend_from_slice(b": ");
        w.extend_from_slice(value.as_bytes());
        w.extend_from_slice(b"\r\n");
    }
    head.rewrite.write_lines(w);
    if chunked {
        w.extend_from_slice(b"transfer-encoding: chunked\r\n");
    } else if let Some(n) = length.filter(|&n| n > 0 || has_payload_semantics(head.method)) {
        w.extend_from_slice(b"content-length: ");
        w.extend_from_slice(codec::itoa(n, &mut [0u8; 20]));
        w.extend_from_slice(b"\r\n");
    } else if length.is_none() && has_payload_semantics(head.method) {
        w.extend_from_slice(b"content-length: 0\r\n");
    }
    w.extend_from_slice(b"\r\n");
}

/// Methods whose requests are expected to carry a body: an empty one is
/// sent as `Content-Length: 0`.
fn has_payload_semantics(m: &Method) -> bool {
    *m == Method::POST || *m == Method::PUT || *m == Method::PATCH
}

type Parsed = (StatusCode, Version, HeaderMap, State, bool);

/// How an upload ended before the whole body was sent.
enum Early {
    /// The server answered.
    Head(Parsed),
    /// The server closed or stopped reading; any answer is still to come.
    Stopped,
}

/// Parses a complete response head at the front of `buf` and consumes it,
/// skipping interim (1xx) responses other than 101. `None`: incomplete.
fn parse_head(buf: &mut BytesMut, is_head: bool) -> Result<Option<Parsed>, Error> {
    loop {
        let mut slots = codec::slots();
        let mut resp = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
        {
            Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
            Ok(httparse::Status::Complete(_)) => {
                return Err(Error::Invalid("response head too large"))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(Error::Invalid("too many headers")),
            Err(_) => return Err(Error::Invalid("malformed response head")),
        };
        let code = resp.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|_| Error::Invalid("bad status code"))?;
        if status.is_informational() && code != 101 {
            buf.advance(len);
            continue;
        }
        let version = if resp.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let mut spans = Spans::default();
        spans.record(buf, resp.headers);
        let head = buf.split_to(len).freeze();
        let (mut headers, f) =
            codec::fields(&head, &spans, Some(code == 101)).map_err(Error::Invalid)?;
        if let Some(why) = f.bad_length {
            return Err(Error::Invalid(why));
        }
        let conn_close = f.close || (version == Version::HTTP_10 && !f.keep_alive);
        let no_body = is_head || code == 204 || code == 304;
        let (state, keep_alive) = if code == 101 {
            (State::Upgrade, false)
        } else if no_body {
            (State::Body(Decoder::Done), !conn_close)
        } else if f.te {
            // A coding other than chunked (gzip...) would reach the client
            // as coded bytes with no label: centinela does not decode it.
            if !f.only_chunked {
                return Err(Error::Invalid("a transfer coding other than chunked"));
            }
            // Content-Length means nothing next to Transfer-Encoding, and
            // such a response is not trusted with another request.
            if f.length.is_some() {
                headers.remove(header::CONTENT_LENGTH);
            }
            (
                State::Body(Decoder::chunked()),
                !conn_close && f.length.is_none(),
            )
        } else if let Some(n) = f.length {
            (State::Body(Decoder::Length(n)), !conn_close)
        } else {
            (State::Body(Decoder::Eof), false)
        };
        return Ok(Some((status, version, headers, state, keep_alive)));
    }
}

/// The response head at the front of `buf` once it is whole, looked for
/// only in the bytes read since the last look (`scanned`); refused past
/// [`MAX_HEAD`], whether or not the request is still being sent.
fn next_head(
    buf: &mut BytesMut,
    scanned: &mut usize,
    is_head: bool,
) -> Result<Option<Parsed>, Error> {
    if head_may_end(buf, *scanned) {
        if let Some(parsed) = parse_head(buf, is_head)? {
            return Ok(Some(parsed));
        }
    }
    *scanned = buf.len();
    if buf.len() >= MAX_HEAD {
        return Err(Error::Invalid("response head too large"));
    }
    Ok(None)
}

/// Could a head end in `buf`, given that its first `scanned` bytes held
/// no end? Only the new bytes are searched (and the three before them), so
/// that a head arriving a byte at a time is not re-parsed for every byte.
pub fn head_may_end(buf: &[u8], scanned: usize) -> bool {
    let from = scanned.saturating_sub(3).min(buf.len());
    memchr::memchr_iter(b'\n', &buf[from..]).any(|i| {
        let at = from + i;
        match buf.get(at + 1) {
            Some(b'\n') => true,
            Some(b'\r') => buf.get(at + 2) == Some(&b'\n'),
            _ => false,
        }
    })
}

/// A response body read straight from the server's connection.
#[derive(Debug)]
pub struct UpBody {
    conn: Option<Conn>,
    state: State,
    keep_alive: bool,
    /// Where the connection goes once the body has ended.
    pool: Option<Arc<Pool>>,
    /// `timeouts.body_idle`: a server that stops sending is cut off.
    idle: IdleTimer,
}

/// The connection of a `101 Switching Protocols` response, with the bytes
/// the server already sent past the response head.
pub struct Upgraded {
    pub io: Stream,
    pub read: Bytes,
}

impl UpBody {
    /// The next piece of the body. With `arm`, a wait arms the body_idle
    /// timer; without, the poll only looks at what is there (the caller
    /// will poll again with `arm`, and wants no timer for a glance).
    pub fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
        arm: bool,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let (Some(conn), State::Body(dec)) = (self.conn.as_mut(), &mut self.state) else {
            return Poll::Ready(None);
        };
        // A body that runs to the close was never to be reused
        // (`keep_alive` is false for it).
        let polled = conn.buf.poll_body(dec, &mut conn.io, cx);
        let Poll::Ready(polled) = polled else {
            if !arm {
                return Poll::Pending;
            }
            return match self.idle.poll_idle(cx) {
                Poll::Ready(()) => {
                    // Dropped, not pooled: its state is unknown.
                    self.conn = None;
                    Poll::Ready(Some(Err(Error::Timeout(
                        "the server stopped sending the response body",
                    ))))
                }
                Poll::Pending => Poll::Pending,
            };
        };
        self.idle.progress();
        match polled {
            Ok(Some(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Ok(None) => {
                self.finish();
                Poll::Ready(None)
            }
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }

    /// The upstream's `timeouts.body_idle`.
    pub fn idle_timeout(&self) -> Duration {
        self.idle.timeout()
    }

    /// The connection, if the server switched protocols.
    pub fn into_upgraded(mut self) -> Option<Upgraded> {
        if self.state != State::Upgrade {
            return None;
        }
        let conn = self.conn.take()?;
        Some(Upgraded {
            io: conn.io,
            read: conn.buf.into_inner().freeze(),
        })
    }

    /// The body has ended: the connection is reused if it is clean.
    fn finish(&mut self) {
        self.state = State::Body(Decoder::Done);
        if let Some(mut conn) = self.conn.take() {
            if let Some(pool) = self.pool.as_ref() {
                if self.keep_alive && conn.buf.is_empty() {
                    conn.shrink();
                    pool.put(conn);
                }
            }
        }
    }
}

impl Drop for UpBody {
    fn drop(&mut self) {
        // An empty body (HEAD, 204, 304, Content-Length: 0) is never polled.
        if matches!(self.state, State::Body(d) if d.is_end()) {
            self.finish();
        }
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.get_mut().poll_data(cx, true)
    }

    fn is_end_stream(&self) -> bool {
        match self.state {
            State::Body(d) => d.is_end(),
            State::Upgrade => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Body(d) => d.size_hint(),
            State::Upgrade => SizeHint::with_exact(0),
        }
    }
}

/// A raw HTTP/1.1 server for tests of this client and of the pool.
#[cfg(test)]
pub(crate) mod script {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers the requests of each connection with the
    /// scripted bytes in turn, closing after a `true` entry.
    pub(crate) async fn scripted(
        script: Vec<(&'static [u8], bool)>,
    ) -> (SocketAddr, Arc<AtomicU64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                let script = script.clone();
                tokio::spawn(async move {
                    for (reply, close) in script {
                        let mut buf = Vec::new();
                        let mut chunk = [0u8; 4096];
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                            }
                        }
                        if s.write_all(reply).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }
}

#[cfg(test)]
mod tests {
    use super::script::scripted;
    use super::*;

    async fn exchange(
        pool: &Arc<Pool>,
        addr: SocketAddr,
        method: Method,
        body: ReqBody,
    ) -> Result<(Response<()>, Result<Bytes, Error>), Error> {
        let headers = HeaderMap::new();
        let head = RequestHead {
            method: &method,
            target: "/",
            headers: &headers,
            rewrite: &Rewrite::default(),
            host: b"test",
        };
        let conn = match pool.checkout(Duration::from_secs(60)) {
            Some(c) => c,
            None => Conn::connect(addr, Duration::from_secs(1), None)
                .await
                .unwrap(),
        };
        let t = Timeouts {
            connect: Duration::from_secs(1),
            pool_idle: Duration::from_secs(60),
            head: Duration::from_secs(5),
            body_idle: Duration::from_secs(5),
        };
        let resp = conn.send(&head, body, Some(pool.clone()), &t).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map(|c| c.to_bytes());
        Ok((Response::from_parts(parts, ()), body))
    }

    #[tokio::test]
    async fn bodies_are_delimited_as_rfc_9112_says() {
        // (response, method, body read, connection reused after it)
        let cases: Vec<(&'static [u8], Method, &str, bool)> = vec![
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
                Method::GET,
                "hello",
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n",
                Method::GET,
                "hello world",
                true,
            ),
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                Method::POST,
                "ok",
                true,
            ),
            (b"HTTP/1.1 204 No Content\r\n\r\n", Method::DELETE, "", true),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n",
                Method::HEAD,
                "",
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
                Method::GET,
                "ok",
                false,
            ),
            // Transfer-Encoding wins over Content-Length; not trusted again.
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                Method::GET,
                "ok",
                false,
            ),
        ];
        for (reply, method, want, reused) in cases {
            let (addr, _) = scripted(vec![(reply, false)]).await;
            let pool = Arc::new(Pool::default());
            let (resp, body) = exchange(&pool, addr, method.clone(), ReqBody::Empty)
                .await
                .unwrap();
            let shown = String::from_utf8_lossy(reply);
            assert_eq!(resp.status().as_u16() / 100, 2, "{shown}");
            assert_eq!(body.unwrap(), want.as_bytes(), "{shown}");
            assert_eq!(pool.idle_count(), usize::from(reused), "{shown}");
            if shown.contains("transfer-encoding") {
                // The body is re-framed for the client: no stale length.
                assert!(
                    resp.headers().get(header::CONTENT_LENGTH).is_none(),
                    "{shown}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_body_that_runs_to_the_close_is_read_whole_and_the_connection_dropped() {
        let (addr, _) = scripted(vec![(b"HTTP/1.0 200 OK\r\n\r\nuntil the end", true)]).await;
        let pool = Arc::new(Pool::default());
        let (resp, body) = exchange(&pool, addr, Method::GET, ReqBody::Empty)
            .await
            .unwrap();
        assert_eq!(resp.version(), Version::HTTP_10);
        assert_eq!(body.unwrap(), "until the end");
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn bad_responses_are_errors_not_data() {
        let cases: Vec<(&'static [u8], &str)> = vec![
            (b"SSH-2.0-OpenSSH\r\n\r\n", "malformed"),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nok",
                "conflicting",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
                "Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nxx",
                "transfer coding",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nxx\r\n0\r\n\r\n",
                "transfer coding",
            ),
        ];
        for (reply, want) in cases {
            let (addr, _) = scripted(vec![(reply, true)]).await;
            let pool = Arc::new(Pool::default());
            match exchange(&pool, addr, Method::GET, ReqBody::Empty).await {
                Err(e @ Error::Invalid(_)) => assert!(e.to_string().contains(want), "{e}"),
                other => panic!("{}: {other:?}", String::from_utf8_lossy(reply)),
            }
        }
        // A body cut short is an error of the body, after the head.
        for reply in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"[..],
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        ] {
            let (addr, _) = scripted(vec![(reply, true)]).await;
            let pool = Arc::new(Pool::default());
            let (_, body) = exchange(&pool, addr, Method::GET, ReqBody::Empty)
                .await
                .unwrap();
            assert!(body.is_err(), "{}", String::from_utf8_lossy(reply));
            assert_eq!(pool.idle_count(), 0);
        }
        // Nothing at all: the connection closed before any response.
        let (addr, _) = scripted(vec![(b"", true)]).await;
        let pool = Arc::new(Pool::default());
        assert!(matches!(
            exchange(&pool, addr, Method::GET, ReqBody::Empty).await,
            Err(Error::Closed(_))
        ));
    }

    #[tokio::test]
    async fn an_answer_before_the_upload_ends_stops_the_upload() {
        // The server refuses at once, without reading the 8 MiB body.
        let (addr, _) = scripted(vec![(
            b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 0\r\n\r\n",
            false,
        )])
        .await;
        let pool = Arc::new(Pool::default());
        let big = Bytes::from(vec![b'x'; 8 << 20]);
        let (resp, body) = exchange(&pool, addr, Method::POST, ReqBody::Full(Some(big)))
            .await
            .unwrap();
        assert_eq!(resp.status(), 413);
        assert_eq!(body.unwrap(), "");
        assert_eq!(
            pool.idle_count(),
            0,
            "a half-sent request leaves the connection unusable"
        );
    }

    #[tokio::test]
    async fn a_response_head_during_an_upload_is_capped_too() {
        // A server that answers an upload with a head that never ends.
        let endless: &'static [u8] = Box::leak(
            [&b"HTTP/1.1 200 OK\r\n"[..], &vec![b'x'; 80 * 1024]]
                .concat()
                .into_boxed_slice(),
        );
        let (addr, _) = scripted(vec![(endless, false)]).await;
        let pool = Arc::new(Pool::default());
        let big = Bytes::from(vec![b'x'; 8 << 20]);
        match exchange(&pool, addr, Method::POST, ReqBody::Full(Some(big))).await {
            Err(Error::Invalid(why)) => assert!(why.contains("too large"), "{why}"),
            other => panic!(
                "expected a refusal, got {:?}",
                other.map(|(r, _)| r.status())
            ),
        }
    }

    #[test]
    fn request_heads_carry_their_own_framing() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_LENGTH,
            http::HeaderValue::from_static("999"),
        );
        headers.insert("x-a", http::HeaderValue::from_static("1"));
        let head = RequestHead {
            method: &Method::POST,
            target: "/p?q=1",
            headers: &headers,
            rewrite: &Rewrite::default(),
            host: b"127.0.0.1:8001",
        };
        let mut w = Vec::new();
        encode_head(&mut w, &head, Some(12345), false);
        assert_eq!(
            String::from_utf8(w.clone()).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nhost: 127.0.0.1:8001\r\nx-forwarded-host: 127.0.0.1:8001\r\nx-a: 1\r\ncontent-length: 12345\r\n\r\n"
        );
        encode_head(&mut w, &head, None, false);
        assert!(String::from_utf8_lossy(&w).ends_with("content-length: 0\r\n\r\n"));
        encode_head(&mut w, &head, None, true);
        assert!(String::from_utf8_lossy(&w).ends_with("transfer-encoding: chunked\r\n\r\n"));
        let get = RequestHead {
            method: &Method::GET,
            ..head
        };
        encode_head(&mut w, &get, None, false);
        assert!(!String::from_utf8_lossy(&w).contains("content-length"));
    }
}
