//! Haberci access tokens: short-lived JWTs signed by the backend with Ed25519 (`alg: EdDSA`),
//! verified by anyone holding the public keys (the backend today, the gateway with #6).
//!
//! - [`claims`]: what a token says ([`Claims`]: `sub`, `sid`, `iat`, `exp`).
//! - [`keys`]: the signing side. [`KeySet`] loads Ed25519 private keys (PKCS#8 PEM, one file per
//!   `kid`) from a directory, signs with one of them and publishes all of them as a JWKS.
//! - [`verify`]: the checking side. [`Verifier`] holds public keys by `kid` (built from a
//!   [`Jwks`] or a [`KeySet`]) and accepts only `EdDSA` tokens it can verify, inside their
//!   validity window.
//! - [`jwks`]: the JSON Web Key Set document (RFC 7517, OKP keys per RFC 8037).
//!
//! Invariant: this crate knows nothing of databases or sessions; a token that verifies still
//! needs its session checked (revocation) by whoever accepts it.

pub mod claims;
pub mod jwks;
pub mod keys;
pub mod verify;

pub use claims::Claims;
pub use jwks::{Jwk, Jwks};
pub use keys::{KeyError, KeySet, Kid};
pub use verify::{Verifier, VerifyError};

/// The only signature algorithm Haberci issues or accepts.
pub const ALGORITHM: &str = "EdDSA";

/// Seconds of clock difference tolerated between the signer and a verifier, both for `exp`
/// and for `iat`/`nbf` in the future.
pub const CLOCK_SKEW_LEEWAY_SECS: i64 = 30;

/// Tokens longer than this are refused before any decoding (ours are ~300 bytes).
pub const MAX_TOKEN_BYTES: usize = 4096;
