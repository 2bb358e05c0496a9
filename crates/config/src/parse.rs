//! Walks the spanned TOML tree, checks every key and value, and builds the
//! typed [`Config`]. Errors are collected, never returned early, so one run of
//! `centinela check` reports all of them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::diag::Sink;
use crate::model::is_token;
use crate::model::*;
use crate::units::{parse_duration, parse_size, StatusSet};

pub(crate) type SV<'i> = Spanned<DeValue<'i>>;

pub(crate) fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// A table being read: remembers which keys were consumed so that the rest can
/// be reported as unknown.
pub(crate) struct Obj<'t, 'i> {
    pub(crate) table: &'t DeTable<'i>,
    pub(crate) path: String,
    pub(crate) known: Vec<&'static str>,
}

impl<'t, 'i> Obj<'t, 'i> {
    pub(crate) fn new(sink: &mut Sink<'_>, v: &'t SV<'i>, path: &str) -> Option<Self> {
        match v.get_ref() {
            DeValue::Table(table) => Some(Obj {
                table,
                path: path.to_string(),
                known: Vec::new(),
            }),
            other => {
                sink.error(
                    &v.span(),
                    path,
                    format!("expected a table, found {}", type_name(other)),
                );
                None
            }
        }
    }

    pub(crate) fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{}", self.path, key)
        }
    }

    pub(crate) fn get(&mut self, key: &'static str) -> Option<&'t SV<'i>> {
        self.known.push(key);
        self.table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map(|(_, v)| v)
    }

    pub(crate) fn finish(self, sink: &mut Sink<'_>) {
        for (k, _) in self.table.iter() {
            let name: &str = k.get_ref().as_ref();
            if !self.known.contains(&name) {
                let mut known = self.known.clone();
                known.sort_unstable();
                sink.error(
                    &k.span(),
                    &self.child_path(name),
                    format!(
                        "unknown key `{name}`; expected one of: {}",
                        known.join(", ")
                    ),
                );
            }
        }
    }

    pub(crate) fn str(
        &mut self,
        sink: &mut Sink<'_>,
        key: &'static str,
    ) -> Option<(String, Range<usize>)> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some((s.to_string(), v.span())),
            other => {
                sink.error(
                    &v.span(),
                    &self.child_path(key),
                    format!("expected a string, found {}", type_name(other)),
                );
                None
            }
        }
    }

    pub(crate) fn bool(&mut self, sink: &mut Sink<'_>, key: &'static str, default: bool) -> bool {
        let Some(v) = self.get(key) else {
            return default;
        };
        match v.get_ref() {
            DeValue::Boolean(b) => *b,
            other => {
                sink.error(
                    &v.span(),
                    &self.child_path(key),
                    format!("expected true or false, found {}", type_name(other)),
                );
                default
            }
        }
    }

    /// An integer in `min..=max`.
    pub(crate) fn int(
        &mut self,
        sink: &mut Sink<'_>,
        key: &'static str,
        default: u64,
        min: u64,
        max: u64,
    ) -> u64 {
        let Some(v) = self.get(key) else {
            return default;
        };
        let path = self.child_path(key);
        match v.get_ref() {
            DeValue::Integer(i) => {
                match i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()) {
                    Ok(n) if n >= 0 && (n as u64) >= min && (n as u64) <= max => n as u64,
                    Ok(n) if n < min as i64 => {
                        sink.error(
                            &v.span(),
                            &path,
                            format!("must be at least {min}, found {n}"),
                        );
                        default
                    }
                    Ok(n) => {
                        sink.error(
                            &v.span(),
                            &path,
                            format!("must be at most {max}, found {n}"),
                        );
                        default
                    }
                    Err(_) => {
                        sink.error(&v.span(), &path, "integer out of range");
                        default
                    }
                }
            }
            other => {
                sink.error(
                    &v.span(),
                    &path,
                    format!("expected an integer, found {}", type_name(other)),
                );
                default
            }
        }
    }

    pub(crate) fn float(
        &mut self,
        sink: &mut Sink<'_>,
        key: &'static str,
        default: f64,
        min_excl: f64,
        max: f64,
    ) -> f64 {
        let Some(v) = self.get(key) else {
            return default;
        };
        let path = self.child_path(key);
        let parsed = match v.get_ref() {
            DeValue::Float(f) => f.as_str().replace('_', "").parse::<f64>().ok(),
            DeValue::Integer(i) => i.as_str().replace('_', "").parse::<f64>().ok(),
            other => {
                sink.error(
                    &v.span(),
                    &path,
                    format!("expected a number, found {}", type_name(other)),
                );
                return default;
            }
        };
        match parsed {
            Some(f) if f > min_excl && f <= max => f,
            _ => {
                sink.error(
                    &v.span(),
                    &path,
                    format!("must be a number greater than {min_excl} and at most {max}"),
                );
                default
            }
        }
    }

    pub(crate) fn duration(
        &mut self,
        sink: &mut Sink<'_>,
        key: &'static str,
        default: Duration,
    ) -> Duration {
        self.duration_min(sink, key, default, Duration::ZERO)
    }

    pub(crate) fn duration_min(
        &mut self,
        sink: &mut Sink<'_>,
        key: &'static str,
        default: Duration,
        min: Duration,
    ) -> Duration {
        let Some((s, span)) = self.str(sink, key) else {
            return default;
        };
        match parse_duration(&s) {
            Ok(d) if d >= min => d,
            Ok(_) => {
                sink.error(
                    &span,
                    &self.child_path(key),
                    format!("must be at least {}", crate::units::format_duration(min)),
                );
                default
            }
            Err(e) => {
                sink.error(&span, &self.child_path(key), e);
                default
            }
        }
    }

    pub(crate) fn size(&mut self, sink: &mut Sink<'_>, key: &'static str, default: u64) -> u64 {
        let Some(v) = self.get(key) else {
            return default;
        };
        match v.get_ref() {
            DeValue::Integer(i) => {
                i.as_str()
                    .replace('_', "")
                    .parse::<u64>()
                    .unwrap_or_else(|_| {
                        sink.error(&v.span(), &self.child_path(key), "size out of range");
                        default
                    })
            }
            DeValue::String(s) => parse_size(s).unwrap_or_else(|e| {
                sink.error(&v.span(), &self.child_path(key), e);
                default
            }),
            other => {
                sink.error(
                    &v.span(),
                    &self.child_path(key),
                    format!(
                        "expected a size such as \"64KiB\", found {}",
                        type_name(other)
                    ),
                );
                default
            }
        }
    }

    pub(crate) fn addr(
        &mut self,
        sink: &mut Sink<'_>,
        key: &'static str,
    ) -> Option<(SocketAddr, Range<usize>)> {
        let (s, span) = self.str(sink, key)?;
        match parse_addr(&s) {
            Ok(a) => Some((a, span)),
            Err(e) => {
                sink.error(&span, &self.child_path(key), e);
                None
            }
        }
    }

    pub(crate) fn sub(&mut self, sink: &mut Sink<'_>, key: &'static str) -> Option<Obj<'t, 'i>> {
        let path = self.child_path(key);
        let v = self.get(key)?;
        Obj::new(sink, v, &path)
    }
}

pub(crate) fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>().map_err(|_| {
        format!(
            "invalid address {s:?}: expected IP:PORT, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\""
        )
    })
}

pub(crate) fn missing(sink: &mut Sink<'_>, span: &Range<usize>, path: &str, key: &str) {
    sink.error(span, path, format!("missing required key `{key}`"));
}

struct RouteRef {
    upstream: (String, Range<usize>),
    listener: Option<(String, Range<usize>)>,
    span: Range<usize>,
    path: String,
}

pub(crate) fn build(
    sink: &mut Sink<'_>,
    root: &Spanned<DeTable<'_>>,
    base_dir: &std::path::Path,
) -> Config {
    let mut top = Obj {
        table: root.get_ref(),
        path: String::new(),
        known: Vec::new(),
    };

    let admin = match top.sub(sink, "admin") {
        Some(mut a) => {
            let listen = a.addr(sink, "listen").map(|(a, _)| a);
            a.finish(sink);
            Admin {
                listen: listen.unwrap_or_else(default_admin),
            }
        }
        None => Admin {
            listen: default_admin(),
        },
    };

    let mut listeners = Vec::new();
    let mut listener_spans = Vec::new();
    if let Some(v) = top.get("listener") {
        for (i, item) in array_items(sink, v, "listener") {
            let path = format!("listener[{i}]");
            let Some(mut o) = Obj::new(sink, item, &path) else {
                continue;
            };
            let name = o.str(sink, "name");
            let listen = o.addr(sink, "listen");
            let header_timeout = o.duration_min(
                sink,
                "header_timeout",
                Duration::from_secs(30),
                Duration::from_millis(1),
            );
            let path_normalization = match o.str(sink, "path_normalization") {
                None => PathNormalization::Strict,
                Some((s, _)) if s == "strict" => PathNormalization::Strict,
                Some((s, _)) if s == "off" => PathNormalization::Off,
                Some((s, span)) => {
                    sink.error(
                        &span,
                        &o.child_path("path_normalization"),
                        format!("unknown value {s:?}; expected \"strict\" or \"off\""),
                    );
                    PathNormalization::Strict
                }
            };
            let max_connections = o.int(sink, "max_connections", 10_000, 1, 10_000_000) as u32;
            let write_timeout = o.duration_min(
                sink,
                "write_timeout",
                Duration::from_secs(30),
                Duration::from_millis(1),
            );
            if name.is_none() {
                missing(sink, &item.span(), &path, "name");
            }
            if listen.is_none()
                && o.table
                    .iter()
                    .all(|(k, _)| k.get_ref().as_ref() != "listen")
            {
                missing(sink, &item.span(), &path, "listen");
            }
            o.finish(sink);
            if let (Some((name, nspan)), Some((addr, aspan))) = (name, listen) {
                listener_spans.push((nspan, aspan, path));
                listeners.push(Listener {
                    name,
                    listen: addr,
                    header_timeout,
                    path_normalization,
                    max_connections,
                    write_timeout,
                });
            }
        }
    }

    let mut routes = Vec::new();
    let mut route_refs = Vec::new();
    if let Some(v) = top.get("route") {
        for (i, item) in array_items(sink, v, "route") {
            let path = format!("route[{i}]");
            let Some(mut o) = Obj::new(sink, item, &path) else {
                continue;
            };
            let listener = o.str(sink, "listener");
            let host = o.str(sink, "host").map(|(h, _)| {
                let h = h.to_ascii_lowercase();
                strip_port(&h).to_string()
            });
            let path_prefix = match o.str(sink, "path_prefix") {
                Some((p, span)) if !p.starts_with('/') => {
                    sink.error(&span, &o.child_path("path_prefix"), "must start with '/'");
                    p
                }
                Some((p, _)) => p,
                None => "/".to_string(),
            };
            let strip_prefix = o.bool(sink, "strip_prefix", false);
            let upgrade = match o.get("upgrade") {
                None => vec!["websocket".to_string()],
                Some(list) => {
                    let lp = o.child_path("upgrade");
                    let mut v = Vec::new();
                    for (i, item) in array_items(sink, list, &lp) {
                        match item.get_ref() {
                            DeValue::String(s) if is_token(s) && !s.eq_ignore_ascii_case("h2c") => {
                                v.push(s.to_ascii_lowercase())
                            }
                            DeValue::String(s) if s.eq_ignore_ascii_case("h2c") => sink.error(
                                &item.span(),
                                &format!("{lp}[{i}]"),
                                "h2c upgrades are never forwarded (request smuggling): clients speak HTTP/2 to centinela directly",
                            ),
                            DeValue::String(s) => sink.error(
                                &item.span(),
                                &format!("{lp}[{i}]"),
                                format!("{s:?} is not a protocol name such as \"websocket\""),
                            ),
                            other => sink.error(
                                &item.span(),
                                &format!("{lp}[{i}]"),
                                format!("expected a string, found {}", type_name(other)),
                            ),
                        }
                    }
                    v
                }
            };
            let upstream = o.str(sink, "upstream");
            if upstream.is_none()
                && o.table
                    .iter()
                    .all(|(k, _)| k.get_ref().as_ref() != "upstream")
            {
                missing(sink, &item.span(), &path, "upstream");
            }
            o.finish(sink);
            if let Some(up) = upstream {
                route_refs.push(RouteRef {
                    upstream: up.clone(),
                    listener: listener.clone(),
                    span: item.span(),
                    path: path.clone(),
                });
                routes.push(Route {
                    listener: listener.map(|l| l.0),
                    host,
                    path_prefix,
                    strip_prefix,
                    upstream: up.0,
                    upgrade,
                });
            }
        }
    }

    // Services first: an upstream fed by a service needs no static servers.
    let mut services = Vec::new();
    if let Some(svcs) = top.sub(sink, "service") {
        for (k, v) in svcs.table.iter() {
            if let Some(p) = crate::service::service(sink, v, k.get_ref(), base_dir) {
                services.push(p);
            }
        }
    }
    let fed: Vec<String> = services
        .iter()
        .filter_map(|p| p.service.upstream.clone())
        .collect();

    let mut upstreams = Vec::new();
    // Every key under [upstream] is an upstream name, so none is "unknown".
    if let Some(ups) = top.sub(sink, "upstream") {
        for (k, v) in ups.table.iter() {
            let name: &str = k.get_ref().as_ref();
            let path = format!("upstream.{name}");
            if let Some(u) = upstream(sink, v, name, &path, fed.contains(&name.to_string())) {
                upstreams.push(u);
            }
        }
    }

    let runtime = match top.sub(sink, "runtime") {
        Some(mut r) => {
            let worker_threads = r.int(sink, "worker_threads", 0, 0, 1024) as usize;
            let shutdown_timeout = r.duration(sink, "shutdown_timeout", Duration::from_secs(30));
            let log_format = match r.str(sink, "log_format") {
                Some((s, _)) if s == "text" => LogFormat::Text,
                Some((s, _)) if s == "json" => LogFormat::Json,
                Some((s, span)) => {
                    sink.error(
                        &span,
                        "runtime.log_format",
                        format!("unknown log format {s:?}; expected \"text\" or \"json\""),
                    );
                    LogFormat::Text
                }
                None => LogFormat::Text,
            };
            let access_log = r.bool(sink, "access_log", true);
            r.finish(sink);
            Runtime {
                worker_threads,
                shutdown_timeout,
                log_format,
                access_log,
            }
        }
        None => Runtime {
            worker_threads: 0,
            shutdown_timeout: Duration::from_secs(30),
            log_format: LogFormat::Text,
            access_log: true,
        },
    };
    top.finish(sink);

    // Cross-references.
    let upstream_names: Vec<String> = upstreams.iter().map(|u| u.name.clone()).collect();
    crate::service::cross_check(sink, &services, &upstream_names);
    if listeners.is_empty() {
        sink.error(&(0..0), "listener", "at least one [[listener]] is required");
    }
    let mut seen_names: HashMap<&str, &str> = HashMap::new();
    let mut seen_addrs: HashMap<SocketAddr, &str> = HashMap::new();
    for (l, (nspan, aspan, path)) in listeners.iter().zip(&listener_spans) {
        if let Some(first) = seen_names.insert(&l.name, path) {
            sink.error(
                nspan,
                &format!("{path}.name"),
                format!(
                    "duplicate listener name {:?} (first defined in {first})",
                    l.name
                ),
            );
        }
        // Port 0 asks for an ephemeral port: each listener gets its own.
        if l.listen.port() == 0 {
            continue;
        }
        if let Some(first) = seen_addrs.insert(l.listen, path) {
            sink.error(
                aspan,
                &format!("{path}.listen"),
                format!("address {} is already used by {first}", l.listen),
            );
        }
    }
    let mut seen_routes: HashMap<(Option<&str>, Option<&str>, &str), &str> = HashMap::new();
    for (r, rr) in routes.iter().zip(&route_refs) {
        if upstreams.iter().all(|u| u.name != rr.upstream.0) {
            let known: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
            sink.error(
                &rr.upstream.1,
                &format!("{}.upstream", rr.path),
                format!(
                    "unknown upstream {:?}; defined upstreams: {}",
                    rr.upstream.0,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            );
        }
        if let Some((l, span)) = &rr.listener {
            if listeners.iter().all(|x| &x.name != l) {
                sink.error(
                    span,
                    &format!("{}.listener", rr.path),
                    format!("unknown listener {l:?}"),
                );
            }
        }
        let key = (
            r.listener.as_deref(),
            r.host.as_deref(),
            r.path_prefix.as_str(),
        );
        if let Some(first) = seen_routes.insert(key, &rr.path) {
            sink.error(
                &rr.span,
                &rr.path,
                format!("duplicate route: same listener, host and path_prefix as {first}"),
            );
        }
    }

    Config {
        admin,
        listeners,
        routes,
        upstreams,
        services: services.into_iter().map(|p| p.service).collect(),
        runtime,
    }
}

fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map(|(h, _)| &host[..h.len() + 1])
            .unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.contains(':') => h,
        _ => host,
    }
}

pub(crate) fn array_items<'t, 'i>(
    sink: &mut Sink<'_>,
    v: &'t SV<'i>,
    path: &str,
) -> Vec<(usize, &'t SV<'i>)> {
    match v.get_ref() {
        DeValue::Array(items) => items.iter().enumerate().collect(),
        other => {
            sink.error(
                &v.span(),
                path,
                format!(
                    "expected an array (write [[{path}]]), found {}",
                    type_name(other)
                ),
            );
            Vec::new()
        }
    }
}

fn upstream(
    sink: &mut Sink<'_>,
    v: &SV<'_>,
    name: &str,
    path: &str,
    fed_by_service: bool,
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
