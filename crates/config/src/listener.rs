//! `[[listener]]`: the addresses clients connect to, and how strictly each
//! one reads them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
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
}

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

pub(crate) fn listeners(sink: &mut Sink<'_>, top: &mut Obj<'_, '_>) -> (Vec<Listener>, Vec<Spans>) {
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
                });
            }
        }
    }
    (listeners, listener_spans)
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
