//! Fixed sample frames (one per kind) and proptest strategies for every domain type.

use std::num::{NonZeroU32, NonZeroU64};

use haberci_wire::*;
use proptest::prelude::*;
use uuid::Uuid;

/// An id with a recognisable UUID: `0000000n-…` per role, so hex dumps are readable.
pub fn id<T: TryFrom<Uuid>>(n: u128) -> T
where
    T::Error: std::fmt::Debug,
{
    T::try_from(Uuid::from_u128(n)).unwrap()
}

pub const ALICE: u128 = 0x0192_0000_0000_7000_8000_0000_0000_a11c;
pub const BOB: u128 = 0x0192_0000_0000_7000_8000_0000_0000_0b0b;
pub const GROUP: u128 = 0x0192_0000_0000_7000_8000_0000_0000_6a0b;
pub const CONVERSATION: u128 = 0x0192_0000_0000_7000_8000_0000_0000_c0de;
pub const MESSAGE: u128 = 0x0192_0000_0000_7000_8000_0000_0000_0e55;
pub const CLIENT_MSG: u128 = 0x2b6f_1c4e_93a1_4d7e_9f00_0000_0000_0001;
pub const SESSION: u128 = 0x0192_0000_0000_7000_8000_0000_0000_5e55;
pub const MEDIA: u128 = 0x0192_0000_0000_7000_8000_0000_0000_3ed1;
pub const NOTIFICATION: u128 = 0x0192_0000_0000_7000_8000_0000_0000_4071;
pub const POST: u128 = 0x0192_0000_0000_7000_8000_0000_0000_9057;
pub const COMMENT: u128 = 0x0192_0000_0000_7000_8000_0000_0000_c033;

/// 2026-11-25T10:00:00.000Z
pub fn ts() -> Timestamp {
    Timestamp::parse_rfc3339("2026-11-25T10:00:00.000Z").unwrap()
}

pub fn seq(n: u64) -> Seq {
    Seq::new(n).unwrap()
}

pub fn message() -> Message {
    Message {
        id: id(MESSAGE),
        sender_id: id(ALICE),
        recipient_id: id(BOB),
        kind: MessageKind::Text,
        content: "Merhaba Bob! 👋".into(),
        timestamp: ts(),
        status: MessageStatus::Sent,
        conversation_id: id(CONVERSATION),
        seq: seq(42),
        media: None,
    }
}

/// An image message whose `MediaInfo` has every field set (an animated GIF: it has a
/// duration too), the filename with non-ASCII letters so decoders count UTF-8 bytes.
pub fn media_message() -> Message {
    Message {
        id: id(MESSAGE + 1),
        kind: MessageKind::Image,
        content: "sunset".into(),
        seq: seq(43),
        media: Some(MediaInfo {
            media_id: id(MEDIA),
            content_type: "image/gif".into(),
            size_bytes: 2_457_600,
            width: NonZeroU32::new(1280),
            height: NonZeroU32::new(720),
            duration_ms: NonZeroU64::new(2_400),
            blurhash: Some("LEHV6nWB2yk8pyo0adR*.7kCMdnj".into()),
            filename: Some("gün batımı.gif".into()),
        }),
        ..message()
    }
}

/// One sample of every client frame kind, with its vector name.
pub fn client_frames() -> Vec<(&'static str, ClientFrame)> {
    vec![
        (
            "client_hello",
            ClientFrame::Hello(Hello {
                access_token: "eyJhbGciOiJFZERTQSJ9.e30.c2ln".into(),
                protocol_version: PROTOCOL_VERSION,
                client_name: "haberci-web".into(),
                client_version: "0.1.0".into(),
                resume: vec![ResumePosition {
                    conversation_id: id(CONVERSATION),
                    last_seq: Some(seq(41)),
                }],
                max_error_code: 0,
            }),
        ),
        (
            "client_send",
            ClientFrame::Send(SendMessage {
                client_msg_id: id(CLIENT_MSG),
                recipient: Recipient::User(id(BOB)),
                kind: MessageKind::Text,
                content: "Merhaba Bob! 👋".into(),
                media: None,
            }),
        ),
        (
            "client_send_group_image",
            ClientFrame::Send(SendMessage {
                client_msg_id: id(CLIENT_MSG + 1),
                recipient: Recipient::Group(id(GROUP)),
                kind: MessageKind::Image,
                content: "sunset".into(),
                media: Some(MediaRef {
                    media_id: id(MEDIA),
                    content_type: "image/jpeg".into(),
                    size_bytes: 48_213,
                }),
            }),
        ),
        (
            "client_ack",
            ClientFrame::Ack(Ack {
                conversation_id: id(CONVERSATION),
                seq: seq(42),
            }),
        ),
        (
            "client_read",
            ClientFrame::Read(Read {
                conversation_id: id(CONVERSATION),
                seq: seq(42),
            }),
        ),
        (
            "client_typing",
            ClientFrame::Typing(ClientTyping {
                conversation_id: id(CONVERSATION),
                state: TypingState::Started,
            }),
        ),
        (
            "client_presence_watch",
            ClientFrame::PresenceWatch(PresenceWatch {
                user_ids: vec![id(BOB), id(ALICE)],
            }),
        ),
        (
            "client_refresh_auth",
            ClientFrame::RefreshAuth(RefreshAuth {
                access_token: "eyJhbGciOiJFZERTQSJ9.e30.bmV3".into(),
            }),
        ),
        ("client_ping", ClientFrame::Ping(Ping { nonce: 7 })),
    ]
}

/// One sample of every server frame kind, with its vector name.
pub fn server_frames() -> Vec<(&'static str, ServerFrame)> {
    vec![
        (
            "server_welcome",
            ServerFrame::Welcome(Welcome {
                session_id: id(SESSION),
                user_id: id(ALICE),
                protocol_version: PROTOCOL_VERSION,
                server_time: ts(),
                token_expires_at: Timestamp::from_unix_millis(ts().unix_millis() + 15 * 60 * 1000)
                    .unwrap(),
                limits: Limits {
                    max_frame_size: 65_536,
                    send_rate_per_sec: 20,
                    send_burst: 40,
                    idle_timeout_ms: 45_000,
                },
            }),
        ),
        ("server_message", ServerFrame::Message(message())),
        (
            "server_message_media",
            ServerFrame::Message(media_message()),
        ),
        (
            "server_sent",
            ServerFrame::Sent(Sent {
                client_msg_id: id(CLIENT_MSG),
                message_id: id(MESSAGE),
                conversation_id: id(CONVERSATION),
                seq: seq(42),
                timestamp: ts(),
            }),
        ),
        (
            "server_status",
            ServerFrame::Status(Status {
                conversation_id: id(CONVERSATION),
                user_id: id(BOB),
                delivered: Some(seq(42)),
                read: Some(seq(40)),
            }),
        ),
        (
            "server_typing",
            ServerFrame::Typing(Typing {
                conversation_id: id(CONVERSATION),
                user_id: id(BOB),
                state: TypingState::Stopped,
            }),
        ),
        (
            "server_presence",
            ServerFrame::Presence(Presence {
                user_id: id(BOB),
                online: false,
                last_seen: Some(ts()),
            }),
        ),
        (
            "server_error",
            ServerFrame::Error(ErrorFrame {
                code: ErrorCode::RateLimited,
                message: "send rate above 20/s".into(),
                client_msg_id: Some(id(CLIENT_MSG)),
            }),
        ),
        (
            "server_error_blocked",
            ServerFrame::Error(ErrorFrame {
                code: ErrorCode::Blocked,
                message: "the recipient does not accept messages from you".into(),
                client_msg_id: Some(id(CLIENT_MSG)),
            }),
        ),
        (
            "server_error_media_refused",
            ServerFrame::Error(ErrorFrame {
                code: ErrorCode::MediaRefused,
                message: "media 01920000-0000-7000-8000-000000003ed1 is not an image".into(),
                client_msg_id: Some(id(CLIENT_MSG + 1)),
            }),
        ),
        (
            "server_closing",
            ServerFrame::Closing(Closing {
                code: ErrorCode::UnsupportedVersion,
                reason: "protocol version 2 is not supported".into(),
                retry_after_ms: None,
                supported_versions: SUPPORTED_VERSIONS.to_vec(),
            }),
        ),
        (
            "server_closing_draining",
            ServerFrame::Closing(Closing {
                code: ErrorCode::ServerDraining,
                reason: "gateway restarting".into(),
                retry_after_ms: NonZeroU32::new(2_000),
                supported_versions: Vec::new(),
            }),
        ),
        (
            "server_closing_too_many_sessions",
            ServerFrame::Closing(Closing {
                code: ErrorCode::TooManySessions,
                reason: "20 realtime sessions are open for this user; close one".into(),
                retry_after_ms: None,
                supported_versions: Vec::new(),
            }),
        ),
        ("server_pong", ServerFrame::Pong(Pong { nonce: 7 })),
        (
            "server_notification",
            ServerFrame::Notification(Notification {
                id: id(NOTIFICATION),
                kind: NotificationKind::Comment,
                actor_id: id(BOB),
                actor_username: "bora_yılmaz".into(),
                post_id: Some(id(POST)),
                comment_id: Some(id(COMMENT)),
                created_at: ts(),
                unread_count: 3,
            }),
        ),
    ]
}

// ---------------------------------------------------------------- strategies

pub fn any_uuid_id<T: TryFrom<Uuid> + std::fmt::Debug>() -> impl Strategy<Value = T>
where
    T::Error: std::fmt::Debug,
{
    (1..=u128::MAX).prop_map(|n| T::try_from(Uuid::from_u128(n)).unwrap())
}

pub fn any_seq() -> impl Strategy<Value = Seq> {
    prop_oneof![
        Just(Seq::FIRST),
        Just(Seq::MAX),
        (1..=Seq::MAX.get()).prop_map(|n| Seq::new(n).unwrap())
    ]
}

pub fn any_timestamp() -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        Just(Timestamp::MIN),
        Just(Timestamp::MAX),
        (Timestamp::MIN.unix_millis()..=Timestamp::MAX.unix_millis())
            .prop_map(|ms| Timestamp::from_unix_millis(ms).unwrap()),
    ]
}

/// Timestamps that may stand in a field where 0 means "unknown".
pub fn any_nonzero_timestamp() -> impl Strategy<Value = Timestamp> {
    any_timestamp().prop_filter("0 means unknown", |t| t.unix_millis() != 0)
}

pub fn any_kind() -> impl Strategy<Value = MessageKind> {
    prop_oneof![
        Just(MessageKind::Text),
        Just(MessageKind::Image),
        Just(MessageKind::Video),
        Just(MessageKind::Audio),
        Just(MessageKind::File)
    ]
}

pub fn any_status() -> impl Strategy<Value = MessageStatus> {
    prop_oneof![
        Just(MessageStatus::Sent),
        Just(MessageStatus::Delivered),
        Just(MessageStatus::Read)
    ]
}

pub fn any_typing_state() -> impl Strategy<Value = TypingState> {
    prop_oneof![Just(TypingState::Started), Just(TypingState::Stopped)]
}

pub fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        any::<String>(),
        "[a-zA-Z0-9 çğıöşüÇĞİÖŞÜ]{0,200}"
    ]
}

pub fn any_recipient() -> impl Strategy<Value = Recipient> {
    prop_oneof![
        any_uuid_id().prop_map(Recipient::User),
        any_uuid_id().prop_map(Recipient::Group)
    ]
}

pub fn any_media_info() -> impl Strategy<Value = MediaInfo> {
    (
        any_uuid_id(),
        "[ -~]{0,255}",
        any::<u64>(),
        (any::<u32>(), any::<u32>(), any::<u64>()),
        proptest::option::of("[0-9A-Za-z#$%*+,.:;=?@\\[\\]^_{|}~-]{1,100}"),
        proptest::option::of("[^/\\x00]{1,60}"),
    )
        .prop_map(
            |(
                media_id,
                content_type,
                size_bytes,
                (width, height, duration),
                blurhash,
                filename,
            )| {
                MediaInfo {
                    media_id,
                    content_type,
                    size_bytes,
                    width: NonZeroU32::new(width),
                    height: NonZeroU32::new(height),
                    duration_ms: NonZeroU64::new(duration),
                    blurhash,
                    filename,
                }
            },
        )
}

pub fn any_message() -> impl Strategy<Value = Message> {
    (
        any_uuid_id(),
        any_uuid_id(),
        any_uuid_id(),
        any_kind(),
        any_text(),
        any_timestamp(),
        any_status(),
        any_uuid_id(),
        any_seq(),
        proptest::option::of(any_media_info()),
    )
        .prop_map(
            |(
                id,
                sender_id,
                recipient_id,
                kind,
                content,
                timestamp,
                status,
                conversation_id,
                seq,
                media,
            )| Message {
                id,
                sender_id,
                recipient_id,
                kind,
                content,
                timestamp,
                status,
                conversation_id,
                seq,
                media,
            },
        )
}

fn any_code(fatal: bool) -> impl Strategy<Value = ErrorCode> {
    let codes: Vec<ErrorCode> = ErrorCode::ALL
        .into_iter()
        .filter(|c| c.is_fatal() == fatal)
        .collect();
    proptest::sample::select(codes)
}

pub fn any_client_frame() -> impl Strategy<Value = ClientFrame> {
    let hello = (
        "[ -~]{1,80}",
        any::<u32>(),
        any_text(),
        any_text(),
        proptest::collection::btree_map(
            any_uuid_id::<ConversationId>(),
            proptest::option::of(any_seq()),
            0..5,
        ),
        any::<u32>(),
    )
        .prop_map(
            |(
                access_token,
                protocol_version,
                client_name,
                client_version,
                resume,
                max_error_code,
            )| {
                ClientFrame::Hello(Hello {
                    access_token,
                    protocol_version,
                    client_name,
                    client_version,
                    resume: resume
                        .into_iter()
                        .map(|(conversation_id, last_seq)| ResumePosition {
                            conversation_id,
                            last_seq,
                        })
                        .collect(),
                    max_error_code,
                })
            },
        );
    let media = (any_uuid_id(), any_text(), any::<u64>()).prop_map(
        |(media_id, content_type, size_bytes)| MediaRef {
            media_id,
            content_type,
            size_bytes,
        },
    );
    let send = (
        any_uuid_id(),
        any_recipient(),
        any_kind(),
        any_text(),
        proptest::option::of(media),
    )
        .prop_map(|(client_msg_id, recipient, kind, content, media)| {
            ClientFrame::Send(SendMessage {
                client_msg_id,
                recipient,
                kind,
                content,
                media,
            })
        });
    prop_oneof![
        hello,
        send,
        (any_uuid_id(), any_seq()).prop_map(|(conversation_id, seq)| ClientFrame::Ack(Ack {
            conversation_id,
            seq
        })),
        (any_uuid_id(), any_seq()).prop_map(|(conversation_id, seq)| ClientFrame::Read(Read {
            conversation_id,
            seq
        })),
        (any_uuid_id(), any_typing_state()).prop_map(|(conversation_id, state)| {
            ClientFrame::Typing(ClientTyping {
                conversation_id,
                state,
            })
        }),
        proptest::collection::vec(any_uuid_id(), 0..8)
            .prop_map(|user_ids| ClientFrame::PresenceWatch(PresenceWatch { user_ids })),
        "[ -~]{1,80}"
            .prop_map(|access_token| ClientFrame::RefreshAuth(RefreshAuth { access_token })),
        any::<u32>().prop_map(|nonce| ClientFrame::Ping(Ping { nonce })),
    ]
}

pub fn any_server_frame() -> impl Strategy<Value = ServerFrame> {
    let welcome = (
        any_uuid_id(),
        any_uuid_id(),
        any::<u32>(),
        any_timestamp(),
        any_timestamp(),
        (1..=u32::MAX, any::<u32>(), any::<u32>(), any::<u32>()),
    )
        .prop_map(
            |(
                session_id,
                user_id,
                protocol_version,
                server_time,
                token_expires_at,
                (max, rate, burst, idle),
            )| {
                ServerFrame::Welcome(Welcome {
                    session_id,
                    user_id,
                    protocol_version,
                    server_time,
                    token_expires_at,
                    limits: Limits {
                        max_frame_size: max,
                        send_rate_per_sec: rate,
                        send_burst: burst,
                        idle_timeout_ms: idle,
                    },
                })
            },
        );
    let sent = (
        any_uuid_id(),
        any_uuid_id(),
        any_uuid_id(),
        any_seq(),
        any_timestamp(),
    )
        .prop_map(
            |(client_msg_id, message_id, conversation_id, seq, timestamp)| {
                ServerFrame::Sent(Sent {
                    client_msg_id,
                    message_id,
                    conversation_id,
                    seq,
                    timestamp,
                })
            },
        );
    let status = (
        any_uuid_id(),
        any_uuid_id(),
        proptest::option::of(any_seq()),
        any::<u64>(),
    )
        .prop_map(|(conversation_id, user_id, delivered, read_pick)| {
            // read <= delivered: pick read inside 0..=delivered.
            let read = delivered.and_then(|d| Seq::new(read_pick % (d.get() + 1)));
            ServerFrame::Status(Status {
                conversation_id,
                user_id,
                delivered,
                read,
            })
        });
    prop_oneof![
        welcome,
        any_message().prop_map(ServerFrame::Message),
        sent,
        status,
        (any_uuid_id(), any_uuid_id(), any_typing_state()).prop_map(
            |(conversation_id, user_id, state)| ServerFrame::Typing(Typing {
                conversation_id,
                user_id,
                state
            })
        ),
        (
            any_uuid_id(),
            any::<bool>(),
            proptest::option::of(any_nonzero_timestamp())
        )
            .prop_map(
                |(user_id, online, last_seen)| ServerFrame::Presence(Presence {
                    user_id,
                    online,
                    last_seen
                })
            ),
        (
            any_code(false),
            any_text(),
            proptest::option::of(any_uuid_id())
        )
            .prop_map(
                |(code, message, client_msg_id)| ServerFrame::Error(ErrorFrame {
                    code,
                    message,
                    client_msg_id
                })
            ),
        (
            any_code(true),
            any_text(),
            any::<u32>(),
            proptest::collection::vec(any::<u32>(), 0..4)
        )
            .prop_map(
                |(code, reason, retry, supported_versions)| ServerFrame::Closing(Closing {
                    code,
                    reason,
                    retry_after_ms: NonZeroU32::new(retry),
                    supported_versions
                })
            ),
        any::<u32>().prop_map(|nonce| ServerFrame::Pong(Pong { nonce })),
        (
            (any_uuid_id(), any_notification_kind(), any_uuid_id()),
            "[a-z0-9_]{1,30}",
            proptest::option::of(any_uuid_id()),
            proptest::option::of(any_uuid_id()),
            any_timestamp(),
            any::<u32>(),
        )
            .prop_map(
                |(
                    (id, kind, actor_id),
                    actor_username,
                    post_id,
                    comment_id,
                    created_at,
                    unread_count,
                )| {
                    ServerFrame::Notification(Notification {
                        id,
                        kind,
                        actor_id,
                        actor_username,
                        post_id,
                        comment_id,
                        created_at,
                        unread_count,
                    })
                }
            ),
    ]
}

pub fn any_notification_kind() -> impl Strategy<Value = NotificationKind> {
    proptest::sample::select(NotificationKind::ALL.to_vec())
}
