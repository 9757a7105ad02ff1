//! A stack in this process, on ephemeral ports: the real backend API (or a stand-in), a
//! message worker when messages are relayed, and a gateway with certificates of its own,
//! against the test Postgres (through PgBouncer) and Redis.
//!
//! Each relaying stack has its own stream prefix, shared by its worker and gateway, so tests
//! running at once never read each other's stream entries (pub/sub channels are per user and
//! conversation, and every test has its own users).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use haberci_backend::config::{ApiSettings, InternalToken, MessagingSettings, Rate, RateLimits};
use haberci_certs::CertPaths;
use haberci_gateway::{Gateway, GatewayConfig};
use haberci_kit::shutdown::Shutdown;

use crate::{TIMEOUT, TransportKind, env, unique};

/// Stream shards of a relaying stack's worker and gateway (they must agree).
const STREAM_SHARDS: u16 = 2;

/// What answers at the gateway's backend address.
pub enum Backend {
    /// The real `haberci-backend api` router on the test Postgres and Redis.
    Api,
    /// Nothing listens there.
    Down,
    /// A server the test runs (an echo, a slow route).
    At(SocketAddr),
}

type Configure = Box<dyn FnOnce(&mut GatewayConfig) + Send>;

/// What [`Stack::builder`] starts; [`Builder::start`] starts it.
pub struct Builder {
    backend: Backend,
    relay: bool,
    revocations: bool,
    configure: Option<Configure>,
}

/// A running gateway with its certificates and what stands behind it. Dropping it stops the
/// gateway, the API and the worker.
pub struct Stack {
    pub gateway_tcp: SocketAddr,
    pub gateway_udp: SocketAddr,
    /// The gateway's backend: the API's address with [`Backend::Api`].
    pub backend: SocketAddr,
    pub certs: CertPaths,
    /// Dropping the gateway aborts its tasks; it lives as long as the stack.
    pub gateway: Gateway,
    _dir: tempfile::TempDir,
    shutdown: Shutdown,
    /// Stops the backend API and the worker.
    backend_shutdown: Shutdown,
}

impl Stack {
    /// A stack to start: the real API behind the gateway unless [`Builder::backend`] says
    /// otherwise, nothing relayed, the test settings of [`GatewayConfig::for_tests`].
    pub fn builder() -> Builder {
        Builder {
            backend: Backend::Api,
            relay: false,
            revocations: false,
            configure: None,
        }
    }

    /// A gateway with the test settings in front of `backend`.
    pub async fn start(backend: Backend) -> Stack {
        Stack::builder().backend(backend).start().await
    }

    /// Starts the gateway's shutdown (as SIGTERM would); the API and the worker stay up.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// The CA the gateway's certificates chain to.
    pub fn ca(&self) -> PathBuf {
        self.certs.ca_cert()
    }

    /// A client configuration for `kind` with `token`, trusting the stack's CA.
    pub fn client_config(&self, kind: TransportKind, token: &str) -> haberci_client::ClientConfig {
        let transport = kind.client_transport(self.gateway_tcp, self.gateway_udp);
        let roots = haberci_client::Roots::PemFile(self.ca());
        let mut config = haberci_client::ClientConfig::new(transport, roots, token);
        config.client_name = "haberci-testkit".into();
        config
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.backend_shutdown.cancel();
    }
}

impl Builder {
    pub fn backend(mut self, backend: Backend) -> Builder {
        self.backend = backend;
        self
    }

    /// Messages relayed: the API's internal routes on, a worker in this process, and the
    /// gateway relaying through the test Redis, all on a stream prefix of the stack's own.
    /// Needs [`Backend::Api`].
    pub fn relay(mut self) -> Builder {
        self.relay = true;
        self
    }

    /// The gateway follows revocations on the test Redis (messages are not relayed).
    pub fn revocations(mut self) -> Builder {
        self.revocations = true;
        self
    }

    /// Adjusts the gateway's settings, last (after what [`Builder::relay`] and
    /// [`Builder::revocations`] set).
    pub fn configure(
        mut self,
        configure: impl FnOnce(&mut GatewayConfig) + Send + 'static,
    ) -> Builder {
        self.configure = Some(Box::new(configure));
        self
    }

    /// Starts everything; returns once the gateway serves, has loaded the API's access-token
    /// keys (with [`Backend::Api`]) and follows revocations (when it has Redis).
    pub async fn start(self) -> Stack {
        crate::init();
        let backend_shutdown = Shutdown::new();
        let internal_token = self.relay.then(unique::secret);
        let backend = match self.backend {
            Backend::Api => spawn_api(internal_token.as_deref(), &backend_shutdown).await,
            Backend::Down => unique::free_addr(),
            Backend::At(addr) => addr,
        };
        let dir = tempfile::tempdir().unwrap();
        let certs = CertPaths::new(dir.path());
        haberci_certs::ensure(&certs, time::OffsetDateTime::now_utc()).unwrap();
        let mut config =
            GatewayConfig::for_tests(dir.path(), format!("http://{backend}").parse().unwrap());
        if let Some(token) = internal_token {
            assert!(
                matches!(self.backend, Backend::Api),
                "relaying needs the real API"
            );
            let stream_prefix = unique::stream_prefix("stack");
            spawn_worker(&stream_prefix, &backend_shutdown);
            config.relay.redis_url = Some(env::redis_url());
            config.relay.internal_token = Some(InternalToken::new(token).unwrap());
            config.relay.stream_prefix = stream_prefix;
            config.relay.stream_shards = STREAM_SHARDS;
        }
        if self.revocations {
            config.relay.redis_url = Some(env::redis_url());
        }
        if let Some(configure) = self.configure {
            configure(&mut config);
        }
        let follows_revocations = config.relay.redis_url.is_some();
        let shutdown = Shutdown::new();
        let gateway = Gateway::start(config, shutdown.clone()).await.unwrap();
        if matches!(self.backend, Backend::Api) {
            tokio::time::timeout(TIMEOUT, gateway.keys.loaded())
                .await
                .expect("the gateway loads the API's JWKS");
        }
        if follows_revocations {
            tokio::time::timeout(TIMEOUT, gateway.revocations.subscribed())
                .await
                .expect("the gateway subscribes to revocations");
        }
        Stack {
            gateway_tcp: gateway.tcp_addr,
            gateway_udp: gateway.udp_addr,
            backend,
            certs,
            gateway,
            _dir: dir,
            shutdown,
            backend_shutdown,
        }
    }
}

/// The real API until `shutdown`; with `internal_token`, its internal routes too (what a
/// relaying gateway calls).
async fn spawn_api(internal_token: Option<&str>, shutdown: &Shutdown) -> SocketAddr {
    let db = haberci_backend::db::connect_pool(&env::database_url(), 4).unwrap();
    let redis = haberci_backend::redis::connect(&env::redis_url()).unwrap();
    // Every request comes from 127.0.0.1, so the rate limits are generous here; the backend's
    // own tests check the limits with distinct addresses.
    let mut settings = ApiSettings::default();
    settings.auth.limits = RateLimits::uniform(Rate::new(100_000, Duration::from_secs(60)));
    settings.internal_token = internal_token.map(|t| InternalToken::new(t).unwrap());
    let keys = haberci_token::KeySet::generate("testkit").unwrap();
    let app = haberci_backend::api::app(haberci_backend::api::AppState::new(
        db, redis, settings, keys,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(haberci_backend::api::serve(listener, app, shutdown.clone()));
    addr
}

/// A message worker in this process on `stream_prefix`, until `shutdown`.
fn spawn_worker(stream_prefix: &str, shutdown: &Shutdown) {
    let db = haberci_backend::db::connect_pool(&env::database_url(), 4).unwrap();
    let settings = MessagingSettings {
        shards: STREAM_SHARDS,
        stream_prefix: stream_prefix.to_owned(),
        // Bounds how long the worker outlives its stack.
        block: Duration::from_millis(200),
        ..Default::default()
    };
    let (url, stop) = (env::redis_url(), shutdown.clone());
    tokio::spawn(async move {
        if let Err(err) = haberci_backend::messaging::run(db, &url, settings, stop).await {
            panic!("the worker failed: {err}");
        }
    });
}
