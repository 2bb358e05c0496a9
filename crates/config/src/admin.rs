//! `[admin]`: the admin listener (health, readiness, control endpoints).

use std::net::SocketAddr;

use crate::diag::Sink;
use crate::read::Obj;

#[derive(Clone, Debug)]
pub struct Admin {
    /// `/-/health`, `/-/ready` and later metrics and control endpoints.
    pub listen: SocketAddr,
}

pub(crate) fn admin(sink: &mut Sink<'_>, top: &mut Obj<'_, '_>) -> Admin {
    match top.sub(sink, "admin") {
        Some(mut a) => {
            let listen = a.addr(sink, "listen").map(|(a, _)| a);
            a.finish(sink);
            Admin {
                listen: listen.unwrap_or_else(default_admin),
            }
        }
        None => Admin {
            listen: default_admin(),
        },
    }
}

fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}
