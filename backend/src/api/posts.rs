//! Posts, reposts, likes, comments, and the timelines: home, a user's, a hashtag's; post and
//! people search.
//!
//! API boundary: a post the caller may not see (visibility, a block, a suspended author, or
//! deleted) answers 404 exactly like one that never existed. Lists skip what the caller may
//! not see, so a page can hold fewer items than `limit`; the end is `nextCursor: null`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use haberci_wire::{CommentId, MediaId, PostId, UserId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::cursor;
use super::extract::{ApiJson, ApiPath, ApiQuery, Authenticated};
use super::media::MediaView;
use super::social::{UserPage, UserRef, limit, page_limit, visible_user};
use super::{ApiError, AppState};
use crate::social::notify::{self, Kind};
use crate::social::store::{self, CommentRow, MAX_ID, MIN_ID, NewPost, PostRow};
use crate::social::{MAX_POST_MEDIA, PostText, Visibility, text};

// ---------------------------------------------------------------- schemas

/// A post as the caller sees it. A repost has empty `content` and carries the reposted post in
/// `repostOf`; its own counts are 0.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostView {
    #[schema(value_type = String, format = Uuid)]
    pub id: PostId,
    pub author: UserRef,
    pub content: String,
    pub visibility: Visibility,
    #[schema(value_type = Vec<String>)]
    pub media_ids: Vec<MediaId>,
    /// The media of `mediaIds`, in order, with signed links.
    pub media: Vec<MediaView>,
    /// Usernames mentioned, sorted.
    pub mentions: Vec<String>,
    /// Hashtags, folded (Turkish rules, without `#`), sorted.
    pub hashtags: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// When the text last changed; `GET /v1/posts/{id}/edits` has the earlier versions.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub edited_at: Option<OffsetDateTime>,
    pub likes_count: i64,
    pub comments_count: i64,
    pub reposts_count: i64,
    /// Whether I like it / reposted it.
    pub liked: bool,
    pub reposted: bool,
    #[schema(no_recursion)]
    pub repost_of: Option<Box<PostView>>,
}

impl From<PostRow> for PostView {
    fn from(row: PostRow) -> Self {
        let original = match (
            row.o_id,
            row.o_author_id,
            row.o_author_username,
            row.o_author_display_name,
            row.o_content,
            row.o_created_at,
        ) {
            (
                Some(id),
                Some(author),
                Some(username),
                Some(display_name),
                Some(content),
                Some(created_at),
            ) => Some(Box::new(PostView {
                id,
                author: UserRef {
                    id: author,
                    username,
                    display_name,
                    avatar_ref: row.o_author_avatar_ref,
                },
                content,
                visibility: row
                    .o_visibility
                    .and_then(|v| Visibility::try_from(v).ok())
                    .unwrap_or(Visibility::Public),
                media_ids: row.o_media_ids.unwrap_or_default(),
                media: Vec::new(),
                mentions: row.o_mentions.unwrap_or_default(),
                hashtags: row.o_hashtags.unwrap_or_default(),
                created_at,
                edited_at: row.o_edited_at,
                likes_count: row.o_likes_count.unwrap_or(0),
                comments_count: row.o_comments_count.unwrap_or(0),
                reposts_count: row.o_reposts_count.unwrap_or(0),
                liked: row.o_liked.unwrap_or(false),
                reposted: row.o_reposted.unwrap_or(false),
                repost_of: None,
            })),
            _ => None,
        };
        PostView {
            id: row.id,
            author: UserRef {
                id: row.author_id,
                username: row.author_username,
                display_name: row.author_display_name,
                avatar_ref: row.author_avatar_ref,
            },
            content: row.content,
            visibility: row.visibility,
            media_ids: row.media_ids,
            media: Vec::new(),
            mentions: row.mentions,
            hashtags: row.hashtags,
            created_at: row.created_at,
            edited_at: row.edited_at,
            likes_count: row.likes_count,
            comments_count: row.comments_count,
            reposts_count: row.reposts_count,
            liked: row.liked,
            reposted: row.reposted,
            repost_of: original,
        }
    }
}

/// A page of posts, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostPage {
    pub posts: Vec<PostView>,
    /// Pass as `cursor` for the next (older) page; `null` at the end.
    pub next_cursor: Option<String>,
}

/// `POST /v1/posts`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreatePostRequest {
    /// 1–1000 Unicode scalar values after trimming; `@username` mentions must name users.
    #[schema(value_type = String, min_length = 1, max_length = 1000)]
    pub content: PostText,
    /// `public` (default), `followers` or `mentioned`.
    #[serde(default)]
    pub visibility: Option<Visibility>,
    /// Up to 4 ids of media I uploaded.
    // Plain UUIDs: one that names no upload of mine (the nil UUID included) is refused by the
    // handler, naming it.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>, max_items = 4)]
    pub media_ids: Option<Vec<Uuid>>,
}

/// `PATCH /v1/posts/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditPostRequest {
    #[schema(value_type = String, min_length = 1, max_length = 1000)]
    pub content: PostText,
}

/// An earlier text of a post.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostEdit {
    /// 1 for the original text, then 2, 3, …
    pub version: i32,
    pub content: String,
    /// When this text was replaced.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub replaced_at: OffsetDateTime,
}

/// `GET /v1/posts/{id}/edits`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostEdits {
    /// Oldest first; the current text is the post's `content`.
    pub edits: Vec<PostEdit>,
}

/// A comment.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommentView {
    #[schema(value_type = String, format = Uuid)]
    pub id: CommentId,
    #[schema(value_type = String, format = Uuid)]
    pub post_id: PostId,
    /// The comment this replies to; `null` for a reply to the post.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub parent_id: Option<CommentId>,
    pub author: UserRef,
    pub content: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

impl From<CommentRow> for CommentView {
    fn from(c: CommentRow) -> Self {
        CommentView {
            id: c.id,
            post_id: c.post_id,
            parent_id: c.parent_id,
            author: UserRef {
                id: c.author_id,
                username: c.author_username,
                display_name: c.author_display_name,
                avatar_ref: None,
            },
            content: c.content,
            created_at: c.created_at,
        }
    }
}

/// `POST /v1/posts/{id}/comments`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateCommentRequest {
    #[schema(value_type = String, min_length = 1, max_length = 1000)]
    pub content: PostText,
    /// A comment of the same post to reply to.
    // A plain UUID: one that names none (the nil UUID included) is refused by the handler.
    #[serde(default)]
    #[schema(format = Uuid)]
    pub parent_id: Option<Uuid>,
}

/// `GET /v1/posts/{id}/thread`: the post and a page of its comments in creation order (a
/// reply's `parentId` says where it hangs).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Thread {
    pub post: PostView,
    pub comments: Vec<CommentView>,
    /// Pass as `cursor` for the next (newer) comments; `null` at the end.
    pub next_cursor: Option<String>,
}

// ---------------------------------------------------------------- helpers

/// Fills in the media of `posts` (and of the posts they repost): one query for the page.
async fn with_media(state: &AppState, mut posts: Vec<PostView>) -> Result<Vec<PostView>, ApiError> {
    let ids: Vec<MediaId> = posts
        .iter()
        .flat_map(|p| {
            let original = p.repost_of.iter().flat_map(|o| o.media_ids.iter());
            p.media_ids.iter().chain(original)
        })
        .copied()
        .collect();
    if ids.is_empty() {
        return Ok(posts);
    }
    let rows: std::collections::HashMap<MediaId, crate::media::store::MediaRow> =
        crate::media::store::by_ids(&state.db, &ids)
            .await?
            .into_iter()
            .map(|row| (row.id, row))
            .collect();
    let views = |ids: &[MediaId]| -> Vec<MediaView> {
        ids.iter()
            .filter_map(|id| rows.get(id))
            .map(|row| MediaView::new(&state.media, row.clone()))
            .collect()
    };
    for post in &mut posts {
        post.media = views(&post.media_ids);
        if let Some(original) = post.repost_of.as_mut() {
            original.media = views(&original.media_ids);
        }
    }
    Ok(posts)
}

async fn one_with_media(state: &AppState, post: PostView) -> Result<PostView, ApiError> {
    Ok(with_media(state, vec![post]).await?.remove(0))
}

async fn page_with_media(state: &AppState, page: PostPage) -> Result<PostPage, ApiError> {
    Ok(PostPage {
        posts: with_media(state, page.posts).await?,
        next_cursor: page.next_cursor,
    })
}

fn post_page(mut rows: Vec<PostRow>, limit: i64) -> PostPage {
    let limit = usize::try_from(limit).unwrap_or(0);
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next_cursor = more
        .then(|| rows.last())
        .flatten()
        .map(|p| cursor::encode_id(p.id.as_uuid()));
    PostPage {
        posts: rows.into_iter().map(PostView::from).collect(),
        next_cursor,
    }
}

fn before(query: &ApiQuery) -> Result<Uuid, ApiError> {
    Ok(query
        .text("cursor")
        .map(cursor::decode_id)
        .transpose()?
        .unwrap_or(MAX_ID))
}

/// The mentioned users of a text: every `@name` must name a user (422 `content` otherwise).
async fn mentioned(state: &AppState, content: &PostText) -> Result<Vec<UserId>, ApiError> {
    let names: Vec<String> = text::mentions(content.as_str())
        .iter()
        .map(|u| u.as_str().to_owned())
        .collect();
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let found = store::user_ids(&state.db, &names).await?;
    if let Some(missing) = names.iter().find(|n| !found.iter().any(|(f, _)| f == *n)) {
        return Err(ApiError::invalid(
            "content",
            format!("@{missing} is not a user"),
        ));
    }
    Ok(found.into_iter().map(|(_, id)| id).collect())
}

async fn read_post(state: &AppState, me: UserId, id: PostId) -> Result<PostRow, ApiError> {
    store::post(&state.db, me, id)
        .await?
        .ok_or(ApiError::NotFound)
}

async fn mention_notifications(
    tx: &mut sqlx::PgConnection,
    post: PostId,
    author: UserId,
    users: &[UserId],
) -> Result<Vec<notify::Stored>, ApiError> {
    let mut told = Vec::new();
    for &user in users {
        told.extend(
            notify::notify(
                tx,
                notify::Event {
                    user,
                    kind: Kind::Mention,
                    actor: author,
                    post: Some(post),
                    comment: None,
                },
            )
            .await?,
        );
    }
    Ok(told)
}

// ---------------------------------------------------------------- posts

/// Post. Mentions and hashtags are read from the text on the server.
#[utoipa::path(post, path = "/v1/posts", tag = "posts",
    security(("bearer" = [])),
    request_body = CreatePostRequest,
    responses(
        (status = 201, description = "The new post", body = PostView),
        (status = 422, description = "`invalid_field`: `content` empty, over 1000 characters or mentioning no user; `mediaIds` more than 4 or not my uploads; a bad `visibility`", body = super::ErrorBody),
        (status = 429, description = "`rate_limited`: too many posts", body = super::ErrorBody),
    ))]
pub async fn create_post(
    State(state): State<AppState>,
    me: Authenticated,
    ApiJson(request): ApiJson<CreatePostRequest>,
) -> Result<Response, ApiError> {
    let asked = request.media_ids.unwrap_or_default();
    if asked.len() > MAX_POST_MEDIA {
        return Err(ApiError::invalid(
            "mediaIds",
            "a post carries at most 4 media",
        ));
    }
    let ids: Vec<MediaId> = asked.iter().copied().filter_map(MediaId::new).collect();
    let mine: std::collections::HashSet<MediaId> = crate::media::store::by_ids(&state.db, &ids)
        .await?
        .into_iter()
        .filter(|row| row.owner_id == me.user)
        .map(|row| row.id)
        .collect();
    let mut media: Vec<MediaId> = Vec::with_capacity(asked.len());
    for &raw in &asked {
        let Some(id) = MediaId::new(raw).filter(|id| mine.contains(id)) else {
            return Err(ApiError::invalid(
                "mediaIds",
                format!("{raw} is not a media upload of yours"),
            ));
        };
        if media.contains(&id) {
            return Err(ApiError::invalid(
                "mediaIds",
                format!("{raw} is listed twice"),
            ));
        }
        media.push(id);
    }
    let mentions = mentioned(&state, &request.content).await?;
    let hashtags = text::hashtags(request.content.as_str());
    limit(&state, "post", me.user, state.settings.social.post).await?;
    let id: PostId = crate::db::new_id();
    let mut tx = state.db.begin().await?;
    store::insert_post(
        &mut tx,
        &NewPost {
            id,
            author: me.user,
            content: request.content.as_str(),
            visibility: request.visibility.unwrap_or(Visibility::Public),
            media: &media,
            mentions: &mentions,
            hashtags: &hashtags,
        },
    )
    .await?;
    let told = mention_notifications(&mut tx, id, me.user, &mentions).await?;
    tx.commit().await?;
    super::social::forget(&state, &[me.user]).await;
    notify::announce(&state.db, &state.redis, &told).await;
    let post = read_post(&state, me.user, id).await?;
    let post = one_with_media(&state, PostView::from(post)).await?;
    Ok((StatusCode::CREATED, Json(post)).into_response())
}

/// A post.
#[utoipa::path(get, path = "/v1/posts/{id}", tag = "posts",
    security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "The post id")),
    responses(
        (status = 200, description = "The post", body = PostView),
        (status = 404, description = "No such post, or not visible to me", body = super::ErrorBody),
    ))]
pub async fn post(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(id): ApiPath<PostId>,
) -> Result<Json<PostView>, ApiError> {
    Ok(Json(
        one_with_media(&state, read_post(&state, me.user, id).await?.into()).await?,
    ))
}

/// Edit my post's text; the earlier text is kept (`GET /v1/posts/{id}/edits`). Newly
/// mentioned users are notified.
#[utoipa::path(patch, path = "/v1/posts/{id}", tag = "posts",
    security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "The post id")),
    request_body = EditPostRequest,
    responses(
        (status = 200, description = "The edited post", body = PostView),
        (status = 403, description = "`forbidden`: not my post, or a repost", body = super::ErrorBody),
        (status = 404, description = "No such post, or not visible to me", body = super::ErrorBody),
        (status = 422, description = "`invalid_field`: a bad `content`", body = super::ErrorBody),
    ))]
pub async fn edit_post(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(id): ApiPath<PostId>,
    ApiJson(request): ApiJson<EditPostRequest>,
) -> Result<Json<PostView>, ApiError> {
    let before = read_post(&state, me.user, id).await?;
    if before.author_id != me.user || before.o_id.is_some() {
        return Err(ApiError::Forbidden(
            "only its author may edit a post, and not a repost",
        ));
    }
    let mentions = mentioned(&state, &request.content).await?;
    let hashtags = text::hashtags(request.content.as_str());
    let mut tx = state.db.begin().await?;
    let locked = store::lock_post(&mut tx, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    store::edit_post(
        &mut tx,
        &locked,
        request.content.as_str(),
        &mentions,
        &hashtags,
    )
    .await?;
    let already: Vec<&String> = before.mentions.iter().collect();
    let new_names: Vec<String> = text::mentions(request.content.as_str())
        .iter()
        .map(|u| u.as_str().to_owned())
        .filter(|n| !already.contains(&n))
        .collect();
    let new_ids: Vec<UserId> = store::user_ids(&mut *tx, &new_names)
        .await?
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    let told = mention_notifications(&mut tx, id, me.user, &new_ids).await?;
    tx.commit().await?;
    notify::announce(&state.db, &state.redis, &told).await;
    Ok(Json(
        one_with_media(&state, read_post(&state, me.user, id).await?.into()).await?,
    ))
}

/// Delete my post (or, as an admin, anyone's): it leaves every timeline and count.
#[utoipa::path(delete, path = "/v1/posts/{id}", tag = "posts",
    security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "The post id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "`forbidden`: not my post", body = super::ErrorBody),
        (status = 404, description = "No such post, or not visible to me", body = super::ErrorBody),
    ))]
pub async fn delete_post(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(id): ApiPath<PostId>,
) -> Result<StatusCode, ApiError> {
    let admin = store::is_admin(&state.db, me.user).await?;
    let mut tx = state.db.begin().await?;
    let post = store::lock_post(&mut tx, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if post.author_id != me.user {
        if !admin {
            // Someone else's post: 403 only when I may see it.
            return Err(match store::actionable(&mut *tx, me.user, id).await? {
                Some(_) => ApiError::Forbidden("only its author or a moderator may delete a post"),
                None => ApiError::NotFound,
            });
        }
        store::delete_post(&mut tx, &post, Some(me.user)).await?;
    } else {
        store::delete_post(&mut tx, &post, None).await?;
    }
    tx.commit().await?;
    super::social::forget(&state, &[post.author_id]).await;
    Ok(StatusCode::NO_CONTENT)
}

/// The earlier texts of a post, oldest first.
#[utoipa::path(get, path = "/v1/posts/{id}/edits", tag = "posts",
    security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "The post id")),
    responses(
        (status = 200, description = "The edit history", body = PostEdits),
        (status = 404, description = "No such post, or not visible to me", body = super::ErrorBody),
    ))]
pub async fn post_edits(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(id): ApiPath<PostId>,
) -> Result<Json<PostEdits>, ApiError> {
    read_post(&state, me.user, id).await?;
    let edits = store::edits(&state.db, id)
        .await?
        .into_iter()
        .map(|(version, content, replaced_at)| PostEdit {
            version,
            content,
            replaced_at,
        })
        .collect();
    Ok(Json(PostEdits { edits }))
}

// ---------------------------------------------------------------- likes and reposts

/// Like a post. Liking twice is one like.
#[utoipa::path(post, path = "/v1/posts/{id}/like", tag = "posts",
    security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "The post id")),
    responses(
        (status = 200, description = "The post, liked", body = PostView),
        (status = 404, description = "No such post, or not visible to me", body = super::ErrorBody),
        (status = 429, description = "`rate_limited`: too many likes", body = super::ErrorBody),
    ))]
pub async fn like(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(id): ApiPath<PostId>,
) -> Result<Json<PostView>, ApiError> {
    let post = store::actionable(&state.db, me.user, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    limit(&state, "like", me.user, state.settings.social.like).await?;
    let mut tx = state.db.begin().await?;
    let mut told = Vec::new();
    if store::like(&mut tx, me.user, id).await? {
        told.extend(
            notify::notify(
                &mut tx,
                notify::Event {
                    user: post.author_id,
                    kind: Kind::Like,
                    actor: me.user,
                    post: Some(id),
                    comment: None,
                },
            )
            .await?,
        );
    }
    tx.commit().await?;
    notify::announce(&state.db, &state.redis, &told).await;
    Ok(Json(
        one_with_media(&state, read_post(&state, me.user, id).await?.into()).await?,
    ))
}

/// Take back my like. No error when there was none.
#[utoipa::path(delete, path = "/v1/posts/{id}/like", tag = "posts",
    security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "The post id")),
    responses(
        (status = 200, description = "The post, not liked", body = PostView),
        (status = 404, description = "No such post, or not visible to me", body = super::ErrorBody),
    ))]
pub async fn unlike(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(id): ApiPath<PostId>,
) -> Result<Json<PostView>, ApiError> {
    store::actionable(&state.db, me.user, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let mut tx = state.db.begin().await?;
    if store::unlike(&mut tx, me.user, id).await? {
        notify::withdraw(&mut tx, Kind::Like, me.user, id).await?;
    }
    tx.commit().await?;
    Ok(Json(
        one_with_media(&state, read_post(&state, me.user, id).await?.into()).await?,
    ))
}

/// Who liked a post, newest first (users with a block between us and me are left out).
#[utoipa::path(get, path = "/v1/posts/{id}/likes", tag = "posts",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, format = Uuid, description = "The post id"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Page size (default 20)"),
        ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of users", body = UserPage),
        (status = 404, description = "No such post, or not visible to me", body = super::ErrorBody),
        (status = 422, description = "`invalid_field`: a bad `limit` or `cursor`", body = super::ErrorBody),
    ))]
pub async fn likes(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(id): ApiPath<PostId>,
    query: ApiQuery,
) -> Result<Json<UserPage>, ApiError> {
    store::actionable(&state.db, me.user, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(
        super::social::likers_page(&state, me.user, id, &query).await?,
    ))
}

/// Repost a public post of a public account to my followers. Reposting twice is one repost.
#[utoipa::path(post, path = "/v1/posts/{id}/repost", tag = "posts",
    security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "The post id")),
    responses(
        (status = 200, description = "The reposted post", body = PostView),
        (status = 403, description = "`forbidden`: not a public post of a public account, or a repost", body = super::ErrorBody),
        (status = 404, description = "No such post, or not visible to me", body = super::ErrorBody),
        (status = 429, description = "`rate_limited`: too many posts", body = super::ErrorBody),
    ))]
pub async fn repost(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(id): ApiPath<PostId>,
) -> Result<Json<PostView>, ApiError> {
    let post = store::actionable(&state.db, me.user, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if !post.repostable {
        return Err(ApiError::Forbidden(
            "only public posts of public accounts can be reposted, and not reposts",
        ));
    }
    limit(&state, "post", me.user, state.settings.social.post).await?;
    let mut tx = state.db.begin().await?;
    let mut told = Vec::new();
    if store::repost(&mut tx, me.user, id).await?.is_some() {
        told.extend(
            notify::notify(
                &mut tx,
                notify::Event {
                    user: post.author_id,
                    kind: Kind::Repost,
                    actor: me.user,
                    post: Some(id),
                    comment: None,
                },
            )
            .await?,
        );
    }
    tx.commit().await?;
    notify::announce(&state.db, &state.redis, &told).await;
    Ok(Json(
        one_with_media(&state, read_post(&state, me.user, id).await?.into()).await?,
    ))
}

/// Take back my repost. No error when there was none.
#[utoipa::path(delete, path = "/v1/posts/{id}/repost", tag = "posts",
    security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "The post id")),
    responses(
        (status = 200, description = "The post, not reposted", body = PostView),
        (status = 404, description = "No such post, or not visible to me", body = super::ErrorBody),
    ))]
pub async fn unrepost(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(id): ApiPath<PostId>,
) -> Result<Json<PostView>, ApiError> {
    store::actionable(&state.db, me.user, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let mut tx = state.db.begin().await?;
    if let Some(mine) = store::lock_repost(&mut tx, me.user, id).await? {
        store::delete_post(&mut tx, &mine, None).await?;
        notify::withdraw(&mut tx, Kind::Repost, me.user, id).await?;
    }
    tx.commit().await?;
    Ok(Json(
        one_with_media(&state, read_post(&state, me.user, id).await?.into()).await?,
    ))
}

// ---------------------------------------------------------------- comments

/// Comment on a post, or reply to one of its comments.
#[utoipa::path(post, path = "/v1/posts/{id}/comments", tag = "posts",
    security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "The post id")),
    request_body = CreateCommentRequest,
    responses(
        (status = 201, description = "The new comment", body = CommentView),
        (status = 404, description = "No such post, or not visible to me", body = super::ErrorBody),
        (status = 422, description = "`invalid_field`: a bad `content`, or `parentId` is no comment of this post", body = super::ErrorBody),
        (status = 429, description = "`rate_limited`: too many comments", body = super::ErrorBody),
    ))]
pub async fn create_comment(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(post): ApiPath<PostId>,
    ApiJson(request): ApiJson<CreateCommentRequest>,
) -> Result<Response, ApiError> {
    let target = store::actionable(&state.db, me.user, post)
        .await?
        .ok_or(ApiError::NotFound)?;
    let no_parent = || ApiError::invalid("parentId", "no comment of this post has this id");
    let (parent, parent_author) = match request.parent_id {
        Some(raw) => {
            let parent = CommentId::new(raw).ok_or_else(no_parent)?;
            let author = store::comment_author(&state.db, post, parent)
                .await?
                .ok_or_else(no_parent)?;
            (Some(parent), Some(author))
        }
        None => (None, None),
    };
    limit(&state, "comment", me.user, state.settings.social.comment).await?;
    let id: CommentId = crate::db::new_id();
    let mut tx = state.db.begin().await?;
    store::insert_comment(&mut tx, id, post, parent, me.user, request.content.as_str()).await?;
    let mut users = vec![target.author_id];
    users.extend(parent_author.filter(|a| *a != target.author_id));
    let mut told = Vec::new();
    for user in users {
        told.extend(
            notify::notify(
                &mut tx,
                notify::Event {
                    user,
                    kind: Kind::Comment,
                    actor: me.user,
                    post: Some(post),
                    comment: Some(id),
                },
            )
            .await?,
        );
    }
    tx.commit().await?;
    notify::announce(&state.db, &state.redis, &told).await;
    let comment = store::comment(&state.db, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok((StatusCode::CREATED, Json(CommentView::from(comment))).into_response())
}

/// Delete my comment (or, as the post's author or an admin, any comment of the post).
#[utoipa::path(delete, path = "/v1/posts/{id}/comments/{commentId}", tag = "posts",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, format = Uuid, description = "The post id"),
        ("commentId" = String, Path, format = Uuid, description = "The comment id"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "`forbidden`: not my comment, nor my post", body = super::ErrorBody),
        (status = 404, description = "No such post or comment, or not visible to me", body = super::ErrorBody),
    ))]
pub async fn delete_comment(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath((post, comment)): ApiPath<(PostId, CommentId)>,
) -> Result<StatusCode, ApiError> {
    let target = store::actionable(&state.db, me.user, post)
        .await?
        .ok_or(ApiError::NotFound)?;
    let author = store::comment_author(&state.db, post, comment)
        .await?
        .ok_or(ApiError::NotFound)?;
    if author != me.user
        && target.author_id != me.user
        && !store::is_admin(&state.db, me.user).await?
    {
        return Err(ApiError::Forbidden(
            "only its author, the post's author or a moderator may delete a comment",
        ));
    }
    let mut tx = state.db.begin().await?;
    store::delete_comment(&mut tx, post, comment).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A post with a page of its comments, oldest first (creation order, stable while new
/// comments arrive: they come after).
#[utoipa::path(get, path = "/v1/posts/{id}/thread", tag = "posts",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, format = Uuid, description = "The post id"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Comments per page (default 20)"),
        ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "The thread", body = Thread),
        (status = 404, description = "No such post, or not visible to me", body = super::ErrorBody),
        (status = 422, description = "`invalid_field`: a bad `limit` or `cursor`", body = super::ErrorBody),
    ))]
pub async fn thread(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(id): ApiPath<PostId>,
    query: ApiQuery,
) -> Result<Json<Thread>, ApiError> {
    let limit = page_limit(&query)?;
    let after = query
        .text("cursor")
        .map(cursor::decode_id)
        .transpose()?
        .unwrap_or(MIN_ID);
    let post = read_post(&state, me.user, id).await?;
    let mut comments = store::comments(&state.db, me.user, id, after, limit + 1).await?;
    let more = comments.len() > usize::try_from(limit).unwrap_or(0);
    comments.truncate(usize::try_from(limit).unwrap_or(0));
    let next_cursor = more
        .then(|| comments.last())
        .flatten()
        .map(|c| cursor::encode_id(c.id.as_uuid()));
    Ok(Json(Thread {
        post: one_with_media(&state, post.into()).await?,
        comments: comments.into_iter().map(CommentView::from).collect(),
        next_cursor,
    }))
}

// ---------------------------------------------------------------- timelines

/// My home timeline: my posts and those of the accounts I follow, that I may see and have not
/// muted, newest first. Stable while new posts arrive: the cursor is a position, so pages
/// never repeat or skip a post. `x-haberci-feed-source` says whether the page came from the
/// cache, a rebuild, or Postgres.
#[utoipa::path(get, path = "/v1/feed/home", tag = "timelines",
    security(("bearer" = [])),
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Page size (default 20)"),
        ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of posts", body = PostPage),
        (status = 422, description = "`invalid_field`: a bad `limit` or `cursor`", body = super::ErrorBody),
    ))]
pub async fn home(
    State(state): State<AppState>,
    me: Authenticated,
    query: ApiQuery,
) -> Result<Response, ApiError> {
    let limit = page_limit(&query)?;
    let before = query.text("cursor").map(cursor::decode_id).transpose()?;
    let page = state
        .feed
        .page(
            &state.db,
            &state.redis,
            me.user,
            before,
            usize::try_from(limit).unwrap_or(20),
        )
        .await?;
    let body = PostPage {
        posts: with_media(&state, page.posts.into_iter().map(PostView::from).collect()).await?,
        next_cursor: page.next.map(cursor::encode_id),
    };
    let mut response = Json(body).into_response();
    response.headers_mut().insert(
        "x-haberci-feed-source",
        HeaderValue::from_static(page.source),
    );
    Ok(response)
}

/// A user's posts and reposts, newest first (a private account's: for its followers).
#[utoipa::path(get, path = "/v1/users/{username}/posts", tag = "timelines",
    security(("bearer" = [])),
    params(
        ("username" = String, Path, description = "Whose posts"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Page size (default 20)"),
        ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of posts", body = PostPage),
        (status = 404, description = "No such user (or a block between us)", body = super::ErrorBody),
        (status = 422, description = "`invalid_field`: a bad `limit` or `cursor`", body = super::ErrorBody),
    ))]
pub async fn user_posts(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(username): ApiPath<String>,
    query: ApiQuery,
) -> Result<Json<PostPage>, ApiError> {
    let user = visible_user(&state, me.user, &username).await?;
    let limit = page_limit(&query)?;
    let rows =
        store::profile_posts(&state.db, me.user, user.id, before(&query)?, limit + 1).await?;
    Ok(Json(page_with_media(&state, post_page(rows, limit)).await?))
}

/// Posts with a hashtag, newest first. `#` is optional; the tag is folded with Turkish rules
/// (`İstanbul` = `istanbul`, `ılık` ≠ `ilik`).
#[utoipa::path(get, path = "/v1/tags/{tag}/posts", tag = "timelines",
    security(("bearer" = [])),
    params(
        ("tag" = String, Path, description = "The hashtag"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Page size (default 20)"),
        ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of posts", body = PostPage),
        (status = 422, description = "`invalid_field`: `tag` is no hashtag; a bad `limit` or `cursor`", body = super::ErrorBody),
    ))]
pub async fn tag_posts(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(tag): ApiPath<String>,
    query: ApiQuery,
) -> Result<Json<PostPage>, ApiError> {
    let tag = text::parse_tag(&tag).ok_or_else(|| {
        ApiError::invalid("tag", "a hashtag is letters, digits and _, with a letter")
    })?;
    let limit = page_limit(&query)?;
    let rows = store::tag_posts(&state.db, me.user, &tag, before(&query)?, limit + 1).await?;
    Ok(Json(page_with_media(&state, post_page(rows, limit)).await?))
}

/// Full-text search of posts (Turkish stemming and exact words; `"phrases"`, `or`, `-not`),
/// newest first.
#[utoipa::path(get, path = "/v1/search/posts", tag = "timelines",
    security(("bearer" = [])),
    params(
        ("q" = String, Query, description = "What to look for (1–200 characters)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Page size (default 20)"),
        ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of posts", body = PostPage),
        (status = 422, description = "`invalid_field`: a missing or bad `q`; a bad `limit` or `cursor`", body = super::ErrorBody),
    ))]
pub async fn search_posts(
    State(state): State<AppState>,
    me: Authenticated,
    query: ApiQuery,
) -> Result<Json<PostPage>, ApiError> {
    let q = search_text(&query)?;
    let limit = page_limit(&query)?;
    let rows = store::search_posts(&state.db, me.user, &q, before(&query)?, limit + 1).await?;
    Ok(Json(page_with_media(&state, post_page(rows, limit)).await?))
}

/// People search by username and display name: typo-tolerant (trigrams), case and Turkish
/// letters folded (`ş` = `s`, `İ` = `I` = `ı` = `i`), best match first (one page).
#[utoipa::path(get, path = "/v1/search/users", tag = "timelines",
    security(("bearer" = [])),
    params(
        ("q" = String, Query, description = "A name or part of one (1–200 characters)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "How many (default 20)"),
    ),
    responses(
        (status = 200, description = "Matching users", body = UserPage),
        (status = 422, description = "`invalid_field`: a missing or bad `q`, or `limit`", body = super::ErrorBody),
    ))]
pub async fn search_users(
    State(state): State<AppState>,
    me: Authenticated,
    query: ApiQuery,
) -> Result<Json<UserPage>, ApiError> {
    let q = search_text(&query)?;
    let limit = page_limit(&query)?;
    let users = store::search_users(&state.db, me.user, &q, limit).await?;
    Ok(Json(UserPage {
        users: users.into_iter().map(UserRef::from).collect(),
        next_cursor: None,
    }))
}

fn search_text(query: &ApiQuery) -> Result<String, ApiError> {
    let q = query.text("q").unwrap_or("").trim();
    let chars = q.chars().count();
    if chars == 0 || chars > 200 || q.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "q",
            "q must be 1 to 200 characters without control characters",
        ));
    }
    Ok(q.to_owned())
}
