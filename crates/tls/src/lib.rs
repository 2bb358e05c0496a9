//! TLS for centinela: the connections it opens itself (uptime probes,
//! notifications, upstreams with `[upstream.X] tls`) and its listeners
//! (`server.rs`). rustls with the `ring` provider, TLS 1.2 and 1.3 only,
//! and its safe cipher suites; certificates are verified against the
//! system's roots or a CA file, skipped only where an upstream says
//! `insecure_skip_verify = true`.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};

mod der;
pub mod server;

pub use der::{validity, Validity};
pub use tokio_rustls::client::TlsStream;

/// The client settings for servers whose certificates chain to the
/// system's roots (Debian: `/etc/ssl/certs`, read once), or to the CA
/// certificates in the PEM file `ca` alone.
pub fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    match ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certs(path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
            }
            build(roots)
        }
        None => {
            static SYSTEM: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
            SYSTEM.get_or_init(|| build(system_roots()?)).clone()
        }
    }
}

fn build(roots: RootCertStore) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// How centinela speaks TLS to one upstream's servers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UpstreamSettings {
    /// The CA certificates to trust instead of the system's.
    pub ca: Option<std::path::PathBuf>,
    /// A client certificate to present (mutual TLS).
    pub client_cert: Option<server::CertFiles>,
    /// Accept any certificate. For tests and trusted networks only.
    pub insecure_skip_verify: bool,
}

/// The client settings for an upstream (ALPN `http/1.1`).
pub fn upstream_config(s: &UpstreamSettings) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?;
    let builder = if s.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
    } else {
        let roots = match &s.ca {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in load_certs(path)? {
                    roots.add(cert).map_err(|e| {
                        format!("{}: not a usable CA certificate: {e}", path.display())
                    })?;
                }
                roots
            }
            None => system_roots()?,
        };
        builder.with_root_certificates(roots)
    };
    let mut cfg = match &s.client_cert {
        Some(f) => {
            let chain = load_certs(&f.cert)?;
            let key = server::load_key(&f.key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate {}: {e}", f.cert.display()))?
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(
            "no CA certificates found on this system (install ca-certificates, or set ca = \"PATH\")"
                .to_string(),
        );
    }
    Ok(roots)
}

/// `insecure_skip_verify`: any certificate is accepted, but the handshake's
/// signatures are still checked (the peer holds the key it presents).
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Every certificate in a PEM file, in order.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {}", path.display(), pem_error(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {}", path.display(), pem_error(&e)))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate in the file",
            path.display()
        ));
    }
    Ok(certs)
}

fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(e) => format!("cannot read: {}", e.kind()),
        _ => format!("not a valid PEM file ({e:?})"),
    }
}

/// Opens TLS over `io` to `host` (a DNS name or an IP address), verifying
/// the server's certificate for that name.
pub async fn connect<IO>(
    io: IO,
    host: &str,
    cfg: Arc<ClientConfig>,
) -> Result<TlsStream<IO>, String>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| format!("{host:?} is not a valid server name"))?;
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, io)
        .await
        .map_err(|e| handshake_error(&e))
}

/// A handshake failure in words: rustls's error when it has one (a bad
/// certificate, an alert), else the I/O error's kind.
fn handshake_error(e: &std::io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => format!("TLS handshake: {tls}"),
        None => format!("TLS handshake: {}", e.kind()),
    }
}

/// The validity of the certificate the server presented (its own, the
/// first of the chain).
pub fn peer_validity<IO>(s: &TlsStream<IO>) -> Option<Validity> {
    let (_, conn) = s.get_ref();
    conn.peer_certificates()?.first().and_then(|c| validity(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_are_not_certificates_are_named_in_the_error() {
        let dir = std::env::temp_dir().join(format!("centinela-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "hello\n").unwrap();
        let e = load_certs(&empty).unwrap_err();
        assert!(
            e.contains("empty.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
        let missing = dir.join("missing.pem");
        let e = client_config(Some(&missing)).unwrap_err();
        assert!(
            e.contains("missing.pem") && e.contains("cannot read"),
            "{e}"
        );

        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".into()]).unwrap();
        let good = dir.join("ca.pem");
        std::fs::write(&good, ca.cert.pem()).unwrap();
        assert_eq!(load_certs(&good).unwrap().len(), 1);
        assert!(client_config(Some(&good)).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
