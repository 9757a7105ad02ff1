//! HTTP/3 on a QUIC connection (ALPN `h3`), served by the same router as TCP.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use bytes::{Buf, Bytes, BytesMut};
use haberci_kit::shutdown::Shutdown;
use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::http::{ClientAddr, error_response};

/// Largest HTTP/3 request body read into memory before routing.
pub const MAX_H3_BODY_BYTES: usize = 1 << 20;

pub async fn serve_connection(connection: quinn::Connection, router: Router, shutdown: Shutdown) {
    let peer = connection.remote_address();
    let mut h3 = match h3::server::builder()
        .build::<_, Bytes>(h3_quinn::Connection::new(connection))
        .await
    {
        Ok(h3) => h3,
        Err(err) => {
            tracing::debug!(%peer, %err, "h3 setup failed");
            return;
        }
    };
    loop {
        let resolver = tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = h3.shutdown(0).await;
                return;
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
        tokio::spawn(async move {
            let (request, stream) = match resolver.resolve_request().await {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::debug!(%peer, %err, "h3 request header failed");
                    return;
                }
            };
            if let Err(err) = handle_request(request, stream, router, peer).await {
                tracing::debug!(%peer, %err, "h3 request failed");
            }
        });
    }
}

async fn handle_request<S>(
    request: http::Request<()>,
    mut stream: h3::server::RequestStream<S, Bytes>,
    router: Router,
    peer: SocketAddr,
) -> Result<(), h3::error::StreamError>
where
    S: h3::quic::BidiStream<Bytes>,
{
    let mut body = BytesMut::new();
    let mut too_large = false;
    while let Some(mut chunk) = stream.recv_data().await? {
        if body.len() + chunk.remaining() > MAX_H3_BODY_BYTES {
            too_large = true;
            break;
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            body.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    let response = if too_large {
        // Answered here, not by the router: the security headers are added by hand.
        let mut response = error_response(
            http::StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "request body is larger than the server accepts",
        );
        haberci_kit::http::set_security_headers(response.headers_mut());
        response
    } else {
        let mut request = request.map(|()| Body::from(body.freeze()));
        request.extensions_mut().insert(ClientAddr(peer));
        match router.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
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
