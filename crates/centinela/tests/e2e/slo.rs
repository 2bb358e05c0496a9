//! SLOs with the real binary: good and bad requests counted from live
//! traffic (errors and slow successes, each once), the error budget and
//! burn rates in the detailed health and the metrics, the fast burn rule
//! paging by webhook, and the counts surviving a restart. The burn-rate
//! arithmetic over hours and days is tested with a synthetic clock in
//! `centinela_observe::slo`.

use std::sync::Arc;
use std::time::Duration;

use centinela_testkit::{client, eventually, get, Receiver, Reply, TempDir, TestServer};
use serde_json::Value;

use crate::alerts::{admin_json, alert_config, alert_state, metrics, stop};
use crate::lifecycle::run_gateway;

async fn slo_health(admin: std::net::SocketAddr) -> Value {
    let (_, v) = admin_json(admin, "/-/health/detailed").await;
    v["slos"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_slo_counts_live_traffic_spends_its_budget_and_pages_on_a_fast_burn() {
    let hook = Receiver::start(vec![]).await;
    let backend = TestServer::start(Arc::new(|req| match req.uri().path() {
        "/fail" => Reply::status(500),
        "/slow" => Reply::ok("slow").delayed(Duration::from_millis(300)),
        _ => Reply::ok("ok"),
    }))
    .await;
    let dir = TempDir::new("slo");
    let cfg = dir.path("centinela.toml");
    let extra = r#"
[alerting]
defaults = false
group_wait = "1s"

[[slo]]
name = "app-avail"
upstream = "app"
objective = 99.9
window = "30d"
latency = "250ms"
notify = ["ops"]
"#;
    std::fs::write(&cfg, alert_config(&[backend.addr], hook.addr, extra)).unwrap();
    let r = run_gateway(&cfg).await;
    let http = client();
    let base = format!("http://{}", r.web);
    for _ in 0..150 {
        assert_eq!(get(&http, &format!("{base}/")).await.unwrap().status, 200);
    }
    // The burn alerts need min_requests (100) in their short window: not
    // one fired from good traffic.
    for _ in 0..3 {
        assert_eq!(
            get(&http, &format!("{base}/fail")).await.unwrap().status,
            500
        );
    }
    for _ in 0..2 {
        assert_eq!(
            get(&http, &format!("{base}/slow")).await.unwrap().status,
            200
        );
    }
    // 155 requests, 5 bad: 3 errors and 2 slower than 250ms.
    assert!(
        eventually(Duration::from_secs(5), || async {
            slo_health(r.admin).await["requests"] == 155
        })
        .await,
        "{}",
        slo_health(r.admin).await
    );
    let s = slo_health(r.admin).await;
    assert_eq!(s["bad_requests"], 5, "{s}");
    assert_eq!(s["objective"], 99.9);
    assert_eq!(s["window"], "30d");
    // 5/155 bad against a 0.1% budget: the budget is overspent 31 times.
    let remaining = s["error_budget_remaining"].as_f64().unwrap();
    assert!(
        (remaining - (1.0 - 5.0 / 155.0 / 0.001)).abs() < 0.01,
        "{s}"
    );
    let burn_5m = s["burn_rate"]["5m"].as_f64().unwrap();
    assert!((burn_5m - 5.0 / 155.0 / 0.001).abs() < 0.1, "{s}");
    let m = metrics(r.admin).await;
    let line = m
        .lines()
        .find(|l| l.starts_with("centinela_slo_error_budget_remaining_ratio{slo=\"app-avail\"}"))
        .unwrap_or_else(|| panic!("no budget metric in {m}"));
    let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((v - remaining).abs() < 0.01, "{line}");
    assert!(
        m.contains("centinela_slo_burn_rate{slo=\"app-avail\",window=\"1h\"}"),
        "{m}"
    );

    // A burn of 32× over 5 m and 1 h: the fast rule (14.4×) pages.
    let bodies = hook.wait_for(1, Duration::from_secs(10)).await;
    let firing: Vec<Value> = bodies
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    assert!(
        firing.iter().any(
            |v| v["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["labels"]["alertname"] == "slo-burn-fast.app-avail"
                    && a["labels"]["slo"] == "app-avail"
                    && a["labels"]["severity"] == "page")
        ),
        "{bodies:?}"
    );
    assert_eq!(
        alert_state(r.admin, "slo-burn-fast.app-avail").await,
        "firing"
    );
    let (code, _) = admin_json(r.admin, "/-/health/detailed").await;
    assert_eq!(code, 503, "a firing page makes the detailed health 503");

    // A restart keeps the counts: they live in the state file.
    stop(r).await;
    let r = run_gateway(&cfg).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            let s = slo_health(r.admin).await;
            s["requests"] == 155 && s["bad_requests"] == 5
        })
        .await,
        "{}",
        slo_health(r.admin).await
    );
    stop(r).await;
}
