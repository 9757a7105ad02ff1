//! The one router every HTTP version is served by (HTTP/1.1 and HTTP/2 from [`crate::tcp`],
//! HTTP/3 from [`crate::h3server`]), so the public API is identical on all three.
//!
//! - `GET /healthz`: the gateway process is alive.
//! - `GET /readyz`: the backend API answers its own `/readyz`.
//! - `GET /v1/ws`: a realtime session over WebSocket ([`crate::websocket`]).
//! - `GET /v1/realtime`: the realtime endpoints and WebTransport certificate hashes
//!   ([`crate::web`]).
//! - anything else under `/v1/`: proxied to the backend ([`crate::proxy`]).
//! - anything else: a static file of `HABERCI_WEB_DIR` (the demo page) for `GET`/`HEAD`, else a
//!   JSON 404 ([`crate::web`]).
//!
//! Every response, proxied or not and on every HTTP version, carries the security headers and
//! follows the CORS allow-list (`haberci_kit::http::harden`, the same rules as the backend).

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde_json::json;

use haberci_kit::http::CorsOrigins;

use crate::config::GatewayConfig;
use crate::proxy::Backend;

/// The peer address of the connection a request arrived on; every transport inserts it as a
/// request extension.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

#[derive(Clone)]
pub struct GatewayState {
    pub backend: Backend,
    pub cors: CorsOrigins,
    /// For WebSocket sessions on `/v1/ws`.
    pub realtime: crate::transport::Realtime,
    pub shutdown: haberci_kit::shutdown::Shutdown,
    /// Static files and `/v1/realtime`.
    pub web: crate::web::Web,
}

impl GatewayState {
    pub fn new(
        config: &GatewayConfig,
        realtime: crate::transport::Realtime,
        shutdown: haberci_kit::shutdown::Shutdown,
        web: crate::web::Web,
    ) -> Self {
        GatewayState {
            backend: Backend::new(
                config.backend_url.clone(),
                config.backend_timeout,
                config.max_body_bytes,
            ),
            cors: config.cors.clone(),
            realtime,
            shutdown,
            web,
        }
    }
}

pub fn router(state: GatewayState) -> Router {
    let cors = state.cors.clone();
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(haberci_wire::WEBSOCKET_PATH, get(crate::websocket::upgrade))
        .route("/v1/realtime", get(crate::web::realtime))
        .route("/v1/{*rest}", any(proxy))
        .fallback(crate::web::fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state);
    haberci_kit::http::harden(router, &cors)
}

/// The JSON error shape every Haberci response uses.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": { "code": code, "message": message, "field": null } })),
    )
        .into_response()
}

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<GatewayState>) -> Response {
    if state.backend.ready().await {
        axum::Json(json!({ "status": "ok", "backend": "ok" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "unavailable", "backend": "unavailable" })),
        )
            .into_response()
    }
}

async fn proxy(State(state): State<GatewayState>, request: Request) -> Response {
    state.backend.forward(request).await
}

async fn method_not_allowed() -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this path",
    )
}

pub(crate) async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "not_found", "not found")
}
