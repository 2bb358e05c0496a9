//! TLS termination (issue #12 §1), with a CA made by the test: HTTP/1.1
//! and HTTP/2 (ALPN) over TLS, HSTS and X-Forwarded-Proto, SNI, the
//! minimum version, redirect_https, certificate reloads under load, what
//! sslscan sees, TLS to upstreams with a client certificate, and what
//! `check` says about certificates.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use centinela_gateway::Gateway;
use centinela_testkit::tls::{Https, TestCa};
use centinela_testkit::{eventually, Reply, TempDir, TestServer};

use crate::util::{check, metric, start};

fn tls_config(
    backend: SocketAddr,
    tls: &str,
    listener_extra: &str,
    upstream_extra: &str,
) -> String {
    format!(
        r#"[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "web"
listen = "127.0.0.1:0"
tls = {tls}
{listener_extra}

[[route]]
upstream = "app"

[upstream.app]
servers = ["{backend}"]
{upstream_extra}

[runtime]
access_log = false
"#
    )
}

fn pair(leaf: &centinela_testkit::tls::Leaf) -> String {
    format!(
        "{{ cert = \"{}\", key = \"{}\" }}",
        leaf.cert_pem.display(),
        leaf.key_pem.display()
    )
}

fn web(gw: &Gateway) -> SocketAddr {
    gw.listener_addr("web").expect("web listener")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_http1_and_h2_with_hsts_and_forwarded_proto() {
    let dir = TempDir::new("https-basic");
    let ca = TestCa::new(&dir.0, "ca");
    let leaf = ca.leaf(&dir.0, "web", &["localhost", "127.0.0.1"], 90);
    let backend = TestServer::ok().await;
    let gw = start(&tls_config(backend.addr, &pair(&leaf), "", "")).await;

    for (alpn, want) in [
        (&["h2", "http/1.1"][..], Some(&b"h2"[..])),
        (&["http/1.1"][..], Some(&b"http/1.1"[..])),
        (&[][..], None),
    ] {
        let got = Https::new(&ca.pem, alpn)
            .get(web(&gw), "localhost", "/hello?x=1")
            .await
            .unwrap_or_else(|e| panic!("ALPN {alpn:?}: {e}"));
        assert_eq!(got.alpn.as_deref(), want, "ALPN {alpn:?}");
        let g = &got.got;
        assert_eq!(g.status, 200, "ALPN {alpn:?}");
        assert_eq!(got.cert, leaf.der().to_vec());
        assert_eq!(
            g.header("strict-transport-security"),
            Some("max-age=31536000")
        );
        assert_eq!(g.header("x-echo-x-forwarded-proto"), Some("https"));
        assert_eq!(g.header("x-echo-path"), Some("/hello?x=1"));
    }
    // Sessions resume (TLS 1.3 tickets; TLS 1.2 tickets or session ids):
    // a client's second connection skips the full handshake.
    for client in [Https::new(&ca.pem, &["h2"]), Https::tls12_only(&ca.pem)] {
        let first = client.get(web(&gw), "localhost", "/").await.unwrap();
        let second = client.get(web(&gw), "localhost", "/").await.unwrap();
        assert!(!first.resumed && second.resumed, "{}", first.version);
        assert_eq!(second.got.status, 200);
    }
    // By IP address too (the certificate names 127.0.0.1).
    let got = Https::new(&ca.pem, &["http/1.1"])
        .get(web(&gw), "127.0.0.1", "/")
        .await
        .expect("by IP");
    assert_eq!(got.got.status, 200);

    // Plain HTTP to the TLS port is no request: the handshake fails and
    // is counted.
    let plain = centinela_testkit::get(
        &centinela_testkit::client(),
        &format!("http://{}/", web(&gw)),
    )
    .await;
    assert!(plain.is_err(), "{plain:?}");
    let m = crate::util::gateway_metrics(&gw).await;
    assert!(
        metric(&m, "centinela_tls_handshakes_total{listener=\"web\"}").unwrap_or(0) >= 4,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "centinela_tls_handshake_failures_total{listener=\"web\"}"
        )
        .unwrap_or(0)
            >= 1,
        "{m}"
    );
    gw.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_hsts_is_configurable() {
    let dir = TempDir::new("https-sni");
    let ca = TestCa::new(&dir.0, "ca");
    let a = ca.leaf(&dir.0, "a", &["a.test"], 90);
    let b = ca.leaf(&dir.0, "b", &["*.b.test", "b.test"], 90);
    let backend = TestServer::ok().await;
    let tls = format!("{{ certs = [{}, {}] }}", pair(&a), pair(&b));
    let gw = start(&tls_config(
        backend.addr,
        &tls,
        "hsts = \"max-age=63072000; includeSubDomains\"",
        "",
    ))
    .await;
    let client = Https::new(&ca.pem, &["http/1.1"]);
    for (name, want) in [("a.test", &a), ("b.test", &b), ("api.b.test", &b)] {
        let got = client.get(web(&gw), name, "/").await.expect(name);
        assert_eq!(got.cert, want.der().to_vec(), "{name}");
        assert_eq!(
            got.got.header("strict-transport-security"),
            Some("max-age=63072000; includeSubDomains")
        );
    }
    // A name no certificate covers gets the first, which the client refuses.
    let e = client
        .get(web(&gw), "c.test", "/")
        .await
        .err()
        .expect("refused");
    assert!(
        e.contains("NotValidForName") || e.contains("certificate"),
        "{e}"
    );
    gw.shutdown(Duration::from_secs(2)).await;

    // hsts = false: no header.
    let gw = start(&tls_config(backend.addr, &pair(&a), "hsts = false", "")).await;
    let got = client.get(web(&gw), "a.test", "/").await.expect("a.test");
    assert_eq!(got.got.header("strict-transport-security"), None);
    gw.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_version_decides_whether_tls_1_2_is_offered() {
    let dir = TempDir::new("https-version");
    let ca = TestCa::new(&dir.0, "ca");
    let leaf = ca.leaf(&dir.0, "web", &["localhost"], 90);
    let backend = TestServer::ok().await;
    let gw = start(&tls_config(backend.addr, &pair(&leaf), "", "")).await;
    let tls12 = Https::tls12_only(&ca.pem);
    let got = tls12
        .get(web(&gw), "localhost", "/")
        .await
        .expect("TLS 1.2");
    assert_eq!(got.version, "Some(TLSv1_2)");
    let got = Https::new(&ca.pem, &[])
        .get(web(&gw), "localhost", "/")
        .await
        .unwrap();
    assert_eq!(got.version, "Some(TLSv1_3)");
    gw.shutdown(Duration::from_secs(2)).await;

    let only13 = format!(
        "{{ cert = \"{}\", key = \"{}\", min_version = \"1.3\" }}",
        leaf.cert_pem.display(),
        leaf.key_pem.display()
    );
    let gw = start(&tls_config(backend.addr, &only13, "", "")).await;
    assert!(tls12.get(web(&gw), "localhost", "/").await.is_err());
    assert!(Https::new(&ca.pem, &[])
        .get(web(&gw), "localhost", "/")
        .await
        .is_ok());
    gw.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_https_sends_308_except_acme_challenges() {
    let dir = TempDir::new("https-redirect");
    let ca = TestCa::new(&dir.0, "ca");
    let leaf = ca.leaf(&dir.0, "web", &["localhost"], 90);
    let backend = TestServer::ok().await;
    let cfg = format!(
        r#"[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "web"
listen = "127.0.0.1:0"
redirect_https = true

[[listener]]
name = "secure"
listen = "127.0.0.1:0"
tls = {}

[[route]]
upstream = "app"

[upstream.app]
servers = ["{}"]

[runtime]
access_log = false
"#,
        pair(&leaf),
        backend.addr
    );
    let gw = start(&cfg).await;
    let secure = gw.listener_addr("secure").unwrap().port();
    let c = centinela_testkit::client();
    let req = |gw: &Gateway, path: &str, host: &str| {
        hyper::Request::post(format!("http://{}{path}", web(gw)))
            .header("host", host)
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"x")))
            .unwrap()
    };
    let got = centinela_testkit::send(&c, req(&gw, "/a/b?q=1", "Shop.Example:80"))
        .await
        .unwrap();
    assert_eq!(got.status, 308);
    assert_eq!(
        got.header("location"),
        Some(format!("https://shop.example:{secure}/a/b?q=1").as_str())
    );
    assert_eq!(backend.hits(), 0);
    let got = centinela_testkit::send(
        &c,
        req(&gw, "/.well-known/acme-challenge/tok", "shop.example"),
    )
    .await
    .unwrap();
    assert_eq!(got.status, 200, "ACME challenges are routed");
    assert_eq!(backend.hits(), 1);
    // The redirect target answers.
    let got = Https::new(&ca.pem, &["http/1.1"])
        .get(gw.listener_addr("secure").unwrap(), "localhost", "/a/b?q=1")
        .await
        .unwrap();
    assert_eq!(got.got.status, 200);
    gw.shutdown(Duration::from_secs(2)).await;

    // With https_port, the URL names it (443 is left out).
    let gw = start(&cfg.replace(
        "redirect_https = true",
        "redirect_https = true\nhttps_port = 443",
    ))
    .await;
    let got = centinela_testkit::send(&c, req(&gw, "/x", "shop.example"))
        .await
        .unwrap();
    assert_eq!(got.header("location"), Some("https://shop.example/x"));
    gw.shutdown(Duration::from_secs(2)).await;
}

/// Swaps `to`'s files for `from`'s as a deploy tool would: each written
/// aside, then renamed over (the key first).
fn replace(from: &centinela_testkit::tls::Leaf, to: &centinela_testkit::tls::Leaf) {
    for (src, dst) in [(&from.key_pem, &to.key_pem), (&from.cert_pem, &to.cert_pem)] {
        let tmp = dst.with_extension("tmp");
        std::fs::copy(src, &tmp).unwrap();
        std::fs::rename(&tmp, dst).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_when_their_files_change_and_under_load_nothing_fails() {
    let dir = TempDir::new("https-reload");
    let ca = TestCa::new(&dir.0, "ca");
    let live = ca.leaf(&dir.0, "live", &["localhost"], 90);
    let renewed = ca.leaf(&dir.0, "renewed", &["localhost"], 180);
    let backend = TestServer::ok().await;
    let gw = Arc::new(start(&tls_config(backend.addr, &pair(&live), "", "")).await);
    let addr = web(&gw);

    // Load: 4 clients, each request on a new connection (a new handshake),
    // for at most 60 s or until stopped.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        let client = Https::new(&ca.pem, &["h2", "http/1.1"]);
        tasks.push(tokio::spawn(async move {
            let until = tokio::time::Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < until {
                match client.get(addr, "localhost", "/").await {
                    Ok(g) if g.got.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(g) => {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("status {}", g.got.status));
                        0
                    }
                    Err(e) => {
                        failures.lock().unwrap().push(e);
                        0
                    }
                };
            }
        }));
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            ok.load(Ordering::Relaxed) > 20
        })
        .await
    );

    // The renewed certificate is served once its files are in place.
    let original = live.der().to_vec();
    replace(&renewed, &live);
    // Without resumption: a resumed session shows the certificate of the
    // session it resumes.
    let probe = Https::new(&ca.pem, &["http/1.1"]).without_resumption();
    assert!(
        eventually(Duration::from_secs(15), || async {
            probe
                .get(addr, "localhost", "/")
                .await
                .is_ok_and(|g| g.cert == renewed.der().to_vec())
        })
        .await,
        "the renewed certificate is served"
    );
    let before = ok.load(Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(10), || async {
            ok.load(Ordering::Relaxed) > before + 20
        })
        .await
    );

    // A broken renewal (a key of another certificate) keeps what is served.
    let other = ca.leaf(&dir.0, "other", &["localhost"], 90);
    std::fs::copy(&other.key_pem, &live.key_pem).unwrap();
    assert!(
        eventually(Duration::from_secs(15), || async {
            metric(
                &crate::util::gateway_metrics(&gw).await,
                "centinela_tls_certificate_reloads_total{listener=\"web\",result=\"error\"}",
            )
            .unwrap_or(0)
                >= 1
        })
        .await,
        "the bad key is noticed"
    );
    let got = probe
        .get(addr, "localhost", "/")
        .await
        .expect("still served");
    assert_eq!(got.cert, renewed.der().to_vec());
    assert_ne!(got.cert, original);

    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(ok.load(Ordering::Relaxed) > 40);

    // A reload (SIGHUP's path) that names new files switches to them at once.
    let third = ca.leaf(&dir.0, "third", &["localhost"], 90);
    let cfg = centinela_config::parse(&tls_config(backend.addr, &pair(&third), "", ""), "t.toml")
        .unwrap()
        .config;
    gw.reload(cfg).await.unwrap();
    let got = probe.get(addr, "localhost", "/").await.unwrap();
    assert_eq!(got.cert, third.der().to_vec());
    gw.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslscan_finds_no_old_protocol_and_no_weak_cipher() {
    let dir = TempDir::new("https-sslscan");
    let ca = TestCa::new(&dir.0, "ca");
    let leaf = ca.leaf(&dir.0, "web", &["localhost", "127.0.0.1"], 90);
    let backend = TestServer::ok().await;
    let gw = start(&tls_config(backend.addr, &pair(&leaf), "", "")).await;
    let out = tokio::process::Command::new("sslscan")
        .args(["--no-colour", &web(&gw).to_string()])
        .output()
        .await
        .expect("sslscan is installed by scripts/test.sh");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = |proto: &str| {
        text.lines()
            .find(|l| {
                l.trim_start().starts_with(proto)
                    && (l.contains("enabled") || l.contains("disabled"))
            })
            .unwrap_or_else(|| panic!("no {proto} line in:\n{text}"))
            .to_string()
    };
    for old in ["SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1"] {
        assert!(line(old).contains("disabled"), "{old}: {text}");
    }
    for new in ["TLSv1.2", "TLSv1.3"] {
        assert!(line(new).contains("enabled"), "{new}: {text}");
    }
    let accepted: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("Preferred") || l.starts_with("Accepted"))
        .collect();
    assert!(accepted.len() >= 3, "{text}");
    for l in &accepted {
        let strong = (l.contains("GCM") || l.contains("CHACHA20"))
            && ["RC4", "DES", "NULL", "EXP", "ADH", "AECDH", "MD5", "CBC"]
                .iter()
                .all(|weak| !l.contains(weak));
        let bits: u32 = l
            .split_whitespace()
            .nth(2)
            .and_then(|b| b.parse().ok())
            .unwrap_or(0);
        assert!(strong && bits >= 128, "weak cipher: {l}");
    }
    gw.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_verifies_the_server_and_presents_a_client_certificate() {
    let dir = TempDir::new("https-upstream");
    let server_ca = TestCa::new(&dir.0, "server-ca");
    let client_ca = TestCa::new(&dir.0, "client-ca");
    let other_ca = TestCa::new(&dir.0, "other-ca");
    let server_leaf = server_ca.leaf(&dir.0, "upstream", &["upstream.test"], 90);
    let client_leaf = client_ca.leaf(&dir.0, "gateway", &["gateway.test"], 90);
    let upstream = TestServer::start_tls(
        Arc::new(|_| Reply::ok("over mTLS")),
        server_leaf.acceptor_requiring_client(&client_ca),
    )
    .await;
    let base = |tls: &str| {
        crate::util::config(
            &[(upstream.addr, 1)],
            &format!(
                "tls = {tls}\n[upstream.app.health]\npath = \"/\"\ninterval = \"200ms\"\ntimeout = \"1s\"\nrise = 1\nfall = 1\n"
            ),
        )
    };
    let c = centinela_testkit::client();

    let good = format!(
        "{{ ca = \"{}\", server_name = \"upstream.test\", client_cert = \"{}\", client_key = \"{}\" }}",
        server_ca.pem.display(),
        client_leaf.cert_pem.display(),
        client_leaf.key_pem.display()
    );
    let gw = start(&base(&good)).await;
    for _ in 0..5 {
        let got = crate::util::get(&c, &gw, "/x").await;
        assert_eq!((got.status, got.text().as_str()), (200, "over mTLS"));
    }
    // Health checks speak TLS too: after three of them (each a request the
    // server counts), the server is still up.
    assert!(
        eventually(Duration::from_secs(10), || async { upstream.hits() >= 8 }).await,
        "health checks reached the server"
    );
    let state = crate::util::upstream_state(&c, &gw).await;
    let s = crate::util::server_state(&state, upstream.addr);
    assert_eq!(s["healthy"], true, "{state}");
    // Connections are kept alive: far fewer than requests.
    assert!(upstream.conns.load(Ordering::Relaxed) < 10);
    gw.shutdown(Duration::from_secs(2)).await;

    // No client certificate: the server refuses, the client gets 502.
    let no_client = format!(
        "{{ ca = \"{}\", server_name = \"upstream.test\" }}",
        server_ca.pem.display()
    );
    let gw = start(&crate::util::config(
        &[(upstream.addr, 1)],
        &format!("tls = {no_client}"),
    ))
    .await;
    let got = crate::util::get(&c, &gw, "/x").await;
    assert_eq!(got.status, 502);
    gw.shutdown(Duration::from_secs(2)).await;

    // A server whose certificate the CA did not sign: 502, never sent.
    let hits = upstream.hits();
    let wrong_ca = format!(
        "{{ ca = \"{}\", server_name = \"upstream.test\", client_cert = \"{}\", client_key = \"{}\" }}",
        other_ca.pem.display(),
        client_leaf.cert_pem.display(),
        client_leaf.key_pem.display()
    );
    let cfg = crate::util::config(&[(upstream.addr, 1)], &format!("tls = {wrong_ca}"));
    let gw = start(&cfg).await;
    let got = crate::util::get(&c, &gw, "/x").await;
    assert_eq!(got.status, 502);
    assert_eq!(upstream.hits(), hits);
    gw.shutdown(Duration::from_secs(2)).await;

    // insecure_skip_verify accepts it.
    let insecure = format!(
        "{{ insecure_skip_verify = true, client_cert = \"{}\", client_key = \"{}\" }}",
        client_leaf.cert_pem.display(),
        client_leaf.key_pem.display()
    );
    let cfg = crate::util::config(&[(upstream.addr, 1)], &format!("tls = {insecure}"));
    let gw = start(&cfg).await;
    let got = crate::util::get(&c, &gw, "/x").await;
    assert_eq!(got.status, 200);
    gw.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_mismatched_keys_and_warns_of_expiry_open_keys_and_skipped_verification() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("https-check");
    let ca = TestCa::new(&dir.0, "ca");
    let soon = ca.leaf(&dir.0, "soon", &["localhost"], 5);
    let other = ca.leaf(&dir.0, "other", &["localhost"], 90);
    for l in [&soon, &other] {
        std::fs::set_permissions(&l.key_pem, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let cfg = dir.path("c.toml");
    let write = |tls: &str, upstream_extra: &str| {
        std::fs::write(
            &cfg,
            tls_config("127.0.0.1:9".parse().unwrap(), tls, "", upstream_extra),
        )
        .unwrap();
    };

    // A key of another certificate: an error at its line, naming both files.
    write(
        &format!(
            "{{ cert = \"{}\", key = \"{}\" }}",
            soon.cert_pem.display(),
            other.key_pem.display()
        ),
        "",
    );
    let (code, text) = check(&cfg);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("c.toml:7:"), "{text}");
    assert!(
        text.contains("other.key does not match the certificate in"),
        "{text}"
    );
    assert!(text.contains("soon.crt"), "{text}");

    // Expiring soon, a key others can read, an upstream not verified:
    // warnings, and the config is valid.
    std::fs::set_permissions(&soon.key_pem, std::fs::Permissions::from_mode(0o644)).unwrap();
    write(&pair(&soon), "tls = { insecure_skip_verify = true }");
    let (code, text) = check(&cfg);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("expires in 4 days") || text.contains("expires in 5 days"),
        "{text}"
    );
    assert!(text.contains("readable by its group or others"), "{text}");
    assert!(text.contains("certificates are not verified"), "{text}");

    // Files that are not what they should be.
    write(
        &format!(
            "{{ cert = \"{}\", key = \"{}\" }}",
            soon.key_pem.display(),
            soon.key_pem.display()
        ),
        "",
    );
    let (code, text) = check(&cfg);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("no PEM certificate"), "{text}");
    write("{ key = \"x\" }", "");
    let (code, text) = check(&cfg);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("key needs cert"), "{text}");
    // No secret in any of it.
    let key = std::fs::read_to_string(&soon.key_pem).unwrap();
    let body = key.lines().nth(1).unwrap();
    assert!(!text.contains(body));
}
