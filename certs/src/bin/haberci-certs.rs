//! `haberci-certs ensure --dir DIR`: creates or renews the development certificates.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use haberci_certs::{Action, CertPaths};

#[derive(Parser)]
#[command(about = "Development certificates for Haberci")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create what is missing and renew what is due; print what changed.
    Ensure {
        #[arg(long, env = "HABERCI_CERT_DIR", default_value = ".dev/certs")]
        dir: PathBuf,
    },
    /// Print the WebTransport certificate hash (hex SHA-256 of its DER).
    Hash {
        #[arg(long, env = "HABERCI_CERT_DIR", default_value = ".dev/certs")]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("haberci-certs: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Ensure { dir } => {
            let paths = CertPaths::new(&dir);
            let report = haberci_certs::ensure(&paths, time::OffsetDateTime::now_utc())?;
            let word = |a: Action| match a {
                Action::Kept => "kept",
                Action::Created => "created",
                Action::Renewed => "renewed",
            };
            println!(
                "certs in {}: ca {}, server {}, webtransport {}, next webtransport {}",
                dir.display(),
                word(report.ca),
                word(report.server),
                word(report.wt),
                word(report.wt_next)
            );
            Ok(())
        }
        Command::Hash { dir } => {
            let hash = std::fs::read_to_string(CertPaths::new(dir).wt_hash())?;
            println!("{}", hash.trim());
            Ok(())
        }
    }
}
