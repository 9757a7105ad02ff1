//! Command-line settings, parsed (and checked) before anything connects.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::protocol::TransportKind;
use crate::servers::{Server, parse_server_pid};

#[derive(Debug, Parser)]
#[command(
    name = "haberci-bench",
    about = "Load tests against a running Haberci stack"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open N sessions at a ramp rate, hold them idle, report connects/s, handshake latency
    /// and the gateway's memory per idle connection.
    Connect(ConnectArgs),
    /// N users, half sending 1:1 messages to the other half at R messages/s for D seconds;
    /// report send→deliver latency, losses, and server CPU per 1,000 deliveries.
    Chat(ChatArgs),
    /// Fan-out: groups of G members (made through the API, cached), the owner sends, every
    /// member must get every message; reports the time until the last member has it.
    Group(crate::group::GroupArgs),
    /// A gateway is killed (SIGKILL) mid-chat; its clients reconnect at once and resume.
    /// Reports the time until all are back and any gap, duplicate or reordering.
    Storm(crate::storm::StormArgs),
    /// The database alone: the worker's insert path through PgBouncer at several batch sizes,
    /// and history-page latency on a generated table of 10 million messages.
    Db(crate::db::DbArgs),
    /// Users connecting and leaving continuously at a level session count.
    Churn(crate::churn::ChurnArgs),
    /// The social half on a generated network (100,000 users, 1,000,000 posts, made once in
    /// the dev database): home pages warm and cold, Postgres statements per page, a
    /// celebrity's post reaching a follower, fan-out throughput, and a 95/5 read/write load
    /// over HTTP/2.
    Social(crate::social::SocialArgs),
    /// Media (#16): upload MB/s and server CPU per MB over HTTP/2 and HTTP/3 (against `cp`
    /// on the same disk), image processing time per megapixel, and concurrent 1 MiB range
    /// reads over HTTP/2.
    Media(crate::media::MediaArgs),
    /// Run `connect` and `chat` against the Haberci stack and against the Socket.IO peer
    /// (bench/peers/socketio, started and stopped here) on the same machine in one run;
    /// report both and their ratios.
    Compare(CompareArgs),
    /// Register the first N bench users (once; they are cached) and exit: the slow part of a
    /// large run's setup, done ahead of the measured run.
    Users(UsersArgs),
    /// (internal) A worker process started by the coordinator; reads its job on stdin.
    #[command(hide = true)]
    Shard {
        /// `i/n`, for messages only.
        #[arg(long)]
        shard: String,
    },
}

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

#[derive(Debug, Args, Serialize)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub target: Target,
    /// Sessions to open.
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
    /// Seconds to hold them idle before measuring memory and closing.
    #[arg(long, default_value_t = 10)]
    pub hold: u64,
}

#[derive(Debug, Args, Serialize)]
pub struct UsersArgs {
    #[command(flatten)]
    pub target: Target,
    /// Users the pool must hold.
    #[arg(long)]
    pub count: usize,
}

#[derive(Debug, Args, Serialize)]
pub struct ChatArgs {
    #[command(flatten)]
    pub target: Target,
    /// Connected users (half senders, half recipients).
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Messages per second, all senders together.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Total messages instead of a duration (duration = messages / rate).
    #[arg(long)]
    pub messages: Option<u64>,
    /// Seconds to wait for deliveries after the last send.
    #[arg(long, default_value_t = 10)]
    pub drain: u64,
    /// Bytes of message content.
    #[arg(long, default_value_t = 100)]
    pub content_bytes: usize,
}

#[derive(Debug, Args, Serialize)]
pub struct CompareArgs {
    #[command(flatten)]
    pub target: Target,
    /// Which scenarios to compare.
    #[arg(long, value_delimiter = ',', default_value = "connect,chat")]
    pub scenarios: Vec<CompareScenario>,
    /// connect: sessions to open on each system.
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
    /// connect: seconds to hold them idle.
    #[arg(long, default_value_t = 5)]
    pub hold: u64,
    /// chat: connected users on each system (half senders, half recipients).
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// chat: messages per second.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// chat: seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// chat: total messages instead of a duration.
    #[arg(long)]
    pub messages: Option<u64>,
    /// chat: seconds to wait for deliveries after the last send.
    #[arg(long, default_value_t = 10)]
    pub drain: u64,
    #[arg(long, default_value_t = 100)]
    pub content_bytes: usize,
    /// The Socket.IO peer's folder (`npm ci` done there).
    #[arg(long, default_value = "bench/peers/socketio")]
    pub peer_dir: PathBuf,
    /// Socket.IO nodes (processes) sharing the peer's Redis.
    #[arg(long, default_value_t = 2)]
    pub peer_nodes: usize,
    /// The peer's Redis listens here, node i on PORT + i.
    #[arg(long, default_value_t = 9100)]
    pub peer_port: u16,
    /// The peer serves plain WebSocket instead of TLS (Haberci always pays for TLS).
    #[arg(long)]
    pub peer_plain: bool,
    /// The peer's TLS certificate and key (default: the dev stack's, DEV_DIR/certs/server*.pem).
    #[arg(long)]
    pub peer_cert: Option<PathBuf>,
    #[arg(long)]
    pub peer_key: Option<PathBuf>,
    #[arg(long, default_value = "node")]
    pub node: String,
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CompareScenario {
    Connect,
    Chat,
}

/// Resolves `host:port` to IPv4 (the loopback family the bench spreads over).
pub async fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("{addr:?} is not HOST:PORT"))?;
    crate::api::resolve_v4(host.trim_matches(['[', ']']), port.parse()?).await
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

    #[test]
    fn the_cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "haberci-bench",
            "chat",
            "--users",
            "50",
            "--messages",
            "200",
        ])
        .unwrap();
        let Command::Chat(chat) = cli.command else {
            panic!("not chat")
        };
        assert_eq!((chat.users, chat.messages), (50, Some(200)));
        assert_eq!(chat.target.gateways.len(), 1);
    }
}
