//! Request-smuggling guard for HTTP/1 connections.
//!
//! hyper accepts a request head carrying both `Content-Length` and
//! `Transfer-Encoding: chunked` (it drops the length, reads the body as
//! chunked and closes the connection afterwards, as RFC 9112 §6.3 allows).
//! The handler can no longer see the dropped header, but we must answer such
//! requests 400 and never forward them. [`Sniff`] wraps the client socket,
//! follows HTTP/1 message framing on the bytes hyper reads (heads, fixed
//! bodies, chunked bodies) and raises a per-connection flag when a head
//! carries both headers. Heads are scanned once, bodies are skipped by
//! arithmetic; HTTP/2 and upgraded connections switch it off.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const MAX_HEAD: usize = 64 * 1024;

#[derive(Debug)]
enum State {
    Head,
    Body(u64),
    ChunkSize { size: u64, ext: bool, digits: bool },
    ChunkData(u64),
    ChunkEnd(u8),
    Trailers { line_start: bool },
    Off,
}

/// Follows request framing and records smuggling attempts.
#[derive(Debug)]
pub struct Tracker {
    state: State,
    head: Vec<u8>,
    flag: Arc<AtomicBool>,
}

impl Tracker {
    pub fn new(flag: Arc<AtomicBool>) -> Self {
        Tracker {
            state: State::Head,
            head: Vec::new(),
            flag,
        }
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.state {
                State::Off => return,
                State::Head => {
                    // Empty lines before a request line are ignored (RFC 9112 §2.2).
                    if self.head.is_empty() {
                        let skip = data
                            .iter()
                            .take_while(|b| **b == b'\r' || **b == b'\n')
                            .count();
                        data = &data[skip..];
                        if data.is_empty() {
                            return;
                        }
                    }
                    // Fast path: a whole head inside this read is scanned in
                    // place; only a head split across reads is copied.
                    if self.head.is_empty() {
                        if let Some(i) = find(data, b"\r\n\r\n") {
                            self.state = head_state(&data[..i + 4], &self.flag);
                            data = &data[i + 4..];
                            continue;
                        }
                    }
                    let before = self.head.len();
                    self.head.extend_from_slice(data);
                    let from = before.saturating_sub(3);
                    match find(&self.head[from..], b"\r\n\r\n") {
                        Some(i) => {
                            let end = from + i + 4;
                            let consumed = end - before;
                            self.state = head_state(&self.head[..end], &self.flag);
                            self.head.clear();
                            data = &data[consumed..];
                        }
                        None => {
                            if self.head.len() > MAX_HEAD {
                                // hyper rejects oversized heads itself.
                                self.state = State::Off;
                            }
                            return;
                        }
                    }
                }
                State::Body(left) => {
                    let n = (*left).min(data.len() as u64);
                    *left -= n;
                    data = &data[n as usize..];
                    if *left == 0 {
                        self.state = State::Head;
                    }
                }
                State::ChunkSize { size, ext, digits } => {
                    let b = data[0];
                    data = &data[1..];
                    match b {
                        b'\n' => {
                            self.state = if !*digits {
                                State::Off
                            } else if *size == 0 {
                                State::Trailers { line_start: true }
                            } else {
                                State::ChunkData(*size)
                            }
                        }
                        b'\r' => {}
                        b';' => *ext = true,
                        _ if *ext => {}
                        _ => match (b as char).to_digit(16) {
                            Some(d) if *size < (1 << 56) => {
                                *size = *size * 16 + u64::from(d);
                                *digits = true;
                            }
                            // Not chunked framing after all: hyper will reject it.
                            _ => self.state = State::Off,
                        },
                    }
                }
                State::ChunkData(left) => {
                    let n = (*left).min(data.len() as u64);
                    *left -= n;
                    data = &data[n as usize..];
                    if *left == 0 {
                        self.state = State::ChunkEnd(2);
                    }
                }
                State::ChunkEnd(left) => {
                    let n = (*left as usize).min(data.len());
                    data = &data[n..];
                    *left -= n as u8;
                    if *left == 0 {
                        self.state = State::ChunkSize {
                            size: 0,
                            ext: false,
                            digits: false,
                        };
                    }
                }
                State::Trailers { line_start } => {
                    let b = data[0];
                    data = &data[1..];
                    if b == b'\n' {
                        if *line_start {
                            self.state = State::Head;
                        } else {
                            *line_start = true;
                        }
                    } else if b != b'\r' {
                        *line_start = false;
                    }
                }
            }
        }
    }
}

/// The framing state after a complete request head.
fn head_state(head: &[u8], flag: &AtomicBool) -> State {
    let mut lines = head.split(|b| *b == b'\n');
    let request_line = lines.next().unwrap_or_default();
    if request_line.starts_with(b"PRI * HTTP/2") || request_line.starts_with(b"CONNECT ") {
        return State::Off;
    }
    let (mut cl, mut te, mut chunked, mut upgrade) = (None::<u64>, false, false, false);
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            cl = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .or(Some(0));
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te = true;
            chunked = value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
        }
    }
    if te && cl.is_some() {
        flag.store(true, Ordering::Release);
        State::Off
    } else if upgrade {
        State::Off
    } else if te && chunked {
        State::ChunkSize {
            size: 0,
            ext: false,
            digits: false,
        }
    } else if te {
        State::Off
    } else {
        match cl {
            Some(n) if n > 0 => State::Body(n),
            _ => State::Head,
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A client socket whose incoming bytes pass through a [`Tracker`].
pub struct Sniff<S> {
    inner: S,
    tracker: Tracker,
}

impl<S> Sniff<S> {
    pub fn new(inner: S, flag: Arc<AtomicBool>) -> Self {
        Sniff {
            inner,
            tracker: Tracker::new(flag),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Sniff<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.tracker.feed(&buf.filled()[before..]);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Sniff<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` split at every possible point, returns the flag.
    fn flagged(input: &[u8]) -> bool {
        let mut any = None;
        for split in 0..=input.len() {
            let flag = Arc::new(AtomicBool::new(false));
            let mut t = Tracker::new(flag.clone());
            t.feed(&input[..split]);
            t.feed(&input[split..]);
            let f = flag.load(Ordering::Relaxed);
            assert!(
                any.is_none_or(|a| a == f),
                "result depends on split at {split}"
            );
            any = Some(f);
        }
        any.unwrap_or(false)
    }

    #[test]
    fn flags_cl_and_te_on_any_request_of_a_connection() {
        assert!(flagged(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"));
        assert!(flagged(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 3\r\n\r\n0\r\n\r\n"
        ));
        // After a fixed-length body and a chunked body with extensions and trailers.
        let mut s = b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello".to_vec();
        s.extend_from_slice(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nworld\r\n0\r\nX-T: 1\r\n\r\n");
        let clean = s.clone();
        assert!(!flagged(&clean));
        s.extend_from_slice(b"\r\nGET / HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
        assert!(flagged(&s));
    }

    #[test]
    fn body_bytes_that_look_like_headers_do_not_flag() {
        let body = b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut s =
            format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        s.extend_from_slice(body);
        assert!(!flagged(&s));
        let mut s = format!(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            body.len()
        )
        .into_bytes();
        s.extend_from_slice(body);
        s.extend_from_slice(b"\r\n0\r\n\r\n");
        assert!(!flagged(&s));
    }

    #[test]
    fn http2_and_upgrades_switch_it_off() {
        assert!(!flagged(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"));
        assert!(!flagged(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"));
    }
}
