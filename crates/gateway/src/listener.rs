//! Accepting connections and serving HTTP/1.1 (keep-alive, upgrades) and
//! HTTP/2 cleartext (prior knowledge) on them, with graceful drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::framing::Sniff;
use crate::proxy::{handle, Shared};
use std::sync::atomic::{AtomicBool, Ordering};

pub fn builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        // One flat buffer per write: `send` instead of `writev`, which
        // costs more in the kernel for the small writes of most responses.
        .writev(false)
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
    stop: impl Future<Output = ()>,
) {
    let builder = builder();
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
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
                serve_connection(&builder, &graceful, stream, peer, name.clone(), shared.clone());
            }
            _ = &mut stop => break,
        }
    }
    drop(listener);
    info!(listener = &*name, "Listener closed, draining connections");
    graceful.shutdown().await;
}

fn serve_connection(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    name: Arc<str>,
    shared: Arc<Shared>,
) {
    let smuggling = Arc::new(AtomicBool::new(false));
    let flag = smuggling.clone();
    let svc = hyper::service::service_fn(move |req| {
        let smuggled = flag.load(Ordering::Acquire);
        handle(shared.clone(), name.clone(), peer, smuggled, req)
    });
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(Sniff::new(stream, smuggling)), svc)
        .into_owned();
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        let _ = conn.await;
    });
}
