//! The shield stage (issue #12 §2-4) through a real gateway: rate limits
//! (429, Retry-After, RateLimit headers, metrics), the client's real
//! address from trusted proxies (X-Forwarded-For, PROXY protocol v1 and
//! v2), and IP allow and deny lists (inline and from files that are read
//! again when they change).

use std::time::Duration;

use centinela_testkit::{eventually, TempDir, TestServer};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::{metric, send, start};

fn config(backend: std::net::SocketAddr, top: &str, route: &str, listener: &str) -> String {
    format!(
        r#"[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "web"
listen = "127.0.0.1:0"
{listener}

{top}

[[route]]
path_prefix = "/api"
upstream = "app"
{route}

[[route]]
name = "open"
upstream = "app"

[upstream.app]
servers = ["{backend}"]

[runtime]
access_log = false
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_limit_gets_429_with_retry_after_and_ratelimit_headers() {
    let backend = TestServer::ok().await;
    let gw = start(&config(
        backend.addr,
        r#"[[rate_limit]]
name = "per-ip"
key = "client_ip"
limit = 5
window = "10s"

[[rate_limit]]
name = "per-tenant"
key = "header:X-Tenant"
limit = 3
window = "1m"
burst = 1"#,
        r#"rate_limit = ["per-ip"]"#,
        "",
    ))
    .await;
    let c = centinela_testkit::client();
    for i in 0..5 {
        let got = send(&c, &gw, "GET", "/api/x", &[], "").await;
        assert_eq!(got.status, 200, "request {i}");
    }
    let got = send(&c, &gw, "GET", "/api/x", &[], "").await;
    assert_eq!(got.status, 429);
    let retry: u64 = got.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=11).contains(&retry), "{retry}");
    assert_eq!(got.header("ratelimit-policy"), Some("\"per-ip\";q=5;w=10"));
    assert_eq!(
        got.header("ratelimit"),
        Some(format!("\"per-ip\";r=0;t={retry}").as_str())
    );
    let body: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["error"], "rate limit exceeded");
    assert_eq!(body["status"], 429);
    assert!(body["request_id"].as_str().is_some_and(|r| !r.is_empty()));
    // Nothing reached the server for the refused request.
    assert_eq!(backend.hits(), 5);
    // A route without the limit is not limited.
    assert_eq!(send(&c, &gw, "GET", "/other", &[], "").await.status, 200);

    let m = crate::util::gateway_metrics(&gw).await;
    assert_eq!(
        metric(
            &m,
            "centinela_rate_limited_total{limit=\"per-ip\",route=\"/api\"}"
        ),
        Some(1),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "centinela_refused_total{route=\"/api\",reason=\"rate_limited\"}"
        ),
        Some(1)
    );
    assert_eq!(
        metric(&m, "centinela_rate_limit_keys{limit=\"per-ip\"}"),
        Some(1)
    );
    assert!(
        m.contains(
            "centinela_http_requests_total{listener=\"web\",upstream=\"app\",code=\"429\"} 1"
        ),
        "{m}"
    );

    // A limit by header: each value its own count (limit 3 + burst 1);
    // requests without the header share one.
    let cfg = centinela_config::parse(
        &config(
            backend.addr,
            r#"[[rate_limit]]
name = "per-tenant"
key = "header:X-Tenant"
limit = 3
window = "1m"
burst = 1"#,
            r#"rate_limit = ["per-tenant"]"#,
            "",
        ),
        "t.toml",
    )
    .unwrap()
    .config;
    gw.reload(cfg).await.unwrap();
    for tenant in ["a", "b"] {
        for _ in 0..4 {
            let got = send(&c, &gw, "GET", "/api/x", &[("x-tenant", tenant)], "").await;
            assert_eq!(got.status, 200, "{tenant}");
        }
        let got = send(&c, &gw, "GET", "/api/x", &[("x-tenant", tenant)], "").await;
        assert_eq!(got.status, 429, "{tenant}");
        assert_eq!(
            got.header("ratelimit-policy"),
            Some("\"per-tenant\";q=4;w=60")
        );
    }
    gw.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_names_the_client_only_from_trusted_proxies() {
    let backend = TestServer::ok().await;
    let limit = r#"[[rate_limit]]
name = "per-ip"
key = "client_ip"
limit = 2
window = "1m""#;
    let c = centinela_testkit::client();
    let xff = |ip: &'static str| [("x-forwarded-for", ip)];

    // Not trusted: X-Forwarded-For is ignored; every request is 127.0.0.1.
    let gw = start(&config(
        backend.addr,
        limit,
        r#"rate_limit = ["per-ip"]"#,
        "",
    ))
    .await;
    assert_eq!(
        send(&c, &gw, "GET", "/api", &xff("203.0.113.1"), "")
            .await
            .status,
        200
    );
    let got = send(&c, &gw, "GET", "/api", &xff("203.0.113.2"), "").await;
    assert_eq!(got.status, 200);
    // Forwarded upstream as the peer only.
    assert_eq!(got.header("x-echo-x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(
        send(&c, &gw, "GET", "/api", &xff("203.0.113.3"), "")
            .await
            .status,
        429
    );
    gw.shutdown(Duration::from_secs(2)).await;

    // Trusted: each client its own count; the chain goes on upstream.
    let top = format!("{limit}\n\n[client_ip]\ntrusted_proxies = [\"127.0.0.0/8\"]");
    let gw = start(&config(
        backend.addr,
        &top,
        r#"rate_limit = ["per-ip"]"#,
        "",
    ))
    .await;
    for ip in ["203.0.113.1", "203.0.113.2"] {
        for _ in 0..2 {
            let got = send(&c, &gw, "GET", "/api", &[("x-forwarded-for", ip)], "").await;
            assert_eq!(got.status, 200, "{ip}");
            assert_eq!(
                got.header("x-echo-x-forwarded-for"),
                Some(format!("{ip}, 127.0.0.1").as_str())
            );
        }
        let got = send(&c, &gw, "GET", "/api", &[("x-forwarded-for", ip)], "").await;
        assert_eq!(got.status, 429, "{ip}");
    }
    // A forged left-most entry does not escape: the right-most untrusted
    // address counts.
    let got = send(&c, &gw, "GET", "/api", &xff("1.1.1.1, 203.0.113.1"), "").await;
    assert_eq!(got.status, 429);
    gw.shutdown(Duration::from_secs(2)).await;
}

/// Sends raw bytes, returns what came back until the server closed or
/// answered a whole response.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_protocol_names_the_client_for_lists_and_upstream() {
    let backend = TestServer::ok().await;
    let top = "[client_ip]\ntrusted_proxies = [\"127.0.0.1\"]";
    let gw = start(&config(
        backend.addr,
        top,
        r#"deny = ["198.51.100.66"]"#,
        "proxy_protocol = true",
    ))
    .await;
    let addr = gw.listener_addr("web").unwrap();
    let req = b"GET /api/x HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n";

    // Version 1.
    let got = raw(
        addr,
        &[&b"PROXY TCP4 198.51.100.9 127.0.0.1 5555 80\r\n"[..], req].concat(),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(
        got.to_ascii_lowercase()
            .contains("x-echo-x-forwarded-for: 198.51.100.9\r\n"),
        "{got}"
    );
    // Version 2, and a denied client.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[
        0x21, 0x11, 0, 12, 198, 51, 100, 66, 127, 0, 0, 1, 0x15, 0xb3, 0, 80,
    ]);
    let got = raw(addr, &[&v2[..], req].concat()).await;
    assert!(got.starts_with("HTTP/1.1 403"), "{got}");
    assert!(got.contains("\"error\":\"forbidden\""), "{got}");
    // LOCAL (the balancer's own check): the peer stands.
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    let got = raw(addr, &[&local[..], req].concat()).await;
    assert!(
        got.to_ascii_lowercase()
            .contains("x-echo-x-forwarded-for: 127.0.0.1\r\n"),
        "{got}"
    );
    // A trusted peer without a header: closed, nothing served.
    let hits = backend.hits();
    let got = raw(addr, req).await;
    assert_eq!(got, "");
    assert_eq!(backend.hits(), hits);
    gw.shutdown(Duration::from_secs(2)).await;

    // From an untrusted peer no header is read: one is a bad request.
    let gw = start(&config(backend.addr, "", "", "proxy_protocol = true")).await;
    let addr = gw.listener_addr("web").unwrap();
    let got = raw(
        addr,
        &[&b"PROXY TCP4 198.51.100.9 127.0.0.1 5555 80\r\n"[..], req].concat(),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    gw.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_and_deny_lists_refuse_with_403_and_list_files_reload() {
    let dir = TempDir::new("shield-lists");
    let list = dir.path("blocked.txt");
    std::fs::write(
        &list,
        "# blocked by the operator\n192.0.2.0/24\n127.0.0.1\n2001:db8::/32\n",
    )
    .unwrap();
    let backend = TestServer::ok().await;
    let top = format!("[ip_lists.blocked]\nfile = \"{}\"", list.display());
    let gw = start(&config(backend.addr, &top, r#"deny = ["@blocked"]"#, "")).await;
    let c = centinela_testkit::client();
    let got = send(&c, &gw, "GET", "/api/x", &[], "").await;
    assert_eq!(got.status, 403);
    let body: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["error"], "forbidden");
    assert_eq!(backend.hits(), 0);
    // Other routes are not behind the list.
    assert_eq!(send(&c, &gw, "GET", "/x", &[], "").await.status, 200);
    let m = crate::util::gateway_metrics(&gw).await;
    assert_eq!(
        metric(&m, "centinela_ip_list_networks{list=\"blocked\"}"),
        Some(3),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "centinela_refused_total{route=\"/api\",reason=\"ip_denied\"}"
        ),
        Some(1)
    );

    // The file changes: read again, without a reload.
    std::fs::write(&list, "192.0.2.0/24\n").unwrap();
    assert!(
        eventually(Duration::from_secs(15), || async {
            send(&c, &gw, "GET", "/api/x", &[], "").await.status == 200
        })
        .await,
        "the list file is read again"
    );
    // A file that becomes unreadable keeps the networks read last.
    // Watched for longer than the files are looked at (every 5 s).
    std::fs::remove_file(&list).unwrap();
    let until = tokio::time::Instant::now() + Duration::from_secs(6);
    while tokio::time::Instant::now() < until {
        assert_eq!(send(&c, &gw, "GET", "/api/x", &[], "").await.status, 200);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    gw.shutdown(Duration::from_secs(2)).await;

    // allow: only its networks are served.
    let gw = start(&config(
        backend.addr,
        "",
        r#"allow = ["10.0.0.0/8", "2001:db8::/32"]"#,
        "",
    ))
    .await;
    assert_eq!(send(&c, &gw, "GET", "/api/x", &[], "").await.status, 403);
    gw.shutdown(Duration::from_secs(2)).await;
    let gw = start(&config(backend.addr, "", r#"allow = ["127.0.0.0/8"]"#, "")).await;
    assert_eq!(send(&c, &gw, "GET", "/api/x", &[], "").await.status, 200);
    gw.shutdown(Duration::from_secs(2)).await;
}

#[test]
fn check_names_unknown_limits_lists_and_bad_networks() {
    let dir = TempDir::new("shield-check");
    let cfg = dir.path("c.toml");
    std::fs::write(
        &cfg,
        config(
            "127.0.0.1:9".parse().unwrap(),
            "[[rate_limit]]\nname = \"x\"\nkey = \"cookie:sid\"\nlimit = 0\nwindow = \"5m\"\n\n[client_ip]\ntrusted_proxies = [\"10.0.0.0/33\"]",
            "rate_limit = [\"nope\"]\ndeny = [\"@missing\", \"not-an-ip\"]",
            "",
        ),
    )
    .unwrap();
    let out = std::process::Command::new(centinela_testkit::bin("centinela"))
        .args(["check", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    for want in [
        "unknown key \"cookie:sid\"",
        "must be at least 1",
        "the prefix length must be 0 to 32",
        "unknown rate limit \"nope\"",
        "unknown IP list @missing",
        "\"not-an-ip\" is not an IP address",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
}
