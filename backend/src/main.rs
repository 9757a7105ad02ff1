//! `haberci-backend api | worker | migrate`. Parses config, sets up logging and the runtime,
//! and calls into the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use haberci_backend::api::{self, AppState};
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    let db =
        haberci_backend::db::connect_pool(&config.store.database_url, config.store.db_pool_size)?;
    let redis = haberci_backend::redis::connect(&config.store.redis_url)?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "api listening");
    let app = api::app(AppState { db, redis });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    tracing::info!("api stopped");
    Ok(())
}
