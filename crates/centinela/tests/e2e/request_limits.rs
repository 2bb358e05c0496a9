//! Per-route request limits and response headers (issue #12 §6): max_body
//! (413, for a chunked body as soon as the limit is crossed), max_uri
//! (414), body_timeout (408), security headers, the server's Server and
//! X-Powered-By removed, and CORS answered at the edge.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use centinela_testkit::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::util::{send, start};

fn config(backend: SocketAddr, route: &str, upstream: &str) -> String {
    format!(
        r#"[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "web"
listen = "127.0.0.1:0"

[[route]]
upstream = "app"
{route}

[upstream.app]
servers = ["{backend}"]
{upstream}

[runtime]
access_log = false
"#
    )
}

/// Writes `bytes`, then reads until the server closes (or 5 s).
async fn exchange(addr: SocketAddr, parts: &[&[u8]], pause: Duration) -> (String, Duration) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let t = Instant::now();
    for p in parts {
        if s.write_all(p).await.is_err() {
            break;
        }
        tokio::time::sleep(pause).await;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    (String::from_utf8_lossy(&out).into_owned(), t.elapsed())
}

fn chunked(total: usize) -> Vec<u8> {
    let mut b = Vec::new();
    let chunk = vec![b'x'; 500];
    let mut left = total;
    while left > 0 {
        let n = left.min(500);
        b.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        b.extend_from_slice(&chunk[..n]);
        b.extend_from_slice(b"\r\n");
        left -= n;
    }
    b.extend_from_slice(b"0\r\n\r\n");
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_and_targets_over_the_route_limits_are_refused() {
    let backend = TestServer::ok().await;
    let gw = start(&config(
        backend.addr,
        "max_body = \"2KiB\"\nmax_uri = \"64\"\nbody_timeout = \"300ms\"",
        "retry = { buffer_body = 4096 }",
    ))
    .await;
    let addr = gw.listener_addr("web").unwrap();
    let c = centinela_testkit::client();

    // Within the limits.
    let got = send(&c, &gw, "POST", "/p", &[], &"x".repeat(2048)).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-echo-body-len"), Some("2048"));
    let hits = backend.hits();

    // A declared length over max_body: 413 before a byte is read.
    let (got, _) = exchange(
        addr,
        &[b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 4096\r\n\r\n"],
        Duration::ZERO,
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 413"), "{got}");
    assert!(
        got.contains("\"error\":\"request body too large\""),
        "{got}"
    );
    // Chunked, read whole before sending (max_body is under buffer_body):
    // 413 once 2 KiB is crossed, and the server sees nothing.
    let head = b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let (got, _) = exchange(addr, &[&head, &chunked(2100)], Duration::from_millis(20)).await;
    assert!(got.starts_with("HTTP/1.1 413"), "{got}");
    assert_eq!(backend.hits(), hits);
    // Streamed (past a smaller buffer_body): cut as it crosses 2 KiB, 413.
    // The server saw a request whose body never ended.
    let cfg = centinela_config::parse(
        &config(
            backend.addr,
            "max_body = \"2KiB\"\nmax_uri = \"64\"\nbody_timeout = \"300ms\"",
            "retry = { buffer_body = 512 }",
        ),
        "t.toml",
    )
    .unwrap()
    .config;
    gw.reload(cfg).await.unwrap();
    let (got, _) = exchange(addr, &[&head, &chunked(6000)], Duration::from_millis(20)).await;
    assert!(got.starts_with("HTTP/1.1 413"), "{got}");

    // A target over max_uri: 414.
    let long = format!("/{}", "a".repeat(80));
    let got = send(&c, &gw, "GET", &long, &[], "").await;
    assert_eq!(got.status, 414);
    assert_eq!(
        send(&c, &gw, "GET", "/short?q=1", &[], "").await.status,
        200
    );

    // A client that stops sending its body: 408 after body_timeout.
    let (got, took) = exchange(
        addr,
        &[b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc"],
        Duration::ZERO,
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    gw.shutdown(Duration::from_secs(2)).await;
}

/// A server that answers every request with the headers a framework adds.
async fn chatty_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let resp = b"HTTP/1.1 200 OK\r\nServer: gunicorn/21.2\r\nX-Powered-By: Flask\r\nX-Frame-Options: SAMEORIGIN\r\nContent-Length: 2\r\n\r\nok";
                        if s.write_all(resp).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_get_security_headers_and_lose_the_servers_own() {
    let server = chatty_server().await;
    let c = centinela_testkit::client();
    let gw = start(&config(server, "", "")).await;
    let got = send(&c, &gw, "GET", "/", &[], "").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        got.header("referrer-policy"),
        Some("strict-origin-when-cross-origin")
    );
    // The server's own choice stands.
    assert_eq!(got.header("x-frame-options"), Some("SAMEORIGIN"));
    assert_eq!(got.header("server"), None);
    assert_eq!(got.header("x-powered-by"), None);
    gw.shutdown(Duration::from_secs(2)).await;

    let gw = start(&config(
        server,
        "keep_server_header = true\nsecurity_headers = { x_content_type_options = false, referrer_policy = \"no-referrer\" }",
        "",
    ))
    .await;
    let got = send(&c, &gw, "GET", "/", &[], "").await;
    assert_eq!(got.header("x-content-type-options"), None);
    assert_eq!(got.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(got.header("server"), Some("gunicorn/21.2"));
    assert_eq!(got.header("x-powered-by"), Some("Flask"));
    gw.shutdown(Duration::from_secs(2)).await;

    let gw = start(&config(server, "security_headers = false", "")).await;
    let got = send(&c, &gw, "GET", "/", &[], "").await;
    assert_eq!(got.header("referrer-policy"), None);
    assert_eq!(got.header("x-content-type-options"), None);
    gw.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_are_answered_at_the_edge() {
    let backend = TestServer::ok().await;
    let c = centinela_testkit::client();
    let gw = start(&config(
        backend.addr,
        r#"cors = { origins = ["https://shop.example"], methods = ["GET", "POST"], headers = ["content-type", "authorization"], max_age = "10m", credentials = true }"#,
        "",
    ))
    .await;
    let preflight = |origin: &'static str, method: &'static str, headers: &'static str| {
        [
            ("origin", origin),
            ("access-control-request-method", method),
            ("access-control-request-headers", headers),
        ]
    };
    let got = send(
        &c,
        &gw,
        "OPTIONS",
        "/api",
        &preflight(
            "https://shop.example",
            "POST",
            "Content-Type, Authorization",
        ),
        "",
    )
    .await;
    assert_eq!(got.status, 204);
    assert_eq!(
        got.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    assert_eq!(
        got.header("access-control-allow-methods"),
        Some("GET, POST")
    );
    assert_eq!(
        got.header("access-control-allow-headers"),
        Some("content-type, authorization")
    );
    assert_eq!(got.header("access-control-max-age"), Some("600"));
    assert_eq!(got.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(backend.hits(), 0, "preflights never reach the server");
    // Another origin, method or header: 403, no CORS headers.
    for (o, m, h) in [
        ("https://evil.example", "POST", "content-type"),
        ("https://shop.example", "DELETE", "content-type"),
        ("https://shop.example", "POST", "x-secret"),
    ] {
        let got = send(&c, &gw, "OPTIONS", "/api", &preflight(o, m, h), "").await;
        assert_eq!(got.status, 403, "{o} {m} {h}");
        assert_eq!(got.header("access-control-allow-origin"), None);
    }
    // Actual requests: an allowed origin is echoed, others get nothing.
    let got = send(
        &c,
        &gw,
        "GET",
        "/api",
        &[("origin", "https://shop.example")],
        "",
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(
        got.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    assert_eq!(got.header("vary"), Some("Origin"));
    let got = send(
        &c,
        &gw,
        "GET",
        "/api",
        &[("origin", "https://evil.example")],
        "",
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("access-control-allow-origin"), None);
    // A plain OPTIONS (no preflight) goes to the server.
    let got = send(&c, &gw, "OPTIONS", "/api", &[], "").await;
    assert_eq!(got.status, 200);
    gw.shutdown(Duration::from_secs(2)).await;
}
