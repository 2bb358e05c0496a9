//! Bodies that flow through the proxy, streamed and never fully buffered
//! except for small request bodies kept for replay on retry.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;

use crate::balance::server::InFlight;
use crate::http::client::UpBody;
use crate::http::idle::IdleTimer;

/// The body sent to an upstream.
#[derive(Debug)]
pub enum ReqBody {
    Empty,
    /// A buffered body; cloned cheaply for each attempt.
    Full(Option<Bytes>),
    /// A streamed body (boxed: rare, and large; a request's body is moved
    /// several times on its way out, and a small enum moves in registers).
    Stream(Box<Streamed>),
}

/// A streamed body: the already-read prefix, then the rest of the client's
/// body, taken from `slot` on the first poll. Until it is polled the slot
/// still holds it, so an attempt that failed to connect can hand it on.
#[derive(Debug)]
pub struct Streamed {
    pub prefix: Option<Bytes>,
    pub slot: Arc<Mutex<Option<ClientBody>>>,
    pub taken: Option<ClientBody>,
    pub size: SizeHint,
    /// `timeouts.body_idle`: a client that stops sending is cut off.
    pub idle: IdleTimer,
    /// Bytes still allowed after the prefix (the route's `max_body`).
    pub left: u64,
}

/// A client body over the route's `max_body`.
#[derive(Debug)]
pub struct TooLarge;

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body is larger than max_body")
    }
}

impl std::error::Error for TooLarge {}

/// Is this the error of a body over `max_body`?
pub fn is_too_large(e: &BoxError) -> bool {
    e.downcast_ref::<TooLarge>().is_some()
}

/// The error of a client's body that stopped moving.
pub fn client_idle() -> BoxError {
    Box::new(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the client stopped sending its body",
    ))
}

/// Is this the error of [`client_idle`]?
pub fn is_client_idle(e: &BoxError) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
}

impl ReqBody {
    /// Another copy of a body that is still whole in memory.
    pub fn try_clone(&self) -> Option<ReqBody> {
        match self {
            ReqBody::Empty => Some(ReqBody::Empty),
            ReqBody::Full(b) => Some(ReqBody::Full(b.clone())),
            ReqBody::Stream(_) => None,
        }
    }
}

/// Why a client's body could not be read.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body as a client sends it.
#[derive(Debug)]
pub enum ClientBody {
    Empty,
    /// Read from an HTTP/1 connection (`h1.rs`).
    H1(crate::http::h1::RequestBody),
    /// An HTTP/2 stream (hyper).
    H2(Incoming),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Empty => Poll::Ready(None),
            ClientBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ClientBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Empty => true,
            ClientBody::H1(b) => b.is_end_stream(),
            ClientBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::H1(b) => b.size_hint(),
            ClientBody::H2(b) => b.size_hint(),
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ReqBody::Stream(s) => {
                let Streamed {
                    prefix,
                    slot,
                    taken,
                    idle,
                    left,
                    ..
                } = &mut **s;
                if taken.is_none() {
                    *taken = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                }
                if let Some(p) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                match taken {
                    Some(rest) => match Pin::new(rest).poll_frame(cx) {
                        Poll::Pending => match idle.poll_idle(cx) {
                            Poll::Ready(()) => Poll::Ready(Some(Err(client_idle()))),
                            Poll::Pending => Poll::Pending,
                        },
                        Poll::Ready(Some(Ok(frame))) => {
                            idle.progress();
                            let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                            if n > *left {
                                return Poll::Ready(Some(Err(Box::new(TooLarge))));
                            }
                            *left -= n;
                            Poll::Ready(Some(Ok(frame)))
                        }
                        ready => {
                            idle.progress();
                            ready
                        }
                    },
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Full(b) => b.is_none(),
            ReqBody::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ReqBody::Stream(s) => s.size,
        }
    }
}

/// Keeps a request's resources (its upstream slot and the server's in-flight
/// count) until the response body has been sent or dropped.
#[derive(Debug)]
pub struct Guards {
    pub in_flight: Option<InFlight>,
    pub permit: Option<OwnedSemaphorePermit>,
}

/// The body sent to a client.
#[derive(Debug)]
pub enum RespBody {
    Upstream {
        inner: UpBody,
        _guards: Guards,
        /// The route's response headers, written with the head.
        edge: Option<Arc<crate::http::headers::EdgeHeaders>>,
    },
    Full(Option<Bytes>),
    /// An upstream body whose start a stage read first (the WAF's
    /// response phases): that start, then the rest. Its own variant, not
    /// a wrapper: the plain path's calls stay flat (no recursion to keep
    /// them from being inlined).
    Prefixed {
        prefix: Option<Bytes>,
        inner: Box<UpBody>,
        _guards: Guards,
        edge: Option<Arc<crate::http::headers::EdgeHeaders>>,
    },
}

impl RespBody {
    /// Takes the route's response headers (no reference count touched).
    pub fn take_edge(&mut self) -> Option<Arc<crate::http::headers::EdgeHeaders>> {
        match self {
            RespBody::Upstream { edge, .. } => edge.take(),
            RespBody::Full(_) => None,
            RespBody::Prefixed { edge, .. } => edge.take(),
        }
    }

    pub fn full(b: impl Into<Bytes>) -> Self {
        RespBody::Full(Some(b.into()))
    }

    pub fn empty() -> Self {
        RespBody::Full(None)
    }

    /// This body, after `prefix` (already read from it).
    pub fn after(self, prefix: Bytes) -> RespBody {
        match self {
            RespBody::Upstream {
                inner,
                _guards,
                edge,
            } => RespBody::Prefixed {
                prefix: Some(prefix),
                inner: Box::new(inner),
                _guards,
                edge,
            },
            RespBody::Prefixed {
                prefix: left,
                inner,
                _guards,
                edge,
            } => RespBody::Prefixed {
                prefix: Some(match left {
                    Some(l) => [prefix, l].concat().into(),
                    None => prefix,
                }),
                inner,
                _guards,
                edge,
            },
            RespBody::Full(left) => RespBody::full(match left {
                Some(l) => [prefix, l].concat(),
                None => prefix.to_vec(),
            }),
        }
    }
}

impl RespBody {
    /// The next piece of the body if it is there now; no timer is armed
    /// for a wait (the caller polls again as a `Body` if it must wait).
    pub fn poll_frame_now(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, crate::http::client::Error>>> {
        match self {
            RespBody::Upstream { inner, .. } => inner.poll_data(cx, false),
            RespBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RespBody::Prefixed { prefix, inner, .. } => match prefix.take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => inner.poll_data(cx, false),
            },
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = crate::http::client::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            RespBody::Upstream { inner, .. } => Pin::new(inner).poll_frame(cx),
            RespBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RespBody::Prefixed { prefix, inner, .. } => match prefix.take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => Pin::new(&mut **inner).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Upstream { inner, .. } => inner.is_end_stream(),
            RespBody::Full(b) => b.is_none(),
            RespBody::Prefixed { prefix, inner, .. } => prefix.is_none() && inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Upstream { inner, .. } => inner.size_hint(),
            RespBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RespBody::Prefixed { prefix, inner, .. } => {
                let n = prefix.as_ref().map_or(0, |b| b.len() as u64);
                let r = inner.size_hint();
                let mut h = SizeHint::new();
                h.set_lower(r.lower() + n);
                if let Some(u) = r.upper() {
                    h.set_upper(u + n);
                }
                h
            }
        }
    }
}
