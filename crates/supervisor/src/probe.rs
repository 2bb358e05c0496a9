//! Readiness and liveness probes: `GET path` on the instance's port (2xx or
//! 3xx passes), a TCP connect, or a command that must exit 0, each within
//! its timeout.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use centinela_config::{Probe, ProbeKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub async fn check(p: &Probe, port: Option<u16>, workdir: &Path) -> Result<(), String> {
    match tokio::time::timeout(p.timeout, check_inner(&p.kind, port, workdir)).await {
        Ok(r) => r,
        // As `status` shows it: "killed (liveness failed 3×: timeout)".
        Err(_) => Err("timeout".to_string()),
    }
}

/// Kills a probe's process group when dropped before the probe ended.
struct KillGroup(Option<u32>);

impl Drop for KillGroup {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            crate::sys::kill_group(pid, libc::SIGKILL);
        }
    }
}

async fn check_inner(kind: &ProbeKind, port: Option<u16>, workdir: &Path) -> Result<(), String> {
    let addr = port.map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
    match kind {
        ProbeKind::Tcp => {
            let addr = addr.ok_or("tcp probe without a port")?;
            TcpStream::connect(addr)
                .await
                .map(|_| ())
                .map_err(|e| format!("connect: {e}"))
        }
        ProbeKind::Http(path) => {
            let addr = addr.ok_or("http probe without a port")?;
            let mut s = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: centinela-probe\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes())
                .await
                .map_err(|e| format!("send: {e}"))?;
            let mut buf = [0u8; 64];
            let mut n = 0;
            while n < 12 {
                match s.read(&mut buf[n..]).await {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) => return Err(format!("read: {e}")),
                }
            }
            let line = String::from_utf8_lossy(&buf[..n]);
            match line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse::<u16>().ok())
            {
                Some(code) if (200..400).contains(&code) => Ok(()),
                Some(code) => Err(format!("status {code}")),
                None => Err("no HTTP status line".to_string()),
            }
        }
        ProbeKind::Exec(cmd) => {
            let (program, args) = cmd.split_first().ok_or("empty exec probe")?;
            let mut c = tokio::process::Command::new(program);
            c.args(args)
                .current_dir(workdir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true);
            if let Some(p) = port {
                c.env("PORT", p.to_string());
            }
            // Its own process group: a probe that times out (this future
            // is dropped) is killed with whatever it started.
            c.process_group(0);
            let mut child = c.spawn().map_err(|e| format!("exec {program}: {e}"))?;
            let group = KillGroup(child.id());
            let status = child
                .wait()
                .await
                .map_err(|e| format!("exec {program}: {e}"))?;
            std::mem::forget(group);
            if status.success() {
                Ok(())
            } else {
                Err(format!("exec {program}: {status}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn an_exec_probe_that_times_out_is_killed_with_what_it_started() {
        let dir = std::env::temp_dir().join(format!("centinela-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let probe = Probe {
            kind: ProbeKind::Exec(vec![
                "/bin/sh".into(),
                "-c".into(),
                "sleep 300 & echo $! > child.pid; wait".into(),
            ]),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(300),
            failures: 1,
        };
        let err = check(&probe, None, &dir).await.unwrap_err();
        assert_eq!(err, "timeout");
        let pid: i32 = std::fs::read_to_string(dir.join("child.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The probe's own child (sleep) dies with the probe's group.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let gone = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map_or(true, |s| s.split_whitespace().nth(2) == Some("Z"))
        };
        while !gone() {
            assert!(
                std::time::Instant::now() < deadline,
                "the probe's child {pid} outlived it"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
