//! Transports: every client connection becomes one [`haberci_session::Session`] driven by
//! [`drive::drive`] over a [`drive::Link`] — the only part a transport writes (read a frame,
//! write frames, close). Imports `relay` (to carry out the session's relay work), never `edge`.
//!
//! - [`drive`]: the one loop per session, and the only place the session's clock is read.
//! - [`link`]: a [`link::StreamLink`], the varint length-delimited stream plus datagrams that
//!   native QUIC and WebTransport share; each brings its [`link::Pipe`].
//! - [`native`]: native QUIC (ALPN `haberci/1`), a pipe on a quinn connection.
//! - [`websocket`]: WebSocket, one binary message per frame.
//!
//! (WebTransport's pipe lives in `edge::h3::webtransport`: it is an HTTP/3 session first.)

pub mod drive;
pub mod link;
pub mod native;
pub mod websocket;

use std::sync::Arc;

use haberci_session::SessionConfig;

use crate::relay::effects::Messaging;
use crate::relay::keys::TokenKeys;
use crate::relay::revocation::Revocations;

/// What every realtime session needs, whatever its transport.
#[derive(Clone)]
pub struct Realtime {
    pub keys: Arc<TokenKeys>,
    pub session: SessionConfig,
    pub revocations: Arc<Revocations>,
    /// `None` when the gateway runs without Redis or the internal secret: then messaging is
    /// answered `unavailable`.
    pub messaging: Option<Messaging>,
}
