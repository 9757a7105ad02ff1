//! Test harness: certificates in a temp dir, a backend API (real, or an echo server standing in
//! for it where a test inspects what the proxy sends), a gateway, and TLS/QUIC/HTTP clients.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use haberci_certs::CertPaths;
use haberci_gateway::{Gateway, GatewayConfig};
use haberci_kit::shutdown::Shutdown;
use http_body_util::{BodyExt, Full};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

/// Bounds every network wait in the tests.
pub const TIMEOUT: Duration = Duration::from_secs(10);

pub fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| {
        panic!("{key} is not set: run the tests through `./dev test`, which starts the stack")
    })
}

/// A running gateway with its certificates and the backend behind it.
pub struct Stack {
    pub gateway_tcp: SocketAddr,
    pub gateway_udp: SocketAddr,
    pub certs: CertPaths,
    pub gateway: Arc<haberci_gateway::edge::tls::CertStore>,
    pub keys: Arc<haberci_gateway::relay::keys::TokenKeys>,
    pub revocations: Arc<haberci_gateway::relay::revocation::Revocations>,
    // Dropping the gateway aborts its tasks; it lives as long as the stack.
    _running: Gateway,
    _dir: tempfile::TempDir,
    shutdown: Shutdown,
}

impl Stack {
    /// Starts the gateway's shutdown (as SIGTERM would).
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub enum BackendKind {
    /// The real `haberci-backend api` router on real Postgres (through PgBouncer) and Redis.
    Real,
    /// Nothing listens at the backend address.
    Down,
}

pub async fn start(kind: BackendKind) -> Stack {
    let backend = match kind {
        BackendKind::Real => spawn_real_backend().await,
        BackendKind::Down => free_addr(),
    };
    start_with_backend(backend).await
}

pub async fn start_with_backend(backend: SocketAddr) -> Stack {
    start_with_config(backend, |_| {}).await
}

/// A real backend behind a gateway whose settings `configure` adjusts.
pub async fn start_real_with(configure: impl FnOnce(&mut GatewayConfig)) -> Stack {
    start_with_config(spawn_real_backend().await, configure).await
}

pub async fn start_with_config(
    backend: SocketAddr,
    configure: impl FnOnce(&mut GatewayConfig),
) -> Stack {
    haberci_kit::crypto::install_crypto_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("HABERCI_LOG"))
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let certs = CertPaths::new(dir.path());
    haberci_certs::ensure(&certs, time::OffsetDateTime::now_utc()).unwrap();
    let shutdown = Shutdown::new();
    let mut config =
        GatewayConfig::for_tests(dir.path(), format!("http://{backend}").parse().unwrap());
    configure(&mut config);
    let gateway = Gateway::start(config, shutdown.clone()).await.unwrap();
    Stack {
        gateway_tcp: gateway.tcp_addr,
        gateway_udp: gateway.udp_addr,
        gateway: gateway.certs.clone(),
        keys: gateway.keys.clone(),
        revocations: gateway.revocations.clone(),
        _running: gateway,
        certs,
        _dir: dir,
        shutdown,
    }
}

/// An address nothing listens on (bound, then released).
pub fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

async fn spawn_real_backend() -> SocketAddr {
    spawn_backend(None).await
}

/// The real API; with `internal_token`, its internal routes (what a relaying gateway calls).
async fn spawn_backend(internal_token: Option<&str>) -> SocketAddr {
    let db = haberci_backend::db::connect_pool(&env("HABERCI_TEST_DATABASE_URL"), 4).unwrap();
    let redis = haberci_backend::redis::connect(&env("HABERCI_TEST_REDIS_URL")).unwrap();
    // Every request reaches this backend from 127.0.0.1 (through the gateway), so its rate
    // limits are generous; the backend's own tests check the limits with unique addresses.
    let mut settings = haberci_backend::config::ApiSettings::default();
    settings.auth.limits = haberci_backend::config::RateLimits::uniform(
        haberci_backend::config::Rate::new(100_000, Duration::from_secs(60)),
    );
    settings.internal_token =
        internal_token.map(|t| haberci_backend::config::InternalToken::new(t).unwrap());
    let keys = haberci_token::KeySet::generate("gateway-test").unwrap();
    let app = haberci_backend::api::app(haberci_backend::api::AppState::new(
        db, redis, settings, keys,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(haberci_backend::api::serve(listener, app, Shutdown::new()));
    addr
}

/// Serves `router` on an ephemeral loopback port.
pub async fn serve_router(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

pub fn ca_roots(ca_files: &[&Path]) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for file in ca_files {
        for cert in CertificateDer::pem_file_iter(file).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    roots
}

pub fn client_tls(roots: rustls::RootCertStore, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A plain response: status, headers, body.
pub struct Reply {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!("not JSON ({err}): {}", String::from_utf8_lossy(&self.body))
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http1,
    Http2,
    Http3,
}

pub const ALL_VERSIONS: [Version; 3] = [Version::Http1, Version::Http2, Version::Http3];

/// One open TLS-over-TCP connection (HTTP/1.1 or HTTP/2), with the server's certificate.
pub struct TcpClient {
    sender: TcpSender,
    pub peer_cert: CertificateDer<'static>,
}

enum TcpSender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl TcpClient {
    pub async fn connect(addr: SocketAddr, roots: rustls::RootCertStore, version: Version) -> Self {
        let alpn: &[u8] = match version {
            Version::Http1 => b"http/1.1",
            Version::Http2 => b"h2",
            Version::Http3 => unreachable!("HTTP/3 is not over TCP"),
        };
        let config = Arc::new(client_tls(roots, &[alpn]));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let (_, session) = tls.get_ref();
        assert_eq!(session.alpn_protocol(), Some(alpn), "negotiated ALPN");
        let peer_cert = session.peer_certificates().unwrap()[0].clone().into_owned();
        let io = hyper_util::rt::TokioIo::new(tls);
        let sender = match version {
            Version::Http1 => {
                let (sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
                tokio::spawn(conn);
                TcpSender::H1(sender)
            }
            _ => {
                let (sender, conn) =
                    hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                        .await
                        .unwrap();
                tokio::spawn(conn);
                TcpSender::H2(sender)
            }
        };
        TcpClient { sender, peer_cert }
    }

    pub async fn send(&mut self, request: http::Request<Full<Bytes>>) -> Reply {
        let response = tokio::time::timeout(TIMEOUT, async {
            match &mut self.sender {
                TcpSender::H1(s) => {
                    s.ready().await.unwrap();
                    s.send_request(request).await
                }
                TcpSender::H2(s) => {
                    s.ready().await.unwrap();
                    s.send_request(request).await
                }
            }
        })
        .await
        .expect("response in time")
        .unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

/// A QUIC client endpoint and one connection.
pub struct QuicClient {
    // Keeps the client socket open for the connection's lifetime.
    pub _endpoint: quinn::Endpoint,
    pub connection: quinn::Connection,
}

impl QuicClient {
    pub async fn connect(
        addr: SocketAddr,
        roots: rustls::RootCertStore,
        alpn: &[u8],
    ) -> Result<Self, quinn::ConnectionError> {
        Self::connect_with(addr, roots, alpn, quinn::TransportConfig::default()).await
    }

    /// [`QuicClient::connect`] with the client's own transport settings (flow-control windows).
    pub async fn connect_with(
        addr: SocketAddr,
        roots: rustls::RootCertStore,
        alpn: &[u8],
        transport: quinn::TransportConfig,
    ) -> Result<Self, quinn::ConnectionError> {
        let tls = client_tls(roots, &[alpn]);
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport));
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(config);
        let target = SocketAddr::from(([127, 0, 0, 1], addr.port()));
        let connection =
            tokio::time::timeout(TIMEOUT, endpoint.connect(target, "localhost").unwrap())
                .await
                .expect("quic handshake in time")?;
        Ok(QuicClient {
            _endpoint: endpoint,
            connection,
        })
    }

    pub fn peer_cert(&self) -> CertificateDer<'static> {
        let certs = self
            .connection
            .peer_identity()
            .unwrap()
            .downcast::<Vec<CertificateDer<'static>>>()
            .unwrap();
        certs[0].clone()
    }
}

/// An HTTP/3 client on one QUIC connection.
pub struct H3Client {
    pub quic: QuicClient,
    sender: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
}

impl H3Client {
    pub async fn connect(addr: SocketAddr, roots: rustls::RootCertStore) -> Self {
        let quic = QuicClient::connect(addr, roots, b"h3").await.unwrap();
        let (mut driver, sender) =
            h3::client::new(h3_quinn::Connection::new(quic.connection.clone()))
                .await
                .unwrap();
        tokio::spawn(async move {
            let _ = futures::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        H3Client { quic, sender }
    }

    pub async fn send(&mut self, request: http::Request<Full<Bytes>>) -> Reply {
        tokio::time::timeout(TIMEOUT, async {
            let (parts, body) = request.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            let mut stream = self
                .sender
                .send_request(http::Request::from_parts(parts, ()))
                .await
                .unwrap();
            // A server may answer before it has read the whole body (a 413, an early
            // refusal) and then ask us to stop sending (STOP_SENDING); RFC 9114 §4.1.1: the
            // answer still counts. So a failed send only ends the sending.
            let sent = if body.is_empty() {
                Ok(())
            } else {
                stream.send_data(body).await
            };
            if sent.is_ok() {
                let _ = stream.finish().await;
            }
            let response = stream.recv_response().await.unwrap();
            let mut body = Vec::new();
            while let Some(mut chunk) = stream.recv_data().await.unwrap() {
                while chunk.has_remaining() {
                    let part = chunk.chunk();
                    body.extend_from_slice(part);
                    let n = part.len();
                    chunk.advance(n);
                }
            }
            Reply {
                status: response.status(),
                headers: response.headers().clone(),
                body: Bytes::from(body),
            }
        })
        .await
        .expect("h3 response in time")
    }
}

/// Sends one request over a fresh connection of the given HTTP version.
pub async fn request(
    stack: &Stack,
    version: Version,
    request: http::Request<Full<Bytes>>,
) -> Reply {
    let roots = ca_roots(&[&stack.certs.ca_cert()]);
    match version {
        Version::Http3 => {
            H3Client::connect(stack.gateway_udp, roots)
                .await
                .send(request)
                .await
        }
        v => {
            TcpClient::connect(stack.gateway_tcp, roots, v)
                .await
                .send(request)
                .await
        }
    }
}

pub fn get(path: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(format!("https://localhost{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// A gateway that relays messages: the real API (with its internal routes), an in-process
/// worker, and the gateway, on the test Redis with a stream prefix of their own (so parallel
/// tests never read each other's streams).
pub async fn start_relay(configure: impl FnOnce(&mut GatewayConfig)) -> Stack {
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let prefix = format!(
        "gwtest{}:msg:in:",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let backend = spawn_backend(Some(&token)).await;
    let settings = haberci_backend::config::MessagingSettings {
        stream_prefix: prefix.clone(),
        shards: 2,
        ..Default::default()
    };
    let db = haberci_backend::db::connect_pool(&env("HABERCI_TEST_DATABASE_URL"), 4).unwrap();
    let worker_shutdown = Shutdown::new();
    let redis_url = env("HABERCI_TEST_REDIS_URL");
    {
        let (redis_url, shutdown) = (redis_url.clone(), worker_shutdown.clone());
        tokio::spawn(async move {
            haberci_backend::messaging::run(db, &redis_url, settings, shutdown).await
        });
    }
    let stack = start_with_config(backend, |config| {
        config.relay.redis_url = Some(redis_url);
        config.relay.internal_token =
            Some(haberci_backend::config::InternalToken::new(token).unwrap());
        config.relay.stream_prefix = prefix;
        config.relay.stream_shards = 2;
        configure(config);
    })
    .await;
    tokio::time::timeout(TIMEOUT, stack.keys.loaded())
        .await
        .expect("the gateway loads the backend's JWKS");
    // The worker stops with the stack.
    let shutdown = stack.shutdown.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        worker_shutdown.cancel();
    });
    stack
}
