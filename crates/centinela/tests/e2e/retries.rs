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
