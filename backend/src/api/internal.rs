//! The internal API, for gateways only: `/internal/v1/*`. The contract (paths, header, types,
//! limits) is `haberci_seam::internal`; this module answers it.
//!
//! With no secret configured (`HABERCI_INTERNAL_TOKEN` unset) the routes answer 404 as if they
//! did not exist; a wrong or missing secret is 401 `invalid_internal_token` ([`Gateway`]).

use std::collections::{HashMap, HashSet};

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::routing::{get, post};
use haberci_seam::internal::{
    CacheStats, ConversationKind, DEFAULT_SYNC_LIMIT, HEADER, MAX_PRESENCE_USERS, MAX_SYNC_LIMIT,
    MAX_SYNC_MESSAGES, MAX_SYNC_POSITIONS, PRESENCE_VISIBLE_PATH, PresenceVisibleAnswer,
    PresenceVisibleRequest, STATS_PATH, SYNC_PATH, SessionQuery, Stats, SyncAnswer,
    SyncConversation, SyncRequest, USER_CONVERSATIONS_ROUTE, UserConversation, UserConversations,
};
use haberci_wire::{ConversationId, Message, Seq, UserId};

use super::extract::{ApiJson, ApiPath};
use super::{ApiError, AppState};
use crate::auth::sessions::{self, NotUsable};
use crate::conversations::store::{self, SyncRow};
use crate::conversations::{self, Kind, OthersWatermarks, status_for};

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route(USER_CONVERSATIONS_ROUTE, get(user_conversations))
        .route(SYNC_PATH, post(sync))
        .route(STATS_PATH, get(stats))
        .route(PRESENCE_VISIBLE_PATH, post(presence_visible))
}

/// Whose presence the viewer may watch: themselves, and every user who shows it and shares a
/// conversation with the viewer or follows them both ways (docs/PROTOCOL.md).
async fn presence_visible(
    _gateway: Gateway,
    State(state): State<AppState>,
    ApiJson(request): ApiJson<PresenceVisibleRequest>,
) -> Result<Json<PresenceVisibleAnswer>, ApiError> {
    if request.user_ids.len() > MAX_PRESENCE_USERS {
        return Err(ApiError::invalid(
            "userIds",
            format!("at most {MAX_PRESENCE_USERS} users"),
        ));
    }
    let asked: Vec<uuid::Uuid> = request.user_ids.iter().map(|u| u.as_uuid()).collect();
    let visible: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT u.id FROM users u
         WHERE u.id = ANY($2)
           AND (u.id = $1 OR (u.show_presence AND (
                EXISTS (SELECT 1 FROM members mine
                        JOIN members theirs ON theirs.conversation_id = mine.conversation_id
                        WHERE mine.user_id = $1 AND theirs.user_id = u.id)
             OR (EXISTS (SELECT 1 FROM follows WHERE follower_id = $1 AND followee_id = u.id)
                 AND EXISTS (SELECT 1 FROM follows WHERE follower_id = u.id AND followee_id = $1)))))",
    )
    .bind(request.viewer.as_uuid())
    .bind(&asked)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(PresenceVisibleAnswer {
        user_ids: visible.into_iter().filter_map(UserId::new).collect(),
    }))
}

/// This API process's cache counters (operators, benchmarks).
async fn stats(_gateway: Gateway, State(state): State<AppState>) -> Json<Stats> {
    let profiles = state.profiles.stats();
    Json(Stats {
        profile_cache: CacheStats {
            hits: profiles.hits,
            misses: profiles.misses,
        },
    })
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
        if expected.admits(presented) {
            Ok(Gateway)
        } else {
            Err(ApiError::InternalUnauthorized)
        }
    }
}

fn seq_out(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

async fn user_conversations(
    _gateway: Gateway,
    State(state): State<AppState>,
    ApiPath(user): ApiPath<UserId>,
    query: Result<axum::extract::Query<SessionQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<UserConversations>, ApiError> {
    let axum::extract::Query(query) =
        query.map_err(|_| ApiError::invalid("session", "must be a session id"))?;
    // Invariant: a gateway welcomes a Hello only after this: a signed token is not enough,
    // its session must be live and its subject's (the check the HTTP API makes per request).
    if let Some(session) = query.session {
        let usable = sessions::usable_by(
            &state.db,
            &state.redis,
            session,
            user,
            state.auth.settings.session_cache_ttl,
        )
        .await?;
        if let Err(why) = usable {
            return Err(ApiError::Forbidden(match why {
                NotUsable::OtherUser => "another user's session",
                NotUsable::NotActive => "the session is not active",
            }));
        }
    }
    let rows = store::user_conversations(&state.db, user).await?;
    let conversations = rows
        .into_iter()
        .map(|row| UserConversation {
            id: row.id,
            kind: match row.kind {
                Kind::Direct => ConversationKind::Direct,
                Kind::Group => ConversationKind::Group,
            },
            peer: row.peer,
            last_seq: seq_out(row.last_seq),
            joined_seq: seq_out(row.joined_seq),
            delivered_seq: seq_out(row.delivered_seq),
            read_seq: seq_out(row.read_seq),
        })
        .collect();
    Ok(Json(UserConversations { conversations }))
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
    let user = request.user_id;
    let rows = store::sync(&state.db, user, &positions, i64::from(limit) + 1).await?;
    let mut answer: Vec<SyncConversation> = Vec::with_capacity(positions.len());
    let mut index: HashMap<ConversationId, usize> = HashMap::with_capacity(positions.len());
    for row in &rows {
        let slot = match index.get(&row.position) {
            Some(&slot) => slot,
            None => {
                answer.push(SyncConversation {
                    conversation_id: row.position,
                    messages: Vec::new(),
                    more: false,
                    forbidden: !row.member,
                });
                index.insert(row.position, answer.len() - 1);
                answer.len() - 1
            }
        };
        let entry = &mut answer[slot];
        if let Some(message) = message_of(user, row)? {
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
