//! Golden vectors: `wire/tests/vectors/<name>.bin` + `<name>.json`.
//!
//! The `.bin` holds the exact bytes on the transport the `.json` names; the `.json` says
//! what they decode to (the frame's JSON form), or which error they must raise. The format
//! is described in `wire/tests/vectors/README.md` and docs/PROTOCOL.md; the browser SDK and
//! third-party clients check themselves against the same files.
//!
//! The check fails on any drift between these definitions and the committed files.
//! Regenerate after a deliberate change with:
//! `HABERCI_REGEN_VECTORS=1 cargo test -p haberci-wire --test it vectors`

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use haberci_wire::proto::{client_frame::Frame as CF, server_frame::Frame as SF};
use haberci_wire::*;
use prost::Message as _;
use serde::{Deserialize, Serialize};

use crate::fixtures::{self, id};

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Direction {
    Client,
    Server,
}

/// How the `.bin` travels.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Transport {
    /// QUIC / WebTransport stream: varint length-delimited frames.
    Stream,
    /// One WebSocket binary message (no prefix).
    Websocket,
    /// One WebSocket text message.
    WebsocketText,
    /// One QUIC / WebTransport datagram (no prefix).
    Datagram,
}

#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExpectedError {
    code: ErrorCode,
    protocol_code: u32,
    fatal: bool,
    /// For `invalid_field`: the proto field at fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    field: Option<String>,
    /// For an invalid `Send`: the `client_msg_id` the `Error` frame names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_msg_id: Option<ClientMsgId>,
}

#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VectorFile<F> {
    description: String,
    direction: Direction,
    transport: Transport,
    max_frame_size: usize,
    #[serde(default = "Option::default", skip_serializing_if = "Option::is_none")]
    frame: Option<F>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<ExpectedError>,
    /// The `.bin`, in lowercase hex, for reading along.
    hex: String,
}

#[derive(Deserialize)]
struct Header {
    direction: Direction,
}

struct Malformed {
    name: &'static str,
    description: &'static str,
    direction: Direction,
    transport: Transport,
    max_frame_size: usize,
    bytes: Vec<u8>,
    code: ErrorCode,
    field: Option<&'static str>,
    client_msg_id: Option<ClientMsgId>,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn delimited(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_varint(body.len() as u64, &mut out);
    out.extend_from_slice(body);
    out
}

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

fn client_stream(mut frame: proto::ClientFrame, edit: impl FnOnce(&mut CF)) -> Vec<u8> {
    edit(frame.frame.as_mut().unwrap());
    frame.encode_length_delimited_to_vec()
}

fn server_stream(mut frame: proto::ServerFrame, edit: impl FnOnce(&mut SF)) -> Vec<u8> {
    edit(frame.frame.as_mut().unwrap());
    frame.encode_length_delimited_to_vec()
}

fn malformed() -> Vec<Malformed> {
    use Direction::*;
    use ErrorCode as C;
    use Transport::*;
    let m = |name, description, direction, transport, bytes, code| Malformed {
        name,
        description,
        direction,
        transport,
        max_frame_size: DEFAULT_MAX_FRAME_SIZE,
        bytes,
        code,
        field: None,
        client_msg_id: None,
    };
    let invalid = |name, description, direction, bytes, field| Malformed {
        field: Some(field),
        ..m(name, description, direction, Stream, bytes, C::InvalidField)
    };
    let ping = client_proto("client_ping").encode_length_delimited_to_vec();
    vec![
        m(
            "malformed_length_too_long",
            "Length prefix of 11 continuation bytes: longer than any varint.",
            Client,
            Stream,
            vec![0x80; 11],
            C::BadFrame,
        ),
        m(
            "malformed_length_overflow",
            "10-byte length prefix whose last byte overflows 64 bits.",
            Client,
            Stream,
            vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
            C::BadFrame,
        ),
        m(
            "malformed_frame_too_large",
            "Declares 65,537 bytes (limit 65,536) and sends no body: refused from the prefix alone.",
            Client,
            Stream,
            vec![0x81, 0x80, 0x04],
            C::FrameTooLarge,
        ),
        m(
            "malformed_empty_frame",
            "A zero-length frame.",
            Client,
            Stream,
            vec![0x00],
            C::BadFrame,
        ),
        m(
            "malformed_truncated",
            "client_ping with its last byte missing; the stream ends.",
            Client,
            Stream,
            ping[..ping.len() - 1].to_vec(),
            C::BadFrame,
        ),
        m(
            "malformed_not_protobuf",
            "A 2-byte body that is not protobuf.",
            Client,
            Stream,
            vec![0x02, 0xff, 0xff],
            C::BadFrame,
        ),
        m(
            "malformed_unknown_frame_kind",
            "A ClientFrame whose only field is number 99 (a frame kind from a newer client): answered with Error, not a disconnect.",
            Client,
            Stream,
            delimited(&[0x98, 0x06, 0x01]),
            C::UnknownFrameKind,
        ),
        invalid(
            "malformed_ack_seq_zero",
            "Ack with seq 0.",
            Client,
            client_stream(client_proto("client_ack"), |f| {
                if let CF::Ack(a) = f {
                    a.seq = 0;
                }
            }),
            "Ack.seq",
        ),
        invalid(
            "malformed_ack_nil_conversation",
            "Ack whose conversation_id is the nil UUID.",
            Client,
            client_stream(client_proto("client_ack"), |f| {
                if let CF::Ack(a) = f {
                    a.conversation_id = Bytes::from_static(&[0; 16]);
                }
            }),
            "Ack.conversation_id",
        ),
        invalid(
            "malformed_ack_uuid_as_string",
            "Ack whose conversation_id is the 36-character UUID string instead of 16 bytes.",
            Client,
            client_stream(client_proto("client_ack"), |f| {
                if let CF::Ack(a) = f {
                    a.conversation_id =
                        Bytes::from(id::<ConversationId>(fixtures::CONVERSATION).to_string());
                }
            }),
            "Ack.conversation_id",
        ),
        Malformed {
            client_msg_id: Some(id(fixtures::CLIENT_MSG)),
            ..invalid(
                "malformed_send_unknown_type",
                "Send with message type 6, unknown to this version: the Error names the client_msg_id.",
                Client,
                client_stream(client_proto("client_send"), |f| {
                    if let CF::Send(s) = f {
                        s.r#type = 6;
                    }
                }),
                "Send.type",
            )
        },
        Malformed {
            client_msg_id: Some(id(fixtures::CLIENT_MSG)),
            ..invalid(
                "malformed_send_missing_recipient",
                "Send without a recipient.",
                Client,
                client_stream(client_proto("client_send"), |f| {
                    if let CF::Send(s) = f {
                        s.recipient = None;
                    }
                }),
                "Send.recipient",
            )
        },
        Malformed {
            field: Some("Hello.access_token"),
            ..m(
                "malformed_hello_empty_token",
                "Hello without an access token: before Welcome every refusal closes.",
                Client,
                Stream,
                client_stream(client_proto("client_hello"), |f| {
                    if let CF::Hello(h) = f {
                        h.access_token.clear();
                    }
                }),
                C::Unauthenticated,
            )
        },
        Malformed {
            field: Some("ResumePosition.conversation_id"),
            ..m(
                "malformed_hello_duplicate_resume",
                "Hello listing one conversation twice in resume: before Welcome every refusal closes.",
                Client,
                Stream,
                client_stream(client_proto("client_hello"), |f| {
                    if let CF::Hello(h) = f {
                        h.resume.push(h.resume[0].clone());
                    }
                }),
                C::BadFrame,
            )
        },
        invalid(
            "malformed_server_message_seq_zero",
            "Message with seq 0.",
            Server,
            server_stream(server_proto("server_message"), |f| {
                if let SF::Message(m) = f {
                    m.seq = 0;
                }
            }),
            "Message.seq",
        ),
        invalid(
            "malformed_server_message_media_blurhash_too_long",
            "Message whose MediaInfo.blurhash has 101 characters (at most 100).",
            Server,
            server_stream(server_proto("server_message_media"), |f| {
                if let SF::Message(m) = f {
                    m.media.as_mut().unwrap().blurhash = "L".repeat(101);
                }
            }),
            "MediaInfo.blurhash",
        ),
        invalid(
            "malformed_server_status_read_above_delivered",
            "Status whose read_seq is above its delivered_seq.",
            Server,
            server_stream(server_proto("server_status"), |f| {
                if let SF::Status(s) = f {
                    s.read_seq = s.delivered_seq + 1;
                }
            }),
            "Status.read_seq",
        ),
        invalid(
            "malformed_server_error_fatal_code",
            "Error carrying a fatal code (internal), which belongs in Closing.",
            Server,
            server_stream(server_proto("server_error"), |f| {
                if let SF::Error(e) = f {
                    e.code = ErrorCode::Internal.protocol_code();
                }
            }),
            "Error.code",
        ),
        m(
            "malformed_datagram_send",
            "A Send as a datagram: only typing (and, from the server, presence) may travel as datagrams.",
            Client,
            Datagram,
            client_proto("client_send").encode_to_vec(),
            C::BadFrame,
        ),
        m(
            "malformed_websocket_text",
            "A WebSocket text message (here: JSON): frames travel as binary messages.",
            Client,
            WebsocketText,
            br#"{"kind":"ping","nonce":7}"#.to_vec(),
            C::TextMessageRefused,
        ),
    ]
}

/// Decodes a vector's bytes as its transport carries them.
fn decode_as<F: Frame>(
    transport: Transport,
    bytes: &[u8],
    max: usize,
) -> Result<Vec<F>, WireError> {
    let bytes = Bytes::copy_from_slice(bytes);
    match transport {
        Transport::Stream => decode_stream(bytes, max),
        Transport::Websocket => {
            websocket::decode(websocket::MessageType::Binary, bytes, max).map(|f| vec![f])
        }
        Transport::WebsocketText => {
            websocket::decode(websocket::MessageType::Text, bytes, max).map(|f| vec![f])
        }
        Transport::Datagram => datagram::decode(bytes, max).map(|f| vec![f]),
    }
}

fn decode_error(m: &Malformed) -> WireError {
    let result = match m.direction {
        Direction::Client => {
            decode_as::<ClientFrame>(m.transport, &m.bytes, m.max_frame_size).map(drop)
        }
        Direction::Server => {
            decode_as::<ServerFrame>(m.transport, &m.bytes, m.max_frame_size).map(drop)
        }
    };
    result.expect_err(m.name)
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap() + "\n"
}

/// Every vector: name → (.bin, .json), generated from the definitions above.
fn expected_files() -> Vec<(String, Vec<u8>, String)> {
    let mut files = Vec::new();
    let stream = |frame: &dyn Fn(&mut BytesMut)| {
        let mut dst = BytesMut::new();
        frame(&mut dst);
        dst.to_vec()
    };
    for (name, frame) in fixtures::client_frames() {
        let bin = stream(&|dst| encode_delimited(&frame, DEFAULT_MAX_FRAME_SIZE, dst).unwrap());
        let file = VectorFile {
            description: format!("A {} frame from client to server.", frame.kind()),
            direction: Direction::Client,
            transport: Transport::Stream,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            frame: Some(frame),
            error: None,
            hex: hex::encode(&bin),
        };
        files.push((name.to_string(), bin, to_json(&file)));
    }
    for (name, frame) in fixtures::server_frames() {
        let bin = stream(&|dst| encode_delimited(&frame, DEFAULT_MAX_FRAME_SIZE, dst).unwrap());
        let file = VectorFile {
            description: format!("A {} frame from server to client.", frame.kind()),
            direction: Direction::Server,
            transport: Transport::Stream,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            frame: Some(frame),
            error: None,
            hex: hex::encode(&bin),
        };
        files.push((name.to_string(), bin, to_json(&file)));
    }
    for m in malformed() {
        let err = decode_error(&m);
        // The definitions say what must happen; the decoder must agree before anything is
        // written or compared.
        assert_eq!(err.code(), m.code, "{}: {err}", m.name);
        assert_eq!(err.invalid_field().map(|i| i.field), m.field, "{}", m.name);
        assert_eq!(err.client_msg_id(), m.client_msg_id, "{}", m.name);
        let file: VectorFile<ClientFrame> = VectorFile {
            description: m.description.to_string(),
            direction: m.direction,
            transport: m.transport,
            max_frame_size: m.max_frame_size,
            frame: None,
            error: Some(ExpectedError {
                code: m.code,
                protocol_code: m.code.protocol_code(),
                fatal: m.code.is_fatal(),
                field: m.field.map(str::to_string),
                client_msg_id: m.client_msg_id,
            }),
            hex: hex::encode(&m.bytes),
        };
        files.push((m.name.to_string(), m.bytes, to_json(&file)));
    }
    files
}

#[test]
fn golden_vectors_match_the_committed_files() {
    let files = expected_files();
    let dir = dir();
    if std::env::var_os("HABERCI_REGEN_VECTORS").is_some_and(|v| v == "1") {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("bin" | "json")
            ) {
                std::fs::remove_file(path).unwrap();
            }
        }
        for (name, bin, json) in &files {
            std::fs::write(dir.join(format!("{name}.bin")), bin).unwrap();
            std::fs::write(dir.join(format!("{name}.json")), json).unwrap();
        }
    }
    let mut drift = Vec::new();
    for (name, bin, json) in &files {
        if std::fs::read(dir.join(format!("{name}.bin"))).ok().as_ref() != Some(bin) {
            drift.push(format!("{name}.bin"));
        }
        if std::fs::read_to_string(dir.join(format!("{name}.json")))
            .ok()
            .as_ref()
            != Some(json)
        {
            drift.push(format!("{name}.json"));
        }
    }
    let expected: BTreeSet<String> = files
        .iter()
        .flat_map(|(name, _, _)| [format!("{name}.bin"), format!("{name}.json")])
        .collect();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let file = entry.unwrap().file_name().to_string_lossy().into_owned();
        if (file.ends_with(".bin") || file.ends_with(".json")) && !expected.contains(&file) {
            drift.push(format!("{file} (stale)"));
        }
    }
    assert!(
        drift.is_empty(),
        "golden vectors drifted: {drift:?}\nIf the change is deliberate, regenerate with \
         HABERCI_REGEN_VECTORS=1 cargo test -p haberci-wire --test it vectors"
    );
}

/// Reads the committed files the way a client in another language would: decode the `.bin`
/// per the `.json` and compare with its `frame` or `error`.
#[test]
fn committed_vectors_decode_as_described() {
    let mut seen_kinds = BTreeSet::new();
    for entry in std::fs::read_dir(dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let json = std::fs::read_to_string(&path).unwrap();
        let bin = std::fs::read(path.with_extension("bin")).unwrap();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let header: Header = serde_json::from_str(&json).unwrap();
        match header.direction {
            Direction::Client => {
                check_file::<ClientFrame>(&name, &json, &bin, |f| f.kind(), &mut seen_kinds)
            }
            Direction::Server => {
                check_file::<ServerFrame>(&name, &json, &bin, |f| f.kind(), &mut seen_kinds)
            }
        }
    }
    // One vector per frame kind, both directions.
    for kind in [
        "hello",
        "send",
        "ack",
        "read",
        "typing",
        "presenceWatch",
        "refreshAuth",
        "ping",
    ] {
        assert!(
            seen_kinds.contains(&format!("client {kind}")),
            "no vector for client {kind}"
        );
    }
    for kind in [
        "welcome", "message", "sent", "status", "typing", "presence", "error", "closing", "pong",
    ] {
        assert!(
            seen_kinds.contains(&format!("server {kind}")),
            "no vector for server {kind}"
        );
    }
}

fn check_file<F>(
    name: &str,
    json: &str,
    bin: &[u8],
    kind: fn(&F) -> &'static str,
    seen: &mut BTreeSet<String>,
) where
    F: Frame + PartialEq + std::fmt::Debug + for<'de> Deserialize<'de>,
{
    let file: VectorFile<F> = serde_json::from_str(json).unwrap();
    assert_eq!(file.hex, hex::encode(bin), "{name}: hex field");
    let decoded = decode_as::<F>(file.transport, bin, file.max_frame_size);
    match (file.frame, file.error) {
        (Some(frame), None) => {
            assert_eq!(
                decoded.as_deref(),
                Ok(std::slice::from_ref(&frame)),
                "{name}"
            );
            let dir = if file.direction == Direction::Client {
                "client"
            } else {
                "server"
            };
            seen.insert(format!("{dir} {}", kind(&frame)));
        }
        (None, Some(expected)) => {
            let err = decoded.expect_err(name);
            assert_eq!(err.code(), expected.code, "{name}: {err}");
            assert_eq!(
                expected.protocol_code,
                expected.code.protocol_code(),
                "{name}"
            );
            assert_eq!(expected.fatal, expected.code.is_fatal(), "{name}");
            assert_eq!(err.client_msg_id(), expected.client_msg_id, "{name}");
            assert_eq!(
                err.invalid_field().map(|i| i.field),
                expected.field.as_deref(),
                "{name}"
            );
        }
        _ => panic!("{name}: a vector has exactly one of frame and error"),
    }
}
