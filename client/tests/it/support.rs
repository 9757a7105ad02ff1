//! The whole stack in-process, on ephemeral ports, against the Postgres, PgBouncer and Redis of
//! the running dev stack: the real backend API (internal API enabled), a message worker, and a
//! gateway with the relay on. Users are registered through the API.
//!
//! Each stack has its own stream prefix, shared by its worker and gateway, so tests running at
//! once never read each other's stream entries (pub/sub channels are per user and conversation,
//! and every test has its own users).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use haberci_certs::CertPaths;
use haberci_client::{ClientConfig, Event, Events, Roots, Transport, UserId};
use haberci_gateway::{Gateway, GatewayConfig};
use haberci_kit::shutdown::Shutdown;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

/// Bounds every network wait in the tests.
pub const TIMEOUT: Duration = Duration::from_secs(10);
pub const PASSWORD: &str = "correct horse battery staple";

pub fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| {
        panic!("{key} is not set: source /work/testenv.sh or run through ./dev test")
    })
}

/// The backend's internal API secret, shared by the stack's backend and gateway.
pub const INTERNAL_TOKEN: &str = "client-it-internal-token-0123456789abcdef";
/// Stream shards of the stack's worker and gateway (they must agree).
const STREAM_SHARDS: u16 = 2;

/// The three transports, for tests that must hold on each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Quic,
    WebTransport,
    WebSocket,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Quic, Kind::WebTransport, Kind::WebSocket];
}

pub struct Stack {
    pub gateway_tcp: SocketAddr,
    pub gateway_udp: SocketAddr,
    pub backend: SocketAddr,
    pub ca: PathBuf,
    // Dropping the gateway aborts its tasks; it lives as long as the stack.
    _gateway: Gateway,
    _dir: tempfile::TempDir,
    shutdown: Shutdown,
    /// Stops the backend API and the worker.
    backend_shutdown: Shutdown,
}

impl Stack {
    /// Starts the gateway's shutdown (as SIGTERM would): sessions get `server_draining`.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// A client configuration for `kind`, trusting the stack's CA.
    pub fn config(&self, kind: Kind, token: &str) -> ClientConfig {
        let transport = match kind {
            Kind::Quic => Transport::Quic {
                addr: format!("localhost:{}", self.gateway_udp.port()),
            },
            Kind::WebTransport => Transport::WebTransport {
                url: format!(
                    "https://localhost:{}{}",
                    self.gateway_udp.port(),
                    haberci_wire::WEBTRANSPORT_PATH
                ),
            },
            Kind::WebSocket => Transport::WebSocket {
                url: format!("wss://localhost:{}/v1/ws", self.gateway_tcp.port()),
            },
        };
        let mut config = ClientConfig::new(transport, Roots::PemFile(self.ca.clone()), token);
        config.client_name = "client-it".into();
        config
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.backend_shutdown.cancel();
    }
}

/// The backend API, a worker and a gateway relaying to it; the gateway has loaded the
/// backend's access-token keys.
pub async fn start() -> Stack {
    haberci_kit::crypto::install_crypto_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("HABERCI_LOG"))
        .with_test_writer()
        .try_init();
    let backend_shutdown = Shutdown::new();
    let backend = spawn_real_backend(&backend_shutdown).await;
    let stream_prefix = format!("client-it:{}:in:", uuid::Uuid::new_v4().simple());
    spawn_worker(&stream_prefix, &backend_shutdown);
    let dir = tempfile::tempdir().unwrap();
    let certs = CertPaths::new(dir.path());
    haberci_certs::ensure(&certs, time::OffsetDateTime::now_utc()).unwrap();
    let shutdown = Shutdown::new();
    let mut config =
        GatewayConfig::for_tests(dir.path(), format!("http://{backend}").parse().unwrap());
    config.relay.redis_url = Some(env("HABERCI_TEST_REDIS_URL"));
    config.relay.internal_token =
        Some(haberci_backend::config::InternalToken::new(INTERNAL_TOKEN).unwrap());
    config.relay.stream_prefix = stream_prefix;
    config.relay.stream_shards = STREAM_SHARDS;
    let gateway = Gateway::start(config, shutdown.clone()).await.unwrap();
    tokio::time::timeout(TIMEOUT, gateway.keys.loaded())
        .await
        .expect("the gateway loads the backend's JWKS");
    Stack {
        gateway_tcp: gateway.tcp_addr,
        gateway_udp: gateway.udp_addr,
        backend,
        ca: certs.ca_cert(),
        _gateway: gateway,
        _dir: dir,
        shutdown,
        backend_shutdown,
    }
}

/// A message worker in this process, on the stack's own streams.
fn spawn_worker(stream_prefix: &str, shutdown: &Shutdown) {
    let db = haberci_backend::db::connect_pool(&env("HABERCI_TEST_DATABASE_URL"), 4).unwrap();
    let settings = haberci_backend::config::MessagingSettings {
        shards: STREAM_SHARDS,
        stream_prefix: stream_prefix.to_owned(),
        // Bounds how long the worker outlives its stack.
        block: Duration::from_millis(200),
        ..Default::default()
    };
    let (url, stop) = (env("HABERCI_TEST_REDIS_URL"), shutdown.clone());
    tokio::spawn(async move {
        if let Err(err) = haberci_backend::messaging::run(db, &url, settings, stop).await {
            panic!("the worker failed: {err}");
        }
    });
}

async fn spawn_real_backend(shutdown: &Shutdown) -> SocketAddr {
    let db = haberci_backend::db::connect_pool(&env("HABERCI_TEST_DATABASE_URL"), 4).unwrap();
    let redis = haberci_backend::redis::connect(&env("HABERCI_TEST_REDIS_URL")).unwrap();
    // Every request comes from 127.0.0.1, so the rate limits are generous here.
    let mut settings = haberci_backend::config::ApiSettings::default();
    settings.auth.limits = haberci_backend::config::RateLimits::uniform(
        haberci_backend::config::Rate::new(100_000, Duration::from_secs(60)),
    );
    settings.internal_token =
        Some(haberci_backend::config::InternalToken::new(INTERNAL_TOKEN).unwrap());
    let keys = haberci_token::KeySet::generate("client-test").unwrap();
    let app = haberci_backend::api::app(haberci_backend::api::AppState::new(
        db, redis, settings, keys,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(haberci_backend::api::serve(listener, app, shutdown.clone()));
    addr
}

/// A registered user.
pub struct User {
    pub id: UserId,
    pub username: String,
    pub token: String,
    pub refresh_token: String,
}

/// Registers a fresh user through the backend API.
pub async fn register(stack: &Stack) -> User {
    let random = uuid::Uuid::new_v4().simple().to_string();
    let username = format!("cl_{}", &random[..16]);
    let (status, body) = post_json(
        stack.backend,
        "/v1/auth/register",
        json!({
            "username": username,
            "email": format!("{username}@example.com"),
            "password": PASSWORD,
            "displayName": "Client",
        }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    User {
        id: body["user"]["id"].as_str().unwrap().parse().unwrap(),
        username,
        token: body["tokens"]["accessToken"].as_str().unwrap().to_owned(),
        refresh_token: body["tokens"]["refreshToken"].as_str().unwrap().to_owned(),
    }
}

/// Spends `user`'s refresh token: a new access token for the same session.
pub async fn refresh(stack: &Stack, user: &User) -> String {
    let (status, body) = post_json(
        stack.backend,
        "/v1/auth/refresh",
        json!({ "refreshToken": user.refresh_token }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["accessToken"].as_str().unwrap().to_owned()
}

/// Logs `user` in again: a new session, so a new access token with another session id.
pub async fn login(stack: &Stack, user: &User) -> String {
    let (status, body) = post_json(
        stack.backend,
        "/v1/auth/login",
        json!({ "usernameOrEmail": user.username, "password": PASSWORD }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["accessToken"].as_str().unwrap().to_owned()
}

async fn post_json(addr: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    post_json_as(addr, path, body, None).await
}

/// Creates a group owned by `owner` with `members` over the HTTP API (`POST /v1/groups`);
/// returns its id (the group's conversation id).
pub async fn create_group(stack: &Stack, owner: &User, members: &[&User]) -> uuid::Uuid {
    let ids: Vec<String> = members.iter().map(|m| m.id.to_string()).collect();
    let (status, body) = post_json_as(
        stack.backend,
        "/v1/groups",
        json!({ "name": "client-it", "memberIds": ids }),
        Some(&owner.token),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().parse().unwrap()
}

/// `POST` a JSON body to the backend API, with `token` as the bearer when given.
pub async fn post_json_as(
    addr: SocketAddr,
    path: &str,
    body: Value,
    token: Option<&str>,
) -> (u16, Value) {
    call_json(addr, "POST", path, body, token).await
}

/// A request to the backend API; the status and the JSON answer (`null` when none).
pub async fn call_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Value,
    token: Option<&str>,
) -> (u16, Value) {
    tokio::time::timeout(TIMEOUT, async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header("host", addr.to_string())
            .header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    })
    .await
    .expect("the API answers in time")
}

/// The next event, within the test timeout.
pub async fn next_event(events: &mut Events) -> Option<Event> {
    tokio::time::timeout(TIMEOUT, events.recv())
        .await
        .expect("an event in time")
}
