//! The backend's internal HTTP API, for gateways only: `/internal/v1/*`.
//!
//! API boundary: not under `/v1`, so a gateway's proxy (which forwards `/v1/*` only) never
//! passes a client's request here, and not in the public OpenAPI document. Every request
//! carries the shared secret (`HABERCI_INTERNAL_TOKEN`) in [`HEADER`], compared in constant
//! time ([`InternalToken::admits`]).
//!
//! - `GET` [`user_conversations_path`]: every conversation the user is in, with kind, direct
//!   peer, last seq and the user's watermarks ([`UserConversations`]; a gateway's session
//!   start). With `?session=`, first the check that it is an active session of that user:
//!   `403` when it is revoked, expired, unknown or another user's (the gateway then refuses
//!   the `Hello`).
//! - `POST` [`SYNC_PATH`]: for a list of `(conversation, after)` positions, the messages the
//!   user missed, ascending ([`SyncRequest`] → [`SyncAnswer`]; resume).
//! - `GET` [`STATS_PATH`]: the API process's cache counters ([`Stats`]; operators, benchmarks).
//! - `POST` [`PRESENCE_VISIBLE_PATH`]: which of some users a viewer may watch the presence of
//!   ([`PresenceVisibleRequest`] → [`PresenceVisibleAnswer`]; `PresenceWatch`).

use haberci_wire::{ConversationId, Message, SessionId, UserId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The header that carries the shared secret.
pub const HEADER: &str = "x-haberci-internal";

/// Every header a gateway sets for the backend starts with this; the proxy drops any a client
/// sent, so the backend can trust them.
pub const PRIVATE_HEADER_PREFIX: &str = "x-haberci-";
/// The client's IP, set by the gateway from the connection (API boundary: trusted only
/// because of [`PRIVATE_HEADER_PREFIX`]).
pub const CLIENT_IP_HEADER: &str = "x-haberci-client-ip";

/// The route of [`user_conversations_path`], in axum's syntax.
pub const USER_CONVERSATIONS_ROUTE: &str = "/internal/v1/users/{userId}/conversations";
/// `POST`: [`SyncRequest`] → [`SyncAnswer`].
pub const SYNC_PATH: &str = "/internal/v1/sync";
/// `GET`: [`Stats`].
pub const STATS_PATH: &str = "/internal/v1/stats";
/// `POST`: [`PresenceVisibleRequest`] → [`PresenceVisibleAnswer`].
pub const PRESENCE_VISIBLE_PATH: &str = "/internal/v1/presence/visible";
/// Most users one [`PresenceVisibleRequest`] may name (a `PresenceWatch`'s limit).
pub const MAX_PRESENCE_USERS: usize = 256;

/// Whose presence `viewer` may watch, among `user_ids` (at most [`MAX_PRESENCE_USERS`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PresenceVisibleRequest {
    pub viewer: UserId,
    pub user_ids: Vec<UserId>,
}

/// The users of the request whose presence the viewer may watch: themselves, and those who
/// show their presence and share a conversation with the viewer or follow each other with
/// them (docs/PROTOCOL.md, "Typing and presence").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PresenceVisibleAnswer {
    pub user_ids: Vec<UserId>,
}

/// `GET`: [`UserConversations`] of `user`, once `session` is found to be an active session
/// of `user` (`403` otherwise).
pub fn user_conversations_path(user: UserId, session: SessionId) -> String {
    format!("/internal/v1/users/{user}/conversations?session={session}")
}

/// The query of [`USER_CONVERSATIONS_ROUTE`]. `session` is optional only for gateways of
/// earlier releases during a rolling upgrade; every gateway of this release sends it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct SessionQuery {
    pub session: Option<SessionId>,
}

/// Default and largest number of messages per conversation in one sync answer.
pub const DEFAULT_SYNC_LIMIT: u32 = 100;
pub const MAX_SYNC_LIMIT: u32 = 500;
/// Most positions in one sync request.
pub const MAX_SYNC_POSITIONS: usize = 1000;
/// Most messages in one sync answer, all conversations together: the per-conversation limit
/// is lowered to `MAX_SYNC_MESSAGES / positions` when needed (the answer says which limit it
/// used; `more` tells which conversations to ask again).
pub const MAX_SYNC_MESSAGES: usize = 10_000;

/// The shared secret (`HABERCI_INTERNAL_TOKEN`), as both sides parse it. `Debug` never
/// prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct InternalToken(String);

impl InternalToken {
    /// Shortest token accepted: 32 characters (e.g. 16 random bytes in hex).
    pub const MIN_LEN: usize = 32;

    pub fn new(text: impl Into<String>) -> Result<InternalToken, &'static str> {
        let text = text.into();
        if text.chars().count() < Self::MIN_LEN {
            return Err("must be at least 32 characters");
        }
        if !text.chars().all(|c| c.is_ascii_graphic()) {
            return Err("must be printable ASCII without spaces (it travels in an HTTP header)");
        }
        Ok(InternalToken(text))
    }

    /// The [`HEADER`] value a gateway sends.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `presented` (the [`HEADER`] value of a request) is this secret.
    ///
    /// Invariant: compared in constant time, over digests so that not even the length leaks
    /// through timing.
    pub fn admits(&self, presented: &[u8]) -> bool {
        let equal = Sha256::digest(presented).ct_eq(&Sha256::digest(self.0.as_bytes()));
        bool::from(equal)
    }
}

impl std::fmt::Debug for InternalToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InternalToken(***)")
    }
}

/// `direct` or `group`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConversationKind {
    Direct,
    Group,
}

/// The answer of [`user_conversations_path`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserConversations {
    pub conversations: Vec<UserConversation>,
}

/// One conversation a user is a member of, with the user's positions in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserConversation {
    pub id: ConversationId,
    pub kind: ConversationKind,
    /// The other member of a direct conversation; `None` for a group.
    pub peer: Option<UserId>,
    pub last_seq: u64,
    pub joined_seq: u64,
    pub delivered_seq: u64,
    pub read_seq: u64,
}

/// The body of a [`SYNC_PATH`] request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SyncRequest {
    pub user_id: UserId,
    /// Each conversation at most once; at most [`MAX_SYNC_POSITIONS`].
    pub positions: Vec<SyncPosition>,
    /// Messages per conversation, 1 to [`MAX_SYNC_LIMIT`]; [`DEFAULT_SYNC_LIMIT`] if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SyncPosition {
    pub conversation_id: ConversationId,
    /// The last seq the client holds; 0 for none.
    #[serde(default)]
    pub after: u64,
}

/// The answer to a [`SyncRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncAnswer {
    /// The per-conversation limit this answer used (lower than asked when many positions
    /// were listed; see [`MAX_SYNC_MESSAGES`]).
    pub limit: u32,
    /// One entry per position, in the order given.
    pub conversations: Vec<SyncConversation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncConversation {
    pub conversation_id: ConversationId,
    /// Ascending by seq.
    pub messages: Vec<Message>,
    /// More messages follow the last one returned.
    pub more: bool,
    /// The user is not a member (or there is no such conversation): nothing is returned.
    pub forbidden: bool,
}

/// The answer of [`STATS_PATH`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub profile_cache: CacheStats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_long_printable_and_admits_only_itself() {
        let secret = "s3cret-s3cret-s3cret-s3cret-s3cret";
        let token = InternalToken::new(secret).unwrap_or_else(|e| panic!("{e}"));
        assert!(token.admits(secret.as_bytes()));
        let shorter = &secret[..secret.len() - 1];
        let spaced = format!("{secret} ");
        for wrong in [&b""[..], shorter.as_bytes(), spaced.as_bytes(), b"S3CRET"] {
            assert!(!token.admits(wrong), "{wrong:?}");
        }
        assert!(!format!("{token:?}").contains("s3cret"), "never logged");
        assert!(InternalToken::new("x".repeat(31)).is_err());
        assert!(InternalToken::new(format!("{} x", "x".repeat(32))).is_err());
        assert!(InternalToken::new("x".repeat(32)).is_ok());
    }

    #[test]
    fn a_sync_request_without_limit_omits_it_and_unknown_fields_are_refused() {
        let json = r#"{"userId":"0190a8b0-0000-7000-8000-000000000001","positions":[{"conversationId":"0190a8b0-0000-7000-8000-000000000002"}]}"#;
        let request: SyncRequest = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(request.limit, None);
        assert_eq!(request.positions[0].after, 0);
        assert_eq!(
            serde_json::to_string(&request).unwrap_or_default(),
            json.replace("}]}", r#","after":0}]}"#)
        );
        let extra = json.replace("\"positions\"", "\"bogus\":1,\"positions\"");
        assert!(serde_json::from_str::<SyncRequest>(&extra).is_err());
    }
}
