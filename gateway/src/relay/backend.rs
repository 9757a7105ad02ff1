//! The one HTTP client pool to the backend API: the proxy forwards public requests through it
//! (`crate::edge::proxy`), the relay calls the internal API (`haberci_seam::internal`), the
//! key refresher reads the JWKS, and `/readyz` probes the backend's.

use std::time::Duration;

use axum::body::Body;
use axum::http::{StatusCode, Uri};
use haberci_seam::internal::{self, InternalToken};
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Largest JWKS document accepted from the backend.
const MAX_JWKS_BYTES: usize = 64 * 1024;

/// Largest answer of the internal API: what a sync answer may hold by the contract
/// ([`internal::MAX_SYNC_MESSAGES`] messages of at most `MAX_CONTENT_BYTES`, ordinary text
/// JSON-escaped at most twice as long, plus a kilobyte of fields each).
pub const MAX_INTERNAL_BYTES: usize =
    internal::MAX_SYNC_MESSAGES * (2 * haberci_wire::MAX_CONTENT_BYTES + 1024);

/// The backend API, through one keep-alive HTTP/1.1 connection pool shared by the proxy,
/// the internal API, the key refresher and readiness probes. Cheap to clone.
#[derive(Clone)]
pub struct Backend {
    base: Uri,
    client: Client<HttpConnector, Body>,
    timeout: Duration,
}

impl Backend {
    /// A client of the backend at `base`; `timeout` bounds a request until its answer's
    /// headers (`HABERCI_BACKEND_TIMEOUT_MS`).
    pub fn new(base: Uri, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        // HTTP/1.1 to the backend: no flow-control window to tune here, a forwarded body
        // moves as fast as the backend reads it (TCP autotuning on loopback or a LAN).
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Backend {
            base,
            client,
            timeout,
        }
    }

    /// The connection pool.
    pub fn client(&self) -> &Client<HttpConnector, Body> {
        &self.client
    }

    /// How long a request may take until its answer's headers.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `path_and_query` on the backend.
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, http::Error> {
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
        token: &InternalToken,
        body: Option<&B>,
    ) -> Result<T, InternalError> {
        self.internal_call(path, token, body)
            .await
            .map_err(|(status, message)| match status {
                Some(StatusCode::FORBIDDEN) => InternalError::Forbidden(message),
                _ => InternalError::Failed(message),
            })
    }

    async fn internal_call<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        token: &InternalToken,
        body: Option<&B>,
    ) -> Result<T, (Option<StatusCode>, String)> {
        let failed = |message: String| (None, message);
        let uri = self.uri(path).map_err(|e| failed(e.to_string()))?;
        let builder = match body {
            Some(_) => {
                http::Request::post(uri).header(http::header::CONTENT_TYPE, "application/json")
            }
            None => http::Request::get(uri),
        }
        .header(internal::HEADER, token.as_str());
        let body = match body {
            Some(body) => Body::from(serde_json::to_vec(body).map_err(|e| failed(e.to_string()))?),
            None => Body::empty(),
        };
        let request = builder.body(body).map_err(|e| failed(e.to_string()))?;
        let response = tokio::time::timeout(self.timeout, self.client.request(request))
            .await
            .map_err(|_| failed(format!("{path}: timed out")))?
            .map_err(|e| failed(format!("{path}: {e}")))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_INTERNAL_BYTES)
            .collect()
            .await
            .map_err(|e| failed(format!("{path}: {e}")))?
            .to_bytes();
        if status != StatusCode::OK {
            return Err((
                Some(status),
                format!("{path}: {status}: {}", String::from_utf8_lossy(&bytes)),
            ));
        }
        serde_json::from_slice(&bytes).map_err(|e| failed(format!("{path}: {e}")))
    }
}

/// Why an internal API call gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum InternalError {
    /// `403`: the backend refuses what was asked (a session that is not active).
    #[error("refused: {0}")]
    Forbidden(String),
    /// Anything else: unreachable, timed out, another status, an unreadable answer.
    #[error("{0}")]
    Failed(String),
}
