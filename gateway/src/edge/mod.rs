//! The edge: sockets, TLS, HTTP on every version, and the handshakes that turn a connection
//! into a realtime transport. Imports `transport` and `relay`; nothing imports it but
//! [`crate::Gateway`].
//!
//! - [`tcp`]: TLS on TCP with ALPN `h2` / `http/1.1`; every response carries `Alt-Svc: h3`.
//! - [`quic`]: one quinn endpoint on UDP (with handshake [`quic::Admission`]); each connection
//!   is dispatched by its ALPN to [`h3`] (`h3`) or native QUIC (`haberci/1`,
//!   `transport::native`). Unknown ALPNs fail the TLS handshake.
//! - [`cid`]: connection IDs and stateless-reset tokens keyed for the fleet; [`roster`]: the
//!   QUIC connections listed in a file, which a gateway's next life resets unprompted.
//! - [`tls`]: the certificate store both listeners share, reloaded when the files change or on
//!   SIGHUP, without dropping open connections.
//! - [`h3`]: HTTP/3 requests onto the [`router`]; a WebTransport CONNECT to `/v1/rt` becomes a
//!   [`h3::webtransport`] session.
//! - [`router`]: the one axum router every HTTP version is served by: `/healthz`, `/readyz`,
//!   the WebSocket upgrade, [`web`], and the [`proxy`] of every other `/v1/*` request.
//! - [`proxy`]: forwards public API requests to the backend, bodies streamed both ways.
//! - [`web`]: `/v1/realtime` (realtime endpoints, WebTransport certificate hashes) and the
//!   demo page's static files.

pub mod cid;
pub mod h3;
pub mod idle;
pub mod per_address;
pub mod proxy;
pub mod quic;
pub mod roster;
pub mod router;
pub mod tcp;
pub mod tickets;
pub mod tls;
pub mod web;

use std::net::SocketAddr;

use crate::metrics::{Handshake, Listener};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// What every route of the [`router`] shares.
#[derive(Clone)]
pub struct GatewayState {
    pub proxy: proxy::Proxy,
    pub cors: haberci_kit::http::CorsOrigins,
    /// For WebSocket sessions on `/v1/ws`.
    pub realtime: crate::transport::Realtime,
    pub shutdown: haberci_kit::shutdown::Shutdown,
    /// Static files and `/v1/realtime`.
    pub web: web::Web,
    /// `HABERCI_MAX_BODY_BYTES`, for the routes that are not proxied.
    pub max_body_bytes: usize,
}

/// The peer address of the connection a request arrived on; every listener inserts it as a
/// request extension.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// What a TCP connection holds of the listener's limits (its place among the connections, and
/// its address's). A request extension, so an upgraded WebSocket keeps holding it after the
/// HTTP connection hands it over.
#[derive(Clone)]
pub struct ConnectionHold(pub std::sync::Arc<dyn Send + Sync>);

/// The JSON error shape every Haberci response uses.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({
            "error": { "code": code, "message": message, "field": null }
        })),
    )
        .into_response()
}

pub(crate) async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "not_found", "not found")
}

/// Counts a TLS handshake that did not complete and writes its fail2ban line (INFO, target
/// `haberci_edge`; `deploy/fail2ban/filter.d/haberci-handshake.conf` matches it).
pub fn handshake_failed(listener: Listener, peer: SocketAddr, result: Handshake) {
    crate::metrics::handshake(listener, result);
    tracing::info!(target: "haberci_edge", "{}", handshake_failed_line(listener, peer, result));
}

/// `haberci-gateway: handshake failed ip=203.0.113.7 listener=tcp reason=failed`: the address
/// bare (an IPv4 client of a dual-stack socket as IPv4), then fixed words.
pub fn handshake_failed_line(listener: Listener, peer: SocketAddr, result: Handshake) -> String {
    let listener = match listener {
        Listener::Tcp => "tcp",
        Listener::Quic => "quic",
    };
    let reason = match result {
        Handshake::TimedOut => "timed_out",
        _ => "failed",
    };
    format!(
        "haberci-gateway: handshake failed ip={} listener={listener} reason={reason}",
        peer.ip().to_canonical()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Changing this line breaks deployed fail2ban filters (docs/OPERATIONS.md).
    #[test]
    fn the_failed_handshake_line_has_the_documented_format() {
        let v4_mapped: SocketAddr = "[::ffff:203.0.113.7]:5000"
            .parse()
            .unwrap_or_else(|_| unreachable!());
        assert_eq!(
            handshake_failed_line(Listener::Tcp, v4_mapped, Handshake::Failed),
            "haberci-gateway: handshake failed ip=203.0.113.7 listener=tcp reason=failed"
        );
        let v6: SocketAddr = "[2001:db8::1]:443"
            .parse()
            .unwrap_or_else(|_| unreachable!());
        assert_eq!(
            handshake_failed_line(Listener::Quic, v6, Handshake::TimedOut),
            "haberci-gateway: handshake failed ip=2001:db8::1 listener=quic reason=timed_out"
        );
    }
}
