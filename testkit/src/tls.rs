//! Client TLS that trusts a test CA, as the suites' hand-made clients need it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio_rustls::client::TlsStream;

/// The certificates in the PEM files `ca_files`, as trust roots.
pub fn roots(ca_files: &[&Path]) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for file in ca_files {
        for cert in CertificateDer::pem_file_iter(file).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    roots
}

/// A client configuration trusting `roots`, offering `alpn`.
pub fn client_config(roots: rustls::RootCertStore, alpn: &[&[u8]]) -> rustls::ClientConfig {
    crate::init();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// TLS over a new TCP connection to `addr`, as `localhost`, offering `alpn`.
pub async fn connect(
    addr: SocketAddr,
    roots: rustls::RootCertStore,
    alpn: &[u8],
) -> std::io::Result<TlsStream<tokio::net::TcpStream>> {
    let config = Arc::new(client_config(roots, &[alpn]));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// A QUIC client endpoint on an ephemeral loopback port whose connections use `tls` and the
/// `transport` settings (quinn's defaults if `None`).
pub fn quic_endpoint(
    tls: rustls::ClientConfig,
    transport: Option<quinn::TransportConfig>,
) -> quinn::Endpoint {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    if let Some(transport) = transport {
        config.transport_config(Arc::new(transport));
    }
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    endpoint
}

/// A certificate verifier that counts the certificates it checks: a resumed handshake has
/// none to check, so an unchanged count after a reconnect proves it resumed.
#[derive(Debug)]
pub struct CountingVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    checked: std::sync::atomic::AtomicUsize,
}

impl CountingVerifier {
    pub fn new(roots: rustls::RootCertStore) -> Arc<CountingVerifier> {
        Arc::new(CountingVerifier {
            inner: rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
                .build()
                .unwrap(),
            checked: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Certificates checked so far: one per full handshake.
    pub fn checked(&self) -> usize {
        self.checked.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl rustls::client::danger::ServerCertVerifier for CountingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.checked
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
