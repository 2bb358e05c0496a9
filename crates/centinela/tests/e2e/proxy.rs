use std::time::Duration;

use bytes::Bytes;
use centinela_testkit::{client, Reply};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::util::*;

#[tokio::test]
async fn forwards_with_proxy_headers_and_request_id() {
    let up = servers(1).await;
    let gw = start(&config(&[(up[0].addr, 1)], "")).await;
    let c = client();
    let got = send(
        &c,
        &gw,
        "GET",
        "/items?x=1",
        &[
            ("host", "api.example.com:8080"),
            ("connection", "x-hop"),
            ("x-hop", "secret"),
            ("x-forwarded-for", "10.1.1.1"),
        ],
        "",
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-served-by").unwrap(), up[0].addr.to_string());
    assert_eq!(got.header("x-echo-path"), Some("/items?x=1"));
    // No proxy in front is trusted: the client's X-Forwarded-For is
    // replaced, not appended to.
    assert_eq!(got.header("x-echo-x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(got.header("x-echo-x-forwarded-proto"), Some("http"));
    assert_eq!(
        got.header("x-echo-x-forwarded-host"),
        Some("api.example.com:8080")
    );
    assert_eq!(got.header("x-echo-host"), Some("api.example.com:8080"));
    // One authority, lower-cased, for routing, Host and X-Forwarded-Host.
    let got = send(&c, &gw, "GET", "/", &[("host", "API.Example.com")], "").await;
    assert_eq!(got.header("x-echo-host"), Some("api.example.com"));
    assert_eq!(
        got.header("x-echo-x-forwarded-host"),
        Some("api.example.com")
    );
    // Hop-by-hop headers, and those named in Connection, are not forwarded.
    assert!(got.header("x-echo-x-hop").is_none());
    // A request id is generated, sent upstream and returned.
    let rid = got.header("x-request-id").expect("x-request-id returned");
    assert_eq!(rid.len(), 32);
    assert_eq!(got.header("x-echo-x-request-id"), Some(rid));
    // A client's own request id is kept.
    let got = send(&c, &gw, "GET", "/", &[("x-request-id", "trace-42")], "").await;
    assert_eq!(got.header("x-request-id"), Some("trace-42"));
    assert_eq!(got.header("x-echo-x-request-id"), Some("trace-42"));
}

#[tokio::test]
async fn routes_by_host_and_longest_prefix_with_strip() {
    let (a, b, c_) = (servers(1).await, servers(1).await, servers(1).await);
    let toml = format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[[listener]]
name = "web"
listen = "127.0.0.1:0"
[[route]]
path_prefix = "/api"
strip_prefix = true
upstream = "a"
[[route]]
path_prefix = "/api/v2"
upstream = "b"
[[route]]
host = "admin.example.com"
upstream = "c"
[upstream.a]
servers = ["{}"]
[upstream.b]
servers = ["{}"]
[upstream.c]
servers = ["{}"]
[runtime]
access_log = false
"#,
        a[0].addr, b[0].addr, c_[0].addr
    );
    let gw = start(&toml).await;
    let c = client();
    let got = get(&c, &gw, "/api/products/7").await;
    assert_eq!(got.header("x-served-by").unwrap(), a[0].addr.to_string());
    assert_eq!(got.header("x-echo-path"), Some("/products/7"));
    let got = get(&c, &gw, "/api/v2/x").await;
    assert_eq!(got.header("x-served-by").unwrap(), b[0].addr.to_string());
    assert_eq!(got.header("x-echo-path"), Some("/api/v2/x"));
    let got = send(
        &c,
        &gw,
        "GET",
        "/api/products",
        &[("host", "ADMIN.example.com")],
        "",
    )
    .await;
    assert_eq!(got.header("x-served-by").unwrap(), c_[0].addr.to_string());
    // No route: a JSON 404 with the request id.
    let got = get(&c, &gw, "/elsewhere").await;
    assert_eq!(got.status, 404);
    let v: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(v["status"], 404);
    assert_eq!(v["request_id"], got.header("x-request-id").unwrap());
    assert!(v["error"].as_str().unwrap().contains("no route"));
}

async fn raw(addr: std::net::SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn malformed_requests_get_400_and_never_reach_upstream() {
    let up = servers(1).await;
    let gw = start(&config(&[(up[0].addr, 1)], "")).await;
    let addr = gw.listener_addr("web").unwrap();
    let cases: [&[u8]; 9] = [
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ];
    for req in cases {
        let resp = raw(addr, req).await;
        assert!(
            resp.starts_with("HTTP/1.1 400"),
            "{:?} got {resp:?}",
            String::from_utf8_lossy(req)
        );
    }
    assert_eq!(up[0].hits(), 0, "a malformed request reached the upstream");
}

#[tokio::test]
async fn http2_prior_knowledge_clients_are_served() {
    let up = servers(1).await;
    let gw = start(&config(&[(up[0].addr, 1)], "")).await;
    let h2: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let resp = h2
        .request(
            Request::get(url(&gw, "/h2"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-echo-path"], "/h2");
    // The upstream got a Host header built from :authority.
    assert_eq!(
        resp.headers()["x-echo-host"],
        gw.listener_addr("web").unwrap().to_string()
    );
    // A request body on an HTTP/2 stream reaches the server whole.
    let resp = h2
        .request(
            Request::post(url(&gw, "/h2-body"))
                .body(Full::new(Bytes::from_static(b"hello over h2")))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-echo-body-len"], "13");
    assert_eq!(up[0].hits(), 2);
}

#[tokio::test]
async fn websocket_upgrade_passes_through() {
    // An upstream that accepts the upgrade and then echoes bytes.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_lowercase();
        assert!(head.contains("upgrade: websocket"), "{head}");
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).await.unwrap();
        }
    });
    let gw = start(&config(
        &[(up_addr, 1)],
        "health = { path = \"/\", interval = \"1h\" }",
    ))
    .await;
    let mut s = TcpStream::connect(gw.listener_addr("web").unwrap())
        .await
        .unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    s.write_all(b"ping-over-websocket").await.unwrap();
    let mut echo = [0u8; 19];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"ping-over-websocket");
}

#[tokio::test]
async fn gateway_errors_are_json_502_503_504() {
    let c = client();
    // 502: nothing listens there.
    let gw = start(&config(&[(dead_addr(), 1)], "retry = { attempts = 1 }")).await;
    let got = get(&c, &gw, "/").await;
    assert_eq!(got.status, 502);
    let v: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(v["status"], 502);
    assert_eq!(v["error"], "upstream unreachable");
    assert_eq!(v["request_id"], got.header("x-request-id").unwrap());
    assert_eq!(got.header("content-type"), Some("application/json"));

    // 504: the server answers after the response timeout.
    let slow = server_with(|_| Reply::ok("late").delayed(Duration::from_secs(3))).await;
    let gw = start(&config(
        &[(slow.addr, 1)],
        "retry = { attempts = 1 }\ntimeouts = { response = \"200ms\" }",
    ))
    .await;
    let t = std::time::Instant::now();
    let got = get(&c, &gw, "/").await;
    assert_eq!(got.status, 504);
    assert!(t.elapsed() < Duration::from_secs(2));
    let v: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(v["status"], 504);

    // 503: concurrency limit 1, no queue: a second request is refused at once.
    let slow = server_with(|_| Reply::ok("slow").delayed(Duration::from_millis(1500))).await;
    let gw = start(&config(
        &[(slow.addr, 1)],
        "limits = { max_in_flight = 1, queue = 0 }",
    ))
    .await;
    let first = {
        let c = c.clone();
        let u = url(&gw, "/");
        tokio::spawn(async move { centinela_testkit::get(&c, &u).await.unwrap().status })
    };
    assert!(
        centinela_testkit::eventually(Duration::from_secs(5), || async { slow.hits() == 1 }).await
    );
    let t = std::time::Instant::now();
    let got = get(&c, &gw, "/").await;
    assert_eq!(got.status, 503);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "queue overflow must be refused at once"
    );
    let v: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(v["error"], "upstream overloaded: queue full");
    assert_eq!(first.await.unwrap(), 200);
}

#[tokio::test]
async fn queued_request_times_out_with_503() {
    let slow = server_with(|_| Reply::ok("slow").delayed(Duration::from_millis(1500))).await;
    let gw = start(&config(
        &[(slow.addr, 1)],
        "limits = { max_in_flight = 1, queue = 5, queue_timeout = \"100ms\" }",
    ))
    .await;
    let c = client();
    let u = url(&gw, "/");
    let c2 = c.clone();
    let first = tokio::spawn(async move { centinela_testkit::get(&c2, &u).await.unwrap().status });
    assert!(
        centinela_testkit::eventually(Duration::from_secs(5), || async { slow.hits() == 1 }).await
    );
    let got = get(&c, &gw, "/").await;
    assert_eq!(got.status, 503);
    assert!(got.text().contains("queue timeout"), "{}", got.text());
    assert_eq!(first.await.unwrap(), 200);
}

#[tokio::test]
async fn large_bodies_stream_both_ways() {
    const MIB: usize = 1024 * 1024;
    let up = server_with(|req| {
        if req.uri().path() == "/download" {
            Reply {
                status: 200,
                body: Bytes::from(vec![7u8; 16 * MIB]),
                delay: Duration::ZERO,
            }
        } else {
            Reply::ok("stored")
        }
    })
    .await;
    // Over the default max_body (10 MiB): the route allows 64 MiB.
    let cfg = config(&[(up.addr, 1)], "").replace(
        "[[route]]\nupstream = \"app\"",
        "[[route]]\nupstream = \"app\"\nmax_body = \"64MiB\"",
    );
    assert!(cfg.contains("max_body"));
    let gw = start(&cfg).await;
    let c = client();
    // Upload 32 MiB in 64 KiB chunks with no Content-Length (chunked).
    let body = Chunks {
        left: 512,
        chunk: Bytes::from(vec![1u8; 64 * 1024]),
    };
    let up_client: hyper_util::client::legacy::Client<_, Chunks> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let resp = up_client
        .request(Request::post(url(&gw, "/upload")).body(body).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-echo-body-len"], (32 * MIB).to_string());
    let got = get(&c, &gw, "/download").await;
    assert_eq!(got.body.len(), 16 * MIB);
    assert!(got.body.iter().all(|b| *b == 7));
    let _ = resp.into_body().collect().await;
}

/// A body of `left` copies of `chunk`, of unknown length (sent chunked).
struct Chunks {
    left: usize,
    chunk: Bytes,
}

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        self.left -= 1;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(self.chunk.clone()))))
    }
}

#[tokio::test]
async fn upstream_connections_are_pooled_and_kept_alive() {
    let up = servers(1).await;
    let gw = start(&config(&[(up[0].addr, 1)], "")).await;
    let c = client();
    for _ in 0..50 {
        assert_eq!(get(&c, &gw, "/").await.status, 200);
    }
    let conns = up[0].conns.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        conns <= 2,
        "50 sequential requests opened {conns} upstream connections"
    );
}
