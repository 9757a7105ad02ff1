//! The gateway's side of everything behind it: Redis (streams, pub/sub, presence keys,
//! revocations) and the backend's HTTP API. Imports neither `edge` nor `transport`.
//!
//! - [`effects`]: what a session's [`haberci_session::Relay`] outputs do, one function each.
//! - [`streams`]: [`Relay`], the handle on the message path (append, publish, sync).
//! - [`hub`]: one pub/sub subscriber per gateway, a [`hub::Mailbox`] per session.
//! - [`backend`]: the one HTTP client pool to the backend (proxied requests, internal API,
//!   JWKS, readiness).
//! - [`presence`]: who is online, across gateways.
//! - [`revocation`]: `auth:revoked` announcements closing open sessions.
//! - [`keys`]: the access-token keys, kept in step with the backend's JWKS.

pub mod backend;
pub mod effects;
pub mod hub;
pub mod keys;
pub mod presence;
pub mod revocation;
pub mod streams;

pub use streams::{Relay, RelayConfig, RelayError};
