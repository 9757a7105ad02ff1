//! The Haberci wire protocol, sans-IO: bytes in, frames out. No sockets, no clocks, no tasks.
//!
//! Map of the crate:
//!
//! - [`proto`] (`proto/haberci/v1/*.proto`, built by `build.rs` with protox + prost): the
//!   generated wire types. API boundary: they stay inside this crate; everything else uses
//!   the domain types.
//! - `frames`: the domain frames ([`ClientFrame`], [`ServerFrame`]) and their parts
//!   ([`Message`], [`Recipient`], …), with serde JSON forms (the HTTP API's message JSON).
//! - `ids`: id newtypes ([`UserId`], [`ConversationId`], …, never nil), [`Seq`] and
//!   [`Timestamp`]: values that can only be constructed valid.
//! - `convert`: proto ↔ domain. Decoding is where every value from a peer is checked, once.
//! - `framing`: varint length-delimited frames on streams ([`FrameDecoder`],
//!   [`encode_delimited`]), and the [`websocket`] and [`datagram`] forms.
//! - `codes`: the one table of error and close codes ([`ErrorCode`], [`CODE_TABLE`]).
//! - `error`: [`WireError`], everything that can be wrong with bytes from a peer, each
//!   mapped to an [`ErrorCode`].
//!
//! The protocol itself is specified in `docs/PROTOCOL.md`; golden vectors live in
//! `wire/tests/vectors/`.

mod codes;
mod convert;
mod error;
mod frames;
mod framing;
mod ids;

#[doc(hidden)]
pub mod fuzzing;

/// Generated prost types for package `haberci.v1`.
///
/// API boundary: public only for this crate's tests, fuzz targets and vector generator.
/// Business logic (gateway, backend, clients) uses the domain types.
#[doc(hidden)]
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/haberci.v1.rs"));
}

pub use codes::{
    CODE_TABLE, CodeInfo, ErrorCode, Fault, LAST_CODE, QUIC_NO_ERROR, V1_LAST_CODE,
    WEBSOCKET_NORMAL_CLOSURE, markdown_table,
};
pub use error::{InvalidField, Problem, WireError};
pub use frames::{
    Ack, ClientFrame, ClientTyping, Closing, ErrorFrame, Hello, Limits, MAX_MEDIA_BLURHASH_CHARS,
    MAX_MEDIA_CONTENT_TYPE_BYTES, MAX_MEDIA_FILENAME_BYTES, MediaInfo, MediaRef, Message,
    MessageKind, MessageStatus, Notification, NotificationKind, Ping, Pong, Presence,
    PresenceWatch, Read, Recipient, RefreshAuth, ResumePosition, SendMessage, Sent, ServerFrame,
    Status, Typing, TypingState, Welcome,
};
pub use framing::{
    DEFAULT_MAX_FRAME_SIZE, Frame, FrameDecoder, datagram, decode_stream, encode_body,
    encode_delimited, websocket,
};
pub use ids::{
    ClientMsgId, CommentId, ConversationId, GroupId, MediaId, MessageId, NotificationId, PostId,
    RecipientId, Seq, SessionId, Timestamp, UUID_LEN, UserId,
};

/// ALPN protocol id for native QUIC connections (UDP 4433).
pub const ALPN: &[u8] = b"haberci/1";
/// Path of the WebTransport CONNECT request (HTTP/3, UDP 4433).
pub const WEBTRANSPORT_PATH: &str = "/v1/rt";
/// Path of the WebSocket upgrade (TCP 8443).
pub const WEBSOCKET_PATH: &str = "/v1/ws";
/// WebSocket subprotocol (`Sec-WebSocket-Protocol`) a client must offer.
pub const WEBSOCKET_SUBPROTOCOL: &str = "haberci.v1";
/// Largest `content` of a message, in UTF-8 bytes; above it a `Send` is answered
/// `Error{content_too_large}`.
pub const MAX_CONTENT_BYTES: usize = 16 * 1024;
/// The protocol version this crate speaks (`Hello.protocol_version`).
pub const PROTOCOL_VERSION: u32 = 1;
/// Every version this crate can serve, newest first (`Closing.supported_versions`).
pub const SUPPORTED_VERSIONS: &[u32] = &[PROTOCOL_VERSION];

/// Whether a `Hello.protocol_version` can be served. A `false` is answered with
/// `Closing{code: unsupported_version, supported_versions: SUPPORTED_VERSIONS}`.
pub fn is_supported_version(version: u32) -> bool {
    SUPPORTED_VERSIONS.contains(&version)
}
