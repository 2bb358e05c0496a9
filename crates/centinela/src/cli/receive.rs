//! `centinela alerts receive --listen ADDR`: a webhook receiver that
//! prints each alert it is sent, one line each. For trying notifiers out
//! (the quickstart uses it) without another tool.

use std::io::Write as _;
use std::process::ExitCode;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Request heads and bodies above this are refused.
const MAX: usize = 1 << 20;

pub(super) fn receive(listen: &str) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("centinela alerts receive: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("centinela alerts receive: cannot listen on {listen}: {e}");
                return ExitCode::FAILURE;
            }
        };
        eprintln!("Receiving alert webhooks on http://{listen}/");
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let status = match read_body(&mut s).await {
                    Some(body) => {
                        print_alerts(&body);
                        "200 OK"
                    }
                    None => "400 Bad Request",
                };
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    })
}

/// Reads one request and returns its body (sized by `Content-Length`).
async fn read_body(s: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX {
            return None;
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())?;
    if len > MAX {
        return None;
    }
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(buf[head_end..head_end + len].to_vec())
}

/// One line per alert of an Alertmanager-style webhook body; the raw body
/// when it is something else.
fn print_alerts(body: &[u8]) {
    let mut out = std::io::stdout().lock();
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) if v["alerts"].is_array() => {
            for a in v["alerts"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "[{}] {} ({}): {}",
                    a["status"].as_str().unwrap_or("?").to_ascii_uppercase(),
                    a["labels"]["alertname"].as_str().unwrap_or("?"),
                    a["labels"]["severity"].as_str().unwrap_or("?"),
                    a["annotations"]["summary"].as_str().unwrap_or("")
                );
            }
        }
        Ok(v) if v["text"].is_string() => {
            let _ = writeln!(out, "{}", v["text"].as_str().unwrap_or(""));
        }
        _ => {
            let _ = writeln!(out, "{}", String::from_utf8_lossy(body));
        }
    }
    let _ = out.flush();
}
