//! Whole-system tests: real processes (see [`support`]).
//!
//! A test fails by panicking, with the reason in the message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bad_input;
mod balancer;
mod chaos;
mod exchange;
mod faults;
mod hosts;
mod idempotency;
mod impair;
mod ledger;
mod peer;
mod private_pg;
mod quic_lb;
mod raw_ws;
mod redis_acl;
mod redis_cluster;
mod replica;
mod resumption;
mod smoke;
mod support;
