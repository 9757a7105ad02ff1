//! `haberci-acme`: keeps the gateway's TLS certificate issued and renewed by an ACME CA.
//!
//! Runs as a service next to the gateways of one host (they share its certificate directory
//! and reload the files themselves); `--once` checks, orders if due, and exits (a timer).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use haberci_acme::{Outcome, Settings};

#[derive(Parser)]
#[command(about = "The gateway's TLS certificate from an ACME CA, renewed before it expires")]
struct Cli {
    /// The CA's directory URL.
    #[arg(
        long,
        env = "HABERCI_ACME_DIRECTORY",
        default_value = "https://acme-v02.api.letsencrypt.org/directory"
    )]
    directory: String,
    /// A name the certificate is for (repeat, or comma-separated); the first is its subject.
    #[arg(
        long = "domain",
        env = "HABERCI_ACME_DOMAINS",
        value_delimiter = ',',
        required = true
    )]
    domains: Vec<String>,
    /// Account contact, e.g. mailto:ops@example.com (repeat, or comma-separated).
    #[arg(long, env = "HABERCI_ACME_CONTACT", value_delimiter = ',')]
    contact: Vec<String>,
    /// The gateways' certificate directory (their HABERCI_CERT_DIR).
    #[arg(long, env = "HABERCI_CERT_DIR", default_value = ".dev/certs")]
    cert_dir: PathBuf,
    /// Where HTTP-01 challenges are answered while an order is open (repeat, or comma-separated).
    #[arg(
        long,
        env = "HABERCI_ACME_HTTP_LISTEN",
        value_delimiter = ',',
        default_value = "0.0.0.0:80,[::]:80"
    )]
    http_listen: Vec<SocketAddr>,
    /// Trust the roots in this PEM file for the CA's HTTPS (a test CA such as Pebble).
    #[arg(long, env = "HABERCI_ACME_CA_ROOTS")]
    ca_roots: Option<PathBuf>,
    /// Check once, order if due, and exit.
    #[arg(long)]
    once: bool,
}

fn main() -> ExitCode {
    haberci_kit::telemetry::init("acme");
    haberci_kit::crypto::install_crypto_provider();
    let cli = Cli::parse();
    let settings = Settings {
        directory: cli.directory,
        domains: cli.domains,
        contact: cli.contact,
        cert_dir: cli.cert_dir,
        http_listen: cli.http_listen,
        ca_roots: cli.ca_roots,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("haberci-acme: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        if cli.once {
            return match haberci_acme::ensure(&settings).await {
                Ok(Outcome::Kept { renew_at }) => {
                    println!("certificate kept; renewal due at {renew_at}");
                    ExitCode::SUCCESS
                }
                Ok(Outcome::Issued { not_after, .. }) => {
                    println!("certificate issued; valid until {not_after}");
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("haberci-acme: {err}");
                    ExitCode::FAILURE
                }
            };
        }
        haberci_acme::run(settings, haberci_kit::shutdown::on_signals(), None).await;
        ExitCode::SUCCESS
    })
}
