//! Client integration tests: the whole stack in-process on ephemeral ports — a real gateway
//! (relay on), the backend API and a message worker — against the Postgres, PgBouncer and
//! Redis of the running dev stack; real TLS, QUIC, WebTransport and WebSocket. Each behaviour
//! is checked over every transport.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod connect;
mod lifecycle;
mod media;
mod messaging;
mod send;
mod social;
