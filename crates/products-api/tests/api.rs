//! products-api as a real process on an ephemeral port.

use bytes::Bytes;
use centinela_testkit::{client, get, send, Got, HttpClient, ProductsApi, TempDir};
use http_body_util::Full;
use hyper::Request;

async fn req(c: &HttpClient, method: &str, url: &str, body: &str) -> Got {
    let r = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .unwrap();
    send(c, r).await.unwrap()
}

fn json(g: &Got) -> serde_json::Value {
    serde_json::from_slice(&g.body).unwrap_or_else(|e| panic!("{e}: {}", g.text()))
}

#[tokio::test]
async fn crud_validation_pagination_and_persistence() {
    let dir = TempDir::new("api");
    let db = dir.path("p.db");
    let api = ProductsApi::spawn(&db, &[]).await;
    let base = format!("http://{}", api.addr);
    let c = client();

    let h = get(&c, &format!("{base}/health")).await.unwrap();
    assert_eq!((h.status, h.text().as_str()), (200, "{\"status\":\"ok\"}"));
    assert_eq!(h.header("x-served-by"), Some(&*api.addr.to_string()));

    let created = req(
        &c,
        "POST",
        &format!("{base}/products"),
        r#"{"name":"Panel","price":199.5,"stock":3}"#,
    )
    .await;
    assert_eq!(created.status, 201);
    let p = json(&created);
    let id = p["id"].as_i64().unwrap();
    assert_eq!(
        created.header("location"),
        Some(&*format!("/products/{id}"))
    );
    assert_eq!(p["name"], "Panel");

    let got = get(&c, &format!("{base}/products/{id}")).await.unwrap();
    assert_eq!(json(&got)["price"], 199.5);

    let put = req(
        &c,
        "PUT",
        &format!("{base}/products/{id}"),
        r#"{"name":"Panel XL","price":250,"stock":0}"#,
    )
    .await;
    assert_eq!(put.status, 200);
    assert_eq!(json(&put)["name"], "Panel XL");
    assert_eq!(
        req(
            &c,
            "PUT",
            &format!("{base}/products/99999"),
            r#"{"name":"a","price":1,"stock":0}"#
        )
        .await
        .status,
        404
    );

    // Validation: one error per field, unknown fields rejected.
    let bad = req(
        &c,
        "POST",
        &format!("{base}/products"),
        &format!(
            r#"{{"name":"{}","price":0,"stock":-1,"colour":"red"}}"#,
            "x".repeat(201)
        ),
    )
    .await;
    assert_eq!(bad.status, 422);
    let fields = &json(&bad)["fields"];
    for f in ["name", "price", "stock", "colour"] {
        assert!(fields.get(f).is_some(), "no error for {f}: {fields}");
    }
    let bad = req(&c, "POST", &format!("{base}/products"), "{not json").await;
    assert_eq!(bad.status, 422);
    assert!(json(&bad)["fields"]["body"]
        .as_str()
        .unwrap()
        .contains("invalid JSON"));
    let bad = req(
        &c,
        "POST",
        &format!("{base}/products"),
        r#"{"price":1,"stock":1}"#,
    )
    .await;
    assert_eq!(json(&bad)["fields"]["name"], "is required");

    // Pagination.
    for i in 0..5 {
        assert_eq!(
            req(
                &c,
                "POST",
                &format!("{base}/products"),
                &format!(r#"{{"name":"p{i}","price":1,"stock":{i}}}"#)
            )
            .await
            .status,
            201
        );
    }
    let page = json(
        &get(&c, &format!("{base}/products?limit=2&offset=1"))
            .await
            .unwrap(),
    );
    assert_eq!(page["total"], 6);
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["items"][0]["name"], "p0");
    assert_eq!(
        get(&c, &format!("{base}/products?limit=0"))
            .await
            .unwrap()
            .status,
        422
    );

    assert_eq!(
        req(&c, "DELETE", &format!("{base}/products/{id}"), "")
            .await
            .status,
        204
    );
    assert_eq!(
        get(&c, &format!("{base}/products/{id}"))
            .await
            .unwrap()
            .status,
        404
    );
    assert_eq!(
        req(&c, "DELETE", &format!("{base}/products/{id}"), "")
            .await
            .status,
        404
    );
    assert_eq!(
        get(&c, &format!("{base}/nothing")).await.unwrap().status,
        404
    );
    assert_eq!(
        req(&c, "PATCH", &format!("{base}/products"), "")
            .await
            .status,
        405
    );

    // Data survives a restart (even a kill -9).
    let mut api = api;
    api.proc.signal(libc::SIGKILL);
    let _ = api.proc.wait_exit(std::time::Duration::from_secs(5)).await;
    let api2 = ProductsApi::spawn(&db, &[]).await;
    let page = json(
        &get(&c, &format!("http://{}/products", api2.addr))
            .await
            .unwrap(),
    );
    assert_eq!(page["total"], 5);
}

#[tokio::test]
async fn fault_knobs_fail_rate_and_latency_spare_health() {
    let dir = TempDir::new("faults");
    let api = ProductsApi::spawn(
        &dir.path("p.db"),
        &["--fail-rate", "1.0", "--latency-ms", "300"],
    )
    .await;
    let base = format!("http://{}", api.addr);
    let c = client();
    let t = std::time::Instant::now();
    let h = get(&c, &format!("{base}/health")).await.unwrap();
    assert_eq!(h.status, 200);
    assert!(
        t.elapsed() < std::time::Duration::from_millis(300),
        "/health must not be delayed"
    );
    let t = std::time::Instant::now();
    let g = get(&c, &format!("{base}/products")).await.unwrap();
    assert_eq!(g.status, 500);
    assert!(t.elapsed() >= std::time::Duration::from_millis(300));
    assert_eq!(g.header("x-served-by"), Some(&*api.addr.to_string()));
}

#[tokio::test]
async fn bad_flags_exit_2_with_a_message() {
    let out = std::process::Command::new(centinela_testkit::bin("products-api"))
        .args(["--listen", "127.0.0.1:0", "--fail-rate", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--fail-rate must be between 0 and 1"));
    let out = std::process::Command::new(centinela_testkit::bin("products-api"))
        .args(["--listen", "not-an-address"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_started_together_on_a_new_database_all_come_up() {
    // A supervisor starts every instance at once; creating the database and
    // switching it to WAL must not make any of them fail.
    for round in 0..10 {
        let dir = TempDir::new(&format!("together{round}"));
        let db = dir.path("p.db");
        let db = db.to_str().unwrap();
        let mut procs: Vec<centinela_testkit::Proc> = (0..16)
            .map(|_| {
                centinela_testkit::Proc::spawn(
                    &centinela_testkit::bin("products-api"),
                    &["--listen", "127.0.0.1:0", "--db", db],
                )
            })
            .collect();
        for p in &mut procs {
            let line = p
                .wait_line("listening on", std::time::Duration::from_secs(10))
                .await;
            assert!(line.contains("127.0.0.1:"), "{line}");
        }
    }
}
