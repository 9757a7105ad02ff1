//! `/v1/notifications`: what happened to me (follows, follow requests, likes, comments,
//! mentions, reposts), grouped where people expect it, and reports and moderation.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use haberci_wire::{CommentId, NotificationId, PostId, UserId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::cursor;
use super::extract::{ApiJson, ApiPath, ApiQuery, Authenticated};
use super::social::{page_limit, visible_user};
use super::{ApiError, AppState};
use crate::social::notify;
use crate::social::store::{self, MAX_ID};

/// One entry of the list: a single event, or likes / reposts of one post grouped ("A and 3
/// others liked your post": `actorCount` 4, `actors` the newest few).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationView {
    /// The newest event's id (also the mark-as-read position).
    #[schema(value_type = String, format = Uuid)]
    pub id: NotificationId,
    /// `follow`, `follow_request`, `like`, `comment`, `mention` or `repost`.
    pub kind: String,
    #[schema(value_type = Option<String>, format = Uuid)]
    pub post_id: Option<PostId>,
    #[schema(value_type = Option<String>, format = Uuid)]
    pub comment_id: Option<CommentId>,
    /// How many people did this.
    pub actor_count: i64,
    /// The newest of them (at most 3), newest first.
    pub actors: Vec<ActorRef>,
    pub unread: bool,
    /// When the newest event happened.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActorRef {
    #[schema(value_type = String, format = Uuid)]
    pub id: UserId,
    pub username: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationPage {
    /// By newest event, newest first.
    pub notifications: Vec<NotificationView>,
    pub unread_count: i64,
    /// Pass as `cursor` for the next (older) page; `null` at the end.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnreadCount {
    pub unread_count: i64,
}

/// `POST /v1/notifications/read`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MarkReadRequest {
    /// Mark read every notification up to this id (a `NotificationView.id`); absent: all.
    // A position, not an id: any UUID.
    #[serde(default)]
    #[schema(format = Uuid)]
    pub up_to: Option<Uuid>,
}

/// My notifications.
#[utoipa::path(get, path = "/v1/notifications", tag = "notifications",
    security(("bearer" = [])),
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Page size (default 20)"),
        ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of notifications", body = NotificationPage),
        (status = 422, description = "`invalid_field`: a bad `limit` or `cursor`", body = super::ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    me: Authenticated,
    query: ApiQuery,
) -> Result<Json<NotificationPage>, ApiError> {
    let limit = page_limit(&query)?;
    let before = query
        .text("cursor")
        .map(cursor::decode_id)
        .transpose()?
        .unwrap_or(MAX_ID);
    let mut rows = notify::list(&state.db, me.user, before, limit + 1).await?;
    let more = rows.len() > usize::try_from(limit).unwrap_or(0);
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    let next_cursor = more
        .then(|| rows.last())
        .flatten()
        .map(|n| cursor::encode_id(n.latest.as_uuid()));
    let unread_count = notify::unread_count(&state.db, me.user).await?;
    let notifications = rows
        .into_iter()
        .map(|n| NotificationView {
            id: n.latest,
            kind: n.kind,
            post_id: n.post_id,
            comment_id: n.comment_id,
            actor_count: n.actor_count,
            actors: n
                .actor_ids
                .into_iter()
                .zip(n.actor_usernames)
                .map(|(id, username)| ActorRef { id, username })
                .collect(),
            unread: n.unread,
            at: n.at,
        })
        .collect();
    Ok(Json(NotificationPage {
        notifications,
        unread_count,
        next_cursor,
    }))
}

/// How many notifications I have not read (the badge).
#[utoipa::path(get, path = "/v1/notifications/unread-count", tag = "notifications",
    security(("bearer" = [])),
    responses((status = 200, description = "The unread count", body = UnreadCount)))]
pub async fn unread_count(
    State(state): State<AppState>,
    me: Authenticated,
) -> Result<Json<UnreadCount>, ApiError> {
    Ok(Json(UnreadCount {
        unread_count: notify::unread_count(&state.db, me.user).await?,
    }))
}

/// Mark notifications read.
#[utoipa::path(post, path = "/v1/notifications/read", tag = "notifications",
    security(("bearer" = [])),
    request_body = MarkReadRequest,
    responses(
        (status = 200, description = "What is still unread", body = UnreadCount),
        (status = 422, description = "`invalid_field`: a bad `upTo`", body = super::ErrorBody),
    ))]
pub async fn mark_read(
    State(state): State<AppState>,
    me: Authenticated,
    ApiJson(request): ApiJson<MarkReadRequest>,
) -> Result<Json<UnreadCount>, ApiError> {
    notify::mark_read(&state.db, me.user, request.up_to).await?;
    Ok(Json(UnreadCount {
        unread_count: notify::unread_count(&state.db, me.user).await?,
    }))
}

// ---------------------------------------------------------------- reports and moderation

/// `POST /v1/reports`: exactly one of `postId` and `username`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReportRequest {
    // A plain UUID: one that names no post I can see (the nil UUID included) answers 404.
    #[serde(default)]
    #[schema(format = Uuid)]
    pub post_id: Option<Uuid>,
    #[serde(default)]
    pub username: Option<String>,
    /// 1–500 characters.
    #[schema(min_length = 1, max_length = 500)]
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportReceipt {
    #[schema(format = Uuid)]
    pub id: Uuid,
}

/// Report a post or a user to the moderators.
#[utoipa::path(post, path = "/v1/reports", tag = "moderation",
    security(("bearer" = [])),
    request_body = ReportRequest,
    responses(
        (status = 201, description = "Reported", body = ReportReceipt),
        (status = 404, description = "No such post or user, or not visible to me", body = super::ErrorBody),
        (status = 422, description = "`invalid_field`: not exactly one of `postId` and `username`, or a bad `reason`", body = super::ErrorBody),
    ))]
pub async fn report(
    State(state): State<AppState>,
    me: Authenticated,
    ApiJson(request): ApiJson<ReportRequest>,
) -> Result<Response, ApiError> {
    let reason = request.reason.trim();
    let chars = reason.chars().count();
    if chars == 0 || chars > 500 {
        return Err(ApiError::invalid(
            "reason",
            "reason must be 1 to 500 characters",
        ));
    }
    let (post, user) = match (request.post_id, request.username.as_deref()) {
        (Some(post), None) => {
            let post = PostId::new(post).ok_or(ApiError::NotFound)?;
            store::actionable(&state.db, me.user, post)
                .await?
                .ok_or(ApiError::NotFound)?;
            (Some(post), None)
        }
        (None, Some(name)) => (None, Some(visible_user(&state, me.user, name).await?.id)),
        _ => {
            return Err(ApiError::invalid(
                "postId",
                "a report names exactly one of postId and username",
            ));
        }
    };
    let id = store::report(&state.db, me.user, post, user, reason).await?;
    Ok((StatusCode::CREATED, Json(ReportReceipt { id })).into_response())
}

/// Suspend an account (admins only): it can no longer sign in, its sessions end at once
/// (realtime connections close), and its posts, comments and profile disappear.
#[utoipa::path(post, path = "/v1/admin/users/{username}/suspend", tag = "moderation",
    security(("bearer" = [])),
    params(("username" = String, Path, description = "Whom to suspend")),
    responses(
        (status = 204, description = "Suspended"),
        (status = 403, description = "`forbidden`: I am not an admin", body = super::ErrorBody),
        (status = 404, description = "No such user", body = super::ErrorBody),
    ))]
pub async fn suspend(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(username): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    if !store::is_admin(&state.db, me.user).await? {
        return Err(ApiError::Forbidden("only an admin may suspend an account"));
    }
    let target = visible_user(&state, me.user, &username).await?;
    if target.id == me.user {
        return Err(ApiError::Forbidden("an admin cannot suspend themselves"));
    }
    store::suspend(&state.db, target.id).await?;
    super::social::forget(&state, &[target.id]).await;
    let revoked = crate::auth::sessions::revoke_suspended(&state.db, target.id).await?;
    crate::auth::sessions::announce(&state.redis, &revoked, state.auth.revoked_marker_ttl()).await;
    Ok(StatusCode::NO_CONTENT)
}
