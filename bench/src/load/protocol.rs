//! What the coordinator and its shard processes say to each other.
//!
//! The coordinator starts each shard as `haberci-bench shard --shard i/n` and writes one
//! [`Job`] as a JSON line on its stdin; every later stdin line `go` moves the shard to its
//! next phase, and end of stdin means stop now. The shard writes [`Report`]s as JSON lines on
//! stdout, the last one [`Report::Done`]. Why processes at all: the open-files limit is
//! 20,000 per process (hard), so one process cannot hold 10,000+ WebSocket clients plus their
//! share of everything else.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::report::latency::Buckets;

/// Which transport a session speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// Native QUIC (ALPN `haberci/1`).
    Quic,
    /// WebSocket over TLS (`/v1/ws`).
    Ws,
    /// WebTransport over HTTP/3 (`/v1/rt`), as a browser connects.
    Wt,
    /// Socket.IO (Engine.IO v4 over WebSocket) to the comparison peer, not to Haberci.
    #[value(skip)]
    #[serde(rename = "socketio")]
    SocketIo,
}

/// Settings every shard shares.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Common {
    /// The TLS name the gateways' certificates carry.
    pub server_name: String,
    pub ca: PathBuf,
    /// QUIC sessions per UDP socket (one quinn endpoint each).
    pub sessions_per_socket: usize,
    pub connect_timeout_ms: u64,
    /// Session handshakes started per second by this shard.
    pub ramp_per_sec: f64,
    /// The shard exits by itself after this long, whatever happens.
    pub deadline_secs: u64,
    /// Socket.IO sessions speak plain WebSocket (the peer runs without TLS).
    #[serde(default)]
    pub socketio_plain: bool,
    /// Sessions share TLS session tickets (`--tls-resume`).
    pub tls_resume: bool,
    /// `--quic-keep-alive-ms`.
    #[serde(default)]
    pub quic_keep_alive_ms: Option<u64>,
}

/// One session to open.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionSpec {
    pub user: uuid::Uuid,
    pub token: String,
    pub transport: TransportKind,
    /// The gateway's UDP (QUIC) or TCP (WebSocket) address. WebSocket sessions beyond one
    /// address's ephemeral ports are sent to other loopback addresses of the same gateway
    /// (it listens on all of them).
    pub addr: SocketAddr,
    /// Index of the gateway in the run's list (for the report).
    pub gateway: usize,
    /// The source address to connect from (Socket.IO sessions: 127.0.0.x spreads them over
    /// several ephemeral port ranges).
    #[serde(default)]
    pub source: Option<std::net::IpAddr>,
}

/// A sender, its recipient, and how many messages go from one to the other.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PairSpec {
    pub id: u32,
    pub sender: SessionSpec,
    pub recipient: SessionSpec,
    pub messages: u32,
}

/// A group, as far as one shard is concerned: its sender (if it lives in this shard), its
/// members here (the sender excluded), and how many messages the sender sends.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupSpec {
    pub id: u32,
    pub group: uuid::Uuid,
    pub sender: Option<SessionSpec>,
    pub members: Vec<SessionSpec>,
    pub messages: u32,
}

/// How the message phase of `chat` and `group` runs.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Timing {
    pub duration_ms: u64,
    /// After the last send, how long to wait for deliveries before counting the rest lost.
    pub drain_ms: u64,
    /// Message content size (the stamp plus padding).
    pub content_bytes: usize,
    /// Marks this run's messages: the server may replay messages of an earlier run that
    /// were delivered but not yet acked when it ended (resume from the server's
    /// watermark), and those must not count as duplicates or reorderings.
    pub run_id: u64,
}

/// Where `storm`'s clients go when their gateway dies (`--back`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Back {
    /// Reconnect to another gateway at once; the victim is restarted after the run.
    Other,
    /// Restart the victim at once; clients retry it with backoff.
    Same,
}

/// How `storm` stops its victim (`--signal`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stop {
    /// SIGKILL: a crash; clients notice by their heartbeat or a reset.
    Kill,
    /// SIGTERM: a drain; every session gets `Closing{server_draining}` with its
    /// `retry_after_ms`, and the gateway exits once they are closed.
    Term,
}

/// One shard's share of a storm.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StormJob {
    pub common: Common,
    pub pairs: Vec<PairSpec>,
    pub timing: Timing,
    /// Every gateway's (QUIC, TCP) address, by index.
    pub gateways: Vec<(SocketAddr, SocketAddr)>,
    pub back: Back,
    pub ping_ms: u64,
    pub pong_timeout_ms: u64,
}

/// One shard's share of a churn.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChurnJob {
    pub common: Common,
    pub sessions: Vec<SessionSpec>,
    pub duration_ms: u64,
    /// A session's mean lifetime: sessions / rate.
    pub lifetime_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "scenario", rename_all = "lowercase")]
pub enum Job {
    /// Phases: connect (ramp), then hold until `go`, then close.
    Connect {
        common: Common,
        sessions: Vec<SessionSpec>,
    },
    /// Phases: connect recipients then senders, then on `go` send for `duration_ms` and drain.
    Chat {
        common: Common,
        pairs: Vec<PairSpec>,
        timing: Timing,
    },
    /// Phases: connect, then on `go` chat while a gateway is killed; sessions reconnect and
    /// resume.
    Storm(Box<StormJob>),
    /// Phases: connect, then on `go` close and reopen sessions for the duration.
    Churn(Box<ChurnJob>),
    /// Phases: connect members then senders, then on `go` send to the groups and drain.
    Group {
        common: Common,
        groups: Vec<GroupSpec>,
        timing: Timing,
    },
}

impl Job {
    pub fn common(&self) -> &Common {
        match self {
            Job::Connect { common, .. } | Job::Chat { common, .. } | Job::Group { common, .. } => {
                common
            }
            Job::Storm(job) => &job.common,
            Job::Churn(job) => &job.common,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Report {
    Progress(Counts),
    /// Every session was tried.
    Connected(Counts),
    Done(Box<ShardResult>),
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Counts {
    pub connected: u64,
    pub connect_failed: u64,
    pub sent: u64,
    pub received: u64,
    #[serde(default)]
    pub reconnected: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ShardResult {
    pub connected: u64,
    pub connect_failed: u64,
    /// Why connects failed: error text → count.
    pub failures: BTreeMap<String, u64>,
    /// Session handshake (transport + TLS + Hello/Welcome), µs buckets.
    pub handshake: Buckets,
    /// Connections that ended before the shard closed them.
    pub disconnected: u64,
    /// Chat: sends answered `Sent`.
    pub sent_ok: u64,
    /// Chat: sends refused or unanswered, with why.
    pub send_failed: u64,
    pub send_failures: BTreeMap<String, u64>,
    /// Chat: distinct messages delivered.
    pub received: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// `Sent` but never delivered within the drain time.
    pub lost: u64,
    /// Delivered but not ours or unparsable (must be 0).
    pub unexpected: u64,
    /// Messages of an earlier run, replayed because their ack had not reached the server.
    pub stale: u64,
    /// Send → deliver, µs buckets.
    pub latency: Buckets,
    /// Unix ns of the first send and the last delivery.
    pub first_send_ns: u64,
    pub last_receive_ns: u64,
    /// This shard's own CPU over the measured phase (chat: sending; connect: the ramp).
    pub client_cpu_ms: f64,
    /// Send → deliver per second of sending: (unix second of the send, µs buckets). A list,
    /// not a map: integer map keys do not survive the tagged `Report` enum's JSON.
    #[serde(default)]
    pub timeline: Vec<(u64, Buckets)>,
    /// Group: per group id, per message number, (slowest delivery µs, members that got it)
    /// among this shard's members.
    #[serde(default)]
    pub fanout: Vec<(u32, Vec<(u64, u32)>)>,
    /// Storm: every session whose connection dropped, and how it came back.
    #[serde(default)]
    pub reconnects: Vec<Reconnect>,
}

/// A session that lost its connection during a storm.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Reconnect {
    /// Unix ns: when the client noticed (its events ended).
    pub lost_ns: u64,
    /// Unix ns of the new `Welcome`; 0 if it never came back.
    pub back_ns: u64,
    pub attempts: u32,
    pub from_gateway: usize,
    pub to_gateway: usize,
    /// The successful attempt's handshake, µs.
    pub handshake_us: u64,
}
