//! Arbitrary bytes as one frame body: protobuf decode, proto → domain checks for both
//! directions, WebSocket and datagram rules, and re-encode → decode identity.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    haberci_wire::fuzzing::frame_to_domain(data);
});
