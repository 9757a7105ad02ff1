//! The backend's settings, read from `HABERCI_*` variables before anything connects or binds.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use haberci_kit::config::{ConfigError, Env};
use haberci_kit::http::CorsOrigins;
use haberci_kit::metrics::MetricsConfig;
use ipnet::IpNet;

pub const DEFAULT_API_ADDR: &str = "127.0.0.1:58080";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:56379";
/// Connections the API keeps to PgBouncer at most. In session mode each one pins a server
/// connection.
pub const DEFAULT_DB_POOL_SIZE: u32 = 16;
/// Connections a worker keeps to PgBouncer at most: one for the consumer's batch, one for
/// pruning, one for the feed fan-out's batch, one its listener holds for good (`LISTEN
/// feed_outbox`).
pub const DEFAULT_WORKER_DB_POOL_SIZE: u32 = 4;

/// Where the backend finds Postgres (through PgBouncer) and Redis.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `HABERCI_DATABASE_URL`: the PgBouncer URL every query uses.
    pub database_url: String,
    /// `HABERCI_DB_POOL_SIZE`: the most connections this process opens to PgBouncer (opened
    /// as needed). Each process reads it, with its own default: [`DEFAULT_DB_POOL_SIZE`] for
    /// the API, [`DEFAULT_WORKER_DB_POOL_SIZE`] for a worker.
    pub db_pool_size: u32,
    /// `HABERCI_REDIS_URL`.
    pub redis_url: String,
}

impl StoreConfig {
    /// Reads the settings; `default_pool_size` is the process's own default for
    /// `HABERCI_DB_POOL_SIZE`.
    pub fn read(env: &mut Env<'_>, default_pool_size: u32) -> Self {
        let database_url = env.required(
            "HABERCI_DATABASE_URL",
            "postgres:// URL of PgBouncer in front of the Haberci database",
        );
        if !database_url.is_empty() && !database_url.starts_with("postgres") {
            env.problem(format!(
                "HABERCI_DATABASE_URL must be a postgres:// URL, got {:?}",
                redact(&database_url)
            ));
        }
        let db_pool_size = env.parse_or("HABERCI_DB_POOL_SIZE", default_pool_size);
        if db_pool_size == 0 {
            env.problem("HABERCI_DB_POOL_SIZE must be at least 1");
        }
        let redis_url = env.string_or("HABERCI_REDIS_URL", DEFAULT_REDIS_URL);
        // fred is built without a TLS feature (one TLS stack in the workspace, see the root
        // Cargo.toml), and would then connect to a rediss:// URL in clear text.
        if redis_url.starts_with("rediss://") || redis_url.starts_with("rediss-cluster://") {
            env.problem(format!(
                "HABERCI_REDIS_URL {:?}: rediss:// (TLS) is not supported by this build; use \
                 redis:// on a private network or through a TLS tunnel",
                redact(&redis_url)
            ));
        } else if !haberci_seam::streams::is_redis_url(&redis_url) {
            env.problem(format!(
                "HABERCI_REDIS_URL must be a redis:// or redis-cluster:// URL, got {:?}",
                redact(&redis_url)
            ));
        }
        StoreConfig {
            database_url,
            db_pool_size,
            redis_url,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// `HABERCI_API_ADDR`: where the API listens (plain HTTP; only gateways reach it).
    pub listen: SocketAddr,
    /// `HABERCI_METRICS_ADDR`: `/metrics` (default [`DEFAULT_API_METRICS_ADDR`]; `off`: none).
    pub metrics: MetricsConfig,
    pub store: StoreConfig,
    /// `HABERCI_JWT_KEY_DIR`: the directory of Ed25519 signing keys (`<kid>.pem`).
    pub jwt_key_dir: PathBuf,
    /// `HABERCI_JWT_SIGNING_KID`: which key signs (default: the one whose kid sorts last).
    pub jwt_signing_kid: Option<String>,
    pub settings: ApiSettings,
    /// `HABERCI_REPLICA_DATABASE_URL`: a streaming replica (through PgBouncer) for reads
    /// that may lag (`crate::replica`); none by default.
    pub replica: Option<ReplicaConfig>,
}

/// A read replica and how stale a read from it may be.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub url: String,
    /// `HABERCI_REPLICA_MAX_STALENESS_MS`.
    pub max_staleness: std::time::Duration,
}

impl ApiConfig {
    pub fn from_env(mut env: Env<'_>) -> Result<Self, ConfigError> {
        let listen = env.parse_or(
            "HABERCI_API_ADDR",
            SocketAddr::from(([127, 0, 0, 1], 58080)),
        );
        let metrics = MetricsConfig::from_env(&mut env, addr(DEFAULT_API_METRICS_ADDR));
        let store = StoreConfig::read(&mut env, DEFAULT_DB_POOL_SIZE);
        let jwt_key_dir = PathBuf::from(env.string_or("HABERCI_JWT_KEY_DIR", DEFAULT_JWT_KEY_DIR));
        let jwt_signing_kid = env.raw("HABERCI_JWT_SIGNING_KID");
        let settings = ApiSettings::read(&mut env);
        let replica = env.raw("HABERCI_REPLICA_DATABASE_URL").map(|url| {
            if !url.starts_with("postgres") {
                env.problem(format!(
                    "HABERCI_REPLICA_DATABASE_URL must be a postgres:// URL, got {:?}",
                    redact(&url)
                ));
            }
            ReplicaConfig {
                url,
                max_staleness: env.millis_or(
                    "HABERCI_REPLICA_MAX_STALENESS_MS",
                    crate::replica::DEFAULT_MAX_STALENESS,
                ),
            }
        });
        env.finish()?;
        Ok(ApiConfig {
            listen,
            metrics,
            store,
            jwt_key_dir,
            jwt_signing_kid,
            settings,
            replica,
        })
    }
}

pub const DEFAULT_JWT_KEY_DIR: &str = ".dev/jwt";
/// The API's internal `/metrics` listener: loopback only.
pub const DEFAULT_API_METRICS_ADDR: &str = "127.0.0.1:9602";
/// A worker's internal `/metrics` listener: loopback only (a second worker on one host needs
/// its own `HABERCI_METRICS_ADDR`).
pub const DEFAULT_WORKER_METRICS_ADDR: &str = "127.0.0.1:9603";

fn addr(text: &str) -> SocketAddr {
    text.parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
}
/// Largest request body the API reads (64 KiB; every JSON body it takes is small).
pub const DEFAULT_API_MAX_BODY_BYTES: usize = 64 * 1024;
/// Access tokens live 15 minutes.
pub const DEFAULT_ACCESS_TOKEN_TTL_SECS: u64 = 15 * 60;
/// A session (and its refresh token) lives 30 days after its last refresh.
pub const DEFAULT_REFRESH_TOKEN_TTL_SECS: u64 = 30 * 24 * 3600;
/// How long an active session stays cached in Redis; bounds how stale the cache can be if a
/// revocation could not be written to it.
pub const DEFAULT_SESSION_CACHE_TTL_SECS: u64 = 120;
/// Gateways that may set `x-haberci-client-ip`: loopback.
pub const DEFAULT_TRUSTED_PROXIES: &str = "127.0.0.0/8,::1/128";
pub const DEFAULT_RATE_REGISTER_IP: &str = "10/3600s";
pub const DEFAULT_RATE_REGISTER_ACCOUNT: &str = "5/3600s";
pub const DEFAULT_RATE_LOGIN_IP: &str = "10/60s";
pub const DEFAULT_RATE_LOGIN_ACCOUNT: &str = "10/300s";
pub const DEFAULT_RATE_REFRESH_IP: &str = "60/60s";
pub const DEFAULT_RATE_REFRESH_ACCOUNT: &str = "30/60s";

/// What the API router needs besides its connections: HTTP surface and auth settings.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// `HABERCI_API_MAX_BODY_BYTES`.
    pub max_body_bytes: usize,
    /// `HABERCI_CORS_ORIGINS`.
    pub cors: CorsOrigins,
    pub auth: AuthSettings,
    /// `HABERCI_INTERNAL_TOKEN`: the shared secret gateways present on `/internal/*`
    /// (`x-haberci-internal`). Unset: the internal routes answer 404.
    pub internal_token: Option<InternalToken>,
    pub social: SocialSettings,
    pub media: crate::media::MediaSettings,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            max_body_bytes: DEFAULT_API_MAX_BODY_BYTES,
            cors: CorsOrigins::default(),
            auth: AuthSettings::default(),
            internal_token: None,
            social: SocialSettings::default(),
            media: crate::media::MediaSettings::default(),
        }
    }
}

pub const DEFAULT_RATE_POST: &str = "60/3600s";
pub const DEFAULT_RATE_COMMENT: &str = "300/3600s";
pub const DEFAULT_RATE_LIKE: &str = "1000/3600s";
pub const DEFAULT_RATE_FOLLOW: &str = "400/86400s";

/// The social API's settings: the home feed's fan-out and per-account anti-spam limits
/// (each shared by every backend process through Redis, answered 429 with `Retry-After`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocialSettings {
    pub feed: crate::social::feed::FeedSettings,
    /// `HABERCI_RATE_POST`: posts and reposts per account.
    pub post: Rate,
    /// `HABERCI_RATE_COMMENT`.
    pub comment: Rate,
    /// `HABERCI_RATE_LIKE`: likes per account.
    pub like: Rate,
    /// `HABERCI_RATE_FOLLOW`: follows (and follow requests) per account.
    pub follow: Rate,
}

impl Default for SocialSettings {
    fn default() -> Self {
        SocialSettings {
            feed: crate::social::feed::FeedSettings::default(),
            post: default_parse(DEFAULT_RATE_POST),
            comment: default_parse(DEFAULT_RATE_COMMENT),
            like: default_parse(DEFAULT_RATE_LIKE),
            follow: default_parse(DEFAULT_RATE_FOLLOW),
        }
    }
}

impl SocialSettings {
    pub fn read(env: &mut Env<'_>) -> Self {
        let d = SocialSettings::default();
        SocialSettings {
            feed: read_feed(env),
            post: env.parse_or("HABERCI_RATE_POST", d.post),
            comment: env.parse_or("HABERCI_RATE_COMMENT", d.comment),
            like: env.parse_or("HABERCI_RATE_LIKE", d.like),
            follow: env.parse_or("HABERCI_RATE_FOLLOW", d.follow),
        }
    }

    /// The same limit everywhere; for tests and benchmarks.
    pub fn uniform(rate: Rate) -> Self {
        SocialSettings {
            feed: crate::social::feed::FeedSettings::default(),
            post: rate,
            comment: rate,
            like: rate,
            follow: rate,
        }
    }
}

/// `HABERCI_FEED_FANOUT_LIMIT`, `HABERCI_FEED_TIMELINE_CAP`: read by the API and the worker,
/// which must agree.
pub fn read_feed(env: &mut Env<'_>) -> crate::social::feed::FeedSettings {
    let d = crate::social::feed::FeedSettings::default();
    let fanout_limit: i64 = env.parse_or("HABERCI_FEED_FANOUT_LIMIT", d.fanout_limit);
    if fanout_limit < 1 {
        env.problem("HABERCI_FEED_FANOUT_LIMIT must be at least 1");
    }
    let cap: usize = env.parse_or("HABERCI_FEED_TIMELINE_CAP", d.cap);
    if !(20..=100_000).contains(&cap) {
        env.problem("HABERCI_FEED_TIMELINE_CAP must be between 20 and 100000");
    }
    crate::social::feed::FeedSettings {
        fanout_limit,
        cap,
        ttl: d.ttl,
    }
}

impl ApiSettings {
    pub fn read(env: &mut Env<'_>) -> Self {
        let max_body_bytes = env.parse_or("HABERCI_API_MAX_BODY_BYTES", DEFAULT_API_MAX_BODY_BYTES);
        let cors = CorsOrigins::read(env);
        let auth = AuthSettings::read(env);
        let internal_token = env.raw("HABERCI_INTERNAL_TOKEN").and_then(|text| {
            InternalToken::new(text)
                .map_err(|why| env.problem(format!("HABERCI_INTERNAL_TOKEN: {why}")))
                .ok()
        });
        let social = SocialSettings::read(env);
        let media = crate::media::MediaSettings::read(env);
        ApiSettings {
            max_body_bytes,
            cors,
            auth,
            internal_token,
            social,
            media,
        }
    }
}

/// The shared secret of the internal API (parsed the way the gateway parses it).
pub use haberci_seam::internal::InternalToken;

#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// `HABERCI_ACCESS_TOKEN_TTL_SECS`.
    pub access_ttl: Duration,
    /// `HABERCI_REFRESH_TOKEN_TTL_SECS`.
    pub refresh_ttl: Duration,
    /// `HABERCI_SESSION_CACHE_TTL_SECS`.
    pub session_cache_ttl: Duration,
    /// `HABERCI_PASSWORD_HASH_CONCURRENCY`: argon2 hashes computed at once (default: CPUs).
    pub hash_concurrency: usize,
    /// `HABERCI_PASSWORD_HASH_QUEUE_TIMEOUT_MS`: how long a request waits for a hashing slot
    /// before it is answered 503. Must stay below the gateway's `HABERCI_BACKEND_TIMEOUT_MS`.
    pub hash_queue_timeout: Duration,
    /// `HABERCI_TRUSTED_PROXIES`: comma-separated CIDRs of gateways whose
    /// `x-haberci-client-ip` header is believed.
    pub trusted_proxies: TrustedProxies,
    pub limits: RateLimits,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            access_ttl: Duration::from_secs(DEFAULT_ACCESS_TOKEN_TTL_SECS),
            refresh_ttl: Duration::from_secs(DEFAULT_REFRESH_TOKEN_TTL_SECS),
            session_cache_ttl: Duration::from_secs(DEFAULT_SESSION_CACHE_TTL_SECS),
            hash_concurrency: default_hash_concurrency(),
            hash_queue_timeout: crate::auth::password::DEFAULT_HASH_QUEUE_TIMEOUT,
            trusted_proxies: default_parse(DEFAULT_TRUSTED_PROXIES),
            limits: RateLimits::default(),
        }
    }
}

fn default_hash_concurrency() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Parses a literal default. Invariant: only called with the `DEFAULT_*` constants above,
/// which parse (the `defaults_parse` test checks).
fn default_parse<T: FromStr + Default>(text: &str) -> T {
    text.parse().unwrap_or_default()
}

impl AuthSettings {
    pub fn read(env: &mut Env<'_>) -> Self {
        let secs = |env: &mut Env<'_>, key: &str, default: u64| {
            let value = env.parse_or(key, default);
            if value == 0 {
                env.problem(format!("{key} must be above 0"));
            }
            Duration::from_secs(value)
        };
        let access_ttl = secs(
            env,
            "HABERCI_ACCESS_TOKEN_TTL_SECS",
            DEFAULT_ACCESS_TOKEN_TTL_SECS,
        );
        let refresh_ttl = secs(
            env,
            "HABERCI_REFRESH_TOKEN_TTL_SECS",
            DEFAULT_REFRESH_TOKEN_TTL_SECS,
        );
        let session_cache_ttl = secs(
            env,
            "HABERCI_SESSION_CACHE_TTL_SECS",
            DEFAULT_SESSION_CACHE_TTL_SECS,
        );
        let hash_concurrency = env.parse_or(
            "HABERCI_PASSWORD_HASH_CONCURRENCY",
            default_hash_concurrency(),
        );
        if hash_concurrency == 0 {
            env.problem("HABERCI_PASSWORD_HASH_CONCURRENCY must be at least 1");
        }
        let default_queue_ms =
            u64::try_from(crate::auth::password::DEFAULT_HASH_QUEUE_TIMEOUT.as_millis())
                .unwrap_or(u64::MAX);
        let queue_ms = env.parse_or("HABERCI_PASSWORD_HASH_QUEUE_TIMEOUT_MS", default_queue_ms);
        if queue_ms == 0 {
            env.problem("HABERCI_PASSWORD_HASH_QUEUE_TIMEOUT_MS must be above 0");
        }
        let hash_queue_timeout = Duration::from_millis(queue_ms);
        let trusted_proxies = env.parse_or(
            "HABERCI_TRUSTED_PROXIES",
            default_parse(DEFAULT_TRUSTED_PROXIES),
        );
        let limits = RateLimits::read(env);
        AuthSettings {
            access_ttl,
            refresh_ttl,
            session_cache_ttl,
            hash_concurrency,
            hash_queue_timeout,
            trusted_proxies,
            limits,
        }
    }
}

/// Rate limits of the auth endpoints, each `N/<period>` (e.g. `10/60s`, `5/1m`, `20/1h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// `HABERCI_RATE_REGISTER_IP`.
    pub register_ip: Rate,
    /// `HABERCI_RATE_REGISTER_ACCOUNT`: per username and per email asked for.
    pub register_account: Rate,
    /// `HABERCI_RATE_LOGIN_IP`.
    pub login_ip: Rate,
    /// `HABERCI_RATE_LOGIN_ACCOUNT`: per username or email tried.
    pub login_account: Rate,
    /// `HABERCI_RATE_REFRESH_IP`.
    pub refresh_ip: Rate,
    /// `HABERCI_RATE_REFRESH_ACCOUNT`: per user.
    pub refresh_account: Rate,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            register_ip: default_parse(DEFAULT_RATE_REGISTER_IP),
            register_account: default_parse(DEFAULT_RATE_REGISTER_ACCOUNT),
            login_ip: default_parse(DEFAULT_RATE_LOGIN_IP),
            login_account: default_parse(DEFAULT_RATE_LOGIN_ACCOUNT),
            refresh_ip: default_parse(DEFAULT_RATE_REFRESH_IP),
            refresh_account: default_parse(DEFAULT_RATE_REFRESH_ACCOUNT),
        }
    }
}

impl RateLimits {
    pub fn read(env: &mut Env<'_>) -> Self {
        let d = RateLimits::default();
        RateLimits {
            register_ip: env.parse_or("HABERCI_RATE_REGISTER_IP", d.register_ip),
            register_account: env.parse_or("HABERCI_RATE_REGISTER_ACCOUNT", d.register_account),
            login_ip: env.parse_or("HABERCI_RATE_LOGIN_IP", d.login_ip),
            login_account: env.parse_or("HABERCI_RATE_LOGIN_ACCOUNT", d.login_account),
            refresh_ip: env.parse_or("HABERCI_RATE_REFRESH_IP", d.refresh_ip),
            refresh_account: env.parse_or("HABERCI_RATE_REFRESH_ACCOUNT", d.refresh_account),
        }
    }

    /// The same limit everywhere; for tests and benchmarks.
    pub fn uniform(rate: Rate) -> Self {
        RateLimits {
            register_ip: rate,
            register_account: rate,
            login_ip: rate,
            login_account: rate,
            refresh_ip: rate,
            refresh_account: rate,
        }
    }
}

/// The longest rate-limit period accepted: a year. Longer ones are typos, and would overflow the
/// millisecond arithmetic of the rate-limit script.
pub const MAX_RATE_PERIOD_SECS: u64 = 366 * 24 * 3600;

/// At most `count` requests per `period`, with bursts up to `count` (GCRA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period: Duration,
}

impl Default for Rate {
    fn default() -> Self {
        Rate {
            count: 10,
            period: Duration::from_secs(60),
        }
    }
}

impl Rate {
    pub fn new(count: u32, period: Duration) -> Self {
        Rate { count, period }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}s", self.count, self.period.as_secs())
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let usage = "expected N/<period> like 10/60s, 5/1m or 20/1h";
        let (count, period) = text.trim().split_once('/').ok_or(usage)?;
        let count: u32 = count.trim().parse().map_err(|_| usage)?;
        let period = period.trim();
        // By suffix, not by byte offset: the last character may be multi-byte (`10/60µ`).
        let (number, scale) = [("s", 1u64), ("m", 60), ("h", 3600)]
            .into_iter()
            .find_map(|(unit, scale)| period.strip_suffix(unit).map(|n| (n, scale)))
            .ok_or(usage)?;
        let number: u64 = number.parse().map_err(|_| usage)?;
        if count == 0 || number == 0 {
            return Err("count and period must be above 0".into());
        }
        let secs = number
            .checked_mul(scale)
            .filter(|&secs| secs <= MAX_RATE_PERIOD_SECS)
            .ok_or("period is too long (at most 1 year)")?;
        Ok(Rate {
            count,
            period: Duration::from_secs(secs),
        })
    }
}

/// Address ranges of trusted gateways.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<IpNet>);

impl TrustedProxies {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

impl FromStr for TrustedProxies {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(|part| {
                part.parse::<IpNet>()
                    .or_else(|_| part.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{part:?} is not a CIDR range or an IP address"))
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// `HABERCI_METRICS_ADDR`: `/metrics` (default [`DEFAULT_WORKER_METRICS_ADDR`]; `off`: none).
    pub metrics: MetricsConfig,
    pub store: StoreConfig,
    pub prune: PruneSettings,
    pub messaging: MessagingSettings,
    pub feed: crate::social::feed::FeedSettings,
}

impl WorkerConfig {
    pub fn from_env(mut env: Env<'_>) -> Result<Self, ConfigError> {
        let metrics = MetricsConfig::from_env(&mut env, addr(DEFAULT_WORKER_METRICS_ADDR));
        let store = StoreConfig::read(&mut env, DEFAULT_WORKER_DB_POOL_SIZE);
        let prune = PruneSettings::read(&mut env);
        let messaging = MessagingSettings::read(&mut env);
        let feed = read_feed(&mut env);
        env.finish()?;
        Ok(WorkerConfig {
            metrics,
            store,
            prune,
            messaging,
            feed,
        })
    }
}

/// How the worker consumes the inbound message streams ([`crate::messaging`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessagingSettings {
    /// `HABERCI_STREAM_SHARDS`: how many `msg:in:{shard}` streams there are. Must equal the
    /// gateways' setting.
    pub shards: u16,
    /// `HABERCI_STREAM_PREFIX`: the stream keys' prefix (tests use one of their own).
    pub stream_prefix: String,
    /// `HABERCI_BATCH_SIZE`: most entries one `XREADGROUP` returns from each shard (Redis
    /// applies `COUNT` per stream); one batch is one Postgres transaction.
    pub batch_size: u32,
    /// `HABERCI_BATCH_BLOCK`: how long `XREADGROUP` waits for entries. Also bounds how long
    /// shutdown waits for the read in flight.
    pub block: Duration,
    /// `HABERCI_BATCH_LINGER`: the longest a small batch waits for more entries while they
    /// arrive fast enough that more are expected meanwhile (`0ms`: never; see
    /// `messaging::linger`).
    pub linger: Duration,
    /// `HABERCI_RECEIPT_HOLD`: how long a batch of receipts alone (`Ack`, `Read`) waits for
    /// sends to share a transaction with (`0ms`: never; see `messaging::consumer`). Nobody
    /// waits on a receipt the way a sender waits on `Sent`: a `Status` is this much later at
    /// most, and under load a receipt rides with the next sends instead of costing a
    /// transaction of its own.
    pub receipt_hold: Duration,
    /// `HABERCI_CLAIM_INTERVAL`: how often the worker looks for entries other consumers read
    /// and never acknowledged (`XAUTOCLAIM`).
    pub claim_interval: Duration,
    /// `HABERCI_CLAIM_IDLE`: how long an entry stays unacknowledged before another consumer
    /// takes it over. Above the longest a healthy batch can take.
    pub claim_idle: Duration,
    /// `HABERCI_TRIM_INTERVAL`: how often each stream is trimmed of acknowledged entries.
    pub trim_interval: Duration,
}

pub const DEFAULT_BATCH_SIZE: u32 = 256;
pub const DEFAULT_BATCH_BLOCK: Duration = Duration::from_secs(1);
pub const DEFAULT_BATCH_LINGER: Duration = Duration::from_millis(2);
/// A linger is a few milliseconds of batching, not a schedule: the worker does not race it
/// with shutdown.
pub const MAX_BATCH_LINGER: Duration = Duration::from_millis(100);
pub const DEFAULT_RECEIPT_HOLD: Duration = Duration::from_millis(50);
/// Held receipts are pending entries: far below the claim idle time, and a `Status` should
/// not lag by more than a moment.
pub const MAX_RECEIPT_HOLD: Duration = Duration::from_secs(1);
pub const DEFAULT_CLAIM_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_CLAIM_IDLE: Duration = Duration::from_secs(30);
pub const DEFAULT_TRIM_INTERVAL: Duration = Duration::from_secs(30);

impl Default for MessagingSettings {
    fn default() -> Self {
        use haberci_seam::streams;
        MessagingSettings {
            shards: streams::DEFAULT_SHARDS,
            stream_prefix: streams::DEFAULT_STREAM_PREFIX.to_owned(),
            batch_size: DEFAULT_BATCH_SIZE,
            block: DEFAULT_BATCH_BLOCK,
            linger: DEFAULT_BATCH_LINGER,
            receipt_hold: DEFAULT_RECEIPT_HOLD,
            claim_interval: DEFAULT_CLAIM_INTERVAL,
            claim_idle: DEFAULT_CLAIM_IDLE,
            trim_interval: DEFAULT_TRIM_INTERVAL,
        }
    }
}

impl MessagingSettings {
    pub fn read(env: &mut Env<'_>) -> Self {
        let d = MessagingSettings::default();
        let shards = env.parse_or("HABERCI_STREAM_SHARDS", d.shards);
        if shards == 0 {
            env.problem("HABERCI_STREAM_SHARDS must be at least 1");
        }
        let stream_prefix = env.string_or("HABERCI_STREAM_PREFIX", &d.stream_prefix);
        let batch_size = env.parse_or("HABERCI_BATCH_SIZE", d.batch_size);
        if !(1..=10_000).contains(&batch_size) {
            env.problem("HABERCI_BATCH_SIZE must be between 1 and 10000");
        }
        let linger = env
            .parse_or("HABERCI_BATCH_LINGER", HumanDuration(d.linger))
            .0;
        let receipt_hold = env
            .parse_or("HABERCI_RECEIPT_HOLD", HumanDuration(d.receipt_hold))
            .0;
        let mut duration = |key: &str, default: Duration| {
            let value = env.parse_or(key, HumanDuration(default)).0;
            if value.is_zero() {
                env.problem(format!("{key} must be above 0"));
            }
            value
        };
        let block = duration("HABERCI_BATCH_BLOCK", d.block);
        let claim_interval = duration("HABERCI_CLAIM_INTERVAL", d.claim_interval);
        let claim_idle = duration("HABERCI_CLAIM_IDLE", d.claim_idle);
        let trim_interval = duration("HABERCI_TRIM_INTERVAL", d.trim_interval);
        if linger > MAX_BATCH_LINGER.min(block) {
            env.problem(
                "HABERCI_BATCH_LINGER must be at most 100ms and not above HABERCI_BATCH_BLOCK",
            );
        }
        if receipt_hold > MAX_RECEIPT_HOLD {
            env.problem("HABERCI_RECEIPT_HOLD must be at most 1s");
        }
        // Held receipts are pending entries: another consumer must not take them over as
        // abandoned while they wait.
        if receipt_hold + linger >= claim_idle {
            env.problem(
                "HABERCI_RECEIPT_HOLD plus HABERCI_BATCH_LINGER must stay below HABERCI_CLAIM_IDLE",
            );
        }
        MessagingSettings {
            shards,
            stream_prefix,
            batch_size,
            block,
            linger,
            receipt_hold,
            claim_interval,
            claim_idle,
            trim_interval,
        }
    }
}

/// A duration written with its unit: `250ms`, `5s`, `2m`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or("needs a unit: ms, s, m or h (e.g. 5s)")?;
        let (number, unit) = text.split_at(split);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("{number:?} is not a whole number"))?;
        let millis = match unit {
            "ms" => Some(number),
            "s" => number.checked_mul(1_000),
            "m" => number.checked_mul(60_000),
            "h" => number.checked_mul(3_600_000),
            _ => return Err(format!("unknown unit {unit:?}: use ms, s, m or h")),
        }
        .filter(|&ms| ms <= 24 * 3_600_000)
        .ok_or("too long (at most 24h)")?;
        Ok(HumanDuration(Duration::from_millis(millis)))
    }
}

/// When the worker deletes ended sessions and spent refresh tokens
/// ([`crate::auth::sessions::prune`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneSettings {
    /// `HABERCI_PRUNE_INTERVAL_SECS`.
    pub interval: Duration,
    /// `HABERCI_REFRESH_TOKEN_GRACE_SECS`.
    pub token_grace: Duration,
    /// `HABERCI_SESSION_RETENTION_SECS`.
    pub session_retention: Duration,
}

impl Default for PruneSettings {
    fn default() -> Self {
        use crate::auth::sessions as s;
        PruneSettings {
            interval: s::DEFAULT_PRUNE_INTERVAL,
            token_grace: s::DEFAULT_REFRESH_TOKEN_GRACE,
            session_retention: s::DEFAULT_SESSION_RETENTION,
        }
    }
}

impl PruneSettings {
    pub fn read(env: &mut Env<'_>) -> Self {
        let d = PruneSettings::default();
        let mut secs = |key: &str, default: Duration| {
            let value = env.parse_or(key, default.as_secs());
            if value == 0 {
                env.problem(format!("{key} must be above 0"));
            }
            Duration::from_secs(value)
        };
        PruneSettings {
            interval: secs("HABERCI_PRUNE_INTERVAL_SECS", d.interval),
            token_grace: secs("HABERCI_REFRESH_TOKEN_GRACE_SECS", d.token_grace),
            session_retention: secs("HABERCI_SESSION_RETENTION_SECS", d.session_retention),
        }
    }
}

#[derive(Debug, Clone)]
pub struct MigrateConfig {
    /// `HABERCI_MIGRATE_DATABASE_URL`: Postgres itself, not PgBouncer.
    pub database_url: String,
}

impl MigrateConfig {
    pub fn from_env(mut env: Env<'_>) -> Result<Self, ConfigError> {
        let database_url = env.required(
            "HABERCI_MIGRATE_DATABASE_URL",
            "postgres:// URL of Postgres itself (not PgBouncer) for migrations",
        );
        env.finish()?;
        Ok(MigrateConfig { database_url })
    }
}

/// A URL with its password replaced, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_replica_is_optional_and_its_url_checked() {
        let url = ("HABERCI_DATABASE_URL", "postgres://x@y/z");
        let api = ApiConfig::from_env(Env::from_pairs(&[url])).expect("no replica");
        assert!(api.replica.is_none());
        let pairs = [url, ("HABERCI_REPLICA_DATABASE_URL", "postgres://x@r/z")];
        let replica = ApiConfig::from_env(Env::from_pairs(&pairs))
            .expect("a replica")
            .replica
            .expect("configured");
        assert_eq!(replica.max_staleness, crate::replica::DEFAULT_MAX_STALENESS);
        let pairs = [
            url,
            ("HABERCI_REPLICA_DATABASE_URL", "mysql://x@r/z"),
            ("HABERCI_REPLICA_MAX_STALENESS_MS", "soon"),
        ];
        let text = ApiConfig::from_env(Env::from_pairs(&pairs))
            .expect_err("bad replica settings")
            .to_string();
        for needle in [
            "HABERCI_REPLICA_DATABASE_URL must be a postgres:// URL",
            "HABERCI_REPLICA_MAX_STALENESS_MS",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
    }

    #[test]
    fn bad_settings_are_listed_together() {
        let pairs = [
            ("HABERCI_API_ADDR", "nowhere"),
            ("HABERCI_DB_POOL_SIZE", "0"),
            ("HABERCI_REDIS_URL", "http://x"),
        ];
        let err = ApiConfig::from_env(Env::from_pairs(&pairs)).expect_err("bad config");
        let text = err.to_string();
        for needle in [
            "HABERCI_API_ADDR",
            "HABERCI_DATABASE_URL is not set",
            "HABERCI_DB_POOL_SIZE",
            "HABERCI_REDIS_URL",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
    }

    #[test]
    fn defaults_parse() {
        let limits = RateLimits::default();
        assert_eq!(limits.login_ip, Rate::new(10, Duration::from_secs(60)));
        assert_eq!(limits.register_ip.to_string(), DEFAULT_RATE_REGISTER_IP);
        assert_eq!(
            limits.register_account.to_string(),
            DEFAULT_RATE_REGISTER_ACCOUNT
        );
        assert_eq!(limits.login_account.to_string(), DEFAULT_RATE_LOGIN_ACCOUNT);
        assert_eq!(limits.refresh_ip.to_string(), DEFAULT_RATE_REFRESH_IP);
        assert_eq!(
            limits.refresh_account.to_string(),
            DEFAULT_RATE_REFRESH_ACCOUNT
        );
        let proxies = AuthSettings::default().trusted_proxies;
        assert!(proxies.contains("127.0.0.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))));
        assert!(
            proxies.contains(
                "::ffff:127.0.0.9"
                    .parse()
                    .unwrap_or(IpAddr::from([0, 0, 0, 0]))
            )
        );
        assert!(proxies.contains("::1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))));
        assert!(!proxies.contains("10.0.0.1".parse().unwrap_or(IpAddr::from([127, 0, 0, 1]))));
    }

    #[test]
    fn rates_parse() {
        assert_eq!("5/1m".parse(), Ok(Rate::new(5, Duration::from_secs(60))));
        assert_eq!(
            "20/1h".parse(),
            Ok(Rate::new(20, Duration::from_secs(3600)))
        );
        for bad in ["", "5", "5/", "0/60s", "5/0s", "5/60", "x/60s", "5/60d"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn odd_rates_are_config_problems_not_panics() {
        // A multi-byte last character used to panic in `split_at`; a huge period overflowed.
        for bad in [
            "10/60µ",
            "10/µ",
            "10/é",
            "10/18446744073709551615h",
            "10/5124095576030432h",
            "10/31623000s",
        ] {
            assert!(bad.parse::<Rate>().is_err(), "{bad:?}");
            let pairs = [
                ("HABERCI_DATABASE_URL", "postgres://x@y/z"),
                ("HABERCI_RATE_LOGIN_IP", bad),
            ];
            let err = ApiConfig::from_env(Env::from_pairs(&pairs)).expect_err("bad config");
            assert!(err.to_string().contains("HABERCI_RATE_LOGIN_IP"), "{err}");
            assert_eq!(err.problems.len(), 1, "{err}");
        }
        assert_eq!(
            "1/8784h".parse(),
            Ok(Rate::new(1, Duration::from_secs(MAX_RATE_PERIOD_SECS)))
        );
    }

    #[test]
    fn redis_urls_are_redacted_and_tls_is_refused() {
        let pairs = [
            ("HABERCI_DATABASE_URL", "postgres://x@y/z"),
            ("HABERCI_REDIS_URL", "http://user:hunter2@redis:6379"),
        ];
        let err = WorkerConfig::from_env(Env::from_pairs(&pairs)).expect_err("bad config");
        let text = err.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("user:***@redis"), "{text}");

        let pairs = [
            ("HABERCI_DATABASE_URL", "postgres://x@y/z"),
            ("HABERCI_REDIS_URL", "rediss://:hunter2@redis:6380"),
        ];
        let err = WorkerConfig::from_env(Env::from_pairs(&pairs)).expect_err("bad config");
        let text = err.to_string();
        assert!(text.contains("rediss:// (TLS) is not supported"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn api_and_worker_read_the_pool_size_with_their_own_defaults() {
        let url = ("HABERCI_DATABASE_URL", "postgres://x@y/z");
        let api = ApiConfig::from_env(Env::from_pairs(&[url])).expect("defaults");
        assert_eq!(api.store.db_pool_size, DEFAULT_DB_POOL_SIZE);
        let worker = WorkerConfig::from_env(Env::from_pairs(&[url])).expect("defaults");
        assert_eq!(worker.store.db_pool_size, DEFAULT_WORKER_DB_POOL_SIZE);
        let pairs = [url, ("HABERCI_DB_POOL_SIZE", "7")];
        let worker = WorkerConfig::from_env(Env::from_pairs(&pairs)).expect("valid");
        assert_eq!(worker.store.db_pool_size, 7);
        let pairs = [url, ("HABERCI_DB_POOL_SIZE", "0")];
        let err = WorkerConfig::from_env(Env::from_pairs(&pairs)).expect_err("bad config");
        assert!(err.to_string().contains("HABERCI_DB_POOL_SIZE"), "{err}");
    }

    #[test]
    fn worker_settings_have_defaults_and_refuse_zero() {
        let pairs = [("HABERCI_DATABASE_URL", "postgres://x@y/z")];
        let config = WorkerConfig::from_env(Env::from_pairs(&pairs)).expect("defaults");
        assert_eq!(config.prune, PruneSettings::default());
        let pairs = [
            ("HABERCI_DATABASE_URL", "postgres://x@y/z"),
            ("HABERCI_PRUNE_INTERVAL_SECS", "0"),
            ("HABERCI_SESSION_RETENTION_SECS", "0"),
        ];
        let err = WorkerConfig::from_env(Env::from_pairs(&pairs)).expect_err("bad config");
        assert_eq!(err.problems.len(), 2, "{err}");
    }

    #[test]
    fn messaging_settings_have_defaults_and_parse_units() {
        let pairs = [("HABERCI_DATABASE_URL", "postgres://x@y/z")];
        let config = WorkerConfig::from_env(Env::from_pairs(&pairs)).expect("defaults");
        assert_eq!(config.messaging, MessagingSettings::default());
        let pairs = [
            ("HABERCI_DATABASE_URL", "postgres://x@y/z"),
            ("HABERCI_STREAM_SHARDS", "3"),
            ("HABERCI_STREAM_PREFIX", "t:in:"),
            ("HABERCI_CLAIM_IDLE", "250ms"),
            ("HABERCI_CLAIM_INTERVAL", "2m"),
            ("HABERCI_BATCH_LINGER", "0ms"),
            ("HABERCI_RECEIPT_HOLD", "0ms"),
        ];
        let config = WorkerConfig::from_env(Env::from_pairs(&pairs)).expect("valid");
        assert_eq!(
            config.messaging.linger,
            Duration::ZERO,
            "0ms turns lingering off"
        );
        assert_eq!(config.messaging.receipt_hold, Duration::ZERO);
        assert_eq!(config.messaging.shards, 3);
        assert_eq!(config.messaging.stream_prefix, "t:in:");
        assert_eq!(config.messaging.claim_idle, Duration::from_millis(250));
        assert_eq!(config.messaging.claim_interval, Duration::from_secs(120));
        let pairs = [
            ("HABERCI_DATABASE_URL", "postgres://x@y/z"),
            ("HABERCI_STREAM_SHARDS", "0"),
            ("HABERCI_BATCH_SIZE", "0"),
            ("HABERCI_CLAIM_IDLE", "30"),
            ("HABERCI_TRIM_INTERVAL", "0s"),
            ("HABERCI_BATCH_BLOCK", "1d"),
            ("HABERCI_BATCH_LINGER", "2"),
            ("HABERCI_RECEIPT_HOLD", "2s"),
        ];
        let err = WorkerConfig::from_env(Env::from_pairs(&pairs)).expect_err("bad config");
        assert_eq!(err.problems.len(), 7, "{err}");
        // Lingering longer than a read may block, or than a moment, makes no sense.
        for (block, linger) in [("50ms", "60ms"), ("1s", "101ms")] {
            let pairs = [
                ("HABERCI_DATABASE_URL", "postgres://x@y/z"),
                ("HABERCI_BATCH_BLOCK", block),
                ("HABERCI_BATCH_LINGER", linger),
            ];
            let err = WorkerConfig::from_env(Env::from_pairs(&pairs)).expect_err("bad config");
            assert_eq!(err.problems.len(), 1, "{err}");
        }
        // Held receipts must not look abandoned to the other consumers.
        let pairs = [
            ("HABERCI_DATABASE_URL", "postgres://x@y/z"),
            ("HABERCI_CLAIM_IDLE", "500ms"),
            ("HABERCI_RECEIPT_HOLD", "500ms"),
        ];
        let err = WorkerConfig::from_env(Env::from_pairs(&pairs)).expect_err("bad config");
        assert_eq!(err.problems.len(), 1, "{err}");
    }

    #[test]
    fn bad_auth_settings_are_listed() {
        let pairs = [
            ("HABERCI_DATABASE_URL", "postgres://x@y/z"),
            ("HABERCI_RATE_LOGIN_IP", "lots"),
            ("HABERCI_TRUSTED_PROXIES", "127.0.0.0/8,gateway"),
            ("HABERCI_CORS_ORIGINS", "*"),
            ("HABERCI_ACCESS_TOKEN_TTL_SECS", "0"),
        ];
        let err = ApiConfig::from_env(Env::from_pairs(&pairs)).expect_err("bad config");
        assert_eq!(err.problems.len(), 4, "{err}");
    }

    #[test]
    fn internal_token_is_optional_long_and_never_printed() {
        let pairs = [("HABERCI_DATABASE_URL", "postgres://x@y/z")];
        let config = ApiConfig::from_env(Env::from_pairs(&pairs)).expect("defaults");
        assert!(config.settings.internal_token.is_none());
        let pairs = [
            ("HABERCI_DATABASE_URL", "postgres://x@y/z"),
            ("HABERCI_INTERNAL_TOKEN", "too-short"),
        ];
        let err = ApiConfig::from_env(Env::from_pairs(&pairs)).expect_err("bad config");
        assert!(err.to_string().contains("HABERCI_INTERNAL_TOKEN"), "{err}");
        assert!(!err.to_string().contains("too-short"), "{err}");
        let secret = "0123456789abcdef0123456789abcdef";
        let pairs = [
            ("HABERCI_DATABASE_URL", "postgres://x@y/z"),
            ("HABERCI_INTERNAL_TOKEN", secret),
        ];
        let config = ApiConfig::from_env(Env::from_pairs(&pairs)).expect("valid");
        let token = config.settings.internal_token.clone().expect("set");
        assert_eq!(token.as_str(), secret);
        assert!(!format!("{config:?}").contains(secret));
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://haberci:secret@127.0.0.1:56432/haberci"),
            "postgres://haberci:***@127.0.0.1:56432/haberci"
        );
        assert_eq!(redact("redis://127.0.0.1:1"), "redis://127.0.0.1:1");
    }
}
