//! `/v1/groups/*` (groups and their members) and `/v1/conversations/*` (my conversations,
//! message history).
//!
//! API boundary: a conversation the caller is not a member of answers 404 exactly like one
//! that does not exist, so ids cannot be probed. Permission errors (403) are only given to
//! members, who already know the group exists.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use haberci_wire::{ConversationId, GroupId, Message, Seq, UserId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::extract::{ApiJson, ApiPath, ApiQuery, Authenticated};
use super::{ApiError, AppState};
use crate::conversations::store::{self, ListCursor, MemberRecord};
use crate::conversations::{
    self, GrantableRole, GroupName, Kind, MAX_GROUP_MEMBERS, MAX_INITIAL_MEMBERS, MembershipChange,
    OthersWatermarks, Role, status_for,
};

/// Default and largest page of `GET /v1/conversations/{id}/messages`.
pub const DEFAULT_HISTORY_LIMIT: u64 = 50;
pub const MAX_HISTORY_LIMIT: u64 = 200;
/// Default and largest page of `GET /v1/conversations`.
pub const DEFAULT_LIST_LIMIT: u64 = 50;
pub const MAX_LIST_LIMIT: u64 = 100;

// ---------------------------------------------------------------- schemas

/// The API's message object (the same JSON as `haberci_wire::Message`). `status` is the
/// message's status for the caller.
#[derive(Serialize, ToSchema)]
#[schema(as = Message)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // Describes `haberci_wire::Message` for the OpenAPI document only.
pub struct MessageSchema {
    #[schema(format = Uuid)]
    id: String,
    #[schema(format = Uuid)]
    sender_id: String,
    /// The peer's user id in a direct conversation, the group id in a group.
    #[schema(format = Uuid)]
    recipient_id: String,
    #[serde(rename = "type")]
    kind: MessageKindSchema,
    content: String,
    /// When the server stored it: RFC 3339, milliseconds, UTC.
    #[schema(format = DateTime, example = "2026-11-25T10:00:00.000Z")]
    timestamp: String,
    status: MessageStatusSchema,
    #[schema(format = Uuid)]
    conversation_id: String,
    /// Position in the conversation: 1, 2, 3, … without gaps.
    #[schema(minimum = 1, maximum = 9_007_199_254_740_991_u64)]
    seq: u64,
    /// The upload an image, video, audio or file message carries (absent for text);
    /// `GET /v1/media/{mediaId}/info` has links to its bytes.
    media: Option<MediaInfoSchema>,
}

/// What the server stored of a message's media (docs/MEDIA.md).
#[derive(Serialize, ToSchema)]
#[schema(as = MediaInfo)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // Describes `haberci_wire::MediaInfo` for the OpenAPI document only.
pub struct MediaInfoSchema {
    #[schema(format = Uuid)]
    media_id: String,
    content_type: String,
    size_bytes: u64,
    width: Option<u32>,
    height: Option<u32>,
    duration_ms: Option<u64>,
    blurhash: Option<String>,
    filename: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = MessageKind)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum MessageKindSchema {
    Text,
    Image,
    Video,
    Audio,
    File,
}

/// For my own messages: `read` once every other member read it, else `delivered` once every
/// other member has it, else `sent`. For others' messages: `read` once I read it, else
/// `delivered`.
#[derive(Serialize, ToSchema)]
#[schema(as = MessageStatus)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum MessageStatusSchema {
    Sent,
    Delivered,
    Read,
}

/// A member of a group.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberView {
    #[schema(value_type = String, format = Uuid)]
    pub user_id: UserId,
    pub username: String,
    pub display_name: String,
    pub role: Role,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub joined_at: OffsetDateTime,
}

impl From<MemberRecord> for MemberView {
    fn from(m: MemberRecord) -> Self {
        MemberView {
            user_id: m.user_id,
            username: m.username,
            display_name: m.display_name,
            role: m.role,
            joined_at: m.joined_at,
        }
    }
}

/// A group, as one of its members sees it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupView {
    /// The group id, which is also its conversation id (UUIDv7).
    #[schema(value_type = String, format = Uuid)]
    pub id: GroupId,
    pub name: String,
    /// The caller's role.
    pub role: Role,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// Every member: the owner first, then by joining time.
    pub members: Vec<MemberView>,
}

/// `POST /v1/groups`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateGroupRequest {
    /// 1–64 characters (surrounding whitespace is trimmed), no control, bidirectional or
    /// invisible characters (the rule of display names).
    #[schema(value_type = String, min_length = 1, max_length = 64, example = "Book club")]
    pub name: GroupName,
    /// Users to add as plain members (at most 256; duplicates and the caller are ignored).
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>, max_items = 256)]
    pub member_ids: Option<Vec<UserId>>,
}

/// `POST /v1/groups/{id}/members`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AddMemberRequest {
    #[schema(value_type = String, format = Uuid)]
    pub user_id: UserId,
    /// `member` (default) or `admin` (only the owner may add an admin).
    #[serde(default)]
    #[schema(value_type = Option<String>, pattern = "^(admin|member)$")]
    pub role: Option<GrantableRole>,
}

/// `PATCH /v1/groups/{id}/members/{userId}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMemberRequest {
    /// `admin` or `member`.
    #[schema(value_type = String, pattern = "^(admin|member)$")]
    pub role: GrantableRole,
}

/// A user's public profile, as a direct conversation shows its peer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerView {
    #[schema(value_type = String, format = Uuid)]
    pub id: UserId,
    pub username: String,
    pub display_name: String,
}

/// One of my conversations.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConversationView {
    #[schema(value_type = String, format = Uuid)]
    pub id: ConversationId,
    pub kind: Kind,
    /// A direct conversation's other user; `null` for a group.
    pub peer: Option<PeerView>,
    /// A group's name; `null` for a direct conversation.
    pub name: Option<String>,
    /// The conversation's last seq (0: no message yet).
    pub last_seq: u64,
    /// My receipt watermarks.
    pub delivered_seq: u64,
    pub read_seq: u64,
    /// Messages after my read watermark that others sent.
    pub unread_count: u64,
    /// The last message, if any since I joined.
    #[schema(value_type = Option<MessageSchema>)]
    pub last_message: Option<Message>,
    /// The last message's time, or when I joined if that is later; the list's order.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub last_activity_at: OffsetDateTime,
}

/// `GET /v1/conversations`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConversationPage {
    /// By last activity, most recent first.
    pub conversations: Vec<ConversationView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /v1/conversations/{id}/messages`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryPage {
    /// Newest first (descending `seq`).
    #[schema(value_type = Vec<MessageSchema>)]
    pub messages: Vec<Message>,
    /// Pass as `before` for the next (older) page; `null` when there is nothing older.
    #[schema(minimum = 1)]
    pub next_before: Option<u64>,
}

// ---------------------------------------------------------------- helpers

fn seq_out(value: i64) -> u64 {
    // Invariant: the schema keeps seqs and watermarks non-negative.
    u64::try_from(value).unwrap_or(0)
}

fn corrupt(err: conversations::CorruptRow) -> ApiError {
    ApiError::Internal(err.into())
}

async fn member_view(
    db: &sqlx::PgPool,
    group: GroupId,
    user: UserId,
) -> Result<MemberView, ApiError> {
    store::members(db, group)
        .await?
        .into_iter()
        .find(|m| m.user_id == user)
        .map(MemberView::from)
        .ok_or(ApiError::NotFound)
}

// ---------------------------------------------------------------- groups

/// 403 `not_addable`: `user`'s `groupAdds` setting does not let the caller add them.
fn not_addable(user: UserId) -> ApiError {
    ApiError::Refused {
        status: StatusCode::FORBIDDEN,
        code: "not_addable",
        message: format!("user {user} does not let you add them to groups (their groupAdds)"),
    }
}

/// 409 `too_many_groups`: `user` is in as many groups as one account may be.
fn too_many_groups(user: UserId) -> ApiError {
    ApiError::Refused {
        status: StatusCode::CONFLICT,
        code: "too_many_groups",
        message: format!(
            "user {user} is a member of {} groups already",
            conversations::MAX_GROUPS_PER_USER
        ),
    }
}

/// Create a group; the caller becomes its owner.
#[utoipa::path(post, path = "/v1/groups", tag = "groups",
    security(("bearer" = [])),
    request_body = CreateGroupRequest,
    responses(
        (status = 201, description = "The new group", body = GroupView),
        (status = 403, description = "`not_addable`: a member's `groupAdds` does not let me add them", body = super::ErrorBody),
        (status = 409, description = "`too_many_groups`: I, or a member, am in 500 groups already", body = super::ErrorBody),
        (status = 422, description = "`invalid_field`: a bad name, more than 256 `memberIds`, or a member id that names no user (`field` is `memberIds`)", body = super::ErrorBody),
    ))]
pub async fn create_group(
    State(state): State<AppState>,
    me: Authenticated,
    ApiJson(request): ApiJson<CreateGroupRequest>,
) -> Result<Response, ApiError> {
    let mut members = request.member_ids.unwrap_or_default();
    if members.len() > MAX_INITIAL_MEMBERS {
        return Err(ApiError::invalid(
            "memberIds",
            format!("a group starts with at most {MAX_INITIAL_MEMBERS} members besides its owner"),
        ));
    }
    members.sort();
    members.dedup();
    members.retain(|&m| m != me.user);
    let unknown = store::unknown_users(&state.db, &members).await?;
    if let Some(first) = unknown.first() {
        return Err(ApiError::invalid(
            "memberIds",
            format!("no user has the id {first}"),
        ));
    }
    if let Some(refusing) = store::first_refusing_adds(&state.db, &members, me.user).await? {
        return Err(not_addable(refusing));
    }
    let everyone: Vec<UserId> = std::iter::once(me.user)
        .chain(members.iter().copied())
        .collect();
    if let Some(full) = store::first_at_group_limit(&state.db, &everyone).await? {
        return Err(too_many_groups(full));
    }
    let id: GroupId = crate::db::new_id();
    let mut tx = state.db.begin().await?;
    let group = store::create_group(&mut tx, id, request.name.as_str(), me.user, &members).await?;
    tx.commit().await?;

    let changes: Vec<_> = std::iter::once(me.user)
        .chain(members.iter().copied())
        .map(|user| (user, MembershipChange::Joined { after: 0 }))
        .collect();
    conversations::announce(&state.redis, id, &changes).await;

    let members = store::members(&state.db, id).await?;
    let body = GroupView {
        id: group.id,
        name: group.name,
        role: Role::Owner,
        created_at: group.created_at,
        members: members.into_iter().map(MemberView::from).collect(),
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// A group I am a member of, with its members and their roles.
#[utoipa::path(get, path = "/v1/groups/{id}", tag = "groups",
    security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "The group id")),
    responses(
        (status = 200, description = "The group", body = GroupView),
        (status = 404, description = "No such group, or I am not a member", body = super::ErrorBody),
    ))]
pub async fn group(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(id): ApiPath<GroupId>,
) -> Result<Json<GroupView>, ApiError> {
    let role = store::role_of(&state.db, id, me.user)
        .await?
        .ok_or(ApiError::NotFound)?;
    let group = store::group(&state.db, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let members = store::members(&state.db, id).await?;
    Ok(Json(GroupView {
        id: group.id,
        name: group.name,
        role,
        created_at: group.created_at,
        members: members.into_iter().map(MemberView::from).collect(),
    }))
}

/// Add a member. The owner and admins may add members; only the owner may add an admin. The
/// new member's history starts after joining: they see only messages sent from then on.
#[utoipa::path(post, path = "/v1/groups/{id}/members", tag = "groups",
    security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "The group id")),
    request_body = AddMemberRequest,
    responses(
        (status = 201, description = "The new member", body = MemberView),
        (status = 403, description = "`forbidden`: I am a plain member, or an admin adding an admin; `not_addable`: the user's `groupAdds` does not let me add them", body = super::ErrorBody),
        (status = 404, description = "No such group, or I am not a member", body = super::ErrorBody),
        (status = 409, description = "`already_member`, `group_full` (10,000 members), or `too_many_groups` (the user is in 500 groups)", body = super::ErrorBody),
        (status = 422, description = "`invalid_field`: `userId` names no user, or a bad `role`", body = super::ErrorBody),
    ))]
pub async fn add_member(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(id): ApiPath<GroupId>,
    ApiJson(request): ApiJson<AddMemberRequest>,
) -> Result<Response, ApiError> {
    let role = request.role.unwrap_or(GrantableRole::MEMBER).role();
    let mut tx = state.db.begin().await?;
    let locked = store::lock_group(&mut tx, id, me.user)
        .await?
        .ok_or(ApiError::NotFound)?;
    match (locked.role, role) {
        (Role::Member, _) => {
            return Err(ApiError::Forbidden(
                "only the owner or an admin may add members",
            ));
        }
        (Role::Admin, Role::Admin) => {
            return Err(ApiError::Forbidden("only the owner may add an admin"));
        }
        _ => {}
    }
    if !store::user_exists(&mut *tx, request.user_id).await? {
        return Err(ApiError::invalid("userId", "no user has this id"));
    }
    if store::role_of(&mut *tx, id, request.user_id)
        .await?
        .is_some()
    {
        return Err(ApiError::AlreadyMember);
    }
    if store::first_refusing_adds(&mut *tx, &[request.user_id], me.user)
        .await?
        .is_some()
    {
        return Err(not_addable(request.user_id));
    }
    if store::first_at_group_limit(&mut *tx, &[request.user_id])
        .await?
        .is_some()
    {
        return Err(too_many_groups(request.user_id));
    }
    let count = store::count_members(&mut *tx, id).await?;
    if usize::try_from(count).unwrap_or(usize::MAX) >= MAX_GROUP_MEMBERS {
        return Err(ApiError::GroupFull {
            max: MAX_GROUP_MEMBERS,
        });
    }
    if !store::add_member(&mut tx, id, request.user_id, role, locked.last_seq).await? {
        return Err(ApiError::AlreadyMember);
    }
    tx.commit().await?;
    conversations::announce(
        &state.redis,
        id,
        &[(
            request.user_id,
            MembershipChange::Joined {
                after: locked.last_seq,
            },
        )],
    )
    .await;
    let member = member_view(&state.db, id, request.user_id).await?;
    Ok((StatusCode::CREATED, Json(member)).into_response())
}

/// Remove a member. The owner may remove anyone; an admin may remove plain members; anyone may
/// remove themselves, which is leaving (see `POST /v1/groups/{id}/leave`).
#[utoipa::path(delete, path = "/v1/groups/{id}/members/{userId}", tag = "groups",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, format = Uuid, description = "The group id"),
        ("userId" = String, Path, format = Uuid, description = "The member to remove"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "`forbidden`: I am a plain member, or an admin removing an admin or the owner", body = super::ErrorBody),
        (status = 404, description = "No such group, I am not a member, or the user is not a member", body = super::ErrorBody),
    ))]
pub async fn remove_member(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath((id, target)): ApiPath<(GroupId, UserId)>,
) -> Result<StatusCode, ApiError> {
    if target == me.user {
        return leave_group(&state, me.user, id).await;
    }
    let mut tx = state.db.begin().await?;
    let locked = store::lock_group(&mut tx, id, me.user)
        .await?
        .ok_or(ApiError::NotFound)?;
    let target_role = store::role_of(&mut *tx, id, target)
        .await?
        .ok_or(ApiError::NotFound)?;
    match (locked.role, target_role) {
        (Role::Owner, _) | (Role::Admin, Role::Member) => {}
        (Role::Admin, _) => {
            return Err(ApiError::Forbidden(
                "an admin may remove only plain members",
            ));
        }
        (Role::Member, _) => {
            return Err(ApiError::Forbidden(
                "only the owner or an admin may remove members",
            ));
        }
    }
    store::remove_member(&mut tx, id, target).await?;
    tx.commit().await?;
    conversations::announce(&state.redis, id, &[(target, MembershipChange::Left)]).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Leave a group. An owner who leaves hands ownership to the longest-standing admin, else to
/// the longest-standing member. When the last member leaves, the group and its messages stay
/// stored (nobody can reach them through the API any more).
#[utoipa::path(post, path = "/v1/groups/{id}/leave", tag = "groups",
    security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "The group id")),
    responses(
        (status = 204, description = "Left"),
        (status = 404, description = "No such group, or I am not a member", body = super::ErrorBody),
    ))]
pub async fn leave(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(id): ApiPath<GroupId>,
) -> Result<StatusCode, ApiError> {
    leave_group(&state, me.user, id).await
}

async fn leave_group(
    state: &AppState,
    user: UserId,
    group: GroupId,
) -> Result<StatusCode, ApiError> {
    let mut tx = state.db.begin().await?;
    let locked = store::lock_group(&mut tx, group, user)
        .await?
        .ok_or(ApiError::NotFound)?;
    store::remove_member(&mut tx, group, user).await?;
    if locked.role == Role::Owner {
        // Invariant: a group with members has exactly one owner.
        if let Some(heir) = store::successor(&mut tx, group).await? {
            store::set_role(&mut tx, group, heir, Role::Owner).await?;
        }
    }
    tx.commit().await?;
    conversations::announce(&state.redis, group, &[(user, MembershipChange::Left)]).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Change a member's role (`admin` or `member`). Only the owner may, and not their own.
#[utoipa::path(patch, path = "/v1/groups/{id}/members/{userId}", tag = "groups",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, format = Uuid, description = "The group id"),
        ("userId" = String, Path, format = Uuid, description = "The member"),
    ),
    request_body = UpdateMemberRequest,
    responses(
        (status = 200, description = "The member with the new role", body = MemberView),
        (status = 403, description = "`forbidden`: I am not the owner, or I tried to change my own role", body = super::ErrorBody),
        (status = 404, description = "No such group, I am not a member, or the user is not a member", body = super::ErrorBody),
    ))]
pub async fn update_member(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath((id, target)): ApiPath<(GroupId, UserId)>,
    ApiJson(request): ApiJson<UpdateMemberRequest>,
) -> Result<Json<MemberView>, ApiError> {
    let mut tx = state.db.begin().await?;
    let locked = store::lock_group(&mut tx, id, me.user)
        .await?
        .ok_or(ApiError::NotFound)?;
    if locked.role != Role::Owner {
        return Err(ApiError::Forbidden("only the owner may change roles"));
    }
    if target == me.user {
        return Err(ApiError::Forbidden(
            "the owner's own role cannot be changed; leaving hands ownership over",
        ));
    }
    if !store::set_role(&mut tx, id, target, request.role.role()).await? {
        return Err(ApiError::NotFound);
    }
    tx.commit().await?;
    Ok(Json(member_view(&state.db, id, target).await?))
}

// ---------------------------------------------------------------- conversations

fn encode_cursor(cursor: ListCursor) -> String {
    let micros = cursor.activity.unix_timestamp_nanos() / 1_000;
    format!("{micros}_{}", cursor.id.simple())
}

fn decode_cursor(text: &str) -> Result<ListCursor, ApiError> {
    let bad = || ApiError::invalid("cursor", "cursor must be a nextCursor from a previous page");
    let (micros, id) = text.split_once('_').ok_or_else(bad)?;
    let micros: i128 = micros.parse().map_err(|_| bad())?;
    let activity = micros
        .checked_mul(1_000)
        .and_then(|nanos| OffsetDateTime::from_unix_timestamp_nanos(nanos).ok())
        .ok_or_else(bad)?;
    let id = Uuid::parse_str(id).map_err(|_| bad())?;
    Ok(ListCursor { activity, id })
}

/// My conversations, most recently active first, with unread counts and the last message.
///
/// Paging is by (last activity, id): a conversation that becomes active while a client pages
/// moves to the top, so a client that pages through a changing list may see it twice or
/// (having passed it) miss its new position; re-read the first page to catch up.
#[utoipa::path(get, path = "/v1/conversations", tag = "conversations",
    security(("bearer" = [])),
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Page size (default 50, at most 100)"),
        ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of my conversations", body = ConversationPage),
        (status = 422, description = "`invalid_field`: a bad `limit` or `cursor`", body = super::ErrorBody),
    ))]
pub async fn list_conversations(
    State(state): State<AppState>,
    me: Authenticated,
    query: ApiQuery,
) -> Result<Json<ConversationPage>, ApiError> {
    let limit = query
        .integer("limit", 1, MAX_LIST_LIMIT)?
        .unwrap_or(DEFAULT_LIST_LIMIT);
    let cursor = query.text("cursor").map(decode_cursor).transpose()?;
    let limit = i64::try_from(limit).unwrap_or(1);
    let mut rows = store::list(&state.db, me.user, cursor, limit + 1).await?;
    let more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    let next_cursor = more.then(|| rows.last()).flatten().map(|row| {
        encode_cursor(ListCursor {
            activity: row.activity,
            id: row.id.as_uuid(),
        })
    });
    let mut conversations = Vec::with_capacity(rows.len());
    for row in rows {
        let others = OthersWatermarks {
            delivered: row.others_delivered,
            read: row.others_read,
        };
        let pair = conversations::DirectPair::from_columns(row.user_low, row.user_high);
        let last_message = match row.last_message() {
            Some(m) => {
                let status = status_for(me.user, m.sender_id, m.seq, row.read_seq, others);
                Some(m.to_message(pair, status).map_err(corrupt)?)
            }
            None => None,
        };
        let peer = match (row.peer_id, row.peer_username, row.peer_display_name) {
            (Some(id), Some(username), Some(display_name)) => Some(PeerView {
                id,
                username,
                display_name,
            }),
            _ => None,
        };
        conversations.push(ConversationView {
            id: row.id,
            kind: row.kind,
            peer,
            name: row.name,
            last_seq: seq_out(row.last_seq),
            delivered_seq: seq_out(row.delivered_seq),
            read_seq: seq_out(row.read_seq),
            unread_count: seq_out(row.unread),
            last_message,
            last_activity_at: row.activity,
        });
    }
    Ok(Json(ConversationPage {
        conversations,
        next_cursor,
    }))
}

/// A page of a conversation's messages, newest first, each with its status for me. Only
/// messages sent after I joined are shown.
#[utoipa::path(get, path = "/v1/conversations/{id}/messages", tag = "conversations",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, format = Uuid, description = "The conversation id"),
        ("before" = Option<u64>, Query, minimum = 1, maximum = 9_007_199_254_740_991_u64, description = "Only messages with a smaller seq (default: from the newest)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 200, description = "Page size (default 50, at most 200)"),
    ),
    responses(
        (status = 200, description = "Messages, newest first", body = HistoryPage),
        (status = 404, description = "No such conversation, or I am not a member", body = super::ErrorBody),
        (status = 422, description = "`invalid_field`: a bad `before` or `limit`", body = super::ErrorBody),
    ))]
pub async fn history(
    State(state): State<AppState>,
    me: Authenticated,
    ApiPath(id): ApiPath<ConversationId>,
    query: ApiQuery,
) -> Result<Json<HistoryPage>, ApiError> {
    let limit = query
        .integer("limit", 1, MAX_HISTORY_LIMIT)?
        .unwrap_or(DEFAULT_HISTORY_LIMIT);
    let before = query.integer("before", 1, Seq::MAX.get())?;
    let membership = store::membership(&state.db, id, me.user)
        .await?
        .ok_or(ApiError::NotFound)?;
    let before = before
        .and_then(conversations::stored_seq)
        .unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(1);
    // An older page (`before` given) may come from a replica, but only one that holds every
    // message before it: the page below a message the client has must have no hole. The
    // newest page is the primary's.
    let joined = membership.joined_seq;
    let rows = if before == i64::MAX {
        store::history(&state.db, id, joined, before, limit).await?
    } else {
        state
            .reads
            .on_replica_if(
                |replica| store::holds_seq(replica, id, before - 1),
                |db| async move { store::history(&db, id, joined, before, limit).await },
            )
            .await?
    };
    // The other members' watermarks matter only for my own messages; a big group pays for
    // the scan of its members only when the page holds one. Always the primary's: a status
    // must not go back from what the newest page showed.
    let others = if rows.iter().any(|m| m.sender_id == me.user) {
        store::others_watermarks(&state.db, id, me.user).await?
    } else {
        OthersWatermarks::default()
    };
    let pair = membership.pair();
    let messages = rows
        .iter()
        .map(|m| {
            let status = status_for(me.user, m.sender_id, m.seq, membership.read_seq, others);
            m.to_message(pair, status).map_err(corrupt)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let oldest = rows.last().map(|m| m.seq);
    let full = rows.len() == usize::try_from(limit).unwrap_or(usize::MAX);
    let next_before = oldest
        .filter(|&seq| full && seq > membership.joined_seq + 1)
        .map(seq_out);
    Ok(Json(HistoryPage {
        messages,
        next_before,
    }))
}
