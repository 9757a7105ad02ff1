//! Whole-system tests: real processes (see [`support`]).

mod raw_ws;
mod smoke;
mod support;
