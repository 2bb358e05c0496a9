//! The gateway's metrics, read from the counters the data plane feeds
//! (route tables' response counters, upstream limiters, retry budgets,
//! servers) when `GET /metrics` is served. Names and labels are part of
//! centinela's interface: see `docs/observe.md`.

use centinela_observe::metrics::{HistogramSnapshot, LATENCY_BOUNDS};
use centinela_observe::{
    Collect, Exposition, Figures, Kind, ServerFigures, Source, UpstreamFigures,
};

use crate::proxy::Shared;

/// The states of `centinela_upstream_server_state`.
const STATES: [&str; 5] = ["up", "down", "ejected", "breaker_open", "draining"];

impl Collect for Shared {
    fn collect(&self, out: &mut Exposition) {
        let snap = self.snapshot.load();
        let mut listeners: Vec<_> = snap.routes.iter().collect();
        listeners.sort_by(|a, b| a.0.cmp(b.0));
        // (listener, upstream, counters), in a stable order.
        let mut stats = Vec::new();
        for (listener, table) in &listeners {
            let last = table.stats.len() - 1;
            for (i, s) in table.stats.iter().enumerate() {
                if let Some(s) = s {
                    let up = if i == last { "" } else { &*snap.groups[i].name };
                    stats.push((listener.as_str(), up, s));
                }
            }
        }

        out.family(
            "centinela_http_requests",
            "Responses sent to clients, by listener, upstream (\"\" without one) and status code.",
            Kind::Counter,
        );
        for (l, u, s) in &stats {
            for (code, n) in s.codes() {
                let code = code.to_string();
                out.counter(&[("listener", l), ("upstream", u), ("code", &code)], n);
            }
        }
        out.family(
            "centinela_http_request_duration_seconds",
            "Time from the request head to the response head, by listener and upstream.",
            Kind::Histogram,
        );
        for (l, u, s) in &stats {
            out.histogram(&[("listener", l), ("upstream", u)], &s.duration.snapshot());
        }

        let groups = &snap.groups;
        out.family(
            "centinela_upstream_in_flight",
            "Requests admitted to the upstream and not finished (their response body included).",
            Kind::Gauge,
        );
        for g in groups {
            out.gauge(&[("upstream", &g.name)], g.limiter.in_use() as f64);
        }
        out.family(
            "centinela_upstream_max_in_flight",
            "The upstream's limits.max_in_flight.",
            Kind::Gauge,
        );
        for g in groups {
            out.gauge(&[("upstream", &g.name)], g.limiter.max() as f64);
        }
        out.family(
            "centinela_upstream_queue_depth",
            "Requests waiting for a slot of the upstream.",
            Kind::Gauge,
        );
        for g in groups {
            out.gauge(&[("upstream", &g.name)], g.limiter.queued() as f64);
        }
        out.family(
            "centinela_upstream_retries",
            "Retries sent to the upstream.",
            Kind::Counter,
        );
        for g in groups {
            out.counter(&[("upstream", &g.name)], g.budget.retries.get());
        }
        out.family(
            "centinela_upstream_retry_budget_exhausted",
            "Retries not sent because the upstream's retry budget was spent.",
            Kind::Counter,
        );
        for g in groups {
            out.counter(&[("upstream", &g.name)], g.budget.exhausted.get());
        }

        // Servers: those of the upstreams, then supervised ones draining.
        let mut servers = Vec::new();
        for g in groups {
            for s in &g.servers {
                let st = s.status(&g.name, &g.cfg.breaker);
                servers.push((g.name.clone(), s.label().clone(), Some(st)));
            }
        }
        {
            let d = self.draining.lock().unwrap_or_else(|p| p.into_inner());
            let mut draining: Vec<_> = d
                .iter()
                .filter(|(_, w)| w.strong_count() > 0)
                .map(|((u, a), _)| (u.clone(), a.to_string()))
                .collect();
            draining.sort();
            for (u, a) in draining {
                servers.push((u.as_str().into(), a.as_str().into(), None));
            }
        }
        out.family(
            "centinela_upstream_server_up",
            "1 when the server takes traffic: up by health checks, not ejected, breaker closed.",
            Kind::Gauge,
        );
        for (u, a, st) in &servers {
            let up = st.as_ref().is_some_and(|s| s.state() == "up");
            out.gauge(&[("upstream", u), ("server", a)], f64::from(u8::from(up)));
        }
        out.family(
            "centinela_upstream_server_state",
            "1 for the server's current state among up, down, ejected, breaker_open, draining.",
            Kind::Gauge,
        );
        for (u, a, st) in &servers {
            let now = st.as_ref().map_or("draining", |s| s.state());
            for state in STATES {
                out.gauge(
                    &[("upstream", u), ("server", a), ("state", state)],
                    f64::from(u8::from(state == now)),
                );
            }
        }
        out.family(
            "centinela_upstream_server_in_flight",
            "Attempts in flight to the server.",
            Kind::Gauge,
        );
        for (u, a, st) in &servers {
            if let Some(st) = st {
                out.gauge(&[("upstream", u), ("server", a)], st.in_flight as f64);
            }
        }
        out.family(
            "centinela_upstream_ejections",
            "Times outlier detection ejected the server.",
            Kind::Counter,
        );
        for (u, a, st) in &servers {
            if let Some(st) = st {
                out.counter(&[("upstream", u), ("server", a)], st.ejections);
            }
        }
        out.family(
            "centinela_upstream_breaker_transitions",
            "Circuit breaker state changes of the server, by the state entered.",
            Kind::Counter,
        );
        for (u, a, st) in &servers {
            if let Some(st) = st {
                for (to, n) in st.breaker_transitions {
                    out.counter(&[("upstream", u), ("server", a), ("to", to)], n);
                }
            }
        }
        if let Some(shield) = &snap.shield {
            let (limited, ip) = shield.refusals();
            out.family(
                "centinela_rate_limited",
                "Requests refused with 429 by a rate limit, by limit and route.",
                Kind::Counter,
            );
            for (l, r, n) in &limited {
                out.counter(&[("limit", l), ("route", r)], *n);
            }
            out.family(
                "centinela_refused",
                "Requests the shield refused, by route and reason (ip_denied: 403 by allow/deny; rate_limited: 429).",
                Kind::Counter,
            );
            for (r, n) in &ip {
                out.counter(&[("route", r), ("reason", "ip_denied")], *n);
            }
            for (r, n) in shield.unauthorized() {
                out.counter(&[("route", &r), ("reason", "unauthorized")], n);
            }
            let mut by_route: std::collections::BTreeMap<&str, u64> = Default::default();
            for (_, r, n) in &limited {
                *by_route.entry(r).or_default() += n;
            }
            for (r, n) in by_route {
                out.counter(&[("route", r), ("reason", "rate_limited")], n);
            }
            out.family(
                "centinela_rate_limit_keys",
                "Keys a rate limit tracks now (bounded by its max_keys).",
                Kind::Gauge,
            );
            for (l, n) in shield.keys() {
                out.gauge(&[("limit", &l)], n as f64);
            }
            let auths = shield.auth_counts();
            out.family(
                "centinela_jwt_verified",
                "Tokens a [jwt.NAME] verified.",
                Kind::Counter,
            );
            for (j, ok, _, _) in &auths {
                out.counter(&[("jwt", j)], *ok);
            }
            out.family(
                "centinela_jwt_refused",
                "Requests a [jwt.NAME] refused (no token, or one that did not verify).",
                Kind::Counter,
            );
            for (j, _, bad, _) in &auths {
                out.counter(&[("jwt", j)], *bad);
            }
            out.family(
                "centinela_jwt_keys",
                "Keys a [jwt.NAME] holds now.",
                Kind::Gauge,
            );
            for (j, _, _, keys) in &auths {
                out.gauge(&[("jwt", j)], *keys as f64);
            }
            out.family(
                "centinela_ip_list_networks",
                "Networks in an [ip_lists.NAME] file, as last read.",
                Kind::Gauge,
            );
            for (l, n) in shield.list_sizes() {
                out.gauge(&[("list", &l)], n as f64);
            }
        }
        if let Some(w) = &snap.waf {
            out.family(
                "centinela_waf_requests",
                "Requests the WAF inspected, by action (pass; block: refused; detect: would have been refused, in detect mode).",
                Kind::Counter,
            );
            for (a, n) in w.requests() {
                out.counter(&[("action", a)], n);
            }
            out.family(
                "centinela_waf_rule_matches",
                "Times a WAF rule matched (and logged), by rule id.",
                Kind::Counter,
            );
            for (r, n) in w.rule_matches() {
                out.counter(&[("rule", &r.to_string())], n);
            }
            out.family(
                "centinela_waf_body_truncated",
                "Request bodies longer than [waf] inspect_body: only their start was inspected.",
                Kind::Counter,
            );
            out.counter(&[], w.truncated());
        }
        let handshakes = self.tls.handshakes.get();
        out.family(
            "centinela_tls_handshakes",
            "TLS handshakes completed by clients of the listener.",
            Kind::Counter,
        );
        for (l, [ok, _]) in &handshakes {
            out.counter(&[("listener", l)], *ok);
        }
        out.family(
            "centinela_tls_handshake_failures",
            "TLS handshakes that failed or timed out (header_timeout), by listener.",
            Kind::Counter,
        );
        for (l, [_, failed]) in &handshakes {
            out.counter(&[("listener", l)], *failed);
        }
        let reloads = self.tls.reloads.get();
        out.family(
            "centinela_tls_certificate_reloads",
            "Certificate reloads after their files changed, by listener and result (error: the certificates in use were kept).",
            Kind::Counter,
        );
        for (l, [ok, failed]) in &reloads {
            out.counter(&[("listener", l), ("result", "ok")], *ok);
            out.counter(&[("listener", l), ("result", "error")], *failed);
        }
        out.family(
            "centinela_access_log_dropped",
            "Access log lines dropped because the log's output could not keep up (never waited for).",
            Kind::Counter,
        );
        out.counter(&[], crate::access::dropped());
    }
}

/// Once a second, for alerts and history: per upstream, its responses over
/// every listener, their latency, and its servers' states.
impl Source for Shared {
    fn figures(&self, out: &mut Figures) {
        let snap = self.snapshot.load();
        for (i, g) in snap.groups.iter().enumerate() {
            let mut f = UpstreamFigures {
                name: g.name.to_string(),
                requests: 0,
                errors: 0,
                latency: HistogramSnapshot::empty(LATENCY_BOUNDS),
                error_latency: HistogramSnapshot::empty(LATENCY_BOUNDS),
                servers: g
                    .servers
                    .iter()
                    .map(|s| ServerFigures {
                        name: s.label().to_string(),
                        state: s.status(&g.name, &g.cfg.breaker).state(),
                    })
                    .collect(),
                in_flight: u64::from(g.limiter.in_use()),
                max_in_flight: u64::from(g.limiter.max()),
                queued: g.limiter.queued() as u64,
            };
            for table in snap.routes.values() {
                if let Some(Some(s)) = table.stats.get(i) {
                    let (all, errors) = s.totals();
                    f.requests += all;
                    f.errors += errors;
                    f.latency.merge(&s.duration.snapshot());
                    f.error_latency.merge(&s.error_duration.snapshot());
                }
            }
            out.upstreams.push(f);
        }
    }
}
