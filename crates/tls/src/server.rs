//! TLS for centinela's listeners: rustls server settings from PEM files,
//! the certificate chosen by SNI, session resumption that survives
//! certificate reloads, and the checks `centinela check` reports on a
//! certificate and its key.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, StoresServerSessions};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::load_certs;

/// One certificate chain and its private key, as PEM files.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a listener's TLS is made of.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerSettings {
    /// The first is the default, for clients that send no name or one no
    /// certificate covers.
    pub certs: Vec<CertFiles>,
    /// TLS 1.3 only (`min_version = "1.3"`); else 1.2 and 1.3.
    pub tls13_only: bool,
}

/// Session resumption state: tickets (TLS 1.3 and 1.2) and a session-id
/// cache (TLS 1.2). Kept by the gateway for its lifetime and shared by
/// every settings built, so that a certificate reload does not end
/// resumption for clients that hold a ticket.
pub struct Resumption {
    ticketer: Arc<dyn ProducesTickets>,
    cache: Arc<dyn StoresServerSessions>,
}

impl Resumption {
    pub fn new() -> Result<Resumption, String> {
        Ok(Resumption {
            // Keys rotate every 6 hours; tickets stay valid for 12.
            ticketer: rustls::crypto::ring::Ticketer::new()
                .map_err(|e| format!("TLS session tickets: {e}"))?,
            cache: rustls::server::ServerSessionMemoryCache::new(20_000),
        })
    }
}

fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The server settings for `s`: every certificate loaded and its key
/// checked against it, ALPN `h2` then `http/1.1`. The error names the
/// file at fault and why, never a key's bytes.
pub fn server_config(s: &ServerSettings, res: &Resumption) -> Result<Arc<ServerConfig>, String> {
    if s.certs.is_empty() {
        return Err("no certificate".into());
    }
    let mut keys = Vec::with_capacity(s.certs.len());
    for f in &s.certs {
        let key = certified_key(f)?;
        let names = dns_names(&key.cert[0]);
        keys.push((names, Arc::new(key)));
    }
    let builder = ServerConfig::builder_with_provider(provider());
    let builder = if s.tls13_only {
        builder.with_protocol_versions(&[&rustls::version::TLS13])
    } else {
        builder.with_safe_default_protocol_versions()
    }
    .map_err(|e| format!("TLS settings: {e}"))?;
    let mut cfg = builder
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Sni { keys }));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg.ticketer = res.ticketer.clone();
    cfg.session_storage = res.cache.clone();
    // Two tickets after a full handshake (rustls's default is 2 too):
    // enough for a client that opens two connections at once.
    cfg.send_tls13_tickets = 2;
    Ok(Arc::new(cfg))
}

/// A chain and its key, read and matched.
fn certified_key(f: &CertFiles) -> Result<CertifiedKey, String> {
    let chain = load_certs(&f.cert)?;
    let key = load_key(&f.key)?;
    let signer = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{}: unusable private key: {e}", f.key.display()))?;
    let ck = CertifiedKey::new(chain, signer);
    match ck.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(format!(
                "{} does not match the certificate in {} (its public key differs)",
                f.key.display(),
                f.cert.display()
            ))
        }
        Err(e) => return Err(format!("{}: {e}", f.cert.display())),
    }
    Ok(ck)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        use rustls::pki_types::pem::Error;
        match e {
            Error::Io(e) => format!("{}: cannot read: {}", path.display(), e.kind()),
            Error::NoItemsFound => format!("{}: no PEM private key in the file", path.display()),
            _ => format!("{}: not a valid PEM private key", path.display()),
        }
    })
}

/// The DNS names (and wildcards) of a certificate's subjectAltName,
/// lower-cased.
fn dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    match webpki::EndEntityCert::try_from(cert) {
        Ok(ee) => ee
            .valid_dns_names()
            .map(|n| n.to_ascii_lowercase())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The certificate for the name the client asked for (SNI): one whose
/// names cover it exactly, or by a wildcard of one label; else the first.
#[derive(Debug)]
struct Sni {
    keys: Vec<(Vec<String>, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for Sni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if self.keys.len() > 1 {
            if let Some(name) = hello.server_name() {
                if let Some(k) = self.pick(name) {
                    return Some(k.clone());
                }
            }
        }
        self.keys.first().map(|(_, k)| k.clone())
    }
}

impl Sni {
    fn pick(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        let exact = self
            .keys
            .iter()
            .find(|(names, _)| names.iter().any(|n| n.eq_ignore_ascii_case(name)));
        let wild = || {
            let (_, parent) = name.split_once('.')?;
            self.keys.iter().find(|(names, _)| {
                names.iter().any(|n| {
                    n.strip_prefix("*.")
                        .is_some_and(|p| p.eq_ignore_ascii_case(parent))
                })
            })
        };
        exact.or_else(wild).map(|(_, k)| k)
    }
}

/// What `check` says about a certificate file and its key: errors stop
/// the config, warnings are printed.
#[derive(Debug, Default)]
pub struct Report {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// Checks one certificate chain and its key: both readable, the key
/// matching the certificate, the chain in order and ending at a CA the
/// system knows (or a self-signed one), the expiry (a warning under
/// `warn_days`), and the key file unreadable by group and others.
pub fn inspect(f: &CertFiles, now: SystemTime, warn_days: u64) -> Report {
    let mut r = Report::default();
    let ck = match certified_key(f) {
        Ok(ck) => ck,
        Err(e) => {
            r.errors.push(e);
            return r;
        }
    };
    let chain = &ck.cert;
    let certs: Vec<_> = chain
        .iter()
        .map(|c| webpki::EndEntityCert::try_from(c).ok())
        .collect();
    if let Some(leaf) = chain.first() {
        if let Some(v) = crate::validity(leaf) {
            let now = now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let left = v.not_after - now;
            if left < 0 {
                r.warnings.push(format!(
                    "{}: the certificate expired on {}",
                    f.cert.display(),
                    civil_date(v.not_after)
                ));
            } else if left < warn_days as i64 * 86_400 {
                r.warnings.push(format!(
                    "{}: the certificate expires in {} days ({})",
                    f.cert.display(),
                    left / 86_400,
                    civil_date(v.not_after)
                ));
            }
            if v.not_before > now {
                r.warnings.push(format!(
                    "{}: the certificate is not valid before {}",
                    f.cert.display(),
                    civil_date(v.not_before)
                ));
            }
        }
    }
    // Each certificate is issued by the next; the last by itself or by a
    // CA the system trusts.
    let mut ordered = true;
    for i in 0..certs.len().saturating_sub(1) {
        if let (Some(a), Some(b)) = (&certs[i], &certs[i + 1]) {
            if a.issuer() != b.subject() {
                ordered = false;
                r.warnings.push(format!(
                    "{}: certificate {} of the chain is not issued by certificate {} (put the chain in order: the server's certificate first, then each issuer)",
                    f.cert.display(),
                    i + 1,
                    i + 2
                ));
                break;
            }
        }
    }
    if let (true, Some(Some(last))) = (ordered, certs.last()) {
        let self_issued = last.issuer() == last.subject();
        if !self_issued && !system_knows(last.issuer()) {
            r.warnings.push(format!(
                "{}: the chain may be incomplete: the issuer of its last certificate is neither in the file nor among this system's CA certificates (clients without it will refuse the certificate; append the intermediate certificates)",
                f.cert.display()
            ));
        }
    }
    if let Some(w) = readable_by_others(&f.key) {
        r.warnings.push(w);
    }
    r
}

/// A warning when a secret file can be read by its group or others.
pub fn readable_by_others(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o044 != 0).then(|| {
        format!(
            "{} is readable by its group or others (mode {:o}); chmod 600 it",
            path.display(),
            mode & 0o777
        )
    })
}

/// Is `issuer` (a DER Name) the subject of one of the system's CAs?
fn system_knows(issuer: &[u8]) -> bool {
    static SUBJECTS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SUBJECTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            found
                .certs
                .iter()
                .filter_map(|c| webpki::anchor_from_trusted_cert(c).ok())
                .map(|a| a.subject.as_ref().to_vec())
                .collect()
        })
        .iter()
        .any(|s| s == issuer)
}

/// `YYYY-MM-DD` of Unix seconds.
fn civil_date(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

    fn dir(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("centinela-tls-srv-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn write_leaf(d: &Path, name: &str, sans: &[&str]) -> CertFiles {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let f = CertFiles {
            cert: d.join(format!("{name}.crt")),
            key: d.join(format!("{name}.key")),
        };
        std::fs::write(&f.cert, cert.pem()).unwrap();
        std::fs::write(&f.key, key.serialize_pem()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f.key, std::fs::Permissions::from_mode(0o600)).unwrap();
        f
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_first() {
        let d = dir("sni");
        let a = write_leaf(&d, "a", &["a.test"]);
        let b = write_leaf(&d, "b", &["*.b.test", "b.test"]);
        let keys = [&a, &b]
            .iter()
            .map(|f| {
                let k = certified_key(f).unwrap();
                (dns_names(&k.cert[0]), Arc::new(k))
            })
            .collect::<Vec<_>>();
        let want = |i: usize| keys[i].1.clone();
        let sni = Sni { keys: keys.clone() };
        assert!(Arc::ptr_eq(sni.pick("a.test").unwrap(), &want(0)));
        assert!(Arc::ptr_eq(sni.pick("A.TEST").unwrap(), &want(0)));
        assert!(Arc::ptr_eq(sni.pick("b.test").unwrap(), &want(1)));
        assert!(Arc::ptr_eq(sni.pick("x.b.test").unwrap(), &want(1)));
        // A wildcard covers one label only.
        assert!(sni.pick("y.x.b.test").is_none());
        assert!(sni.pick("c.test").is_none());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_by_name() {
        let d = dir("mismatch");
        let a = write_leaf(&d, "a", &["a.test"]);
        let b = write_leaf(&d, "b", &["b.test"]);
        let crossed = CertFiles {
            cert: a.cert.clone(),
            key: b.key.clone(),
        };
        let res = Resumption::new().unwrap();
        let e = server_config(
            &ServerSettings {
                certs: vec![crossed.clone()],
                tls13_only: false,
            },
            &res,
        )
        .unwrap_err();
        assert!(
            e.contains("b.key does not match the certificate in") && e.contains("a.crt"),
            "{e}"
        );
        let r = inspect(&crossed, SystemTime::now(), 14);
        assert_eq!(r.errors.len(), 1, "{r:?}");
        // A certificate file given as the key.
        let e = certified_key(&CertFiles {
            cert: a.cert.clone(),
            key: a.cert.clone(),
        })
        .unwrap_err();
        assert!(e.contains("no PEM private key"), "{e}");
        // Good pairs load, and a self-signed leaf is no incomplete chain.
        assert!(server_config(
            &ServerSettings {
                certs: vec![a.clone(), b],
                tls13_only: true,
            },
            &res
        )
        .is_ok());
        let r = inspect(&a, SystemTime::now(), 14);
        assert!(r.errors.is_empty() && r.warnings.is_empty(), "{r:?}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn inspect_warns_of_expiry_broken_chains_and_open_key_files() {
        let d = dir("inspect");
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "centinela test CA");
        let ca = p.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut lp = CertificateParams::new(vec!["soon.test".to_string()]).unwrap();
        lp.distinguished_name
            .push(rcgen::DnType::CommonName, "soon.test");
        let now = SystemTime::now();
        lp.not_after = (now + std::time::Duration::from_secs(3 * 86_400)).into();
        let leaf = lp.signed_by(&key, &ca, &ca_key).unwrap();
        let f = CertFiles {
            cert: d.join("soon.crt"),
            key: d.join("soon.key"),
        };
        // The leaf alone: its issuer (the test CA) is nowhere.
        std::fs::write(&f.cert, leaf.pem()).unwrap();
        std::fs::write(&f.key, key.serialize_pem()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f.key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let r = inspect(&f, now, 14);
        assert!(r.errors.is_empty(), "{r:?}");
        let all = r.warnings.join("\n");
        assert!(
            all.contains("expires in 2 days") || all.contains("expires in 3 days"),
            "{all}"
        );
        assert!(all.contains("chain may be incomplete"), "{all}");
        assert!(
            all.contains("readable by its group or others (mode 644)"),
            "{all}"
        );
        // With the CA appended and the key closed: only the expiry is left.
        std::fs::write(&f.cert, format!("{}{}", leaf.pem(), ca.pem())).unwrap();
        std::fs::set_permissions(&f.key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let r = inspect(&f, now, 14);
        assert_eq!(r.warnings.len(), 1, "{r:?}");
        // Out of order: the CA first.
        std::fs::write(&f.cert, format!("{}{}", ca.pem(), leaf.pem())).unwrap();
        let r = inspect(&f, now, 14);
        assert!(
            !r.errors.is_empty() || r.warnings.iter().any(|w| w.contains("not issued by")),
            "{r:?}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn dates_print_as_civil_dates() {
        assert_eq!(civil_date(1_767_225_600), "2026-01-01");
        assert_eq!(civil_date(0), "1970-01-01");
    }
}
