//! `churn`: users come and go all the time. `--sessions` slots are connected (ramp), then
//! for `--duration` seconds every slot closes its session after a lifetime and opens a new one
//! for the same user at once, so about `--rate` sessions leave and as many arrive every
//! second while the count stays level. Reported: connects per second achieved, handshake
//! latency under churn, failures, sessions the server dropped, server CPU per connect + leave,
//! and the gateways' memory before and after (a level count should end at a level memory).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use haberci_client::{Client, Event};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::load::coordinator::{Shards, merged, merged_counts};
use crate::load::plan::{DEADLINE_SLACK, Edges, Side, common, participants, shard_count};
use crate::load::protocol::{ChurnJob, Report, SessionSpec, ShardResult};
use crate::load::shard::{Live, client_config, failure_key, root_store, wait_go};
use crate::report::charts::{cdf_points, cpu_chart};
use crate::report::latency::{Latency, Summary};
use crate::report::plots::Chart;
use crate::report::{self, Machine, bar, command_line};
use crate::sampling::servers::ServerSet;
use crate::sampling::{Sampler, ServerSample};
use crate::target::{Mix, Target};

#[derive(Debug, Args, Serialize)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub target: Target,
    /// Sessions connected at any time.
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
    /// Sessions that leave (and as many that arrive) per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of churn.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
}

/// The `k`-th lifetime of slot `slot`: spread evenly over [½, 1½) of the mean, without an RNG
/// (golden-ratio steps), so no two slots move in step; the first one over [0, 1) of the mean,
/// so leaves start at once rather than after half a lifetime.
fn lifetime(mean: Duration, slot: usize, k: u64) -> Duration {
    let x = ((slot as f64) * 0.618_033_988_75 + (k as f64) * 0.414_213_562_37).fract();
    if k == 0 {
        mean.mul_f64(x)
    } else {
        mean.mul_f64(0.5 + x)
    }
}

pub(crate) async fn shard(
    job: ChurnJob,
    live: &Arc<Live>,
    out: &mpsc::UnboundedSender<Report>,
    mut go: mpsc::UnboundedReceiver<()>,
) -> anyhow::Result<ShardResult> {
    let job = Arc::new(job);
    wait_go(&mut go).await?;
    let roots = root_store(&job.common)?;
    let per_socket = job.common.sessions_per_socket.max(1);
    let endpoints: Vec<quinn::Endpoint> = (0..job.sessions.len().div_ceil(per_socket))
        .map(|_| crate::load::shard::client_endpoint())
        .collect::<anyhow::Result<_>>()?;
    let config = |i: usize| {
        client_config(
            &job.common,
            &job.sessions[i],
            &roots,
            Some(endpoints[i / per_socket].clone()),
        )
    };
    // Ramp: every slot connected once.
    let started = tokio::time::Instant::now();
    let rate = job.common.ramp_per_sec.max(0.001);
    let mut handles = Vec::new();
    for i in 0..job.sessions.len() {
        tokio::time::sleep_until(started + Duration::from_secs_f64(i as f64 / rate)).await;
        let (c, live) = (config(i), live.clone());
        handles.push(tokio::spawn(async move {
            let result = Client::connect(c).await;
            match &result {
                Ok(_) => live.connected.fetch_add(1, Ordering::Relaxed),
                Err(_) => live.connect_failed.fetch_add(1, Ordering::Relaxed),
            };
            result
        }));
    }
    let mut result = ShardResult::default();
    let mut first = Vec::new();
    for h in handles {
        match h.await? {
            Ok((client, events)) => first.push(Some((client, events))),
            Err(err) => {
                *result.failures.entry(failure_key(&err)).or_default() += 1;
                first.push(None);
            }
        }
    }
    result.connect_failed = result.failures.values().sum();
    let _ = out.send(Report::Connected(live.counts()));
    wait_go(&mut go).await?;

    // Churn: each slot lives, leaves, comes back, until the end.
    let mean = Duration::from_millis(job.lifetime_ms.max(1));
    let end = tokio::time::Instant::now() + Duration::from_millis(job.duration_ms);
    let mut slots = Vec::new();
    for (i, opened) in first.into_iter().enumerate() {
        let (live, config) = (live.clone(), config(i));
        slots.push(tokio::spawn(async move {
            let mut handshake = Latency::new();
            let mut failures: BTreeMap<String, u64> = BTreeMap::new();
            let (mut cycles, mut dropped) = (0u64, 0u64);
            let mut current = opened;
            let mut k = 0;
            loop {
                let life = lifetime(mean, i, k);
                k += 1;
                let until = (tokio::time::Instant::now() + life).min(end);
                if let Some((client, mut events)) = current.take() {
                    // Hold: drain events; a server-side end before the lifetime is a drop.
                    let ended = tokio::select! {
                        () = tokio::time::sleep_until(until) => false,
                        ended = async {
                            while let Some(event) = events.recv().await {
                                if let Event::Disconnected(_) = event {
                                    return true;
                                }
                            }
                            true
                        } => ended,
                    };
                    if ended {
                        dropped += 1;
                        live.disconnected.fetch_add(1, Ordering::Relaxed);
                    } else {
                        client.close().await;
                    }
                } else {
                    tokio::time::sleep_until(until).await;
                }
                if tokio::time::Instant::now() >= end {
                    break;
                }
                let t0 = Instant::now();
                match Client::connect(config.clone()).await {
                    Ok(pair) => {
                        handshake.record(t0.elapsed());
                        cycles += 1;
                        live.connected.fetch_add(1, Ordering::Relaxed);
                        current = Some(pair);
                    }
                    Err(err) => {
                        live.connect_failed.fetch_add(1, Ordering::Relaxed);
                        *failures.entry(failure_key(&err)).or_default() += 1;
                    }
                }
            }
            (handshake, failures, cycles, dropped)
        }));
    }
    let mut handshake = Latency::new();
    for slot in slots {
        let (h, f, cycles, dropped) = slot.await?;
        handshake.merge(&h.buckets());
        for (why, n) in f {
            result.connect_failed += n;
            *result.failures.entry(why).or_default() += n;
        }
        result.sent_ok += cycles;
        result.disconnected += dropped;
    }
    result.connected = job.sessions.len() as u64;
    result.handshake = handshake.buckets();
    Ok(result)
}

#[derive(Debug, Serialize)]
pub struct ChurnFigures {
    pub sessions: usize,
    pub rate: f64,
    pub duration_s: f64,
    pub ramp_connected: u64,
    /// Connects during the churn (each after a leave).
    pub churn_connects: u64,
    pub connects_per_sec: f64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    /// Sessions the server ended before their lifetime.
    pub dropped_by_server: u64,
    pub handshake: Summary,
    pub gateway_rss_start_kib: u64,
    pub gateway_rss_end_kib: u64,
    pub server_cpu_ms: BTreeMap<String, f64>,
    /// Server CPU per connect + leave.
    pub server_cpu_ms_per_cycle: f64,
    pub handshake_cdf: Vec<(f64, f64)>,
    pub samples: Vec<ServerSample>,
}

impl ChurnFigures {
    pub fn counts_add_up(&self) -> bool {
        self.failed == 0
            && self.dropped_by_server == 0
            && self.ramp_connected == self.sessions as u64
            && self.churn_connects > 0
    }
}

pub async fn churn(args: ChurnArgs) -> anyhow::Result<bool> {
    let target = &args.target;
    if args.sessions == 0 || !args.rate.is_finite() || args.rate <= 0.0 {
        bail!("--sessions and --rate must be positive");
    }
    let started_at = report::now();
    let load_before = crate::sampling::procfs::load_average();
    let servers = ServerSet::discover(&target.dev_dir, &target.server_pids)?;
    let multi = report::progress();
    let mix = target.mix(Mix::Quic);
    let shards_n = shard_count(target, args.sessions);
    let ramp_time = Duration::from_secs_f64(args.sessions as f64 / target.ramp.max(0.001));
    let run_time = ramp_time
        + Duration::from_millis(target.connect_timeout_ms)
        + Duration::from_secs_f64(args.duration)
        + Duration::from_secs(30);
    let (users, setup) = participants(
        target,
        &Side::Haberci,
        args.sessions,
        run_time + DEADLINE_SLACK,
        &multi,
    )
    .await?;
    let mut edges = Edges::resolve(target, &Side::Haberci).await?;
    let g = edges.len();
    let specs: Vec<SessionSpec> = (0..args.sessions)
        .map(|i| edges.session(&users[i], mix, i, i % g))
        .collect();
    let common = common(target, &Side::Haberci, shards_n, run_time + DEADLINE_SLACK);
    let lifetime_ms = (args.sessions as f64 / args.rate * 1000.0) as u64;
    let chunk = specs.len().div_ceil(shards_n).max(1);
    let jobs = specs
        .chunks(chunk)
        .map(|c| {
            crate::load::protocol::Job::Churn(Box::new(ChurnJob {
                common: common.clone(),
                sessions: c.to_vec(),
                duration_ms: (args.duration * 1000.0) as u64,
                lifetime_ms,
            }))
        })
        .collect();
    let mut shards = Shards::start(jobs).await?;
    let client_processes = shards.count();
    let connecting = bar(&multi, args.sessions as u64, "connect");
    shards.go().await?;
    let counts = shards
        .wait_connected(ramp_time + DEADLINE_SLACK, |c| {
            connecting.set_position(c.connected + c.connect_failed);
        })
        .await?;
    connecting.finish_with_message(format!(
        "{} connected, {} failed",
        counts.connected, counts.connect_failed
    ));
    let ticks = crate::sampling::procfs::clock_ticks_per_sec();
    let rss_start = servers.gateway_rss_kib()?;
    let cpu_before = servers.cpu();
    let mut sampler = Sampler::start(&servers);
    let churning = bar(&multi, 0, "churn");
    let base = counts.connected;
    let t0 = Instant::now();
    shards.go().await?;
    let results = shards
        .wait_done(run_time + DEADLINE_SLACK, |c| {
            churning.set_position(c.connected.saturating_sub(base));
            churning.set_message(format!("{} failed", c.connect_failed));
            sampler.tick(c.connected.saturating_sub(base));
        })
        .await?;
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = cpu_before.delta_ms(&servers.cpu(), ticks);
    let rss_end = servers.gateway_rss_kib()?;
    let churn_connects: u64 = results.iter().map(|r| r.sent_ok).sum();
    sampler.sample(churn_connects);
    let handshake = merged(&results, |r| &r.handshake);
    let cpu_total: f64 = cpu.values().sum();
    let figures = ChurnFigures {
        sessions: args.sessions,
        rate: args.rate,
        duration_s: args.duration,
        ramp_connected: counts.connected,
        churn_connects,
        connects_per_sec: churn_connects as f64 / seconds.max(1e-3),
        failed: results.iter().map(|r| r.connect_failed).sum(),
        failures: merged_counts(results.iter().map(|r| r.failures.clone())),
        dropped_by_server: results.iter().map(|r| r.disconnected).sum(),
        handshake: handshake.summary(),
        gateway_rss_start_kib: rss_start,
        gateway_rss_end_kib: rss_end,
        server_cpu_ms_per_cycle: if churn_connects == 0 {
            0.0
        } else {
            cpu_total / churn_connects as f64
        },
        server_cpu_ms: cpu,
        handshake_cdf: cdf_points(&handshake),
        samples: sampler.samples,
    };
    churning.finish_with_message(format!(
        "{} connects ({:.0}/s), {} failed",
        figures.churn_connects, figures.connects_per_sec, figures.failed
    ));
    let ok = figures.counts_add_up();
    let machine = Machine::now(load_before, client_processes);
    let md = markdown(mix, &figures, &machine);
    let charts = vec![
        (
            "memory",
            Chart::new("gateway memory during churn", "second", "gateway RSS, MiB").line(
                "gateways",
                figures
                    .samples
                    .iter()
                    .map(|s| (s.t_s, s.edge_rss_kib as f64 / 1024.0))
                    .collect(),
            ),
        ),
        (
            "handshake-cdf",
            Chart::new("handshake under churn", "percentile", "ms")
                .nines()
                .line("handshake", figures.handshake_cdf.clone()),
        ),
        ("cpu", cpu_chart("server CPU by process", &figures.samples)),
    ];
    report::finish(
        target,
        &report::Envelope {
            scenario: "churn",
            command: command_line(),
            started_at,
            machine,
            settings: &args,
            servers: servers.processes(),
            setup,
            figures: &figures,
        },
        md,
        charts,
        ok,
    )
}

fn markdown(mix: Mix, f: &ChurnFigures, machine: &Machine) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### churn: {} sessions ({mix:?}), {} leave and arrive per second for {:.0} s\n",
        f.sessions, f.rate, f.duration_s
    );
    let _ = writeln!(md, "{}\n", machine.line());
    let _ = writeln!(md, "| what | figure |\n|---|---:|");
    let _ = writeln!(
        md,
        "| connects during churn / per second | {} / {:.0} |",
        f.churn_connects, f.connects_per_sec
    );
    let _ = writeln!(
        md,
        "| failed connects / dropped by the server | {} / {} |",
        f.failed, f.dropped_by_server
    );
    let _ = writeln!(
        md,
        "| **server CPU per connect + leave** | **{:.2} ms** |",
        f.server_cpu_ms_per_cycle
    );
    let _ = writeln!(
        md,
        "| gateway RSS at start → end | {:.1} → {:.1} MiB |\n",
        f.gateway_rss_start_kib as f64 / 1024.0,
        f.gateway_rss_end_kib as f64 / 1024.0
    );
    let s = &f.handshake;
    let _ = writeln!(
        md,
        "| ms | count | p50 | p90 | p99 | p99.9 | max |\n|---|---:|---:|---:|---:|---:|---:|\n| handshake under churn | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
        s.count, s.p50_ms, s.p90_ms, s.p99_ms, s.p999_ms, s.max_ms
    );
    for (why, n) in &f.failures {
        let _ = writeln!(md, "\nfailure ×{n}: {why}");
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_spread_around_the_mean() {
        let mean = Duration::from_secs(10);
        let all: Vec<Duration> = (0..100)
            .flat_map(|slot| (1..11).map(move |k| lifetime(mean, slot, k)))
            .collect();
        assert!(all.iter().all(|d| *d >= mean / 2 && *d < mean * 3 / 2));
        let average = all.iter().sum::<Duration>() / all.len() as u32;
        assert!((average.as_secs_f64() - 10.0).abs() < 0.5, "{average:?}");
        assert_ne!(lifetime(mean, 1, 1), lifetime(mean, 2, 1));
        assert!((0..100).all(|slot| lifetime(mean, slot, 0) < mean));
    }
}
