//! The one router every HTTP version is served by (HTTP/1.1 and HTTP/2 from [`crate::tcp`],
//! HTTP/3 from [`crate::h3server`]), so the public API is identical on all three.
//!
//! - `GET /healthz`: the gateway process is alive.
//! - `GET /readyz`: the backend API answers its own `/readyz`.
//! - `GET /v1/ws`: a realtime session over WebSocket ([`crate::websocket`]).
//! - `GET /v1/realtime`: the realtime endpoints and WebTransport certificate hashes
//!   ([`crate::web`]).
//! - anything else under `/v1/`: proxied to the backend ([`crate::proxy`]), which streams both
//!   bodies and applies its per-path body limits (media uploads get a larger one).
//! - anything else: a static file of `HABERCI_WEB_DIR` (the demo page) for `GET`/`HEAD`, else a
//!   JSON 404 ([`crate::web`]).
//!
//! Request bodies reach the router unread on every HTTP version; whoever reads one enforces its
//! limit as it flows. The routes served here read none, but keep `HABERCI_MAX_BODY_BYTES` as
//! a bound anyway ([`cap_body`]). No layer buffers or compresses bodies: media answers are
//! compressed already, and a range must stay byte-exact.
//!
//! Every response, proxied or not and on every HTTP version, carries the security headers and
//! follows the CORS allow-list (`haberci_kit::http::harden`, the same rules as the backend).

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use http_body_util::Limited;
use serde_json::json;

use haberci_kit::http::CorsOrigins;

use crate::config::GatewayConfig;
use crate::proxy::{Backend, UploadLimits};

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
    /// `HABERCI_MAX_BODY_BYTES`, for the routes that are not proxied.
    pub max_body_bytes: usize,
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
            )
            .with_uploads(UploadLimits {
                max_bytes: config.max_upload_bytes,
                idle_timeout: config.body_idle_timeout,
            }),
            cors: config.cors.clone(),
            realtime,
            shutdown,
            web,
            max_body_bytes: config.max_body_bytes,
        }
    }
}

pub fn router(state: GatewayState) -> Router {
    let cors = state.cors.clone();
    let local = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(haberci_wire::WEBSOCKET_PATH, get(crate::websocket::upgrade))
        .route("/v1/realtime", get(crate::web::realtime))
        .fallback(crate::web::fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.max_body_bytes,
            cap_body,
        ));
    // Invariant: the proxy route is merged in after the cap; it applies its own limits per
    // path (proxy::RequestClass).
    let proxied = Router::new().route("/v1/{*rest}", any(proxy));
    let router = local.merge(proxied).with_state(state);
    haberci_kit::http::harden(router, &cors)
}

/// Bounds the body of a request served by the gateway itself: a declared length over `max`
/// is refused at once, and a reader would see the stream end with an error past `max`.
async fn cap_body(State(max): State<usize>, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "request body is larger than the server accepts",
        );
    }
    next.run(request.map(|body| Body::new(Limited::new(body, max))))
        .await
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
