//! A small HTTP/1.1 client for the JSON API (`/v1/auth/*`), over TLS through the gateway
//! (`https://…`) or plain to the backend (`http://…`), from a chosen source address; and an
//! HTTP/2 one (TLS, ALPN `h2`) that carries many requests at once, for request-rate scenarios.
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
    /// `host:port` as the `:authority` of HTTP/2 requests.
    authority: String,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// The same, offering `h2`.
    h2: Option<tokio_rustls::TlsConnector>,
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
        let connector = |alpn: &[u8]| -> anyhow::Result<tokio_rustls::TlsConnector> {
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
            config.alpn_protocols = vec![alpn.to_vec()];
            Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
        };
        let (tls, h2) = if https {
            let name = ServerName::try_from(host.clone())?;
            (
                Some((connector(b"http/1.1")?, name)),
                Some(connector(b"h2")?),
            )
        } else {
            (None, None)
        };
        Ok(ApiTarget {
            addr,
            authority: format!("{host}:{port}"),
            host,
            tls,
            h2,
        })
    }

    /// The API of `target` (`--api`). An API addressed by IP (a balancer's, `./dev hosts`)
    /// is checked against `--server-name`, the name its certificate carries.
    pub async fn of(
        target: &crate::target::Target,
        roots: rustls::RootCertStore,
    ) -> anyhow::Result<ApiTarget> {
        ApiTarget::named(&target.api, roots, &target.server_name).await
    }

    /// [`ApiTarget::new`], with `server_name` as the TLS name when `base`'s host is an IP.
    pub async fn named(
        base: &str,
        roots: rustls::RootCertStore,
        server_name: &str,
    ) -> anyhow::Result<ApiTarget> {
        let mut api = ApiTarget::new(base, roots).await?;
        if api.host.parse::<IpAddr>().is_ok()
            && let Some((_, name)) = api.tls.as_mut()
        {
            *name = ServerName::try_from(server_name.to_owned())?;
        }
        Ok(api)
    }

    /// Source addresses for setup calls: `count` loopback addresses (127.0.0.2 …) for an API on
    /// loopback, whose per-address limits they spread over; else the kernel's choice (a
    /// client host of its own, `./dev hosts`).
    pub fn sources(&self, count: u8) -> Vec<IpAddr> {
        if self.addr.ip().is_loopback() {
            crate::users::loopback_sources(count)
        } else {
            vec![IpAddr::from([0, 0, 0, 0])]
        }
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

impl ApiTarget {
    /// One HTTP/2 connection over TLS from `source` (an `https://` API only). Clones of it
    /// share the connection; each request is a stream of its own.
    pub async fn connect_h2(&self, source: IpAddr) -> anyhow::Result<H2Connection> {
        let (Some(connector), Some((_, name))) = (&self.h2, &self.tls) else {
            bail!("HTTP/2 needs an https:// API");
        };
        let socket = TcpSocket::new_v4()?;
        socket
            .bind(SocketAddr::new(source, 0))
            .with_context(|| format!("cannot bind source address {source}"))?;
        let tcp = socket
            .connect(self.addr)
            .await
            .with_context(|| format!("cannot connect to the API at {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let tls = connector.connect(name.clone(), tcp).await?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            bail!("the API at {} did not agree to HTTP/2 (ALPN h2)", self.addr);
        }
        let (sender, connection) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .handshake(TokioIo::new(tls))
                .await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(H2Connection {
            sender,
            base: format!("https://{}", self.authority),
        })
    }
}

/// An HTTP/2 connection to the API; cheap to clone, many calls in flight.
#[derive(Clone)]
pub struct H2Connection {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    base: String,
}

/// An answer over HTTP/2: status, the feed's source header, the body.
#[derive(Debug)]
pub struct H2Answer {
    pub status: StatusCode,
    /// `x-haberci-feed-source` (home timeline pages).
    pub feed_source: Option<String>,
    pub body: Bytes,
}

impl H2Connection {
    pub fn is_usable(&self) -> bool {
        !self.sender.is_closed()
    }

    /// One call as a logged-in user, within `timeout`.
    pub async fn call(
        &self,
        token: &str,
        method: http::Method,
        path: &str,
        body: Option<&serde_json::Value>,
        timeout: Duration,
    ) -> anyhow::Result<H2Answer> {
        let request = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base))
            .header(header::USER_AGENT, "haberci-bench")
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(serde_json::to_vec(body)?)))?,
            None => request.body(Full::new(Bytes::new()))?,
        };
        let mut sender = self.sender.clone();
        let call = async move {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let feed_source = response
                .headers()
                .get("x-haberci-feed-source")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok(H2Answer {
                status,
                feed_source,
                body,
            })
        };
        // No path in the reason: callers tally errors by reason.
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| anyhow!("no answer within {timeout:?}"))?
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
