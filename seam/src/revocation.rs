//! Revocations, backend → gateways: every ended session (logout, revoke, refresh-token reuse)
//! is published on [`CHANNEL`] as a JSON [`Announcement`]; gateways close the realtime
//! sessions of that id they hold.

use haberci_wire::{SessionId, UserId};
use serde::{Deserialize, Serialize};

/// The Redis pub/sub channel revocations are announced on.
pub const CHANNEL: &str = "auth:revoked";

/// Why a session ended, as stored in `sessions.revoked_reason` and published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    /// `POST /auth/logout`.
    Logout,
    /// `DELETE /auth/sessions/{id}`.
    Revoked,
    /// `POST /auth/logout-all`.
    LogoutAll,
    /// A spent refresh token was presented again.
    RefreshReuse,
    /// A reason this build does not know (a newer backend's): the session is still closed.
    #[serde(other)]
    Other,
}

impl RevokeReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RevokeReason::Logout => "logout",
            RevokeReason::Revoked => "revoked",
            RevokeReason::LogoutAll => "logout_all",
            RevokeReason::RefreshReuse => "refresh_reuse",
            RevokeReason::Other => "other",
        }
    }
}

/// One message on [`CHANNEL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    pub session_id: SessionId,
    pub user_id: UserId,
    pub reason: RevokeReason,
}

impl Announcement {
    pub fn to_json(&self) -> String {
        // Invariant: ids and a unit enum always serialize.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(json: &str) -> Result<Announcement, serde_json::Error> {
        serde_json::from_str(json)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn announcement_json_is_the_documented_shape() {
        let session = SessionId::new(uuid::Uuid::from_u128(1)).unwrap();
        let user = UserId::new(uuid::Uuid::from_u128(2)).unwrap();
        let json = Announcement {
            session_id: session,
            user_id: user,
            reason: RevokeReason::RefreshReuse,
        }
        .to_json();
        assert_eq!(
            json,
            format!(r#"{{"session_id":"{session}","user_id":"{user}","reason":"refresh_reuse"}}"#)
        );
        assert_eq!(Announcement::from_json(&json).unwrap().session_id, session);
        let newer = json.replace("refresh_reuse", "password_changed");
        let read = Announcement::from_json(&newer).unwrap();
        assert_eq!(
            (read.session_id, read.reason),
            (session, RevokeReason::Other),
            "a reason added later still closes the session"
        );
        for reason in [
            RevokeReason::Logout,
            RevokeReason::Revoked,
            RevokeReason::LogoutAll,
            RevokeReason::RefreshReuse,
        ] {
            assert_eq!(
                serde_json::to_string(&reason).unwrap(),
                format!("\"{}\"", reason.as_str())
            );
        }
    }
}
