//! Whole-system tests: real processes (see [`support`]).

mod smoke;
mod support;
mod raw_ws;
