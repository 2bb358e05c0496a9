//! `[[listener]]`: the addresses clients connect to, and how strictly each
//! one reads them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use crate::diag::Sink;
use crate::read::{array_items, missing, Obj};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    pub listen: SocketAddr,
    /// How long a client may take to send a request head; an idle
    /// keep-alive connection is closed after it too.
    pub header_timeout: Duration,
    /// How request paths are normalized before routing and forwarding.
    pub path_normalization: PathNormalization,
    /// Open client connections at most; past it, accepts pause.
    pub max_connections: u32,
    /// How long a write to a client may wait for the client to read.
    pub write_timeout: Duration,
    /// HTTP/2: a PING this often while the connection is open...
    pub h2_ping_interval: Duration,
    /// ...and the connection closed when its ACK takes longer than this.
    pub h2_ping_timeout: Duration,
    /// `tls = { cert, key }` or `{ certs = [...] }`: HTTPS on this address.
    pub tls: Option<ServerSettings>,
    /// The `Strict-Transport-Security` value added to responses of a TLS
    /// listener (`hsts`: default `max-age=31536000`; `false`: none).
    pub hsts: Option<String>,
    /// `redirect_https = true`: every request gets 308 to the same URL over
    /// https, except `/.well-known/acme-challenge/`, which is routed.
    pub redirect_https: bool,
    /// The port the redirect names; default: the first TLS listener's.
    pub https_port: Option<u16>,
    /// Connections from `[client_ip] trusted_proxies` start with a PROXY
    /// protocol header (v1 or v2) naming the client.
    pub proxy_protocol: bool,
}

pub use centinela_tls::server::{CertFiles, ServerSettings};

/// The default `Strict-Transport-Security`: one year.
pub const HSTS_DEFAULT: &str = "max-age=31536000";

/// `[[listener]] path_normalization`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathNormalization {
    /// Dot segments removed (RFC 3986 §5.2.4), percent-encoded unreserved
    /// characters decoded; `%2F`, `%5C`, `\` and `%00` refused.
    Strict,
    /// Paths are routed and forwarded as sent.
    Off,
}

/// A parsed listener plus the spans of its name and address.
pub(crate) struct Spans {
    name: Range<usize>,
    listen: Range<usize>,
    path: String,
}

pub(crate) fn listeners(
    sink: &mut Sink<'_>,
    top: &mut Obj<'_, '_>,
    base_dir: &Path,
) -> (Vec<Listener>, Vec<Spans>) {
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
            let h2_ping_interval = o.duration_min(
                sink,
                "h2_ping_interval",
                Duration::from_secs(20),
                Duration::from_millis(100),
            );
            let h2_ping_timeout = o.duration_min(
                sink,
                "h2_ping_timeout",
                Duration::from_secs(20),
                Duration::from_millis(100),
            );
            let tls = o.sub(sink, "tls").and_then(|t| tls(sink, t, base_dir));
            let hsts = match o.get("hsts") {
                None => tls.is_some().then(|| HSTS_DEFAULT.to_string()),
                Some(v) => match v.get_ref() {
                    toml::de::DeValue::Boolean(true) => Some(HSTS_DEFAULT.to_string()),
                    toml::de::DeValue::Boolean(false) => None,
                    toml::de::DeValue::String(s) if hsts_ok(s) => Some(s.to_string()),
                    _ => {
                        sink.error(
                            &v.span(),
                            &o.child_path("hsts"),
                            "expected true, false or a Strict-Transport-Security value such as \"max-age=63072000; includeSubDomains\"",
                        );
                        None
                    }
                },
            };
            if let (Some(v), None) = (o.peek("hsts"), &tls) {
                sink.error(
                    &v.span(),
                    &o.child_path("hsts"),
                    "hsts needs tls on this listener (browsers ignore it over plain HTTP)",
                );
            }
            let redirect_https = o.bool(sink, "redirect_https", false);
            if redirect_https && tls.is_some() {
                let span = o.peek("redirect_https").map_or(0..0, |v| v.span());
                sink.error(
                    &span,
                    &o.child_path("redirect_https"),
                    "redirect_https is for a plain listener that sends clients to a TLS one; this listener has tls",
                );
            }
            let https_port = o
                .get("https_port")
                .is_some()
                .then(|| o.int(sink, "https_port", 443, 1, 65_535) as u16);
            let proxy_protocol = o.bool(sink, "proxy_protocol", false);
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
                listener_spans.push(Spans {
                    name: nspan,
                    listen: aspan,
                    path,
                });
                listeners.push(Listener {
                    name,
                    listen: addr,
                    header_timeout,
                    path_normalization,
                    max_connections,
                    write_timeout,
                    h2_ping_interval,
                    h2_ping_timeout,
                    tls,
                    hsts,
                    redirect_https,
                    https_port,
                    proxy_protocol,
                });
            }
        }
    }
    (listeners, listener_spans)
}

/// A listener's `tls` table: one `cert` and `key`, or `certs`, a list of
/// them (the first is the default; the others are chosen by SNI), and
/// `min_version`. Each pair is loaded and checked now (`check`): the key
/// matches its certificate; an incomplete chain, an expiry within 14 days
/// and a key file others can read are warnings.
fn tls(sink: &mut Sink<'_>, mut t: Obj<'_, '_>, base_dir: &Path) -> Option<ServerSettings> {
    let mut pairs = Vec::new();
    let one = pair(sink, &mut t, base_dir);
    let list = t.get("certs");
    let list_path = t.child_path("certs");
    if let Some(v) = list {
        for (i, item) in array_items(sink, v, &list_path) {
            let Some(mut o) = Obj::new(sink, item, &format!("{list_path}[{i}]")) else {
                continue;
            };
            match pair(sink, &mut o, base_dir) {
                Some(p) => pairs.push(p),
                None if o.peek("cert").is_none() || o.peek("key").is_none() => sink.error(
                    &item.span(),
                    &o.path,
                    "each entry of certs needs cert and key",
                ),
                None => {}
            }
            o.finish(sink);
        }
    }
    let tls13_only = match t.str(sink, "min_version") {
        None => false,
        Some((v, _)) if v == "1.2" => false,
        Some((v, _)) if v == "1.3" => true,
        Some((v, span)) => {
            sink.error(
                &span,
                &t.child_path("min_version"),
                format!("unknown TLS version {v:?}; expected \"1.2\" or \"1.3\" (older versions are not offered)"),
            );
            false
        }
    };
    let has_one = t.peek("cert").is_some() || t.peek("key").is_some();
    let span = t.table.iter().next().map_or(0..0, |(k, _)| k.span());
    let path = t.path.clone();
    t.finish(sink);
    match (one, list.is_some(), has_one) {
        (Some(p), false, _) => pairs.insert(0, p),
        (_, true, true) => {
            sink.error(&span, &path, "give either cert and key, or certs, not both");
            return None;
        }
        (None, false, false) => {
            sink.error(
                &span,
                &path,
                "tls needs cert and key (or certs = [{ cert, key }, ...])",
            );
            return None;
        }
        _ => {}
    }
    if pairs.is_empty() {
        return None;
    }
    Some(ServerSettings {
        certs: pairs,
        tls13_only,
    })
}

/// `cert` and `key` of one table, checked together.
fn pair(sink: &mut Sink<'_>, o: &mut Obj<'_, '_>, base_dir: &Path) -> Option<CertFiles> {
    let cert = o.str(sink, "cert");
    let key = o.str(sink, "key");
    match (cert, key) {
        (Some((c, cspan)), Some((k, _))) => {
            let files = CertFiles {
                cert: base_dir.join(c),
                key: base_dir.join(k),
            };
            let report = centinela_tls::server::inspect(&files, std::time::SystemTime::now(), 14);
            for e in &report.errors {
                sink.error(&cspan, &o.child_path("cert"), e.clone());
            }
            for w in report.warnings {
                sink.warn(&cspan, &o.child_path("cert"), w);
            }
            report.errors.is_empty().then_some(files)
        }
        (Some((_, span)), None) => {
            sink.error(&span, &o.path, "cert needs key");
            None
        }
        (None, Some((_, span))) => {
            sink.error(&span, &o.path, "key needs cert");
            None
        }
        (None, None) => None,
    }
}

/// A `Strict-Transport-Security` value: `max-age=N` first, then any of the
/// known directives.
fn hsts_ok(v: &str) -> bool {
    let mut parts = v.split(';').map(str::trim);
    let age = parts
        .next()
        .and_then(|p| p.strip_prefix("max-age="))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    age && parts
        .all(|p| p.eq_ignore_ascii_case("includeSubDomains") || p.eq_ignore_ascii_case("preload"))
}

/// At least one listener; names and addresses used once.
pub(crate) fn check(sink: &mut Sink<'_>, listeners: &[Listener], spans: &[Spans]) {
    if listeners.is_empty() {
        sink.error(&(0..0), "listener", "at least one [[listener]] is required");
    }
    let mut seen_names: HashMap<&str, &str> = HashMap::new();
    let mut seen_addrs: HashMap<SocketAddr, &str> = HashMap::new();
    for (
        l,
        Spans {
            name: nspan,
            listen: aspan,
            path,
        },
    ) in listeners.iter().zip(spans)
    {
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
}
