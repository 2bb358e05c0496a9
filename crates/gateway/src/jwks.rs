//! Fetching the JWK sets of `[jwt.NAME] jwks_url`: at start, every
//! `jwks_refresh`, and at once when a token names a `kid` no key has (at
//! most once per 30 s). A fetch that fails keeps the keys held.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use centinela_shield::jwt::{Auth, KeySet};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::http::io::Stream;

/// The soonest a token with an unknown `kid` makes the set fetched again.
const UNKNOWN_KID_EVERY: Duration = Duration::from_secs(30);
/// After a failed fetch.
const RETRY: Duration = Duration::from_secs(5);
/// A JWK set larger than this is refused.
const MAX_BODY: usize = 1 << 20;

pub async fn run(auth: Arc<Auth>, url: String, every: Duration) {
    loop {
        let ok = match fetch(&url).await.and_then(|b| KeySet::from_json(&b)) {
            Ok((set, skipped)) => {
                for s in skipped {
                    warn!(jwt = %auth.name, key = %s, "JWK left out");
                }
                info!(jwt = %auth.name, keys = set.len(), "JWK set fetched");
                auth.set_keys(set);
                true
            }
            Err(error) => {
                warn!(jwt = %auth.name, url = %url, %error, "JWK set fetch failed; keeping the keys held");
                false
            }
        };
        let last = Instant::now();
        let due = last + if ok { every } else { RETRY.min(every) };
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = Instant::now();
            if now >= due || (now >= last + UNKNOWN_KID_EVERY && auth.take_unknown_kid()) {
                break;
            }
        }
    }
}

/// `GET url` (http or https, verified against the system's CAs), the
/// body of a 200, within 10 s.
pub async fn fetch(url: &str) -> Result<Vec<u8>, String> {
    tokio::time::timeout(Duration::from_secs(10), fetch_inner(url))
        .await
        .map_err(|_| "timed out after 10s".to_string())?
}

async fn fetch_inner(url: &str) -> Result<Vec<u8>, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("not an http:// or https:// URL".into()),
    };
    let host = uri.host().ok_or("no host in the URL")?.to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tcp = tokio::net::TcpStream::connect((bare.as_str(), port))
        .await
        .map_err(|e| format!("connect to {host}:{port}: {e}"))?;
    let io = if tls {
        let cfg = centinela_tls::client_config(None)?;
        let s = centinela_tls::connect(tcp, &bare, cfg).await?;
        Stream::TlsClient(Box::new(s))
    } else {
        Stream::Tcp(tcp)
    };
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let conn = tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let req = http::Request::get(path)
        .header(
            http::header::HOST,
            uri.authority().map_or(host.as_str(), |a| a.as_str()),
        )
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, "centinela-jwks")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    if resp.status() != http::StatusCode::OK {
        conn.abort();
        return Err(format!("status {}", resp.status().as_u16()));
    }
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    conn.abort();
    Ok(body.to_vec())
}
