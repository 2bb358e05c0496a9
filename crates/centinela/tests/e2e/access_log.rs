//! The access log never holds a request: with its output stuck (a pipe
//! nobody reads), requests go on being answered and the lines that do not
//! fit are dropped and counted.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use centinela_testkit::{bin, client, field, TempDir, TestServer};

/// Kills the child when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_log_output_drops_access_lines_and_holds_no_request() {
    let backend = TestServer::ok().await;
    let dir = TempDir::new("access-stuck");
    let cfg = dir.path("centinela.toml");
    std::fs::write(
        &cfg,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [\"{}\"]\n[runtime]\nworker_threads = 1\naccess_log = true\n",
            backend.addr
        ),
    )
    .unwrap();
    let mut child = Command::new(bin("centinela"))
        .args(["run", "--config", cfg.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let _child = Killed(child);
    // Read until started, then never again: the pipe (64 KiB) fills.
    let (stderr, admin, web) = tokio::task::spawn_blocking(move || {
        let mut r = std::io::BufReader::new(stderr);
        let (mut admin, mut web) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut line = String::new();
        while Instant::now() < deadline {
            line.clear();
            if r.read_line(&mut line).unwrap() == 0 {
                panic!("centinela exited");
            }
            if line.contains("Admin API listening") {
                admin = field(&line, "addr").map(str::to_string);
            }
            if line.contains("Listening listener=web") {
                web = field(&line, "addr").map(str::to_string);
            }
            if line.contains("centinela started") {
                break;
            }
        }
        (r, admin.expect("admin address"), web.expect("web address"))
    })
    .await
    .unwrap();

    // 10,000 requests: about 5,000 lines fit (the pipe, the buffer being
    // written, 1 MiB waiting); the rest are dropped, and every request is
    // answered all the same.
    let c = client();
    let ok = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let started = Instant::now();
    for _ in 0..16 {
        let (c, ok, url) = (c.clone(), ok.clone(), format!("http://{web}/"));
        tasks.push(tokio::spawn(async move {
            for _ in 0..625 {
                let got =
                    tokio::time::timeout(Duration::from_secs(5), centinela_testkit::get(&c, &url))
                        .await
                        .expect("a request waited 5 s: the log held it")
                        .unwrap();
                assert_eq!(got.status, 200);
                ok.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(ok.load(Ordering::Relaxed), 10_000);
    assert!(started.elapsed() < Duration::from_secs(60));
    let m = centinela_testkit::get(&c, &format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text();
    let dropped: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("centinela_access_log_dropped_total "))
        .unwrap_or_else(|| panic!("no dropped counter in\n{m}"))
        .parse()
        .unwrap();
    assert!((1..10_000).contains(&dropped), "dropped {dropped}");
    drop(stderr);
}
