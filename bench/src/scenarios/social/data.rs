//! The generated data set, written straight into the dev database (the one the running stack
//! uses) through Postgres itself, not PgBouncer: accounts named `sbench_<node>`, the follow
//! graph and the posts of [`super::graph`], with every count column recomputed from the rows.
//! The registered (driven) users are nodes of the same graph.
//!
//! Generated once: `DEV_DIR/bench/social-data.json` records the shape of what is in the
//! database; a run with the same shape, whose accounts are all still there, reuses it. Any
//! other shape deletes the generated accounts (their rows cascade) and the driven users' posts
//! and follows, then generates anew.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use super::graph::{self, Layout, Posts, Rng, USERNAME_PREFIX};

/// Rows per multi-row `INSERT … SELECT FROM unnest(…)`.
const USER_CHUNK: usize = 20_000;
const FOLLOW_CHUNK: usize = 100_000;
const POST_CHUNK: usize = 20_000;

/// What a generation made: compared field by field to decide whether to reuse it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub users: usize,
    pub posts: usize,
    pub seed: u64,
    pub celebrities: usize,
    pub fanout_authors: usize,
    pub fanout_limit: usize,
    /// The driven users, in node order.
    pub drivers: Vec<Uuid>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    shape: Shape,
    follows: u64,
    generated_at: String,
    seconds: f64,
}

/// The graph as the measured phases use it.
pub struct Graph {
    pub layout: Layout,
    /// Node → user id.
    pub ids: Vec<Uuid>,
    /// Node → username.
    pub usernames: Vec<String>,
}

/// What setting up the data did, for the report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DataFigures {
    pub generated_now: bool,
    pub seconds: f64,
    pub users: usize,
    pub follows: u64,
    pub posts: usize,
    /// Followers of the celebrities and of the fan-out authors, as the database counts them.
    pub celebrity_followers: Vec<i64>,
    pub fanout_author_followers: Vec<i64>,
    /// Seconds per step of the generation (empty when reused).
    pub steps: Vec<(String, f64)>,
}

pub fn marker_path(dev_dir: &Path) -> PathBuf {
    dev_dir.join("bench/social-data.json")
}

/// Makes sure the data set of `shape` is in the database; returns the graph.
pub async fn ensure(
    conn: &mut PgConnection,
    marker: &Path,
    shape: &Shape,
    layout: Layout,
    deadline: Duration,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<(Graph, DataFigures)> {
    let started = Instant::now();
    let previous: Option<Marker> = std::fs::read(marker)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let generated_users: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users WHERE username LIKE $1")
            .bind(generated_pattern())
            .fetch_one(&mut *conn)
            .await?;
    let expected = (shape.users - shape.drivers.len()) as i64;
    let reusable =
        previous.as_ref().is_some_and(|m| &m.shape == shape) && generated_users == expected;
    let mut figures = DataFigures {
        users: shape.users,
        posts: shape.posts,
        ..DataFigures::default()
    };
    if reusable {
        figures.follows = previous.map_or(0, |m| m.follows);
    } else {
        let _ = std::fs::remove_file(marker);
        let until = started + deadline;
        figures.steps = generate(conn, shape, &layout, until, progress).await?;
        figures.generated_now = true;
        figures.follows = layout.follow_rows();
        let marker_file = Marker {
            shape: shape.clone(),
            follows: figures.follows,
            generated_at: crate::report::now(),
            seconds: started.elapsed().as_secs_f64(),
        };
        if let Some(dir) = marker.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(marker, serde_json::to_vec_pretty(&marker_file)?)?;
    }
    let graph = load(conn, shape, layout).await?;
    let count_of = |nodes: std::ops::Range<usize>| graph.ids[nodes].to_vec();
    let c = graph.layout.celebrities;
    let f = graph.layout.fanout_authors;
    figures.celebrity_followers = followers_of(conn, &count_of(0..c)).await?;
    figures.fanout_author_followers = followers_of(conn, &count_of(c..c + f)).await?;
    figures.seconds = started.elapsed().as_secs_f64();
    Ok((graph, figures))
}

async fn followers_of(conn: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(
        "SELECT u.followers_count FROM unnest($1::uuid[]) WITH ORDINALITY a(id, n)
         JOIN users u ON u.id = a.id ORDER BY a.n",
    )
    .bind(ids)
    .fetch_all(conn)
    .await
}

/// Node ids and usernames from the database (generated accounts by name, drivers by id).
async fn load(conn: &mut PgConnection, shape: &Shape, layout: Layout) -> anyhow::Result<Graph> {
    let mut ids = vec![Uuid::nil(); shape.users];
    let mut usernames = vec![String::new(); shape.users];
    let rows: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT id, username::text FROM users WHERE username LIKE $1")
            .bind(generated_pattern())
            .fetch_all(&mut *conn)
            .await?;
    for (id, name) in rows {
        let node: Option<usize> = name
            .strip_prefix(USERNAME_PREFIX)
            .and_then(|n| n.parse().ok());
        if let Some(node) = node.filter(|&n| n < shape.users) {
            ids[node] = id;
            usernames[node] = name;
        }
    }
    let drivers: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT u.id, u.username::text FROM unnest($1::uuid[]) WITH ORDINALITY a(id, n)
         JOIN users u ON u.id = a.id ORDER BY a.n",
    )
    .bind(&shape.drivers)
    .fetch_all(&mut *conn)
    .await?;
    if drivers.len() != shape.drivers.len() {
        bail!(
            "some bench users are missing from the database; delete the social pool file and run again"
        );
    }
    for (k, (id, name)) in drivers.into_iter().enumerate() {
        let node = layout.drivers[k];
        ids[node] = id;
        usernames[node] = name;
    }
    if let Some(missing) = ids.iter().position(Uuid::is_nil) {
        bail!("node {missing} has no account in the database: the generated data is incomplete");
    }
    Ok(Graph {
        layout,
        ids,
        usernames,
    })
}

/// `LIKE` pattern of the generated accounts' usernames.
fn generated_pattern() -> String {
    format!("{}%", USERNAME_PREFIX.replace('_', "\\_"))
}

fn check(until: Instant) -> anyhow::Result<()> {
    if Instant::now() > until {
        bail!("generating the social data took longer than --generate-timeout");
    }
    Ok(())
}

/// Deletes what an earlier generation left, then writes the graph; the seconds per step.
async fn generate(
    conn: &mut PgConnection,
    shape: &Shape,
    layout: &Layout,
    until: Instant,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<Vec<(String, f64)>> {
    let mut steps = Vec::new();
    let mut step =
        |name: &str, t: Instant| steps.push((name.to_owned(), t.elapsed().as_secs_f64()));
    sqlx::query("SET synchronous_commit = off")
        .execute(&mut *conn)
        .await?;
    let t = Instant::now();
    progress.set_message("deleting earlier data");
    clean(conn, &shape.drivers).await?;
    step("delete earlier data", t);

    let t = Instant::now();
    let mut ids = vec![Uuid::nil(); shape.users];
    for (k, &node) in layout.drivers.iter().enumerate() {
        ids[node] = shape.drivers[k];
    }
    let mut rng = Rng::new(shape.seed ^ 0x05E7);
    let now_ms = unix_ms();
    for id in ids.iter_mut().filter(|id| id.is_nil()) {
        *id = graph::uuid_v7(now_ms - rng.below(365 * 86_400_000), &mut rng);
    }
    let generated: Vec<usize> = (0..shape.users)
        .filter(|n| !layout.drivers.contains(n))
        .collect();
    progress.set_length(generated.len() as u64);
    progress.set_position(0);
    progress.set_message("accounts");
    for chunk in generated.chunks(USER_CHUNK) {
        check(until)?;
        insert_users(conn, layout, &ids, chunk).await?;
        progress.inc(chunk.len() as u64);
    }
    step("accounts", t);

    let t = Instant::now();
    progress.set_length(layout.follow_rows());
    progress.set_position(0);
    progress.set_message("follows");
    let (mut followers, mut followees) = (Vec::new(), Vec::new());
    for node in 0..shape.users {
        for j in 0..layout.followers(node) {
            followers.push(ids[layout.follower(node, j)]);
            followees.push(ids[node]);
            if followers.len() == FOLLOW_CHUNK {
                check(until)?;
                insert_follows(conn, &followers, &followees).await?;
                progress.inc(followers.len() as u64);
                followers.clear();
                followees.clear();
            }
        }
    }
    insert_follows(conn, &followers, &followees).await?;
    progress.inc(followers.len() as u64);
    step("follows", t);

    let t = Instant::now();
    insert_posts(conn, shape, &ids, until, progress).await?;
    step("posts", t);

    let t = Instant::now();
    progress.set_message("counts");
    recount(conn).await?;
    step("counts", t);
    let t = Instant::now();
    progress.set_message("analyze");
    for table in ["users", "follows", "posts"] {
        sqlx::query(&format!("ANALYZE {table}"))
            .execute(&mut *conn)
            .await?;
    }
    step("analyze", t);
    Ok(steps)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Deletes every row of the bench's accounts (generated and driven) but the driven accounts
/// themselves. In steps, each committed, children first: deleting a user makes Postgres run
/// each foreign key's action once per user, and `posts.author_id` (only a partial index) and
/// `posts.removed_by` (none) are found by scanning `posts`, so the posts go first and
/// `VACUUM` removes their dead rows before the users are deleted. Idempotent: an interrupted
/// clean is finished by the next run.
async fn clean(conn: &mut PgConnection, drivers: &[Uuid]) -> sqlx::Result<()> {
    let pattern = generated_pattern();
    sqlx::raw_sql(
        "CREATE TEMP TABLE IF NOT EXISTS bench_nodes (id uuid PRIMARY KEY); TRUNCATE bench_nodes",
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO bench_nodes SELECT id FROM users WHERE username LIKE $1
         UNION SELECT unnest($2::uuid[])",
    )
    .bind(&pattern)
    .bind(drivers)
    .execute(&mut *conn)
    .await?;
    // Each deleted post looks up its notifications by `post_id` (no index): they go first,
    // and their dead rows with them.
    for step in [
        "DELETE FROM notifications WHERE user_id IN (SELECT id FROM bench_nodes)
            OR actor_id IN (SELECT id FROM bench_nodes)",
        "DELETE FROM likes WHERE user_id IN (SELECT id FROM bench_nodes)",
        "VACUUM notifications, likes",
        "DELETE FROM posts WHERE author_id IN (SELECT id FROM bench_nodes)",
        "DELETE FROM follows WHERE follower_id IN (SELECT id FROM bench_nodes)
            OR followee_id IN (SELECT id FROM bench_nodes)",
        "DELETE FROM follow_requests WHERE requester_id IN (SELECT id FROM bench_nodes)
            OR target_id IN (SELECT id FROM bench_nodes)",
        "VACUUM posts, follows",
    ] {
        sqlx::raw_sql(step).execute(&mut *conn).await?;
    }
    sqlx::query("DELETE FROM users WHERE username LIKE $1")
        .bind(&pattern)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn insert_users(
    conn: &mut PgConnection,
    layout: &Layout,
    ids: &[Uuid],
    nodes: &[usize],
) -> sqlx::Result<()> {
    let id: Vec<Uuid> = nodes.iter().map(|&n| ids[n]).collect();
    let name: Vec<String> = nodes.iter().map(|&n| graph::username(n)).collect();
    let email: Vec<String> = name
        .iter()
        .map(|n| format!("{n}@bench.example.com"))
        .collect();
    let display: Vec<String> = nodes
        .iter()
        .map(|&n| format!("Bench Kullanıcı {n}"))
        .collect();
    let private: Vec<bool> = nodes.iter().map(|&n| layout.private(n)).collect();
    sqlx::query(
        "INSERT INTO users (id, username, email, display_name, is_private)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bool[])",
    )
    .bind(&id)
    .bind(&name)
    .bind(&email)
    .bind(&display)
    .bind(&private)
    .execute(conn)
    .await?;
    Ok(())
}

async fn insert_follows(
    conn: &mut PgConnection,
    followers: &[Uuid],
    followees: &[Uuid],
) -> sqlx::Result<()> {
    if followers.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO follows (follower_id, followee_id)
         SELECT * FROM unnest($1::uuid[], $2::uuid[]) ON CONFLICT DO NOTHING",
    )
    .bind(followers)
    .bind(followees)
    .execute(conn)
    .await?;
    Ok(())
}

/// The posts of [`graph::Posts`], spread over the last [`graph::POST_DAYS`] days.
async fn insert_posts(
    conn: &mut PgConnection,
    shape: &Shape,
    ids: &[Uuid],
    until: Instant,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    progress.set_length(shape.posts as u64);
    progress.set_position(0);
    progress.set_message("posts");
    let span_ms = graph::POST_DAYS * 86_400_000;
    // Ends a minute ago: generated posts are older than anything the bench writes.
    let start_ms = unix_ms() - span_ms - 60_000;
    let mut posts = Posts::new(shape.seed, shape.users, shape.posts, start_ms, span_ms);
    let mut post_ids: Vec<Uuid> = Vec::with_capacity(shape.posts);
    let mut batch = PostBatch::default();
    let mut m = 0usize;
    while let Some(plan) = posts.next_post() {
        let id = graph::uuid_v7(plan.at_ms, posts.rng());
        post_ids.push(id);
        batch.id.push(id);
        batch.author.push(ids[plan.author]);
        batch.at_ms.push(i64::try_from(plan.at_ms)?);
        match plan.repost_of {
            Some(original) => {
                batch.content.push(String::new());
                batch.repost_of.push(Some(post_ids[original]));
            }
            None => {
                batch.content.push(graph::content(posts.rng(), m));
                batch.repost_of.push(None);
            }
        }
        batch.visibility.push(if plan.followers_only {
            "followers"
        } else {
            "public"
        });
        m += 1;
        if batch.id.len() == POST_CHUNK {
            check(until)?;
            batch.insert(conn).await?;
            progress.inc(POST_CHUNK as u64);
            batch = PostBatch::default();
        }
    }
    let rest = batch.id.len() as u64;
    batch.insert(conn).await?;
    progress.inc(rest);
    Ok(())
}

#[derive(Default)]
struct PostBatch {
    id: Vec<Uuid>,
    author: Vec<Uuid>,
    content: Vec<String>,
    visibility: Vec<&'static str>,
    repost_of: Vec<Option<Uuid>>,
    at_ms: Vec<i64>,
}

impl PostBatch {
    async fn insert(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        if self.id.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO posts (id, author_id, content, visibility, repost_of, created_at)
             SELECT id, author, content, visibility, repost_of, to_timestamp(at_ms / 1000.0)
             FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::uuid[], $6::bigint[])
                  AS t(id, author, content, visibility, repost_of, at_ms)",
        )
        .bind(&self.id)
        .bind(&self.author)
        .bind(&self.content)
        .bind(&self.visibility)
        .bind(&self.repost_of)
        .bind(&self.at_ms)
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// Grouped counts of every user, as the rows say (the migration's invariant).
const COUNTS: &str = "SELECT u.id,
        coalesce(fe.c, 0) AS followers, coalesce(fr.c, 0) AS following, coalesce(po.c, 0) AS posts
     FROM users u
     LEFT JOIN (SELECT followee_id AS id, count(*) AS c FROM follows GROUP BY 1) fe ON fe.id = u.id
     LEFT JOIN (SELECT follower_id AS id, count(*) AS c FROM follows GROUP BY 1) fr ON fr.id = u.id
     LEFT JOIN (SELECT author_id AS id, count(*) AS c FROM posts
                WHERE repost_of IS NULL AND deleted_at IS NULL GROUP BY 1) po ON po.id = u.id";

/// Sets every count column from the rows: users' followers, following and posts (originals
/// only: a repost counts on its original), posts' reposts.
async fn recount(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query(&format!(
        "UPDATE users u SET followers_count = c.followers, following_count = c.following,
                posts_count = c.posts
         FROM ({COUNTS}) c
         WHERE u.id = c.id
           AND (u.followers_count, u.following_count, u.posts_count)
               IS DISTINCT FROM (c.followers, c.following, c.posts)"
    ))
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE posts p SET reposts_count = r.c
         FROM (SELECT repost_of, count(*) AS c FROM posts
               WHERE repost_of IS NOT NULL AND deleted_at IS NULL GROUP BY 1) r
         WHERE p.id = r.repost_of AND p.reposts_count <> r.c",
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Users whose counts differ from their rows (0 when the invariant holds).
pub async fn count_mismatches(conn: &mut PgConnection) -> sqlx::Result<i64> {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM users u JOIN ({COUNTS}) c ON c.id = u.id
         WHERE (u.followers_count, u.following_count, u.posts_count)
               IS DISTINCT FROM (c.followers, c.following, c.posts)"
    ))
    .fetch_one(conn)
    .await
}

/// Up to `n` posts any driven user may see and act on: public originals of public,
/// unsuspended generated accounts.
pub async fn sample_posts(conn: &mut PgConnection, n: usize) -> anyhow::Result<Vec<Uuid>> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT p.id FROM posts p TABLESAMPLE SYSTEM (10) JOIN users u ON u.id = p.author_id
         WHERE p.deleted_at IS NULL AND p.repost_of IS NULL AND p.visibility = 'public'
           AND NOT u.is_private AND u.suspended_at IS NULL AND u.username LIKE $1
         LIMIT $2",
    )
    .bind(generated_pattern())
    .bind(i64::try_from(n)?)
    .fetch_all(conn)
    .await
    .context("sampling posts")?;
    if ids.is_empty() {
        bail!("no public generated post to act on");
    }
    Ok(ids)
}
