//! centinela's edge protection, the **shield** stage of a request: IP allow
//! and deny lists and rate limits (the client's real address comes from
//! `client_ip.rs`).
//!
//! The gateway sees one narrow interface: [`Shield::build`] from the config
//! (keeping the counts of limits that did not change), [`Shield::guard`]
//! for each route, and [`Guard::admit`] on each request, which says yes or
//! gives a [`Refusal`] that the gateway answers. [`Shield::collect`] writes
//! the metrics; [`Shield::look`] reads IP list files again when they
//! change, [`Shield::sweep`] forgets rate-limit keys whose window is over.
#![forbid(unsafe_code)]

pub mod audit;
pub mod client_ip;
pub mod iptree;
pub mod jwt;
pub mod proxy_protocol;
pub mod rate;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use centinela_config::{Config, IpRule, RateKey, RateLimit, Route};
use http::{HeaderMap, HeaderValue};
use tracing::{info, warn};

use crate::iptree::IpSet;
use crate::rate::{Local, Shape, Store, Verdict};

/// Why a request was refused: the gateway answers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The client's address is denied, or not allowed (403).
    IpDenied,
    /// No valid token on a route with `auth` (401).
    Unauthorized(jwt::Failure),
    /// Over a rate limit (429).
    RateLimited {
        limit: Arc<str>,
        retry_after: Duration,
        /// `RateLimit-Policy`, e.g. `"per-ip";q=2000;w=300`.
        policy: HeaderValue,
        /// `RateLimit`, e.g. `"per-ip";r=0;t=17`.
        state: HeaderValue,
    },
}

impl Refusal {
    /// The reason in metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::IpDenied => "ip_denied",
            Refusal::Unauthorized(_) => "unauthorized",
            Refusal::RateLimited { .. } => "rate_limited",
        }
    }
}

/// What the shield looks at in a request.
pub struct Facts<'a> {
    /// The client's real address.
    pub ip: IpAddr,
    pub headers: &'a HeaderMap,
    pub now: Instant,
}

/// One `[[rate_limit]]` and its counts.
pub struct Limiter {
    cfg: RateLimit,
    name: Arc<str>,
    store: Box<dyn Store>,
    epoch: Instant,
    policy: HeaderValue,
    hasher: std::hash::RandomState,
}

impl Limiter {
    fn new(cfg: &RateLimit, epoch: Instant) -> Limiter {
        let shape = Shape {
            capacity: cfg.limit.saturating_add(cfg.burst),
            window: cfg.window,
        };
        let policy = format!(
            "\"{}\";q={};w={}",
            cfg.name,
            shape.capacity,
            cfg.window.as_secs()
        );
        Limiter {
            name: cfg.name.as_str().into(),
            store: Box::new(Local::new(shape, cfg.max_keys as usize)),
            epoch,
            policy: HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static("")),
            hasher: std::hash::RandomState::new(),
            cfg: cfg.clone(),
        }
    }

    /// Keys tracked.
    pub fn keys(&self) -> usize {
        self.store.len()
    }
}

/// An `[ip_lists.NAME]`: its networks, read again when the file changes.
struct List {
    name: String,
    file: PathBuf,
    set: ArcSwap<IpSet>,
    stamp: Mutex<Option<(SystemTime, u64, u64)>>,
}

fn stamp(p: &std::path::Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

impl List {
    fn load(name: &str, file: &std::path::Path) -> List {
        let st = stamp(file);
        let set = match centinela_config::ip_lists::read_list(file) {
            Ok((nets, _)) => IpSet::new(&nets),
            Err(e) => {
                warn!(list = name, error = %e, "IP list unreadable; it is empty until it can be read");
                IpSet::default()
            }
        };
        List {
            name: name.to_string(),
            file: file.to_path_buf(),
            set: ArcSwap::from_pointee(set),
            stamp: Mutex::new(st),
        }
    }

    /// Reads the file again if it changed. An unreadable file keeps the
    /// networks read last.
    fn look(&self) {
        let now = stamp(&self.file);
        let mut last = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
        if now == *last {
            return;
        }
        *last = now;
        match centinela_config::ip_lists::read_list(&self.file) {
            Ok((nets, problems)) => {
                for p in problems.iter().take(5) {
                    warn!(list = %self.name, problem = %p, "IP list line");
                }
                let set = IpSet::new(&nets);
                info!(list = %self.name, networks = set.len(), "IP list reloaded");
                self.set.store(Arc::new(set));
            }
            Err(e) => {
                warn!(list = %self.name, error = %e, "IP list changed but cannot be read; keeping the networks read last")
            }
        }
    }
}

/// `allow` or `deny` of a route: its own networks and named lists.
struct Rules {
    inline: IpSet,
    lists: Vec<Arc<List>>,
}

impl Rules {
    fn contains(&self, ip: u128) -> bool {
        self.inline.contains_bits(ip) || self.lists.iter().any(|l| l.set.load().contains_bits(ip))
    }
}

/// One route's limit: the limiter, and its refusals on this route.
struct RouteLimit {
    limiter: Arc<Limiter>,
    /// For `key = "route"`: this route's key.
    route_key: u128,
    refused: Arc<AtomicU64>,
}

/// What one route checks, in order: deny, allow, then its limits.
pub struct Guard {
    deny: Option<Rules>,
    allow: Option<Rules>,
    limits: Vec<RouteLimit>,
    ip_refused: Arc<AtomicU64>,
    /// `auth`: the route's token verifier.
    pub auth: Option<Arc<jwt::Auth>>,
    auth_refused: Arc<AtomicU64>,
}

impl Guard {
    /// Admits the request, or says why not. Counts refusals.
    pub fn admit(&self, f: &Facts<'_>) -> Result<(), Refusal> {
        let ip = iptree::bits(f.ip);
        let denied = self.deny.as_ref().is_some_and(|r| r.contains(ip))
            || self.allow.as_ref().is_some_and(|r| !r.contains(ip));
        if denied {
            self.ip_refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::IpDenied);
        }
        for l in &self.limits {
            let lim = &l.limiter;
            let key = match &lim.cfg.key {
                // Counted once the token is verified (`authenticate`).
                RateKey::Jwt(_) => continue,
                RateKey::ClientIp => ip,
                RateKey::Route => l.route_key,
                RateKey::Header(name) => match f.headers.get(name.as_str()) {
                    Some(v) => u128::from(lim.hasher.hash_one(v.as_bytes())) | 1 << 64,
                    // Requests without the header share one count.
                    None => 0,
                },
            };
            l.hit(key, f.now)?;
        }
        Ok(())
    }

    /// Stage **auth** of a route with `auth`: the token verified (`now`:
    /// Unix seconds), then the limits keyed by one of its claims. The
    /// claims, for the headers to forward.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        unix_now: i64,
        now: Instant,
    ) -> Result<Option<jwt::Claims>, Refusal> {
        let Some(auth) = &self.auth else {
            return Ok(None);
        };
        let claims = auth.verify(headers, unix_now).map_err(|e| {
            self.auth_refused.fetch_add(1, Ordering::Relaxed);
            Refusal::Unauthorized(e)
        })?;
        for l in &self.limits {
            if let RateKey::Jwt(claim) = &l.limiter.cfg.key {
                let key = match claims.get(claim) {
                    Some(v) => u128::from(l.limiter.hasher.hash_one(v.to_string())) | 1 << 64,
                    None => 0,
                };
                l.hit(key, now)?;
            }
        }
        Ok(Some(claims))
    }
}

impl RouteLimit {
    fn hit(&self, key: u128, now: Instant) -> Result<(), Refusal> {
        let lim = &self.limiter;
        let now = now.saturating_duration_since(lim.epoch);
        if let Verdict::Deny { retry_after } = lim.store.hit(key, now) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            let state = format!("\"{}\";r=0;t={secs}", lim.name);
            return Err(Refusal::RateLimited {
                limit: lim.name.clone(),
                retry_after: Duration::from_secs(secs),
                policy: lim.policy.clone(),
                state: HeaderValue::from_str(&state).unwrap_or(HeaderValue::from_static("")),
            });
        }
        Ok(())
    }
}

/// A `[jwt.NAME]`'s verifier. Keys: `kept` (a reload that did not change
/// where they come from), else the secret, the file, or none yet (a URL:
/// the gateway fetches it).
fn build_auth(j: &centinela_config::Jwt, kept: Option<Arc<jwt::KeySet>>) -> jwt::Auth {
    use centinela_config::JwtKeys;
    let keys = match (&j.keys, kept) {
        (JwtKeys::Secret(s), _) => jwt::KeySet::new(vec![jwt::Key::secret(s.expose().as_bytes())]),
        (JwtKeys::File(f), _) => match std::fs::read(f)
            .map_err(|e| e.to_string())
            .and_then(|b| jwt::KeySet::from_json(&b))
        {
            Ok((set, skipped)) => {
                for s in skipped {
                    warn!(jwt = %j.name, key = %s, "JWK left out");
                }
                set
            }
            Err(e) => {
                warn!(jwt = %j.name, file = %f.display(), error = %e, "JWK set unusable; every token is refused");
                jwt::KeySet::default()
            }
        },
        (JwtKeys::Url(_), Some(k)) => (*k).clone(),
        (JwtKeys::Url(_), None) => jwt::KeySet::default(),
    };
    jwt::Auth::new(
        &j.name,
        j.algorithms
            .iter()
            .filter_map(|a| jwt::Alg::parse(a))
            .collect(),
        j.issuer.clone(),
        j.audience.clone(),
        j.leeway,
        j.require_exp,
        match j
            .token_from
            .as_deref()
            .and_then(|t| t.strip_prefix("cookie:"))
        {
            Some(c) => jwt::TokenFrom::Cookie(c.to_string()),
            None => jwt::TokenFrom::Bearer,
        },
        j.forward_claims
            .iter()
            .filter_map(|(c, h)| {
                Some((c.clone(), http::HeaderName::from_bytes(h.as_bytes()).ok()?))
            })
            .collect(),
        keys,
    )
}

/// The shield of one config: its limits and lists, and counters that
/// outlive reloads.
pub struct Shield {
    limiters: HashMap<String, Arc<Limiter>>,
    lists: HashMap<String, Arc<List>>,
    /// `[jwt.NAME]`, with where their keys come from.
    auths: HashMap<String, (Arc<jwt::Auth>, centinela_config::JwtKeys, Duration)>,
    /// Refused tokens by route.
    unauthorized: Mutex<HashMap<String, Arc<AtomicU64>>>,
    /// Rate-limit refusals by (limit, route).
    limited: Mutex<HashMap<(String, String), Arc<AtomicU64>>>,
    /// IP refusals by route.
    ip_denied: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl std::fmt::Debug for Shield {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shield")
            .field("limits", &self.keys())
            .field("lists", &self.list_sizes())
            .finish()
    }
}

impl Shield {
    /// The shield of `config`. Limits whose settings did not change keep
    /// their counts from `previous`, and lists their networks (read again
    /// if their file changed).
    pub fn build(config: &Config, previous: Option<&Shield>) -> Shield {
        let epoch = Instant::now();
        let limiters = config
            .rate_limits
            .iter()
            .map(|r| {
                let kept = previous
                    .and_then(|p| p.limiters.get(&r.name))
                    .filter(|l| l.cfg == *r)
                    .cloned();
                (
                    r.name.clone(),
                    kept.unwrap_or_else(|| Arc::new(Limiter::new(r, epoch))),
                )
            })
            .collect();
        let lists = config
            .ip_lists
            .iter()
            .map(|l| {
                let kept = previous
                    .and_then(|p| p.lists.get(&l.name))
                    .filter(|old| old.file == l.file)
                    .cloned();
                let list = match kept {
                    Some(k) => {
                        k.look();
                        k
                    }
                    None => Arc::new(List::load(&l.name, &l.file)),
                };
                (l.name.clone(), list)
            })
            .collect();
        let counters = |p: Option<&Shield>| {
            p.map(|p| {
                (
                    p.limited.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                    p.ip_denied
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone(),
                )
            })
            .unwrap_or_default()
        };
        let (limited, ip_denied) = counters(previous);
        let unauthorized = previous
            .map(|p| {
                p.unauthorized
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
            })
            .unwrap_or_default();
        let auths = config
            .jwts
            .iter()
            .map(|j| {
                let kept = previous
                    .and_then(|p| p.auths.get(&j.name))
                    .filter(|(_, keys, _)| *keys == j.keys)
                    .map(|(a, _, _)| a.keys());
                (
                    j.name.clone(),
                    (
                        Arc::new(build_auth(j, kept)),
                        j.keys.clone(),
                        j.jwks_refresh,
                    ),
                )
            })
            .collect();
        Shield {
            limiters,
            lists,
            auths,
            unauthorized: Mutex::new(unauthorized),
            limited: Mutex::new(limited),
            ip_denied: Mutex::new(ip_denied),
        }
    }

    /// What `route` checks; `None` when it checks nothing.
    pub fn guard(&self, route: &Route, index: usize) -> Option<Arc<Guard>> {
        let rules = |list: &[IpRule]| {
            if list.is_empty() {
                return None;
            }
            let nets: Vec<_> = list
                .iter()
                .filter_map(|r| match r {
                    IpRule::Net(c) => Some(*c),
                    IpRule::List(_) => None,
                })
                .collect();
            let lists = list
                .iter()
                .filter_map(|r| match r {
                    IpRule::List(n) => self.lists.get(n).cloned(),
                    IpRule::Net(_) => None,
                })
                .collect();
            Some(Rules {
                inline: IpSet::new(&nets),
                lists,
            })
        };
        let (deny, allow) = (rules(&route.deny), rules(&route.allow));
        let auth = route
            .auth
            .as_ref()
            .and_then(|a| self.auths.get(a))
            .map(|(a, _, _)| a.clone());
        let limits: Vec<RouteLimit> = route
            .rate_limit
            .iter()
            .filter_map(|n| self.limiters.get(n))
            .map(|l| RouteLimit {
                limiter: l.clone(),
                route_key: (index as u128) << 1 | 1,
                refused: self
                    .limited
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry((l.cfg.name.clone(), route.name.clone()))
                    .or_default()
                    .clone(),
            })
            .collect();
        if deny.is_none() && allow.is_none() && limits.is_empty() && auth.is_none() {
            return None;
        }
        let auth_refused = self
            .unauthorized
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(route.name.clone())
            .or_default()
            .clone();
        let ip_refused = self
            .ip_denied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(route.name.clone())
            .or_default()
            .clone();
        Some(Arc::new(Guard {
            deny,
            allow,
            limits,
            ip_refused,
            auth,
            auth_refused,
        }))
    }

    /// Reads IP list files that changed (call every few seconds, off the
    /// request path).
    pub fn look(&self) {
        for l in self.lists.values() {
            l.look();
        }
    }

    /// Forgets rate-limit keys with nothing left in their window.
    pub fn sweep(&self, now: Instant) {
        for l in self.limiters.values() {
            l.store.sweep(now.saturating_duration_since(l.epoch));
        }
    }

    /// `(limit, keys tracked)` of every limit.
    pub fn keys(&self) -> Vec<(String, usize)> {
        let mut v: Vec<_> = self
            .limiters
            .iter()
            .map(|(n, l)| (n.clone(), l.keys()))
            .collect();
        v.sort();
        v
    }

    /// The verifiers whose keys come from a URL: each with the URL and how
    /// often to fetch it, for the gateway's fetcher.
    pub fn jwks_urls(&self) -> Vec<(Arc<jwt::Auth>, String, Duration)> {
        let mut v: Vec<_> = self
            .auths
            .values()
            .filter_map(|(a, keys, every)| match keys {
                centinela_config::JwtKeys::Url(u) => Some((a.clone(), u.clone(), *every)),
                _ => None,
            })
            .collect();
        v.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        v
    }

    /// `(jwt, verified, refused, keys)` of every verifier.
    pub fn auth_counts(&self) -> Vec<(String, u64, u64, usize)> {
        let mut v: Vec<_> = self
            .auths
            .values()
            .map(|(a, _, _)| {
                (
                    a.name.clone(),
                    a.verified.load(Ordering::Relaxed),
                    a.refused.load(Ordering::Relaxed),
                    a.keys().len(),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// `(route, refused tokens)`.
    pub fn unauthorized(&self) -> Vec<(String, u64)> {
        let mut v: Vec<_> = self
            .unauthorized
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(r, n)| (r.clone(), n.load(Ordering::Relaxed)))
            .collect();
        v.sort();
        v
    }

    /// `(limit, route, refusals)` and `(route, IP refusals)`, sorted.
    #[allow(clippy::type_complexity)]
    pub fn refusals(&self) -> (Vec<(String, String, u64)>, Vec<(String, u64)>) {
        let mut limited: Vec<_> = self
            .limited
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((l, r), n)| (l.clone(), r.clone(), n.load(Ordering::Relaxed)))
            .collect();
        limited.sort();
        let mut ip: Vec<_> = self
            .ip_denied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(r, n)| (r.clone(), n.load(Ordering::Relaxed)))
            .collect();
        ip.sort();
        (limited, ip)
    }

    /// Networks in each IP list, by name.
    pub fn list_sizes(&self) -> Vec<(String, usize)> {
        let mut v: Vec<_> = self
            .lists
            .iter()
            .map(|(n, l)| (n.clone(), l.set.load().len()))
            .collect();
        v.sort();
        v
    }
}
