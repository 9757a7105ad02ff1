//! `haberci-backend api | worker | migrate | partition-messages | keys`. Parses the command line and config, sets
//! up logging and the runtime, and calls into the library.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use haberci_backend::auth::keys;
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
    /// Copy `messages` into its partitioned table and swap them, while the service runs
    /// (after `migrate`; docs/OPERATIONS.md "Partitioned messages").
    PartitionMessages {
        /// Rows per copy statement.
        #[arg(long, default_value_t = haberci_backend::partitioning::DEFAULT_BATCH_ROWS)]
        batch_rows: i64,
    },
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
    match Cli::parse().command {
        Command::Api => start(ApiConfig::from_env, |config| {
            haberci_backend::api::run(config, haberci_kit::shutdown::on_signals())
        }),
        Command::Worker => start(WorkerConfig::from_env, |config| {
            haberci_backend::worker::run(config, haberci_kit::shutdown::on_signals())
        }),
        Command::Migrate => start(MigrateConfig::from_env, migrate),
        Command::PartitionMessages { batch_rows } => {
            start(MigrateConfig::from_env, move |config| {
                partition_messages(config, batch_rows)
            })
        }
        // No runtime and no logging: a file or an error, printed.
        Command::Keys { command } => run_keys(&command),
    }
}

/// Sets up logging, reads the subcommand's settings (all bad ones listed at once, exit 64) and
/// runs `task` with them on a new runtime until it ends.
fn start<C, F>(
    read: fn(Env<'static>) -> Result<C, ConfigError>,
    task: impl FnOnce(C) -> F,
) -> ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    haberci_kit::telemetry::init("backend");
    haberci_kit::crypto::install_crypto_provider();
    if let Err(err) = haberci_kit::metrics::install() {
        eprintln!("haberci-backend: {err}");
        return ExitCode::FAILURE;
    }
    haberci_backend::metrics::describe();
    let (config, threads) = match haberci_kit::runtime::settings(read) {
        Ok(read) => read,
        Err(err) => {
            eprintln!("haberci-backend: {err}");
            return ExitCode::from(EXIT_BAD_CONFIG as u8);
        }
    };
    let runtime = match haberci_kit::runtime::build(threads) {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("haberci-backend: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // `task` is called inside the runtime: what it starts (signal handlers) needs one.
    match runtime.block_on(async move { task(config).await }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "exiting");
            eprintln!("haberci-backend: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(config: MigrateConfig) -> anyhow::Result<()> {
    let applied = haberci_backend::db::migrate(&config.database_url).await?;
    tracing::info!(applied, "migrations up to date");
    println!("migrations: {applied} applied");
    Ok(())
}

async fn partition_messages(config: MigrateConfig, batch_rows: i64) -> anyhow::Result<()> {
    let report = haberci_backend::partitioning::run(&config.database_url, batch_rows).await?;
    if report.swap_attempts == 0 {
        println!("partition-messages: `messages` is already partitioned");
    } else {
        println!(
            "partition-messages: {} rows copied in {} batches ({:.1} s), checked in {:.1} s, \
             swapped in {} ms ({} attempt(s)); the old table is `messages_legacy`",
            report.rows,
            report.batches,
            report.copy.as_secs_f64(),
            report.check.as_secs_f64(),
            report.swap.as_millis(),
            report.swap_attempts
        );
    }
    Ok(())
}

/// `keys ensure | new`: no runtime and no logging, only what it did.
fn run_keys(command: &KeysCommand) -> ExitCode {
    let now = time::OffsetDateTime::now_utc();
    let (dir, written) = match command {
        KeysCommand::Ensure { dir } => (dir, keys::ensure_key(dir, now)),
        KeysCommand::New { dir } => (dir, keys::add_key(dir, now).map(Some)),
    };
    match written {
        Ok(Some(path)) => {
            println!("jwt keys: created {}", path.display());
            ExitCode::SUCCESS
        }
        Ok(None) => {
            println!("jwt keys: present in {}", dir.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("haberci-backend: {err}");
            ExitCode::FAILURE
        }
    }
}
