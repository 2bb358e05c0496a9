//! `[[route]]`: which upstream serves a request, by listener, host and path.

use std::collections::HashMap;
use std::ops::Range;

use toml::de::DeValue;

use crate::cidr::Cidr;
use crate::diag::Sink;
use crate::listener::Listener;
use crate::read::{array_items, is_token, missing, type_name, Obj};
use crate::upstream::Upstream;

#[derive(Clone, Debug)]
pub struct Route {
    /// `None`: the route applies to every listener.
    pub listener: Option<String>,
    /// Exact host match, lower-cased, port ignored. `None`: any host.
    pub host: Option<String>,
    pub path_prefix: String,
    pub strip_prefix: bool,
    pub upstream: String,
    /// Protocols a client may switch to (`Upgrade`), lower-cased.
    pub upgrade: Vec<String>,
    /// `CONNECT host:port` opens a TCP tunnel to one of the upstream's
    /// servers (HTTP/1.1); without it CONNECT gets 405.
    pub connect: bool,
    /// The route's name in metrics and logs; default `HOST/PREFIX`.
    pub name: String,
    /// `[[rate_limit]]` names, applied in order.
    pub rate_limit: Vec<String>,
    /// Only clients in these networks are served (empty: everyone).
    pub allow: Vec<IpRule>,
    /// Clients in these networks get 403.
    pub deny: Vec<IpRule>,
    /// Request bodies larger than this get 413.
    pub max_body: u64,
    /// Request targets (path and query) longer than this get 414.
    pub max_uri: u64,
    /// A client body that moves no byte for this long gets 408; `None`:
    /// the upstream's `timeouts.body_idle`.
    pub body_timeout: Option<std::time::Duration>,
    /// Headers added to responses that lack them (`security_headers`).
    pub security_headers: Vec<(String, String)>,
    /// Keep the server's `Server` and `X-Powered-By` headers.
    pub keep_server_header: bool,
    /// Cross-origin requests answered at the edge.
    pub cors: Option<Cors>,
    /// `auth = "NAME"`: requests need a token `[jwt.NAME]` verifies.
    pub auth: Option<String>,
    /// `waf = false`: the route skips `[waf]` (default on when `[waf]`
    /// exists).
    pub waf: bool,
}

/// `cors = { origins, methods, headers, max_age, credentials }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cors {
    /// Allowed origins (`scheme://host[:port]`, lower-case), or `*`.
    pub origins: Vec<String>,
    pub methods: Vec<String>,
    /// Request headers a preflight may ask for (lower-case).
    pub headers: Vec<String>,
    pub max_age: std::time::Duration,
    pub credentials: bool,
}

/// The security headers added by default, and their `security_headers`
/// keys.
pub const SECURITY_HEADERS: [(&str, &str, &str); 3] = [
    (
        "x_content_type_options",
        "x-content-type-options",
        "nosniff",
    ),
    ("x_frame_options", "x-frame-options", "DENY"),
    (
        "referrer_policy",
        "referrer-policy",
        "strict-origin-when-cross-origin",
    ),
];

/// An entry of `allow` or `deny`: a network, or `@NAME` of an
/// `[ip_lists.NAME]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpRule {
    Net(Cidr),
    List(String),
}

pub(crate) struct RouteRef {
    upstream: (String, Range<usize>),
    rate_limits: Vec<(String, Range<usize>)>,
    lists: Vec<(String, Range<usize>)>,
    auth: Option<(String, Range<usize>)>,
    listener: Option<(String, Range<usize>)>,
    span: Range<usize>,
    path: String,
}

pub(crate) fn routes(sink: &mut Sink<'_>, top: &mut Obj<'_, '_>) -> (Vec<Route>, Vec<RouteRef>) {
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
            let connect = o.bool(sink, "connect", false);
            if connect && path_prefix != "/" {
                let span = o.get("connect").map(|v| v.span()).unwrap_or(item.span());
                sink.error(
                    &span,
                    &o.child_path("connect"),
                    "a CONNECT target has no path: a route with connect = true matches by host only (no path_prefix)",
                );
            }
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
            let name = o.str(sink, "name").map(|(n, span)| {
                if !crate::read::is_name(&n.replace('/', "")) {
                    sink.error(&span, &o.child_path("name"), format!("{n:?} is not a valid route name: use letters, digits, '-', '_', '.' and '/'"));
                }
                n
            });
            let (rl, rl_spans) = o.str_list(sink, "rate_limit");
            let mut lists = Vec::new();
            let mut rules = |key: &'static str, o: &mut Obj<'_, '_>| {
                let (items, spans) = o.str_list(sink, key);
                let path = o.child_path(key);
                let mut out = Vec::new();
                for (i, (s, span)) in items.iter().zip(&spans).enumerate() {
                    if let Some(list) = s.strip_prefix('@') {
                        lists.push((list.to_string(), span.clone()));
                        out.push(IpRule::List(list.to_string()));
                    } else {
                        out.extend(
                            crate::client_ip::cidrs(
                                sink,
                                std::slice::from_ref(s),
                                std::slice::from_ref(span),
                                &format!("{path}[{i}]"),
                            )
                            .into_iter()
                            .map(IpRule::Net),
                        );
                    }
                }
                out
            };
            let allow = rules("allow", &mut o);
            let deny = rules("deny", &mut o);
            let max_body = o.size(sink, "max_body", 10 * 1024 * 1024);
            let max_uri = o.size(sink, "max_uri", 8 * 1024);
            let body_timeout = o.peek("body_timeout").is_some().then(|| {
                o.duration_min(
                    sink,
                    "body_timeout",
                    std::time::Duration::from_secs(30),
                    std::time::Duration::from_millis(1),
                )
            });
            let security_headers = security_headers(sink, &mut o);
            let keep_server_header = o.bool(sink, "keep_server_header", false);
            let cors = o.sub(sink, "cors").and_then(|c| cors(sink, c));
            let auth = o.str(sink, "auth");
            let waf = o.bool(sink, "waf", true);
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
                    rate_limits: rl.iter().cloned().zip(rl_spans).collect(),
                    lists,
                    auth: auth.clone(),
                    listener: listener.clone(),
                    span: item.span(),
                    path: path.clone(),
                });
                let name = name
                    .unwrap_or_else(|| format!("{}{}", host.as_deref().unwrap_or(""), path_prefix));
                routes.push(Route {
                    name,
                    rate_limit: rl,
                    allow,
                    deny,
                    max_body,
                    max_uri,
                    body_timeout,
                    security_headers,
                    keep_server_header,
                    cors,
                    auth: auth.map(|a| a.0),
                    waf,
                    listener: listener.map(|l| l.0),
                    host,
                    path_prefix,
                    strip_prefix,
                    upstream: up.0,
                    upgrade,
                    connect,
                });
            }
        }
    }
    (routes, route_refs)
}

/// `security_headers`: `false` (none), or a table whose keys
/// (`x_content_type_options`, `x_frame_options`, `referrer_policy`) each
/// take a value or `false`; missing keys keep their default.
fn security_headers(sink: &mut Sink<'_>, o: &mut Obj<'_, '_>) -> Vec<(String, String)> {
    let defaults = || {
        SECURITY_HEADERS
            .iter()
            .map(|(_, n, v)| (n.to_string(), v.to_string()))
            .collect()
    };
    let Some(v) = o.peek("security_headers") else {
        return defaults();
    };
    match v.get_ref() {
        DeValue::Boolean(b) => {
            o.get("security_headers");
            if *b {
                defaults()
            } else {
                Vec::new()
            }
        }
        _ => {
            let Some(mut t) = o.sub(sink, "security_headers") else {
                return defaults();
            };
            let mut out = Vec::new();
            for (key, name, default) in SECURITY_HEADERS {
                match t.peek(key).map(|v| v.get_ref()) {
                    None => out.push((name.to_string(), default.to_string())),
                    Some(DeValue::Boolean(false)) => {
                        t.get(key);
                    }
                    Some(_) => {
                        if let Some((v, span)) = t.str(sink, key) {
                            if http_value_ok(&v) {
                                out.push((name.to_string(), v));
                            } else {
                                sink.error(&span, &t.child_path(key), "not a valid header value");
                            }
                        }
                    }
                }
            }
            t.finish(sink);
            out
        }
    }
}

fn http_value_ok(v: &str) -> bool {
    !v.is_empty() && v.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
}

fn cors(sink: &mut Sink<'_>, mut c: Obj<'_, '_>) -> Option<Cors> {
    let (origins, ospans) = c.str_list(sink, "origins");
    let opath = c.child_path("origins");
    let mut clean = Vec::new();
    for (i, (o, span)) in origins.iter().zip(&ospans).enumerate() {
        let lower = o.to_ascii_lowercase();
        let rest = lower
            .strip_prefix("https://")
            .or_else(|| lower.strip_prefix("http://"));
        let valid = lower == "*"
            || rest.is_some_and(|r| !r.is_empty() && !r.contains(['/', '?', '#', ' ']));
        if !valid {
            sink.error(
                span,
                &format!("{opath}[{i}]"),
                format!("{o:?} is not an origin such as \"https://shop.example\" (scheme and host, no path), or \"*\""),
            );
            continue;
        }
        clean.push(lower);
    }
    if origins.is_empty() {
        let span = c.table.iter().next().map_or(0..0, |(k, _)| k.span());
        sink.error(&span, &opath, "cors needs origins");
    }
    let (methods, mspans) = c.str_list(sink, "methods");
    for (i, (m, span)) in methods.iter().zip(&mspans).enumerate() {
        if !is_token(m) {
            sink.error(
                span,
                &format!("{}[{i}]", c.child_path("methods")),
                format!("{m:?} is not a method"),
            );
        }
    }
    let methods = if methods.is_empty() {
        vec!["GET".into(), "HEAD".into(), "POST".into()]
    } else {
        methods.iter().map(|m| m.to_ascii_uppercase()).collect()
    };
    let (headers, hspans) = c.str_list(sink, "headers");
    for (i, (h, span)) in headers.iter().zip(&hspans).enumerate() {
        if !is_token(h) {
            sink.error(
                span,
                &format!("{}[{i}]", c.child_path("headers")),
                format!("{h:?} is not a header name"),
            );
        }
    }
    let headers = headers.iter().map(|h| h.to_ascii_lowercase()).collect();
    let max_age = c.duration(sink, "max_age", std::time::Duration::from_secs(600));
    let credentials = c.bool(sink, "credentials", false);
    if credentials && clean.iter().any(|o| o == "*") {
        let span = c.peek("credentials").map_or(0..0, |v| v.span());
        sink.error(
            &span,
            &c.child_path("credentials"),
            "credentials cannot go with origins = [\"*\"] (browsers refuse it): list the origins",
        );
    }
    c.finish(sink);
    Some(Cors {
        origins: clean,
        methods,
        headers,
        max_age,
        credentials,
    })
}

/// What routes may name from the shield's sections.
pub(crate) struct Named<'a> {
    pub rate_limits: &'a [crate::rate_limit::RateLimit],
    pub ip_lists: &'a [crate::ip_lists::IpList],
    pub jwts: &'a [crate::jwt::Jwt],
}

/// Routes point at known upstreams and listeners, and none is defined twice.
pub(crate) fn check(
    sink: &mut Sink<'_>,
    routes: &[Route],
    route_refs: &[RouteRef],
    upstreams: &[Upstream],
    listeners: &[Listener],
    shield: Named<'_>,
) {
    let Named {
        rate_limits,
        ip_lists,
        jwts,
    } = shield;
    let mut seen_routes: HashMap<(Option<&str>, Option<&str>, &str), &str> = HashMap::new();
    for (r, rr) in routes.iter().zip(route_refs) {
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
        for (n, span) in &rr.rate_limits {
            if rate_limits.iter().all(|r| &r.name != n) {
                sink.error(
                    span,
                    &format!("{}.rate_limit", rr.path),
                    format!(
                        "unknown rate limit {n:?} (define it with [[rate_limit]] name = {n:?})"
                    ),
                );
            }
        }
        if let Some((a, span)) = &rr.auth {
            if jwts.iter().all(|j| &j.name != a) {
                sink.error(
                    span,
                    &format!("{}.auth", rr.path),
                    format!("unknown [jwt.{a}]"),
                );
            }
        }
        for (n, span) in &rr.rate_limits {
            let jwt_keyed = rate_limits
                .iter()
                .any(|r| &r.name == n && matches!(r.key, crate::rate_limit::RateKey::Jwt(_)));
            if jwt_keyed && rr.auth.is_none() {
                sink.error(
                    span,
                    &format!("{}.rate_limit", rr.path),
                    format!("rate limit {n:?} counts by a JWT claim: the route needs auth"),
                );
            }
        }
        for (n, span) in &rr.lists {
            if ip_lists.iter().all(|l| &l.name != n) {
                sink.error(
                    span,
                    &rr.path,
                    format!("unknown IP list @{n} (define it with [ip_lists.{n}] file = \"…\")"),
                );
            }
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
