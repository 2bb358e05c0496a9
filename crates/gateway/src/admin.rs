//! Admin API: `/metrics` (Prometheus text or OpenMetrics, see
//! `crate::metrics`), `/-/health` and `/-/live` (liveness), `/-/ready`
//! (every route has a healthy server), `/-/health/detailed` (everything,
//! 503 when something is unhealthy), `/-/upstreams` (live state of every
//! server), pages added with
//! [`crate::Gateway::add_status`] and `POST` actions added with
//! [`crate::Gateway::add_action`] (e.g. `POST /-/services/NAME/restart`).
//!
//! `GET /` serves the dashboard (`centinela_observe::dashboard`), its assets
//! under `/-/ui/`.
//!
//! **Who may call it.** With `[admin] token` set, every endpoint but
//! `/-/health`, `/-/live` and `/-/ready` needs `Authorization: Bearer
//! TOKEN` or the dashboard's cookie (set by `POST /-/login`, HttpOnly and
//! SameSite=Strict), compared in constant time; without it the answer is
//! 401 (the dashboard's answer is its login page). Without a token the
//! config keeps the listener on loopback unless told otherwise. Against
//! browsers on the host (a cross-site POST, DNS rebinding), a request with
//! an `Origin` must come from its own host, a state-changing `POST` must
//! carry `X-Centinela: 1`, a header no plain cross-site form or image can
//! send (the `centinela` CLI sends it), and, without a token, every request
//! must name an IP address or `localhost` as its `Host`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use crate::proxy::Shared;

/// Produces the JSON of an extra admin page.
/// Given the query string (`""` without one): the status and JSON.
pub type StatusFn = Arc<dyn Fn(&str) -> (StatusCode, serde_json::Value) + Send + Sync>;

/// What an action answers: an HTTP status and a JSON body.
pub type ActionFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = (StatusCode, serde_json::Value)> + Send>>;

/// Runs `POST /-/NAME/REST`, given `REST` and the request body.
pub type ActionFn = Arc<dyn Fn(String, Bytes) -> ActionFuture + Send + Sync>;

/// A section of `/-/health/detailed`: healthy or not, and what to show.
pub type HealthFn = Arc<dyn Fn() -> (bool, serde_json::Value) + Send + Sync>;

/// The largest body an admin action reads.
const MAX_ACTION_BODY: usize = 64 * 1024;

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let builder = crate::listener::builder();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        let shared = shared.clone();
        let svc = hyper::service::service_fn(move |req| handle(shared.clone(), req));
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

fn json_resp(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// `GET /metrics`: the gateway's metrics, the process's, and every added
/// collector's, in the format the scraper asks for.
fn metrics(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let format = centinela_observe::Format::negotiate(
        req.headers()
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
    );
    let process = centinela_observe::process::Process {
        version: env!("CARGO_PKG_VERSION"),
    };
    let added = shared.collectors.load();
    let mut all: Vec<&dyn centinela_observe::Collect> = vec![shared, &process];
    all.extend(
        added
            .iter()
            .map(|c| &**c as &dyn centinela_observe::Collect),
    );
    let text = centinela_observe::render(format, &all);
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(format.content_type()),
    );
    r
}

/// `GET /-/health/detailed`: version, uptime, every upstream with its
/// servers' states, then every added section (services, alerts…). 200
/// when every part is healthy, else 503 with the same body. An upstream
/// is healthy while one of its servers takes traffic.
fn detailed(shared: &Shared, snap: &crate::snapshot::Snapshot) -> Response<Full<Bytes>> {
    let (healthy, body) = detailed_json(shared, snap);
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_resp(status, body)
}

/// `GET /-/overview`, what the dashboard reads every 2 s in one request:
/// the detailed health, and the `alerts` and `services` pages. Always 200
/// (the health's own status is in its body).
fn overview(shared: &Shared, snap: &crate::snapshot::Snapshot) -> Response<Full<Bytes>> {
    let (_, health) = detailed_json(shared, snap);
    let mut body = serde_json::Map::new();
    body.insert("health".into(), health);
    for (name, f) in shared.status.load().iter() {
        if name == "alerts" || name == "services" {
            body.insert(name.clone(), f("").1);
        }
    }
    json_resp(StatusCode::OK, serde_json::Value::Object(body))
}

fn detailed_json(shared: &Shared, snap: &crate::snapshot::Snapshot) -> (bool, serde_json::Value) {
    let mut healthy = true;
    let upstreams: Vec<_> = snap
        .groups
        .iter()
        .map(|g| {
            let servers: Vec<_> = g
                .servers
                .iter()
                .map(|s| {
                    json!({
                        "address": s.label().to_string(),
                        "state": s.status(&g.name, &g.cfg.breaker).state(),
                    })
                })
                .collect();
            let up = servers.iter().any(|s| s["state"] == "up");
            healthy &= up;
            json!({
                "name": &*g.name,
                "healthy": up,
                "in_flight": g.limiter.in_use(),
                "limit": g.limiter.max(),
                "queued": g.limiter.queued(),
                "servers": servers,
            })
        })
        .collect();
    let mut body = serde_json::Map::new();
    body.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
    body.insert(
        "uptime_seconds".into(),
        json!(shared.started.elapsed().as_secs()),
    );
    body.insert("upstreams".into(), json!(upstreams));
    for (name, f) in shared.health.load().iter() {
        let (ok, v) = f();
        healthy &= ok;
        body.insert(name.clone(), v);
    }
    body.insert(
        "status".into(),
        json!(if healthy { "healthy" } else { "unhealthy" }),
    );
    (healthy, serde_json::Value::Object(body))
}

/// The header state-changing requests must carry.
pub const CSRF_HEADER: &str = "x-centinela";

/// The dashboard's cookie: the token, HttpOnly and SameSite=Strict.
pub const COOKIE: &str = "centinela_admin";

/// Endpoints open without the token: what load balancers and orchestrators
/// probe, and the login itself.
fn open_without_token(path: &str) -> bool {
    matches!(path, "/-/health" | "/-/live" | "/-/ready" | "/-/login")
}

/// Equal, in time that depends on the lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The request carries the token: as a bearer token or in the cookie.
fn authorized(h: &http::HeaderMap, token: &str) -> bool {
    let bearer = h
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    let cookies = h
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='));
    let mut ok = false;
    for candidate in bearer.chain(cookies) {
        ok |= constant_time_eq(candidate.as_bytes(), token.as_bytes());
    }
    ok
}

fn unauthorized(path: &str) -> Response<Full<Bytes>> {
    let mut r = if path == "/" {
        let (ctype, body) = centinela_observe::dashboard::LOGIN;
        let mut r = Response::new(Full::new(Bytes::from_static(body)));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(ctype),
        );
        r.headers_mut().insert(
            http::header::CONTENT_SECURITY_POLICY,
            http::HeaderValue::from_static(centinela_observe::dashboard::LOGIN_CSP),
        );
        r
    } else {
        json_resp(
            StatusCode::UNAUTHORIZED,
            json!({"error": "this admin endpoint needs Authorization: Bearer TOKEN ([admin] token)"}),
        )
    };
    *r.status_mut() = StatusCode::UNAUTHORIZED;
    r.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer realm=\"centinela\""),
    );
    r
}

/// `POST /-/login` with the token as the body: sets the dashboard's cookie.
fn login(token: Option<&str>, body: &[u8]) -> Response<Full<Bytes>> {
    let Some(token) = token else {
        return json_resp(
            StatusCode::NOT_FOUND,
            json!({"error": "no [admin] token is set: the dashboard needs no login"}),
        );
    };
    let given = std::str::from_utf8(body).unwrap_or("").trim();
    if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
        tracing::warn!("Admin login with a wrong token");
        return json_resp(StatusCode::UNAUTHORIZED, json!({"error": "wrong token"}));
    }
    let mut r = json_resp(StatusCode::OK, json!({"status": "logged in"}));
    // The token itself, which only the admin API can read back.
    let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age=2592000");
    if let Ok(v) = http::HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(http::header::SET_COOKIE, v);
    }
    r
}

/// `GET /` and `GET /-/ui/NAME`: the dashboard's embedded files.
fn ui(path: &str) -> Option<Response<Full<Bytes>>> {
    let (ctype, body) = centinela_observe::dashboard::asset(path)?;
    let mut r = Response::new(Full::new(Bytes::from_static(body)));
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ctype),
    );
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static(centinela_observe::dashboard::CSP),
    );
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    Some(r)
}

/// Why a request is refused before it is served, if it is.
fn refuse(req: &Request<Incoming>, token: bool) -> Option<&'static str> {
    let h = req.headers();
    let host = h
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let Some(host) = host else {
        return Some("a Host header is required");
    };
    let name = match host.rsplit_once(':') {
        Some((n, p)) if !n.ends_with(']') || host.starts_with('[') => {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                n
            } else {
                host
            }
        }
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    // With a token, a rebound name reaches nothing: the browser sends the
    // cookie to the name it was set for only.
    let named_safely =
        name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok();
    if !token && !named_safely {
        return Some("Host must be an IP address or localhost (DNS rebinding)");
    }
    if let Some(origin) = h.get(http::header::ORIGIN) {
        let same = origin
            .to_str()
            .ok()
            .and_then(|o| {
                o.strip_prefix("http://")
                    .or_else(|| o.strip_prefix("https://"))
            })
            .is_some_and(|o| o.eq_ignore_ascii_case(host));
        if !same {
            return Some("cross-site request refused");
        }
    }
    if h.get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
    {
        return Some("cross-site request refused");
    }
    if req.method() == Method::POST && h.get(CSRF_HEADER).is_none_or(|v| v.as_bytes() != b"1") {
        return Some("a POST to the admin API needs the header X-Centinela: 1");
    }
    None
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let snap = shared.snapshot.load_full();
    let token = snap.config.admin.token.as_ref().map(|t| t.expose());
    if let Some(why) = refuse(&req, token.is_some()) {
        return Ok(json_resp(StatusCode::FORBIDDEN, json!({ "error": why })));
    }
    if let Some(t) = token {
        if !open_without_token(req.uri().path()) && !authorized(req.headers(), t) {
            return Ok(unauthorized(req.uri().path()));
        }
    }
    if req.method() == Method::POST {
        if req.uri().path() == "/-/login" {
            let limited = http_body_util::Limited::new(req.into_body(), 4096);
            let body = http_body_util::BodyExt::collect(limited)
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Ok(login(token, &body));
        }
        let path = req.uri().path().strip_prefix("/-/").unwrap_or("");
        let (name, rest) = path.split_once('/').unwrap_or((path, ""));
        let action = shared
            .actions
            .load()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, f)| f.clone());
        let rest = rest.to_string();
        return Ok(match action {
            Some(f) => {
                let limited = http_body_util::Limited::new(req.into_body(), MAX_ACTION_BODY);
                let body = match http_body_util::BodyExt::collect(limited).await {
                    Ok(b) => b.to_bytes(),
                    Err(_) => {
                        return Ok(json_resp(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            json!({"error": "the request body is over 64 KiB or was cut off"}),
                        ))
                    }
                };
                let (status, body) = f(rest, body).await;
                json_resp(status, body)
            }
            None => json_resp(StatusCode::NOT_FOUND, json!({"error": "no such action"})),
        });
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(json_resp(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": "method not allowed"}),
        ));
    }
    if req.uri().path() == "/metrics" {
        return Ok(metrics(&shared, &req));
    }
    if let Some(r) = ui(req.uri().path()) {
        return Ok(r);
    }
    Ok(match req.uri().path() {
        "/-/health" | "/-/live" => json_resp(StatusCode::OK, json!({"status": "ok"})),
        "/-/health/detailed" => detailed(&shared, &snap),
        "/-/overview" => overview(&shared, &snap),
        "/-/ready" => {
            let unready = snap.unready_routes();
            if unready.is_empty() {
                json_resp(StatusCode::OK, json!({"status": "ready"}))
            } else {
                json_resp(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"status": "not ready", "routes_without_healthy_server": unready}),
                )
            }
        }
        "/-/upstreams" => {
            let groups: Vec<_> = snap
                .groups
                .iter()
                .map(|g| {
                    let servers: Vec<_> = g
                        .servers
                        .iter()
                        .map(|s| {
                            let st = s.status(&g.name, &g.cfg.breaker);
                            json!({
                                "address": st.addr.to_string(),
                                "weight": st.weight,
                                "healthy": st.healthy,
                                "ejected": st.ejected,
                                "breaker": st.breaker,
                                "in_flight": st.in_flight,
                                "consecutive_failures": st.consecutive_failures,
                            })
                        })
                        .collect();
                    json!({"name": &*g.name, "servers": servers})
                })
                .collect();
            json_resp(StatusCode::OK, json!({ "upstreams": groups }))
        }
        path => {
            let name = path.strip_prefix("/-/").unwrap_or("");
            match shared.status.load().iter().find(|(n, _)| n == name) {
                Some((_, f)) => {
                    let (status, v) = f(req.uri().query().unwrap_or(""));
                    json_resp(status, v)
                }
                None => json_resp(StatusCode::NOT_FOUND, json!({"error": "not found"})),
            }
        }
    })
}
