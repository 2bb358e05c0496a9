//! Accepting connections and serving them (`h1.rs`: HTTP/1.1 with
//! keep-alive and upgrades, HTTP/2 cleartext with prior knowledge), with
//! graceful drain.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

use crate::http::io::Stream;
use crate::proxy::Shared;

/// A listener's TLS settings, swapped when its certificates are reloaded
/// (new connections get the new ones; established ones keep their
/// session). Empty: plain HTTP.
pub type Tls = arc_swap::ArcSwapOption<rustls::ServerConfig>;

/// A connection from a trusted proxy on a listener with
/// `proxy_protocol = true`: its PROXY header (v1 or v2) names the client,
/// within the listener's `header_timeout`; a connection without a valid one
/// is closed. Then TLS or HTTP as on any connection.
async fn proxied(
    mut stream: tokio::net::TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    peer: std::net::SocketAddr,
    name: Arc<str>,
    shared: Arc<Shared>,
    draining: watch::Receiver<bool>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let timeout = crate::http::h1::Settings::of(&shared, &name).header_timeout;
    let client = match tokio::time::timeout(timeout, proxy_header(&mut stream)).await {
        Ok(Ok(Some(client))) => client,
        Ok(Ok(None)) => peer,
        Ok(Err(e)) => {
            debug!(listener = &*name, peer = %peer, error = e, "Bad PROXY protocol header; closing");
            return;
        }
        Err(_) => {
            debug!(listener = &*name, peer = %peer, "No PROXY protocol header in time; closing");
            return;
        }
    };
    match tls {
        None => {
            crate::http::h1::serve(
                Stream::Tcp(stream),
                client,
                name,
                shared,
                draining,
                permit,
                false,
            )
            .await
        }
        Some(cfg) => handshake(stream, cfg, client, name, shared, draining, permit).await,
    }
}

/// Reads a PROXY protocol header off the stream, and nothing past it: the
/// client's address, or `None` for a LOCAL or UNKNOWN one (the peer
/// stands).
async fn proxy_header(
    stream: &mut tokio::net::TcpStream,
) -> Result<Option<std::net::SocketAddr>, &'static str> {
    use centinela_shield::proxy_protocol::{parse, Header};
    use tokio::io::AsyncReadExt;
    // The longest v2 header with IPv6 addresses and room for TLVs.
    let mut buf = [0u8; 536];
    loop {
        stream.readable().await.map_err(|_| "connection failed")?;
        let n = stream
            .peek(&mut buf)
            .await
            .map_err(|_| "connection failed")?;
        if n == 0 {
            return Err("connection closed before its PROXY header");
        }
        match parse(&buf[..n])? {
            Some((h, len)) => {
                stream
                    .read_exact(&mut buf[..len])
                    .await
                    .map_err(|_| "connection failed")?;
                return Ok(match h {
                    Header::Proxied(a) => Some(a),
                    Header::Local => None,
                });
            }
            // Part of it has come: the rest is on its way.
            None if n < buf.len() => tokio::time::sleep(Duration::from_millis(2)).await,
            None => return Err("PROXY header too long"),
        }
    }
}

/// The TLS handshake of one client connection, within the listener's
/// `header_timeout`; then HTTP/2 when ALPN chose it, else HTTP/1.1.
async fn handshake(
    stream: tokio::net::TcpStream,
    cfg: Arc<rustls::ServerConfig>,
    peer: std::net::SocketAddr,
    name: Arc<str>,
    shared: Arc<Shared>,
    draining: watch::Receiver<bool>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let timeout = crate::http::h1::Settings::of(&shared, &name).header_timeout;
    let accept = tokio_rustls::TlsAcceptor::from(cfg).accept(stream);
    let tls = match tokio::time::timeout(timeout, accept).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(listener = &*name, client = %peer, error = %e, "TLS handshake failed");
            shared.tls.handshakes.count(&name, false);
            return;
        }
        Err(_) => {
            debug!(listener = &*name, client = %peer, "TLS handshake timed out");
            shared.tls.handshakes.count(&name, false);
            return;
        }
    };
    shared.tls.handshakes.count(&name, true);
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    crate::http::h1::serve(
        Stream::TlsServer(Box::new(tls)),
        peer,
        name,
        shared,
        draining,
        permit,
        h2,
    )
    .await;
}

/// hyper's server, for the admin API.
pub fn builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(crate::http::h1::HEAD_TIMEOUT)
        .keep_alive(true);
    b.http2().timer(TokioTimer::new());
    b
}

/// Serves `listener` until `stop` completes, then stops accepting and waits
/// for open connections to finish their in-flight requests (idle keep-alive
/// connections are closed at once; HTTP/2 clients get GOAWAY).
pub async fn serve(
    listener: TcpListener,
    name: Arc<str>,
    shared: Arc<Shared>,
    max_connections: u32,
    tls: Arc<Tls>,
    proxy_protocol: bool,
    stop: impl Future<Output = ()>,
) {
    // Every connection holds a receiver; the drain is over when the last
    // one is dropped.
    let (drain, draining) = watch::channel(false);
    // One permit per open connection: past `max_connections`, accepts
    // pause (the kernel's backlog holds new clients) until one closes.
    let slots = Arc::new(Semaphore::new(max_connections as usize));
    let mut full = false;
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut stop => break,
        };
        if std::mem::take(&mut full) {
            info!(listener = &*name, "Below max_connections again: accepting");
        }
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        warn!(listener = &*name, error = %e, "Accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                if slots.available_permits() == 0 {
                    full = true;
                    warn!(listener = &*name, max_connections, "At max_connections: accepts paused");
                }
                let tls = tls.load_full();
                if proxy_protocol && shared.snapshot.load().trusted.contains(peer.ip()) {
                    tokio::spawn(proxied(
                        stream,
                        tls,
                        peer,
                        name.clone(),
                        shared.clone(),
                        draining.clone(),
                        permit,
                    ));
                    continue;
                }
                match tls {
                    None => {
                        tokio::spawn(crate::http::h1::serve(
                            Stream::Tcp(stream),
                            peer,
                            name.clone(),
                            shared.clone(),
                            draining.clone(),
                            permit,
                            false,
                        ));
                    }
                    Some(cfg) => {
                        tokio::spawn(handshake(
                            stream,
                            cfg,
                            peer,
                            name.clone(),
                            shared.clone(),
                            draining.clone(),
                            permit,
                        ));
                    }
                }
            }
            _ = &mut stop => break,
        }
    }
    drop(listener);
    info!(listener = &*name, "Listener closed, draining connections");
    drop(draining);
    let _ = drain.send(true);
    drain.closed().await;
}
