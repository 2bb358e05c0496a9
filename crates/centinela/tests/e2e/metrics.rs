//! `GET /metrics`: what the gateway counts, in both exposition formats,
//! checked by `promtool` and scraped by a real Prometheus.

use std::io::Write as _;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use centinela_testkit::{client, free_port_range, Reply, TempDir};
use http_body_util::Full;
use hyper::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::*;

/// The admin API's /metrics, asking for `accept`: content type and text.
async fn scrape(gw: &centinela_gateway::Gateway, accept: &str) -> (String, String) {
    let req = Request::get(format!("http://{}/metrics", gw.admin_addr()))
        .header("accept", accept)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let got = centinela_testkit::send(&client(), req)
        .await
        .expect("scrape");
    assert_eq!(got.status, 200);
    (
        got.header("content-type").unwrap_or("").to_string(),
        got.text(),
    )
}

/// The value of the sample written exactly `series` (name and labels).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn promtool_check(text: &str) {
    let mut p = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/test.sh installs it)");
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn responses_are_counted_by_listener_upstream_and_code() {
    let s = server_with(|req| match req.uri().path() {
        "/fail" => Reply::status(503),
        _ => Reply::ok("ok"),
    })
    .await;
    // No retries: each request is one attempt, each 503 one response.
    let gw = start(&config(
        &[(s.addr, 1)],
        "retry = { attempts = 1 }\nbreaker = { enabled = false }",
    ))
    .await;
    let c = client();
    for _ in 0..7 {
        assert_eq!(get(&c, &gw, "/").await.status, 200);
    }
    for _ in 0..3 {
        assert_eq!(get(&c, &gw, "/fail").await.status, 503);
    }
    // A head the listener refuses: no upstream.
    let mut raw = tokio::net::TcpStream::connect(gw.listener_addr("web").unwrap())
        .await
        .unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 12];
    raw.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 400");

    let (ctype, text) = scrape(&gw, "text/plain").await;
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let ok = "centinela_http_requests_total{listener=\"web\",upstream=\"app\",code=\"200\"}";
    let failed = "centinela_http_requests_total{listener=\"web\",upstream=\"app\",code=\"503\"}";
    let refused = "centinela_http_requests_total{listener=\"web\",upstream=\"\",code=\"400\"}";
    assert_eq!(value(&text, ok), Some(7.0), "{text}");
    assert_eq!(value(&text, failed), Some(3.0), "{text}");
    assert_eq!(value(&text, refused), Some(1.0), "{text}");
    assert_eq!(
        value(
            &text,
            "centinela_http_request_duration_seconds_count{listener=\"web\",upstream=\"app\"}"
        ),
        Some(10.0),
        "{text}"
    );
    let server = s.addr.to_string();
    assert_eq!(
        value(
            &text,
            &format!("centinela_upstream_server_up{{upstream=\"app\",server=\"{server}\"}}")
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            &format!(
                "centinela_upstream_server_state{{upstream=\"app\",server=\"{server}\",state=\"up\"}}"
            )
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "centinela_upstream_in_flight{upstream=\"app\"}"),
        Some(0.0)
    );
    assert!(value(&text, "process_resident_memory_bytes").unwrap_or(0.0) > 0.0);
    assert!(text.contains("centinela_build_info{version=\""), "{text}");
    assert!(text.contains("# TYPE centinela_http_requests_total counter"));
    promtool_check(&text);

    // OpenMetrics when asked, as Prometheus asks.
    let (ctype, om) = scrape(
        &gw,
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    )
    .await;
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    assert!(om.ends_with("# EOF\n"));
    assert!(
        om.contains("# TYPE centinela_http_requests counter"),
        "{om}"
    );
    assert_eq!(value(&om, ok), Some(7.0));
}

#[tokio::test]
async fn retries_ejections_and_breaker_transitions_are_counted() {
    let bad = server_with(|_| Reply::status(502)).await;
    let good = servers(1).await;
    let gw = start(&config(
        &[(bad.addr, 1), (good[0].addr, 1)],
        "balance = \"round_robin\"\noutlier = { consecutive_failures = 2, base_ejection = \"30s\" }\n\
         breaker = { min_requests = 2, error_ratio = 0.5, open_for = \"30s\" }",
    ))
    .await;
    let c = client();
    for _ in 0..10 {
        assert_eq!(get(&c, &gw, "/").await.status, 200);
    }
    let (_, text) = scrape(&gw, "text/plain").await;
    let retries = value(&text, "centinela_upstream_retries_total{upstream=\"app\"}").unwrap();
    assert!(retries >= 1.0, "{text}");
    let b = bad.addr.to_string();
    assert_eq!(
        value(
            &text,
            &format!("centinela_upstream_ejections_total{{upstream=\"app\",server=\"{b}\"}}")
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            &format!(
                "centinela_upstream_breaker_transitions_total{{upstream=\"app\",server=\"{b}\",to=\"open\"}}"
            )
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            &format!("centinela_upstream_server_up{{upstream=\"app\",server=\"{b}\"}}")
        ),
        Some(0.0),
        "{text}"
    );
    promtool_check(&text);
}

/// A real Prometheus scrapes the admin API; one series is read back
/// through Prometheus's HTTP API.
#[tokio::test]
async fn a_real_prometheus_scrapes_centinela() {
    let s = servers(1).await;
    let gw = start(&config(&[(s[0].addr, 1)], "")).await;
    let c = client();
    for _ in 0..5 {
        assert_eq!(get(&c, &gw, "/").await.status, 200);
    }
    let dir = TempDir::new("prometheus");
    let cfg = dir.path("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: centinela\n    static_configs:\n      - targets: ['{}']\n",
            gw.admin_addr()
        ),
    )
    .unwrap();
    let port = free_port_range(1);
    let mut prom = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus (Debian package prometheus; scripts/test.sh installs it)");
    let query = format!(
        "http://127.0.0.1:{port}/api/v1/query?query=centinela_http_requests_total%7Bcode%3D%22200%22%7D"
    );
    let last = Arc::new(Mutex::new(String::new()));
    let seen = centinela_testkit::eventually(Duration::from_secs(60), || {
        let c = c.clone();
        let query = query.clone();
        let last = last.clone();
        async move {
            let Ok(got) = centinela_testkit::get(&c, &query).await else {
                return false;
            };
            let text = got.text();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            *last.lock().unwrap() = text;
            v["data"]["result"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| {
                    r["metric"]["listener"] == "web"
                        && r["metric"]["upstream"] == "app"
                        && r["value"][1] == "5"
                })
        }
    })
    .await;
    let _ = prom.kill().await;
    assert!(
        seen,
        "Prometheus never returned the series: {}",
        last.lock().unwrap()
    );
}
