//! `connect`: opens `--sessions` sessions at the ramp rate, holds them idle for `--hold`
//! seconds, and reports connects per second, handshake latency, and the edge processes' memory
//! and CPU per idle session. `compare` runs the same measurement ([`measure_connect`]) against
//! the Socket.IO peer.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::MultiProgress;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::conn;
use crate::load::coordinator::{Shards, merged, merged_counts};
use crate::load::plan::{DEADLINE_SLACK, Edges, Side, common, participants, shard_count};
use crate::load::protocol::{Common, Job, Report, SessionSpec, ShardResult};
use crate::load::shard::{CLOSE_WAIT, Live, cpu_ms_now, drain_events, open_sessions, wait_go};
use crate::report::charts::{cdf_points, cpu_chart};
use crate::report::latency::Summary;
use crate::report::plots::Chart;
use crate::report::{
    self, LATENCY_HEADER, Machine, Measured, REUSED_MEMORY, bar, command_line, latency_row,
    setup_line,
};
use crate::sampling::ledger::{self, Ledger, Stores};
use crate::sampling::procfs;
use crate::sampling::servers::{ServerSet, is_edge};
use crate::sampling::{SAMPLE_EVERY, Sampler, ServerSample};
use crate::target::{Mix, Target};
use crate::users::SetupStats;

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

#[derive(Debug, Serialize)]
pub struct ConnectFigures {
    pub system: &'static str,
    pub sessions: usize,
    pub connected: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    pub ramp_seconds: f64,
    pub connects_per_sec: f64,
    pub handshake: Summary,
    pub gateway_rss_before_kib: u64,
    pub gateway_rss_after_kib: u64,
    /// Each edge process (gateway, Socket.IO node) before the ramp and after the hold, KiB.
    pub rss_before_kib_by_process: BTreeMap<String, u64>,
    pub rss_after_kib_by_process: BTreeMap<String, u64>,
    /// (after − before) / connected.
    pub bytes_per_idle_session: f64,
    /// Gateway CPU during the ramp / connected.
    pub gateway_cpu_ms_per_handshake: f64,
    pub server_cpu_ms_ramp: BTreeMap<String, f64>,
    /// How long the sessions were held idle after the ramp.
    pub hold_seconds: f64,
    pub server_cpu_ms_hold: BTreeMap<String, f64>,
    /// What holding sessions costs: edge (gateway) CPU over the hold, in µs per session per
    /// second. × sessions ÷ 10⁶ = cores an idle population keeps busy.
    pub edge_cpu_us_per_idle_session_second: f64,
    /// The same for the load client's processes.
    pub client_cpu_us_per_idle_session_second: f64,
    pub disconnected_while_idle: u64,
    pub client_cpu_ms: f64,
    /// The servers every second of the ramp and the hold (`done` = sessions connected).
    pub samples: Vec<ServerSample>,
    pub handshake_cdf: Vec<(f64, f64)>,
    /// What the servers asked of the kernel, Redis and Postgres per connect (the ramp).
    pub ledger: Ledger,
}

impl ConnectFigures {
    pub fn counts_add_up(&self) -> bool {
        self.failed == 0 && self.disconnected_while_idle == 0
    }

    /// Edge memory against sessions connected.
    pub fn memory_chart(&self, title: &str) -> Chart {
        Chart::new(title, "sessions connected", "edge processes RSS, MiB").line(
            self.system,
            self.samples
                .iter()
                .map(|s| (s.done as f64, s.edge_rss_kib as f64 / 1024.0))
                .collect(),
        )
    }
}

/// Opens `sessions` sessions at the ramp rate, holds them `hold` s, measures, closes.
pub async fn measure_connect(
    target: &Target,
    side: &Side,
    servers: &ServerSet,
    mix: Mix,
    sessions: usize,
    hold: u64,
    multi: &MultiProgress,
) -> anyhow::Result<Measured<ConnectFigures>> {
    let load_before = procfs::load_average();
    let shards_n = shard_count(target, sessions);
    let ramp_time = Duration::from_secs_f64(sessions as f64 / target.ramp.max(0.001));
    let run_time =
        ramp_time + Duration::from_millis(target.connect_timeout_ms) + Duration::from_secs(hold);
    let (users, setup) =
        participants(target, side, sessions, run_time + DEADLINE_SLACK, multi).await?;
    let mut edges = Edges::resolve(target, side).await?;
    let g = edges.len();
    let specs: Vec<SessionSpec> = (0..sessions)
        .map(|i| edges.session(&users[i % users.len()], mix, i, i % g))
        .collect();
    let common = common(target, side, shards_n, run_time + DEADLINE_SLACK);
    let chunk = specs.len().div_ceil(shards_n).max(1);
    let jobs = specs
        .chunks(chunk)
        .map(|c| Job::Connect {
            common: common.clone(),
            sessions: c.to_vec(),
        })
        .collect();
    let mut shards = Shards::start(jobs).await?;
    let ticks = procfs::clock_ticks_per_sec();
    let rss_before = servers.gateway_rss_kib()?;
    let rss_before_by = servers.edge_rss_by_role();
    let stores = match side {
        Side::Haberci => Stores::from_env(),
        Side::SocketIo { .. } => Stores::default(),
    };
    let ledger_before = ledger::snapshot(servers, &stores).await;
    let cpu_before = servers.cpu();
    let progress = bar(multi, sessions as u64, side.name());
    let mut sampler = Sampler::start(servers);
    let t0 = Instant::now();
    shards.go().await?;
    let counts = shards
        .wait_connected(run_time + DEADLINE_SLACK, |c| {
            progress.set_position(c.connected + c.connect_failed);
            progress.set_message(format!("{} failed", c.connect_failed));
            sampler.tick(c.connected);
        })
        .await?;
    let ramp_seconds = t0.elapsed().as_secs_f64();
    let cpu_ramp = cpu_before.delta_ms(&servers.cpu(), ticks);
    let ledger_after = ledger::snapshot(servers, &stores).await;
    let ledger = Ledger::between(
        &ledger_before,
        &ledger_after,
        "connects",
        counts.connected,
        1,
    );
    progress.finish_with_message(format!(
        "{} connected, {} failed in {ramp_seconds:.1}s; holding {hold}s",
        counts.connected, counts.connect_failed
    ));
    sampler.sample(counts.connected);
    let cpu_hold_start = servers.cpu();
    let client_ticks_hold_start = shards.cpu_ticks();
    let hold_start = Instant::now();
    let hold_end = hold_start + Duration::from_secs(hold);
    while Instant::now() < hold_end {
        tokio::time::sleep(SAMPLE_EVERY.min(hold_end - Instant::now())).await;
        sampler.sample(counts.connected);
    }
    let hold_seconds = hold_start.elapsed().as_secs_f64();
    let cpu_hold = cpu_hold_start.delta_ms(&servers.cpu(), ticks);
    let client_cpu_ms_hold =
        shards.cpu_ticks().saturating_sub(client_ticks_hold_start) as f64 * 1000.0 / ticks as f64;
    let rss_after = servers.gateway_rss_kib()?;
    let rss_after_by = servers.edge_rss_by_role();
    shards.go().await?;
    let results = shards.wait_done(Duration::from_secs(60), |_| {}).await?;
    let connected: u64 = results.iter().map(|r| r.connected).sum();
    let failed: u64 = results.iter().map(|r| r.connect_failed).sum();
    let gateway_cpu = edge_cpu_ms(&cpu_ramp);
    let edge_cpu_hold = edge_cpu_ms(&cpu_hold);
    let session_seconds = counts.connected.max(1) as f64 * hold_seconds.max(0.001);
    let handshake = merged(&results, |r| &r.handshake);
    let figures = ConnectFigures {
        system: side.name(),
        sessions,
        connected,
        failed,
        failures: merged_counts(results.iter().map(|r| r.failures.clone())),
        ramp_seconds,
        connects_per_sec: connected as f64 / ramp_seconds,
        handshake: handshake.summary(),
        gateway_rss_before_kib: rss_before,
        gateway_rss_after_kib: rss_after,
        rss_before_kib_by_process: rss_before_by,
        rss_after_kib_by_process: rss_after_by,
        bytes_per_idle_session: (rss_after as f64 - rss_before as f64) * 1024.0
            / connected.max(1) as f64,
        gateway_cpu_ms_per_handshake: gateway_cpu / connected.max(1) as f64,
        server_cpu_ms_ramp: cpu_ramp,
        hold_seconds,
        server_cpu_ms_hold: cpu_hold,
        edge_cpu_us_per_idle_session_second: edge_cpu_hold * 1000.0 / session_seconds,
        client_cpu_us_per_idle_session_second: client_cpu_ms_hold * 1000.0 / session_seconds,
        disconnected_while_idle: results.iter().map(|r| r.disconnected).sum(),
        client_cpu_ms: results.iter().map(|r| r.client_cpu_ms).sum(),
        samples: sampler.samples,
        handshake_cdf: cdf_points(&handshake),
        ledger,
    };
    Ok(Measured {
        figures,
        setup,
        machine: Machine::now(load_before, shards.count()),
    })
}

/// CPU of the edge processes (gateways, Socket.IO nodes) in a per-role breakdown.
fn edge_cpu_ms(per_role: &BTreeMap<String, f64>) -> f64 {
    per_role
        .iter()
        .filter(|(role, _)| is_edge(role))
        .map(|(_, ms)| ms)
        .sum()
}

pub async fn connect(args: ConnectArgs) -> anyhow::Result<bool> {
    let target = &args.target;
    let started_at = report::now();
    if target.fresh_gateways {
        crate::revival::restart_gateways(target).await?;
    }
    let servers = ServerSet::discover(&target.dev_dir, &target.server_pids)?;
    let multi = report::progress();
    let mix = target.mix(Mix::Quic);
    let m = measure_connect(
        target,
        &Side::Haberci,
        &servers,
        mix,
        args.sessions,
        args.hold,
        &multi,
    )
    .await?;
    let f = &m.figures;
    let md = markdown(&args, mix, f, &m.machine, &m.setup);
    let charts = vec![
        (
            "memory",
            f.memory_chart("gateway memory while sessions connect and idle"),
        ),
        (
            "handshake-cdf",
            Chart::new("handshake latency", "percentile", "ms")
                .nines()
                .line("handshake", f.handshake_cdf.clone()),
        ),
        (
            "cpu",
            cpu_chart("server CPU during the ramp and the hold", &f.samples),
        ),
    ];
    report::write(
        target,
        "connect",
        &report::Envelope {
            scenario: "connect",
            command: command_line(),
            started_at,
            machine: m.machine,
            settings: &args,
            servers: servers.processes(),
            setup: m.setup.clone(),
            figures: f,
        },
        md,
        charts,
    )?;
    Ok(f.counts_add_up() || !target.check)
}

fn markdown(
    args: &ConnectArgs,
    mix: Mix,
    f: &ConnectFigures,
    machine: &Machine,
    setup: &SetupStats,
) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### connect: {} {:?} sessions, ramp {}/s, hold {} s\n",
        args.sessions, mix, args.target.ramp, args.hold
    );
    let _ = writeln!(md, "{}; {}\n", machine.line(), setup_line(setup));
    let _ = writeln!(md, "| what | figure |\n|---|---:|");
    let _ = writeln!(
        md,
        "| connected / failed | {} / {} |",
        f.connected, f.failed
    );
    let _ = writeln!(md, "| connects/s | {:.0} |", f.connects_per_sec);
    let _ = writeln!(
        md,
        "| all gateways, RSS before → after | {:.1} → {:.1} MiB |",
        f.gateway_rss_before_kib as f64 / 1024.0,
        f.gateway_rss_after_kib as f64 / 1024.0
    );
    for (role, before) in &f.rss_before_kib_by_process {
        if let Some(after) = f.rss_after_kib_by_process.get(role) {
            let _ = writeln!(
                md,
                "| {role} RSS before → after | {:.1} → {:.1} MiB |",
                *before as f64 / 1024.0,
                *after as f64 / 1024.0
            );
        }
    }
    let _ = writeln!(
        md,
        "| **gateway memory per idle session** | **{:.1} KB** |",
        f.bytes_per_idle_session / 1000.0
    );
    let _ = writeln!(
        md,
        "| gateway CPU per handshake | {:.3} ms |",
        f.gateway_cpu_ms_per_handshake
    );
    let _ = writeln!(
        md,
        "| gateway CPU while idle, per session | {:.2} µs/s ({:.2} cores per 100K sessions) |",
        f.edge_cpu_us_per_idle_session_second,
        f.edge_cpu_us_per_idle_session_second / 10.0
    );
    let _ = writeln!(
        md,
        "| client CPU while idle, per session | {:.2} µs/s |",
        f.client_cpu_us_per_idle_session_second
    );
    let _ = writeln!(md, "| dropped while idle | {} |", f.disconnected_while_idle);
    if f.bytes_per_idle_session <= 0.0 {
        let _ = writeln!(md, "| note | {REUSED_MEMORY} |");
    }
    let _ = writeln!(md, "| client CPU (ramp) | {:.0} ms |\n", f.client_cpu_ms);
    md.push_str(LATENCY_HEADER);
    latency_row(
        &mut md,
        "handshake (transport + TLS + Hello/Welcome)",
        &f.handshake,
    );
    for (why, n) in &f.failures {
        let _ = writeln!(md, "\nfailure ×{n}: {why}");
    }
    let _ = writeln!(md, "\n{}", f.ledger.markdown());
    md
}

// ---- the shard's side --------------------------------------------------------------------------

pub(crate) async fn shard(
    common: Common,
    sessions: Vec<SessionSpec>,
    live: &Arc<Live>,
    out: &mpsc::UnboundedSender<Report>,
    mut go: mpsc::UnboundedReceiver<()>,
) -> anyhow::Result<ShardResult> {
    let ticks = procfs::clock_ticks_per_sec();
    wait_go(&mut go).await?;
    let cpu0 = cpu_ms_now(ticks);
    let opened = open_sessions(&common, &sessions, live).await?;
    let client_cpu_ms = cpu_ms_now(ticks) - cpu0;
    let mut clients = Vec::new();
    let mut drains = Vec::new();
    for (client, inbox) in opened.clients.into_iter().flatten() {
        drains.push(drain_events(inbox, live.clone()));
        clients.push(client);
    }
    let _ = out.send(Report::Connected(live.counts()));
    // Hold until told to close (or stdin ends).
    let _ = go.recv().await;
    let disconnected = live.disconnected.load(Ordering::Relaxed);
    conn::close_all(&clients, CLOSE_WAIT).await;
    for d in drains {
        d.abort();
    }
    Ok(ShardResult {
        connected: clients.len() as u64,
        connect_failed: opened.failures.values().sum(),
        failures: opened.failures,
        handshake: opened.handshake.buckets(),
        disconnected,
        client_cpu_ms,
        ..ShardResult::default()
    })
}
