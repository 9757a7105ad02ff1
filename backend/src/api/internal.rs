//! The internal API, for gateways only: `/internal/v1/*`.
//!
//! API boundary: not under `/v1`, so a gateway's proxy (which forwards `/v1/*` only) never
//! passes a client's request here, and not in the public OpenAPI document. Every request
//! carries the shared secret in `x-haberci-internal` ([`Gateway`]); with no secret configured
//! (`HABERCI_INTERNAL_TOKEN` unset) the routes answer 404 as if they did not exist.
//!
//! - `GET /internal/v1/users/{userId}/conversations`: every conversation the user is in, with
//!   kind, direct peer, last seq and the user's watermarks (a gateway's session start).
//! - `POST /internal/v1/sync`: for a list of `(conversation, after)` positions, the messages
//!   the user missed, ascending, in one SQL query (resume).

use std::collections::{HashMap, HashSet};

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::routing::{get, post};
use haberci_wire::{Message, Seq};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::extract::{ApiJson, ApiPath};
use super::{ApiError, AppState};
use crate::accounts::UserId;
use crate::conversations::store::{self, SyncRow};
use crate::conversations::{self, Kind, OthersWatermarks, status_for};

/// The header that carries the shared secret.
pub const HEADER: &str = "x-haberci-internal";
/// Default and largest number of messages per conversation in one sync answer.
pub const DEFAULT_SYNC_LIMIT: u32 = 100;
pub const MAX_SYNC_LIMIT: u32 = 500;
/// Most positions in one sync request.
pub const MAX_SYNC_POSITIONS: usize = 1000;
/// Most messages in one sync answer, all conversations together: the per-conversation limit
/// is lowered to `MAX_SYNC_MESSAGES / positions` when needed (the answer says which limit it
/// used; `more` tells which conversations to ask again).
pub const MAX_SYNC_MESSAGES: usize = 10_000;

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route(
            "/internal/v1/users/{userId}/conversations",
            get(user_conversations),
        )
        .route("/internal/v1/sync", post(sync))
        .route("/internal/v1/stats", get(stats))
}

/// `GET /internal/v1/stats`: this API process's cache counters (operators, benchmarks).
async fn stats(_gateway: Gateway, State(state): State<AppState>) -> Json<serde_json::Value> {
    let profiles = state.profiles.stats();
    Json(serde_json::json!({
        "profileCache": { "hits": profiles.hits, "misses": profiles.misses },
    }))
}

/// A request that presented the internal secret.
#[derive(Debug, Clone, Copy)]
pub struct Gateway;

impl FromRequestParts<AppState> for Gateway {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(expected) = &state.settings.internal_token else {
            return Err(ApiError::NotFound);
        };
        let presented = parts
            .headers
            .get(HEADER)
            .map(|value| value.as_bytes())
            .ok_or(ApiError::InternalUnauthorized)?;
        // Invariant: compared in constant time, over digests so that not even the length
        // leaks through timing.
        let equal = Sha256::digest(presented).ct_eq(&Sha256::digest(expected.as_bytes()));
        if bool::from(equal) {
            Ok(Gateway)
        } else {
            Err(ApiError::InternalUnauthorized)
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserConversationView {
    pub id: Uuid,
    pub kind: Kind,
    pub peer: Option<UserId>,
    pub last_seq: u64,
    pub joined_seq: u64,
    pub delivered_seq: u64,
    pub read_seq: u64,
}

#[derive(Debug, Serialize)]
pub struct UserConversations {
    pub conversations: Vec<UserConversationView>,
}

fn seq_out(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

async fn user_conversations(
    _gateway: Gateway,
    State(state): State<AppState>,
    ApiPath(user): ApiPath<String>,
) -> Result<Json<UserConversations>, ApiError> {
    let user = UserId(Uuid::parse_str(&user).map_err(|_| ApiError::NotFound)?);
    let rows = store::user_conversations(&state.db, user).await?;
    Ok(Json(UserConversations {
        conversations: rows
            .into_iter()
            .map(|row| UserConversationView {
                id: row.id,
                kind: row.kind,
                peer: row.peer,
                last_seq: seq_out(row.last_seq),
                joined_seq: seq_out(row.joined_seq),
                delivered_seq: seq_out(row.delivered_seq),
                read_seq: seq_out(row.read_seq),
            })
            .collect(),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SyncRequest {
    pub user_id: UserId,
    pub positions: Vec<Position>,
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Position {
    pub conversation_id: Uuid,
    /// The last seq the client holds; 0 for none.
    #[serde(default)]
    pub after: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncConversation {
    pub conversation_id: Uuid,
    /// Ascending by seq.
    pub messages: Vec<Message>,
    /// More messages follow the last one returned.
    pub more: bool,
    /// The user is not a member (or there is no such conversation): nothing is returned.
    pub forbidden: bool,
}

#[derive(Debug, Serialize)]
pub struct SyncAnswer {
    /// The per-conversation limit this answer used (lower than asked when many positions
    /// were listed; see `MAX_SYNC_MESSAGES`).
    pub limit: u32,
    /// One entry per position, in the order given.
    pub conversations: Vec<SyncConversation>,
}

async fn sync(
    _gateway: Gateway,
    State(state): State<AppState>,
    ApiJson(request): ApiJson<SyncRequest>,
) -> Result<Json<SyncAnswer>, ApiError> {
    let asked = request.limit.unwrap_or(DEFAULT_SYNC_LIMIT);
    if !(1..=MAX_SYNC_LIMIT).contains(&asked) {
        return Err(ApiError::invalid(
            "limit",
            format!("limit must be from 1 to {MAX_SYNC_LIMIT}"),
        ));
    }
    if request.positions.len() > MAX_SYNC_POSITIONS {
        return Err(ApiError::invalid(
            "positions",
            format!("at most {MAX_SYNC_POSITIONS} positions"),
        ));
    }
    let mut seen = HashSet::with_capacity(request.positions.len());
    let mut positions = Vec::with_capacity(request.positions.len());
    for (i, p) in request.positions.iter().enumerate() {
        if !seen.insert(p.conversation_id) {
            return Err(ApiError::invalid(
                &format!("positions[{i}].conversationId"),
                "each conversation at most once",
            ));
        }
        let after = conversations::stored_seq(p.after).ok_or_else(|| {
            ApiError::invalid(
                &format!("positions[{i}].after"),
                format!("after must be from 0 to {}", Seq::MAX),
            )
        })?;
        positions.push((p.conversation_id, after));
    }
    let budget = u32::try_from(MAX_SYNC_MESSAGES / positions.len().max(1)).unwrap_or(u32::MAX);
    let limit = asked.min(budget).max(1);
    if positions.is_empty() {
        return Ok(Json(SyncAnswer {
            limit,
            conversations: Vec::new(),
        }));
    }
    // One more than the limit: its presence is `more`.
    let rows = store::sync(&state.db, request.user_id, &positions, i64::from(limit) + 1).await?;
    let mut answer: Vec<SyncConversation> = Vec::with_capacity(positions.len());
    let mut index: HashMap<Uuid, usize> = HashMap::with_capacity(positions.len());
    for row in &rows {
        let slot = *index.entry(row.position).or_insert_with(|| {
            answer.push(SyncConversation {
                conversation_id: row.position,
                messages: Vec::new(),
                more: false,
                forbidden: !row.member,
            });
            answer.len() - 1
        });
        let entry = &mut answer[slot];
        if let Some(message) = message_of(request.user_id, row)? {
            if entry.messages.len() == usize::try_from(limit).unwrap_or(usize::MAX) {
                entry.more = true;
            } else {
                entry.messages.push(message);
            }
        }
    }
    Ok(Json(SyncAnswer {
        limit,
        conversations: answer,
    }))
}

fn message_of(user: UserId, row: &SyncRow) -> Result<Option<Message>, ApiError> {
    let Some(stored) = row.message() else {
        return Ok(None);
    };
    let others = OthersWatermarks {
        delivered: row.others_delivered,
        read: row.others_read,
    };
    let status = status_for(
        user,
        stored.sender_id,
        stored.seq,
        row.read_seq.unwrap_or(0),
        others,
    );
    stored
        .to_message(row.pair(), status)
        .map(Some)
        .map_err(|err| ApiError::Internal(err.into()))
}
