//! A shard process: reads its [`Job`], opens its sessions, runs its share of the scenario and
//! reports on stdout (see `protocol`).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures::FutureExt;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use haberci_client::{Client, ClientConfig, Roots, Transport};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::conn::{self, Conn, Inbox, Incoming, To};
use crate::latency::Latency;
use crate::procfs;
use crate::protocol::{
    Common, Counts, GroupSpec, Job, PairSpec, Report, SessionSpec, ShardResult, Timing,
    TransportKind,
};
use crate::socketio::{SioClient, SioConfig};

/// Kernel buffers asked for each shared client UDP socket (capped by `net.core.rmem_max`).
const CLIENT_SOCKET_BUFFER: usize = 8 << 20;

/// How often a shard reports its counts.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// How long closing all sessions may take at the end.
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Longest error text kept as a failure key.
const FAILURE_KEY_LEN: usize = 100;

/// Live counters, reported every [`PROGRESS_EVERY`].
#[derive(Default)]
pub(crate) struct Live {
    pub(crate) connected: AtomicU64,
    pub(crate) connect_failed: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) disconnected: AtomicU64,
    /// Storm: sessions back after their gateway died.
    pub(crate) reconnected: AtomicU64,
}

impl Live {
    pub(crate) fn counts(&self) -> Counts {
        Counts {
            connected: self.connected.load(Ordering::Relaxed),
            connect_failed: self.connect_failed.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            reconnected: self.reconnected.load(Ordering::Relaxed),
        }
    }
}

/// The shard's entry point: stdin carries the job and the `go`s, stdout the reports.
pub async fn run() -> anyhow::Result<()> {
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let line = stdin
        .next_line()
        .await?
        .context("no job on stdin (a shard is started by the coordinator)")?;
    let job: Job = serde_json::from_str(&line).context("the job line is not a Job")?;
    let (go_tx, go) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stdin.next_line().await {
            if line.trim() == "go" && go_tx.send(()).is_err() {
                break;
            }
        }
        // End of stdin: the coordinator is gone or wants us to stop; `go` waits end.
    });
    let (out_tx, out_rx) = mpsc::unbounded_channel::<Report>();
    let writer = tokio::spawn(write_reports(out_rx));
    let live = Arc::new(Live::default());
    let progress = {
        let (live, out) = (live.clone(), out_tx.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            loop {
                tick.tick().await;
                if out.send(Report::Progress(live.counts())).is_err() {
                    break;
                }
            }
        })
    };
    let deadline = Duration::from_secs(job.common().deadline_secs);
    let work = async {
        match job {
            Job::Connect { common, sessions } => {
                connect_scenario(common, sessions, &live, &out_tx, go).await
            }
            Job::Chat {
                common,
                pairs,
                timing,
            } => chat_scenario(common, pairs, timing, &live, &out_tx, go).await,
            Job::Group {
                common,
                groups,
                timing,
            } => group_scenario(common, groups, timing, &live, &out_tx, go).await,
            Job::Storm(job) => crate::storm::shard(*job, &live, &out_tx, go).await,
            Job::Churn(job) => crate::churn::shard(*job, &live, &out_tx, go).await,
        }
    };
    let result = match tokio::time::timeout(deadline, work).await {
        Ok(result) => result?,
        Err(_) => bail!("the shard's deadline ({deadline:?}) passed"),
    };
    progress.abort();
    let _ = out_tx.send(Report::Done(Box::new(result)));
    drop(out_tx);
    writer.await??;
    Ok(())
}

async fn write_reports(mut rx: mpsc::UnboundedReceiver<Report>) -> anyhow::Result<()> {
    let mut stdout = tokio::io::stdout();
    while let Some(report) = rx.recv().await {
        let mut line = serde_json::to_vec(&report)?;
        line.push(b'\n');
        stdout.write_all(&line).await?;
        stdout.flush().await?;
    }
    Ok(())
}

pub(crate) async fn wait_go(go: &mut mpsc::UnboundedReceiver<()>) -> anyhow::Result<()> {
    go.recv()
        .await
        .context("stdin closed: the coordinator stopped the run")
}

pub(crate) fn cpu_ms_now(ticks_per_sec: u64) -> f64 {
    procfs::sample(std::process::id())
        .map_or(0.0, |s| s.cpu_ticks as f64 * 1000.0 / ticks_per_sec as f64)
}

/// The sessions of one shard, opened at the ramp rate, in order.
struct Opened {
    clients: Vec<Option<(Conn, Inbox)>>,
    handshake: Latency,
    failures: BTreeMap<String, u64>,
}

/// What every session of a shard shares: trust roots, QUIC sockets, the Socket.IO TLS setup.
struct Connector {
    common: Common,
    roots: rustls::RootCertStore,
    endpoints: Vec<quinn::Endpoint>,
    per_socket: usize,
    quic_index: usize,
    socketio_tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

impl Connector {
    fn new(common: &Common, specs: &[SessionSpec]) -> anyhow::Result<Connector> {
        let roots = root_store(common)?;
        // One UDP socket per `sessions_per_socket` QUIC or WebTransport sessions.
        let quic_count = specs
            .iter()
            .filter(|s| matches!(s.transport, TransportKind::Quic | TransportKind::Wt))
            .count();
        let per_socket = common.sessions_per_socket.max(1);
        let endpoints = (0..quic_count.div_ceil(per_socket))
            .map(|_| client_endpoint())
            .collect::<anyhow::Result<Vec<_>>>()?;
        let socketio_tls = if common.socketio_plain
            || !specs.iter().any(|s| s.transport == TransportKind::SocketIo)
        {
            None
        } else {
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some((
                tokio_rustls::TlsConnector::from(Arc::new(config)),
                ServerName::try_from(common.server_name.clone())?,
            ))
        };
        Ok(Connector {
            common: common.clone(),
            roots,
            endpoints,
            per_socket,
            quic_index: 0,
            socketio_tls,
        })
    }

    /// A future that opens the session `spec` describes.
    fn open(
        &mut self,
        spec: &SessionSpec,
    ) -> impl Future<Output = Result<(Conn, Inbox), String>> + Send + 'static {
        let endpoint =
            matches!(spec.transport, TransportKind::Quic | TransportKind::Wt).then(|| {
                let e = self.endpoints[self.quic_index / self.per_socket].clone();
                self.quic_index += 1;
                e
            });
        let haberci = (spec.transport != TransportKind::SocketIo)
            .then(|| client_config(&self.common, spec, &self.roots, endpoint));
        let socketio = SioConfig {
            addr: spec.addr,
            source: spec.source,
            tls: self.socketio_tls.clone(),
            token: spec.token.clone(),
        };
        let limit = Duration::from_millis(self.common.connect_timeout_ms);
        async move {
            match haberci {
                Some(config) => Client::connect(config)
                    .await
                    .map(|(client, events)| (Conn::Haberci(client), conn::haberci_inbox(events)))
                    .map_err(|err| failure_key(&err)),
                None => match tokio::time::timeout(limit, SioClient::connect(&socketio)).await {
                    Ok(Ok((client, events))) => {
                        Ok((Conn::SocketIo(client), conn::socketio_inbox(events)))
                    }
                    Ok(Err(err)) => Err(failure_key(&err)),
                    Err(_) => Err(format!("no connect within {limit:?}")),
                },
            }
        }
    }
}

async fn open_sessions(
    common: &Common,
    specs: &[SessionSpec],
    live: &Arc<Live>,
) -> anyhow::Result<Opened> {
    let mut connector = Connector::new(common, specs)?;
    let started = tokio::time::Instant::now();
    let rate = common.ramp_per_sec.max(0.001);
    let mut handles = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        tokio::time::sleep_until(started + Duration::from_secs_f64(i as f64 / rate)).await;
        let open = connector.open(spec);
        let live = live.clone();
        handles.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let result = open.await;
            match &result {
                Ok(_) => live.connected.fetch_add(1, Ordering::Relaxed),
                Err(_) => live.connect_failed.fetch_add(1, Ordering::Relaxed),
            };
            (result, t0.elapsed())
        }));
    }
    let mut opened = Opened {
        clients: Vec::with_capacity(specs.len()),
        handshake: Latency::new(),
        failures: BTreeMap::new(),
    };
    for handle in handles {
        let (result, took) = handle.await?;
        match result {
            Ok(pair) => {
                opened.handshake.record(took);
                opened.clients.push(Some(pair));
            }
            Err(why) => {
                *opened.failures.entry(why).or_default() += 1;
                opened.clients.push(None);
            }
        }
    }
    Ok(opened)
}

/// A client UDP socket for many QUIC sessions. Hundreds of sessions share it: the default
/// 208 KiB receive buffer drops bursts, and the drops would be charged to the server as
/// latency.
pub(crate) fn client_endpoint() -> anyhow::Result<quinn::Endpoint> {
    let (socket, _) = haberci_kit::udp::bind(
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        CLIENT_SOCKET_BUFFER,
    )
    .context("cannot bind a UDP socket for QUIC clients")?;
    let runtime = quinn::default_runtime().context("no async runtime for quinn")?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
        .context("cannot start a QUIC client endpoint")
}

pub(crate) fn failure_key(err: &dyn std::fmt::Display) -> String {
    let mut text = err.to_string();
    if text.len() > FAILURE_KEY_LEN {
        let mut cut = FAILURE_KEY_LEN;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

pub(crate) fn root_store(common: &Common) -> anyhow::Result<rustls::RootCertStore> {
    let mut store = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&common.ca)
        .with_context(|| format!("reading {}", common.ca.display()))?
    {
        store.add(cert?)?;
    }
    Ok(store)
}

pub(crate) fn client_config(
    common: &Common,
    spec: &SessionSpec,
    roots: &rustls::RootCertStore,
    endpoint: Option<quinn::Endpoint>,
) -> ClientConfig {
    let transport = match spec.transport {
        TransportKind::Quic => Transport::Quic {
            addr: spec.addr.to_string(),
        },
        TransportKind::Ws | TransportKind::SocketIo => Transport::WebSocket {
            url: format!("wss://{}/v1/ws", spec.addr),
        },
        TransportKind::Wt => Transport::WebTransport {
            url: format!("https://{}/v1/rt", spec.addr),
        },
    };
    let mut config = ClientConfig::new(transport, Roots::Store(roots.clone()), spec.token.clone());
    config.server_name = Some(common.server_name.clone());
    config.client_name = "haberci-bench".into();
    config.connect_timeout = Duration::from_millis(common.connect_timeout_ms);
    config.quic_endpoint = endpoint;
    config
}

/// Drains a session's inbox and counts an early end.
pub(crate) fn drain_events(mut inbox: Inbox, live: Arc<Live>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(event) = inbox.next().await {
            if let Incoming::Disconnected(_) = event {
                live.disconnected.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

// ---- connect ----------------------------------------------------------------------------------

async fn connect_scenario(
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

// ---- chat and group ---------------------------------------------------------------------------

/// What a member saw of one flow (a pair's or a group's messages).
#[derive(Default)]
pub(crate) struct Seen {
    pub(crate) received: Vec<bool>,
    pub(crate) unique: u64,
    pub(crate) duplicates: u64,
    pub(crate) out_of_order: u64,
    pub(crate) unexpected: u64,
    pub(crate) stale: u64,
    pub(crate) highest: Option<u32>,
    pub(crate) last_ns: u64,
    /// Per message number: its delivery latency here (µs), when it came.
    pub(crate) latency_us: Vec<Option<u64>>,
}

/// What a sender got answered.
pub(crate) struct Outbox {
    pub(crate) sent_ok: Vec<bool>,
    pub(crate) failed: BTreeMap<String, u64>,
    pub(crate) first_ns: u64,
}

/// What a message carries: which run, which flow, its number, and when it was sent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub(crate) run: u64,
    pub(crate) pair: u32,
    pub(crate) n: u32,
    pub(crate) sent_ns: u64,
}

/// The content of a message: `run:flow:n:unix_ns:` then padding. The stamp is the wall
/// clock (`CLOCK_REALTIME`), shared by every process on the machine, so a sender in one shard
/// and a recipient in another compare it directly.
pub(crate) fn content(stamp: &Stamp, size: usize) -> String {
    let Stamp {
        run,
        pair,
        n,
        sent_ns,
    } = stamp;
    let mut text = format!("{run}:{pair}:{n}:{sent_ns}:");
    if text.len() < size {
        text.extend(std::iter::repeat_n('x', size - text.len()));
    }
    text
}

pub(crate) fn parse_content(text: &str) -> Option<Stamp> {
    let mut parts = text.splitn(5, ':');
    Some(Stamp {
        run: parts.next()?.parse().ok()?,
        pair: parts.next()?.parse().ok()?,
        n: parts.next()?.parse().ok()?,
        sent_ns: parts.next()?.parse().ok()?,
    })
}

pub(crate) fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Every delivery's latency, overall and per second of sending.
#[derive(Default)]
pub(crate) struct Recorder {
    pub(crate) all: Latency,
    pub(crate) by_second: BTreeMap<u64, Latency>,
}

impl Recorder {
    fn record(&mut self, sent_ns: u64, latency: Duration) {
        self.all.record(latency);
        self.by_second
            .entry(sent_ns / 1_000_000_000)
            .or_default()
            .record(latency);
    }
}

/// One flow to run: who sends, to what, and which of this shard's sessions receive it.
struct Flow {
    id: u32,
    to: To,
    messages: u32,
    /// Index into the opened sessions.
    sender: Option<usize>,
    receivers: Vec<usize>,
}

async fn chat_scenario(
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

async fn group_scenario(
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

/// Connects `specs`, then on `go` runs every flow: its sender sends at an even pace, its
/// receivers count what arrives. `fanout`: report per message how many receivers got it and
/// the slowest delivery (groups).
#[allow(clippy::too_many_arguments)]
async fn run_flows(
    common: Common,
    specs: Vec<SessionSpec>,
    flows: Vec<Flow>,
    timing: Timing,
    fanout_lines: bool,
    live: &Arc<Live>,
    out: &mpsc::UnboundedSender<Report>,
    mut go: mpsc::UnboundedReceiver<()>,
) -> anyhow::Result<ShardResult> {
    let ticks = procfs::clock_ticks_per_sec();
    wait_go(&mut go).await?;
    let opened = open_sessions(&common, &specs, live).await?;
    let _ = out.send(Report::Connected(live.counts()));
    wait_go(&mut go).await?;

    let cpu0 = cpu_ms_now(ticks);
    let recorder = Arc::new(Mutex::new(Recorder::default()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut sessions: Vec<Option<(Conn, Inbox)>> = opened.clients;
    let all_clients: Vec<Conn> = sessions.iter().flatten().map(|(c, _)| c.clone()).collect();
    let mut receivers = Vec::new();
    let mut outboxes = Vec::new();
    let mut drains = Vec::new();
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    for flow in &flows {
        // A flow whose sender did not connect sends nothing; its messages are not counted
        // (the connect failures are).
        let sender = flow
            .sender
            .and_then(|i| sessions[i].take())
            .map(|(conn, inbox)| {
                drains.push(drain_events(inbox, live.clone()));
                conn
            });
        let sending = sender.is_some() || flow.sender.is_none();
        for &r in &flow.receivers {
            let Some((_, inbox)) = sessions[r].take() else {
                continue;
            };
            if !sending {
                drains.push(drain_events(inbox, live.clone()));
                continue;
            }
            receivers.push((
                flow.id,
                tokio::spawn(receive(
                    timing.run_id,
                    flow.id,
                    flow.messages,
                    inbox,
                    recorder.clone(),
                    live.clone(),
                    stop_rx.clone(),
                )),
            ));
        }
        if let Some(conn) = sender {
            outboxes.push(tokio::spawn(send(
                flow.id,
                flow.to,
                flow.messages,
                conn,
                start,
                timing,
                live.clone(),
            )));
        }
    }
    let mut result = ShardResult {
        connected: all_clients.len() as u64,
        connect_failed: opened.failures.values().sum(),
        failures: opened.failures,
        handshake: opened.handshake.buckets(),
        ..ShardResult::default()
    };
    let mut sent_ok: BTreeMap<u32, Vec<bool>> = BTreeMap::new();
    let mut first_ns = u64::MAX;
    for (flow, outbox) in flows.iter().filter(|f| f.sender.is_some()).zip(outboxes) {
        let outbox = outbox.await?;
        first_ns = first_ns.min(outbox.first_ns);
        for (why, count) in outbox.failed {
            result.send_failed += count;
            *result.send_failures.entry(why).or_default() += count;
        }
        sent_ok.insert(flow.id, outbox.sent_ok);
    }
    result.sent_ok = sent_ok.values().flatten().filter(|ok| **ok).count() as u64;
    // Deliveries this shard expects: chat knows its pairs' sends; a group's members here
    // cannot know what the sender (maybe elsewhere) got answered, so they wait for every
    // planned message or the drain time.
    let expected: u64 = flows
        .iter()
        .map(|f| {
            let per_receiver = sent_ok.get(&f.id).map_or(u64::from(f.messages), |ok| {
                ok.iter().filter(|s| **s).count() as u64
            });
            per_receiver * f.receivers.len() as u64
        })
        .sum();
    let drain_end = tokio::time::Instant::now() + Duration::from_millis(timing.drain_ms);
    while live.received.load(Ordering::Relaxed) < expected
        && tokio::time::Instant::now() < drain_end
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    // Let the last coalesced acks leave before closing, so the next run is not replayed
    // this run's tail.
    tokio::time::sleep(haberci_client::DEFAULT_ACK_DELAY * 4).await;
    result.client_cpu_ms = cpu_ms_now(ticks) - cpu0;
    result.first_send_ns = if first_ns == u64::MAX { 0 } else { first_ns };
    let messages_of: BTreeMap<u32, u32> = flows.iter().map(|f| (f.id, f.messages)).collect();
    let mut fanout: BTreeMap<u32, Vec<(u64, u32)>> = BTreeMap::new();
    for (flow, receiver) in receivers {
        let inbox = receiver.await?;
        result.received += inbox.unique;
        result.duplicates += inbox.duplicates;
        result.out_of_order += inbox.out_of_order;
        result.unexpected += inbox.unexpected;
        result.stale += inbox.stale;
        result.last_receive_ns = result.last_receive_ns.max(inbox.last_ns);
        if let Some(ok) = sent_ok.get(&flow) {
            result.lost += ok
                .iter()
                .zip(&inbox.received)
                .filter(|(sent, got)| **sent && !**got)
                .count() as u64;
        }
        if !fanout_lines {
            continue;
        }
        let lines = fanout
            .entry(flow)
            .or_insert_with(|| vec![(0, 0); messages_of.get(&flow).copied().unwrap_or(0) as usize]);
        for (line, latency) in lines.iter_mut().zip(&inbox.latency_us) {
            if let Some(us) = latency {
                line.0 = line.0.max(*us);
                line.1 += 1;
            }
        }
    }
    result.fanout = fanout.into_iter().collect();
    result.disconnected = live.disconnected.load(Ordering::Relaxed);
    {
        let recorder = recorder
            .lock()
            .map_err(|_| anyhow::anyhow!("latency lock poisoned"))?;
        result.latency = recorder.all.buckets();
        result.timeline = recorder
            .by_second
            .iter()
            .map(|(s, h)| (*s, h.buckets()))
            .collect();
    }
    conn::close_all(&all_clients, CLOSE_WAIT).await;
    for d in drains {
        d.abort();
    }
    Ok(result)
}

type SendFuture = Pin<Box<dyn Future<Output = (u32, Result<(), String>)> + Send>>;

/// Sends `messages` messages at an even pace over the run, pipelined: each send is handed to
/// the connection at its tick (in order, so the server sees them in order) and answered
/// whenever the server accepts it.
async fn send(
    flow: u32,
    to: To,
    messages: u32,
    conn: Conn,
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
    // Spread the flows' first sends over one period (golden-ratio offsets: even, no RNG).
    let phase = period.mul_f64((f64::from(flow) * 0.618_033_988_75).fract());
    let mut tick = tokio::time::interval_at(start + phase, period.max(Duration::from_micros(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut in_flight: FuturesUnordered<SendFuture> = FuturesUnordered::new();
    let answered = |outbox: &mut Outbox, (n, result): (u32, Result<(), String>)| match result {
        Ok(()) => outbox.sent_ok[n as usize] = true,
        Err(err) => *outbox.failed.entry(failure_key(&err)).or_default() += 1,
    };
    let mut n = 0;
    while n < messages {
        tokio::select! {
            _ = tick.tick() => {
                let sent_ns = unix_ns();
                outbox.first_ns = outbox.first_ns.min(sent_ns);
                let text = content(
                    &Stamp { run: timing.run_id, pair: flow, n, sent_ns },
                    timing.content_bytes,
                );
                let sending = conn.send_text(to, text);
                let mut fut: SendFuture = Box::pin(async move { (n, sending.await) });
                // The first poll hands the frame to the connection, in tick order.
                match futures::poll!(fut.as_mut()) {
                    std::task::Poll::Ready(done) => answered(&mut outbox, done),
                    std::task::Poll::Pending => in_flight.push(fut),
                }
                live.sent.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
            Some(done) = in_flight.next(), if !in_flight.is_empty() => answered(&mut outbox, done),
        }
    }
    let deadline = tokio::time::sleep(Duration::from_millis(timing.drain_ms));
    tokio::pin!(deadline);
    while !in_flight.is_empty() {
        tokio::select! {
            Some(done) = in_flight.next() => answered(&mut outbox, done),
            _ = &mut deadline => {
                let unanswered = in_flight.len() as u64;
                *outbox.failed.entry("no answer within the drain time".into()).or_default() += unanswered;
                break;
            }
        }
    }
    outbox
}

pub(crate) async fn receive(
    run_id: u64,
    flow: u32,
    messages: u32,
    mut inbox: Inbox,
    recorder: Arc<Mutex<Recorder>>,
    live: Arc<Live>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Seen {
    let mut seen = Seen {
        received: vec![false; messages as usize],
        latency_us: vec![None; messages as usize],
        ..Seen::default()
    };
    // Whatever came before sending started is a replay of an earlier run (messages the
    // server had delivered but not seen acked), whatever its content.
    while let Some(Some(event)) = inbox.next().now_or_never() {
        if let Incoming::Message(_) = event {
            seen.stale += 1;
        }
    }
    loop {
        let event = tokio::select! {
            event = inbox.next() => event,
            _ = stop.changed() => break,
        };
        let Some(event) = event else { break };
        match event {
            Incoming::Message(text) => {
                let now = unix_ns();
                let Some(Stamp {
                    run,
                    pair: p,
                    n,
                    sent_ns,
                }) = parse_content(&text)
                else {
                    seen.unexpected += 1;
                    continue;
                };
                if run != run_id {
                    seen.stale += 1;
                    continue;
                }
                if p != flow || n >= messages {
                    seen.unexpected += 1;
                    continue;
                }
                if seen.received[n as usize] {
                    seen.duplicates += 1;
                    continue;
                }
                seen.received[n as usize] = true;
                seen.unique += 1;
                live.received.fetch_add(1, Ordering::Relaxed);
                if seen.highest.is_some_and(|h| n < h) {
                    seen.out_of_order += 1;
                }
                seen.highest = seen.highest.max(Some(n));
                seen.last_ns = seen.last_ns.max(now);
                let latency = Duration::from_nanos(now.saturating_sub(sent_ns));
                seen.latency_us[n as usize] =
                    Some(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
                if let Ok(mut r) = recorder.lock() {
                    r.record(sent_ns, latency);
                }
            }
            Incoming::Disconnected(_) => {
                live.disconnected.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn content_carries_run_pair_number_and_stamp_and_is_padded() {
        let stamp = Stamp {
            run: 77,
            pair: 12,
            n: 345,
            sent_ns: 1_700_000_000_123_456_789,
        };
        let text = content(&stamp, 64);
        assert_eq!(text.len(), 64);
        assert_eq!(parse_content(&text), Some(stamp));
        let bare = Stamp {
            run: 0,
            pair: 1,
            n: 2,
            sent_ns: 3,
        };
        assert_eq!(content(&bare, 0), "0:1:2:3:");
        assert_eq!(parse_content("hello"), None);
        assert_eq!(parse_content("0:1:x:3:"), None);
    }

    #[test]
    fn failure_keys_are_cut_on_char_boundaries() {
        let long = "ş".repeat(200);
        let key = failure_key(&long);
        assert!(key.len() <= FAILURE_KEY_LEN);
        assert!(key.chars().all(|c| c == 'ş'));
    }
}
