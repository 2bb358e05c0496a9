//! A throwaway certificate authority for tests (rcgen): CA and server
//! certificates with chosen lifetimes, written as PEM files, and rustls
//! server settings to serve them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub use tokio_rustls::TlsAcceptor;

/// A CA whose certificate is written to `DIR/NAME.pem`.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
    /// The CA certificate's PEM file: what a client trusts.
    pub pem: PathBuf,
}

/// A server certificate signed by a [`TestCa`], with its key.
pub struct Leaf {
    /// PEM files of the certificate (then the CA's) and of the key.
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl TestCa {
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, format!("centinela test CA {name}"));
        let key = KeyPair::generate().expect("CA key");
        let cert = p.self_signed(&key).expect("CA certificate");
        let pem = dir.join(format!("{name}.pem"));
        std::fs::write(&pem, cert.pem()).expect("write the CA");
        TestCa { cert, key, pem }
    }

    /// A certificate for `names` (DNS names or IP addresses) that expires
    /// `days` from now, written as `DIR/FILE.crt` and `DIR/FILE.key`.
    pub fn leaf(&self, dir: &Path, file: &str, names: &[&str], days: i64) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut p = CertificateParams::new(names).expect("leaf params");
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(1);
        p.not_after = now + time::Duration::days(days);
        p.distinguished_name.push(DnType::CommonName, file);
        let key = KeyPair::generate().expect("leaf key");
        let cert = p
            .signed_by(&key, &self.cert, &self.key)
            .expect("leaf certificate");
        let cert_pem = dir.join(format!("{file}.crt"));
        let key_pem = dir.join(format!("{file}.key"));
        std::fs::write(&cert_pem, format!("{}{}", cert.pem(), self.cert.pem())).expect("write");
        std::fs::write(&key_pem, key.serialize_pem()).expect("write");
        Leaf {
            cert_pem,
            key_pem,
            chain: vec![cert.der().clone(), self.cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        }
    }
}

impl Leaf {
    /// rustls server settings presenting this certificate (HTTP/1.1).
    pub fn acceptor(&self) -> TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(
                self.chain.clone(),
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )
            .expect("server certificate");
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(cfg))
    }
}
