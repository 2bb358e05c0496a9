//! A throwaway certificate authority for tests (rcgen): CA and server
//! certificates with chosen lifetimes, written as PEM files, and rustls
//! server settings to serve them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
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
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
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
    /// The certificate itself (DER), to compare with what a server presents.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// rustls server settings presenting this certificate (HTTP/1.1).
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor_with(None)
    }

    /// Server settings that also require a client certificate issued by
    /// `clients` (mutual TLS).
    pub fn acceptor_requiring_client(&self, clients: &TestCa) -> TlsAcceptor {
        self.acceptor_with(Some(clients))
    }

    fn acceptor_with(&self, clients: Option<&TestCa>) -> TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("protocol versions");
        let builder = match clients {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.cert.der().clone()).expect("client CA");
                let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .expect("client verifier");
                builder.with_client_cert_verifier(v)
            }
        };
        let mut cfg = builder
            .with_single_cert(
                self.chain.clone(),
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )
            .expect("server certificate");
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(cfg))
    }
}

/// An HTTPS client for tests: trusts one CA, offers the given ALPN
/// protocols, and speaks HTTP/1.1 or HTTP/2 as the server chose.
pub struct Https {
    cfg: Arc<rustls::ClientConfig>,
}

/// What one HTTPS request got, and how.
pub struct HttpsGot {
    pub got: crate::Got,
    /// The protocol ALPN chose.
    pub alpn: Option<Vec<u8>>,
    /// The certificate the server presented (DER).
    pub cert: Vec<u8>,
    /// The TLS version, e.g. `TLSv1_3`.
    pub version: String,
    /// The session was resumed (a ticket or a session id), not new.
    pub resumed: bool,
}

impl Https {
    pub fn new(ca: &Path, alpn: &[&str]) -> Https {
        Self::with_versions(ca, alpn, rustls::DEFAULT_VERSIONS)
    }

    /// The same client, never resuming a session (each handshake is full
    /// and shows the server's current certificate).
    pub fn without_resumption(mut self) -> Https {
        let mut cfg = (*self.cfg).clone();
        cfg.resumption = rustls::client::Resumption::disabled();
        self.cfg = Arc::new(cfg);
        self
    }

    /// A client that offers TLS 1.2 alone.
    pub fn tls12_only(ca: &Path) -> Https {
        Self::with_versions(ca, &[], &[&rustls::version::TLS12])
    }

    fn with_versions(
        ca: &Path,
        alpn: &[&str],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Https {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).expect("CA file") {
            roots.add(c.expect("CA certificate")).expect("CA");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Https { cfg: Arc::new(cfg) }
    }

    /// A TLS connection to `addr` for server name `name`.
    pub async fn connect(
        &self,
        addr: std::net::SocketAddr,
        name: &str,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from(name.to_string())
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        tokio_rustls::TlsConnector::from(self.cfg.clone())
            .connect(name, tcp)
            .await
    }

    /// `GET path` on a new connection: HTTP/2 if ALPN chose it.
    pub async fn get(
        &self,
        addr: std::net::SocketAddr,
        name: &str,
        path: &str,
    ) -> Result<HttpsGot, String> {
        use http_body_util::{BodyExt, Empty};
        let tls = self.connect(addr, name).await.map_err(|e| e.to_string())?;
        let (_, conn) = tls.get_ref();
        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
        let cert = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default();
        let version = format!("{:?}", conn.protocol_version());
        let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let io = hyper_util::rt::TokioIo::new(tls);
        let req = hyper::Request::get(format!("https://{name}{path}"))
            .header(hyper::header::HOST, name)
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = if alpn.as_deref() == Some(b"h2") {
            let (mut send, c) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(c);
            let mut req = req;
            req.headers_mut().remove(hyper::header::HOST);
            send.send_request(req).await.map_err(|e| e.to_string())?
        } else {
            let (mut send, c) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(c);
            let mut req = req;
            *req.uri_mut() = path
                .parse()
                .map_err(|e: hyper::http::uri::InvalidUri| e.to_string())?;
            send.send_request(req).await.map_err(|e| e.to_string())?
        };
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(HttpsGot {
            got: crate::Got {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            },
            alpn,
            cert,
            version,
            resumed,
        })
    }
}
