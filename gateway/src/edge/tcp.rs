//! TLS over TCP: HTTP/1.1 and HTTP/2 (by ALPN) served by the shared router. Every response
//! carries `Alt-Svc` so clients learn of HTTP/3 on the QUIC endpoint.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, header};
use haberci_kit::shutdown::Shutdown;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::per_address::PerAddress;
use super::tls::CertStore;
use super::{ClientAddr, idle};
use crate::metrics::{self, Handshake, Listener};

/// A TLS handshake that takes longer than this is dropped.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish at shutdown.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings an idle connection this often and drops it when a ping goes unanswered for
/// [`H2_KEEP_ALIVE_TIMEOUT`]: dead peers do not hold file descriptors.
pub const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent requests on one HTTP/2 connection.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 64;

/// Bounds on what TCP clients may hold.
#[derive(Clone)]
pub struct Limits {
    /// Connections held at once; past it, `accept` waits (the kernel backlog absorbs bursts).
    pub max_connections: usize,
    /// A request's headers must arrive within this (slowloris guard).
    pub header_read_timeout: Duration,
    /// A connection whose first request has not begun this long after its TLS handshake is
    /// dropped: an idle connection holds a file descriptor and memory for nothing.
    pub first_request_timeout: Duration,
    /// A connection with no request in flight this long after its last one is dropped.
    pub idle_timeout: Duration,
    /// Connections one client address may hold (shared with QUIC).
    pub per_address: Arc<PerAddress>,
}

pub async fn serve(
    listener: TcpListener,
    certs: Arc<CertStore>,
    router: Router,
    alt_svc: String,
    limits: Limits,
    shutdown: Shutdown,
) {
    let acceptor = TlsAcceptor::from(Arc::new(super::tls::tcp_server_config(&certs)));
    let alt_svc = HeaderValue::from_str(&alt_svc).unwrap_or(HeaderValue::from_static("clear"));
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Invariant: hyper only enforces timeouts when it has a timer; without one the header read
    // timeout is silently off.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT)
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS);
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%err, "tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(address_slot) = limits.per_address.admit(peer.ip()) else {
            metrics::handshake(Listener::Tcp, Handshake::Refused);
            tracing::debug!(%peer, "too many connections from this address; closed");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let alt_svc = alt_svc.clone();
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let (first_request_timeout, idle_timeout) =
            (limits.first_request_timeout, limits.idle_timeout);
        tokio::spawn(async move {
            // Released when this connection's task ends and no WebSocket it upgraded to lives.
            let hold = super::ConnectionHold(Arc::new((slot, address_slot)));
            let tls =
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        metrics::handshake(Listener::Tcp, Handshake::Ok);
                        tls
                    }
                    Ok(Err(err)) => {
                        super::handshake_failed(Listener::Tcp, peer, Handshake::Failed);
                        tracing::debug!(%peer, %err, "tls handshake failed");
                        return;
                    }
                    Err(_) => {
                        super::handshake_failed(Listener::Tcp, peer, Handshake::TimedOut);
                        tracing::debug!(%peer, "tls handshake timed out");
                        return;
                    }
                };
            let activity = idle::Activity::new();
            let requests = activity.clone();
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let in_flight = requests.begin();
                let mut request = request.map(axum::body::Body::new);
                request.extensions_mut().insert(ClientAddr(peer));
                request.extensions_mut().insert(hold.clone());
                let alt_svc = alt_svc.clone();
                let router = router.clone();
                async move {
                    let mut response = router.oneshot(request).await?;
                    response.headers_mut().insert(header::ALT_SVC, alt_svc);
                    Ok::<_, std::convert::Infallible>(
                        response.map(|body| idle::TrackedBody::new(body, in_flight)),
                    )
                }
            });
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            let served = watcher.watch(connection.into_owned());
            // A request's start is all it takes (headers have their own timeout); a
            // connection that has asked nothing by the first-request deadline, or nothing
            // more for the idle timeout, is dropped.
            tokio::select! {
                result = served => if let Err(err) = result {
                    tracing::debug!(%peer, %err, "http connection ended with an error");
                },
                () = activity.idle_past(first_request_timeout, idle_timeout) => {
                    tracing::debug!(%peer, "idle past its deadline; connection dropped");
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("tcp connections still open after the drain timeout");
    }
}
