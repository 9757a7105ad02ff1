//! A user's client as the tests drive it: one SDK [`Client`] at a time (replaced on
//! reconnect), with everything the server said recorded in a [`Log`] the tests wait on.
//!
//! - Events are pumped into the log as they arrive; [`Peer::wait`] waits (bounded by
//!   [`TIMEOUT`]) until the log satisfies a condition.
//! - With [`Peer::reconnect_automatically`], a connection that ends is replaced by a new one
//!   that resumes from the SDK's tracked positions, over the next transport in the list, as a
//!   real app does after a network loss.
//! - [`Peer::send_reliably`] is the protocol's sending rule (docs/PROTOCOL.md, "Sending
//!   messages"): resend the same frame (same `client_msg_id`) until `Sent` or a refusal that
//!   is not retryable.
//!
//! The SDK drops a `Message` whose seq it already holds (its own message echoed after its
//! `Sent`, or a duplicate), so what a test sees per conversation is: `Message` events in
//! strictly increasing seq order, plus the seqs of its own `Sent`s. [`Peer::assert_exactly_once`]
//! checks exactly that against the conversation's whole history.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use haberci_client::{
    Client, ClientConfig, Closing, ConversationId, Disconnect, ErrorFrame, Event, Events, Message,
    SendError, SendMessage, Sent, Status, Transport, UserId,
};
use haberci_testkit::User;
use haberci_wire::MessageId;
use tokio::sync::watch;

use crate::support::TIMEOUT;

/// How long one attempt of a send may wait for its answer before the connection is presumed
/// to have lost it (e.g. a `Sent` published while Redis restarted): then the peer reconnects
/// and resends. Well above a healthy answer (milliseconds), well below [`TIMEOUT`].
pub const SEND_ATTEMPT: Duration = Duration::from_secs(6);

/// Everything the server said to one user's connections, in arrival order.
#[derive(Default, Debug)]
pub struct Log {
    /// `Message` events per conversation, in arrival order.
    pub messages: BTreeMap<ConversationId, Vec<Message>>,
    /// This user's own messages as their `Sent`s told: conversation → seq → message id.
    pub sent: BTreeMap<ConversationId, BTreeMap<u64, MessageId>>,
    pub statuses: Vec<Status>,
    pub errors: Vec<ErrorFrame>,
    pub closings: Vec<Closing>,
    pub disconnects: Vec<Disconnect>,
    /// Connections opened so far (1 after the first connect).
    pub connections: u64,
    /// Why [`Peer::send_reliably`] had to try a send again, once per retry.
    pub retries: Vec<Retry>,
}

/// Why a send was tried again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Retry {
    /// The connection ended before the answer.
    Disconnected,
    /// A retryable refusal (`unavailable`, `rate_limited`).
    Refused(haberci_client::ErrorCode),
    /// No answer within [`SEND_ATTEMPT`].
    Unanswered,
}

impl Log {
    /// Whether this user holds every seq of `conversation` from 1 to `last`, received or sent.
    pub fn holds_all(&self, conversation: ConversationId, last: u64) -> bool {
        let mut held: BTreeSet<u64> = self
            .messages
            .get(&conversation)
            .map(|m| m.iter().map(|m| m.seq.get()).collect())
            .unwrap_or_default();
        if let Some(sent) = self.sent.get(&conversation) {
            held.extend(sent.keys().copied());
        }
        held.range(1..=last).count() as u64 == last
    }

    /// Whether the latest `Status` of `member` in `conversation` reached `delivered` and `read`.
    pub fn status_reached(
        &self,
        conversation: ConversationId,
        member: UserId,
        delivered: u64,
        read: u64,
    ) -> bool {
        self.statuses.iter().any(|s| {
            s.conversation_id == conversation
                && s.user_id == member
                && s.delivered.map_or(0, |d| d.get()) >= delivered
                && s.read.map_or(0, |r| r.get()) >= read
        })
    }
}

struct Inner {
    name: String,
    client: Mutex<Option<Client>>,
    log: Mutex<Log>,
    /// Bumped on every change to the log.
    changed: watch::Sender<u64>,
    /// Where to reconnect after a connection ends (tried in turn); empty: stay disconnected.
    reconnect: Mutex<Vec<Transport>>,
}

impl Inner {
    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, f: impl FnOnce(&mut Log)) {
        f(&mut self.log());
        self.changed.send_modify(|n| *n += 1);
    }
}

/// One user's client; cheap to clone (clones share the connection and the log).
#[derive(Clone)]
pub struct Peer {
    pub id: UserId,
    inner: Arc<Inner>,
}

impl Peer {
    /// Connects `user` with `config` (from `Cluster::client_config`).
    pub async fn connect(user: &User, config: ClientConfig) -> Peer {
        let (changed, _) = watch::channel(0);
        let peer = Peer {
            id: user.id,
            inner: Arc::new(Inner {
                name: user.username.clone(),
                client: Mutex::new(None),
                log: Mutex::new(Log::default()),
                changed,
                reconnect: Mutex::new(Vec::new()),
            }),
        };
        let (client, events) = tokio::time::timeout(TIMEOUT, Client::connect(config))
            .await
            .unwrap_or_else(|_| panic!("{}: no Welcome in time", user.username))
            .unwrap_or_else(|e| panic!("{}: connect: {e}", user.username));
        assert_eq!(client.user_id(), user.id);
        attach(&peer.inner, client, events);
        peer
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The current connection.
    pub fn client(&self) -> Client {
        self.inner
            .client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| panic!("{}: never connected", self.name()))
    }

    pub fn log(&self) -> MutexGuard<'_, Log> {
        self.inner.log()
    }

    /// From now on, a connection that ends is replaced by one to `targets` (in turn).
    pub fn reconnect_automatically(&self, targets: Vec<Transport>) {
        *self
            .inner
            .reconnect
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = targets;
    }

    /// Opens a new connection over `transport` that resumes from the current one's
    /// positions (closing the current one first, if it is still open).
    pub async fn reconnect_to(&self, transport: Transport) {
        let old = self.client();
        old.close().await;
        let mut config = old.resume_config();
        config.transport = transport;
        let (client, events) = tokio::time::timeout(TIMEOUT, Client::connect(config))
            .await
            .unwrap_or_else(|_| panic!("{}: no Welcome in time", self.name()))
            .unwrap_or_else(|e| panic!("{}: reconnect: {e}", self.name()));
        attach(&self.inner, client, events);
    }

    /// Waits until `done` holds for the log; panics after [`TIMEOUT`] naming `what`.
    pub async fn wait(&self, what: &str, done: impl Fn(&Log) -> bool) {
        let mut changed = self.inner.changed.subscribe();
        let waited = tokio::time::timeout(TIMEOUT, async {
            loop {
                if done(&self.log()) {
                    return;
                }
                changed.changed().await.expect("the peer lives");
            }
        })
        .await;
        if waited.is_err() {
            let log = self.log();
            panic!(
                "{}: not {what} within {TIMEOUT:?}; messages per conversation: {:?}, \
                 sent: {:?}, last statuses: {:?}, errors: {:?}, closings: {:?}, disconnects: {:?}",
                self.name(),
                log.messages
                    .iter()
                    .map(|(c, m)| (c, m.len()))
                    .collect::<Vec<_>>(),
                log.sent
                    .iter()
                    .map(|(c, s)| (c, s.len()))
                    .collect::<Vec<_>>(),
                &log.statuses[log.statuses.len().saturating_sub(4)..],
                log.errors,
                log.closings,
                log.disconnects,
            );
        }
    }

    /// Waits until this user holds every seq of `conversation` from 1 to `seq`.
    pub async fn wait_for_seq(&self, conversation: ConversationId, seq: u64) {
        self.wait(
            &format!("holding seqs 1..={seq} of {conversation}"),
            |log| log.holds_all(conversation, seq),
        )
        .await;
    }

    /// Sends `message` until it is stored: on a lost connection, after the next connection
    /// is up; on a retryable refusal (`unavailable`, `rate_limited`), after a pause; when no
    /// answer comes within [`SEND_ATTEMPT`], over a new connection. Always the same frame.
    pub async fn send_reliably(&self, message: SendMessage) -> Sent {
        let deadline = tokio::time::Instant::now() + TIMEOUT * 2;
        let mut attempts = 0;
        loop {
            attempts += 1;
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: {:?} not stored after {attempts} attempts",
                self.name(),
                message.client_msg_id
            );
            let generation = self.log().connections;
            let client = self.client();
            match tokio::time::timeout(SEND_ATTEMPT, client.send(message.clone())).await {
                Ok(Ok(sent)) => {
                    assert_eq!(sent.client_msg_id, message.client_msg_id);
                    self.inner.record(|log| {
                        let previous = log
                            .sent
                            .entry(sent.conversation_id)
                            .or_default()
                            .insert(sent.seq.get(), sent.message_id);
                        assert!(
                            previous.is_none_or(|id| id == sent.message_id),
                            "two messages answered with seq {} of {}",
                            sent.seq,
                            sent.conversation_id
                        );
                    });
                    return sent;
                }
                Ok(Err(SendError::Disconnected | SendError::AlreadyInFlight)) => {
                    self.inner
                        .record(|log| log.retries.push(Retry::Disconnected));
                    self.wait_for_connection_after(generation).await;
                }
                Ok(Err(SendError::Refused { code, .. })) if code.retryable() => {
                    self.inner
                        .record(|log| log.retries.push(Retry::Refused(code)));
                    // Pacing a retry, not waiting for an event: the server asked us to back off.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(Err(err)) => panic!("{}: send refused: {err}", self.name()),
                Err(_) => {
                    // The answer was lost: only a new connection may resend the same id.
                    assert!(
                        !self
                            .inner
                            .reconnect
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .is_empty(),
                        "{}: no answer to a send within {SEND_ATTEMPT:?}",
                        self.name()
                    );
                    self.inner.record(|log| log.retries.push(Retry::Unanswered));
                    if self.log().connections == generation {
                        client.close().await;
                    }
                    self.wait_for_connection_after(generation).await;
                }
            }
        }
    }

    async fn wait_for_connection_after(&self, generation: u64) {
        self.wait("reconnected", |log| log.connections > generation)
            .await;
    }

    /// Checks what this user saw of `conversation` against `history` (seq → message id, the
    /// whole conversation as stored, from its senders' `Sent`s): every message of someone else
    /// arrived exactly once, all events in seq order, and own messages are the ones `Sent` said.
    pub fn assert_exactly_once(
        &self,
        conversation: ConversationId,
        history: &BTreeMap<u64, MessageId>,
    ) {
        let log = self.log();
        let name = self.name();
        let events = log.messages.get(&conversation).cloned().unwrap_or_default();
        let seqs: Vec<u64> = events.iter().map(|m| m.seq.get()).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{name}: messages of {conversation} out of order or repeated: {seqs:?}"
        );
        let own = log.sent.get(&conversation).cloned().unwrap_or_default();
        let mut held: BTreeSet<u64> = seqs.iter().copied().collect();
        held.extend(own.keys().copied());
        let expected: BTreeSet<u64> = (1..=history.len() as u64).collect();
        assert_eq!(
            history.keys().copied().collect::<BTreeSet<_>>(),
            expected,
            "the history itself is gapless"
        );
        assert_eq!(
            held, expected,
            "{name}: seqs held in {conversation} (received or sent)"
        );
        for message in &events {
            assert_eq!(
                Some(&message.id),
                history.get(&message.seq.get()),
                "{name}: seq {} of {conversation} is another message",
                message.seq
            );
            assert_eq!(message.conversation_id, conversation);
        }
        for (seq, id) in &own {
            assert_eq!(Some(id), history.get(seq), "{name}: own seq {seq}");
        }
        for message in events.iter().filter(|m| m.sender_id != self.id) {
            assert!(
                !own.contains_key(&message.seq.get()),
                "{name}: seq {} is both someone else's message and our Sent",
                message.seq
            );
        }
    }
}

/// Makes `client` the peer's connection and pumps its events into the log.
fn attach(inner: &Arc<Inner>, client: Client, events: Events) {
    *inner.client.lock().unwrap_or_else(PoisonError::into_inner) = Some(client);
    inner.record(|log| log.connections += 1);
    tokio::spawn(pump(inner.clone(), events));
}

async fn pump(inner: Arc<Inner>, mut events: Events) {
    while let Some(event) = events.recv().await {
        let ended = matches!(event, Event::Disconnected(_));
        inner.record(|log| match event {
            Event::Message(message) => log
                .messages
                .entry(message.conversation_id)
                .or_default()
                .push(message),
            Event::Status(status) => log.statuses.push(status),
            Event::Error(error) => log.errors.push(error),
            Event::Closing(closing) => log.closings.push(closing),
            Event::Disconnected(reason) => log.disconnects.push(reason),
            _ => {}
        });
        if ended {
            break;
        }
    }
    let targets = inner
        .reconnect
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    if targets.is_empty() {
        return;
    }
    let old = inner
        .client
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .expect("connected before");
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    for transport in targets.iter().cycle() {
        let mut config = old.resume_config();
        config.transport = transport.clone();
        config.connect_timeout = Duration::from_secs(3);
        match Client::connect(config).await {
            Ok((client, events)) => {
                attach(&inner, client, events);
                return;
            }
            Err(err) if tokio::time::Instant::now() < deadline => {
                tracing_free_note(&inner.name, &err);
                // Backoff between attempts (the protocol's reconnect rule), not a wait for
                // an event: the server is down or refusing until it is not.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("{}: cannot reconnect within {TIMEOUT:?}: {err}", inner.name),
        }
    }
}

fn tracing_free_note(name: &str, err: &haberci_client::ConnectError) {
    eprintln!("{name}: reconnect attempt failed: {err}");
}
