//! Relations between users: follow (a request when the account is private), follow requests,
//! blocks, mutes, and the lists of each.
//!
//! API boundary: users are addressed by username. A user with a block between them and the
//! caller (either way) or a suspended one answers 404 like one that does not exist, except to
//! `DELETE …/block`, so the blocker can always undo it.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use haberci_wire::{PostId, UserId};
use serde::Serialize;
use utoipa::ToSchema;

use super::cursor;
use super::extract::{ApiPath, ApiQuery, Authenticated};
use super::{ApiError, AppState};
use crate::accounts::Username;
use crate::accounts::store::{self as accounts, UserRecord};
use crate::auth::rate_limit::{Account, Bucket};
use crate::social::notify::{self, Kind};
use crate::social::store::{self, Followed, TimeCursor, UserList, UserSummary};

pub const DEFAULT_LIST_LIMIT: u64 = 20;
pub const MAX_LIST_LIMIT: u64 = 100;

/// A user as lists and posts show them.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserRef {
    #[schema(value_type = String, format = Uuid)]
    pub id: UserId,
    pub username: String,
    pub display_name: String,
    pub avatar_ref: Option<String>,
}

impl From<UserSummary> for UserRef {
    fn from(u: UserSummary) -> Self {
        UserRef {
            id: u.id,
            username: u.username,
            display_name: u.display_name,
            avatar_ref: u.avatar_ref,
        }
    }
}

/// A page of users.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserPage {
    /// Newest relation first.
    pub users: Vec<UserRef>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// What `POST /v1/users/{username}/follow` did.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FollowState {
    /// `following`, or `requested` for a private account (until its owner approves).
    pub state: &'static str,
}

/// Draws one request of the caller from an anti-spam bucket. Redis down: allowed (the limits
/// shed spam; refusing would stop every write while Redis is away).
pub async fn limit(
    state: &AppState,
    action: &str,
    user: UserId,
    rate: crate::config::Rate,
) -> Result<(), ApiError> {
    let bucket = Bucket::account(action, Account::User(user), rate);
    match state.auth.limiter.check(&state.redis, &[bucket]).await {
        Ok(crate::auth::rate_limit::Decision::Allowed) => Ok(()),
        Ok(crate::auth::rate_limit::Decision::Limited { retry_after }) => {
            Err(ApiError::RateLimited { retry_after })
        }
        Err(err) => {
            tracing::warn!(%err, action, "rate limiter unavailable (redis); allowing the request");
            Ok(())
        }
    }
}

/// The user a path names, as the caller may see them (404 when not).
pub async fn visible_user(
    state: &AppState,
    me: UserId,
    username: &str,
) -> Result<UserRecord, ApiError> {
    let user = any_user(state, username).await?;
    if user.id != me && store::relationship(&state.db, me, user.id).await?.hidden() {
        return Err(ApiError::NotFound);
    }
    Ok(user)
}

/// The active user a path names, blocks aside.
async fn any_user(state: &AppState, username: &str) -> Result<UserRecord, ApiError> {
    let username = Username::parse(username).map_err(|_| ApiError::NotFound)?;
    let user = accounts::by_username(&state.db, &username)
        .await?
        .ok_or(ApiError::NotFound)?;
    if user.suspended_at.is_some() {
        return Err(ApiError::NotFound);
    }
    Ok(user)
}

impl store::Relationship {
    /// A block stands between the two: each is hidden from the other.
    pub fn hidden(&self) -> bool {
        self.blocking || self.blocked_by
    }
}

/// Forgets cached profiles whose counts changed.
pub async fn forget(state: &AppState, users: &[UserId]) {
    state.profiles.forget(&state.db, &state.redis, users).await;
}

fn not_self(me: UserId, other: UserId, what: &'static str) -> Result<(), ApiError> {
    if me == other {
        return Err(ApiError::Forbidden(what));
    }
    Ok(())
}

pub fn page_limit(query: &ApiQuery) -> Result<i64, ApiError> {
    let limit = query
        .integer("limit", 1, MAX_LIST_LIMIT)?
        .unwrap_or(DEFAULT_LIST_LIMIT);
    Ok(i64::try_from(limit).unwrap_or(20))
}

async fn user_page(
    state: &AppState,
    me: UserId,
    list: UserList,
    query: &ApiQuery,
) -> Result<UserPage, ApiError> {
    let limit = page_limit(query)?;
    let after = query.text("cursor").map(cursor::decode_time).transpose()?;
    let mut rows = store::users(&state.db, me, list, after, limit + 1).await?;
    let more = rows.len() > usize::try_from(limit).unwrap_or(0);
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    let next_cursor = more.then(|| rows.last()).flatten().map(|u| {
        cursor::encode_time(TimeCursor {
            at: u.at,
            id: u.id.as_uuid(),
        })
    });
    Ok(UserPage {
        users: rows.into_iter().map(UserRef::from).collect(),
        next_cursor,
    })
}

// ---------------------------------------------------------------- follows

/// Follow a user. A private account's owner must approve: the answer is then `requested`.
/// Following again is no error (the same answer).
#[utoipa::path(post, path = "/v1/users/{username}/follow", tag = "social",
    security(("bearer" = [])),
    params(("username" = String, Path, description = "Whom to follow")),
    responses(
        (status = 200, description = "Following, or requested", body = FollowState),
        (status = 403, description = "`forbidden`: following oneself", body = super::ErrorBody),
        (status = 404, description = "No such user (or a block between us)", body = super::ErrorBody),
        (status = 429, description = "`rate_limited`: too many follows", body = super::ErrorBody),
    ))]
pub async fn follow(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(username): ApiPath<String>,
) -> Result<Json<FollowState>, ApiError> {
    let target = visible_user(&state, me.user, &username).await?;
    not_self(me.user, target.id, "you cannot follow yourself")?;
    limit(&state, "follow", me.user, state.settings.social.follow).await?;
    let mut tx = state.db.begin().await?;
    let locked = store::lock_pair(&mut tx, me.user, target.id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let outcome = store::follow(&mut tx, me.user, locked).await?;
    let event = match outcome {
        Followed::Following { new: true } => Some(Kind::Follow),
        Followed::Requested { new: true } => Some(Kind::FollowRequest),
        _ => None,
    };
    let mut told = Vec::new();
    if let Some(kind) = event {
        told.extend(
            notify::notify(
                &mut tx,
                notify::Event {
                    user: target.id,
                    kind,
                    actor: me.user,
                    post: None,
                    comment: None,
                },
            )
            .await?,
        );
    }
    tx.commit().await?;
    notify::announce(&state.db, &state.redis, &told).await;
    if outcome == (Followed::Following { new: true }) {
        state.feed.invalidate(&state.redis, me.user).await;
        forget(&state, &[me.user, target.id]).await;
    }
    Ok(Json(FollowState {
        state: match outcome {
            Followed::Following { .. } => "following",
            Followed::Requested { .. } => "requested",
        },
    }))
}

/// Stop following a user, or withdraw a follow request. Unfollowing someone not followed is
/// no error.
#[utoipa::path(delete, path = "/v1/users/{username}/follow", tag = "social",
    security(("bearer" = [])),
    params(("username" = String, Path, description = "Whom to unfollow")),
    responses(
        (status = 204, description = "Not following (any more)"),
        (status = 404, description = "No such user (or a block between us)", body = super::ErrorBody),
    ))]
pub async fn unfollow(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(username): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let target = visible_user(&state, me.user, &username).await?;
    let mut tx = state.db.begin().await?;
    store::lock_pair(&mut tx, me.user, target.id).await?;
    let changed = store::unfollow(&mut tx, me.user, target.id).await?;
    tx.commit().await?;
    if changed {
        state.feed.invalidate(&state.redis, me.user).await;
        forget(&state, &[me.user, target.id]).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Who follows a user. A private account's lists are for its followers and itself.
#[utoipa::path(get, path = "/v1/users/{username}/followers", tag = "social",
    security(("bearer" = [])),
    params(
        ("username" = String, Path, description = "Whose followers"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Page size (default 20)"),
        ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of followers", body = UserPage),
        (status = 403, description = "`forbidden`: a private account I do not follow", body = super::ErrorBody),
        (status = 404, description = "No such user (or a block between us)", body = super::ErrorBody),
        (status = 422, description = "`invalid_field`: a bad `limit` or `cursor`", body = super::ErrorBody),
    ))]
pub async fn followers(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(username): ApiPath<String>,
    query: ApiQuery,
) -> Result<Json<UserPage>, ApiError> {
    let user = lists_of(&state, me.user, &username).await?;
    Ok(Json(
        user_page(&state, me.user, UserList::Followers(user), &query).await?,
    ))
}

/// Whom a user follows. A private account's lists are for its followers and itself.
#[utoipa::path(get, path = "/v1/users/{username}/following", tag = "social",
    security(("bearer" = [])),
    params(
        ("username" = String, Path, description = "Whose follows"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Page size (default 20)"),
        ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of followed users", body = UserPage),
        (status = 403, description = "`forbidden`: a private account I do not follow", body = super::ErrorBody),
        (status = 404, description = "No such user (or a block between us)", body = super::ErrorBody),
        (status = 422, description = "`invalid_field`: a bad `limit` or `cursor`", body = super::ErrorBody),
    ))]
pub async fn following(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(username): ApiPath<String>,
    query: ApiQuery,
) -> Result<Json<UserPage>, ApiError> {
    let user = lists_of(&state, me.user, &username).await?;
    Ok(Json(
        user_page(&state, me.user, UserList::Following(user), &query).await?,
    ))
}

/// The user whose lists the caller may read.
async fn lists_of(state: &AppState, me: UserId, username: &str) -> Result<UserId, ApiError> {
    let user = visible_user(state, me, username).await?;
    if user.is_private
        && user.id != me
        && !store::relationship(&state.db, me, user.id).await?.following
    {
        return Err(ApiError::Forbidden(
            "this account is private: only its followers see its lists",
        ));
    }
    Ok(user.id)
}

/// Follow requests waiting for my approval.
#[utoipa::path(get, path = "/v1/me/follow-requests", tag = "social",
    security(("bearer" = [])),
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Page size (default 20)"),
        ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of requesters, newest first", body = UserPage),
        (status = 422, description = "`invalid_field`: a bad `limit` or `cursor`", body = super::ErrorBody),
    ))]
pub async fn follow_requests(
    State(state): State<AppState>,
    me: Authenticated,
    query: ApiQuery,
) -> Result<Json<UserPage>, ApiError> {
    Ok(Json(
        user_page(&state, me.user, UserList::Requests(me.user), &query).await?,
    ))
}

/// Approve a follow request: the requester follows me from now on.
#[utoipa::path(post, path = "/v1/me/follow-requests/{username}/approve", tag = "social",
    security(("bearer" = [])),
    params(("username" = String, Path, description = "The requester")),
    responses(
        (status = 204, description = "Approved"),
        (status = 404, description = "No such request", body = super::ErrorBody),
    ))]
pub async fn approve_request(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(username): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let requester = visible_user(&state, me.user, &username).await?;
    let mut tx = state.db.begin().await?;
    store::lock_pair(&mut tx, me.user, requester.id).await?;
    if !store::take_request(&mut tx, requester.id, me.user).await? {
        return Err(ApiError::NotFound);
    }
    store::insert_follow(&mut tx, requester.id, me.user).await?;
    tx.commit().await?;
    state.feed.invalidate(&state.redis, requester.id).await;
    forget(&state, &[me.user, requester.id]).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Deny a follow request.
#[utoipa::path(post, path = "/v1/me/follow-requests/{username}/deny", tag = "social",
    security(("bearer" = [])),
    params(("username" = String, Path, description = "The requester")),
    responses(
        (status = 204, description = "Denied"),
        (status = 404, description = "No such request", body = super::ErrorBody),
    ))]
pub async fn deny_request(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(username): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let requester = visible_user(&state, me.user, &username).await?;
    let mut tx = state.db.begin().await?;
    if !store::take_request(&mut tx, requester.id, me.user).await? {
        return Err(ApiError::NotFound);
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- blocks and mutes

/// Block a user: follows both ways end, and each is hidden from the other everywhere —
/// profiles, posts, feeds, search, comments, likes lists, notifications — and their messages
/// to me are refused (`blocked`, docs/PROTOCOL.md).
#[utoipa::path(post, path = "/v1/users/{username}/block", tag = "social",
    security(("bearer" = [])),
    params(("username" = String, Path, description = "Whom to block")),
    responses(
        (status = 204, description = "Blocked"),
        (status = 403, description = "`forbidden`: blocking oneself", body = super::ErrorBody),
        (status = 404, description = "No such user", body = super::ErrorBody),
    ))]
pub async fn block(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(username): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let target = any_user(&state, &username).await?;
    not_self(me.user, target.id, "you cannot block yourself")?;
    let mut tx = state.db.begin().await?;
    store::lock_pair(&mut tx, me.user, target.id).await?;
    store::block(&mut tx, me.user, target.id).await?;
    tx.commit().await?;
    state.feed.invalidate(&state.redis, me.user).await;
    state.feed.invalidate(&state.redis, target.id).await;
    forget(&state, &[me.user, target.id]).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Unblock a user (follows do not come back).
#[utoipa::path(delete, path = "/v1/users/{username}/block", tag = "social",
    security(("bearer" = [])),
    params(("username" = String, Path, description = "Whom to unblock")),
    responses(
        (status = 204, description = "Not blocked (any more)"),
        (status = 404, description = "No such user", body = super::ErrorBody),
    ))]
pub async fn unblock(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(username): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let target = any_user(&state, &username).await?;
    store::unblock(&state.db, me.user, target.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Mute a user: their posts leave my home feed and they cause me no notifications; nothing
/// else changes and they are not told.
#[utoipa::path(post, path = "/v1/users/{username}/mute", tag = "social",
    security(("bearer" = [])),
    params(("username" = String, Path, description = "Whom to mute")),
    responses(
        (status = 204, description = "Muted"),
        (status = 403, description = "`forbidden`: muting oneself", body = super::ErrorBody),
        (status = 404, description = "No such user (or a block between us)", body = super::ErrorBody),
    ))]
pub async fn mute(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(username): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let target = visible_user(&state, me.user, &username).await?;
    not_self(me.user, target.id, "you cannot mute yourself")?;
    store::mute(&state.db, me.user, target.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Unmute a user.
#[utoipa::path(delete, path = "/v1/users/{username}/mute", tag = "social",
    security(("bearer" = [])),
    params(("username" = String, Path, description = "Whom to unmute")),
    responses(
        (status = 204, description = "Not muted (any more)"),
        (status = 404, description = "No such user (or a block between us)", body = super::ErrorBody),
    ))]
pub async fn unmute(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(username): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let target = visible_user(&state, me.user, &username).await?;
    store::unmute(&state.db, me.user, target.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Users I block.
#[utoipa::path(get, path = "/v1/me/blocks", tag = "social",
    security(("bearer" = [])),
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Page size (default 20)"),
        ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of blocked users, newest first", body = UserPage),
        (status = 422, description = "`invalid_field`: a bad `limit` or `cursor`", body = super::ErrorBody),
    ))]
pub async fn blocks(
    State(state): State<AppState>,
    me: Authenticated,
    query: ApiQuery,
) -> Result<Json<UserPage>, ApiError> {
    Ok(Json(
        user_page(&state, me.user, UserList::Blocked(me.user), &query).await?,
    ))
}

/// Users I mute.
#[utoipa::path(get, path = "/v1/me/mutes", tag = "social",
    security(("bearer" = [])),
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Page size (default 20)"),
        ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of muted users, newest first", body = UserPage),
        (status = 422, description = "`invalid_field`: a bad `limit` or `cursor`", body = super::ErrorBody),
    ))]
pub async fn mutes(
    State(state): State<AppState>,
    me: Authenticated,
    query: ApiQuery,
) -> Result<Json<UserPage>, ApiError> {
    Ok(Json(
        user_page(&state, me.user, UserList::Muted(me.user), &query).await?,
    ))
}

/// Shared by the likes list ([`super::posts`]).
pub async fn likers_page(
    state: &AppState,
    me: UserId,
    post: PostId,
    query: &ApiQuery,
) -> Result<UserPage, ApiError> {
    user_page(state, me, UserList::Likers(post), query).await
}
