//! HTTP/3 on a QUIC connection (ALPN `h3`), served by the same router as TCP. An extended
//! CONNECT to `/v1/rt` with `:protocol = webtransport` turns the connection into a WebTransport
//! connection ([`crate::webtransport`]); a WebTransport CONNECT to any other path gets 404.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::{Buf, Bytes, BytesMut};
use haberci_kit::shutdown::Shutdown;
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::http::{ClientAddr, error_response};
use crate::transport::Realtime;

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

/// What serving HTTP/3 requests needs, on a plain HTTP/3 connection or on one that carries a
/// WebTransport session.
#[derive(Clone)]
pub struct Http {
    pub router: Router,
    pub limits: Limits,
    /// Every request task, so shutdown can let them finish.
    pub requests: TaskTracker,
}

/// A request stream on an h3-quinn connection.
pub type H3RequestStream = h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;
/// An HTTP/3 connection on quinn, as [`crate::webtransport`] takes it over.
pub type H3Connection = h3::server::Connection<h3_quinn::Connection, Bytes>;
/// A WebTransport CONNECT handed from its request task to the connection's task.
type Upgrade = (http::Request<()>, H3RequestStream);

pub async fn serve_connection(
    connection: quinn::Connection,
    http: Http,
    realtime: Realtime,
    shutdown: Shutdown,
) {
    let peer = connection.remote_address();
    let quic = connection.clone();
    let mut h3: H3Connection = match h3::server::builder()
        .max_field_section_size(MAX_FIELD_SECTION_SIZE)
        // WebTransport (draft-02, as browsers speak it): extended CONNECT, HTTP datagrams,
        // and one session per connection, so a session owns its connection.
        .enable_webtransport(true)
        .enable_extended_connect(true)
        .enable_datagram(true)
        .max_webtransport_sessions(1)
        .build(h3_quinn::Connection::new(connection))
        .await
    {
        Ok(h3) => h3,
        Err(err) => {
            tracing::debug!(%peer, %err, "h3 setup failed");
            return;
        }
    };
    // Requests are resolved in their own tasks (a slow header must not stall the others); the
    // one that turns out to be a WebTransport CONNECT comes back here, because accepting the
    // session takes the whole h3 connection. Capacity 1: a second CONNECT racing the first is
    // refused.
    let (upgrade_tx, mut upgrades) = mpsc::channel::<Upgrade>(1);
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
            Some((request, stream)) = upgrades.recv() => {
                // Invariant: from here on this QUIC connection is a WebTransport connection;
                // its later requests are served by the session's acceptor.
                crate::webtransport::serve_session(
                    quic, h3, request, stream, http, realtime, shutdown,
                )
                .await;
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
        let task_http = http.clone();
        let upgrade_tx = upgrade_tx.clone();
        http.requests.spawn(async move {
            let resolved = tokio::time::timeout(
                task_http.limits.header_read_timeout,
                resolver.resolve_request(),
            )
            .await;
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
            serve_request(request, stream, task_http, peer, Some(&upgrade_tx)).await;
        });
    }
}

/// Serves one resolved request: a WebTransport CONNECT goes to `upgrades` (`None` once the
/// connection already holds a session: refused), anything else to the router.
pub(crate) async fn serve_request(
    request: http::Request<()>,
    mut stream: H3RequestStream,
    http: Http,
    peer: SocketAddr,
    upgrades: Option<&mpsc::Sender<Upgrade>>,
) {
    let refusal = if is_webtransport_connect(&request) {
        if request.uri().path() != haberci_wire::WEBTRANSPORT_PATH {
            // Answered here: the router would wait for a body that a CONNECT never ends.
            Some((http::StatusCode::NOT_FOUND, "not_found", "not found"))
        } else {
            if let Some(upgrades) = upgrades {
                match upgrades.try_send((request, stream)) {
                    Ok(()) => return,
                    Err(
                        mpsc::error::TrySendError::Full((_, back))
                        | mpsc::error::TrySendError::Closed((_, back)),
                    ) => stream = back,
                }
            }
            Some((
                http::StatusCode::TOO_MANY_REQUESTS,
                "too_many_sessions",
                "one WebTransport session per connection",
            ))
        }
    } else {
        if let Err(err) = handle_request(request, &mut stream, http.router, http.limits, peer).await
        {
            tracing::debug!(%peer, %err, "h3 request failed");
        }
        None
    };
    if let Some((status, code, message)) = refusal {
        let mut response = error_response(status, code, message);
        // Answered here, not by the router: the security headers are added by hand.
        haberci_kit::http::set_security_headers(response.headers_mut());
        if let Err(err) = respond(&mut stream, response, peer).await {
            tracing::debug!(%peer, %err, "h3 refusal failed");
        }
    }
}

/// An extended CONNECT with `:protocol = webtransport` (RFC 9220 / draft-ietf-webtrans-http3).
fn is_webtransport_connect(request: &http::Request<()>) -> bool {
    request.method() == http::Method::CONNECT
        && request.extensions().get::<h3::ext::Protocol>()
            == Some(&h3::ext::Protocol::WEB_TRANSPORT)
}

async fn handle_request<S>(
    request: http::Request<()>,
    stream: &mut h3::server::RequestStream<S, Bytes>,
    router: Router,
    limits: Limits,
    peer: SocketAddr,
) -> Result<(), h3::error::StreamError>
where
    S: h3::quic::BidiStream<Bytes>,
{
    let read =
        tokio::time::timeout(BODY_READ_TIMEOUT, read_body(stream, limits.max_body_bytes)).await;
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
    respond(stream, response, peer).await
}

/// Writes a router response (headers, then the body as it comes) and finishes the stream.
async fn respond<S>(
    stream: &mut h3::server::RequestStream<S, Bytes>,
    response: axum::response::Response,
    peer: SocketAddr,
) -> Result<(), h3::error::StreamError>
where
    S: h3::quic::BidiStream<Bytes>,
{
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
