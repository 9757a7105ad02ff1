//! The client's sans-IO session core: everything the client decides, with no sockets, clocks
//! or tasks (STYLE: quinn-proto). Inputs go in — server frames ([`Session::handle_frame`]),
//! the caller's requests ([`Session::send`], [`Session::ack`], …), the clock
//! ([`Session::handle_timeout`], with `now` passed in) and the end of the transport
//! ([`Session::handle_disconnect`]) — and outputs come out: frame bodies to write
//! ([`Session::poll_transmit`]), results and events ([`Session::poll_output`]) and the next
//! deadline ([`Session::poll_timeout`]).
//!
//! It owns:
//! - the handshake: `Hello` out, then `Welcome` (open) or `Closing` (refused);
//! - sends in flight: `client_msg_id` → the caller's waiter `S`, resolved by `Sent` or by an
//!   `Error` naming that id, and failed by a disconnect;
//! - resume positions ([`Positions`]) and duplicate suppression;
//! - auto-ack: a cumulative `Ack` per conversation, coalesced over `ack_delay`;
//! - the heartbeat: a `Ping` after `ping_interval` without sending anything *or* without
//!   receiving anything (a client that keeps sending to a dead server still finds out), and
//!   a disconnect when a `Pong` is later than `pong_timeout`; caller pings with waiters `P`.
//!
//! The waiter types are generic so this stays free of any runtime: the async [`Client`]
//! uses oneshot senders; the unit tests use plain tags.
//!
//! [`Client`]: crate::Client

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use haberci_wire::{
    Ack, ClientFrame, ClientMsgId, ClientTyping, Closing, ConversationId, ErrorFrame, Hello,
    Message, Notification, Ping, Presence, PresenceWatch, Read, RefreshAuth, ResumePosition,
    SendMessage, Sent, Seq, ServerFrame, Status, Typing, TypingState, UserId, Welcome,
};

use crate::error::{ClientError, Disconnect, SendError};
use crate::positions::{Observed, Positions};

/// How long received messages are collected before their conversations are acked.
pub const DEFAULT_ACK_DELAY: Duration = Duration::from_millis(50);
/// Send a `Ping` after this long without sending anything (capped at a third of the server's
/// idle timeout, once `Welcome` says what it is). UDP NAT bindings often expire after ≈ 30 s,
/// and 25 s is the usual keep-alive below that; each ping costs CPU on both ends (and radio
/// time on a phone), so it is not shorter.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(25);
/// A `Pong` later than this means the connection is dead (docs/PROTOCOL.md suggests 10 s).
pub const DEFAULT_PONG_TIMEOUT: Duration = Duration::from_secs(10);

/// What the session decides by itself.
#[derive(Clone, Copy, Debug)]
pub struct SessionSettings {
    /// Ack every received message (cumulatively, coalesced over `ack_delay`).
    pub auto_ack: bool,
    pub ack_delay: Duration,
    /// `Duration::ZERO` turns the heartbeat off.
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            auto_ack: true,
            ack_delay: DEFAULT_ACK_DELAY,
            ping_interval: DEFAULT_PING_INTERVAL,
            pong_timeout: DEFAULT_PONG_TIMEOUT,
        }
    }
}

/// Something the server told this client, in arrival order.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A stored message (duplicates — seqs this client already holds — are dropped).
    Message(Message),
    /// A member's receipt watermarks moved.
    Status(Status),
    Typing(Typing),
    Presence(Presence),
    /// A notification was stored for this user (a follow, a like, …). Best effort: one
    /// missed while disconnected is not resumed; `GET /v1/notifications` has them all.
    Notification(Notification),
    /// A non-fatal error that names no send in flight (e.g. the answer to an `Ack`).
    Error(ErrorFrame),
    /// The server is ending the session; `Disconnected` follows.
    Closing(Closing),
    /// The connection ended. Always the last event.
    Disconnected(Disconnect),
}

/// An output of the session other than bytes to write.
#[derive(Debug, PartialEq)]
pub enum Output<S, P> {
    Event(Event),
    /// The send waiting on `S` is answered.
    SendDone(S, Result<Sent, SendError>),
    /// The caller ping waiting on `P` got its `Pong` after this round trip.
    PingDone(P, Duration),
}

/// A frame body to write (no length prefix: the transport frames it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub body: Bytes,
    /// An ephemeral frame (typing): it may travel as a datagram, and may be lost.
    pub ephemeral: bool,
}

/// Where the session is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// `Hello` is (to be) sent; nothing else may be.
    AwaitingWelcome,
    Open,
    /// The server sent `Closing`; the transport close follows.
    Closing(Closing),
    /// The connection ended; every input is ignored.
    Closed(Disconnect),
}

struct PingWait<P> {
    sent_at: Instant,
    waiter: Option<P>,
}

/// The sans-IO client session. `S`: what waits for a send's answer; `P`: what waits for a
/// caller ping's `Pong`.
pub struct Session<S, P> {
    settings: SessionSettings,
    phase: Phase,
    welcome: Option<Welcome>,
    /// Bodies above this are refused before they are queued: the default until `Welcome`,
    /// then `Welcome.limits.max_frame_size`.
    max_frame_size: usize,
    positions: Positions,
    in_flight: HashMap<ClientMsgId, S>,
    /// The highest seq acked per conversation on this connection.
    acked: HashMap<ConversationId, Seq>,
    /// Conversations whose position moved since the last ack flush.
    ack_dirty: BTreeSet<ConversationId>,
    ack_due: Option<Instant>,
    /// `settings.ping_interval`, capped by the server's idle timeout after `Welcome`.
    ping_interval: Duration,
    next_nonce: u32,
    pings: HashMap<u32, PingWait<P>>,
    last_transmit: Instant,
    last_receive: Instant,
    transmit: VecDeque<Transmit>,
    outputs: VecDeque<Output<S, P>>,
}

impl<S, P> Session<S, P> {
    /// A session that will resume from `resume` (the `Hello.resume` positions).
    pub fn new(settings: SessionSettings, resume: &[ResumePosition], now: Instant) -> Self {
        Session {
            settings,
            phase: Phase::AwaitingWelcome,
            welcome: None,
            max_frame_size: haberci_wire::DEFAULT_MAX_FRAME_SIZE,
            positions: Positions::from_resume(resume),
            in_flight: HashMap::new(),
            acked: HashMap::new(),
            ack_dirty: BTreeSet::new(),
            ack_due: None,
            ping_interval: settings.ping_interval,
            next_nonce: 1,
            pings: HashMap::new(),
            last_transmit: now,
            last_receive: now,
            transmit: VecDeque::new(),
            outputs: VecDeque::new(),
        }
    }

    // ------------------------------------------------------------------ state

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed(_))
    }

    /// The server's `Welcome`, once it arrived.
    pub fn welcome(&self) -> Option<&Welcome> {
        self.welcome.as_ref()
    }

    /// The resume positions for the next connection: every conversation this session knows,
    /// at its highest seq held with no gap below.
    pub fn positions(&self) -> Vec<ResumePosition> {
        self.positions.resume()
    }

    /// The contiguous position of one conversation.
    pub fn position(&self, conversation: ConversationId) -> Option<Seq> {
        self.positions.last(conversation)
    }

    /// Sends waiting for their answer.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    // ------------------------------------------------------------------ outputs

    /// The next frame body to write, in order. Bodies carry no length prefix: the transport
    /// frames them (a varint prefix on streams, one message each on WebSocket).
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmit.pop_front().map(|transmit| transmit.body)
    }

    /// As [`Session::poll_transmit`], saying whether the frame is ephemeral (typing): a
    /// transport with datagrams may send it as one (docs/PROTOCOL.md, "Datagrams").
    pub fn poll_transmit_frame(&mut self) -> Option<Transmit> {
        self.transmit.pop_front()
    }

    pub fn poll_output(&mut self) -> Option<Output<S, P>> {
        self.outputs.pop_front()
    }

    /// When [`Session::handle_timeout`] next has work: an ack flush, a heartbeat ping, or a
    /// pong deadline. `None` while not open.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.is_open() {
            return None;
        }
        let ping = self.ping_due();
        let pong = self
            .pings
            .values()
            .map(|p| p.sent_at + self.settings.pong_timeout)
            .min();
        [self.ack_due, ping, pong].into_iter().flatten().min()
    }

    // ------------------------------------------------------------------ inputs

    /// Queues `Hello` with the session's resume positions. Call once, first.
    pub fn hello(
        &mut self,
        access_token: String,
        client_name: String,
        client_version: String,
        now: Instant,
    ) -> Result<(), ClientError> {
        if self.phase != Phase::AwaitingWelcome {
            return Err(ClientError::Disconnected);
        }
        let hello = ClientFrame::Hello(Hello {
            access_token,
            protocol_version: haberci_wire::PROTOCOL_VERSION,
            client_name,
            client_version,
            resume: self.positions.resume(),
            // This build decodes every code of its table, so the server may send them all.
            max_error_code: haberci_wire::LAST_CODE,
        });
        self.queue(&hello, now).map_err(ClientError::TooLarge)
    }

    /// Queues a `Send`; its answer comes out as [`Output::SendDone`] with `waiter`. On error
    /// nothing is queued and the waiter is handed back.
    pub fn send(
        &mut self,
        message: SendMessage,
        waiter: S,
        now: Instant,
    ) -> Result<(), (S, SendError)> {
        if !self.is_open() {
            return Err((waiter, SendError::Disconnected));
        }
        let id = message.client_msg_id;
        if self.in_flight.contains_key(&id) {
            return Err((waiter, SendError::AlreadyInFlight));
        }
        if let Err(err) = self.queue(&ClientFrame::Send(message), now) {
            return Err((waiter, SendError::TooLarge(err)));
        }
        self.in_flight.insert(id, waiter);
        Ok(())
    }

    /// Queues a cumulative `Ack` now (auto-ack will not repeat it).
    pub fn ack(
        &mut self,
        conversation_id: ConversationId,
        seq: Seq,
        now: Instant,
    ) -> Result<(), ClientError> {
        self.request(
            &ClientFrame::Ack(Ack {
                conversation_id,
                seq,
            }),
            now,
        )?;
        let acked = self.acked.entry(conversation_id).or_insert(seq);
        *acked = (*acked).max(seq);
        Ok(())
    }

    /// Queues a cumulative `Read`.
    pub fn read(
        &mut self,
        conversation_id: ConversationId,
        seq: Seq,
        now: Instant,
    ) -> Result<(), ClientError> {
        self.request(
            &ClientFrame::Read(Read {
                conversation_id,
                seq,
            }),
            now,
        )
    }

    pub fn typing(
        &mut self,
        conversation_id: ConversationId,
        state: TypingState,
        now: Instant,
    ) -> Result<(), ClientError> {
        self.request(
            &ClientFrame::Typing(ClientTyping {
                conversation_id,
                state,
            }),
            now,
        )
    }

    /// Replaces the set of users whose presence this session watches.
    pub fn presence_watch(
        &mut self,
        user_ids: Vec<UserId>,
        now: Instant,
    ) -> Result<(), ClientError> {
        self.request(&ClientFrame::PresenceWatch(PresenceWatch { user_ids }), now)
    }

    pub fn refresh_auth(&mut self, access_token: String, now: Instant) -> Result<(), ClientError> {
        self.request(&ClientFrame::RefreshAuth(RefreshAuth { access_token }), now)
    }

    /// Queues a `Ping`; its `Pong` comes out as [`Output::PingDone`] with `waiter`.
    pub fn ping(&mut self, waiter: P, now: Instant) -> Result<(), (P, ClientError)> {
        if !self.is_open() {
            return Err((waiter, ClientError::Disconnected));
        }
        self.queue_ping(Some(waiter), now);
        Ok(())
    }

    /// A frame from the server.
    pub fn handle_frame(&mut self, frame: ServerFrame, now: Instant) {
        self.last_receive = now;
        match (&self.phase, frame) {
            (Phase::Closed(_), frame) => {
                tracing::debug!(kind = frame.kind(), "frame after the connection ended");
            }
            (Phase::AwaitingWelcome, ServerFrame::Welcome(welcome)) => {
                let idle = Duration::from_millis(u64::from(welcome.limits.idle_timeout_ms));
                if !idle.is_zero() && !self.ping_interval.is_zero() {
                    // The server closes a session silent for `idle`: ping well within it.
                    self.ping_interval = self.ping_interval.min(idle / 3);
                }
                self.max_frame_size = welcome.limits.max_frame_size as usize;
                self.welcome = Some(welcome);
                self.phase = Phase::Open;
            }
            (_, ServerFrame::Closing(closing)) => {
                self.phase = Phase::Closing(closing.clone());
                self.outputs
                    .push_back(Output::Event(Event::Closing(closing)));
            }
            (Phase::AwaitingWelcome, frame) => {
                tracing::warn!(kind = frame.kind(), "server frame before Welcome, ignored");
            }
            (_, ServerFrame::Welcome(_)) => tracing::warn!("a second Welcome, ignored"),
            (_, ServerFrame::Message(message)) => self.on_message(message, now),
            (_, ServerFrame::Sent(sent)) => self.on_sent(sent),
            (_, ServerFrame::Error(error)) => self.on_error(error),
            (_, ServerFrame::Pong(pong)) => {
                if let Some(PingWait {
                    sent_at,
                    waiter: Some(waiter),
                }) = self.pings.remove(&pong.nonce)
                {
                    let rtt = now.saturating_duration_since(sent_at);
                    self.outputs.push_back(Output::PingDone(waiter, rtt));
                }
            }
            (_, ServerFrame::Status(status)) => self.event(Event::Status(status)),
            (_, ServerFrame::Typing(typing)) => self.event(Event::Typing(typing)),
            (_, ServerFrame::Presence(presence)) => self.event(Event::Presence(presence)),
            (_, ServerFrame::Notification(notification)) => {
                self.event(Event::Notification(notification))
            }
        }
    }

    /// The clock reached a deadline from [`Session::poll_timeout`] (or any time later).
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.is_open() {
            return;
        }
        let pong_timeout = self.settings.pong_timeout;
        if self.pings.values().any(|p| now >= p.sent_at + pong_timeout) {
            self.handle_disconnect(Disconnect::PongTimeout);
            return;
        }
        if self.ack_due.is_some_and(|due| now >= due) {
            self.flush_acks(now);
        }
        if self.ping_due().is_some_and(|due| now >= due) {
            self.queue_ping(None, now);
        }
    }

    /// When the heartbeat pings: `ping_interval` after the last frame either way, unless a
    /// ping is out already (its pong deadline watches the connection then).
    fn ping_due(&self) -> Option<Instant> {
        (!self.ping_interval.is_zero() && self.pings.is_empty())
            .then(|| self.last_transmit.min(self.last_receive) + self.ping_interval)
    }

    /// This client closes the connection: coalesced acks are queued now (the transport
    /// writes them before closing), every send in flight fails, `Disconnected(Local)` follows.
    pub fn close(&mut self, now: Instant) {
        if self.is_open() {
            self.flush_acks(now);
        }
        self.handle_disconnect(Disconnect::Local);
    }

    /// The transport ended (or this client decided it is dead). Fails every send in flight
    /// with [`SendError::Disconnected`], drops caller pings (their waiters see the drop), and
    /// emits `Disconnected` as the last event. Idempotent.
    pub fn handle_disconnect(&mut self, reason: Disconnect) {
        if self.is_closed() {
            return;
        }
        let reason = match (&self.phase, reason) {
            // The transport often reports a close without its reason; the Closing frame had it.
            // A transport that fails right after the server's close (WebTransport stacks may
            // report their own error instead of the server's code) ended for that reason too.
            (
                Phase::Closing(closing),
                Disconnect::Server { code: None, .. } | Disconnect::Transport(_),
            ) => Disconnect::Server {
                code: Some(closing.code),
                reason: closing.reason.clone(),
            },
            (_, reason) => reason,
        };
        for (_, waiter) in self.in_flight.drain() {
            self.outputs
                .push_back(Output::SendDone(waiter, Err(SendError::Disconnected)));
        }
        self.pings.clear();
        self.ack_due = None;
        self.ack_dirty.clear();
        if reason != Disconnect::Local {
            // Nothing can be written any more.
            self.transmit.clear();
        }
        self.phase = Phase::Closed(reason.clone());
        self.outputs
            .push_back(Output::Event(Event::Disconnected(reason)));
    }

    // ------------------------------------------------------------------ internals

    fn event(&mut self, event: Event) {
        self.outputs.push_back(Output::Event(event));
    }

    fn on_message(&mut self, message: Message, now: Instant) {
        match self.positions.observe(message.conversation_id, message.seq) {
            Observed::Duplicate => {
                tracing::debug!(conversation = %message.conversation_id, seq = %message.seq, "duplicate message dropped");
                return;
            }
            // Our own message (docs/PROTOCOL.md, "Sending messages" 5: the sending session gets
            // it too) needs no ack of its own: the next message from someone else acks it
            // cumulatively. Unless it also released messages held above a gap: those need one.
            Observed::Advanced(to) if to == message.seq && self.is_own(&message) => {}
            Observed::Advanced(_) => self.ack_later(message.conversation_id, now),
            Observed::Held => {
                tracing::debug!(conversation = %message.conversation_id, seq = %message.seq, "message above a gap");
            }
        }
        self.event(Event::Message(message));
    }

    fn is_own(&self, message: &Message) -> bool {
        self.welcome
            .as_ref()
            .is_some_and(|welcome| welcome.user_id == message.sender_id)
    }

    fn on_sent(&mut self, sent: Sent) {
        // Positions move on `Message` frames only, our own included: every session of the
        // sender gets the stored `Message` (before or after this `Sent`), so each conversation
        // is one gapless run of `Message` seqs. Moving the position here would drop our own
        // `Message` as a duplicate when it comes after the `Sent`.
        match self.in_flight.remove(&sent.client_msg_id) {
            Some(waiter) => self.outputs.push_back(Output::SendDone(waiter, Ok(sent))),
            None => {
                tracing::debug!(client_msg_id = %sent.client_msg_id, "Sent for no send in flight")
            }
        }
    }

    fn on_error(&mut self, error: ErrorFrame) {
        let waiter = error
            .client_msg_id
            .and_then(|id| self.in_flight.remove(&id));
        match waiter {
            Some(waiter) => self.outputs.push_back(Output::SendDone(
                waiter,
                Err(SendError::Refused {
                    code: error.code,
                    message: error.message,
                }),
            )),
            None => self.event(Event::Error(error)),
        }
    }

    fn ack_later(&mut self, conversation: ConversationId, now: Instant) {
        if !self.settings.auto_ack {
            return;
        }
        self.ack_dirty.insert(conversation);
        if self.ack_due.is_none() {
            self.ack_due = Some(now + self.settings.ack_delay);
        }
    }

    /// One cumulative `Ack` per conversation whose position moved past what was acked.
    fn flush_acks(&mut self, now: Instant) {
        self.ack_due = None;
        for conversation_id in std::mem::take(&mut self.ack_dirty) {
            let Some(seq) = self.positions.last(conversation_id) else {
                continue;
            };
            if self.acked.get(&conversation_id).is_some_and(|&a| a >= seq) {
                continue;
            }
            let ack = ClientFrame::Ack(Ack {
                conversation_id,
                seq,
            });
            // An Ack is a few dozen bytes: it always fits.
            if self.queue(&ack, now).is_ok() {
                self.acked.insert(conversation_id, seq);
            }
        }
    }

    fn queue_ping(&mut self, waiter: Option<P>, now: Instant) {
        let mut nonce = self.next_nonce;
        while self.pings.contains_key(&nonce) {
            nonce = nonce.wrapping_add(1);
        }
        self.next_nonce = nonce.wrapping_add(1);
        // A Ping always fits.
        if self.queue(&ClientFrame::Ping(Ping { nonce }), now).is_ok() {
            self.pings.insert(
                nonce,
                PingWait {
                    sent_at: now,
                    waiter,
                },
            );
        }
    }

    fn request(&mut self, frame: &ClientFrame, now: Instant) -> Result<(), ClientError> {
        if !self.is_open() {
            return Err(ClientError::Disconnected);
        }
        self.queue(frame, now).map_err(ClientError::TooLarge)
    }

    fn queue(&mut self, frame: &ClientFrame, now: Instant) -> Result<(), haberci_wire::WireError> {
        let mut body = BytesMut::new();
        haberci_wire::encode_body(frame, self.max_frame_size, &mut body)?;
        self.transmit.push_back(Transmit {
            body: body.freeze(),
            ephemeral: frame.may_travel_as_datagram(),
        });
        self.last_transmit = now;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
