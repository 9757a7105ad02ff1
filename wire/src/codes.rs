//! The one table of error and close codes.
//!
//! Every way a session can fail has one [`ErrorCode`], and each code has one row in
//! [`CODE_TABLE`]: the number carried in `Error.code` / `Closing.code`, the QUIC application
//! error code used when closing a QUIC connection (or WebTransport session), the WebSocket
//! close code, whose fault it is, whether retrying can help, and whether it ends the session.
//!
//! Invariant: a fatal code travels only in `Closing` (then the connection closes with the
//! row's QUIC / WebSocket code); a non-fatal code travels only in `Error` and the session
//! goes on. The decoder rejects an `Error` with a fatal code and a `Closing` with a non-fatal
//! one.

use std::fmt;

use serde::{Deserialize, Serialize};

/// QUIC application error code for a normal close (no error), e.g. a client logging out.
pub const QUIC_NO_ERROR: u64 = 0;
/// WebSocket close code for a normal close (RFC 6455).
pub const WEBSOCKET_NORMAL_CLOSURE: u16 = 1000;

/// Whose fault an error is, from the server's point of view.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// The client sent something wrong or did something it may not do.
    Client,
    /// A service the server depends on (Redis, the backend) failed or is unreachable.
    Peer,
    /// The server itself (a bug, or an operator draining it).
    Server,
}

impl Fault {
    pub const fn name(self) -> &'static str {
        match self {
            Fault::Client => "client",
            Fault::Peer => "peer",
            Fault::Server => "server",
        }
    }
}

/// An error or close code. Discriminants are the protocol codes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u32)]
pub enum ErrorCode {
    BadFrame = 1,
    FrameTooLarge = 2,
    InvalidField = 3,
    UnknownFrameKind = 4,
    UnsupportedVersion = 5,
    Unauthenticated = 6,
    TokenExpired = 7,
    Forbidden = 8,
    UnknownRecipient = 9,
    ContentTooLarge = 10,
    RateLimited = 11,
    SlowConsumer = 12,
    ServerDraining = 13,
    Unavailable = 14,
    Internal = 15,
    TextMessageRefused = 16,
    IdleTimeout = 17,
    Blocked = 18,
    MediaRefused = 19,
    TooManySessions = 20,
}

/// One row of [`CODE_TABLE`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CodeInfo {
    pub code: ErrorCode,
    /// snake_case name, as in JSON and the docs.
    pub name: &'static str,
    /// The value of `Error.code` / `Closing.code`.
    pub protocol: u32,
    /// QUIC application error code (CONNECTION_CLOSE, or the WebTransport session close).
    pub quic: u64,
    /// WebSocket close code (4000..=4999, the private-use range).
    pub websocket: u16,
    pub fault: Fault,
    /// Whether doing the same thing again later can succeed (after the advised wait, a
    /// token refresh or a reconnect).
    pub retry: bool,
    /// Fatal: sent in `Closing` and the connection closes. Non-fatal: sent in `Error`.
    pub fatal: bool,
    /// What it means and what the client should do.
    pub meaning: &'static str,
}

const fn row(
    code: ErrorCode,
    name: &'static str,
    fault: Fault,
    retry: bool,
    fatal: bool,
    meaning: &'static str,
) -> CodeInfo {
    let protocol = code as u32;
    CodeInfo {
        code,
        name,
        protocol,
        // One number everywhere keeps logs greppable: QUIC code = protocol code, WebSocket
        // close code = 4000 + protocol code. 0 / 1000 stay "normal close".
        quic: protocol as u64,
        websocket: 4000 + protocol as u16,
        fault,
        retry,
        fatal,
        meaning,
    }
}

use ErrorCode as C;
use Fault::{Client, Peer, Server};

/// The code table, in protocol-code order (row `i` has protocol code `i + 1`).
#[rustfmt::skip]
pub const CODE_TABLE: [CodeInfo; 20] = [
    //  code                    name                    fault   retry  fatal  meaning
    row(C::BadFrame,           "bad_frame",            Client, false, true,  "The bytes are not a frame (malformed length prefix, zero-length or truncated frame, body that is not protobuf), a frame out of place (a reliable frame kind as a datagram, a second Hello), or a Hello that breaks a field rule other than its token (before Welcome nothing is answered with Error)."),
    row(C::FrameTooLarge,      "frame_too_large",      Client, false, true,  "A frame declared a length above the max frame size (announced in Welcome); rejected before it is buffered."),
    row(C::InvalidField,       "invalid_field",        Client, false, false, "The frame parsed but a field is missing or invalid (wrong id length, nil id, seq 0, unknown enum value...). Fix the client; do not resend as is."),
    row(C::UnknownFrameKind,   "unknown_frame_kind",   Client, false, false, "The server does not know this frame kind (a newer client). The frame is ignored; the session stays open."),
    row(C::UnsupportedVersion, "unsupported_version",  Client, false, true,  "Hello.protocol_version is not spoken here; Closing.supported_versions lists the versions that are."),
    row(C::Unauthenticated,    "unauthenticated",      Client, false, true,  "No valid access token (missing, malformed, bad signature, revoked, another user's in RefreshAuth), or a frame before Hello. Log in again."),
    row(C::TokenExpired,       "token_expired",        Client, true,  true,  "The access token expired. Refresh it over HTTP, then reconnect (and send RefreshAuth before expiry next time)."),
    row(C::Forbidden,          "forbidden",            Client, false, false, "Authenticated, but not allowed (e.g. sending to a conversation you are not a member of)."),
    row(C::UnknownRecipient,   "unknown_recipient",    Client, false, false, "The recipient user or group does not exist."),
    row(C::ContentTooLarge,    "content_too_large",    Client, false, false, "The message content is above the server's content limit."),
    row(C::RateLimited,        "rate_limited",         Client, true,  false, "Too many frames; back off (Welcome.limits gives the rate) and resend the same Send (same client_msg_id)."),
    row(C::SlowConsumer,       "slow_consumer",        Client, true,  true,  "The client did not read fast enough and the server's send queue overflowed. Reconnect and resume."),
    row(C::ServerDraining,     "server_draining",      Server, true,  true,  "This server is shutting down, has just started and cannot verify tokens yet, or cannot check the session in time. Reconnect (to any server) after retry_after_ms and resume."),
    row(C::Unavailable,        "unavailable",          Peer,   true,  false, "A service behind the server is unavailable; the frame was not processed. Resend the same frame later."),
    row(C::Internal,           "internal",             Server, true,  true,  "A bug on the server. Reconnect with backoff and resume; unacknowledged sends are resent (idempotent)."),
    row(C::TextMessageRefused, "text_message_refused", Client, false, true,  "WebSocket only: a text message arrived; frames travel as binary messages."),
    row(C::IdleTimeout,        "idle_timeout",         Client, true,  true,  "Nothing arrived for Welcome.limits.idle_timeout_ms (or no Hello in time). Send Ping more often; reconnect and resume."),
    row(C::Blocked,            "blocked",              Client, false, false, "A direct message between two users one of whom blocked the other (either way). Nothing was stored; the sender must unblock, or cannot write to this user. Sent only to a client whose Hello.max_error_code is at least 18; others get forbidden."),
    row(C::MediaRefused,       "media_refused",        Client, false, false, "A Send's media is unusable: no such upload, not uploaded by the sender, or its detected kind differs from the Send's type. Nothing was stored. Sent only to a client whose Hello.max_error_code is at least 19; others get invalid_field."),
    row(C::TooManySessions,    "too_many_sessions",    Client, true,  true,  "The user already has as many realtime sessions open as the service allows, across all its servers (Haberci: 20). Close one, or wait for one to end, then reconnect with backoff. Sent only to a client whose Hello.max_error_code is at least 20; others get slow_consumer."),
];

/// The last code of the table protocol version 1 started with. A client whose
/// `Hello.max_error_code` is 0 knows the codes up to this one.
pub const V1_LAST_CODE: u32 = 17;
/// The last code of this build's table: what a client built from it sends as
/// `Hello.max_error_code`.
pub const LAST_CODE: u32 = CODE_TABLE[CODE_TABLE.len() - 1].protocol;

impl ErrorCode {
    /// Every code, in protocol-code order.
    pub const ALL: [ErrorCode; CODE_TABLE.len()] = {
        let mut all = [ErrorCode::BadFrame; CODE_TABLE.len()];
        let mut i = 0;
        while i < CODE_TABLE.len() {
            all[i] = CODE_TABLE[i].code;
            i += 1;
        }
        all
    };

    /// This code's row of [`CODE_TABLE`].
    pub const fn info(self) -> &'static CodeInfo {
        // Invariant (tested): row i holds the code whose discriminant is i + 1.
        &CODE_TABLE[self as usize - 1]
    }

    pub const fn name(self) -> &'static str {
        self.info().name
    }
    pub const fn protocol_code(self) -> u32 {
        self.info().protocol
    }
    pub const fn quic_code(self) -> u64 {
        self.info().quic
    }
    pub const fn websocket_close_code(self) -> u16 {
        self.info().websocket
    }
    pub const fn fault(self) -> Fault {
        self.info().fault
    }
    pub const fn retryable(self) -> bool {
        self.info().retry
    }
    /// Fatal codes travel in `Closing` and end the session; the others in `Error`.
    pub const fn is_fatal(self) -> bool {
        self.info().fatal
    }

    /// The code as sent to a client that knows the codes up to `max_known` (its
    /// `Hello.max_error_code`; 0 = [`V1_LAST_CODE`]). Compatibility rule: a code added after
    /// the first version-1 table reaches only clients that said they know it; any other
    /// client gets the older code of the same class (fault, retry, fatality) that it can
    /// decode, so its Send fails the way it already handles.
    pub const fn for_client(self, max_known: u32) -> ErrorCode {
        let max_known = if max_known < V1_LAST_CODE {
            V1_LAST_CODE
        } else {
            max_known
        };
        if self.protocol_code() <= max_known {
            return self;
        }
        match self {
            ErrorCode::Blocked => ErrorCode::Forbidden,
            ErrorCode::MediaRefused => ErrorCode::InvalidField,
            ErrorCode::TooManySessions => ErrorCode::SlowConsumer,
            other => other,
        }
    }

    pub fn from_protocol_code(code: u32) -> Option<ErrorCode> {
        CODE_TABLE
            .iter()
            .find(|row| row.protocol == code)
            .map(|row| row.code)
    }
    pub fn from_quic_code(code: u64) -> Option<ErrorCode> {
        CODE_TABLE
            .iter()
            .find(|row| row.quic == code)
            .map(|row| row.code)
    }
    pub fn from_websocket_close_code(code: u16) -> Option<ErrorCode> {
        CODE_TABLE
            .iter()
            .find(|row| row.websocket == code)
            .map(|row| row.code)
    }
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        CODE_TABLE
            .iter()
            .find(|row| row.name == name)
            .map(|row| row.code)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The code table as the Markdown table in docs/PROTOCOL.md (a test keeps the two equal).
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| code | name | QUIC app code | WebSocket close | fault | retry | fatal (frame) | meaning |\n|---:|---|---:|---:|---|---|---|---|\n",
    );
    for row in &CODE_TABLE {
        out.push_str(&format!(
            "| {} | `{}` | {} | {} | {} | {} | {} | {} |\n",
            row.protocol,
            row.name,
            row.quic,
            row.websocket,
            row.fault.name(),
            if row.retry { "yes" } else { "no" },
            if row.fatal {
                "yes (`Closing`)"
            } else {
                "no (`Error`)"
            },
            row.meaning
        ));
    }
    out
}
