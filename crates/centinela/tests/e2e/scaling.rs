//! Autoscaling under the seeds' phased load test: real products-api
//! instances behind a real centinela, an open-loop load at fixed rates.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use centinela_testkit::{client, HttpClient, TempDir};

use crate::lifecycle::{assert_no_failures, run_gateway, write_supervised_config};

/// The service's entry on `/-/services`.
async fn service(c: &HttpClient, admin: std::net::SocketAddr) -> serde_json::Value {
    let got = centinela_testkit::get(c, &format!("http://{admin}/-/services"))
        .await
        .unwrap();
    serde_json::from_slice::<serde_json::Value>(&got.body).unwrap()["services"][0].clone()
}

fn ready(s: &serde_json::Value) -> usize {
    s["instances"]
        .as_array()
        .map_or(0, |a| a.iter().filter(|i| i["state"] == "ready").count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10x_spike_scales_out_and_back_to_min_with_no_failed_request() {
    let dir = TempDir::new("spike");
    let cfg = dir.path("centinela.toml");
    // 50 ms of server latency throughout: 5 rps keep 0.25 requests in
    // flight, 50 rps 2.5, 100 rps 5. Two instances, target 1.5 per ready
    // instance: the spike asks for ceil(2 × 2.5 / 1.5) = 4.
    let base = centinela_testkit::free_port_range(7);
    write_supervised_config(
        &cfg,
        2,
        (base, base + 6),
        &["--latency-ms", "50"],
        "",
        "scale = { min = 2, max = 6, target_in_flight = 1.5, up_after = \"3s\", down_after = \"5s\", cooldown = \"2s\" }",
    );
    let gw = run_gateway(&cfg).await;
    let c = client();
    assert!(
        centinela_testkit::eventually(Duration::from_secs(20), || async {
            ready(&service(&c, gw.admin).await) == 2
        })
        .await,
        "instances never became ready"
    );
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let url = format!("http://{}/products?limit=5", gw.web);
    let start = Instant::now();
    let mut timeline = Vec::new();
    let mut most_in_spike = 0;
    let mut sent = 0u64;
    // rps, seconds (the last phase runs until the count is back to min,
    // 60 s at most).
    for (phase, (rps, secs)) in [(5u64, 10u64), (50, 20), (100, 30), (5, 60)]
        .into_iter()
        .enumerate()
    {
        let end = Instant::now() + Duration::from_secs(secs);
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rps));
        let mut next_look = Instant::now();
        while Instant::now() < end {
            tick.tick().await;
            sent += 1;
            let (c2, url, ok, failed, errors) = (
                c.clone(),
                url.clone(),
                ok.clone(),
                failed.clone(),
                errors.clone(),
            );
            tokio::spawn(async move {
                match centinela_testkit::get(&c2, &url).await {
                    Ok(g) if g.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(g) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors
                            .lock()
                            .unwrap()
                            .push(format!("{} {}", g.status, g.text()));
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.lock().unwrap().push(e);
                    }
                }
            });
            if Instant::now() >= next_look {
                next_look += Duration::from_secs(1);
                let s = service(&c, gw.admin).await;
                let (n, desired) = (ready(&s), s["scale"]["desired"].as_u64().unwrap_or(0));
                if phase == 2 {
                    most_in_spike = most_in_spike.max(n);
                }
                timeline.push(format!(
                    "{:>3}s {rps:>3} rps: {n} ready, {desired} wanted",
                    start.elapsed().as_secs()
                ));
                if phase == 3 && n == 2 && desired == 2 && s["scale"]["downs"].as_u64() > Some(0) {
                    break;
                }
            }
        }
    }
    // Let the last requests end.
    let total = |ok: &AtomicU64, failed: &AtomicU64| {
        ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed)
    };
    assert!(
        centinela_testkit::eventually(Duration::from_secs(10), || async {
            total(&ok, &failed) == sent
        })
        .await,
        "{} of {sent} requests never ended",
        sent - total(&ok, &failed)
    );
    println!("timeline:\n{}", timeline.join("\n"));
    let s = service(&c, gw.admin).await;
    println!("scale: {}", s["scale"]);
    assert!(
        most_in_spike > 2,
        "never scaled out:\n{}",
        timeline.join("\n")
    );
    assert_eq!(ready(&s), 2, "not back to min:\n{}", timeline.join("\n"));
    assert_eq!(s["scale"]["desired"], 2);
    assert_eq!(s["scale"]["last"]["direction"], "down");
    assert!(
        s["scale"]["last"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("requests in flight per ready instance averaged")),
        "{}",
        s["scale"]
    );
    let metrics = centinela_testkit::get(&c, &format!("http://{}/metrics", gw.admin))
        .await
        .unwrap()
        .text();
    for needle in [
        "centinela_service_desired_instances{service=\"products\"} 2",
        "centinela_service_scale_events_total{service=\"products\",direction=\"up\"}",
        "centinela_service_scale_events_total{service=\"products\",direction=\"down\"}",
    ] {
        assert!(metrics.contains(needle), "no {needle} in /metrics");
    }
    let out = std::process::Command::new(centinela_testkit::bin("centinela"))
        .args(["status", "--admin", &gw.admin.to_string()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("scale: 2 wanted (2–6)"), "{table}");
    let errors = errors.lock().unwrap().clone();
    assert_no_failures(
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        &errors,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_cpu_scales_a_busy_service_out() {
    let dir = TempDir::new("scale-cpu");
    let cfg = dir.path("centinela.toml");
    // Each instance spins at all the CPU its limit gives it (half a core):
    // 100% of the limit against a target of 50 asks for twice as many.
    std::fs::write(
        &cfg,
        format!(
            r#"{}servers = ["127.0.0.1:1"]

[service.spin]
command = "/bin/sh"
args = ["-c", "while :; do :; done"]
limits = {{ cpu = 0.5 }}
readiness = {{ exec = ["true"], interval = "20ms" }}
scale = {{ min = 1, max = 2, target_cpu = 50, up_after = "3s", down_after = "1m" }}

[runtime]
access_log = false
"#,
            crate::lifecycle::PREAMBLE
        ),
    )
    .unwrap();
    let gw = run_gateway(&cfg).await;
    let c = client();
    // CPU% is sampled every 2 s; three seconds of it, then the decision.
    assert!(
        centinela_testkit::eventually(Duration::from_secs(20), || async {
            ready(&service(&c, gw.admin).await) == 2
        })
        .await,
        "never scaled out: {}",
        service(&c, gw.admin).await
    );
    let s = service(&c, gw.admin).await;
    assert_eq!(s["scale"]["last"]["direction"], "up", "{s}");
    assert!(
        s["scale"]["last"]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("CPU% per instance averaged")),
        "{s}"
    );
}
