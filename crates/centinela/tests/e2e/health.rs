use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use centinela_testkit::{assert_eventually, client, Reply};

use crate::util::*;

#[tokio::test]
async fn active_checks_remove_a_failing_server_and_readmit_it_after_rise() {
    let good = servers(1).await;
    let healthy = Arc::new(AtomicBool::new(true));
    let h = healthy.clone();
    let flaky = server_with(move |req| {
        if req.uri().path() == "/health" && !h.load(Ordering::Relaxed) {
            Reply::status(503)
        } else {
            Reply::ok("flaky")
        }
    })
    .await;
    let gw = start(&config(
        &[(good[0].addr, 1), (flaky.addr, 1)],
        "health = { path = \"/health\", interval = \"50ms\", timeout = \"200ms\", rise = 3, fall = 2 }\nslow_start = \"0s\"",
    ))
    .await;
    let c = client();
    healthy.store(false, Ordering::Relaxed);
    assert_eventually!(
        3,
        server_state(&upstream_state(&c, &gw).await, flaky.addr)["healthy"] == false,
        "flaky server never marked down"
    );
    let before = flaky.hits();
    for _ in 0..20 {
        assert_eq!(get(&c, &gw, "/").await.status, 200);
    }
    // Only health checks reached it, no traffic: every answer came from `good`.
    let h_checks = flaky.hits() - before;
    assert!(h_checks < 20, "flaky got {h_checks} hits while down");
    healthy.store(true, Ordering::Relaxed);
    assert_eventually!(
        3,
        server_state(&upstream_state(&c, &gw).await, flaky.addr)["healthy"] == true,
        "flaky server never came back"
    );
    assert_eventually!(
        3,
        get(&c, &gw, "/").await.header("x-served-by") == Some(&flaky.addr.to_string()),
        "flaky server gets no traffic after coming back"
    );
    let ready = centinela_testkit::get(&c, &format!("http://{}/-/ready", gw.admin_addr()))
        .await
        .unwrap();
    assert_eq!(ready.status, 200);
}

#[tokio::test]
async fn ready_is_503_when_a_route_has_no_healthy_server() {
    let s = server_with(|req| {
        if req.uri().path() == "/health" {
            Reply::status(500)
        } else {
            Reply::ok("x")
        }
    })
    .await;
    let gw = start(&config(
        &[(s.addr, 1)],
        "health = { interval = \"20ms\", fall = 1 }",
    ))
    .await;
    let c = client();
    let admin = format!("http://{}", gw.admin_addr());
    assert_eq!(
        centinela_testkit::get(&c, &format!("{admin}/-/health"))
            .await
            .unwrap()
            .status,
        200
    );
    assert_eventually!(
        3,
        centinela_testkit::get(&c, &format!("{admin}/-/ready"))
            .await
            .unwrap()
            .status
            == 503,
        "never unready"
    );
    let body = centinela_testkit::get(&c, &format!("{admin}/-/ready"))
        .await
        .unwrap()
        .text();
    assert!(body.contains("-> app"), "{body}");
    // Panic mode: every server is unhealthy, so the gateway tries them all
    // instead of refusing everything.
    assert_eq!(get(&c, &gw, "/").await.status, 200);
}

#[tokio::test]
async fn outlier_detection_ejects_after_consecutive_5xx_but_never_more_than_max_percent() {
    let good = servers(1).await;
    let bad = server_with(|_| Reply::status(500)).await;
    let extra = "outlier = { consecutive_failures = 3, base_ejection = \"30s\", max_ejection_percent = 50 }\nretry = { attempts = 1 }\nbreaker = { enabled = false }";
    let gw = start(&config(&[(good[0].addr, 1), (bad.addr, 1)], extra)).await;
    let c = client();
    let mut fails = 0;
    for _ in 0..40 {
        if get(&c, &gw, "/").await.status == 500 {
            fails += 1;
        }
    }
    // Ejected after its third consecutive 500: no more traffic after that.
    assert_eq!(
        fails, 3,
        "bad server should get exactly 3 requests before ejection"
    );
    assert_eq!(
        server_state(&upstream_state(&c, &gw).await, bad.addr)["ejected"],
        true
    );

    // Two failing servers, 50%: only one may be ejected.
    let (b1, b2) = (
        server_with(|_| Reply::status(500)).await,
        server_with(|_| Reply::status(500)).await,
    );
    let gw = start(&config(&[(b1.addr, 1), (b2.addr, 1)], extra)).await;
    for _ in 0..30 {
        get(&c, &gw, "/").await;
    }
    let st = upstream_state(&c, &gw).await;
    let ejected = st
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["ejected"] == true)
        .count();
    assert_eq!(ejected, 1, "{st}");
}

#[tokio::test]
async fn breaker_opens_on_error_ratio_answers_503_at_once_then_closes() {
    let status = Arc::new(AtomicU16::new(500));
    let st = status.clone();
    let s = server_with(move |_| Reply::status(st.load(Ordering::Relaxed))).await;
    let extra = "breaker = { error_ratio = 0.5, window = \"10s\", min_requests = 5, open_for = \"300ms\", half_open_requests = 2 }\noutlier = { consecutive_failures = 0 }\nretry = { attempts = 1 }";
    let gw = start(&config(&[(s.addr, 1)], extra)).await;
    let c = client();
    for _ in 0..5 {
        assert_eq!(get(&c, &gw, "/").await.status, 500);
    }
    // Open: refused at once, the server sees nothing.
    let hits = s.hits();
    let got = get(&c, &gw, "/").await;
    assert_eq!(got.status, 503);
    assert!(got.text().contains("circuit open"), "{}", got.text());
    assert_eq!(s.hits(), hits);
    assert_eq!(
        server_state(&upstream_state(&c, &gw).await, s.addr)["breaker"],
        "open"
    );
    // The server recovers; after open_for, half-open probes close the circuit.
    status.store(200, Ordering::Relaxed);
    assert_eventually!(
        3,
        get(&c, &gw, "/").await.status == 200,
        "breaker never half-opened"
    );
    assert_eq!(get(&c, &gw, "/").await.status, 200);
    assert_eq!(
        server_state(&upstream_state(&c, &gw).await, s.addr)["breaker"],
        "closed"
    );
    let _ = Duration::ZERO;
}

#[tokio::test]
async fn breaker_open_on_one_server_sends_traffic_to_the_others() {
    let good = servers(1).await;
    let bad = server_with(|_| Reply::status(500)).await;
    let extra = "breaker = { error_ratio = 0.5, min_requests = 4, open_for = \"30s\" }\noutlier = { consecutive_failures = 0 }\nretry = { attempts = 1 }";
    let gw = start(&config(&[(good[0].addr, 1), (bad.addr, 1)], extra)).await;
    let c = client();
    for _ in 0..10 {
        get(&c, &gw, "/").await;
    }
    assert_eq!(
        server_state(&upstream_state(&c, &gw).await, bad.addr)["breaker"],
        "open"
    );
    for _ in 0..20 {
        assert_eq!(get(&c, &gw, "/").await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_server_ramps_up_its_share_slowly() {
    let steady = servers(1).await;
    let healthy = Arc::new(AtomicBool::new(true));
    let h = healthy.clone();
    let returning = server_with(move |req| {
        if req.uri().path() == "/health" && !h.load(Ordering::Relaxed) {
            Reply::status(503)
        } else {
            Reply::ok("r")
        }
    })
    .await;
    let gw = start(&config(
        &[(steady[0].addr, 1), (returning.addr, 1)],
        "health = { interval = \"20ms\", rise = 1, fall = 1 }\nslow_start = \"3s\"",
    ))
    .await;
    let c = client();
    healthy.store(false, Ordering::Relaxed);
    assert_eventually!(
        3,
        server_state(&upstream_state(&c, &gw).await, returning.addr)["healthy"] == false,
        "never down"
    );
    healthy.store(true, Ordering::Relaxed);
    assert_eventually!(
        3,
        server_state(&upstream_state(&c, &gw).await, returning.addr)["healthy"] == true,
        "never back"
    );
    // Just back: weight ramps from 10%, so its share is far below half.
    let share = |n: usize| {
        let (c, gw_url, addr) = (c.clone(), url(&gw, "/"), returning.addr.to_string());
        async move {
            let mut mine = 0;
            for _ in 0..n {
                let got = centinela_testkit::get(&c, &gw_url).await.unwrap();
                mine += usize::from(got.header("x-served-by") == Some(&*addr));
            }
            mine as f64 / n as f64
        }
    };
    let early = share(60).await;
    assert!(
        early < 0.3,
        "returning server got {:.0}% right after coming back",
        early * 100.0
    );
    // After the slow-start period it gets its full half.
    assert_eventually!(
        10,
        (share(100).await - 0.5).abs() < 0.1,
        "share never reached 50%"
    );
}
