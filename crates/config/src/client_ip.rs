//! `[client_ip]`: which peers may say who the client is, with
//! `X-Forwarded-For` or the PROXY protocol.

use crate::cidr::Cidr;
use crate::diag::Sink;
use crate::read::Obj;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientIp {
    /// Proxies in front of centinela (load balancers, CDNs).
    pub trusted_proxies: Vec<Cidr>,
}

pub(crate) fn client_ip(sink: &mut Sink<'_>, top: &mut Obj<'_, '_>) -> ClientIp {
    let Some(mut o) = top.sub(sink, "client_ip") else {
        return ClientIp::default();
    };
    let (items, spans) = o.str_list(sink, "trusted_proxies");
    let path = o.child_path("trusted_proxies");
    let trusted_proxies = cidrs(sink, &items, &spans, &path);
    o.finish(sink);
    ClientIp { trusted_proxies }
}

/// Networks of a string list, each checked.
pub(crate) fn cidrs(
    sink: &mut Sink<'_>,
    items: &[String],
    spans: &[std::ops::Range<usize>],
    path: &str,
) -> Vec<Cidr> {
    let mut out = Vec::new();
    for (i, (s, span)) in items.iter().zip(spans).enumerate() {
        match Cidr::parse(s) {
            Ok((c, fixed)) => {
                if fixed {
                    sink.warn(
                        span,
                        &format!("{path}[{i}]"),
                        format!("{s} has host bits set; read as {c}"),
                    );
                }
                out.push(c);
            }
            Err(e) => sink.error(span, &format!("{path}[{i}]"), e),
        }
    }
    out
}
