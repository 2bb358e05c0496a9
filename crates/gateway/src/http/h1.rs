//! HTTP/1.x from clients, served by the connection's own task.
//!
//! Each accepted connection runs [`serve`]: read a request head (httparse,
//! header values sharing the read buffer's bytes), hand the request to
//! [`crate::proxy::handle`], write the response head together with as much
//! of the body as is ready in one `send`, stream the rest, and go on with
//! the next request while the connection is kept alive. A request body is
//! read straight from the connection by [`RequestBody`], when and if the
//! proxy polls it (after `100 Continue` when the client asked for it).
//!
//! - Framing follows RFC 9112 §6. A head whose framing is ambiguous (both
//!   `Content-Length` and `Transfer-Encoding`, conflicting lengths, a coding
//!   other than chunked) still reaches the proxy, which answers 400 without
//!   forwarding it (`headers::check_framing`); its body is never read and
//!   the connection is closed after the answer. A head that does not parse
//!   gets 400, one too large 431, and the connection is closed.
//! - A connection waits at most the listener's `header_timeout` for a
//!   request head, idle or not (slow clients and idle keep-alive
//!   connections). The timer is reset lazily: at most one reset per
//!   timeout period, not one per request.
//! - `101 Switching Protocols` turns the connection into a byte relay with
//!   the server's connection ([`UpgradeSlot`]).
//! - A connection that opens with the HTTP/2 preface is handed to hyper's
//!   HTTP/2 server (prior knowledge, cleartext).
//! - On drain ([`serve`]'s `stop`), idle connections close at once and busy
//!   ones after their current response.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;

use crate::error::ProxyError;
use crate::http::body::{ClientBody, RespBody};
use crate::http::client::Upgraded;
use crate::http::codec::{self, BodyError, Decoder, InBuf, Spans, MAX_HEAD};
use crate::http::idle::IdleTimer;
use crate::http::io::Stream as ByteStream;
use crate::http::target;
use crate::proxy::{self, Shared};

/// How long a connection may take to send a request head, idle or not,
/// when its listener is gone from the configuration (and for the admin API).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Body data up to this size is copied next to the head or other small
/// pieces and sent with them; larger pieces are written from their own
/// buffer.
const COALESCE: usize = 16 * 1024;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// After an answer that left the request body unread, the rest of it is
/// read and dropped (up to this much, for up to [`LINGER`]) before closing,
/// so that the client gets the answer rather than a reset.
const LINGER_BYTES: usize = 1 << 20;
const LINGER: Duration = Duration::from_secs(2);

/// The client's connection: shared by the connection's task, which reads
/// heads and writes responses, and the body of the request in progress.
/// Never locked across an await.
struct Conn {
    io: ByteStream,
    /// Read but not yet consumed.
    buf: InBuf,
    /// The body of the request in progress.
    body: Decoder,
    /// Bytes of `100 Continue` still to write before the body is read.
    continue_left: usize,
    /// How much of `buf` is known to hold no end of a head.
    scanned: usize,
}

type Io = Arc<Mutex<Conn>>;

fn lock(io: &Io) -> MutexGuard<'_, Conn> {
    io.lock().unwrap_or_else(|p| p.into_inner())
}

/// A request body read from the client's connection.
pub struct RequestBody {
    io: Io,
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBody")
            .field("body", &lock(&self.io).body)
            .finish()
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut c = lock(&self.io);
        // The client waits for this before it sends the body.
        while c.continue_left > 0 {
            let from = CONTINUE.len() - c.continue_left;
            match ready!(Pin::new(&mut c.io).poll_write(cx, &CONTINUE[from..])) {
                Ok(n) if n > 0 => c.continue_left -= n,
                Ok(_) => return Poll::Ready(Some(Err(BodyError::Incomplete))),
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
            if c.continue_left == 0 {
                if let Err(e) = ready!(Pin::new(&mut c.io).poll_flush(cx)) {
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
        let c = &mut *c;
        c.buf
            .poll_body(&mut c.body, &mut c.io, cx)
            .map(|r| r.map(|d| d.map(Frame::data)).transpose())
    }

    fn is_end_stream(&self) -> bool {
        lock(&self.io).body.is_end()
    }

    fn size_hint(&self) -> SizeHint {
        lock(&self.io).body.size_hint()
    }
}

/// Where the proxy leaves the server's side of an upgraded connection
/// (`101 Switching Protocols`) for the client's connection to relay, with
/// the upstream's `timeouts.tunnel_idle`.
#[derive(Clone, Default)]
pub struct UpgradeSlot(pub Arc<Mutex<Option<(Upgraded, Duration)>>>);

/// A request head, read and checked.
struct Head {
    req: Request<()>,
    body: Decoder,
    /// The connection may serve another request after this one.
    keep_alive: bool,
    expect_continue: bool,
    upgrade: bool,
    /// A body of unknown framing follows, never read.
    unread: bool,
}

/// How waiting for a head ended.
// Not boxed: one value per request, moved once; a box would cost an
// allocation per request.
#[allow(clippy::large_enum_variant)]
enum Wait {
    Head(Head),
    /// The connection opens with the HTTP/2 preface.
    H2,
    /// An answer for a head that cannot be served; then close.
    Refuse(ProxyError),
    /// End of file, an error, the head timeout or drain: close quietly.
    Close,
}

/// What became of the connection after a response.
enum After {
    KeepAlive,
    Close,
    Upgrade((Upgraded, Duration)),
}

/// Serves one client connection until it closes, times out, or `stop`
/// changes (drain).
pub async fn serve(
    stream: ByteStream,
    peer: SocketAddr,
    listener: Arc<str>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    // The connection's place under the listener's max_connections.
    _place: tokio::sync::OwnedSemaphorePermit,
    h2: bool,
) {
    let io: Io = Arc::new(Mutex::new(Conn {
        io: stream,
        buf: InBuf::default(),
        body: Decoder::Done,
        continue_left: 0,
        scanned: 0,
    }));
    // ALPN chose HTTP/2 on a TLS connection: no HTTP/1 request comes.
    let end = if h2 {
        End::H2
    } else {
        serve_h1(&io, peer, &listener, &shared, &mut stop).await
    };
    let Ok(conn) = Arc::try_unwrap(io).map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
    else {
        return; // a request body outlived its request: just close
    };
    // The rare ends are boxed, so that every connection's task does not
    // keep room for them.
    match end {
        End::Close => {}
        End::Linger => Box::pin(linger(conn)).await,
        End::H2 => Box::pin(serve_h2(conn, peer, listener, shared, stop)).await,
        End::Upgrade((up, idle)) => Box::pin(relay(conn, up, idle, stop)).await,
    }
}

enum End {
    Close,
    /// Close, but read what the client is still sending first.
    Linger,
    H2,
    Upgrade((Upgraded, Duration)),
}

/// A listener's settings for its connections, read once per connection (a
/// reload applies to new connections).
#[derive(Clone, Copy)]
pub struct Settings {
    pub header_timeout: Duration,
    pub write_timeout: Duration,
    pub h2_ping_interval: Duration,
    pub h2_ping_timeout: Duration,
}

impl Settings {
    pub fn of(shared: &Shared, listener: &str) -> Settings {
        shared
            .snapshot
            .load()
            .config
            .listeners
            .iter()
            .find(|l| *l.name == *listener)
            .map_or(
                Settings {
                    header_timeout: HEAD_TIMEOUT,
                    write_timeout: HEAD_TIMEOUT,
                    h2_ping_interval: H2_PING_INTERVAL,
                    h2_ping_timeout: H2_PING_TIMEOUT,
                },
                |l| Settings {
                    header_timeout: l.header_timeout,
                    write_timeout: l.write_timeout,
                    h2_ping_interval: l.h2_ping_interval,
                    h2_ping_timeout: l.h2_ping_timeout,
                },
            )
    }
}

async fn serve_h1(
    io: &Io,
    peer: SocketAddr,
    listener: &Arc<str>,
    shared: &Arc<Shared>,
    stop: &mut watch::Receiver<bool>,
) -> End {
    // Drain closes idle connections (`stopping`) and tells busy ones to
    // close after their answer (`draining`).
    let draining = stop.clone();
    let mut stopping = pin!(stop.changed());
    let settings = Settings::of(shared, listener);
    let timeout = settings.header_timeout;
    let mut timer = pin!(tokio::time::sleep(timeout));
    // A client that does not read what it is sent (lazy: no timer while
    // writes go through).
    let mut writing = IdleTimer::new(settings.write_timeout);
    let mut wbuf: Vec<u8> = Vec::new();
    let mut first = true;
    loop {
        let deadline = Instant::now() + timeout;
        let wait =
            poll_fn(|cx| poll_head(io, cx, first, timer.as_mut(), deadline, stopping.as_mut()))
                .await;
        first = false;
        let head = match wait {
            Wait::Head(h) => h,
            Wait::H2 => return End::H2,
            Wait::Close => return End::Close,
            Wait::Refuse(err) => {
                debug!(client = %peer, error = %err, "Refused a request head");
                let rid = crate::http::headers::new_request_id();
                let resp = err.into_response(&rid);
                proxy::count_refused(shared, listener, resp.status());
                let _ = respond(
                    io,
                    &mut wbuf,
                    &mut writing,
                    resp,
                    false,
                    Version::HTTP_11,
                    false,
                )
                .await;
                return End::Linger;
            }
        };
        let Head {
            mut req,
            body,
            keep_alive,
            expect_continue,
            upgrade,
            unread,
        } = head;
        let is_head = req.method() == Method::HEAD;
        let version = req.version();
        let slot = upgrade.then(UpgradeSlot::default);
        if let Some(s) = &slot {
            req.extensions_mut().insert(s.clone());
        }
        let has_body = !body.is_end();
        let body = if !has_body {
            ClientBody::Empty
        } else {
            let mut c = lock(io);
            c.body = body;
            c.continue_left = if expect_continue { CONTINUE.len() } else { 0 };
            drop(c);
            ClientBody::H1(RequestBody { io: io.clone() })
        };
        let req = req.map(|()| body);
        let resp = match proxy::handle(shared.clone(), listener.clone(), peer, req).await {
            Ok(r) => r,
            Err(e) => match e {},
        };
        let upgraded = resp.status() == StatusCode::SWITCHING_PROTOCOLS
            || resp.extensions().get::<proxy::Tunnel>().is_some();
        // A request body left unread ends the connection after this answer:
        // say so in it.
        let keep_alive = keep_alive && !*draining.borrow() && (!has_body || lock(io).body.is_end());
        let sent = respond(
            io,
            &mut wbuf,
            &mut writing,
            resp,
            is_head,
            version,
            keep_alive,
        )
        .await;
        let after = match sent {
            Ok(true) if upgraded => match slot.and_then(|s| s.0.lock().ok()?.take()) {
                Some(up) => After::Upgrade(up),
                None => After::Close,
            },
            Ok(true) => After::KeepAlive,
            Ok(false) | Err(_) => After::Close,
        };
        match after {
            After::Upgrade(up) => return End::Upgrade(up),
            After::Close if unread || !lock(io).body.is_end() => return End::Linger,
            After::Close => return End::Close,
            After::KeepAlive => {}
        }
        // The next request can only be read once this one's body was read
        // to its end, and nothing else holds the connection.
        let mut c = lock(io);
        if !c.body.is_end() {
            return End::Linger;
        }
        if Arc::strong_count(io) > 1 {
            return End::Close;
        }
        // What a large body grew is given back before the connection idles.
        c.buf.shrink();
        drop(c);
        if wbuf.capacity() > 4 * COALESCE {
            wbuf = Vec::new();
        }
    }
}

/// Waits for a complete request head; see [`Wait`].
fn poll_head(
    io: &Io,
    cx: &mut Context<'_>,
    first: bool,
    mut timer: Pin<&mut tokio::time::Sleep>,
    deadline: Instant,
    stopping: Pin<&mut impl Future>,
) -> Poll<Wait> {
    let mut guard = lock(io);
    let c = &mut *guard;
    loop {
        if !c.buf.is_empty() {
            if first && PREFACE.starts_with(&c.buf[..c.buf.len().min(PREFACE.len())]) {
                if c.buf.len() >= PREFACE.len() {
                    return Poll::Ready(Wait::H2);
                }
            } else if !c.buf[c.scanned.min(c.buf.len())..].contains(&b'\n') {
                // Parsed again only once a line has ended: a head arriving
                // a byte at a time is not re-parsed for every byte.
                if c.buf.len() >= MAX_HEAD {
                    return Poll::Ready(Wait::Refuse(ProxyError::HeadTooLarge(
                        "request head over 64 KiB",
                    )));
                }
            } else {
                match parse_request(&mut c.buf) {
                    Ok(Some(head)) => {
                        c.scanned = 0;
                        return Poll::Ready(Wait::Head(head));
                    }
                    Ok(None) if c.buf.len() >= MAX_HEAD => {
                        return Poll::Ready(Wait::Refuse(ProxyError::HeadTooLarge(
                            "request head over 64 KiB",
                        )))
                    }
                    Ok(None) => {}
                    Err(e) => return Poll::Ready(Wait::Refuse(e)),
                }
            }
        }
        c.scanned = c.buf.len();
        match c.buf.poll_fill(&mut c.io, cx) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Wait::Close),
            Poll::Ready(Ok(_)) => {}
            Poll::Pending => break,
        }
    }
    drop(guard);
    // Nothing to read for now: drain and the head timeout may end the wait.
    if stopping.poll(cx).is_ready() {
        return Poll::Ready(Wait::Close);
    }
    while timer.as_mut().poll(cx).is_ready() {
        if Instant::now() >= deadline {
            return Poll::Ready(Wait::Close);
        }
        // Still armed for an earlier wait: move it to this one's deadline.
        timer.as_mut().reset(deadline);
    }
    Poll::Pending
}

/// Parses a complete request head at the front of `buf` and consumes it.
/// `None`: incomplete.
fn parse_request(buf: &mut BytesMut) -> Result<Option<Head>, ProxyError> {
    let bad = ProxyError::BadRequest;
    let mut slots = codec::slots();
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(_)) => {
            return Err(ProxyError::HeadTooLarge("request head over 64 KiB"))
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ProxyError::HeadTooLarge("over 100 header fields"))
        }
        Err(_) => return Err(bad("malformed request head")),
    };
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Err(bad("malformed request head"));
    };
    // httparse takes a bare LF for a line end; a front end that does not
    // could read other fields (RFC 9112 §2.2 allows refusing it).
    if has_bare_lf(&buf[..len]) {
        return Err(bad("line ended by a bare LF"));
    }
    if !target::valid_target(target.as_bytes()) {
        return Err(bad("invalid character in request target"));
    }
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| bad("invalid method"))?;
    let version = if req.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let at = target.as_ptr() as usize - buf.as_ptr() as usize;
    let target = at..at + target.len();
    let mut spans = Spans::default();
    spans.record(buf, req.headers);
    let head = buf.split_to(len).freeze();
    let uri =
        Uri::from_maybe_shared(head.slice(target)).map_err(|_| bad("invalid request target"))?;
    let (headers, f) = codec::fields(&head, &spans, None).map_err(bad)?;
    // RFC 9112 §6.3. Ambiguous framing is answered 400 by the proxy
    // (headers::check_framing), as is any Transfer-Encoding in HTTP/1.0
    // (§6.1); such a body is never read.
    let framed = !(f.te && (f.length.is_some() || !f.only_chunked || version == Version::HTTP_10))
        && f.bad_length.is_none();
    let body = if !framed {
        Decoder::Done
    } else if f.te {
        Decoder::chunked()
    } else {
        Decoder::Length(f.length.unwrap_or(0))
    };
    let keep_alive = framed && !f.close && (version == Version::HTTP_11 || f.keep_alive);
    let expect_continue = version == Version::HTTP_11
        && headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let is_connect = method == Method::CONNECT;
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    Ok(Some(Head {
        req,
        body,
        keep_alive,
        expect_continue,
        // RFC 9110 §7.8: an HTTP/1.0 Upgrade is ignored. A CONNECT may
        // become a tunnel too.
        upgrade: (f.upgrade || is_connect) && version == Version::HTTP_11,
        unread: !framed,
    }))
}

/// A `\n` not preceded by `\r`.
fn has_bare_lf(head: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', head).any(|at| at == 0 || head[at - 1] != b'\r')
}

/// How a response body is delimited on the way to the client.
#[derive(Clone, Copy, PartialEq)]
enum Out {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0 clients, unknown length).
    Eof,
}

/// Writes a response. `Ok(true)`: it was sent whole and the connection
/// may be kept (or upgraded).
async fn respond(
    io: &Io,
    wbuf: &mut Vec<u8>,
    writing: &mut IdleTimer,
    resp: Response<RespBody>,
    is_head: bool,
    version: Version,
    mut keep_alive: bool,
) -> io::Result<bool> {
    let (parts, mut body) = resp.into_parts();
    let edge = body.take_edge();
    // Only waits of this response count.
    writing.progress();
    let code = parts.status.as_u16();
    // A 2xx to CONNECT has neither body nor framing (RFC 9110 §9.3.6).
    let upgrade = code == 101 || parts.extensions.get::<proxy::Tunnel>().is_some();
    keep_alive &= !parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
    let out = if is_head || upgrade || code == 204 || code == 304 || (100..200).contains(&code) {
        Out::None
    } else if let Some(n) = body.size_hint().exact() {
        Out::Length(n)
    } else if version == Version::HTTP_11 {
        Out::Chunked
    } else {
        keep_alive = false;
        Out::Eof
    };
    encode_head(
        wbuf,
        &parts.status,
        &parts.headers,
        (out, edge.as_deref()),
        upgrade,
        keep_alive,
        version,
    );
    drop(edge);
    if out == Out::None {
        drop(body);
        write_all(io, wbuf, &[], writing).await?;
        return Ok(keep_alive || upgrade);
    }
    let mut sent = 0u64;
    let mut ended = false;
    loop {
        // Gather what is ready now behind what waits in `wbuf`.
        let frame = if wbuf.is_empty() {
            body.frame().await
        } else {
            match poll_fn(|cx| Poll::Ready(body.poll_frame_now(cx))).await {
                Poll::Ready(f) => f,
                Poll::Pending => {
                    write_all(io, wbuf, &[], writing).await?;
                    continue;
                }
            }
        };
        let data = match frame {
            None => {
                ended = true;
                if out == Out::Chunked {
                    wbuf.extend_from_slice(b"0\r\n\r\n");
                }
                break;
            }
            Some(Err(e)) => {
                debug!(error = %e, "Response body failed; closing the client connection");
                write_all(io, wbuf, &[], writing).await?;
                break;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) if !d.is_empty() => d,
                _ => continue, // trailers are not passed on
            },
        };
        sent += data.len() as u64;
        if matches!(out, Out::Length(n) if sent > n) {
            debug!("Response body longer than its length; closing the client connection");
            write_all(io, wbuf, &[], writing).await?;
            return Ok(false);
        }
        if out == Out::Chunked {
            wbuf.extend_from_slice(codec::chunk_line(data.len(), &mut [0u8; 18]));
        }
        if data.len() <= COALESCE {
            wbuf.extend_from_slice(&data);
            if out == Out::Chunked {
                wbuf.extend_from_slice(b"\r\n");
            }
            if wbuf.len() >= COALESCE {
                write_all(io, wbuf, &[], writing).await?;
            }
        } else {
            write_all(io, wbuf, &data, writing).await?;
            if out == Out::Chunked {
                wbuf.extend_from_slice(b"\r\n");
            }
        }
    }
    write_all(io, wbuf, &[], writing).await?;
    let whole = ended && matches!(out, Out::Chunked) || matches!(out, Out::Length(n) if n == sent);
    Ok(whole && keep_alive)
}

/// Writes `wbuf` then `more`, and empties `wbuf`. A client that takes
/// none of it for the listener's `write_timeout` is given up on.
async fn write_all(
    io: &Io,
    wbuf: &mut Vec<u8>,
    more: &[u8],
    writing: &mut IdleTimer,
) -> io::Result<()> {
    let (mut a, mut b) = (&wbuf[..], more);
    // Whether the connection is TLS, learnt under the lock the writes take.
    let mut tls = false;
    while !a.is_empty() || !b.is_empty() {
        let n = poll_fn(|cx| {
            let mut c = lock(io);
            tls = c.io.is_tls();
            let w = Pin::new(&mut c.io);
            // One buffer: `send`, which costs less in the kernel than
            // `writev` for the small writes of most responses.
            let polled = if b.is_empty() {
                w.poll_write(cx, a)
            } else if a.is_empty() {
                w.poll_write(cx, b)
            } else {
                w.poll_write_vectored(cx, &[io::IoSlice::new(a), io::IoSlice::new(b)])
            };
            if polled.is_pending() {
                return write_wait(writing, cx);
            }
            polled
        })
        .await?;
        writing.progress();
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    wbuf.clear();
    // TLS keeps what the socket did not take until flushed (nothing to
    // do, and no call, on TCP).
    if tls {
        poll_fn(|cx| {
            let mut c = lock(io);
            match Pin::new(&mut c.io).poll_flush(cx) {
                Poll::Pending => write_wait(writing, cx).map_ok(|_| ()),
                done => done,
            }
        })
        .await?;
    }
    Ok(())
}

/// A write that must wait: how long the client has taken nothing.
#[cold]
fn write_wait(writing: &mut IdleTimer, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    writing.poll_idle(cx).map(|()| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client did not read for write_timeout",
        ))
    })
}

fn encode_head(
    w: &mut Vec<u8>,
    status: &StatusCode,
    headers: &HeaderMap,
    (out, edge): (Out, Option<&crate::http::headers::EdgeHeaders>),
    upgrade: bool,
    keep_alive: bool,
    version: Version,
) {
    let mut present = 0u16;
    w.clear();
    w.extend_from_slice(b"HTTP/1.1 ");
    w.extend_from_slice(status.as_str().as_bytes());
    w.push(b' ');
    w.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    w.extend_from_slice(b"\r\n");
    let mut has_date = false;
    for (name, value) in headers {
        // Framing and connection headers are this side's own.
        if *name == header::TRANSFER_ENCODING
            || (*name == header::CONTENT_LENGTH && out != Out::None)
            || (*name == header::CONNECTION && !upgrade)
        {
            continue;
        }
        if let Some(e) = edge {
            if e.drops(name) {
                continue;
            }
            present |= e.bit(name);
        }
        has_date |= *name == header::DATE;
        w.extend_from_slice(name.as_str().as_bytes());
        w.extend_from_slice(b": ");
        w.extend_from_slice(value.as_bytes());
        w.extend_from_slice(b"\r\n");
    }
    if let Some(e) = edge {
        e.write_missing(present, w);
    }
    match out {
        Out::Length(n) => {
            w.extend_from_slice(b"content-length: ");
            w.extend_from_slice(codec::itoa(n, &mut [0u8; 20]));
            w.extend_from_slice(b"\r\n");
        }
        Out::Chunked => w.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Out::None | Out::Eof => {}
    }
    if !upgrade {
        if !keep_alive {
            w.extend_from_slice(b"connection: close\r\n");
        } else if version == Version::HTTP_10 {
            w.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    if !has_date {
        w.extend_from_slice(b"date: ");
        w.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
        w.extend_from_slice(b"\r\n");
    }
    w.extend_from_slice(b"\r\n");
}

/// Closes a connection after reading and dropping what the client still
/// sends (bounded), so that the answer is not lost to a reset.
async fn linger(mut conn: Conn) {
    if conn.io.shutdown().await.is_err() {
        return;
    }
    let mut sink = vec![0u8; 16 * 1024];
    let mut left = LINGER_BYTES;
    let _ = tokio::time::timeout(LINGER, async {
        while left > 0 {
            match conn.io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// Relays bytes both ways between an upgraded client connection and the
/// server's, starting with what either side sent early. Ends when either
/// side closes, when no byte moved either way for `idle`
/// (`timeouts.tunnel_idle`), or when the listener drains.
async fn relay(conn: Conn, up: Upgraded, idle: Duration, mut stop: watch::Receiver<bool>) {
    let (mut client, early) = (conn.io, conn.buf.into_inner());
    let mut server = up.io;
    if !early.is_empty() && server.write_all(&early).await.is_err() {
        return;
    }
    if !up.read.is_empty() && client.write_all(&up.read).await.is_err() {
        return;
    }
    let base = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Tracked {
        io: client,
        base,
        last: last.clone(),
    };
    let mut server = Tracked {
        io: server,
        base,
        last: last.clone(),
    };
    let watchdog = async {
        loop {
            let at = base + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
            if Instant::now() >= at {
                return;
            }
            tokio::time::sleep_until(at).await;
        }
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = watchdog => debug!("Upgraded connection idle for tunnel_idle; closing it"),
        _ = stop.changed() => debug!("Draining: closing an upgraded connection"),
    }
}

/// A stream that notes when it last read something.
struct Tracked {
    io: ByteStream,
    base: Instant,
    /// Milliseconds since `base`.
    last: Arc<AtomicU64>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let ms = self.base.elapsed().as_millis() as u64;
            self.last.store(ms, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// HTTP/2 keep-alive pings: sent after this long without a frame...
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
/// ...and the connection closed if the answer takes longer than this.
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// A connection that opened with the HTTP/2 preface, served by hyper.
///
/// - Keep-alive pings find dead peers.
/// - A connection with no stream open for the listener's
///   `header_timeout` (including one that never sends a request after its
///   preface) is closed with GOAWAY.
/// - A response body that hyper stops taking (the client gives no flow
///   control window) for the upstream's `body_idle` is cut: its stream is
///   reset, its slot and in-flight count released, its upstream
///   connection closed ([`H2Body`]).
async fn serve_h2(
    conn: Conn,
    peer: SocketAddr,
    listener: Arc<str>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let settings = Settings::of(&shared, &listener);
    let idle = settings.header_timeout;
    let io = Rewind {
        pre: conn.buf.into_inner().freeze(),
        io: conn.io,
    };
    let activity = Arc::new(Activity {
        base: Instant::now(),
        cut: tokio::sync::Notify::new(),
        open: AtomicUsize::new(0),
        last: AtomicU64::new(0),
    });
    let act = activity.clone();
    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let req = req.map(ClientBody::H2);
        let stream = Stream::open(&act);
        let handled = proxy::handle(shared.clone(), listener.clone(), peer, req);
        async move {
            let mut resp = handled.await?;
            if let Some(e) = resp.body_mut().take_edge() {
                e.apply(resp.headers_mut());
            }
            Ok::<_, std::convert::Infallible>(resp.map(|body| H2Body::new(body, stream)))
        }
    });
    let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(settings.h2_ping_interval))
        .keep_alive_timeout(settings.h2_ping_timeout)
        .serve_connection(TokioIo::new(io), svc);
    let mut served = pin!(served);
    loop {
        // With streams open, look again in a while; else when the
        // connection will have been quiet for `idle`.
        let quiet_until = if activity.open.load(Ordering::Relaxed) > 0 {
            Instant::now() + idle
        } else {
            activity.base + Duration::from_millis(activity.last.load(Ordering::Relaxed)) + idle
        };
        tokio::select! {
            _ = served.as_mut() => return,
            _ = activity.cut.notified() => return,
            _ = stop.changed() => break,
            _ = tokio::time::sleep_until(quiet_until) => {
                if activity.open.load(Ordering::Relaxed) == 0
                    && activity.base.elapsed() >= Duration::from_millis(activity.last.load(Ordering::Relaxed)) + idle
                {
                    debug!(client = %peer, "HTTP/2 connection idle for header_timeout; closing it");
                    break;
                }
            }
        }
    }
    served.as_mut().graceful_shutdown();
    // Streams still open get `idle` to end; a client that takes no data
    // would otherwise keep the connection (and what hyper buffered for it).
    let _ = tokio::time::timeout(idle, served).await;
}

/// Streams open on an HTTP/2 connection, and when one last opened or ended.
struct Activity {
    base: Instant,
    /// A stream's client gave no window for body_idle: close.
    cut: tokio::sync::Notify,
    open: AtomicUsize,
    /// Milliseconds since `base`.
    last: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last
            .store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// One open stream; ends when dropped.
struct Stream(Arc<Activity>);

impl Stream {
    fn open(a: &Arc<Activity>) -> Stream {
        a.open.fetch_add(1, Ordering::Relaxed);
        a.touch();
        Stream(a.clone())
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.0.touch();
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body sent over HTTP/2. hyper polls it only while the client
/// gives flow-control window, so a client that gives none would hold the
/// request's slot for ever: a watchdog task takes the body away (releasing
/// the slot and closing the upstream connection) once hyper has taken
/// nothing for the upstream's `body_idle`, and closes the connection.
pub struct H2Body {
    body: Sent,
    _stream: Stream,
}

// One per HTTP/2 response, held in place while hyper sends it: boxing the
// common variant would cost an allocation per response to save bytes no
// one counts.
#[allow(clippy::large_enum_variant)]
enum Sent {
    /// A body of the gateway's own (an error), or one already whole: sent
    /// at once.
    Own(RespBody),
    /// An upstream's body, under the watchdog.
    Watched(Arc<Mutex<Watched>>),
}

struct Watched {
    body: Option<RespBody>,
    /// When hyper last asked for a frame.
    last: Instant,
    cut: bool,
}

impl H2Body {
    fn new(body: RespBody, stream: Stream) -> H2Body {
        let idle = match &body {
            RespBody::Upstream { inner, .. } if !body.is_end_stream() => inner.idle_timeout(),
            RespBody::Prefixed { inner, .. } if !body.is_end_stream() => inner.idle_timeout(),
            _ => {
                return H2Body {
                    body: Sent::Own(body),
                    _stream: stream,
                }
            }
        };
        let shared = Arc::new(Mutex::new(Watched {
            body: Some(body),
            last: Instant::now(),
            cut: false,
        }));
        let weak = Arc::downgrade(&shared);
        let activity = stream.0.clone();
        tokio::spawn(async move {
            let mut at = Instant::now() + idle;
            loop {
                tokio::time::sleep_until(at).await;
                let Some(w) = weak.upgrade() else { return };
                let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
                if w.body.is_none() {
                    return;
                }
                if w.last.elapsed() >= idle {
                    debug!(
                        "HTTP/2 client took no response data for body_idle; closing its connection"
                    );
                    w.body = None;
                    w.cut = true;
                    // hyper waits for window without polling the body, so
                    // it would never see an error: the connection goes.
                    activity.cut.notify_one();
                    return;
                }
                at = w.last + idle;
            }
        });
        H2Body {
            body: Sent::Watched(shared),
            _stream: stream,
        }
    }

    /// The upstream's body, if the watchdog has not taken it.
    fn watched<R>(w: &Mutex<Watched>, f: impl FnOnce(Option<&RespBody>) -> R) -> R {
        f(w.lock().unwrap_or_else(|p| p.into_inner()).body.as_ref())
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = crate::http::client::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let shared = match &mut self.body {
            Sent::Own(own) => return Pin::new(own).poll_frame(cx),
            Sent::Watched(shared) => shared,
        };
        let mut w = shared.lock().unwrap_or_else(|p| p.into_inner());
        w.last = Instant::now();
        let Some(body) = w.body.as_mut() else {
            return Poll::Ready(w.cut.then(|| {
                Err(crate::http::client::Error::Timeout(
                    "the client took no response data for body_idle",
                ))
            }));
        };
        let polled = Pin::new(body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            w.body = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Sent::Own(own) => own.is_end_stream(),
            Sent::Watched(w) => Self::watched(w, |b| b.is_none_or(|b| b.is_end_stream())),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            Sent::Own(own) => own.size_hint(),
            Sent::Watched(w) => {
                Self::watched(w, |b| b.map_or(SizeHint::with_exact(0), |b| b.size_hint()))
            }
        }
    }
}

/// A stream that first yields bytes already read from it.
struct Rewind {
    pre: Bytes,
    io: ByteStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
