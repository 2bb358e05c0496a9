//! The access log: one line per request, formatted straight into a
//! buffer and written by a thread of its own, so that a request never
//! waits on a write, a lock held by a writer, or a full pipe.
//!
//! Each thread appends to one of a few shards (a `Vec` behind a mutex that
//! only the threads sharing that shard touch). A flusher thread swaps the
//! shards' buffers out every 100 ms, or sooner when one passes 64 KiB, and
//! writes them to stderr with the standard stderr lock held, so that the
//! other log lines never land inside a chunk. A line that finds its shard
//! full (1 MiB waiting: the output is stuck) is dropped and counted in
//! `centinela_access_log_dropped_total`, never waited for.
//!
//! The lines read like the `tracing` formatter's, in both formats, so that
//! the access log and the rest of the log parse the same way.

use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread::Thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use centinela_config::LogFormat;

use crate::http::codec::itoa;

/// Shards: threads share them round-robin.
const SHARDS: usize = 8;
/// Bytes waiting in a shard that wake the flusher early.
const WAKE_AT: usize = 64 << 10;
/// Bytes waiting in a shard past which lines are dropped.
const FULL_AT: usize = 1 << 20;
/// The flusher's period when nothing wakes it.
const PERIOD: Duration = Duration::from_millis(100);

/// What one access line says.
pub struct Line<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub upstream: &'a str,
    pub server: &'a str,
    pub attempts: u32,
    pub duration: Duration,
    pub request_id: &'a [u8],
    pub trace_id: &'a str,
    /// The real client (see `[client_ip]`).
    pub client: std::net::IpAddr,
    /// Why the gateway refused the request itself (`ip_denied`,
    /// `rate_limited`); written only when it did.
    pub refused: Option<&'a str>,
}

struct Writer {
    shards: [Mutex<Vec<u8>>; SHARDS],
    /// Serializes flushes, so that a shard's lines keep their order.
    flushing: Mutex<[Vec<u8>; SHARDS]>,
    flusher: OnceLock<Thread>,
}

/// Made at the first access line: no thread when the log is off.
static WRITER: OnceLock<Writer> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn writer() -> &'static Writer {
    WRITER.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(|| loop {
                std::thread::park_timeout(PERIOD);
                flush();
            });
        let w = Writer {
            shards: Default::default(),
            flushing: Mutex::new(Default::default()),
            flusher: OnceLock::new(),
        };
        match spawned {
            Ok(h) => {
                let _ = w.flusher.set(h.thread().clone());
            }
            // No thread: lines wait for `flush` (at shutdown) and are
            // dropped, counted, once the shards are full.
            Err(e) => tracing::error!(error = %e, "Cannot start the access log's writer thread"),
        }
        w
    })
}

fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    MINE.with(|i| *i)
}

/// Appends the line for one request.
pub fn log(format: LogFormat, line: &Line<'_>) {
    let w = writer();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut buf = lock(&w.shards[shard_index()]);
    if buf.len() >= FULL_AT {
        drop(buf);
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let before = buf.len();
    match format {
        LogFormat::Text => text(&mut buf, now, line),
        LogFormat::Json => json(&mut buf, now, line),
    }
    let wake = before < WAKE_AT && buf.len() >= WAKE_AT;
    drop(buf);
    if wake {
        if let Some(t) = w.flusher.get() {
            t.unpark();
        }
    }
}

/// Writes out every line appended so far (the flusher's work; also called
/// at shutdown).
pub fn flush() {
    let Some(w) = WRITER.get() else {
        return;
    };
    let mut out = lock(&w.flushing);
    for (shard, spare) in w.shards.iter().zip(out.iter_mut()) {
        let mut b = lock(shard);
        if !b.is_empty() {
            std::mem::swap(&mut *b, spare);
        }
    }
    if out.iter().all(Vec::is_empty) {
        return;
    }
    {
        let mut err = std::io::stderr().lock();
        for b in out.iter() {
            if !b.is_empty() {
                // Nothing to tell if stderr is gone: the lines are lost.
                let _ = err.write_all(b);
            }
        }
        let _ = err.flush();
    }
    for b in out.iter_mut() {
        b.clear();
        // A burst's buffer is not kept for ever.
        b.shrink_to(WAKE_AT * 2);
    }
}

/// Lines dropped because the output could not keep up.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// `2026-12-02T17:47:28.123456Z`: the `tracing` formatter's timestamp.
fn timestamp(out: &mut Vec<u8>, now: Duration) {
    thread_local! {
        static CACHED: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
    }
    let secs = now.as_secs();
    let date = CACHED.with(|c| {
        let (at, text) = c.get();
        if at == secs {
            text
        } else {
            let text = centinela_observe::clock::date_time(secs);
            c.set((secs, text));
            text
        }
    });
    out.extend_from_slice(&date);
    out.push(b'.');
    fixed(out, u64::from(now.subsec_micros()), 6);
    out.push(b'Z');
}

/// `v` in exactly `width` digits.
fn fixed(out: &mut Vec<u8>, mut v: u64, width: usize) {
    let at = out.len();
    out.resize(at + width, b'0');
    for d in out[at..].iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

fn int(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa(v, &mut [0u8; 20]));
}

/// Milliseconds with microsecond precision: `12.345`.
fn millis(out: &mut Vec<u8>, d: Duration) {
    let us = d.as_micros() as u64;
    int(out, us / 1000);
    out.push(b'.');
    fixed(out, us % 1000, 3);
}

/// A string the way `{:?}` writes it (the text format): quoted, with `"`
/// and `\` escaped, and control characters as `\u{…}`.
fn quoted(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    escaped(out, s, |out, c| {
        out.extend_from_slice(b"\\u{");
        out.extend_from_slice(format!("{c:x}").as_bytes());
        out.push(b'}');
    });
    out.push(b'"');
}

/// A JSON string: quoted, `"` and `\` escaped, control characters `\u00XX`.
fn json_str(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    escaped(out, s, |out, c| {
        out.extend_from_slice(b"\\u00");
        const HEX: &[u8; 16] = b"0123456789abcdef";
        out.push(HEX[usize::from(c >> 4)]);
        out.push(HEX[usize::from(c & 0xf)]);
    });
    out.push(b'"');
}

fn escaped(out: &mut Vec<u8>, s: &[u8], control: impl Fn(&mut Vec<u8>, u8)) {
    if !s
        .iter()
        .any(|&c| c < 0x20 || c == b'"' || c == b'\\' || c == 0x7f)
    {
        out.extend_from_slice(s);
        return;
    }
    for &c in s {
        match c {
            b'"' | b'\\' => {
                out.push(b'\\');
                out.push(c);
            }
            c if c < 0x20 || c == 0x7f => control(out, c),
            c => out.push(c),
        }
    }
}

fn text(out: &mut Vec<u8>, now: Duration, l: &Line<'_>) {
    timestamp(out, now);
    out.extend_from_slice(b"  INFO access: request method=");
    out.extend_from_slice(l.method.as_bytes());
    out.extend_from_slice(b" path=");
    quoted(out, l.path.as_bytes());
    out.extend_from_slice(b" client=");
    crate::http::headers::push_ip(out, l.client);
    out.extend_from_slice(b" status=");
    int(out, u64::from(l.status));
    out.extend_from_slice(b" upstream=");
    quoted(out, l.upstream.as_bytes());
    out.extend_from_slice(b" server=");
    quoted(out, l.server.as_bytes());
    out.extend_from_slice(b" attempts=");
    int(out, u64::from(l.attempts));
    out.extend_from_slice(b" duration_ms=");
    millis(out, l.duration);
    out.extend_from_slice(b" request_id=");
    quoted(out, l.request_id);
    out.extend_from_slice(b" trace_id=");
    quoted(out, l.trace_id.as_bytes());
    if let Some(r) = l.refused {
        out.extend_from_slice(b" refused=");
        out.extend_from_slice(r.as_bytes());
    }
    out.push(b'\n');
}

fn json(out: &mut Vec<u8>, now: Duration, l: &Line<'_>) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(out, now);
    out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"method\":");
    json_str(out, l.method.as_bytes());
    out.extend_from_slice(b",\"path\":");
    json_str(out, l.path.as_bytes());
    out.extend_from_slice(b",\"client\":\"");
    crate::http::headers::push_ip(out, l.client);
    out.push(b'"');
    out.extend_from_slice(b",\"status\":");
    int(out, u64::from(l.status));
    out.extend_from_slice(b",\"upstream\":");
    json_str(out, l.upstream.as_bytes());
    out.extend_from_slice(b",\"server\":");
    json_str(out, l.server.as_bytes());
    out.extend_from_slice(b",\"attempts\":");
    int(out, u64::from(l.attempts));
    out.extend_from_slice(b",\"duration_ms\":");
    millis(out, l.duration);
    out.extend_from_slice(b",\"request_id\":");
    json_str(out, l.request_id);
    out.extend_from_slice(b",\"trace_id\":");
    json_str(out, l.trace_id.as_bytes());
    if let Some(r) = l.refused {
        out.extend_from_slice(b",\"refused\":");
        json_str(out, r.as_bytes());
    }
    out.extend_from_slice(b",\"target\":\"access\"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(path: &'a str, rid: &'a [u8]) -> Line<'a> {
        Line {
            method: "GET",
            path,
            status: 200,
            upstream: "app",
            server: "127.0.0.1:8080",
            attempts: 1,
            duration: Duration::from_micros(12_345),
            request_id: rid,
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
            client: "203.0.113.7".parse().unwrap(),
            refused: None,
        }
    }

    #[test]
    fn text_lines_read_like_the_tracing_formatter() {
        let mut out = Vec::new();
        let now = Duration::new(1_796_221_235, 123_456_789);
        text(&mut out, now, &line("/a\"b\\c\u{1}", b"rid-1"));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-12-02T14:20:35.123456Z  INFO access: request method=GET path=\"/a\\\"b\\\\c\\u{1}\" client=203.0.113.7 status=200 upstream=\"app\" server=\"127.0.0.1:8080\" attempts=1 duration_ms=12.345 request_id=\"rid-1\" trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"\n"
        );
        let mut out = Vec::new();
        let mut l = line("/", b"r");
        l.duration = Duration::from_micros(7);
        text(&mut out, Duration::from_secs(0), &l);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("1970-01-01T00:00:00.000000Z  INFO"), "{s}");
        assert!(s.contains(" duration_ms=0.007 "), "{s}");
        // A refusal says why, at the end.
        let mut out = Vec::new();
        l.refused = Some("rate_limited");
        text(&mut out, Duration::from_secs(0), &l);
        let s = String::from_utf8(out).unwrap();
        assert!(s.ends_with(" refused=rate_limited\n"), "{s}");
        let mut out = Vec::new();
        json(&mut out, Duration::from_secs(0), &l);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (v["client"].as_str(), v["refused"].as_str()),
            (Some("203.0.113.7"), Some("rate_limited"))
        );
    }

    #[test]
    fn json_lines_parse_and_carry_every_field() {
        let mut out = Vec::new();
        let now = Duration::new(1_796_221_235, 5_000);
        json(&mut out, now, &line("/a\"b\\c\u{1}\u{7f}", b"rid-\"2"));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["timestamp"], "2026-12-02T14:20:35.000005Z");
        assert_eq!(v["target"], "access");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "request");
        assert_eq!(v["path"], "/a\"b\\c\u{1}\u{7f}");
        assert_eq!(v["request_id"], "rid-\"2");
        assert_eq!(v["status"], 200);
        assert_eq!(v["attempts"], 1);
        assert_eq!(v["duration_ms"].as_f64(), Some(12.345));
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(out.ends_with(b"}\n"));
    }
}
