//! Whole-system tests: real processes (see [`support`]).
//!
//! A test fails by panicking, with the reason in the message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bad_input;
mod exchange;
mod faults;
mod idempotency;
mod ledger;
mod peer;
mod raw_ws;
mod smoke;
mod support;
