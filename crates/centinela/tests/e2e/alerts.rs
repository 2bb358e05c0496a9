//! Alerts with the real binary: rules fire and resolve from live health,
//! webhooks and mail reach real receivers, state survives a restart,
//! silences work from the CLI, and the state file is looked after.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use centinela_testkit::{
    bin, client, eventually, free_port_range, Proc, Receiver, Reply, TempDir, TestServer,
};
use serde_json::Value;

use crate::lifecycle::{run_gateway, Running};

/// A config with upstream `app` over `servers`, fast health checks, the
/// webhook notifier `ops` pointing at `hook`, and `extra` appended.
pub(crate) fn alert_config(servers: &[SocketAddr], hook: SocketAddr, extra: &str) -> String {
    let servers: Vec<String> = servers.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "web"
listen = "127.0.0.1:0"

[[route]]
upstream = "app"

[upstream.app]
servers = [{}]
health = {{ path = "/", interval = "200ms", timeout = "200ms", rise = 1, fall = 2 }}

[notify.ops]
webhook = "http://{hook}/hook"

[runtime]
access_log = false
shutdown_timeout = "2s"
{extra}
"#,
        servers.join(", ")
    )
}

pub(crate) async fn admin_json(admin: SocketAddr, path: &str) -> (u16, Value) {
    let got = centinela_testkit::get(&client(), &format!("http://{admin}{path}"))
        .await
        .expect("admin API");
    (got.status, serde_json::from_str(&got.text()).expect("JSON"))
}

pub(crate) async fn alert_state(admin: SocketAddr, name: &str) -> String {
    let (_, v) = admin_json(admin, "/-/alerts").await;
    v["alerts"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == name))
        .and_then(|a| a["state"].as_str())
        .unwrap_or("")
        .to_string()
}

pub(crate) async fn metrics(admin: SocketAddr) -> String {
    centinela_testkit::get(&client(), &format!("http://{admin}/metrics"))
        .await
        .expect("metrics")
        .text()
}

fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin("centinela"))
        .args(args)
        .output()
        .expect("run centinela")
}

pub(crate) async fn stop(mut r: Running) {
    r.proc.signal(libc::SIGTERM);
    let st = r.proc.wait_exit(Duration::from_secs(15)).await;
    assert!(st.success(), "centinela exited with {st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_fires_then_resolves_by_webhook_and_a_restart_sends_nothing_twice() {
    let hook = Receiver::start(vec![]).await;
    let backend = TestServer::ok().await;
    let addr = backend.addr;
    let dir = TempDir::new("alert-fire");
    let cfg = dir.path("centinela.toml");
    let rule = r#"
[alerting]
defaults = false
group_wait = "1s"

[[alert]]
name = "app-down"
signal = "healthy_servers"
upstream = "app"
below = 1
for = "2s"
severity = "page"
notify = ["ops"]
"#;
    std::fs::write(&cfg, alert_config(&[addr], hook.addr, rule)).unwrap();
    let r = run_gateway(&cfg).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            alert_state(r.admin, "app-down").await == "inactive"
        })
        .await
    );
    let (code, _) = admin_json(r.admin, "/-/health/detailed").await;
    assert_eq!(code, 200);

    // Every server of the upstream goes away.
    backend.stop();
    let fault = Instant::now();
    let bodies = hook.wait_for(1, Duration::from_secs(15)).await;
    let took = fault.elapsed();
    assert!(
        took <= Duration::from_secs(2 + 5),
        "firing arrived {took:?} after the fault; `for` is 2s"
    );
    let v: Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(v["version"], "4");
    assert_eq!(v["status"], "firing");
    assert_eq!(v["receiver"], "ops");
    assert_eq!(v["alerts"][0]["status"], "firing");
    assert_eq!(v["alerts"][0]["labels"]["alertname"], "app-down");
    assert_eq!(v["alerts"][0]["labels"]["severity"], "page");
    assert_eq!(v["alerts"][0]["labels"]["upstream"], "app");
    assert_eq!(v["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    assert_eq!(hook.received()[0].0, "/hook");

    // The admin API, the CLI, the metrics and the detailed health agree.
    let admin = r.admin.to_string();
    let out = cli(&["alerts", "--admin", &admin, "--json"]);
    assert!(out.status.success());
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["alerts"][0]["state"], "firing");
    assert_eq!(listed["alerts"][0]["value"], 0.0);
    let text = String::from_utf8(cli(&["alerts", "--admin", &admin]).stdout).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("app-down") && l.contains("firing")),
        "{text}"
    );
    let m = metrics(r.admin).await;
    assert!(
        m.contains("centinela_alerts{alert=\"app-down\",state=\"firing\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("centinela_alerts{alert=\"app-down\",state=\"pending\"} 0"),
        "{m}"
    );
    assert!(
        m.contains("centinela_notifications_total{notifier=\"ops\",result=\"success\"} 1"),
        "{m}"
    );
    let (code, health) = admin_json(r.admin, "/-/health/detailed").await;
    assert_eq!(code, 503, "{health}");
    assert_eq!(health["status"], "unhealthy");
    assert_eq!(health["alerts"][0]["name"], "app-down");
    assert_eq!(health["upstreams"][0]["servers"][0]["state"], "down");
    assert!(health["version"].is_string() && health["uptime_seconds"].is_u64());

    // A restart while it still fires: the state comes back from the file
    // and no second "firing" goes out.
    stop(r).await;
    let r = run_gateway(&cfg).await;
    assert_eq!(alert_state(r.admin, "app-down").await, "firing");
    // Wait until this process has seen the server down itself.
    assert!(
        eventually(Duration::from_secs(10), || async {
            let (_, v) = admin_json(r.admin, "/-/alerts").await;
            v["alerts"][0]["value"] == 0.0
        })
        .await
    );
    // The server comes back on its address: "resolved" is the next and
    // last message (a second "firing" would come before it).
    let back = TestServer::on(
        tokio::net::TcpListener::bind(addr).await.expect("rebind"),
        std::sync::Arc::new(|_| Reply::ok("ok")),
    );
    let bodies = hook.wait_for(2, Duration::from_secs(15)).await;
    let v: Value = serde_json::from_str(&bodies[1]).unwrap();
    assert_eq!(v["status"], "resolved", "{bodies:?}");
    assert_eq!(v["alerts"][0]["status"], "resolved");
    assert_ne!(v["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    assert_eq!(alert_state(r.admin, "app-down").await, "resolved");
    let (code, _) = admin_json(r.admin, "/-/health/detailed").await;
    assert_eq!(code, 200);
    stop(r).await;
    assert_eq!(hook.received().len(), 2);
    drop(back);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_rule_silences_and_retried_deliveries() {
    // The receiver fails the first delivery: it is retried and counted.
    let hook = Receiver::start(vec![500]).await;
    let a = TestServer::ok().await;
    let b = TestServer::ok().await;
    let dir = TempDir::new("alert-builtin");
    let cfg = dir.path("centinela.toml");
    std::fs::write(&cfg, alert_config(&[a.addr, b.addr], hook.addr, "")).unwrap();
    let out = cli(&["check", "--config", cfg.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(
            "upstream-down.app (page): healthy_servers of upstream \"app\" below 1 for 10s"
        ),
        "{text}"
    );
    let r = run_gateway(&cfg).await;
    let admin = r.admin.to_string();

    // Silenced: it fires, but nobody is told.
    let out = cli(&[
        "alerts",
        "--admin",
        &admin,
        "silence",
        "upstream-down.app",
        "--for",
        "1h",
        "--comment",
        "planned work",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fault = Instant::now();
    a.stop();
    b.stop();
    assert!(
        eventually(Duration::from_secs(20), || async {
            alert_state(r.admin, "upstream-down.app").await == "firing"
        })
        .await
    );
    let took = fault.elapsed();
    assert!(
        took <= Duration::from_secs(15),
        "fired {took:?} after the fault"
    );
    let text = String::from_utf8(cli(&["alerts", "--admin", &admin]).stdout).unwrap();
    assert!(text.contains("silenced until"), "{text}");
    assert!(text.contains("planned work"), "{text}");
    let (code, health) = admin_json(r.admin, "/-/health/detailed").await;
    // A silenced alert does not make the whole unhealthy; the upstream does.
    assert_eq!(code, 503);
    assert_eq!(health["alerts"][0]["silenced"], true);
    assert_eq!(health["upstreams"][0]["healthy"], false);

    // Unsilenced: the firing alert goes out now; the first attempt fails
    // (500) and the retry delivers it.
    let out = cli(&[
        "alerts",
        "--admin",
        &admin,
        "unsilence",
        "upstream-down.app",
    ]);
    assert!(out.status.success());
    let bodies = hook.wait_for(1, Duration::from_secs(15)).await;
    let v: Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(v["alerts"][0]["labels"]["alertname"], "upstream-down.app");
    assert_eq!(v["status"], "firing");
    assert!(
        eventually(Duration::from_secs(5), || async {
            let m = metrics(r.admin).await;
            m.contains("centinela_notifications_total{notifier=\"ops\",result=\"error\"} 1")
                && m.contains(
                    "centinela_notifications_total{notifier=\"ops\",result=\"success\"} 1",
                )
        })
        .await,
        "{}",
        metrics(r.admin).await
    );

    // Errors from the CLI name the cause and exit 2.
    let out = cli(&[
        "alerts", "--admin", &admin, "silence", "nope", "--for", "1h",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no alert named \"nope\""));
    let out = cli(&[
        "alerts",
        "--admin",
        &admin,
        "silence",
        "upstream-down.app",
        "--for",
        "soon",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--for"));
    let out = cli(&[
        "alerts",
        "--admin",
        &admin,
        "unsilence",
        "upstream-down.app",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not silenced"));
    stop(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_reaches_a_real_smtp_server() {
    let port = free_port_range(1);
    let mut smtp = Proc::spawn(
        std::path::Path::new("/usr/bin/python3"),
        &[
            "-u",
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            &format!("127.0.0.1:{port}"),
        ],
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await,
        "aiosmtpd (Debian package python3-aiosmtpd; scripts/test.sh installs it) did not start: {:?}",
        smtp.drain()
    );
    let hook = Receiver::start(vec![]).await;
    let backend = TestServer::ok().await;
    let dir = TempDir::new("alert-mail");
    let cfg = dir.path("centinela.toml");
    let extra = format!(
        r#"
[notify.mail]
email = {{ to = ["ops@example.com"], from = "centinela@example.com", smtp = "127.0.0.1:{port}", starttls = false }}

[alerting]
defaults = false
group_wait = "0s"

[[alert]]
name = "app-down"
signal = "server_down"
upstream = "app"
notify = ["mail"]
"#
    );
    std::fs::write(&cfg, alert_config(&[backend.addr], hook.addr, &extra)).unwrap();
    let r = run_gateway(&cfg).await;
    backend.stop();
    smtp.wait_line("Subject: [FIRING:1] app-down", Duration::from_secs(15))
        .await;
    smtp.wait_line(
        "[FIRING] app-down (page): server_down of upstream \"app\" is 1",
        Duration::from_secs(5),
    )
    .await;
    smtp.wait_line("ops@example.com", Duration::from_secs(5))
        .await;
    // The webhook notifier was not named by the rule.
    assert!(hook.received().is_empty());
    stop(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_file_is_looked_after() {
    let hook = Receiver::start(vec![]).await;
    let backend = TestServer::ok().await;
    let dir = TempDir::new("alert-state");
    // A corrupt state file is moved aside; centinela proxies anyway.
    std::fs::create_dir_all(dir.path("centinela-data")).unwrap();
    std::fs::write(dir.path("centinela-data/state.db"), vec![7u8; 4096]).unwrap();
    let cfg = dir.path("centinela.toml");
    std::fs::write(&cfg, alert_config(&[backend.addr], hook.addr, "")).unwrap();
    let mut r = run_gateway(&cfg).await;
    r.proc
        .wait_line("moved it aside", Duration::from_secs(5))
        .await;
    let got = centinela_testkit::get(&client(), &format!("http://{}/", r.web))
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    let aside: Vec<_> = std::fs::read_dir(dir.path("centinela-data"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("state.db.bad-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(dir.path(&format!("centinela-data/{}", aside[0]))).unwrap(),
        vec![7u8; 4096]
    );
    stop(r).await;

    // A state_dir that cannot be made is a clear error at start.
    std::fs::write(dir.path("not-a-dir"), b"x").unwrap();
    let extra = "state_dir = \"not-a-dir/state\"\n";
    std::fs::write(&cfg, alert_config(&[backend.addr], hook.addr, extra)).unwrap();
    let out = std::process::Command::new(bin("centinela"))
        .args(["run", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot create the state directory") && err.contains("[runtime] state_dir"),
        "{err}"
    );
}

#[tokio::test]
async fn check_reports_alert_and_secret_errors_without_the_secret() {
    let dir = TempDir::new("alert-check");
    let cfg = dir.path("centinela.toml");
    let base = "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [\"127.0.0.1:1\"]\n";
    std::fs::write(
        &cfg,
        format!(
            "{base}[notify.ops]\nwebhook = \"env:CENTINELA_TEST_HOOK_URL\"\n[[alert]]\nname = \"x\"\nsignal = \"healthy_servers\"\nupstream = \"app\"\nbelow = 1\n"
        ),
    )
    .unwrap();
    let run = |env: Option<&str>| {
        let mut c = std::process::Command::new(bin("centinela"));
        c.args(["check", "--config", cfg.to_str().unwrap()]);
        match env {
            Some(v) => c.env("CENTINELA_TEST_HOOK_URL", v),
            None => c.env_remove("CENTINELA_TEST_HOOK_URL"),
        };
        c.output().unwrap()
    };
    let out = run(None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("centinela.toml:9:11: notify.ops.webhook: environment variable CENTINELA_TEST_HOOK_URL is not set"),
        "{err}"
    );
    let secret = "http://127.0.0.1:9/hook/T0KEN-s3cr3t";
    let out = run(Some(secret));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{all}");
    assert!(all.contains("upstream-down.app"), "{all}");
    assert!(!all.contains("T0KEN"), "{all}");
    // A bad URL behind a reference: the error names the reference only.
    let out = run(Some("ftp://T0KEN"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains("env:CENTINELA_TEST_HOOK_URL is not an http"),
        "{err}"
    );
    assert!(!err.contains("T0KEN"), "{err}");

    // Unknown signals, misplaced and missing targets, unknown notifiers.
    std::fs::write(
        &cfg,
        format!(
            "{base}[[alert]]\nname = \"a\"\nsignal = \"cpu_melting\"\nupstream = \"app\"\n[[alert]]\nname = \"b\"\nsignal = \"restarts\"\nupstream = \"app\"\nabove = 3\n[[alert]]\nname = \"c\"\nsignal = \"error_ratio\"\nupstream = \"nope\"\nabove = 0.1\nnotify = [\"pager\"]\n[[alert]]\nname = \"d\"\nsignal = \"latency_p99\"\nupstream = \"app\"\n"
        ),
    )
    .unwrap();
    let out = run(None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "centinela.toml:10:10: alert[0].signal: unknown signal \"cpu_melting\"",
        "centinela.toml:15:12: alert[1].upstream: signal \"restarts\" watches a service",
        "centinela.toml:20:12: alert[2].upstream: no upstream named \"nope\"",
        "centinela.toml:22:11: alert[2].notify: no notifier named \"pager\"",
        "alert[3]: signal \"latency_p99\" needs a threshold",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_recorded_every_10_s_and_served_as_json() {
    let hook = Receiver::start(vec![]).await;
    let backend = TestServer::ok().await;
    let dir = TempDir::new("history");
    let cfg = dir.path("centinela.toml");
    std::fs::write(&cfg, alert_config(&[backend.addr], hook.addr, "")).unwrap();
    let r = run_gateway(&cfg).await;
    let c = client();
    let series = "upstream:app:healthy,upstream:app:rps";
    let last = std::sync::Arc::new(std::sync::Mutex::new(Value::Null));
    let recorded = eventually(Duration::from_secs(30), || {
        let c = c.clone();
        let web = r.web;
        let admin = r.admin;
        let last = last.clone();
        async move {
            let _ = centinela_testkit::get(&c, &format!("http://{web}/")).await;
            let (code, v) = admin_json(admin, &format!("/-/history?series={series}")).await;
            assert_eq!(code, 200, "{v}");
            let rps_seen = v["series"]["upstream:app:rps"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x.as_f64().is_some_and(|r| r > 0.0)));
            let healthy_seen = v["series"]["upstream:app:healthy"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == 1.0));
            *last.lock().unwrap() = v;
            rps_seen && healthy_seen
        }
    })
    .await;
    let last = last.lock().unwrap().clone();
    assert!(recorded, "{last}");
    assert_eq!(last["step"], 10);
    let (code, v) = admin_json(r.admin, "/-/history?series=upstream:app:p42").await;
    assert_eq!(code, 400);
    assert!(
        v["error"].as_str().unwrap().contains("unknown value"),
        "{v}"
    );
    stop(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_report_up_and_down_and_a_failing_one_pages() {
    let hook = Receiver::start(vec![]).await;
    let backend = TestServer::ok().await;
    let dead = crate::util::dead_addr();
    let dir = TempDir::new("probes");
    let cfg = dir.path("centinela.toml");
    let b = backend.addr;
    let extra = format!(
        r#"
[[probe]]
name = "site"
url = "http://{b}/health"
interval = "200ms"
timeout = "1s"
expect_body = "ok"

[[probe]]
name = "wrong-body"
url = "http://{b}/"
interval = "200ms"
expect_body = "welcome"

[[probe]]
name = "db"
url = "tcp://{dead}"
interval = "200ms"
timeout = "500ms"

[[probe]]
name = "port"
url = "tcp://{b}"
interval = "200ms"
"#
    );
    std::fs::write(&cfg, alert_config(&[b], hook.addr, &extra)).unwrap();
    let out = cli(&["check", "--config", cfg.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("probe-failing.db (page): probe_failed of probe \"db\" above 2"),
        "{text}"
    );
    let r = run_gateway(&cfg).await;
    // Three failures in a row page through the built-in rule.
    let names = || -> Vec<String> {
        hook.received()
            .iter()
            .flat_map(|(_, b)| {
                let v: Value = serde_json::from_str(b).unwrap();
                v["alerts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a["labels"]["alertname"].as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    assert!(
        eventually(Duration::from_secs(15), || async {
            names().contains(&"probe-failing.db".to_string())
        })
        .await,
        "{:?}",
        names()
    );
    let names = names();
    assert!(names.contains(&"probe-failing.db".to_string()), "{names:?}");
    assert!(
        !names.contains(&"probe-failing.site".to_string()),
        "{names:?}"
    );
    let m = metrics(r.admin).await;
    for want in [
        "centinela_probe_up{probe=\"site\"} 1",
        "centinela_probe_up{probe=\"port\"} 1",
        "centinela_probe_up{probe=\"db\"} 0",
        "centinela_probe_up{probe=\"wrong-body\"} 0",
        "centinela_probe_duration_seconds{probe=\"site\"} ",
    ] {
        assert!(m.contains(want), "missing {want} in\n{m}");
    }
    let (code, health) = admin_json(r.admin, "/-/health/detailed").await;
    assert_eq!(code, 503);
    let probes = health["probes"].as_array().unwrap();
    let find = |n: &str| probes.iter().find(|p| p["name"] == n).unwrap().clone();
    assert_eq!(find("site")["up"], true);
    assert_eq!(find("db")["up"], false);
    assert!(find("db")["error"].as_str().unwrap().contains("connect"));
    assert!(find("wrong-body")["error"]
        .as_str()
        .unwrap()
        .contains("does not contain \"welcome\""));
    assert!(find("site")["uptime"].get("percent_24h").is_some());
    stop(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_receive_prints_what_a_webhook_notifier_sends() {
    let port = free_port_range(1);
    let listen = format!("127.0.0.1:{port}");
    let mut recv = Proc::spawn(
        &bin("centinela"),
        &["alerts", "receive", "--listen", &listen],
    );
    recv.wait_line("Receiving alert webhooks", Duration::from_secs(10))
        .await;
    let backend = TestServer::ok().await;
    let dir = TempDir::new("alert-receive");
    let cfg = dir.path("centinela.toml");
    let hook: SocketAddr = listen.parse().unwrap();
    let rule = "[alerting]\ndefaults = false\ngroup_wait = \"0s\"\n[[alert]]\nname = \"app-down\"\nsignal = \"server_down\"\nupstream = \"app\"\n";
    std::fs::write(&cfg, alert_config(&[backend.addr], hook, rule)).unwrap();
    let r = run_gateway(&cfg).await;
    backend.stop();
    recv.wait_line(
        "[FIRING] app-down (page): server_down of upstream \"app\" is 1 (above 0)",
        Duration::from_secs(15),
    )
    .await;
    stop(r).await;
    // A body that is not JSON is printed as it came.
    let c = client();
    let req = hyper::Request::post(format!("http://{listen}/"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"plain words",
        )))
        .unwrap();
    assert_eq!(centinela_testkit::send(&c, req).await.unwrap().status, 200);
    recv.wait_line("plain words", Duration::from_secs(5)).await;
}
