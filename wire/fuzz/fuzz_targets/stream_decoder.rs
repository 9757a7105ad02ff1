//! Arbitrary bytes into the incremental stream decoder, whole and in chunks, then every
//! body through frame → domain. The body lives in `haberci_wire::fuzzing` so `cargo test`
//! replays the seed corpus through the same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    haberci_wire::fuzzing::stream_decoder(data);
});
