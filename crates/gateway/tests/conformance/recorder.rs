//! The upstream side of the suite: a server that records every byte it
//! receives and re-reads it with a strict RFC 9112 parser of its own
//! (written apart from centinela's, so that the two can disagree). Each
//! request it reads is recorded whole, head and body, and answered `200`
//! (or `101` to an upgrade, after which it echoes). Bytes it cannot read
//! as a request are recorded as an error, and the connection is closed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request as received, or why the bytes could not be read as one.
pub type Received = Result<Vec<u8>, String>;

/// What one upstream received, in order, and how many of its
/// connections hold part of a request (not yet recorded).
#[derive(Clone, Default)]
pub struct Log(pub Arc<Mutex<Vec<Received>>>, pub Arc<AtomicUsize>);

impl Log {
    pub fn take(&self) -> Vec<Received> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    /// Waits (up to 2 s) until no connection holds part of a request: a
    /// stream the gateway cut is recorded when its connection closes,
    /// which may come after the client's side is done.
    pub async fn settle(&self) {
        let end = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        while self.1.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < end {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
}

/// Counts the connection in `Log.1` while it holds part of a request.
struct Partial<'a> {
    log: &'a Log,
    counted: bool,
}

impl Partial<'_> {
    fn set(&mut self, holding: bool) {
        if holding != self.counted {
            if holding {
                self.log.1.fetch_add(1, Ordering::SeqCst);
            } else {
                self.log.1.fetch_sub(1, Ordering::SeqCst);
            }
            self.counted = holding;
        }
    }
}

impl Drop for Partial<'_> {
    fn drop(&mut self) {
        self.set(false);
    }
}

pub async fn start() -> (SocketAddr, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Log::default();
    let l = log.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(s, l.clone()));
        }
    });
    (addr, log)
}

async fn serve(mut s: tokio::net::TcpStream, log: Log) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut partial = Partial {
        log: &log,
        counted: false,
    };
    loop {
        match parse(&buf) {
            Ok(Some((n, upgrade))) => {
                let req: Vec<u8> = buf.drain(..n).collect();
                let is_head = req.starts_with(b"HEAD ");
                log.0.lock().unwrap().push(Ok(req));
                if upgrade {
                    let _ = s
                        .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n")
                        .await;
                    // Echo until the end.
                    let _ = s.write_all(&buf).await;
                    loop {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => {
                                if s.write_all(&chunk[..k]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
                let reply: &[u8] = if is_head {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                };
                if s.write_all(reply).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                log.0
                    .lock()
                    .unwrap()
                    .push(Err(format!("{e}: {:?}", String::from_utf8_lossy(&buf))));
                return;
            }
        }
        partial.set(!buf.is_empty());
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                if !buf.is_empty() {
                    log.0.lock().unwrap().push(Err(format!(
                        "connection ended inside a request: {:?}",
                        String::from_utf8_lossy(&buf)
                    )));
                }
                return;
            }
            Ok(k) => {
                buf.extend_from_slice(&chunk[..k]);
                // Counted from the first byte, before it can be parsed.
                partial.set(true);
            }
        }
    }
}

fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// One complete request at the front of `buf`: its length and whether it
/// asks to upgrade. Strict: CRLF only, single spaces, tokens, one Host,
/// a length of digits or `chunked` alone, never both.
fn parse(buf: &[u8]) -> Result<Option<(usize, bool)>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = &buf[..end];
    let mut lines = head.split(|&b| b == b'\n');
    let line = lines.next().unwrap_or_default();
    let line = line
        .strip_suffix(b"\r")
        .ok_or("request line without CRLF")?;
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    if parts.len() != 3
        || parts[0].is_empty()
        || !parts[0].iter().all(|&b| tchar(b))
        || parts[1].is_empty()
        || parts[2] != b"HTTP/1.1"
    {
        return Err(format!(
            "bad request line {:?}",
            String::from_utf8_lossy(line)
        ));
    }
    if !(parts[1].starts_with(b"/") || parts[1] == b"*")
        || !parts[1].iter().all(|&b| (0x21..0x7f).contains(&b))
    {
        return Err("target not in origin form".into());
    }
    let mut hosts = 0;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut upgrade = false;
    let count = head.split(|&b| b == b'\n').count();
    for (i, l) in lines.enumerate() {
        // The last line has no CR left (the split was on "\r\n\r\n").
        let l = if i + 2 == count {
            l
        } else {
            l.strip_suffix(b"\r").ok_or("field line without CRLF")?
        };
        if l.contains(&b'\r') {
            return Err("bare CR".into());
        }
        let colon = l
            .iter()
            .position(|&b| b == b':')
            .ok_or("field without colon")?;
        let (name, value) = (&l[..colon], l[colon + 1..].trim_ascii());
        if name.is_empty() || !name.iter().all(|&b| tchar(b)) {
            return Err(format!(
                "bad field name {:?}",
                String::from_utf8_lossy(name)
            ));
        }
        if !value
            .iter()
            .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80)
        {
            return Err("bad field value".into());
        }
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        match name.as_str() {
            "host" => hosts += 1,
            "content-length" => {
                if length.is_some() || value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                    return Err("bad content-length".into());
                }
                length = Some(
                    String::from_utf8_lossy(value)
                        .parse()
                        .map_err(|_| "length")?,
                );
            }
            "transfer-encoding" => {
                if chunked || value != b"chunked" {
                    return Err("bad transfer-encoding".into());
                }
                chunked = true;
            }
            "upgrade" => upgrade = true,
            _ => {}
        }
    }
    if hosts != 1 {
        return Err(format!("{hosts} Host fields"));
    }
    if chunked && length.is_some() {
        return Err("both content-length and transfer-encoding".into());
    }
    let mut at = end + 4;
    if let Some(n) = length {
        let n = n as usize;
        if buf.len() < at + n {
            return Ok(None);
        }
        return Ok(Some((at + n, upgrade)));
    }
    if chunked {
        loop {
            let Some(lf) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
                return Ok(None);
            };
            let size = &buf[at..at + lf];
            if size.is_empty() || !size.iter().all(u8::is_ascii_hexdigit) {
                return Err("bad chunk size".into());
            }
            let size = usize::from_str_radix(std::str::from_utf8(size).unwrap(), 16)
                .map_err(|_| "chunk size")?;
            at += lf + 2;
            if size == 0 {
                if buf.len() < at + 2 {
                    return Ok(None);
                }
                if &buf[at..at + 2] != b"\r\n" {
                    return Err("trailers sent upstream".into());
                }
                return Ok(Some((at + 2, upgrade)));
            }
            if buf.len() < at + size + 2 {
                return Ok(None);
            }
            if &buf[at + size..at + size + 2] != b"\r\n" {
                return Err("chunk not followed by CRLF".into());
            }
            at += size + 2;
        }
    }
    Ok(Some((at, upgrade)))
}
