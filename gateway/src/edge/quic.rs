//! One quinn endpoint on UDP. Each connection is dispatched by the ALPN it negotiated:
//! `h3` → [`super::h3`] (which hands a WebTransport CONNECT on `/v1/rt` to
//! [`super::h3::webtransport`]), `haberci/1` → [`crate::transport::native`]. rustls refuses any other ALPN
//! during the handshake, so nothing else gets this far.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use haberci_kit::shutdown::Shutdown;
use haberci_wire::ErrorCode;
use quinn::crypto::rustls::{HandshakeData, QuicServerConfig};
use quinn::{Endpoint, IdleTimeout, TransportConfig, VarInt};
use tokio_util::task::TaskTracker;

use super::cid::{FleetKeys, ResetScope};
use super::tls::CertStore;
use crate::config::Quic;
use crate::metrics::{self, Handshake, Listener};

/// Streams a peer may open at once. quinn reserves state for every stream ID a peer may
/// open, so these stay small: a chat session needs one bidi stream, an HTTP/3 client a few
/// request streams; HTTP/3 needs three unidirectional streams (control, QPACK encoder and
/// decoder) and WebTransport a few more.
pub const MAX_BIDI_STREAMS: u32 = 16;
pub const MAX_UNI_STREAMS: u32 = 8;
/// Per-stream and per-connection receive windows (flow control), sized for chat frames.
pub const STREAM_RECEIVE_WINDOW: u32 = 64 * 1024;
pub const CONNECTION_RECEIVE_WINDOW: u32 = 128 * 1024;
pub const SEND_WINDOW: u64 = 64 * 1024;
/// Datagram bytes buffered per connection, each way. WebTransport needs QUIC datagrams
/// (RFC 9221) enabled, and quinn's defaults would let one peer park ~1.25 MiB of unread
/// datagrams (and us 1 MiB of unsent ones) per connection. Datagrams carry only ephemeral
/// frames (typing, presence) that may be dropped, so a few of them is plenty: when a buffer is
/// full quinn drops the oldest. The receive size is also the largest datagram the peer may
/// send (advertised as `max_datagram_frame_size`), so it stays above a path MTU. Native QUIC
/// connections get the same bound; their adapter does not read datagrams yet, so what a native
/// peer sends is dropped once 8 KiB is queued.
pub const DATAGRAM_RECEIVE_BUFFER: usize = 8 * 1024;
pub const DATAGRAM_SEND_BUFFER: usize = 16 * 1024;
/// How long a handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Application close code used when the endpoint shuts down.
pub const CLOSE_SHUTDOWN: u32 = 0;
/// HTTP/3's H3_EXCESSIVE_LOAD (RFC 9114): a connection refused for load.
pub const H3_EXCESSIVE_LOAD: u64 = 0x0107;
/// How long requests in flight get to finish at shutdown before the endpoint closes.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds the endpoint with the gateway's TLS and transport settings, its connection IDs and
/// stateless resets keyed by `keys` ([`super::cid`]). Also returns a second handle on its
/// socket, for resets sent unprompted ([`super::roster::call_back`]): a client accepts a
/// reset only from the address it talks to.
pub fn bind(
    udp_addr: SocketAddr,
    config: &Quic,
    certs: &CertStore,
    tickets: Arc<dyn rustls::server::ProducesTickets>,
    keys: &FleetKeys,
) -> anyhow::Result<(Endpoint, std::net::UdpSocket)> {
    let crypto = QuicServerConfig::try_from(super::tls::quic_server_config(certs, tickets))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_BIDI_STREAMS))
        .max_concurrent_uni_streams(VarInt::from_u32(MAX_UNI_STREAMS))
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW))
        .send_window(SEND_WINDOW)
        .datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER))
        .datagram_send_buffer_size(DATAGRAM_SEND_BUFFER)
        .max_idle_timeout(Some(IdleTimeout::try_from(config.idle_timeout)?));
    server.transport_config(Arc::new(transport));
    let (socket, bound) = haberci_kit::udp::bind(udp_addr, config.socket_buffer)
        .map_err(|err| anyhow::anyhow!("cannot bind UDP {}: {err}", udp_addr))?;
    // Linux reports twice what it books against the limit.
    if bound.recv_buffer < config.socket_buffer {
        tracing::warn!(
            asked = config.socket_buffer,
            granted = bound.recv_buffer,
            "the UDP receive buffer is smaller than asked (raise net.core.rmem_max or grant CAP_NET_ADMIN); bursts to many QUIC connections may be dropped"
        );
    } else {
        tracing::info!(
            recv = bound.recv_buffer,
            send = bound.send_buffer,
            forced = bound.forced,
            "UDP socket buffers"
        );
    }
    let runtime =
        quinn::default_runtime().ok_or_else(|| anyhow::anyhow!("no async runtime for quinn"))?;
    let second = socket.try_clone()?;
    let endpoint = Endpoint::new(
        keys.endpoint_config(
            config.server_id.unwrap_or(0),
            if config.reset_fleet {
                ResetScope::Fleet
            } else {
                ResetScope::Own
            },
        ),
        Some(server),
        socket,
        runtime,
    )
    .map_err(|err| anyhow::anyhow!("cannot start QUIC on UDP {}: {err}", udp_addr))?;
    Ok((endpoint, second))
}

/// Admission control for handshakes: at most `limit` in flight; above that a new connection
/// is refused at once (`incoming.refuse()`: one stateless packet, no crypto), and its client
/// backs off and comes again.
///
/// Without it, a reconnect storm (every client of a dead gateway at once) overloads the
/// survivor: it starts every handshake, finishes few of them before their clients' 10 s
/// timeout, its socket overflows, and the sessions it already held lose their pings and join
/// the storm. 100,000 clients of two gateways, one killed: 97,359 sessions dropped and
/// 95,669 never came back (docs/BENCHMARKS.md, "Reconnect storm"). Refusing is cheap; an
/// admitted handshake finishes in milliseconds.
///
/// Spoofed Initials would fill those places with handshakes nobody finishes, so above
/// `retry_above` handshakes in flight, and above `per_address` from one address, a client
/// whose address is not proven gets a Retry first ([`Admission::verdict`]): one stateless
/// packet whose token only the real owner of the address can echo.
#[derive(Debug)]
pub struct Admission {
    limit: usize,
    retry_above: usize,
    per_address: usize,
    /// Not counted per address (the listeners' exempt list).
    exempt: Vec<ipnet::IpNet>,
    in_flight: std::sync::atomic::AtomicUsize,
    from: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    /// Refused since the last report.
    refused: std::sync::atomic::AtomicU64,
    /// When refusals were last reported, in ms since `started` (`u64::MAX`: never).
    reported_ms: std::sync::atomic::AtomicU64,
    started: std::time::Instant,
}

/// What to do with a connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Start the handshake (if [`Admission::admit`] finds a place).
    Admit,
    /// Prove the address first: a Retry.
    Retry,
    /// Refuse at once: a proven address over its share.
    Refuse,
}

/// Refusals are reported at most this often: one WARN per period while a storm lasts.
pub const REFUSAL_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// One admitted handshake; dropping it frees the place (and its address's).
#[derive(Debug)]
pub struct Admitted(Arc<Admission>, Option<std::net::IpAddr>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        if let Some(key) = self.1 {
            let mut from = self.0.from.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = from.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    from.remove(&key);
                }
            }
        }
    }
}

impl Admission {
    pub fn new(limit: usize) -> Arc<Admission> {
        Admission::with_retry(limit, usize::MAX, usize::MAX, Vec::new())
    }

    pub fn with_retry(
        limit: usize,
        retry_above: usize,
        per_address: usize,
        exempt: Vec<ipnet::IpNet>,
    ) -> Arc<Admission> {
        Arc::new(Admission {
            limit,
            retry_above,
            per_address,
            exempt,
            from: Default::default(),
            in_flight: Default::default(),
            refused: Default::default(),
            reported_ms: std::sync::atomic::AtomicU64::new(u64::MAX),
            started: std::time::Instant::now(),
        })
    }

    /// Whether an attempt from `ip` may start its handshake, must prove its address first
    /// (`validated`: it echoed a Retry token; `may_retry`: it has not been sent one yet), or
    /// is refused.
    pub fn verdict(&self, ip: std::net::IpAddr, validated: bool, may_retry: bool) -> Verdict {
        let busy = self.in_flight() >= self.retry_above;
        let crowded = self
            .key(ip)
            .is_some_and(|key| self.in_flight_from(key) >= self.per_address);
        match (validated, busy || crowded) {
            (false, true) if may_retry => Verdict::Retry,
            (true, _) if crowded => Verdict::Refuse,
            _ => Verdict::Admit,
        }
    }

    /// The per-address key of `ip` (an IPv6 /64); `None` when exempt.
    fn key(&self, ip: std::net::IpAddr) -> Option<std::net::IpAddr> {
        let ip = ip.to_canonical();
        (!self.exempt.iter().any(|net| net.contains(&ip)))
            .then(|| super::per_address::counted_as(ip))
    }

    fn in_flight_from(&self, key: std::net::IpAddr) -> usize {
        let from = self.from.lock().unwrap_or_else(|p| p.into_inner());
        from.get(&key).copied().unwrap_or(0)
    }

    /// A place for one more handshake (from `ip`), or `None`: refuse it.
    pub fn admit(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<Admitted> {
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        let taken = self
            .in_flight
            .fetch_update(AcqRel, Acquire, |n| (n < self.limit).then_some(n + 1))
            .is_ok();
        if taken {
            let key = self.key(ip);
            if let Some(key) = key {
                let mut from = self.from.lock().unwrap_or_else(|p| p.into_inner());
                *from.entry(key).or_default() += 1;
            }
            return Some(Admitted(self.clone(), key));
        }
        self.refused.fetch_add(1, AcqRel);
        if let Some(refused) = self.report_due() {
            tracing::warn!(
                limit = self.limit,
                refused,
                "QUIC handshakes in flight at the limit: refusing new connections (their clients back off)"
            );
        }
        None
    }

    /// The refusals to report now, if a report is due (the first refusal, then at most one
    /// report per [`REFUSAL_REPORT_INTERVAL`]).
    fn report_due(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        let interval = REFUSAL_REPORT_INTERVAL.as_millis() as u64;
        let last = self.reported_ms.load(Acquire);
        let due = last == u64::MAX || now.saturating_sub(last) >= interval;
        if due
            && self
                .reported_ms
                .compare_exchange(last, now, AcqRel, Acquire)
                .is_ok()
        {
            Some(self.refused.swap(0, AcqRel))
        } else {
            None
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether unprompted resets may go out now ([`super::roster::call_back`]): each brings a
    /// handshake a moment later, so they wait while half the places are taken.
    pub fn has_room_for_callbacks(&self) -> bool {
        self.in_flight() < self.limit.div_ceil(2)
    }
}

/// What a new connection passes through.
pub struct Arrivals {
    /// Handshakes in flight.
    pub admission: Arc<Admission>,
    /// Connections per client address, counted once the handshake proved the address.
    pub per_address: Arc<super::per_address::PerAddress>,
    /// Where established connections are listed for the next life ([`super::roster`]).
    pub roster: Option<super::roster::Roster>,
}

/// Accepts connections until shutdown, then closes the endpoint.
pub async fn serve(
    endpoint: Endpoint,
    router: Router,
    h3_limits: super::h3::Limits,
    realtime: crate::transport::Realtime,
    arrivals: Arrivals,
    shutdown: Shutdown,
) {
    let Arrivals {
        admission,
        per_address,
        roster,
    } = arrivals;
    // Every connection and request task, so shutdown can let them finish before closing.
    let tasks = TaskTracker::new();
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        let ip = incoming.remote_address().ip();
        match admission.verdict(
            ip,
            incoming.remote_address_validated(),
            incoming.may_retry(),
        ) {
            Verdict::Admit => {}
            Verdict::Retry => {
                metrics::handshake(Listener::Quic, Handshake::Retried);
                if let Err(err) = incoming.retry() {
                    err.into_incoming().refuse();
                }
                continue;
            }
            Verdict::Refuse => {
                metrics::handshake(Listener::Quic, Handshake::Refused);
                incoming.refuse();
                continue;
            }
        }
        let Some(admitted) = admission.admit(ip) else {
            metrics::handshake(Listener::Quic, Handshake::Refused);
            incoming.refuse();
            continue;
        };
        let router = router.clone();
        let shutdown = shutdown.clone();
        let requests = tasks.clone();
        let realtime = realtime.clone();
        let per_address = per_address.clone();
        let roster = roster.clone();
        tasks.spawn(async move {
            let peer = incoming.remote_address();
            super::cid::take_last_issued();
            let connecting = incoming.accept();
            // Invariant: read right after `accept`, on its thread (see `take_last_issued`).
            let cid = super::cid::take_last_issued();
            let handshake = match connecting {
                Ok(connecting) => tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await,
                Err(err) => Ok(Err(err)),
            };
            drop(admitted);
            let connection = match handshake {
                Ok(Ok(connection)) => {
                    metrics::handshake(Listener::Quic, Handshake::Ok);
                    connection
                }
                Ok(Err(err)) => {
                    super::handshake_failed(Listener::Quic, peer, Handshake::Failed);
                    tracing::debug!(%peer, %err, "quic handshake failed");
                    return;
                }
                Err(_) => {
                    super::handshake_failed(Listener::Quic, peer, Handshake::TimedOut);
                    tracing::debug!(%peer, "quic handshake timed out");
                    return;
                }
            };
            // Counted once the handshake proved the address (a spoofed one gets no further).
            let Some(_address_slot) = per_address.admit(peer.ip()) else {
                metrics::handshake(Listener::Quic, Handshake::Refused);
                tracing::debug!(%peer, "too many connections from this address; closed");
                // HTTP/3's H3_EXCESSIVE_LOAD; a native client reads `too_many_sessions`.
                let code = match negotiated_alpn(&connection).as_deref() {
                    Some(crate::ALPN_NATIVE) => ErrorCode::TooManySessions.quic_code(),
                    _ => H3_EXCESSIVE_LOAD,
                };
                connection.close(
                    VarInt::from_u64(code).unwrap_or(VarInt::from_u32(0)),
                    b"too many connections from your address",
                );
                return;
            };
            let _listed = roster.as_ref().zip(cid).map(|(roster, cid)| {
                let path = super::roster::Path {
                    client: connection.remote_address(),
                    local: connection.local_ip(),
                };
                roster.list(cid, path)
            });
            // Each protocol's future is boxed on its own: inline, every connection's task
            // would be as large as the largest of them (the HTTP/3 one), idle or not.
            match negotiated_alpn(&connection).as_deref() {
                Some(crate::ALPN_H3) => {
                    let http = super::h3::Http {
                        router,
                        limits: h3_limits,
                        requests,
                    };
                    Box::pin(super::h3::serve_connection(
                        connection, http, realtime, shutdown,
                    ))
                    .await
                }
                Some(crate::ALPN_NATIVE) => {
                    Box::pin(crate::transport::native::serve_connection(
                        connection, realtime, shutdown,
                    ))
                    .await
                }
                other => {
                    // Unreachable while rustls enforces the ALPN list; kept as a guard.
                    tracing::warn!(%peer, alpn = ?other, "quic connection without a known ALPN");
                    connection.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"unknown alpn");
                }
            }
        });
    }
    // Refuse new connections, let requests in flight finish (HTTP/3 connections have been sent
    // GOAWAY), then close whatever is left.
    endpoint.set_server_config(None);
    tasks.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("quic requests still running after the drain timeout");
    }
    endpoint.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"server shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
}

/// The ALPN the handshake settled on.
pub fn negotiated_alpn(connection: &quinn::Connection) -> Option<Vec<u8>> {
    connection
        .handshake_data()?
        .downcast::<HandshakeData>()
        .ok()?
        .protocol
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// Unproven addresses prove themselves first once handshakes pile up, or once one address
    /// has many in flight; a proven address over its share is refused; exempt ones never are.
    #[test]
    fn unproven_addresses_get_a_retry_under_pressure_and_crowded_ones_are_refused() {
        let exempt = vec!["127.0.0.0/8".parse().unwrap_or_default()];
        let admission = Admission::with_retry(10, 2, 3, exempt);
        let a: std::net::IpAddr = std::net::Ipv4Addr::new(198, 51, 100, 7).into();
        let b: std::net::IpAddr = std::net::Ipv4Addr::new(198, 51, 100, 8).into();
        assert_eq!(admission.verdict(a, false, true), Verdict::Admit);
        let held = [admission.admit(a), admission.admit(a)];
        assert_eq!(admission.verdict(b, false, true), Verdict::Retry, "busy");
        assert_eq!(admission.verdict(b, true, false), Verdict::Admit, "proven");
        assert_eq!(
            admission.verdict(b, false, false),
            Verdict::Admit,
            "retried once"
        );
        let third = admission.admit(a);
        assert_eq!(
            admission.verdict(a, true, false),
            Verdict::Refuse,
            "a's share"
        );
        assert_eq!(
            admission.verdict(LOCAL, true, false),
            Verdict::Admit,
            "exempt"
        );
        drop((held, third));
        assert_eq!(admission.verdict(a, false, true), Verdict::Admit);
        assert_eq!(admission.in_flight(), 0);
    }

    #[test]
    fn handshakes_above_the_limit_are_refused_until_one_finishes() {
        let admission = Admission::new(2);
        let first = admission.admit(LOCAL).expect("first");
        let second = admission.admit(LOCAL).expect("second");
        assert!(admission.admit(LOCAL).is_none(), "a third is refused");
        assert!(admission.admit(LOCAL).is_none(), "and a fourth");
        assert_eq!(admission.in_flight(), 2);
        drop(first);
        let third = admission.admit(LOCAL).expect("a place freed");
        assert_eq!(admission.in_flight(), 2);
        drop((second, third));
        assert_eq!(admission.in_flight(), 0);
    }

    #[test]
    fn refusals_are_reported_once_per_interval_not_once_each() {
        let admission = Admission::new(0);
        assert!(admission.admit(LOCAL).is_none());
        // The first refusal was reported (and its count taken); the next ones wait.
        assert_eq!(admission.report_due(), None);
        for _ in 0..1_000 {
            assert!(admission.admit(LOCAL).is_none());
        }
        assert_eq!(admission.report_due(), None, "within the interval");
        assert_eq!(
            admission.refused.load(std::sync::atomic::Ordering::Acquire),
            1_000,
            "counted for the next report"
        );
    }

    #[test]
    fn a_limit_of_zero_refuses_everything() {
        let admission = Admission::new(0);
        assert!(admission.admit(LOCAL).is_none());
        assert_eq!(admission.in_flight(), 0);
    }
}
