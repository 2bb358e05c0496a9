//! `[jwt.NAME]`: how tokens are verified on routes with `auth = "NAME"`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::DeValue;

use crate::diag::Sink;
use crate::read::{is_name, is_token, Obj};
use crate::secret::Secret;

pub const ALGORITHMS: [&str; 12] = [
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Jwt {
    pub name: String,
    pub algorithms: Vec<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub keys: JwtKeys,
    pub leeway: Duration,
    /// A token without `exp` is refused.
    pub require_exp: bool,
    /// `header` (`Authorization: Bearer`) or `cookie:NAME`.
    pub token_from: Option<String>,
    /// `(claim, header name)`, header names lower-case.
    pub forward_claims: Vec<(String, String)>,
    pub jwks_refresh: Duration,
}

/// Where the keys come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwtKeys {
    /// A JWK set fetched over HTTP(S).
    Url(String),
    /// A JWK set in a file, read at each reload.
    File(PathBuf),
    /// A shared secret for HS*.
    Secret(Secret),
}

pub(crate) fn jwts(sink: &mut Sink<'_>, top: &mut Obj<'_, '_>, base_dir: &Path) -> Vec<Jwt> {
    let mut out = Vec::new();
    let Some(all) = top.sub(sink, "jwt") else {
        return out;
    };
    for (k, v) in all.table.iter() {
        let name: &str = k.get_ref().as_ref();
        let path = format!("jwt.{name}");
        if !is_name(name) {
            sink.error(
                &k.span(),
                &path,
                format!("{name:?} is not a valid name: use letters, digits, '-', '_' and '.'"),
            );
        }
        let Some(mut o) = Obj::new(sink, v, &path) else {
            continue;
        };
        let (algs, spans) = o.str_list(sink, "algorithms");
        if algs.is_empty() {
            sink.error(
                &v.span(),
                &o.child_path("algorithms"),
                format!("algorithms is required: some of {}", ALGORITHMS.join(", ")),
            );
        }
        for (i, (a, span)) in algs.iter().zip(&spans).enumerate() {
            if !ALGORITHMS.contains(&a.as_str()) {
                let why = if a.eq_ignore_ascii_case("none") {
                    "\"none\" is never accepted (unsigned tokens)".to_string()
                } else {
                    format!(
                        "unknown algorithm {a:?}; expected one of {}",
                        ALGORITHMS.join(", ")
                    )
                };
                sink.error(span, &format!("{}[{i}]", o.child_path("algorithms")), why);
            }
        }
        let hmac = algs.iter().any(|a| a.starts_with("HS"));
        let public = algs.iter().any(|a| !a.starts_with("HS"));
        let issuer = o.str(sink, "issuer").map(|(s, _)| s);
        let audience = o.str(sink, "audience").map(|(s, _)| s);
        let url = o.str(sink, "jwks_url");
        let file = o.str(sink, "jwks_file");
        let secret_span = o.peek("secret").map(|v| v.span());
        let secret = o.secret(sink, "secret", base_dir);
        let given = usize::from(url.is_some())
            + usize::from(file.is_some())
            + usize::from(secret_span.is_some());
        let keys = match (url, file, secret) {
            _ if given != 1 => {
                if given == 0 {
                    sink.error(
                        &v.span(),
                        &path,
                        "one of jwks_url, jwks_file or secret is required",
                    );
                } else {
                    sink.error(
                        &v.span(),
                        &path,
                        "give only one of jwks_url, jwks_file and secret",
                    );
                }
                None
            }
            (Some((u, span)), _, _) => {
                if !(u.starts_with("https://") || u.starts_with("http://")) {
                    sink.error(
                        &span,
                        &o.child_path("jwks_url"),
                        "an http:// or https:// URL",
                    );
                }
                Some(JwtKeys::Url(u))
            }
            (_, Some((f, span)), _) => {
                let p = base_dir.join(f);
                if let Err(e) = std::fs::read(&p) {
                    sink.error(
                        &span,
                        &o.child_path("jwks_file"),
                        format!("cannot read {}: {}", p.display(), e.kind()),
                    );
                }
                Some(JwtKeys::File(p))
            }
            (_, _, Some(s)) => {
                let span = secret_span.unwrap_or(0..0);
                if public {
                    sink.error(&span, &o.child_path("secret"), "a secret verifies HS* tokens only; RS/PS/ES/EdDSA need jwks_url or jwks_file");
                }
                // RFC 7518 §3.2: a key at least as long as the hash.
                let need = algs
                    .iter()
                    .filter_map(|a| a.strip_prefix("HS"))
                    .filter_map(|b| b.parse::<usize>().ok())
                    .max()
                    .unwrap_or(256)
                    / 8;
                if s.expose().len() < need {
                    sink.error(
                        &span,
                        &o.child_path("secret"),
                        format!(
                            "the secret ({}) is {} bytes; HS{} needs at least {need}",
                            s.origin(),
                            s.expose().len(),
                            need * 8
                        ),
                    );
                }
                Some(JwtKeys::Secret(s))
            }
            _ => None,
        };
        if hmac && public {
            sink.error(&v.span(), &o.child_path("algorithms"), "mixing HS* with public-key algorithms invites algorithm confusion: use two [jwt.NAME]");
        }
        let leeway = o.duration(sink, "leeway", Duration::from_secs(30));
        let require_exp = o.bool(sink, "require_exp", true);
        let token_from = o.str(sink, "token_from").and_then(|(t, span)| {
            if t == "header" {
                return None;
            }
            match t.strip_prefix("cookie:") {
                Some(c) if is_token(c) => Some(t),
                _ => {
                    sink.error(
                        &span,
                        &o.child_path("token_from"),
                        "expected \"header\" (Authorization: Bearer) or \"cookie:NAME\"",
                    );
                    None
                }
            }
        });
        let mut forward_claims = Vec::new();
        if let Some(fc) = o.sub(sink, "forward_claims") {
            for (ck, cv) in fc.table.iter() {
                let claim: &str = ck.get_ref().as_ref();
                match cv.get_ref() {
                    DeValue::String(h) if is_token(h) => {
                        forward_claims.push((claim.to_string(), h.to_ascii_lowercase()))
                    }
                    _ => sink.error(
                        &cv.span(),
                        &format!("{path}.forward_claims.{claim}"),
                        "expected a header name such as \"X-User-Id\"",
                    ),
                }
            }
        }
        let jwks_refresh = o.duration_min(
            sink,
            "jwks_refresh",
            Duration::from_secs(600),
            Duration::from_secs(1),
        );
        o.finish(sink);
        if let Some(keys) = keys {
            out.push(Jwt {
                name: name.to_string(),
                algorithms: algs,
                issuer,
                audience,
                keys,
                leeway,
                require_exp,
                token_from,
                forward_claims,
                jwks_refresh,
            });
        }
    }
    out
}
