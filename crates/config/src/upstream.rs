//! `[upstream.NAME]`: a pool of servers, and how requests are balanced,
//! checked, retried, limited and timed out across it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use toml::de::DeValue;

use crate::diag::Sink;
use crate::read::{array_items, is_token, missing, parse_addr, type_name, Obj, SV};
use crate::units::StatusSet;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConn,
    P2c,
    Random,
    Hash,
}

impl Balance {
    pub const NAMES: &'static [&'static str] =
        &["round_robin", "least_conn", "p2c", "random", "hash"];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "round_robin" => Balance::RoundRobin,
            "least_conn" => Balance::LeastConn,
            "p2c" => Balance::P2c,
            "random" => Balance::Random,
            "hash" => Balance::Hash,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    Header(String),
    Cookie(String),
    ClientIp,
}

impl HashKey {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "client_ip" {
            return Ok(HashKey::ClientIp);
        }
        match s.split_once(':') {
            Some(("header", name)) if !name.is_empty() => match is_token(name) {
                true => Ok(HashKey::Header(name.to_ascii_lowercase())),
                false => Err(format!("{name:?} is not a valid header name")),
            },
            Some(("cookie", name)) if !name.is_empty() => Ok(HashKey::Cookie(name.to_string())),
            _ => Err(format!(
                "invalid hash_key {s:?}: use \"header:NAME\", \"cookie:NAME\" or \"client_ip\""
            )),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    pub address: SocketAddr,
    pub weight: u32,
}

#[derive(Clone, Debug)]
pub struct Upstream {
    pub name: String,
    pub balance: Balance,
    pub hash_key: Option<HashKey>,
    pub servers: Vec<Server>,
    /// Active health checks; `None` when not configured.
    pub health: Option<Health>,
    pub outlier: Outlier,
    pub retry: Retry,
    pub breaker: Breaker,
    pub limits: Limits,
    pub timeouts: Timeouts,
    /// A server returning to rotation ramps its share up linearly over this.
    pub slow_start: Duration,
    /// `tls`: HTTPS to the servers (and their health checks).
    pub tls: Option<UpstreamTls>,
}

/// `[upstream.X] tls = true` or `{ ca, server_name, client_cert,
/// client_key, insecure_skip_verify }`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    pub settings: centinela_tls::UpstreamSettings,
    /// The name the server's certificate is checked for (and sent as SNI);
    /// default: the server's IP address.
    pub server_name: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Health {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub expect_status: StatusSet,
    /// Host header sent with checks; default: the server address.
    pub host: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Outlier {
    /// 0 disables passive outlier detection.
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejection_percent: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryOn {
    Connect,
    Reset,
    Timeout,
    Status(u16),
    /// Any 5xx status.
    Status5xx,
}

impl RetryOn {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "connect" => RetryOn::Connect,
            "reset" => RetryOn::Reset,
            "timeout" => RetryOn::Timeout,
            "5xx" => RetryOn::Status5xx,
            code => match code.parse::<u16>() {
                Ok(c) if (500..=599).contains(&c) || (400..=499).contains(&c) => RetryOn::Status(c),
                _ => return None,
            },
        })
    }
}

#[derive(Clone, Debug)]
pub struct Retry {
    /// Total tries per request, the first one included. 1 disables retries.
    pub attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Retries may be at most this percentage of requests over a 10 s window.
    pub budget_percent: u32,
    /// Retries always allowed per 10 s window, whatever the percentage says.
    pub budget_min: u32,
    pub on: Vec<RetryOn>,
    /// Request bodies up to this size are buffered so they can be replayed.
    pub buffer_body: u64,
    /// Each try waits at most this long for the response head (within
    /// `timeouts.response` and the request's deadline): a request stuck on
    /// one server is tried on another before its deadline.
    pub per_try_timeout: Option<Duration>,
}

impl Retry {
    pub fn retries_status(&self, status: u16) -> bool {
        self.on.iter().any(|r| match r {
            RetryOn::Status(c) => *c == status,
            RetryOn::Status5xx => (500..=599).contains(&status),
            _ => false,
        })
    }

    pub fn retries(&self, kind: RetryOn) -> bool {
        self.on.contains(&kind)
    }
}

#[derive(Clone, Debug)]
pub struct Breaker {
    pub enabled: bool,
    pub error_ratio: f64,
    pub window: Duration,
    pub min_requests: u32,
    pub open_for: Duration,
    pub half_open_requests: u32,
    /// A half-open probe with no outcome after this frees its slot.
    pub half_open_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_in_flight: u32,
    pub queue: u32,
    pub queue_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    /// Time to receive response headers, per attempt.
    pub response: Duration,
    /// Idle keep-alive connections to the upstream are closed after this.
    pub idle: Duration,
    /// Overall deadline for a request, retries and backoff included.
    pub request: Duration,
    /// A request or response body that moves no byte for this long is
    /// cut, its slot released and its connections closed.
    pub body_idle: Duration,
    /// An upgraded connection (WebSocket) with no byte either way for this
    /// long is closed.
    pub tunnel_idle: Duration,
}

pub(crate) fn upstream(
    sink: &mut Sink<'_>,
    v: &SV<'_>,
    name: &str,
    path: &str,
    fed_by_service: bool,
    base_dir: &Path,
) -> Option<Upstream> {
    let mut o = Obj::new(sink, v, path)?;
    let balance = match o.str(sink, "balance") {
        Some((s, span)) => Balance::parse(&s).unwrap_or_else(|| {
            sink.error(
                &span,
                &format!("{path}.balance"),
                format!(
                    "unknown balance {s:?}; expected one of: {}",
                    Balance::NAMES.join(", ")
                ),
            );
            Balance::RoundRobin
        }),
        None => Balance::RoundRobin,
    };
    let hash_key = match o.str(sink, "hash_key") {
        Some((s, span)) => match HashKey::parse(&s) {
            Ok(k) => {
                if balance != Balance::Hash {
                    sink.warn(
                        &span,
                        &format!("{path}.hash_key"),
                        "ignored: balance is not \"hash\"",
                    );
                }
                Some(k)
            }
            Err(e) => {
                sink.error(&span, &format!("{path}.hash_key"), e);
                None
            }
        },
        None => None,
    };
    if balance == Balance::Hash
        && hash_key.is_none()
        && o.table
            .iter()
            .all(|(k, _)| k.get_ref().as_ref() != "hash_key")
    {
        sink.error(
            &v.span(),
            &format!("{path}.hash_key"),
            "balance = \"hash\" requires hash_key (header:NAME, cookie:NAME or client_ip)",
        );
    }

    let mut servers: Vec<Server> = Vec::new();
    match o.get("servers") {
        Some(sv) => {
            let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
            for (i, item) in array_items(sink, sv, &format!("{path}.servers")) {
                let spath = format!("{path}.servers[{i}]");
                let parsed = match item.get_ref() {
                    DeValue::String(s) => match parse_addr(s) {
                        Ok(a) => Some((a, 1, item.span())),
                        Err(e) => {
                            sink.error(&item.span(), &spath, e);
                            None
                        }
                    },
                    DeValue::Table(_) => {
                        let mut so = Obj::new(sink, item, &spath)?;
                        let addr = so.addr(sink, "address");
                        if addr.is_none()
                            && so
                                .table
                                .iter()
                                .all(|(k, _)| k.get_ref().as_ref() != "address")
                        {
                            missing(sink, &item.span(), &spath, "address");
                        }
                        let weight = so.int(sink, "weight", 1, 1, 1_000_000) as u32;
                        so.finish(sink);
                        addr.map(|(a, span)| (a, weight, span))
                    }
                    other => {
                        sink.error(
                            &item.span(),
                            &spath,
                            format!("expected {{ address = \"IP:PORT\", weight = N }} or \"IP:PORT\", found {}", type_name(other)),
                        );
                        None
                    }
                };
                if let Some((address, weight, span)) = parsed {
                    if let Some(first) = seen.insert(address, i) {
                        sink.error(
                            &span,
                            &spath,
                            format!("duplicate server {address} (also servers[{first}])"),
                        );
                        continue;
                    }
                    servers.push(Server { address, weight });
                }
            }
            if servers.is_empty()
                && !fed_by_service
                && matches!(sv.get_ref(), DeValue::Array(a) if a.is_empty())
            {
                sink.error(
                    &sv.span(),
                    &format!("{path}.servers"),
                    "an upstream needs at least one server",
                );
            }
        }
        None if fed_by_service => {}
        None => sink.error(
            &v.span(),
            path,
            "missing required key `servers` (or a [service] with upstream = this name)",
        ),
    }

    let health = o.sub(sink, "health").map(|mut h| {
        let hp = h.path.clone();
        let path_s = match h.str(sink, "path") {
            Some((p, span)) if !p.starts_with('/') => {
                sink.error(&span, &format!("{hp}.path"), "must start with '/'");
                p
            }
            Some((p, _)) => p,
            None => "/health".to_string(),
        };
        let interval = h.duration_min(
            sink,
            "interval",
            Duration::from_secs(2),
            Duration::from_millis(10),
        );
        let timeout = h.duration_min(
            sink,
            "timeout",
            Duration::from_secs(1),
            Duration::from_millis(1),
        );
        let rise = h.int(sink, "rise", 2, 1, 1000) as u32;
        let fall = h.int(sink, "fall", 3, 1, 1000) as u32;
        let expect_status = match h.str(sink, "expect_status") {
            Some((s, span)) => StatusSet::parse(&s).unwrap_or_else(|e| {
                sink.error(&span, &format!("{hp}.expect_status"), e);
                default_status()
            }),
            None => default_status(),
        };
        let host = h.str(sink, "host").map(|x| x.0);
        h.finish(sink);
        Health {
            path: path_s,
            interval,
            timeout,
            rise,
            fall,
            expect_status,
            host,
        }
    });

    let outlier = match o.sub(sink, "outlier") {
        Some(mut x) => {
            let r = Outlier {
                consecutive_failures: x.int(sink, "consecutive_failures", 5, 0, 1_000_000) as u32,
                base_ejection: x.duration(sink, "base_ejection", Duration::from_secs(10)),
                max_ejection: x.duration(sink, "max_ejection", Duration::from_secs(300)),
                max_ejection_percent: x.int(sink, "max_ejection_percent", 50, 0, 100) as u32,
            };
            x.finish(sink);
            r
        }
        None => default_outlier(),
    };

    let retry = match o.sub(sink, "retry") {
        Some(mut x) => {
            let attempts = x.int(sink, "attempts", 3, 1, 100) as u32;
            let backoff_base = x.duration(sink, "backoff_base", Duration::from_millis(25));
            let backoff_max = x.duration(sink, "backoff_max", Duration::from_secs(1));
            let budget_percent = x.int(sink, "budget_percent", 20, 0, 100) as u32;
            let budget_min = x.int(sink, "budget_min", 10, 0, 1_000_000) as u32;
            let buffer_body = x.size(sink, "buffer_body", 64 * 1024);
            let per_try_timeout = x.get("per_try_timeout").is_some().then(|| {
                x.duration_min(
                    sink,
                    "per_try_timeout",
                    Duration::ZERO,
                    Duration::from_millis(1),
                )
            });
            let xp = x.path.clone();
            let on = match x.get("on") {
                Some(list) => {
                    let mut on = Vec::new();
                    for (i, item) in array_items(sink, list, &format!("{xp}.on")) {
                        match item.get_ref() {
                            DeValue::String(s) => match RetryOn::parse(s) {
                                Some(r) => on.push(r),
                                None => sink.error(
                                    &item.span(),
                                    &format!("{xp}.on[{i}]"),
                                    format!("unknown retry condition {s:?}; expected connect, reset, timeout, 5xx or a status code such as \"503\""),
                                ),
                            },
                            other => sink.error(&item.span(), &format!("{xp}.on[{i}]"), format!("expected a string, found {}", type_name(other))),
                        }
                    }
                    on
                }
                None => default_retry().on,
            };
            x.finish(sink);
            Retry {
                attempts,
                backoff_base,
                backoff_max,
                budget_percent,
                budget_min,
                on,
                buffer_body,
                per_try_timeout,
            }
        }
        None => default_retry(),
    };

    let breaker = match o.sub(sink, "breaker") {
        Some(mut x) => {
            let r = Breaker {
                enabled: x.bool(sink, "enabled", true),
                error_ratio: x.float(sink, "error_ratio", 0.5, 0.0, 1.0),
                window: x.duration_min(
                    sink,
                    "window",
                    Duration::from_secs(10),
                    Duration::from_millis(100),
                ),
                min_requests: x.int(sink, "min_requests", 20, 1, 1_000_000) as u32,
                open_for: x.duration(sink, "open_for", Duration::from_secs(30)),
                half_open_requests: x.int(sink, "half_open_requests", 5, 1, 1_000_000) as u32,
                half_open_timeout: x.duration_min(
                    sink,
                    "half_open_timeout",
                    Duration::from_secs(30),
                    Duration::from_millis(1),
                ),
            };
            x.finish(sink);
            r
        }
        None => default_breaker(),
    };

    let limits = match o.sub(sink, "limits") {
        Some(mut x) => {
            let r = Limits {
                max_in_flight: x.int(sink, "max_in_flight", 1000, 1, 10_000_000) as u32,
                queue: x.int(sink, "queue", 100, 0, 10_000_000) as u32,
                queue_timeout: x.duration(sink, "queue_timeout", Duration::from_secs(1)),
            };
            x.finish(sink);
            r
        }
        None => default_limits(),
    };

    let timeouts = match o.sub(sink, "timeouts") {
        Some(mut x) => {
            let r = Timeouts {
                connect: x.duration_min(
                    sink,
                    "connect",
                    Duration::from_secs(1),
                    Duration::from_millis(1),
                ),
                response: x.duration_min(
                    sink,
                    "response",
                    Duration::from_secs(30),
                    Duration::from_millis(1),
                ),
                idle: x.duration(sink, "idle", Duration::from_secs(90)),
                request: x.duration_min(
                    sink,
                    "request",
                    Duration::from_secs(60),
                    Duration::from_millis(1),
                ),
                body_idle: x.duration_min(
                    sink,
                    "body_idle",
                    Duration::from_secs(30),
                    Duration::from_millis(1),
                ),
                tunnel_idle: x.duration_min(
                    sink,
                    "tunnel_idle",
                    Duration::from_secs(3600),
                    Duration::from_millis(1),
                ),
            };
            x.finish(sink);
            r
        }
        None => default_timeouts(),
    };
    let slow_start = o.duration(sink, "slow_start", Duration::from_secs(5));
    let tls = upstream_tls(sink, &mut o, base_dir);
    o.finish(sink);

    Some(Upstream {
        name: name.to_string(),
        balance,
        hash_key,
        servers,
        health,
        outlier,
        retry,
        breaker,
        limits,
        timeouts,
        slow_start,
        tls,
    })
}

fn default_status() -> StatusSet {
    StatusSet::parse("200-399").expect("valid literal")
}

pub fn default_outlier() -> Outlier {
    Outlier {
        consecutive_failures: 5,
        base_ejection: Duration::from_secs(10),
        max_ejection: Duration::from_secs(300),
        max_ejection_percent: 50,
    }
}

pub fn default_retry() -> Retry {
    Retry {
        attempts: 3,
        backoff_base: Duration::from_millis(25),
        backoff_max: Duration::from_secs(1),
        budget_percent: 20,
        budget_min: 10,
        on: vec![
            RetryOn::Connect,
            RetryOn::Reset,
            RetryOn::Timeout,
            RetryOn::Status(502),
            RetryOn::Status(503),
            RetryOn::Status(504),
        ],
        buffer_body: 64 * 1024,
        per_try_timeout: None,
    }
}

pub fn default_breaker() -> Breaker {
    Breaker {
        enabled: true,
        error_ratio: 0.5,
        window: Duration::from_secs(10),
        min_requests: 20,
        open_for: Duration::from_secs(30),
        half_open_requests: 5,
        half_open_timeout: Duration::from_secs(30),
    }
}

pub fn default_limits() -> Limits {
    Limits {
        max_in_flight: 1000,
        queue: 100,
        queue_timeout: Duration::from_secs(1),
    }
}

pub fn default_timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(1),
        response: Duration::from_secs(30),
        idle: Duration::from_secs(90),
        request: Duration::from_secs(60),
        body_idle: Duration::from_secs(30),
        tunnel_idle: Duration::from_secs(3600),
    }
}

/// `tls = true` (the system's CAs) or a table. A certificate is verified
/// unless `insecure_skip_verify = true`, which `check` warns about.
fn upstream_tls(sink: &mut Sink<'_>, o: &mut Obj<'_, '_>, base_dir: &Path) -> Option<UpstreamTls> {
    let v = o.peek("tls")?;
    if let toml::de::DeValue::Boolean(b) = v.get_ref() {
        o.get("tls");
        return b.then(|| UpstreamTls {
            settings: centinela_tls::UpstreamSettings {
                ca: None,
                client_cert: None,
                insecure_skip_verify: false,
            },
            server_name: None,
        });
    }
    let mut t = o.sub(sink, "tls")?;
    let ca = crate::tls::ca_file(sink, &mut t, "ca", base_dir).map(|(p, _)| p);
    let server_name = t.str(sink, "server_name").and_then(|(n, span)| {
        if rustls_pki_types::ServerName::try_from(n.as_str()).is_err() {
            sink.error(
                &span,
                &t.child_path("server_name"),
                format!("{n:?} is not a valid DNS name or IP address"),
            );
            return None;
        }
        Some(n)
    });
    let cert = t.str(sink, "client_cert");
    let key = t.str(sink, "client_key");
    let client_cert = match (cert, key) {
        (Some((c, cspan)), Some((k, _))) => {
            let files = centinela_tls::server::CertFiles {
                cert: base_dir.join(c),
                key: base_dir.join(k),
            };
            let r = centinela_tls::server::inspect(&files, std::time::SystemTime::now(), 14);
            for e in &r.errors {
                sink.error(&cspan, &t.child_path("client_cert"), e.clone());
            }
            for w in r.warnings {
                sink.warn(&cspan, &t.child_path("client_cert"), w);
            }
            r.errors.is_empty().then_some(files)
        }
        (Some((_, span)), None) | (None, Some((_, span))) => {
            sink.error(&span, &t.path, "client_cert and client_key go together");
            None
        }
        (None, None) => None,
    };
    let insecure_skip_verify = t.bool(sink, "insecure_skip_verify", false);
    if insecure_skip_verify {
        let span = t.peek("insecure_skip_verify").map_or(0..0, |v| v.span());
        sink.warn(
            &span,
            &t.child_path("insecure_skip_verify"),
            "the servers' certificates are not verified: anyone on the path can pose as them",
        );
        if ca.is_some() {
            sink.warn(
                &span,
                &t.path,
                "ca is unused with insecure_skip_verify = true",
            );
        }
    }
    t.finish(sink);
    Some(UpstreamTls {
        settings: centinela_tls::UpstreamSettings {
            ca,
            client_cert,
            insecure_skip_verify,
        },
        server_name,
    })
}
