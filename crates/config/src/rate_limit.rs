//! `[[rate_limit]]`: named limits that routes apply with `rate_limit =
//! ["NAME", …]`. See `docs/config.md` and `centinela-shield`'s `rate.rs`
//! for the exact semantics.

use std::ops::Range;
use std::time::Duration;

use crate::diag::Sink;
use crate::read::{array_items, missing, Obj};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub name: String,
    pub key: RateKey,
    /// Requests allowed in any `window`...
    pub limit: u32,
    pub window: Duration,
    /// ...plus this many.
    pub burst: u32,
    /// Keys tracked at most; past it the least recently seen are forgotten.
    pub max_keys: u32,
}

/// What a limit counts by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// The client's address (the real one: see `[client_ip]`).
    ClientIp,
    /// A request header's value, lower-cased name; requests without it
    /// share one count.
    Header(String),
    /// A claim of the request's verified JWT (a route with `auth`).
    Jwt(String),
    /// One count for each route the limit is on.
    Route,
}

pub(crate) fn rate_limits(
    sink: &mut Sink<'_>,
    top: &mut Obj<'_, '_>,
) -> (Vec<RateLimit>, Vec<Range<usize>>) {
    let mut out: Vec<RateLimit> = Vec::new();
    let mut spans = Vec::new();
    let Some(v) = top.get("rate_limit") else {
        return (out, spans);
    };
    for (i, item) in array_items(sink, v, "rate_limit") {
        let path = format!("rate_limit[{i}]");
        let Some(mut o) = Obj::new(sink, item, &path) else {
            continue;
        };
        let name = o.item_name(sink, &item.span(), "rate limit", |n| {
            out.iter().any(|r| r.name == n)
        });
        let key = match o.str(sink, "key") {
            None => {
                missing(sink, &item.span(), &path, "key");
                None
            }
            Some((k, span)) => match parse_key(&k) {
                Ok(k) => Some(k),
                Err(e) => {
                    sink.error(&span, &o.child_path("key"), e);
                    None
                }
            },
        };
        if o.peek("limit").is_none() {
            missing(sink, &item.span(), &path, "limit");
        }
        let limit = o.int(sink, "limit", 1, 1, 1_000_000_000) as u32;
        if o.peek("window").is_none() {
            missing(sink, &item.span(), &path, "window");
        }
        let window = o.duration_min(
            sink,
            "window",
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        if window > Duration::from_secs(86_400) {
            let span = o.peek("window").map_or(0..0, |v| v.span());
            sink.error(&span, &o.child_path("window"), "at most 24h");
        }
        let burst = o.int(sink, "burst", 0, 0, 1_000_000_000) as u32;
        let max_keys = o.int(sink, "max_keys", 1_000_000, 1, 100_000_000) as u32;
        o.finish(sink);
        if let (Some(name), Some(key)) = (name, key) {
            spans.push(item.span());
            out.push(RateLimit {
                name,
                key,
                limit,
                window,
                burst,
                max_keys,
            });
        }
    }
    (out, spans)
}

fn parse_key(k: &str) -> Result<RateKey, String> {
    let bad = || {
        format!("unknown key {k:?}; expected \"client_ip\", \"header:NAME\", \"jwt:CLAIM\" or \"route\"")
    };
    match k.split_once(':') {
        None if k == "client_ip" => Ok(RateKey::ClientIp),
        None if k == "route" => Ok(RateKey::Route),
        Some(("header", n)) if crate::read::is_token(n) => {
            Ok(RateKey::Header(n.to_ascii_lowercase()))
        }
        Some(("jwt", c)) if !c.is_empty() => Ok(RateKey::Jwt(c.to_string())),
        _ => Err(bad()),
    }
}
