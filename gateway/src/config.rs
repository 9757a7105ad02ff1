//! The gateway's settings, from `HABERCI_*` variables, all checked before anything binds.

use std::net::SocketAddr;
use std::time::Duration;

use haberci_certs::CertPaths;
use haberci_kit::config::{ConfigError, Env};
use haberci_kit::http::CorsOrigins;
use haberci_kit::metrics::MetricsConfig;
use haberci_seam::internal::InternalToken;
use haberci_seam::streams;
use haberci_session::SessionConfig;

pub const DEFAULT_TCP_ADDR: &str = "[::]:8443";
pub const DEFAULT_UDP_ADDR: &str = "[::]:4433";
/// The internal listener of `/metrics` and the status page: loopback, never the public
/// interface (docs/OPERATIONS.md, "Metrics").
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9601";
pub const DEFAULT_BACKEND_URL: &str = "http://127.0.0.1:58080";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:56379";
pub const DEFAULT_CERT_DIR: &str = ".dev/certs";
pub const DEFAULT_CERT_RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// How often the gateway renews the short-lived WebTransport certificate itself.
pub const DEFAULT_WT_ROTATE_INTERVAL: Duration = Duration::from_secs(3600);
/// Largest request body the gateway forwards (1 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// Largest media upload body the gateway forwards (210 MiB): a 200 MB video plus slack. The
/// backend enforces the exact limit of each media kind; this only keeps a client from
/// streaming without end.
pub const DEFAULT_MAX_UPLOAD_BYTES: usize = 210 << 20;
/// A request body that has started may pause this long between chunks before the request is
/// aborted. A whole-body deadline would cut a 200 MB upload on a slow link; an idle timeout
/// only cuts a client (or backend) that stopped moving bytes.
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_BACKEND_TIMEOUT: Duration = Duration::from_secs(10);
/// A QUIC connection with no packets for this long is closed. Above the clients' 25 s ping
/// with room for a lost one; the session's own idle timeout (75 s) is the longer guard.
pub const DEFAULT_QUIC_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Asked for; Linux grants at most `net.core.rmem_max` / `wmem_max` unless the gateway holds
/// `CAP_NET_ADMIN` (docs/OPERATIONS.md). 32 MiB booked holds 14,500 full-size (1,200
/// byte) or 40,000 tiny datagrams while the endpoint's task waits for a core.
pub const DEFAULT_QUIC_SOCKET_BUFFER_BYTES: usize = 16 << 20;
/// QUIC handshakes in flight at once (see `edge::quic::Admission`).
pub const DEFAULT_QUIC_MAX_HANDSHAKES: usize = 256;
/// Handshakes in flight above which unproven addresses get a Retry: a quarter of the limit, so
/// half-open handshakes from spoofed addresses never fill it.
pub const DEFAULT_QUIC_RETRY_ABOVE: usize = 64;
/// Handshakes in flight from one address.
pub const DEFAULT_QUIC_HANDSHAKES_PER_ADDRESS: usize = 16;
/// TCP connections held at once. The process may hold 20,000 open files (hard limit here);
/// the rest is left for the backend pool, Redis, logs and certificates.
pub const DEFAULT_MAX_TCP_CONNECTIONS: usize = 16_000;
/// Connections one client address may hold: a household or office behind one NAT address
/// has many devices and tabs, an attacker's address no more than they.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 256;
/// Not counted per address: loopback.
pub const DEFAULT_ADDRESS_LIMIT_EXEMPT: &str = "127.0.0.0/8,::1/128";

/// Comma-separated CIDR ranges or single addresses.
fn networks(text: &str) -> Result<Vec<ipnet::IpNet>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            part.parse::<ipnet::IpNet>()
                .or_else(|_| part.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| format!("{part:?} is not a CIDR range or an IP address"))
        })
        .collect()
}
/// How long a client may take to send a request's headers (slowloris guard), on TCP and
/// HTTP/3 alike.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Between requests on one TCP connection (nginx's `keepalive_timeout` is 75 s; browsers keep
/// an HTTP/2 connection open for minutes and reconnect when it is gone).
pub const DEFAULT_HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a gateway says in Redis that it is alive; its users read as offline three of
/// these after it dies.
pub const DEFAULT_PRESENCE_REFRESH: Duration = Duration::from_secs(20);
/// Realtime sessions one user may have open at once, across every gateway: phones, tablets,
/// browser tabs. Each costs a mailbox and a share of the user's fan-out.
pub const DEFAULT_MAX_SESSIONS_PER_USER: u32 = 20;

/// Every gateway setting, as a tree: where it listens, QUIC, HTTP, the relay, and realtime
/// sessions. Read whole by [`GatewayConfig::from_env`] before anything binds; every duration is
/// a `HABERCI_…_MS` variable.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: Listen,
    pub tls: Tls,
    pub quic: Quic,
    pub http: Http,
    pub relay: Relay,
    /// Realtime sessions: `HABERCI_SESSION_HELLO_TIMEOUT_MS`, `HABERCI_SESSION_IDLE_TIMEOUT_MS`,
    /// `HABERCI_SESSION_WRITE_TIMEOUT_MS`, `HABERCI_SESSION_SEND_RATE` (sends per second) and
    /// `HABERCI_SESSION_SEND_BURST`.
    pub session: SessionConfig,
}

/// Where the gateway listens.
#[derive(Debug, Clone)]
pub struct Listen {
    /// `HABERCI_GATEWAY_TCP_ADDR`: TLS over TCP (HTTP/1.1, HTTP/2, WebSocket).
    pub tcp_addr: SocketAddr,
    /// `HABERCI_METRICS_ADDR`: `/metrics` and the status page (`off`: none).
    pub metrics: MetricsConfig,
    /// `HABERCI_GATEWAY_UDP_ADDR`: the QUIC endpoint. Dual-stack `[::]` by default: Chromium
    /// resolves `localhost` to `::1` and fails against an IPv4-only socket.
    pub udp_addr: SocketAddr,
    /// `HABERCI_GATEWAY_ALT_SVC_PORT`: the port advertised in `Alt-Svc: h3` on TCP responses;
    /// `None` advertises the port the UDP endpoint is bound to.
    pub alt_svc_port: Option<u16>,
    /// `HABERCI_MAX_TCP_CONNECTIONS`: above it, new TCP connections wait in the kernel backlog.
    pub max_tcp_connections: usize,
    /// `HABERCI_MAX_CONNECTIONS_PER_ADDRESS`: connections (TCP and QUIC together) one client
    /// address (an IPv6 /64) may hold; more are closed at once.
    pub max_connections_per_address: usize,
    /// `HABERCI_ADDRESS_LIMIT_EXEMPT`: comma-separated CIDRs or addresses not counted (load
    /// balancers that do not keep client addresses, health checks, local load tests).
    pub address_limit_exempt: Vec<ipnet::IpNet>,
}

/// The certificates both listeners serve.
#[derive(Debug, Clone)]
pub struct Tls {
    /// `HABERCI_CERT_DIR`: where `haberci-certs` wrote the certificates.
    pub cert_paths: CertPaths,
    /// `HABERCI_CERT_RELOAD_INTERVAL_MS`: how often certificate files are checked for changes.
    pub reload_interval: Duration,
    /// `HABERCI_QUIC_CERT`: what the QUIC endpoint presents.
    pub quic_cert: QuicCert,
    /// `HABERCI_WT_ROTATE_INTERVAL_MS`: how often the gateway renews the WebTransport leaf
    /// (`haberci_certs::ensure_webtransport`) when it presents one and the directory holds
    /// the CA that signs it.
    pub rotate_interval: Duration,
}

/// The certificate of the QUIC endpoint (HTTP/3, WebTransport, native QUIC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuicCert {
    /// `webtransport` (default): `wt.pem`, the short-lived leaf browsers accept by hash,
    /// rotated by the gateway with its successor announced ahead.
    WebTransport,
    /// `tls`: the TCP listener's `server.pem`, e.g. a CA-issued certificate from
    /// `haberci-acme`; browsers verify it the usual way and no hash is announced.
    Tls,
}

impl std::str::FromStr for QuicCert {
    type Err = &'static str;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "webtransport" => Ok(QuicCert::WebTransport),
            "tls" => Ok(QuicCert::Tls),
            _ => Err("expected webtransport or tls"),
        }
    }
}

/// The QUIC endpoint.
#[derive(Debug, Clone)]
pub struct Quic {
    /// `HABERCI_QUIC_IDLE_TIMEOUT_MS`.
    pub idle_timeout: Duration,
    /// `HABERCI_QUIC_SOCKET_BUFFER_BYTES`: kernel receive and send buffers of the UDP socket
    /// every QUIC connection shares.
    pub socket_buffer: usize,
    /// `HABERCI_QUIC_MAX_HANDSHAKES`: QUIC handshakes in flight at once; more are refused at
    /// once and their clients back off (see `edge::quic::Admission`).
    pub max_handshakes: usize,
    /// `HABERCI_QUIC_RETRY_ABOVE`: with this many handshakes in flight, a client whose address
    /// is not proven yet gets a Retry first (stateless address validation).
    pub retry_above: usize,
    /// `HABERCI_QUIC_HANDSHAKES_PER_ADDRESS`: handshakes in flight from one address (IPv6:
    /// one /64); an unproven address above it gets a Retry, a proven one is refused.
    pub handshakes_per_address: usize,
    /// `HABERCI_QUIC_SERVER_ID`: this gateway's id in the connection IDs it issues, for a
    /// balancer that routes QUIC by CID (`edge::cid`); unique per gateway of a deployment.
    /// Unset: id 0 with keys of this process alone (a restart resets nothing).
    pub server_id: Option<u16>,
    /// `HABERCI_QUIC_RESET_FLEET`: reset any gateway's lost connections, not only this one's
    /// (`edge::cid::ResetScope`); only behind a balancer that routes by CID.
    pub reset_fleet: bool,
    /// `HABERCI_QUIC_ROSTER`: the file listing this gateway's QUIC connections, which its next
    /// life (after a crash) reads to reset them unprompted (`edge::roster`); unset: none.
    /// Needs a server id and the internal token (the keys the resets are signed with).
    pub roster: Option<std::path::PathBuf>,
    /// `HABERCI_QUIC_CALLBACK_RATE`: those resets per second, at most.
    pub callback_rate: u32,
    /// `HABERCI_QUIC_FLEET_TICKETS` (default on): seal QUIC's TLS session tickets with keys
    /// the gateways share through Redis (`edge::tickets`), so a reconnect to any gateway
    /// resumes; off: keys of this process alone.
    pub fleet_tickets: bool,
}

/// HTTP on every version, and the backend it proxies to.
#[derive(Debug, Clone)]
pub struct Http {
    /// `HABERCI_BACKEND_URL`: base URL of the backend API.
    pub backend_url: http::Uri,
    /// `HABERCI_BACKEND_TIMEOUT_MS`: how long a proxied request may take until its answer's
    /// headers.
    pub backend_timeout: Duration,
    /// `HABERCI_MAX_BODY_BYTES`: the body limit of every request but media uploads.
    pub max_body_bytes: usize,
    /// `HABERCI_GATEWAY_MAX_UPLOAD_BYTES`: the body limit of media uploads (`POST /v1/media`,
    /// `/v1/media/uploads[/…]`), see `edge::proxy::RequestClass`.
    pub max_upload_bytes: usize,
    /// `HABERCI_GATEWAY_BODY_IDLE_TIMEOUT_MS`: how long a request body may pause between
    /// chunks (HTTP/3 bodies, and media uploads on every HTTP version).
    pub body_idle_timeout: Duration,
    /// `HABERCI_HEADER_READ_TIMEOUT_MS`.
    pub header_read_timeout: Duration,
    /// `HABERCI_FIRST_REQUEST_TIMEOUT_MS`: a TCP connection that has asked nothing this long
    /// after its TLS handshake is dropped.
    pub first_request_timeout: Duration,
    /// `HABERCI_HTTP_IDLE_TIMEOUT_MS`: a TCP connection (HTTP/1.1 keep-alive, HTTP/2) with no
    /// request in flight this long after its last one is dropped.
    pub idle_timeout: Duration,
    /// `HABERCI_CORS_ORIGINS`: browser origins allowed to call the API (comma-separated).
    pub cors: CorsOrigins,
    /// `HABERCI_WEB_DIR`: static files served at `/` (the demo page, `web/dist`); unset: none.
    pub web_dir: Option<std::path::PathBuf>,
}

/// Redis and the backend's internal API. Messaging needs Redis and the secret; without either,
/// sessions open but sends are answered `unavailable`.
#[derive(Debug, Clone)]
pub struct Relay {
    /// `HABERCI_REDIS_URL`: streams, pub/sub, presence, and where session revocations are
    /// announced. `None` (tests only): no messaging, and revoked sessions end at token expiry.
    pub redis_url: Option<String>,
    /// `HABERCI_STREAM_SHARDS`.
    pub stream_shards: u16,
    /// `HABERCI_STREAM_PREFIX`.
    pub stream_prefix: String,
    /// `HABERCI_INTERNAL_TOKEN`: the backend's internal API secret.
    pub internal_token: Option<InternalToken>,
    /// `HABERCI_PRESENCE_REFRESH_MS`.
    pub presence_refresh: Duration,
    /// `HABERCI_SESSION_MAX_PER_USER`: realtime sessions one user may have open at once,
    /// across every gateway (counted in the presence keys); one more is refused
    /// `too_many_sessions`.
    pub max_sessions_per_user: u32,
}

impl GatewayConfig {
    pub fn from_env(mut env: Env<'_>) -> Result<Self, ConfigError> {
        let listen = Listen::read(&mut env);
        let tls = Tls {
            cert_paths: CertPaths::new(env.string_or("HABERCI_CERT_DIR", DEFAULT_CERT_DIR)),
            reload_interval: env.millis_or(
                "HABERCI_CERT_RELOAD_INTERVAL_MS",
                DEFAULT_CERT_RELOAD_INTERVAL,
            ),
            quic_cert: env.parse_or("HABERCI_QUIC_CERT", QuicCert::WebTransport),
            rotate_interval: env
                .millis_or("HABERCI_WT_ROTATE_INTERVAL_MS", DEFAULT_WT_ROTATE_INTERVAL),
        };
        let quic = Quic {
            idle_timeout: env.millis_or("HABERCI_QUIC_IDLE_TIMEOUT_MS", DEFAULT_QUIC_IDLE_TIMEOUT),
            socket_buffer: env.parse_or(
                "HABERCI_QUIC_SOCKET_BUFFER_BYTES",
                DEFAULT_QUIC_SOCKET_BUFFER_BYTES,
            ),
            max_handshakes: env
                .parse_or("HABERCI_QUIC_MAX_HANDSHAKES", DEFAULT_QUIC_MAX_HANDSHAKES),
            retry_above: env.parse_or("HABERCI_QUIC_RETRY_ABOVE", DEFAULT_QUIC_RETRY_ABOVE),
            handshakes_per_address: env.parse_or(
                "HABERCI_QUIC_HANDSHAKES_PER_ADDRESS",
                DEFAULT_QUIC_HANDSHAKES_PER_ADDRESS,
            ),
            server_id: env
                .raw("HABERCI_QUIC_SERVER_ID")
                .map(|_| env.parse_or("HABERCI_QUIC_SERVER_ID", 0)),
            reset_fleet: env.parse_or("HABERCI_QUIC_RESET_FLEET", false),
            roster: env
                .raw("HABERCI_QUIC_ROSTER")
                .filter(|path| !path.is_empty())
                .map(std::path::PathBuf::from),
            callback_rate: env.parse_or(
                "HABERCI_QUIC_CALLBACK_RATE",
                crate::edge::roster::DEFAULT_CALLBACK_RATE,
            ),
            fleet_tickets: env.parse_or("HABERCI_QUIC_FLEET_TICKETS", true),
        };
        if quic.callback_rate == 0 {
            env.problem("HABERCI_QUIC_CALLBACK_RATE: must be at least 1 (resets per second)");
        }
        let http = Http::read(&mut env);
        let relay = Relay::read(&mut env);
        if quic.roster.is_some() && (quic.server_id.is_none() || relay.internal_token.is_none()) {
            env.problem(
                "HABERCI_QUIC_ROSTER: needs HABERCI_QUIC_SERVER_ID and HABERCI_INTERNAL_TOKEN (the next life's resets are signed with keys derived from them)",
            );
        }
        let session = read_session(&mut env);
        env.finish()?;
        Ok(GatewayConfig {
            listen,
            tls,
            quic,
            http,
            relay,
            session,
        })
    }

    /// Settings for tests: ephemeral ports on loopback, certificates in `cert_dir`, no relay.
    pub fn for_tests(cert_dir: &std::path::Path, backend_url: http::Uri) -> Self {
        GatewayConfig {
            listen: Listen {
                tcp_addr: addr("127.0.0.1:0"),
                metrics: MetricsConfig { addr: None },
                udp_addr: addr("[::]:0"),
                alt_svc_port: None,
                max_tcp_connections: DEFAULT_MAX_TCP_CONNECTIONS,
                max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
                address_limit_exempt: networks(DEFAULT_ADDRESS_LIMIT_EXEMPT).unwrap_or_default(),
            },
            tls: Tls {
                cert_paths: CertPaths::new(cert_dir),
                reload_interval: Duration::from_millis(100),
                quic_cert: QuicCert::WebTransport,
                rotate_interval: DEFAULT_WT_ROTATE_INTERVAL,
            },
            quic: Quic {
                idle_timeout: DEFAULT_QUIC_IDLE_TIMEOUT,
                socket_buffer: DEFAULT_QUIC_SOCKET_BUFFER_BYTES,
                max_handshakes: DEFAULT_QUIC_MAX_HANDSHAKES,
                retry_above: DEFAULT_QUIC_RETRY_ABOVE,
                handshakes_per_address: DEFAULT_QUIC_HANDSHAKES_PER_ADDRESS,
                server_id: None,
                reset_fleet: false,
                roster: None,
                callback_rate: crate::edge::roster::DEFAULT_CALLBACK_RATE,
                fleet_tickets: true,
            },
            http: Http {
                backend_url,
                backend_timeout: DEFAULT_BACKEND_TIMEOUT,
                max_body_bytes: DEFAULT_MAX_BODY_BYTES,
                max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
                body_idle_timeout: DEFAULT_BODY_IDLE_TIMEOUT,
                header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
                first_request_timeout: DEFAULT_HEADER_READ_TIMEOUT,
                idle_timeout: DEFAULT_HTTP_IDLE_TIMEOUT,
                cors: CorsOrigins::default(),
                web_dir: None,
            },
            relay: Relay {
                redis_url: None,
                stream_shards: streams::DEFAULT_SHARDS,
                stream_prefix: streams::DEFAULT_STREAM_PREFIX.to_owned(),
                internal_token: None,
                presence_refresh: DEFAULT_PRESENCE_REFRESH,
                max_sessions_per_user: DEFAULT_MAX_SESSIONS_PER_USER,
            },
            session: SessionConfig::default(),
        }
    }
}

impl Listen {
    fn read(env: &mut Env<'_>) -> Listen {
        let tcp_addr = env.parse_or("HABERCI_GATEWAY_TCP_ADDR", addr(DEFAULT_TCP_ADDR));
        let udp_addr = env.parse_or("HABERCI_GATEWAY_UDP_ADDR", addr(DEFAULT_UDP_ADDR));
        let alt_svc_port = env
            .raw("HABERCI_GATEWAY_ALT_SVC_PORT")
            .map(|_| env.parse_or("HABERCI_GATEWAY_ALT_SVC_PORT", udp_addr.port()));
        let max_tcp_connections =
            env.parse_or("HABERCI_MAX_TCP_CONNECTIONS", DEFAULT_MAX_TCP_CONNECTIONS);
        if max_tcp_connections == 0 {
            env.problem("HABERCI_MAX_TCP_CONNECTIONS must be at least 1");
        }
        let max_connections_per_address = env.parse_or(
            "HABERCI_MAX_CONNECTIONS_PER_ADDRESS",
            DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
        );
        if max_connections_per_address == 0 {
            env.problem("HABERCI_MAX_CONNECTIONS_PER_ADDRESS must be at least 1");
        }
        let exempt = env
            .raw("HABERCI_ADDRESS_LIMIT_EXEMPT")
            .unwrap_or_else(|| DEFAULT_ADDRESS_LIMIT_EXEMPT.to_owned());
        let address_limit_exempt = match networks(&exempt) {
            Ok(networks) => networks,
            Err(why) => {
                env.problem(format!("HABERCI_ADDRESS_LIMIT_EXEMPT: {why}"));
                Vec::new()
            }
        };
        Listen {
            tcp_addr,
            metrics: MetricsConfig::from_env(env, addr(DEFAULT_METRICS_ADDR)),
            udp_addr,
            alt_svc_port,
            max_tcp_connections,
            max_connections_per_address,
            address_limit_exempt,
        }
    }
}

impl Http {
    fn read(env: &mut Env<'_>) -> Http {
        let backend_url: http::Uri = env.parse_or(
            "HABERCI_BACKEND_URL",
            http::Uri::from_static(DEFAULT_BACKEND_URL),
        );
        if backend_url.scheme_str() != Some("http") || backend_url.authority().is_none() {
            env.problem(format!(
                "HABERCI_BACKEND_URL must be an http://host:port URL, got {backend_url}"
            ));
        }
        let max_upload_bytes =
            env.parse_or("HABERCI_GATEWAY_MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD_BYTES);
        if max_upload_bytes == 0 {
            env.problem("HABERCI_GATEWAY_MAX_UPLOAD_BYTES must be at least 1");
        }
        let web_dir = env.raw("HABERCI_WEB_DIR").map(std::path::PathBuf::from);
        if let Some(dir) = &web_dir
            && !dir.is_dir()
        {
            env.problem(format!(
                "HABERCI_WEB_DIR: {} is not a directory (build the page: ./dev up)",
                dir.display()
            ));
        }
        Http {
            backend_url,
            backend_timeout: env.millis_or("HABERCI_BACKEND_TIMEOUT_MS", DEFAULT_BACKEND_TIMEOUT),
            max_body_bytes: env.parse_or("HABERCI_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
            max_upload_bytes,
            body_idle_timeout: env.millis_or(
                "HABERCI_GATEWAY_BODY_IDLE_TIMEOUT_MS",
                DEFAULT_BODY_IDLE_TIMEOUT,
            ),
            header_read_timeout: env.millis_or(
                "HABERCI_HEADER_READ_TIMEOUT_MS",
                DEFAULT_HEADER_READ_TIMEOUT,
            ),
            first_request_timeout: env.millis_or(
                "HABERCI_FIRST_REQUEST_TIMEOUT_MS",
                DEFAULT_HEADER_READ_TIMEOUT,
            ),
            idle_timeout: env.millis_or("HABERCI_HTTP_IDLE_TIMEOUT_MS", DEFAULT_HTTP_IDLE_TIMEOUT),
            cors: CorsOrigins::read(env),
            web_dir,
        }
    }
}

impl Relay {
    fn read(env: &mut Env<'_>) -> Relay {
        let redis_url = env.string_or("HABERCI_REDIS_URL", DEFAULT_REDIS_URL);
        if !streams::is_redis_url(&redis_url) {
            env.problem("HABERCI_REDIS_URL must be a redis:// or redis-cluster:// URL");
        }
        let stream_shards = env.parse_or("HABERCI_STREAM_SHARDS", streams::DEFAULT_SHARDS);
        if stream_shards == 0 {
            env.problem("HABERCI_STREAM_SHARDS must be at least 1");
        }
        let max_sessions_per_user = env.parse_or(
            "HABERCI_SESSION_MAX_PER_USER",
            DEFAULT_MAX_SESSIONS_PER_USER,
        );
        if max_sessions_per_user == 0 {
            env.problem("HABERCI_SESSION_MAX_PER_USER must be at least 1");
        }
        let internal_token = env.raw("HABERCI_INTERNAL_TOKEN").and_then(|text| {
            InternalToken::new(text)
                .map_err(|why| env.problem(format!("HABERCI_INTERNAL_TOKEN: {why}")))
                .ok()
        });
        Relay {
            redis_url: Some(redis_url),
            stream_shards,
            stream_prefix: env.string_or("HABERCI_STREAM_PREFIX", streams::DEFAULT_STREAM_PREFIX),
            internal_token,
            presence_refresh: env
                .millis_or("HABERCI_PRESENCE_REFRESH_MS", DEFAULT_PRESENCE_REFRESH),
            max_sessions_per_user,
        }
    }
}

fn read_session(env: &mut Env<'_>) -> SessionConfig {
    let defaults = SessionConfig::default();
    let send_burst = env.parse_or("HABERCI_SESSION_SEND_BURST", defaults.send_burst);
    if send_burst == 0 {
        env.problem("HABERCI_SESSION_SEND_BURST must be at least 1");
    }
    let receipt_rate_per_sec = env.parse_or(
        "HABERCI_SESSION_RECEIPT_RATE",
        defaults.receipt_rate_per_sec,
    );
    if receipt_rate_per_sec == 0 {
        env.problem("HABERCI_SESSION_RECEIPT_RATE must be at least 1");
    }
    SessionConfig {
        hello_timeout: env.millis_or("HABERCI_SESSION_HELLO_TIMEOUT_MS", defaults.hello_timeout),
        idle_timeout: env.millis_or("HABERCI_SESSION_IDLE_TIMEOUT_MS", defaults.idle_timeout),
        write_timeout: env.millis_or("HABERCI_SESSION_WRITE_TIMEOUT_MS", defaults.write_timeout),
        drain_spread: env.millis_or("HABERCI_SESSION_DRAIN_SPREAD_MS", defaults.drain_spread),
        send_rate_per_sec: env.parse_or("HABERCI_SESSION_SEND_RATE", defaults.send_rate_per_sec),
        send_burst,
        receipt_rate_per_sec,
        ..defaults
    }
}

/// The `Alt-Svc` header value advertising HTTP/3 on `port`.
pub fn alt_svc_value(port: u16) -> String {
    format!("h3=\":{port}\"; ma=86400")
}

fn addr(text: &str) -> SocketAddr {
    // Invariant: only called with the literal defaults above, which parse.
    text.parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse() {
        let config = GatewayConfig::from_env(Env::from_pairs(&[])).expect("defaults are valid");
        assert_eq!(config.listen.tcp_addr.to_string(), DEFAULT_TCP_ADDR);
        assert_eq!(config.listen.udp_addr.to_string(), DEFAULT_UDP_ADDR);
        assert_eq!(config.listen.alt_svc_port, None);
        assert_eq!(config.http.max_upload_bytes, 210 * 1024 * 1024);
        assert_eq!(config.http.body_idle_timeout, Duration::from_secs(30));
        assert_eq!(config.relay.internal_token, None);
        assert_eq!(config.tls.quic_cert, QuicCert::WebTransport);
        assert_eq!(alt_svc_value(4433), "h3=\":4433\"; ma=86400");
    }

    #[test]
    fn every_bad_setting_is_reported() {
        let pairs = [
            ("HABERCI_GATEWAY_TCP_ADDR", "8443"),
            ("HABERCI_BACKEND_URL", "ftp://x"),
            ("HABERCI_CERT_RELOAD_INTERVAL_MS", "0"),
            ("HABERCI_QUIC_CERT", "acme"),
            ("HABERCI_WT_ROTATE_INTERVAL_MS", "0"),
            ("HABERCI_MAX_BODY_BYTES", "lots"),
            ("HABERCI_GATEWAY_MAX_UPLOAD_BYTES", "0"),
            ("HABERCI_GATEWAY_BODY_IDLE_TIMEOUT_MS", "0"),
            ("HABERCI_SESSION_IDLE_TIMEOUT_MS", "0"),
            ("HABERCI_INTERNAL_TOKEN", "short"),
            ("HABERCI_QUIC_CALLBACK_RATE", "0"),
            // No server id (and the token above is refused): no keys for the next life's resets.
            ("HABERCI_QUIC_ROSTER", "/run/gateway.roster"),
        ];
        let err = GatewayConfig::from_env(Env::from_pairs(&pairs)).expect_err("bad");
        assert_eq!(err.problems.len(), 12, "{err}");
        assert!(
            err.to_string().contains("HABERCI_QUIC_ROSTER: needs"),
            "{err}"
        );
        assert!(
            !err.to_string().contains("short\""),
            "the secret is never printed: {err}"
        );
    }
}
