//! The JSON Web Key Set the backend publishes at `GET /v1/auth/jwks` (RFC 7517; Ed25519 keys
//! as `OKP` per RFC 8037).

use serde::{Deserialize, Serialize};

/// A set of public keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// One public key. Haberci publishes only `kty: OKP`, `crv: Ed25519`, `alg: EdDSA`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    pub crv: String,
    /// The public key, base64url without padding (32 bytes decoded).
    pub x: String,
    pub kid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
}
