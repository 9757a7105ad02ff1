//! Client integration tests: a real gateway in-process on ephemeral ports, real TLS, real QUIC
//! and WebSocket, and a real backend API against the Postgres, PgBouncer and Redis of the
//! running dev stack. Each behaviour is checked over both transports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod connect;
mod lifecycle;
mod send;
