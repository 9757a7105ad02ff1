//! [`WireError`]: everything that can be wrong with bytes from a peer, each mapped to an
//! [`ErrorCode`] by [`WireError::code`].

use std::fmt;

use crate::codes::ErrorCode;
use crate::ids::ClientMsgId;

/// Why bytes from a peer were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The varint length prefix is longer than 10 bytes or overflows 64 bits.
    #[error("malformed length prefix: not a varint of at most 10 bytes")]
    MalformedLength,
    /// A frame is (or declares itself) larger than the max frame size.
    #[error("frame of {declared} bytes exceeds the max frame size of {max} bytes")]
    FrameTooLarge { declared: u64, max: usize },
    /// A frame of length zero: it carries no frame kind, so it is refused at the framing
    /// layer (which also stops a stream of zero bytes from costing one reply per byte).
    #[error("zero-length frame")]
    EmptyFrame,
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
    /// The frame body is not valid protobuf for this message.
    #[error("frame body is not valid protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// The body decoded but carries no frame kind this side knows (a newer peer).
    #[error("unknown frame kind")]
    UnknownFrameKind,
    /// The frame decoded but a field is missing or invalid.
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// A `Hello` whose field is missing or invalid. Before `Welcome` there is no session to
    /// answer `Error` in, so it is fatal: `unauthenticated` without an access token,
    /// `bad_frame` for any other field.
    #[error("Hello refused: {0}")]
    InvalidHello(InvalidField),
    /// A WebSocket text message: frames travel as binary messages.
    #[error("WebSocket text message refused: frames travel as binary messages")]
    TextMessage,
    /// A frame kind that must arrive reliably came (or was about to go) as a datagram.
    #[error("{kind} frames may not travel as datagrams")]
    NotDatagram { kind: &'static str },
}

impl WireError {
    /// The code to answer this error with (`Error` if non-fatal, `Closing` if fatal).
    pub fn code(&self) -> ErrorCode {
        match self {
            WireError::MalformedLength
            | WireError::EmptyFrame
            | WireError::Truncated { .. }
            | WireError::Protobuf(_)
            | WireError::NotDatagram { .. } => ErrorCode::BadFrame,
            WireError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            WireError::UnknownFrameKind => ErrorCode::UnknownFrameKind,
            WireError::Invalid(_) => ErrorCode::InvalidField,
            WireError::InvalidHello(invalid) if invalid.field == "Hello.access_token" => {
                ErrorCode::Unauthenticated
            }
            WireError::InvalidHello(_) => ErrorCode::BadFrame,
            WireError::TextMessage => ErrorCode::TextMessageRefused,
        }
    }

    /// The `client_msg_id` of the `Send` this error is about, when it could be read, so the
    /// `Error` frame can name it and the client can mark that message failed.
    pub fn client_msg_id(&self) -> Option<ClientMsgId> {
        self.invalid_field()
            .and_then(|invalid| invalid.client_msg_id)
    }

    /// The field at fault, for an invalid frame (a `Hello` included).
    pub fn invalid_field(&self) -> Option<&InvalidField> {
        match self {
            WireError::Invalid(invalid) | WireError::InvalidHello(invalid) => Some(invalid),
            _ => None,
        }
    }
}

/// A field that is missing or holds an invalid value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field {field}: {problem}")]
pub struct InvalidField {
    /// The proto field, as `Message.field` (e.g. `Send.client_msg_id`).
    pub field: &'static str,
    pub problem: Problem,
    /// Set when the invalid frame is a `Send` whose `client_msg_id` itself was valid.
    pub client_msg_id: Option<ClientMsgId>,
}

impl InvalidField {
    pub const fn new(field: &'static str, problem: Problem) -> InvalidField {
        InvalidField {
            field,
            problem,
            client_msg_id: None,
        }
    }
}

/// What is wrong with a field.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// A required message or oneof is absent.
    Missing,
    /// A required string is empty.
    Empty,
    WrongLength {
        expected: usize,
        actual: usize,
    },
    NilId,
    NotAUuid,
    UnknownEnumValue(i64),
    SeqOutOfRange(u64),
    TimestampOutOfRange(i64),
    NotRfc3339,
    /// The same conversation appears twice in `Hello.resume`.
    DuplicateConversation,
    /// `Status.read_seq` above `Status.delivered_seq`.
    ReadAboveDelivered,
    /// A fatal code in `Error`, or a non-fatal one in `Closing`.
    WrongFrameForCode(ErrorCode),
    /// `Limits.max_frame_size` of 0.
    Zero,
    /// A string above its limit (`unit`: `"bytes"` or `"characters"`).
    TooLong {
        max: usize,
        actual: usize,
        unit: &'static str,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing => f.write_str("required but missing"),
            Problem::Empty => f.write_str("must not be empty"),
            Problem::WrongLength { expected, actual } => {
                write!(f, "expected {expected} bytes, got {actual}")
            }
            Problem::NilId => f.write_str("the nil UUID is not a valid id"),
            Problem::NotAUuid => f.write_str("not a UUID"),
            Problem::UnknownEnumValue(v) => write!(f, "unknown enum value {v}"),
            Problem::SeqOutOfRange(v) => write!(f, "seq {v} is outside 1..=2^53-1"),
            Problem::TimestampOutOfRange(v) => {
                write!(
                    f,
                    "{v} ms is outside 0000-01-01T00:00:00.000Z..=9999-12-31T23:59:59.999Z"
                )
            }
            Problem::NotRfc3339 => {
                f.write_str("not an RFC 3339 timestamp with at most millisecond precision")
            }
            Problem::DuplicateConversation => f.write_str("conversation listed twice"),
            Problem::ReadAboveDelivered => f.write_str("read_seq above delivered_seq"),
            Problem::WrongFrameForCode(code) => {
                write!(
                    f,
                    "code {code} does not belong in this frame (fatal codes go in Closing, others in Error)"
                )
            }
            Problem::Zero => f.write_str("must not be zero"),
            Problem::TooLong { max, actual, unit } => {
                write!(f, "{actual} {unit} long, at most {max} allowed")
            }
        }
    }
}
