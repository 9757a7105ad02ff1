//! The backend's settings, read from `HABERCI_*` variables before anything connects or binds.

use std::net::SocketAddr;

use haberci_kit::config::{ConfigError, Env};

pub const DEFAULT_API_ADDR: &str = "127.0.0.1:58080";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:56379";
/// Connections the API keeps to PgBouncer. In session mode each one pins a server connection.
pub const DEFAULT_DB_POOL_SIZE: u32 = 16;

/// Where the backend finds Postgres (through PgBouncer) and Redis.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `HABERCI_DATABASE_URL`: the PgBouncer URL every query uses.
    pub database_url: String,
    /// `HABERCI_DB_POOL_SIZE`.
    pub db_pool_size: u32,
    /// `HABERCI_REDIS_URL`.
    pub redis_url: String,
}

impl StoreConfig {
    pub fn read(env: &mut Env<'_>) -> Self {
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
        let db_pool_size = env.parse_or("HABERCI_DB_POOL_SIZE", DEFAULT_DB_POOL_SIZE);
        if db_pool_size == 0 {
            env.problem("HABERCI_DB_POOL_SIZE must be at least 1");
        }
        let redis_url = env.string_or("HABERCI_REDIS_URL", DEFAULT_REDIS_URL);
        if !redis_url.starts_with("redis://") && !redis_url.starts_with("rediss://") {
            env.problem(format!(
                "HABERCI_REDIS_URL must be a redis:// URL, got {redis_url:?}"
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
    pub store: StoreConfig,
}

impl ApiConfig {
    pub fn from_env(mut env: Env<'_>) -> Result<Self, ConfigError> {
        let listen = env.parse_or(
            "HABERCI_API_ADDR",
            SocketAddr::from(([127, 0, 0, 1], 58080)),
        );
        let store = StoreConfig::read(&mut env);
        env.finish()?;
        Ok(ApiConfig { listen, store })
    }
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub store: StoreConfig,
}

impl WorkerConfig {
    pub fn from_env(mut env: Env<'_>) -> Result<Self, ConfigError> {
        let store = StoreConfig::read(&mut env);
        env.finish()?;
        Ok(WorkerConfig { store })
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
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://haberci:secret@127.0.0.1:56432/haberci"),
            "postgres://haberci:***@127.0.0.1:56432/haberci"
        );
        assert_eq!(redact("redis://127.0.0.1:1"), "redis://127.0.0.1:1");
    }
}
