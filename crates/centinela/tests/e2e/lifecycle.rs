//! Tests of the real `centinela` binary with real `products-api` processes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use centinela_testkit::{bin, client, field, HttpClient, Proc, ProductsApi, TempDir};

pub(crate) struct Running {
    pub proc: Proc,
    pub web: SocketAddr,
    pub admin: SocketAddr,
}

/// The start of every test config: admin and the `web` listener on port 0,
/// one route to the upstream `products`, whose table comes next.
pub(crate) const PREAMBLE: &str = r#"[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "web"
listen = "127.0.0.1:0"

[[route]]
upstream = "products"

[upstream.products]
"#;

fn gateway_config(servers: &[SocketAddr], extra: &str) -> String {
    let servers: Vec<String> = servers.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"{PREAMBLE}servers = [{}]
health = {{ path = "/health", interval = "100ms", timeout = "200ms", rise = 2, fall = 2 }}
timeouts = {{ connect = "200ms", response = "5s" }}
{extra}

[runtime]
access_log = false
shutdown_timeout = "10s"
"#,
        servers.join(", ")
    )
}

async fn spawn_apis(db: &std::path::Path, n: usize) -> Vec<ProductsApi> {
    let mut apis = Vec::new();
    for _ in 0..n {
        apis.push(ProductsApi::spawn(db, &[]).await);
    }
    apis
}

pub(crate) async fn run_gateway(cfg_path: &std::path::Path) -> Running {
    let mut proc = Proc::spawn(
        &bin("centinela"),
        &["run", "--config", cfg_path.to_str().unwrap()],
    );
    let admin = proc
        .wait_line("Admin API listening", Duration::from_secs(20))
        .await;
    let admin = field(&admin, "addr").unwrap().parse().unwrap();
    let web = proc
        .wait_line("Listening listener=web", Duration::from_secs(20))
        .await;
    let web = field(&web, "addr").unwrap().parse().unwrap();
    // Logged once every admin page (services, alerts, history) is wired.
    proc.wait_line("centinela started", Duration::from_secs(20))
        .await;
    Running { proc, web, admin }
}

/// A bounded load: `workers` clients sending requests until `stop` is set or
/// `max` has passed. Counts successes and failures, remembers failures.
pub(crate) struct Load {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    /// `Location` of every product created (201).
    created: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    pub(crate) fn start(
        c: &HttpClient,
        base: String,
        workers: usize,
        max: Duration,
        post_every: usize,
    ) -> Load {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let created = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for w in 0..workers {
            let (c, base, ok, failed, stop, created) = (
                c.clone(),
                base.clone(),
                ok.clone(),
                failed.clone(),
                stop.clone(),
                created.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let end = Instant::now() + max;
                let mut errors = Vec::new();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    i += 1;
                    let res = if post_every > 0 && i % post_every == 0 {
                        let body =
                            format!("{{\"name\":\"load-{w}-{i}\",\"price\":1.5,\"stock\":1}}");
                        let req = hyper::Request::post(format!("{base}/products"))
                            .header("content-type", "application/json")
                            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                            .unwrap();
                        centinela_testkit::send(&c, req).await
                    } else {
                        centinela_testkit::get(&c, &format!("{base}/products?limit=5")).await
                    };
                    match res {
                        Ok(g) if g.status < 300 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            if g.status == 201 {
                                let at = g.header("location").unwrap_or("?").to_string();
                                created.lock().unwrap().push(at);
                            }
                        }
                        Ok(g) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors.push(format!("{} {}", g.status, g.text()));
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors.push(e);
                        }
                    }
                }
                errors
            }));
        }
        Load {
            ok,
            failed,
            created,
            stop,
            tasks,
        }
    }

    pub(crate) async fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        for t in self.tasks {
            errors.extend(t.await.unwrap());
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }

    /// `Location` of every product created so far.
    pub(crate) fn created(&self) -> Vec<String> {
        self.created.lock().unwrap().clone()
    }

    pub(crate) fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits (up to 5 s) until `n` more requests succeeded.
    pub(crate) async fn wait_progress(&self, n: u64) {
        let start = self.ok();
        assert!(
            centinela_testkit::eventually(Duration::from_secs(5), || async {
                self.ok() > start + n
            })
            .await,
            "load made no progress"
        );
    }

    /// Waits until the bounded load ends by itself.
    pub(crate) async fn run_out(&self) {
        while self.tasks.iter().any(|t| !t.is_finished()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn server_json(c: &HttpClient, admin: SocketAddr, addr: SocketAddr) -> serde_json::Value {
    let got = centinela_testkit::get(c, &format!("http://{admin}/-/upstreams"))
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    v["upstreams"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["address"] == addr.to_string())
        .cloned()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_upstream_under_load_fails_no_request_and_it_rejoins() {
    let dir = TempDir::new("kill9");
    let db = dir.path("products.db");
    let mut apis = spawn_apis(&db, 3).await;
    let addrs: Vec<SocketAddr> = apis.iter().map(|a| a.addr).collect();
    let cfg = dir.path("centinela.toml");
    std::fs::write(&cfg, gateway_config(&addrs, "")).unwrap();
    let mut gw = run_gateway(&cfg).await;
    let c = client();
    let load = Load::start(
        &c,
        format!("http://{}", gw.web),
        4,
        Duration::from_secs(15),
        0,
    );
    load.wait_progress(100).await;

    // kill -9 one instance.
    let victim = addrs[1];
    let mut dead = apis.remove(1);
    dead.proc.signal(libc::SIGKILL);
    let killed_at = Instant::now();
    let _ = dead.proc.wait_exit(Duration::from_secs(5)).await;
    // Out of rotation (ejected or down) within 1 s.
    let mut out_after = None;
    while killed_at.elapsed() < Duration::from_secs(3) {
        let s = server_json(&c, gw.admin, victim).await;
        if s["healthy"] == false {
            out_after = Some(killed_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let out_after = out_after.expect("killed server never left rotation");
    assert!(
        out_after < Duration::from_secs(1),
        "left rotation after {out_after:?}"
    );
    // The change was logged as a structured event naming the server.
    let event = gw
        .proc
        .wait_line(&format!("server=\"{victim}\""), Duration::from_secs(3))
        .await;
    assert!(
        event.contains("state changed") && event.contains("new="),
        "{event}"
    );

    // Bring it back on the same port: it rejoins after `rise` checks.
    let back = ProductsApi::spawn_on(&victim.to_string(), &db, &[]).await;
    assert!(
        centinela_testkit::eventually(Duration::from_secs(12), || async {
            server_json(&c, gw.admin, victim).await["healthy"] == true
        })
        .await,
        "restarted server never rejoined"
    );
    // It starts at a slow-start share, so poll rather than count.
    let rejoined = centinela_testkit::eventually(Duration::from_secs(10), || async {
        let g = centinela_testkit::get(&c, &format!("http://{}/products", gw.web))
            .await
            .unwrap();
        g.header("x-served-by") == Some(&*victim.to_string())
    })
    .await;
    if !rejoined {
        let state = server_json(&c, gw.admin, victim).await;
        let events: Vec<&String> = gw
            .proc
            .drain()
            .iter()
            .filter(|l| l.contains(&victim.to_string()))
            .collect();
        panic!("restarted server gets no traffic; state {state}; events {events:#?}");
    }

    // Let the bounded 15 s load run to its end.
    load.run_out().await;
    let (ok, failed, errors) = load.finish().await;
    assert_no_failures(ok, failed, &errors);
    assert!(ok > 1000, "load too small to mean anything: {ok}");
    drop(back);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reload_under_load_drops_nothing_and_bad_reload_keeps_config() {
    let dir = TempDir::new("reload");
    let db = dir.path("products.db");
    let apis = spawn_apis(&db, 3).await;
    let addrs: Vec<SocketAddr> = apis.iter().map(|a| a.addr).collect();
    let cfg = dir.path("centinela.toml");
    std::fs::write(&cfg, gateway_config(&addrs[..2], "")).unwrap();
    let mut gw = run_gateway(&cfg).await;
    let c = client();
    let load = Load::start(
        &c,
        format!("http://{}", gw.web),
        4,
        Duration::from_secs(20),
        5,
    );
    load.wait_progress(100).await;

    // Reload 1: add the third server.
    std::fs::write(&cfg, gateway_config(&addrs, "balance = \"least_conn\"")).unwrap();
    gw.proc.signal(libc::SIGHUP);
    gw.proc
        .wait_line("Configuration reloaded", Duration::from_secs(5))
        .await;
    let third = addrs[2].to_string();
    assert!(
        centinela_testkit::eventually(Duration::from_secs(5), || async {
            let g = centinela_testkit::get(&c, &format!("http://{}/products", gw.web))
                .await
                .unwrap();
            g.header("x-served-by") == Some(&*third)
        })
        .await,
        "the server added by reload gets no traffic"
    );
    // Reload 2: an invalid file is rejected and the old config stays.
    std::fs::write(&cfg, "[[listener]]\nname = \"web\"\nlisten = \"nope\"\n").unwrap();
    gw.proc.signal(libc::SIGHUP);
    let line = gw
        .proc
        .wait_line("Reload rejected", Duration::from_secs(5))
        .await;
    assert!(line.contains("keeping the running configuration"), "{line}");
    assert!(
        gw.proc
            .seen
            .iter()
            .any(|l| l.contains("centinela.toml:3:10")),
        "error lacks line:column"
    );
    // Reload 3: back to two servers, while the load continues.
    std::fs::write(&cfg, gateway_config(&addrs[..2], "")).unwrap();
    gw.proc.signal(libc::SIGHUP);
    gw.proc
        .wait_line("Configuration reloaded", Duration::from_secs(5))
        .await;
    load.wait_progress(100).await;
    let (ok, failed, errors) = load.finish().await;
    assert_no_failures(ok, failed, &errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_0() {
    let dir = TempDir::new("drain");
    let api = ProductsApi::spawn(&dir.path("p.db"), &["--latency-ms", "1500"]).await;
    let cfg = dir.path("centinela.toml");
    std::fs::write(&cfg, gateway_config(&[api.addr], "")).unwrap();
    let mut gw = run_gateway(&cfg).await;
    let c = client();
    let url = format!("http://{}/products", gw.web);
    let (c2, u2) = (c.clone(), url.clone());
    let in_flight = tokio::spawn(async move { centinela_testkit::get(&c2, &u2).await });
    assert!(
        centinela_testkit::eventually(Duration::from_secs(5), || async {
            server_json(&c, gw.admin, api.addr).await["in_flight"] == 1
        })
        .await
    );
    gw.proc.signal(libc::SIGTERM);
    gw.proc
        .wait_line("Shutting down", Duration::from_secs(5))
        .await;
    // New connections are refused once the listener closed.
    let web = gw.web;
    assert!(
        centinela_testkit::eventually(Duration::from_secs(2), || async {
            tokio::net::TcpStream::connect(web).await.is_err()
        })
        .await,
        "still accepting after SIGTERM"
    );
    let got = in_flight
        .await
        .unwrap()
        .expect("in-flight request completed");
    assert_eq!(got.status, 200, "{}", got.text());
    let status = gw.proc.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn invalid_config_exits_2_with_line_and_column() {
    let dir = TempDir::new("badcfg");
    let cfg = dir.path("bad.toml");
    std::fs::write(
        &cfg,
        "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\n[[route]]\nupstream = \"missing\"\n\n[upstream.app]\nservers = [\"127.0.0.1:1\"]\nhealth = { rise = 0 }\n",
    )
    .unwrap();
    for cmd in ["check", "run"] {
        let out = std::process::Command::new(bin("centinela"))
            .args([cmd, "--config", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("bad.toml:6:12: route[0].upstream: unknown upstream \"missing\""),
            "{cmd}: {err}"
        );
        assert!(
            err.contains("bad.toml:10:19: upstream.app.health.rise: must be at least 1"),
            "{cmd}: {err}"
        );
        assert!(err.contains("2 errors"), "{cmd}: {err}");
    }
    // A good file passes check with exit 0.
    std::fs::write(&cfg, "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [\"127.0.0.1:1\"]\n").unwrap();
    let out = std::process::Command::new(bin("centinela"))
        .args(["check", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).ends_with(
        "OK (1 listener(s), 1 route(s), 1 upstream(s), 1 server(s), 0 service(s) with 0 instance(s))\n"
    ));
    // A missing file and a bad flag are errors too, not panics.
    let out = std::process::Command::new(bin("centinela"))
        .args(["check", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
    let out = std::process::Command::new(bin("centinela"))
        .args(["frobnicate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_access_lines_and_state_change_events() {
    let dir = TempDir::new("jsonlog");
    let api = ProductsApi::spawn(&dir.path("p.db"), &[]).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let cfg = dir.path("centinela.toml");
    let toml = gateway_config(&[api.addr, dead], "").replace(
        "access_log = false",
        "access_log = true\nlog_format = \"json\"",
    );
    std::fs::write(&cfg, toml).unwrap();
    let mut proc = Proc::spawn(
        &bin("centinela"),
        &["run", "--config", cfg.to_str().unwrap()],
    );
    let line = proc
        .wait_line("\"Listening\"", Duration::from_secs(20))
        .await;
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    let web: SocketAddr = v["addr"].as_str().unwrap().parse().unwrap();
    // The dead server fails its health checks: a state-change event names it.
    let line = proc
        .wait_line("Server state changed", Duration::from_secs(5))
        .await;
    let ev: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(ev["server"], dead.to_string());
    assert_eq!(
        (ev["old"].as_str(), ev["new"].as_str()),
        (Some("up"), Some("down"))
    );
    assert!(
        ev["reason"]
            .as_str()
            .unwrap()
            .contains("health checks failed"),
        "{ev}"
    );
    // One access line per request, with the fields operators need.
    let c = client();
    let got = centinela_testkit::get(&c, &format!("http://{web}/products?limit=1"))
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    let rid = got.header("x-request-id").unwrap().to_string();
    let line = proc.wait_line(&rid, Duration::from_secs(5)).await;
    let a: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(a["target"], "access");
    assert_eq!(a["method"], "GET");
    assert_eq!(a["path"], "/products");
    assert_eq!(a["status"], 200);
    assert_eq!(a["server"], api.addr.to_string());
    assert_eq!(a["attempts"], 1);
    assert!(a["duration_ms"].as_f64().unwrap() > 0.0);
}

pub(crate) async fn services_json(c: &HttpClient, admin: SocketAddr) -> serde_json::Value {
    let got = centinela_testkit::get(c, &format!("http://{admin}/-/services"))
        .await
        .unwrap();
    serde_json::from_slice::<serde_json::Value>(&got.body).unwrap()["services"][0]["instances"]
        .clone()
}

/// Writes a config whose upstream `products` is fed by `n` supervised
/// products-api instances on a free port range; returns the first port.
pub(crate) fn supervised_config(
    path: &std::path::Path,
    n: u16,
    upstream_extra: &str,
    service_extra: &str,
) -> u16 {
    let base = centinela_testkit::free_port_range(n);
    write_supervised_config(
        path,
        n,
        (base, base + n - 1),
        &[],
        upstream_extra,
        service_extra,
    );
    base
}

/// Writes the config of [`supervised_config`] with `n` instances on the
/// port pool `ports` (first, last).
pub(crate) fn write_supervised_config(
    path: &std::path::Path,
    n: u16,
    ports: (u16, u16),
    extra_args: &[&str],
    upstream_extra: &str,
    service_extra: &str,
) {
    let extra_args: String = extra_args.iter().map(|a| format!(", \"{a}\"")).collect();
    std::fs::write(
        path,
        format!(
            r#"{PREAMBLE}{upstream_extra}

[service.products]
command = "{}"
args = ["--listen", "127.0.0.1:{{port}}", "--db", "products.db"{extra_args}]
instances = {n}
ports = "{}-{}"
upstream = "products"
readiness = {{ http = "/health", interval = "20ms" }}
{service_extra}

[runtime]
access_log = false
"#,
            bin("products-api").display(),
            ports.0,
            ports.1
        ),
    )
    .unwrap();
}

/// Asserts that a load saw no failed request, showing the first errors.
pub(crate) fn assert_no_failures(ok: u64, failed: u64, errors: &[String]) {
    assert_eq!(
        failed,
        0,
        "{failed} of {} failed: {:?}",
        ok + failed,
        &errors[..errors.len().min(5)]
    );
}

/// Sends a signal (`-9`, `-STOP`...) with the shell's `kill`.
pub(crate) fn kill(signal: &str, pid: u64) {
    let ok = std::process::Command::new("/bin/sh")
        .args(["-c", &format!("kill {signal} {pid}")])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {signal} {pid} failed");
}

/// Polls until instance `index` runs again under a pid other than `old` and
/// is ready; returns the time since `since`, or None after `within`.
async fn wait_replaced(
    c: &HttpClient,
    admin: SocketAddr,
    index: usize,
    old: u64,
    since: Instant,
    within: Duration,
) -> Option<Duration> {
    while since.elapsed() < within {
        let i = &services_json(c, admin).await[index];
        if i["pid"].as_u64().is_some_and(|p| p != old) && i["state"] == "ready" {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervised_instances_serve_traffic_are_restarted_after_kill_9_and_die_with_centinela() {
    let dir = TempDir::new("supervise");
    let cfg = dir.path("centinela.toml");
    let base = supervised_config(
        &cfg,
        3,
        "timeouts = { connect = \"200ms\", response = \"5s\" }",
        "backoff = { initial = \"50ms\", max = \"2s\" }\nlogs = { dir = \"logs\", keep = 2 }",
    );
    let mut gw = run_gateway(&cfg).await;
    let c = client();
    let ports: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", base + i)).collect();
    // All three instances become ready and serve traffic through the gateway.
    let seen = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let all_served = centinela_testkit::eventually(Duration::from_secs(20), || {
        let (c, web, seen) = (c.clone(), gw.web, seen.clone());
        async move {
            if let Ok(g) = centinela_testkit::get(&c, &format!("http://{web}/products")).await {
                if g.status == 200 {
                    seen.lock()
                        .unwrap()
                        .insert(g.header("x-served-by").unwrap_or("").to_string());
                }
            }
            seen.lock().unwrap().len() == 3
        }
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    assert!(all_served, "not every instance served: {seen:?}");
    for p in &ports {
        assert!(seen.contains(p), "{p} never served");
    }
    let inst = services_json(&c, gw.admin).await;
    assert!(
        inst.as_array()
            .unwrap()
            .iter()
            .all(|i| i["state"] == "ready"),
        "{inst}"
    );

    // `centinela status` shows them, as a table and as JSON.
    let admin = gw.admin.to_string();
    let out = std::process::Command::new(bin("centinela"))
        .args(["status", "--admin", &admin])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.starts_with("SERVICE"), "{table}");
    assert_eq!(
        table
            .lines()
            .filter(|l| l.starts_with("products") && l.contains(" ready "))
            .count(),
        3,
        "{table}"
    );
    for p in &ports {
        assert!(table.contains(p.rsplit(':').next().unwrap()), "{table}");
    }
    let out = std::process::Command::new(bin("centinela"))
        .args(["status", "--admin", &admin, "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["services"][0]["instances"].as_array().unwrap().len(), 3);
    let out = std::process::Command::new(bin("centinela"))
        .args(["status", "--admin", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the admin API"));

    // `centinela logs` shows each instance's output, tagged.
    let out = std::process::Command::new(bin("centinela"))
        .args(["logs", "products", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for (i, p) in ports.iter().enumerate() {
        assert!(
            text.lines()
                .any(|l| l == format!("products[{i}] products-api listening on {p}")),
            "{text}"
        );
    }
    let out = std::process::Command::new(bin("centinela"))
        .args(["logs", "nosuch", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("services: products"));

    // kill -9 one instance under load: no request fails, it is back quickly.
    let load = Load::start(
        &c,
        format!("http://{}", gw.web),
        4,
        Duration::from_secs(6),
        0,
    );
    load.wait_progress(100).await;
    let victim = inst[1]["pid"].as_u64().unwrap();
    kill("-9", victim);
    let killed = Instant::now();
    let back_after = wait_replaced(&c, gw.admin, 1, victim, killed, Duration::from_secs(3)).await;
    let back_after = back_after.expect("killed instance not restarted and ready");
    assert!(
        back_after < Duration::from_secs(1),
        "restarted and ready after {back_after:?}"
    );
    let i = &services_json(&c, gw.admin).await[1];
    assert_eq!(i["restarts"], 1);
    assert_eq!(i["last_exit"], "signal 9");
    // CPU% and RSS come from /proc (sampled every 2 s): an instance serving
    // the load uses some CPU and a few MiB.
    assert!(
        centinela_testkit::eventually(Duration::from_secs(6), || async {
            let i = &services_json(&c, gw.admin).await[0];
            i["cpu_percent"].as_f64().is_some_and(|c| c > 0.0)
                && i["rss_kib"].as_u64().is_some_and(|r| r > 1024)
        })
        .await,
        "no CPU% or RSS: {}",
        services_json(&c, gw.admin).await[0]
    );
    load.run_out().await;
    let (ok, failed, errors) = load.finish().await;
    assert_no_failures(ok, failed, &errors);

    // kill -9 of centinela: every worker is gone within 1 s.
    let pids: Vec<u64> = services_json(&c, gw.admin)
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["pid"].as_u64().unwrap())
        .collect();
    assert!(pids.iter().all(|p| centinela_testkit::alive(*p)));
    gw.proc.signal(libc::SIGKILL);
    let t = Instant::now();
    let _ = gw.proc.wait_exit(Duration::from_secs(5)).await;
    assert!(
        centinela_testkit::eventually(Duration::from_secs(1), || async {
            pids.iter().all(|p| !centinela_testkit::alive(*p))
        })
        .await,
        "workers outlived centinela: {:?}",
        pids.iter()
            .filter(|p| centinela_testkit::alive(**p))
            .collect::<Vec<_>>()
    );
    assert!(t.elapsed() < Duration::from_secs(2));
    // A new centinela starts cleanly on the same ports.
    let gw2 = run_gateway(&cfg).await;
    assert!(
        centinela_testkit::eventually(Duration::from_secs(20), || async {
            // The page may not exist for a moment after the admin API starts.
            services_json(&c, gw2.admin)
                .await
                .as_array()
                .is_some_and(|a| a.len() == 3 && a.iter().all(|i| i["state"] == "ready"))
        })
        .await,
        "second centinela's instances never became ready"
    );
}

/// Waits until every instance of the service is ready.
async fn all_ready(c: &HttpClient, admin: SocketAddr, n: usize) {
    assert!(
        centinela_testkit::eventually(Duration::from_secs(20), || async {
            services_json(c, admin)
                .await
                .as_array()
                .is_some_and(|a| a.len() == n && a.iter().all(|i| i["state"] == "ready"))
        })
        .await,
        "instances never became ready: {}",
        services_json(c, admin).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_instance_is_replaced_on_a_spare_port_in_under_5_s_with_the_defaults() {
    let dir = TempDir::new("hung");
    let cfg = dir.path("centinela.toml");
    // Two instances, a pool of three ports; every setting but the probe's
    // path is a default (liveness every 1 s, timeout 1 s, 3 failures;
    // stop.liveness_grace 1 s; timeouts.response 30 s).
    let base = centinela_testkit::free_port_range(3);
    write_supervised_config(
        &cfg,
        2,
        (base, base + 2),
        &[],
        "",
        "liveness = { http = \"/health\" }",
    );
    let gw = run_gateway(&cfg).await;
    let c = client();
    all_ready(&c, gw.admin, 2).await;
    let load = Load::start(
        &c,
        format!("http://{}", gw.web),
        4,
        Duration::from_secs(12),
        0,
    );
    load.wait_progress(50).await;

    // SIGSTOP: the process lives, holds its connections, answers nothing.
    let before = services_json(&c, gw.admin).await[0].clone();
    let hung = before["pid"].as_u64().unwrap();
    kill("-STOP", hung);
    let stopped = Instant::now();
    let replaced_after =
        wait_replaced(&c, gw.admin, 0, hung, stopped, Duration::from_secs(8)).await;
    let replaced_after = replaced_after.expect("hung instance never replaced");
    println!("SIGSTOP of one of two instances: replacement ready after {replaced_after:?}");
    assert!(
        replaced_after < Duration::from_secs(5),
        "replaced after {replaced_after:?}"
    );
    let now = services_json(&c, gw.admin).await;
    let i = now
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["index"] == 0 && i["state"] == "ready")
        .unwrap();
    assert_eq!(
        i["last_exit"], "killed (liveness failed 3×: timeout)",
        "{i}"
    );
    // On the spare port: it did not wait for the old process to go.
    assert_eq!(i["port"], base + 2, "{now}");
    assert_ne!(i["port"], before["port"]);
    // The stop signal, then SIGKILL after liveness_grace (1 s).
    assert!(
        centinela_testkit::eventually(Duration::from_secs(3), || async {
            !centinela_testkit::alive(hung)
        })
        .await,
        "the hung process was not killed"
    );
    let out = std::process::Command::new(bin("centinela"))
        .args(["status", "--admin", &gw.admin.to_string()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("last exit: killed (liveness failed 3×: timeout)"),
        "{table}"
    );
    load.run_out().await;
    let (ok, failed, errors) = load.finish().await;
    assert_no_failures(ok, failed, &errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_instance_does_not_stall_the_gateway() {
    let dir = TempDir::new("frozen");
    let cfg = dir.path("centinela.toml");
    // The soak's setting: 3 instances, default round_robin and timeouts,
    // 4 client connections. No spare port: the replacement waits for the
    // old process group to be gone.
    supervised_config(&cfg, 3, "", "liveness = { http = \"/health\" }");
    let gw = run_gateway(&cfg).await;
    let c = client();
    all_ready(&c, gw.admin, 3).await;
    let load = Load::start(
        &c,
        format!("http://{}", gw.web),
        4,
        Duration::from_secs(15),
        0,
    );
    load.wait_progress(50).await;
    // Requests completed in each second: 2 s before the freeze, 8 after.
    let mut per_second = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = load.ok();
    let frozen = services_json(&c, gw.admin).await[1]["pid"]
        .as_u64()
        .unwrap();
    for s in 0..10 {
        if s == 2 {
            kill("-STOP", frozen);
        }
        tick.tick().await;
        let now = load.ok();
        per_second.push(now - last);
        last = now;
    }
    println!("requests per second, SIGSTOP after the 2nd: {per_second:?}");
    let normal = (per_second[0] + per_second[1]) / 2;
    for (s, n) in per_second.iter().enumerate().skip(2) {
        assert!(
            *n * 2 >= normal,
            "second {s} after the freeze served {n}, under half of {normal}: {per_second:?}"
        );
    }
    let i = &services_json(&c, gw.admin).await[1];
    assert_ne!(i["pid"].as_u64(), Some(frozen), "{i}");
    load.run_out().await;
    // GETs are idempotent: every one that met the frozen instance was
    // retried on another.
    let (ok, failed, errors) = load.finish().await;
    assert_no_failures(ok, failed, &errors);
}

async fn recv(sock: &tokio::net::UnixDatagram) -> String {
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), sock.recv(&mut buf))
        .await
        .expect("no notification")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_notify_ready_watchdog_and_stopping() {
    let dir = TempDir::new("sdnotify");
    let sock_path = dir.path("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&sock_path).unwrap();
    let up = ProductsApi::spawn(&dir.path("p.db"), &[]).await;
    let cfg = dir.path("centinela.toml");
    std::fs::write(&cfg, gateway_config(&[up.addr], "")).unwrap();
    let mut proc = Proc::spawn_env(
        &bin("centinela"),
        &["run", "--config", cfg.to_str().unwrap()],
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    assert_eq!(recv(&sock).await, "READY=1");
    // READY only once serving: the listener accepts now.
    let web = field(
        &proc
            .wait_line("Listening listener=web", Duration::from_secs(5))
            .await,
        "addr",
    )
    .unwrap()
    .parse::<SocketAddr>()
    .unwrap();
    assert!(tokio::net::TcpStream::connect(web).await.is_ok());
    // Watchdog pings every WATCHDOG_USEC / 2.
    let t = Instant::now();
    for _ in 0..3 {
        assert_eq!(recv(&sock).await, "WATCHDOG=1");
    }
    assert!(t.elapsed() < Duration::from_secs(2));
    proc.signal(libc::SIGTERM);
    let mut last = recv(&sock).await;
    while last == "WATCHDOG=1" {
        last = recv(&sock).await;
    }
    assert_eq!(last, "STOPPING=1");
    assert_eq!(
        proc.wait_exit(Duration::from_secs(10)).await.code(),
        Some(0)
    );
}

#[test]
fn systemd_unit_is_type_notify_with_watchdog_and_restart() {
    let out = std::process::Command::new(bin("centinela"))
        .args([
            "systemd-unit",
            "--config",
            "/etc/centinela/prod.toml",
            "--binary",
            "/usr/local/bin/centinela",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let unit = String::from_utf8(out.stdout).unwrap();
    for line in [
        "Type=notify",
        "ExecStart=/usr/local/bin/centinela run --config /etc/centinela/prod.toml",
        "ExecStartPre=/usr/local/bin/centinela check --config /etc/centinela/prod.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=always",
        "WatchdogSec=30s",
        "LimitNOFILE=1048576",
        "WantedBy=multi-user.target",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "missing {line:?} in:\n{unit}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_limits_are_checked_applied_and_their_throttling_shown() {
    let dir = TempDir::new("limits");
    let cfg = dir.path("centinela.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"{PREAMBLE}servers = ["127.0.0.1:1"]

[service.burn]
command = "/bin/sh"
args = ["-c", "while :; do :; done"]
limits = {{ cpu = 0.2, memory = "256MiB", pids = 64, nofile = 1024 }}
readiness = {{ exec = ["true"], interval = "20ms" }}

[runtime]
access_log = false
"#
        ),
    )
    .unwrap();
    let usable = centinela_supervisor::cgroup::usable();
    let out = std::process::Command::new(bin("centinela"))
        .args(["check", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    match &usable {
        Ok(v) => assert!(
            String::from_utf8_lossy(&out.stdout)
                .contains(&format!("service limits: enforced through cgroup {v}")),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        ),
        Err(_) => assert!(
            String::from_utf8_lossy(&out.stderr).contains("warning: service.burn.limits: "),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
    let gw = run_gateway(&cfg).await;
    let c = client();
    let services = |c: HttpClient| async move {
        let got = centinela_testkit::get(&c, &format!("http://{}/-/services", gw.admin))
            .await
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&got.body).unwrap()["services"][0]["instances"]
            [0]
        .clone()
    };
    if usable.is_err() {
        // Limits are a protection, not a precondition: it runs without.
        assert!(
            centinela_testkit::eventually(Duration::from_secs(10), || async {
                services(c.clone()).await["state"] == "ready"
            })
            .await
        );
        return;
    }
    // Sampled every 2 s from the cgroup: throttled, at most 0.2 cores.
    assert!(
        centinela_testkit::eventually(Duration::from_secs(10), || async {
            let i = services(c.clone()).await;
            i["cpu_throttled_seconds"].as_f64().is_some_and(|t| t > 0.0)
                && i["cpu_percent"].is_number()
        })
        .await,
        "{}",
        services(c.clone()).await
    );
    let i = services(c.clone()).await;
    assert_eq!(i["cgroup"], true, "{i}");
    assert!(i["cpu_percent"].as_f64().is_some_and(|p| p < 40.0), "{i}");
    let got = centinela_testkit::get(&c, &format!("http://{}/metrics", gw.admin))
        .await
        .unwrap();
    let text = got.text();
    let line = text
        .lines()
        .find(|l| l.starts_with("centinela_service_cpu_throttled_seconds_total{service=\"burn\"}"))
        .unwrap_or_else(|| panic!("no throttling metric in:\n{text}"));
    let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(v > 0.0, "{line}");
}
