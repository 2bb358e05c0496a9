//! HTTP/1.x as clients speak it to the gateway, byte for byte: keep-alive,
//! pipelining, HTTP/1.0, chunked and `Expect: 100-continue` request bodies,
//! HEAD, oversized heads.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::*;

/// A response read off a raw connection.
#[derive(Debug)]
struct Raw {
    head: String,
    body: Vec<u8>,
}

impl Raw {
    fn status(&self) -> u16 {
        self.head[9..12].parse().expect("a status code")
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// Reads one response from `s`, whose bytes past it stay in `buf`.
/// `no_body`: a response to HEAD.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>, no_body: bool) -> Raw {
    let deadline = Duration::from_secs(5);
    tokio::time::timeout(deadline, async {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            fill(s, buf).await;
        };
        let head = String::from_utf8(buf.drain(..end).collect()).expect("a UTF-8 head");
        let mut raw = Raw {
            head,
            body: Vec::new(),
        };
        if no_body {
            return raw;
        }
        if let Some(n) = raw.header("content-length") {
            let n: usize = n.parse().expect("a length");
            while buf.len() < n {
                fill(s, buf).await;
            }
            raw.body = buf.drain(..n).collect();
        } else if raw.header("transfer-encoding").as_deref() == Some("chunked") {
            loop {
                let line_end = loop {
                    if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    fill(s, buf).await;
                };
                let line = String::from_utf8(buf.drain(..line_end + 2).collect()).unwrap();
                let size = usize::from_str_radix(line.trim(), 16).expect("a chunk size");
                while buf.len() < size + 2 {
                    fill(s, buf).await;
                }
                raw.body.extend(buf.drain(..size));
                buf.drain(..2);
                if size == 0 {
                    break;
                }
            }
        }
        raw
    })
    .await
    .expect("a response within 5 s")
}

async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 16384];
    let n = s.read(&mut chunk).await.expect("read");
    assert!(n > 0, "the gateway closed the connection; had {buf:?}");
    buf.extend_from_slice(&chunk[..n]);
}

/// Does the gateway close `s` (end of file) within 5 s?
async fn closes(s: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await,
        Ok(Ok(_))
    )
}

#[tokio::test]
async fn keep_alive_pipelining_and_http_1_0() {
    let up = servers(1).await;
    let gw = start(&config(&[(up[0].addr, 1)], "")).await;
    let addr = gw.listener_addr("web").unwrap();

    // Two requests in one write: two answers, in order, same connection.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let a = read_response(&mut s, &mut buf, false).await;
    let b = read_response(&mut s, &mut buf, false).await;
    assert_eq!((a.status(), b.status()), (200, 200));
    assert_eq!(a.header("x-echo-path").as_deref(), Some("/a"));
    assert_eq!(b.header("x-echo-path").as_deref(), Some("/b"));
    assert_eq!(a.body, b"ok");
    assert!(a.header("date").is_some(), "{}", a.head);
    // And a third, later, on the same connection.
    s.write_all(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let c = read_response(&mut s, &mut buf, false).await;
    assert_eq!(c.header("x-echo-path").as_deref(), Some("/c"));

    // HTTP/1.0 without keep-alive: one answer, then the gateway closes.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /old HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert!(closes(&mut s).await);

    // HTTP/1.0 asking for keep-alive gets it.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    for path in ["/k1", "/k2"] {
        let req = format!("GET {path} HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let r = read_response(&mut s, &mut buf, false).await;
        assert_eq!(r.header("connection").as_deref(), Some("keep-alive"));
        assert_eq!(r.header("x-echo-path").as_deref(), Some(path));
    }

    // `Connection: close` from an HTTP/1.1 client is honoured.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s, &mut Vec::new(), false).await;
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert!(closes(&mut s).await);
    assert_eq!(up[0].hits(), 7);
}

#[tokio::test]
async fn chunked_and_expect_continue_request_bodies_reach_the_server() {
    let up = servers(1).await;
    let gw = start(&config(&[(up[0].addr, 1)], "")).await;
    let addr = gw.listener_addr("web").unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();

    // A chunked body, with an extension and a trailer.
    s.write_all(
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\n",
    )
    .await
    .unwrap();
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!(r.status(), 200, "{}", r.head);
    assert_eq!(r.header("x-echo-body-len").as_deref(), Some("11"));

    // `Expect: 100-continue`: the body is sent only after `100 Continue`.
    s.write_all(b"PUT /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let interim = read_response(&mut s, &mut buf, true).await;
    assert_eq!(interim.status(), 100, "{}", interim.head);
    s.write_all(b"12345").await.unwrap();
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!(r.status(), 200, "{}", r.head);
    assert_eq!(r.header("x-echo-body-len").as_deref(), Some("5"));

    // A body sent in small pieces, then the connection is still good.
    s.write_all(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    for piece in [&b"def"[..], b"ghij"] {
        tokio::task::yield_now().await;
        s.write_all(piece).await.unwrap();
    }
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!(r.header("x-echo-body-len").as_deref(), Some("10"));
    assert_eq!(up[0].hits(), 3);
}

#[tokio::test]
async fn head_responses_have_no_body_and_oversized_heads_get_431() {
    let up = servers(1).await;
    let gw = start(&config(&[(up[0].addr, 1)], "")).await;
    let addr = gw.listener_addr("web").unwrap();

    // HEAD: the length of the GET's body, no body; the next answer on the
    // same connection is read intact.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /g HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let h = read_response(&mut s, &mut buf, true).await;
    assert_eq!(h.status(), 200);
    assert_eq!(h.header("content-length").as_deref(), Some("2"));
    let g = read_response(&mut s, &mut buf, false).await;
    assert_eq!(g.header("x-echo-path").as_deref(), Some("/g"));
    assert_eq!(g.body, b"ok");

    // A head over 64 KiB: 431 and the connection closed, nothing forwarded.
    let hits = up[0].hits();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    // The gateway may close before reading all of it.
    let _ = s.write_all(big.as_bytes()).await;
    let r = read_response(&mut s, &mut Vec::new(), false).await;
    assert_eq!(r.status(), 431, "{}", r.head);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["status"], 431);
    assert_eq!(v["request_id"], r.header("x-request-id").unwrap());
    assert!(closes(&mut s).await);
    // Too many fields, likewise.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let many: String = (0..150).map(|i| format!("X-F{i}: v\r\n")).collect();
    s.write_all(format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes())
        .await
        .unwrap();
    let r = read_response(&mut s, &mut Vec::new(), false).await;
    assert_eq!(
        r.status(),
        431,
        "{} {}",
        r.head,
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(up[0].hits(), hits);
}

#[tokio::test]
async fn slow_and_idle_clients_are_cut_off_after_header_timeout() {
    let up = servers(1).await;
    let toml = config(&[(up[0].addr, 1)], "").replace(
        "listen = \"127.0.0.1:0\"\n\n[[route]]",
        "listen = \"127.0.0.1:0\"\nheader_timeout = \"300ms\"\n\n[[route]]",
    );
    assert!(toml.contains("header_timeout"), "{toml}");
    let gw = start(&toml).await;
    let addr = gw.listener_addr("web").unwrap();

    // Half a head, then nothing: closed, and nothing was forwarded.
    let started = std::time::Instant::now();
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost:").await.unwrap();
    // A connection that never sends a byte, and one idle after an answer.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut idle, &mut Vec::new(), false).await;
    assert_eq!(r.status(), 200);
    for s in [&mut slow, &mut silent, &mut idle] {
        assert!(closes(s).await, "still open after the header timeout");
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "closed too early: {waited:?}"
    );
    assert_eq!(up[0].hits(), 1);

    // A head sent in two parts, a third of the timeout apart (a slow
    // client, not a synchronisation), is served.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /late HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b"Host: x\r\n\r\n").await.unwrap();
    let r = read_response(&mut s, &mut Vec::new(), false).await;
    assert_eq!(r.header("x-echo-path").as_deref(), Some("/late"));
}
