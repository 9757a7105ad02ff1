//! Integration tests of haberci-wire, as one binary (one link, one process).
//!
//! - `codes`: the code table's invariants.
//! - `docs`: docs/PROTOCOL.md shows the code table and the schema as they are.
//! - `framing`: the stream decoder's edge cases, WebSocket and datagram rules.
//! - `convert`: proto → domain rejections, table-driven; JSON forms; ids, seqs, timestamps.
//! - `vectors`: golden vectors in `wire/tests/vectors/` (regenerate with
//!   `HABERCI_REGEN_VECTORS=1 cargo test -p haberci-wire --test it vectors`).
//! - `props`: property tests (round trips, splits, arbitrary bytes).
//! - `fuzz_seeds`: replays the fuzz seed corpus through the fuzz targets' code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod codes;
mod convert;
mod docs;
mod fixtures;
mod framing;
mod fuzz_seeds;
mod props;
mod vectors;
