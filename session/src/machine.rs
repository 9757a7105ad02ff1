//! The realtime session state machine: one per client connection, whatever the transport.
//!
//! Sans-IO (STYLE: quinn-proto): frames and clock readings go in ([`Session::handle_frame`],
//! [`Session::handle_timeout`]), outputs come out ([`Session::poll_output`]). No sockets, no
//! clocks, no tasks, so every case is a deterministic unit test. The QUIC, WebTransport and
//! WebSocket adapters only move frames and obey [`Output::Close`].
//!
//! It handles the handshake (`Hello` + access token → `Welcome`, or `Closing`), `Ping`,
//! in-band `RefreshAuth`, token expiry, the idle and hello timeouts, the per-session send
//! rate, one send in flight per conversation ([`crate::sends`]), and turns every
//! authenticated `Send`, `Ack`, `Read`, `Typing` and `PresenceWatch` into a [`Relay`] output
//! for the Redis relay; the gateway's `transport::drive` runs it for every transport.
//!
//! Invariant: after [`Output::Close`] the session emits nothing more and ignores all input.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use haberci_seam::sends;
use haberci_seam::streams::Event;
use haberci_token::{Verifier, VerifyError};
use haberci_wire::{
    Ack, ClientFrame, ClientMsgId, ClientTyping, Closing, ConversationId, ErrorCode, ErrorFrame,
    Hello, Limits, Pong, PresenceWatch, Read, ResumePosition, SendMessage, Seq, ServerFrame,
    SessionId, Timestamp, UserId, Welcome, WireError,
};

use crate::bucket::TokenBucket;
use crate::delivery::{Backlog, ConversationInfo, Delivery, FetchFrom, Need, Route};
use crate::receipts::{DEFAULT_RECEIPT_BURST, DEFAULT_RECEIPT_RATE_PER_SEC, Receipt, Receipts};
use crate::sends::{Admit, MAX_PENDING_SENDS, SendQueue};

/// A session that has not sent `Hello` within this is closed (`idle_timeout`).
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// A session that sends nothing for this long is closed (`idle_timeout`). Clients ping every
/// 25 s (a third of it; UDP NAT bindings often expire after ≈ 30 s), so two pings may be lost.
/// Every idle session costs CPU per ping on both ends, so this sets what an idle population
/// costs (docs/BENCHMARKS.md, "What an idle session costs").
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// Sustained `Send`s per second, and the burst above it.
pub const DEFAULT_SEND_RATE_PER_SEC: u32 = 20;
pub const DEFAULT_SEND_BURST: u32 = 40;
/// A client that takes no bytes for this long is closed with `slow_consumer`.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most users one `PresenceWatch` may name.
pub const MAX_PRESENCE_WATCH: usize = 256;
/// The `unavailable` answer to a send that could not reach its stream.
pub const UNAVAILABLE: &str =
    "messaging is unavailable right now; retry with the same client_msg_id";
/// Frames a client may pipeline behind `Hello` while its session is checked; more close the
/// connection (`bad_frame`).
pub const MAX_FRAMES_BEFORE_WELCOME: usize = 64;
/// Advised wait before reconnecting to a draining server: at least this…
pub const DRAIN_RETRY_AFTER_MS: u32 = 1_000;
/// …plus a share of this window that differs per session, so the clients of a drained gateway
/// come back to the others over the window instead of all in the same second.
pub const DEFAULT_DRAIN_SPREAD: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    pub hello_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_frame_size: u32,
    pub send_rate_per_sec: u32,
    pub send_burst: u32,
    /// `Ack`s and `Read`s leaving per second (coalesced per conversation; see
    /// [`crate::receipts`]), and the burst above it.
    pub receipt_rate_per_sec: u32,
    pub receipt_burst: u32,
    /// A client that takes no bytes for this long is closed as a slow consumer.
    pub write_timeout: Duration,
    /// Drained sessions are told to come back after [`DRAIN_RETRY_AFTER_MS`] plus a share of
    /// this window (see [`Session::drain`]).
    pub drain_spread: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            hello_timeout: DEFAULT_HELLO_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_frame_size: u32::try_from(haberci_wire::DEFAULT_MAX_FRAME_SIZE).unwrap_or(u32::MAX),
            send_rate_per_sec: DEFAULT_SEND_RATE_PER_SEC,
            send_burst: DEFAULT_SEND_BURST,
            receipt_rate_per_sec: DEFAULT_RECEIPT_RATE_PER_SEC,
            receipt_burst: DEFAULT_RECEIPT_BURST,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            drain_spread: DEFAULT_DRAIN_SPREAD,
        }
    }
}

/// Both clocks, read by the caller: `instant` for deadlines, `unix_ms` for tokens and
/// timestamps sent to the client.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub instant: Instant,
    pub unix_ms: i64,
}

/// Who an authenticated session belongs to (from the access token's `sub` and `sid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub user: UserId,
    pub session: SessionId,
}

/// Work for the relay (Redis streams in, pub/sub out), always on behalf of `identity`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relay {
    /// The token verified: subscribe its user's channel, then check that its session is an
    /// active session of that user while listing the user's conversations, and hand them to
    /// [`Session::handle_sync`] (or call [`Session::refuse_session`]). `Welcome` waits for
    /// that. The client's resume positions stay here.
    Opened {
        identity: Identity,
    },
    /// Validated; append it to its conversation's stream.
    Send(Identity, SendMessage),
    Ack(Identity, Ack),
    Read(Identity, Read),
    /// Publish to the conversation's other member(s).
    Typing(Identity, ClientTyping, Route),
    PresenceWatch(Identity, PresenceWatch),
    /// Fetch these backlogs for [`Session::handle_backlog`].
    Fetch(Identity, Vec<FetchFrom>),
    /// Listen to a group conversation's channel (before acting on the outputs after it).
    Subscribe(ConversationId),
    Unsubscribe(ConversationId),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write this frame to the client.
    Frame(ServerFrame),
    Relay(Relay),
    /// Flush the frames before this, then close the connection with this code (QUIC
    /// application code / WebSocket close code from the code table).
    Close(ErrorCode),
}

#[derive(Debug)]
enum State {
    AwaitingHello {
        deadline: Instant,
    },
    /// The token verified; its session is being checked (revoked? another user's? never
    /// existed?). Frames after `Hello` wait here, handled after `Welcome` or dropped.
    Checking {
        deadline: Instant,
        hello: Box<Checked>,
    },
    Open {
        identity: Identity,
        token_deadline: Instant,
        idle_deadline: Instant,
        sends: TokenBucket,
        receipts: Box<Receipts>,
        /// Sends in flight, one per conversation (see [`crate::sends`]).
        pending: SendQueue,
        delivery: Box<Delivery>,
        /// The client's resume positions, until the first sync uses them.
        resume: Vec<ResumePosition>,
        /// `Hello.max_error_code`: a newer code than the client knows is sent as its
        /// fallback ([`ErrorCode::for_client`]).
        max_error_code: u32,
    },
    Closed,
}

/// What a verified `Hello` left for `Welcome`.
#[derive(Debug)]
struct Checked {
    identity: Identity,
    expires_ms: i64,
    resume: Vec<ResumePosition>,
    max_error_code: u32,
    /// Frames (or their decoding errors) pipelined behind `Hello`, in arrival order.
    queued: Vec<Result<ClientFrame, WireError>>,
}

#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    state: State,
    out: VecDeque<Output>,
}

impl Session {
    pub fn new(config: SessionConfig, now: Now) -> Self {
        Session {
            config,
            state: State::AwaitingHello {
                deadline: now.instant + config.hello_timeout,
            },
            out: VecDeque::new(),
        }
    }

    /// The identity once `Hello`'s token verified.
    pub fn identity(&self) -> Option<Identity> {
        match &self.state {
            State::Open { identity, .. } => Some(*identity),
            State::Checking { hello, .. } => Some(hello.identity),
            _ => None,
        }
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Session::handle_timeout`] must be called next.
    pub fn next_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::AwaitingHello { deadline } | State::Checking { deadline, .. } => Some(*deadline),
            State::Open {
                token_deadline,
                idle_deadline,
                pending,
                receipts,
                ..
            } => [pending.next_timeout(), receipts.next_timeout()]
                .into_iter()
                .flatten()
                .chain([*token_deadline, *idle_deadline])
                .min(),
            State::Closed => None,
        }
    }

    /// One decoded frame from the client, or the reason it could not be decoded.
    pub fn handle_frame(
        &mut self,
        frame: Result<ClientFrame, WireError>,
        verifier: &Verifier,
        now: Now,
    ) {
        if let State::Open { idle_deadline, .. } = &mut self.state {
            *idle_deadline = now.instant + self.config.idle_timeout;
        }
        if let State::Checking { hello, .. } = &mut self.state {
            let fatal = frame.as_ref().is_err_and(|err| err.code().is_fatal());
            return match frame {
                Ok(ClientFrame::Hello(_)) | Err(WireError::InvalidHello(_)) => {
                    self.close(ErrorCode::BadFrame, "Hello was already sent")
                }
                Err(err) if fatal => self.refuse(&err),
                // A non-fatal refusal waits too: nothing is answered before Welcome.
                frame if hello.queued.len() < MAX_FRAMES_BEFORE_WELCOME => hello.queued.push(frame),
                _ => self.close(
                    ErrorCode::BadFrame,
                    "more than 64 frames before Welcome; wait for it",
                ),
            };
        }
        let frame = match frame {
            Ok(frame) => frame,
            Err(err) => return self.refuse(&err),
        };
        let identity = match &self.state {
            State::Closed | State::Checking { .. } => return,
            State::AwaitingHello { .. } => None,
            State::Open { identity, .. } => Some(*identity),
        };
        match (identity, frame) {
            (None, ClientFrame::Hello(hello)) => self.hello(hello, verifier, now),
            (None, _) => self.close(ErrorCode::Unauthenticated, "the first frame must be Hello"),
            (Some(_), ClientFrame::Hello(_)) => {
                self.close(ErrorCode::BadFrame, "Hello was already sent")
            }
            (Some(_), ClientFrame::Ping(ping)) => self
                .out
                .push_back(Output::Frame(ServerFrame::Pong(Pong { nonce: ping.nonce }))),
            (Some(_), ClientFrame::RefreshAuth(refresh)) => {
                self.refresh(&refresh.access_token, verifier, now)
            }
            (Some(identity), ClientFrame::Send(send)) => match sends::check(identity.user, &send) {
                Err(refusal) => {
                    self.error(
                        refusal.code,
                        refusal.message.into(),
                        Some(send.client_msg_id),
                    );
                }
                Ok(target) if self.take_send(now) => {
                    let conversation = target.conversation(identity.user);
                    self.admit_send(identity, conversation, send, now);
                }
                Ok(_) => {
                    let message = format!(
                        "more than {} sends per second; resend the same client_msg_id later",
                        self.config.send_rate_per_sec
                    );
                    self.error(ErrorCode::RateLimited, message, Some(send.client_msg_id));
                }
            },
            (Some(identity), ClientFrame::Ack(ack)) => {
                self.receipt(identity, ack.conversation_id, ack.seq, false, now)
            }
            (Some(identity), ClientFrame::Read(read)) => {
                self.receipt(identity, read.conversation_id, read.seq, true, now)
            }
            (Some(identity), ClientFrame::Typing(typing)) => {
                // Ephemeral: over the rate, or in a conversation the session does not follow,
                // it is dropped, never answered.
                let route = self
                    .delivery()
                    .and_then(|d| d.route(typing.conversation_id));
                if let Some(route) = route {
                    if self.take_send(now) {
                        self.relay(Relay::Typing(identity, typing, route));
                    }
                }
            }
            (Some(identity), ClientFrame::PresenceWatch(watch)) => {
                if watch.user_ids.len() > MAX_PRESENCE_WATCH {
                    let message = format!("PresenceWatch names at most {MAX_PRESENCE_WATCH} users");
                    self.error(ErrorCode::InvalidField, message, None);
                } else {
                    self.relay(Relay::PresenceWatch(identity, watch));
                }
            }
        }
    }

    fn relay(&mut self, relay: Relay) {
        self.out.push_back(Output::Relay(relay));
    }

    /// An `Ack` or `Read`: refused for a conversation the session does not follow, else
    /// coalesced and sent within the receipt rate.
    fn receipt(
        &mut self,
        identity: Identity,
        conversation: ConversationId,
        seq: Seq,
        read: bool,
        now: Now,
    ) {
        if self
            .delivery()
            .and_then(|d| d.route(conversation))
            .is_none()
        {
            let kind = if read { "Read" } else { "Ack" };
            let message = format!("{kind} for conversation {conversation}, which is not yours");
            return self.error(ErrorCode::Forbidden, message, None);
        }
        if let State::Open { receipts, .. } = &mut self.state {
            receipts.add(conversation, seq, read);
        }
        self.flush_receipts(identity, now);
    }

    fn flush_receipts(&mut self, identity: Identity, now: Now) {
        let State::Open { receipts, .. } = &mut self.state else {
            return;
        };
        for receipt in receipts.ready(now.instant) {
            self.out.push_back(Output::Relay(match receipt {
                Receipt::Ack(ack) => Relay::Ack(identity, ack),
                Receipt::Read(read) => Relay::Read(identity, read),
            }));
        }
    }

    /// A valid send within the rate: to the stream now, or after the answer to the one
    /// before it in its conversation.
    fn admit_send(
        &mut self,
        identity: Identity,
        conversation: ConversationId,
        send: SendMessage,
        now: Now,
    ) {
        let State::Open { pending, .. } = &mut self.state else {
            return;
        };
        match pending.admit(conversation, send, now.instant) {
            Admit::Go(send) => self.relay(Relay::Send(identity, send)),
            Admit::Queued => {}
            Admit::Full(send) => {
                let message = format!(
                    "{MAX_PENDING_SENDS} sends already wait for their answer; resend the same client_msg_id later"
                );
                self.error(ErrorCode::RateLimited, message, Some(send.client_msg_id));
            }
        }
    }

    /// The send `client_msg_id` could not be appended to its stream (Redis is down or
    /// absent): it is answered `unavailable`, and so is every send queued behind it, which
    /// must not overtake it.
    pub fn send_unavailable(&mut self, client_msg_id: ClientMsgId) {
        let given_back = match &mut self.state {
            State::Open { pending, .. } => pending.failed(client_msg_id),
            _ => return,
        };
        let ids = if given_back.is_empty() {
            vec![client_msg_id]
        } else {
            given_back.into_iter().map(|s| s.client_msg_id).collect()
        };
        for id in ids {
            self.error(ErrorCode::Unavailable, UNAVAILABLE.into(), Some(id));
        }
    }

    /// Sends the sends in flight again whose answer may be lost: all of them (`every`, after
    /// a resync) or the overdue ones.
    fn resend_unanswered(&mut self, every: bool, now: Now) {
        let State::Open {
            identity, pending, ..
        } = &mut self.state
        else {
            return;
        };
        let identity = *identity;
        for send in pending.unanswered(every, now.instant) {
            tracing::debug!(client_msg_id = %send.client_msg_id, "send unanswered; sending it again");
            self.relay(Relay::Send(identity, send));
        }
    }

    fn delivery(&mut self) -> Option<&mut Delivery> {
        match &mut self.state {
            State::Open { delivery, .. } => Some(delivery),
            _ => None,
        }
    }

    /// The user's conversations, listed by the backend after [`Relay::Opened`]'s subscription,
    /// which also found the session active: `Welcome`, then the frames that waited behind
    /// `Hello`, in order.
    pub fn handle_sync(
        &mut self,
        conversations: &[ConversationInfo],
        verifier: &Verifier,
        now: Now,
    ) {
        let queued = if matches!(self.state, State::Checking { .. }) {
            let State::Checking { hello, .. } = std::mem::replace(&mut self.state, State::Closed)
            else {
                return;
            };
            let Checked {
                identity,
                expires_ms,
                resume,
                max_error_code,
                queued,
            } = *hello;
            self.welcome(identity, expires_ms, resume, max_error_code, now);
            queued
        } else {
            Vec::new()
        };
        if let State::Open {
            delivery, resume, ..
        } = &mut self.state
        {
            let resume = std::mem::take(resume);
            delivery.start(conversations, &resume);
        }
        self.collect();
        for frame in queued {
            self.handle_frame(frame, verifier, now);
        }
    }

    /// The backend found the token's session revoked, expired, unknown, or another user's:
    /// the connection closes and nothing sent behind `Hello` goes anywhere.
    pub fn refuse_session(&mut self) {
        if matches!(self.state, State::Checking { .. }) {
            self.close(
                ErrorCode::Unauthenticated,
                "the token's session was revoked or does not exist; log in again",
            );
        }
    }

    /// The user has `limit` realtime sessions open already (across every gateway): this one
    /// is refused before `Welcome`, as its `Hello`'s `max_error_code` can read it.
    pub fn refuse_too_many(&mut self, limit: u32) {
        if let State::Checking { hello, .. } = &self.state {
            let code = ErrorCode::TooManySessions.for_client(hello.max_error_code);
            self.close(
                code,
                &format!("{limit} realtime sessions are open for this user; close one"),
            );
        }
    }

    /// Something published on a channel this session listens to.
    pub fn handle_event(&mut self, event: &Arc<Event>, now: Now) {
        if let State::Open {
            identity, pending, ..
        } = &mut self.state
        {
            let answered = match event.as_ref() {
                Event::Sent { .. } | Event::SentMessage { .. } => event
                    .sent_to(identity.session)
                    .map(|sent| sent.client_msg_id),
                Event::Refused { session, error } if *session == identity.session => {
                    error.client_msg_id
                }
                _ => None,
            };
            let identity = *identity;
            if let Some(next) = answered.and_then(|id| pending.answered(id, now.instant)) {
                self.relay(Relay::Send(identity, next));
            }
        }
        if let Some(delivery) = self.delivery() {
            delivery.event(event);
        }
        self.collect();
    }

    /// A page asked for with [`Relay::Fetch`].
    pub fn handle_backlog(&mut self, page: Backlog) {
        if let Some(delivery) = self.delivery() {
            delivery.backlog(page);
        }
        self.collect();
    }

    /// A [`Relay::Fetch`] failed; it is asked again.
    pub fn fetch_failed(&mut self, conversation: ConversationId) {
        if let Some(delivery) = self.delivery() {
            delivery.fetch_failed(conversation);
        }
        self.collect();
    }

    /// Live messages may have been lost (the subscriber lagged or reconnected): so may
    /// answers to sends, which are sent again.
    pub fn resync(&mut self, now: Now) {
        if let Some(delivery) = self.delivery() {
            delivery.resync();
        }
        self.resend_unanswered(true, now);
        self.collect();
    }

    /// The client does not read fast enough for what it is owed: it reconnects and resumes.
    pub fn overflowed(&mut self) {
        self.close(
            ErrorCode::SlowConsumer,
            "too far behind; reconnect and resume",
        );
    }

    /// The relay cannot serve this session (Redis or the backend is down): the client
    /// retries later and resumes.
    /// `server_draining` is the fatal code that says "reconnect (anywhere) after
    /// retry_after_ms and resume", which is what the client should do.
    pub fn close_unavailable(&mut self, reason: &str) {
        if !self.is_closed() {
            self.out
                .push_back(Output::Frame(ServerFrame::Closing(Closing {
                    code: ErrorCode::ServerDraining,
                    reason: reason.to_owned(),
                    retry_after_ms: NonZeroU32::new(DRAIN_RETRY_AFTER_MS),
                    supported_versions: Vec::new(),
                })));
            self.finish(ErrorCode::ServerDraining);
        }
    }

    /// Moves what delivery needs into the outputs.
    fn collect(&mut self) {
        let State::Open {
            identity,
            delivery,
            max_error_code,
            ..
        } = &mut self.state
        else {
            return;
        };
        while let Some(need) = delivery.poll() {
            self.out.push_back(match need {
                // A worker's refusal may carry a code newer than this client knows.
                Need::Frame(ServerFrame::Error(mut error)) => {
                    error.code = error.code.for_client(*max_error_code);
                    Output::Frame(ServerFrame::Error(error))
                }
                Need::Frame(frame) => Output::Frame(frame),
                Need::Fetch(from) => Output::Relay(Relay::Fetch(*identity, from)),
                Need::Subscribe(c) => Output::Relay(Relay::Subscribe(c)),
                Need::Unsubscribe(c) => Output::Relay(Relay::Unsubscribe(c)),
            });
        }
    }

    fn error(&mut self, code: ErrorCode, message: String, client_msg_id: Option<ClientMsgId>) {
        self.out
            .push_back(Output::Frame(ServerFrame::Error(ErrorFrame {
                code,
                message,
                client_msg_id,
            })));
    }

    /// Takes one token from the send bucket; `false` when the client is over its rate.
    fn take_send(&mut self, now: Now) -> bool {
        match &mut self.state {
            State::Open { sends, .. } => sends.take(now.instant),
            _ => false,
        }
    }

    /// Call at [`Session::next_timeout`] (or later).
    pub fn handle_timeout(&mut self, now: Now) {
        match &self.state {
            State::AwaitingHello { deadline } if now.instant >= *deadline => {
                self.close(ErrorCode::IdleTimeout, "no Hello in time")
            }
            State::Checking { deadline, .. } if now.instant >= *deadline => {
                self.close_unavailable("the session could not be checked in time; retry")
            }
            State::Open { token_deadline, .. } if now.instant >= *token_deadline => self.close(
                ErrorCode::TokenExpired,
                "the access token expired; refresh it and reconnect",
            ),
            State::Open { idle_deadline, .. } if now.instant >= *idle_deadline => self.close(
                ErrorCode::IdleTimeout,
                "nothing received; send Ping more often",
            ),
            State::Open { identity, .. } => {
                let identity = *identity;
                self.resend_unanswered(false, now);
                self.flush_receipts(identity, now);
            }
            _ => {}
        }
    }

    /// The session's access was revoked (logout, refresh-token reuse).
    pub fn revoke(&mut self) {
        self.close(ErrorCode::Unauthenticated, "the session was revoked");
    }

    /// The server is shutting down: the client reconnects elsewhere and resumes, after
    /// [`Session::drain_retry_after_ms`].
    pub fn drain(&mut self) {
        if !self.is_closed() {
            self.out
                .push_back(Output::Frame(ServerFrame::Closing(Closing {
                    code: ErrorCode::ServerDraining,
                    reason: "server shutting down; reconnect and resume".into(),
                    retry_after_ms: NonZeroU32::new(self.drain_retry_after_ms()),
                    supported_versions: Vec::new(),
                })));
            self.finish(ErrorCode::ServerDraining);
        }
    }

    /// [`DRAIN_RETRY_AFTER_MS`] plus a share of the drain spread taken from the session id's
    /// random bits (the low 32 of a UUIDv7 are random): spread evenly over the window across
    /// sessions, with no random number generator in the session core. A session that never
    /// opened gets the floor.
    pub fn drain_retry_after_ms(&self) -> u32 {
        let spread_ms = u64::try_from(self.config.drain_spread.as_millis()).unwrap_or(u64::MAX);
        let share = match (self.identity(), spread_ms) {
            (Some(identity), 1..) => (identity.session.as_uuid().as_u128() as u64) % spread_ms,
            _ => 0,
        };
        DRAIN_RETRY_AFTER_MS.saturating_add(u32::try_from(share).unwrap_or(u32::MAX))
    }

    fn hello(&mut self, hello: Hello, verifier: &Verifier, now: Now) {
        if !haberci_wire::is_supported_version(hello.protocol_version) {
            self.out
                .push_back(Output::Frame(ServerFrame::Closing(Closing {
                    code: ErrorCode::UnsupportedVersion,
                    reason: format!(
                        "protocol version {} is not spoken here",
                        hello.protocol_version
                    ),
                    retry_after_ms: None,
                    supported_versions: haberci_wire::SUPPORTED_VERSIONS.to_vec(),
                })));
            return self.finish(ErrorCode::UnsupportedVersion);
        }
        let Some((identity, expires_ms)) = self.authenticate(&hello.access_token, verifier, now)
        else {
            return;
        };
        // The token verified; its session is checked (and the user's conversations listed)
        // before Welcome.
        self.state = State::Checking {
            deadline: now.instant + self.config.hello_timeout,
            hello: Box::new(Checked {
                identity,
                expires_ms,
                resume: hello.resume,
                max_error_code: hello.max_error_code,
                queued: Vec::new(),
            }),
        };
        self.out
            .push_back(Output::Relay(Relay::Opened { identity }));
    }

    fn welcome(
        &mut self,
        identity: Identity,
        expires_ms: i64,
        resume: Vec<ResumePosition>,
        max_error_code: u32,
        now: Now,
    ) {
        let (Some(server_time), Some(token_expires_at)) = (
            Timestamp::from_unix_millis(now.unix_ms),
            Timestamp::from_unix_millis(expires_ms),
        ) else {
            return self.close(ErrorCode::Internal, "clock out of range");
        };
        self.state = State::Open {
            identity,
            token_deadline: deadline(now, expires_ms),
            idle_deadline: now.instant + self.config.idle_timeout,
            sends: TokenBucket::new(
                self.config.send_rate_per_sec,
                self.config.send_burst,
                now.instant,
            ),
            receipts: Box::new(Receipts::new(
                self.config.receipt_rate_per_sec,
                self.config.receipt_burst,
                now.instant,
            )),
            pending: SendQueue::default(),
            delivery: Box::new(Delivery::new(identity.session, identity.user)),
            resume,
            max_error_code,
        };
        self.out
            .push_back(Output::Frame(ServerFrame::Welcome(Welcome {
                session_id: identity.session,
                user_id: identity.user,
                protocol_version: haberci_wire::PROTOCOL_VERSION,
                server_time,
                token_expires_at,
                limits: Limits {
                    max_frame_size: self.config.max_frame_size,
                    send_rate_per_sec: self.config.send_rate_per_sec,
                    send_burst: self.config.send_burst,
                    idle_timeout_ms: u32::try_from(self.config.idle_timeout.as_millis())
                        .unwrap_or(u32::MAX),
                },
            })));
    }

    fn refresh(&mut self, token: &str, verifier: &Verifier, now: Now) {
        let Some((fresh, expires_ms)) = self.authenticate(token, verifier, now) else {
            return;
        };
        if let State::Open {
            identity,
            token_deadline,
            ..
        } = &mut self.state
        {
            // Invariant: a session never changes hands; a token of another session is refused.
            if fresh != *identity {
                return self.close(
                    ErrorCode::Unauthenticated,
                    "RefreshAuth carried another session's token",
                );
            }
            *token_deadline = deadline(now, expires_ms);
        }
    }

    /// Verifies `token`; on failure closes the session and returns `None`.
    fn authenticate(
        &mut self,
        token: &str,
        verifier: &Verifier,
        now: Now,
    ) -> Option<(Identity, i64)> {
        match verifier.verify(token, now.unix_ms.div_euclid(1000)) {
            Ok(claims) => match (UserId::new(claims.sub), SessionId::new(claims.sid)) {
                (Some(user), Some(session)) => {
                    Some((Identity { user, session }, claims.exp.saturating_mul(1000)))
                }
                _ => {
                    self.close(ErrorCode::Unauthenticated, "the token names no user");
                    None
                }
            },
            Err(VerifyError::Expired) => {
                self.close(
                    ErrorCode::TokenExpired,
                    "the access token expired; refresh it and reconnect",
                );
                None
            }
            Err(err) => {
                tracing::debug!(reason = err.reason(), "session token refused");
                self.close(ErrorCode::Unauthenticated, "the access token is not valid");
                None
            }
        }
    }

    /// A frame that could not be decoded: `Error` for a non-fatal problem, `Closing` for a
    /// fatal one (the stream is out of sync, or the client is broken).
    fn refuse(&mut self, err: &WireError) {
        let code = err.code();
        match (&self.state, err) {
            (State::Closed, _) => return,
            (State::Open { .. }, WireError::InvalidHello(_)) => {
                return self.close(ErrorCode::BadFrame, "Hello was already sent");
            }
            // Before Hello only Hello counts: a frame that is no valid Hello (but is a frame)
            // is a frame before Hello, never answered with Error.
            (State::AwaitingHello { .. }, _) if !code.is_fatal() => {
                return self.close(ErrorCode::Unauthenticated, "the first frame must be Hello");
            }
            _ => {}
        }
        if code.is_fatal() {
            self.close(code, &err.to_string());
        } else {
            self.error(code, err.to_string(), err.client_msg_id());
        }
    }

    fn close(&mut self, code: ErrorCode, reason: &str) {
        if self.is_closed() {
            return;
        }
        self.out
            .push_back(Output::Frame(ServerFrame::Closing(Closing {
                code,
                reason: reason.to_owned(),
                retry_after_ms: None,
                supported_versions: Vec::new(),
            })));
        self.finish(code);
    }

    fn finish(&mut self, code: ErrorCode) {
        self.out.push_back(Output::Close(code));
        self.state = State::Closed;
    }
}

/// The monotonic instant at which a token expiring at `expires_ms` (Unix) runs out.
fn deadline(now: Now, expires_ms: i64) -> Instant {
    let left = u64::try_from(expires_ms.saturating_sub(now.unix_ms)).unwrap_or(0);
    now.instant + Duration::from_millis(left)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use haberci_token::{Claims, KeySet};
    use haberci_wire::{
        ConversationId, InvalidField, MessageKind, Ping, Problem, Recipient, RefreshAuth, Seq,
    };
    use uuid::Uuid;

    const T0_MS: i64 = 1_800_000_000_000;

    struct Harness {
        keys: KeySet,
        verifier: Verifier,
        start: Instant,
        session: Session,
        user: Uuid,
        sid: Uuid,
    }

    impl Harness {
        fn new() -> Self {
            let keys = KeySet::generate("test-key").unwrap();
            let verifier = keys.verifier();
            let start = Instant::now();
            let session = Session::new(SessionConfig::default(), at(start, 0));
            Harness {
                keys,
                verifier,
                start,
                session,
                user: Uuid::now_v7(),
                sid: Uuid::now_v7(),
            }
        }

        fn now(&self, after_ms: u64) -> Now {
            at(self.start, after_ms)
        }

        /// A token for this harness's user and session, issued at `after_ms`, living `ttl`.
        fn token(&self, after_ms: u64, ttl_secs: i64) -> String {
            let now_secs = self.now(after_ms).unix_ms / 1000;
            self.keys
                .sign(&Claims::new(self.user, self.sid, now_secs, ttl_secs))
        }

        fn send(&mut self, frame: ClientFrame, after_ms: u64) -> Vec<Output> {
            let now = self.now(after_ms);
            self.session.handle_frame(Ok(frame), &self.verifier, now);
            self.drain()
        }

        fn tick(&mut self, after_ms: u64) -> Vec<Output> {
            let now = self.now(after_ms);
            self.session.handle_timeout(now);
            self.drain()
        }

        fn drain(&mut self) -> Vec<Output> {
            std::iter::from_fn(|| self.session.poll_output()).collect()
        }

        /// The backend listed `conversations` (and found the session active).
        fn sync(&mut self, conversations: &[ConversationInfo], after_ms: u64) -> Vec<Output> {
            let now = self.now(after_ms);
            self.session.handle_sync(conversations, &self.verifier, now);
            self.drain()
        }

        /// Hello, its session checked with no conversations: Welcome.
        fn open(&mut self) {
            self.open_following(&[]);
        }

        /// Hello, its session checked with these conversations: Welcome (what the sync
        /// asks for beyond it is drained).
        fn open_following(&mut self, conversations: &[ConversationInfo]) {
            let token = self.token(0, 900);
            let out = self.send(hello(token, 1), 0);
            assert!(
                matches!(out[..], [Output::Relay(Relay::Opened { .. })]),
                "{out:?}"
            );
            let out = self.sync(conversations, 0);
            assert!(
                matches!(out[0], Output::Frame(ServerFrame::Welcome(_))),
                "{out:?}"
            );
        }
    }

    fn at(start: Instant, after_ms: u64) -> Now {
        Now {
            instant: start + Duration::from_millis(after_ms),
            unix_ms: T0_MS + after_ms as i64,
        }
    }

    fn hello(token: String, version: u32) -> ClientFrame {
        ClientFrame::Hello(Hello {
            access_token: token,
            protocol_version: version,
            client_name: "test".into(),
            client_version: "0".into(),
            resume: Vec::new(),
            max_error_code: haberci_wire::LAST_CODE,
        })
    }

    fn ack() -> ClientFrame {
        ClientFrame::Ack(Ack {
            conversation_id: ConversationId::new(Uuid::now_v7()).unwrap(),
            seq: Seq::new(3).unwrap(),
        })
    }

    /// A direct conversation of the harness's user, seqs 1..=100 stored.
    fn followed(h: &Harness) -> ConversationInfo {
        let me = UserId::new(h.user).unwrap();
        let peer = UserId::new(Uuid::from_u128(0xb0b)).unwrap();
        ConversationInfo {
            id: haberci_seam::streams::direct_conversation(me, peer),
            peer: Some(peer),
            last_seq: 100,
            delivered_seq: 100,
        }
    }

    fn send_frame(n: u128) -> ClientFrame {
        ClientFrame::Send(SendMessage {
            client_msg_id: ClientMsgId::new(Uuid::from_u128(n + 1)).unwrap(),
            recipient: haberci_wire::Recipient::User(UserId::new(Uuid::now_v7()).unwrap()),
            kind: haberci_wire::MessageKind::Text,
            content: "hi".into(),
            media: None,
        })
    }

    /// The close code, checking the Closing frame comes right before the Close.
    fn closed_with(out: &[Output]) -> ErrorCode {
        match out {
            [
                ..,
                Output::Frame(ServerFrame::Closing(closing)),
                Output::Close(code),
            ] => {
                assert_eq!(closing.code, *code);
                *code
            }
            other => panic!("expected Closing then Close, got {other:?}"),
        }
    }

    #[test]
    fn an_overflowing_session_closes_as_slow_consumer_and_a_relay_outage_as_draining() {
        for (fail, code) in [
            (
                Session::overflowed as fn(&mut Session),
                ErrorCode::SlowConsumer,
            ),
            (
                |s: &mut Session| s.close_unavailable("redis is down"),
                ErrorCode::ServerDraining,
            ),
        ] {
            let mut h = Harness::new();
            let token = h.token(0, 900);
            h.send(hello(token, 1), 0);
            h.sync(&[], 0);
            fail(&mut h.session);
            assert_eq!(closed_with(&h.drain()), code);
            assert!(
                h.send(ack(), 1).is_empty(),
                "a closed session ignores input"
            );
        }
    }

    #[test]
    fn sends_the_gateway_can_judge_alone_are_refused_with_their_code() {
        let mut h = Harness::new();
        let token = h.token(0, 900);
        h.send(hello(token, 1), 0);
        h.sync(&[], 0);
        let me = UserId::new(h.user).unwrap();
        let ClientFrame::Send(base) = send_frame(1) else {
            unreachable!()
        };
        let cases = [
            (
                SendMessage {
                    content: "x".repeat(haberci_wire::MAX_CONTENT_BYTES + 1),
                    ..base.clone()
                },
                ErrorCode::ContentTooLarge,
            ),
            (
                SendMessage {
                    content: String::new(),
                    ..base.clone()
                },
                ErrorCode::InvalidField,
            ),
            (
                SendMessage {
                    recipient: Recipient::User(me),
                    ..base.clone()
                },
                ErrorCode::InvalidField,
            ),
            (
                SendMessage {
                    kind: MessageKind::Image,
                    ..base.clone()
                },
                ErrorCode::InvalidField,
            ),
        ];
        for (send, code) in cases {
            let id = send.client_msg_id;
            let out = h.send(ClientFrame::Send(send), 1);
            match &out[..] {
                [Output::Frame(ServerFrame::Error(e))] => {
                    assert_eq!((e.code, e.client_msg_id), (code, Some(id)));
                }
                other => panic!("expected one Error({code:?}), got {other:?}"),
            }
        }
    }

    #[test]
    fn hello_with_a_valid_token_opens_the_session_once_it_is_checked() {
        let mut h = Harness::new();
        let token = h.token(0, 900);
        let out = h.send(hello(token, 1), 5);
        // No Welcome yet: the token's session is checked (and the conversations listed) first.
        let identity = h.session.identity().unwrap();
        assert_eq!(out, [Output::Relay(Relay::Opened { identity })]);
        let out = h.sync(&[], 7);
        let Output::Frame(ServerFrame::Welcome(welcome)) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(welcome.user_id.as_uuid(), h.user);
        assert_eq!(welcome.session_id.as_uuid(), h.sid);
        assert_eq!(welcome.server_time.unix_millis(), T0_MS + 7);
        assert_eq!(
            welcome.token_expires_at.unix_millis(),
            (T0_MS / 1000 + 900) * 1000
        );
        assert_eq!(welcome.limits.send_rate_per_sec, DEFAULT_SEND_RATE_PER_SEC);
        assert_eq!(out.len(), 1);
    }

    /// Frames pipelined behind Hello wait for the check: after Welcome they are handled in
    /// order; for a refused session they go nowhere and the connection closes.
    #[test]
    fn frames_behind_hello_wait_for_the_session_check() {
        let pipelined = |h: &mut Harness| {
            let token = h.token(0, 900);
            assert_eq!(h.send(hello(token, 1), 0).len(), 1);
            assert!(h.send(send_frame(1), 1).is_empty(), "held until Welcome");
            assert!(h.send(ClientFrame::Ping(Ping { nonce: 9 }), 2).is_empty());
        };

        let mut h = Harness::new();
        pipelined(&mut h);
        let out = h.sync(&[], 3);
        assert!(
            matches!(out[0], Output::Frame(ServerFrame::Welcome(_))),
            "{out:?}"
        );
        assert!(matches!(out[1], Output::Relay(Relay::Send(..))), "{out:?}");
        assert_eq!(out[2], Output::Frame(ServerFrame::Pong(Pong { nonce: 9 })));

        let mut h = Harness::new();
        pipelined(&mut h);
        h.session.refuse_session();
        let out = h.drain();
        assert_eq!(closed_with(&out), ErrorCode::Unauthenticated);
        assert!(
            !out.iter().any(|o| matches!(o, Output::Relay(_))),
            "nothing behind a refused Hello reaches the relay: {out:?}"
        );

        // A second Hello while checking, or too many frames, close.
        let mut h = Harness::new();
        let token = h.token(0, 900);
        h.send(hello(token.clone(), 1), 0);
        assert_eq!(
            closed_with(&h.send(hello(token, 1), 1)),
            ErrorCode::BadFrame
        );
        let mut h = Harness::new();
        let token = h.token(0, 900);
        h.send(hello(token, 1), 0);
        for n in 0..MAX_FRAMES_BEFORE_WELCOME {
            assert!(
                h.send(ClientFrame::Ping(Ping { nonce: n as u32 }), 1)
                    .is_empty()
            );
        }
        assert_eq!(
            closed_with(&h.send(ClientFrame::Ping(Ping { nonce: 0 }), 1)),
            ErrorCode::BadFrame
        );

        // A check that never answers ends at the Hello timeout, to be retried.
        let mut h = Harness::new();
        let token = h.token(0, 900);
        h.send(hello(token, 1), 0);
        let late = u64::try_from(DEFAULT_HELLO_TIMEOUT.as_millis()).unwrap();
        assert_eq!(closed_with(&h.tick(late)), ErrorCode::ServerDraining);
    }

    /// Before Welcome nothing is answered with `Error`: a Hello that fails a field check
    /// closes, as does any refused frame before Hello; refusals of frames pipelined behind
    /// Hello wait for Welcome like the frames themselves.
    #[test]
    fn refusals_before_welcome_close_or_wait() {
        let bad_hello = |field| WireError::InvalidHello(InvalidField::new(field, Problem::Empty));
        let bad_ack = || WireError::Invalid(InvalidField::new("Ack.seq", Problem::Empty));
        let cases = [
            (
                "Hello without a token",
                bad_hello("Hello.access_token"),
                ErrorCode::Unauthenticated,
            ),
            (
                "Hello listing a conversation twice",
                bad_hello("ResumePosition.conversation_id"),
                ErrorCode::BadFrame,
            ),
            (
                "an invalid Ack before Hello",
                bad_ack(),
                ErrorCode::Unauthenticated,
            ),
            (
                "an unknown kind before Hello",
                WireError::UnknownFrameKind,
                ErrorCode::Unauthenticated,
            ),
            (
                "a truncated frame before Hello",
                WireError::Truncated { buffered: 1 },
                ErrorCode::BadFrame,
            ),
        ];
        for (case, err, code) in cases {
            let mut h = Harness::new();
            let now = h.now(0);
            h.session.handle_frame(Err(err), &h.verifier, now);
            assert_eq!(closed_with(&h.drain()), code, "{case}");
        }

        // An invalid second Hello is out of place, whatever its fields hold.
        let mut h = Harness::new();
        h.open();
        let now = h.now(1);
        h.session
            .handle_frame(Err(bad_hello("Hello.access_token")), &h.verifier, now);
        assert_eq!(closed_with(&h.drain()), ErrorCode::BadFrame);

        // Behind Hello, an invalid frame's Error comes after Welcome, in order.
        let mut h = Harness::new();
        let token = h.token(0, 900);
        h.send(hello(token, 1), 0);
        let now = h.now(1);
        h.session.handle_frame(Err(bad_ack()), &h.verifier, now);
        assert!(h.drain().is_empty(), "nothing before Welcome");
        let out = h.sync(&[], 2);
        assert!(
            matches!(out[0], Output::Frame(ServerFrame::Welcome(_))),
            "{out:?}"
        );
        assert!(
            matches!(&out[1], Output::Frame(ServerFrame::Error(e)) if e.code == ErrorCode::InvalidField),
            "{out:?}"
        );
        assert!(!h.session.is_closed());
    }

    /// One session too many is refused before Welcome, with the code the client knows.
    #[test]
    fn one_session_too_many_is_refused_with_a_code_the_client_reads() {
        for (max_error_code, expected) in [
            (haberci_wire::LAST_CODE, ErrorCode::TooManySessions),
            (19, ErrorCode::SlowConsumer),
        ] {
            let mut h = Harness::new();
            let ClientFrame::Hello(mut frame) = hello(h.token(0, 900), 1) else {
                unreachable!()
            };
            frame.max_error_code = max_error_code;
            h.send(ClientFrame::Hello(frame), 0);
            h.session.refuse_too_many(20);
            let out = h.drain();
            assert_eq!(closed_with(&out), expected);
            assert!(
                !out.iter()
                    .any(|o| matches!(o, Output::Frame(ServerFrame::Welcome(_)))),
                "{out:?}"
            );
        }
    }

    #[test]
    fn handshake_refusals_close_with_their_code() {
        let other_keys = KeySet::generate("test-key").unwrap();
        type Case = (
            &'static str,
            fn(&Harness, &KeySet) -> ClientFrame,
            ErrorCode,
        );
        let cases: [Case; 6] = [
            (
                "frame before Hello",
                |_, _| ack(),
                ErrorCode::Unauthenticated,
            ),
            (
                "garbage token",
                |_, _| hello("x.y.z".into(), 1),
                ErrorCode::Unauthenticated,
            ),
            (
                "token signed by another key",
                |h, other| {
                    let claims = Claims::new(h.user, h.sid, T0_MS / 1000, 900);
                    hello(other.sign(&claims), 1)
                },
                ErrorCode::Unauthenticated,
            ),
            (
                "expired token",
                |h, _| hello(h.token(0, -3600), 1),
                ErrorCode::TokenExpired,
            ),
            (
                "unsupported version",
                |h, _| hello(h.token(0, 900), 99),
                ErrorCode::UnsupportedVersion,
            ),
            (
                "ping before Hello",
                |_, _| ClientFrame::Ping(Ping { nonce: 1 }),
                ErrorCode::Unauthenticated,
            ),
        ];
        for (case, frame, code) in cases {
            let mut h = Harness::new();
            let frame = frame(&h, &other_keys);
            let out = h.send(frame, 0);
            assert_eq!(closed_with(&out), code, "{case}");
            assert!(h.session.is_closed(), "{case}");
            assert!(h.session.identity().is_none(), "{case}");
        }
    }

    #[test]
    fn unsupported_version_lists_the_versions_spoken() {
        let mut h = Harness::new();
        let token = h.token(0, 900);
        let out = h.send(hello(token, 7), 0);
        let Output::Frame(ServerFrame::Closing(closing)) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(closing.supported_versions, haberci_wire::SUPPORTED_VERSIONS);
    }

    #[test]
    fn nothing_comes_out_after_close() {
        let mut h = Harness::new();
        let out = h.send(ack(), 0);
        closed_with(&out);
        assert!(h.send(ClientFrame::Ping(Ping { nonce: 1 }), 1).is_empty());
        assert!(h.tick(60_000).is_empty());
        assert_eq!(h.session.next_timeout(), None);
    }

    #[test]
    fn no_hello_in_time_closes_with_idle_timeout() {
        let mut h = Harness::new();
        assert_eq!(
            h.session.next_timeout(),
            Some(h.start + DEFAULT_HELLO_TIMEOUT)
        );
        assert!(h.tick(9_999).is_empty());
        let out = h.tick(10_000);
        assert_eq!(closed_with(&out), ErrorCode::IdleTimeout);
    }

    #[test]
    fn ping_is_answered_and_keeps_the_session_alive() {
        let mut h = Harness::new();
        h.open();
        let out = h.send(ClientFrame::Ping(Ping { nonce: 42 }), 40_000);
        assert_eq!(out, [Output::Frame(ServerFrame::Pong(Pong { nonce: 42 }))]);
        // The idle timeout counts from the ping, not from the Hello.
        let idle = u64::try_from(DEFAULT_IDLE_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
        assert!(h.tick(40_000 + idle - 1).is_empty());
        assert_eq!(closed_with(&h.tick(40_000 + idle)), ErrorCode::IdleTimeout);
    }

    #[test]
    fn a_second_hello_is_a_bad_frame() {
        let mut h = Harness::new();
        h.open();
        let token = h.token(0, 900);
        assert_eq!(
            closed_with(&h.send(hello(token, 1), 1)),
            ErrorCode::BadFrame
        );
    }

    #[test]
    fn token_expiry_closes_unless_refreshed_in_band() {
        let mut h = Harness::new();
        let token = h.token(0, 60);
        h.send(hello(token, 1), 0);
        h.sync(&[], 0);
        // Keep the session busy so only the token can end it.
        for t in (10_000..60_000).step_by(10_000) {
            h.send(ClientFrame::Ping(Ping { nonce: 0 }), t);
        }
        assert_eq!(closed_with(&h.tick(60_000)), ErrorCode::TokenExpired);

        let mut h = Harness::new();
        let token = h.token(0, 60);
        h.send(hello(token, 1), 0);
        h.sync(&[], 0);
        let fresh = h.token(50_000, 900);
        let out = h.send(
            ClientFrame::RefreshAuth(RefreshAuth {
                access_token: fresh,
            }),
            50_000,
        );
        assert!(out.is_empty(), "{out:?}");
        assert!(h.tick(60_000).is_empty(), "the refreshed token still runs");
    }

    #[test]
    fn refresh_with_another_sessions_token_is_refused() {
        let mut h = Harness::new();
        h.open();
        let stranger = h
            .keys
            .sign(&Claims::new(h.user, Uuid::now_v7(), T0_MS / 1000, 900));
        let out = h.send(
            ClientFrame::RefreshAuth(RefreshAuth {
                access_token: stranger,
            }),
            1,
        );
        assert_eq!(closed_with(&out), ErrorCode::Unauthenticated);
    }

    #[test]
    fn authenticated_frames_go_to_the_relay_with_the_identity() {
        let mut h = Harness::new();
        let conversation = followed(&h);
        h.open_following(&[conversation]);
        let identity = h.session.identity().unwrap();
        let frame = send_frame(1);
        let ClientFrame::Send(send) = frame.clone() else {
            unreachable!()
        };
        assert_eq!(
            h.send(frame, 1),
            [Output::Relay(Relay::Send(identity, send))]
        );
        let a = Ack {
            conversation_id: conversation.id,
            seq: Seq::new(3).unwrap(),
        };
        assert_eq!(
            h.send(ClientFrame::Ack(a), 2),
            [Output::Relay(Relay::Ack(identity, a))]
        );
    }

    /// Receipts cost the worker a transaction each: one for a conversation the session does
    /// not follow is refused, one that moves nothing is dropped, and over the rate they wait,
    /// merged, for the timer.
    #[test]
    fn receipts_are_refused_for_foreign_conversations_coalesced_and_rated() {
        let mut h = Harness::new();
        let conversation = followed(&h);
        h.open_following(&[conversation]);
        let identity = h.session.identity().unwrap();
        let out = h.send(ack(), 1);
        assert!(
            matches!(&out[..], [Output::Frame(ServerFrame::Error(e))] if e.code == ErrorCode::Forbidden),
            "{out:?}"
        );
        let receipt = |seq, read| {
            let (conversation_id, seq) = (conversation.id, Seq::new(seq).unwrap());
            match read {
                false => ClientFrame::Ack(Ack {
                    conversation_id,
                    seq,
                }),
                true => ClientFrame::Read(Read {
                    conversation_id,
                    seq,
                }),
            }
        };
        let mut relayed = 0;
        for seq in 1..=DEFAULT_RECEIPT_BURST {
            relayed += h.send(receipt(u64::from(seq), false), 2).len();
        }
        assert_eq!(
            relayed, DEFAULT_RECEIPT_BURST as usize,
            "the burst leaves at once"
        );
        assert!(h.send(receipt(1, false), 2).is_empty(), "moves nothing");
        // Over the rate: nothing leaves now; the latest marks leave at the timer, once.
        for seq in 41..=90 {
            assert!(h.send(receipt(seq, seq % 2 == 0), 2).is_empty());
        }
        let at = h.session.next_timeout().unwrap();
        let after_ms = u64::try_from((at - h.start).as_millis()).unwrap() + 1;
        let out = h.tick(after_ms);
        let read = Read {
            conversation_id: conversation.id,
            seq: Seq::new(90).unwrap(),
        };
        assert_eq!(out, [Output::Relay(Relay::Read(identity, read))]);
        assert!(h.tick(after_ms + 1_000).is_empty());
    }

    /// A code newer than the client's `Hello.max_error_code` reaches it as its fallback
    /// (`blocked` → `forbidden` for a client of the first version-1 table, `media_refused`
    /// → `invalid_field` for a client that knows up to `blocked`).
    #[test]
    fn a_refusal_with_a_newer_code_falls_back_for_a_client_that_does_not_know_it() {
        for (code, max_error_code, expected) in [
            (ErrorCode::Blocked, 0, ErrorCode::Forbidden),
            (
                ErrorCode::Blocked,
                haberci_wire::V1_LAST_CODE,
                ErrorCode::Forbidden,
            ),
            (ErrorCode::Blocked, 18, ErrorCode::Blocked),
            (
                ErrorCode::Blocked,
                haberci_wire::LAST_CODE,
                ErrorCode::Blocked,
            ),
            (ErrorCode::MediaRefused, 0, ErrorCode::InvalidField),
            (ErrorCode::MediaRefused, 18, ErrorCode::InvalidField),
            (
                ErrorCode::MediaRefused,
                haberci_wire::LAST_CODE,
                ErrorCode::MediaRefused,
            ),
        ] {
            let mut h = Harness::new();
            let token = h.token(0, 900);
            let ClientFrame::Hello(mut hello) = hello(token, 1) else {
                unreachable!()
            };
            hello.max_error_code = max_error_code;
            h.send(ClientFrame::Hello(hello), 0);
            h.sync(&[], 0);
            let identity = h.session.identity().unwrap();
            let client_msg_id = ClientMsgId::new(Uuid::now_v7()).unwrap();
            let refused = Arc::new(Event::Refused {
                session: identity.session,
                error: ErrorFrame {
                    code,
                    message: "refused".into(),
                    client_msg_id: Some(client_msg_id),
                },
            });
            h.session.handle_event(&refused, h.now(1));
            let out = h.drain();
            assert_eq!(
                out,
                [Output::Frame(ServerFrame::Error(ErrorFrame {
                    code: expected,
                    message: "refused".into(),
                    client_msg_id: Some(client_msg_id),
                }))],
                "{code} for max_error_code {max_error_code}"
            );
        }
    }

    /// A notification published on the user's channel goes to the client as is.
    #[test]
    fn a_notification_event_becomes_a_notification_frame() {
        use haberci_wire::{Notification, NotificationId, NotificationKind};
        let mut h = Harness::new();
        h.open();
        let notification = Notification {
            id: NotificationId::new(Uuid::now_v7()).unwrap(),
            kind: NotificationKind::Follow,
            actor_id: UserId::new(Uuid::now_v7()).unwrap(),
            actor_username: "ayse".into(),
            post_id: None,
            comment_id: None,
            created_at: Timestamp::from_unix_millis(T0_MS).unwrap(),
            unread_count: 1,
        };
        h.session.handle_event(
            &Arc::new(Event::Notification(notification.clone())),
            h.now(1),
        );
        assert_eq!(
            h.drain(),
            [Output::Frame(ServerFrame::Notification(notification))]
        );
    }

    #[test]
    fn sends_to_one_conversation_go_to_the_stream_one_answer_at_a_time() {
        use haberci_wire::{MessageId, Sent};
        let mut h = Harness::new();
        h.open();
        let identity = h.session.identity().unwrap();
        let peer = UserId::new(Uuid::now_v7()).unwrap();
        let to_peer = |n: u128| SendMessage {
            client_msg_id: ClientMsgId::new(Uuid::from_u128(n)).unwrap(),
            recipient: Recipient::User(peer),
            kind: MessageKind::Text,
            content: format!("m{n}"),
            media: None,
        };
        let relayed = |n: u128| Output::Relay(Relay::Send(identity, to_peer(n)));
        let sent = |session: SessionId, n: u128| {
            Arc::new(Event::Sent {
                session,
                sent: Sent {
                    client_msg_id: to_peer(n).client_msg_id,
                    message_id: MessageId::new(Uuid::now_v7()).unwrap(),
                    conversation_id: haberci_seam::streams::direct_conversation(
                        identity.user,
                        peer,
                    ),
                    seq: Seq::new(n as u64).unwrap(),
                    timestamp: Timestamp::from_unix_millis(T0_MS).unwrap(),
                },
            })
        };
        assert_eq!(h.send(ClientFrame::Send(to_peer(1)), 1), [relayed(1)]);
        assert!(
            h.send(ClientFrame::Send(to_peer(2)), 2).is_empty(),
            "2 waits for 1's answer"
        );
        assert!(h.send(ClientFrame::Send(to_peer(3)), 3).is_empty());
        // A send to another conversation is not held up.
        assert!(matches!(
            h.send(send_frame(9), 4)[..],
            [Output::Relay(Relay::Send(..))]
        ));

        // Another session of the same user is answered: nothing moves.
        let other = SessionId::new(Uuid::now_v7()).unwrap();
        h.session.handle_event(&sent(other, 1), h.now(5));
        assert!(h.drain().is_empty());
        // 1 is stored: 2 goes to the stream, and the client hears Sent.
        h.session.handle_event(&sent(identity.session, 1), h.now(6));
        let out = h.drain();
        assert_eq!(out[0], relayed(2), "{out:?}");
        assert!(
            matches!(out[1..], [Output::Frame(ServerFrame::Sent(_))]),
            "{out:?}"
        );
        // 2 is refused: 3 goes, and the client hears the refusal.
        let refused = Arc::new(Event::Refused {
            session: identity.session,
            error: ErrorFrame {
                code: ErrorCode::UnknownRecipient,
                message: "no such user".into(),
                client_msg_id: Some(to_peer(2).client_msg_id),
            },
        });
        h.session.handle_event(&refused, h.now(7));
        let out = h.drain();
        assert_eq!(out[0], relayed(3), "{out:?}");

        // 3's answer is lost: after the answer timeout it goes again (the worker stores a
        // client_msg_id once); so does the other conversation's unanswered send.
        assert!(h.send(ClientFrame::Send(to_peer(4)), 8).is_empty());
        let timeout = crate::sends::ANSWER_TIMEOUT.as_millis() as u64;
        assert!(h.tick(7 + timeout - 1).iter().all(|o| *o != relayed(3)));
        let out = h.tick(7 + timeout);
        assert_eq!(out, [relayed(3)], "{out:?}");

        // 3 cannot be appended (Redis is down): 3 and 4 behind it are answered unavailable,
        // in order, and 4 never overtakes 3.
        h.session.send_unavailable(to_peer(3).client_msg_id);
        let refused: Vec<_> = h
            .drain()
            .into_iter()
            .map(|o| match o {
                Output::Frame(ServerFrame::Error(e)) if e.code == ErrorCode::Unavailable => {
                    e.client_msg_id
                }
                other => panic!("expected unavailable, got {other:?}"),
            })
            .collect();
        assert_eq!(
            refused,
            [
                Some(to_peer(3).client_msg_id),
                Some(to_peer(4).client_msg_id)
            ]
        );
        assert_eq!(h.send(ClientFrame::Send(to_peer(5)), 20), [relayed(5)]);
    }

    #[test]
    fn sends_over_the_rate_get_rate_limited_with_their_client_msg_id() {
        let mut h = Harness::new();
        h.open();
        let burst = u128::from(DEFAULT_SEND_BURST);
        for n in 0..burst {
            assert!(matches!(h.send(send_frame(n), 1)[..], [Output::Relay(_)]));
        }
        let out = h.send(send_frame(burst), 1);
        let [Output::Frame(ServerFrame::Error(error))] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(error.code, ErrorCode::RateLimited);
        assert_eq!(
            error.client_msg_id,
            Some(ClientMsgId::new(Uuid::from_u128(burst + 1)).unwrap())
        );
        assert!(!h.session.is_closed(), "rate limiting is not fatal");
        // One second later the rate has refilled.
        assert!(matches!(
            h.send(send_frame(burst + 1), 1_001)[..],
            [Output::Relay(_)]
        ));
    }

    #[test]
    fn decode_errors_answer_error_or_close_by_code() {
        let mut h = Harness::new();
        h.open();
        let now = h.now(1);
        h.session
            .handle_frame(Err(WireError::UnknownFrameKind), &h.verifier, now);
        let out = h.drain();
        let [Output::Frame(ServerFrame::Error(error))] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(error.code, ErrorCode::UnknownFrameKind);
        assert!(!h.session.is_closed());

        h.session
            .handle_frame(Err(WireError::MalformedLength), &h.verifier, now);
        assert_eq!(closed_with(&h.drain()), ErrorCode::BadFrame);
    }

    #[test]
    fn oversized_presence_watch_is_refused_without_closing() {
        let mut h = Harness::new();
        h.open();
        let watch = PresenceWatch {
            user_ids: (0..=MAX_PRESENCE_WATCH)
                .map(|_| UserId::new(Uuid::now_v7()).unwrap())
                .collect(),
        };
        let out = h.send(ClientFrame::PresenceWatch(watch), 1);
        assert!(
            matches!(&out[..], [Output::Frame(ServerFrame::Error(e))] if e.code == ErrorCode::InvalidField)
        );
        assert!(!h.session.is_closed());
    }

    #[test]
    fn revoke_and_drain_close_with_their_codes() {
        let mut h = Harness::new();
        h.open();
        h.session.revoke();
        assert_eq!(closed_with(&h.drain()), ErrorCode::Unauthenticated);

        let mut h = Harness::new();
        h.open();
        let expected = h.session.drain_retry_after_ms();
        h.session.drain();
        let out = h.drain();
        assert_eq!(closed_with(&out), ErrorCode::ServerDraining);
        let [Output::Frame(ServerFrame::Closing(closing)), _] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(closing.retry_after_ms, NonZeroU32::new(expected));
    }

    /// The clients of a drained gateway are told to come back over the spread window, not
    /// all at once: 200 sessions' waits fall in [1 s, 1 s + spread) and fill every tenth of it.
    #[test]
    fn drained_sessions_come_back_spread_over_the_window() {
        let spread_ms = u64::try_from(DEFAULT_DRAIN_SPREAD.as_millis()).unwrap();
        let mut tenths = [0u32; 10];
        for _ in 0..200 {
            let mut h = Harness::new();
            h.open();
            let wait = u64::from(h.session.drain_retry_after_ms());
            let floor = u64::from(DRAIN_RETRY_AFTER_MS);
            assert!((floor..floor + spread_ms).contains(&wait), "{wait}");
            tenths[((wait - floor) * 10 / spread_ms) as usize] += 1;
        }
        assert!(tenths.iter().all(|&n| n > 0), "{tenths:?}");

        // Before Hello there is no session id: the floor.
        let h = Harness::new();
        assert_eq!(h.session.drain_retry_after_ms(), DRAIN_RETRY_AFTER_MS);
    }
}
