use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use centinela_testkit::{client, Reply};

use crate::util::*;

#[tokio::test]
async fn connect_failures_fail_over_for_any_method() {
    let good = servers(1).await;
    let gw = start(&config(
        &[(dead_addr(), 1), (good[0].addr, 1)],
        "outlier = { consecutive_failures = 0 }",
    ))
    .await;
    let c = client();
    for method in ["GET", "POST", "PATCH"] {
        for _ in 0..4 {
            let got = send(&c, &gw, method, "/", &[], "{\"a\":1}").await;
            assert_eq!(got.status, 200, "{method}");
            assert_eq!(got.header("x-echo-body-len"), Some("7"));
        }
    }
}

#[tokio::test]
async fn status_retries_go_to_another_server_only_for_idempotent_requests() {
    let unavailable = server_with(|_| Reply::status(503)).await;
    let good = servers(1).await;
    // Round robin with equal weights starts on the first server.
    let extra = "outlier = { consecutive_failures = 0 }\nbreaker = { enabled = false }";
    let gw = start(&config(&[(unavailable.addr, 1), (good[0].addr, 1)], extra)).await;
    let c = client();
    // PUT with a small body: replayed to the other server.
    for _ in 0..4 {
        let got = send(&c, &gw, "PUT", "/p/1", &[], "{\"name\":\"x\"}").await;
        assert_eq!(got.status, 200);
        assert_eq!(got.header("x-served-by"), Some(&*good[0].addr.to_string()));
        assert_eq!(got.header("x-echo-body-len"), Some("12"));
    }
    // A POST that reached a server is not retried...
    let mut saw_503 = false;
    for _ in 0..4 {
        let got = send(&c, &gw, "POST", "/p", &[], "{}").await;
        saw_503 |=
            got.status == 503 && got.header("x-served-by") == Some(&*unavailable.addr.to_string());
    }
    assert!(saw_503, "POST must not be retried once sent");
    // ...unless it carries an Idempotency-Key.
    for _ in 0..4 {
        let got = send(&c, &gw, "POST", "/p", &[("idempotency-key", "k1")], "{}").await;
        assert_eq!(got.status, 200);
    }
}

#[tokio::test]
async fn retry_budget_caps_retries_when_every_server_fails() {
    let hits = Arc::new(AtomicU64::new(0));
    let mut s = Vec::new();
    for _ in 0..3 {
        let h = hits.clone();
        s.push(
            server_with(move |_| {
                h.fetch_add(1, Ordering::Relaxed);
                Reply::status(503)
            })
            .await,
        );
    }
    let extra = "retry = { attempts = 3, budget_percent = 20, budget_min = 3, backoff_base = \"1ms\" }\noutlier = { consecutive_failures = 0 }\nbreaker = { enabled = false }";
    let gw = start(&config(
        &[(s[0].addr, 1), (s[1].addr, 1), (s[2].addr, 1)],
        extra,
    ))
    .await;
    let c = client();
    for _ in 0..200 {
        assert_eq!(get(&c, &gw, "/").await.status, 503);
    }
    let total = hits.load(Ordering::Relaxed);
    // Without a budget: 600 upstream requests. With it: 200 + at most 20%.
    assert!(total >= 200 + 3, "retries happened at all: {total}");
    assert!(
        total <= 200 + 40 + 3,
        "retries multiplied the outage: {total} upstream requests for 200 client requests"
    );
}

#[tokio::test]
async fn large_bodies_are_not_replayed_once_sent() {
    let unavailable = server_with(|_| Reply::status(503)).await;
    let good = servers(1).await;
    let extra = "retry = { buffer_body = \"1KiB\" }\noutlier = { consecutive_failures = 0 }\nbreaker = { enabled = false }";
    let gw = start(&config(&[(unavailable.addr, 1), (good[0].addr, 1)], extra)).await;
    let c = client();
    let big = "x".repeat(4096);
    let small = "y".repeat(100);
    let mut big_503 = 0;
    for _ in 0..4 {
        let got = send(&c, &gw, "PUT", "/", &[], &big).await;
        if got.status == 503 {
            big_503 += 1;
        } else {
            assert_eq!(got.header("x-echo-body-len"), Some("4096"));
        }
        let got = send(&c, &gw, "PUT", "/", &[], &small).await;
        assert_eq!(got.status, 200, "small bodies are replayed");
    }
    assert!(big_503 > 0, "a 4 KiB body (> buffer_body) was replayed");
}

#[tokio::test]
async fn timeouts_are_retried_elsewhere_and_the_request_deadline_holds() {
    let slow = server_with(|_| Reply::ok("late").delayed(std::time::Duration::from_secs(3))).await;
    let fast = servers(1).await;
    let extra = "timeouts = { response = \"200ms\" }\noutlier = { consecutive_failures = 0 }\nbreaker = { enabled = false }";
    let gw = start(&config(&[(slow.addr, 1), (fast[0].addr, 1)], extra)).await;
    let c = client();
    for _ in 0..4 {
        let got = get(&c, &gw, "/").await;
        assert_eq!(got.status, 200);
        assert_eq!(got.header("x-served-by"), Some(&*fast[0].addr.to_string()));
    }
    // Every server slow: the overall deadline ends the request, retries included.
    let slow2 = server_with(|_| Reply::ok("late").delayed(std::time::Duration::from_secs(3))).await;
    let extra = "timeouts = { response = \"250ms\", request = \"400ms\" }\nretry = { attempts = 5, backoff_base = \"1ms\" }\noutlier = { consecutive_failures = 0 }\nbreaker = { enabled = false }";
    let gw = start(&config(&[(slow.addr, 1), (slow2.addr, 1)], extra)).await;
    let t = std::time::Instant::now();
    let got = get(&c, &gw, "/").await;
    assert_eq!(got.status, 504);
    assert!(
        t.elapsed() < std::time::Duration::from_millis(1500),
        "deadline not enforced: {:?}",
        t.elapsed()
    );
    assert!(
        got.text().contains("deadline") || got.text().contains("timed out"),
        "{}",
        got.text()
    );
}

#[tokio::test]
async fn per_try_timeout_sends_a_stuck_request_elsewhere_long_before_the_response_timeout() {
    let stuck =
        server_with(|_| Reply::ok("late").delayed(std::time::Duration::from_secs(20))).await;
    let fast = servers(1).await;
    // timeouts.response stays at its default, 30 s.
    let extra = "retry = { per_try_timeout = \"200ms\" }\noutlier = { consecutive_failures = 0 }\nbreaker = { enabled = false }";
    let gw = start(&config(&[(stuck.addr, 1), (fast[0].addr, 1)], extra)).await;
    let c = client();
    for _ in 0..4 {
        let t = std::time::Instant::now();
        let got = get(&c, &gw, "/").await;
        assert_eq!(got.status, 200);
        assert_eq!(got.header("x-served-by"), Some(&*fast[0].addr.to_string()));
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            t.elapsed()
        );
    }
    assert!(stuck.hits() >= 1, "the stuck server was never tried");
}

/// Sends `method /` (in a task) until one reaches `target`, which keeps it;
/// the others are answered at once by another server and must succeed.
async fn until_one_reaches(
    c: &centinela_testkit::HttpClient,
    gw: &centinela_gateway::Gateway,
    target: &centinela_testkit::TestServer,
    method: &'static str,
) -> tokio::task::JoinHandle<(centinela_testkit::Got, std::time::Duration)> {
    let url = url(gw, "/");
    for _ in 0..10 {
        let before = target.hits();
        let (c2, url) = (c.clone(), url.clone());
        let task = tokio::spawn(async move {
            let t = std::time::Instant::now();
            let req = hyper::Request::builder()
                .method(method)
                .uri(url)
                .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
                .unwrap();
            let got = centinela_testkit::send(&c2, req).await.expect("request");
            (got, t.elapsed())
        });
        let reached = centinela_testkit::eventually(std::time::Duration::from_secs(5), || async {
            task.is_finished() || target.hits() > before
        })
        .await;
        assert!(reached, "{method} neither answered nor received");
        if target.hits() > before {
            return task;
        }
        assert_eq!(task.await.unwrap().0.status, 200);
    }
    panic!("no {method} reached {}", target.addr);
}

#[tokio::test]
async fn requests_waiting_on_a_server_marked_down_end_at_once() {
    let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f2 = frozen.clone();
    // Once frozen it answers nothing, health checks included.
    let freezing = server_with(move |_| {
        if f2.load(Ordering::Relaxed) {
            Reply::ok("late").delayed(std::time::Duration::from_secs(60))
        } else {
            Reply::ok("ok")
        }
    })
    .await;
    let good = servers(1).await;
    let extra = "health = { path = \"/health\", interval = \"100ms\", timeout = \"200ms\", rise = 1, fall = 2 }\noutlier = { consecutive_failures = 0 }\nbreaker = { enabled = false }";
    let gw = start(&config(&[(freezing.addr, 1), (good[0].addr, 1)], extra)).await;
    let c = client();
    assert_eq!(get(&c, &gw, "/").await.status, 200);
    frozen.store(true, Ordering::Relaxed);
    // One GET and one POST wait on the frozen server (the response
    // timeout is the default 30 s); it fails two health checks.
    let get = until_one_reaches(&c, &gw, &freezing, "GET").await;
    let post = until_one_reaches(&c, &gw, &freezing, "POST").await;
    let (got, took) = get.await.unwrap();
    assert_eq!(got.status, 200, "the GET is retried on the good server");
    assert_eq!(got.header("x-served-by"), Some(&*good[0].addr.to_string()));
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    let (got, took) = post.await.unwrap();
    assert_eq!(got.status, 502, "a POST is not replayed: {}", got.text());
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    let state = upstream_state(&c, &gw).await;
    assert_eq!(server_state(&state, freezing.addr)["healthy"], false);
}
