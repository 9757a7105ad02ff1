//! The chaos ledger (#20): chat traffic on two gateways and two workers while each fault class
//! strikes in turn, and a ledger of every message a client was told is `Sent`, which proves
//! per fault: none lost, none stored twice, each conversation in order, and how long the
//! system took to recover.
//!
//! Everything runs on real processes of the run's own (Postgres, PgBouncer, Redis, api,
//! workers, gateways), so each may be killed. Pairs of users chat, sender and recipient on
//! different gateways and transports; every QUIC client reaches its gateway through a
//! [`UdpRelay`], which loses, delays and reorders datagrams or changes the clients' addresses
//! when the fault says so. Clients do what docs/PROTOCOL.md tells an app to do: reconnect
//! (to the same gateway, else the other), resume, and resend unanswered sends with the same
//! `client_msg_id` ([`Peer::send_reliably`]).
//!
//! `./dev test` runs a short version; `./dev chaos` a longer one (more pairs and messages per
//! fault, `HABERCI_CHAOS_PAIRS` and `HABERCI_CHAOS_PER_FAULT`) that writes its table to
//! `HABERCI_CHAOS_REPORT` for docs/OPERATIONS.md.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use haberci_client::{ClientConfig, ConversationId, Sent, Transport};
use haberci_testkit::{TransportKind, User};
use tokio::sync::watch;

use crate::impair::{Impairment, UdpRelay};
use crate::peer::Peer;
use crate::support::{Cluster, TIMEOUT};

/// The fault classes, in the order they strike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    WorkerKilled,
    GatewayKilled,
    ApiKilled,
    RedisRestarted,
    PgBouncerRestarted,
    PostgresRestarted,
    LossDelayReorder,
    AddressChanged,
    RedisUnreachable,
}

const FAULTS: [Fault; 9] = [
    Fault::WorkerKilled,
    Fault::GatewayKilled,
    Fault::ApiKilled,
    Fault::RedisRestarted,
    Fault::PgBouncerRestarted,
    Fault::PostgresRestarted,
    Fault::LossDelayReorder,
    Fault::AddressChanged,
    Fault::RedisUnreachable,
];

/// The network fault on QUIC datagrams, both ways.
const IMPAIRMENT: Impairment = Impairment {
    loss_percent: 10,
    delay_ms: (10, 80),
};

/// How long Redis is unreachable (the 10 s).
const REDIS_UNREACHABLE: Duration = Duration::from_secs(10);

/// One message between sends of a sender: the traffic's pace (not a wait for anything).
const PACE: Duration = Duration::from_millis(40);

impl Fault {
    fn describe(self) -> &'static str {
        match self {
            Fault::WorkerKilled => "a worker killed (SIGKILL), a new one started",
            Fault::GatewayKilled => "a gateway killed (SIGKILL); its clients move to the other",
            Fault::ApiKilled => "the api killed (SIGKILL) and restarted",
            Fault::RedisRestarted => "Redis killed (SIGKILL) and restarted on its AOF",
            Fault::PgBouncerRestarted => "PgBouncer killed (SIGKILL) and restarted",
            Fault::PostgresRestarted => "Postgres crashed (immediate stop) and restarted",
            Fault::LossDelayReorder => {
                "QUIC datagrams: 10% lost, 10–80 ms late (reordered), both ways"
            }
            Fault::AddressChanged => "every QUIC client's address changes (NAT rebinding)",
            Fault::RedisUnreachable => "Redis unreachable for 10 s (SIGSTOP, SIGCONT)",
        }
    }
}

/// One message a sender was told is stored.
pub(crate) struct Entry {
    phase: usize,
    sent: Sent,
    /// From the first attempt to `Sent`.
    took: Duration,
}

/// One pair's ledger.
pub(crate) struct Pair {
    sender: Peer,
    recipient: Peer,
    recipient_user: User,
    entries: Mutex<Vec<Entry>>,
}

impl Pair {
    fn entries(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn in_phase(&self, phase: usize) -> usize {
        self.entries().iter().filter(|e| e.phase == phase).count()
    }

    fn conversation(&self) -> Option<ConversationId> {
        self.entries().first().map(|e| e.sent.conversation_id)
    }
}

/// What the run measured for one fault.
#[derive(Debug, Default)]
pub(crate) struct Row {
    pub sent: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub out_of_order: usize,
    pub slowest_send: Duration,
}

pub(crate) struct Traffic {
    pairs: Vec<Arc<Pair>>,
    pub(crate) phase: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    progress: watch::Receiver<u64>,
    senders: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    pub(crate) fn start(pairs: Vec<Arc<Pair>>) -> Traffic {
        let phase = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (bump, progress) = watch::channel(0u64);
        let bump = Arc::new(bump);
        let senders = pairs
            .iter()
            .map(|pair| {
                let (pair, phase, stop, bump) =
                    (pair.clone(), phase.clone(), stop.clone(), bump.clone());
                tokio::spawn(async move {
                    let mut pace = tokio::time::interval(PACE);
                    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut k = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        pace.tick().await;
                        let at = phase.load(Ordering::Relaxed);
                        let started = Instant::now();
                        let sent = pair
                            .sender
                            .send_reliably(haberci_client::text_to(
                                pair.recipient.id,
                                format!("phase {at} #{k}"),
                            ))
                            .await;
                        pair.entries().push(Entry {
                            phase: at,
                            sent,
                            took: started.elapsed(),
                        });
                        bump.send_modify(|n| *n += 1);
                        k += 1;
                    }
                })
            })
            .collect();
        Traffic {
            pairs,
            phase,
            stop,
            progress,
            senders,
        }
    }

    /// Waits until every pair has at least `n` messages stored in `phase`.
    pub(crate) async fn wait_for(&mut self, phase: usize, n: usize) {
        let pairs = self.pairs.clone();
        tokio::time::timeout(
            TIMEOUT * 2,
            self.progress
                .wait_for(|_| pairs.iter().all(|p| p.in_phase(phase) >= n)),
        )
        .await
        .unwrap_or_else(|_| {
            let counts: Vec<usize> = pairs.iter().map(|p| p.in_phase(phase)).collect();
            panic!("phase {phase}: not {n} messages stored per pair in time: {counts:?}")
        })
        .expect("the senders run");
    }

    /// From `healed`: until a message each pair sends now is stored and delivered.
    pub(crate) async fn recovery(&self, phase: usize, healed: Instant) -> Duration {
        let probes = self.pairs.iter().map(|pair| async move {
            let started = Instant::now();
            let sent = pair
                .sender
                .send_reliably(haberci_client::text_to(pair.recipient.id, "probe"))
                .await;
            let (conversation, seq) = (sent.conversation_id, sent.seq.get());
            pair.entries().push(Entry {
                phase,
                sent,
                took: started.elapsed(),
            });
            pair.recipient
                .wait("holding the probe", |log| {
                    log.messages
                        .get(&conversation)
                        .is_some_and(|m| m.iter().any(|m| m.seq.get() == seq))
                })
                .await;
            healed.elapsed()
        });
        futures::future::join_all(probes)
            .await
            .into_iter()
            .max()
            .unwrap_or_default()
    }

    pub(crate) async fn stop(self) -> Vec<Arc<Pair>> {
        self.stop.store(true, Ordering::Relaxed);
        for sender in self.senders {
            sender.await.expect("a sender panicked");
        }
        self.pairs
    }
}

/// Where a client of a transport kind reaches gateway number `g`.
pub(crate) type Target<'a> = dyn Fn(&Cluster, usize, TransportKind) -> Transport + 'a;

/// `n` pairs of new users, sender and recipient on different gateways and transports (half the
/// senders on native QUIC, half on WebSocket), each client reconnecting to its gateway, else
/// the other; and every QUIC client among them.
pub(crate) async fn chat_pairs(
    cluster: &Cluster,
    n: usize,
    target: &Target<'_>,
) -> (Vec<Arc<Pair>>, Vec<Peer>) {
    let connect = |user: &User, g: usize, kind: TransportKind| {
        let mut config = ClientConfig::new(
            target(cluster, g, kind),
            haberci_client::Roots::PemFile(cluster.certs.ca_cert()),
            &user.token,
        );
        config.server_name = Some("localhost".into());
        config.client_name = "haberci-chaos".into();
        // A gateway that died without a word is found within about a second.
        config.ping_interval = Duration::from_millis(300);
        config.pong_timeout = Duration::from_secs(1);
        let targets = vec![target(cluster, g, kind), target(cluster, 1 - g, kind)];
        let user = user.clone();
        async move {
            let peer = Peer::connect(&user, config).await;
            peer.reconnect_automatically(targets);
            peer
        }
    };
    let mut pairs = Vec::new();
    let mut quic_peers = Vec::new();
    for p in 0..n {
        let g = p % 2;
        let (kind, other) = if (p / 2) % 2 == 0 {
            (TransportKind::Quic, TransportKind::WebSocket)
        } else {
            (TransportKind::WebSocket, TransportKind::Quic)
        };
        let sender_user = cluster.register(&format!("chaos_s{p}")).await;
        let recipient_user = cluster.register(&format!("chaos_r{p}")).await;
        let sender = connect(&sender_user, g, kind).await;
        let recipient = connect(&recipient_user, 1 - g, other).await;
        quic_peers.push(if kind == TransportKind::Quic {
            sender.clone()
        } else {
            recipient.clone()
        });
        pairs.push(Arc::new(Pair {
            sender,
            recipient,
            recipient_user,
            entries: Mutex::new(Vec::new()),
        }));
    }
    (pairs, quic_peers)
}

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}: not a number")))
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_every_fault_loses_doubles_and_reorders_nothing() {
    let pairs_n = knob("HABERCI_CHAOS_PAIRS", 4);
    let per_fault = knob("HABERCI_CHAOS_PER_FAULT", 8);
    let mut cluster = Cluster::start_private(2, 2).await;
    let relays = [
        UdpRelay::start(cluster.gateways[0].udp).await,
        UdpRelay::start(cluster.gateways[1].udp).await,
    ];
    // Where a client of `kind` reaches gateway `g`: QUIC through its relay.
    let target = |cluster: &Cluster, g: usize, kind: TransportKind| match kind {
        TransportKind::Quic => Transport::Quic {
            addr: relays[g].addr.to_string(),
        },
        _ => cluster.gateways[g].transport(kind),
    };
    let (pairs, quic_peers) = chat_pairs(&cluster, pairs_n, &target).await;

    let mut traffic = Traffic::start(pairs);
    traffic.wait_for(0, per_fault).await;
    let mut recoveries = Vec::new();
    let mut connections_before_move = Vec::new();
    for (i, fault) in FAULTS.iter().copied().enumerate() {
        let phase = i + 1;
        traffic.phase.store(phase, Ordering::Relaxed);
        traffic.wait_for(phase, per_fault / 2).await;
        let logs = cluster.logs();
        eprintln!("chaos: {}", fault.describe());
        let healed = match fault {
            Fault::WorkerKilled => {
                cluster.kill_and_replace_worker(0).await;
                Instant::now()
            }
            Fault::GatewayKilled => {
                cluster.kill_gateway(0).await;
                Instant::now()
            }
            Fault::ApiKilled => {
                cluster.kill_and_restart_api().await;
                Instant::now()
            }
            Fault::RedisRestarted => {
                cluster.redis.restart(&logs).await;
                Instant::now()
            }
            Fault::PgBouncerRestarted => {
                let db = cluster.private_db.as_mut().expect("private database");
                db.bouncer.kill_and_restart(&logs).await;
                Instant::now()
            }
            Fault::PostgresRestarted => {
                let db = cluster.private_db.as_mut().expect("private database");
                db.postgres.crash_and_restart(&logs).await;
                Instant::now()
            }
            Fault::LossDelayReorder => {
                for relay in &relays {
                    relay.impair(IMPAIRMENT);
                }
                // The fault holds while every pair sends a phase's worth through it.
                traffic.wait_for(phase, per_fault).await;
                for relay in &relays {
                    relay.heal();
                }
                Instant::now()
            }
            Fault::AddressChanged => {
                connections_before_move = quic_peers.iter().map(|p| p.log().connections).collect();
                let moved = relays[0].rebind().await + relays[1].rebind().await;
                assert!(moved > 0, "no QUIC client to move");
                Instant::now()
            }
            Fault::RedisUnreachable => {
                cluster.redis.freeze().await;
                // The fault itself lasts this long; traffic runs into it meanwhile.
                tokio::time::sleep(REDIS_UNREACHABLE).await;
                cluster.redis.thaw().await;
                Instant::now()
            }
        };
        recoveries.push(traffic.recovery(phase, healed).await);
        if fault == Fault::AddressChanged {
            // QUIC connection migration: each moved client kept its connection.
            let after: Vec<u64> = quic_peers.iter().map(|p| p.log().connections).collect();
            assert_eq!(
                after, connections_before_move,
                "connections opened per QUIC client, before and after their address changed"
            );
        }
        traffic.wait_for(phase, per_fault + per_fault / 2).await;
        if fault == Fault::GatewayKilled {
            // Back to two gateways for the faults after this one.
            cluster.restart_gateway(0).await;
        }
    }
    let pairs = traffic.stop().await;

    let rows = ledger(&cluster, &pairs, FAULTS.len() + 1).await;
    let impaired = relays.iter().map(|r| r.counts()).collect::<Vec<_>>();
    let mut table = table(&rows, &recoveries, pairs_n);
    let total = |f: fn(&crate::impair::Counts) -> u64| impaired.iter().map(f).sum::<u64>();
    table.push_str(&format!(
        "\nQUIC datagrams through the relays: {} forwarded ({} of them late), {} dropped.\n",
        total(|c| c.forwarded),
        total(|c| c.delayed),
        total(|c| c.dropped)
    ));
    eprintln!("{table}");
    if let Ok(path) = std::env::var("HABERCI_CHAOS_REPORT") {
        std::fs::write(&path, &table).unwrap_or_else(|e| panic!("write {path}: {e}"));
    }
    assert!(
        impaired.iter().any(|c| c.dropped > 0 && c.delayed > 0),
        "the network fault struck nothing: {impaired:?}"
    );
    for (phase, row) in rows.iter().enumerate() {
        assert!(row.sent > 0, "phase {phase}: nothing sent");
        assert_eq!(
            (row.lost, row.duplicated, row.out_of_order),
            (0, 0, 0),
            "phase {phase} lost, duplicated or reordered messages:\n{table}"
        );
    }
}

/// Counts, per phase (0 is the warm-up), what the recipients hold and the database stored
/// against what the senders were told.
pub(crate) async fn ledger(cluster: &Cluster, pairs: &[Arc<Pair>], phases: usize) -> Vec<Row> {
    let mut rows: Vec<Row> = (0..phases).map(|_| Row::default()).collect();
    let db = cluster.db().await;
    for pair in pairs {
        let conversation = pair.conversation().expect("the pair chatted");
        let last = pair
            .entries()
            .iter()
            .map(|e| e.sent.seq.get())
            .max()
            .unwrap_or(0);
        // Whatever is still on its way arrives; what has not by the deadline is lost.
        let _ = tokio::time::timeout(
            TIMEOUT - Duration::from_secs(1),
            pair.recipient.wait_for_seq(conversation, last),
        )
        .await;
        let stored = crate::support::stored_per_client_msg_id(&db, pair.sender.id).await;
        let entries = pair.entries();
        let phase_of: HashMap<u64, usize> = entries
            .iter()
            .map(|e| (e.sent.seq.get(), e.phase))
            .collect();
        let log = pair.recipient.log();
        let received = log.messages.get(&conversation).cloned().unwrap_or_default();
        let held: BTreeMap<u64, _> = received.iter().map(|m| (m.seq.get(), m.id)).collect();
        for entry in entries.iter() {
            let row = &mut rows[entry.phase];
            row.sent += 1;
            row.slowest_send = row.slowest_send.max(entry.took);
            if held.get(&entry.sent.seq.get()) != Some(&entry.sent.message_id) {
                row.lost += 1;
            }
        }
        let mut highest = 0;
        for message in &received {
            let seq = message.seq.get();
            if seq <= highest {
                rows[phase_of.get(&seq).copied().unwrap_or(0)].out_of_order += 1;
            }
            highest = highest.max(seq);
        }
        let phase_of_id: HashMap<uuid::Uuid, usize> = entries
            .iter()
            .map(|e| (e.sent.client_msg_id.as_uuid(), e.phase))
            .collect();
        for (id, count) in stored {
            let phase = phase_of_id.get(&id).copied().unwrap_or(0);
            rows[phase].duplicated += count.saturating_sub(1) as usize;
        }
        // The sender's own view: one message per seq ([`Peer::send_reliably`] checks it) and
        // no seq skipped.
        let seqs: std::collections::BTreeSet<u64> =
            entries.iter().map(|e| e.sent.seq.get()).collect();
        assert_eq!(
            seqs.len() as u64,
            last,
            "{}: seqs of {conversation} have gaps",
            pair.recipient_user.username
        );
    }
    rows
}

fn table(rows: &[Row], recoveries: &[Duration], pairs: usize) -> String {
    let ms = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    let mut out = format!(
        "{pairs} pairs, half native QUIC and half WebSocket, sender and recipient on different \
         gateways; 2 gateways, 2 workers.\n\n| fault | sent | lost | duplicated | out of order \
         | slowest send | recovered after |\n|---|---:|---:|---:|---:|---:|---:|\n"
    );
    let warm = &rows[0];
    out.push_str(&format!(
        "| none (warm-up) | {} | {} | {} | {} | {} | – |\n",
        warm.sent,
        warm.lost,
        warm.duplicated,
        warm.out_of_order,
        ms(warm.slowest_send)
    ));
    for ((fault, row), recovery) in FAULTS.iter().zip(&rows[1..]).zip(recoveries) {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            fault.describe(),
            row.sent,
            row.lost,
            row.duplicated,
            row.out_of_order,
            ms(row.slowest_send),
            ms(*recovery)
        ));
    }
    out
}
