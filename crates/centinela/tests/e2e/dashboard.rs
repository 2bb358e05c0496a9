//! The dashboard and the admin token, with the real binary: who may call
//! what, the login cookie, the CLI with a token, and a headless Chromium
//! (through chromedriver's WebDriver API) that logs in, watches live
//! traffic and a firing alert appear, and saves a screenshot under
//! `target/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use centinela_testkit::{
    bin, client, eventually, free_port_range, get, send, Proc, TempDir, TestServer,
};
use http_body_util::Full;
use hyper::Request;
use serde_json::{json, Value};

use crate::lifecycle::run_gateway;

const TOKEN: &str = "d1c7a0e5b9f24c3a8e6d0b1f2a3c4d5e";

/// Upstream `app` over `server` with live health checks, upstream `dead`
/// whose only server refuses connections (its alert fires), the token
/// from a file, and history and alerts on.
fn config(dir: &TempDir, server: SocketAddr) -> PathBuf {
    std::fs::write(dir.path("admin.token"), format!("{TOKEN}\n")).unwrap();
    let cfg = dir.path("centinela.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[admin]
listen = "127.0.0.1:0"
token = "file:admin.token"

[[listener]]
name = "web"
listen = "127.0.0.1:0"

[[route]]
path_prefix = "/dead"
upstream = "dead"

[[route]]
upstream = "app"

[upstream.app]
servers = ["{server}"]
health = {{ path = "/", interval = "200ms", timeout = "200ms" }}

[upstream.dead]
servers = ["127.0.0.1:1"]
health = {{ path = "/", interval = "200ms", timeout = "200ms", fall = 1 }}

[[alert]]
name = "dead-is-down"
signal = "healthy_servers"
upstream = "dead"
below = 1
severity = "page"

[[slo]]
name = "app-availability"
upstream = "app"
objective = 99.5

[runtime]
access_log = false
shutdown_timeout = "2s"
"#
        ),
    )
    .unwrap();
    cfg
}

async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> centinela_testkit::Got {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(
        &client(),
        b.body(Full::new(Bytes::from(body.to_string()))).unwrap(),
    )
    .await
    .expect("admin API")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_guards_every_admin_endpoint_but_the_probes() {
    let backend = TestServer::ok().await;
    let dir = TempDir::new("admin-token");
    let cfg = config(&dir, backend.addr);
    let mut r = run_gateway(&cfg).await;
    let base = format!("http://{}", r.admin);

    for open in ["/-/health", "/-/live"] {
        assert_eq!(
            request("GET", &format!("{base}{open}"), &[], "")
                .await
                .status,
            200
        );
    }
    // Not ready (upstream `dead`), but answered: no token needed.
    assert_ne!(
        request("GET", &format!("{base}/-/ready"), &[], "")
            .await
            .status,
        401
    );

    let bearer = format!("Bearer {TOKEN}");
    for path in [
        "/metrics",
        "/-/health/detailed",
        "/-/alerts",
        "/-/upstreams",
        "/-/history",
        "/-/ui/app.js",
    ] {
        let got = request("GET", &format!("{base}{path}"), &[], "").await;
        assert_eq!(got.status, 401, "{path} without a token");
        assert_eq!(
            got.header("www-authenticate"),
            Some("Bearer realm=\"centinela\"")
        );
        let wrong = request(
            "GET",
            &format!("{base}{path}"),
            &[("authorization", "Bearer 0123456789abcdef0123456789abcdef")],
            "",
        )
        .await;
        assert_eq!(wrong.status, 401, "{path} with a wrong token");
        let ok = request(
            "GET",
            &format!("{base}{path}"),
            &[("authorization", &bearer)],
            "",
        )
        .await;
        assert_ne!(ok.status, 401, "{path} with the token");
    }
    let post = request(
        "POST",
        &format!("{base}/-/alerts/silence/dead-is-down"),
        &[("x-centinela", "1")],
        "{}",
    )
    .await;
    assert_eq!(post.status, 401);

    // The dashboard without the cookie: the login page, with 401.
    let page = request("GET", &format!("{base}/"), &[], "").await;
    assert_eq!(page.status, 401);
    assert!(page.text().contains("Admin token"), "{}", page.text());
    let wrong = request(
        "POST",
        &format!("{base}/-/login"),
        &[("x-centinela", "1")],
        "not-the-token-at-all",
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());
    // A cross-site form cannot log in: no X-Centinela header.
    assert_eq!(
        request("POST", &format!("{base}/-/login"), &[], TOKEN)
            .await
            .status,
        403
    );
    let login = request(
        "POST",
        &format!("{base}/-/login"),
        &[("x-centinela", "1")],
        TOKEN,
    )
    .await;
    assert_eq!(login.status, 200);
    let cookie = login.header("set-cookie").expect("a cookie").to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_string();
    let page = request("GET", &format!("{base}/"), &[("cookie", &pair)], "").await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("/-/ui/app.js"));
    assert!(page
        .header("content-security-policy")
        .unwrap()
        .contains("default-src 'self'"));
    // The cookie does not replace the cross-site guard of actions.
    let post = request(
        "POST",
        &format!("{base}/-/alerts/silence/dead-is-down"),
        &[("cookie", &pair)],
        "{}",
    )
    .await;
    assert_eq!(post.status, 403);

    // The CLI finds the token in the config file, or in the environment.
    let admin = r.admin.to_string();
    let cfg_s = cfg.to_str().unwrap();
    let out = std::process::Command::new(bin("centinela"))
        .args(["alerts", "--admin", &admin, "-c", cfg_s])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("dead-is-down"));
    let out = std::process::Command::new(bin("centinela"))
        .args(["alerts", "--admin", &admin, "-c", "/nonexistent.toml"])
        .env("CENTINELA_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(bin("centinela"))
        .args(["alerts", "--admin", &admin, "-c", "/nonexistent.toml"])
        .env_remove("CENTINELA_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{out:?}"
    );

    r.proc.signal(libc::SIGTERM);
    r.proc.wait_exit(Duration::from_secs(15)).await;
    let logs = r.proc.drain().join("\n");
    assert!(logs.contains("Admin login with a wrong token"), "{logs}");
    assert!(!logs.contains(TOKEN), "the token leaked into the log");
}

/// A WebDriver session on a chromedriver of our own.
struct Browser {
    driver: Proc,
    base: String,
    session: String,
}

impl Browser {
    async fn start() -> Browser {
        for need in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            assert!(
                std::path::Path::new(need).exists(),
                "{need} is missing: scripts/test.sh installs the Debian packages chromium and chromium-driver"
            );
        }
        let port = free_port_range(1);
        let driver = Proc::spawn_group(
            std::path::Path::new("/usr/bin/chromedriver"),
            &[&format!("--port={port}"), "--allowed-ips=127.0.0.1"],
        );
        let base = format!("http://127.0.0.1:{port}");
        let up = eventually(Duration::from_secs(20), || async {
            get(&client(), &format!("{base}/status")).await.is_ok()
        })
        .await;
        assert!(up, "chromedriver did not start");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                // A phone-sized window: the page must stay usable there.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=412,1600", "--no-first-run", "--disable-extensions"]
            },
            "goog:loggingPrefs": {"browser": "ALL"}
        }}});
        let mut b = Browser {
            driver,
            base,
            session: String::new(),
        };
        let v = b.call("POST", "/session", caps).await;
        b.session = v["sessionId"].as_str().expect("a session").to_string();
        b
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = if path == "/session" {
            format!("{}{path}", self.base)
        } else {
            format!("{}/session/{}{path}", self.base, self.session)
        };
        let req = Request::builder()
            .method(method)
            .uri(url)
            .header("content-type", "application/json")
            .body(Full::new(if body.is_null() {
                Bytes::new()
            } else {
                Bytes::from(body.to_string())
            }))
            .unwrap();
        let got = send(&client(), req).await.expect("chromedriver");
        let v: Value = serde_json::from_slice(&got.body).expect("JSON from chromedriver");
        assert!(got.status < 300, "{path}: {v}");
        v["value"].clone()
    }

    async fn run(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }
}

/// chromedriver and every browser it started, even when a test fails.
impl Drop for Browser {
    fn drop(&mut self) {
        self.driver.kill_group();
    }
}

/// Standard base64, as WebDriver sends screenshots.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= u32::from(val(*c)) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_logs_in_and_sees_live_traffic_charts_and_a_firing_alert() {
    let backend = TestServer::ok().await;
    let dir = TempDir::new("dashboard");
    let cfg = config(&dir, backend.addr);
    let r = run_gateway(&cfg).await;
    // Live traffic for the whole test: 20 requests a second, at most 90 s.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        let url = format!("http://{}/", r.web);
        tokio::spawn(async move {
            let http = client();
            for _ in 0..1800 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let _ = get(&http, &url).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let browser = Browser::start().await;
    let url = format!("http://{}/", r.admin);
    browser.call("POST", "/url", json!({ "url": url })).await;
    // The login page: type the token, submit.
    let title = browser.run("return document.title").await;
    assert_eq!(title, "centinela: log in");
    browser
        .run(&format!(
            "document.getElementById('token').value = '{TOKEN}'; document.querySelector('#login button').click(); return true"
        ))
        .await;

    // The dashboard fills in: upstream names, a chart with data points
    // (history points are 10 s apart), the firing alert.
    let probe = "return {
        title: document.title,
        upstreams: [...document.querySelectorAll('[data-upstream]')].map(e => e.dataset.upstream),
        points: Math.max(0, ...[...document.querySelectorAll('[data-upstream=app] [data-chart=traffic]')].map(e => +e.dataset.points)),
        canvases: document.querySelectorAll('[data-upstream=app] canvas').length,
        firing: [...document.querySelectorAll('[data-state=firing]')].map(e => e.dataset.alert),
        slos: [...document.querySelectorAll('[data-slo]')].map(e => e.dataset.slo),
        error: document.getElementById('error') ? document.getElementById('error').textContent : null,
        width: document.documentElement.scrollWidth,
        viewport: window.innerWidth,
    }";
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let seen = loop {
        let seen = browser.run(probe).await;
        let complete = seen["title"] == "centinela"
            && seen["upstreams"] == json!(["app", "dead"])
            && seen["points"].as_u64().unwrap_or(0) >= 1
            && seen["canvases"].as_u64().unwrap_or(0) >= 4
            && seen["firing"] == json!(["dead-is-down"])
            && seen["slos"] == json!(["app-availability"]);
        if complete {
            break seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dashboard never showed everything: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(seen["error"], "", "{seen}");

    // No console errors, from the page or a resource.
    let logs = browser
        .call("POST", "/se/log", json!({"type": "browser"}))
        .await;
    let severe: Vec<&Value> = logs
        .as_array()
        .expect("log entries")
        .iter()
        .filter(|e| e["level"] == "SEVERE")
        .collect();
    // The login page's 401 is the one expected error.
    let unexpected: Vec<&&Value> = severe
        .iter()
        .filter(|e| !e["message"].as_str().unwrap_or("").contains("401"))
        .collect();
    assert!(unexpected.is_empty(), "console errors: {unexpected:?}");

    let shot = browser.call("GET", "/screenshot", Value::Null).await;
    let png = base64_decode(shot.as_str().expect("a screenshot"));
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target");
    std::fs::write(target.join("dashboard.png"), &png).unwrap();
    // Usable on a phone: nothing wider than the window (headless Chromium
    // keeps a window at least 500 px wide).
    assert!(seen["viewport"].as_u64().unwrap() <= 520, "{seen}");
    assert!(
        seen["width"].as_u64().unwrap() <= seen["viewport"].as_u64().unwrap(),
        "{seen}"
    );

    browser.call("DELETE", "", Value::Null).await;
    stop.store(true, Ordering::Relaxed);
    let _ = traffic.await;
    crate::alerts::stop(r).await;
}
