//! Whole-system tests: real processes (see [`support`]).

mod exchange;
mod peer;
mod raw_ws;
mod smoke;
mod support;
