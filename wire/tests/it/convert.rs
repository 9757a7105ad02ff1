//! proto → domain rejections (table-driven), the JSON forms, and the value types.

use bytes::Bytes;
use haberci_wire::proto::{client_frame::Frame as CF, server_frame::Frame as SF};
use haberci_wire::*;
use uuid::Uuid;

use crate::fixtures::{self, id};

fn client_proto(name: &str) -> proto::ClientFrame {
    let (_, frame) = fixtures::client_frames()
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap();
    frame.into()
}

fn server_proto(name: &str) -> proto::ServerFrame {
    let (_, frame) = fixtures::server_frames()
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap();
    frame.into()
}

macro_rules! edit {
    ($proto:expr, $case:path, |$inner:ident| $body:block) => {{
        let mut p = $proto;
        match p.frame.as_mut() {
            Some($case($inner)) => $body,
            other => panic!("unexpected {other:?}"),
        }
        p
    }};
}

const NIL: Bytes = Bytes::from_static(&[0; 16]);
const SHORT: Bytes = Bytes::from_static(&[1; 15]);

/// Every invalid client frame: (case, frame, field, problem).
fn invalid_client_frames() -> Vec<(&'static str, proto::ClientFrame, &'static str, Problem)> {
    vec![
        (
            "hello empty token",
            edit!(client_proto("client_hello"), CF::Hello, |h| {
                h.access_token.clear()
            }),
            "Hello.access_token",
            Problem::Empty,
        ),
        (
            "hello duplicate resume",
            edit!(client_proto("client_hello"), CF::Hello, |h| {
                h.resume.push(h.resume[0].clone())
            }),
            "ResumePosition.conversation_id",
            Problem::DuplicateConversation,
        ),
        (
            "hello resume seq above 2^53-1",
            edit!(client_proto("client_hello"), CF::Hello, |h| {
                h.resume[0].last_seq = 1 << 53
            }),
            "ResumePosition.last_seq",
            Problem::SeqOutOfRange(1 << 53),
        ),
        (
            "send nil client_msg_id",
            edit!(client_proto("client_send"), CF::Send, |s| {
                s.client_msg_id = NIL
            }),
            "Send.client_msg_id",
            Problem::NilId,
        ),
        (
            "send short client_msg_id",
            edit!(client_proto("client_send"), CF::Send, |s| {
                s.client_msg_id = SHORT
            }),
            "Send.client_msg_id",
            Problem::WrongLength {
                expected: 16,
                actual: 15,
            },
        ),
        (
            "send without recipient",
            edit!(client_proto("client_send"), CF::Send, |s| {
                s.recipient = None
            }),
            "Send.recipient",
            Problem::Missing,
        ),
        (
            "send recipient without case",
            edit!(client_proto("client_send"), CF::Send, |s| {
                s.recipient = Some(proto::Recipient { kind: None })
            }),
            "Recipient.kind",
            Problem::Missing,
        ),
        (
            "send nil group",
            edit!(client_proto("client_send"), CF::Send, |s| {
                s.recipient = Some(proto::Recipient {
                    kind: Some(proto::recipient::Kind::GroupId(NIL)),
                })
            }),
            "Recipient.group_id",
            Problem::NilId,
        ),
        (
            "send unspecified type",
            edit!(client_proto("client_send"), CF::Send, |s| { s.r#type = 0 }),
            "Send.type",
            Problem::Missing,
        ),
        (
            "send unknown type",
            edit!(client_proto("client_send"), CF::Send, |s| { s.r#type = 6 }),
            "Send.type",
            Problem::UnknownEnumValue(6),
        ),
        (
            "send media without id",
            edit!(client_proto("client_send_group_image"), CF::Send, |s| {
                s.media.as_mut().unwrap().media_id = Bytes::new()
            }),
            "MediaRef.media_id",
            Problem::WrongLength {
                expected: 16,
                actual: 0,
            },
        ),
        (
            "ack seq 0",
            edit!(client_proto("client_ack"), CF::Ack, |a| { a.seq = 0 }),
            "Ack.seq",
            Problem::SeqOutOfRange(0),
        ),
        (
            "ack nil conversation",
            edit!(client_proto("client_ack"), CF::Ack, |a| {
                a.conversation_id = NIL
            }),
            "Ack.conversation_id",
            Problem::NilId,
        ),
        (
            "read seq 0",
            edit!(client_proto("client_read"), CF::Read, |r| { r.seq = 0 }),
            "Read.seq",
            Problem::SeqOutOfRange(0),
        ),
        (
            "typing unspecified",
            edit!(client_proto("client_typing"), CF::Typing, |t| {
                t.state = 0
            }),
            "ClientTyping.state",
            Problem::Missing,
        ),
        (
            "presence watch long id",
            edit!(
                client_proto("client_presence_watch"),
                CF::PresenceWatch,
                |w| { w.user_ids.push(Bytes::from_static(&[7; 17])) }
            ),
            "PresenceWatch.user_ids",
            Problem::WrongLength {
                expected: 16,
                actual: 17,
            },
        ),
        (
            "refresh empty token",
            edit!(client_proto("client_refresh_auth"), CF::RefreshAuth, |r| {
                r.access_token.clear()
            }),
            "RefreshAuth.access_token",
            Problem::Empty,
        ),
    ]
}

fn invalid_server_frames() -> Vec<(&'static str, proto::ServerFrame, &'static str, Problem)> {
    vec![
        (
            "welcome without limits",
            edit!(server_proto("server_welcome"), SF::Welcome, |w| {
                w.limits = None
            }),
            "Welcome.limits",
            Problem::Missing,
        ),
        (
            "welcome max frame 0",
            edit!(server_proto("server_welcome"), SF::Welcome, |w| {
                w.limits.as_mut().unwrap().max_frame_size = 0
            }),
            "Limits.max_frame_size",
            Problem::Zero,
        ),
        (
            "welcome time out of range",
            edit!(server_proto("server_welcome"), SF::Welcome, |w| {
                w.server_time = i64::MAX
            }),
            "Welcome.server_time",
            Problem::TimestampOutOfRange(i64::MAX),
        ),
        (
            "message nil id",
            edit!(server_proto("server_message"), SF::Message, |m| {
                m.id = NIL
            }),
            "Message.id",
            Problem::NilId,
        ),
        (
            "message seq 0",
            edit!(server_proto("server_message"), SF::Message, |m| {
                m.seq = 0
            }),
            "Message.seq",
            Problem::SeqOutOfRange(0),
        ),
        (
            "message unknown status",
            edit!(server_proto("server_message"), SF::Message, |m| {
                m.status = 9
            }),
            "Message.status",
            Problem::UnknownEnumValue(9),
        ),
        (
            "message year 10000",
            edit!(server_proto("server_message"), SF::Message, |m| {
                m.timestamp = Timestamp::MAX.unix_millis() + 1
            }),
            "Message.timestamp",
            Problem::TimestampOutOfRange(Timestamp::MAX.unix_millis() + 1),
        ),
        (
            "media nil id",
            edit!(server_proto("server_message_media"), SF::Message, |m| {
                m.media.as_mut().unwrap().media_id = NIL
            }),
            "MediaInfo.media_id",
            Problem::NilId,
        ),
        (
            "media without id",
            edit!(server_proto("server_message_media"), SF::Message, |m| {
                m.media.as_mut().unwrap().media_id = Bytes::new()
            }),
            "MediaInfo.media_id",
            Problem::WrongLength {
                expected: 16,
                actual: 0,
            },
        ),
        (
            "media content type of 256 bytes",
            edit!(server_proto("server_message_media"), SF::Message, |m| {
                m.media.as_mut().unwrap().content_type = format!("image/{}", "x".repeat(250))
            }),
            "MediaInfo.content_type",
            Problem::TooLong {
                max: 255,
                actual: 256,
                unit: "bytes",
            },
        ),
        (
            "media blurhash of 101 characters",
            edit!(server_proto("server_message_media"), SF::Message, |m| {
                m.media.as_mut().unwrap().blurhash = "L".repeat(101)
            }),
            "MediaInfo.blurhash",
            Problem::TooLong {
                max: 100,
                actual: 101,
                unit: "characters",
            },
        ),
        (
            // 128 two-byte letters: 128 characters but 256 bytes.
            "media filename of 256 bytes",
            edit!(server_proto("server_message_media"), SF::Message, |m| {
                m.media.as_mut().unwrap().filename = "ü".repeat(128)
            }),
            "MediaInfo.filename",
            Problem::TooLong {
                max: 255,
                actual: 256,
                unit: "bytes",
            },
        ),
        (
            "sent seq 0",
            edit!(server_proto("server_sent"), SF::Sent, |s| { s.seq = 0 }),
            "Sent.seq",
            Problem::SeqOutOfRange(0),
        ),
        (
            "status read above delivered",
            edit!(server_proto("server_status"), SF::Status, |s| {
                s.read_seq = s.delivered_seq + 1
            }),
            "Status.read_seq",
            Problem::ReadAboveDelivered,
        ),
        (
            "status read without delivered",
            edit!(server_proto("server_status"), SF::Status, |s| {
                s.delivered_seq = 0
            }),
            "Status.read_seq",
            Problem::ReadAboveDelivered,
        ),
        (
            "presence short id",
            edit!(server_proto("server_presence"), SF::Presence, |p| {
                p.user_id = SHORT
            }),
            "Presence.user_id",
            Problem::WrongLength {
                expected: 16,
                actual: 15,
            },
        ),
        (
            "error unknown code",
            edit!(server_proto("server_error"), SF::Error, |e| {
                e.code = 999
            }),
            "Error.code",
            Problem::UnknownEnumValue(999),
        ),
        (
            "error with a fatal code",
            edit!(server_proto("server_error"), SF::Error, |e| {
                e.code = ErrorCode::Internal.protocol_code()
            }),
            "Error.code",
            Problem::WrongFrameForCode(ErrorCode::Internal),
        ),
        (
            "closing with a non-fatal code",
            edit!(server_proto("server_closing"), SF::Closing, |c| {
                c.code = ErrorCode::RateLimited.protocol_code()
            }),
            "Closing.code",
            Problem::WrongFrameForCode(ErrorCode::RateLimited),
        ),
        (
            "error nil client_msg_id",
            edit!(server_proto("server_error"), SF::Error, |e| {
                e.client_msg_id = NIL
            }),
            "Error.client_msg_id",
            Problem::NilId,
        ),
    ]
}

#[test]
fn invalid_client_frames_are_rejected_with_the_field() {
    for (case, frame, field, problem) in invalid_client_frames() {
        let err = ClientFrame::try_from(frame).unwrap_err();
        let invalid = err
            .invalid_field()
            .unwrap_or_else(|| panic!("{case}: {err:?}"));
        assert_eq!(
            (invalid.field, &invalid.problem),
            (field, &problem),
            "{case}"
        );
        // Before Welcome nothing can be answered with Error: an invalid Hello closes.
        let expected = match (case.starts_with("hello"), field) {
            (true, "Hello.access_token") => ErrorCode::Unauthenticated,
            (true, _) => ErrorCode::BadFrame,
            (false, _) => ErrorCode::InvalidField,
        };
        assert_eq!(err.code(), expected, "{case}");
        assert!(err.to_string().contains(field), "{case}: {err}");
    }
}

#[test]
fn invalid_server_frames_are_rejected_with_the_field() {
    for (case, frame, field, problem) in invalid_server_frames() {
        let err = ServerFrame::try_from(frame).unwrap_err();
        let WireError::Invalid(invalid) = &err else {
            panic!("{case}: {err:?}")
        };
        assert_eq!(
            (invalid.field, &invalid.problem),
            (field, &problem),
            "{case}"
        );
        assert_eq!(err.code(), ErrorCode::InvalidField, "{case}");
    }
}

#[test]
fn an_invalid_send_names_its_client_msg_id() {
    let frame = edit!(client_proto("client_send"), CF::Send, |s| { s.r#type = 42 });
    let err = ClientFrame::try_from(frame).unwrap_err();
    assert_eq!(err.client_msg_id(), Some(id(fixtures::CLIENT_MSG)));
    // Not when the id itself is the problem.
    let frame = edit!(client_proto("client_send"), CF::Send, |s| {
        s.client_msg_id = NIL
    });
    assert_eq!(
        ClientFrame::try_from(frame).unwrap_err().client_msg_id(),
        None
    );
}

#[test]
fn missing_oneof_is_an_unknown_frame_kind() {
    assert_eq!(
        ClientFrame::try_from(proto::ClientFrame { frame: None }),
        Err(WireError::UnknownFrameKind)
    );
    assert_eq!(
        ServerFrame::try_from(proto::ServerFrame { frame: None }),
        Err(WireError::UnknownFrameKind)
    );
}

#[test]
fn message_json_is_the_http_api_form() {
    let json = serde_json::to_string(&fixtures::message()).unwrap();
    assert_eq!(
        json,
        r#"{"id":"01920000-0000-7000-8000-000000000e55","senderId":"01920000-0000-7000-8000-00000000a11c","recipientId":"01920000-0000-7000-8000-000000000b0b","type":"text","content":"Merhaba Bob! 👋","timestamp":"2026-11-25T10:00:00.000Z","status":"sent","conversationId":"01920000-0000-7000-8000-00000000c0de","seq":42}"#
    );
    assert_eq!(
        serde_json::from_str::<Message>(&json).unwrap(),
        fixtures::message()
    );
}

#[test]
fn media_at_its_limits_and_unknown_values_decode() {
    let frame = edit!(server_proto("server_message_media"), SF::Message, |m| {
        let media = m.media.as_mut().unwrap();
        media.content_type = "x".repeat(MAX_MEDIA_CONTENT_TYPE_BYTES);
        // 100 characters of 2 bytes each: the limit counts characters, not bytes.
        media.blurhash = "ü".repeat(MAX_MEDIA_BLURHASH_CHARS);
        media.filename = "y".repeat(MAX_MEDIA_FILENAME_BYTES);
    });
    let ServerFrame::Message(message) = ServerFrame::try_from(frame).unwrap() else {
        panic!("not a message")
    };
    let media = message.media.unwrap();
    assert_eq!(media.blurhash.unwrap().chars().count(), 100);
    assert_eq!(media.filename.unwrap().len(), 255);
    // 0 and "" read as unknown / none.
    let frame = edit!(server_proto("server_message_media"), SF::Message, |m| {
        let media = m.media.as_mut().unwrap();
        media.content_type.clear();
        media.size_bytes = 0;
        media.width = 0;
        media.height = 0;
        media.duration_ms = 0;
        media.blurhash.clear();
        media.filename.clear();
    });
    let ServerFrame::Message(message) = ServerFrame::try_from(frame).unwrap() else {
        panic!("not a message")
    };
    assert_eq!(
        message.media,
        Some(MediaInfo {
            media_id: id(fixtures::MEDIA),
            content_type: String::new(),
            size_bytes: 0,
            width: None,
            height: None,
            duration_ms: None,
            blurhash: None,
            filename: None,
        })
    );
}

#[test]
fn media_json_form() {
    let json = serde_json::to_value(fixtures::media_message()).unwrap();
    assert_eq!(
        json["media"],
        serde_json::json!({
            "mediaId": "01920000-0000-7000-8000-000000003ed1",
            "contentType": "image/gif",
            "sizeBytes": 2_457_600,
            "width": 1280,
            "height": 720,
            "durationMs": 2_400,
            "blurhash": "LEHV6nWB2yk8pyo0adR*.7kCMdnj",
            "filename": "gün batımı.gif",
        })
    );
    assert_eq!(
        serde_json::from_value::<Message>(json).unwrap(),
        fixtures::media_message()
    );
    // A text message has no "media" key (the HTTP message object is unchanged), and one
    // without the key reads back as text.
    let text = serde_json::to_value(fixtures::message()).unwrap();
    assert!(text.get("media").is_none());
    let mut with_null = text.clone();
    with_null["media"] = serde_json::Value::Null;
    assert_eq!(
        serde_json::from_value::<Message>(with_null).unwrap(),
        fixtures::message()
    );
}

#[test]
fn message_json_rejects_invalid_values() {
    let good = serde_json::to_value(fixtures::message()).unwrap();
    let cases = [
        (
            "id",
            serde_json::json!("00000000-0000-0000-0000-000000000000"),
        ),
        ("id", serde_json::json!("not-a-uuid")),
        ("seq", serde_json::json!(0)),
        ("seq", serde_json::json!(9_007_199_254_740_992u64)),
        ("type", serde_json::json!("sticker")),
        ("status", serde_json::json!("lost")),
        ("timestamp", serde_json::json!("2026-11-25T10:00:00.0001Z")),
        ("timestamp", serde_json::json!("2026-11-25 10:00")),
    ];
    for (key, value) in cases {
        let mut bad = good.clone();
        bad[key] = value.clone();
        assert!(
            serde_json::from_value::<Message>(bad).is_err(),
            "{key} = {value}"
        );
    }
}

#[test]
fn timestamps() {
    assert_eq!(
        Timestamp::UNIX_EPOCH.to_string(),
        "1970-01-01T00:00:00.000Z"
    );
    assert_eq!(Timestamp::MIN.to_string(), "0000-01-01T00:00:00.000Z");
    assert_eq!(Timestamp::MAX.to_string(), "9999-12-31T23:59:59.999Z");
    assert_eq!(
        Timestamp::from_unix_millis(-1).unwrap().to_string(),
        "1969-12-31T23:59:59.999Z"
    );
    assert_eq!(
        Timestamp::from_unix_millis(Timestamp::MIN.unix_millis() - 1),
        None
    );
    assert_eq!(
        Timestamp::from_unix_millis(Timestamp::MAX.unix_millis() + 1),
        None
    );
    // Offsets are normalised to UTC; no fraction is whole milliseconds.
    assert_eq!(
        Timestamp::parse_rfc3339("2026-11-25T13:00:00+03:00").unwrap(),
        fixtures::ts()
    );
    assert_eq!(fixtures::ts().unix_millis(), 1_795_600_800_000);
    assert!(Timestamp::parse_rfc3339("2026-11-25T10:00:00.123456Z").is_err());
    assert!(Timestamp::parse_rfc3339("0000-01-01T00:00:00+00:01").is_err());
    // Sub-millisecond precision from a database is dropped toward the past.
    let dt = time::macros::datetime!(1969-12-31 23:59:59.9995 UTC);
    assert_eq!(
        Timestamp::from_datetime(dt).unwrap().to_string(),
        "1969-12-31T23:59:59.999Z"
    );
}

#[test]
fn seqs() {
    assert_eq!(Seq::new(0), None);
    assert_eq!(Seq::new(1), Some(Seq::FIRST));
    assert_eq!(Seq::MAX.get(), 9_007_199_254_740_991);
    assert_eq!(Seq::new(Seq::MAX.get() + 1), None);
    assert_eq!(Seq::MAX.next(), None);
    assert_eq!(Seq::FIRST.next().unwrap().get(), 2);
}

#[test]
fn ids() {
    assert_eq!(UserId::new(Uuid::nil()), None);
    assert!(
        "00000000-0000-0000-0000-000000000000"
            .parse::<UserId>()
            .is_err()
    );
    assert!("nope".parse::<UserId>().is_err());
    let user: UserId = id(fixtures::ALICE);
    assert_eq!(user.to_string().parse::<UserId>().unwrap(), user);
    assert_eq!(
        format!("{user:?}"),
        "UserId(01920000-0000-7000-8000-00000000a11c)"
    );
    assert_eq!(UserId::from_wire("f", &user.as_bytes()[..]).unwrap(), user);
    assert_eq!(
        UserId::from_wire("f", &[0; 16]).unwrap_err().problem,
        Problem::NilId
    );
    assert_eq!(RecipientId::from(user).as_uuid(), user.as_uuid());
    assert_eq!(
        Recipient::Group(id(fixtures::GROUP)).id().as_uuid(),
        Uuid::from_u128(fixtures::GROUP)
    );
}

#[test]
fn debug_output_never_shows_tokens() {
    for (name, frame) in fixtures::client_frames() {
        let debug = format!("{frame:?}");
        assert!(!debug.contains("eyJ"), "{name}: {debug}");
    }
    let hello = &fixtures::client_frames()[0].1;
    assert!(format!("{hello:?}").contains("<redacted, 29 bytes>"));
}

/// A frame's `kind()` (also a metric label) is its JSON `kind`, for every frame of either side.
#[test]
fn frame_names_are_their_json_kinds() {
    let mut seen = std::collections::BTreeSet::new();
    for (_, frame) in crate::fixtures::client_frames() {
        let json = serde_json::to_value(&frame).expect("client frame to JSON");
        assert_eq!(json["kind"], frame.kind(), "{frame:?}");
        seen.insert(frame.kind());
    }
    for (_, frame) in crate::fixtures::server_frames() {
        let json = serde_json::to_value(&frame).expect("server frame to JSON");
        assert_eq!(json["kind"], frame.kind(), "{frame:?}");
        seen.insert(frame.kind());
    }
    // Every kind of both enums appears in the fixtures (8 client, 10 server; typing is both).
    assert_eq!(seen.len(), 8 + 10 - 1, "{seen:?}");
}
