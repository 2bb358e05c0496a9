//! Route matching: per listener, exact-host routes before any-host ones,
//! then the longest path prefix (matched at a segment boundary).

use std::sync::Arc;
use std::time::Duration;

use centinela_config::{Listener, PathNormalization, Route};
use centinela_observe::metrics::RequestStats;

#[derive(Clone)]
pub struct CompiledRoute {
    pub host: Option<String>,
    pub prefix: String,
    pub strip_prefix: bool,
    pub upstream: String,
    /// Index into the snapshot's upstream groups.
    pub group: usize,
    /// Protocols clients may switch to on this route (lower-case).
    pub upgrade: Vec<String>,
    /// CONNECT opens a tunnel to a server of the upstream.
    pub connect: bool,
    /// The route's name in metrics and logs.
    pub name: std::sync::Arc<str>,
    /// The shield stage: IP lists and rate limits (`None`: nothing to check).
    pub guard: Option<std::sync::Arc<centinela_shield::Guard>>,
    /// Request bodies over this get 413.
    pub max_body: u64,
    /// Request targets longer than this get 414.
    pub max_uri: u64,
    /// The client body's idle timeout, if the route sets one.
    pub body_timeout: Option<Duration>,
    /// Security headers added to responses that lack them, and the
    /// server's `Server` and `X-Powered-By` dropped.
    pub edge: Option<Arc<crate::http::headers::EdgeHeaders>>,
    pub cors: Option<Arc<CorsPolicy>>,
    /// `[waf]` inspects this route's requests (unless `waf = false`).
    pub waf: bool,
}

/// A route's `cors`, ready to answer with.
#[derive(Debug)]
pub struct CorsPolicy {
    /// `None`: any origin (`*`).
    pub origins: Option<Vec<String>>,
    pub methods: http::HeaderValue,
    /// Methods as listed, upper-case, to check a preflight's.
    pub method_list: Vec<String>,
    pub headers: Option<http::HeaderValue>,
    pub header_list: Vec<String>,
    pub max_age: http::HeaderValue,
    pub credentials: bool,
}

impl CorsPolicy {
    fn new(c: &centinela_config::Cors) -> CorsPolicy {
        let join = |v: &[String]| http::HeaderValue::from_str(&v.join(", ")).ok();
        CorsPolicy {
            origins: (!c.origins.iter().any(|o| o == "*")).then(|| c.origins.clone()),
            methods: join(&c.methods).unwrap_or(http::HeaderValue::from_static("GET")),
            method_list: c.methods.clone(),
            headers: (!c.headers.is_empty()).then(|| join(&c.headers)).flatten(),
            header_list: c.headers.clone(),
            max_age: http::HeaderValue::from(c.max_age.as_secs()),
            credentials: c.credentials,
        }
    }

    /// Is a request from `origin` allowed?
    pub fn allows(&self, origin: &[u8]) -> bool {
        match &self.origins {
            None => true,
            Some(list) => list
                .iter()
                .any(|o| o.as_bytes().eq_ignore_ascii_case(origin)),
        }
    }
}

impl std::fmt::Debug for CompiledRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledRoute")
            .field("name", &self.name)
            .field("upstream", &self.upstream)
            .field("guarded", &self.guard.is_some())
            .finish()
    }
}

/// One listener's routes and the request rules they are matched under.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<CompiledRoute>,
    pub normalization: PathNormalization,
    /// Responses of this listener, by upstream group index; the last entry
    /// counts those with no upstream (no route, refused requests). `None`
    /// for groups no route of this listener leads to.
    pub stats: Box<[Option<Arc<RequestStats>>]>,
    /// `X-Forwarded-Proto`: `https` on a TLS listener.
    pub proto: &'static str,
    /// `Strict-Transport-Security` added to responses (TLS listeners).
    pub hsts: Option<http::HeaderValue>,
    /// `redirect_https`: `Some(port named in the config, if any)`.
    pub redirect_https: Option<Option<u16>>,
}

impl RouteTable {
    /// Routes of one listener, most specific first.
    /// `stats(Some(group))` gives the counters of responses from that
    /// group, `stats(None)` those without one; `groups` is their number.
    pub fn for_listener(
        listener: &Listener,
        routes: &[Route],
        group_index: impl Fn(&str) -> usize,
        groups: usize,
        mut stats: impl FnMut(Option<usize>) -> Arc<RequestStats>,
        guard: impl Fn(&Route, usize) -> Option<Arc<centinela_shield::Guard>>,
    ) -> Self {
        let mut routes: Vec<CompiledRoute> = routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.listener.as_deref().is_none_or(|l| l == listener.name))
            .map(|(i, r)| CompiledRoute {
                name: r.name.as_str().into(),
                guard: guard(r, i),
                max_body: r.max_body,
                max_uri: r.max_uri,
                waf: r.waf,
                body_timeout: r.body_timeout,
                edge: crate::http::headers::EdgeHeaders::new(
                    r.security_headers
                        .iter()
                        .filter_map(|(n, v)| {
                            Some((
                                http::HeaderName::from_bytes(n.as_bytes()).ok()?,
                                http::HeaderValue::from_str(v).ok()?,
                            ))
                        })
                        .collect(),
                    !r.keep_server_header,
                )
                .map(Arc::new),
                cors: r.cors.as_ref().map(|c| Arc::new(CorsPolicy::new(c))),
                host: r.host.clone(),
                prefix: r.path_prefix.clone(),
                strip_prefix: r.strip_prefix,
                upstream: r.upstream.clone(),
                group: group_index(&r.upstream),
                upgrade: r.upgrade.clone(),
                connect: r.connect,
            })
            .collect();
        routes.sort_by(|a, b| {
            b.host
                .is_some()
                .cmp(&a.host.is_some())
                .then(b.prefix.len().cmp(&a.prefix.len()))
        });
        let mut by_group: Vec<Option<Arc<RequestStats>>> = vec![None; groups + 1];
        for r in &routes {
            if by_group[r.group].is_none() {
                by_group[r.group] = Some(stats(Some(r.group)));
            }
        }
        by_group[groups] = Some(stats(None));
        RouteTable {
            routes,
            normalization: listener.path_normalization,
            stats: by_group.into(),
            proto: if listener.tls.is_some() {
                "https"
            } else {
                "http"
            },
            hsts: listener
                .hsts
                .as_deref()
                .and_then(|v| http::HeaderValue::from_str(v).ok()),
            redirect_https: listener.redirect_https.then_some(listener.https_port),
        }
    }

    /// Counts one response: to upstream group `group`, or with none.
    #[inline]
    pub fn record(&self, group: Option<usize>, status: u16, took: Duration) {
        let last = self.stats.len() - 1;
        if let Some(Some(s)) = self.stats.get(group.unwrap_or(last)) {
            s.record(status, took);
        }
    }

    pub fn routes(&self) -> &[CompiledRoute] {
        &self.routes
    }

    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&CompiledRoute> {
        self.routes.iter().find(|r| {
            let host_ok = match (&r.host, host) {
                (None, _) => true,
                (Some(want), Some(got)) => want.eq_ignore_ascii_case(got),
                (Some(_), None) => false,
            };
            host_ok && prefix_matches(&r.prefix, path)
        })
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'),
        None => false,
    }
}

/// The path sent upstream when the prefix is stripped.
pub fn strip(prefix: &str, path: &str) -> String {
    let rest = path
        .strip_prefix(prefix.trim_end_matches('/'))
        .unwrap_or(path);
    if rest.starts_with('/') {
        rest.to_string()
    } else {
        format!("/{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(listener: Option<&str>, host: Option<&str>, prefix: &str, up: &str) -> Route {
        Route {
            listener: listener.map(Into::into),
            host: host.map(Into::into),
            path_prefix: prefix.into(),
            strip_prefix: false,
            upstream: up.into(),
            upgrade: vec!["websocket".into()],
            connect: false,
            name: prefix.into(),
            rate_limit: Vec::new(),
            allow: Vec::new(),
            deny: Vec::new(),
            max_body: 1 << 20,
            max_uri: 8192,
            body_timeout: None,
            security_headers: Vec::new(),
            keep_server_header: false,
            cors: None,
            auth: None,
            waf: true,
        }
    }

    fn listener(name: &str) -> Listener {
        Listener {
            name: name.into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            header_timeout: std::time::Duration::from_secs(30),
            path_normalization: PathNormalization::Strict,
            max_connections: 10,
            write_timeout: std::time::Duration::from_secs(30),
            h2_ping_interval: std::time::Duration::from_secs(20),
            h2_ping_timeout: std::time::Duration::from_secs(20),
            tls: None,
            hsts: None,
            redirect_https: false,
            https_port: None,
            proxy_protocol: false,
        }
    }

    #[test]
    fn longest_prefix_and_host_preference() {
        let routes = vec![
            r(None, None, "/", "root"),
            r(None, None, "/api", "api"),
            r(None, None, "/api/v2", "v2"),
            r(None, Some("admin.example.com"), "/", "admin"),
            r(Some("other"), None, "/api/v2/x", "other"),
        ];
        let web = listener("web");
        let t =
            RouteTable::for_listener(&web, &routes, |_| 0, 1, |_| Default::default(), |_, _| None);
        let up = |h: Option<&str>, p: &str| t.find(h, p).map(|r| r.upstream.clone());
        assert_eq!(up(None, "/api/v2/items").as_deref(), Some("v2"));
        assert_eq!(up(None, "/api/x").as_deref(), Some("api"));
        assert_eq!(up(None, "/api").as_deref(), Some("api"));
        assert_eq!(up(None, "/apix").as_deref(), Some("root"));
        assert_eq!(
            up(Some("ADMIN.example.com"), "/api").as_deref(),
            Some("admin")
        );
        // Routes of another listener are not used.
        assert_eq!(up(None, "/api/v2/x").as_deref(), Some("v2"));
        let only_api = RouteTable::for_listener(
            &web,
            &routes[1..2],
            |_| 0,
            1,
            |_| Default::default(),
            |_, _| None,
        );
        assert!(only_api.find(None, "/other").is_none());
    }

    #[test]
    fn strip_prefixes() {
        assert_eq!(strip("/api", "/api/items?x"), "/items?x");
        assert_eq!(strip("/api", "/api"), "/");
        assert_eq!(strip("/api/", "/api/items"), "/items");
    }
}
