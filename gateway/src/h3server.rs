//! HTTP/3 on a QUIC connection (ALPN `h3`), served by the same router as TCP.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::{Buf, Bytes, BytesMut};
use haberci_kit::shutdown::Shutdown;
use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::http::{ClientAddr, error_response};

/// Largest header section (after QPACK decoding) a request may carry. h3 buffers a whole
/// HEADERS frame before decoding it, so this bounds memory per request stream.
pub const MAX_FIELD_SECTION_SIZE: u64 = 16 * 1024;
/// A request body must arrive whole within this.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Bounds on what one HTTP/3 request may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body read into memory before routing (`HABERCI_MAX_BODY_BYTES`).
    pub max_body_bytes: usize,
    /// A request's headers must arrive within this.
    pub header_read_timeout: Duration,
}

pub async fn serve_connection(
    connection: quinn::Connection,
    router: Router,
    limits: Limits,
    requests: tokio_util::task::TaskTracker,
    shutdown: Shutdown,
) {
    let peer = connection.remote_address();
    let mut h3 = match h3::server::builder()
        .max_field_section_size(MAX_FIELD_SECTION_SIZE)
        .build::<_, Bytes>(h3_quinn::Connection::new(connection))
        .await
    {
        Ok(h3) => h3,
        Err(err) => {
            tracing::debug!(%peer, %err, "h3 setup failed");
            return;
        }
    };
    let mut draining = false;
    loop {
        let resolver = tokio::select! {
            // On shutdown: send GOAWAY and keep the connection (dropping it closes it) until
            // the requests in flight are answered; `accept` then ends.
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                if h3.shutdown(0).await.is_err() {
                    return;
                }
                continue;
            }
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) => resolver,
                Ok(None) => return,
                Err(err) => {
                    tracing::debug!(%peer, %err, "h3 connection ended");
                    return;
                }
            },
        };
        let router = router.clone();
        requests.spawn(async move {
            let resolved =
                tokio::time::timeout(limits.header_read_timeout, resolver.resolve_request()).await;
            let (request, stream) = match resolved {
                Ok(Ok(pair)) => pair,
                Ok(Err(err)) => {
                    tracing::debug!(%peer, %err, "h3 request header failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "h3 request header timed out");
                    return;
                }
            };
            if let Err(err) = handle_request(request, stream, router, limits, peer).await {
                tracing::debug!(%peer, %err, "h3 request failed");
            }
        });
    }
}

async fn handle_request<S>(
    request: http::Request<()>,
    mut stream: h3::server::RequestStream<S, Bytes>,
    router: Router,
    limits: Limits,
    peer: SocketAddr,
) -> Result<(), h3::error::StreamError>
where
    S: h3::quic::BidiStream<Bytes>,
{
    let read = tokio::time::timeout(
        BODY_READ_TIMEOUT,
        read_body(&mut stream, limits.max_body_bytes),
    )
    .await;
    let body = match read {
        Ok(result) => result?,
        Err(_) => {
            tracing::debug!(%peer, "h3 request body timed out");
            return Ok(());
        }
    };
    let response = if let Some(body) = body {
        let mut request = request.map(|()| Body::from(body));
        request.extensions_mut().insert(ClientAddr(peer));
        match router.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    } else {
        // Answered here, not by the router: the security headers are added by hand.
        let mut response = error_response(
            http::StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "request body is larger than the server accepts",
        );
        haberci_kit::http::set_security_headers(response.headers_mut());
        response
    };
    let (parts, mut body) = response.into_parts();
    stream
        .send_response(http::Response::from_parts(parts, ()))
        .await?;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    stream.send_data(data).await?;
                }
            }
            Err(err) => {
                tracing::debug!(%peer, %err, "response body failed midway");
                break;
            }
        }
    }
    stream.finish().await
}

/// Reads the whole request body; `None` when it exceeds `max` (reading stops there).
async fn read_body<S>(
    stream: &mut h3::server::RequestStream<S, Bytes>,
    max: usize,
) -> Result<Option<Bytes>, h3::error::StreamError>
where
    S: h3::quic::BidiStream<Bytes>,
{
    let mut body = BytesMut::new();
    while let Some(mut chunk) = stream.recv_data().await? {
        if body.len() + chunk.remaining() > max {
            return Ok(None);
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            body.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(Some(body.freeze()))
}
