//! The coordinator's side of `connect` and `chat`, and what every scenario shares: plan the
//! sessions, set up users (Haberci's through the API; the Socket.IO peer's minted), drive the
//! shards, sample the servers during the measured phase, and report.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::api::ApiTarget;
use crate::cli::{ChatArgs, ConnectArgs, Mix, Target, UsersArgs};
use crate::coordinator::Shards;
use crate::latency::{Latency, Summary};
use crate::plots::{self, Chart};
use crate::procfs;
use crate::protocol::{Common, Job, PairSpec, SessionSpec, ShardResult, Timing, TransportKind};
use crate::report::{self, Machine};
use crate::servers::{CpuSnapshot, ServerSet, is_edge};
use crate::users::{Pool, SetupStats, loopback_sources};

/// Sessions per shard process when `--shards` is not given: well under the 20,000
/// open-files limit (a WebSocket session is one file; QUIC shares sockets).
const SESSIONS_PER_SHARD: usize = 8_000;
/// WebSocket sessions per address pair: one (source, destination) address pair has ~28,000
/// ephemeral ports. The client crate cannot bind a source address, so beyond this Haberci
/// sessions go to 127.0.0.2, 127.0.0.3, … of the same gateway (it listens on `[::]`); the
/// Socket.IO client binds 127.0.0.2, 127.0.0.3, … as its source instead (the peer listens on
/// 127.0.0.1 only). Either way each gets its own 4-tuple space.
const WS_SESSIONS_PER_ADDRESS: usize = 20_000;
/// Slack added to every shard deadline.
pub(crate) const DEADLINE_SLACK: Duration = Duration::from_secs(120);
/// How often the servers are sampled for the plots.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

pub(crate) fn bar(multi: &MultiProgress, len: u64, what: &str) -> ProgressBar {
    let bar = multi.add(ProgressBar::new(len));
    bar.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:40}] {pos}/{len} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_owned());
    bar
}

/// The system under test: the Haberci stack, or the Socket.IO peer.
#[derive(Clone, Debug)]
pub enum Side {
    Haberci,
    SocketIo {
        nodes: Vec<SocketAddr>,
        secret: Vec<u8>,
        plain: bool,
    },
}

impl Side {
    pub fn name(&self) -> &'static str {
        match self {
            Side::Haberci => "haberci",
            Side::SocketIo { .. } => "socketio",
        }
    }
}

/// Someone who connects: a user id and an access token.
#[derive(Clone, Debug)]
pub struct Participant {
    pub id: uuid::Uuid,
    pub token: String,
}

/// `n` participants valid for `valid_for`: Haberci's bench users (registered once, cached,
/// refreshed), or for the peer fresh ids with tokens signed by its secret.
pub(crate) async fn participants(
    target: &Target,
    side: &Side,
    n: usize,
    valid_for: Duration,
    multi: &MultiProgress,
) -> anyhow::Result<(Vec<Participant>, SetupStats)> {
    match side {
        Side::Haberci => {
            let roots = ca_store(target)?;
            let api = ApiTarget::new(&target.api, roots).await?;
            let mut pool = Pool::open(&target.users_file(), &target.api)?;
            let progress = bar(multi, n as u64, "users");
            let stats = pool
                .prepare(
                    &api,
                    n,
                    valid_for,
                    &loopback_sources(target.source_addresses),
                    target.setup_concurrency,
                    &progress,
                )
                .await?;
            progress.finish_with_message(format!(
                "registered {}, refreshed {}, logged in {}, reused {} in {:.1}s",
                stats.registered,
                stats.refreshed,
                stats.logged_in,
                stats.reused_tokens,
                stats.seconds
            ));
            Ok((
                pool.users()[..n]
                    .iter()
                    .map(|u| Participant {
                        id: u.id,
                        token: u.access_token.clone(),
                    })
                    .collect(),
                stats,
            ))
        }
        Side::SocketIo { secret, .. } => {
            let started = Instant::now();
            let now = crate::users::unix_now();
            let all = (0..n)
                .map(|_| {
                    let id = uuid::Uuid::new_v4();
                    Participant {
                        id,
                        token: crate::socketio::hs256_token(
                            secret,
                            &id.to_string(),
                            now,
                            valid_for,
                        ),
                    }
                })
                .collect();
            Ok((
                all,
                SetupStats {
                    reused_tokens: 0,
                    seconds: started.elapsed().as_secs_f64(),
                    ..SetupStats::default()
                },
            ))
        }
    }
}

pub(crate) fn ca_store(target: &Target) -> anyhow::Result<rustls::RootCertStore> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut store = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&target.ca)
        .with_context(|| format!("reading the CA {}", target.ca.display()))?
    {
        store.add(cert?)?;
    }
    Ok(store)
}

/// Where sessions connect: Haberci's gateways (QUIC and TCP addresses) or the peer's nodes.
pub(crate) struct Edges {
    side: Side,
    gateways: Vec<(SocketAddr, SocketAddr)>,
    ws_index: usize,
}

impl Edges {
    pub(crate) async fn resolve(target: &Target, side: &Side) -> anyhow::Result<Edges> {
        let mut gateways = Vec::new();
        match side {
            Side::Haberci => {
                for g in &target.gateways {
                    gateways.push((
                        crate::cli::resolve(&g.quic).await?,
                        crate::cli::resolve(&g.tcp).await?,
                    ));
                }
            }
            Side::SocketIo { nodes, .. } => {
                gateways.extend(nodes.iter().map(|n| (*n, *n)));
            }
        }
        if gateways.is_empty() {
            bail!("no gateway to connect to");
        }
        Ok(Edges {
            side: side.clone(),
            gateways,
            ws_index: 0,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.gateways.len()
    }

    /// The session of `who` as the `i`-th session of the run, on gateway (or node) `g`.
    pub(crate) fn session(
        &mut self,
        who: &Participant,
        mix: Mix,
        i: usize,
        g: usize,
    ) -> SessionSpec {
        let transport = match self.side {
            Side::Haberci => mix.transport(i),
            Side::SocketIo { .. } => TransportKind::SocketIo,
        };
        let (quic, tcp) = self.gateways[g % self.gateways.len()];
        let (addr, source) = match transport {
            TransportKind::Quic | TransportKind::Wt => (quic, None),
            TransportKind::Ws => {
                let spread = self.ws_index / WS_SESSIONS_PER_ADDRESS;
                self.ws_index += 1;
                let addr = match tcp.ip() {
                    IpAddr::V4(ip) if ip == Ipv4Addr::LOCALHOST && spread > 0 => SocketAddr::new(
                        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + spread.min(250) as u8)),
                        tcp.port(),
                    ),
                    _ => tcp,
                };
                (addr, None)
            }
            TransportKind::SocketIo => {
                let spread = self.ws_index / WS_SESSIONS_PER_ADDRESS;
                self.ws_index += 1;
                let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + spread.min(250) as u8));
                (tcp, Some(source))
            }
        };
        SessionSpec {
            user: who.id,
            token: who.token.clone(),
            transport,
            addr,
            gateway: g % self.gateways.len(),
            source,
        }
    }
}

pub(crate) fn common(target: &Target, side: &Side, shards: usize, deadline: Duration) -> Common {
    Common {
        server_name: target.server_name.clone(),
        ca: target.ca.clone(),
        sessions_per_socket: target.sessions_per_socket,
        connect_timeout_ms: target.connect_timeout_ms,
        ramp_per_sec: target.ramp / shards as f64,
        deadline_secs: deadline.as_secs(),
        socketio_plain: matches!(side, Side::SocketIo { plain: true, .. }),
    }
}

pub(crate) fn shard_count(target: &Target, sessions: usize) -> usize {
    target
        .shards
        .unwrap_or_else(|| sessions.div_ceil(SESSIONS_PER_SHARD))
        .clamp(1, sessions.max(1))
}

pub(crate) fn merged(
    results: &[ShardResult],
    pick: impl Fn(&ShardResult) -> &crate::latency::Buckets,
) -> Latency {
    let mut h = Latency::new();
    for r in results {
        h.merge(pick(r));
    }
    h
}

pub(crate) fn merged_counts(
    maps: impl Iterator<Item = BTreeMap<String, u64>>,
) -> BTreeMap<String, u64> {
    let mut all = BTreeMap::new();
    for map in maps {
        for (k, v) in map {
            *all.entry(k).or_default() += v;
        }
    }
    all
}

pub(crate) fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

pub(crate) fn run_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

// ---- sampling the servers ----------------------------------------------------------------------

/// The servers at one instant of the measured phase, for the plots.
#[derive(Clone, Debug, Serialize)]
pub struct ServerSample {
    /// Seconds since the phase started.
    pub t_s: f64,
    /// What the phase counts (sessions connected, messages delivered) at that instant.
    pub done: u64,
    /// CPU since the previous sample, per role, ms.
    pub cpu_ms: BTreeMap<String, f64>,
    /// Resident memory of the edge processes (gateways, Socket.IO nodes), KiB.
    pub edge_rss_kib: u64,
}

pub(crate) struct Sampler<'a> {
    servers: &'a ServerSet,
    ticks: u64,
    t0: Instant,
    last_at: Instant,
    last: CpuSnapshot,
    pub samples: Vec<ServerSample>,
}

impl<'a> Sampler<'a> {
    pub(crate) fn start(servers: &'a ServerSet) -> Sampler<'a> {
        let now = Instant::now();
        Sampler {
            servers,
            ticks: procfs::clock_ticks_per_sec(),
            t0: now,
            last_at: now,
            last: servers.cpu(),
            samples: Vec::new(),
        }
    }

    /// Samples when a second has passed since the last sample.
    pub(crate) fn tick(&mut self, done: u64) {
        if self.last_at.elapsed() >= SAMPLE_EVERY {
            self.sample(done);
        }
    }

    pub(crate) fn sample(&mut self, done: u64) {
        let now = Instant::now();
        let cpu = self.servers.cpu();
        self.samples.push(ServerSample {
            t_s: (now - self.t0).as_secs_f64(),
            done,
            cpu_ms: self.last.delta_ms(&cpu, self.ticks),
            edge_rss_kib: self.servers.gateway_rss_kib().unwrap_or(0),
        });
        self.last = cpu;
        self.last_at = now;
    }
}

/// Server CPU per 1,000 of what the samples count, per sample interval (total of all roles).
pub fn cpu_per_1000(samples: &[ServerSample]) -> Vec<(f64, f64)> {
    let mut prev = 0;
    let mut out = Vec::new();
    for s in samples {
        let done = s.done.saturating_sub(prev);
        prev = s.done;
        if done > 0 {
            let cpu: f64 = s.cpu_ms.values().sum();
            out.push((s.t_s, cpu * 1000.0 / done as f64));
        }
    }
    out
}

/// Latency percentiles per second of sending, from the shards' per-second buckets.
#[derive(Clone, Debug, Serialize)]
pub struct Window {
    /// Seconds since the first second of sending.
    pub t_s: u64,
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

pub(crate) fn timeline(results: &[ShardResult]) -> Vec<Window> {
    let mut by_second: BTreeMap<u64, Latency> = BTreeMap::new();
    for r in results {
        for (second, buckets) in &r.timeline {
            by_second.entry(*second).or_default().merge(buckets);
        }
    }
    let first = by_second.keys().next().copied().unwrap_or(0);
    by_second
        .iter()
        .map(|(second, h)| {
            let s = h.summary();
            Window {
                t_s: second - first,
                count: s.count,
                p50_ms: s.p50_ms,
                p90_ms: s.p90_ms,
                p99_ms: s.p99_ms,
                max_ms: s.max_ms,
            }
        })
        .collect()
}

/// The latency-over-time chart of a timeline.
pub(crate) fn latency_chart(title: &str, windows: &[Window]) -> Chart {
    let pick = |f: fn(&Window) -> f64| {
        windows
            .iter()
            .map(|w| (w.t_s as f64, f(w)))
            .collect::<Vec<_>>()
    };
    Chart::new(title, "second of sending", "send → deliver, ms")
        .line("p50", pick(|w| w.p50_ms))
        .line("p90", pick(|w| w.p90_ms))
        .line("p99", pick(|w| w.p99_ms))
        .line("max", pick(|w| w.max_ms))
}

pub(crate) fn cdf_points(h: &Latency) -> Vec<(f64, f64)> {
    h.cdf()
        .into_iter()
        .filter(|(q, _)| *q < 1.0)
        .map(|(q, ms)| (plots::nines(q), ms))
        .collect()
}

/// Server CPU per role over time (ms of CPU per second of wall time).
pub(crate) fn cpu_chart(title: &str, samples: &[ServerSample]) -> Chart {
    let mut roles: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    let mut prev_t = 0.0;
    for s in samples {
        let dt = (s.t_s - prev_t).max(1e-3);
        prev_t = s.t_s;
        for (role, ms) in &s.cpu_ms {
            // Postgres backends and roles with a number share one line per kind.
            roles
                .entry(role.as_str())
                .or_default()
                .push((s.t_s, ms / dt / 10.0));
        }
    }
    let mut chart = Chart::new(title, "second", "server CPU, % of one core");
    for (role, points) in roles {
        chart = chart.line(role, points);
    }
    chart
}

// ---- connect ----------------------------------------------------------------------------------

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

/// What a measured phase produced besides its figures.
pub struct Measured<F> {
    pub figures: F,
    pub setup: SetupStats,
    pub machine: Machine,
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

/// `users --count N`: makes the pool hold N registered users, refreshing only expired
/// tokens (a scenario refreshes what it needs for its own run time).
pub async fn users(args: UsersArgs) -> anyhow::Result<bool> {
    let multi = report::progress();
    let (_, stats) = participants(
        &args.target,
        &Side::Haberci,
        args.count,
        Duration::ZERO,
        &multi,
    )
    .await?;
    println!(
        "{} bench users ready: {} registered, {} refreshed, {} logged in, {} reused, in {:.1}s",
        args.count,
        stats.registered,
        stats.refreshed,
        stats.logged_in,
        stats.reused_tokens,
        stats.seconds
    );
    Ok(true)
}

pub async fn connect(args: ConnectArgs) -> anyhow::Result<bool> {
    let target = &args.target;
    let started_at = report::now();
    if target.fresh_gateways {
        crate::storm::restart_gateways(target).await?;
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
    let md = report::connect_markdown(&args, mix, f, &m.machine, &m.setup);
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

// ---- chat -------------------------------------------------------------------------------------

#[derive(Debug, Serialize)]
pub struct ChatFigures {
    pub system: &'static str,
    pub users: usize,
    pub pairs: usize,
    pub gateways: usize,
    pub rate: f64,
    pub duration_s: f64,
    pub messages_planned: u64,
    pub connected: u64,
    pub connect_failed: u64,
    pub connect_failures: BTreeMap<String, u64>,
    pub handshake: Summary,
    pub sent_ok: u64,
    pub send_failed: u64,
    pub send_failures: BTreeMap<String, u64>,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub unexpected: u64,
    /// Messages of earlier runs replayed at connect (not acked before those runs closed).
    pub stale: u64,
    pub disconnected: u64,
    pub latency: Summary,
    /// Deliveries / (last delivery − first send).
    pub delivered_per_sec: f64,
    pub server_cpu_ms: BTreeMap<String, f64>,
    pub server_cpu_ms_total: f64,
    pub server_cpu_ms_per_1000_deliveries: f64,
    pub client_cpu_ms: f64,
    pub client_cpu_ms_per_1000_deliveries: f64,
    pub measured_seconds: f64,
    /// Latency percentiles per second of sending.
    pub timeline: Vec<Window>,
    /// (nines, ms): see `plots::nines`.
    pub latency_cdf: Vec<(f64, f64)>,
    /// The servers every second (`done` = messages delivered).
    pub samples: Vec<ServerSample>,
}

impl ChatFigures {
    pub fn counts_add_up(&self) -> bool {
        self.connect_failed == 0
            && self.send_failed == 0
            && self.lost == 0
            && self.duplicates == 0
            && self.out_of_order == 0
            && self.unexpected == 0
            && self.delivered == self.sent_ok
            && self.sent_ok == self.messages_planned
    }

    pub fn charts(&self) -> Vec<(&'static str, Chart)> {
        vec![
            (
                "latency",
                latency_chart("send → deliver over the run", &self.timeline),
            ),
            (
                "latency-cdf",
                Chart::new("send → deliver", "percentile", "ms")
                    .nines()
                    .line(self.system, self.latency_cdf.clone()),
            ),
            (
                "cpu-per-1000",
                Chart::new(
                    "server CPU per 1,000 deliveries",
                    "second",
                    "ms of CPU per 1,000 deliveries",
                )
                .line(self.system, cpu_per_1000(&self.samples)),
            ),
            ("cpu", cpu_chart("server CPU by process", &self.samples)),
        ]
    }
}

/// The message phase's settings.
#[derive(Clone, Copy, Debug)]
pub struct ChatPlan {
    pub users: usize,
    pub rate: f64,
    pub duration_s: f64,
    pub messages: Option<u64>,
    pub drain: u64,
    pub content_bytes: usize,
}

impl From<&ChatArgs> for ChatPlan {
    fn from(a: &ChatArgs) -> ChatPlan {
        ChatPlan {
            users: a.users,
            rate: a.rate,
            duration_s: a.duration,
            messages: a.messages,
            drain: a.drain,
            content_bytes: a.content_bytes,
        }
    }
}

pub async fn measure_chat(
    target: &Target,
    side: &Side,
    servers: &ServerSet,
    mix: Mix,
    plan: ChatPlan,
    multi: &MultiProgress,
) -> anyhow::Result<Measured<ChatFigures>> {
    if plan.users < 2 || plan.users % 2 != 0 {
        bail!("--users must be even and at least 2 (half send, half receive)");
    }
    if !plan.rate.is_finite() || plan.rate <= 0.0 {
        bail!("--rate must be positive");
    }
    let load_before = procfs::load_average();
    let duration_s = match plan.messages {
        Some(m) => m as f64 / plan.rate,
        None => plan.duration_s,
    };
    let messages_planned = plan
        .messages
        .unwrap_or((plan.rate * duration_s).round() as u64);
    let pairs_n = plan.users / 2;
    let shards_n = shard_count(target, plan.users);
    let ramp_time = Duration::from_secs_f64(plan.users as f64 / target.ramp.max(0.001));
    let run_time = ramp_time
        + Duration::from_millis(target.connect_timeout_ms)
        + Duration::from_secs_f64(duration_s)
        + Duration::from_secs(plan.drain * 2);
    let (users, setup) =
        participants(target, side, plan.users, run_time + DEADLINE_SLACK, multi).await?;
    let mut edges = Edges::resolve(target, side).await?;
    let g = edges.len();
    let pairs: Vec<PairSpec> = (0..pairs_n)
        .map(|i| {
            // With several gateways, a recipient is never on its sender's gateway.
            let (sg, rg) = (i % g, (i + 1) % g);
            PairSpec {
                id: i as u32,
                sender: edges.session(&users[2 * i], mix, 2 * i, sg),
                recipient: edges.session(&users[2 * i + 1], mix, 2 * i + 1, rg),
                messages: (messages_planned / pairs_n as u64
                    + u64::from((i as u64) < messages_planned % pairs_n as u64))
                    as u32,
            }
        })
        .collect();
    let common = common(target, side, shards_n, run_time + DEADLINE_SLACK);
    let timing = Timing {
        duration_ms: (duration_s * 1000.0) as u64,
        drain_ms: plan.drain * 1000,
        content_bytes: plan.content_bytes,
        run_id: run_id(),
    };
    let chunk = pairs.len().div_ceil(shards_n).max(1);
    let jobs = pairs
        .chunks(chunk)
        .map(|c| Job::Chat {
            common: common.clone(),
            pairs: c.to_vec(),
            timing,
        })
        .collect();
    let mut shards = Shards::start(jobs).await?;
    let connecting = bar(multi, plan.users as u64, "connect");
    shards.go().await?;
    let counts = shards
        .wait_connected(ramp_time + DEADLINE_SLACK, |c| {
            connecting.set_position(c.connected + c.connect_failed);
            connecting.set_message(format!("{} failed", c.connect_failed));
        })
        .await?;
    connecting.finish_with_message(format!(
        "{} connected, {} failed",
        counts.connected, counts.connect_failed
    ));
    let ticks = procfs::clock_ticks_per_sec();
    let cpu_before = servers.cpu();
    let mut sampler = Sampler::start(servers);
    let t0 = Instant::now();
    let sending = bar(multi, messages_planned, "messages");
    shards.go().await?;
    let results = shards
        .wait_done(run_time + DEADLINE_SLACK, |c| {
            sending.set_position(c.received);
            sending.set_message(format!("sent {}", c.sent));
            sampler.tick(c.received);
        })
        .await?;
    let measured_seconds = t0.elapsed().as_secs_f64();
    let cpu = cpu_before.delta_ms(&servers.cpu(), ticks);
    let sum = |f: fn(&ShardResult) -> u64| results.iter().map(f).sum::<u64>();
    let delivered = sum(|r| r.received);
    sampler.sample(delivered);
    let first = results
        .iter()
        .map(|r| r.first_send_ns)
        .filter(|n| *n > 0)
        .min()
        .unwrap_or(0);
    let last = results.iter().map(|r| r.last_receive_ns).max().unwrap_or(0);
    let span_s = last.saturating_sub(first) as f64 / 1e9;
    let server_total: f64 = cpu.values().sum();
    let client_cpu: f64 = results.iter().map(|r| r.client_cpu_ms).sum();
    let per_1000 = |ms: f64| {
        if delivered == 0 {
            0.0
        } else {
            ms * 1000.0 / delivered as f64
        }
    };
    let latency = merged(&results, |r| &r.latency);
    let figures = ChatFigures {
        system: side.name(),
        users: plan.users,
        pairs: pairs_n,
        gateways: g,
        rate: plan.rate,
        duration_s,
        messages_planned,
        connected: counts.connected,
        connect_failed: counts.connect_failed,
        connect_failures: merged_counts(results.iter().map(|r| r.failures.clone())),
        handshake: merged(&results, |r| &r.handshake).summary(),
        sent_ok: sum(|r| r.sent_ok),
        send_failed: sum(|r| r.send_failed),
        send_failures: merged_counts(results.iter().map(|r| r.send_failures.clone())),
        delivered,
        lost: sum(|r| r.lost),
        duplicates: sum(|r| r.duplicates),
        out_of_order: sum(|r| r.out_of_order),
        unexpected: sum(|r| r.unexpected),
        stale: sum(|r| r.stale),
        disconnected: sum(|r| r.disconnected),
        latency: latency.summary(),
        delivered_per_sec: if span_s > 0.0 {
            delivered as f64 / span_s
        } else {
            0.0
        },
        server_cpu_ms_per_1000_deliveries: per_1000(server_total),
        server_cpu_ms: cpu,
        server_cpu_ms_total: server_total,
        client_cpu_ms: client_cpu,
        client_cpu_ms_per_1000_deliveries: per_1000(client_cpu),
        measured_seconds,
        timeline: timeline(&results),
        latency_cdf: cdf_points(&latency),
        samples: sampler.samples,
    };
    sending.finish_with_message(format!(
        "delivered {} of {} sent; lost {}, dup {}, out of order {}",
        figures.delivered, figures.sent_ok, figures.lost, figures.duplicates, figures.out_of_order
    ));
    Ok(Measured {
        figures,
        setup,
        machine: Machine::now(load_before, shards.count()),
    })
}

pub async fn chat(args: ChatArgs) -> anyhow::Result<bool> {
    let target = &args.target;
    let started_at = report::now();
    let servers = ServerSet::discover(&target.dev_dir, &target.server_pids)?;
    let multi = report::progress();
    let mix = target.mix(Mix::Quic);
    let m = measure_chat(
        target,
        &Side::Haberci,
        &servers,
        mix,
        ChatPlan::from(&args),
        &multi,
    )
    .await?;
    let f = &m.figures;
    let ok = f.counts_add_up();
    let md = report::chat_markdown(mix, f, &m.machine, &m.setup);
    report::finish(
        target,
        &report::Envelope {
            scenario: "chat",
            command: command_line(),
            started_at,
            machine: m.machine,
            settings: &args,
            servers: servers.processes(),
            setup: m.setup.clone(),
            figures: f,
        },
        md,
        f.charts(),
        ok,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_per_1000_divides_each_interval_by_its_own_deliveries() {
        let sample = |t_s: f64, done: u64, ms: f64| ServerSample {
            t_s,
            done,
            cpu_ms: [
                ("gateway".to_owned(), ms / 2.0),
                ("worker".to_owned(), ms / 2.0),
            ]
            .into(),
            edge_rss_kib: 0,
        };
        let samples = vec![
            sample(1.0, 500, 100.0),
            sample(2.0, 500, 30.0),
            sample(3.0, 1500, 400.0),
        ];
        // The second interval delivered nothing: no point rather than a division by zero.
        assert_eq!(cpu_per_1000(&samples), vec![(1.0, 200.0), (3.0, 400.0)]);
    }

    #[test]
    fn timelines_merge_shards_by_second_from_the_first() {
        let mut a = Latency::new();
        a.record(Duration::from_millis(2));
        let mut b = Latency::new();
        b.record(Duration::from_millis(4));
        let results = vec![
            ShardResult {
                timeline: vec![(100, a.buckets()), (102, a.buckets())],
                ..ShardResult::default()
            },
            ShardResult {
                timeline: vec![(100, b.buckets())],
                ..ShardResult::default()
            },
        ];
        let t = timeline(&results);
        assert_eq!(
            t.iter().map(|w| (w.t_s, w.count)).collect::<Vec<_>>(),
            [(0, 2), (2, 1)]
        );
        assert!((t[0].max_ms - 4.0).abs() < 0.01);
    }
}
