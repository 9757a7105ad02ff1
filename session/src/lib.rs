//! The realtime session core every transport shares, sans-IO (STYLE: quinn-proto): frames and
//! clock readings go in, outputs come out. No sockets, no clocks, no tasks — and no tokio,
//! fred, hyper or quinn in this crate's dependencies, so that is a compiler fact rather than a
//! convention. The gateway's `transport::drive` runs one [`Session`] per client connection.
//!
//! Map of the crate:
//!
//! - [`machine`]: the [`Session`] state machine: handshake (`Hello` + access token →
//!   `Welcome`), `Ping`, in-band `RefreshAuth`, token expiry, hello and idle timeouts, the send
//!   rate, and every authenticated frame turned into a [`Relay`] output for the Redis relay.
//! - [`delivery`]: what a session is owed — every message of its conversations once, in seq
//!   order, without gaps — from live events and backlog pages ([`Need`] asks for the pages).
//! - [`sends`]: at most one send in flight per conversation, so a conversation's order is the
//!   order the client sent in.
//! - [`receipts`]: `Ack` and `Read` coalesced per conversation (the latest watermark wins) and
//!   rate-limited; [`bucket`] is the token bucket sends and receipts share the code of.
//!
//! The rules a `Send` obeys are `haberci_seam::sends`, shared with the worker.

pub mod bucket;
pub mod delivery;
pub mod machine;
pub mod receipts;
pub mod sends;

pub use delivery::{Backlog, ConversationInfo, FetchFrom, Need, Route};
pub use machine::{
    DEFAULT_HELLO_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_SEND_BURST, DEFAULT_SEND_RATE_PER_SEC,
    DEFAULT_WRITE_TIMEOUT, DRAIN_RETRY_AFTER_MS, Identity, MAX_PRESENCE_WATCH, Now, Output, Relay,
    Session, SessionConfig, UNAVAILABLE,
};
