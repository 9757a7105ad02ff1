//! What the transport adapters ([`crate::native`], [`crate::websocket`]) share: the one loop
//! that drives a sans-IO [`Session`] ([`drive`]) and carries out its relay work, around a
//! [`Link`] — the only part each transport writes (read a frame, write frames, close).
//!
//! The loop waits for whatever comes first: a frame from the client, an event from the
//! session's [`Mailbox`] on the relay hub, the result of a backlog fetch, shutdown, the
//! session's revocation, its next deadline, or its mailbox overflowing. Everything that needs
//! a round trip to the backend runs in a task of its own and comes back as [`Done`], so a
//! session keeps answering pings while its backlog loads.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use haberci_kit::shutdown::Shutdown;
use haberci_wire::relay::{self as wire_relay, Event, Inbound};
use haberci_wire::{
    ClientFrame, ErrorCode, ErrorFrame, Presence as PresenceFrame, ServerFrame, Typing, UserId,
    WireError,
};
use tokio::sync::mpsc;

use crate::auth::TokenKeys;
use crate::delivery::{Backlog, ConversationInfo, FetchFrom, Route};
use crate::presence::{Online, Presence};
use crate::relay::{Inbox, Mailbox, Relay as RelayIo};
use crate::revocation::{Revocations, Watch};
use crate::session::{Identity, Now, Output, Relay, Session, SessionConfig};

/// Most mailbox events handled in one turn of the loop before the client is read again.
pub const MAILBOX_BATCH: usize = 256;
/// Pause before a failed backlog fetch is asked again.
pub const FETCH_RETRY: Duration = Duration::from_millis(500);

/// What every realtime adapter needs.
#[derive(Clone)]
pub struct Realtime {
    pub keys: Arc<TokenKeys>,
    pub session: SessionConfig,
    pub revocations: Arc<Revocations>,
    /// `None` when the gateway runs without Redis: then messaging is answered `unavailable`.
    pub relay: Option<Arc<RelayIo>>,
    /// `Some` exactly when `relay` is.
    pub presence: Option<Arc<Presence>>,
}

/// A session's footprint on the relay.
#[derive(Default)]
struct Attached {
    mailbox: Option<Mailbox>,
    /// Keeps the user online while the session lives.
    online: Option<Online>,
    /// Users whose presence the session watches.
    watching: Vec<UserId>,
}

/// What a transport adapter provides to [`drive`].
pub trait Link: Send {
    /// The next frame from the client (or why it could not be decoded); `None` when the client
    /// went away. Must be cancel-safe: [`drive`] races it against other events.
    fn recv(&mut self) -> impl Future<Output = Option<Result<ClientFrame, WireError>>> + Send;
    /// Writes `frames` in order; `false` when the client is gone.
    fn send(&mut self, frames: &[ServerFrame]) -> impl Future<Output = bool> + Send;
    /// Ends the connection with `code` (after the frames already sent, including `Closing`).
    fn close(self, code: ErrorCode) -> impl Future<Output = ()> + Send;
}

/// The result of work a session's loop handed to a task.
enum Done {
    Synced(Vec<ConversationInfo>),
    SyncFailed,
    Fetched(Vec<Backlog>),
    FetchFailed(Vec<FetchFrom>),
    Presence(Vec<PresenceFrame>),
}

/// Runs one realtime session over `link` until it ends.
pub async fn drive<L: Link>(mut link: L, realtime: Realtime, shutdown: Shutdown) {
    let mut session = Session::new(realtime.session, now());
    let mut revocable = Revocable::default();
    let mut draining = false;
    let mut attached = Attached::default();
    let (done_tx, mut done_rx) = mpsc::channel::<Done>(16);
    let mut frames = Vec::new();
    loop {
        // Watch for revocation before Welcome is written, so no revocation announced after the
        // client saw Welcome can be missed.
        revocable.update(&session, &realtime.revocations);
        let mut close_with = None;
        while let Some(output) = session.poll_output() {
            match output {
                Output::Frame(frame) => frames.push(frame),
                Output::Relay(work) => {
                    // Boxed: Redis and HTTP futures are large, and an inline await would make
                    // every idle session's task carry room for them.
                    let answer = Box::pin(relay_work(
                        work,
                        &realtime,
                        &mut attached,
                        &done_tx,
                        &mut session,
                    ))
                    .await;
                    frames.extend(answer);
                }
                Output::Close(code) => close_with = Some(code),
            }
        }
        if !frames.is_empty() {
            let limit = realtime.session.write_timeout;
            match tokio::time::timeout(limit, link.send(&frames)).await {
                Ok(true) => frames.clear(),
                Ok(false) => return,
                Err(_) => {
                    tracing::info!("client took no frames for {limit:?}; closing as slow");
                    link.close(ErrorCode::SlowConsumer).await;
                    return;
                }
            }
        }
        if let Some(code) = close_with {
            link.close(code).await;
            return;
        }

        let overflow = attached.mailbox.as_ref().map(Mailbox::overflow);
        let input = async {
            tokio::select! {
                frame = link.recv() => Input::Frame(frame),
                inbox = recv_inbox(&mut attached.mailbox) => Input::Inbox(inbox),
                done = done_rx.recv() => Input::Done(done),
                _ = overflowed(overflow.as_deref()) => Input::Overflow,
            }
        };
        match next(&mut session, &revocable, &shutdown, &mut draining, input).await {
            Wake::Handled => {}
            Wake::Input(Input::Frame(Some(frame))) => {
                session.handle_frame(frame, &realtime.keys.current(), now())
            }
            Wake::Input(Input::Frame(None)) => return,
            Wake::Input(Input::Inbox(Some(first))) => {
                // Take what is queued in one go: a session that also reads a busy client must
                // still empty its mailbox faster than the hub fills it.
                let mut next = Some(first);
                let mut taken = 0;
                let at = now();
                while let Some(inbox) = next {
                    match inbox {
                        Inbox::Event(event) => session.handle_event(&event, at),
                        Inbox::Resync => session.resync(at),
                    }
                    taken += 1;
                    next = match (&mut attached.mailbox, taken < MAILBOX_BATCH) {
                        (Some(mailbox), true) => mailbox.try_recv(),
                        _ => None,
                    };
                }
            }
            Wake::Input(Input::Inbox(None) | Input::Done(None)) => {}
            Wake::Input(Input::Done(Some(done))) => match done {
                Done::Synced(conversations) => session.handle_sync(&conversations),
                Done::SyncFailed => session.close_unavailable("cannot list your conversations"),
                Done::Fetched(pages) => {
                    for page in pages {
                        session.handle_backlog(page);
                    }
                }
                Done::FetchFailed(from) => {
                    for f in from {
                        session.fetch_failed(f.conversation);
                    }
                }
                Done::Presence(states) => {
                    let at = now();
                    for state in states {
                        session.handle_event(&Arc::new(Event::Presence(state)), at);
                    }
                }
            },
            Wake::Input(Input::Overflow) => session.overflowed(),
        }
    }
}

enum Input {
    Frame(Option<Result<ClientFrame, WireError>>),
    Inbox(Option<Inbox>),
    Done(Option<Done>),
    Overflow,
}

async fn recv_inbox(mailbox: &mut Option<Mailbox>) -> Option<Inbox> {
    match mailbox {
        Some(mailbox) => mailbox.recv().await,
        None => std::future::pending().await,
    }
}

async fn overflowed(overflow: Option<&crate::relay::Overflow>) {
    match overflow {
        Some(overflow) => overflow.raised().await,
        None => std::future::pending().await,
    }
}

/// Carries out one piece of relay work; returns frames to write at once (refusals).
async fn relay_work(
    work: Relay,
    realtime: &Realtime,
    attached: &mut Attached,
    done: &mpsc::Sender<Done>,
    session: &mut Session,
) -> Option<ServerFrame> {
    let (Some(relay), Some(presence)) = (realtime.relay.clone(), realtime.presence.clone()) else {
        if let Relay::Send(_, send) = &work {
            session.send_unavailable(send.client_msg_id);
            return None;
        }
        return unserved(&work);
    };
    let mailbox = &mut attached.mailbox;
    match work {
        Relay::Opened { identity } => {
            let mut inbox = relay.hub().mailbox();
            // Subscribe first, list second: a message stored after the listing arrives live.
            if let Err(err) = inbox.join(wire_relay::user_channel(identity.user)).await {
                tracing::warn!(%err, "cannot subscribe a session's user channel");
                session.close_unavailable("messaging is unavailable; retry");
                return None;
            }
            *mailbox = Some(inbox);
            attached.online = Some(presence.online(identity.user).await);
            let done = done.clone();
            tokio::spawn(async move {
                let result = match relay.conversations(identity.user).await {
                    Ok(list) => Done::Synced(list),
                    Err(err) => {
                        tracing::warn!(%err, user = %identity.user, "session sync failed");
                        Done::SyncFailed
                    }
                };
                let _ = done.send(result).await;
            });
            None
        }
        Relay::Send(identity, send) => {
            let client_msg_id = send.client_msg_id;
            let conversation = match send.recipient {
                haberci_wire::Recipient::User(user) => {
                    wire_relay::direct_conversation(identity.user, user)
                }
                haberci_wire::Recipient::Group(group) => wire_relay::group_conversation(group),
            };
            let entry = Inbound::Send {
                sender: identity.user,
                session: identity.session,
                conversation,
                send,
            };
            match relay.append(&entry).await {
                Ok(()) => None,
                Err(err) => {
                    tracing::warn!(%err, "cannot append a send to its stream");
                    session.send_unavailable(client_msg_id);
                    None
                }
            }
        }
        Relay::Ack(identity, ack) => {
            receipt(
                &relay,
                Inbound::Ack {
                    user: identity.user,
                    conversation: ack.conversation_id,
                    seq: ack.seq,
                },
            )
            .await
        }
        Relay::Read(identity, read) => {
            receipt(
                &relay,
                Inbound::Read {
                    user: identity.user,
                    conversation: read.conversation_id,
                    seq: read.seq,
                },
            )
            .await
        }
        Relay::Typing(identity, typing, route) => {
            let channel = match route {
                Route::Direct(peer) => wire_relay::user_channel(peer),
                Route::Group => wire_relay::conversation_channel(typing.conversation_id),
            };
            let event = Event::Typing(Typing {
                conversation_id: typing.conversation_id,
                user_id: identity.user,
                state: typing.state,
            });
            if let Err(err) = relay.publish(channel, &event).await {
                tracing::debug!(%err, "typing not published");
            }
            None
        }
        Relay::PresenceWatch(_, watch) => {
            let Some(mailbox) = mailbox else {
                return None;
            };
            for user in &attached.watching {
                if !watch.user_ids.contains(user) {
                    mailbox.leave(&wire_relay::presence_channel(*user)).await;
                }
            }
            for user in &watch.user_ids {
                if let Err(err) = mailbox.join(wire_relay::presence_channel(*user)).await {
                    tracing::debug!(%err, "cannot watch presence");
                }
            }
            attached.watching = watch.user_ids.clone();
            // The current state of each, after subscribing: a change from here on arrives live.
            let done = done.clone();
            tokio::spawn(async move {
                let mut states = Vec::with_capacity(watch.user_ids.len());
                for user in watch.user_ids {
                    states.push(presence.state(user).await);
                }
                let _ = done.send(Done::Presence(states)).await;
            });
            None
        }
        Relay::Fetch(identity, from) => {
            spawn_fetch(relay, identity, from, done.clone());
            None
        }
        Relay::Subscribe(conversation) => {
            if let Some(mailbox) = mailbox {
                if let Err(err) = mailbox
                    .join(wire_relay::conversation_channel(conversation))
                    .await
                {
                    tracing::warn!(%err, %conversation, "cannot subscribe a group channel");
                }
            }
            None
        }
        Relay::Unsubscribe(conversation) => {
            if let Some(mailbox) = mailbox {
                mailbox
                    .leave(&wire_relay::conversation_channel(conversation))
                    .await;
            }
            None
        }
    }
}

fn spawn_fetch(
    relay: Arc<RelayIo>,
    identity: Identity,
    from: Vec<FetchFrom>,
    done: mpsc::Sender<Done>,
) {
    tokio::spawn(async move {
        let result = match relay.sync(identity.user, &from).await {
            Ok(pages) => Done::Fetched(pages),
            Err(err) => {
                tracing::warn!(%err, user = %identity.user, "backlog fetch failed; retrying");
                tokio::time::sleep(FETCH_RETRY).await;
                Done::FetchFailed(from)
            }
        };
        let _ = done.send(result).await;
    });
}

/// Receipts are cumulative: a lost one is made good by the next, so a failure is only logged.
async fn receipt(relay: &RelayIo, entry: Inbound) -> Option<ServerFrame> {
    if let Err(err) = relay.append(&entry).await {
        tracing::debug!(%err, "receipt not appended");
    }
    None
}

fn unavailable(client_msg_id: Option<haberci_wire::ClientMsgId>) -> ServerFrame {
    ServerFrame::Error(ErrorFrame {
        code: ErrorCode::Unavailable,
        message: crate::session::UNAVAILABLE.into(),
        client_msg_id,
    })
}

/// Follows a session's revocation once it is open; `None` before `Welcome`.
#[derive(Default)]
pub struct Revocable(Option<Watch>);

impl Revocable {
    /// Starts watching once the session has an identity.
    pub fn update(&mut self, session: &Session, revocations: &Arc<Revocations>) {
        if self.0.is_none() {
            if let Some(identity) = session.identity() {
                self.0 = Some(revocations.watch(identity.session));
            }
        }
    }

    /// Resolves when the session is revoked; never before it is open.
    pub async fn revoked(&self) {
        match &self.0 {
            Some(watch) => watch.revoked().await,
            None => std::future::pending().await,
        }
    }
}

/// What woke an adapter's loop.
pub enum Wake<T> {
    /// Input from the transport.
    Input(T),
    /// Shutdown, a revocation or a deadline; already applied to the session.
    Handled,
}

/// Waits for the next thing a session must react to: the transport's `input`, shutdown (once:
/// the session is drained and `draining` is set), the session's revocation, or its next
/// deadline. Everything but input is applied to `session` here, the same for every transport.
pub async fn next<T>(
    session: &mut Session,
    revocable: &Revocable,
    shutdown: &Shutdown,
    draining: &mut bool,
    input: impl Future<Output = T>,
) -> Wake<T> {
    let deadline = session.next_timeout();
    tokio::select! {
        _ = shutdown.cancelled(), if !*draining => {
            *draining = true;
            session.drain();
        }
        _ = revocable.revoked() => session.revoke(),
        _ = sleep_until(deadline) => session.handle_timeout(now()),
        input = input => return Wake::Input(input),
    }
    Wake::Handled
}

/// Reads both clocks.
pub fn now() -> Now {
    Now {
        instant: Instant::now(),
        unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0),
    }
}

/// Sleeps until `deadline`; forever when there is none.
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// What the client hears about relay work on a gateway without Redis: a retryable
/// `unavailable` for receipts, nothing for the rest. (Sends are answered by the session,
/// [`Session::send_unavailable`], with the sends queued behind them.)
pub fn unserved(relay: &Relay) -> Option<ServerFrame> {
    match relay {
        Relay::Ack(..) | Relay::Read(..) => Some(unavailable(None)),
        _ => None,
    }
}
