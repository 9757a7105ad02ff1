//! Haberci's Rust SDK: one realtime connection to a gateway over native QUIC, WebTransport or
//! WebSocket — connect, send, receive, ack, resume. Used by the integration tests and the load
//! generator.
//!
//! ```no_run
//! # async fn demo(token: String, peer: haberci_client::UserId) -> Result<(), Box<dyn std::error::Error>> {
//! use haberci_client::{Client, ClientConfig, Event, Roots, Transport};
//!
//! let config = ClientConfig::new(
//!     Transport::Quic { addr: "localhost:4433".into() },
//!     Roots::PemFile(".dev/certs/ca.pem".into()),
//!     token,
//! );
//! let (client, mut events) = Client::connect(config).await?;
//! let sent = client.send(haberci_client::text_to(peer, "Merhaba!")).await?;
//! println!("stored as seq {}", sent.seq);
//! while let Some(event) = events.recv().await {
//!     if let Event::Message(message) = event {
//!         println!("{}: {}", message.sender_id, message.content);
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Map of the crate:
//!
//! - `client`: [`Client`] (requests; cheap to clone), [`Events`] (what the server says), and
//!   the driver task that runs each connection.
//! - [`session`]: the sans-IO core — handshake, sends in flight, resume positions, auto-ack
//!   coalescing, heartbeat — with `now` passed in and outputs polled; unit-tested with
//!   scripted frames.
//! - [`positions`]: per-conversation contiguous seq tracking, the source of `Hello.resume`.
//! - `transport`: one small module per transport (`quic`, `webtransport`, `websocket`), each
//!   yielding a frame sink and a frame stream; `tls` builds rustls settings with the ring
//!   provider.
//! - `config`: [`ClientConfig`], [`Transport`], [`Roots`] and the `DEFAULT_*` timings.
//! - `api`: [`Api`], the HTTP API beside the session: media uploads ([`Api::upload_media`])
//!   and their [`MediaView`]; [`media_to`] turns one into a message.
//! - `error`: [`ConnectError`], [`SendError`], [`ClientError`], [`Disconnect`], [`ApiError`].
//!
//! Frames are the `haberci-wire` domain types, re-exported here; the protocol is
//! docs/PROTOCOL.md.

mod api;
pub mod backoff;
mod client;
mod config;
mod error;
pub mod positions;
pub mod session;
mod transport;

pub use api::{Api, DEFAULT_API_TIMEOUT, MediaKind, MediaView};
pub use backoff::{Backoff, DEFAULT_MAX_RECONNECT_DELAY, DEFAULT_RECONNECT_DELAY};
pub use client::{Client, Events};
pub use config::{ClientConfig, DEFAULT_CLIENT_NAME, DEFAULT_CONNECT_TIMEOUT, Roots, Transport};
pub use error::{ApiError, BoxError, ClientError, ConnectError, Disconnect, SendError};
pub use session::{
    DEFAULT_ACK_DELAY, DEFAULT_PING_INTERVAL, DEFAULT_PONG_TIMEOUT, Event, Session, SessionSettings,
};

pub use haberci_wire::{
    ClientMsgId, Closing, ConversationId, ErrorCode, ErrorFrame, GroupId, MediaId, MediaInfo,
    MediaRef, Message, MessageKind, Notification, NotificationKind, Presence, Recipient,
    ResumePosition, SendMessage, Sent, Seq, Status, Typing, TypingState, UserId, Welcome,
};

/// A text message to one user, with a fresh `client_msg_id` (UUIDv7).
pub fn text_to(user: UserId, content: impl Into<String>) -> SendMessage {
    message(Recipient::User(user), MessageKind::Text, content)
}

/// A message with a fresh `client_msg_id` (UUIDv7). Keep the id to resend the same message
/// after a reconnect.
pub fn message(recipient: Recipient, kind: MessageKind, content: impl Into<String>) -> SendMessage {
    SendMessage {
        client_msg_id: new_client_msg_id(),
        recipient,
        kind,
        content: content.into(),
        media: None,
    }
}

/// A media message: the upload `media` (from [`Api::upload_media`]) as a message of its kind,
/// with `caption` as its content (may be empty), and a fresh `client_msg_id`. The server
/// refuses it (`media_refused`) unless `media` is the sender's own upload of that kind.
pub fn media_to(
    recipient: Recipient,
    media: &MediaView,
    caption: impl Into<String>,
) -> SendMessage {
    SendMessage {
        media: Some(media.media_ref()),
        ..message(recipient, media.kind.message_kind(), caption)
    }
}

/// A fresh `client_msg_id`.
pub fn new_client_msg_id() -> ClientMsgId {
    // A v7 UUID is never nil (its version bits are set): this returns on the first turn.
    loop {
        if let Some(id) = ClientMsgId::new(uuid::Uuid::now_v7()) {
            return id;
        }
    }
}
