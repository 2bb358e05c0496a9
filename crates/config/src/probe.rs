//! `[[probe]]`: uptime probes, the checks an outside uptime service would
//! run, from this host: an HTTP(S) URL or a TCP port, on a schedule.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::diag::Sink;
use crate::read::{array_items, missing, Obj};
use crate::units::StatusSet;

#[derive(Clone, Debug, PartialEq)]
pub struct UptimeProbe {
    pub name: String,
    pub target: ProbeTarget,
    pub interval: Duration,
    pub timeout: Duration,
    /// Statuses that pass (HTTP).
    pub expect_status: StatusSet,
    /// The body must contain this (HTTP).
    pub expect_body: Option<String>,
    /// A certificate expiring within this long fires the built-in rule.
    pub tls_expiry_warn: Duration,
    /// HTTPS: the PEM file of the CA certificates to trust instead of the
    /// system's roots.
    pub ca: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeTarget {
    /// `http://HOST[:PORT]/PATH` or `https://…`: `GET` with `Host:
    /// HOST[:PORT]`; over TLS verified for HOST when `tls`.
    Http {
        host: String,
        port: u16,
        path: String,
        tls: bool,
    },
    /// `tcp://HOST:PORT`: a connection opens.
    Tcp { host: String, port: u16 },
}

pub(crate) fn probes(
    sink: &mut Sink<'_>,
    top: &mut Obj<'_, '_>,
    base_dir: &Path,
) -> Vec<UptimeProbe> {
    let mut out: Vec<UptimeProbe> = Vec::new();
    let Some(v) = top.get("probe") else {
        return out;
    };
    for (i, item) in array_items(sink, v, "probe") {
        let path = format!("probe[{i}]");
        let Some(mut o) = Obj::new(sink, item, &path) else {
            continue;
        };
        let name = o.item_name(sink, &item.span(), "probe", |n| {
            out.iter().any(|p| p.name == n)
        });
        let target = match o.str(sink, "url") {
            Some((u, span)) => match parse_target(&u) {
                Ok(t) => Some(t),
                Err(e) => {
                    sink.error(&span, &o.child_path("url"), e);
                    None
                }
            },
            None => {
                missing(sink, &item.span(), &path, "url");
                None
            }
        };
        let interval = o.duration_min(
            sink,
            "interval",
            Duration::from_secs(30),
            Duration::from_millis(100),
        );
        let timeout = o.duration_min(
            sink,
            "timeout",
            Duration::from_secs(5),
            Duration::from_millis(10),
        );
        let expect_status = match o.str(sink, "expect_status") {
            Some((s, span)) => StatusSet::parse(&s).unwrap_or_else(|e| {
                sink.error(&span, &o.child_path("expect_status"), e);
                default_status()
            }),
            None => default_status(),
        };
        let expect_body = o.str(sink, "expect_body").map(|(b, _)| b);
        let tls_expiry_warn = o.duration(sink, "tls_expiry_warn", Duration::from_secs(14 * 86_400));
        let ca = crate::tls::ca_file(sink, &mut o, "ca", base_dir).and_then(|(path, span)| {
            if matches!(
                target,
                Some(ProbeTarget::Http { tls: false, .. } | ProbeTarget::Tcp { .. })
            ) {
                sink.error(&span, &o.child_path("ca"), "ca is for https:// probes only");
                return None;
            }
            Some(path)
        });
        o.finish(sink);
        if let (Some(name), Some(target)) = (name, target) {
            out.push(UptimeProbe {
                name,
                target,
                interval,
                timeout,
                expect_status,
                expect_body,
                tls_expiry_warn,
                ca,
            });
        }
    }
    out
}

fn default_status() -> StatusSet {
    StatusSet::parse("200-399").expect("a valid status set")
}

fn parse_target(u: &str) -> Result<ProbeTarget, String> {
    let host_port = |hp: &str, default: Option<u16>| -> Result<(String, u16), String> {
        let (host, port) = match hp.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || hp.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("invalid port {p:?} in {u:?}"))?;
                (h, port)
            }
            _ => (
                hp,
                default.ok_or_else(|| format!("{u:?} needs a port: tcp://HOST:PORT"))?,
            ),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.bytes().any(|b| b <= b' ' || b"/?#@".contains(&b)) {
            return Err(format!("invalid host in {u:?}"));
        }
        Ok((host.to_string(), port))
    };
    let http = u
        .strip_prefix("http://")
        .map(|r| (r, false))
        .or_else(|| u.strip_prefix("https://").map(|r| (r, true)));
    if let Some((rest, tls)) = http {
        let (hp, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        if path.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'#') {
            return Err(format!("invalid path in {u:?}"));
        }
        let (host, port) = host_port(hp, Some(if tls { 443 } else { 80 }))?;
        return Ok(ProbeTarget::Http {
            host,
            port,
            path,
            tls,
        });
    }
    if let Some(rest) = u.strip_prefix("tcp://") {
        let (host, port) = host_port(rest.trim_end_matches('/'), None)?;
        return Ok(ProbeTarget::Tcp { host, port });
    }
    Err(format!(
        "{u:?} is not an http://, https:// or tcp://HOST:PORT URL"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            parse_target("http://127.0.0.1:8080/health?x=1").unwrap(),
            ProbeTarget::Http {
                host: "127.0.0.1".into(),
                port: 8080,
                path: "/health?x=1".into(),
                tls: false,
            }
        );
        assert_eq!(
            parse_target("http://portal.example").unwrap(),
            ProbeTarget::Http {
                host: "portal.example".into(),
                port: 80,
                path: "/".into(),
                tls: false,
            }
        );
        assert_eq!(
            parse_target("https://portal.example/health").unwrap(),
            ProbeTarget::Http {
                host: "portal.example".into(),
                port: 443,
                path: "/health".into(),
                tls: true,
            }
        );
        assert_eq!(
            parse_target("tcp://[::1]:5432").unwrap(),
            ProbeTarget::Tcp {
                host: "::1".into(),
                port: 5432
            }
        );
        assert!(parse_target("tcp://db")
            .unwrap_err()
            .contains("needs a port"));
        assert!(parse_target("ftp://x").is_err());
        assert!(parse_target("http://a b/").is_err());
    }
}
