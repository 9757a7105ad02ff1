//! HTTP/3 on a QUIC connection (ALPN `h3`), served by the same router as TCP. An extended
//! CONNECT to `/v1/rt` with `:protocol = webtransport` turns the connection into a WebTransport
//! connection ([`webtransport`]); a WebTransport CONNECT to any other path gets 404.
//!
//! A request body is handed to the router as it arrives ([`RecvBody`]): the receive half of
//! the request stream becomes an `http_body::Body`, so a 200 MB upload streams through to the
//! backend like on TCP. The router's consumer enforces the size limit as it reads (the proxy's
//! per-path limit, [`crate::http`]'s for every other route); this module only ends a body that
//! goes quiet for the idle timeout.

pub mod webtransport;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::{Buf, Bytes};
use haberci_kit::shutdown::Shutdown;
use http_body_util::BodyExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Sleep;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::{ClientAddr, error_response};
use crate::transport::Realtime;

/// Largest header section (after QPACK decoding) a request may carry. h3 buffers a whole
/// HEADERS frame before decoding it, so this bounds memory per request stream.
pub const MAX_FIELD_SECTION_SIZE: u64 = 16 * 1024;

/// Bounds on what one HTTP/3 request may hold. The body's size is bounded by whoever reads
/// it (the router), as on TCP.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request's headers must arrive within this.
    pub header_read_timeout: Duration,
    /// A request body being read may pause this long between chunks
    /// (`HABERCI_GATEWAY_BODY_IDLE_TIMEOUT_MS`).
    pub body_idle_timeout: Duration,
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
/// The receive half of a request stream: the request body.
type H3RecvStream = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;
/// An HTTP/3 connection on quinn, as [`webtransport`] takes it over.
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
                webtransport::serve_session(
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
    if !is_webtransport_connect(&request) {
        if let Err(err) = handle_request(request, stream, http.router, http.limits, peer).await {
            tracing::debug!(%peer, %err, "h3 request failed");
        }
        return;
    }
    let (status, code, message) = if request.uri().path() != haberci_wire::WEBTRANSPORT_PATH {
        // Answered here, not by the router: a CONNECT stream is a tunnel that never ends,
        // not a request body.
        (http::StatusCode::NOT_FOUND, "not_found", "not found")
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
        (
            http::StatusCode::TOO_MANY_REQUESTS,
            "too_many_sessions",
            "one WebTransport session per connection",
        )
    };
    let mut response = error_response(status, code, message);
    // Answered here, not by the router: the security headers are added by hand.
    haberci_kit::http::set_security_headers(response.headers_mut());
    if let Err(err) = respond(&mut stream, response, peer).await {
        tracing::debug!(%peer, %err, "h3 refusal failed");
    }
}

/// An extended CONNECT with `:protocol = webtransport` (RFC 9220 / draft-ietf-webtrans-http3).
fn is_webtransport_connect(request: &http::Request<()>) -> bool {
    request.method() == http::Method::CONNECT
        && request.extensions().get::<h3::ext::Protocol>()
            == Some(&h3::ext::Protocol::WEB_TRANSPORT)
}

/// Routes one request, its body streaming from the request stream's receive half while the
/// answer goes out on the send half.
async fn handle_request(
    request: http::Request<()>,
    stream: H3RequestStream,
    router: Router,
    limits: Limits,
    peer: SocketAddr,
) -> Result<(), h3::error::StreamError> {
    let (mut send, recv) = stream.split();
    let (body, unread) = RecvBody::new(recv, limits.body_idle_timeout);
    let mut request = request.map(|()| Body::new(body));
    request.extensions_mut().insert(ClientAddr(peer));
    let response = match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let sent = respond(&mut send, response, peer).await;
    // Invariant: a body the router left unread (a refusal, a 413, an early answer) is dropped
    // only now, after the answer is complete. Dropping it makes quinn ask the client to stop
    // sending (STOP_SENDING), and a client that gets that already holds its answer.
    drop(unread);
    sent
}

/// Writes a router response (headers, then the body as it comes) and finishes the stream.
async fn respond<S>(
    stream: &mut h3::server::RequestStream<S, Bytes>,
    response: axum::response::Response,
    peer: SocketAddr,
) -> Result<(), h3::error::StreamError>
where
    S: h3::quic::SendStream<Bytes>,
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

/// A request body that sent nothing for the idle timeout while it was being read. The proxy
/// answers it with 408.
#[derive(Debug, thiserror::Error)]
#[error("the request body sent nothing for {0:?}")]
pub struct IdleBody(Duration);

/// Why an HTTP/3 request body ended early.
#[derive(Debug, thiserror::Error)]
pub enum RecvBodyError {
    /// Whose fault: the client's; it went quiet. (Not `transparent`: the proxy finds the
    /// [`IdleBody`] among the error's sources.)
    #[error("request body: {0}")]
    Idle(#[from] IdleBody),
    /// Whose fault: the client's or the connection's (reset stream, bad framing, lost
    /// connection).
    #[error("request stream: {0}")]
    Stream(#[from] h3::error::StreamError),
}

/// The receive half of a request stream as an `http_body::Body`: DATA frames as quinn hands
/// them over, nothing buffered beyond the stream's flow-control window.
struct RecvBody {
    /// `None` once handed back (on drop).
    recv: Option<H3RecvStream>,
    /// The body ended (fully read, failed or idle): nothing more is polled.
    done: bool,
    idle_timeout: Duration,
    /// Armed while the reader waits for data; reset by every chunk. A reader that stops
    /// polling (backpressure from the backend) is not the client's stall.
    idle: Option<Pin<Box<Sleep>>>,
    /// Where the stream goes when the body is dropped unfinished; see [`handle_request`].
    unread: Option<oneshot::Sender<H3RecvStream>>,
}

impl RecvBody {
    /// The body, and the receiver that holds its stream once the body is dropped unread.
    fn new(
        recv: H3RecvStream,
        idle_timeout: Duration,
    ) -> (RecvBody, oneshot::Receiver<H3RecvStream>) {
        let (unread, parked) = oneshot::channel();
        let body = RecvBody {
            recv: Some(recv),
            done: false,
            idle_timeout,
            idle: None,
            unread: Some(unread),
        };
        (body, parked)
    }
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = RecvBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, RecvBodyError>>> {
        let this = self.get_mut();
        let Some(recv) = this.recv.as_mut().filter(|_| !this.done) else {
            return Poll::Ready(None);
        };
        loop {
            match recv.poll_recv_data(cx) {
                Poll::Ready(Ok(Some(mut chunk))) => {
                    if !chunk.has_remaining() {
                        // An empty DATA frame moves nothing; it does not count as progress.
                        continue;
                    }
                    this.idle = None;
                    let data = chunk.copy_to_bytes(chunk.remaining());
                    return Poll::Ready(Some(Ok(http_body::Frame::data(data))));
                }
                // The end of the stream, or trailers (which are not forwarded).
                Poll::Ready(Ok(None)) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Err(err)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(err.into())));
                }
                Poll::Pending => break,
            }
        }
        let timeout = this.idle_timeout;
        let idle = this
            .idle
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if idle.as_mut().poll(cx).is_ready() {
            this.done = true;
            return Poll::Ready(Some(Err(IdleBody(timeout).into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        if let (Some(recv), Some(unread)) = (self.recv.take(), self.unread.take()) {
            // The receiver is gone only when the request is over; then the stream just drops.
            let _ = unread.send(recv);
        }
    }
}
