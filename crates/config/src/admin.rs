//! `[admin]`: the admin listener (health, readiness, metrics, the
//! dashboard, control endpoints) and who may use it.

use std::net::SocketAddr;
use std::path::Path;

use crate::diag::Sink;
use crate::read::Obj;
use crate::secret::Secret;

#[derive(Clone, Debug)]
pub struct Admin {
    pub listen: SocketAddr,
    /// When set, every endpoint but `/-/health`, `/-/live` and `/-/ready`
    /// needs `Authorization: Bearer TOKEN` (or the dashboard's cookie).
    pub token: Option<Secret>,
    /// Bind a non-loopback address without a token.
    pub allow_remote_without_token: bool,
}

/// The shortest token accepted: 128 bits of hex.
pub const MIN_TOKEN_LEN: usize = 16;

pub(crate) fn admin(sink: &mut Sink<'_>, top: &mut Obj<'_, '_>, base_dir: &Path) -> Admin {
    let Some(mut a) = top.sub(sink, "admin") else {
        return Admin {
            listen: default_admin(),
            token: None,
            allow_remote_without_token: false,
        };
    };
    let listen = a.addr(sink, "listen");
    let token_span = a.get("token").map(|v| v.span());
    let token = a.secret(sink, "token", base_dir);
    if let (Some(t), Some(span)) = (&token, &token_span) {
        // It travels in a header and a cookie: printable ASCII without
        // the characters those give a meaning to.
        if t.expose().len() < MIN_TOKEN_LEN {
            sink.error(
                span,
                "admin.token",
                format!(
                    "the token ({}) is shorter than {MIN_TOKEN_LEN} characters; make one with `openssl rand -hex 32`",
                    t.origin()
                ),
            );
        } else if !t
            .expose()
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"\";,\\".contains(&b))
        {
            sink.error(
                span,
                "admin.token",
                format!(
                    "the token ({}) may hold only printable ASCII without spaces, quotes, ';', ',' or '\\'",
                    t.origin()
                ),
            );
        }
    }
    let allow_remote = a.bool(sink, "allow_remote_without_token", false);
    a.finish(sink);
    if let Some((addr, span)) = &listen {
        if !addr.ip().is_loopback() && token_span.is_none() {
            if allow_remote {
                sink.warn(
                    span,
                    "admin.listen",
                    format!("the admin API on {addr} is reachable from the network without a token ([admin] allow_remote_without_token = true): anyone who reaches it can stop services and read metrics"),
                );
            } else {
                sink.error(
                    span,
                    "admin.listen",
                    format!("{addr} is not a loopback address and [admin] has no token: set `token = \"file:…\"` (or `env:…`), or `allow_remote_without_token = true` if a firewall guards it"),
                );
            }
        }
    }
    Admin {
        listen: listen.map_or_else(default_admin, |(a, _)| a),
        token,
        allow_remote_without_token: allow_remote,
    }
}

fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}

#[cfg(test)]
mod tests {
    use crate::parse;

    const BASE: &str = "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[[route]]\nupstream = \"u\"\n[upstream.u]\nservers = [\"127.0.0.1:9\"]\n";

    fn load(admin: &str) -> Result<crate::Loaded, String> {
        parse(&format!("{BASE}[admin]\n{admin}"), "c.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn a_remote_admin_bind_needs_a_token_or_an_explicit_opt_out() {
        let e = load("listen = \"0.0.0.0:9901\"\n").unwrap_err();
        assert!(
            e.contains("c.toml:9:10")
                && e.contains("not a loopback address and [admin] has no token"),
            "{e}"
        );
        let l = load("listen = \"0.0.0.0:9901\"\nallow_remote_without_token = true\n").unwrap();
        assert!(
            l.warnings[0]
                .message
                .contains("reachable from the network without a token"),
            "{:?}",
            l.warnings
        );
        let l = load("listen = \"0.0.0.0:9901\"\ntoken = \"0123456789abcdef0123\"\n").unwrap();
        assert_eq!(
            l.config.admin.token.unwrap().expose(),
            "0123456789abcdef0123"
        );
        assert!(load("listen = \"[::1]:9901\"\n").is_ok());
    }

    #[test]
    fn a_weak_or_unusable_token_is_an_error_that_hides_it() {
        let e = load("token = \"short\"\n").unwrap_err();
        assert!(
            e.contains("shorter than 16") && !e.contains("\"short\""),
            "{e}"
        );
        let e = load("token = \"0123456789abcdef;0123\"\n").unwrap_err();
        assert!(
            e.contains("printable ASCII") && !e.contains("0123456789abcdef"),
            "{e}"
        );
        let e = load("token = \"env:CENTINELA_SURELY_UNSET_TOKEN\"\n").unwrap_err();
        assert!(e.contains("CENTINELA_SURELY_UNSET_TOKEN is not set"), "{e}");
    }
}
