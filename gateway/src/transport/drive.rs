//! The one loop that drives a sans-IO [`Session`] ([`drive`]) around a [`Link`], for every
//! transport, and hands the session's relay work to [`crate::relay::effects`].
//!
//! The loop waits for whatever comes first: a frame from the client, an event from the
//! session's [`Mailbox`] on the relay hub, the result of a backlog fetch, shutdown, the
//! session's revocation, its next deadline, or its mailbox overflowing. Everything that needs
//! a round trip to the backend runs in a task of its own and comes back as [`Done`], so a
//! session keeps answering pings while its backlog loads.
//!
//! Invariant: this is the only place the session's clock is read ([`now`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use haberci_kit::shutdown::Shutdown;
use haberci_seam::streams::Event;
use haberci_session::{Now, Output, Session};
use haberci_wire::{ClientFrame, ClientMsgId, ErrorCode, ServerFrame, WireError};
use tokio::sync::mpsc;

use super::Realtime;
use crate::metrics::{self, OpenSession, Transport};
use crate::relay::effects::{self, Attached, Done, Outcome};
use crate::relay::hub::{Inbox, Mailbox, Overflow};
use crate::relay::revocation::{Revocations, Watch};

/// Most mailbox events handled in one turn of the loop before the client is read again.
pub const MAILBOX_BATCH: usize = 256;
/// What a transport adapter provides to [`drive`].
pub trait Link: Send {
    /// The next frame from the client (or why it could not be decoded); `None` when the client
    /// went away. Must be cancel-safe: [`drive`] races it against other events.
    fn recv(&mut self) -> impl Future<Output = Option<Result<ClientFrame, WireError>>> + Send;
    /// Writes `frames` in order; `false` when the client is gone.
    fn send(&mut self, frames: &[ServerFrame]) -> impl Future<Output = bool> + Send;
    /// Ends the connection with `code` (after the frames already sent, including `Closing`).
    fn close(self, code: ErrorCode) -> impl Future<Output = ()> + Send;
    /// After [`Link::recv`] returned `None`: whether the link gave up on a client that stopped
    /// taking bytes (rather than the client going away), to be closed as `slow_consumer`.
    fn stalled(&self) -> bool {
        false
    }
}

/// Runs one realtime session over `link` until it ends.
pub async fn drive<L: Link>(link: L, transport: Transport, realtime: Realtime, shutdown: Shutdown) {
    let _open = OpenSession::new(transport);
    let mut link = Counted {
        link,
        sends: HashMap::new(),
    };
    let code = run(&mut link, realtime, shutdown).await;
    metrics::session_closed(code.map_or("client_gone", ErrorCode::name));
    if let Some(code) = code {
        link.link.close(code).await;
    }
}

/// How long a `Hello` that came before the access-token keys were ever loaded waits for them
/// (at most the session's `hello_timeout`). Well inside the clients' own wait for `Welcome`
/// (10 s in both SDKs), so the answer reaches a client that is still listening.
const KEYS_WAIT: Duration = Duration::from_secs(5);

/// Whether `frame` is a `Hello` this session would verify a token for: one that must wait
/// while the keys were never loaded (the gateway has just started). Verified against no keys
/// it would be refused `unauthenticated`, which a client does not retry. Every other frame,
/// and a `Hello` of a version not spoken here, is answered as ever.
fn needs_keys(frame: &Result<ClientFrame, WireError>, realtime: &Realtime) -> bool {
    matches!(frame, Ok(ClientFrame::Hello(hello)) if haberci_wire::is_supported_version(hello.protocol_version))
        && !realtime.keys.is_loaded()
}

/// Waits for the keys; `false` if they did not come in time, or the gateway began to stop.
async fn keys_loaded(realtime: &Realtime, shutdown: &Shutdown) -> bool {
    let wait = KEYS_WAIT.min(realtime.session.hello_timeout);
    tokio::select! {
        loaded = tokio::time::timeout(wait, realtime.keys.loaded()) => loaded.is_ok(),
        _ = shutdown.cancelled() => false,
    }
}

/// The session's loop; returns the code to close the connection with, or `None` when the
/// client is gone.
async fn run<L: Link>(
    link: &mut Counted<L>,
    realtime: Realtime,
    shutdown: Shutdown,
) -> Option<ErrorCode> {
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
                    let outcome = Box::pin(effects::carry_out(
                        work,
                        realtime.messaging.as_ref(),
                        &mut attached,
                        &done_tx,
                    ))
                    .await;
                    match outcome {
                        Outcome::Nothing => {}
                        Outcome::Write(frame) => frames.push(*frame),
                        Outcome::SendUnavailable(id) => session.send_unavailable(id),
                        Outcome::CloseUnavailable(reason) => session.close_unavailable(reason),
                        Outcome::OpenUnchecked => {
                            session.handle_sync(&[], &realtime.keys.current(), now())
                        }
                    }
                }
                Output::Close(code) => close_with = Some(code),
            }
        }
        if !frames.is_empty() {
            let limit = realtime.session.write_timeout;
            match tokio::time::timeout(limit, link.send(&frames)).await {
                Ok(true) => frames.clear(),
                Ok(false) => return None,
                Err(_) => {
                    let session = session.identity().map(|identity| identity.session);
                    tracing::info!(
                        ?session,
                        "client took no frames for {limit:?}; closing as slow"
                    );
                    return Some(ErrorCode::SlowConsumer);
                }
            }
        }
        if close_with.is_some() {
            return close_with;
        }

        let overflow = attached.overflow();
        let input = async {
            tokio::select! {
                frame = link.recv() => Input::Frame(frame),
                inbox = recv_inbox(attached.mailbox()) => Input::Inbox(inbox),
                done = done_rx.recv() => Input::Done(done),
                _ = overflowed(overflow.as_deref()) => Input::Overflow,
            }
        };
        match next(&mut session, &revocable, &shutdown, &mut draining, input).await {
            Wake::Handled => {}
            Wake::Input(Input::Frame(Some(frame))) => {
                // Boxed: only a gateway's first moments wait here; idle sessions carry no room.
                if !needs_keys(&frame, &realtime)
                    || Box::pin(keys_loaded(&realtime, &shutdown)).await
                {
                    session.handle_frame(frame, &realtime.keys.current(), now())
                } else {
                    session.close_unavailable("the gateway is starting: try again shortly")
                }
            }
            Wake::Input(Input::Frame(None)) if link.link.stalled() => {
                let session = session.identity().map(|identity| identity.session);
                tracing::info!(?session, "client stopped taking bytes; closing as slow");
                return Some(ErrorCode::SlowConsumer);
            }
            Wake::Input(Input::Frame(None)) => return None,
            Wake::Input(Input::Inbox(Some(first))) => {
                // Take what is queued in one go: a session that also reads a busy client must
                // still empty its mailbox faster than the hub fills it.
                let mut next = Some(first);
                let mut taken = 0;
                let at = now();
                while let Some(inbox) = next {
                    match inbox {
                        Inbox::Event(event) => {
                            time_delivery(&event, &session, at);
                            session.handle_event(&event, at)
                        }
                        Inbox::Resync => session.resync(at),
                    }
                    taken += 1;
                    next = match (attached.mailbox(), taken < MAILBOX_BATCH) {
                        (Some(mailbox), true) => mailbox.try_recv(),
                        _ => None,
                    };
                }
            }
            Wake::Input(Input::Inbox(None) | Input::Done(None)) => {}
            Wake::Input(Input::Done(Some(done))) => match done {
                Done::Synced(conversations) => {
                    session.handle_sync(&conversations, &realtime.keys.current(), now())
                }
                Done::SessionRefused => session.refuse_session(),
                Done::TooManySessions(limit) => session.refuse_too_many(limit),
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
                Done::Presence { visible, states } => {
                    // Boxed like `carry_out`: inline, its Redis future (5.6 KB) would be room
                    // every session's task carries for good (drive's future: 7.3 KB, not 3.1).
                    Box::pin(effects::watched(&mut attached, &visible)).await;
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

/// A live message for someone else reaching this session: how long after it was stored
/// (its server timestamp). Backlog pages are not timed: they are old by design.
fn time_delivery(event: &Event, session: &Session, at: Now) {
    if let Event::Message(message) = event
        && session
            .identity()
            .is_some_and(|me| me.user != message.sender_id)
    {
        let age = at.unix_ms.saturating_sub(message.timestamp.unix_millis());
        metrics::delivered(Duration::from_millis(u64::try_from(age).unwrap_or(0)));
    }
}

/// A link whose frames are counted by kind, and a `Send` timed until its `Sent`.
struct Counted<L> {
    link: L,
    /// When each `Send` still waiting for its `Sent` was read. No allocation until the client
    /// sends; then kept (about 4 KiB at most: [`MAX_TIMED_SENDS`] entries) rather than freed
    /// and allocated again with every send.
    sends: HashMap<ClientMsgId, Instant>,
}

impl<L: Link> Counted<L> {
    async fn recv(&mut self) -> Option<Result<ClientFrame, WireError>> {
        let frame = self.link.recv().await;
        if let Some(Ok(frame)) = &frame {
            metrics::frame_received(frame.kind());
            if let ClientFrame::Send(send) = frame {
                if self.sends.len() < MAX_TIMED_SENDS {
                    self.sends.insert(send.client_msg_id, Instant::now());
                }
            }
        }
        frame
    }

    async fn send(&mut self, frames: &[ServerFrame]) -> bool {
        let now = now();
        for frame in frames {
            metrics::frame_sent(frame.kind());
            match frame {
                ServerFrame::Sent(sent) => {
                    if let Some(read) = self.sends.remove(&sent.client_msg_id) {
                        metrics::send_answered(now.instant.saturating_duration_since(read));
                    }
                }
                ServerFrame::Error(error) => {
                    if let Some(id) = error.client_msg_id {
                        self.sends.remove(&id);
                    }
                }
                _ => {}
            }
        }
        self.link.send(frames).await
    }
}

/// Sends timed at once per session; more (a client with many conversations' sends in flight)
/// go untimed.
const MAX_TIMED_SENDS: usize = 64;

enum Input {
    Frame(Option<Result<ClientFrame, WireError>>),
    Inbox(Option<Inbox>),
    Done(Option<Done>),
    Overflow,
}

async fn recv_inbox(mailbox: Option<&mut Mailbox>) -> Option<Inbox> {
    match mailbox {
        Some(mailbox) => mailbox.recv().await,
        None => std::future::pending().await,
    }
}

async fn overflowed(overflow: Option<&Overflow>) {
    match overflow {
        Some(overflow) => overflow.raised().await,
        None => std::future::pending().await,
    }
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
