//! Errors the gateway answers itself, and the one place that turns them into
//! HTTP responses: `{"error":"…","status":N,"request_id":"…"}`.

use http::{HeaderValue, Response, StatusCode};

use centinela_shield::Refusal;

use crate::http::body::RespBody;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("request head too large: {0}")]
    HeadTooLarge(&'static str),
    #[error("method not allowed: {0}")]
    MethodNotAllowed(&'static str),
    #[error("no route matches this request")]
    NoRoute,
    #[error("no healthy server in upstream")]
    NoHealthyServer,
    #[error("circuit open for every server in upstream")]
    CircuitOpen,
    #[error("upstream is at its concurrency limit and its queue is full")]
    QueueFull,
    #[error("timed out waiting in the upstream's queue")]
    QueueTimeout,
    #[error("could not connect to upstream server: {0}")]
    Connect(String),
    #[error("upstream connection failed: {0}")]
    Reset(String),
    #[error("upstream server did not answer in time")]
    Timeout,
    #[error("request deadline exceeded")]
    Deadline,
    #[error("could not read the request body: {0}")]
    ClientBody(String),
    #[error("the client stopped sending its request body")]
    ClientTimeout,
    /// This host ran out of something (file descriptors, buffers, ports):
    /// not the server's fault.
    #[error("out of local resources: {0}")]
    LocalResources(String),
    #[error("request body larger than the route's max_body")]
    BodyTooLarge,
    #[error("request target longer than the route's max_uri")]
    UriTooLong,
    /// The shield stage said no (an IP list, a rate limit). Boxed: a
    /// refusal is large (a rate limit's headers), and every stage's
    /// `Result` would otherwise be that large and copied at that size.
    #[error("refused: {}", .0.reason())]
    Refused(Box<centinela_shield::Refusal>),
    /// `[waf]`'s rules refused the request (403, or a rule's `status`).
    #[error("blocked by the WAF")]
    Waf(u16),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) | ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::LocalResources(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::HeadTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoHealthyServer
            | ProxyError::CircuitOpen
            | ProxyError::QueueFull
            | ProxyError::QueueTimeout => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect(_) | ProxyError::Reset(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout | ProxyError::Deadline => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::UriTooLong => StatusCode::URI_TOO_LONG,
            ProxyError::Waf(s) => StatusCode::from_u16(*s).unwrap_or(StatusCode::FORBIDDEN),
            ProxyError::Refused(r) => match **r {
                Refusal::IpDenied => StatusCode::FORBIDDEN,
                Refusal::Unauthorized(_) => StatusCode::UNAUTHORIZED,
                Refusal::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            },
        }
    }

    /// The message shown to clients: no addresses or internals.
    pub fn public_message(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(m)
            | ProxyError::HeadTooLarge(m)
            | ProxyError::MethodNotAllowed(m) => m,
            ProxyError::NoRoute => "no route matches this request",
            ProxyError::NoHealthyServer => "no healthy server available",
            ProxyError::CircuitOpen => "circuit open for every server",
            ProxyError::QueueFull => "upstream overloaded: queue full",
            ProxyError::QueueTimeout => "upstream overloaded: queue timeout",
            ProxyError::Connect(_) => "upstream unreachable",
            ProxyError::Reset(_) => "upstream connection failed",
            ProxyError::Timeout => "upstream timed out",
            ProxyError::Deadline => "request deadline exceeded",
            ProxyError::ClientBody(_) => "could not read request body",
            ProxyError::ClientTimeout => "request body timed out",
            ProxyError::LocalResources(_) => "gateway out of resources",
            ProxyError::BodyTooLarge => "request body too large",
            ProxyError::UriTooLong => "request target too long",
            ProxyError::Waf(_) => "request blocked by the web application firewall",
            ProxyError::Refused(r) => match &**r {
                Refusal::IpDenied => "forbidden",
                Refusal::Unauthorized(f) => f.as_str(),
                Refusal::RateLimited { .. } => "rate limit exceeded",
            },
        }
    }

    pub fn into_response(self, request_id: &HeaderValue) -> Response<RespBody> {
        let status = self.status();
        let body = serde_json::json!({
            "error": self.public_message(),
            "status": status.as_u16(),
            "request_id": request_id.to_str().unwrap_or(""),
        });
        let mut resp = Response::new(RespBody::full(body.to_string()));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(crate::http::headers::X_REQUEST_ID, request_id.clone());
        let refusal = match &self {
            ProxyError::Refused(r) => Some(&**r),
            _ => None,
        };
        if let Some(Refusal::Unauthorized(f)) = refusal {
            // RFC 6750 §3.1: no error code when no token came.
            h.insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static(if *f == centinela_shield::jwt::Failure::Missing {
                    "Bearer"
                } else {
                    "Bearer error=\"invalid_token\""
                }),
            );
        }
        if let Some(Refusal::RateLimited {
            retry_after,
            policy,
            state,
            ..
        }) = refusal
        {
            h.insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(retry_after.as_secs()),
            );
            h.insert("ratelimit-policy", policy.clone());
            h.insert("ratelimit", state.clone());
        }
        if matches!(
            self,
            ProxyError::BadRequest(_)
                | ProxyError::HeadTooLarge(_)
                | ProxyError::MethodNotAllowed(_)
        ) {
            h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}
