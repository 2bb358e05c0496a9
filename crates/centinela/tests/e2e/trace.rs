//! W3C trace context with the real binary: a request without a valid
//! `traceparent` gets a new one upstream, a valid one passes untouched,
//! and the trace id is in the access log line; `[runtime] trace_context =
//! false` leaves the header alone.

use std::time::Duration;

use centinela_testkit::{client, field, send, TempDir, TestServer};
use http_body_util::Full;
use hyper::Request;

use crate::lifecycle::{run_gateway, PREAMBLE};

async fn through(web: std::net::SocketAddr, traceparent: Option<&str>) -> centinela_testkit::Got {
    let mut b = Request::get(format!("http://{web}/t"));
    if let Some(t) = traceparent {
        b = b.header("traceparent", t);
    }
    send(&client(), b.body(Full::new(bytes::Bytes::new())).unwrap())
        .await
        .expect("gateway")
}

fn config(dir: &TempDir, server: std::net::SocketAddr, extra: &str) -> std::path::PathBuf {
    let cfg = dir.path("centinela.toml");
    std::fs::write(
        &cfg,
        format!(
            "{PREAMBLE}servers = [\"{server}\"]\n\n[runtime]\naccess_log = true\nshutdown_timeout = \"2s\"\n{extra}"
        ),
    )
    .unwrap();
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_is_made_or_passed_on_and_its_trace_id_logged() {
    // The test server echoes every request header as `x-echo-NAME`.
    let backend = TestServer::ok().await;
    let dir = TempDir::new("trace");
    let mut r = run_gateway(&config(&dir, backend.addr, "")).await;

    let got = through(r.web, None).await;
    assert_eq!(got.status, 200);
    let made = got
        .header("x-echo-traceparent")
        .expect("a traceparent upstream")
        .to_string();
    let parts: Vec<&str> = made.split('-').collect();
    assert_eq!(parts.len(), 4, "{made}");
    assert_eq!(
        (parts[0], parts[1].len(), parts[2].len(), parts[3]),
        ("00", 32, 16, "00")
    );
    assert!(made[3..]
        .bytes()
        .all(|b| b == b'-' || b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    let line = r
        .proc
        .wait_line(
            &format!("trace_id=\"{}\"", parts[1]),
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(
        field(&line, "request_id"),
        got.header("x-request-id"),
        "{line}"
    );

    let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let got = through(r.web, Some(valid)).await;
    assert_eq!(got.header("x-echo-traceparent"), Some(valid));
    r.proc
        .wait_line(
            "trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"",
            Duration::from_secs(5),
        )
        .await;

    // Malformed (upper-case hex): replaced, never forwarded.
    let bad = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01";
    let got = through(r.web, Some(bad)).await;
    let sent = got.header("x-echo-traceparent").unwrap();
    assert_ne!(sent, bad);
    assert_eq!(got.headers.get_all("x-echo-traceparent").iter().count(), 1);
    crate::alerts::stop(r).await;

    // Off: nothing added, the client's header passes as it came.
    let dir = TempDir::new("trace-off");
    let r = run_gateway(&config(&dir, backend.addr, "trace_context = false\n")).await;
    assert_eq!(
        through(r.web, None).await.header("x-echo-traceparent"),
        None
    );
    assert_eq!(
        through(r.web, Some(bad)).await.header("x-echo-traceparent"),
        Some(bad)
    );
    crate::alerts::stop(r).await;
}
