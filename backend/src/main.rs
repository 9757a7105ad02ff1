//! `haberci-backend api | worker | migrate | keys`. Parses config, sets up logging and the
//! runtime, and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use haberci_backend::api::{self, AppState};
use haberci_backend::auth::keys::{DEFAULT_KEY_POLL_INTERVAL, KeyStore};
use haberci_backend::config::{ApiConfig, MigrateConfig, WorkerConfig};
use haberci_kit::config::{ConfigError, EXIT_BAD_CONFIG, Env};

#[derive(Parser)]
#[command(
    version,
    about = "Haberci backend: HTTP API, message worker, migrations"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (reached through a gateway).
    Api,
    /// Consume message streams and persist them.
    Worker,
    /// Apply database migrations directly to Postgres.
    Migrate,
    /// Manage the Ed25519 keys that sign access tokens.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key in DIR unless it already holds one (idempotent).
    Ensure {
        #[arg(long, env = "HABERCI_JWT_KEY_DIR")]
        dir: PathBuf,
    },
    /// Add a new key to DIR (rotation: it is published at once, and signs once it sorts last
    /// or is named by HABERCI_JWT_SIGNING_KID).
    New {
        #[arg(long, env = "HABERCI_JWT_KEY_DIR")]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Keys { command } = &cli.command {
        return keys(command);
    }
    haberci_kit::telemetry::init("backend");
    haberci_kit::crypto::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("haberci-backend: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Api => run_api(bad_config(ApiConfig::from_env(Env::process()))?).await,
            Command::Worker => {
                let config = bad_config(WorkerConfig::from_env(Env::process()))?;
                haberci_backend::worker::run(config, haberci_kit::shutdown::on_signals()).await
            }
            // Handled above, before logging and the runtime start.
            Command::Keys { .. } => Ok(()),
            Command::Migrate => {
                let config = bad_config(MigrateConfig::from_env(Env::process()))?;
                let applied = haberci_backend::db::migrate(&config.database_url).await?;
                tracing::info!(applied, "migrations up to date");
                println!("migrations: {applied} applied");
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => match err.downcast_ref::<ConfigError>() {
            Some(config) => {
                eprintln!("haberci-backend: {config}");
                ExitCode::from(EXIT_BAD_CONFIG as u8)
            }
            None => {
                tracing::error!(error = format!("{err:#}"), "exiting");
                eprintln!("haberci-backend: {err:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn bad_config<T>(result: Result<T, ConfigError>) -> anyhow::Result<T> {
    result.map_err(anyhow::Error::from)
}

async fn run_api(config: ApiConfig) -> anyhow::Result<()> {
    let shutdown = haberci_kit::shutdown::on_signals();
    let keys = KeyStore::load_dir(&config.jwt_key_dir, config.jwt_signing_kid.as_deref())
        .map_err(|err| anyhow::anyhow!("access-token keys (HABERCI_JWT_KEY_DIR): {err}"))?;
    let keys = Arc::new(keys);
    {
        let current = keys.current();
        tracing::info!(kids = ?current.set.kids(), signing = %current.set.signing_kid(), "access-token keys loaded");
    }
    tokio::spawn(haberci_backend::auth::keys::watch(
        keys.clone(),
        DEFAULT_KEY_POLL_INTERVAL,
        shutdown.clone(),
    ));
    if config.settings.internal_token.is_none() {
        tracing::warn!(
            "HABERCI_INTERNAL_TOKEN is not set: the gateways' internal API (/internal/v1/*) answers 404"
        );
    }
    let db =
        haberci_backend::db::connect_pool(&config.store.database_url, config.store.db_pool_size)?;
    let redis = haberci_backend::redis::connect(&config.store.redis_url)?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "api listening");
    // A media store that cannot open (an unwritable directory, a malformed S3 setting) stops
    // start-up here, with its reason, rather than at the first upload.
    haberci_backend::media::Media::open(config.settings.media.clone())
        .map_err(|err| anyhow::anyhow!("media store {:?}: {err}", config.settings.media.store))?;
    let state = AppState::with_keys(db, redis, config.settings, keys);
    tokio::spawn(haberci_backend::media::gc::run(
        state.media.clone(),
        state.db.clone(),
    ));
    let app = api::app(state);
    api::serve(listener, app, shutdown).await?;
    tracing::info!("api stopped");
    Ok(())
}

/// `keys ensure | new`: key ids are UTC timestamps, so the newest key sorts last.
fn keys(command: &KeysCommand) -> ExitCode {
    let now = time::OffsetDateTime::now_utc();
    let kid = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    let (dir, only_if_empty) = match command {
        KeysCommand::Ensure { dir } => (dir, true),
        KeysCommand::New { dir } => (dir, false),
    };
    if only_if_empty && haberci_token::keys::has_keys(dir) {
        println!("jwt keys: present in {}", dir.display());
        return ExitCode::SUCCESS;
    }
    match haberci_token::keys::write_new_key(dir, &kid) {
        Ok(path) => {
            println!("jwt keys: created {}", path.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("haberci-backend: {err}");
            ExitCode::FAILURE
        }
    }
}
