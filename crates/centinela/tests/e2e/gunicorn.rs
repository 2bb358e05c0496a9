//! The seeds' own stack: a real gunicorn (PyPI) serving a small WSGI app
//! with two workers, two instances under centinela. `scripts/test.sh`
//! installs gunicorn when it is missing.

use std::time::{Duration, Instant};

use centinela_testkit::{bin, client, HttpClient, TempDir};

use crate::lifecycle::{assert_no_failures, kill, run_gateway, services_json, Load};

const APP: &str = r#"import os


def app(environ, start_response):
    body = ("served by %d\n" % os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"#;

/// The interpreter that has gunicorn (the one `python3` on PATH runs).
fn python() -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", "import gunicorn, sys; print(sys.executable)"])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "gunicorn is not installed (scripts/test.sh installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The processes whose parent is `pid` (gunicorn's workers).
fn children(pid: u64) -> Vec<u64> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                let rest = &s[s.rfind(')').map_or(0, |i| i + 1)..];
                let f: Vec<&str> = rest.split_whitespace().collect();
                f.first() != Some(&"Z") && f.get(1).and_then(|pp| pp.parse().ok()) == Some(pid)
            })
        })
        .collect()
}

async fn all_ready(c: &HttpClient, admin: std::net::SocketAddr) -> Vec<serde_json::Value> {
    assert!(
        centinela_testkit::eventually(Duration::from_secs(30), || async {
            let i = services_json(c, admin).await;
            i.as_array().is_some_and(|a| {
                a.len() == 2
                    && a.iter().all(|i| i["state"] == "ready")
                    && a.iter()
                        .all(|i| children(i["pid"].as_u64().unwrap_or(0)).len() == 2)
            })
        })
        .await,
        "gunicorn instances never became ready: {}",
        services_json(c, admin).await
    );
    services_json(c, admin).await.as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gunicorn_workers_masters_rolling_restarts_and_a_killed_centinela() {
    let dir = TempDir::new("gunicorn");
    std::fs::write(dir.path("app.py"), APP).unwrap();
    let cfg = dir.path("centinela.toml");
    let base = centinela_testkit::free_port_range(3);
    std::fs::write(
        &cfg,
        format!(
            r#"{}timeouts = {{ connect = "200ms", response = "5s" }}

[service.api]
command = "{}"
args = ["-m", "gunicorn", "--bind", "127.0.0.1:{{port}}", "--workers", "2", "app:app"]
instances = 2
ports = "{base}-{}"
upstream = "products"
readiness = {{ http = "/", interval = "50ms" }}
stop = {{ drain = "5s" }}

[runtime]
access_log = false
"#,
            crate::lifecycle::PREAMBLE,
            python(),
            base + 2
        ),
    )
    .unwrap();
    let mut gw = run_gateway(&cfg).await;
    let c = client();
    let inst = all_ready(&c, gw.admin).await;
    let load = Load::start(
        &c,
        format!("http://{}", gw.web),
        4,
        Duration::from_secs(40),
        0,
    );
    load.wait_progress(100).await;

    // kill -9 of a worker: gunicorn starts another; the instance stays.
    let master0 = inst[0]["pid"].as_u64().unwrap();
    let workers = children(master0);
    kill("-9", workers[0]);
    assert!(
        centinela_testkit::eventually(Duration::from_secs(10), || async {
            let now = children(master0);
            now.len() == 2 && !now.contains(&workers[0])
        })
        .await,
        "gunicorn did not replace its worker: {:?}",
        children(master0)
    );
    let i = &services_json(&c, gw.admin).await[0];
    assert_eq!(i["pid"].as_u64(), Some(master0), "{i}");
    assert_eq!(
        (i["state"].as_str(), i["restarts"].as_u64()),
        (Some("ready"), Some(0))
    );

    // kill -9 of a master: its workers go with its process group, and the
    // instance is restarted.
    let master1 = inst[1]["pid"].as_u64().unwrap();
    let workers1 = children(master1);
    assert_eq!(workers1.len(), 2);
    kill("-9", master1);
    let t = Instant::now();
    assert!(
        centinela_testkit::eventually(Duration::from_secs(10), || async {
            workers1.iter().all(|w| !centinela_testkit::alive(*w))
        })
        .await,
        "the workers outlived their master"
    );
    let back = all_ready(&c, gw.admin).await;
    let i = back.iter().find(|i| i["index"] == 1).unwrap();
    assert_ne!(i["pid"].as_u64(), Some(master1));
    assert_eq!(i["restarts"], 1, "{i}");
    println!(
        "gunicorn master killed: instance ready again after {:?}",
        t.elapsed()
    );

    // A rolling restart under load.
    let out = tokio::process::Command::new(bin("centinela"))
        .args(["restart", "api", "--admin", &gw.admin.to_string()])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rolled = all_ready(&c, gw.admin).await;
    assert!(rolled
        .iter()
        .all(|i| i["pid"] != back[0]["pid"] && i["pid"] != back[1]["pid"]));
    load.wait_progress(100).await;
    let (ok, failed, errors) = load.finish().await;
    assert_no_failures(ok, failed, &errors);

    // kill -9 of centinela: no gunicorn process survives.
    let mut all: Vec<u64> = Vec::new();
    for i in &rolled {
        let m = i["pid"].as_u64().unwrap();
        all.push(m);
        all.extend(children(m));
    }
    assert_eq!(all.len(), 6, "two masters with two workers each: {all:?}");
    gw.proc.signal(libc::SIGKILL);
    let _ = gw.proc.wait_exit(Duration::from_secs(5)).await;
    assert!(
        centinela_testkit::eventually(Duration::from_secs(5), || async {
            all.iter().all(|p| !centinela_testkit::alive(*p))
        })
        .await,
        "gunicorn processes outlived centinela: {:?}",
        all.iter()
            .filter(|p| centinela_testkit::alive(**p))
            .collect::<Vec<_>>()
    );
}
