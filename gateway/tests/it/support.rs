//! The gateway suite's own clients (HTTP/1.1 and HTTP/2 over TLS, QUIC, HTTP/3, trusting the
//! stack's CA) and what its realtime clients share: a Hello, the QUIC close check. Stacks,
//! users and settings come from `haberci_testkit`.

use std::net::SocketAddr;

use bytes::{Buf, Bytes};
use haberci_testkit::{Stack, TIMEOUT, tls};
use http_body_util::{BodyExt, Full};
use rustls_pki_types::CertificateDer;

/// Trust roots for `stack`'s CA.
pub fn roots(stack: &Stack) -> rustls::RootCertStore {
    tls::roots(&[&stack.ca()])
}

/// Serves `router` on an ephemeral loopback port (a backend standing in for the API).
pub async fn serve_router(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
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
        let tls = tls::connect(addr, roots, alpn).await.unwrap();
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
        let endpoint = tls::quic_endpoint(tls::client_config(roots, &[alpn]), Some(transport));
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
    let roots = roots(stack);
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

/// A Hello with `token` and `version`, from a client that knows every error code.
pub fn hello(token: &str, version: u32) -> haberci_wire::ClientFrame {
    haberci_wire::ClientFrame::Hello(haberci_wire::Hello {
        access_token: token.to_owned(),
        protocol_version: version,
        client_name: "gateway-test".into(),
        client_version: "0".into(),
        resume: Vec::new(),
        max_error_code: haberci_wire::LAST_CODE,
    })
}

/// The server closes `connection` with `code`: QUIC application code = protocol code, and
/// the code's name as the reason.
pub async fn expect_quic_close(connection: &quinn::Connection, code: haberci_wire::ErrorCode) {
    let closed = tokio::time::timeout(TIMEOUT, connection.closed())
        .await
        .expect("closed in time");
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(
                close.error_code,
                quinn::VarInt::from_u64(code.quic_code()).unwrap(),
                "{close:?}"
            );
            assert_eq!(&close.reason[..], code.name().as_bytes());
        }
        other => panic!("expected an application close with {code:?}, got {other:?}"),
    }
}
