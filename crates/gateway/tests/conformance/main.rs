//! The HTTP/1 conformance suite: a corpus of raw requests (`cases.rs`),
//! each sent through a real gateway on 127.0.0.1 to recording upstreams
//! (`recorder.rs`). Each case asserts what the client was answered, and
//! the exact bytes every upstream received (nothing, for a refusal).
//!
//! The gateway has three upstreams, so that routing shows in which one
//! records a request: `app` (the default route, `/strip` with its prefix
//! stripped, and `/noupgrade`, which allows no upgrade), `internal`
//! (`/internal`) and `admin` (host `admin.internal`). Listener `web`
//! normalizes paths strictly (the default); listener `off` does not.

mod cases;
mod fuzz;
mod recorder;
mod reference;

use std::net::SocketAddr;
use std::time::Duration;

use centinela_gateway::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use cases::Case;

struct Upstreams {
    app: (SocketAddr, recorder::Log),
    internal: (SocketAddr, recorder::Log),
    admin: (SocketAddr, recorder::Log),
}

async fn gateway() -> (Gateway, Upstreams) {
    let ups = Upstreams {
        app: recorder::start().await,
        internal: recorder::start().await,
        admin: recorder::start().await,
    };
    let toml = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "web"
listen = "127.0.0.1:0"
header_timeout = "5s"

[[listener]]
name = "off"
listen = "127.0.0.1:0"
path_normalization = "off"

[[route]]
upstream = "app"

[[route]]
path_prefix = "/internal"
upstream = "internal"

[[route]]
host = "admin.internal"
upstream = "admin"

[[route]]
path_prefix = "/strip"
strip_prefix = true
upstream = "app"

[[route]]
path_prefix = "/noupgrade"
upstream = "app"
upgrade = []

[upstream.app]
servers = [{{ address = "{}" }}]
retry = {{ attempts = 1 }}

[upstream.internal]
servers = [{{ address = "{}" }}]
retry = {{ attempts = 1 }}

[upstream.admin]
servers = [{{ address = "{}" }}]
retry = {{ attempts = 1 }}

[runtime]
access_log = false
"#,
        ups.app.0, ups.internal.0, ups.admin.0
    );
    let cfg = centinela_config::parse(&toml, "conformance.toml")
        .unwrap_or_else(|e| panic!("{e}"))
        .config;
    (Gateway::start(cfg).await.expect("gateway starts"), ups)
}

/// A response as the client read it.
struct Answer {
    status: u16,
    close: bool,
}

/// Reads responses off `s` until `want` came or the connection ended.
/// Returns them, and whether the connection was then closed by the
/// gateway (checked for refusals).
async fn answers(
    s: &mut TcpStream,
    want: usize,
    after: bool,
    head_request: bool,
) -> (Vec<Answer>, Option<bool>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let deadline = Duration::from_secs(5);
    let read = async {
        'outer: while out.len() < want {
            let end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                if fill(s, &mut buf).await == 0 {
                    break 'outer;
                }
            };
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            buf.drain(..end);
            let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
            let header = |n: &str| {
                head.lines().skip(1).find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    (k.trim() == n).then(|| v.trim().to_string())
                })
            };
            let close = header("connection").as_deref() == Some("close");
            out.push(Answer { status, close });
            if status == 101 {
                break;
            }
            if head_request {
                continue;
            }
            if let Some(n) = header("content-length").and_then(|n| n.parse::<usize>().ok()) {
                while buf.len() < n {
                    if fill(s, &mut buf).await == 0 {
                        break 'outer;
                    }
                }
                buf.drain(..n);
            } else if header("transfer-encoding").is_some() {
                // The gateway's answers here are all sized; a chunked one
                // is read to its last chunk.
                while !buf.windows(5).any(|w| w == b"0\r\n\r\n") {
                    if fill(s, &mut buf).await == 0 {
                        break 'outer;
                    }
                }
                buf.clear();
            }
        }
    };
    let _ = tokio::time::timeout(deadline, read).await;
    let closed = if after {
        let mut one = [0u8; 1];
        match tokio::time::timeout(deadline, s.read(&mut one)).await {
            Ok(Ok(0)) | Ok(Err(_)) => Some(true),
            _ => Some(false),
        }
    } else {
        None
    };
    (out, closed)
}

async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    let mut chunk = [0u8; 8192];
    match s.read(&mut chunk).await {
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            n
        }
        Err(_) => 0,
    }
}

/// Reads every response until the gateway closes the connection; their
/// statuses.
async fn read_to_end(s: &mut TcpStream) -> Vec<u16> {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while fill(s, &mut buf).await > 0 {}
    })
    .await;
    let mut statuses = Vec::new();
    let mut rest = &buf[..];
    while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).to_ascii_lowercase();
        statuses.push(head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0));
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        rest = &rest[(end + 4 + len).min(rest.len())..];
    }
    statuses
}

/// `x-request-id: <anything>` → `x-request-id: *`, and a `traceparent`
/// other than the one the cases send ([`cases::TRACE`]) → `traceparent: *`,
/// so that generated ids compare.
fn mask_ids(raw: &[u8]) -> Vec<u8> {
    let raw = mask(raw, b"\r\nx-request-id: ", None);
    mask(&raw, b"\r\ntraceparent: ", Some(cases::TRACE.as_bytes()))
}

/// The value of every `key` field but `keep` → `*`.
fn mask(raw: &[u8], key: &[u8], keep: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.windows(key.len()).position(|w| w == key) {
        let from = at + key.len();
        let Some(len) = rest[from..].windows(2).position(|w| w == b"\r\n") else {
            break;
        };
        out.extend_from_slice(&rest[..from]);
        let value = &rest[from..from + len];
        if keep == Some(value) {
            out.extend_from_slice(value);
        } else {
            out.push(b'*');
        }
        rest = &rest[from + len..];
    }
    out.extend_from_slice(rest);
    out
}

fn replace(b: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    match b.windows(from.len()).position(|w| w == from) {
        Some(at) => [&b[..at], to, &replace(&b[at + from.len()..], from, to)].concat(),
        None => b.to_vec(),
    }
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).escape_debug().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_conformance_corpus() {
    let (gw, ups) = gateway().await;
    let web = gw.listener_addr("web").unwrap();
    let off = gw.listener_addr("off").unwrap();
    let corpus = cases::all();
    assert!(corpus.len() >= 250, "{} cases", corpus.len());
    let mut names = std::collections::HashSet::new();
    let mut failures = Vec::new();
    for case in &corpus {
        assert!(
            names.insert(case.name.clone()),
            "duplicate case {}",
            case.name
        );
        if let Err(why) = run(case, web, off, &ups).await {
            failures.push(format!(
                "{}: {why}\n  sent: {}",
                case.name,
                show(&case.send)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        corpus.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_requests_have_the_boundaries_a_strict_reader_sees() {
    let (gw, ups) = gateway().await;
    fuzz::run(gw.listener_addr("web").unwrap(), &ups.app.1).await;
}

async fn run(case: &Case, web: SocketAddr, off: SocketAddr, ups: &Upstreams) -> Result<(), String> {
    for log in [&ups.app.1, &ups.internal.1, &ups.admin.1] {
        log.take();
    }
    let addr = if case.listener == "off" { off } else { web };
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    s.write_all(&case.send).await.map_err(|e| e.to_string())?;
    let refused = matches!(case.statuses.last(), Some(400 | 405 | 431));
    let head_request = case.send.starts_with(b"HEAD ");
    let (got, closed) = answers(&mut s, case.statuses.len(), refused, head_request).await;
    let statuses: Vec<u16> = got.iter().map(|a| a.status).collect();
    if statuses != case.statuses {
        return Err(format!(
            "answered {statuses:?}, expected {:?}",
            case.statuses
        ));
    }
    if refused {
        if !got.last().is_some_and(|a| a.close) {
            return Err("a refusal without `Connection: close`".into());
        }
        if closed != Some(true) {
            return Err("the connection stayed open after a refusal".into());
        }
    }
    // Every request answered by an upstream was recorded before its answer.
    let mut seen: Vec<(&str, Result<Vec<u8>, String>)> = Vec::new();
    for (tag, log) in [
        ("app", &ups.app.1),
        ("internal", &ups.internal.1),
        ("admin", &ups.admin.1),
    ] {
        for r in log.take() {
            seen.push((tag, r.map(|b| mask_ids(&b))));
        }
    }
    let want: Vec<(&str, Result<Vec<u8>, String>)> = case
        .upstream
        .iter()
        .map(|(tag, b)| {
            (
                *tag,
                Ok(replace(b, b"{app}", ups.app.0.to_string().as_bytes())),
            )
        })
        .collect();
    if seen != want {
        let fmt = |v: &[(&str, Result<Vec<u8>, String>)]| {
            v.iter()
                .map(|(t, r)| match r {
                    Ok(b) => format!("\n    {t}: {}", show(b)),
                    Err(e) => format!("\n    {t}: UNREADABLE {e}"),
                })
                .collect::<String>()
        };
        return Err(format!(
            "upstreams received:{}\n  expected:{}",
            fmt(&seen),
            fmt(&want)
        ));
    }
    Ok(())
}
