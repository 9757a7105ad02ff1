//! What can go wrong, for the caller: connecting ([`ConnectError`]), sending a message
//! ([`SendError`]), other requests ([`ClientError`]), why a connection ended
//! ([`Disconnect`]), and HTTP API calls ([`ApiError`]).

use std::path::PathBuf;
use std::time::Duration;

use haberci_wire::{ErrorCode, WireError};

/// A boxed transport error (QUIC, TLS, TCP, WebSocket), kept as the `source`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why [`Client::connect`](crate::Client::connect) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The configuration cannot work (bad address or URL, unreadable root certificates).
    /// Caller's fault; retrying will not help.
    #[error("bad client configuration: {0}")]
    Config(String),
    /// The transport could not be opened: name resolution, TCP, TLS or QUIC handshake,
    /// certificate verification, WebSocket upgrade. May be retried with backoff.
    #[error("{context}: {source}")]
    Transport {
        context: &'static str,
        #[source]
        source: BoxError,
    },
    /// The server answered the WebSocket upgrade (instead of `101`) or the WebTransport
    /// `CONNECT` (instead of `200`) with this HTTP status: e.g. `404` for a wrong path.
    #[error("the server refused the WebSocket upgrade or WebTransport CONNECT with HTTP {status}")]
    Upgrade { status: u16 },
    /// The server refused the session: a `Closing` frame (or, without one, a close code)
    /// before `Welcome`. `code` says what to do (docs/PROTOCOL.md, code table): e.g.
    /// `unauthenticated` → log in again, `token_expired` → refresh, then reconnect.
    #[error("the server closed the session before Welcome: {code} ({reason})")]
    Closed {
        code: ErrorCode,
        reason: String,
        /// The server's advice on when to reconnect (`Closing.retry_after_ms`).
        retry_after: Option<Duration>,
        /// The versions the server speaks (`Closing.supported_versions`; may be empty).
        supported_versions: Vec<u32>,
    },
    /// The connection ended before `Welcome` without a protocol code.
    #[error("the connection ended before Welcome: {0}")]
    Disconnected(Disconnect),
    /// No `Welcome` within the configured connect timeout.
    #[error("no Welcome within {0:?}")]
    Timeout(Duration),
}

impl ConnectError {
    pub(crate) fn transport(context: &'static str, source: impl Into<BoxError>) -> Self {
        ConnectError::Transport {
            context,
            source: source.into(),
        }
    }

    /// The protocol code the server refused the session with, if it did.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ConnectError::Closed { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// How long the server asked the client to wait before trying again, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ConnectError::Closed { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Why [`Client::send`](crate::Client::send) did not resolve to `Sent`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The server answered `Error{code, client_msg_id}` for this message. Whether to resend
    /// the same frame later is `code.retryable()` (`rate_limited`, `unavailable`).
    #[error("the server refused the message: {code} ({message})")]
    Refused { code: ErrorCode, message: String },
    /// The connection ended before the server answered. The message may or may not be
    /// stored: resend it with the same `client_msg_id` on the next connection (the server
    /// never stores it twice).
    #[error("the connection ended before the server answered")]
    Disconnected,
    /// The frame is above the server's max frame size; nothing was sent.
    #[error("the message does not fit in a frame: {0}")]
    TooLarge(WireError),
    /// A send with this `client_msg_id` is already waiting for its answer on this connection.
    #[error("a send with this client_msg_id is already in flight")]
    AlreadyInFlight,
}

/// Why a request other than `send` (ack, read, typing, ping, …) could not be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The connection has ended (or is closing).
    #[error("the connection has ended")]
    Disconnected,
    /// The frame is above the server's max frame size; nothing was sent.
    #[error("the frame does not fit: {0}")]
    TooLarge(WireError),
}

/// Why a connection ended (the last [`Event`](crate::Event) is
/// `Event::Disconnected(Disconnect)`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Disconnect {
    /// This client closed it ([`Client::close`](crate::Client::close), or every handle
    /// dropped).
    Local,
    /// The server closed the transport. `code` is the protocol code its close carried (QUIC
    /// application code, or WebSocket close code − 4000); `None` for a normal close or a code
    /// outside the table. A `Closing` event with the same code normally came first.
    Server {
        code: Option<ErrorCode>,
        reason: String,
    },
    /// No `Pong` arrived within the pong timeout: the connection is presumed dead.
    PongTimeout,
    /// The server's bytes could not be read as frames (a bug on one side).
    Protocol(WireError),
    /// The transport failed (reset, QUIC idle timeout, TLS error…).
    Transport(String),
}

impl std::fmt::Display for Disconnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Disconnect::Local => f.write_str("closed by this client"),
            Disconnect::Server {
                code: Some(code),
                reason,
            } => write!(f, "closed by the server: {code} ({reason})"),
            Disconnect::Server { code: None, reason } => {
                write!(f, "closed by the server ({reason})")
            }
            Disconnect::PongTimeout => f.write_str("no Pong in time"),
            Disconnect::Protocol(err) => write!(f, "unreadable server frames: {err}"),
            Disconnect::Transport(err) => write!(f, "transport failed: {err}"),
        }
    }
}

/// Why an HTTP API call ([`Api`](crate::Api)) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The origin or roots cannot work (not `https`, no host, unreadable certificates).
    /// Caller's fault; retrying will not help.
    #[error("bad API configuration: {0}")]
    Config(String),
    /// The file to upload could not be read. Caller's fault.
    #[error("cannot read {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TCP, TLS or HTTP failed before an answer. May be retried with backoff.
    #[error("{context}: {source}")]
    Transport {
        context: &'static str,
        #[source]
        source: BoxError,
    },
    /// The server refused the request with an API error: `code` is its `error.code`
    /// (`media_too_large`, `media_type_mismatch`, `not_found`, `unauthenticated`, …).
    #[error("the API refused the request with HTTP {status}: {code} ({message})")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// An answer that is not what the API documents (a proxy's error page, unreadable
    /// JSON): a bug or a misconfiguration between here and the API.
    #[error("unexpected API answer (HTTP {status}): {detail}")]
    Unexpected { status: u16, detail: String },
    /// No answer within [`Api::timeout`](crate::Api::timeout).
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}
