//! Conversions between the prost types ([`crate::proto`]) and the domain frames.
//!
//! Decoding (`TryFrom<proto>`) is where every value from a peer is checked, once: ids are
//! 16 bytes and not nil, seqs and timestamps are in range, enums are known and not
//! `UNSPECIFIED`, required messages and oneofs are present. Encoding (`From<domain>`) cannot
//! fail. Round trip: `domain → proto → domain` is the identity (property-tested).

use std::collections::HashSet;
use std::num::{NonZeroU32, NonZeroU64};

use bytes::Bytes;

use crate::codes::ErrorCode;
use crate::error::{InvalidField, Problem, WireError};
use crate::frames::*;
use crate::ids::*;
use crate::proto as p;

type Result<T, E = InvalidField> = std::result::Result<T, E>;

fn required<T>(field: &'static str, value: Option<T>) -> Result<T> {
    value.ok_or(InvalidField::new(field, Problem::Missing))
}

fn non_empty(field: &'static str, value: String) -> Result<String> {
    if value.is_empty() {
        Err(InvalidField::new(field, Problem::Empty))
    } else {
        Ok(value)
    }
}

/// A string of at most `max` UTF-8 bytes.
fn at_most_bytes(field: &'static str, max: usize, value: String) -> Result<String> {
    if value.len() > max {
        return Err(InvalidField::new(
            field,
            Problem::TooLong {
                max,
                actual: value.len(),
                unit: "bytes",
            },
        ));
    }
    Ok(value)
}

/// An optional string (empty = `None`) of at most `max` characters.
fn optional_at_most_chars(
    field: &'static str,
    max: usize,
    value: String,
) -> Result<Option<String>> {
    // Counting stops just past the limit: a peer's megabyte string costs max + 1 steps.
    let chars = value.chars().take(max + 1).count();
    if chars > max {
        return Err(InvalidField::new(
            field,
            Problem::TooLong {
                max,
                actual: value.chars().count(),
                unit: "characters",
            },
        ));
    }
    Ok(Some(value).filter(|v| !v.is_empty()))
}

fn optional_client_msg_id(field: &'static str, bytes: &Bytes) -> Result<Option<ClientMsgId>> {
    if bytes.is_empty() {
        Ok(None)
    } else {
        ClientMsgId::from_wire(field, bytes).map(Some)
    }
}

// ---------------------------------------------------------------- enums

/// A proto3 enum value: 0 (`UNSPECIFIED`) reads as "missing", anything unknown is rejected.
fn enum_value<E: TryFrom<i32>>(field: &'static str, value: i32) -> Result<E> {
    if value == 0 {
        return Err(InvalidField::new(field, Problem::Missing));
    }
    E::try_from(value)
        .map_err(|_| InvalidField::new(field, Problem::UnknownEnumValue(value.into())))
}

fn message_kind(field: &'static str, value: i32) -> Result<MessageKind> {
    Ok(match enum_value::<p::MessageType>(field, value)? {
        p::MessageType::Text => MessageKind::Text,
        p::MessageType::Image => MessageKind::Image,
        p::MessageType::Video => MessageKind::Video,
        p::MessageType::Audio => MessageKind::Audio,
        p::MessageType::File => MessageKind::File,
        p::MessageType::Unspecified => return Err(InvalidField::new(field, Problem::Missing)),
    })
}

impl From<MessageKind> for p::MessageType {
    fn from(kind: MessageKind) -> Self {
        match kind {
            MessageKind::Text => p::MessageType::Text,
            MessageKind::Image => p::MessageType::Image,
            MessageKind::Video => p::MessageType::Video,
            MessageKind::Audio => p::MessageType::Audio,
            MessageKind::File => p::MessageType::File,
        }
    }
}

fn message_status(field: &'static str, value: i32) -> Result<MessageStatus> {
    Ok(match enum_value::<p::MessageStatus>(field, value)? {
        p::MessageStatus::Sent => MessageStatus::Sent,
        p::MessageStatus::Delivered => MessageStatus::Delivered,
        p::MessageStatus::Read => MessageStatus::Read,
        p::MessageStatus::Unspecified => return Err(InvalidField::new(field, Problem::Missing)),
    })
}

impl From<MessageStatus> for p::MessageStatus {
    fn from(status: MessageStatus) -> Self {
        match status {
            MessageStatus::Sent => p::MessageStatus::Sent,
            MessageStatus::Delivered => p::MessageStatus::Delivered,
            MessageStatus::Read => p::MessageStatus::Read,
        }
    }
}

fn typing_state(field: &'static str, value: i32) -> Result<TypingState> {
    Ok(match enum_value::<p::TypingState>(field, value)? {
        p::TypingState::Started => TypingState::Started,
        p::TypingState::Stopped => TypingState::Stopped,
        p::TypingState::Unspecified => return Err(InvalidField::new(field, Problem::Missing)),
    })
}

impl From<TypingState> for p::TypingState {
    fn from(state: TypingState) -> Self {
        match state {
            TypingState::Started => p::TypingState::Started,
            TypingState::Stopped => p::TypingState::Stopped,
        }
    }
}

fn notification_kind(field: &'static str, value: i32) -> Result<NotificationKind> {
    use p::NotificationType as K;
    Ok(match enum_value::<K>(field, value)? {
        K::Follow => NotificationKind::Follow,
        K::FollowRequest => NotificationKind::FollowRequest,
        K::Like => NotificationKind::Like,
        K::Comment => NotificationKind::Comment,
        K::Mention => NotificationKind::Mention,
        K::Repost => NotificationKind::Repost,
        K::Unspecified => return Err(InvalidField::new(field, Problem::Missing)),
    })
}

impl From<NotificationKind> for p::NotificationType {
    fn from(kind: NotificationKind) -> Self {
        use p::NotificationType as K;
        match kind {
            NotificationKind::Follow => K::Follow,
            NotificationKind::FollowRequest => K::FollowRequest,
            NotificationKind::Like => K::Like,
            NotificationKind::Comment => K::Comment,
            NotificationKind::Mention => K::Mention,
            NotificationKind::Repost => K::Repost,
        }
    }
}

/// An error code that must (`fatal`) or must not be fatal for the frame carrying it.
fn error_code(field: &'static str, value: u32, fatal: bool) -> Result<ErrorCode> {
    let code = ErrorCode::from_protocol_code(value).ok_or(InvalidField::new(
        field,
        Problem::UnknownEnumValue(value.into()),
    ))?;
    if code.is_fatal() != fatal {
        return Err(InvalidField::new(field, Problem::WrongFrameForCode(code)));
    }
    Ok(code)
}

// ---------------------------------------------------------------- shared messages

impl TryFrom<p::Recipient> for Recipient {
    type Error = InvalidField;
    fn try_from(r: p::Recipient) -> Result<Self> {
        match required("Recipient.kind", r.kind)? {
            p::recipient::Kind::UserId(id) => Ok(Recipient::User(UserId::from_wire(
                "Recipient.user_id",
                &id,
            )?)),
            p::recipient::Kind::GroupId(id) => Ok(Recipient::Group(GroupId::from_wire(
                "Recipient.group_id",
                &id,
            )?)),
        }
    }
}

impl From<Recipient> for p::Recipient {
    fn from(r: Recipient) -> Self {
        let kind = match r {
            Recipient::User(id) => p::recipient::Kind::UserId(id.to_wire()),
            Recipient::Group(id) => p::recipient::Kind::GroupId(id.to_wire()),
        };
        p::Recipient { kind: Some(kind) }
    }
}

impl TryFrom<p::MediaRef> for MediaRef {
    type Error = InvalidField;
    fn try_from(m: p::MediaRef) -> Result<Self> {
        Ok(MediaRef {
            media_id: MediaId::from_wire("MediaRef.media_id", &m.media_id)?,
            content_type: m.content_type,
            size_bytes: m.size_bytes,
        })
    }
}

impl From<MediaRef> for p::MediaRef {
    fn from(m: MediaRef) -> Self {
        p::MediaRef {
            media_id: m.media_id.to_wire(),
            content_type: m.content_type,
            size_bytes: m.size_bytes,
        }
    }
}

impl TryFrom<p::MediaInfo> for MediaInfo {
    type Error = InvalidField;
    fn try_from(m: p::MediaInfo) -> Result<Self> {
        Ok(MediaInfo {
            media_id: MediaId::from_wire("MediaInfo.media_id", &m.media_id)?,
            content_type: at_most_bytes(
                "MediaInfo.content_type",
                MAX_MEDIA_CONTENT_TYPE_BYTES,
                m.content_type,
            )?,
            size_bytes: m.size_bytes,
            width: NonZeroU32::new(m.width),
            height: NonZeroU32::new(m.height),
            duration_ms: NonZeroU64::new(m.duration_ms),
            blurhash: optional_at_most_chars(
                "MediaInfo.blurhash",
                MAX_MEDIA_BLURHASH_CHARS,
                m.blurhash,
            )?,
            filename: Some(at_most_bytes(
                "MediaInfo.filename",
                MAX_MEDIA_FILENAME_BYTES,
                m.filename,
            )?)
            .filter(|f| !f.is_empty()),
        })
    }
}

impl From<MediaInfo> for p::MediaInfo {
    fn from(m: MediaInfo) -> Self {
        p::MediaInfo {
            media_id: m.media_id.to_wire(),
            content_type: m.content_type,
            size_bytes: m.size_bytes,
            width: m.width.map_or(0, NonZeroU32::get),
            height: m.height.map_or(0, NonZeroU32::get),
            duration_ms: m.duration_ms.map_or(0, NonZeroU64::get),
            blurhash: m.blurhash.unwrap_or_default(),
            filename: m.filename.unwrap_or_default(),
        }
    }
}

impl TryFrom<p::Message> for Message {
    type Error = InvalidField;
    fn try_from(m: p::Message) -> Result<Self> {
        Ok(Message {
            id: MessageId::from_wire("Message.id", &m.id)?,
            sender_id: UserId::from_wire("Message.sender_id", &m.sender_id)?,
            recipient_id: RecipientId::from_wire("Message.recipient_id", &m.recipient_id)?,
            kind: message_kind("Message.type", m.r#type)?,
            content: m.content,
            timestamp: Timestamp::from_wire("Message.timestamp", m.timestamp)?,
            status: message_status("Message.status", m.status)?,
            conversation_id: ConversationId::from_wire(
                "Message.conversation_id",
                &m.conversation_id,
            )?,
            seq: Seq::from_wire("Message.seq", m.seq)?,
            media: m.media.map(MediaInfo::try_from).transpose()?,
        })
    }
}

impl From<Message> for p::Message {
    fn from(m: Message) -> Self {
        p::Message {
            id: m.id.to_wire(),
            sender_id: m.sender_id.to_wire(),
            recipient_id: m.recipient_id.to_wire(),
            r#type: p::MessageType::from(m.kind).into(),
            content: m.content,
            timestamp: m.timestamp.unix_millis(),
            status: p::MessageStatus::from(m.status).into(),
            conversation_id: m.conversation_id.to_wire(),
            seq: m.seq.get(),
            media: m.media.map(p::MediaInfo::from),
        }
    }
}

impl TryFrom<p::Notification> for Notification {
    type Error = InvalidField;
    fn try_from(n: p::Notification) -> Result<Self> {
        let post_id = if n.post_id.is_empty() {
            None
        } else {
            Some(PostId::from_wire("Notification.post_id", &n.post_id)?)
        };
        let comment_id = if n.comment_id.is_empty() {
            None
        } else {
            Some(CommentId::from_wire(
                "Notification.comment_id",
                &n.comment_id,
            )?)
        };
        Ok(Notification {
            id: NotificationId::from_wire("Notification.id", &n.id)?,
            kind: notification_kind("Notification.type", n.r#type)?,
            actor_id: UserId::from_wire("Notification.actor_id", &n.actor_id)?,
            actor_username: non_empty("Notification.actor_username", n.actor_username)?,
            post_id,
            comment_id,
            created_at: Timestamp::from_wire("Notification.created_at", n.created_at)?,
            unread_count: n.unread_count,
        })
    }
}

impl From<Notification> for p::Notification {
    fn from(n: Notification) -> Self {
        p::Notification {
            id: n.id.to_wire(),
            r#type: p::NotificationType::from(n.kind).into(),
            actor_id: n.actor_id.to_wire(),
            actor_username: n.actor_username,
            post_id: n.post_id.map_or_else(Bytes::new, PostId::to_wire),
            comment_id: n.comment_id.map_or_else(Bytes::new, CommentId::to_wire),
            created_at: n.created_at.unix_millis(),
            unread_count: n.unread_count,
        }
    }
}

// ---------------------------------------------------------------- client frames

impl TryFrom<p::ClientFrame> for ClientFrame {
    type Error = WireError;
    fn try_from(frame: p::ClientFrame) -> Result<Self, WireError> {
        use p::client_frame::Frame as F;
        // A oneof case this build does not know decodes as `None` (prost skips it as an
        // unknown field): that is a newer client, not a broken one.
        let frame = frame.frame.ok_or(WireError::UnknownFrameKind)?;
        Ok(match frame {
            F::Hello(h) => ClientFrame::Hello(h.try_into().map_err(WireError::InvalidHello)?),
            F::Send(s) => ClientFrame::Send(s.try_into()?),
            F::Ack(a) => ClientFrame::Ack(Ack {
                conversation_id: ConversationId::from_wire(
                    "Ack.conversation_id",
                    &a.conversation_id,
                )?,
                seq: Seq::from_wire("Ack.seq", a.seq)?,
            }),
            F::Read(r) => ClientFrame::Read(Read {
                conversation_id: ConversationId::from_wire(
                    "Read.conversation_id",
                    &r.conversation_id,
                )?,
                seq: Seq::from_wire("Read.seq", r.seq)?,
            }),
            F::Typing(t) => ClientFrame::Typing(ClientTyping {
                conversation_id: ConversationId::from_wire(
                    "ClientTyping.conversation_id",
                    &t.conversation_id,
                )?,
                state: typing_state("ClientTyping.state", t.state)?,
            }),
            F::PresenceWatch(w) => ClientFrame::PresenceWatch(PresenceWatch {
                user_ids: w
                    .user_ids
                    .iter()
                    .map(|id| UserId::from_wire("PresenceWatch.user_ids", id))
                    .collect::<Result<_>>()?,
            }),
            F::RefreshAuth(r) => ClientFrame::RefreshAuth(RefreshAuth {
                access_token: non_empty("RefreshAuth.access_token", r.access_token)?,
            }),
            F::Ping(p) => ClientFrame::Ping(Ping { nonce: p.nonce }),
        })
    }
}

impl TryFrom<p::Hello> for Hello {
    type Error = InvalidField;
    fn try_from(h: p::Hello) -> Result<Self> {
        let mut seen = HashSet::with_capacity(h.resume.len());
        let resume = h
            .resume
            .into_iter()
            .map(|r| {
                let conversation_id = ConversationId::from_wire(
                    "ResumePosition.conversation_id",
                    &r.conversation_id,
                )?;
                if !seen.insert(conversation_id) {
                    return Err(InvalidField::new(
                        "ResumePosition.conversation_id",
                        Problem::DuplicateConversation,
                    ));
                }
                Ok(ResumePosition {
                    conversation_id,
                    last_seq: Seq::from_wire_optional("ResumePosition.last_seq", r.last_seq)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Hello {
            access_token: non_empty("Hello.access_token", h.access_token)?,
            protocol_version: h.protocol_version,
            client_name: h.client_name,
            client_version: h.client_version,
            resume,
            max_error_code: h.max_error_code,
        })
    }
}

impl TryFrom<p::Send> for SendMessage {
    type Error = InvalidField;
    fn try_from(s: p::Send) -> Result<Self> {
        let client_msg_id = ClientMsgId::from_wire("Send.client_msg_id", &s.client_msg_id)?;
        // Once the idempotency key is known, every later problem names it, so the server's
        // `Error` can tell the client which message failed.
        let rest = || -> Result<SendMessage> {
            Ok(SendMessage {
                client_msg_id,
                recipient: required("Send.recipient", s.recipient)?.try_into()?,
                kind: message_kind("Send.type", s.r#type)?,
                content: s.content,
                media: s.media.map(MediaRef::try_from).transpose()?,
            })
        };
        rest().map_err(|e| InvalidField {
            client_msg_id: Some(client_msg_id),
            ..e
        })
    }
}

impl From<ClientFrame> for p::ClientFrame {
    fn from(frame: ClientFrame) -> Self {
        use p::client_frame::Frame as F;
        let frame = match frame {
            ClientFrame::Hello(h) => F::Hello(p::Hello {
                access_token: h.access_token,
                protocol_version: h.protocol_version,
                client_name: h.client_name,
                client_version: h.client_version,
                resume: h
                    .resume
                    .into_iter()
                    .map(|r| p::ResumePosition {
                        conversation_id: r.conversation_id.to_wire(),
                        last_seq: Seq::to_wire_optional(r.last_seq),
                    })
                    .collect(),
                max_error_code: h.max_error_code,
            }),
            ClientFrame::Send(s) => F::Send(p::Send {
                client_msg_id: s.client_msg_id.to_wire(),
                recipient: Some(s.recipient.into()),
                r#type: p::MessageType::from(s.kind).into(),
                content: s.content,
                media: s.media.map(Into::into),
            }),
            ClientFrame::Ack(a) => F::Ack(p::Ack {
                conversation_id: a.conversation_id.to_wire(),
                seq: a.seq.get(),
            }),
            ClientFrame::Read(r) => F::Read(p::Read {
                conversation_id: r.conversation_id.to_wire(),
                seq: r.seq.get(),
            }),
            ClientFrame::Typing(t) => F::Typing(p::ClientTyping {
                conversation_id: t.conversation_id.to_wire(),
                state: p::TypingState::from(t.state).into(),
            }),
            ClientFrame::PresenceWatch(w) => F::PresenceWatch(p::PresenceWatch {
                user_ids: w.user_ids.into_iter().map(UserId::to_wire).collect(),
            }),
            ClientFrame::RefreshAuth(r) => F::RefreshAuth(p::RefreshAuth {
                access_token: r.access_token,
            }),
            ClientFrame::Ping(ping) => F::Ping(p::Ping { nonce: ping.nonce }),
        };
        p::ClientFrame { frame: Some(frame) }
    }
}

// ---------------------------------------------------------------- server frames

impl TryFrom<p::ServerFrame> for ServerFrame {
    type Error = WireError;
    fn try_from(frame: p::ServerFrame) -> Result<Self, WireError> {
        use p::server_frame::Frame as F;
        let frame = frame.frame.ok_or(WireError::UnknownFrameKind)?;
        Ok(match frame {
            F::Welcome(w) => {
                let limits = required("Welcome.limits", w.limits)?;
                if limits.max_frame_size == 0 {
                    return Err(InvalidField::new("Limits.max_frame_size", Problem::Zero).into());
                }
                ServerFrame::Welcome(Welcome {
                    session_id: SessionId::from_wire("Welcome.session_id", &w.session_id)?,
                    user_id: UserId::from_wire("Welcome.user_id", &w.user_id)?,
                    protocol_version: w.protocol_version,
                    server_time: Timestamp::from_wire("Welcome.server_time", w.server_time)?,
                    token_expires_at: Timestamp::from_wire(
                        "Welcome.token_expires_at",
                        w.token_expires_at,
                    )?,
                    limits: Limits {
                        max_frame_size: limits.max_frame_size,
                        send_rate_per_sec: limits.send_rate_per_sec,
                        send_burst: limits.send_burst,
                        idle_timeout_ms: limits.idle_timeout_ms,
                    },
                })
            }
            F::Message(m) => ServerFrame::Message(m.try_into()?),
            F::Sent(s) => ServerFrame::Sent(Sent {
                client_msg_id: ClientMsgId::from_wire("Sent.client_msg_id", &s.client_msg_id)?,
                message_id: MessageId::from_wire("Sent.message_id", &s.message_id)?,
                conversation_id: ConversationId::from_wire(
                    "Sent.conversation_id",
                    &s.conversation_id,
                )?,
                seq: Seq::from_wire("Sent.seq", s.seq)?,
                timestamp: Timestamp::from_wire("Sent.timestamp", s.timestamp)?,
            }),
            F::Status(s) => {
                let delivered = Seq::from_wire_optional("Status.delivered_seq", s.delivered_seq)?;
                let read = Seq::from_wire_optional("Status.read_seq", s.read_seq)?;
                // Reading implies delivery; `None < Some(_)` in Option's ordering.
                if read > delivered {
                    return Err(
                        InvalidField::new("Status.read_seq", Problem::ReadAboveDelivered).into(),
                    );
                }
                ServerFrame::Status(Status {
                    conversation_id: ConversationId::from_wire(
                        "Status.conversation_id",
                        &s.conversation_id,
                    )?,
                    user_id: UserId::from_wire("Status.user_id", &s.user_id)?,
                    delivered,
                    read,
                })
            }
            F::Typing(t) => ServerFrame::Typing(Typing {
                conversation_id: ConversationId::from_wire(
                    "ServerTyping.conversation_id",
                    &t.conversation_id,
                )?,
                user_id: UserId::from_wire("ServerTyping.user_id", &t.user_id)?,
                state: typing_state("ServerTyping.state", t.state)?,
            }),
            F::Presence(pr) => ServerFrame::Presence(Presence {
                user_id: UserId::from_wire("Presence.user_id", &pr.user_id)?,
                online: pr.online,
                last_seen: Timestamp::from_wire_optional("Presence.last_seen", pr.last_seen)?,
            }),
            F::Error(e) => ServerFrame::Error(ErrorFrame {
                code: error_code("Error.code", e.code, false)?,
                message: e.message,
                client_msg_id: optional_client_msg_id("Error.client_msg_id", &e.client_msg_id)?,
            }),
            F::Closing(c) => ServerFrame::Closing(Closing {
                code: error_code("Closing.code", c.code, true)?,
                reason: c.reason,
                retry_after_ms: NonZeroU32::new(c.retry_after_ms),
                supported_versions: c.supported_versions,
            }),
            F::Pong(pong) => ServerFrame::Pong(Pong { nonce: pong.nonce }),
            F::Notification(n) => ServerFrame::Notification(n.try_into()?),
        })
    }
}

impl From<ServerFrame> for p::ServerFrame {
    fn from(frame: ServerFrame) -> Self {
        use p::server_frame::Frame as F;
        let frame = match frame {
            ServerFrame::Welcome(w) => F::Welcome(p::Welcome {
                session_id: w.session_id.to_wire(),
                user_id: w.user_id.to_wire(),
                protocol_version: w.protocol_version,
                server_time: w.server_time.unix_millis(),
                token_expires_at: w.token_expires_at.unix_millis(),
                limits: Some(p::Limits {
                    max_frame_size: w.limits.max_frame_size,
                    send_rate_per_sec: w.limits.send_rate_per_sec,
                    send_burst: w.limits.send_burst,
                    idle_timeout_ms: w.limits.idle_timeout_ms,
                }),
            }),
            ServerFrame::Message(m) => F::Message(m.into()),
            ServerFrame::Sent(s) => F::Sent(p::Sent {
                client_msg_id: s.client_msg_id.to_wire(),
                message_id: s.message_id.to_wire(),
                conversation_id: s.conversation_id.to_wire(),
                seq: s.seq.get(),
                timestamp: s.timestamp.unix_millis(),
            }),
            ServerFrame::Status(s) => F::Status(p::Status {
                conversation_id: s.conversation_id.to_wire(),
                user_id: s.user_id.to_wire(),
                delivered_seq: Seq::to_wire_optional(s.delivered),
                read_seq: Seq::to_wire_optional(s.read),
            }),
            ServerFrame::Typing(t) => F::Typing(p::ServerTyping {
                conversation_id: t.conversation_id.to_wire(),
                user_id: t.user_id.to_wire(),
                state: p::TypingState::from(t.state).into(),
            }),
            ServerFrame::Presence(pr) => F::Presence(p::Presence {
                user_id: pr.user_id.to_wire(),
                online: pr.online,
                last_seen: pr.last_seen.map_or(0, Timestamp::unix_millis),
            }),
            ServerFrame::Error(e) => F::Error(p::Error {
                code: e.code.protocol_code(),
                message: e.message,
                client_msg_id: e
                    .client_msg_id
                    .map_or_else(Bytes::new, ClientMsgId::to_wire),
            }),
            ServerFrame::Closing(c) => F::Closing(p::Closing {
                code: c.code.protocol_code(),
                reason: c.reason,
                retry_after_ms: c.retry_after_ms.map_or(0, NonZeroU32::get),
                supported_versions: c.supported_versions,
            }),
            ServerFrame::Pong(pong) => F::Pong(p::Pong { nonce: pong.nonce }),
            ServerFrame::Notification(n) => F::Notification(n.into()),
        };
        p::ServerFrame { frame: Some(frame) }
    }
}
