//! Whole-system tests live in `tests/it/`: they start real `haberci-backend` (api, worker) and
//! `haberci-gateway` processes — the binaries `cargo` built next to the test executable — on a
//! Redis of their own, so they can kill and restart any of them.
