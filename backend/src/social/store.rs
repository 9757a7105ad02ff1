//! The social tables' SQL. Writers take a transaction and keep the count columns exact (see the
//! migration's invariant); readers of posts all go through [`post_query`], whose filter is
//! [`visible`], so no read path can forget a block or a visibility rule.

use std::sync::LazyLock;

use haberci_wire::{CommentId, MediaId, PostId, UserId};
use sqlx::{PgConnection, PgExecutor, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use super::Visibility;

/// Whether the viewer (`$1`) may see post `p` written by `u` (its author's `users` row): the
/// one definition of docs/SOCIAL.md, "Who sees what". Own posts always; never across a block
/// (either way) or from a suspended account; `public` unless the author is private and the
/// viewer no follower; `followers` to followers; `mentioned` to the mentioned. Deleted posts
/// are filtered by the callers.
///
/// Written inline, not as a SQL function: a function with sub-queries is never inlined, so
/// Postgres called it per candidate row (≈ 40 µs each; docs/BENCHMARKS.md, "Social"); inline,
/// its probes are plain index lookups in the plan.
pub fn visible(p: &str, u: &str) -> String {
    let unblocked = unblocked("$1", &format!("{p}.author_id"));
    format!(
        "({p}.author_id = $1 OR ({u}.suspended_at IS NULL
          AND {unblocked}
          AND CASE {p}.visibility
              WHEN 'public' THEN NOT {u}.is_private
                  OR EXISTS (SELECT 1 FROM follows f WHERE f.follower_id = $1 AND f.followee_id = {p}.author_id)
              WHEN 'followers' THEN
                  EXISTS (SELECT 1 FROM follows f WHERE f.follower_id = $1 AND f.followee_id = {p}.author_id)
              ELSE EXISTS (SELECT 1 FROM post_mentions m WHERE m.post_id = {p}.id AND m.user_id = $1)
          END))"
    )
}

/// No block either way between the users `a` and `b` (SQL expressions): two index probes of
/// `blocks`. Written out for the reason [`visible`] is: the SQL function `blocked_between`
/// has sub-queries, so Postgres never inlines it; it ran once per row (≈ 6 µs, 19× the
/// probes) and parsed and planned its body in every statement (docs/BENCHMARKS.md, seventh
/// round of #18). The function stays for a previous release's processes during an upgrade.
pub fn unblocked(a: &str, b: &str) -> String {
    format!(
        "(NOT EXISTS (SELECT 1 FROM blocks blk WHERE blk.blocker_id = {a} AND blk.blocked_id = {b})
          AND NOT EXISTS (SELECT 1 FROM blocks blk WHERE blk.blocker_id = {b} AND blk.blocked_id = {a}))"
    )
}

/// `a` follows `b` (SQL expressions): one index probe of `follows`, written out for the
/// reason [`unblocked`] is (the SQL function `follows_user` is never inlined).
pub fn follows(a: &str, b: &str) -> String {
    format!("EXISTS (SELECT 1 FROM follows fw WHERE fw.follower_id = {a} AND fw.followee_id = {b})")
}

/// Above every UUIDv7 and below none: the "no upper bound" of a cursor window. Cursors are
/// positions (`Uuid`), not ids: these two bounds are no post, comment or notification.
pub const MAX_ID: Uuid = Uuid::max();
/// The "no lower bound" of a cursor window.
pub const MIN_ID: Uuid = Uuid::nil();

// ---------------------------------------------------------------- users and relations

/// How the viewer and another user stand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct Relationship {
    pub following: bool,
    pub followed_by: bool,
    pub requested: bool,
    pub blocking: bool,
    pub blocked_by: bool,
    pub muting: bool,
}

pub async fn relationship(
    db: impl PgExecutor<'_>,
    viewer: UserId,
    other: UserId,
) -> sqlx::Result<Relationship> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {} AS following,
                {} AS followed_by,
                EXISTS (SELECT 1 FROM follow_requests WHERE requester_id = $1 AND target_id = $2) AS requested,
                EXISTS (SELECT 1 FROM blocks WHERE blocker_id = $1 AND blocked_id = $2) AS blocking,
                EXISTS (SELECT 1 FROM blocks WHERE blocker_id = $2 AND blocked_id = $1) AS blocked_by,
                EXISTS (SELECT 1 FROM mutes WHERE muter_id = $1 AND muted_id = $2) AS muting",
            follows("$1", "$2"),
            follows("$2", "$1")
        )
    });
    sqlx::query_as::<_, Relationship>(&SQL)
        .bind(viewer)
        .bind(other)
        .fetch_one(db)
        .await
}

/// A user as lists show them.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserSummary {
    pub id: UserId,
    pub username: String,
    pub display_name: String,
    pub avatar_ref: Option<String>,
    /// The list's own time (when the follow, like… happened): the cursor's key.
    pub at: OffsetDateTime,
}

/// The target of a relation, locked (`FOR UPDATE`, with the actor, in id order so two users
/// acting on each other never deadlock): `None` when it does not exist or is suspended.
pub async fn lock_pair(
    tx: &mut PgConnection,
    actor: UserId,
    target: UserId,
) -> sqlx::Result<Option<TargetUser>> {
    let rows = sqlx::query_as::<_, TargetUser>(
        "SELECT id, is_private, suspended_at IS NOT NULL AS suspended FROM users
         WHERE id IN ($1, $2) ORDER BY id FOR UPDATE",
    )
    .bind(actor)
    .bind(target)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows.into_iter().find(|u| u.id == target && !u.suspended))
}

#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct TargetUser {
    pub id: UserId,
    pub is_private: bool,
    pub suspended: bool,
}

/// What a follow did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Followed {
    /// Now following (or was already).
    Following { new: bool },
    /// A request waits for the private account's owner (or already did).
    Requested { new: bool },
}

/// Follows `target` (locked by [`lock_pair`]): directly, or as a request when it is private.
pub async fn follow(
    tx: &mut PgConnection,
    follower: UserId,
    target: TargetUser,
) -> sqlx::Result<Followed> {
    static SQL: LazyLock<String> = LazyLock::new(|| format!("SELECT {}", follows("$1", "$2")));
    let already: bool = sqlx::query_scalar(&SQL)
        .bind(follower)
        .bind(target.id)
        .fetch_one(&mut *tx)
        .await?;
    if already {
        return Ok(Followed::Following { new: false });
    }
    if target.is_private {
        let new = sqlx::query(
            "INSERT INTO follow_requests (requester_id, target_id) VALUES ($1, $2)
             ON CONFLICT DO NOTHING",
        )
        .bind(follower)
        .bind(target.id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        return Ok(Followed::Requested { new });
    }
    insert_follow(tx, follower, target.id).await?;
    Ok(Followed::Following { new: true })
}

/// Inserts a follow and moves both counts. Invariant: both users are locked by the caller.
pub async fn insert_follow(
    tx: &mut PgConnection,
    follower: UserId,
    followee: UserId,
) -> sqlx::Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO follows (follower_id, followee_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(follower)
    .bind(followee)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if inserted {
        move_follow_counts(tx, follower, followee, 1).await?;
    }
    Ok(inserted)
}

async fn move_follow_counts(
    tx: &mut PgConnection,
    follower: UserId,
    followee: UserId,
    by: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE users SET
            following_count = following_count + CASE WHEN id = $1 THEN $3 ELSE 0 END,
            followers_count = followers_count + CASE WHEN id = $2 THEN $3 ELSE 0 END
         WHERE id IN ($1, $2)",
    )
    .bind(follower)
    .bind(followee)
    .bind(by)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Ends a follow (and withdraws a pending request); whether anything was removed.
/// Invariant: both users are locked by the caller.
pub async fn unfollow(
    tx: &mut PgConnection,
    follower: UserId,
    followee: UserId,
) -> sqlx::Result<bool> {
    let removed = sqlx::query("DELETE FROM follows WHERE follower_id = $1 AND followee_id = $2")
        .bind(follower)
        .bind(followee)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        == 1;
    if removed {
        move_follow_counts(tx, follower, followee, -1).await?;
    }
    let withdrawn =
        sqlx::query("DELETE FROM follow_requests WHERE requester_id = $1 AND target_id = $2")
            .bind(follower)
            .bind(followee)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
    Ok(removed || withdrawn)
}

/// Removes a pending request of `requester` to `target`; whether there was one.
pub async fn take_request(
    tx: &mut PgConnection,
    requester: UserId,
    target: UserId,
) -> sqlx::Result<bool> {
    Ok(
        sqlx::query("DELETE FROM follow_requests WHERE requester_id = $1 AND target_id = $2")
            .bind(requester)
            .bind(target)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1,
    )
}

/// Blocks `blocked`: ends follows and requests both ways. Invariant: both users are locked.
pub async fn block(tx: &mut PgConnection, blocker: UserId, blocked: UserId) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO blocks (blocker_id, blocked_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(blocker)
    .bind(blocked)
    .execute(&mut *tx)
    .await?;
    unfollow(tx, blocker, blocked).await?;
    unfollow(tx, blocked, blocker).await?;
    Ok(())
}

pub async fn unblock(
    db: impl PgExecutor<'_>,
    blocker: UserId,
    blocked: UserId,
) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM blocks WHERE blocker_id = $1 AND blocked_id = $2")
        .bind(blocker)
        .bind(blocked)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn mute(db: impl PgExecutor<'_>, muter: UserId, muted: UserId) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO mutes (muter_id, muted_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(muter)
        .bind(muted)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn unmute(db: impl PgExecutor<'_>, muter: UserId, muted: UserId) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM mutes WHERE muter_id = $1 AND muted_id = $2")
        .bind(muter)
        .bind(muted)
        .execute(db)
        .await?;
    Ok(())
}

/// A position in a list ordered by (time, id), newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeCursor {
    pub at: OffsetDateTime,
    pub id: Uuid,
}

/// Which list of users.
#[derive(Debug, Clone, Copy)]
pub enum UserList {
    Followers(UserId),
    Following(UserId),
    /// Pending follow requests to this (private) account.
    Requests(UserId),
    Likers(PostId),
    Blocked(UserId),
    Muted(UserId),
}

/// A page of users, newest relation first, hiding anyone with a block between them and the
/// viewer.
pub async fn users(
    db: &PgPool,
    viewer: UserId,
    list: UserList,
    cursor: Option<TimeCursor>,
    limit: i64,
) -> sqlx::Result<Vec<UserSummary>> {
    let (source, subject) = match list {
        UserList::Followers(u) => (
            "SELECT follower_id AS uid, created_at AS at FROM follows WHERE followee_id = $1",
            u.as_uuid(),
        ),
        UserList::Following(u) => (
            "SELECT followee_id AS uid, created_at AS at FROM follows WHERE follower_id = $1",
            u.as_uuid(),
        ),
        UserList::Requests(u) => (
            "SELECT requester_id AS uid, created_at AS at FROM follow_requests WHERE target_id = $1",
            u.as_uuid(),
        ),
        UserList::Likers(post) => (
            "SELECT user_id AS uid, created_at AS at FROM likes WHERE post_id = $1",
            post.as_uuid(),
        ),
        UserList::Blocked(u) => (
            "SELECT blocked_id AS uid, created_at AS at FROM blocks WHERE blocker_id = $1",
            u.as_uuid(),
        ),
        UserList::Muted(u) => (
            "SELECT muted_id AS uid, created_at AS at FROM mutes WHERE muter_id = $1",
            u.as_uuid(),
        ),
    };
    // The viewer's own block list shows the blocked; every other list hides them.
    let hide_blocked = if matches!(list, UserList::Blocked(_)) {
        "true".to_owned()
    } else {
        unblocked("$2", "u.id")
    };
    sqlx::query_as::<_, UserSummary>(&format!(
        "SELECT u.id, u.username::text AS username, u.display_name, u.avatar_ref, s.at
         FROM ({source}) s JOIN users u ON u.id = s.uid
         WHERE u.suspended_at IS NULL AND {hide_blocked}
           AND ($3::timestamptz IS NULL OR (s.at, u.id) < ($3, $4))
         ORDER BY s.at DESC, u.id DESC
         LIMIT $5"
    ))
    .bind(subject)
    .bind(viewer)
    .bind(cursor.map(|c| c.at))
    .bind(cursor.map(|c| c.id))
    .bind(limit)
    .fetch_all(db)
    .await
}

// ---------------------------------------------------------------- posts

/// A post to store.
pub struct NewPost<'a> {
    pub id: PostId,
    pub author: UserId,
    pub content: &'a str,
    pub visibility: Visibility,
    pub media: &'a [MediaId],
    pub mentions: &'a [UserId],
    pub hashtags: &'a [String],
}

/// The users with these usernames (lowercase), as `(username, id)`.
pub async fn user_ids(
    db: impl PgExecutor<'_>,
    usernames: &[String],
) -> sqlx::Result<Vec<(String, UserId)>> {
    sqlx::query_as::<_, (String, UserId)>(
        "SELECT username::text, id FROM users WHERE username = ANY($1::citext[])",
    )
    .bind(usernames)
    .fetch_all(db)
    .await
}

/// Stores a post with its mentions and hashtags, counts it, and queues its fan-out.
pub async fn insert_post(tx: &mut PgConnection, post: &NewPost<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO posts (id, author_id, content, visibility, media_ids) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(post.id)
    .bind(post.author)
    .bind(post.content)
    .bind(post.visibility.as_str())
    .bind(post.media)
    .execute(&mut *tx)
    .await?;
    set_tags(tx, post.id, post.mentions, post.hashtags).await?;
    sqlx::query("UPDATE users SET posts_count = posts_count + 1 WHERE id = $1")
        .bind(post.author)
        .execute(&mut *tx)
        .await?;
    queue_fanout(tx, post.id, post.author, "add").await
}

async fn set_tags(
    tx: &mut PgConnection,
    post: PostId,
    mentions: &[UserId],
    hashtags: &[String],
) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM post_mentions WHERE post_id = $1")
        .bind(post)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM post_hashtags WHERE post_id = $1")
        .bind(post)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO post_mentions (post_id, user_id) SELECT $1, unnest($2::uuid[])")
        .bind(post)
        .bind(mentions)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO post_hashtags (tag, post_id) SELECT unnest($2::text[]), $1")
        .bind(post)
        .bind(hashtags)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

async fn queue_fanout(
    tx: &mut PgConnection,
    post: PostId,
    author: UserId,
    action: &str,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO feed_outbox (post_id, author_id, action) VALUES ($1, $2, $3)")
        .bind(post)
        .bind(author)
        .bind(action)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// A live post, locked, as its author or a moderator acts on it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LockedPost {
    pub id: PostId,
    pub author_id: UserId,
    pub content: String,
    pub repost_of: Option<PostId>,
}

pub async fn lock_post(tx: &mut PgConnection, id: PostId) -> sqlx::Result<Option<LockedPost>> {
    sqlx::query_as::<_, LockedPost>(
        "SELECT id, author_id, content, repost_of FROM posts
         WHERE id = $1 AND deleted_at IS NULL FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await
}

/// Replaces a post's text, keeping the old one as the next version of its history.
pub async fn edit_post(
    tx: &mut PgConnection,
    post: &LockedPost,
    content: &str,
    mentions: &[UserId],
    hashtags: &[String],
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO post_edits (post_id, version, content)
         SELECT $1, COALESCE(max(version), 0) + 1, $2 FROM post_edits WHERE post_id = $1",
    )
    .bind(post.id)
    .bind(&post.content)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE posts SET content = $2, edited_at = now() WHERE id = $1")
        .bind(post.id)
        .bind(content)
        .execute(&mut *tx)
        .await?;
    set_tags(tx, post.id, mentions, hashtags).await
}

/// Marks a post deleted (by its author, or removed by `moderator`), uncounts it, and queues its
/// removal from timelines.
pub async fn delete_post(
    tx: &mut PgConnection,
    post: &LockedPost,
    moderator: Option<UserId>,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE posts SET deleted_at = now(), removed_by = $2 WHERE id = $1")
        .bind(post.id)
        .bind(moderator)
        .execute(&mut *tx)
        .await?;
    match post.repost_of {
        Some(original) => {
            sqlx::query("UPDATE posts SET reposts_count = reposts_count - 1 WHERE id = $1")
                .bind(original)
                .execute(&mut *tx)
                .await?;
        }
        None => {
            sqlx::query("UPDATE users SET posts_count = posts_count - 1 WHERE id = $1")
                .bind(post.author_id)
                .execute(&mut *tx)
                .await?;
        }
    }
    queue_fanout(tx, post.id, post.author_id, "remove").await
}

/// The versions a post's text had before its current one, oldest first.
pub async fn edits(db: &PgPool, post: PostId) -> sqlx::Result<Vec<(i32, String, OffsetDateTime)>> {
    sqlx::query_as::<_, (i32, String, OffsetDateTime)>(
        "SELECT version, content, replaced_at FROM post_edits WHERE post_id = $1 ORDER BY version",
    )
    .bind(post)
    .fetch_all(db)
    .await
}

/// A post the viewer may act on (like, comment, repost): visible and live. Its author and
/// whether it may be reposted (public, by a public account, itself no repost).
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct Actionable {
    pub author_id: UserId,
    pub repostable: bool,
}

pub async fn actionable(
    db: impl PgExecutor<'_>,
    viewer: UserId,
    post: PostId,
) -> sqlx::Result<Option<Actionable>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT p.author_id,
                    (p.visibility = 'public' AND NOT u.is_private AND p.repost_of IS NULL) AS repostable
             FROM posts p JOIN users u ON u.id = p.author_id
             WHERE p.id = $2 AND p.deleted_at IS NULL AND {}",
            visible("p", "u")
        )
    });
    sqlx::query_as::<_, Actionable>(&SQL)
        .bind(viewer)
        .bind(post)
        .fetch_optional(db)
        .await
}

/// Likes a post once; whether this call added the like. Counts exactly: the count moves only
/// with a row that was inserted, under the post row's lock.
pub async fn like(tx: &mut PgConnection, user: UserId, post: PostId) -> sqlx::Result<bool> {
    let inserted =
        sqlx::query("INSERT INTO likes (post_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(post)
            .bind(user)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
    if inserted {
        sqlx::query("UPDATE posts SET likes_count = likes_count + 1 WHERE id = $1")
            .bind(post)
            .execute(&mut *tx)
            .await?;
    }
    Ok(inserted)
}

pub async fn unlike(tx: &mut PgConnection, user: UserId, post: PostId) -> sqlx::Result<bool> {
    let removed = sqlx::query("DELETE FROM likes WHERE post_id = $1 AND user_id = $2")
        .bind(post)
        .bind(user)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        == 1;
    if removed {
        sqlx::query("UPDATE posts SET likes_count = likes_count - 1 WHERE id = $1")
            .bind(post)
            .execute(&mut *tx)
            .await?;
    }
    Ok(removed)
}

/// Reposts once; the repost's id when this call made it.
pub async fn repost(
    tx: &mut PgConnection,
    user: UserId,
    post: PostId,
) -> sqlx::Result<Option<PostId>> {
    let id: PostId = crate::db::new_id();
    let inserted = sqlx::query(
        "INSERT INTO posts (id, author_id, visibility, repost_of) VALUES ($1, $2, 'public', $3)
         ON CONFLICT (author_id, repost_of) WHERE repost_of IS NOT NULL AND deleted_at IS NULL
         DO NOTHING",
    )
    .bind(id)
    .bind(user)
    .bind(post)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !inserted {
        return Ok(None);
    }
    sqlx::query("UPDATE posts SET reposts_count = reposts_count + 1 WHERE id = $1")
        .bind(post)
        .execute(&mut *tx)
        .await?;
    queue_fanout(tx, id, user, "add").await?;
    Ok(Some(id))
}

/// The user's live repost of `post`, locked.
pub async fn lock_repost(
    tx: &mut PgConnection,
    user: UserId,
    post: PostId,
) -> sqlx::Result<Option<LockedPost>> {
    sqlx::query_as::<_, LockedPost>(
        "SELECT id, author_id, content, repost_of FROM posts
         WHERE author_id = $1 AND repost_of = $2 AND deleted_at IS NULL FOR UPDATE",
    )
    .bind(user)
    .bind(post)
    .fetch_optional(&mut *tx)
    .await
}

// ---------------------------------------------------------------- reading posts

/// A post as read for one viewer; a repost carries its original in the `o_` columns.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PostRow {
    pub id: PostId,
    pub author_id: UserId,
    pub author_username: String,
    pub author_display_name: String,
    pub author_avatar_ref: Option<String>,
    pub content: String,
    #[sqlx(try_from = "String")]
    pub visibility: Visibility,
    pub media_ids: Vec<MediaId>,
    pub created_at: OffsetDateTime,
    pub edited_at: Option<OffsetDateTime>,
    pub likes_count: i64,
    pub comments_count: i64,
    pub reposts_count: i64,
    pub liked: bool,
    pub reposted: bool,
    pub mentions: Vec<String>,
    pub hashtags: Vec<String>,
    pub o_id: Option<PostId>,
    pub o_author_id: Option<UserId>,
    pub o_author_username: Option<String>,
    pub o_author_display_name: Option<String>,
    pub o_author_avatar_ref: Option<String>,
    pub o_content: Option<String>,
    pub o_visibility: Option<String>,
    pub o_media_ids: Option<Vec<MediaId>>,
    pub o_created_at: Option<OffsetDateTime>,
    pub o_edited_at: Option<OffsetDateTime>,
    pub o_likes_count: Option<i64>,
    pub o_comments_count: Option<i64>,
    pub o_reposts_count: Option<i64>,
    pub o_liked: Option<bool>,
    pub o_reposted: Option<bool>,
    pub o_mentions: Option<Vec<String>>,
    pub o_hashtags: Option<Vec<String>>,
}

fn post_columns(p: &str, u: &str, prefix: &str) -> String {
    format!(
        "{p}.id AS {prefix}id, {p}.author_id AS {prefix}author_id,
         {u}.username::text AS {prefix}author_username, {u}.display_name AS {prefix}author_display_name,
         {u}.avatar_ref AS {prefix}author_avatar_ref, {p}.content AS {prefix}content,
         {p}.visibility AS {prefix}visibility, {p}.media_ids AS {prefix}media_ids,
         {p}.created_at AS {prefix}created_at, {p}.edited_at AS {prefix}edited_at,
         {p}.likes_count AS {prefix}likes_count, {p}.comments_count AS {prefix}comments_count,
         {p}.reposts_count AS {prefix}reposts_count,
         EXISTS (SELECT 1 FROM likes l WHERE l.post_id = {p}.id AND l.user_id = $1) AS {prefix}liked,
         EXISTS (SELECT 1 FROM posts r WHERE r.repost_of = {p}.id AND r.author_id = $1
                 AND r.deleted_at IS NULL) AS {prefix}reposted,
         ARRAY(SELECT mu.username::text FROM post_mentions m JOIN users mu ON mu.id = m.user_id
               WHERE m.post_id = {p}.id ORDER BY 1) AS {prefix}mentions,
         ARRAY(SELECT h.tag FROM post_hashtags h WHERE h.post_id = {p}.id ORDER BY 1) AS {prefix}hashtags"
    )
}

/// `SELECT <post and original columns> FROM posts p …` up to the visibility filter; callers
/// add their `FROM`-side joins at `{join}` and their conditions after `AND`. `$1` is the
/// viewer.
static POST_SELECT: LazyLock<(String, String)> = LazyLock::new(|| {
    let head = format!(
        "SELECT {}, {} FROM posts p JOIN users u ON u.id = p.author_id",
        post_columns("p", "u", ""),
        post_columns("o", "ou", "o_"),
    );
    let tail = format!(
        "LEFT JOIN posts o ON o.id = p.repost_of
         LEFT JOIN users ou ON ou.id = o.author_id
         WHERE p.deleted_at IS NULL AND {}
           AND (p.repost_of IS NULL OR (o.deleted_at IS NULL AND {}))",
        visible("p", "u"),
        visible("o", "ou"),
    );
    (head, tail)
});

/// The query text: `with` before the SELECT, `join` after `FROM posts p JOIN users u`,
/// `filter` ANDed to visibility, then `rest` (ORDER BY, LIMIT).
pub fn post_query(with: &str, join: &str, filter: &str, rest: &str) -> String {
    let (head, tail) = &*POST_SELECT;
    format!("{with} {head} {join} {tail} AND ({filter}) {rest}")
}

/// Not muted by the viewer (`$1`), neither the post's author nor a repost's original author.
pub const NOT_MUTED: &str = "NOT EXISTS (SELECT 1 FROM mutes WHERE muter_id = $1
        AND (muted_id = p.author_id OR muted_id = o.author_id))";

/// One post, if the viewer may see it.
pub async fn post(db: &PgPool, viewer: UserId, id: PostId) -> sqlx::Result<Option<PostRow>> {
    static SQL: LazyLock<String> = LazyLock::new(|| post_query("", "", "p.id = $2", ""));
    sqlx::query_as::<_, PostRow>(&SQL)
        .bind(viewer)
        .bind(id)
        .fetch_optional(db)
        .await
}

/// A user's posts and reposts below `before`, newest first.
pub async fn profile_posts(
    db: &PgPool,
    viewer: UserId,
    author: UserId,
    before: Uuid,
    limit: i64,
) -> sqlx::Result<Vec<PostRow>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        post_query(
            "",
            "",
            "p.author_id = $2 AND p.id < $3",
            "ORDER BY p.id DESC LIMIT $4",
        )
    });
    sqlx::query_as::<_, PostRow>(&SQL)
        .bind(viewer)
        .bind(author)
        .bind(before)
        .bind(limit)
        .fetch_all(db)
        .await
}

/// Posts with a (folded) hashtag below `before`, newest first.
pub async fn tag_posts(
    db: &PgPool,
    viewer: UserId,
    tag: &str,
    before: Uuid,
    limit: i64,
) -> sqlx::Result<Vec<PostRow>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        post_query(
            "",
            "JOIN post_hashtags h ON h.post_id = p.id AND h.tag = $2",
            "h.post_id < $3",
            "ORDER BY h.post_id DESC LIMIT $4",
        )
    });
    sqlx::query_as::<_, PostRow>(&SQL)
        .bind(viewer)
        .bind(tag)
        .bind(before)
        .bind(limit)
        .fetch_all(db)
        .await
}

/// Posts whose text matches a full-text query (Turkish stemming and plain words), newest first.
pub async fn search_posts(
    db: &PgPool,
    viewer: UserId,
    query: &str,
    before: Uuid,
    limit: i64,
) -> sqlx::Result<Vec<PostRow>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        post_query(
            "",
            "",
            "p.search @@ (websearch_to_tsquery('turkish', $2) || websearch_to_tsquery('simple', $2))
             AND p.id < $3",
            "ORDER BY p.id DESC LIMIT $4",
        )
    });
    sqlx::query_as::<_, PostRow>(&SQL)
        .bind(viewer)
        .bind(query)
        .bind(before)
        .bind(limit)
        .fetch_all(db)
        .await
}

/// Users whose username or display name holds something like `query` (trigram word
/// similarity, Turkish letters folded),
/// best match first; hides users with a block between them and the viewer.
pub async fn search_users(
    db: &PgPool,
    viewer: UserId,
    query: &str,
    limit: i64,
) -> sqlx::Result<Vec<UserSummary>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT u.id, u.username::text AS username, u.display_name, u.avatar_ref, u.created_at AS at
             FROM users u
             WHERE u.suspended_at IS NULL AND {}
               AND (search_fold($2) <% search_fold(u.username::text)
                    OR search_fold($2) <% search_fold(u.display_name))
             ORDER BY greatest(word_similarity(search_fold($2), search_fold(u.username::text)),
                               word_similarity(search_fold($2), search_fold(u.display_name))) DESC, u.id
             LIMIT $3",
            unblocked("$1", "u.id")
        )
    });
    sqlx::query_as::<_, UserSummary>(&SQL)
        .bind(viewer)
        .bind(query)
        .bind(limit)
        .fetch_all(db)
        .await
}

// ---------------------------------------------------------------- comments

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CommentRow {
    pub id: CommentId,
    pub post_id: PostId,
    pub parent_id: Option<CommentId>,
    pub author_id: UserId,
    pub author_username: String,
    pub author_display_name: String,
    pub content: String,
    pub created_at: OffsetDateTime,
}

/// Whether `parent` is a live comment of `post`.
pub async fn comment_of(
    db: impl PgExecutor<'_>,
    post: PostId,
    parent: CommentId,
) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM comments WHERE id = $2 AND post_id = $1 AND deleted_at IS NULL)",
    )
    .bind(post)
    .bind(parent)
    .fetch_one(db)
    .await
}

/// The author of a live comment of `post`.
pub async fn comment_author(
    db: impl PgExecutor<'_>,
    post: PostId,
    comment: CommentId,
) -> sqlx::Result<Option<UserId>> {
    sqlx::query_scalar(
        "SELECT author_id FROM comments WHERE id = $2 AND post_id = $1 AND deleted_at IS NULL",
    )
    .bind(post)
    .bind(comment)
    .fetch_optional(db)
    .await
}

pub async fn insert_comment(
    tx: &mut PgConnection,
    id: CommentId,
    post: PostId,
    parent: Option<CommentId>,
    author: UserId,
    content: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO comments (id, post_id, parent_id, author_id, content) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(post)
    .bind(parent)
    .bind(author)
    .bind(content)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE posts SET comments_count = comments_count + 1 WHERE id = $1")
        .bind(post)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

pub async fn delete_comment(
    tx: &mut PgConnection,
    post: PostId,
    comment: CommentId,
) -> sqlx::Result<bool> {
    let deleted = sqlx::query(
        "UPDATE comments SET deleted_at = now() WHERE id = $2 AND post_id = $1 AND deleted_at IS NULL",
    )
    .bind(post)
    .bind(comment)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if deleted {
        sqlx::query("UPDATE posts SET comments_count = comments_count - 1 WHERE id = $1")
            .bind(post)
            .execute(&mut *tx)
            .await?;
    }
    Ok(deleted)
}

/// One comment, as its author just wrote it.
pub async fn comment(db: &PgPool, id: CommentId) -> sqlx::Result<Option<CommentRow>> {
    sqlx::query_as::<_, CommentRow>(
        "SELECT c.id, c.post_id, c.parent_id, c.author_id, u.username::text AS author_username,
                u.display_name AS author_display_name, c.content, c.created_at
         FROM comments c JOIN users u ON u.id = c.author_id
         WHERE c.id = $1 AND c.deleted_at IS NULL",
    )
    .bind(id)
    .fetch_optional(db)
    .await
}

/// A post's comments after `after`, in id (= creation) order, hiding authors with a block
/// between them and the viewer.
pub async fn comments(
    db: &PgPool,
    viewer: UserId,
    post: PostId,
    after: Uuid,
    limit: i64,
) -> sqlx::Result<Vec<CommentRow>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT c.id, c.post_id, c.parent_id, c.author_id, u.username::text AS author_username,
                    u.display_name AS author_display_name, c.content, c.created_at
             FROM comments c JOIN users u ON u.id = c.author_id
             WHERE c.post_id = $2 AND c.id > $3 AND c.deleted_at IS NULL
               AND u.suspended_at IS NULL AND {}
             ORDER BY c.id LIMIT $4",
            unblocked("$1", "c.author_id")
        )
    });
    sqlx::query_as::<_, CommentRow>(&SQL)
        .bind(viewer)
        .bind(post)
        .bind(after)
        .bind(limit)
        .fetch_all(db)
        .await
}

// ---------------------------------------------------------------- moderation

pub async fn report(
    db: impl PgExecutor<'_>,
    reporter: UserId,
    post: Option<PostId>,
    user: Option<UserId>,
    reason: &str,
) -> sqlx::Result<Uuid> {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO reports (id, reporter_id, post_id, user_id, reason) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(reporter)
    .bind(post)
    .bind(user)
    .bind(reason)
    .execute(db)
    .await?;
    Ok(id)
}

pub async fn is_admin(db: impl PgExecutor<'_>, user: UserId) -> sqlx::Result<bool> {
    Ok(
        sqlx::query_scalar::<_, bool>("SELECT is_admin FROM users WHERE id = $1")
            .bind(user)
            .fetch_optional(db)
            .await?
            .unwrap_or(false),
    )
}

/// Suspends an account; whether it was active.
pub async fn suspend(db: impl PgExecutor<'_>, user: UserId) -> sqlx::Result<bool> {
    Ok(
        sqlx::query("UPDATE users SET suspended_at = now() WHERE id = $1 AND suspended_at IS NULL")
            .bind(user)
            .execute(db)
            .await?
            .rows_affected()
            == 1,
    )
}
