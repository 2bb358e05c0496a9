//! Secret values: a password, a token, a URL with a token in it. The file
//! may hold one as `env:NAME` (an environment variable), `file:PATH` (the
//! file's content, trailing newline removed), `systemd-creds:NAME` (the
//! credential `NAME` systemd passes in `$CREDENTIALS_DIRECTORY`, from
//! `LoadCredential=` or `LoadCredentialEncrypted=`), or literally (which
//! `check` warns about).
//!
//! References are resolved when the config is read, so a missing variable
//! or file is a `check` error that names the key and the reference, never
//! the value. A [`Secret`] never prints its value: `Debug` and `Display`
//! show where it came from, and only [`Secret::expose`] gives it out, to
//! the code that sends it.

use std::fmt;
use std::path::Path;

use crate::diag::Sink;
use crate::read::Obj;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: String,
    /// `env:NAME`, `file:PATH`, or `literal` (never the value).
    origin: String,
}

impl Secret {
    /// The value, for the code that uses it (a header, a login). Never log it.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// Where it came from: `env:NAME`, `file:PATH` or `literal`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// A secret made in code (tests, defaults).
    pub fn literal(value: impl Into<String>) -> Secret {
        Secret {
            value: value.into(),
            origin: "literal".into(),
        }
    }

    /// Resolves `env:NAME`, `file:PATH` (relative to `base_dir`) or a
    /// literal. The error names the reference, never a value.
    pub fn resolve(text: &str, base_dir: &Path) -> Result<Secret, String> {
        if let Some(name) = text.strip_prefix("env:") {
            if name.is_empty() {
                return Err("`env:` needs a variable name, e.g. \"env:SMTP_PASSWORD\"".into());
            }
            return match std::env::var(name) {
                Ok(v) if !v.is_empty() => Ok(Secret {
                    value: v,
                    origin: text.to_string(),
                }),
                Ok(_) => Err(format!("environment variable {name} is empty")),
                Err(_) => Err(format!("environment variable {name} is not set")),
            };
        }
        if let Some(name) = text.strip_prefix("systemd-creds:") {
            if name.is_empty() || name.contains('/') {
                return Err(
                    "`systemd-creds:` needs a credential name, e.g. \"systemd-creds:jwt-secret\""
                        .into(),
                );
            }
            let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                format!("systemd-creds:{name}: $CREDENTIALS_DIRECTORY is not set (run under systemd with LoadCredential={name}:…)")
            })?;
            let path = Path::new(&dir).join(name);
            return match std::fs::read_to_string(&path) {
                Ok(v) => {
                    let v = v.strip_suffix('\n').unwrap_or(&v);
                    if v.is_empty() {
                        Err(format!("credential {name} is empty"))
                    } else {
                        Ok(Secret {
                            value: v.to_string(),
                            origin: text.to_string(),
                        })
                    }
                }
                Err(e) => Err(format!(
                    "cannot read credential {name} in $CREDENTIALS_DIRECTORY: {}",
                    e.kind()
                )),
            };
        }
        if let Some(p) = text.strip_prefix("file:") {
            if p.is_empty() {
                return Err("`file:` needs a path, e.g. \"file:/etc/centinela/token\"".into());
            }
            let path = base_dir.join(p);
            return match std::fs::read_to_string(&path) {
                Ok(v) => {
                    let v = v.strip_suffix('\n').unwrap_or(&v);
                    let v = v.strip_suffix('\r').unwrap_or(v);
                    if v.is_empty() {
                        Err(format!("secret file {} is empty", path.display()))
                    } else {
                        Ok(Secret {
                            value: v.to_string(),
                            origin: text.to_string(),
                        })
                    }
                }
                Err(e) => Err(format!(
                    "cannot read secret file {}: {}",
                    path.display(),
                    e.kind()
                )),
            };
        }
        if text.is_empty() {
            return Err("empty value".into());
        }
        Ok(Secret {
            value: text.to_string(),
            origin: "literal".into(),
        })
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.origin)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<secret {}>", self.origin)
    }
}

impl Obj<'_, '_> {
    /// A secret-valued key: `env:NAME`, `file:PATH` or a literal.
    pub(crate) fn secret(
        &mut self,
        sink: &mut Sink<'_>,
        key: &'static str,
        base_dir: &Path,
    ) -> Option<Secret> {
        let (text, span) = self.str(sink, key)?;
        match Secret::resolve(&text, base_dir) {
            Ok(s) => {
                if s.origin == "literal" && looks_secret(key) {
                    sink.warn(
                        &span,
                        &self.child_path(key),
                        format!("{key} holds its value in the config file: use \"env:NAME\", \"file:PATH\" or \"systemd-creds:NAME\""),
                    );
                }
                if let Some(p) = text.strip_prefix("file:") {
                    if let Some(w) = centinela_tls::server::readable_by_others(&base_dir.join(p)) {
                        sink.warn(&span, &self.child_path(key), w);
                    }
                }
                Some(s)
            }
            Err(e) => {
                sink.error(&span, &self.child_path(key), e);
                None
            }
        }
    }
}

/// Is a key named like a secret (`secret`, `password`, `token`, `key`)?
fn looks_secret(key: &str) -> bool {
    ["secret", "password", "token", "key"]
        .iter()
        .any(|w| key.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_resolve_and_never_print_their_value() {
        let dir = std::env::temp_dir().join(format!("centinela-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tok"), "s3cr3t-value\n").unwrap();
        let s = Secret::resolve("file:tok", &dir).unwrap();
        assert_eq!(s.expose(), "s3cr3t-value");
        assert_eq!(format!("{s:?} {s}"), "Secret(file:tok) <secret file:tok>");
        let lit = Secret::resolve("http://hook/T0/B0/xyz", &dir).unwrap();
        assert!(!format!("{lit:?}{lit}").contains("xyz"));
        let err = Secret::resolve("env:CENTINELA_SURELY_UNSET_VAR", &dir).unwrap_err();
        assert!(
            err.contains("CENTINELA_SURELY_UNSET_VAR is not set"),
            "{err}"
        );
        let err = Secret::resolve("file:missing", &dir).unwrap_err();
        assert!(err.contains("cannot read secret file"), "{err}");
        // systemd credentials, from $CREDENTIALS_DIRECTORY.
        std::fs::write(dir.join("jwt-key"), "from-systemd\n").unwrap();
        std::env::set_var("CREDENTIALS_DIRECTORY", &dir);
        let s = Secret::resolve("systemd-creds:jwt-key", &dir).unwrap();
        assert_eq!(
            (s.expose(), s.origin()),
            ("from-systemd", "systemd-creds:jwt-key")
        );
        let err = Secret::resolve("systemd-creds:nope", &dir).unwrap_err();
        assert!(err.contains("cannot read credential nope"), "{err}");
        assert!(Secret::resolve("systemd-creds:../x", &dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
