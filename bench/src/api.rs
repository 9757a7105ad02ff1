//! A small HTTP/1.1 client for the JSON API (`/v1/auth/*`), over TLS through the gateway
//! (`https://…`) or plain to the backend (`http://…`), from a chosen source address.
//!
//! Why a source address: the API rate-limits registration, login and refresh per client
//! address (docs/OPERATIONS.md). A load generator stands for thousands of clients, so it
//! spreads its setup calls over loopback addresses (127.0.0.2, 127.0.0.3, …) — each one a
//! real TCP peer the gateway reports as `x-haberci-client-ip` — instead of bending the
//! limits themselves.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpSocket;

/// How long one API call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the API is.
#[derive(Clone)]
pub struct ApiTarget {
    addr: SocketAddr,
    host: String,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

impl ApiTarget {
    /// `base` is `https://host:port` (through a gateway) or `http://host:port` (the backend).
    /// The host is resolved to IPv4, the family of the loopback source addresses.
    pub async fn new(base: &str, roots: rustls::RootCertStore) -> anyhow::Result<ApiTarget> {
        let uri: http::Uri = base.parse().with_context(|| format!("API URL {base:?}"))?;
        let host = uri
            .host()
            .with_context(|| format!("API URL {base:?} has no host"))?
            .to_owned();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => bail!("API URL {base:?} must be http:// or https://"),
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let addr = resolve_v4(&host, port).await?;
        let tls = if https {
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = ServerName::try_from(host.clone())?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(ApiTarget { addr, host, tls })
    }

    /// One keep-alive connection from `source`.
    pub async fn connect(&self, source: IpAddr) -> anyhow::Result<ApiConnection> {
        let socket = TcpSocket::new_v4()?;
        socket
            .bind(SocketAddr::new(source, 0))
            .with_context(|| format!("cannot bind source address {source}"))?;
        let tcp = socket
            .connect(self.addr)
            .await
            .with_context(|| format!("cannot connect to the API at {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let sender = match &self.tls {
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await?;
                handshake(TokioIo::new(tls)).await?
            }
            None => handshake(TokioIo::new(tcp)).await?,
        };
        Ok(ApiConnection {
            sender,
            host: self.host.clone(),
        })
    }
}

async fn handshake<T>(io: T) -> anyhow::Result<SendRequest<Full<Bytes>>>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// `host:port` → its first IPv4 address.
pub async fn resolve_v4(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("cannot resolve {host}"))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| anyhow!("{host} has no IPv4 address"))
}

pub struct ApiConnection {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

/// A JSON answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: serde_json::Value,
    /// `Retry-After`, seconds.
    pub retry_after: Option<u64>,
}

impl ApiConnection {
    pub fn is_usable(&self) -> bool {
        !self.sender.is_closed()
    }

    pub async fn post_json(
        &mut self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<Answer> {
        self.call(http::Method::POST, path, Some(body), None).await
    }

    /// A GET without credentials (health checks).
    pub async fn get(&mut self, path: &str) -> anyhow::Result<Answer> {
        self.call(http::Method::GET, path, None, None).await
    }

    /// A call as a logged-in user (`Authorization: Bearer`).
    pub async fn call_as(
        &mut self,
        token: &str,
        method: http::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<Answer> {
        self.call(method, path, body, Some(token)).await
    }

    async fn call(
        &mut self,
        method: http::Method,
        path: &str,
        body: Option<&serde_json::Value>,
        token: Option<&str>,
    ) -> anyhow::Result<Answer> {
        let mut request = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::HOST, &self.host)
            .header(header::USER_AGENT, "haberci-bench");
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(serde_json::to_vec(body)?)))?,
            None => request.body(Full::new(Bytes::new()))?,
        };
        let call = async {
            self.sender.ready().await?;
            let response = self.sender.send_request(request).await?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let bytes = response.into_body().collect().await?.to_bytes();
            let body = if bytes.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                    serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
                })
            };
            anyhow::Ok(Answer {
                status,
                body,
                retry_after,
            })
        };
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| anyhow!("{method} {path}: no answer within {CALL_TIMEOUT:?}"))?
    }
}
