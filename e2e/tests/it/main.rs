//! Whole-system tests: real processes (see [`support`]).

mod bad_input;
mod exchange;
mod idempotency;
mod peer;
mod raw_ws;
mod smoke;
mod support;
