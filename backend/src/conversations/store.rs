//! Queries on `conversations`, `members` and `messages` (reads of messages only: the worker
//! writes them). Plans of the hot ones are in docs/BENCHMARKS.md ("Query plans: history and
//! sync").
//!
//! Membership changes and group reads take a [`GroupId`] (a group's conversation has the same
//! id, so it is bound to `conversation_id` as it is); message reads take a [`ConversationId`].

use haberci_wire::{ConversationId, GroupId, MessageId, UserId};
use sqlx::{PgConnection, PgExecutor, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{DirectPair, Kind, MessageRow, OthersWatermarks, Role};

/// A group as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct GroupRecord {
    pub id: GroupId,
    pub name: String,
    pub created_at: OffsetDateTime,
    pub last_seq: i64,
}

/// A member of a group, with their public profile.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MemberRecord {
    pub user_id: UserId,
    pub username: String,
    pub display_name: String,
    #[sqlx(try_from = "String")]
    pub role: Role,
    pub joined_at: OffsetDateTime,
}

/// One user's membership of one conversation, with the conversation.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Membership {
    pub conversation_id: ConversationId,
    #[sqlx(try_from = "String")]
    pub kind: Kind,
    pub user_low: Option<UserId>,
    pub user_high: Option<UserId>,
    pub last_seq: i64,
    pub joined_seq: i64,
    pub delivered_seq: i64,
    pub read_seq: i64,
}

impl Membership {
    pub fn pair(&self) -> Option<DirectPair> {
        DirectPair::from_columns(self.user_low, self.user_high)
    }
}

/// Of `ids`, those that name no user.
pub async fn unknown_users(db: impl PgExecutor<'_>, ids: &[UserId]) -> sqlx::Result<Vec<UserId>> {
    sqlx::query_scalar::<_, UserId>(
        "SELECT x FROM unnest($1::uuid[]) AS x
         WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = x)",
    )
    .bind(ids)
    .fetch_all(db)
    .await
}

/// Of `users`, the first who is in [`super::MAX_GROUPS_PER_USER`] groups already.
pub async fn first_at_group_limit(
    db: impl PgExecutor<'_>,
    users: &[UserId],
) -> sqlx::Result<Option<UserId>> {
    sqlx::query_scalar::<_, UserId>(
        "SELECT m.user_id FROM members m JOIN conversations c ON c.id = m.conversation_id
         WHERE m.user_id = ANY($1) AND c.kind = 'group'
         GROUP BY m.user_id HAVING count(*) >= $2
         LIMIT 1",
    )
    .bind(users)
    .bind(i64::try_from(super::MAX_GROUPS_PER_USER).unwrap_or(i64::MAX))
    .fetch_optional(db)
    .await
}

/// Of `users`, the first who does not let `adder` add them to a group: their `group_adds`
/// is `nobody`, or `following` and they do not follow `adder`.
pub async fn first_refusing_adds(
    db: impl PgExecutor<'_>,
    users: &[UserId],
    adder: UserId,
) -> sqlx::Result<Option<UserId>> {
    sqlx::query_scalar::<_, UserId>(
        "SELECT u.id FROM users u
         WHERE u.id = ANY($1) AND u.id <> $2
           AND (u.group_adds = 'nobody'
             OR (u.group_adds = 'following' AND NOT EXISTS (
                   SELECT 1 FROM follows f WHERE f.follower_id = u.id AND f.followee_id = $2)))
         LIMIT 1",
    )
    .bind(users)
    .bind(adder)
    .fetch_optional(db)
    .await
}

/// Creates a group owned by `owner` with `members` (not containing `owner`) as plain members.
/// Call inside a transaction, after checking that every member exists.
pub async fn create_group(
    tx: &mut PgConnection,
    id: GroupId,
    name: &str,
    owner: UserId,
    members: &[UserId],
) -> sqlx::Result<GroupRecord> {
    let group = sqlx::query_as::<_, GroupRecord>(
        "INSERT INTO conversations (id, kind, name, created_by) VALUES ($1, 'group', $2, $3)
         RETURNING id, name, created_at, last_seq",
    )
    .bind(id)
    .bind(name)
    .bind(owner)
    .fetch_one(&mut *tx)
    .await?;
    let mut users: Vec<UserId> = Vec::with_capacity(members.len() + 1);
    users.push(owner);
    users.extend_from_slice(members);
    sqlx::query(
        "INSERT INTO members (conversation_id, user_id, role)
         SELECT $1, u, CASE WHEN u = $2 THEN 'owner' ELSE 'member' END
         FROM unnest($3::uuid[]) AS u",
    )
    .bind(id)
    .bind(owner)
    .bind(users)
    .execute(&mut *tx)
    .await?;
    Ok(group)
}

/// A group locked for a membership change, as its caller sees it.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct LockedGroup {
    pub last_seq: i64,
    #[sqlx(try_from = "String")]
    pub role: Role,
}

/// Locks the group's conversation row (the worker's numbering lock) if `caller` is a member;
/// `None` when there is no such group or the caller is not in it.
pub async fn lock_group(
    tx: &mut PgConnection,
    group: GroupId,
    caller: UserId,
) -> sqlx::Result<Option<LockedGroup>> {
    sqlx::query_as::<_, LockedGroup>(
        "SELECT c.last_seq, m.role
         FROM conversations c
         JOIN members m ON m.conversation_id = c.id AND m.user_id = $2
         WHERE c.id = $1 AND c.kind = 'group'
         FOR UPDATE OF c",
    )
    .bind(group)
    .bind(caller)
    .fetch_optional(&mut *tx)
    .await
}

pub async fn role_of(
    db: impl PgExecutor<'_>,
    group: GroupId,
    user: UserId,
) -> sqlx::Result<Option<Role>> {
    let role = sqlx::query_scalar::<_, String>(
        "SELECT role FROM members WHERE conversation_id = $1 AND user_id = $2",
    )
    .bind(group)
    .bind(user)
    .fetch_optional(db)
    .await?;
    role.map(Role::try_from)
        .transpose()
        .map_err(|err| sqlx::Error::Decode(Box::new(err)))
}

pub async fn user_exists(db: impl PgExecutor<'_>, user: UserId) -> sqlx::Result<bool> {
    sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)")
        .bind(user)
        .fetch_one(db)
        .await
}

pub async fn count_members(db: impl PgExecutor<'_>, group: GroupId) -> sqlx::Result<i64> {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM members WHERE conversation_id = $1")
        .bind(group)
        .fetch_one(db)
        .await
}

/// Adds `user` with every watermark at `last_seq`: their history starts after joining.
/// Returns false when they are already a member.
pub async fn add_member(
    tx: &mut PgConnection,
    group: GroupId,
    user: UserId,
    role: Role,
    last_seq: i64,
) -> sqlx::Result<bool> {
    let added = sqlx::query(
        "INSERT INTO members (conversation_id, user_id, role, joined_seq, delivered_seq, read_seq)
         VALUES ($1, $2, $3, $4, $4, $4)
         ON CONFLICT (conversation_id, user_id) DO NOTHING",
    )
    .bind(group)
    .bind(user)
    .bind(role.as_str())
    .bind(last_seq)
    .execute(&mut *tx)
    .await?;
    Ok(added.rows_affected() == 1)
}

pub async fn remove_member(
    tx: &mut PgConnection,
    group: GroupId,
    user: UserId,
) -> sqlx::Result<bool> {
    let removed = sqlx::query("DELETE FROM members WHERE conversation_id = $1 AND user_id = $2")
        .bind(group)
        .bind(user)
        .execute(&mut *tx)
        .await?;
    Ok(removed.rows_affected() == 1)
}

pub async fn set_role(
    tx: &mut PgConnection,
    group: GroupId,
    user: UserId,
    role: Role,
) -> sqlx::Result<bool> {
    let updated =
        sqlx::query("UPDATE members SET role = $3 WHERE conversation_id = $1 AND user_id = $2")
            .bind(group)
            .bind(user)
            .bind(role.as_str())
            .execute(&mut *tx)
            .await?;
    Ok(updated.rows_affected() == 1)
}

/// Who inherits a group whose owner leaves: the longest-standing admin, else the
/// longest-standing member (ties broken by user id, so the choice is deterministic).
pub async fn successor(tx: &mut PgConnection, group: GroupId) -> sqlx::Result<Option<UserId>> {
    sqlx::query_scalar::<_, UserId>(
        "SELECT user_id FROM members
         WHERE conversation_id = $1 AND role <> 'owner'
         ORDER BY role = 'admin' DESC, joined_at, user_id
         LIMIT 1",
    )
    .bind(group)
    .fetch_optional(&mut *tx)
    .await
}

pub async fn group(db: &PgPool, id: GroupId) -> sqlx::Result<Option<GroupRecord>> {
    sqlx::query_as::<_, GroupRecord>(
        "SELECT id, name, created_at, last_seq FROM conversations WHERE id = $1 AND kind = 'group'",
    )
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Every member, owner first, then by joining time.
pub async fn members(db: impl PgExecutor<'_>, group: GroupId) -> sqlx::Result<Vec<MemberRecord>> {
    sqlx::query_as::<_, MemberRecord>(
        "SELECT m.user_id, u.username::text AS username, u.display_name, m.role, m.joined_at
         FROM members m JOIN users u ON u.id = m.user_id
         WHERE m.conversation_id = $1
         ORDER BY m.role = 'owner' DESC, m.joined_at, m.user_id",
    )
    .bind(group)
    .fetch_all(db)
    .await
}

/// `user`'s membership of `conversation`; `None` for a non-member or no such conversation
/// (the API answers both with 404).
pub async fn membership(
    db: &PgPool,
    conversation: ConversationId,
    user: UserId,
) -> sqlx::Result<Option<Membership>> {
    sqlx::query_as::<_, Membership>(
        "SELECT c.id AS conversation_id, c.kind, c.user_low, c.user_high, c.last_seq,
                m.joined_seq, m.delivered_seq, m.read_seq
         FROM members m JOIN conversations c ON c.id = m.conversation_id
         WHERE m.conversation_id = $1 AND m.user_id = $2",
    )
    .bind(conversation)
    .bind(user)
    .fetch_optional(db)
    .await
}

/// The lowest receipt watermarks among the members other than `viewer`.
pub async fn others_watermarks(
    db: &PgPool,
    conversation: ConversationId,
    viewer: UserId,
) -> sqlx::Result<OthersWatermarks> {
    let (delivered, read) = sqlx::query_as::<_, (i64, i64)>(
        "SELECT COALESCE(min(delivered_seq), 0), COALESCE(min(read_seq), 0)
         FROM members WHERE conversation_id = $1 AND user_id <> $2",
    )
    .bind(conversation)
    .bind(viewer)
    .fetch_one(db)
    .await?;
    Ok(OthersWatermarks { delivered, read })
}

/// The history query: messages with `after < seq < before`, newest first, at most `limit`.
pub const HISTORY_SQL: &str =
    "SELECT m.conversation_id, m.seq, m.id, m.sender_id, m.type, m.content, m.created_at,
            m.media_id, m.media_content_type, m.media_size, md.width AS media_width,
            md.height AS media_height, md.duration_ms AS media_duration_ms,
            md.blurhash AS media_blurhash, md.filename AS media_filename
     FROM messages m LEFT JOIN media md ON md.id = m.media_id
     WHERE m.conversation_id = $1 AND m.seq > $2 AND m.seq < $3
     ORDER BY m.seq DESC
     LIMIT $4";

pub async fn history(
    db: &PgPool,
    conversation: ConversationId,
    after: i64,
    before: i64,
    limit: i64,
) -> sqlx::Result<Vec<MessageRow>> {
    sqlx::query_as::<_, MessageRow>(HISTORY_SQL)
        .bind(conversation)
        .bind(after)
        .bind(before)
        .bind(limit)
        .fetch_all(db)
        .await
}

/// Whether `db` holds `conversation`'s messages up to `seq`: its `last_seq` (written in the
/// same transaction as the messages) has reached it. Asked of a replica before it serves a
/// history page.
pub async fn holds_seq(db: PgPool, conversation: ConversationId, seq: i64) -> sqlx::Result<bool> {
    let last: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM conversations WHERE id = $1")
        .bind(conversation)
        .fetch_optional(&db)
        .await?;
    Ok(last.is_some_and(|last| last >= seq))
}

/// Where a page of the conversation list starts: after this (activity, id). A position, not
/// necessarily a conversation: any UUID orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListCursor {
    pub activity: OffsetDateTime,
    pub id: Uuid,
}

/// One row of the conversation list.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ListRow {
    pub id: ConversationId,
    #[sqlx(try_from = "String")]
    pub kind: Kind,
    pub name: Option<String>,
    pub user_low: Option<UserId>,
    pub user_high: Option<UserId>,
    pub last_seq: i64,
    pub joined_seq: i64,
    pub delivered_seq: i64,
    pub read_seq: i64,
    pub activity: OffsetDateTime,
    pub peer_id: Option<UserId>,
    pub peer_username: Option<String>,
    pub peer_display_name: Option<String>,
    pub unread: i64,
    pub lm_seq: Option<i64>,
    pub lm_id: Option<MessageId>,
    pub lm_sender: Option<UserId>,
    pub lm_type: Option<String>,
    pub lm_content: Option<String>,
    pub lm_created_at: Option<OffsetDateTime>,
    pub others_delivered: i64,
    pub others_read: i64,
}

impl ListRow {
    pub fn last_message(&self) -> Option<MessageRow> {
        Some(MessageRow {
            conversation_id: self.id,
            seq: self.lm_seq?,
            id: self.lm_id?,
            sender_id: self.lm_sender?,
            kind: self.lm_type.clone()?,
            content: self.lm_content.clone()?,
            created_at: self.lm_created_at?,
            // A list shows the last message's type; its media is read with the history.
            media: super::MediaColumns::default(),
        })
    }
}

/// The caller's conversations by last activity (their last message, or when the caller
/// joined), newest first. Only the page's rows pay for the unread count and the watermarks.
pub const LIST_SQL: &str = "WITH mine AS (
    SELECT c.id, c.kind, c.name, c.user_low, c.user_high, c.last_seq,
           m.joined_seq, m.delivered_seq, m.read_seq,
           GREATEST(m.joined_at, lm.created_at) AS activity,
           lm.seq AS lm_seq, lm.id AS lm_id, lm.sender_id AS lm_sender, lm.type AS lm_type,
           lm.content AS lm_content, lm.created_at AS lm_created_at
    FROM members m
    JOIN conversations c ON c.id = m.conversation_id
    LEFT JOIN messages lm
      ON lm.conversation_id = c.id AND lm.seq = c.last_seq AND c.last_seq > m.joined_seq
    WHERE m.user_id = $1
), page AS (
    SELECT * FROM mine
    WHERE $2::timestamptz IS NULL OR (activity, id) < ($2::timestamptz, $3::uuid)
    ORDER BY activity DESC, id DESC
    LIMIT $4
)
SELECT p.*,
       peer.id AS peer_id, peer.username::text AS peer_username,
       peer.display_name AS peer_display_name,
       (SELECT count(*) FROM messages x
         WHERE x.conversation_id = p.id AND x.seq > GREATEST(p.read_seq, p.joined_seq)
           AND x.sender_id <> $1) AS unread,
       o.delivered AS others_delivered, o.read AS others_read
FROM page p
LEFT JOIN users peer ON p.kind = 'direct'
     AND peer.id = CASE WHEN p.user_low = $1 THEN p.user_high ELSE p.user_low END
CROSS JOIN LATERAL (
    SELECT COALESCE(min(w.delivered_seq), 0) AS delivered, COALESCE(min(w.read_seq), 0) AS read
    FROM members w
    WHERE w.conversation_id = p.id AND w.user_id <> $1 AND p.lm_sender = $1
) o
ORDER BY p.activity DESC, p.id DESC";

pub async fn list(
    db: &PgPool,
    user: UserId,
    cursor: Option<ListCursor>,
    limit: i64,
) -> sqlx::Result<Vec<ListRow>> {
    sqlx::query_as::<_, ListRow>(LIST_SQL)
        .bind(user)
        .bind(cursor.map(|c| c.activity))
        .bind(cursor.map(|c| c.id))
        .bind(limit)
        .fetch_all(db)
        .await
}

/// One conversation of a user, as a gateway needs it at session start.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserConversation {
    pub id: ConversationId,
    #[sqlx(try_from = "String")]
    pub kind: Kind,
    pub peer: Option<UserId>,
    pub last_seq: i64,
    pub joined_seq: i64,
    pub delivered_seq: i64,
    pub read_seq: i64,
}

pub async fn user_conversations(db: &PgPool, user: UserId) -> sqlx::Result<Vec<UserConversation>> {
    sqlx::query_as::<_, UserConversation>(
        "SELECT c.id, c.kind,
                CASE WHEN c.kind = 'direct'
                     THEN CASE WHEN c.user_low = $1 THEN c.user_high ELSE c.user_low END
                END AS peer,
                c.last_seq, m.joined_seq, m.delivered_seq, m.read_seq
         FROM members m JOIN conversations c ON c.id = m.conversation_id
         WHERE m.user_id = $1
         ORDER BY c.id",
    )
    .bind(user)
    .fetch_all(db)
    .await
}

/// One row of a sync answer: a position, and one of its messages (none when the user is not
/// a member or nothing is new).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SyncRow {
    pub position: ConversationId,
    pub member: bool,
    pub user_low: Option<UserId>,
    pub user_high: Option<UserId>,
    pub read_seq: Option<i64>,
    pub seq: Option<i64>,
    pub id: Option<MessageId>,
    pub sender_id: Option<UserId>,
    #[sqlx(rename = "type")]
    pub kind: Option<String>,
    pub content: Option<String>,
    pub created_at: Option<OffsetDateTime>,
    #[sqlx(flatten)]
    pub media: super::MediaColumns,
    pub others_delivered: i64,
    pub others_read: i64,
}

impl SyncRow {
    pub fn message(&self) -> Option<MessageRow> {
        Some(MessageRow {
            conversation_id: self.position,
            seq: self.seq?,
            id: self.id?,
            sender_id: self.sender_id?,
            kind: self.kind.clone()?,
            content: self.content.clone()?,
            created_at: self.created_at?,
            media: self.media.clone(),
        })
    }

    pub fn pair(&self) -> Option<DirectPair> {
        DirectPair::from_columns(self.user_low, self.user_high)
    }
}

/// The resume/sync query: for each position `(conversation, after)` in the order given, the
/// user's membership and up to `$4` messages with `seq > max(after, joined_seq)`, ascending.
/// The other members' watermarks are computed only for conversations where the user's own
/// messages are returned (that is what needs them). The statement is the function
/// `conversation_sync` (migration `20261207000001`), which runs it with a generic plan:
/// planned per call, it cost four times its execution. The function returns its rows in
/// order (positions as given, seqs ascending); the `ORDER BY` keeps that order, which the
/// caller's `more` rests on, a promise of SQL rather than of the executor.
pub const SYNC_SQL: &str =
    "SELECT position, member, user_low, user_high, read_seq, seq, id, sender_id,
       type, content, created_at, media_id, media_content_type, media_size, media_width,
       media_height, media_duration_ms, media_blurhash, media_filename,
       others_delivered, others_read
FROM conversation_sync($1, $2, $3, $4) WITH ORDINALITY AS s
ORDER BY s.ordinality";

pub async fn sync(
    db: &PgPool,
    user: UserId,
    positions: &[(ConversationId, i64)],
    limit_each: i64,
) -> sqlx::Result<Vec<SyncRow>> {
    let ids: Vec<ConversationId> = positions.iter().map(|p| p.0).collect();
    let afters: Vec<i64> = positions.iter().map(|p| p.1).collect();
    sqlx::query_as::<_, SyncRow>(SYNC_SQL)
        .bind(user)
        .bind(ids)
        .bind(afters)
        .bind(limit_each)
        .fetch_all(db)
        .await
}
