//! [`ClientConfig`]: where to connect, how to trust the server, who we are, and the session's
//! timings. Built once, before anything connects.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use haberci_wire::ResumePosition;
// tungstenite re-exports the `http` crate: no extra dependency for URI parsing.
use tokio_tungstenite::tungstenite::http::uri as http_uri;

use crate::session::{
    DEFAULT_ACK_DELAY, DEFAULT_PING_INTERVAL, DEFAULT_PONG_TIMEOUT, SessionSettings,
};

/// How long [`Client::connect`](crate::Client::connect) may take, transport handshake and
/// `Welcome` included.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Servers whose tickets a new [`ClientConfig::tickets`] store keeps (rustls keeps a few
/// tickets per server name).
const TICKET_STORE_SERVERS: usize = 8;
/// `Hello.client_name` unless set.
pub const DEFAULT_CLIENT_NAME: &str = "haberci-client";

/// Which transport to speak, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// Native QUIC (ALPN `haberci/1`): `addr` is `host:port` of the gateway's UDP endpoint,
    /// e.g. `localhost:4433` or `[::1]:4433`.
    Quic { addr: String },
    /// WebSocket over TLS: `url` is `wss://host:port/v1/ws`.
    WebSocket { url: String },
    /// WebTransport over HTTP/3, as a browser connects: `url` is `https://host:port/v1/rt`
    /// (the gateway's UDP port, e.g. `https://localhost:4433/v1/rt`).
    WebTransport { url: String },
}

impl Transport {
    /// The host part of the address or URL (the default TLS server name).
    pub(crate) fn host(&self) -> Option<String> {
        match self {
            Transport::Quic { addr } => crate::transport::quic::split_host_port(addr)
                .ok()
                .map(|(host, _)| host.to_owned()),
            Transport::WebSocket { url } | Transport::WebTransport { url } => url
                .parse::<http_uri::Uri>()
                .ok()
                .and_then(|uri| uri.host().map(|h| h.trim_matches(['[', ']']).to_owned())),
        }
    }
}

/// The certificate authorities that may vouch for the server.
#[derive(Clone)]
pub enum Roots {
    /// Every certificate in a PEM file (e.g. `.dev/certs/ca.pem`).
    PemFile(PathBuf),
    /// A ready store.
    Store(rustls::RootCertStore),
}

impl fmt::Debug for Roots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Roots::PemFile(path) => f.debug_tuple("PemFile").field(path).finish(),
            Roots::Store(store) => write!(f, "Store({} roots)", store.len()),
        }
    }
}

/// Everything [`Client::connect`](crate::Client::connect) needs.
#[derive(Clone)]
pub struct ClientConfig {
    pub transport: Transport,
    /// The name the server's certificate must carry (TLS SNI). `None`: the host of the
    /// address or URL.
    pub server_name: Option<String>,
    pub roots: Roots,
    /// A JWT from the HTTP API (`/v1/auth/login` or `/register`). Never logged.
    pub access_token: String,
    /// Where to resume each conversation from (`Hello.resume`).
    pub resume: Vec<ResumePosition>,
    pub client_name: String,
    pub client_version: String,
    /// Ack received messages automatically (cumulative, coalesced over `ack_delay`).
    pub auto_ack: bool,
    pub ack_delay: Duration,
    /// Ping after this long without sending anything (capped at a third of the server's idle
    /// timeout). `Duration::ZERO` turns the heartbeat off.
    pub ping_interval: Duration,
    /// A `Pong` later than this ends the connection with `Disconnect::PongTimeout`.
    pub pong_timeout: Duration,
    pub connect_timeout: Duration,
    /// Native QUIC and WebTransport: a QUIC PING after this long without sending, below the
    /// heartbeat (no frame reaches the server's session, so it is cheaper than `Ping`). A
    /// gateway restarted after a crash answers it with a stateless reset, so the client learns
    /// within this interval that its connection is gone. `None` (the default): no PINGs,
    /// which is what a phone's radio wants.
    pub quic_keep_alive: Option<Duration>,
    /// A QUIC endpoint (UDP socket) to share between many connections, as a load generator
    /// wants (native QUIC and WebTransport). `None`: each connection binds its own.
    pub quic_endpoint: Option<quinn::Endpoint>,
    /// Where TLS session tickets are kept between connections, so that a reconnect resumes
    /// (no certificate to send and check). Made by [`ClientConfig::new`] for this
    /// configuration; share one store between configurations (as a load generator making
    /// many clients does) to resume across them.
    pub tickets: Arc<dyn rustls::client::ClientSessionStore>,
}

impl ClientConfig {
    /// A configuration with the default timings, auto-ack on, and no resume positions.
    pub fn new(transport: Transport, roots: Roots, access_token: impl Into<String>) -> Self {
        ClientConfig {
            transport,
            server_name: None,
            roots,
            access_token: access_token.into(),
            resume: Vec::new(),
            client_name: DEFAULT_CLIENT_NAME.into(),
            client_version: env!("CARGO_PKG_VERSION").into(),
            auto_ack: true,
            ack_delay: DEFAULT_ACK_DELAY,
            ping_interval: DEFAULT_PING_INTERVAL,
            pong_timeout: DEFAULT_PONG_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            quic_keep_alive: None,
            quic_endpoint: None,
            tickets: Arc::new(rustls::client::ClientSessionMemoryCache::new(
                TICKET_STORE_SERVERS,
            )),
        }
    }

    pub(crate) fn session_settings(&self) -> SessionSettings {
        SessionSettings {
            auto_ack: self.auto_ack,
            ack_delay: self.ack_delay,
            ping_interval: self.ping_interval,
            pong_timeout: self.pong_timeout,
        }
    }

    /// The TLS server name: `server_name`, else the host of the address or URL.
    pub(crate) fn tls_server_name(&self) -> Option<String> {
        self.server_name.clone().or_else(|| self.transport.host())
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("transport", &self.transport)
            .field("server_name", &self.server_name)
            .field("roots", &self.roots)
            .field(
                "access_token",
                &format_args!("<redacted, {} bytes>", self.access_token.len()),
            )
            .field("resume", &self.resume)
            .field("client_name", &self.client_name)
            .field("client_version", &self.client_version)
            .field("auto_ack", &self.auto_ack)
            .field("ack_delay", &self.ack_delay)
            .field("ping_interval", &self.ping_interval)
            .field("pong_timeout", &self.pong_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("quic_keep_alive", &self.quic_keep_alive)
            .field("quic_endpoint", &self.quic_endpoint.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_defaults_to_the_host() {
        let roots = Roots::Store(rustls::RootCertStore::empty());
        let quic = ClientConfig::new(
            Transport::Quic {
                addr: "localhost:4433".into(),
            },
            roots.clone(),
            "t",
        );
        assert_eq!(quic.tls_server_name().as_deref(), Some("localhost"));
        let v6 = ClientConfig::new(
            Transport::Quic {
                addr: "[::1]:4433".into(),
            },
            roots.clone(),
            "t",
        );
        assert_eq!(v6.tls_server_name().as_deref(), Some("::1"));
        let mut ws = ClientConfig::new(
            Transport::WebSocket {
                url: "wss://chat.example:8443/v1/ws".into(),
            },
            roots,
            "t",
        );
        assert_eq!(ws.tls_server_name().as_deref(), Some("chat.example"));
        ws.server_name = Some("localhost".into());
        assert_eq!(ws.tls_server_name().as_deref(), Some("localhost"));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let config = ClientConfig::new(
            Transport::Quic {
                addr: "localhost:4433".into(),
            },
            Roots::Store(rustls::RootCertStore::empty()),
            "secret.jwt.value",
        );
        let shown = format!("{config:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
