use std::collections::HashMap;
use std::time::Duration;

use centinela_testkit::{client, Reply};

use crate::util::*;

async fn count_by_server(
    gw: &centinela_gateway::Gateway,
    n: usize,
    concurrency: usize,
) -> HashMap<String, usize> {
    let c = client();
    let u = url(gw, "/");
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (c, u) = (c.clone(), u.clone());
        let share = n / concurrency + usize::from(w < n % concurrency);
        tasks.push(tokio::spawn(async move {
            let mut m: HashMap<String, usize> = HashMap::new();
            for _ in 0..share {
                let got = centinela_testkit::get(&c, &u).await.unwrap();
                assert_eq!(got.status, 200);
                *m.entry(got.header("x-served-by").unwrap().to_string())
                    .or_default() += 1;
            }
            m
        }));
    }
    let mut total: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *total.entry(k).or_default() += v;
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_3_2_1_over_6000_requests_within_5_percent() {
    // Smooth weighted round robin is exact: ±5% is the contract. Weighted
    // random is statistical: ±15% is about 5 standard deviations for the
    // smallest share at 6,000 draws, so the test cannot flake.
    for (policy, tolerance) in [("round_robin", 0.05), ("random", 0.15)] {
        let s = servers(3).await;
        let gw = start(&config(
            &[(s[0].addr, 3), (s[1].addr, 2), (s[2].addr, 1)],
            &format!("balance = \"{policy}\""),
        ))
        .await;
        let counts = count_by_server(&gw, 6000, 4).await;
        for (srv, want) in [(&s[0], 3000.0), (&s[1], 2000.0), (&s[2], 1000.0)] {
            let got = counts.get(&srv.addr.to_string()).copied().unwrap_or(0) as f64;
            assert!(
                (got - want).abs() <= want * tolerance,
                "{policy}: {} got {got}, want {want} ±{tolerance} ({counts:?})",
                srv.addr
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_and_p2c_avoid_a_slow_server() {
    for policy in ["least_conn", "p2c"] {
        let mut s = servers(2).await;
        let slow = server_with(|_| Reply::ok("slow").delayed(Duration::from_millis(200))).await;
        s.push(slow);
        let gw = start(&config(
            &[(s[0].addr, 1), (s[1].addr, 1), (s[2].addr, 1)],
            &format!("balance = \"{policy}\""),
        ))
        .await;
        let counts = count_by_server(&gw, 600, 6).await;
        let slow_share = counts.get(&s[2].addr.to_string()).copied().unwrap_or(0) as f64 / 600.0;
        // A fair share would be 33%.
        assert!(
            slow_share < 0.10,
            "{policy}: slow server got {:.1}% ({counts:?})",
            slow_share * 100.0
        );
    }
}

#[tokio::test]
async fn hash_keeps_keys_and_moves_about_one_nth_when_a_server_leaves() {
    let s = servers(4).await;
    let all: Vec<_> = s.iter().map(|x| (x.addr, 1)).collect();
    let extra = "balance = \"hash\"\nhash_key = \"header:x-user-id\"";
    let gw = start(&config(&all, extra)).await;
    let c = client();
    let mut owner = HashMap::new();
    for user in 0..400 {
        let id = format!("user-{user}");
        let a = send(&c, &gw, "GET", "/", &[("x-user-id", &id)], "").await;
        let b = send(&c, &gw, "GET", "/", &[("x-user-id", &id)], "").await;
        let (a, b) = (
            a.header("x-served-by").unwrap().to_string(),
            b.header("x-served-by").unwrap().to_string(),
        );
        assert_eq!(a, b, "key {id} moved between two requests");
        owner.insert(id, a);
    }
    // Every server owns some keys.
    for srv in &s {
        assert!(owner.values().any(|o| *o == srv.addr.to_string()));
    }
    // Remove server 3 by reload.
    let removed = s[3].addr.to_string();
    let cfg = centinela_config::parse(&config(&all[..3], extra), "t.toml")
        .unwrap()
        .config;
    let mut cfg = cfg;
    cfg.listeners = gw.config().listeners.clone();
    gw.reload(cfg).await.unwrap();
    let mut moved = 0;
    for (id, before) in &owner {
        let now = send(&c, &gw, "GET", "/", &[("x-user-id", id)], "")
            .await
            .header("x-served-by")
            .unwrap()
            .to_string();
        if &now != before {
            assert_eq!(before, &removed, "{id} moved although its server stayed");
            moved += 1;
        }
    }
    let frac = moved as f64 / owner.len() as f64;
    assert!(
        (0.12..=0.40).contains(&frac),
        "moved {:.1}% of keys, expected about 25%",
        frac * 100.0
    );
}
