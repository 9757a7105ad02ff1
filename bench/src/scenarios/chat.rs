//! `chat`: N users, half of them sending 1:1 messages to the other half at a steady rate;
//! reports send → deliver latency, what was lost, duplicated or reordered, and server CPU per
//! 1,000 deliveries. `compare` runs the same measurement ([`measure_chat`]) against the
//! Socket.IO peer.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use indicatif::MultiProgress;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::conn::To;
use crate::load::coordinator::{Shards, merged, merged_counts, timeline};
use crate::load::flows::{Flow, run_flows};
use crate::load::plan::{DEADLINE_SLACK, Edges, Side, common, participants, shard_count};
use crate::load::protocol::{Common, Job, PairSpec, Report, SessionSpec, ShardResult, Timing};
use crate::load::shard::Live;
use crate::report::charts::{cdf_points, cpu_chart, cpu_per_1000, latency_chart};
use crate::report::latency::{Summary, Window};
use crate::report::plots::Chart;
use crate::report::{
    self, LATENCY_HEADER, Machine, Measured, bar, command_line, latency_row, run_id, setup_line,
};
use crate::sampling::ledger::{self, Ledger, Stores};
use crate::sampling::procfs;
use crate::sampling::servers::ServerSet;
use crate::sampling::{Sampler, ServerSample};
use crate::target::{Mix, Target};
use crate::users::SetupStats;

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
    /// Seconds between the last session connected and the first send, outside the measured
    /// window: what sessions do after their `Welcome` (the backlog a reused user's session
    /// syncs) is not charged to the chat.
    #[arg(long, default_value_t = 0)]
    pub settle: u64,
    /// Bytes of message content.
    #[arg(long, default_value_t = 100)]
    pub content_bytes: usize,
}

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
    /// What the servers asked of the kernel, Redis and Postgres per 1,000 deliveries.
    pub ledger: Ledger,
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
    pub settle: u64,
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
            settle: a.settle,
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
    if plan.settle > 0 {
        tokio::time::sleep(Duration::from_secs(plan.settle)).await;
    }
    let ticks = procfs::clock_ticks_per_sec();
    let stores = match side {
        Side::Haberci => Stores::from_env(),
        Side::SocketIo { .. } => Stores::default(),
    };
    let ledger_before = ledger::snapshot(servers, &stores).await;
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
    let ledger_after = ledger::snapshot(servers, &stores).await;
    let sum = |f: fn(&ShardResult) -> u64| results.iter().map(f).sum::<u64>();
    let delivered = sum(|r| r.received);
    let ledger = Ledger::between(&ledger_before, &ledger_after, "deliveries", delivered, 1000);
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
        ledger,
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
    let md = markdown(mix, f, &m.machine, &m.setup);
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

fn markdown(mix: Mix, f: &ChatFigures, machine: &Machine, setup: &SetupStats) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### chat: {} users ({:?}), {} gateway(s), {} msg/s for {:.1} s\n",
        f.users, mix, f.gateways, f.rate, f.duration_s
    );
    let _ = writeln!(md, "{}; {}\n", machine.line(), setup_line(setup));
    let _ = writeln!(md, "| what | figure |\n|---|---:|");
    let _ = writeln!(
        md,
        "| planned / sent (Sent) / delivered | {} / {} / {} |",
        f.messages_planned, f.sent_ok, f.delivered
    );
    let _ = writeln!(
        md,
        "| lost / duplicated / out of order / send failed | {} / {} / {} / {} |",
        f.lost, f.duplicates, f.out_of_order, f.send_failed
    );
    let _ = writeln!(md, "| delivered/s | {:.0} |", f.delivered_per_sec);
    let _ = writeln!(
        md,
        "| **server CPU per 1,000 deliveries** | **{:.1} ms** |",
        f.server_cpu_ms_per_1000_deliveries
    );
    let roles = f
        .server_cpu_ms
        .iter()
        .map(|(role, ms)| format!("{role} {ms:.0}"))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        md,
        "| server CPU, ms ({:.1} s window) | {:.0}: {roles} |",
        f.measured_seconds, f.server_cpu_ms_total
    );
    let _ = writeln!(
        md,
        "| client CPU per 1,000 deliveries | {:.1} ms |",
        f.client_cpu_ms_per_1000_deliveries
    );
    let _ = writeln!(
        md,
        "| connect failed / dropped / replayed from earlier runs | {} / {} / {} |\n",
        f.connect_failed, f.disconnected, f.stale
    );
    md.push_str(LATENCY_HEADER);
    latency_row(&mut md, "**send → deliver**", &f.latency);
    latency_row(&mut md, "handshake", &f.handshake);
    for (why, n) in f.send_failures.iter().chain(&f.connect_failures) {
        let _ = writeln!(md, "\nfailure ×{n}: {why}");
    }
    let _ = writeln!(md, "\n{}", f.ledger.markdown());
    md
}

// ---- the shard's side --------------------------------------------------------------------------

pub(crate) async fn shard(
    common: Common,
    pairs: Vec<PairSpec>,
    timing: Timing,
    live: &Arc<Live>,
    out: &mpsc::UnboundedSender<Report>,
    go: mpsc::UnboundedReceiver<()>,
) -> anyhow::Result<ShardResult> {
    // Recipients first: a message to a user with no session would be stored, not delivered.
    let n = pairs.len();
    let mut specs: Vec<SessionSpec> = pairs.iter().map(|p| p.recipient.clone()).collect();
    specs.extend(pairs.iter().map(|p| p.sender.clone()));
    let flows = pairs
        .iter()
        .enumerate()
        .map(|(i, p)| Flow {
            id: p.id,
            to: To::User(p.recipient.user),
            messages: p.messages,
            sender: Some(n + i),
            receivers: vec![i],
        })
        .collect();
    run_flows(common, specs, flows, timing, false, live, out, go).await
}
