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
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use haberci_client::{
    Client, ClientConfig, Event, Events, Roots, SendError, Sent, Transport, UserId,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::latency::Latency;
use crate::procfs;
use crate::protocol::{
    Common, Counts, Job, PairSpec, Report, SessionSpec, ShardResult, TransportKind,
};

/// Kernel buffers asked for each shared client UDP socket (capped by `net.core.rmem_max`).
const CLIENT_SOCKET_BUFFER: usize = 8 << 20;

/// How often a shard reports its counts.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// How long closing all sessions may take at the end.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Longest error text kept as a failure key.
const FAILURE_KEY_LEN: usize = 100;

/// Live counters, reported every [`PROGRESS_EVERY`].
#[derive(Default)]
struct Live {
    connected: AtomicU64,
    connect_failed: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    disconnected: AtomicU64,
}

impl Live {
    fn counts(&self) -> Counts {
        Counts {
            connected: self.connected.load(Ordering::Relaxed),
            connect_failed: self.connect_failed.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
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
    let deadline = Duration::from_secs(match &job {
        Job::Connect { common, .. } | Job::Chat { common, .. } => common.deadline_secs,
    });
    let work = async {
        match job {
            Job::Connect { common, sessions } => {
                connect_scenario(common, sessions, &live, &out_tx, go).await
            }
            Job::Chat {
                common,
                pairs,
                duration_ms,
                drain_ms,
                content_bytes,
                run_id,
            } => {
                let timing = ChatTiming {
                    duration: Duration::from_millis(duration_ms),
                    drain: Duration::from_millis(drain_ms),
                    content_bytes,
                    run_id,
                };
                chat_scenario(common, pairs, timing, &live, &out_tx, go).await
            }
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

async fn wait_go(go: &mut mpsc::UnboundedReceiver<()>) -> anyhow::Result<()> {
    go.recv()
        .await
        .context("stdin closed: the coordinator stopped the run")
}

fn cpu_ms_now(ticks_per_sec: u64) -> f64 {
    procfs::sample(std::process::id())
        .map_or(0.0, |s| s.cpu_ticks as f64 * 1000.0 / ticks_per_sec as f64)
}

/// The sessions of one shard, opened at the ramp rate, in order.
struct Opened {
    clients: Vec<Option<(Client, Events)>>,
    handshake: Latency,
    failures: BTreeMap<String, u64>,
}

async fn open_sessions(
    common: &Common,
    specs: &[SessionSpec],
    live: &Arc<Live>,
) -> anyhow::Result<Opened> {
    let roots = root_store(common)?;
    // One UDP socket per `sessions_per_socket` QUIC sessions.
    let quic_count = specs
        .iter()
        .filter(|s| s.transport == TransportKind::Quic)
        .count();
    let per_socket = common.sessions_per_socket.max(1);
    let mut endpoints = Vec::new();
    for _ in 0..quic_count.div_ceil(per_socket) {
        // Hundreds of sessions share the socket: the default 208 KiB receive buffer drops
        // bursts, and the drops would be charged to the server as latency.
        let (socket, _) = haberci_kit::udp::bind(
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            CLIENT_SOCKET_BUFFER,
        )
        .context("cannot bind a UDP socket for QUIC clients")?;
        let runtime = quinn::default_runtime().context("no async runtime for quinn")?;
        endpoints.push(
            quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
                .context("cannot start a QUIC client endpoint")?,
        );
    }
    let started = tokio::time::Instant::now();
    let rate = common.ramp_per_sec.max(0.001);
    let mut handles = Vec::with_capacity(specs.len());
    let mut quic_index = 0;
    for (i, spec) in specs.iter().enumerate() {
        tokio::time::sleep_until(started + Duration::from_secs_f64(i as f64 / rate)).await;
        let endpoint = (spec.transport == TransportKind::Quic).then(|| {
            let e = endpoints[quic_index / per_socket].clone();
            quic_index += 1;
            e
        });
        let config = client_config(common, spec, &roots, endpoint);
        let live = live.clone();
        handles.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let result = Client::connect(config).await;
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
            Err(err) => {
                *opened.failures.entry(failure_key(&err)).or_default() += 1;
                opened.clients.push(None);
            }
        }
    }
    Ok(opened)
}

fn failure_key(err: &dyn std::fmt::Display) -> String {
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

fn root_store(common: &Common) -> anyhow::Result<rustls::RootCertStore> {
    let mut store = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&common.ca)
        .with_context(|| format!("reading {}", common.ca.display()))?
    {
        store.add(cert?)?;
    }
    Ok(store)
}

fn client_config(
    common: &Common,
    spec: &SessionSpec,
    roots: &rustls::RootCertStore,
    endpoint: Option<quinn::Endpoint>,
) -> ClientConfig {
    let transport = match spec.transport {
        TransportKind::Quic => Transport::Quic {
            addr: spec.addr.to_string(),
        },
        TransportKind::Ws => Transport::WebSocket {
            url: format!("wss://{}/v1/ws", spec.addr),
        },
    };
    let mut config = ClientConfig::new(transport, Roots::Store(roots.clone()), spec.token.clone());
    config.server_name = Some(common.server_name.clone());
    config.client_name = "haberci-bench".into();
    config.connect_timeout = Duration::from_millis(common.connect_timeout_ms);
    config.quic_endpoint = endpoint;
    config
}

/// Drains a connection's events (the channel is unbounded) and counts an early end.
fn drain_events(mut events: Events, live: Arc<Live>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if let Event::Disconnected(_) = event {
                live.disconnected.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

async fn close_all(clients: &[Client]) {
    let closes = clients.iter().map(|c| c.close());
    let _ = tokio::time::timeout(CLOSE_WAIT, futures::future::join_all(closes)).await;
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
    for (client, events) in opened.clients.into_iter().flatten() {
        drains.push(drain_events(events, live.clone()));
        clients.push(client);
    }
    let _ = out.send(Report::Connected(live.counts()));
    // Hold until told to close (or stdin ends).
    let _ = go.recv().await;
    let disconnected = live.disconnected.load(Ordering::Relaxed);
    close_all(&clients).await;
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

// ---- chat -------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct ChatTiming {
    duration: Duration,
    drain: Duration,
    content_bytes: usize,
    run_id: u64,
}

/// What a recipient saw from its one sender.
#[derive(Default)]
struct Inbox {
    received: Vec<bool>,
    unique: u64,
    duplicates: u64,
    out_of_order: u64,
    unexpected: u64,
    stale: u64,
    highest: Option<u32>,
    last_ns: u64,
}

/// What a sender got answered.
struct Outbox {
    sent_ok: Vec<bool>,
    failed: BTreeMap<String, u64>,
    first_ns: u64,
}

/// What a message carries: which run, which pair, its number, and when it was sent.
#[derive(Debug, PartialEq, Eq)]
struct Stamp {
    run: u64,
    pair: u32,
    n: u32,
    sent_ns: u64,
}

/// The content of a message: `run:pair:n:unix_ns:` then padding. The stamp is the wall
/// clock (`CLOCK_REALTIME`), shared by every process on the machine, so a sender in one shard
/// and a recipient in another compare it directly.
fn content(stamp: &Stamp, size: usize) -> String {
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

fn parse_content(text: &str) -> Option<Stamp> {
    let mut parts = text.splitn(5, ':');
    Some(Stamp {
        run: parts.next()?.parse().ok()?,
        pair: parts.next()?.parse().ok()?,
        n: parts.next()?.parse().ok()?,
        sent_ns: parts.next()?.parse().ok()?,
    })
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

async fn chat_scenario(
    common: Common,
    pairs: Vec<PairSpec>,
    timing: ChatTiming,
    live: &Arc<Live>,
    out: &mpsc::UnboundedSender<Report>,
    mut go: mpsc::UnboundedReceiver<()>,
) -> anyhow::Result<ShardResult> {
    let ticks = procfs::clock_ticks_per_sec();
    wait_go(&mut go).await?;
    // Recipients first: a message to a user with no session would be stored, not delivered.
    let mut specs: Vec<SessionSpec> = pairs.iter().map(|p| p.recipient.clone()).collect();
    specs.extend(pairs.iter().map(|p| p.sender.clone()));
    let mut opened = open_sessions(&common, &specs, live).await?;
    let _ = out.send(Report::Connected(live.counts()));
    wait_go(&mut go).await?;

    let cpu0 = cpu_ms_now(ticks);
    let latency = Arc::new(Mutex::new(Latency::new()));
    let n_pairs = pairs.len();
    let senders = opened.clients.split_off(n_pairs);
    let recipients = opened.clients;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut inboxes = Vec::new();
    let mut outboxes = Vec::new();
    let mut all_clients = Vec::new();
    let mut drains = Vec::new();
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    for ((pair, recipient), sender) in pairs.iter().zip(recipients).zip(senders) {
        // A pair whose sender or recipient did not connect sends nothing; its messages are
        // not counted (the connect failures are).
        let (Some((r_client, r_events)), Some((s_client, s_events))) = (recipient, sender) else {
            continue;
        };
        all_clients.push(r_client);
        all_clients.push(s_client.clone());
        inboxes.push(tokio::spawn(receive(
            timing.run_id,
            pair.id,
            pair.messages,
            r_events,
            latency.clone(),
            live.clone(),
            stop_rx.clone(),
        )));
        drains.push(drain_events(s_events, live.clone()));
        let to = UserId::new(pair.recipient.user).context("a nil recipient id")?;
        outboxes.push(tokio::spawn(send(
            pair.id,
            to,
            pair.messages,
            s_client,
            start,
            timing,
            live.clone(),
        )));
    }
    let mut result = ShardResult {
        connect_failed: opened.failures.values().sum(),
        failures: opened.failures,
        handshake: opened.handshake.buckets(),
        ..ShardResult::default()
    };
    let mut sent_ok: Vec<Vec<bool>> = Vec::new();
    let mut first_ns = u64::MAX;
    for outbox in outboxes {
        let outbox = outbox.await?;
        first_ns = first_ns.min(outbox.first_ns);
        for (why, count) in outbox.failed {
            result.send_failed += count;
            *result.send_failures.entry(why).or_default() += count;
        }
        sent_ok.push(outbox.sent_ok);
    }
    result.sent_ok = sent_ok.iter().flatten().filter(|ok| **ok).count() as u64;
    // Every `Sent` message delivered, or the drain time is up.
    let drain_end = tokio::time::Instant::now() + timing.drain;
    while live.received.load(Ordering::Relaxed) < result.sent_ok
        && tokio::time::Instant::now() < drain_end
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    // Let the last coalesced acks leave before closing, so the next run is not replayed
    // this run's tail.
    tokio::time::sleep(haberci_client::DEFAULT_ACK_DELAY * 4).await;
    result.client_cpu_ms = cpu_ms_now(ticks) - cpu0;
    result.disconnected = live.disconnected.load(Ordering::Relaxed);
    result.first_send_ns = if first_ns == u64::MAX { 0 } else { first_ns };
    for (inbox, ok) in inboxes.into_iter().zip(&sent_ok) {
        let inbox = inbox.await?;
        result.connected += 2;
        result.received += inbox.unique;
        result.duplicates += inbox.duplicates;
        result.out_of_order += inbox.out_of_order;
        result.unexpected += inbox.unexpected;
        result.stale += inbox.stale;
        result.last_receive_ns = result.last_receive_ns.max(inbox.last_ns);
        result.lost += ok
            .iter()
            .zip(&inbox.received)
            .filter(|(sent, got)| **sent && !**got)
            .count() as u64;
    }
    result.latency = latency
        .lock()
        .map_err(|_| anyhow::anyhow!("latency lock poisoned"))?
        .buckets();
    close_all(&all_clients).await;
    for d in drains {
        d.abort();
    }
    Ok(result)
}

type SendFuture = Pin<Box<dyn Future<Output = (u32, Result<Sent, SendError>)> + Send>>;

/// Sends `messages` messages at an even pace over the run, pipelined: each send is handed to
/// the connection at its tick (in order, so the server sees them in order) and answered
/// whenever its `Sent` comes.
async fn send(
    pair: u32,
    to: UserId,
    messages: u32,
    client: Client,
    start: tokio::time::Instant,
    timing: ChatTiming,
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
    let period = timing.duration / messages;
    // Spread the pairs' first sends over one period (golden-ratio offsets: even, no RNG).
    let phase = period.mul_f64((f64::from(pair) * 0.618_033_988_75).fract());
    let mut tick = tokio::time::interval_at(start + phase, period.max(Duration::from_micros(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut in_flight: FuturesUnordered<SendFuture> = FuturesUnordered::new();
    let answered = |outbox: &mut Outbox, (n, result): (u32, Result<Sent, SendError>)| match result {
        Ok(_) => outbox.sent_ok[n as usize] = true,
        Err(err) => *outbox.failed.entry(failure_key(&err)).or_default() += 1,
    };
    let mut n = 0;
    while n < messages {
        tokio::select! {
            _ = tick.tick() => {
                let sent_ns = unix_ns();
                outbox.first_ns = outbox.first_ns.min(sent_ns);
                let message = haberci_client::text_to(
                    to,
                    content(
                        &Stamp {
                            run: timing.run_id,
                            pair,
                            n,
                            sent_ns,
                        },
                        timing.content_bytes,
                    ),
                );
                let c = client.clone();
                let mut fut: SendFuture = Box::pin(async move { (n, c.send(message).await) });
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
    let deadline = tokio::time::sleep(timing.drain);
    tokio::pin!(deadline);
    while !in_flight.is_empty() {
        tokio::select! {
            Some(done) = in_flight.next() => answered(&mut outbox, done),
            _ = &mut deadline => {
                let unanswered = in_flight.len() as u64;
                *outbox.failed.entry("no Sent within the drain time".into()).or_default() += unanswered;
                break;
            }
        }
    }
    outbox
}

async fn receive(
    run_id: u64,
    pair: u32,
    messages: u32,
    mut events: Events,
    latency: Arc<Mutex<Latency>>,
    live: Arc<Live>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Inbox {
    let mut inbox = Inbox {
        received: vec![false; messages as usize],
        ..Inbox::default()
    };
    // Whatever came before sending started is a replay of an earlier run (messages the
    // server had delivered but not seen acked), whatever its content.
    while let Some(event) = events.try_recv() {
        if let Event::Message(_) = event {
            inbox.stale += 1;
        }
    }
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = stop.changed() => break,
        };
        let Some(event) = event else { break };
        match event {
            Event::Message(message) => {
                let now = unix_ns();
                let Some(Stamp {
                    run,
                    pair: p,
                    n,
                    sent_ns,
                }) = parse_content(&message.content)
                else {
                    inbox.unexpected += 1;
                    continue;
                };
                if run != run_id {
                    inbox.stale += 1;
                    continue;
                }
                if p != pair || n >= messages {
                    inbox.unexpected += 1;
                    continue;
                }
                if inbox.received[n as usize] {
                    inbox.duplicates += 1;
                    continue;
                }
                inbox.received[n as usize] = true;
                inbox.unique += 1;
                live.received.fetch_add(1, Ordering::Relaxed);
                if inbox.highest.is_some_and(|h| n < h) {
                    inbox.out_of_order += 1;
                }
                inbox.highest = inbox.highest.max(Some(n));
                inbox.last_ns = inbox.last_ns.max(now);
                if let Ok(mut h) = latency.lock() {
                    h.record(Duration::from_nanos(now.saturating_sub(sent_ns)));
                }
            }
            Event::Disconnected(_) => {
                live.disconnected.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
    inbox
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
