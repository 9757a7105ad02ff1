//! Haberci's edge. A gateway terminates every client connection and relays to the backend tier;
//! it never opens a Postgres connection.
//!
//! Module map:
//! - [`config`]: [`GatewayConfig`] from `HABERCI_*` variables, parsed before anything binds.
//! - [`tls`]: the certificate store shared by both listeners, reloaded when the files change or
//!   on SIGHUP, without dropping open connections.
//! - [`http`]: the one axum router every HTTP version is served by: `/healthz`, `/readyz`,
//!   [`proxy`] of every other `/v1/*` request to the backend API, and [`web`]: `/v1/realtime`
//!   (realtime endpoints, WebTransport certificate hashes) and the demo page's static files.
//! - [`tcp`]: TLS on TCP with ALPN `h2` / `http/1.1`; every response carries `Alt-Svc: h3`.
//! - [`quic`]: one quinn endpoint on UDP; each connection is dispatched by its negotiated ALPN
//!   to [`h3server`] (`h3`) or [`native`] (`haberci/1`, a [`session::Session`] on one bidi
//!   stream). Unknown ALPNs fail the TLS handshake. An HTTP/3 connection that sends a
//!   WebTransport CONNECT to `/v1/rt` becomes a [`webtransport`] session.
//! - [`session`]: the sans-IO realtime session state machine the three transports share
//!   (handshake, ping, in-band token refresh, expiry, timeouts, send rate), driven by the
//!   [`native`] QUIC, [`webtransport`] and [`websocket`] adapters (helpers in [`transport`]).
//!   [`auth`] keeps the token verifier in step with the backend's JWKS.
//!
//! [`Gateway::start`] binds everything and returns the bound addresses, so tests run a gateway
//! in-process on port 0.

pub mod auth;
pub mod config;
pub mod delivery;
pub mod h3server;
pub mod http;
pub mod native;
pub mod presence;
pub mod proxy;
pub mod quic;
pub mod relay;
pub mod revocation;
pub mod sends;
pub mod session;
pub mod tcp;
pub mod tls;
pub mod transport;
pub mod web;
pub mod websocket;
pub mod webtransport;

use std::net::SocketAddr;
use std::sync::Arc;

use haberci_kit::shutdown::Shutdown;
use tokio::task::JoinSet;

pub use config::GatewayConfig;

/// ALPN of HTTP/3.
pub const ALPN_H3: &[u8] = b"h3";
/// ALPN of the native QUIC protocol.
pub const ALPN_NATIVE: &[u8] = b"haberci/1";

/// A running gateway.
pub struct Gateway {
    pub tcp_addr: SocketAddr,
    pub udp_addr: SocketAddr,
    pub certs: Arc<tls::CertStore>,
    /// The access-token keys realtime sessions are verified with.
    pub keys: Arc<auth::TokenKeys>,
    /// The realtime sessions held here, by session id, for revocation.
    pub revocations: Arc<revocation::Revocations>,
    tasks: JoinSet<()>,
}

impl Gateway {
    /// Loads certificates, binds both listeners, and starts serving until `shutdown`.
    pub async fn start(config: GatewayConfig, shutdown: Shutdown) -> anyhow::Result<Gateway> {
        let certs = Arc::new(tls::CertStore::load(config.cert_paths.clone())?);
        let keys = Arc::new(auth::TokenKeys::default());
        let revocations = Arc::new(revocation::Revocations::default());
        let mut realtime = transport::Realtime {
            keys: keys.clone(),
            session: config.session,
            revocations: revocations.clone(),
            relay: None,
            presence: None,
        };
        let backend = proxy::Backend::new(
            config.backend_url.clone(),
            config.backend_timeout,
            config.max_body_bytes,
        );
        realtime.relay = match (&config.redis_url, &config.internal_token) {
            (Some(redis_url), Some(internal_token)) => Some(
                relay::Relay::start(
                    relay::RelayConfig {
                        redis_url: redis_url.clone(),
                        shards: config.stream_shards,
                        stream_prefix: config.stream_prefix.clone(),
                        internal_token: internal_token.clone(),
                    },
                    backend.clone(),
                    shutdown.clone(),
                )
                .await?,
            ),
            _ => {
                tracing::warn!(
                    "no Redis or no internal token configured: messaging is unavailable"
                );
                None
            }
        };
        let timing = presence::Timing::every(config.presence_refresh);
        realtime.presence = realtime
            .relay
            .clone()
            .map(|relay| presence::Presence::new(relay, timing));
        if let Some(presence) = &realtime.presence {
            // Its first round says this gateway is alive at once, without holding up the start
            // while Redis is away (the gateway serves HTTP meanwhile).
            tokio::spawn(presence.clone().run(shutdown.clone()));
        }
        let tcp_listener = tokio::net::TcpListener::bind(config.tcp_addr)
            .await
            .map_err(|err| anyhow::anyhow!("cannot bind TCP {}: {err}", config.tcp_addr))?;
        let tcp_addr = tcp_listener.local_addr()?;
        let endpoint = quic::bind(&config, &certs)?;
        let udp_addr = endpoint.local_addr()?;
        let advertised_udp_port = config.alt_svc_port.unwrap_or(udp_addr.port());

        let web = web::Web {
            dir: config.web_dir.as_deref().map(std::sync::Arc::from),
            certs: certs.clone(),
            webtransport_port: advertised_udp_port,
        };
        let state = http::GatewayState::new(&config, realtime.clone(), shutdown.clone(), web);
        let backend = state.backend.clone();
        let router = http::router(state);

        let mut tasks = JoinSet::new();
        tasks.spawn(auth::refresh(keys.clone(), backend, shutdown.clone()));
        match &config.redis_url {
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
            config.cert_reload_interval,
            shutdown.clone(),
        ));
        tasks.spawn(tcp::serve(
            tcp_listener,
            certs.clone(),
            router.clone(),
            config::alt_svc_value(advertised_udp_port),
            tcp::Limits {
                max_connections: config.max_tcp_connections,
                header_read_timeout: config.header_read_timeout,
            },
            shutdown.clone(),
        ));
        tasks.spawn(quic::serve(
            endpoint,
            router,
            h3server::Limits {
                header_read_timeout: config.header_read_timeout,
                body_idle_timeout: config.body_idle_timeout,
            },
            realtime,
            quic::Admission::new(config.quic_max_handshakes),
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
        })
    }

    /// Waits until every listener has stopped (after shutdown).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}
