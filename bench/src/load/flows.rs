//! Message flows inside a shard, shared by `chat`, `group` and `storm`: a sender sends at an
//! even pace, pipelined; its receivers count what arrives (once, in order, from this run) and
//! record each delivery's latency. A message's content carries its own stamp (`Stamp`), so a
//! receiver in another shard measures it against the same wall clock.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;

use crate::conn::{self, Conn, Inbox, Incoming, To};
use crate::load::protocol::{Common, Report, SessionSpec, ShardResult, Timing};
use crate::load::shard::{
    CLOSE_WAIT, Live, cpu_ms_now, drain_events, failure_key, open_sessions, wait_go,
};
use crate::report::latency::Latency;
use crate::sampling::procfs;

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
pub(crate) struct Flow {
    pub(crate) id: u32,
    pub(crate) to: To,
    pub(crate) messages: u32,
    /// Index into the opened sessions.
    pub(crate) sender: Option<usize>,
    pub(crate) receivers: Vec<usize>,
}

/// Connects `specs`, then on `go` runs every flow: its sender sends at an even pace, its
/// receivers count what arrives. `fanout`: report per message how many receivers got it and
/// the slowest delivery (groups).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_flows(
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
}
