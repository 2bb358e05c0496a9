//! Stage **waf** of the request path: `[waf]`'s rules (`centinela-waf`)
//! over a request's head and the first `inspect_body` bytes of its body.
//! A refused request gets 403 (or the rule's `status`) with the JSON
//! error; one line names the matched rules, the variables and the anomaly
//! score, never a value. Counted in `centinela_waf_requests_total{action}`
//! and `centinela_waf_rule_matches_total{rule}`. With `inspect_response`,
//! the response's head and the first `inspect_body` bytes of a text body
//! go through phases 3 and 4 too, before anything is sent to the client.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use centinela_config::waf::{Waf as WafConfig, WafMode};
use centinela_waf::{Exclusion, Outcome, Request, Response, Settings, State, Waf};
use http::HeaderValue;
use tracing::warn;

use crate::error::ProxyError;

pub struct WafStage {
    waf: Waf,
    /// The section it was built from.
    pub source: WafConfig,
    pub inspect_body: u64,
    /// Requests by outcome: passed, blocked, detected (would have been
    /// blocked, in detect mode).
    passed: AtomicU64,
    blocked: AtomicU64,
    detected: AtomicU64,
    /// Bodies longer than `inspect_body`: only their start was inspected.
    truncated: AtomicU64,
    matches: Mutex<BTreeMap<u32, u64>>,
}

impl std::fmt::Debug for WafStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WafStage")
            .field("rules", &self.source.rules)
            .finish_non_exhaustive()
    }
}

impl WafStage {
    /// Loads and compiles `[waf]`'s rules.
    pub fn build(cfg: &WafConfig) -> Result<WafStage, String> {
        let files = centinela_waf::files(&cfg.rules).map_err(|e| e.to_string())?;
        let set = centinela_waf::load(&files).map_err(|e| e.to_string())?;
        let exclusions = cfg
            .exclusions
            .iter()
            .map(|x| {
                let target = match &x.target {
                    Some(t) => Some(
                        centinela_waf::rule::parse_targets(t)
                            .map_err(|e| format!("waf.exclusion target {t:?}: {e}"))?
                            .remove(0),
                    ),
                    None => None,
                };
                Ok(Exclusion {
                    rule: x.rule,
                    path_prefix: x.path_prefix.clone(),
                    target,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let settings = Settings {
            detect_only: cfg.mode == WafMode::Detect,
            paranoia: cfg.paranoia,
            anomaly_threshold: cfg.anomaly_threshold,
            exclusions,
            inspect_response: cfg.inspect_response,
        };
        Ok(WafStage {
            waf: Waf::new(set, settings),
            source: cfg.clone(),
            inspect_body: cfg.inspect_body,
            passed: AtomicU64::new(0),
            blocked: AtomicU64::new(0),
            detected: AtomicU64::new(0),
            truncated: AtomicU64::new(0),
            matches: Mutex::new(BTreeMap::new()),
        })
    }

    /// Inspects a request: `Err` when it is refused; else what its
    /// response's phases start from, when responses are inspected.
    #[allow(clippy::too_many_arguments)]
    pub fn check(
        &self,
        parts: &http::request::Parts,
        raw_target: &[u8],
        body: &[u8],
        body_truncated: bool,
        client: IpAddr,
        request_id: &HeaderValue,
        route: &str,
    ) -> Result<Option<Box<State>>, ProxyError> {
        if body_truncated {
            self.truncated.fetch_add(1, Ordering::Relaxed);
        }
        let mut out = request(
            parts,
            raw_target,
            body,
            body_truncated,
            client,
            request_id,
            |r| self.waf.inspect(r),
        );
        let state = out.state.take();
        // Counted as passed once its response passes too, when it has
        // response phases.
        self.decide(out, request_id, route, "request", state.is_none())
            .map(|()| state)
    }

    /// Are responses inspected (phases 3 and 4)?
    pub fn inspects_responses(&self) -> bool {
        self.waf.inspects_responses()
    }

    /// Inspects a response (its head, and `body`: the first
    /// `inspect_body` bytes of a text body, else nothing): `Err` when it is
    /// refused, and the client gets the refusal instead.
    #[allow(clippy::too_many_arguments)]
    pub fn check_response(
        &self,
        parts: &http::request::Parts,
        raw_target: &[u8],
        client: IpAddr,
        request_id: &HeaderValue,
        route: &str,
        state: &State,
        resp: &http::response::Parts,
        body: &[u8],
    ) -> Result<(), ProxyError> {
        let headers: Vec<(&[u8], &[u8])> = resp
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
            .collect();
        let r = Response {
            status: resp.status.as_u16(),
            protocol: b"HTTP/1.1",
            headers,
            body,
        };
        let out = request(parts, raw_target, b"", false, client, request_id, |req| {
            self.waf.inspect_response(req, state, &r)
        });
        self.decide(out, request_id, route, "response", true)
    }

    /// Counts an outcome and logs a refusal.
    fn decide(
        &self,
        out: Outcome,
        request_id: &HeaderValue,
        route: &str,
        what: &'static str,
        count_pass: bool,
    ) -> Result<(), ProxyError> {
        if !out.matched.is_empty() {
            let mut m = self.matches.lock().unwrap_or_else(|p| p.into_inner());
            for r in &out.matched {
                *m.entry(r.id).or_default() += 1;
            }
        }
        let Some(deciding) = out.disruptive_rule else {
            if count_pass {
                self.passed.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(());
        };
        // Rule ids and variable names only: a value may be a cookie or a
        // token.
        let rules: Vec<String> = out
            .matched
            .iter()
            .filter(|m| m.id != deciding)
            .map(|m| format!("{}@{}", m.id, m.var))
            .collect();
        let blocked = out.block.is_some();
        warn!(
            target: "waf",
            request_id = request_id.to_str().unwrap_or(""),
            route,
            phase = what,
            action = if blocked { "block" } else { "detect" },
            rule = deciding,
            score = out.score,
            matched = rules.join(" "),
            "WAF {}",
            if blocked { "blocked a request" } else { "would block a request (detect mode)" }
        );
        match out.block {
            Some(status) => {
                self.blocked.fetch_add(1, Ordering::Relaxed);
                Err(ProxyError::Waf(status))
            }
            None => {
                self.detected.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    /// `(action, count)` for `centinela_waf_requests_total`.
    pub fn requests(&self) -> [(&'static str, u64); 3] {
        [
            ("pass", self.passed.load(Ordering::Relaxed)),
            ("block", self.blocked.load(Ordering::Relaxed)),
            ("detect", self.detected.load(Ordering::Relaxed)),
        ]
    }

    pub fn truncated(&self) -> u64 {
        self.truncated.load(Ordering::Relaxed)
    }

    pub fn rule_matches(&self) -> Vec<(u32, u64)> {
        let m = self.matches.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|(k, v)| (*k, *v)).collect()
    }
}

/// Is a response body of this `Content-Type` read by the response phases?
/// Text, JSON and XML: what a leak would be written in (ModSecurity's
/// `SecResponseBodyMimeType text/plain text/html text/xml`, and JSON).
pub fn inspectable(content_type: &str) -> bool {
    let t = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .as_bytes();
    let starts = |p: &[u8]| t.len() >= p.len() && t[..p.len()].eq_ignore_ascii_case(p);
    let ends = |p: &[u8]| t.len() >= p.len() && t[t.len() - p.len()..].eq_ignore_ascii_case(p);
    starts(b"text/")
        || t.eq_ignore_ascii_case(b"application/json")
        || t.eq_ignore_ascii_case(b"application/xml")
        || ends(b"+json")
        || ends(b"+xml")
}

/// The engine's view of a request's head (and body), handed to `f`.
fn request<T>(
    parts: &http::request::Parts,
    raw_target: &[u8],
    body: &[u8],
    body_truncated: bool,
    client: IpAddr,
    request_id: &HeaderValue,
    f: impl FnOnce(&Request<'_>) -> T,
) -> T {
    let host;
    let mut headers: Vec<(&[u8], &[u8])> = Vec::with_capacity(parts.headers.len() + 1);
    if !parts.headers.contains_key(http::header::HOST) {
        // HTTP/2's :authority is the Host the rules read.
        if let Some(a) = parts.uri.authority() {
            host = a.as_str().as_bytes().to_vec();
            headers.push((b"Host", &host));
        }
    }
    for (n, v) in &parts.headers {
        headers.push((n.as_str().as_bytes(), v.as_bytes()));
    }
    let protocol: &[u8] = match parts.version {
        http::Version::HTTP_10 => b"HTTP/1.0",
        http::Version::HTTP_2 => b"HTTP/2.0",
        http::Version::HTTP_3 => b"HTTP/3.0",
        _ => b"HTTP/1.1",
    };
    f(&Request {
        method: parts.method.as_str().as_bytes(),
        target: raw_target,
        protocol,
        headers,
        body,
        body_truncated,
        remote_addr: client,
        unique_id: request_id.to_str().unwrap_or(""),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_json_and_xml_bodies_are_inspectable() {
        for t in [
            "text/html; charset=utf-8",
            "TEXT/PLAIN",
            "application/json",
            "Application/XML",
            "application/problem+json",
            "application/atom+xml ; q=1",
        ] {
            assert!(super::inspectable(t), "{t}");
        }
        for t in [
            "image/png",
            "application/octet-stream",
            "application/jsonx",
            "",
        ] {
            assert!(!super::inspectable(t), "{t}");
        }
    }
}
