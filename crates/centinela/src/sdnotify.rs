//! systemd integration without libsystemd: `READY=1` once serving,
//! `WATCHDOG=1` at half of `WATCHDOG_USEC`, `STOPPING=1` on shutdown, sent
//! as datagrams to `$NOTIFY_SOCKET` (a path, or `@name` in the abstract
//! namespace). Without `NOTIFY_SOCKET` every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

fn send(msg: &str) -> std::io::Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let sock = UnixDatagram::unbound()?;
    let path = path.to_string_lossy().into_owned();
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(msg.as_bytes(), &addr)?;
    } else {
        sock.send_to(msg.as_bytes(), &path)?;
    }
    Ok(())
}

pub fn notify(msg: &str) {
    if let Err(e) = send(msg) {
        tracing::warn!(error = %e, "Cannot notify systemd");
    }
}

/// The watchdog ping interval systemd asked for (half of WatchdogSec).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

pub fn unit_file(binary: &str, config: &str) -> String {
    format!(
        r#"# centinela: install with
#   centinela systemd-unit --config {config} > /etc/systemd/system/centinela.service
#   systemctl daemon-reload && systemctl enable --now centinela
[Unit]
Description=centinela gateway and supervisor
Documentation=https://github.com/centinela
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStartPre={binary} check --config {config}
ExecStart={binary} run --config {config}
ExecReload=/bin/kill -HUP $MAINPID
Restart=always
RestartSec=1s
WatchdogSec=30s
TimeoutStopSec=45s
KillMode=mixed
LimitNOFILE=1048576

[Install]
WantedBy=multi-user.target
"#
    )
}
