//! The coordinator's side of each scenario: plan the sessions, set up users, run the shards,
//! measure the servers around the measured phase, and write the report.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::api::ApiTarget;
use crate::cli::{ChatArgs, ConnectArgs, Target};
use crate::coordinator::Shards;
use crate::latency::{Latency, Summary};
use crate::procfs;
use crate::protocol::{Common, Job, PairSpec, SessionSpec, ShardResult, TransportKind};
use crate::report::{self, Machine};
use crate::servers::ServerSet;
use crate::users::{BenchUser, Pool, SetupStats, loopback_sources};

/// Sessions per shard process when `--shards` is not given: well under the 20,000
/// open-files limit (a WebSocket session is one file; QUIC shares sockets).
const SESSIONS_PER_SHARD: usize = 8_000;
/// WebSocket sessions per destination address: one (source, destination) address pair has
/// ~28,000 ephemeral ports. The client crate cannot bind a source address, so beyond this
/// the sessions go to 127.0.0.2, 127.0.0.3, … of the same gateway (it listens on `[::]`),
/// which gives each its own 4-tuple space just the same.
const WS_SESSIONS_PER_ADDRESS: usize = 20_000;
/// Slack added to every shard deadline.
const DEADLINE_SLACK: Duration = Duration::from_secs(120);

fn bar(multi: &MultiProgress, len: u64, what: &str) -> ProgressBar {
    let bar = multi.add(ProgressBar::new(len));
    bar.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:40}] {pos}/{len} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_owned());
    bar
}

/// Users ready to connect, and what getting them ready took.
async fn setup_users(
    target: &Target,
    n: usize,
    valid_for: Duration,
    multi: &MultiProgress,
) -> anyhow::Result<(Vec<BenchUser>, SetupStats)> {
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
        stats.registered, stats.refreshed, stats.logged_in, stats.reused_tokens, stats.seconds
    ));
    Ok((pool.users()[..n].to_vec(), stats))
}

fn ca_store(target: &Target) -> anyhow::Result<rustls::RootCertStore> {
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

/// The gateways' addresses, resolved.
struct Gateways(Vec<(SocketAddr, SocketAddr)>);

impl Gateways {
    async fn resolve(target: &Target) -> anyhow::Result<Gateways> {
        let mut all = Vec::new();
        for g in &target.gateways {
            all.push((
                crate::cli::resolve(&g.quic).await?,
                crate::cli::resolve(&g.tcp).await?,
            ));
        }
        Ok(Gateways(all))
    }

    /// The address of session `ws_index`-th WebSocket or any QUIC session on gateway `g`.
    fn addr(&self, g: usize, transport: TransportKind, ws_index: &mut usize) -> SocketAddr {
        let (quic, tcp) = self.0[g % self.0.len()];
        match transport {
            TransportKind::Quic => quic,
            TransportKind::Ws => {
                let spread = *ws_index / WS_SESSIONS_PER_ADDRESS;
                *ws_index += 1;
                match tcp.ip() {
                    IpAddr::V4(ip) if ip == Ipv4Addr::LOCALHOST && spread > 0 => SocketAddr::new(
                        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + spread.min(250) as u8)),
                        tcp.port(),
                    ),
                    _ => tcp,
                }
            }
        }
    }
}

fn common(target: &Target, shards: usize, deadline: Duration) -> Common {
    Common {
        server_name: target.server_name.clone(),
        ca: target.ca.clone(),
        sessions_per_socket: target.sessions_per_socket,
        connect_timeout_ms: target.connect_timeout_ms,
        ramp_per_sec: target.ramp / shards as f64,
        deadline_secs: deadline.as_secs(),
    }
}

fn shard_count(target: &Target, sessions: usize) -> usize {
    target
        .shards
        .unwrap_or_else(|| sessions.div_ceil(SESSIONS_PER_SHARD))
        .clamp(1, sessions.max(1))
}

fn merged(
    results: &[ShardResult],
    pick: impl Fn(&ShardResult) -> &crate::latency::Buckets,
) -> Latency {
    let mut h = Latency::new();
    for r in results {
        h.merge(pick(r));
    }
    h
}

fn merged_counts(maps: impl Iterator<Item = BTreeMap<String, u64>>) -> BTreeMap<String, u64> {
    let mut all = BTreeMap::new();
    for map in maps {
        for (k, v) in map {
            *all.entry(k).or_default() += v;
        }
    }
    all
}

fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

// ---- connect ----------------------------------------------------------------------------------

#[derive(Debug, Serialize)]
pub struct ConnectFigures {
    pub sessions: usize,
    pub connected: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    pub ramp_seconds: f64,
    pub connects_per_sec: f64,
    pub handshake: Summary,
    pub gateway_rss_before_kib: u64,
    pub gateway_rss_after_kib: u64,
    /// (after − before) / connected.
    pub bytes_per_idle_session: f64,
    /// Gateway CPU during the ramp / connected.
    pub gateway_cpu_ms_per_handshake: f64,
    pub server_cpu_ms_ramp: BTreeMap<String, f64>,
    pub disconnected_while_idle: u64,
    pub client_cpu_ms: f64,
}

pub async fn connect(args: ConnectArgs) -> anyhow::Result<bool> {
    let target = &args.target;
    let started_at = report::now();
    let load_before = procfs::load_average();
    let servers = ServerSet::discover(&target.dev_dir, &target.server_pids)?;
    let multi = MultiProgress::new();
    let n_users = args.sessions;
    let shards_n = shard_count(target, args.sessions);
    let ramp_time = Duration::from_secs_f64(args.sessions as f64 / target.ramp.max(0.001));
    let run_time = ramp_time
        + Duration::from_millis(target.connect_timeout_ms)
        + Duration::from_secs(args.hold);
    let (users, setup) = setup_users(target, n_users, run_time + DEADLINE_SLACK, &multi).await?;
    let gateways = Gateways::resolve(target).await?;
    let mut ws_index = 0;
    let specs: Vec<SessionSpec> = (0..args.sessions)
        .map(|i| {
            let transport = target.transport.transport(i);
            let gateway = i % gateways.0.len();
            SessionSpec {
                user: users[i % users.len()].id,
                token: users[i % users.len()].access_token.clone(),
                transport,
                addr: gateways.addr(gateway, transport, &mut ws_index),
                gateway,
            }
        })
        .collect();
    let common = common(target, shards_n, run_time + DEADLINE_SLACK);
    let chunk = specs.len().div_ceil(shards_n);
    let jobs = specs
        .chunks(chunk.max(1))
        .map(|c| Job::Connect {
            common: common.clone(),
            sessions: c.to_vec(),
        })
        .collect();
    let mut shards = Shards::start(jobs).await?;
    let ticks = procfs::clock_ticks_per_sec();
    let rss_before = servers.gateway_rss_kib()?;
    let cpu_before = servers.cpu();
    let progress = bar(&multi, args.sessions as u64, "connect");
    let t0 = Instant::now();
    shards.go().await?;
    let counts = shards
        .wait_connected(run_time + DEADLINE_SLACK, |c| {
            progress.set_position(c.connected + c.connect_failed);
            progress.set_message(format!("{} failed", c.connect_failed));
        })
        .await?;
    let ramp_seconds = t0.elapsed().as_secs_f64();
    let cpu_ramp = cpu_before.delta_ms(&servers.cpu(), ticks);
    progress.finish_with_message(format!(
        "{} connected, {} failed in {ramp_seconds:.1}s; holding {}s",
        counts.connected, counts.connect_failed, args.hold
    ));
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    let rss_after = servers.gateway_rss_kib()?;
    shards.go().await?;
    let results = shards.wait_done(Duration::from_secs(60), |_| {}).await?;
    let connected: u64 = results.iter().map(|r| r.connected).sum();
    let failed: u64 = results.iter().map(|r| r.connect_failed).sum();
    let gateway_cpu: f64 = cpu_ramp
        .iter()
        .filter(|(role, _)| role.starts_with("gateway"))
        .map(|(_, ms)| ms)
        .sum();
    let figures = ConnectFigures {
        sessions: args.sessions,
        connected,
        failed,
        failures: merged_counts(results.iter().map(|r| r.failures.clone())),
        ramp_seconds,
        connects_per_sec: connected as f64 / ramp_seconds,
        handshake: merged(&results, |r| &r.handshake).summary(),
        gateway_rss_before_kib: rss_before,
        gateway_rss_after_kib: rss_after,
        bytes_per_idle_session: (rss_after as f64 - rss_before as f64) * 1024.0
            / connected.max(1) as f64,
        gateway_cpu_ms_per_handshake: gateway_cpu / connected.max(1) as f64,
        server_cpu_ms_ramp: cpu_ramp,
        disconnected_while_idle: results.iter().map(|r| r.disconnected).sum(),
        client_cpu_ms: results.iter().map(|r| r.client_cpu_ms).sum(),
    };
    let ok = figures.failed == 0 && figures.disconnected_while_idle == 0;
    let machine = Machine::now(load_before, shards.count());
    let md = report::connect_markdown(&args, &figures, &machine, &setup);
    report::write(
        target,
        "connect",
        &report::Envelope {
            scenario: "connect",
            command: command_line(),
            started_at,
            machine,
            settings: &args,
            servers: servers.processes(),
            setup,
            figures: &figures,
        },
        &md,
    )?;
    Ok(ok || !target.check)
}

// ---- chat -------------------------------------------------------------------------------------

#[derive(Debug, Serialize)]
pub struct ChatFigures {
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
}

impl ChatFigures {
    fn counts_add_up(&self) -> bool {
        self.connect_failed == 0
            && self.send_failed == 0
            && self.lost == 0
            && self.duplicates == 0
            && self.out_of_order == 0
            && self.unexpected == 0
            && self.delivered == self.sent_ok
            && self.sent_ok == self.messages_planned
    }
}

pub async fn chat(args: ChatArgs) -> anyhow::Result<bool> {
    let target = &args.target;
    if args.users < 2 || args.users % 2 != 0 {
        bail!("--users must be even and at least 2 (half send, half receive)");
    }
    if !args.rate.is_finite() || args.rate <= 0.0 {
        bail!("--rate must be positive");
    }
    let started_at = report::now();
    let load_before = procfs::load_average();
    let servers = ServerSet::discover(&target.dev_dir, &target.server_pids)?;
    let multi = MultiProgress::new();
    let duration_s = match args.messages {
        Some(m) => m as f64 / args.rate,
        None => args.duration,
    };
    let messages_planned = args
        .messages
        .unwrap_or((args.rate * duration_s).round() as u64);
    let pairs_n = args.users / 2;
    let shards_n = shard_count(target, args.users);
    let ramp_time = Duration::from_secs_f64(args.users as f64 / target.ramp.max(0.001));
    let run_time = ramp_time
        + Duration::from_millis(target.connect_timeout_ms)
        + Duration::from_secs_f64(duration_s)
        + Duration::from_secs(args.drain * 2);
    let (users, setup) = setup_users(target, args.users, run_time + DEADLINE_SLACK, &multi).await?;
    let gateways = Gateways::resolve(target).await?;
    let g = gateways.0.len();
    let mut ws_index = 0;
    let mut session = |user: &BenchUser, i: usize, gateway: usize| {
        let transport = target.transport.transport(i);
        SessionSpec {
            user: user.id,
            token: user.access_token.clone(),
            transport,
            addr: gateways.addr(gateway, transport, &mut ws_index),
            gateway,
        }
    };
    let pairs: Vec<PairSpec> = (0..pairs_n)
        .map(|i| {
            // With several gateways, a recipient is never on its sender's gateway.
            let (sg, rg) = (i % g, (i + 1) % g);
            PairSpec {
                id: i as u32,
                sender: session(&users[2 * i], 2 * i, sg),
                recipient: session(&users[2 * i + 1], 2 * i + 1, rg),
                messages: (messages_planned / pairs_n as u64
                    + u64::from((i as u64) < messages_planned % pairs_n as u64))
                    as u32,
            }
        })
        .collect();
    let common = common(target, shards_n, run_time + DEADLINE_SLACK);
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let chunk = pairs.len().div_ceil(shards_n).max(1);
    let jobs = pairs
        .chunks(chunk)
        .map(|c| Job::Chat {
            common: common.clone(),
            pairs: c.to_vec(),
            duration_ms: (duration_s * 1000.0) as u64,
            drain_ms: args.drain * 1000,
            content_bytes: args.content_bytes,
            run_id,
        })
        .collect();
    let mut shards = Shards::start(jobs).await?;
    let connecting = bar(&multi, args.users as u64, "connect");
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
    let t0 = Instant::now();
    let sending = bar(&multi, messages_planned, "messages");
    shards.go().await?;
    let results = shards
        .wait_done(run_time + DEADLINE_SLACK, |c| {
            sending.set_position(c.received);
            sending.set_message(format!("sent {}", c.sent));
        })
        .await?;
    let measured_seconds = t0.elapsed().as_secs_f64();
    let cpu = cpu_before.delta_ms(&servers.cpu(), ticks);
    let sum = |f: fn(&ShardResult) -> u64| results.iter().map(f).sum::<u64>();
    let delivered = sum(|r| r.received);
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
    let figures = ChatFigures {
        users: args.users,
        pairs: pairs_n,
        gateways: g,
        rate: args.rate,
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
        latency: merged(&results, |r| &r.latency).summary(),
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
    };
    sending.finish_with_message(format!(
        "delivered {} of {} sent; lost {}, dup {}, out of order {}",
        figures.delivered, figures.sent_ok, figures.lost, figures.duplicates, figures.out_of_order
    ));
    let ok = figures.counts_add_up();
    let machine = Machine::now(load_before, shards.count());
    let md = report::chat_markdown(&args, &figures, &machine, &setup);
    report::write(
        target,
        "chat",
        &report::Envelope {
            scenario: "chat",
            command: command_line(),
            started_at,
            machine,
            settings: &args,
            servers: servers.processes(),
            setup,
            figures: &figures,
        },
        &md,
    )?;
    if target.check && !ok {
        eprintln!("haberci-bench: the counts do not add up (see the report)");
    }
    Ok(ok || !target.check)
}
