//! The one router every HTTP version is served by (HTTP/1.1 and HTTP/2 from [`super::tcp`],
//! HTTP/3 from [`super::h3`]), so the public API is identical on all three.
//!
//! - `GET /healthz`: the gateway process is alive.
//! - `GET /readyz`: the backend API answers its own `/readyz`, and the access-token keys are
//!   loaded.
//! - `GET /v1/ws`: a realtime session over WebSocket ([`websocket_upgrade`], then
//!   `transport::websocket`).
//! - `GET /v1/realtime`: the realtime endpoints and WebTransport certificate hashes
//!   ([`super::web`]).
//! - anything else under `/v1/`: proxied to the backend ([`super::proxy`]), which streams both
//!   bodies and applies its per-path body limits (media uploads get a larger one).
//! - anything else: a static file of `HABERCI_WEB_DIR` (the demo page) for `GET`/`HEAD`, else a
//!   JSON 404 ([`super::web`]).
//!
//! Request bodies reach the router unread on every HTTP version; whoever reads one enforces its
//! limit as it flows. The routes served here read none, but keep `HABERCI_MAX_BODY_BYTES` as
//! a bound anyway ([`cap_body`]). No layer buffers or compresses bodies: media answers are
//! compressed already, and a range must stay byte-exact.
//!
//! Every response, proxied or not and on every HTTP version, carries the security headers and
//! follows the CORS allow-list (`haberci_kit::http::harden`, the same rules as the backend).

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use http_body_util::Limited;
use serde_json::json;

use axum::extract::ws::WebSocketUpgrade;

use super::{GatewayState, error_response};
use crate::transport::websocket::{self, READ_BUFFER_SIZE};

pub fn router(state: GatewayState) -> Router {
    let cors = state.cors.clone();
    let local = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(haberci_wire::WEBSOCKET_PATH, get(websocket_upgrade))
        .route("/v1/realtime", get(super::web::realtime))
        .fallback(super::web::fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.max_body_bytes,
            cap_body,
        ));
    // Invariant: the proxy route is merged in after the cap; it applies its own limits per
    // path (proxy::RequestClass).
    let proxied = Router::new().route("/v1/{*rest}", any(proxy));
    let router = local
        .merge(proxied)
        .layer(axum::middleware::from_fn(haberci_kit::metrics::track_http))
        .with_state(state);
    haberci_kit::http::with_request_ids(
        haberci_kit::http::harden(router, &cors),
        haberci_kit::http::RequestIds::Assign,
    )
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

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<GatewayState>) -> Response {
    let backend = state.proxy.backend().ready().await;
    // Until the backend's token keys are loaded, every realtime Hello waits for them.
    let keys = state.realtime.keys.is_loaded();
    let body = json!({
        "status": if backend && keys { "ok" } else { "unavailable" },
        "backend": if backend { "ok" } else { "unavailable" },
        "keys": if keys { "ok" } else { "loading" },
    });
    let status = if backend && keys {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn proxy(State(state): State<GatewayState>, request: Request) -> Response {
    state.proxy.forward(request).await
}

/// `GET /v1/ws`: a client that offers the subprotocol gets a realtime session over WebSocket.
async fn websocket_upgrade(
    State(state): State<GatewayState>,
    hold: Option<axum::Extension<super::ConnectionHold>>,
    headers: http::HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    // A browser says which page opens the socket; WebSockets are not under CORS, so the
    // allow-list is applied here: the gateway's own pages and the listed origins only.
    if !origin_allowed(&headers, &state.cors) {
        return error_response(
            StatusCode::FORBIDDEN,
            "origin_refused",
            "this page's origin may not open a realtime session; see HABERCI_CORS_ORIGINS",
        );
    }
    let offered = upgrade
        .requested_protocols()
        .any(|p| p.as_bytes() == haberci_wire::WEBSOCKET_SUBPROTOCOL.as_bytes());
    if !offered {
        return error_response(
            StatusCode::BAD_REQUEST,
            "subprotocol_required",
            "offer the WebSocket subprotocol haberci.v1",
        );
    }
    let max = state.realtime.session.max_frame_size as usize;
    upgrade
        .protocols([haberci_wire::WEBSOCKET_SUBPROTOCOL])
        .read_buffer_size(READ_BUFFER_SIZE)
        .write_buffer_size(0)
        // One byte over the frame limit still arrives, so the session answers
        // `frame_too_large` itself rather than tungstenite failing the read.
        .max_message_size(max + 1)
        .max_frame_size(max + 1)
        .on_upgrade(move |socket| async move {
            // The connection's places are the session's now.
            let _hold = hold;
            websocket::serve(socket, state.realtime, state.shutdown).await
        })
        .into_response()
}

/// No `Origin` (not a browser), the gateway's own origin (`https://` + the `Host` it was
/// reached at), or an origin on the CORS allow-list.
fn origin_allowed(headers: &http::HeaderMap, cors: &haberci_kit::http::CorsOrigins) -> bool {
    let Some(origin) = headers.get(http::header::ORIGIN) else {
        return true;
    };
    if cors.allows(origin) {
        return true;
    }
    let own = headers
        .get(http::header::HOST)
        .and_then(|host| host.to_str().ok());
    let page = origin
        .to_str()
        .ok()
        .and_then(|origin| origin.strip_prefix("https://"));
    matches!((page, own), (Some(page), Some(own)) if page.eq_ignore_ascii_case(own))
}

async fn method_not_allowed() -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this path",
    )
}
