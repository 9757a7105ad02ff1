//! One connection to the gateway that carries binary bodies both ways, over HTTP/2 (TLS,
//! ALPN `h2`) or HTTP/3 (QUIC, ALPN `h3`). `crate::api`'s clients speak JSON; uploads of
//! 100 MB and 1 MiB range reads need raw bodies, custom headers and, for HTTP/3, a QUIC
//! connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::{Buf, Bytes};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;

/// HTTP/3 DATA frames are cut at this size: a single 100 MB frame would hold the request
/// stream's whole body in one `send_data` call.
const H3_CHUNK: usize = 1 << 20;

/// The two transports the uploads are measured over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Version {
    #[serde(rename = "HTTP/2")]
    Http2,
    #[serde(rename = "HTTP/3")]
    Http3,
}

impl Version {
    pub fn label(self) -> &'static str {
        match self {
            Version::Http2 => "HTTP/2",
            Version::Http3 => "HTTP/3",
        }
    }
}

/// Where the gateway is: TCP and UDP addresses, its certificate name and CA.
#[derive(Clone)]
pub struct Gateway {
    pub tcp: SocketAddr,
    pub udp: SocketAddr,
    pub server_name: String,
    pub roots: rustls::RootCertStore,
}

impl Gateway {
    fn tls(&self, alpn: &[u8]) -> anyhow::Result<rustls::ClientConfig> {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(self.roots.clone())
        .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(config)
    }

    /// A new connection of `version`.
    pub async fn connect(&self, version: Version) -> anyhow::Result<Connection> {
        match version {
            Version::Http2 => self.connect_h2().await,
            Version::Http3 => self.connect_h3().await,
        }
    }

    async fn connect_h2(&self) -> anyhow::Result<Connection> {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(self.tls(b"h2")?));
        let tcp = tokio::net::TcpStream::connect(self.tcp)
            .await
            .with_context(|| format!("cannot connect to the gateway at {}", self.tcp))?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(self.server_name.clone())?;
        let tls = connector.connect(name, tcp).await?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            bail!("the gateway at {} did not agree to HTTP/2", self.tcp);
        }
        let (sender, connection) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                // Room for a 1 MiB answer in flight without waiting for window updates.
                .initial_stream_window_size(4 << 20)
                .initial_connection_window_size(16 << 20)
                .handshake(TokioIo::new(tls))
                .await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Connection::H2 {
            sender,
            base: format!("https://{}:{}", self.server_name, self.tcp.port()),
        })
    }

    async fn connect_h3(&self) -> anyhow::Result<Connection> {
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(self.tls(b"h3")?)?;
        let config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))
            .context("cannot bind a UDP socket for QUIC")?;
        endpoint.set_default_client_config(config);
        let quic = endpoint
            .connect(self.udp, &self.server_name)?
            .await
            .with_context(|| format!("QUIC handshake with the gateway at {}", self.udp))?;
        let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(quic.clone()))
            .await
            .map_err(|err| anyhow!("HTTP/3 setup: {err}"))?;
        tokio::spawn(async move {
            let _ = futures::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        Ok(Connection::H3 {
            _endpoint: endpoint,
            sender,
            base: format!("https://{}:{}", self.server_name, self.udp.port()),
        })
    }
}

/// A whole answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON, or why not.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "HTTP {}: not JSON: {}",
                self.status.as_u16(),
                String::from_utf8_lossy(&self.body[..self.body.len().min(200)])
            )
        })
    }
}

/// One connection; many requests may share it at once (each one a stream).
pub enum Connection {
    H2 {
        sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
        base: String,
    },
    H3 {
        // Keeps the UDP socket open for the connection's lifetime.
        _endpoint: quinn::Endpoint,
        sender: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
        base: String,
    },
}

impl Connection {
    /// Sends `head` (a path, no scheme or authority) with `body`, reads the whole answer,
    /// all within `timeout`.
    pub async fn send(
        &self,
        head: Request<()>,
        body: Bytes,
        timeout: Duration,
    ) -> anyhow::Result<Answer> {
        let call = async {
            match self {
                Connection::H2 { sender, base } => send_h2(sender.clone(), base, head, body).await,
                Connection::H3 { sender, base, .. } => {
                    send_h3(sender.clone(), base, head, body).await
                }
            }
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| anyhow!("no answer within {timeout:?}"))?
    }
}

fn absolute(base: &str, head: Request<()>) -> anyhow::Result<Request<()>> {
    let (mut parts, ()) = head.into_parts();
    parts.uri = format!("{base}{}", parts.uri).parse()?;
    Ok(Request::from_parts(parts, ()))
}

async fn send_h2(
    mut sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    base: &str,
    head: Request<()>,
    body: Bytes,
) -> anyhow::Result<Answer> {
    let request = absolute(base, head)?.map(|()| Full::new(body));
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

async fn send_h3(
    mut sender: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    base: &str,
    head: Request<()>,
    body: Bytes,
) -> anyhow::Result<Answer> {
    let mut stream = sender
        .send_request(absolute(base, head)?)
        .await
        .map_err(|err| anyhow!("HTTP/3 request: {err}"))?;
    let mut rest = body;
    let mut sent = Ok(());
    while !rest.is_empty() && sent.is_ok() {
        let chunk = rest.split_to(rest.len().min(H3_CHUNK));
        sent = stream.send_data(chunk).await;
    }
    // A server that answers early (a 413) stops the body (STOP_SENDING); its answer counts
    // (RFC 9114 §4.1.1), so a failed send only ends the sending.
    if sent.is_ok() {
        let _ = stream.finish().await;
    }
    let response = stream
        .recv_response()
        .await
        .map_err(|err| anyhow!("HTTP/3 answer: {err}"))?;
    let mut body = Vec::new();
    while let Some(mut chunk) = stream
        .recv_data()
        .await
        .map_err(|err| anyhow!("HTTP/3 answer body: {err}"))?
    {
        while chunk.has_remaining() {
            let part = chunk.chunk();
            body.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(Answer {
        status: response.status(),
        headers: response.headers().clone(),
        body: Bytes::from(body),
    })
}
