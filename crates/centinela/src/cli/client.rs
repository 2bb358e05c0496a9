//! The admin API as the CLI commands call it: plain HTTP/1.0 on loopback.

use std::path::Path;
use std::process::ExitCode;
use std::sync::OnceLock;

use super::load;

/// The admin token the requests carry: `CENTINELA_ADMIN_TOKEN`, else
/// `[admin] token` of the config file (set by [`admin_addr`]).
static TOKEN: OnceLock<Option<String>> = OnceLock::new();

fn token() -> Option<&'static str> {
    TOKEN
        .get_or_init(|| std::env::var("CENTINELA_ADMIN_TOKEN").ok())
        .as_deref()
}

/// A plain HTTP/1.0 request to the admin API: the status code and body.
pub(super) fn admin_request(
    addr: &str,
    method: &str,
    path: &str,
    timeout: Option<std::time::Duration>,
) -> Result<(u16, String), String> {
    admin_send(addr, method, path, "", timeout)
}

/// [`admin_request`] with a JSON body.
pub(super) fn admin_send(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
    timeout: Option<std::time::Duration>,
) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)
        .map_err(|e| format!("cannot reach the admin API at {addr}: {e}"))?;
    let _ = s.set_read_timeout(timeout);
    let auth = token().map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nX-Centinela: 1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("reading from {addr}: {e}"))?;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .ok_or("malformed answer from the admin API")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("malformed status line from the admin API")?;
    Ok((code, body.to_string()))
}

/// A GET to the admin API; the body of a 200 answer.
pub(super) fn admin_get(addr: &str, path: &str) -> Result<String, String> {
    match admin_request(addr, "GET", path, Some(std::time::Duration::from_secs(5)))? {
        (200, body) => Ok(body),
        (code, body) => Err(format!("admin API answered {code}: {body}")),
    }
}

/// The admin address: `--admin`, else `[admin] listen` of the config file.
/// The token comes from `CENTINELA_ADMIN_TOKEN`, else from the config file
/// when it can be read.
pub(super) fn admin_addr(admin: Option<String>, config: &Path) -> Result<String, ExitCode> {
    let from_env = std::env::var("CENTINELA_ADMIN_TOKEN").ok();
    let (addr, from_file) = match admin {
        Some(a) => {
            let t = (from_env.is_none() && config.exists())
                .then(|| centinela_config::load(config).ok())
                .flatten()
                .and_then(|l| l.config.admin.token)
                .map(|t| t.expose().to_string());
            (a, t)
        }
        None => {
            let l = load(config)?;
            let t = l.config.admin.token.map(|t| t.expose().to_string());
            (l.config.admin.listen.to_string(), t)
        }
    };
    let _ = TOKEN.set(from_env.or(from_file));
    Ok(addr)
}
