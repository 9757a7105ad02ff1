//! The seam between Haberci's gateways and its backend tier: everything both sides must agree
//! on, written once. Rename a field here and both sides stop compiling together, instead of
//! breaking at run time. Clients do not speak it (their protocol is `haberci-wire`); the one
//! rule they share is the direct conversation id, which the web SDK computes the same way.
//!
//! Map of the crate:
//!
//! - [`streams`]: Redis, the message path. Inbound stream entries ([`streams::Inbound`], gateway →
//!   worker), the events published to gateways ([`streams::Event`]), every key and channel name,
//!   shard and conversation-id rules.
//! - [`revocation`]: the `auth:revoked` channel and its [`revocation::Announcement`] (backend →
//!   gateways).
//! - [`internal`]: the backend's internal HTTP API for gateways (`/internal/v1/*`): paths, the
//!   shared-secret header and its constant-time check, request and answer types, limits.
//! - [`sends`]: the rules every `Send` obeys, checked by the gateway at the edge and again by
//!   the worker (the stream is a trust boundary too).
//!
//! Sans-IO: no sockets, no clocks, no tasks.

pub mod internal;
pub mod revocation;
pub mod sends;
pub mod streams;
