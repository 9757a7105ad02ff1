//! `/v1/me` and `/v1/users/{username}`: profiles.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use haberci_wire::{MediaId, UserId};
use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::extract::{ApiJson, ApiPath, Authenticated};
use super::{ApiError, AppState};
use crate::accounts::store::{self, GroupAdds, ProfileUpdate, UserRecord};
use crate::accounts::{AvatarRef, Bio, DisplayName, Username};
use crate::media::links::Variant;

/// My account.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    #[schema(value_type = String, format = Uuid)]
    pub id: UserId,
    pub username: String,
    pub email: String,
    pub display_name: String,
    pub bio: String,
    pub avatar_ref: Option<String>,
    /// My avatar, an image upload (`PATCH /v1/me` `avatarMediaId`).
    #[schema(value_type = Option<String>, format = Uuid)]
    pub avatar_media_id: Option<MediaId>,
    /// Where anyone can load it, without a token.
    pub avatar_url: Option<String>,
    /// A small version (JPEG, ≤ 320 px).
    pub avatar_thumb_url: Option<String>,
    /// A private account approves its followers; only they see its posts.
    pub private: bool,
    /// Whether people I share a conversation with, or follow both ways, see whether I am
    /// online and when I was last seen (realtime `presence`).
    pub show_presence: bool,
    /// Who may add me to a group: `everyone` (the default), `following` (people I follow)
    /// or `nobody`.
    #[schema(value_type = String, example = "everyone")]
    pub group_adds: String,
    pub followers_count: i64,
    pub following_count: i64,
    pub posts_count: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

impl From<UserRecord> for UserView {
    fn from(user: UserRecord) -> Self {
        UserView {
            id: user.id,
            username: user.username,
            email: user.email,
            display_name: user.display_name,
            bio: user.bio,
            avatar_ref: user.avatar_ref,
            avatar_media_id: user.avatar_media_id,
            avatar_url: user.avatar_media_id.map(|id| Variant::Original.path(id)),
            avatar_thumb_url: user.avatar_media_id.map(|id| Variant::Thumb.path(id)),
            private: user.is_private,
            show_presence: user.show_presence,
            group_adds: user.group_adds,
            followers_count: user.followers_count,
            following_count: user.following_count,
            posts_count: user.posts_count,
            created_at: user.created_at,
            updated_at: user.updated_at,
        }
    }
}

/// Someone's profile, with how they and I stand. The id is what a client addresses messages
/// and groups with.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProfileView {
    #[schema(value_type = String, format = Uuid)]
    pub id: UserId,
    pub username: String,
    pub display_name: String,
    pub bio: String,
    pub avatar_ref: Option<String>,
    #[schema(value_type = Option<String>, format = Uuid)]
    pub avatar_media_id: Option<MediaId>,
    /// Public: loads without a token.
    pub avatar_url: Option<String>,
    pub avatar_thumb_url: Option<String>,
    pub private: bool,
    pub followers_count: i64,
    pub following_count: i64,
    /// Posts (reposts not counted).
    pub posts_count: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    pub relationship: RelationshipView,
}

/// How I stand with a user (all false on my own profile).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RelationshipView {
    pub following: bool,
    pub followed_by: bool,
    /// My follow request waits for their approval.
    pub requested: bool,
    pub muting: bool,
}

/// `PATCH /v1/me`: absent fields stay as they are; `avatarRef: null` removes the avatar.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpdateMeRequest {
    /// As at registration: 1–64 characters, no control, bidirectional or invisible characters.
    #[serde(default)]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 64)]
    pub display_name: Option<DisplayName>,
    #[serde(default)]
    #[schema(value_type = Option<String>, max_length = 500)]
    pub bio: Option<Bio>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = "^[A-Za-z0-9._:/-]{1,256}$")]
    pub avatar_ref: Option<Option<AvatarRef>>,
    /// An image I uploaded (`POST /v1/media?kind=image`) becomes my avatar, shown to anyone;
    /// `null` removes it.
    // Any UUID parses here (the nil one included) and is then refused unless it is such an
    // upload: the answer a client has always had.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub avatar_media_id: Option<Option<Uuid>>,
    /// Make the account private (follows become requests) or public again.
    #[serde(default)]
    pub private: Option<bool>,
    /// Hide my online state and last seen from everyone (`false`), or show them again to
    /// the people I share a conversation with or follow both ways (`true`, the default).
    #[serde(default)]
    pub show_presence: Option<bool>,
    /// Who may add me to a group: `everyone`, `following` (people I follow) or `nobody`.
    #[serde(default)]
    pub group_adds: Option<GroupAdds>,
}

/// A field that is present (even as `null`) becomes `Some(..)`; absent stays `None`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// My account.
#[utoipa::path(get, path = "/v1/me", tag = "users",
    security(("bearer" = [])),
    responses((status = 200, description = "My account", body = UserView)))]
pub async fn me(
    State(state): State<AppState>,
    me: Authenticated,
) -> Result<Json<UserView>, ApiError> {
    let user = store::by_id(&state.db, me.user)
        .await?
        .ok_or(ApiError::SessionRevoked)?;
    Ok(Json(user.into()))
}

/// Change my display name, bio or avatar.
#[utoipa::path(patch, path = "/v1/me", tag = "users",
    security(("bearer" = [])),
    request_body = UpdateMeRequest,
    responses(
        (status = 200, description = "My updated account", body = UserView),
        (status = 422, description = "`invalid_field`: a bad value, or `avatarMediaId` not an image upload of mine", body = super::ErrorBody),
    ))]
pub async fn update_me(
    State(state): State<AppState>,
    me: Authenticated,
    ApiJson(request): ApiJson<UpdateMeRequest>,
) -> Result<Json<UserView>, ApiError> {
    let avatar_media_id = match request.avatar_media_id {
        None => None,
        Some(None) => Some(None),
        Some(Some(raw)) => Some(Some(my_image(&state, me.user, raw).await?)),
    };
    let update = ProfileUpdate {
        display_name: request.display_name,
        bio: request.bio,
        avatar_ref: request.avatar_ref,
        avatar_media_id,
        private: request.private,
        show_presence: request.show_presence,
        group_adds: request.group_adds,
    };
    let user = store::update_profile(&state.db, me.user, &update)
        .await?
        .ok_or(ApiError::SessionRevoked)?;
    state
        .profiles
        .forget(&state.db, &state.redis, &[me.user])
        .await;
    Ok(Json(user.into()))
}

/// `raw` as an image upload of `me`'s, else 422 on `avatarMediaId`.
async fn my_image(state: &AppState, me: UserId, raw: Uuid) -> Result<MediaId, ApiError> {
    let refused = || {
        ApiError::invalid(
            "avatarMediaId",
            format!("{raw} is not an image upload of yours"),
        )
    };
    let id = MediaId::new(raw).ok_or_else(refused)?;
    let mine = crate::media::store::by_ids(&state.db, &[id])
        .await?
        .into_iter()
        .any(|row| row.owner_id == me && row.kind == "image");
    if mine { Ok(id) } else { Err(refused()) }
}

/// Someone's profile (for signed-in users). A user with a block between us answers 404.
/// Served through the profile cache: `x-haberci-cache` says `hit` or `miss`.
#[utoipa::path(get, path = "/v1/users/{username}", tag = "users",
    security(("bearer" = [])),
    params(("username" = String, Path, description = "A username (case-insensitive)")),
    responses(
        (status = 200, description = "The profile", body = ProfileView,
            headers(("x-haberci-cache" = String, description = "`hit` or `miss`: whether the profile came from the Redis cache"))),
        (status = 404, description = "No such user", body = super::ErrorBody),
    ))]
pub async fn profile(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(username): ApiPath<String>,
) -> Result<Response, ApiError> {
    // A name that cannot be a username names no one.
    let username = Username::parse(&username).map_err(|_| ApiError::NotFound)?;
    let (user, source) = state
        .profiles
        .by_username(&state.db, &state.redis, &username)
        .await?;
    let user = user
        .filter(|u| u.suspended_at.is_none())
        .ok_or(ApiError::NotFound)?;
    let relation = if user.id == me.user {
        crate::social::store::Relationship::default()
    } else {
        crate::social::store::relationship(&state.db, me.user, user.id).await?
    };
    if relation.hidden() {
        return Err(ApiError::NotFound);
    }
    let body = ProfileView {
        id: user.id,
        username: user.username,
        display_name: user.display_name,
        bio: user.bio,
        avatar_ref: user.avatar_ref,
        avatar_media_id: user.avatar_media_id,
        avatar_url: user.avatar_media_id.map(|id| Variant::Original.path(id)),
        avatar_thumb_url: user.avatar_media_id.map(|id| Variant::Thumb.path(id)),
        private: user.is_private,
        followers_count: user.followers_count,
        following_count: user.following_count,
        posts_count: user.posts_count,
        created_at: user.created_at,
        relationship: RelationshipView {
            following: relation.following,
            followed_by: relation.followed_by,
            requested: relation.requested,
            muting: relation.muting,
        },
    };
    let mut response = Json(body).into_response();
    response.headers_mut().insert(
        "x-haberci-cache",
        axum::http::HeaderValue::from_static(match source {
            crate::accounts::cache::Source::Hit => "hit",
            crate::accounts::cache::Source::Miss => "miss",
        }),
    );
    Ok(response)
}
