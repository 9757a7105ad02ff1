//! The claims of an access token.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What an access token asserts: user `sub` holds session `sid`, from `iat` until `exp` (Unix
/// seconds). `nbf` is never issued, but is honoured when present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: Uuid,
    /// The session id; revocation is per session.
    pub sid: Uuid,
    /// Issued at.
    pub iat: i64,
    /// Expires at.
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
}

impl Claims {
    pub fn new(user: Uuid, session: Uuid, now: i64, ttl_secs: i64) -> Self {
        Claims {
            sub: user,
            sid: session,
            iat: now,
            exp: now.saturating_add(ttl_secs),
            nbf: None,
        }
    }
}
