//! The system under test as the command line names it: where the stack is, how to reach and
//! measure it, and where reports go ([`Target`], flattened into every scenario's flags), and
//! the transports its sessions speak ([`Mix`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::load::protocol::TransportKind;
use crate::sampling::servers::{Server, parse_server_pid};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mix {
    Quic,
    Ws,
    /// WebTransport (HTTP/3, `/v1/rt`).
    Wt,
    /// QUIC, WebSocket and WebTransport sessions in turn.
    Mix,
}

impl Mix {
    /// The transport of the `i`-th session.
    pub fn transport(self, i: usize) -> TransportKind {
        match self {
            Mix::Quic => TransportKind::Quic,
            Mix::Ws => TransportKind::Ws,
            Mix::Wt => TransportKind::Wt,
            Mix::Mix => [TransportKind::Quic, TransportKind::Ws, TransportKind::Wt][i % 3],
        }
    }
}

/// A gateway: its QUIC (UDP) and WebSocket (TCP) addresses.
#[derive(Clone, Debug, Serialize)]
pub struct GatewaySpec {
    pub quic: String,
    pub tcp: String,
}

fn parse_gateway(text: &str) -> Result<GatewaySpec, String> {
    let (quic, tcp) = text
        .split_once(',')
        .ok_or_else(|| format!("{text:?} is not QUIC_HOST:PORT,TCP_HOST:PORT"))?;
    for part in [quic, tcp] {
        if part
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(format!("{part:?} is not HOST:PORT"));
        }
    }
    Ok(GatewaySpec {
        quic: quic.into(),
        tcp: tcp.into(),
    })
}

/// Where the stack is and how to reach and measure it; shared by every scenario.
#[derive(Debug, Args, Serialize)]
pub struct Target {
    /// A gateway as `QUIC_HOST:PORT,TCP_HOST:PORT`; repeat for several (chat puts each
    /// recipient on another gateway than its sender).
    #[arg(long = "gateway", value_parser = parse_gateway, default_value = "localhost:4433,localhost:8443")]
    pub gateways: Vec<GatewaySpec>,
    /// The JSON API used to register and log in the bench users (through a gateway).
    #[arg(
        long,
        default_value = "https://localhost:8443",
        env = "HABERCI_BENCH_API"
    )]
    pub api: String,
    /// The CA that signed the gateways' certificates.
    #[arg(long, default_value = ".dev/certs/ca.pem", env = "HABERCI_BENCH_CA")]
    pub ca: PathBuf,
    /// The name in the gateways' certificates (TLS SNI).
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// The dev stack's state directory: its pid files say which processes are the servers.
    #[arg(long, default_value = ".dev", env = "HABERCI_DEV_DIR")]
    pub dev_dir: PathBuf,
    /// The cache of bench users (default: DEV_DIR/bench/users.json).
    #[arg(long)]
    pub users_file: Option<PathBuf>,
    /// Another server process to charge, as ROLE=PID (e.g. a second gateway: gateway2=1234).
    #[arg(long = "server-pid", value_parser = parse_server_pid)]
    pub server_pids: Vec<Server>,
    /// Where reports go: DIR/<date>/<scenario>-<time>.{json,md}.
    #[arg(long, default_value = "docs/benchmarks")]
    pub out: PathBuf,
    /// Client processes (default: one per 8,000 sessions).
    #[arg(long)]
    pub shards: Option<usize>,
    /// Transport of the Haberci sessions (default: quic; ws for `compare`).
    #[arg(long, value_enum)]
    pub transport: Option<Mix>,
    /// QUIC sessions sharing one UDP socket.
    #[arg(long, default_value_t = 1000)]
    pub sessions_per_socket: usize,
    /// Session handshakes started per second, all shards together.
    #[arg(long, default_value_t = 1000.0)]
    pub ramp: f64,
    #[arg(long, default_value_t = 10_000)]
    pub connect_timeout_ms: u64,
    /// Share TLS session tickets between the sessions of a client process, so that later
    /// handshakes resume (as reconnecting devices do); `false`: every handshake is full.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub tls_resume: bool,
    /// QUIC sessions send a transport PING after this many ms without sending
    /// (`ClientConfig::quic_keep_alive`); default none, as the SDK.
    #[arg(long)]
    pub quic_keep_alive_ms: Option<u64>,
    /// Loopback source addresses for setup API calls (127.0.0.2 …).
    #[arg(long, default_value_t = crate::users::DEFAULT_SOURCE_ADDRESSES)]
    pub source_addresses: u8,
    #[arg(long, default_value_t = crate::users::DEFAULT_SETUP_CONCURRENCY)]
    pub setup_concurrency: usize,
    /// Exit 1 unless every count adds up: no connect or send failure, nothing lost,
    /// duplicated or out of order. (Never a timing threshold.)
    #[arg(long)]
    pub check: bool,
    /// A word added to the report's file name.
    #[arg(long)]
    pub label: Option<String>,
    /// Restart every gateway (same command line and environment) before the run, so memory
    /// per idle connection is measured on fresh processes: an allocator keeps what an earlier
    /// run freed, and new sessions would reuse it unseen.
    #[arg(long)]
    pub fresh_gateways: bool,
}

impl Target {
    /// The transport mix asked for, else the scenario's default.
    pub fn mix(&self, default: Mix) -> Mix {
        self.transport.unwrap_or(default)
    }

    pub fn users_file(&self) -> PathBuf {
        self.users_file
            .clone()
            .unwrap_or_else(|| self.dev_dir.join("bench/users.json"))
    }
}

/// Resolves `host:port` to IPv4 (the loopback family the bench spreads over).
pub async fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("{addr:?} is not HOST:PORT"))?;
    crate::api::resolve_v4(host.trim_matches(['[', ']']), port.parse()?).await
}

pub(crate) fn ca_store(target: &Target) -> anyhow::Result<rustls::RootCertStore> {
    ca_file_store(&target.ca)
}

/// The certificates of the PEM file at `path`, as TLS roots.
pub fn ca_file_store(path: &std::path::Path) -> anyhow::Result<rustls::RootCertStore> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut store = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading the CA {}", path.display()))?
    {
        store.add(cert?)?;
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn gateways_parse_and_bad_ones_are_refused() {
        let g = parse_gateway("localhost:4433,127.0.0.1:8443").unwrap();
        assert_eq!(
            (g.quic.as_str(), g.tcp.as_str()),
            ("localhost:4433", "127.0.0.1:8443")
        );
        for bad in ["localhost:4433", "a:1,b", ":1,b:2", "a:x,b:2"] {
            assert!(parse_gateway(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_mix_alternates() {
        assert_eq!(Mix::Mix.transport(0), TransportKind::Quic);
        assert_eq!(Mix::Mix.transport(1), TransportKind::Ws);
        assert_eq!(Mix::Mix.transport(2), TransportKind::Wt);
        assert_eq!(Mix::Mix.transport(3), TransportKind::Quic);
        assert_eq!(Mix::Ws.transport(0), TransportKind::Ws);
    }
}
