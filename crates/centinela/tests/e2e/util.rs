use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use centinela_gateway::Gateway;
use centinela_testkit::{Got, HttpClient, Reply, TestServer};
use http_body_util::Full;
use hyper::Request;

/// A config with one listener on :0, admin on :0, one route to upstream
/// `app` with `servers` and extra upstream keys.
pub fn config(servers: &[(SocketAddr, u32)], upstream_extra: &str) -> String {
    let servers: Vec<String> = servers
        .iter()
        .map(|(a, w)| format!("{{ address = \"{a}\", weight = {w} }}"))
        .collect();
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "web"
listen = "127.0.0.1:0"

[[route]]
upstream = "app"

[upstream.app]
servers = [{}]
{upstream_extra}

[runtime]
access_log = false
"#,
        servers.join(", ")
    )
}

pub async fn start(toml: &str) -> Gateway {
    let cfg = centinela_config::parse(toml, "test.toml")
        .unwrap_or_else(|e| panic!("{e}"))
        .config;
    Gateway::start(cfg).await.expect("gateway starts")
}

pub fn url(gw: &Gateway, path: &str) -> String {
    format!(
        "http://{}{}",
        gw.listener_addr("web").expect("listener"),
        path
    )
}

pub async fn get(client: &HttpClient, gw: &Gateway, path: &str) -> Got {
    centinela_testkit::get(client, &url(gw, path))
        .await
        .expect("request")
}

pub async fn send(
    client: &HttpClient,
    gw: &Gateway,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Got {
    let mut b = Request::builder().method(method).uri(url(gw, path));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .unwrap();
    centinela_testkit::send(client, req).await.expect("request")
}

pub async fn servers(n: usize) -> Vec<TestServer> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(TestServer::ok().await);
    }
    v
}

pub async fn server_with(
    f: impl Fn(&Request<hyper::body::Incoming>) -> Reply + Send + Sync + 'static,
) -> TestServer {
    TestServer::start(Arc::new(f)).await
}

/// An address where nothing listens (bound then released).
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Reads the admin API's view of the upstream's servers.
pub async fn upstream_state(client: &HttpClient, gw: &Gateway) -> serde_json::Value {
    let got = centinela_testkit::get(client, &format!("http://{}/-/upstreams", gw.admin_addr()))
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    v["upstreams"][0]["servers"].clone()
}

pub fn server_state(state: &serde_json::Value, addr: SocketAddr) -> serde_json::Value {
    state
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["address"] == addr.to_string())
        .cloned()
        .unwrap_or_else(|| panic!("{addr} not in {state}"))
}

/// `centinela check --config CFG`: its exit code and all it printed.
pub fn check(cfg: &std::path::Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(centinela_testkit::bin("centinela"))
        .args(["check", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// `GET /metrics` of an in-process gateway's admin API.
pub async fn gateway_metrics(gw: &Gateway) -> String {
    centinela_testkit::get(
        &centinela_testkit::client(),
        &format!("http://{}/metrics", gw.admin_addr()),
    )
    .await
    .expect("metrics")
    .text()
}

/// The value of the first metric line starting with `prefix`.
pub fn metric(text: &str, prefix: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
