//! A bounded fuzz run of the HTTP/1 head parser and the chunked decoder
//! through a real gateway. Requests are generated from RFC 9112's grammar,
//! then mutated where parsers are known to disagree (line ends, spaces,
//! control bytes, duplicated or cut fields, chunk sizes, extensions,
//! trailers), and sent one connection each, pipelined up to three deep,
//! then the client's write side is closed.
//!
//! Property: centinela and a strict reference reader (`reference.rs`)
//! agree on message boundaries. Every request centinela forwards is one
//! the reference reads at the same place in the client's bytes, with the
//! same body; what the upstream receives always re-reads strictly; and
//! centinela never forwards more requests than the reference reads.
//!
//! `FUZZ_ITERATIONS` (default 1500) and `FUZZ_SEED` (default random,
//! printed on failure) steer it.

use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::reference;

fn pick<'a>(rng: &mut fastrand::Rng, items: &[&'a str]) -> &'a str {
    items[rng.usize(..items.len())]
}

/// One request from the grammar, valid most of the time.
fn request(rng: &mut fastrand::Rng) -> Vec<u8> {
    let method = pick(rng, &["GET", "POST", "PUT", "get", "PATCH", "OPTIONS"]);
    let target = pick(
        rng,
        &[
            "/",
            "/a",
            "/a/b?c=d",
            "/%41",
            "/a;b",
            "/x?y=%20",
            "/public/../x",
            "*",
        ],
    );
    let version = pick(rng, &["HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]);
    let mut out = format!("{method} {target} {version}\r\n").into_bytes();
    match rng.u8(..10) {
        0 => {}
        1 => out.extend_from_slice(b"Host: a\r\nHost: b\r\n"),
        _ => out.extend_from_slice(b"Host: a\r\n"),
    }
    for _ in 0..rng.usize(..3) {
        let f = pick(
            rng,
            &[
                "X-A: 1\r\n",
                "Accept: */*\r\n",
                "X-B:  v  \r\n",
                "Cookie: a=b\r\n",
            ],
        );
        out.extend_from_slice(f.as_bytes());
    }
    let body = &b"hello world 0123456789"[..rng.usize(..22)];
    match rng.u8(..6) {
        // No body.
        0 => out.extend_from_slice(b"\r\n"),
        1 | 2 => {
            let lead = "0".repeat(rng.usize(..3));
            out.extend_from_slice(
                format!("Content-Length: {lead}{}\r\n\r\n", body.len()).as_bytes(),
            );
            out.extend_from_slice(body);
        }
        _ => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            let mut rest = body;
            while !rest.is_empty() {
                let n = rng.usize(1..=rest.len());
                let ext = pick(rng, &["", "", ";a", ";a=b", ";a=\"x y\"", " ;a = b"]);
                out.extend_from_slice(format!("{n:x}{ext}\r\n").as_bytes());
                out.extend_from_slice(&rest[..n]);
                out.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            out.extend_from_slice(b"0\r\n");
            if rng.bool() {
                out.extend_from_slice(b"X-T: 1\r\n");
            }
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// Changes `msg` where parsers tend to disagree.
fn mutate(rng: &mut fastrand::Rng, msg: &mut Vec<u8>) {
    if msg.is_empty() {
        return;
    }
    let at = rng.usize(..msg.len());
    match rng.u8(..12) {
        // A CRLF becomes a bare LF or a bare CR.
        0 | 1 => {
            if let Some(i) = msg[at..].windows(2).position(|w| w == b"\r\n") {
                if rng.bool() {
                    msg.remove(at + i);
                } else {
                    msg.remove(at + i + 1);
                }
            }
        }
        2 => msg.insert(at, b' '),
        3 => msg.insert(at, b'\t'),
        4 => msg.insert(at, [0u8, 0x7f, 0x0b, 0x0c, b'\r', b'\n'][rng.usize(..6)]),
        5 => {
            msg.remove(at);
        }
        6 => msg.insert(at, rng.u8(..)),
        // A field a front end may read differently.
        7 => {
            let f = pick(
                rng,
                &[
                    "Transfer-Encoding: chunked\r\n",
                    "Content-Length: 3\r\n",
                    "Content-Length: 99999999999999999999\r\n",
                    "Transfer-Encoding: identity\r\n",
                    " folded\r\n",
                    "Transfer_Encoding: chunked\r\n",
                ],
            );
            if let Some(i) = msg.windows(2).position(|w| w == b"\r\n") {
                let i = i + 2;
                msg.splice(i..i, f.bytes());
            }
        }
        // A chunk size or extension changed.
        8 => {
            let s = pick(
                rng,
                &["", " ", ";", "; ", "0", "00", "g", "-", "\"", ";a=\0"],
            );
            msg.splice(at..at, s.bytes());
        }
        9 => {
            let end = (at + rng.usize(..4)).min(msg.len());
            let dup: Vec<u8> = msg[at..end].to_vec();
            msg.splice(at..at, dup);
        }
        _ => {
            if msg[at].is_ascii_alphabetic() {
                msg[at] ^= 0x20;
            }
        }
    }
}

/// The body a recorded (forwarded) request carries: it is framed with a
/// Content-Length by the gateway for bodies this small.
fn forwarded_body(raw: &[u8]) -> Vec<u8> {
    match raw.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => raw[i + 4..].to_vec(),
        None => Vec::new(),
    }
}

pub async fn run(web: SocketAddr, app: &crate::recorder::Log) {
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let iterations: usize = std::env::var("FUZZ_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1500);
    let mut rng = fastrand::Rng::with_seed(seed);
    let (mut forwarded_total, mut refused_total) = (0usize, 0usize);
    for i in 0..iterations {
        app.settle().await;
        app.take();
        let mut send = Vec::new();
        for _ in 0..rng.usize(1..=3) {
            let mut m = request(&mut rng);
            for _ in 0..rng.usize(..3) {
                mutate(&mut rng, &mut m);
            }
            send.extend_from_slice(&m);
        }
        // What the reference reads: whole requests until one it refuses
        // or cannot finish.
        let mut expected = Vec::new();
        let mut at = 0;
        let mut cut = false;
        while at < send.len() {
            match reference::parse(&send[at..]) {
                Ok(Some(m)) => {
                    at += m.len;
                    expected.push(m.body);
                }
                Ok(None) => {
                    cut = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let mut s = TcpStream::connect(web).await.unwrap();
        s.write_all(&send).await.unwrap();
        s.shutdown().await.unwrap();
        let statuses = crate::read_to_end(&mut s).await;
        let mut got = app.take();
        // A body too large to buffer is streamed: when the client's bytes
        // end inside it, the upstream gets its head and part of it, then
        // the connection ends. Only a request the reference also found
        // cut short may end that way.
        if cut
            && got.len() == expected.len() + 1
            && got.last().is_some_and(|r| {
                r.as_ref()
                    .is_err_and(|e| e.starts_with("connection ended inside"))
            })
        {
            got.pop();
        }
        let shown = crate::show(&send);
        let ctx =
            format!("iteration {i}, FUZZ_SEED={seed}\n  sent: {shown}\n  answered: {statuses:?}");
        assert!(
            got.len() <= expected.len(),
            "centinela forwarded {} requests where the reference reads {}\n{ctx}\n  forwarded: {:?}",
            got.len(),
            expected.len(),
            got.iter()
                .map(|r| r.as_ref().map(|b| crate::show(b)))
                .collect::<Vec<_>>()
        );
        for (n, r) in got.iter().enumerate() {
            let raw = r.as_ref().unwrap_or_else(|e| {
                panic!("the upstream could not read what was forwarded: {e}\n{ctx}")
            });
            assert_eq!(
                crate::show(&forwarded_body(raw)),
                crate::show(&expected[n]),
                "request {n}: body boundaries differ\n{ctx}"
            );
        }
        forwarded_total += got.len();
        refused_total += statuses.iter().filter(|&&s| s == 400).count();
    }
    // The generator must reach both sides of the parser.
    assert!(
        forwarded_total > iterations / 4 && refused_total > iterations / 10,
        "forwarded {forwarded_total}, refused {refused_total} in {iterations} iterations"
    );
}
