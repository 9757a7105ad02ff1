//! `group`: fan-out. K groups of G members (up to 10,000, the API's limit) made through the
//! HTTP API (`POST /v1/groups`, then `POST /v1/groups/{id}/members`) and cached under
//! `.dev/bench/groups.json`; in each group the owner sends at an even pace and every other
//! member must get every message once, in order. Reported: every delivery's latency and, per
//! message, the time until its **last** member had it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::Args;
use http::{Method, StatusCode};
use indicatif::MultiProgress;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;

use crate::api::{ApiConnection, ApiTarget};
use crate::conn::To;
use crate::load::coordinator::{Shards, merged, merged_counts, timeline};
use crate::load::flows::{Flow, run_flows};
use crate::load::plan::{
    DEADLINE_SLACK, Edges, Participant, Side, common, participants, shard_count,
};
use crate::load::protocol::{Common, GroupSpec, Job, Report, SessionSpec, ShardResult, Timing};
use crate::load::shard::Live;
use crate::report::charts::{cdf_points, cpu_chart, cpu_per_1000, latency_chart};
use crate::report::latency::{Latency, Summary, Window};
use crate::report::plots::Chart;
use crate::report::{self, Machine, bar, command_line, run_id};
use crate::sampling::ledger::{self, Ledger, Stores};
use crate::sampling::servers::ServerSet;
use crate::sampling::{Sampler, ServerSample};
use crate::target::{Mix, Target, ca_store};

/// The API's limit on a group's size.
pub const MAX_GROUP_MEMBERS: usize = 10_000;
/// Members a group is created with (the API takes at most 256, the owner aside).
const INITIAL_MEMBERS: usize = 255;

#[derive(Debug, Args, Serialize)]
pub struct GroupArgs {
    #[command(flatten)]
    pub target: Target,
    /// Members per group, the sender included (at most 10,000).
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// Groups (each with its own members and sender).
    #[arg(long, default_value_t = 1)]
    pub groups: usize,
    /// Messages per second, all groups together.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Total messages instead of a duration.
    #[arg(long)]
    pub messages: Option<u64>,
    /// Seconds to wait for deliveries after the last send.
    #[arg(long, default_value_t = 15)]
    pub drain: u64,
    #[arg(long, default_value_t = 100)]
    pub content_bytes: usize,
}

// ---- the group cache ---------------------------------------------------------------------------

#[derive(Debug, Default, Serialize, Deserialize)]
struct GroupFile {
    api: String,
    groups: Vec<CachedGroup>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct CachedGroup {
    id: uuid::Uuid,
    /// Owner first.
    members: Vec<uuid::Uuid>,
}

fn groups_file(target: &Target) -> PathBuf {
    target.dev_dir.join("bench/groups.json")
}

fn load(path: &Path, api: &str) -> anyhow::Result<GroupFile> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let file: GroupFile = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a group cache", path.display()))?;
            Ok(if file.api == api {
                file
            } else {
                GroupFile {
                    api: api.into(),
                    ..GroupFile::default()
                }
            })
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(GroupFile {
            api: api.into(),
            ..GroupFile::default()
        }),
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

fn save(path: &Path, file: &GroupFile) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(file)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Calls the API as `token`, retrying rate limits and unavailability.
async fn call(
    api: &ApiTarget,
    source: std::net::IpAddr,
    conn: &mut Option<ApiConnection>,
    token: &str,
    method: Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<crate::api::Answer> {
    let mut last = None;
    for _ in 0..20 {
        if !conn.as_ref().is_some_and(ApiConnection::is_usable) {
            *conn = Some(api.connect(source).await?);
        }
        let Some(c) = conn.as_mut() else { continue };
        match c.call_as(token, method.clone(), path, body).await {
            Ok(answer)
                if answer.status == StatusCode::TOO_MANY_REQUESTS
                    || answer.status == StatusCode::SERVICE_UNAVAILABLE =>
            {
                tokio::time::sleep(Duration::from_secs(answer.retry_after.unwrap_or(1).min(10)))
                    .await;
            }
            Ok(answer) => return Ok(answer),
            Err(err) => {
                *conn = None;
                last = Some(err);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("{method} {path}: rate limited or unavailable")))
}

/// Makes sure group `k` of `members` exists with exactly these members (owner first): reuses
/// the cached one when the API still shows it whole, else creates it. Returns its id and
/// whether it was created now.
async fn ensure_group(
    api: &ApiTarget,
    target: &Target,
    cache: &mut GroupFile,
    members: &[Participant],
    k: usize,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<(uuid::Uuid, bool)> {
    let sources = api.sources(target.source_addresses);
    let owner = &members[0];
    let ids: Vec<uuid::Uuid> = members.iter().map(|m| m.id).collect();
    let mut conn = None;
    if let Some(cached) = cache.groups.iter().find(|g| g.members == ids) {
        let answer = call(
            api,
            sources[0],
            &mut conn,
            &owner.token,
            Method::GET,
            &format!("/v1/groups/{}", cached.id),
            None,
        )
        .await?;
        let shown = answer.body["members"].as_array().map_or(0, Vec::len);
        if answer.status == StatusCode::OK && shown == ids.len() {
            progress.inc(ids.len() as u64);
            return Ok((cached.id, false));
        }
    }
    let first: Vec<String> = ids[1..]
        .iter()
        .take(INITIAL_MEMBERS)
        .map(ToString::to_string)
        .collect();
    let answer = call(
        api,
        sources[0],
        &mut conn,
        &owner.token,
        Method::POST,
        "/v1/groups",
        Some(&json!({ "name": format!("bench {} #{k}", ids.len()), "memberIds": first })),
    )
    .await?;
    if answer.status != StatusCode::CREATED {
        bail!("POST /v1/groups: HTTP {}: {}", answer.status, answer.body);
    }
    let id: uuid::Uuid = answer.body["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("POST /v1/groups: no id in {}", answer.body))?;
    progress.inc((1 + first.len()) as u64);
    // The rest one by one, from several connections at once.
    let rest: Arc<Vec<uuid::Uuid>> = Arc::new(ids[1 + first.len()..].to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for worker in 0..target.setup_concurrency.max(1) {
        let (api, rest, next) = (api.clone(), rest.clone(), next.clone());
        let (token, source, progress) = (
            owner.token.clone(),
            sources[worker % sources.len()],
            progress.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut conn = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(user) = rest.get(i) else { break };
                let answer = call(
                    &api,
                    source,
                    &mut conn,
                    &token,
                    Method::POST,
                    &format!("/v1/groups/{id}/members"),
                    Some(&json!({ "userId": user })),
                )
                .await?;
                // 409: a retry of an add that had gone through.
                if answer.status != StatusCode::CREATED
                    && answer.status != StatusCode::OK
                    && answer.status != StatusCode::CONFLICT
                {
                    bail!(
                        "adding {user} to {id}: HTTP {}: {}",
                        answer.status,
                        answer.body
                    );
                }
                progress.inc(1);
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    cache.groups.retain(|g| g.members != ids);
    cache.groups.push(CachedGroup { id, members: ids });
    Ok((id, true))
}

// ---- the scenario ------------------------------------------------------------------------------

#[derive(Debug, Serialize)]
pub struct GroupFigures {
    pub members: usize,
    pub groups: usize,
    pub gateways: usize,
    pub rate: f64,
    pub duration_s: f64,
    pub messages_planned: u64,
    pub groups_created: usize,
    pub group_setup_seconds: f64,
    pub connected: u64,
    pub connect_failed: u64,
    pub connect_failures: BTreeMap<String, u64>,
    pub handshake: Summary,
    pub sent_ok: u64,
    pub send_failed: u64,
    pub send_failures: BTreeMap<String, u64>,
    /// sent_ok × (members − 1).
    pub deliveries_expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub unexpected: u64,
    pub stale: u64,
    pub disconnected: u64,
    /// Every delivery: send → this member has it.
    pub latency: Summary,
    /// Per message that reached every member: send → the last member has it.
    pub last_member: Summary,
    pub complete_messages: u64,
    pub incomplete_messages: u64,
    pub deliveries_per_sec: f64,
    pub server_cpu_ms: BTreeMap<String, f64>,
    pub server_cpu_ms_total: f64,
    pub server_cpu_ms_per_1000_deliveries: f64,
    pub client_cpu_ms: f64,
    pub timeline: Vec<Window>,
    pub latency_cdf: Vec<(f64, f64)>,
    pub last_member_cdf: Vec<(f64, f64)>,
    pub samples: Vec<ServerSample>,
    /// What the servers asked of the kernel, Redis and Postgres per 1,000 deliveries.
    pub ledger: Ledger,
}

impl GroupFigures {
    pub fn counts_add_up(&self) -> bool {
        self.connect_failed == 0
            && self.send_failed == 0
            && self.sent_ok == self.messages_planned
            && self.delivered == self.deliveries_expected
            && self.lost == 0
            && self.duplicates == 0
            && self.out_of_order == 0
            && self.unexpected == 0
            && self.incomplete_messages == 0
    }
}

/// Per group, per message: (slowest delivery µs, members that got it), over every shard.
pub(crate) fn merge_fanout(results: &[ShardResult]) -> BTreeMap<u32, Vec<(u64, u32)>> {
    let mut all: BTreeMap<u32, Vec<(u64, u32)>> = BTreeMap::new();
    for r in results {
        for (group, lines) in &r.fanout {
            let merged = all.entry(*group).or_default();
            if merged.len() < lines.len() {
                merged.resize(lines.len(), (0, 0));
            }
            for (m, l) in merged.iter_mut().zip(lines) {
                m.0 = m.0.max(l.0);
                m.1 += l.1;
            }
        }
    }
    all
}

/// The last-member latency of every message all `receivers` got; and how many messages
/// did not reach them all.
pub(crate) fn last_member(
    fanout: &BTreeMap<u32, Vec<(u64, u32)>>,
    receivers: u32,
) -> (Latency, u64) {
    let mut h = Latency::new();
    let mut incomplete = 0;
    for lines in fanout.values() {
        for &(slowest_us, got) in lines {
            if got >= receivers {
                h.record(Duration::from_micros(slowest_us));
            } else {
                incomplete += 1;
            }
        }
    }
    (h, incomplete)
}

pub async fn group(args: GroupArgs) -> anyhow::Result<bool> {
    let target = &args.target;
    if args.members < 2 || args.members > MAX_GROUP_MEMBERS {
        bail!("--members must be 2 to {MAX_GROUP_MEMBERS}");
    }
    if args.groups == 0 || !args.rate.is_finite() || args.rate <= 0.0 {
        bail!("--groups and --rate must be positive");
    }
    let started_at = report::now();
    let load_before = crate::sampling::procfs::load_average();
    let servers = ServerSet::discover(&target.dev_dir, &target.server_pids)?;
    let multi: MultiProgress = report::progress();
    let mix = target.mix(Mix::Quic);
    let duration_s = args
        .messages
        .map_or(args.duration, |m| m as f64 / args.rate);
    let planned = args
        .messages
        .unwrap_or((args.rate * duration_s).round() as u64);
    let users_n = args.members * args.groups;
    let shards_n = shard_count(target, users_n);
    let ramp_time = Duration::from_secs_f64(users_n as f64 / target.ramp.max(0.001));
    let run_time = ramp_time
        + Duration::from_millis(target.connect_timeout_ms)
        + Duration::from_secs_f64(duration_s)
        + Duration::from_secs(args.drain * 2);
    let (users, setup) = participants(
        target,
        &Side::Haberci,
        users_n,
        run_time + DEADLINE_SLACK + Duration::from_secs(600),
        &multi,
    )
    .await?;

    // Groups through the API, cached.
    let t_groups = Instant::now();
    let api = ApiTarget::of(target, ca_store(target)?).await?;
    let cache_path = groups_file(target);
    let mut cache = load(&cache_path, &target.api)?;
    let progress = bar(&multi, users_n as u64, "members");
    let mut ids = Vec::new();
    let mut created = 0;
    for k in 0..args.groups {
        let members = &users[k * args.members..(k + 1) * args.members];
        let (id, new) = ensure_group(&api, target, &mut cache, members, k, &progress).await?;
        created += usize::from(new);
        ids.push(id);
        save(&cache_path, &cache)?;
    }
    let group_setup_seconds = t_groups.elapsed().as_secs_f64();
    progress.finish_with_message(format!(
        "{} group(s) ready ({created} created) in {group_setup_seconds:.1}s",
        args.groups
    ));

    // Sessions: the owner of group k sends (on gateway k % g), the others receive, spread
    // over the gateways and, in contiguous runs, over the shards.
    let mut edges = Edges::resolve(target, &Side::Haberci).await?;
    let g = edges.len();
    let mut receivers: Vec<(usize, SessionSpec)> = Vec::new();
    let mut senders = Vec::new();
    let mut i = 0;
    for k in 0..args.groups {
        let members = &users[k * args.members..(k + 1) * args.members];
        senders.push(edges.session(&members[0], mix, i, k % g));
        i += 1;
        for (j, m) in members.iter().enumerate().skip(1) {
            receivers.push((k, edges.session(m, mix, i, (k + j) % g)));
            i += 1;
        }
    }
    let messages_of = |k: usize| -> u32 {
        (planned / args.groups as u64 + u64::from((k as u64) < planned % args.groups as u64)) as u32
    };
    let timing = Timing {
        duration_ms: (duration_s * 1000.0) as u64,
        drain_ms: args.drain * 1000,
        content_bytes: args.content_bytes,
        run_id: run_id(),
    };
    let common = common(target, &Side::Haberci, shards_n, run_time + DEADLINE_SLACK);
    let chunk = receivers.len().div_ceil(shards_n).max(1);
    let mut jobs = Vec::new();
    for s in 0..shards_n {
        let mut specs: BTreeMap<usize, GroupSpec> = BTreeMap::new();
        let spec_of = |k: usize| GroupSpec {
            id: k as u32,
            group: ids[k],
            sender: None,
            members: Vec::new(),
            messages: messages_of(k),
        };
        for (k, member) in receivers.iter().skip(s * chunk).take(chunk) {
            specs
                .entry(*k)
                .or_insert_with(|| spec_of(*k))
                .members
                .push(member.clone());
        }
        for (k, sender) in senders
            .iter()
            .enumerate()
            .filter(|(k, _)| k % shards_n == s)
        {
            specs.entry(k).or_insert_with(|| spec_of(k)).sender = Some(sender.clone());
        }
        jobs.push(Job::Group {
            common: common.clone(),
            groups: specs.into_values().collect(),
            timing,
        });
    }
    let mut shards = Shards::start(jobs).await?;
    let connecting = bar(&multi, users_n as u64, "connect");
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
    let expected_per_message = (args.members - 1) as u64;
    let ticks = crate::sampling::procfs::clock_ticks_per_sec();
    let stores = Stores::from_env();
    let ledger_before = ledger::snapshot(&servers, &stores).await;
    let cpu_before = servers.cpu();
    let mut sampler = Sampler::start(&servers);
    let delivering = bar(&multi, planned * expected_per_message, "deliveries");
    shards.go().await?;
    let results = shards
        .wait_done(run_time + DEADLINE_SLACK, |c| {
            delivering.set_position(c.received);
            delivering.set_message(format!("sent {}", c.sent));
            sampler.tick(c.received);
        })
        .await?;
    let cpu = cpu_before.delta_ms(&servers.cpu(), ticks);
    let ledger_after = ledger::snapshot(&servers, &stores).await;
    let sum = |f: fn(&ShardResult) -> u64| results.iter().map(f).sum::<u64>();
    let delivered = sum(|r| r.received);
    let ledger = Ledger::between(&ledger_before, &ledger_after, "deliveries", delivered, 1000);
    sampler.sample(delivered);
    let sent_ok = sum(|r| r.sent_ok);
    let fanout = merge_fanout(&results);
    let (last, mut incomplete) = last_member(&fanout, expected_per_message as u32);
    // Groups none of whose members reported anything lost every message.
    for k in 0..args.groups {
        if !fanout.contains_key(&(k as u32)) {
            incomplete += u64::from(messages_of(k));
        }
    }
    let latency = merged(&results, |r| &r.latency);
    let first = results
        .iter()
        .map(|r| r.first_send_ns)
        .filter(|n| *n > 0)
        .min()
        .unwrap_or(0);
    let last_ns = results.iter().map(|r| r.last_receive_ns).max().unwrap_or(0);
    let span_s = last_ns.saturating_sub(first) as f64 / 1e9;
    let server_total: f64 = cpu.values().sum();
    let expected = sent_ok * expected_per_message;
    let figures = GroupFigures {
        members: args.members,
        groups: args.groups,
        gateways: g,
        rate: args.rate,
        duration_s,
        messages_planned: planned,
        groups_created: created,
        group_setup_seconds,
        connected: counts.connected,
        connect_failed: counts.connect_failed,
        connect_failures: merged_counts(results.iter().map(|r| r.failures.clone())),
        handshake: merged(&results, |r| &r.handshake).summary(),
        sent_ok,
        send_failed: sum(|r| r.send_failed),
        send_failures: merged_counts(results.iter().map(|r| r.send_failures.clone())),
        deliveries_expected: expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        duplicates: sum(|r| r.duplicates),
        out_of_order: sum(|r| r.out_of_order),
        unexpected: sum(|r| r.unexpected),
        stale: sum(|r| r.stale),
        disconnected: sum(|r| r.disconnected),
        latency: latency.summary(),
        last_member: last.summary(),
        complete_messages: last.len(),
        incomplete_messages: incomplete,
        deliveries_per_sec: if span_s > 0.0 {
            delivered as f64 / span_s
        } else {
            0.0
        },
        server_cpu_ms_per_1000_deliveries: if delivered == 0 {
            0.0
        } else {
            server_total * 1000.0 / delivered as f64
        },
        server_cpu_ms: cpu,
        server_cpu_ms_total: server_total,
        client_cpu_ms: results.iter().map(|r| r.client_cpu_ms).sum(),
        timeline: timeline(&results),
        latency_cdf: cdf_points(&latency),
        last_member_cdf: cdf_points(&last),
        samples: sampler.samples,
        ledger,
    };
    delivering.finish_with_message(format!(
        "delivered {} of {}; lost {}, dup {}, out of order {}",
        figures.delivered,
        figures.deliveries_expected,
        figures.lost,
        figures.duplicates,
        figures.out_of_order
    ));
    let ok = figures.counts_add_up();
    let machine = Machine::now(load_before, shards.count());
    let md = markdown(mix, &figures, &machine);
    let charts = vec![
        (
            "latency",
            latency_chart(
                "send → deliver (every member) over the run",
                &figures.timeline,
            ),
        ),
        (
            "latency-cdf",
            Chart::new("group fan-out", "percentile", "ms")
                .nines()
                .line("every delivery", figures.latency_cdf.clone())
                .line("last member", figures.last_member_cdf.clone()),
        ),
        (
            "cpu-per-1000",
            Chart::new(
                "server CPU per 1,000 deliveries",
                "second",
                "ms of CPU per 1,000 deliveries",
            )
            .line("haberci", cpu_per_1000(&figures.samples)),
        ),
        ("cpu", cpu_chart("server CPU by process", &figures.samples)),
    ];
    report::finish(
        target,
        &report::Envelope {
            scenario: "group",
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

fn markdown(mix: Mix, f: &GroupFigures, machine: &Machine) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### group: {} group(s) of {} members ({mix:?}), {} gateway(s), {} msg/s for {:.1} s\n",
        f.groups, f.members, f.gateways, f.rate, f.duration_s
    );
    let _ = writeln!(
        md,
        "{}; groups ready in {:.1} s ({} created)\n",
        machine.line(),
        f.group_setup_seconds,
        f.groups_created
    );
    let _ = writeln!(md, "| what | figure |\n|---|---:|");
    let _ = writeln!(
        md,
        "| planned / sent / deliveries expected / delivered | {} / {} / {} / {} |",
        f.messages_planned, f.sent_ok, f.deliveries_expected, f.delivered
    );
    let _ = writeln!(
        md,
        "| lost / duplicated / out of order / messages not at every member | {} / {} / {} / {} |",
        f.lost, f.duplicates, f.out_of_order, f.incomplete_messages
    );
    let _ = writeln!(md, "| deliveries/s | {:.0} |", f.deliveries_per_sec);
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
        "| server CPU, ms | {:.0}: {roles} |",
        f.server_cpu_ms_total
    );
    let _ = writeln!(
        md,
        "| connect failed / dropped / replayed from earlier runs | {} / {} / {} |\n",
        f.connect_failed, f.disconnected, f.stale
    );
    let _ = writeln!(
        md,
        "| ms | count | p50 | p90 | p99 | p99.9 | max |\n|---|---:|---:|---:|---:|---:|---:|"
    );
    for (what, s) in [
        ("**send → last member**", &f.last_member),
        ("send → each member", &f.latency),
        ("handshake", &f.handshake),
    ] {
        let _ = writeln!(
            md,
            "| {what} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            s.count, s.p50_ms, s.p90_ms, s.p99_ms, s.p999_ms, s.max_ms
        );
    }
    for (why, n) in f.send_failures.iter().chain(&f.connect_failures) {
        let _ = writeln!(md, "\nfailure ×{n}: {why}");
    }
    let _ = writeln!(md, "\n{}", f.ledger.markdown());
    md
}

// ---- the shard's side --------------------------------------------------------------------------

pub(crate) async fn shard(
    common: Common,
    groups: Vec<GroupSpec>,
    timing: Timing,
    live: &Arc<Live>,
    out: &mpsc::UnboundedSender<Report>,
    go: mpsc::UnboundedReceiver<()>,
) -> anyhow::Result<ShardResult> {
    // Members first, then the senders.
    let mut specs = Vec::new();
    let mut flows = Vec::new();
    for g in &groups {
        let first = specs.len();
        specs.extend(g.members.iter().cloned());
        flows.push(Flow {
            id: g.id,
            to: To::Group(g.group),
            messages: g.messages,
            sender: None,
            receivers: (first..specs.len()).collect(),
        });
    }
    for (flow, g) in flows.iter_mut().zip(&groups) {
        if let Some(sender) = &g.sender {
            flow.sender = Some(specs.len());
            specs.push(sender.clone());
        }
    }
    let mut result = run_flows(common, specs, flows, timing, true, live, out, go).await?;
    // Only groups whose members live here report fan-out lines; the sender's shard reports
    // its sends (sent_ok) in the totals.
    result
        .fanout
        .retain(|(_, lines)| lines.iter().any(|l| l.1 > 0));
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fanout_merges_shards_and_finds_the_last_member() {
        let a = ShardResult {
            fanout: vec![(0, vec![(1_000, 2), (5_000, 2)])],
            ..ShardResult::default()
        };
        let b = ShardResult {
            fanout: vec![(0, vec![(3_000, 1), (2_000, 0)]), (1, vec![(7_000, 3)])],
            ..ShardResult::default()
        };
        let all = merge_fanout(&[a, b]);
        assert_eq!(all[&0], vec![(3_000, 3), (5_000, 2)]);
        let (h, incomplete) = last_member(&all, 3);
        // Group 0's second message reached 2 of 3 members: not complete.
        assert_eq!((h.len(), incomplete), (2, 1));
        assert!((h.summary().max_ms - 7.0).abs() < 0.01);
    }
}
