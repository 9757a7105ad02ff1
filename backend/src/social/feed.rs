//! The home timeline: hybrid fan-out (docs/SOCIAL.md, "Home feed").
//!
//! - **Write**: a post by an author with fewer than [`FeedSettings::fanout_limit`] followers is
//!   added by the worker ([`super::fanout`]) to `tl:{user}` of each follower and of the author:
//!   a sorted set of post ids scored by their UUIDv7 milliseconds ([`super::score`]), capped at
//!   [`FeedSettings::cap`] entries. Larger authors' posts are not fanned out.
//! - **Read** ([`Feed::page`]): one Lua call reads the cached ids below the cursor; one SQL
//!   statement unions them with the recent posts of the large accounts the reader follows,
//!   and hydrates the page with every visibility, block, follow and mute check. Redis is a
//!   cache: a timeline that is missing (never built, flushed, evicted, invalidated) is rebuilt
//!   from Postgres; one that was trimmed at the cap sends older pages to Postgres.
//! - **Built marker**: a built timeline holds the member `~` at score `+inf`. A fan-out may
//!   create a timeline without it (the reader never read, or its timeline was dropped); such a
//!   set is only a partial cache and is rebuilt (merged) on the next read.
//! - **Invalidation**: a change of whom a user follows bumps `tl:{user}:v` and deletes the
//!   timeline. A rebuild writes only when the version it read before its query is still the
//!   current one, so a rebuild racing a follow never stores the pre-follow timeline.
//!
//! Invariant: what a page shows is decided by Postgres alone (the SQL re-checks every rule for
//! every id), so a stale id in Redis can cost a slot, never show something it must not.

use std::time::Duration;

use fred::clients::Client;
use fred::types::scripts::Script;
use haberci_wire::{PostId, UserId};
use sqlx::PgPool;
use uuid::Uuid;

use super::store::{MAX_ID, MIN_ID, NOT_MUTED, PostRow, follows, post_query};

/// Followers above which an author's posts are merged at read time instead of fanned out.
pub const DEFAULT_FANOUT_LIMIT: i64 = 10_000;
/// Entries a timeline keeps (the built marker aside).
pub const DEFAULT_TIMELINE_CAP: usize = 800;
/// How long an unread timeline lives in Redis.
pub const DEFAULT_TIMELINE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedSettings {
    /// `HABERCI_FEED_FANOUT_LIMIT`.
    pub fanout_limit: i64,
    /// `HABERCI_FEED_TIMELINE_CAP`.
    pub cap: usize,
    pub ttl: Duration,
}

impl Default for FeedSettings {
    fn default() -> Self {
        FeedSettings {
            fanout_limit: DEFAULT_FANOUT_LIMIT,
            cap: DEFAULT_TIMELINE_CAP,
            ttl: DEFAULT_TIMELINE_TTL,
        }
    }
}

pub fn timeline_key(user: UserId) -> String {
    format!("tl:{{{user}}}")
}

fn version_key(user: UserId) -> String {
    format!("tl:{{{user}}}:v")
}

/// KEYS[1] timeline, KEYS[2] version. ARGV: max score, count, ttl, cursor id.
/// Returns {card, version, ids…}: up to `count` ids below the cursor id, newest first (ids
/// sharing the cursor's millisecond but not below it are skipped, however many); card is -1
/// when the timeline is not built.
const READ_LUA: &str = r#"
local version = redis.call('GET', KEYS[2]) or '0'
if not redis.call('ZSCORE', KEYS[1], '~') then return {'-1', version} end
redis.call('EXPIRE', KEYS[1], ARGV[3])
local out = {tostring(redis.call('ZCARD', KEYS[1]) - 1), version}
local want = tonumber(ARGV[2])
local got, offset = 0, 0
while got < want do
  local ids = redis.call('ZRANGE', KEYS[1], ARGV[1], '-inf', 'BYSCORE', 'REV', 'LIMIT', offset, want)
  for i = 1, #ids do
    if got < want and ids[i] < ARGV[4] then
      out[#out + 1] = ids[i]
      got = got + 1
    end
  end
  if #ids < want then break end
  offset = offset + #ids
end
return out
"#;

/// KEYS[1] timeline, KEYS[2] version. ARGV: expected version, ttl, cap, then score/id pairs.
/// Merges the ids and the built marker when the version is unchanged; 1 if written.
const REBUILD_LUA: &str = r#"
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[1] then return 0 end
for i = 4, #ARGV, 2 do redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[1], 'inf', '~')
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[3]) + 2))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"#;

/// KEYS: timelines. ARGV: score, id, cap, ttl. Adds the id to every timeline, trims each to
/// the cap (the marker sits at +inf, so it is never trimmed), and gives a new set a TTL.
const ADD_LUA: &str = r#"
local trim = -(tonumber(ARGV[3]) + 2)
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], ARGV[1], ARGV[2])
  redis.call('ZREMRANGEBYRANK', KEYS[i], 0, trim)
  redis.call('EXPIRE', KEYS[i], ARGV[4], 'NX')
end
return #KEYS
"#;

/// KEYS: timelines. ARGV[1]: the id to remove.
const REMOVE_LUA: &str = r#"
for i = 1, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
return #KEYS
"#;

/// KEYS[1] timeline, KEYS[2] version.
const INVALIDATE_LUA: &str = r#"
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], 8 * 24 * 3600)
redis.call('DEL', KEYS[1])
return 1
"#;

/// Timelines one fan-out script call writes: bounds the time Redis spends in one script.
pub const FANOUT_CHUNK: usize = 500;

/// What the cache said about the ids below a cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    /// Entries in the timeline (the marker aside).
    pub card: usize,
    /// Ids read below the cursor, newest first (at most the number asked for).
    pub ids: Vec<Uuid>,
}

/// Where a page comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The cached `ids` plus large authors' posts, all within `[low, before)`. `more`: the
    /// cache holds older entries than `low`.
    Window {
        ids: Vec<Uuid>,
        low: Uuid,
        more: bool,
    },
    /// The cache ran out and was trimmed: older entries exist only in Postgres.
    Postgres,
}

/// Decides a page's source from what the cache returned for `asked` ids below `before`.
pub fn plan(cached: Cached, before: Uuid, asked: usize, cap: usize) -> Plan {
    let full = cached.ids.len() >= asked && asked > 0;
    let low = if full {
        cached.ids.last().copied().unwrap_or(MIN_ID)
    } else {
        MIN_ID
    };
    let ids: Vec<Uuid> = cached.ids.into_iter().filter(|id| *id < before).collect();
    if full {
        Plan::Window {
            ids,
            low,
            more: true,
        }
    } else if cached.card < cap {
        // Everything the timeline ever held is still there.
        Plan::Window {
            ids,
            low: MIN_ID,
            more: false,
        }
    } else {
        Plan::Postgres
    }
}

/// A page of the home timeline.
#[derive(Debug)]
pub struct Page {
    pub posts: Vec<PostRow>,
    pub next: Option<Uuid>,
    /// Where it came from: `cache`, `rebuilt`, `postgres` (a header for tests and benchmarks).
    pub source: &'static str,
}

/// Reads and writes home timelines.
#[derive(Clone)]
pub struct Feed {
    pub settings: FeedSettings,
    read: Script,
    rebuild: Script,
    add: Script,
    remove: Script,
    invalidate: Script,
}

impl Feed {
    pub fn new(settings: FeedSettings) -> Feed {
        Feed {
            settings,
            read: Script::from_lua(READ_LUA),
            rebuild: Script::from_lua(REBUILD_LUA),
            add: Script::from_lua(ADD_LUA),
            remove: Script::from_lua(REMOVE_LUA),
            invalidate: Script::from_lua(INVALIDATE_LUA),
        }
    }

    fn ttl_secs(&self) -> i64 {
        i64::try_from(self.settings.ttl.as_secs()).unwrap_or(i64::MAX)
    }

    /// One page of `viewer`'s home timeline below `before`. Redis failing is not an error:
    /// the page then comes from Postgres.
    pub async fn page(
        &self,
        db: &PgPool,
        redis: &Client,
        viewer: UserId,
        before: Option<Uuid>,
        limit: usize,
    ) -> sqlx::Result<Page> {
        let before = before.unwrap_or(MAX_ID);
        // Twice the page: hidden entries (muted, no longer followed) rarely leave it short.
        let asked = limit * 2;
        let (cached, source) = match self.read_cache(redis, viewer, before, asked).await {
            Ok(Some(cached)) => (cached, "cache"),
            Err(err) => {
                tracing::warn!(%err, "feed: timeline unreadable; rebuilding");
                match self.rebuilt(db, redis, viewer, before, asked).await? {
                    Some(cached) => (cached, "rebuilt"),
                    None => return self.postgres_page(db, viewer, before, limit).await,
                }
            }
            Ok(None) => match self.rebuilt(db, redis, viewer, before, asked).await? {
                Some(cached) => (cached, "rebuilt"),
                None => return self.postgres_page(db, viewer, before, limit).await,
            },
        };
        match plan(cached, before, asked, self.settings.cap) {
            Plan::Window { ids, low, more } => {
                let mut posts = window(db, viewer, &ids, low, before, limit, self.settings).await?;
                let next = if posts.len() > limit {
                    posts.truncate(limit);
                    posts.last().map(|p| p.id.as_uuid())
                } else {
                    more.then_some(low)
                };
                Ok(Page {
                    posts,
                    next,
                    source,
                })
            }
            Plan::Postgres => self.postgres_page(db, viewer, before, limit).await,
        }
    }

    async fn postgres_page(
        &self,
        db: &PgPool,
        viewer: UserId,
        before: Uuid,
        limit: usize,
    ) -> sqlx::Result<Page> {
        let mut posts = reference_page(db, viewer, before, limit + 1).await?;
        let next = if posts.len() > limit {
            posts.truncate(limit);
            posts.last().map(|p| p.id.as_uuid())
        } else {
            None
        };
        Ok(Page {
            posts,
            next,
            source: "postgres",
        })
    }

    /// The cached ids below `before` (`None`: the timeline is not built; the version read is
    /// kept for the rebuild).
    async fn read_cache(
        &self,
        redis: &Client,
        viewer: UserId,
        before: Uuid,
        asked: usize,
    ) -> Result<Option<Cached>, fred::error::Error> {
        let max = if before == MAX_ID {
            1u64 << 48
        } else {
            super::score(before)
        };
        let reply: Vec<String> = self
            .read
            .evalsha_with_reload(
                redis,
                vec![timeline_key(viewer), version_key(viewer)],
                vec![
                    max.to_string(),
                    asked.to_string(),
                    self.ttl_secs().to_string(),
                    before.to_string(),
                ],
            )
            .await?;
        let card: i64 = reply.first().and_then(|c| c.parse().ok()).unwrap_or(-1);
        if card < 0 {
            return Ok(None);
        }
        let ids = reply[2..]
            .iter()
            .filter_map(|id| Uuid::parse_str(id).ok())
            .collect();
        Ok(Some(Cached {
            card: usize::try_from(card).unwrap_or(0),
            ids,
        }))
    }

    /// Rebuilds the timeline from Postgres and answers from what was read (`None`: Redis is
    /// unavailable).
    async fn rebuilt(
        &self,
        db: &PgPool,
        redis: &Client,
        viewer: UserId,
        before: Uuid,
        asked: usize,
    ) -> sqlx::Result<Option<Cached>> {
        // The version before the query: a follow committed after it makes the write a no-op.
        let version: Option<String> =
            match fred::interfaces::KeysInterface::get::<Option<String>, _>(
                redis,
                version_key(viewer),
            )
            .await
            {
                Ok(version) => version,
                Err(err) => {
                    tracing::debug!(%err, "feed: redis unavailable; reading from postgres");
                    return Ok(None);
                }
            };
        let ids = rebuild_ids(db, viewer, self.settings).await?;
        let mut args = vec![
            version.unwrap_or_else(|| "0".to_owned()),
            self.ttl_secs().to_string(),
            self.settings.cap.to_string(),
        ];
        for id in &ids {
            args.push(super::score(*id).to_string());
            args.push(id.to_string());
        }
        let written: Result<i64, _> = self
            .rebuild
            .evalsha_with_reload(redis, vec![timeline_key(viewer), version_key(viewer)], args)
            .await;
        if let Err(err) = written {
            tracing::debug!(%err, "feed: timeline not stored");
        }
        let card = ids.len();
        let below: Vec<Uuid> = ids
            .into_iter()
            .filter(|id| *id < before)
            .take(asked)
            .collect();
        Ok(Some(Cached { card, ids: below }))
    }

    /// Forgets `user`'s timeline: whom they follow changed.
    pub async fn invalidate(&self, redis: &Client, user: UserId) {
        let done: Result<i64, _> = self
            .invalidate
            .evalsha_with_reload(
                redis,
                vec![timeline_key(user), version_key(user)],
                Vec::<String>::new(),
            )
            .await;
        if let Err(err) = done {
            // The read path re-checks follows in SQL, so a stale timeline shows nothing it
            // must not; it may lack a newly followed account's older posts until it expires.
            tracing::warn!(%err, %user, "feed: timeline not invalidated");
        }
    }

    /// Adds `post` to the timelines of `users` (fan-out on write).
    pub async fn add(
        &self,
        redis: &Client,
        users: &[UserId],
        post: PostId,
    ) -> Result<(), fred::error::Error> {
        let args = vec![
            super::score(post.as_uuid()).to_string(),
            post.to_string(),
            self.settings.cap.to_string(),
            self.ttl_secs().to_string(),
        ];
        for chunk in users.chunks(FANOUT_CHUNK) {
            let keys: Vec<String> = chunk.iter().map(|u| timeline_key(*u)).collect();
            // A script's keys must share a hash slot on a Redis Cluster.
            for keys in crate::redis::slot_groups(redis, keys)? {
                let _: i64 = self
                    .add
                    .evalsha_with_reload(redis, keys, args.clone())
                    .await?;
            }
        }
        Ok(())
    }

    /// Removes `post` from the timelines of `users`.
    pub async fn remove(
        &self,
        redis: &Client,
        users: &[UserId],
        post: PostId,
    ) -> Result<(), fred::error::Error> {
        for chunk in users.chunks(FANOUT_CHUNK) {
            let keys: Vec<String> = chunk.iter().map(|u| timeline_key(*u)).collect();
            for keys in crate::redis::slot_groups(redis, keys)? {
                let _: i64 = self
                    .remove
                    .evalsha_with_reload(redis, keys, vec![post.to_string()])
                    .await?;
            }
        }
        Ok(())
    }
}

/// Home, the definition: posts and reposts by the viewer and the accounts they follow, that
/// they may see and have not muted, newest first, below `before`.
pub async fn reference_page(
    db: &PgPool,
    viewer: UserId,
    before: Uuid,
    limit: usize,
) -> sqlx::Result<Vec<PostRow>> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        post_query(
            "",
            "",
            &format!(
                "p.author_id IN (SELECT $1::uuid UNION ALL
                                 SELECT followee_id FROM follows WHERE follower_id = $1)
                 AND p.id < $2 AND {NOT_MUTED}"
            ),
            "ORDER BY p.id DESC LIMIT $3",
        )
    });
    sqlx::query_as::<_, PostRow>(&SQL)
        .bind(viewer)
        .bind(before)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(db)
        .await
}

/// The warm path's one statement: cached ids ∪ large followed authors' posts in
/// `[low, before)`, hydrated and filtered; at most `limit + 1` rows.
async fn window(
    db: &PgPool,
    viewer: UserId,
    ids: &[Uuid],
    low: Uuid,
    before: Uuid,
    limit: usize,
    settings: FeedSettings,
) -> sqlx::Result<Vec<PostRow>> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        post_query(
            "WITH cand(id) AS (
                SELECT unnest($2::uuid[])
                UNION
                SELECT bp.id FROM follows f
                JOIN users bu ON bu.id = f.followee_id AND bu.followers_count >= $5
                CROSS JOIN LATERAL (
                    SELECT id FROM posts
                    WHERE author_id = f.followee_id AND deleted_at IS NULL AND id < $4 AND id >= $3
                    ORDER BY id DESC LIMIT $6) bp
                WHERE f.follower_id = $1)",
            "JOIN cand ON cand.id = p.id",
            &format!(
                "p.id < $4 AND p.id >= $3
                 AND (p.author_id = $1 OR {}) AND {NOT_MUTED}",
                follows("$1", "p.author_id")
            ),
            "ORDER BY p.id DESC LIMIT $6",
        )
    });
    sqlx::query_as::<_, PostRow>(&SQL)
        .bind(viewer)
        .bind(ids)
        .bind(low)
        .bind(before)
        .bind(settings.fanout_limit)
        .bind(i64::try_from(limit + 1).unwrap_or(i64::MAX))
        .fetch_all(db)
        .await
}

/// What a rebuilt timeline holds: the newest `cap` visible posts of the viewer and of the
/// accounts they follow that are fanned out (below the limit), newest first.
async fn rebuild_ids(
    db: &PgPool,
    viewer: UserId,
    settings: FeedSettings,
) -> sqlx::Result<Vec<Uuid>> {
    // Per author, the newest `cap` visible posts (one backward range scan of posts_by_author
    // each), then the newest `cap` of them all: the top `cap` overall is among them, and the
    // cost is bounded by what the followed authors wrote, not by the size of `posts`.
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT x.id FROM (
                 SELECT $1::uuid AS author
                 UNION ALL
                 SELECT f.followee_id FROM follows f
                 JOIN users fu ON fu.id = f.followee_id AND fu.followers_count < $2
                 WHERE f.follower_id = $1
             ) a
             CROSS JOIN LATERAL (
                 SELECT p.id FROM posts p JOIN users u ON u.id = p.author_id
                 WHERE p.author_id = a.author AND p.deleted_at IS NULL AND {}
                 ORDER BY p.id DESC LIMIT $3
             ) x
             ORDER BY x.id DESC LIMIT $3",
            super::store::visible("p", "u")
        )
    });
    sqlx::query_scalar::<_, Uuid>(&SQL)
        .bind(viewer)
        .bind(settings.fanout_limit)
        .bind(i64::try_from(settings.cap).unwrap_or(i64::MAX))
        .fetch_all(db)
        .await
}

/// Who receives `author`'s posts by fan-out: their followers, unless there are too many
/// (`None`: the posts are merged at read time), plus the author.
pub async fn fanout_targets(
    db: &PgPool,
    author: UserId,
    settings: FeedSettings,
) -> sqlx::Result<Option<Vec<UserId>>> {
    let followers: i64 = sqlx::query_scalar("SELECT followers_count FROM users WHERE id = $1")
        .bind(author)
        .fetch_optional(db)
        .await?
        .unwrap_or(0);
    if followers >= settings.fanout_limit {
        return Ok(None);
    }
    let mut users: Vec<UserId> =
        sqlx::query_scalar("SELECT follower_id FROM follows WHERE followee_id = $1")
            .bind(author)
            .fetch_all(db)
            .await?;
    users.push(author);
    Ok(Some(users))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u128) -> Vec<Uuid> {
        (1..=n).rev().map(|i| Uuid::from_u128(i << 80)).collect()
    }

    #[test]
    fn a_full_read_is_a_window_down_to_its_oldest_id() {
        let read = ids(10);
        let plan = plan(
            Cached {
                card: 50,
                ids: read.clone(),
            },
            MAX_ID,
            10,
            800,
        );
        assert_eq!(
            plan,
            Plan::Window {
                ids: read.clone(),
                low: read[9],
                more: true
            }
        );
    }

    #[test]
    fn a_short_read_of_a_complete_timeline_reaches_the_bottom() {
        let read = ids(3);
        assert_eq!(
            plan(
                Cached {
                    card: 3,
                    ids: read.clone()
                },
                MAX_ID,
                10,
                800
            ),
            Plan::Window {
                ids: read,
                low: MIN_ID,
                more: false
            }
        );
    }

    #[test]
    fn a_short_read_of_a_trimmed_timeline_goes_to_postgres() {
        assert_eq!(
            plan(
                Cached {
                    card: 800,
                    ids: ids(3)
                },
                MAX_ID,
                10,
                800
            ),
            Plan::Postgres
        );
    }

    #[test]
    fn ids_at_or_above_the_cursor_are_dropped() {
        let read = ids(5);
        let before = read[1];
        match plan(
            Cached {
                card: 5,
                ids: read.clone(),
            },
            before,
            10,
            800,
        ) {
            Plan::Window { ids, .. } => assert_eq!(ids, read[2..].to_vec()),
            other => panic!("{other:?}"),
        }
    }
}
