//! Domain frames: what the gateway's session machine, the Rust client and the backend see.
//!
//! API boundary: these types, not the prost types in [`crate::proto`], cross the crate's
//! edge. They are built from the wire by `TryFrom<proto::…>` (see `convert.rs`), which
//! rejects every invalid value, and turn back into the wire form with `From`.
//!
//! Every type also has a JSON form (serde, camelCase). For [`Message`] it is the HTTP API's
//! message object; for the frames it is the language-neutral description used by the golden
//! vectors in `wire/tests/vectors/` (a frame is an object whose `"kind"` names the case).

use std::fmt;
use std::num::{NonZeroU32, NonZeroU64};

use serde::{Deserialize, Serialize};

use crate::codes::ErrorCode;
use crate::ids::{
    ClientMsgId, CommentId, ConversationId, GroupId, MediaId, MessageId, NotificationId, PostId,
    RecipientId, Seq, SessionId, Timestamp, UserId,
};

/// What a message carries (`"type"` in JSON).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    Text,
    Image,
    Video,
    Audio,
    File,
}

/// How far a message got. Ordered: `Sent < Delivered < Read`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageStatus {
    Sent,
    Delivered,
    Read,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TypingState {
    Started,
    Stopped,
}

/// Whom a `Send` is addressed to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum Recipient {
    /// A direct message.
    #[serde(rename = "userId")]
    User(UserId),
    /// Every member of a group.
    #[serde(rename = "groupId")]
    Group(GroupId),
}

impl Recipient {
    pub fn id(self) -> RecipientId {
        match self {
            Recipient::User(user) => user.into(),
            Recipient::Group(group) => group.into(),
        }
    }
}

/// A stored message. Its JSON form is the HTTP API's message object, field for field:
///
/// ```json
/// {"id":"…","senderId":"…","recipientId":"…","type":"text","content":"…",
///  "timestamp":"2026-11-25T10:00:00.000Z","status":"sent","conversationId":"…","seq":1}
/// ```
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub id: MessageId,
    pub sender_id: UserId,
    pub recipient_id: RecipientId,
    #[serde(rename = "type")]
    pub kind: MessageKind,
    pub content: String,
    pub timestamp: Timestamp,
    pub status: MessageStatus,
    pub conversation_id: ConversationId,
    pub seq: Seq,
    /// The media of an image, video, audio or file message; `None` for text (absent on the
    /// wire, and left out of the JSON, so a text message's JSON is as it always was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<MediaInfo>,
}

/// Media as stored by the server and delivered with a [`Message`]: filled from what the
/// upload stored and detected, never from the `Send`'s [`MediaRef`]. The bytes are fetched
/// over HTTP (`GET /v1/media/{id}/info` gives short-lived signed URLs).
///
/// Invariant (checked on decode): the strings are within [`MAX_MEDIA_CONTENT_TYPE_BYTES`],
/// [`MAX_MEDIA_BLURHASH_CHARS`] and [`MAX_MEDIA_FILENAME_BYTES`]; a `Some` string is
/// non-empty (an empty one is `None` on the wire).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MediaInfo {
    pub media_id: MediaId,
    /// The detected content type (`image/jpeg`, …). Empty when unknown.
    pub content_type: String,
    /// Size of the stored original. 0 when unknown.
    pub size_bytes: u64,
    /// Images and video, in pixels, after EXIF orientation.
    pub width: Option<NonZeroU32>,
    pub height: Option<NonZeroU32>,
    /// Video and audio.
    pub duration_ms: Option<NonZeroU64>,
    /// Images and video posters: a BlurHash placeholder to draw until the bytes arrive.
    pub blurhash: Option<String>,
    /// Files: the name as uploaded, sanitized by the server.
    pub filename: Option<String>,
}

/// Largest `MediaInfo.content_type`, in UTF-8 bytes.
pub const MAX_MEDIA_CONTENT_TYPE_BYTES: usize = 255;
/// Largest `MediaInfo.blurhash`, in characters (Unicode scalar values; a valid BlurHash is
/// ASCII, so also bytes).
pub const MAX_MEDIA_BLURHASH_CHARS: usize = 100;
/// Largest `MediaInfo.filename`, in UTF-8 bytes.
pub const MAX_MEDIA_FILENAME_BYTES: usize = 255;

/// A reference to media uploaded through the HTTP API.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MediaRef {
    pub media_id: MediaId,
    /// Empty when unknown.
    pub content_type: String,
    /// 0 when unknown.
    pub size_bytes: u64,
}

// ---------------------------------------------------------------- client → server

/// A frame from client to server.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum ClientFrame {
    Hello(Hello),
    Send(SendMessage),
    Ack(Ack),
    Read(Read),
    Typing(ClientTyping),
    PresenceWatch(PresenceWatch),
    RefreshAuth(RefreshAuth),
    Ping(Ping),
}

/// First frame of a session. `Debug` redacts the token so frames can be logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    /// Non-empty.
    pub access_token: String,
    /// Not checked here: the session answers an unsupported one with
    /// `Closing{unsupported_version}` (see [`crate::is_supported_version`]).
    pub protocol_version: u32,
    pub client_name: String,
    pub client_version: String,
    /// Invariant (checked on decode): each conversation at most once.
    pub resume: Vec<ResumePosition>,
    /// The highest code of the code table this client knows (0 on the wire, and absent in
    /// JSON: [`crate::codes::V1_LAST_CODE`], the table version 1 started with). The server
    /// sends a newer code only to a client that knows it (see [`ErrorCode::for_client`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_error_code: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The client holds every message of `conversation_id` up to `last_seq`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResumePosition {
    pub conversation_id: ConversationId,
    /// `None`: nothing yet (0 on the wire).
    pub last_seq: Option<Seq>,
}

/// Send a message (`Send` on the wire; renamed so it does not shadow the `Send` trait).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendMessage {
    pub client_msg_id: ClientMsgId,
    pub recipient: Recipient,
    #[serde(rename = "type")]
    pub kind: MessageKind,
    pub content: String,
    pub media: Option<MediaRef>,
}

/// Cumulative delivery receipt.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ack {
    pub conversation_id: ConversationId,
    pub seq: Seq,
}

/// Cumulative read receipt.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Read {
    pub conversation_id: ConversationId,
    pub seq: Seq,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientTyping {
    pub conversation_id: ConversationId,
    pub state: TypingState,
}

/// Replaces the watched set.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceWatch {
    pub user_ids: Vec<UserId>,
}

/// Swap the session's token. `Debug` redacts it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefreshAuth {
    /// Non-empty.
    pub access_token: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Ping {
    pub nonce: u32,
}

// ---------------------------------------------------------------- server → client

/// A frame from server to client.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum ServerFrame {
    Welcome(Welcome),
    Message(Message),
    Sent(Sent),
    Status(Status),
    Typing(Typing),
    Presence(Presence),
    Error(ErrorFrame),
    Closing(Closing),
    Pong(Pong),
    Notification(Notification),
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Welcome {
    pub session_id: SessionId,
    pub user_id: UserId,
    pub protocol_version: u32,
    pub server_time: Timestamp,
    pub token_expires_at: Timestamp,
    pub limits: Limits,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Invariant: >= 1.
    pub max_frame_size: u32,
    pub send_rate_per_sec: u32,
    pub send_burst: u32,
    /// 0: the server never closes an idle session.
    pub idle_timeout_ms: u32,
}

/// The client's `Send` is stored.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sent {
    pub client_msg_id: ClientMsgId,
    pub message_id: MessageId,
    pub conversation_id: ConversationId,
    pub seq: Seq,
    pub timestamp: Timestamp,
}

/// A member's receipt watermarks.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub conversation_id: ConversationId,
    pub user_id: UserId,
    pub delivered: Option<Seq>,
    /// Invariant (checked on decode): `read <= delivered` (`None` is lowest).
    pub read: Option<Seq>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Typing {
    pub conversation_id: ConversationId,
    pub user_id: UserId,
    pub state: TypingState,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Presence {
    pub user_id: UserId,
    pub online: bool,
    /// `None`: unknown (0 on the wire, so the instant 1970-01-01T00:00:00.000Z itself reads
    /// back as unknown).
    pub last_seen: Option<Timestamp>,
}

/// A non-fatal error (`Error` on the wire).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorFrame {
    /// Invariant (checked on decode): not fatal.
    pub code: ErrorCode,
    pub message: String,
    pub client_msg_id: Option<ClientMsgId>,
}

/// The server closes the session after this frame.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Closing {
    /// Invariant (checked on decode): fatal.
    pub code: ErrorCode,
    pub reason: String,
    /// Wait at least this long before reconnecting. `None`: no advice (0 on the wire).
    pub retry_after_ms: Option<NonZeroU32>,
    pub supported_versions: Vec<u32>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Pong {
    pub nonce: u32,
}

/// What a [`Notification`] is about (`"type"` in a frame's JSON; the strings are the HTTP
/// API's notification `"kind"`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    Follow,
    FollowRequest,
    Like,
    Comment,
    Mention,
    Repost,
}

impl NotificationKind {
    /// Every kind, in wire order.
    pub const ALL: [NotificationKind; 6] = [
        NotificationKind::Follow,
        NotificationKind::FollowRequest,
        NotificationKind::Like,
        NotificationKind::Comment,
        NotificationKind::Mention,
        NotificationKind::Repost,
    ];

    /// The name in JSON and in the HTTP API (`follow_request`, …).
    pub const fn name(self) -> &'static str {
        match self {
            NotificationKind::Follow => "follow",
            NotificationKind::FollowRequest => "follow_request",
            NotificationKind::Like => "like",
            NotificationKind::Comment => "comment",
            NotificationKind::Mention => "mention",
            NotificationKind::Repost => "repost",
        }
    }

    pub fn from_name(name: &str) -> Option<NotificationKind> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

/// A notification was stored for the session's user. Best effort: never resumed; a client
/// that missed one reads `GET /v1/notifications`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub id: NotificationId,
    /// `"type"` in JSON, as in [`Message`] (`"kind"` names the frame).
    #[serde(rename = "type")]
    pub kind: NotificationKind,
    pub actor_id: UserId,
    /// Non-empty.
    pub actor_username: String,
    /// `None`: not about a post (empty on the wire).
    pub post_id: Option<PostId>,
    /// `None`: not about a comment (empty on the wire).
    pub comment_id: Option<CommentId>,
    pub created_at: Timestamp,
    /// The user's unread notifications, this one included.
    pub unread_count: u32,
}

impl ClientFrame {
    /// The frame kind's name (as in JSON), for logs and errors.
    pub const fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Hello(_) => "hello",
            ClientFrame::Send(_) => "send",
            ClientFrame::Ack(_) => "ack",
            ClientFrame::Read(_) => "read",
            ClientFrame::Typing(_) => "typing",
            ClientFrame::PresenceWatch(_) => "presenceWatch",
            ClientFrame::RefreshAuth(_) => "refreshAuth",
            ClientFrame::Ping(_) => "ping",
        }
    }

    /// Whether this frame may travel as a datagram (unreliable, unordered). Only ephemeral
    /// state whose loss costs nothing: typing. Never anything that must arrive.
    pub const fn may_travel_as_datagram(&self) -> bool {
        matches!(self, ClientFrame::Typing(_))
    }
}

impl ServerFrame {
    /// The frame kind's name (as in JSON), for logs and errors.
    pub const fn kind(&self) -> &'static str {
        match self {
            ServerFrame::Welcome(_) => "welcome",
            ServerFrame::Message(_) => "message",
            ServerFrame::Sent(_) => "sent",
            ServerFrame::Status(_) => "status",
            ServerFrame::Typing(_) => "typing",
            ServerFrame::Presence(_) => "presence",
            ServerFrame::Error(_) => "error",
            ServerFrame::Closing(_) => "closing",
            ServerFrame::Pong(_) => "pong",
            ServerFrame::Notification(_) => "notification",
        }
    }

    /// Whether this frame may travel as a datagram: typing and presence only.
    pub const fn may_travel_as_datagram(&self) -> bool {
        matches!(self, ServerFrame::Typing(_) | ServerFrame::Presence(_))
    }
}

/// Tokens are credentials: never in logs.
struct Redacted<'a>(&'a str);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted, {} bytes>", self.0.len())
    }
}

impl fmt::Debug for Hello {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hello")
            .field("access_token", &Redacted(&self.access_token))
            .field("protocol_version", &self.protocol_version)
            .field("client_name", &self.client_name)
            .field("client_version", &self.client_version)
            .field("resume", &self.resume)
            .field("max_error_code", &self.max_error_code)
            .finish()
    }
}

impl fmt::Debug for RefreshAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshAuth")
            .field("access_token", &Redacted(&self.access_token))
            .finish()
    }
}
