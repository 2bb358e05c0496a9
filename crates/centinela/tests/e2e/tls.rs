//! TLS in what centinela watches and sends, with a CA made by the test:
//! HTTPS probes verified against `ca` (and refused with another CA),
//! certificate expiry in metrics, health and the built-in
//! `cert-expiring.NAME` rule, an https:// webhook, and mail over STARTTLS
//! to a real SMTP server.

use std::time::Duration;

use centinela_testkit::tls::TestCa;
use centinela_testkit::{eventually, free_port_range, Proc, Receiver, TempDir, TestServer};
use serde_json::Value;

use crate::alerts::{admin_json, metrics, stop};
use crate::lifecycle::run_gateway;
use crate::util::check;

fn base(backend: std::net::SocketAddr) -> String {
    format!(
        r#"[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "web"
listen = "127.0.0.1:0"

[[route]]
upstream = "app"

[upstream.app]
servers = ["{backend}"]

[runtime]
access_log = false
shutdown_timeout = "2s"
"#
    )
}

/// Alert names in every webhook delivery so far.
fn alert_names(hook: &Receiver) -> Vec<String> {
    hook.received()
        .iter()
        .flat_map(|(_, b)| {
            let v: Value = serde_json::from_str(b).unwrap();
            v["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["labels"]["alertname"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_probes_report_certificate_expiry_and_page_through_an_https_webhook() {
    let dir = TempDir::new("tls-probes");
    let ca = TestCa::new(&dir.0, "ca");
    TestCa::new(&dir.0, "other");
    // One site whose certificate expires in 5 days, one in 90.
    let soon = Receiver::start_tls(
        vec![],
        ca.leaf(&dir.0, "soon", &["127.0.0.1"], 5).acceptor(),
    )
    .await;
    let later = Receiver::start_tls(
        vec![],
        ca.leaf(&dir.0, "later", &["127.0.0.1"], 90).acceptor(),
    )
    .await;
    // The alerts go to an https:// webhook trusted through the same CA.
    let hook = Receiver::start_tls(
        vec![],
        ca.leaf(&dir.0, "hook", &["127.0.0.1"], 30).acceptor(),
    )
    .await;
    let backend = TestServer::ok().await;
    let cfg = dir.path("centinela.toml");
    let extra = format!(
        r#"
[notify.ops]
webhook = "https://{hook}/hook"
ca = "ca.pem"

[alerting]
group_wait = "0s"

[[probe]]
name = "soon"
url = "https://{soon}/health"
interval = "200ms"
ca = "ca.pem"

[[probe]]
name = "later"
url = "https://{later}/health"
interval = "200ms"
ca = "ca.pem"

[[probe]]
name = "untrusted"
url = "https://{soon}/health"
interval = "200ms"
ca = "other.pem"
"#,
        hook = hook.addr,
        soon = soon.addr,
        later = later.addr,
    );
    std::fs::write(&cfg, format!("{}{extra}", base(backend.addr))).unwrap();
    let (code, text) = check(&cfg);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("cert-expiring.soon (ticket): cert_expiry_days of probe \"soon\" below 14"),
        "{text}"
    );

    let r = run_gateway(&cfg).await;
    // The certificate due in 5 days files a ticket through the HTTPS
    // webhook; the one due in 90 does not; the untrusted one fails.
    assert!(
        eventually(Duration::from_secs(15), || async {
            let names = alert_names(&hook);
            names.contains(&"cert-expiring.soon".to_string())
                && names.contains(&"probe-failing.untrusted".to_string())
        })
        .await,
        "{:?}",
        alert_names(&hook)
    );
    let names = alert_names(&hook);
    assert!(
        !names.contains(&"cert-expiring.later".to_string()),
        "{names:?}"
    );
    assert!(
        !names.contains(&"probe-failing.soon".to_string()),
        "{names:?}"
    );
    let ticket = hook
        .received()
        .into_iter()
        .find(|(_, b)| b.contains("cert-expiring.soon"))
        .unwrap()
        .1;
    let v: Value = serde_json::from_str(&ticket).unwrap();
    let alert = v["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["alertname"] == "cert-expiring.soon")
        .unwrap()
        .clone();
    assert_eq!(alert["labels"]["severity"], "ticket");
    assert_eq!(alert["status"], "firing");

    let m = metrics(r.admin).await;
    let expiry = |probe: &str| -> f64 {
        let key = format!("centinela_probe_tls_expiry_seconds{{probe=\"{probe}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .unwrap_or_else(|| panic!("no {key} in\n{m}"))
            .parse()
            .unwrap()
    };
    let day = 86_400.0;
    assert!((4.9 * day..=5.0 * day).contains(&expiry("soon")), "{m}");
    assert!((89.9 * day..=90.0 * day).contains(&expiry("later")), "{m}");
    assert!(
        !m.contains("centinela_probe_tls_expiry_seconds{probe=\"untrusted\"}"),
        "an unverified certificate has no expiry: {m}"
    );
    for want in [
        "centinela_probe_up{probe=\"soon\"} 1",
        "centinela_probe_up{probe=\"later\"} 1",
        "centinela_probe_up{probe=\"untrusted\"} 0",
    ] {
        assert!(m.contains(want), "missing {want} in\n{m}");
    }
    let (_, health) = admin_json(r.admin, "/-/health/detailed").await;
    let probes = health["probes"].as_array().unwrap();
    let find = |n: &str| probes.iter().find(|p| p["name"] == n).unwrap().clone();
    let error = find("untrusted")["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("TLS handshake") && error.contains("certificate"),
        "{error}"
    );
    let secs = find("soon")["tls_expiry_seconds"].as_f64().unwrap();
    assert!((4.9 * day..=5.0 * day).contains(&secs), "{health}");
    assert!(find("soon")["certificate_not_after"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    // The probes asked for their path over TLS.
    assert!(soon.received().iter().any(|(p, _)| p == "/health"));
    stop(r).await;
}

#[tokio::test]
async fn check_names_bad_ca_settings() {
    let dir = TempDir::new("tls-check");
    let cfg = dir.path("centinela.toml");
    std::fs::write(dir.path("junk.pem"), "not a certificate\n").unwrap();
    let backend = "127.0.0.1:1".parse().unwrap();
    let cases = [
        (
            "[[probe]]\nname = \"p\"\nurl = \"http://127.0.0.1:1/\"\nca = \"junk.pem\"\n",
            "holds no PEM certificate",
        ),
        (
            "[[probe]]\nname = \"p\"\nurl = \"https://127.0.0.1:1/\"\nca = \"missing.pem\"\n",
            "cannot read",
        ),
        (
            "[notify.ops]\nwebhook = \"https://127.0.0.1:1/\"\nca = \"junk.pem\"\n",
            "notify.ops.ca",
        ),
    ];
    for (extra, want) in cases {
        std::fs::write(&cfg, format!("{}{extra}", base(backend))).unwrap();
        let (code, text) = check(&cfg);
        assert_eq!(code, Some(2), "{extra}: {text}");
        assert!(text.contains(want), "{extra}: {text}");
        assert!(text.contains("centinela.toml:"), "{extra}: {text}");
    }
    // A CA on a plain http:// probe is a mistake too.
    TestCa::new(&dir.0, "ca");
    let extra = "[[probe]]\nname = \"p\"\nurl = \"http://127.0.0.1:1/\"\nca = \"ca.pem\"\n";
    std::fs::write(&cfg, format!("{}{extra}", base(backend))).unwrap();
    let (code, text) = check(&cfg);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("ca is for https:// probes only"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_goes_over_starttls() {
    let dir = TempDir::new("tls-mail");
    let ca = TestCa::new(&dir.0, "ca");
    let leaf = ca.leaf(&dir.0, "smtp", &["127.0.0.1"], 30);
    let port = free_port_range(1);
    // aiosmtpd with a certificate requires STARTTLS before MAIL.
    let mut smtp = Proc::spawn(
        std::path::Path::new("/usr/bin/python3"),
        &[
            "-u",
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            &format!("127.0.0.1:{port}"),
            "--tlscert",
            leaf.cert_pem.to_str().unwrap(),
            "--tlskey",
            leaf.key_pem.to_str().unwrap(),
        ],
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await,
        "aiosmtpd did not start: {:?}",
        smtp.drain()
    );
    let backend = TestServer::ok().await;
    let cfg = dir.path("centinela.toml");
    let extra = format!(
        r#"
[notify.mail]
email = {{ to = ["ops@example.com"], from = "centinela@example.com", smtp = "127.0.0.1:{port}", starttls = true }}
ca = "ca.pem"

[alerting]
defaults = false
group_wait = "0s"

[[alert]]
name = "app-down"
signal = "server_down"
upstream = "app"
notify = ["mail"]
"#
    );
    let health = format!("servers = [\"{}\"]\n", backend.addr);
    let with_health = base(backend.addr).replace(
        &health,
        &format!("{health}health = {{ path = \"/\", interval = \"200ms\", timeout = \"200ms\", rise = 1, fall = 2 }}\n"),
    );
    std::fs::write(&cfg, format!("{with_health}{extra}")).unwrap();
    let r = run_gateway(&cfg).await;
    backend.stop();
    smtp.wait_line("Subject: [FIRING:1] app-down", Duration::from_secs(15))
        .await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            metrics(r.admin)
                .await
                .contains("centinela_notifications_total{notifier=\"mail\",result=\"success\"} 1")
        })
        .await,
        "{}",
        metrics(r.admin).await
    );
    stop(r).await;
}
