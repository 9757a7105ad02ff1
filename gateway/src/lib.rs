//! Haberci's gateway. It terminates every client connection and relays to the backend tier;
//! it never opens a Postgres connection.
//!
//! Layers, each a folder, importing in one direction (edge → transport → session; edge and
//! transport → relay; relay imports neither):
//!
//! - [`edge`]: sockets, TLS, HTTP/1.1, HTTP/2 and HTTP/3, the router and the proxy to the
//!   backend, and the WebTransport session handshake.
//! - [`transport`]: one realtime session per connection — native QUIC, WebTransport and
//!   WebSocket links around the shared driver of a `haberci_session::Session`.
//! - [`relay`]: Redis (streams, pub/sub hub, presence, revocations) and the backend's HTTP API
//!   (one client pool), and what each of a session's relay outputs does.
//! - [`metrics`]: every metric the gateway records, by name, in one file.
//! - [`config`]: [`GatewayConfig`], a tree read from `HABERCI_*` variables before anything
//!   binds.
//!
//! The session state machine itself is `haberci-session` (sans-IO); what gateway and backend
//! must agree on is `haberci-seam`.
//!
//! [`Gateway::start`] binds everything and returns the bound addresses, so tests run a gateway
//! in-process on port 0.

pub mod config;
pub mod edge;
pub mod metrics;
pub mod relay;
pub mod transport;

use std::net::SocketAddr;
use std::sync::Arc;

use haberci_kit::shutdown::Shutdown;
use tokio::task::JoinSet;

pub use config::GatewayConfig;
use edge::{cid, h3, proxy, quic, roster, router, tcp, tickets, tls, web};
use relay::backend::Backend;
use relay::effects::Messaging;
use relay::{keys, presence, revocation};

/// ALPN of HTTP/3.
pub const ALPN_H3: &[u8] = b"h3";
/// ALPN of the native QUIC protocol.
pub const ALPN_NATIVE: &[u8] = b"haberci/1";

/// How long an exiting gateway waits for the QUIC roster's last lines.
const ROSTER_FINISH_LIMIT: std::time::Duration = std::time::Duration::from_secs(3);

/// A running gateway.
pub struct Gateway {
    pub tcp_addr: SocketAddr,
    pub udp_addr: SocketAddr,
    pub certs: Arc<tls::CertStore>,
    /// The access-token keys realtime sessions are verified with.
    pub keys: Arc<keys::TokenKeys>,
    /// The realtime sessions held here, by session id, for revocation.
    pub revocations: Arc<revocation::Revocations>,
    tasks: JoinSet<()>,
    /// Writes the QUIC roster until the listeners and connections are gone.
    roster_writer: Option<roster::Writer>,
}

impl Gateway {
    /// Loads certificates, binds both listeners, and starts serving until `shutdown`.
    pub async fn start(config: GatewayConfig, shutdown: Shutdown) -> anyhow::Result<Gateway> {
        let certs = Arc::new(tls::CertStore::load(
            config.tls.cert_paths.clone(),
            config.tls.quic_cert,
        )?);
        let keys = Arc::new(keys::TokenKeys::default());
        let revocations = Arc::new(revocation::Revocations::default());
        // Invariant: one HTTP client pool to the backend, for the proxy, the internal API, the
        // key refresher and readiness.
        let backend = Backend::new(config.http.backend_url.clone(), config.http.backend_timeout);
        let messaging = start_messaging(&config, &backend, &shutdown).await?;
        let realtime = transport::Realtime {
            keys: keys.clone(),
            session: config.session,
            revocations: revocations.clone(),
            messaging,
        };
        let tcp_listener = tokio::net::TcpListener::bind(config.listen.tcp_addr)
            .await
            .map_err(|err| anyhow::anyhow!("cannot bind TCP {}: {err}", config.listen.tcp_addr))?;
        let tcp_addr = tcp_listener.local_addr()?;
        // Keys shared with the fleet need a server id of this gateway's own: two gateways on
        // one id and one secret could reset each other's live connections.
        let fleet = match (&config.relay.internal_token, config.quic.server_id) {
            (Some(secret), Some(_)) => cid::FleetKeys::derive(secret.as_str().as_bytes()),
            _ => cid::FleetKeys::random(),
        };
        let mut ticket_keeper = None;
        let quic_tickets: Arc<dyn rustls::server::ProducesTickets> = match &realtime.messaging {
            Some(messaging) if config.quic.fleet_tickets => {
                let tickets = Arc::new(tickets::FleetTickets::new());
                // The fleet's keys before the endpoint opens, so its first tickets resume at
                // any gateway; Redis away delays the start by `FIRST_FETCH` at most.
                let ready = tickets::first_fetch(&tickets, messaging.relay.redis()).await;
                ticket_keeper = Some(tickets::keep(
                    tickets.clone(),
                    messaging.relay.redis().clone(),
                    ready,
                    shutdown.clone(),
                ));
                tickets
            }
            _ => certs.tickets.clone(),
        };
        let (endpoint, reset_socket) = quic::bind(
            config.listen.udp_addr,
            &config.quic,
            &certs,
            quic_tickets,
            &fleet,
        )?;
        let udp_addr = endpoint.local_addr()?;
        let advertised_udp_port = config.listen.alt_svc_port.unwrap_or(udp_addr.port());

        let state = edge::GatewayState {
            proxy: proxy::Proxy::new(
                backend.clone(),
                config.relay.internal_token.clone(),
                config.http.max_body_bytes,
                proxy::UploadLimits {
                    max_bytes: config.http.max_upload_bytes,
                    idle_timeout: config.http.body_idle_timeout,
                },
            ),
            cors: config.http.cors.clone(),
            realtime: realtime.clone(),
            shutdown: shutdown.clone(),
            web: web::Web {
                dir: config.http.web_dir.as_deref().map(Arc::from),
                certs: certs.clone(),
                webtransport_port: advertised_udp_port,
            },
            max_body_bytes: config.http.max_body_bytes,
        };
        let router = router::router(state);

        let mut tasks = JoinSet::new();
        tasks.spawn(keys::refresh(keys.clone(), backend, shutdown.clone()));
        if let Some(keeper) = ticket_keeper {
            tasks.spawn(keeper);
        }
        match &config.relay.redis_url {
            Some(url) => {
                tasks.spawn(revocation::listen(
                    revocations.clone(),
                    url.clone(),
                    shutdown.clone(),
                ));
            }
            None => tracing::warn!("no Redis configured: revoked sessions end at token expiry"),
        }
        tasks.spawn(tls::watch(
            certs.clone(),
            config.tls.reload_interval,
            shutdown.clone(),
        ));
        tasks.spawn(tls::rotate(
            certs.clone(),
            config.tls.rotate_interval,
            shutdown.clone(),
        ));
        // One count per client address over both listeners.
        let per_address = edge::per_address::PerAddress::new(
            config.listen.max_connections_per_address,
            config.listen.address_limit_exempt.clone(),
        );
        tasks.spawn(tcp::serve(
            tcp_listener,
            certs.clone(),
            router.clone(),
            config::alt_svc_value(advertised_udp_port),
            tcp::Limits {
                max_connections: config.listen.max_tcp_connections,
                header_read_timeout: config.http.header_read_timeout,
                first_request_timeout: config.http.first_request_timeout,
                idle_timeout: config.http.idle_timeout,
                per_address: per_address.clone(),
            },
            shutdown.clone(),
        ));
        let admission = quic::Admission::with_retry(
            config.quic.max_handshakes,
            config.quic.retry_above,
            config.quic.handshakes_per_address,
            config.listen.address_limit_exempt.clone(),
        );
        // The previous life's connections (if it crashed), told at once that they are gone.
        let (roster, roster_writer) = match (&config.quic.roster, config.quic.server_id) {
            (Some(path), Some(server_id)) => match roster::Roster::open(path) {
                Ok((roster, mut lost, writer)) => {
                    // Only this gateway's: another's tokens are signed with another key.
                    lost.retain(|one| cid::server_id(&one.cid) == Some(server_id));
                    if !lost.is_empty() {
                        tracing::info!(
                            connections = lost.len(),
                            "the previous life left QUIC connections: resetting them"
                        );
                    }
                    tasks.spawn(roster::call_back(
                        reset_socket,
                        lost,
                        fleet.clone(),
                        server_id,
                        config.quic.callback_rate,
                        admission.clone(),
                        shutdown.clone(),
                    ));
                    (Some(roster), Some(writer))
                }
                // Optional: without it, clients hear of a crash at their heartbeat.
                Err(err) => {
                    tracing::error!(path = %path.display(), %err, "cannot open the QUIC roster: running without it");
                    (None, None)
                }
            },
            _ => (None, None),
        };
        tasks.spawn(quic::serve(
            endpoint,
            router,
            h3::Limits {
                header_read_timeout: config.http.header_read_timeout,
                body_idle_timeout: config.http.body_idle_timeout,
            },
            realtime,
            quic::Arrivals {
                admission,
                per_address,
                roster,
            },
            shutdown,
        ));
        tracing::info!(%tcp_addr, %udp_addr, "gateway listening");
        Ok(Gateway {
            tcp_addr,
            udp_addr,
            certs,
            keys,
            revocations,
            tasks,
            roster_writer,
        })
    }

    /// Waits until every listener has stopped (after shutdown).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
        // The connections are closed: their lines are the last the roster writes.
        if let Some(writer) = self.roster_writer.take() {
            writer.finish(ROSTER_FINISH_LIMIT).await;
        }
    }
}

/// Messaging needs Redis and the internal API's secret; without either, sessions open but what
/// needs the relay is answered `unavailable`.
async fn start_messaging(
    config: &GatewayConfig,
    backend: &Backend,
    shutdown: &Shutdown,
) -> anyhow::Result<Option<Messaging>> {
    let (Some(redis_url), Some(internal_token)) =
        (&config.relay.redis_url, &config.relay.internal_token)
    else {
        tracing::warn!("no Redis or no internal token configured: messaging is unavailable");
        return Ok(None);
    };
    let relay = relay::Relay::start(
        relay::RelayConfig {
            redis_url: redis_url.clone(),
            shards: config.relay.stream_shards,
            stream_prefix: config.relay.stream_prefix.clone(),
            internal_token: internal_token.clone(),
        },
        backend.clone(),
        shutdown.clone(),
    )
    .await?;
    let presence = presence::Presence::new(
        relay.clone(),
        presence::Timing::every(config.relay.presence_refresh),
    );
    // Its first round says this gateway is alive at once, without holding up the start while
    // Redis is away (the gateway serves HTTP meanwhile).
    tokio::spawn(presence.clone().run(shutdown.clone()));
    Ok(Some(Messaging {
        relay,
        presence,
        max_sessions_per_user: config.relay.max_sessions_per_user,
    }))
}
