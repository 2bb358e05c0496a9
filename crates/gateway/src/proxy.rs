//! The path of one request through the gateway:
//!
//! accept (listener.rs) → **check** framing → **route** → **limit** (queue)
//! → **prepare body** (buffer small bodies for replay) → loop {
//! **pick server** (upstream.rs) → **connect + send** → **classify** →
//! record outcome → **retry / fail over** with backoff and budget } →
//! **respond** (strip hop-by-hop, add X-Request-Id) → **log**.

use std::collections::hash_map::DefaultHasher;
use std::convert::Infallible;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use centinela_config::{HashKey, RetryOn};
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Version};
use http_body::{Body, SizeHint};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tracing::{debug, info};

use crate::body::{ClientBody, Guards, ReqBody, RespBody};
use crate::client::RequestHead;
use crate::error::ProxyError;
use crate::h1::UpgradeSlot;
use crate::headers::{self, Rewrite};
use crate::pool::SendError;
use crate::route::{host_without_port, strip};
use crate::server::Outcome;
use crate::snapshot::Snapshot;
use crate::upstream::Group;

/// What the data plane shares between connections.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    /// Extra admin pages: `/-/NAME` → JSON (e.g. the supervisor's services).
    pub status: ArcSwap<Vec<(String, crate::admin::StatusFn)>>,
    /// Admin actions: `POST /-/NAME/...`.
    pub actions: ArcSwap<Vec<(String, crate::admin::ActionFn)>>,
}

/// How an upgraded client connection gets the server's connection.
enum ClientUpgrade {
    Relay(UpgradeSlot),
    Hyper(hyper::upgrade::OnUpgrade),
}

/// Facts about one request for the access log.
struct Log {
    upstream: Option<Arc<str>>,
    server: Option<Arc<str>>,
    attempts: u32,
}

pub async fn handle(
    shared: Arc<Shared>,
    listener: Arc<str>,
    client: SocketAddr,
    req: Request<ClientBody>,
) -> Result<Response<RespBody>, Infallible> {
    let start = Instant::now();
    // In-flight requests keep the snapshot they started with across reloads.
    let snap = shared.snapshot.load_full();
    let rid = headers::request_id(req.headers());
    let method = req.method().clone();
    let uri = req.uri().clone();
    let mut log = Log {
        upstream: None,
        server: None,
        attempts: 0,
    };
    // Boxed, and by a plain function: the future is large (a few KiB), and
    // the connection's task would otherwise keep a slot that size, idle or
    // not (a future built in this body would take room here too).
    let result = boxed_forward(
        &shared, &snap, &listener, client, req, &rid, &mut log, start,
    )
    .await;
    let resp = match result {
        Ok(r) => r,
        Err(e) => {
            debug!(request_id = rid.to_str().unwrap_or(""), error = %e, "Request failed");
            e.into_response(&rid)
        }
    };
    if snap.config.runtime.access_log {
        info!(
            target: "access",
            method = %method,
            path = uri.path(),
            status = resp.status().as_u16(),
            upstream = log.upstream.as_deref().unwrap_or("-"),
            server = log.server.as_deref().unwrap_or("-"),
            attempts = log.attempts,
            duration_ms = start.elapsed().as_secs_f64() * 1000.0,
            request_id = rid.to_str().unwrap_or(""),
            "request"
        );
    }
    Ok(resp)
}

/// A request body made ready for one or more attempts.
enum Prepared {
    /// Fully read (small): every attempt gets a copy.
    Replayable(Option<Bytes>),
    /// Too large to keep: streamed, usable by one attempt that starts sending.
    Stream {
        prefix: Option<Bytes>,
        slot: Arc<Mutex<Option<ClientBody>>>,
        size: SizeHint,
    },
}

impl Prepared {
    /// A body for the next attempt, or None if the stream was consumed.
    fn next(&self) -> Option<ReqBody> {
        match self {
            Prepared::Replayable(None) => Some(ReqBody::Empty),
            Prepared::Replayable(Some(b)) => Some(ReqBody::Full(Some(b.clone()))),
            Prepared::Stream { prefix, slot, size } => {
                let unused = slot.lock().unwrap_or_else(|p| p.into_inner()).is_some();
                unused.then(|| ReqBody::Stream {
                    prefix: prefix.clone(),
                    slot: slot.clone(),
                    taken: None,
                    size: *size,
                })
            }
        }
    }
}

async fn prepare(mut body: ClientBody, limit: u64) -> Result<Prepared, ProxyError> {
    if body.is_end_stream() {
        return Ok(Prepared::Replayable(None));
    }
    let hint = body.size_hint();
    if hint.lower() > limit {
        return Ok(Prepared::Stream {
            prefix: None,
            slot: Arc::new(Mutex::new(Some(body))),
            size: hint,
        });
    }
    let mut buf = BytesMut::new();
    loop {
        match body.frame().await {
            None => return Ok(Prepared::Replayable(Some(buf.freeze()))),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
                // Trailers of small bodies are dropped.
                if buf.len() as u64 > limit {
                    let remaining = SizeHint::default();
                    return Ok(Prepared::Stream {
                        prefix: Some(buf.freeze()),
                        slot: Arc::new(Mutex::new(Some(body))),
                        size: if hint.exact().is_some() {
                            hint
                        } else {
                            remaining
                        },
                    });
                }
            }
            Some(Err(e)) => return Err(ProxyError::ClientBody(e.to_string())),
        }
    }
}

fn hash_key(key: &HashKey, h: &http::HeaderMap, client: SocketAddr) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    match key {
        HashKey::Header(name) => h.get(name.as_str())?.as_bytes().hash(&mut hasher),
        HashKey::Cookie(name) => {
            let v = h
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|kv| {
                    let (k, v) = kv.trim().split_once('=')?;
                    (k == name).then_some(v)
                })?;
            v.hash(&mut hasher)
        }
        HashKey::ClientIp => client.ip().hash(&mut hasher),
    }
    Some(hasher.finish())
}

fn backoff(base: Duration, max: Duration, retry: u32) -> Duration {
    let cap = base.saturating_mul(1u32 << retry.min(20)).min(max);
    cap.mul_f64(fastrand::f64())
}

#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn boxed_forward<'a>(
    shared: &'a Shared,
    snap: &'a Snapshot,
    listener: &'a str,
    client: SocketAddr,
    req: Request<ClientBody>,
    rid: &'a HeaderValue,
    log: &'a mut Log,
    start: Instant,
) -> Pin<Box<dyn Future<Output = Result<Response<RespBody>, ProxyError>> + Send + 'a>> {
    Box::pin(forward(
        shared, snap, listener, client, req, rid, log, start,
    ))
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    shared: &Shared,
    snap: &Snapshot,
    listener: &str,
    client: SocketAddr,
    mut req: Request<ClientBody>,
    rid: &HeaderValue,
    log: &mut Log,
    start: Instant,
) -> Result<Response<RespBody>, ProxyError> {
    headers::check_framing(req.headers())?;

    // Route. HTTP/2 carries the host in :authority, HTTP/1 in Host.
    let host_value: Option<HeaderValue> = match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req.headers().get(header::HOST).cloned(),
    };
    let host_header = host_value.as_ref().and_then(|v| v.to_str().ok());
    let host = host_header.map(host_without_port);
    let route = snap
        .routes
        .get(listener)
        .and_then(|t| t.find(host, req.uri().path()))
        .ok_or(ProxyError::NoRoute)?;
    let first_group: Arc<Group> = snap.groups[route.group].clone();
    let cfg = &first_group.cfg;
    // The group attempts pick from; see the retired case below.
    let mut group: Arc<Group> = first_group.clone();
    let mut switched = false;
    log.upstream = Some(group.name.clone());
    group.budget.record_request();

    // Limit.
    let permit = group.limiter.acquire().await?;
    let deadline = start + cfg.timeouts.request;

    // Build what every attempt shares.
    let upgrade = headers::is_upgrade(req.headers());
    // HTTP/1 connections (h1.rs) relay upgraded bytes themselves; hyper's
    // HTTP/2 connections hand over an upgraded stream.
    let client_upgrade = upgrade.then(|| match req.extensions_mut().remove::<UpgradeSlot>() {
        Some(slot) => ClientUpgrade::Relay(slot),
        None => ClientUpgrade::Hyper(hyper::upgrade::on(&mut req)),
    });
    let (parts, body) = req.into_parts();
    let path_and_query: PathAndQuery = match parts.uri.path_and_query() {
        Some(pq) if route.strip_prefix => strip(&route.prefix, pq.as_str())
            .parse()
            .map_err(|_| ProxyError::BadRequest("invalid request target"))?,
        Some(pq) => pq.clone(),
        None => PathAndQuery::from_static("/"),
    };
    let rewrite = Rewrite::request(
        &parts.headers,
        client.ip(),
        "http",
        host_header,
        rid,
        upgrade,
    );
    let idempotent = headers::is_idempotent(&parts.method, &parts.headers);
    let key = match (&cfg.hash_key, cfg.balance) {
        (Some(k), centinela_config::Balance::Hash) => hash_key(k, &parts.headers, client),
        _ => None,
    };
    let prepared = tokio::time::timeout_at(deadline, prepare(body, cfg.retry.buffer_body)).await;
    let body = match prepared {
        Ok(b) => b?,
        Err(_) => return Err(ProxyError::Deadline),
    };

    let mut tried: Vec<usize> = Vec::with_capacity(cfg.retry.attempts as usize);
    let mut last_err: Option<ProxyError> = None;
    for attempt in 1..=cfg.retry.attempts {
        // Counted in flight before anything is sent, and never on a server
        // retired in between (it is being drained: see `Server::retire`).
        let (idx, in_flight) = loop {
            let idx = match group.pick(&tried, key) {
                Ok(i) => i,
                Err(e) => {
                    // Every server this request's snapshot knows was retired
                    // while it waited (a rolling restart or scale-down is
                    // draining them): pick from the current servers instead.
                    if !switched && group.servers.iter().any(|s| s.is_retired()) {
                        if let Some(g) = shared.snapshot.load().group(&group.name).cloned() {
                            switched = true;
                            group = g;
                            tried.clear();
                            continue;
                        }
                    }
                    return Err(last_err.unwrap_or(e));
                }
            };
            let guard = group.servers[idx].track();
            if !group.servers[idx].is_retired() {
                break (idx, guard);
            }
        };
        tried.push(idx);
        let server = &group.servers[idx];
        log.attempts = attempt;
        log.server = Some(server.label().clone());

        let Some(attempt_body) = body.next() else {
            // A streamed body was already sent: it cannot be replayed.
            break;
        };
        // Origin form (`/path?query`) on the connection to the server.
        let up_head = RequestHead {
            method: &parts.method,
            target: path_and_query.as_str(),
            headers: &parts.headers,
            rewrite: &rewrite,
            // HTTP/2 clients send the host as :authority, not Host.
            host: host_header.unwrap_or(server.authority.as_str()),
        };

        let now = Instant::now();
        if now >= deadline {
            return Err(last_err.unwrap_or(ProxyError::Deadline));
        }
        let per_attempt = cfg.timeouts.response.min(deadline - now);
        let deadline_bound = per_attempt < cfg.timeouts.response;
        // Awaited apart from the match: a scrutinee's temporaries would
        // live through every arm, and the future would keep room for both
        // this exchange and the backoff's timer.
        let sent = tokio::time::timeout(
            per_attempt,
            server.pool.send(
                server.addr,
                &up_head,
                attempt_body,
                idempotent,
                cfg.timeouts.connect,
                cfg.timeouts.idle,
            ),
        )
        .await;
        let (outcome, err) = match sent {
            Ok(Ok(resp)) => {
                let status = resp.status();
                let outcome = if status.is_server_error() {
                    Outcome::Status5xx
                } else {
                    Outcome::Success
                };
                group.record(idx, outcome);
                let retry_status = cfg.retry.retries_status(status.as_u16());
                if retry_status
                    && attempt < cfg.retry.attempts
                    && idempotent
                    && body.next().is_some()
                    && group
                        .budget
                        .try_retry(cfg.retry.budget_percent, cfg.retry.budget_min)
                {
                    debug!(
                        upstream = &*group.name,
                        server = &**server.label(),
                        status = status.as_u16(),
                        attempt,
                        "Retrying on status"
                    );
                    drop(resp);
                    sleep_backoff(cfg, attempt, deadline).await;
                    continue;
                }
                if status == http::StatusCode::SWITCHING_PROTOCOLS {
                    let (mut p, up_body) = resp.into_parts();
                    match (client_upgrade, up_body.into_upgraded()) {
                        (Some(ClientUpgrade::Relay(slot)), Some(up)) => {
                            *slot.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(up);
                        }
                        (Some(ClientUpgrade::Hyper(client_up)), Some(up)) => {
                            tokio::spawn(async move {
                                if let Ok(c) = client_up.await {
                                    let mut c = TokioIo::new(c);
                                    let mut u = up.io;
                                    // What the server sent right after its 101.
                                    if tokio::io::AsyncWriteExt::write_all(&mut c, &up.read)
                                        .await
                                        .is_ok()
                                    {
                                        let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
                                    }
                                }
                            });
                        }
                        _ => {}
                    }
                    // The server's 101 head kept `Upgrade` (client.rs);
                    // `Connection: upgrade` goes with it.
                    p.headers
                        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                    p.headers.insert(headers::X_REQUEST_ID, rid.clone());
                    return Ok(Response::from_parts(p, RespBody::empty()));
                }
                let (mut p, inner) = resp.into_parts();
                // Hop-by-hop headers were left out when the head was read.
                p.headers.insert(headers::X_REQUEST_ID, rid.clone());
                p.version = Version::HTTP_11;
                let guards = Guards {
                    in_flight: Some(in_flight),
                    permit: Some(permit),
                };
                return Ok(Response::from_parts(
                    p,
                    RespBody::Upstream {
                        inner,
                        _guards: guards,
                    },
                ));
            }
            Ok(Err(SendError::Connect(e))) => (Outcome::ConnectError, ProxyError::Connect(e)),
            Ok(Err(SendError::Failed(e))) => (Outcome::Reset, ProxyError::Reset(error_chain(&e))),
            Err(_) if deadline_bound => (Outcome::Timeout, ProxyError::Deadline),
            Err(_) => (Outcome::Timeout, ProxyError::Timeout),
        };
        drop(in_flight);
        group.record(idx, outcome);
        debug!(upstream = &*group.name, server = &**server.label(), attempt, error = %err, "Attempt failed");
        let kind = match outcome {
            Outcome::ConnectError => RetryOn::Connect,
            Outcome::Timeout => RetryOn::Timeout,
            _ => RetryOn::Reset,
        };
        // Nothing reached the server after a connect error: always safe.
        let safe = kind == RetryOn::Connect || (cfg.retry.retries(kind) && idempotent);
        let can_retry = attempt < cfg.retry.attempts
            && safe
            && !matches!(err, ProxyError::Deadline)
            && body.next().is_some()
            && group
                .budget
                .try_retry(cfg.retry.budget_percent, cfg.retry.budget_min);
        last_err = Some(err);
        if !can_retry {
            break;
        }
        sleep_backoff(cfg, attempt, deadline).await;
    }
    Err(last_err.unwrap_or(ProxyError::NoHealthyServer))
}

async fn sleep_backoff(cfg: &centinela_config::Upstream, attempt: u32, deadline: Instant) {
    let d = backoff(cfg.retry.backoff_base, cfg.retry.backoff_max, attempt - 1);
    let until = (Instant::now() + d).min(deadline);
    tokio::time::sleep_until(until).await;
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_full_jitter_and_capped() {
        let base = Duration::from_millis(25);
        let max = Duration::from_secs(1);
        for retry in 0..10 {
            for _ in 0..100 {
                let d = backoff(base, max, retry);
                assert!(d <= base.saturating_mul(1 << retry).min(max));
            }
        }
        let big: Vec<Duration> = (0..200).map(|_| backoff(base, max, 10)).collect();
        assert!(big.iter().any(|d| *d > Duration::from_millis(500)));
        assert!(big.iter().all(|d| *d <= max));
    }
}
