//! Forwards public API requests to the backend over a pooled keep-alive HTTP/1.1 client.
//!
//! API boundary: the backend trusts `x-haberci-client-ip` only because it can be set by a
//! gateway alone. The proxy therefore drops every incoming `x-haberci-*` header and sets the
//! client IP from the connection itself. Hop-by-hop headers are not forwarded.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::http::{ClientAddr, error_response};

/// Largest JWKS document accepted from the backend.
const MAX_JWKS_BYTES: usize = 64 * 1024;

/// Header carrying the client's IP to the backend.
/// Largest answer of the internal API (a sync page: 200 messages of ≤ 16 KiB per conversation).
pub const MAX_INTERNAL_BYTES: usize = 64 << 20;

pub const CLIENT_IP_HEADER: &str = "x-haberci-client-ip";

/// Headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

#[derive(Clone)]
pub struct Backend {
    base: Uri,
    client: Client<HttpConnector, Body>,
    timeout: Duration,
    max_body_bytes: usize,
}

impl Backend {
    pub fn new(base: Uri, timeout: Duration, max_body_bytes: usize) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Backend {
            base,
            client,
            timeout,
            max_body_bytes,
        }
    }

    fn uri(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = Some(path_and_query.parse()?);
        Ok(Uri::from_parts(parts)?)
    }

    /// Whether the backend answers its readiness probe with 200.
    pub async fn ready(&self) -> bool {
        let Ok(uri) = self.uri("/readyz") else {
            return false;
        };
        let request = match http::Request::get(uri).body(Body::empty()) {
            Ok(request) => request,
            Err(_) => return false,
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(3), self.client.request(request)).await,
            Ok(Ok(response)) if response.status() == StatusCode::OK
        )
    }

    /// The backend's published access-token keys (`GET /v1/auth/jwks`), or `None` when the
    /// backend cannot be reached or answers something else.
    pub async fn jwks(&self) -> Option<haberci_token::Jwks> {
        let uri = self.uri("/v1/auth/jwks").ok()?;
        let request = http::Request::get(uri).body(Body::empty()).ok()?;
        let response = tokio::time::timeout(Duration::from_secs(3), self.client.request(request))
            .await
            .ok()?
            .ok()?;
        if response.status() != StatusCode::OK {
            return None;
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .ok()?
            .to_bytes();
        serde_json::from_slice(&body).ok()
    }

    /// Calls the backend's internal API: GET without a body, POST with one. Errors are for
    /// logs; the caller retries or gives up.
    pub async fn internal<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        token: &str,
        body: Option<&B>,
    ) -> Result<T, String> {
        let uri = self.uri(path).map_err(|e| e.to_string())?;
        let builder = match body {
            Some(_) => {
                http::Request::post(uri).header(http::header::CONTENT_TYPE, "application/json")
            }
            None => http::Request::get(uri),
        }
        .header(crate::relay::INTERNAL_TOKEN_HEADER, token);
        let body = match body {
            Some(body) => Body::from(serde_json::to_vec(body).map_err(|e| e.to_string())?),
            None => Body::empty(),
        };
        let request = builder.body(body).map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(self.timeout, self.client.request(request))
            .await
            .map_err(|_| format!("{path}: timed out"))?
            .map_err(|e| format!("{path}: {e}"))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_INTERNAL_BYTES)
            .collect()
            .await
            .map_err(|e| format!("{path}: {e}"))?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(format!(
                "{path}: {status}: {}",
                String::from_utf8_lossy(&bytes)
            ));
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("{path}: {e}"))
    }

    /// Sends `request` to the backend and relays its answer.
    pub async fn forward(&self, request: Request) -> Response {
        let client_ip = request.extensions().get::<ClientAddr>().map(|a| a.0.ip());
        let (parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        let uri = match self.uri(path) {
            Ok(uri) => uri,
            Err(_) => {
                return error_response(StatusCode::BAD_REQUEST, "bad_request", "invalid path");
            }
        };
        if declared_length(&parts.headers).is_some_and(|n| n > self.max_body_bytes as u64) {
            return too_large();
        }

        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        headers.remove(header::HOST);
        let private: Vec<HeaderName> = headers
            .keys()
            .filter(|name| name.as_str().starts_with("x-haberci-"))
            .cloned()
            .collect();
        for name in private {
            headers.remove(name);
        }
        if let Some(ip) = client_ip.and_then(|ip| HeaderValue::from_str(&ip.to_string()).ok()) {
            headers.insert(CLIENT_IP_HEADER, ip);
        }

        // The body is streamed, with the size limit enforced as it flows.
        let body = Body::new(Limited::new(body, self.max_body_bytes));
        let mut outbound = http::Request::new(body);
        *outbound.method_mut() = parts.method;
        *outbound.uri_mut() = uri;
        *outbound.headers_mut() = headers;

        match tokio::time::timeout(self.timeout, self.client.request(outbound)).await {
            Ok(Ok(response)) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, Body::new(body.map_err(axum::Error::new)))
            }
            Ok(Err(err)) => {
                if is_length_limit(&err) {
                    return too_large();
                }
                tracing::warn!(%err, "backend request failed");
                error_response(
                    StatusCode::BAD_GATEWAY,
                    "backend_unavailable",
                    "the API backend is unavailable; retry shortly",
                )
            }
            Err(_) => error_response(
                StatusCode::GATEWAY_TIMEOUT,
                "backend_timeout",
                "the API backend did not answer in time",
            ),
        }
    }
}

fn too_large() -> Response {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "request body is larger than the server accepts",
    )
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn is_length_limit(err: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}
