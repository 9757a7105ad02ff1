//! Notifications: one row per event (follow, follow request, like, comment, mention, repost),
//! written in the transaction of the action that caused it. Likes and reposts of one post
//! share a group key, so the list shows "A and 3 others liked your post".
//!
//! Invariant: no notification is stored for oneself, across a block (either way), or from
//! someone the recipient muted ([`notify`] checks in the same statement as the insert).

use std::sync::LazyLock;

use haberci_wire::{CommentId, NotificationId, PostId, UserId};
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use super::store::unblocked;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Follow,
    FollowRequest,
    Like,
    Comment,
    Mention,
    Repost,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Follow => "follow",
            Kind::FollowRequest => "follow_request",
            Kind::Like => "like",
            Kind::Comment => "comment",
            Kind::Mention => "mention",
            Kind::Repost => "repost",
        }
    }
}

/// One event for `user`.
#[derive(Debug, Clone, Copy)]
pub struct Event {
    pub user: UserId,
    pub kind: Kind,
    pub actor: UserId,
    pub post: Option<PostId>,
    pub comment: Option<CommentId>,
}

impl Event {
    /// Likes and reposts of one post group together; every other event stands alone.
    fn group_key(&self, id: NotificationId) -> String {
        match (self.kind, self.post) {
            (Kind::Like | Kind::Repost, Some(post)) => format!("{}:{post}", self.kind.as_str()),
            _ => id.to_string(),
        }
    }
}

/// A notification stored in a transaction not yet committed: announce it after the commit.
#[derive(Debug, Clone, Copy)]
pub struct Stored {
    pub id: NotificationId,
    pub event: Event,
}

/// Stores the event unless a rule says no; what to announce when stored.
pub async fn notify(tx: &mut PgConnection, event: Event) -> sqlx::Result<Option<Stored>> {
    if event.user == event.actor {
        return Ok(None);
    }
    let id: NotificationId = crate::db::new_id();
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "INSERT INTO notifications (id, user_id, kind, actor_id, post_id, comment_id, group_key)
             SELECT $1, $2, $3, $4, $5, $6, $7
             WHERE {}
               AND NOT EXISTS (SELECT 1 FROM mutes WHERE muter_id = $2 AND muted_id = $4)",
            unblocked("$2", "$4")
        )
    });
    let stored = sqlx::query(&SQL)
        .bind(id)
        .bind(event.user)
        .bind(event.kind.as_str())
        .bind(event.actor)
        .bind(event.post)
        .bind(event.comment)
        .bind(event.group_key(id))
        .execute(&mut *tx)
        .await?
        .rows_affected()
        == 1;
    Ok(stored.then_some(Stored { id, event }))
}

/// Tells the recipients' open sessions about notifications that committed (best effort: see
/// [`super::live`]). One small query each, for the actor's name and the unread count.
pub async fn announce(db: &PgPool, redis: &fred::clients::Client, stored: &[Stored]) {
    for one in stored {
        let facts = sqlx::query_as::<_, (String, i64)>(&format!(
            "SELECT (SELECT username::text FROM users WHERE id = $2), ({})",
            *UNREAD_SQL
        ))
        .bind(one.event.user)
        .bind(one.event.actor)
        .fetch_one(db)
        .await;
        let (actor_username, unread) = match facts {
            Ok(facts) => facts,
            Err(err) => {
                tracing::warn!(%err, "live notification not announced");
                continue;
            }
        };
        let Some(created_at) = haberci_wire::Timestamp::from_unix_millis(
            i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
                .unwrap_or(0),
        ) else {
            continue;
        };
        let frame = haberci_wire::Notification {
            id: one.id,
            kind: super::live::wire_kind(one.event.kind),
            actor_id: one.event.actor,
            actor_username,
            post_id: one.event.post,
            comment_id: one.event.comment,
            created_at,
            unread_count: u32::try_from(unread).unwrap_or(u32::MAX),
        };
        super::live::publish(redis, one.event.user, frame).await;
    }
}

/// Takes back a like's or repost's notification (unlike, unrepost) while it is unread.
pub async fn withdraw(
    tx: &mut PgConnection,
    kind: Kind,
    actor: UserId,
    post: PostId,
) -> sqlx::Result<()> {
    sqlx::query(
        "DELETE FROM notifications
         WHERE kind = $1 AND actor_id = $2 AND post_id = $3 AND read_at IS NULL",
    )
    .bind(kind.as_str())
    .bind(actor)
    .bind(post)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A group of notifications: its newest event, how many actors, the newest few of them.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct GroupRow {
    pub latest: NotificationId,
    pub kind: String,
    pub post_id: Option<PostId>,
    pub comment_id: Option<CommentId>,
    pub actor_count: i64,
    pub actor_ids: Vec<UserId>,
    pub actor_usernames: Vec<String>,
    pub unread: bool,
    pub at: OffsetDateTime,
}

/// Actors named in a group.
pub const ACTORS_SHOWN: i32 = 3;

/// The user's notification groups, newest activity first, below `before` (a position: a
/// group's latest id, or above them all). Actors blocked or muted since are left out.
pub async fn list(
    db: &PgPool,
    user: UserId,
    before: Uuid,
    limit: i64,
) -> sqlx::Result<Vec<GroupRow>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
        "WITH visible AS (
            SELECT n.* , a.username::text AS actor_username FROM notifications n
            JOIN users a ON a.id = n.actor_id
            WHERE n.user_id = $1 AND a.suspended_at IS NULL
              AND {}
              AND NOT EXISTS (SELECT 1 FROM mutes WHERE muter_id = $1 AND muted_id = n.actor_id)
         ), groups AS (
            SELECT group_key, (array_agg(id ORDER BY id DESC))[1] AS latest, count(DISTINCT actor_id) AS actor_count,
                   bool_or(read_at IS NULL) AS unread,
                   (array_agg(actor_id ORDER BY id DESC))[1:$4] AS actor_ids,
                   (array_agg(actor_username ORDER BY id DESC))[1:$4] AS actor_usernames
            FROM visible GROUP BY group_key
         )
         SELECT g.latest, v.kind, v.post_id, v.comment_id, g.actor_count, g.actor_ids,
                g.actor_usernames, g.unread, v.created_at AS at
         FROM groups g JOIN visible v ON v.id = g.latest
         WHERE g.latest < $2
         ORDER BY g.latest DESC LIMIT $3",
        unblocked("$1", "n.actor_id")
        )
    });
    sqlx::query_as::<_, GroupRow>(&SQL)
        .bind(user)
        .bind(before)
        .bind(limit)
        .bind(ACTORS_SHOWN)
        .fetch_all(db)
        .await
}

/// Unread notifications from actors the user still hears from (no block, no mute).
static UNREAD_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT count(*) FROM notifications n
         WHERE n.user_id = $1 AND n.read_at IS NULL
           AND {}
           AND NOT EXISTS (SELECT 1 FROM mutes WHERE muter_id = $1 AND muted_id = n.actor_id)",
        unblocked("$1", "n.actor_id")
    )
});

pub async fn unread_count(db: &PgPool, user: UserId) -> sqlx::Result<i64> {
    sqlx::query_scalar(&UNREAD_SQL)
        .bind(user)
        .fetch_one(db)
        .await
}

/// Marks read every notification up to `up_to` (all when `None`); how many changed. `up_to` is
/// a position, any UUID (a client's `upTo`), not necessarily a notification.
pub async fn mark_read(db: &PgPool, user: UserId, up_to: Option<Uuid>) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "UPDATE notifications SET read_at = now()
         WHERE user_id = $1 AND read_at IS NULL AND ($2::uuid IS NULL OR id <= $2)",
    )
    .bind(user)
    .bind(up_to)
    .execute(db)
    .await?
    .rows_affected())
}
