//! HTTP/1.1 on both sides of the proxy, and the bodies and headers that
//! flow between them. Nothing here knows about routes or upstreams.
//!
//! - `h1`: centinela's HTTP/1.1 server for clients (and the hand-off of an
//!   HTTP/2 preface to hyper's server).
//! - `client`: centinela's HTTP/1.1 client to servers; `pool`: each
//!   server's keep-alive connections.
//! - `codec`: what both sides share: header fields, framing, the strict
//!   body decoder, the read buffer.
//! - `target`: the request target and authority, checked and normalized
//!   once, so that routing and forwarding read the same values.
//! - `headers`: hop-by-hop removal, X-Forwarded-*, X-Request-Id.
//! - `body`: the body types that flow through the proxy.
//! - `io`: a connection's bytes, plain TCP or TLS.

pub mod body;
pub mod client;
pub mod codec;
pub mod h1;
pub mod headers;
pub mod idle;
pub mod io;
pub mod pool;
pub mod target;
