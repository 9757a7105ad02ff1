//! `compare`: the same `connect` and `chat` against the Haberci stack and against the
//! Socket.IO peer, one after the other on the same machine, with ratios.
//!
//! Both sides are driven by the same shard code and charged the same way: every server
//! process of a side (Haberci: gateways, api, workers, Redis, PgBouncer, Postgres; the peer:
//! its Node processes and its Redis) for CPU, its edge processes (gateways; Node processes) for
//! memory per idle connection. The peer is a relay without a database, so Haberci's CPU
//! includes persisting every message and the peer's does not: the ratio says what
//! durability, ordering and resume cost on top of relaying.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::load::plan::Side;
use crate::peer::{Peer, PeerSpec};
use crate::report::charts::cpu_per_1000;
use crate::report::plots::Chart;
use crate::report::{self, Measured, command_line};
use crate::sampling::servers::ServerSet;
use crate::scenarios::chat::{ChatFigures, ChatPlan, measure_chat};
use crate::scenarios::connect::{ConnectFigures, measure_connect};
use crate::target::{Mix, Target};

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
    /// Seconds between connected and the first send, outside the measured window (as in
    /// `chat --settle`).
    #[arg(long, default_value_t = 0)]
    pub settle: u64,
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

/// What the issue measured on the seed's stack (10K clients, 5K msg/s, this machine).
pub const SEED_REFERENCE: &str = "the seed's stack, as measured for issue #8 at 10K clients / \
5K msg/s on this machine: p99 100.8 ms, 172 ms server CPU per 1,000 deliveries, 17 KB per \
idle connection";

/// Haberci's figure ÷ the peer's (below 1: Haberci needs less).
#[derive(Debug, Default, Serialize)]
pub struct Ratios {
    pub bytes_per_idle_session: Option<f64>,
    pub edge_cpu_ms_per_handshake: Option<f64>,
    pub handshake_p99: Option<f64>,
    pub server_cpu_per_1000_deliveries: Option<f64>,
    pub latency_p50: Option<f64>,
    pub latency_p99: Option<f64>,
    pub latency_p999: Option<f64>,
}

/// a ÷ b when both are meaningful (a memory delta below zero is not: see `--fresh-gateways`).
fn ratio(a: f64, b: f64) -> Option<f64> {
    (a.is_finite() && b.is_finite() && a >= 0.0 && b > 0.0).then(|| a / b)
}

impl Ratios {
    fn of(
        connect: Option<(&ConnectFigures, &ConnectFigures)>,
        chat: Option<(&ChatFigures, &ChatFigures)>,
    ) -> Ratios {
        let mut r = Ratios::default();
        if let Some((h, s)) = connect {
            r.bytes_per_idle_session = ratio(h.bytes_per_idle_session, s.bytes_per_idle_session);
            r.edge_cpu_ms_per_handshake = ratio(
                h.gateway_cpu_ms_per_handshake,
                s.gateway_cpu_ms_per_handshake,
            );
            r.handshake_p99 = ratio(h.handshake.p99_ms, s.handshake.p99_ms);
        }
        if let Some((h, s)) = chat {
            r.server_cpu_per_1000_deliveries = ratio(
                h.server_cpu_ms_per_1000_deliveries,
                s.server_cpu_ms_per_1000_deliveries,
            );
            r.latency_p50 = ratio(h.latency.p50_ms, s.latency.p50_ms);
            r.latency_p99 = ratio(h.latency.p99_ms, s.latency.p99_ms);
            r.latency_p999 = ratio(h.latency.p999_ms, s.latency.p999_ms);
        }
        r
    }
}

#[derive(Debug, Serialize)]
pub struct CompareFigures {
    pub haberci_transport: Mix,
    pub peer_nodes: usize,
    pub peer_tls: bool,
    pub connect: Option<Pair<ConnectFigures>>,
    pub chat: Option<Pair<ChatFigures>>,
    pub ratios: Ratios,
    pub seed_reference: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Pair<F> {
    pub haberci: F,
    pub socketio: F,
}

pub async fn compare(args: CompareArgs) -> anyhow::Result<bool> {
    let target = &args.target;
    let started_at = report::now();
    if target.fresh_gateways {
        crate::revival::restart_gateways(target).await?;
    }
    let load_before = crate::sampling::procfs::load_average();
    let haberci_servers = ServerSet::discover(&target.dev_dir, &target.server_pids)?;
    let mix = target.mix(Mix::Ws);
    let certs = target.dev_dir.join("certs");
    let spec = PeerSpec {
        dir: args.peer_dir.clone(),
        nodes: args.peer_nodes.max(1),
        port: args.peer_port,
        tls: (!args.peer_plain).then(|| {
            (
                args.peer_cert
                    .clone()
                    .unwrap_or_else(|| certs.join("server.pem")),
                args.peer_key
                    .clone()
                    .unwrap_or_else(|| certs.join("server-key.pem")),
            )
        }),
        node: args.node.clone(),
        redis_server: args.redis_server.clone(),
    };
    let multi = report::progress();
    let peer = Peer::start(&spec).await?;
    let side = Side::SocketIo {
        nodes: peer.nodes.clone(),
        secret: peer.secret.clone(),
        plain: args.peer_plain,
    };
    let peer_servers = ServerSet::of(peer.servers.clone());
    let plan = ChatPlan {
        users: args.users,
        rate: args.rate,
        duration_s: args.duration,
        messages: args.messages,
        drain: args.drain,
        settle: args.settle,
        content_bytes: args.content_bytes,
    };
    let run = async {
        let mut connect = None;
        let mut chat = None;
        let mut setups = Vec::new();
        let mut shards = 0;
        if args.scenarios.contains(&CompareScenario::Connect) {
            let h = measure_connect(
                target,
                &Side::Haberci,
                &haberci_servers,
                mix,
                args.sessions,
                args.hold,
                &multi,
            )
            .await?;
            let s = measure_connect(
                target,
                &side,
                &peer_servers,
                mix,
                args.sessions,
                args.hold,
                &multi,
            )
            .await?;
            shards = shards.max(h.machine.client_processes);
            setups.push(h.setup.clone());
            connect = Some(Pair {
                haberci: h.figures,
                socketio: s.figures,
            });
        }
        if args.scenarios.contains(&CompareScenario::Chat) {
            let h: Measured<ChatFigures> =
                measure_chat(target, &Side::Haberci, &haberci_servers, mix, plan, &multi).await?;
            let s = measure_chat(target, &side, &peer_servers, mix, plan, &multi).await?;
            shards = shards.max(h.machine.client_processes);
            setups.push(h.setup.clone());
            chat = Some(Pair {
                haberci: h.figures,
                socketio: s.figures,
            });
        }
        anyhow::Ok((connect, chat, setups, shards))
    }
    .await;
    let mut servers = haberci_servers.processes();
    servers.extend(peer.servers.iter().cloned());
    peer.stop().await;
    let (connect, chat, setups, shards) = run?;
    let ratios = Ratios::of(
        connect.as_ref().map(|p| (&p.haberci, &p.socketio)),
        chat.as_ref().map(|p| (&p.haberci, &p.socketio)),
    );
    let ok = connect
        .as_ref()
        .is_none_or(|p| p.haberci.counts_add_up() && p.socketio.counts_add_up())
        && chat
            .as_ref()
            .is_none_or(|p| p.haberci.counts_add_up() && p.socketio.counts_add_up());
    let figures = CompareFigures {
        haberci_transport: mix,
        peer_nodes: spec.nodes,
        peer_tls: spec.tls.is_some(),
        connect,
        chat,
        ratios,
        seed_reference: SEED_REFERENCE,
    };
    let machine = report::Machine::now(load_before, shards);
    let md = markdown(&args, &figures, &machine);
    let charts = charts(&figures);
    report::write(
        target,
        "compare",
        &report::Envelope {
            scenario: "compare",
            command: command_line(),
            started_at,
            machine,
            settings: &args,
            servers,
            setup: setups.into_iter().next().unwrap_or_default(),
            figures: &figures,
        },
        md,
        charts,
    )?;
    if target.check && !ok {
        eprintln!("haberci-bench: the counts do not add up on one side (see the report)");
    }
    Ok(ok || !target.check)
}

fn charts(f: &CompareFigures) -> Vec<(&'static str, Chart)> {
    let mut charts = Vec::new();
    if let Some(c) = &f.connect {
        let mut memory = c
            .haberci
            .memory_chart("edge memory while sessions connect and idle");
        memory
            .series
            .extend(c.socketio.memory_chart("").series.into_iter().map(|mut s| {
                s.name = "socketio".into();
                s
            }));
        charts.push(("memory", memory));
    }
    if let Some(c) = &f.chat {
        charts.push((
            "latency-cdf",
            Chart::new("send → deliver", "percentile", "ms")
                .nines()
                .line("haberci", c.haberci.latency_cdf.clone())
                .line("socketio", c.socketio.latency_cdf.clone()),
        ));
        charts.push((
            "cpu-per-1000",
            Chart::new(
                "server CPU per 1,000 deliveries",
                "second",
                "ms of CPU per 1,000 deliveries",
            )
            .line("haberci", cpu_per_1000(&c.haberci.samples))
            .line("socketio", cpu_per_1000(&c.socketio.samples)),
        ));
    }
    charts
}

fn times(r: Option<f64>) -> String {
    r.map_or_else(|| "–".into(), |r| format!("{r:.2}×"))
}

pub fn markdown(args: &CompareArgs, f: &CompareFigures, machine: &report::Machine) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### compare: Haberci ({:?}) vs Socket.IO 4.8 ({} node(s) + Redis, {})\n",
        f.haberci_transport,
        f.peer_nodes,
        if f.peer_tls { "TLS" } else { "plain WebSocket" }
    );
    let _ = writeln!(md, "{}\n", machine.line());
    let _ = writeln!(
        md,
        "Ratios are Haberci ÷ Socket.IO (below 1: Haberci needs less). Haberci stores every \
         message in Postgres before delivering it; the peer only relays.\n"
    );
    let _ = writeln!(
        md,
        "| what | Haberci | Socket.IO | ratio |\n|---|---:|---:|---:|"
    );
    if let Some(c) = &f.connect {
        let (h, s) = (&c.haberci, &c.socketio);
        let _ = writeln!(
            md,
            "| connect: sessions connected / failed | {} / {} | {} / {} | |",
            h.connected, h.failed, s.connected, s.failed
        );
        let _ = writeln!(
            md,
            "| **memory per idle connection** | {:.1} KB | {:.1} KB | **{}** |",
            h.bytes_per_idle_session / 1000.0,
            s.bytes_per_idle_session / 1000.0,
            times(f.ratios.bytes_per_idle_session)
        );
        let _ = writeln!(
            md,
            "| edge CPU per handshake | {:.3} ms | {:.3} ms | {} |",
            h.gateway_cpu_ms_per_handshake,
            s.gateway_cpu_ms_per_handshake,
            times(f.ratios.edge_cpu_ms_per_handshake)
        );
        let _ = writeln!(
            md,
            "| handshake p50 / p99 | {:.1} / {:.1} ms | {:.1} / {:.1} ms | {} |",
            h.handshake.p50_ms,
            h.handshake.p99_ms,
            s.handshake.p50_ms,
            s.handshake.p99_ms,
            times(f.ratios.handshake_p99)
        );
        let _ = writeln!(
            md,
            "| connects/s | {:.0} | {:.0} | |",
            h.connects_per_sec, s.connects_per_sec
        );
    }
    if let Some(c) = &f.chat {
        let (h, s) = (&c.haberci, &c.socketio);
        let _ = writeln!(
            md,
            "| chat: {} users, {} msg/s for {:.0} s: delivered / sent | {} / {} | {} / {} | |",
            args.users, args.rate, h.duration_s, h.delivered, h.sent_ok, s.delivered, s.sent_ok
        );
        let _ = writeln!(
            md,
            "| lost / duplicated / out of order | {} / {} / {} | {} / {} / {} | |",
            h.lost, h.duplicates, h.out_of_order, s.lost, s.duplicates, s.out_of_order
        );
        let _ = writeln!(
            md,
            "| **server CPU per 1,000 deliveries** | {:.1} ms | {:.1} ms | **{}** |",
            h.server_cpu_ms_per_1000_deliveries,
            s.server_cpu_ms_per_1000_deliveries,
            times(f.ratios.server_cpu_per_1000_deliveries)
        );
        for (what, hv, sv, r) in [
            (
                "p50",
                h.latency.p50_ms,
                s.latency.p50_ms,
                f.ratios.latency_p50,
            ),
            (
                "**p99**",
                h.latency.p99_ms,
                s.latency.p99_ms,
                f.ratios.latency_p99,
            ),
            (
                "p99.9",
                h.latency.p999_ms,
                s.latency.p999_ms,
                f.ratios.latency_p999,
            ),
            ("max", h.latency.max_ms, s.latency.max_ms, None),
        ] {
            let _ = writeln!(
                md,
                "| send → deliver {what} | {hv:.2} ms | {sv:.2} ms | {} |",
                times(r)
            );
        }
        let _ = writeln!(
            md,
            "| delivered/s | {:.0} | {:.0} | |",
            h.delivered_per_sec, s.delivered_per_sec
        );
        let roles = |f: &ChatFigures| {
            f.server_cpu_ms
                .iter()
                .map(|(role, ms)| format!("{role} {ms:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            md,
            "| server CPU, ms | {:.0}: {} | {:.0}: {} | |",
            h.server_cpu_ms_total,
            roles(h),
            s.server_cpu_ms_total,
            roles(s)
        );
    }
    if f.connect
        .as_ref()
        .is_some_and(|c| c.haberci.bytes_per_idle_session <= 0.0)
    {
        let _ = writeln!(md, "\n{}", crate::report::REUSED_MEMORY);
    }
    let _ = writeln!(md, "\nReference: {}.", f.seed_reference);
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_haberci_over_socketio_and_absent_without_a_divisor() {
        assert_eq!(ratio(50.0, 100.0), Some(0.5));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
        assert_eq!(ratio(-100.0, 1.0), None);
        assert_eq!(times(Some(0.456)), "0.46×");
        assert_eq!(times(None), "–");
    }
}
