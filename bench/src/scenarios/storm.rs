//! `storm`: a gateway dies (SIGKILL, as a crash or an OOM kill would) while its clients chat,
//! and all of them reconnect at once and resume. With `--signal term` it is drained instead
//! (SIGTERM, as an upgrade does): its sessions are told `server_draining` with a wait spread
//! over the gateway's window, and come back elsewhere after it.
//!
//! Pairs chat at an even pace across two or more gateways (a sender never on its recipient's
//! gateway). After `--kill-after` seconds the coordinator kills the victim gateway (pid from
//! its `.dev/run/<role>.pid`). Every client that loses its connection reconnects by itself —
//! to another gateway (`--back other`) or, retrying with backoff, to the same one, which the
//! coordinator starts again right away with the same command line and environment
//! (`--back same`) — with the SDK's resume positions, and resends what was not answered
//! with the same `client_msg_id`. Counted: how long until every session is back, and whether
//! any message went missing (a gap), came twice, or out of order. The victim is always started
//! again before the run ends, so the stack is whole afterwards (`./dev status`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use haberci_client::{Client, Event, Events, SendError, SendMessage, UserId};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::conn::Incoming;
use crate::load::coordinator::{Shards, merged, merged_counts, timeline};
use crate::load::flows::{Outbox, Recorder, Stamp, content, receive, unix_ns};
use crate::load::plan::{DEADLINE_SLACK, Edges, Side, common, participants, shard_count};
use crate::load::protocol::{
    Back, PairSpec, Reconnect, Report, SessionSpec, ShardResult, Stop, StormJob, Timing,
};
use crate::load::shard::{Live, client_config, failure_key, root_store, wait_go};
use crate::report::charts::{cdf_points, latency_chart};
use crate::report::latency::{Latency, Summary, Window};
use crate::report::plots::Chart;
use crate::report::{self, Machine, bar, command_line, run_id};
use crate::revival::{Revival, kill9, signal, victim_index, wait_listening, wait_refused};
use crate::sampling::servers::ServerSet;
use crate::target::{Mix, Target};

#[derive(Debug, Args, Serialize)]
pub struct StormArgs {
    #[command(flatten)]
    pub target: Target,
    /// Connected users (half senders, half recipients), spread over the gateways.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Messages per second, all senders together, for the whole run.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Seconds of sending before the kill (default: a third of the duration).
    #[arg(long)]
    pub kill_after: Option<f64>,
    /// The gateway to kill, by its pid file's name (default: the last gateway).
    #[arg(long)]
    pub kill: Option<String>,
    /// Where the clients go.
    #[arg(long, value_enum, default_value = "other")]
    pub back: Back,
    /// How the victim is stopped: `kill` (a crash) or `term` (a drain).
    #[arg(long, value_enum, default_value = "kill")]
    pub signal: Stop,
    /// Before the victim, restart these backend processes one after another (`worker,api`),
    /// as an upgrade rolls them: SIGTERM, exit, start again, ready (`revival::roll`).
    #[arg(long, value_delimiter = ',')]
    pub roll: Vec<String>,
    /// Client heartbeat: a QUIC client of a gateway that is not restarted notices its death
    /// only by a missing Pong; with `--back same`, by the restarted gateway's stateless reset
    /// to its next packet (WebSocket clients get a TCP reset at once). Default: the SDK's.
    #[arg(long, default_value_t = haberci_client::DEFAULT_PING_INTERVAL.as_millis() as u64)]
    pub ping_ms: u64,
    #[arg(long, default_value_t = haberci_client::DEFAULT_PONG_TIMEOUT.as_millis() as u64)]
    pub pong_timeout_ms: u64,
    /// Seconds to wait for deliveries after the last send.
    #[arg(long, default_value_t = 30)]
    pub drain: u64,
    #[arg(long, default_value_t = 100)]
    pub content_bytes: usize,
}

// ---- the shard's side --------------------------------------------------------------------------

/// The gateway a session tries on its `attempt`-th reconnect.
fn next_gateway(back: Back, from: usize, attempt: u32, gateways: usize) -> usize {
    match back {
        Back::Same => from,
        // Every other gateway in turn, never the one that failed.
        Back::Other if gateways > 1 => (from + 1 + attempt as usize % (gateways - 1)) % gateways,
        Back::Other => from,
    }
}

/// Keeps one session connected: forwards its messages, and when its connection ends,
/// reconnects (resume positions and token from the old client) until `stop`.
struct Keeper {
    job: Arc<StormJob>,
    spec: SessionSpec,
    roots: rustls::RootCertStore,
    endpoint: quinn::Endpoint,
    live: Arc<Live>,
    /// This device's own TLS session tickets (`--tls-resume`): its reconnects offer the ticket
    /// its last connection was given, wherever they go.
    tickets: Option<Arc<dyn rustls::client::ClientSessionStore>>,
}

impl Keeper {
    fn config(&self, gateway: usize) -> haberci_client::ClientConfig {
        let mut spec = self.spec.clone();
        let (quic, tcp) = self.job.gateways[gateway];
        spec.addr = match spec.transport {
            crate::load::protocol::TransportKind::Ws => SocketAddr::new(spec.addr.ip(), tcp.port()),
            _ => quic,
        };
        let mut config = client_config(
            &self.job.common,
            &spec,
            &self.roots,
            Some(self.endpoint.clone()),
        );
        config.ping_interval = Duration::from_millis(self.job.ping_ms);
        config.pong_timeout = Duration::from_millis(self.job.pong_timeout_ms);
        if let Some(tickets) = &self.tickets {
            config.tickets = tickets.clone();
        }
        config
    }

    async fn run(
        self,
        mut client: Client,
        mut events: Events,
        current: watch::Sender<Option<Client>>,
        messages: mpsc::UnboundedSender<Incoming>,
        mut stop: watch::Receiver<bool>,
        reconnects: Arc<Mutex<Vec<Reconnect>>>,
    ) {
        let mut gateway = self.spec.gateway;
        loop {
            // A drained gateway says when to come back (`Closing.retry_after_ms`).
            let mut retry_after = None;
            let ended = loop {
                tokio::select! {
                    event = events.recv() => match event {
                        Some(Event::Message(m)) => { let _ = messages.send(Incoming::Message(m.content)); }
                        Some(Event::Closing(closing)) => {
                            retry_after = closing
                                .retry_after_ms
                                .map(|ms| Duration::from_millis(u64::from(ms.get())));
                        }
                        Some(Event::Disconnected(_)) | None => break true,
                        Some(_) => {}
                    },
                    _ = stop.changed() => break false,
                }
            };
            if !ended || *stop.borrow() {
                client.close().await;
                return;
            }
            let _ = current.send(None);
            self.live.disconnected.fetch_add(1, Ordering::Relaxed);
            let mut record = Reconnect {
                lost_ns: unix_ns(),
                from_gateway: gateway,
                ..Reconnect::default()
            };
            let mut config = client.resume_config();
            // Paced like the SDKs' clients: the first try after 250–500 ms, then exponential
            // with jitter up to 30 s, never sooner than the server asked.
            let backoff = haberci_client::Backoff::default();
            let mut pause = backoff.delay(0, retry_after);
            loop {
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => break,
                }
                let to = next_gateway(
                    self.job.back,
                    gateway,
                    record.attempts,
                    self.job.gateways.len(),
                );
                record.attempts += 1;
                let fresh = self.config(to);
                config.transport = fresh.transport;
                config.quic_endpoint = fresh.quic_endpoint;
                let t0 = Instant::now();
                let attempt = tokio::select! {
                    attempt = Client::connect(config.clone()) => attempt,
                    _ = stop.changed() => break,
                };
                match attempt {
                    Ok((c, e)) => {
                        record.back_ns = unix_ns();
                        record.to_gateway = to;
                        record.handshake_us = t0.elapsed().as_micros() as u64;
                        gateway = to;
                        client = c;
                        events = e;
                        self.live.reconnected.fetch_add(1, Ordering::Relaxed);
                        let _ = current.send(Some(client.clone()));
                        break;
                    }
                    Err(err) => pause = backoff.delay(record.attempts, err.retry_after()),
                }
            }
            let back = record.back_ns != 0;
            if let Ok(mut all) = reconnects.lock() {
                all.push(record);
            }
            if !back {
                return;
            }
        }
    }
}

type Answer = (u32, Result<haberci_client::Sent, SendError>);

/// Sends `messages` messages at an even pace through whatever connection is current, and
/// resends (same `client_msg_id`, same content) every send its connection ended before
/// answering, in order, once a new connection is there.
async fn send(
    flow: u32,
    to: UserId,
    messages: u32,
    mut current: watch::Receiver<Option<Client>>,
    start: tokio::time::Instant,
    timing: Timing,
    live: Arc<Live>,
) -> Outbox {
    let mut outbox = Outbox {
        sent_ok: vec![false; messages as usize],
        failed: BTreeMap::new(),
        first_ns: u64::MAX,
    };
    if messages == 0 {
        return outbox;
    }
    let period = Duration::from_millis(timing.duration_ms) / messages;
    let phase = period.mul_f64((f64::from(flow) * 0.618_033_988_75).fract());
    let mut tick = tokio::time::interval_at(start + phase, period.max(Duration::from_micros(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut made: Vec<SendMessage> = Vec::with_capacity(messages as usize);
    // Made but not yet handed to a live connection, in order.
    let mut waiting: BTreeSet<u32> = BTreeSet::new();
    let mut in_flight: FuturesUnordered<futures::future::BoxFuture<'static, Answer>> =
        FuturesUnordered::new();
    let launch = |client: &Client, n: u32, message: SendMessage| {
        let c = client.clone();
        let mut fut: futures::future::BoxFuture<'static, Answer> =
            Box::pin(async move { (n, c.send(message).await) });
        // The first poll hands the frame to the connection, in order.
        let ready = match futures::FutureExt::poll_unpin(
            &mut fut,
            &mut std::task::Context::from_waker(futures::task::noop_waker_ref()),
        ) {
            std::task::Poll::Ready(done) => Some(done),
            std::task::Poll::Pending => None,
        };
        (fut, ready)
    };
    let deadline = start + Duration::from_millis(timing.duration_ms + timing.drain_ms);
    loop {
        if made.len() == messages as usize && waiting.is_empty() && in_flight.is_empty() {
            break;
        }
        let mut answers = Vec::new();
        tokio::select! {
            _ = tick.tick(), if made.len() < messages as usize => {
                let n = made.len() as u32;
                let sent_ns = unix_ns();
                outbox.first_ns = outbox.first_ns.min(sent_ns);
                made.push(haberci_client::text_to(
                    to,
                    content(&Stamp { run: timing.run_id, pair: flow, n, sent_ns }, timing.content_bytes),
                ));
                waiting.insert(n);
                live.sent.fetch_add(1, Ordering::Relaxed);
            }
            Some(done) = in_flight.next(), if !in_flight.is_empty() => answers.push(done),
            changed = current.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            () = tokio::time::sleep_until(deadline) => break,
        }
        // Hand everything waiting to the current connection, in order.
        let client = current.borrow().clone();
        if let Some(client) = client.filter(Client::is_open) {
            while let Some(n) = waiting.pop_first() {
                let (fut, ready) = launch(&client, n, made[n as usize].clone());
                match ready {
                    Some(done) => answers.push(done),
                    None => in_flight.push(fut),
                }
            }
        }
        for (n, result) in answers {
            match result {
                Ok(_) => outbox.sent_ok[n as usize] = true,
                // The connection ended before the answer: maybe stored, maybe not; the
                // same id again stores it at most once.
                Err(SendError::Disconnected) => {
                    waiting.insert(n);
                }
                Err(SendError::Refused { code, .. }) if code.retryable() => {
                    waiting.insert(n);
                }
                Err(err) => *outbox.failed.entry(failure_key(&err)).or_default() += 1,
            }
        }
    }
    let unanswered = (waiting.len() + in_flight.len()) as u64;
    if unanswered > 0 {
        *outbox
            .failed
            .entry("no answer before the run ended".into())
            .or_default() += unanswered;
    }
    outbox
}

pub(crate) async fn shard(
    job: StormJob,
    live: &Arc<Live>,
    out: &mpsc::UnboundedSender<Report>,
    mut go: mpsc::UnboundedReceiver<()>,
) -> anyhow::Result<ShardResult> {
    let job = Arc::new(job);
    let ticks = crate::sampling::procfs::clock_ticks_per_sec();
    wait_go(&mut go).await?;
    let roots = root_store(&job.common)?;
    let endpoints: Vec<quinn::Endpoint> = (0..job
        .pairs
        .len()
        .saturating_mul(2)
        .div_ceil(job.common.sessions_per_socket.max(1)))
        .map(|_| crate::load::shard::client_endpoint())
        .collect::<anyhow::Result<_>>()?;
    let keeper = |i: usize, spec: &SessionSpec| Keeper {
        job: job.clone(),
        spec: spec.clone(),
        roots: roots.clone(),
        endpoint: endpoints[i / job.common.sessions_per_socket.max(1)].clone(),
        live: live.clone(),
        tickets: job.common.tls_resume.then(|| {
            Arc::new(rustls::client::ClientSessionMemoryCache::new(1))
                as Arc<dyn rustls::client::ClientSessionStore>
        }),
    };
    // Recipients first, then senders, at the ramp rate.
    let mut specs: Vec<&SessionSpec> = job.pairs.iter().map(|p| &p.recipient).collect();
    specs.extend(job.pairs.iter().map(|p| &p.sender));
    let started = tokio::time::Instant::now();
    let rate = job.common.ramp_per_sec.max(0.001);
    let mut handles = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        tokio::time::sleep_until(started + Duration::from_secs_f64(i as f64 / rate)).await;
        let k = keeper(i, spec);
        let config = k.config(spec.gateway);
        let live = live.clone();
        handles.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let result = Client::connect(config).await;
            match &result {
                Ok(_) => live.connected.fetch_add(1, Ordering::Relaxed),
                Err(_) => live.connect_failed.fetch_add(1, Ordering::Relaxed),
            };
            (k, result, t0.elapsed())
        }));
    }
    let mut result = ShardResult::default();
    let mut handshake = Latency::new();
    let mut opened = Vec::new();
    for handle in handles {
        let (k, outcome, took) = handle.await?;
        match outcome {
            Ok(pair) => {
                handshake.record(took);
                opened.push(Some((k, pair)));
            }
            Err(err) => {
                *result.failures.entry(failure_key(&err)).or_default() += 1;
                opened.push(None);
            }
        }
    }
    result.connect_failed = result.failures.values().sum();
    result.handshake = handshake.buckets();
    let _ = out.send(Report::Connected(live.counts()));
    wait_go(&mut go).await?;

    let cpu0 = crate::load::shard::cpu_ms_now(ticks);
    let recorder = Arc::new(Mutex::new(Recorder::default()));
    let reconnects = Arc::new(Mutex::new(Vec::new()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (stop_recv_tx, stop_recv_rx) = watch::channel(false);
    let n = job.pairs.len();
    let mut keepers = Vec::new();
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    let mut currents = Vec::new();
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut slots: Vec<Option<(Keeper, (Client, Events))>> = opened;
    for (i, pair) in job.pairs.iter().enumerate() {
        let (Some(recipient), Some(sender)) = (slots[i].take(), slots[n + i].take()) else {
            continue;
        };
        for (role, (k, (client, events))) in [("recipient", recipient), ("sender", sender)] {
            let (current, watcher) = watch::channel(Some(client.clone()));
            let (tx, rx) = mpsc::unbounded_channel();
            keepers.push(tokio::spawn(k.run(
                client,
                events,
                current,
                tx,
                stop_rx.clone(),
                reconnects.clone(),
            )));
            if role == "recipient" {
                receivers.push((
                    pair.id,
                    tokio::spawn(receive(
                        job.timing.run_id,
                        pair.id,
                        pair.messages,
                        crate::conn::socketio_inbox(rx),
                        recorder.clone(),
                        live.clone(),
                        stop_recv_rx.clone(),
                    )),
                ));
            } else {
                let to = UserId::new(pair.recipient.user).context("a nil recipient id")?;
                senders.push((
                    pair.id,
                    tokio::spawn(send(
                        pair.id,
                        to,
                        pair.messages,
                        watcher.clone(),
                        start,
                        job.timing,
                        live.clone(),
                    )),
                ));
                // The sender's own copies are not counted: drain them.
                tokio::spawn(async move {
                    let mut rx = rx;
                    while rx.recv().await.is_some() {}
                });
            }
            currents.push(watcher);
        }
    }
    let mut sent_ok: BTreeMap<u32, Vec<bool>> = BTreeMap::new();
    let mut first_ns = u64::MAX;
    for (flow, sender) in senders {
        let outbox = sender.await?;
        first_ns = first_ns.min(outbox.first_ns);
        for (why, count) in outbox.failed {
            result.send_failed += count;
            *result.send_failures.entry(why).or_default() += count;
        }
        sent_ok.insert(flow, outbox.sent_ok);
    }
    result.sent_ok = sent_ok.values().flatten().filter(|ok| **ok).count() as u64;
    let drain_end = tokio::time::Instant::now() + Duration::from_millis(job.timing.drain_ms);
    while live.received.load(Ordering::Relaxed) < result.sent_ok
        && tokio::time::Instant::now() < drain_end
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_recv_tx.send(true);
    tokio::time::sleep(haberci_client::DEFAULT_ACK_DELAY * 4).await;
    let _ = stop_tx.send(true);
    for k in keepers {
        let _ = tokio::time::timeout(Duration::from_secs(10), k).await;
    }
    result.client_cpu_ms = crate::load::shard::cpu_ms_now(ticks) - cpu0;
    result.first_send_ns = if first_ns == u64::MAX { 0 } else { first_ns };
    for (flow, receiver) in receivers {
        let seen = receiver.await?;
        result.connected += 2;
        result.received += seen.unique;
        result.duplicates += seen.duplicates;
        result.out_of_order += seen.out_of_order;
        result.unexpected += seen.unexpected;
        result.stale += seen.stale;
        result.last_receive_ns = result.last_receive_ns.max(seen.last_ns);
        if let Some(ok) = sent_ok.get(&flow) {
            result.lost += ok
                .iter()
                .zip(&seen.received)
                .filter(|(sent, got)| **sent && !**got)
                .count() as u64;
        }
    }
    result.disconnected = live.disconnected.load(Ordering::Relaxed);
    if let Ok(r) = recorder.lock() {
        result.latency = r.all.buckets();
        result.timeline = r.by_second.iter().map(|(s, h)| (*s, h.buckets())).collect();
    }
    result.reconnects = reconnects.lock().map(|r| r.clone()).unwrap_or_default();
    drop(currents);
    Ok(result)
}

// ---- the coordinator's side --------------------------------------------------------------------

#[derive(Debug, Serialize)]
pub struct StormFigures {
    pub users: usize,
    pub gateways: usize,
    pub victim: String,
    pub back: Back,
    pub rate: f64,
    pub duration_s: f64,
    pub kill_after_s: f64,
    pub signal: Stop,
    /// `--roll`: each process restarted before the victim, and how long it was not ready (ms).
    pub rolled: Vec<(String, f64)>,
    /// SIGTERM → the drained gateway's process is gone (`--signal term`).
    pub victim_exit_ms: Option<f64>,
    pub connected: u64,
    pub connect_failed: u64,
    pub connect_failures: BTreeMap<String, u64>,
    /// Sessions whose connection dropped.
    pub dropped: u64,
    pub reconnected: u64,
    pub never_back: u64,
    /// Kill → the last dropped session has its `Welcome` again.
    pub all_back_ms: f64,
    /// Kill → the client noticed.
    pub detection: Summary,
    /// Kill → back, per session.
    pub back_after_kill: Summary,
    /// The successful reconnect's handshake.
    pub reconnect_handshake: Summary,
    pub reconnect_attempts: u64,
    pub messages_planned: u64,
    pub sent_ok: u64,
    pub send_failed: u64,
    pub send_failures: BTreeMap<String, u64>,
    pub delivered: u64,
    /// Accepted but never delivered: gaps (must be 0).
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub unexpected: u64,
    pub stale: u64,
    pub latency: Summary,
    pub timeline: Vec<Window>,
    pub back_cdf: Vec<(f64, f64)>,
    pub server_cpu_ms: BTreeMap<String, f64>,
}

impl StormFigures {
    pub fn counts_add_up(&self) -> bool {
        self.connect_failed == 0
            && self.dropped > 0
            && self.never_back == 0
            && self.send_failed == 0
            && self.sent_ok == self.messages_planned
            && self.delivered == self.sent_ok
            && self.lost == 0
            && self.duplicates == 0
            && self.out_of_order == 0
            && self.unexpected == 0
            // A drain that did not end in the gateway's own exit was not a drain.
            && (self.signal == Stop::Kill || self.victim_exit_ms.is_some())
    }
}

pub async fn storm(args: StormArgs) -> anyhow::Result<bool> {
    let target = &args.target;
    if args.users < 2 || args.users % 2 != 0 {
        bail!("--users must be even and at least 2");
    }
    if target.gateways.len() < 2 && args.back == Back::Other {
        bail!("--back other needs two gateways (HABERCI_DEV_GATEWAYS=2 ./dev up)");
    }
    let started_at = report::now();
    let load_before = crate::sampling::procfs::load_average();
    let servers = ServerSet::discover(&target.dev_dir, &target.server_pids)?;
    let victim = args
        .kill
        .clone()
        .unwrap_or_else(|| match target.gateways.len() {
            1 => "gateway".to_owned(),
            n => format!("gateway{n}"),
        });
    let victim_pid = servers
        .pid_of(&victim)
        .with_context(|| format!("no running {victim} in {}", target.dev_dir.display()))?;
    let revival = Revival::capture(victim_pid, &target.dev_dir, &victim)?;
    let multi = report::progress();
    let mix = target.mix(Mix::Mix);
    let kill_after = args.kill_after.unwrap_or(args.duration / 3.0);
    let planned = (args.rate * args.duration).round() as u64;
    let pairs_n = args.users / 2;
    let shards_n = shard_count(target, args.users);
    let ramp_time = Duration::from_secs_f64(args.users as f64 / target.ramp.max(0.001));
    let run_time = ramp_time
        + Duration::from_millis(target.connect_timeout_ms)
        + Duration::from_secs_f64(args.duration)
        + Duration::from_secs(args.drain * 2);
    let (users, setup) = participants(
        target,
        &Side::Haberci,
        args.users,
        run_time + DEADLINE_SLACK,
        &multi,
    )
    .await?;
    let mut edges = Edges::resolve(target, &Side::Haberci).await?;
    let g = edges.len();
    let mut gateways = Vec::new();
    for spec in &target.gateways {
        gateways.push((
            crate::target::resolve(&spec.quic).await?,
            crate::target::resolve(&spec.tcp).await?,
        ));
    }
    let pairs: Vec<PairSpec> = (0..pairs_n)
        .map(|i| PairSpec {
            id: i as u32,
            sender: edges.session(&users[2 * i], mix, 2 * i, i % g),
            recipient: edges.session(&users[2 * i + 1], mix, 2 * i + 1, (i + 1) % g),
            messages: (planned / pairs_n as u64 + u64::from((i as u64) < planned % pairs_n as u64))
                as u32,
        })
        .collect();
    let timing = Timing {
        duration_ms: (args.duration * 1000.0) as u64,
        drain_ms: args.drain * 1000,
        content_bytes: args.content_bytes,
        run_id: run_id(),
    };
    let common = common(target, &Side::Haberci, shards_n, run_time + DEADLINE_SLACK);
    let chunk = pairs.len().div_ceil(shards_n).max(1);
    let jobs = pairs
        .chunks(chunk)
        .map(|c| {
            crate::load::protocol::Job::Storm(Box::new(StormJob {
                common: common.clone(),
                pairs: c.to_vec(),
                timing,
                gateways: gateways.clone(),
                back: args.back,
                ping_ms: args.ping_ms,
                pong_timeout_ms: args.pong_timeout_ms,
            }))
        })
        .collect();
    let mut shards = Shards::start(jobs).await?;
    let client_processes = shards.count();
    let connecting = bar(&multi, args.users as u64, "connect");
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
    let cpu_before = servers.cpu();
    let messages = bar(&multi, planned, "messages");
    let back = bar(&multi, 0, "back");
    shards.go().await?;
    let t0 = Instant::now();
    let kill_at = t0 + Duration::from_secs_f64(kill_after);
    let mut kill_ns = 0;
    let exited_ns = std::sync::atomic::AtomicU64::new(0);
    let signalled_ns = std::sync::atomic::AtomicU64::new(0);
    let rolled = Mutex::new(Vec::new());
    let mut revived = false;
    let mut outcome = None;
    // Kill (and, for `same`, revive) in the middle of the run, while the shards report.
    let victim_tcp = victim_index(&victim)
        .and_then(|i| gateways.get(i))
        .map(|(_, tcp)| *tcp);
    let killing = async {
        tokio::time::sleep_until(kill_at.into()).await;
        for role in &args.roll {
            let down = crate::revival::roll(&target.dev_dir, role).await?;
            if let Ok(mut rolled) = rolled.lock() {
                rolled.push((role.clone(), down.as_secs_f64() * 1000.0));
            }
        }
        let ns = unix_ns();
        // Kept outside this future: the run may end (and drop it) before the victim exits.
        signalled_ns.store(ns, Ordering::Relaxed);
        match args.signal {
            Stop::Kill => kill9(victim_pid)?,
            Stop::Term => {
                // Empty when the process is gone: every session was told and closed.
                signal(victim_pid, "-TERM")?;
                while crate::sampling::procfs::sample(victim_pid).is_some() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                exited_ns.store(unix_ns(), Ordering::Relaxed);
            }
        }
        let revived_pid = if args.back == Back::Same {
            if let Some(tcp) = victim_tcp {
                wait_refused(tcp, Duration::from_secs(10)).await;
            }
            Some(revival.start()?)
        } else {
            None
        };
        anyhow::Ok((ns, revived_pid))
    };
    tokio::pin!(killing);
    let waiting = shards.wait_done(run_time + DEADLINE_SLACK, |c| {
        messages.set_position(c.received);
        messages.set_message(format!("sent {}", c.sent));
        back.set_position(c.reconnected);
    });
    tokio::pin!(waiting);
    let results = loop {
        tokio::select! {
            done = &mut waiting => break done,
            killed = &mut killing, if outcome.is_none() => {
                let (ns, pid) = killed?;
                kill_ns = ns;
                revived = pid.is_some();
                outcome = Some(pid);
                back.set_message(format!("{victim} (pid {victim_pid}) killed"));
            }
        }
    };
    if !revived {
        // Whatever happened, the stack is left whole.
        if outcome.is_none() {
            let _ = kill9(victim_pid);
        }
        if let Some(tcp) = victim_tcp {
            wait_refused(tcp, Duration::from_secs(10)).await;
        }
        revival.start()?;
    }
    // The next run (or `./dev bench`) may use the victim at once: wait until it listens.
    if let Some((_, tcp)) = victim_index(&victim).and_then(|i| gateways.get(i)) {
        wait_listening(*tcp, Duration::from_secs(30)).await;
    }
    let results = results?;
    if kill_ns == 0 {
        kill_ns = signalled_ns.load(Ordering::Relaxed);
    }
    let cpu = cpu_before.delta_ms(&servers.cpu(), ticks);
    let sum = |f: fn(&ShardResult) -> u64| results.iter().map(f).sum::<u64>();
    let all: Vec<&Reconnect> = results.iter().flat_map(|r| &r.reconnects).collect();
    let mut detection = Latency::new();
    let mut back_after = Latency::new();
    let mut handshake = Latency::new();
    let mut last_back: u64 = 0;
    for r in &all {
        detection.record(Duration::from_nanos(r.lost_ns.saturating_sub(kill_ns)));
        if r.back_ns != 0 {
            back_after.record(Duration::from_nanos(r.back_ns.saturating_sub(kill_ns)));
            handshake.record(Duration::from_micros(r.handshake_us));
            last_back = last_back.max(r.back_ns);
        }
    }
    let latency = merged(&results, |r| &r.latency);
    let figures = StormFigures {
        users: args.users,
        gateways: g,
        victim: victim.clone(),
        back: args.back,
        rate: args.rate,
        duration_s: args.duration,
        kill_after_s: kill_after,
        signal: args.signal,
        rolled: rolled.lock().map(|r| r.clone()).unwrap_or_default(),
        victim_exit_ms: match exited_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(ns.saturating_sub(kill_ns) as f64 / 1e6),
        },
        connected: counts.connected,
        connect_failed: counts.connect_failed,
        connect_failures: merged_counts(results.iter().map(|r| r.failures.clone())),
        dropped: all.len() as u64,
        reconnected: all.iter().filter(|r| r.back_ns != 0).count() as u64,
        never_back: all.iter().filter(|r| r.back_ns == 0).count() as u64,
        all_back_ms: last_back.saturating_sub(kill_ns) as f64 / 1e6,
        detection: detection.summary(),
        back_after_kill: back_after.summary(),
        reconnect_handshake: handshake.summary(),
        reconnect_attempts: all.iter().map(|r| u64::from(r.attempts)).sum(),
        messages_planned: planned,
        sent_ok: sum(|r| r.sent_ok),
        send_failed: sum(|r| r.send_failed),
        send_failures: merged_counts(results.iter().map(|r| r.send_failures.clone())),
        delivered: sum(|r| r.received),
        lost: sum(|r| r.lost),
        duplicates: sum(|r| r.duplicates),
        out_of_order: sum(|r| r.out_of_order),
        unexpected: sum(|r| r.unexpected),
        stale: sum(|r| r.stale),
        latency: latency.summary(),
        timeline: timeline(&results),
        back_cdf: cdf_points(&back_after),
        server_cpu_ms: cpu,
    };
    let ok = figures.counts_add_up();
    let machine = Machine::now(load_before, client_processes);
    let md = markdown(mix, &figures, &machine);
    let charts = vec![
        (
            "latency",
            latency_chart("send → deliver, through the kill", &figures.timeline),
        ),
        (
            "back-cdf",
            Chart::new("kill → session back (Welcome)", "percentile", "ms")
                .nines()
                .line("back after kill", figures.back_cdf.clone()),
        ),
    ];
    report::finish(
        target,
        &report::Envelope {
            scenario: "storm",
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

fn markdown(mix: Mix, f: &StormFigures, machine: &Machine) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### storm: {} users ({mix:?}) on {} gateways, {} {} after {:.0} s, clients go to {:?}\n",
        f.users,
        f.gateways,
        f.victim,
        match f.signal {
            Stop::Kill => "killed",
            Stop::Term => "drained (SIGTERM)",
        },
        f.kill_after_s,
        f.back
    );
    let _ = writeln!(md, "{}\n", machine.line());
    let _ = writeln!(md, "| what | figure |\n|---|---:|");
    let _ = writeln!(
        md,
        "| connected / failed before the kill (their pairs send nothing) | {} / {} |",
        f.connected, f.connect_failed
    );
    let _ = writeln!(
        md,
        "| sessions dropped / back / never back | {} / {} / {} |",
        f.dropped, f.reconnected, f.never_back
    );
    let _ = writeln!(
        md,
        "| **kill → every session back** | **{:.0} ms** |",
        f.all_back_ms
    );
    for (role, ms) in &f.rolled {
        let _ = writeln!(
            md,
            "| {role} restarted (SIGTERM → ready again) | {ms:.0} ms |"
        );
    }
    if let Some(ms) = f.victim_exit_ms {
        let _ = writeln!(
            md,
            "| **SIGTERM → gateway empty (process exited)** | **{ms:.0} ms** |"
        );
    }
    let _ = writeln!(md, "| reconnect attempts | {} |", f.reconnect_attempts);
    let _ = writeln!(
        md,
        "| messages planned / accepted / delivered | {} / {} / {} |",
        f.messages_planned, f.sent_ok, f.delivered
    );
    let _ = writeln!(
        md,
        "| **gaps (lost)** / duplicated / out of order / send failed | **{}** / {} / {} / {} |\n",
        f.lost, f.duplicates, f.out_of_order, f.send_failed
    );
    let _ = writeln!(
        md,
        "| ms | count | p50 | p90 | p99 | p99.9 | max |\n|---|---:|---:|---:|---:|---:|---:|"
    );
    for (what, s) in [
        ("kill → client noticed", &f.detection),
        ("**kill → back**", &f.back_after_kill),
        ("reconnect handshake", &f.reconnect_handshake),
        ("send → deliver (whole run)", &f.latency),
    ] {
        let _ = writeln!(
            md,
            "| {what} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            s.count, s.p50_ms, s.p90_ms, s.p99_ms, s.p999_ms, s.max_ms
        );
    }
    for (why, n) in f.send_failures.iter().chain(&f.connect_failures) {
        let _ = writeln!(md, "\nfailure ×{n}: {why}");
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_go_to_another_gateway_or_back_to_the_same() {
        assert_eq!(next_gateway(Back::Other, 1, 0, 2), 0);
        assert_eq!(next_gateway(Back::Other, 1, 5, 2), 0);
        assert_eq!(next_gateway(Back::Other, 0, 0, 3), 1);
        assert_eq!(next_gateway(Back::Other, 0, 1, 3), 2);
        assert_eq!(next_gateway(Back::Other, 0, 2, 3), 1);
        assert_eq!(next_gateway(Back::Same, 1, 3, 2), 1);
        assert_eq!(next_gateway(Back::Other, 0, 3, 1), 0);
    }
}
