//! Changing supervised services while they serve: rolling restarts, stop and
//! start, scaling and new settings by reload, and what a dead centinela
//! leaves behind. Real `centinela` and `products-api` processes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use centinela_testkit::{bin, client, eventually, HttpClient, TempDir};

use crate::lifecycle::{
    assert_no_failures, kill, run_gateway, services_json, write_supervised_config, Load, Running,
    PREAMBLE,
};

const UPSTREAM: &str = "timeouts = { connect = \"200ms\", response = \"5s\" }";

/// Runs the `centinela` CLI without blocking the test's runtime.
async fn cli(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(bin("centinela"))
        .args(args)
        .output()
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Waits until the service shows exactly `n` instances, all ready; returns
/// their pids and ports.
async fn all_ready(
    c: &HttpClient,
    admin: SocketAddr,
    n: usize,
    within: Duration,
) -> Vec<(u64, u64)> {
    let ok = eventually(within, || async {
        services_json(c, admin).await.as_array().is_some_and(|a| {
            a.len() == n && a.iter().all(|i| i["state"] == "ready" && i["pid"].is_u64())
        })
    })
    .await;
    let inst = services_json(c, admin).await;
    assert!(ok, "expected {n} ready instances: {inst}");
    inst.as_array()
        .unwrap()
        .iter()
        .map(|i| (i["pid"].as_u64().unwrap(), i["port"].as_u64().unwrap()))
        .collect()
}

/// Every created product can be read back through the gateway.
async fn assert_all_present(c: &HttpClient, web: SocketAddr, created: &[String]) {
    for at in created {
        let got = centinela_testkit::get(c, &format!("http://{web}{at}"))
            .await
            .unwrap();
        assert_eq!(
            got.status,
            200,
            "{at} acknowledged with 201 but missing: {}",
            got.text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_4_instances_under_get_and_post_load_loses_nothing() {
    let dir = TempDir::new("rolling");
    let cfg = dir.path("centinela.toml");
    // Five ports for four instances: each replacement starts on the spare
    // port before the instance it replaces is drained and stopped.
    let base = centinela_testkit::free_port_range(5);
    // Each request takes 5 ms, so replaced instances have requests in
    // flight to drain.
    write_supervised_config(
        &cfg,
        4,
        (base, base + 4),
        &["--latency-ms", "5"],
        UPSTREAM,
        "stop = { drain = \"5s\" }",
    );
    let gw = run_gateway(&cfg).await;
    let c = client();
    let before = all_ready(&c, gw.admin, 4, Duration::from_secs(20)).await;

    let load = Load::start(
        &c,
        format!("http://{}", gw.web),
        4,
        Duration::from_secs(40),
        3,
    );
    load.wait_progress(100).await;
    let admin = gw.admin.to_string();
    let t = Instant::now();
    let out = cli(&["restart", "products", "--admin", &admin]).await;
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "restart failed: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("4 instance(s) replaced"),
        "{}",
        text(&out.stdout)
    );
    // Every instance is new and ready; the old processes are gone.
    let after = all_ready(&c, gw.admin, 4, Duration::from_secs(5)).await;
    for (pid, _) in &before {
        assert!(
            after.iter().all(|(p, _)| p != pid),
            "{pid} was not replaced"
        );
        assert!(
            !centinela_testkit::alive(*pid),
            "old instance {pid} still runs"
        );
    }
    let slots: Vec<u64> = services_json(&c, gw.admin)
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["index"].as_u64().unwrap())
        .collect();
    assert_eq!(slots, [0, 1, 2, 3]);
    for (_, port) in &after {
        assert!((u64::from(base)..=u64::from(base) + 4).contains(port));
    }
    // The same through the admin API, while the load goes on.
    load.wait_progress(100).await;
    // A POST without X-Centinela (what a cross-site form can send) is
    // refused, as is one from a browser page of another site.
    let req = hyper::Request::post(format!("http://{}/-/services/products/restart", gw.admin))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(centinela_testkit::send(&c, req).await.unwrap().status, 403);
    let req = hyper::Request::post(format!("http://{}/-/services/products/restart", gw.admin))
        .header("x-centinela", "1")
        .header("origin", "http://evil.example")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(centinela_testkit::send(&c, req).await.unwrap().status, 403);
    let req = hyper::Request::post(format!("http://{}/-/services/products/restart", gw.admin))
        .header("x-centinela", "1")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let got = centinela_testkit::send(&c, req).await.unwrap();
    assert_eq!(got.status, 200, "{}", got.text());
    let v: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert!(v["result"].as_str().unwrap().contains("replaced"), "{v}");
    let third = all_ready(&c, gw.admin, 4, Duration::from_secs(5)).await;
    assert!(third.iter().all(|x| !after.contains(x)));
    let req = hyper::Request::post(format!("http://{}/-/services/nosuch/restart", gw.admin))
        .header("x-centinela", "1")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(centinela_testkit::send(&c, req).await.unwrap().status, 404);
    // The load goes on after the rolls, then stops.
    load.wait_progress(100).await;
    let created = load.created();
    let (ok, failed, errors) = load.finish().await;
    assert_no_failures(ok, failed, &errors);
    assert!(
        created.len() > 30,
        "only {} POSTs acknowledged",
        created.len()
    );
    assert_all_present(&c, gw.web, &created).await;
    eprintln!(
        "rolling restart of 4 took {took:?}; {ok} requests, {} POSTs, 0 failed",
        created.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_drains_in_flight_requests_start_brings_it_back_and_a_bad_rollout_keeps_the_old_instances(
) {
    let dir = TempDir::new("stopstart");
    let cfg = dir.path("centinela.toml");
    let base = centinela_testkit::free_port_range(2);
    let ports = (base, base + 1);
    // SIGKILL as the stop signal: only centinela's drain can save requests
    // in flight, not the app's own graceful shutdown.
    let kill9 = "stop = { signal = \"SIGKILL\", drain = \"10s\" }";
    write_supervised_config(&cfg, 2, ports, &["--latency-ms", "400"], UPSTREAM, kill9);
    let mut gw = run_gateway(&cfg).await;
    let c = client();
    let before = all_ready(&c, gw.admin, 2, Duration::from_secs(20)).await;
    let admin = gw.admin.to_string();

    // A slow request is in flight when the service is stopped: it finishes.
    let slow = {
        let (c, web) = (c.clone(), gw.web);
        tokio::spawn(
            async move { centinela_testkit::get(&c, &format!("http://{web}/products")).await },
        )
    };
    assert!(
        eventually(Duration::from_secs(5), || async {
            let got = centinela_testkit::get(&c, &format!("http://{}/-/upstreams", gw.admin))
                .await
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
            v["upstreams"][0]["servers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["in_flight"] == 1)
        })
        .await,
        "the slow request never reached an instance"
    );
    let stop = {
        let admin = admin.clone();
        tokio::spawn(async move { cli(&["stop", "products", "--admin", &admin]).await })
    };
    // The instance with the request shows `draining` until it finishes.
    assert!(
        eventually(Duration::from_secs(2), || async {
            services_json(&c, gw.admin)
                .await
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["state"] == "draining")
        })
        .await,
        "no instance was shown draining"
    );
    let stop = stop.await.unwrap();
    assert!(stop.status.success(), "{}", text(&stop.stderr));
    assert!(text(&stop.stdout).contains("2 instance(s) drained and stopped"));
    let slow = slow.await.unwrap().unwrap();
    assert_eq!(slow.status, 200, "{}", slow.text());
    let inst = services_json(&c, gw.admin).await;
    assert!(
        inst.as_array()
            .unwrap()
            .iter()
            .all(|i| i["state"] == "stopped" && i["pid"].is_null()),
        "{inst}"
    );
    for (pid, _) in &before {
        assert!(!centinela_testkit::alive(*pid));
    }
    let got = centinela_testkit::get(&c, &format!("http://{}/products", gw.web))
        .await
        .unwrap();
    let up = centinela_testkit::get(&c, &format!("http://{}/-/upstreams", gw.admin))
        .await
        .unwrap();
    assert_eq!(
        got.status,
        503,
        "{} {} {:?}",
        got.text(),
        up.text(),
        gw.proc.drain()
    );
    let again = cli(&["stop", "products", "--admin", &admin]).await;
    assert!(text(&again.stdout).contains("already stopped"));

    let start = cli(&["start", "products", "--admin", &admin]).await;
    assert!(start.status.success(), "{}", text(&start.stderr));
    all_ready(&c, gw.admin, 2, Duration::from_secs(5)).await;
    let got = centinela_testkit::get(&c, &format!("http://{}/products", gw.web))
        .await
        .unwrap();
    assert_eq!(got.status, 200);

    let unknown = cli(&["restart", "nosuch", "--admin", &admin]).await;
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        text(&unknown.stderr).contains("no service \"nosuch\""),
        "{}",
        text(&unknown.stderr)
    );

    // A reload whose new settings make instances exit at once: the rollout
    // stops at the first replacement, and the old instances keep serving.
    let serving = all_ready(&c, gw.admin, 2, Duration::from_secs(5)).await;
    write_supervised_config(&cfg, 2, ports, &["--fail-rate", "2"], UPSTREAM, "");
    gw.proc.signal(libc::SIGHUP);
    let failed = gw
        .proc
        .wait_line("Service change failed", Duration::from_secs(20))
        .await;
    assert!(failed.contains("exited before it was ready"), "{failed}");
    let now = all_ready(&c, gw.admin, 2, Duration::from_secs(5)).await;
    assert_eq!(now.len(), 2);
    assert!(
        now.iter().filter(|x| serving.contains(x)).count() >= 1,
        "old instances were not kept: {serving:?} -> {now:?}"
    );
    let got = centinela_testkit::get(&c, &format!("http://{}/products", gw.web))
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    // `centinela restart` retries the new settings, fails, and says why.
    let r = cli(&["restart", "products", "--admin", &admin]).await;
    assert_eq!(r.status.code(), Some(1));
    assert!(
        text(&r.stderr).contains("rolling restart of products stopped at instance"),
        "{}",
        text(&r.stderr)
    );
    // Fixed settings roll out.
    write_supervised_config(&cfg, 2, ports, &[], UPSTREAM, "");
    gw.proc.signal(libc::SIGHUP);
    let applied = gw
        .proc
        .wait_line("Service change applied", Duration::from_secs(20))
        .await;
    assert!(
        applied.contains("rolled onto the new settings"),
        "{applied}"
    );
    let fixed = all_ready(&c, gw.admin, 2, Duration::from_secs(5)).await;
    assert!(fixed.iter().all(|x| !now.contains(x)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_scales_2_to_4_and_back_and_rolls_new_settings_under_load() {
    let dir = TempDir::new("scale");
    let cfg = dir.path("centinela.toml");
    let base = centinela_testkit::free_port_range(4);
    let pool = (base, base + 3);
    write_supervised_config(&cfg, 2, pool, &[], UPSTREAM, "");
    let mut gw: Running = run_gateway(&cfg).await;
    let c = client();
    all_ready(&c, gw.admin, 2, Duration::from_secs(20)).await;
    let load = Load::start(
        &c,
        format!("http://{}", gw.web),
        4,
        Duration::from_secs(40),
        4,
    );
    load.wait_progress(100).await;

    // 2 -> 4: the new instances start and join.
    write_supervised_config(&cfg, 4, pool, &[], UPSTREAM, "");
    gw.proc.signal(libc::SIGHUP);
    let line = gw
        .proc
        .wait_line("scaled from 2 to 4", Duration::from_secs(20))
        .await;
    assert!(line.contains("Service change applied"), "{line}");
    let four = all_ready(&c, gw.admin, 4, Duration::from_secs(5)).await;
    let served = eventually(Duration::from_secs(10), || async {
        let got = centinela_testkit::get(&c, &format!("http://{}/products", gw.web)).await;
        got.is_ok_and(|g| g.header("x-served-by") == Some(&format!("127.0.0.1:{}", base + 3)))
    })
    .await;
    assert!(served, "the fourth instance never served");
    load.wait_progress(100).await;

    // 4 -> 2: the highest two are drained and stopped.
    write_supervised_config(&cfg, 2, pool, &[], UPSTREAM, "");
    gw.proc.signal(libc::SIGHUP);
    let line = gw
        .proc
        .wait_line("scaled from 4 to 2", Duration::from_secs(20))
        .await;
    assert!(line.contains("Service change applied"), "{line}");
    let two = all_ready(&c, gw.admin, 2, Duration::from_secs(5)).await;
    assert_eq!(two, four[..2]);
    for (pid, _) in &four[2..] {
        assert!(!centinela_testkit::alive(*pid));
    }
    load.wait_progress(100).await;

    // New settings with no spare port in the pool: each instance is drained
    // and replaced on its own port.
    write_supervised_config(
        &cfg,
        2,
        (base, base + 1),
        &[],
        UPSTREAM,
        "env = { DEPLOY = \"2\" }",
    );
    gw.proc.signal(libc::SIGHUP);
    let line = gw
        .proc
        .wait_line("rolled onto the new settings", Duration::from_secs(20))
        .await;
    assert!(line.contains("Service change applied"), "{line}");
    let rolled = all_ready(&c, gw.admin, 2, Duration::from_secs(5)).await;
    for (i, (pid, port)) in rolled.iter().enumerate() {
        assert_ne!(*pid, two[i].0);
        assert_eq!(*port, two[i].1, "in-place replacement keeps the port");
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(
            env.split(|b| *b == 0).any(|kv| kv == b"DEPLOY=2"),
            "instance {i} runs without the new env"
        );
    }
    load.wait_progress(100).await;
    let created = load.created();
    let (ok, failed, errors) = load.finish().await;
    assert_no_failures(ok, failed, &errors);
    assert_all_present(&c, gw.web, &created).await;
}

/// Kills a process the test left behind if an assertion failed first.
struct KillOnDrop(u64);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if centinela_testkit::alive(self.0) {
            kill("-9", self.0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_centinela_kills_workers_children_left_by_a_killed_one() {
    let dir = TempDir::new("orphans");
    let cfg = dir.path("centinela.toml");
    let port = centinela_testkit::free_port_range(1);
    // The instance is a shell whose child holds the port: the kernel kills
    // the shell with centinela, but not its child.
    std::fs::write(
        &cfg,
        format!(
            r#"{PREAMBLE}
[service.products]
command = "/bin/sh"
args = ["-c", "'{}' --listen 127.0.0.1:$PORT --db products.db & echo child=$! ; wait"]
ports = "{port}-{port}"
upstream = "products"
readiness = {{ http = "/health", interval = "20ms" }}
logs = {{ dir = "logs" }}

[runtime]
access_log = false
"#,
            bin("products-api").display()
        ),
    )
    .unwrap();
    let mut gw = run_gateway(&cfg).await;
    let c = client();
    let shell = all_ready(&c, gw.admin, 1, Duration::from_secs(20)).await[0].0;
    let log = dir.path("logs/products-0.log");
    assert!(
        eventually(Duration::from_secs(5), || async {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("child="))
        })
        .await
    );
    let child: u64 = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("child=")?.trim().parse().ok())
        .unwrap();
    let _reap = KillOnDrop(child);
    // Its reaper would kill the child as centinela dies; gone too (as
    // after a kill of every process, or with an older centinela), it
    // leaves the orphan the next centinela must sweep.
    let reaper = reaper_of(gw.proc.pid() as u64).expect("centinela runs a reaper");
    kill("-9", reaper);
    gw.proc.signal(libc::SIGKILL);
    let _ = gw.proc.wait_exit(Duration::from_secs(5)).await;
    assert!(
        eventually(Duration::from_secs(1), || async {
            !centinela_testkit::alive(shell)
        })
        .await,
        "the instance outlived centinela"
    );
    assert!(
        centinela_testkit::alive(child),
        "the child should be orphaned, still holding the port"
    );

    let mut gw2 = run_gateway(&cfg).await;
    // Any centinela that starts sweeps the host: one started by a test
    // running beside this one may have killed the orphan first, and then
    // gw2 finds nothing to kill. Either way the orphan must be gone.
    let swept_here = gw2
        .proc
        .seen
        .iter()
        .any(|l| l.contains("left behind by a centinela that is gone"));
    assert!(
        eventually(Duration::from_secs(2), || async {
            !centinela_testkit::alive(child)
        })
        .await,
        "orphan {child} still runs (swept by the new centinela: {swept_here})"
    );
    let fresh = all_ready(&c, gw2.admin, 1, Duration::from_secs(20)).await;
    assert_ne!(fresh[0].0, shell);
    let got = centinela_testkit::get(&c, &format!("http://{}/products", gw2.web))
        .await
        .unwrap();
    assert_eq!(got.status, 200);

    // With its reaper, a killed centinela takes the child with it.
    let log = std::fs::read_to_string(&log).unwrap();
    let child2: u64 = log
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("child=")?.trim().parse().ok())
        .unwrap();
    assert_ne!(child2, child);
    let _reap2 = KillOnDrop(child2);
    gw2.proc.signal(libc::SIGKILL);
    let _ = gw2.proc.wait_exit(Duration::from_secs(5)).await;
    assert!(
        eventually(Duration::from_secs(2), || async {
            !centinela_testkit::alive(child2)
        })
        .await,
        "the instance's child {child2} outlived a killed centinela"
    );
}

/// The reaper process `centinela` (pid) started: a child of it running
/// the reaper's script.
fn reaper_of(centinela: u64) -> Option<u64> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .find(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let rest = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
            let ppid = rest
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok());
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            ppid == Some(centinela) && String::from_utf8_lossy(&cmd).contains("while read -r op pg")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_starts_an_added_service_and_stops_a_removed_one() {
    let dir = TempDir::new("addsvc");
    let cfg = dir.path("centinela.toml");
    let base = centinela_testkit::free_port_range(1);
    write_supervised_config(&cfg, 1, (base, base), &[], UPSTREAM, "");
    let mut gw = run_gateway(&cfg).await;
    let c = client();
    all_ready(&c, gw.admin, 1, Duration::from_secs(20)).await;
    let service_names = |v: serde_json::Value| -> Vec<String> {
        v["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };

    // A worker without ports is added by reload: it starts.
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(
        "\n[service.worker]\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"echo working; exec sleep 300\"]\ninstances = 2\n",
    );
    std::fs::write(&cfg, &text).unwrap();
    gw.proc.signal(libc::SIGHUP);
    gw.proc
        .wait_line("worker: added", Duration::from_secs(20))
        .await;
    let got = centinela_testkit::get(&c, &format!("http://{}/-/services", gw.admin))
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(service_names(v.clone()), ["products", "worker"]);
    let workers: Vec<u64> = v["services"][1]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            assert_eq!(i["state"], "ready", "{i}");
            i["pid"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(workers.len(), 2);
    assert!(workers.iter().all(|p| centinela_testkit::alive(*p)));

    // Removed again: its instances stop, products is untouched.
    let products_before = all_ready(&c, gw.admin, 1, Duration::from_secs(1)).await;
    write_supervised_config(&cfg, 1, (base, base), &[], UPSTREAM, "");
    gw.proc.signal(libc::SIGHUP);
    gw.proc
        .wait_line("worker: removed", Duration::from_secs(20))
        .await;
    assert!(
        eventually(Duration::from_secs(2), || async {
            workers.iter().all(|p| !centinela_testkit::alive(*p))
        })
        .await,
        "worker instances outlived their removal"
    );
    let got = centinela_testkit::get(&c, &format!("http://{}/-/services", gw.admin))
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(service_names(v), ["products"]);
    assert_eq!(
        all_ready(&c, gw.admin, 1, Duration::from_secs(1)).await,
        products_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_reloads_apply_service_changes_in_order() {
    let dir = TempDir::new("hup-order");
    let cfg = dir.path("centinela.toml");
    let base = centinela_testkit::free_port_range(4);
    let pool = (base, base + 3);
    write_supervised_config(&cfg, 1, pool, &[], UPSTREAM, "");
    let mut gw: Running = run_gateway(&cfg).await;
    let c = client();
    all_ready(&c, gw.admin, 1, Duration::from_secs(20)).await;

    // Reload A (1 -> 4) is read; while its instances start, reload B
    // (-> 2) comes. B is the newest: 2 instances it is, whatever A did.
    write_supervised_config(&cfg, 4, pool, &[], UPSTREAM, "");
    gw.proc.signal(libc::SIGHUP);
    gw.proc
        .wait_line("Configuration reloaded", Duration::from_secs(10))
        .await;
    write_supervised_config(&cfg, 2, pool, &[], UPSTREAM, "");
    gw.proc.signal(libc::SIGHUP);
    gw.proc
        .wait_line("to 2 instance(s)", Duration::from_secs(30))
        .await;
    all_ready(&c, gw.admin, 2, Duration::from_secs(10)).await;
    gw.proc.signal(libc::SIGTERM);
    assert!(gw.proc.wait_exit(Duration::from_secs(20)).await.success());
    // The last service change applied is B's.
    let applied: Vec<String> = gw
        .proc
        .drain()
        .iter()
        .filter(|l| l.contains("Service change applied"))
        .cloned()
        .collect();
    assert!(
        applied
            .last()
            .is_some_and(|l| l.contains("to 2 instance(s)")),
        "{applied:#?}"
    );
}
