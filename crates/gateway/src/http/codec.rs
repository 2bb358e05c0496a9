//! HTTP/1.1 message pieces shared by both sides of the proxy (the client
//! side in `h1.rs`, the server side in `client.rs`): header fields read out
//! of a parsed head without copying their bytes, what they say about
//! framing and the connection, and body decoding (RFC 9112 §6–7).

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::ops::{Deref, DerefMut};
use std::pin::pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body::SizeHint;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::http::headers::{connection_named, is_hop_by_hop};

/// A head (request or response) larger than this is refused.
pub const MAX_HEAD: usize = 64 * 1024 - 1;
/// Header fields in one head at most (as hyper).
pub const MAX_HEADERS: usize = 100;

/// Empty header slots for httparse.
pub type Slots<'a> = [MaybeUninit<httparse::Header<'a>>; MAX_HEADERS];

pub fn slots<'a>() -> Slots<'a> {
    [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS]
}

/// Where each header's name and value lie in the head, so that the head
/// can be split off the read buffer and its bytes shared by the values.
/// Offsets fit in u16: a head is at most [`MAX_HEAD`] bytes, which callers
/// check before recording spans.
pub struct Spans {
    at: [[u16; 4]; MAX_HEADERS],
    n: usize,
}

impl Default for Spans {
    fn default() -> Spans {
        Spans {
            at: [[0; 4]; MAX_HEADERS],
            n: 0,
        }
    }
}

impl Spans {
    /// Records the fields of a head parsed from the front of `buf`.
    pub fn record(&mut self, buf: &[u8], headers: &[httparse::Header<'_>]) {
        let base = buf.as_ptr() as usize;
        for (f, h) in self.at.iter_mut().zip(headers) {
            *f = [
                (h.name.as_ptr() as usize - base) as u16,
                h.name.len() as u16,
                (h.value.as_ptr() as usize - base) as u16,
                h.value.len() as u16,
            ];
        }
        self.n = headers.len();
    }
}

/// What a head's fields say about its body and its connection.
#[derive(Debug, Default, Clone, Copy)]
pub struct Framing {
    /// `Connection: close`.
    pub close: bool,
    /// `Connection: keep-alive`.
    pub keep_alive: bool,
    /// `Connection: upgrade` and an `Upgrade` field.
    pub upgrade: bool,
    /// A `Transfer-Encoding` field is present.
    pub te: bool,
    /// ... and its last coding is chunked.
    pub chunked: bool,
    /// ... and chunked is its only coding.
    pub only_chunked: bool,
    /// The `Content-Length`, when every value agrees and is valid.
    pub length: Option<u64>,
    /// Why the `Content-Length` values are unusable.
    pub bad_length: Option<&'static str>,
}

/// The header map of a head and its framing. With `hop: Some(upgrade)`
/// hop-by-hop fields (RFC 9110 §7.6.1) and those `Connection` names are left
/// out, `Upgrade` kept when `upgrade`; with `None` every field is kept.
pub fn fields(
    head: &Bytes,
    spans: &Spans,
    hop: Option<bool>,
) -> Result<(HeaderMap, Framing), &'static str> {
    let mut headers = HeaderMap::with_capacity(spans.n);
    let mut f = Framing::default();
    let mut has_upgrade = false;
    let mut named = HeaderMap::new();
    let mut codings = 0usize;
    for &[ns, nl, vs, vl] in &spans.at[..spans.n] {
        let (ns, nl, vs, vl) = (ns as usize, nl as usize, vs as usize, vl as usize);
        let raw_name = &head[ns..ns + nl];
        let name = HeaderName::from_bytes(raw_name).map_err(|_| "bad header name")?;
        // Some servers read `_` as `-`: a field that would become a
        // framing field there is refused here.
        if raw_name.contains(&b'_') && looks_like_framing(raw_name) {
            return Err("header name with '_' that reads as a framing header");
        }
        let value = HeaderValue::from_maybe_shared(head.slice(vs..vs + vl))
            .map_err(|_| "bad header value")?;
        if name == header::CONNECTION {
            for t in value
                .as_bytes()
                .split(|&b| b == b',')
                .map(<[u8]>::trim_ascii)
            {
                if t.eq_ignore_ascii_case(b"close") {
                    f.close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    f.keep_alive = true;
                } else if t.eq_ignore_ascii_case(b"upgrade") {
                    f.upgrade = true;
                }
            }
        } else if name == header::TRANSFER_ENCODING {
            f.te = true;
            for c in value
                .as_bytes()
                .split(|&b| b == b',')
                .map(<[u8]>::trim_ascii)
            {
                if !c.is_empty() {
                    codings += 1;
                    // The last coding decides (RFC 9112 §6.3).
                    f.chunked = c.eq_ignore_ascii_case(b"chunked");
                }
            }
        } else if name == header::CONTENT_LENGTH {
            for part in value.as_bytes().split(|&b| b == b',') {
                match parse_length(part.trim_ascii()) {
                    Some(v) if f.length.is_none_or(|prev| prev == v) => f.length = Some(v),
                    Some(_) => f.bad_length = Some("conflicting Content-Length values"),
                    None => f.bad_length = Some("bad Content-Length"),
                }
            }
        } else if name == header::UPGRADE {
            has_upgrade = true;
        }
        match hop {
            Some(upgrade) if is_hop_by_hop(&name, upgrade) => {
                if name == header::CONNECTION
                    && value
                        .as_bytes()
                        .split(|&b| b == b',')
                        .any(|t| !is_plain_token(t))
                {
                    named.append(header::CONNECTION, value);
                }
            }
            _ => {
                headers.append(name, value);
            }
        }
    }
    f.upgrade &= has_upgrade;
    f.only_chunked = f.chunked && codings == 1;
    if f.bad_length.is_some() {
        f.length = None;
    }
    // Headers that `Connection` names are hop-by-hop too (rare).
    for name in connection_named(&named) {
        headers.remove(name);
    }
    Ok((headers, f))
}

fn looks_like_framing(name: &[u8]) -> bool {
    let norm = |b: &u8| {
        if *b == b'_' {
            b'-'
        } else {
            b.to_ascii_lowercase()
        }
    };
    let same =
        |want: &[u8]| name.len() == want.len() && name.iter().map(norm).eq(want.iter().copied());
    same(b"content-length") || same(b"transfer-encoding") || same(b"host") || same(b"connection")
}

/// A `Connection` token that names no header.
fn is_plain_token(t: &[u8]) -> bool {
    let t = t.trim_ascii();
    t.is_empty()
        || t.eq_ignore_ascii_case(b"close")
        || t.eq_ignore_ascii_case(b"keep-alive")
        || t.eq_ignore_ascii_case(b"upgrade")
}

/// A `Content-Length` value: one or more digits, leading zeros allowed
/// (RFC 9110 §8.6). `None`: not a number, or past `u64::MAX`. The one
/// parser for both sides and both checks, so that no two parts of the
/// proxy can read a length differently.
pub fn parse_length(b: &[u8]) -> Option<u64> {
    if b.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &d in b {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(n)
}

/// A chunk-size line (with its extensions and CRLF) at most this long.
pub const MAX_CHUNK_LINE: usize = 4096;
/// Trailer fields (with their CRLFs) at most this long in all.
pub const MAX_TRAILERS: usize = 16 * 1024;

/// An HTTP token character (RFC 9110 §5.6.2).
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses a chunk-size line at the front of `buf` exactly as RFC 9112 §7.1
/// says: `1*HEXDIG *( BWS ";" BWS token [ BWS "=" BWS ( token /
/// quoted-string ) ] ) CRLF`. `Ok(None)`: incomplete. Whether a line is
/// accepted never depends on how it was split into reads: a line is
/// refused when its bytes so far cannot begin a valid one, or when it is
/// longer than [`MAX_CHUNK_LINE`].
pub fn chunk_size_line(buf: &[u8]) -> Result<Option<(usize, u64)>, &'static str> {
    SizeLine::default().resume(buf)
}

/// A chunk-size line read so far: the grammar of [`chunk_size_line`] as a
/// state machine, so that each read only looks at the bytes it added (a
/// line sent a byte at a time costs its length, not its length squared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SizeLine {
    /// Bytes of the line already read.
    at: usize,
    size: u64,
    state: Line,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Line {
    /// In the hex digits (none yet when `at` is 0).
    #[default]
    Size,
    /// Right after the size, an extension name or value.
    AfterItem,
    /// Whitespace after an item: only `;` may follow.
    Bws,
    /// Whitespace after an extension's name: `=` or `;` may follow.
    NameBws,
    /// After `;`: whitespace, then a name.
    ExtStart,
    ExtName,
    /// After `=`: whitespace, then a token or a quoted string.
    ValueStart,
    ValueToken,
    Quoted,
    QuotedEscape,
    /// After CR: LF ends the line.
    Cr,
}

impl SizeLine {
    /// Reads on from where the last call stopped; `buf` holds the whole
    /// line so far, from its first byte.
    pub fn resume(&mut self, buf: &[u8]) -> Result<Option<(usize, u64)>, &'static str> {
        const EXT: &str = "bad chunk extension";
        const SIZE: &str = "bad chunk size";
        while let Some(&b) = buf.get(self.at) {
            let ws = b == b' ' || b == b'\t';
            self.state = match self.state {
                Line::Size if b.is_ascii_hexdigit() => {
                    if self.size > u64::MAX >> 4 {
                        return Err("chunk size too large");
                    }
                    self.size = self.size << 4 | u64::from(hex_value(b));
                    Line::Size
                }
                Line::Size if self.at == 0 => return Err(SIZE),
                Line::Size | Line::AfterItem => match b {
                    _ if ws => Line::Bws,
                    b';' => Line::ExtStart,
                    b'\r' => Line::Cr,
                    _ => return Err(SIZE),
                },
                Line::Bws => match b {
                    _ if ws => Line::Bws,
                    b';' => Line::ExtStart,
                    b'\r' => return Err("whitespace before the end of a chunk-size line"),
                    _ => return Err(SIZE),
                },
                Line::ExtStart => match b {
                    _ if ws => Line::ExtStart,
                    _ if is_tchar(b) => Line::ExtName,
                    _ => return Err(EXT),
                },
                Line::ExtName if is_tchar(b) => Line::ExtName,
                Line::ExtName | Line::NameBws => match b {
                    _ if ws => Line::NameBws,
                    b'=' => Line::ValueStart,
                    b';' => Line::ExtStart,
                    b'\r' if self.state == Line::ExtName => Line::Cr,
                    b'\r' => return Err("whitespace before the end of a chunk-size line"),
                    _ => return Err(SIZE),
                },
                Line::ValueStart => match b {
                    _ if ws => Line::ValueStart,
                    b'"' => Line::Quoted,
                    _ if is_tchar(b) => Line::ValueToken,
                    _ => return Err(EXT),
                },
                Line::ValueToken if is_tchar(b) => Line::ValueToken,
                Line::ValueToken => match b {
                    _ if ws => Line::Bws,
                    b';' => Line::ExtStart,
                    b'\r' => Line::Cr,
                    _ => return Err(SIZE),
                },
                Line::Quoted => match b {
                    b'"' => Line::AfterItem,
                    b'\\' => Line::QuotedEscape,
                    _ if ws || (0x21..0x7f).contains(&b) => Line::Quoted,
                    _ => return Err(EXT),
                },
                Line::QuotedEscape if b == b'\t' || (0x20..0x7f).contains(&b) => Line::Quoted,
                Line::QuotedEscape => return Err(EXT),
                Line::Cr if b == b'\n' => {
                    let used = self.at + 1;
                    if used > MAX_CHUNK_LINE {
                        return Err("chunk-size line too long");
                    }
                    return Ok(Some((used, self.size)));
                }
                Line::Cr => return Err("chunk-size line not ended by CRLF"),
            };
            self.at += 1;
        }
        if self.at >= MAX_CHUNK_LINE {
            return Err("chunk-size line too long");
        }
        Ok(None)
    }
}

/// The value of a hex digit (the caller checked it is one).
pub fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// One trailer line at the front of `buf`, whose first `scanned` bytes
/// hold no LF: `Ok(Some((used, last)))` with
/// `last` for the empty line that ends the trailers; `Ok(None)`:
/// incomplete. A trailer is a field line (RFC 9112 §5: `token ":" OWS
/// value OWS`, no obs-fold) ended by CRLF, or the body is refused.
fn trailer_line(buf: &[u8], scanned: usize) -> Result<Option<(usize, bool)>, &'static str> {
    let Some(lf) =
        memchr::memchr(b'\n', buf.get(scanned..).unwrap_or_default()).map(|i| scanned + i)
    else {
        return Ok(None);
    };
    if lf == 0 || buf[lf - 1] != b'\r' {
        return Err("trailer line not ended by CRLF");
    }
    let line = &buf[..lf - 1];
    if line.is_empty() {
        return Ok(Some((2, true)));
    }
    let name = line.iter().take_while(|&&b| is_tchar(b)).count();
    if name == 0 || line.get(name) != Some(&b':') {
        return Err("trailer is not a header field");
    }
    if !line[name + 1..]
        .iter()
        .all(|&b| b == b'\t' || b == b' ' || (0x21..0x7f).contains(&b) || b >= 0x80)
    {
        return Err("bad character in trailer field");
    }
    Ok(Some((lf + 1, false)))
}

/// `n` in decimal, without allocating.
pub fn itoa(mut n: u64, out: &mut [u8; 20]) -> &[u8] {
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &out[i..];
        }
    }
}

/// How a body is delimited, and how much of it is left.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decoder {
    Length(u64),
    Chunked(Chunk),
    /// Until the connection ends (responses only).
    Eof,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Chunk {
    /// A chunk-size line, read so far.
    Size(SizeLine),
    Data(u64),
    DataEnd,
    /// Trailer bytes accepted so far, and bytes of the current line known
    /// to hold no LF (a line's end is looked for in new bytes only).
    Trailers(usize, usize),
}

/// One step of decoding.
#[derive(Debug)]
pub enum Step {
    Data(Bytes),
    /// More bytes are needed (for [`Decoder::Eof`]: or the end of the
    /// connection, which ends the body).
    More,
    End,
}

impl Decoder {
    /// A chunked body, at its first chunk-size line.
    pub const fn chunked() -> Decoder {
        Decoder::Chunked(Chunk::Size(SizeLine {
            at: 0,
            size: 0,
            state: Line::Size,
        }))
    }

    pub fn is_end(&self) -> bool {
        matches!(self, Decoder::Done | Decoder::Length(0))
    }

    pub fn size_hint(&self) -> SizeHint {
        match *self {
            Decoder::Length(n) => SizeHint::with_exact(n),
            Decoder::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }

    /// Takes the next piece of the body from the front of `buf`, sharing
    /// its memory. Chunk extensions and trailer fields are read and dropped.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Step, &'static str> {
        loop {
            match *self {
                Decoder::Done | Decoder::Length(0) => {
                    *self = Decoder::Done;
                    return Ok(Step::End);
                }
                Decoder::Length(left) | Decoder::Chunked(Chunk::Data(left)) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let data = take(buf, left);
                    let left = left - data.len() as u64;
                    *self = match *self {
                        Decoder::Length(_) => Decoder::Length(left),
                        _ if left == 0 => Decoder::Chunked(Chunk::DataEnd),
                        _ => Decoder::Chunked(Chunk::Data(left)),
                    };
                    return Ok(Step::Data(data));
                }
                Decoder::Eof => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    return Ok(Step::Data(take(buf, u64::MAX)));
                }
                Decoder::Chunked(Chunk::Size(mut line)) => match line.resume(buf)? {
                    Some((used, size)) => {
                        buf.advance(used);
                        *self = Decoder::Chunked(if size == 0 {
                            Chunk::Trailers(0, 0)
                        } else {
                            Chunk::Data(size)
                        });
                    }
                    None => {
                        *self = Decoder::Chunked(Chunk::Size(line));
                        return Ok(Step::More);
                    }
                },
                Decoder::Chunked(Chunk::DataEnd) => {
                    if buf.len() < 2 {
                        return Ok(Step::More);
                    }
                    if !buf.starts_with(b"\r\n") {
                        return Err("chunk not followed by CRLF");
                    }
                    buf.advance(2);
                    *self = Decoder::chunked();
                }
                Decoder::Chunked(Chunk::Trailers(seen, scanned)) => {
                    match trailer_line(buf, scanned)? {
                        Some((used, _)) if seen + used > MAX_TRAILERS => {
                            return Err("trailers too large")
                        }
                        Some((used, true)) => {
                            buf.advance(used);
                            *self = Decoder::Done;
                        }
                        Some((used, false)) => {
                            buf.advance(used);
                            *self = Decoder::Chunked(Chunk::Trailers(seen + used, 0));
                        }
                        None if seen + buf.len() >= MAX_TRAILERS => {
                            return Err("trailers too large")
                        }
                        None => {
                            *self = Decoder::Chunked(Chunk::Trailers(seen, buf.len()));
                            return Ok(Step::More);
                        }
                    }
                }
            }
        }
    }
}

/// Reads start at this size and double while they fill the buffer.
pub const MIN_READ: usize = 8 * 1024;
const MAX_READ: usize = 256 * 1024;

/// Bytes read from a connection and not yet consumed. Reads grow from
/// [`MIN_READ`] while they fill the room they were given (a large body),
/// up to 256 KiB.
#[derive(Debug)]
pub struct InBuf {
    buf: BytesMut,
    read_size: usize,
}

impl Default for InBuf {
    fn default() -> InBuf {
        InBuf {
            buf: BytesMut::new(),
            read_size: MIN_READ,
        }
    }
}

impl Deref for InBuf {
    type Target = BytesMut;
    fn deref(&self) -> &BytesMut {
        &self.buf
    }
}

impl DerefMut for InBuf {
    fn deref_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("invalid body: {0}")]
    Invalid(&'static str),
    #[error("the connection closed before the body ended")]
    Incomplete,
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl InBuf {
    /// Reads more from `io`: how many bytes came (0 at end of file).
    pub fn poll_fill<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < self.read_size / 2 {
            self.buf.reserve(self.read_size);
        }
        let room = self.buf.capacity() - self.buf.len();
        let n = ready!(pin!(io.read_buf(&mut self.buf)).poll(cx))?;
        if n == room && self.read_size < MAX_READ {
            self.read_size *= 2;
        }
        Poll::Ready(Ok(n))
    }

    /// The next piece of a body delimited by `dec`, read from `io` as
    /// needed; `None` at its end.
    pub fn poll_body<R: AsyncRead + Unpin>(
        &mut self,
        dec: &mut Decoder,
        io: &mut R,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, BodyError>> {
        loop {
            match dec.decode(&mut self.buf).map_err(BodyError::Invalid)? {
                Step::Data(data) => return Poll::Ready(Ok(Some(data))),
                Step::End => return Poll::Ready(Ok(None)),
                Step::More => match ready!(self.poll_fill(io, cx))? {
                    // The end of the connection ends a body delimited by it.
                    0 if *dec == Decoder::Eof => {
                        *dec = Decoder::Done;
                        return Poll::Ready(Ok(None));
                    }
                    0 => return Poll::Ready(Err(BodyError::Incomplete)),
                    _ => {}
                },
            }
        }
    }

    /// Gives back what a large body grew, once nothing is left unread.
    pub fn shrink(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 4 * MIN_READ {
            self.buf = BytesMut::new();
        }
        self.read_size = MIN_READ;
    }

    pub fn into_inner(self) -> BytesMut {
        self.buf
    }
}

/// A chunk-size line: `n` in hex and CRLF.
pub fn chunk_line(mut n: usize, out: &mut [u8; 18]) -> &[u8] {
    let mut i = out.len() - 2;
    out[i..].copy_from_slice(b"\r\n");
    loop {
        i -= 1;
        out[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            return &out[i..];
        }
    }
}

/// Up to `max` bytes from the front of `buf`, sharing its memory.
fn take(buf: &mut BytesMut, max: u64) -> Bytes {
    let n = buf.len().min(usize::try_from(max).unwrap_or(usize::MAX));
    buf.split_to(n).freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(mut d: Decoder, input: &[u8]) -> Result<(Vec<u8>, Decoder), &'static str> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match d.decode(&mut buf)? {
                Step::Data(b) => out.extend_from_slice(&b),
                Step::More | Step::End => return Ok((out, d)),
            }
        }
    }

    #[test]
    fn bodies_decode_by_length_and_by_chunks() {
        let (out, d) = decode_all(Decoder::Length(5), b"helloNEXT").unwrap();
        assert_eq!(out, b"hello");
        assert_eq!(d, Decoder::Done);
        let chunked = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\nGET";
        let (out, d) = decode_all(Decoder::chunked(), chunked).unwrap();
        assert_eq!(out, b"hello world");
        assert_eq!(d, Decoder::Done);
        // Cut short: more is needed, and what came is not lost.
        let (out, d) = decode_all(Decoder::chunked(), b"5\r\nhel").unwrap();
        assert_eq!(out, b"hel");
        assert_eq!(d, Decoder::Chunked(Chunk::Data(2)));
        assert!(decode_all(Decoder::chunked(), b"zz\r\n").is_err());
        assert!(decode_all(Decoder::chunked(), b"2\r\nokXX").is_err());
    }

    /// Feeds `input` as it would arrive in pieces of `step` bytes: what
    /// was decoded, and where decoding ended (or its error).
    fn decode_in_steps(input: &[u8], step: usize) -> (Vec<u8>, Result<Decoder, &'static str>) {
        let mut d = Decoder::chunked();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            buf.extend_from_slice(piece);
            loop {
                match d.decode(&mut buf) {
                    Ok(Step::Data(b)) => out.extend_from_slice(&b),
                    Ok(Step::More) => break,
                    Ok(Step::End) => return (out, Ok(d)),
                    Err(e) => return (out, Err(e)),
                }
            }
        }
        (out, Ok(d))
    }

    #[test]
    fn chunked_decoding_does_not_depend_on_how_reads_split_the_body() {
        let pieces: [&[u8]; 16] = [
            b"5\r\nhello\r\n",
            b"3;a=b\r\nabc\r\n",
            b"2 ; x = \"q\\\"\"\r\nzz\r\n",
            b"0\r\n\r\n",
            b"0\r\nx-t: 1\r\n\r\n",
            b"5\nhello\r\n",
            b"5 \r\nhello\r\n",
            b";x\r\n",
            b"\r\n",
            b"0\r\n\n",
            b"5;\0\r\n",
            b"0\r\nbad\r\n\r\n",
            b"00000000000000000001\r\nx\r\n",
            b"fffffffffffffffff\r\n",
            b"5;a=\"",
            b"1\r\nxy",
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..3000 {
            let mut input = Vec::new();
            for _ in 0..rng.usize(1..5) {
                input.extend_from_slice(pieces[rng.usize(..pieces.len())]);
            }
            // A long extension, around the line limit.
            if rng.u8(..8) == 0 {
                let n = MAX_CHUNK_LINE - 8 + rng.usize(..16);
                input.splice(0..0, format!("1;x={}\r\nz\r\n", "a".repeat(n)).into_bytes());
            }
            let whole = decode_in_steps(&input, input.len());
            // Byte by byte only for short inputs: a line is re-read from its
            // start on each read (bounded by MAX_CHUNK_LINE).
            let steps: &[usize] = if input.len() < 512 {
                &[1, 2, 3, 7, 64]
            } else {
                &[61, 1000]
            };
            for &step in steps {
                assert_eq!(
                    decode_in_steps(&input, step),
                    whole,
                    "{:?} in steps of {step}",
                    String::from_utf8_lossy(&input)
                );
            }
        }
    }

    #[test]
    fn a_line_sent_a_byte_at_a_time_is_read_once() {
        // A 4 KiB chunk-size line and a trailer, one byte per read: each
        // read resumes where the last one stopped.
        let mut body = b"5".to_vec();
        while body.len() < MAX_CHUNK_LINE - 20 {
            body.extend_from_slice(b";ext=\"v\\\"w\"");
        }
        body.extend_from_slice(b"\r\nhello\r\n0\r\nx-t: 1\r\n\r\n");
        let mut d = Decoder::chunked();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for (n, &b) in body.iter().enumerate() {
            buf.extend_from_slice(&[b]);
            while let Step::Data(data) = d.decode(&mut buf).unwrap() {
                out.extend_from_slice(&data);
            }
            match d {
                Decoder::Chunked(Chunk::Size(line)) if n < MAX_CHUNK_LINE => {
                    assert_eq!(line.at, buf.len(), "after byte {n}")
                }
                Decoder::Chunked(Chunk::Trailers(_, scanned)) => assert_eq!(scanned, buf.len()),
                _ => {}
            }
        }
        assert_eq!(out, b"hello");
        assert_eq!(d, Decoder::Done);
    }

    #[test]
    fn chunk_size_lines_follow_rfc_9112() {
        for ok in [
            &b"5\r\n"[..],
            b"05\r\n",
            b"5;a\r\n",
            b"5;a=b\r\n",
            b"5 ;a\r\n",
            b"5;a=\"x y\"\r\n",
            b"5;a=\"\\\"\"\r\n",
            b"5;a;b=c\r\n",
            b"ABCdef\r\n",
        ] {
            assert!(
                matches!(chunk_size_line(ok), Ok(Some(_))),
                "{}",
                String::from_utf8_lossy(ok)
            );
        }
        for bad in [
            &b"\r\n"[..],
            b" \r\n",
            b"5 \r\n",
            b"5\n",
            b"5\rx",
            b";a\r\n",
            b"5;\r\n",
            b"5;a=\r\n",
            b"5;a b\r\n",
            b"5;a\0\r\n",
            b"5;a=\"\x7f\"\r\n",
            b"-5\r\n",
            b"0x5\r\n",
            b"10000000000000000\r\n",
        ] {
            assert!(
                chunk_size_line(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(chunk_size_line(b"5;a=b"), Ok(None));
        assert_eq!(chunk_size_line(b"ff"), Ok(None));
        assert_eq!(parse_length(b"00000000000000000005"), Some(5));
        assert_eq!(parse_length(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_length(b"18446744073709551616"), None);
        assert_eq!(parse_length(b""), None);
        assert_eq!(parse_length(b"+1"), None);
    }

    #[test]
    fn fields_report_framing_and_hop_by_hop_ones_can_be_left_out() {
        let raw = b"GET / HTTP/1.1\r\nConnection: keep-alive, x-secret\r\nX-Secret: 1\r\nContent-Length: 4, 4\r\nTransfer-Encoding: gzip, chunked\r\nKeep-Alive: 5\r\nX-A: b\r\n\r\n";
        let mut slots = slots();
        let mut req = httparse::Request::new(&mut []);
        let len = match httparse::ParserConfig::default()
            .parse_request_with_uninit_headers(&mut req, raw, &mut slots)
            .unwrap()
        {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("partial"),
        };
        let mut spans = Spans::default();
        spans.record(raw, req.headers);
        let head = Bytes::copy_from_slice(&raw[..len]);
        let (all, f) = fields(&head, &spans, None).unwrap();
        assert_eq!(all.len(), 6);
        assert!(f.keep_alive && !f.close && f.te && f.chunked && !f.only_chunked);
        assert_eq!(f.length, Some(4));
        let (kept, _) = fields(&head, &spans, Some(false)).unwrap();
        let mut names: Vec<&str> = kept.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-length", "x-a"]);
    }
}
