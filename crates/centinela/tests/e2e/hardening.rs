//! What one client, one slow server or one bad moment must not do to the
//! gateway: hold its slots for ever, stay half-open for ever, eject a
//! healthy server, or change the listeners on a failed reload. Each test
//! sets up the scenario of issue #9's code review.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use centinela_testkit::{assert_eventually, client, Reply};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::util::*;

/// A raw server: every connection gets `reply` once its request head is
/// in; with `stall`, the connection is then kept open, silent, until the
/// test ends.
async fn raw_server(reply: &'static [u8], stall: bool) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if s.write_all(reply).await.is_err() {
                    return;
                }
                if stall {
                    // Read (and drop) whatever comes, never answer more.
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// `config` with one more key in its `web` listener's table.
fn listener_key(toml: String, line: &str) -> String {
    let at = "listen = \"127.0.0.1:0\"\n\n[[route]]";
    assert!(toml.contains(at));
    toml.replacen(
        at,
        &format!("listen = \"127.0.0.1:0\"\n{line}\n\n[[route]]"),
        1,
    )
}

/// A client connection to the `web` listener that has sent `bytes`.
async fn send_raw(gw: &centinela_gateway::Gateway, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(gw.listener_addr("web").unwrap())
        .await
        .unwrap();
    s.write_all(bytes).await.unwrap();
    s
}

/// A client connection switched to WebSocket through the gateway.
async fn websocket(gw: &centinela_gateway::Gateway) -> TcpStream {
    let mut s = send_raw(
        gw,
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    let mut got = [0u8; 12];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"HTTP/1.1 101");
    s
}

/// Reads until the peer closes (or 10 s pass): true if it closed.
async fn closes(s: &mut TcpStream) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn a_client_that_never_reads_is_cut_off_and_its_slot_released() {
    let big = "x".repeat(32 << 20);
    let up = server_with(move |_| Reply::ok(&big)).await;
    let toml = listener_key(
        config(&[(up.addr, 1)], "limits = { max_in_flight = 1, queue = 0 }"),
        "write_timeout = \"300ms\"",
    );
    let gw = start(&toml).await;
    let mut reader = send_raw(&gw, b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n").await;
    // The only slot is taken while the 32 MiB answer is stuck.
    let c = client();
    assert_eventually!(
        5,
        get(&c, &gw, "/").await.status == 503,
        "the stuck answer holds the slot"
    );
    // ...until write_timeout: the connection is closed, the slot freed.
    assert_eventually!(
        10,
        get(&c, &gw, "/").await.status == 200,
        "the slot is freed"
    );
    assert!(
        closes(&mut reader).await,
        "the silent client's connection closed"
    );
}

#[tokio::test]
async fn a_server_that_stops_sending_its_body_is_cut_off_after_body_idle() {
    let up = raw_server(
        b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nonly part of it",
        true,
    )
    .await;
    let gw = start(&config(
        &[(up, 1)],
        "limits = { max_in_flight = 1, queue = 0 }\ntimeouts = { body_idle = \"300ms\" }\nretry = { attempts = 1 }",
    ))
    .await;
    let mut s = send_raw(&gw, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    // The head and what came of the body, then the connection ends: the
    // client sees a body cut short, not a hang.
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("closed after body_idle")
        .unwrap();
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.ends_with("only part of it"), "{got}");
    // The slot was released: the next request is served (and cut) too,
    // not refused for a full queue.
    let c = client();
    let req = Request::get(url(&gw, "/"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.into_body().collect().await.is_err(),
        "a cut body is an error"
    );
}

/// An HTTP/2 client that gives no flow-control window.
async fn h2_no_window(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(0)
            .initial_connection_window_size(0)
            .adaptive_window(false)
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

#[tokio::test]
async fn http2_streams_without_window_do_not_hold_the_slots() {
    // More than hyper buffers for a stream (400 KiB), so that the body
    // really waits for window.
    let up = server_with(|_| Reply::ok(&"y".repeat(8 << 20))).await;
    let gw = start(&config(
        &[(up.addr, 1)],
        "limits = { max_in_flight = 2, queue = 0 }\ntimeouts = { body_idle = \"500ms\" }",
    ))
    .await;
    let mut h2 = h2_no_window(gw.listener_addr("web").unwrap()).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let req = Request::get(url(&gw, "/"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        // The heads come (no window is needed for them); the bodies cannot.
        let resp = h2.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        held.push(resp);
    }
    let c = client();
    assert_eq!(get(&c, &gw, "/").await.status, 503, "both slots held");

    // After body_idle the two streams are reset and their slots freed.
    assert_eventually!(
        10,
        get(&c, &gw, "/").await.status == 200,
        "the slot is freed"
    );
    for resp in held {
        let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect());
        assert!(
            body.await.expect("ended").is_err(),
            "the connection was closed"
        );
    }
}

#[tokio::test]
async fn a_half_open_probe_reset_by_its_client_does_not_keep_the_circuit_open() {
    // 0: fail (opens the breaker); 1: slow (the probe); 2: healthy.
    let mode = Arc::new(AtomicU32::new(0));
    let m = mode.clone();
    let up = server_with(move |_| match m.load(Ordering::SeqCst) {
        0 => Reply::status(500),
        1 => Reply::ok("slow").delayed(Duration::from_secs(3)),
        _ => Reply::ok("ok"),
    })
    .await;
    let gw = start(&config(
        &[(up.addr, 1)],
        "retry = { attempts = 1 }\nbreaker = { error_ratio = 0.5, min_requests = 2, open_for = \"200ms\", half_open_requests = 1 }",
    ))
    .await;
    let c = client();
    for _ in 0..2 {
        assert_eq!(get(&c, &gw, "/").await.status, 500);
    }
    assert_eq!(get(&c, &gw, "/").await.status, 503, "the circuit is open");
    assert_eventually!(
        5,
        upstream_state(&c, &gw).await[0]["breaker"] == "half-open",
        "half-open after open_for"
    );
    // The one probe goes to a slow server over HTTP/2, and its client
    // resets the stream while it waits.
    mode.store(1, Ordering::SeqCst);
    let h2: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let hits = up.hits();
    let probe = tokio::spawn({
        let req = Request::get(url(&gw, "/probe"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        async move { h2.request(req).await }
    });
    assert_eventually!(5, up.hits() > hits, "the probe reached the server");
    probe.abort();
    let _ = probe.await;
    // The probe's slot came back: the next request probes, succeeds, and
    // closes the circuit.
    mode.store(2, Ordering::SeqCst);
    assert_eventually!(
        5,
        get(&c, &gw, "/").await.status == 200,
        "a new probe closes the circuit"
    );
    assert_eq!(upstream_state(&c, &gw).await[0]["breaker"], "closed");
}

#[tokio::test]
async fn clients_that_abort_or_dawdle_over_uploads_are_not_the_servers_fault() {
    let up = server_with(|_| Reply::ok("ok")).await;
    let gw = start(&config(
        &[(up.addr, 1)],
        "outlier = { consecutive_failures = 3 }\nbreaker = { min_requests = 3 }\ntimeouts = { response = \"300ms\" }",
    ))
    .await;
    let addr = gw.listener_addr("web").unwrap();
    // Five streamed uploads whose clients go away half way.
    for _ in 0..5 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n")
            .await
            .unwrap();
        s.write_all(&[b'z'; 200_000]).await.unwrap();
        drop(s);
    }
    // An upload slower than the response timeout: the timeout starts once
    // the body has been sent.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..10 {
        // A client's own pace, not synchronisation.
        tokio::time::sleep(Duration::from_millis(80)).await;
        s.write_all(&[b'z'; 10_000]).await.unwrap();
    }
    let mut got = vec![0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        &got, b"HTTP/1.1 200",
        "a slow upload is not a server timeout"
    );
    let c = client();
    assert_eq!(get(&c, &gw, "/").await.status, 200);
    let state = upstream_state(&c, &gw).await;
    assert_eq!(state[0]["ejected"], false, "{state}");
    assert_eq!(state[0]["breaker"], "closed", "{state}");
    assert_eq!(state[0]["consecutive_failures"], 0, "{state}");
}

#[tokio::test]
async fn a_client_that_stops_sending_its_body_gets_408() {
    let up = server_with(|_| Reply::ok("ok")).await;
    let gw = start(&config(
        &[(up.addr, 1)],
        "timeouts = { body_idle = \"300ms\" }\nlimits = { max_in_flight = 1, queue = 0 }",
    ))
    .await;
    for len in ["10", "1000000"] {
        // Buffered (small) and streamed (large) bodies alike.
        let mut s = send_raw(
            &gw,
            format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {len}\r\n\r\nabc").as_bytes(),
        )
        .await;
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
            .await
            .expect("answered and closed")
            .unwrap();
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("HTTP/1.1 408"), "{got}");
        assert!(got.contains("connection: close"), "{got}");
    }
    assert_eq!(
        get(&client(), &gw, "/").await.status,
        200,
        "the slot is free"
    );
}

#[tokio::test]
async fn an_answer_that_leaves_the_body_unread_says_connection_close() {
    let up = raw_server(
        b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 0\r\n\r\n",
        false,
    )
    .await;
    let gw = start(&config(&[(up, 1)], "retry = { attempts = 1 }")).await;
    let mut s = send_raw(
        &gw,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n",
    )
    .await;
    s.write_all(&[b'z'; 100_000]).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("closed")
        .unwrap();
    let got = String::from_utf8_lossy(&got).to_lowercase();
    assert!(got.starts_with("http/1.1 413"), "{got}");
    assert!(got.contains("connection: close"), "{got}");
}

#[tokio::test]
async fn a_reload_that_cannot_bind_changes_nothing() {
    let up = servers(1).await;
    let toml = config(&[(up[0].addr, 1)], "");
    let gw = start(&toml).await;
    let before = gw.listener_addr("web").unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let moved = toml.replacen(
        "name = \"web\"\nlisten = \"127.0.0.1:0\"",
        &format!(
            "name = \"web\"\nlisten = \"{}\"",
            taken.local_addr().unwrap()
        ),
        1,
    );
    assert_ne!(moved, toml);
    let cfg = centinela_config::parse(&moved, "moved.toml")
        .unwrap()
        .config;
    assert!(gw.reload(cfg).await.is_err(), "the bind fails");
    assert_eq!(gw.listener_addr("web"), Some(before));
    assert_eq!(
        get(&client(), &gw, "/").await.status,
        200,
        "the old listener still serves"
    );
}

#[tokio::test]
async fn the_admin_api_refuses_rebinding_cross_site_and_unmarked_posts() {
    let up = servers(1).await;
    let gw = start(&config(&[(up[0].addr, 1)], "")).await;
    let admin = gw.admin_addr();
    let raw = |req: String| async move {
        let mut s = TcpStream::connect(admin).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        String::from_utf8_lossy(&got)[9..12].to_string()
    };
    let get_as =
        |host: &str| format!("GET /-/health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    assert_eq!(raw(get_as(&admin.to_string())).await, "200");
    assert_eq!(
        raw(get_as(&format!("localhost:{}", admin.port()))).await,
        "200"
    );
    assert_eq!(raw(get_as("evil.example")).await, "403", "DNS rebinding");
    assert_eq!(
        raw(format!("GET /-/upstreams HTTP/1.1\r\nHost: {admin}\r\nOrigin: http://evil.example\r\nConnection: close\r\n\r\n")).await,
        "403"
    );
    assert_eq!(
        raw(format!("POST /-/services/x/restart HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")).await,
        "403",
        "a POST without X-Centinela"
    );
    assert_eq!(
        raw(format!("POST /-/services/x/restart HTTP/1.1\r\nHost: {admin}\r\nX-Centinela: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")).await,
        "404",
        "marked: served (no such action here)"
    );
}

#[tokio::test]
async fn past_max_connections_accepts_pause_until_one_closes() {
    let up = servers(1).await;
    let toml = listener_key(config(&[(up[0].addr, 1)], ""), "max_connections = 2");
    let gw = start(&toml).await;
    let addr = gw.listener_addr("web").unwrap();
    let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut first = TcpStream::connect(addr).await.unwrap();
    let mut second = TcpStream::connect(addr).await.unwrap();
    for s in [&mut first, &mut second] {
        s.write_all(req).await.unwrap();
        let mut got = [0u8; 12];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"HTTP/1.1 200");
    }
    // A third client is left in the kernel's backlog: no answer while the
    // two stay open.
    let mut third = TcpStream::connect(addr).await.unwrap();
    third.write_all(req).await.unwrap();
    let mut got = [0u8; 12];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), third.read_exact(&mut got))
            .await
            .is_err(),
        "served past max_connections"
    );
    drop(first);
    tokio::time::timeout(Duration::from_secs(5), third.read_exact(&mut got))
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert_eq!(&got, b"HTTP/1.1 200");
}

#[tokio::test]
async fn an_idle_upgraded_connection_is_closed_after_tunnel_idle() {
    let up = raw_server(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        true,
    )
    .await;
    let gw = start(&config(
        &[(up, 1)],
        "timeouts = { tunnel_idle = \"300ms\" }",
    ))
    .await;
    let mut s = websocket(&gw).await;
    assert!(closes(&mut s).await, "closed after tunnel_idle");
}

/// Reads one response off `s` (its head and a `content-length` body): the
/// status and the body.
async fn one_response(s: &mut TcpStream) -> Option<(u16, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
    let status = head.get(9..12)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < end + len {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some((
        status,
        String::from_utf8_lossy(&buf[end..end + len]).into_owned(),
    ))
}

#[tokio::test]
async fn running_out_of_file_descriptors_is_not_charged_to_the_server() {
    // Every answer closes its connection: each request needs a new one.
    let up = raw_server(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
        false,
    )
    .await;
    let dir = centinela_testkit::TempDir::new("emfile");
    let cfg = dir.path("centinela.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "web"
listen = "127.0.0.1:0"

[[route]]
upstream = "app"

[upstream.app]
servers = ["{up}"]
health = {{ path = "/health", interval = "50ms", timeout = "500ms", rise = 1, fall = 1 }}
outlier = {{ consecutive_failures = 2 }}
breaker = {{ min_requests = 2 }}
retry = {{ attempts = 1 }}

[runtime]
worker_threads = 1
access_log = false
"#
        ),
    )
    .unwrap();
    // A low open-files limit (hard and soft) that centinela cannot raise.
    let script = format!(
        "ulimit -n 64 && exec {} run --config {}",
        centinela_testkit::bin("centinela").display(),
        cfg.display()
    );
    let mut proc =
        centinela_testkit::Proc::spawn(std::path::Path::new("/bin/sh"), &["-c", &script]);
    let admin: SocketAddr = centinela_testkit::field(
        &proc
            .wait_line("Admin API listening", Duration::from_secs(20))
            .await,
        "addr",
    )
    .unwrap()
    .parse()
    .unwrap();
    let web: SocketAddr = centinela_testkit::field(
        &proc
            .wait_line("Listening listener=web", Duration::from_secs(20))
            .await,
        "addr",
    )
    .unwrap()
    .parse()
    .unwrap();
    let get = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    // Idle keep-alive clients, each served once, until the gateway has no
    // descriptor left to accept one more (it stays in the backlog).
    let mut clients = Vec::new();
    let mut waiting = None;
    // Whether the waiting client's request is still unanswered.
    let mut pending = true;
    for _ in 0..100 {
        let mut s = TcpStream::connect(web).await.unwrap();
        s.write_all(get).await.unwrap();
        match tokio::time::timeout(Duration::from_secs(1), one_response(&mut s)).await {
            Ok(Some((200, _))) => clients.push(s),
            Ok(Some((503, body))) => {
                assert!(body.contains("gateway out of resources"), "{body}");
                waiting = Some(s);
                pending = false;
                break;
            }
            Ok(other) => panic!("unexpected answer {other:?}"),
            Err(_) => {
                waiting = Some(s);
                break;
            }
        }
    }
    let mut waiting = waiting.expect("the descriptors ran out within 100 clients");
    // Left in the backlog: one descriptor comes back, the waiting client
    // is accepted with it, and its request finds none left to reach the
    // server. (Answered 503 already: no descriptor is left as it is.)
    if pending {
        clients.pop();
    }
    // (A health check may hold a descriptor for a moment, or free one:
    // count the answers rather than expect each.)
    let mut local = 0;
    for _ in 0..40 {
        if !std::mem::take(&mut pending) {
            waiting.write_all(get).await.unwrap();
        }
        let Ok(Some((status, body))) =
            tokio::time::timeout(Duration::from_secs(10), one_response(&mut waiting)).await
        else {
            panic!("not answered; centinela said: {:#?}", proc.drain());
        };
        match status {
            503 => {
                assert!(body.contains("gateway out of resources"), "{body}");
                local += 1;
            }
            200 => {}
            other => panic!("unexpected status {other}: {body}"),
        }
        if local >= 6 {
            break;
        }
    }
    assert!(local >= 6, "only {local} answers found no descriptor");
    // Descriptors back: the server is still healthy, never ejected, its
    // breaker closed, and it serves.
    clients.truncate(clients.len().saturating_sub(20));
    drop(waiting);
    let c = client();
    let got = centinela_testkit::get(&c, &format!("http://{admin}/-/upstreams"))
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    let server = &v["upstreams"][0]["servers"][0];
    assert_eq!(server["healthy"], true, "{v}");
    assert_eq!(server["ejected"], false, "{v}");
    assert_eq!(server["breaker"], "closed", "{v}");
    assert_eq!(server["consecutive_failures"], 0, "{v}");
    let got = centinela_testkit::get(&c, &format!("http://{web}/"))
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    drop(clients);
    proc.signal(libc::SIGTERM);
    proc.wait_exit(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn http2_fields_are_checked_and_cookies_joined_for_http1() {
    let up = servers(1).await;
    let gw = start(&config(&[(up[0].addr, 1)], "")).await;
    let h2: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    // Several cookie fields (as HTTP/2 clients split them) become one.
    let req = Request::get(url(&gw, "/c"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = h2.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-echo-cookie"], "a=1; b=2");
    assert_eq!(resp.headers().get_all("x-echo-cookie").iter().count(), 1);
    // A value with leading or trailing whitespace is malformed.
    for value in [" padded", "padded\t"] {
        let req = Request::get(url(&gw, "/w"))
            .header("x-a", value)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = h2.request(req).await.unwrap();
        assert_eq!(resp.status(), 400, "{value:?}");
    }
    assert_eq!(up[0].hits(), 1, "nothing malformed was forwarded");
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_header_timeout() {
    let up = servers(1).await;
    let toml = listener_key(config(&[(up[0].addr, 1)], ""), "header_timeout = \"300ms\"");
    let gw = start(&toml).await;
    let tcp = TcpStream::connect(gw.listener_addr("web").unwrap())
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get(url(&gw, "/"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp.into_body().collect().await.unwrap());
    // No stream open: the gateway closes the connection (GOAWAY).
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the idle HTTP/2 connection was closed")
        .unwrap()
        .ok();
}

#[tokio::test]
async fn upgraded_connections_close_when_the_gateway_drains() {
    let up = raw_server(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        true,
    )
    .await;
    let gw = start(&config(&[(up, 1)], "")).await;
    let mut s = websocket(&gw).await;
    // The tunnel takes part in the drain: shutdown ends it, well before
    // its timeout.
    let drained =
        tokio::time::timeout(Duration::from_secs(5), gw.shutdown(Duration::from_secs(30)))
            .await
            .expect("the drain did not wait for the tunnel's own end");
    assert!(drained);
    assert!(closes(&mut s).await, "the tunnel was closed by the drain");
}

/// An HTTP/2 client that answers no PING loses its connection after
/// `h2_ping_interval` + `h2_ping_timeout`, stream open or not; one that
/// answers keeps it.
#[tokio::test]
async fn an_http2_client_that_answers_no_ping_is_closed() {
    // The server never answers: the request's stream stays open.
    let up = raw_server(b"", true).await;
    let toml = listener_key(
        config(&[(up, 1)], ""),
        "h2_ping_interval = \"200ms\"\nh2_ping_timeout = \"300ms\"",
    );
    let gw = start(&toml).await;
    let addr = gw.listener_addr("web").unwrap();

    // A raw client: preface, empty SETTINGS, one GET, then deaf.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let authority = addr.to_string();
    // HPACK: :method GET, :scheme http, :path / (static table), then
    // :authority as a literal with the static name.
    let mut block = vec![0x82, 0x86, 0x84, 0x41, authority.len() as u8];
    block.extend_from_slice(authority.as_bytes());
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&[0, 0, block.len() as u8, 0x1, 0x5, 0, 0, 0, 1]);
    out.extend_from_slice(&block);
    s.write_all(&out).await.unwrap();
    let started = std::time::Instant::now();
    let mut pings = 0;
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            // Whole frames: 9-byte header, then the payload.
            while buf.len() >= 9 {
                let len =
                    (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
                if buf.len() < 9 + len {
                    break;
                }
                if buf[3] == 0x6 && buf[4] & 0x1 == 0 {
                    pings += 1;
                }
                buf.drain(..9 + len);
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a client deaf to PINGs kept its connection");
    assert!(pings >= 1, "the gateway sent no PING");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "closed before a ping could time out: {:?}",
        started.elapsed()
    );

    // hyper's client answers PINGs: the same open stream keeps its
    // connection for several ping rounds.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    let mut conn = tokio::spawn(conn);
    let req = Request::get(url(&gw, "/"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let pending = tokio::spawn(async move { send.send_request(req).await });
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), &mut conn)
            .await
            .is_err(),
        "a client that answers PINGs lost its connection"
    );
    pending.abort();
    conn.abort();
}

/// A TCP server that echoes what it reads.
async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Reads a response head (up to the blank line) byte by byte, so that
/// nothing after it is taken.
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .expect("a response head")
            .unwrap();
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test]
async fn a_route_with_connect_tunnels_to_its_upstream_and_others_refuse_connect() {
    let echo = echo_server().await;
    let dead = dead_addr();
    let web = servers(1).await;
    let web = web[0].addr;
    let toml = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "web"
listen = "127.0.0.1:0"

[[route]]
host = "tunnel.test"
upstream = "echo"
connect = true

[[route]]
host = "dead.test"
upstream = "dead"
connect = true

[[route]]
upstream = "web"

[upstream.web]
servers = ["{web}"]
[upstream.echo]
servers = ["{echo}"]
[upstream.dead]
servers = ["{dead}"]

[runtime]
access_log = false
"#
    );
    let gw = start(&toml).await;

    // Allowed: 200 with no framing, then bytes both ways.
    let mut s = send_raw(
        &gw,
        b"CONNECT tunnel.test:443 HTTP/1.1\r\nHost: tunnel.test:443\r\n\r\n",
    )
    .await;
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(
        !lower.contains("content-length") && !lower.contains("transfer-encoding"),
        "{head}"
    );
    assert!(lower.contains("x-request-id: "), "{head}");
    for msg in [&b"hello through the tunnel"[..], b"GET / HTTP/1.1\r\n\r\n"] {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .expect("echoed")
            .unwrap();
        assert_eq!(got, msg);
    }
    drop(s);

    // A route without `connect`: 405 with JSON, and the connection closes.
    let mut s = send_raw(
        &gw,
        b"CONNECT other.test:443 HTTP/1.1\r\nHost: other.test:443\r\n\r\n",
    )
    .await;
    let (status, body) = one_response(&mut s).await.unwrap();
    assert_eq!(status, 405, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    assert!(closes(&mut s).await);

    // No port, or the server cannot be reached: 400, 502.
    let mut s = send_raw(
        &gw,
        b"CONNECT tunnel.test HTTP/1.1\r\nHost: tunnel.test\r\n\r\n",
    )
    .await;
    assert_eq!(one_response(&mut s).await.unwrap().0, 400);
    let mut s = send_raw(
        &gw,
        b"CONNECT dead.test:1 HTTP/1.1\r\nHost: dead.test:1\r\n\r\n",
    )
    .await;
    assert_eq!(one_response(&mut s).await.unwrap().0, 502);

    // Other requests are served as ever.
    let got = centinela_testkit::get(&client(), &url(&gw, "/"))
        .await
        .unwrap();
    assert_eq!(got.status, 200);
}

#[test]
fn connect_routes_match_by_host_only() {
    let toml = "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[[route]]\npath_prefix = \"/x\"\nupstream = \"a\"\nconnect = true\n[upstream.a]\nservers = [\"127.0.0.1:1\"]\n";
    let err = centinela_config::parse(toml, "c.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("route[0].connect") && err.contains("c.toml:7:"),
        "{err}"
    );
}
