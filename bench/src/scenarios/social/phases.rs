//! The measured phases of `social`, each a function of the client, the drivers and the
//! settings, returning its figures. Orchestration and the report are in `mod.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde::Serialize;
use serde_json::json;
use sqlx::PgConnection;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::client::{Client, Distribution, Driver, Tally, expect};
use super::graph::{self, Rng};
use crate::api::H2Answer;
use crate::report::latency::{Latency, Summary};
use crate::sampling::pgstat;
use crate::sampling::resp::{Redis, Value};
use crate::sampling::servers::ServerSet;
use crate::sampling::{Sampler, ServerSample};

pub fn timeline_key(user: Uuid) -> String {
    format!("tl:{{{user}}}")
}

/// Home timeline reads, warm or cold.
#[derive(Debug, Default, Serialize)]
pub struct ReadFigures {
    pub reads: u64,
    pub readers: usize,
    pub concurrency: usize,
    pub seconds: f64,
    pub reads_per_sec: f64,
    pub latency: Distribution,
    /// `x-haberci-feed-source` of the measured pages.
    pub sources: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub server_cpu_ms: BTreeMap<String, f64>,
    pub server_cpu_ms_per_read: f64,
    /// The statements that took the most time meanwhile: (statement, calls, mean ms, total ms).
    pub heaviest: Vec<(String, i64, f64, f64)>,
}

/// `n` home pages of `readers` in turn, `concurrency` at a time; with `cold` (a Redis URL)
/// each reader's timeline is deleted right before its read, untimed.
pub async fn home_reads(
    client: &Arc<Client>,
    readers: &[Driver],
    n: usize,
    concurrency: usize,
    cold: Option<&str>,
    servers: &ServerSet,
    db: &mut PgConnection,
) -> anyhow::Result<ReadFigures> {
    let stats_before = pgstat::snapshot(db).await?;
    let ticks = crate::sampling::procfs::clock_ticks_per_sec();
    let cpu_before = servers.cpu();
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let readers = Arc::new(readers.to_vec());
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (client, readers, next) = (client.clone(), readers.clone(), next.clone());
        let mut redis = match cold {
            Some(url) => Some(Redis::connect(url).await?),
            None => None,
        };
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let reader = &readers[i % readers.len()];
                if let Some(redis) = redis.as_mut() {
                    let key = timeline_key(reader.id);
                    if let Err(err) = redis.command(&["DEL", &key]).await {
                        *tally.errors.entry(format!("redis DEL: {err}")).or_default() += 1;
                        continue;
                    }
                }
                let t0 = Instant::now();
                let outcome = client.home(&reader.token).await;
                tally.record(t0.elapsed(), &outcome);
            }
            tally
        }));
    }
    let mut tally = Tally::default();
    for task in tasks {
        tally.merge(task.await?);
    }
    let seconds = started.elapsed().as_secs_f64();
    let server_cpu_ms = cpu_before.delta_ms(&servers.cpu(), ticks);
    let stats_after = pgstat::snapshot(db).await?;
    let reads = tally.latency.len();
    Ok(ReadFigures {
        reads,
        readers: readers.len(),
        concurrency,
        seconds,
        reads_per_sec: reads as f64 / seconds,
        latency: Distribution::of(&tally.latency),
        sources: tally.sources,
        errors: tally.errors,
        server_cpu_ms_per_read: server_cpu_ms.values().sum::<f64>() / reads.max(1) as f64,
        server_cpu_ms,
        heaviest: pgstat::heaviest(&stats_before, &stats_after, 6),
    })
}

/// Postgres statements per warm home page.
#[derive(Debug, Default, Serialize)]
pub struct StatementFigures {
    pub pages: u64,
    pub idle_seconds: f64,
    pub busy_seconds: f64,
    pub per_page: f64,
    pub statements: Vec<pgstat::PerRequest>,
    pub sources: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
}

/// `pg_stat_statements` over an idle window of `idle` and over `pages` warm pages read one
/// after the other.
pub async fn statements_per_page(
    client: &Arc<Client>,
    readers: &[Driver],
    pages: usize,
    idle: Duration,
    db: &mut PgConnection,
) -> anyhow::Result<StatementFigures> {
    let idle_before = pgstat::snapshot(db).await?;
    let t = Instant::now();
    tokio::time::sleep(idle).await;
    let idle_after = pgstat::snapshot(db).await?;
    let idle_seconds = t.elapsed().as_secs_f64();
    let busy_before = pgstat::snapshot(db).await?;
    let t = Instant::now();
    let mut tally = Tally::default();
    for i in 0..pages {
        let reader = &readers[i % readers.len()];
        let t0 = Instant::now();
        let outcome = client.home(&reader.token).await;
        tally.record(t0.elapsed(), &outcome);
    }
    let busy_after = pgstat::snapshot(db).await?;
    let busy_seconds = t.elapsed().as_secs_f64();
    let ok = tally.latency.len();
    let (per_page, statements) = pgstat::per_request(
        (&busy_before, &busy_after, busy_seconds),
        (&idle_before, &idle_after, idle_seconds),
        ok,
    );
    Ok(StatementFigures {
        pages: ok,
        idle_seconds,
        busy_seconds,
        per_page,
        statements,
        sources: tally.sources,
        errors: tally.errors,
    })
}

/// The plans of the feed's two statements for one reader, from `pg_stat_statements`' text.
#[derive(Debug, Default, Serialize)]
pub struct Plans {
    pub reader: Uuid,
    pub rebuild: String,
    pub window: String,
}

pub async fn plans(
    db: &mut PgConnection,
    redis_url: &str,
    reader: Uuid,
    fanout_limit: usize,
    cap: usize,
) -> anyhow::Result<Plans> {
    let stats = pgstat::snapshot(db).await?;
    let rebuild = match pgstat::find(&stats, "fu.followers_count < $2") {
        Some(sql) => {
            let args = [
                format!("'{reader}'::uuid"),
                fanout_limit.to_string(),
                cap.to_string(),
            ];
            pgstat::explain(db, sql, &args).await
        }
        None => "(the rebuild statement has not run)".into(),
    };
    let mut redis = Redis::connect(redis_url).await?;
    let ids: Vec<String> = redis
        .command(&[
            "ZRANGE",
            &timeline_key(reader),
            "+inf",
            "-inf",
            "BYSCORE",
            "REV",
            "LIMIT",
            "0",
            "41",
        ])
        .await?
        .texts()?
        .into_iter()
        .filter(|m| m != "~")
        .take(40)
        .collect();
    let window = match (pgstat::find(&stats, "WITH cand(id)"), ids.last()) {
        (Some(sql), Some(low)) => {
            let array = format!(
                "ARRAY[{}]::uuid[]",
                ids.iter()
                    .map(|i| format!("'{i}'"))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let args = [
                format!("'{reader}'::uuid"),
                array,
                format!("'{low}'::uuid"),
                "'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid".into(),
                fanout_limit.to_string(),
                "21".into(),
            ];
            pgstat::explain(db, sql, &args).await
        }
        _ => "(the window statement has not run, or the timeline is empty)".into(),
    };
    Ok(Plans {
        reader,
        rebuild,
        window,
    })
}

/// A celebrity's post, until a follower's home page shows it.
#[derive(Debug, Default, Serialize)]
pub struct VisibilityFigures {
    pub trials: usize,
    pub seen: usize,
    /// POST 201 → first home page holding the post.
    pub latency: Distribution,
    pub post_latency: Summary,
    /// Home pages read per trial until it showed (1: the first page after the 201).
    pub polls: Vec<u32>,
    pub authors_followers: Vec<i64>,
    pub errors: BTreeMap<String, u64>,
}

/// How long a trial may wait for its post to show.
const VISIBILITY_TIMEOUT: Duration = Duration::from_secs(5);
const POLL_EVERY: Duration = Duration::from_millis(10);

/// `trials` posts by `celebrities` in turn, each watched from the home page of a reader that
/// follows its author (`(celebrity, follower)` pairs).
pub async fn visibility(
    client: &Arc<Client>,
    pairs: &[(Driver, Driver, i64)],
    trials: usize,
    run: u64,
) -> anyhow::Result<VisibilityFigures> {
    let mut figures = VisibilityFigures {
        trials,
        ..VisibilityFigures::default()
    };
    if pairs.is_empty() {
        figures
            .errors
            .insert("no driven reader follows a celebrity".into(), 1);
        return Ok(figures);
    }
    let (mut seen, mut posting) = (Latency::new(), Latency::new());
    for t in 0..trials {
        let (author, reader, followers) = &pairs[t % pairs.len()];
        figures.authors_followers.push(*followers);
        // The reader's timeline is built, as an active reader's is.
        if let Err(why) = client.home(&reader.token).await {
            *figures.errors.entry(why).or_default() += 1;
        }
        let body = json!({ "content": format!("görünürlük denemesi {run}-{t}") });
        let t0 = Instant::now();
        let answer = expect(
            client
                .call(&author.token, Method::POST, "/v1/posts", Some(&body))
                .await,
            "post",
            &[StatusCode::CREATED],
        );
        let created = Instant::now();
        posting.record(created - t0);
        let id = match answer.map(|a| serde_json::from_slice::<serde_json::Value>(&a.body)) {
            Ok(Ok(v)) => v["id"].as_str().unwrap_or_default().to_owned(),
            Ok(Err(err)) => {
                *figures.errors.entry(format!("post: {err}")).or_default() += 1;
                continue;
            }
            Err(why) => {
                *figures.errors.entry(why).or_default() += 1;
                continue;
            }
        };
        let mut polls = 0u32;
        loop {
            polls += 1;
            match client.home(&reader.token).await {
                Ok(page) if contains(&page.body, &id) => {
                    seen.record(created.elapsed());
                    figures.polls.push(polls);
                    break;
                }
                Ok(_) => {}
                Err(why) => *figures.errors.entry(why).or_default() += 1,
            }
            if created.elapsed() > VISIBILITY_TIMEOUT {
                *figures
                    .errors
                    .entry(format!("not seen within {VISIBILITY_TIMEOUT:?}"))
                    .or_default() += 1;
                break;
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
    figures.seen = seen.len() as usize;
    figures.latency = Distribution::of(&seen);
    figures.post_latency = posting.summary();
    Ok(figures)
}

fn contains(body: &[u8], id: &str) -> bool {
    !id.is_empty() && body.windows(id.len()).any(|w| w == id.as_bytes())
}

/// Fan-out on write, drained by the worker.
#[derive(Debug, Default, Serialize)]
pub struct FanoutFigures {
    pub authors: usize,
    pub authors_followers: Vec<i64>,
    pub posts: usize,
    pub posted: usize,
    /// Follower timelines of the authors, and how many were built (marker `~`) before the
    /// posts: already, or by this run's rebuilds (within `--prebuild-seconds`). The others
    /// are created by an unmeasured first post of every author, so every one exists when the
    /// measured posts go out.
    pub follower_timelines: usize,
    pub built_before: usize,
    pub built_now: usize,
    pub prebuild_seconds: f64,
    /// Σ (followers + 1) over the posts: the timeline inserts the worker owes.
    pub inserts_expected: u64,
    /// `ZADD` calls Redis counted meanwhile (`INFO commandstats`).
    pub zadds_counted: u64,
    /// First POST sent → outbox empty.
    pub seconds: f64,
    pub inserts_per_sec: f64,
    pub drained: bool,
    /// (seconds since the first post, outbox rows left).
    pub backlog: Vec<(f64, i64)>,
    pub server_cpu_ms: BTreeMap<String, f64>,
    pub errors: BTreeMap<String, u64>,
}

/// How long the outbox may take to drain before the phase gives up.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(180);

async fn outbox(db: &mut PgConnection) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM feed_outbox")
        .fetch_one(db)
        .await
}

/// Waits until the worker has nothing left from earlier phases.
pub async fn wait_for_empty_outbox(db: &mut PgConnection) -> anyhow::Result<()> {
    let until = Instant::now() + DRAIN_TIMEOUT;
    while outbox(db).await? > 0 {
        if Instant::now() > until {
            anyhow::bail!(
                "the fan-out outbox did not drain in {DRAIN_TIMEOUT:?}: is the worker running?"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

pub struct FanoutSetup<'a> {
    pub redis_url: &'a str,
    /// Pool for the backend's own feed code (the rebuilds before the posts).
    pub pool: &'a sqlx::PgPool,
    pub feed: haberci_backend::social::feed::Feed,
    pub prebuild: Duration,
    pub posts_per_author: usize,
}

/// Builds the authors' followers' timelines (the backend's `Feed::page`, as a read would;
/// within `setup.prebuild`), then posts `posts_per_author` from every author at once and
/// times the outbox until it is empty.
pub async fn fanout(
    client: &Arc<Client>,
    authors: &[Driver],
    setup: FanoutSetup<'_>,
    servers: &ServerSet,
    db: &mut PgConnection,
    run: u64,
) -> anyhow::Result<FanoutFigures> {
    let mut figures = FanoutFigures {
        authors: authors.len(),
        posts: authors.len() * setup.posts_per_author,
        ..FanoutFigures::default()
    };
    let author_ids: Vec<Uuid> = authors.iter().map(|a| a.id).collect();
    let followers: Vec<Uuid> =
        sqlx::query_scalar("SELECT DISTINCT follower_id FROM follows WHERE followee_id = ANY($1)")
            .bind(&author_ids)
            .fetch_all(&mut *db)
            .await?;
    figures.follower_timelines = followers.len();
    let t = Instant::now();
    let (before, now) = prebuild(&setup, &followers).await?;
    figures.built_before = before;
    figures.built_now = now;
    figures.prebuild_seconds = t.elapsed().as_secs_f64();
    wait_for_empty_outbox(db).await?;
    figures.authors_followers = sqlx::query_scalar(
        "SELECT u.followers_count FROM unnest($1::uuid[]) WITH ORDINALITY a(id, n)
         JOIN users u ON u.id = a.id ORDER BY a.n",
    )
    .bind(&author_ids)
    .fetch_all(&mut *db)
    .await?;
    // One unmeasured post per author first: then every follower's timeline exists (built,
    // or made by this fan-out), as an active network's do.
    let warmup =
        futures::future::join_all(post_each(client, authors, 1, &format!("{run}-w"))).await;
    for outcomes in warmup {
        for outcome in outcomes? {
            if let Err(why) = outcome {
                *figures.errors.entry(format!("warm-up {why}")).or_default() += 1;
            }
        }
    }
    wait_for_empty_outbox(db).await?;
    let mut redis = Redis::connect(setup.redis_url).await?;
    let zadds = |calls: &[(String, u64)]| {
        calls
            .iter()
            .find(|(c, _)| c == "zadd")
            .map_or(0, |(_, n)| *n)
    };
    let zadd_before = zadds(&redis.command_calls().await?);
    let ticks = crate::sampling::procfs::clock_ticks_per_sec();
    let cpu_before = servers.cpu();
    let started = Instant::now();
    let tasks = post_each(client, authors, setup.posts_per_author, &run.to_string());
    let posting = futures::future::join_all(tasks);
    tokio::pin!(posting);
    let mut posted = None;
    let until = started + DRAIN_TIMEOUT;
    loop {
        tokio::select! {
            done = &mut posting, if posted.is_none() => posted = Some(done),
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
        let left = outbox(db).await?;
        figures
            .backlog
            .push((started.elapsed().as_secs_f64(), left));
        if posted.is_some() && left == 0 {
            figures.drained = true;
            break;
        }
        if Instant::now() > until {
            break;
        }
    }
    figures.seconds = started.elapsed().as_secs_f64();
    figures.server_cpu_ms = cpu_before.delta_ms(&servers.cpu(), ticks);
    figures.zadds_counted = zadds(&redis.command_calls().await?).saturating_sub(zadd_before);
    for (k, author) in posted.unwrap_or_default().into_iter().enumerate() {
        let outcomes = author?;
        let followers = figures.authors_followers.get(k).copied().unwrap_or(0);
        for outcome in outcomes {
            match outcome {
                Ok(_) => {
                    figures.posted += 1;
                    figures.inserts_expected += u64::try_from(followers + 1).unwrap_or(0);
                }
                Err(why) => *figures.errors.entry(why).or_default() += 1,
            }
        }
    }
    figures.inserts_per_sec = figures.inserts_expected as f64 / figures.seconds;
    Ok(figures)
}

/// Every author posts `posts` times in a row, all authors at once.
fn post_each(
    client: &Arc<Client>,
    authors: &[Driver],
    posts: usize,
    tag: &str,
) -> Vec<tokio::task::JoinHandle<Vec<Result<H2Answer, String>>>> {
    authors
        .iter()
        .map(|author| {
            let (client, author, tag) = (client.clone(), author.clone(), tag.to_owned());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for p in 0..posts {
                    let body = json!({ "content": format!("yayılım denemesi {tag}-{p}: bugün hava güzel") });
                    outcomes.push(expect(
                        client
                            .call(&author.token, Method::POST, "/v1/posts", Some(&body))
                            .await,
                        "post",
                        &[StatusCode::CREATED],
                    ));
                }
                outcomes
            })
        })
        .collect()
}

/// Rebuilds the timelines of `users` that are not built, until `setup.prebuild` has passed;
/// (built before, built now).
async fn prebuild(setup: &FanoutSetup<'_>, users: &[Uuid]) -> anyhow::Result<(usize, usize)> {
    let mut redis = Redis::connect(setup.redis_url).await?;
    let mut missing = Vec::new();
    for user in users {
        let built = redis
            .command(&["ZSCORE", &timeline_key(*user), "~"])
            .await?;
        if built == Value::Bulk(None) {
            missing.push(*user);
        }
    }
    let before = users.len() - missing.len();
    let redis_client = haberci_backend::redis::connect(setup.redis_url)?;
    let until = Instant::now() + setup.prebuild;
    let next = Arc::new(AtomicUsize::new(0));
    let built = Arc::new(AtomicUsize::new(0));
    let missing = Arc::new(missing);
    let mut tasks = Vec::new();
    for _ in 0..PREBUILD_CONCURRENCY {
        let (next, built, missing) = (next.clone(), built.clone(), missing.clone());
        let (pool, feed, redis_client) =
            (setup.pool.clone(), setup.feed.clone(), redis_client.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(user) = missing.get(i) else { break };
                let Ok(viewer) = haberci_wire::UserId::try_from(*user) else {
                    continue;
                };
                if let Ok(page) = feed.page(&pool, &redis_client, viewer, None, 20).await {
                    if page.source == "rebuilt" {
                        built.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    Ok((before, built.load(Ordering::Relaxed)))
}

const PREBUILD_CONCURRENCY: usize = 4;

/// What a request of the mixed load does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Home,
    Profile,
    Thread,
    Post,
    Like,
    Follow,
}

/// The mix, per 1,000 requests: 95 % reads (home pages, a user's posts, a post's thread),
/// 5 % writes (posts, likes, follows).
pub const MIX: [(Kind, u64); 6] = [
    (Kind::Home, 550),
    (Kind::Profile, 250),
    (Kind::Thread, 150),
    (Kind::Post, 20),
    (Kind::Like, 25),
    (Kind::Follow, 5),
];

/// The kind of request for a draw in `0..1000`.
pub fn kind(draw: u64) -> Kind {
    let mut acc = 0;
    for (kind, share) in MIX {
        acc += share;
        if draw < acc {
            return kind;
        }
    }
    Kind::Home
}

/// One request of the mixed load, fully decided before it is sent.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    pub kind: Kind,
    pub actor: usize,
    pub method: Method,
    pub path: String,
    pub body: Option<serde_json::Value>,
    pub ok: StatusCode,
}

/// What request `i` is: an actor among `drivers`, a user by popularity (node `⌊n·u²⌋`), a
/// post from `posts`.
pub fn plan(
    rng: &mut Rng,
    i: u64,
    run: u64,
    drivers: &[Driver],
    usernames: &[String],
    posts: &[Uuid],
) -> Planned {
    let kind = kind(rng.below(1000));
    let actor = rng.below(drivers.len() as u64) as usize;
    let someone = &usernames[graph::author(rng, usernames.len())];
    let post = posts[rng.below(posts.len() as u64) as usize];
    let (method, path, body, ok) = match kind {
        Kind::Home => (
            Method::GET,
            super::client::HOME_PATH.to_owned(),
            None,
            StatusCode::OK,
        ),
        Kind::Profile => (
            Method::GET,
            format!("/v1/users/{someone}/posts?limit=20"),
            None,
            StatusCode::OK,
        ),
        Kind::Thread => (
            Method::GET,
            format!("/v1/posts/{post}/thread"),
            None,
            StatusCode::OK,
        ),
        Kind::Post => (
            Method::POST,
            "/v1/posts".to_owned(),
            Some(
                json!({ "content": graph::content(rng, i as usize).replace("gönderi", &format!("yük {run}")) }),
            ),
            StatusCode::CREATED,
        ),
        Kind::Like => (
            Method::POST,
            format!("/v1/posts/{post}/like"),
            None,
            StatusCode::OK,
        ),
        Kind::Follow => {
            let mut target = someone.clone();
            if target == drivers[actor].username {
                target = usernames[(drivers[actor].node + 1) % usernames.len()].clone();
            }
            (
                Method::POST,
                format!("/v1/users/{target}/follow"),
                None,
                StatusCode::OK,
            )
        }
    };
    Planned {
        kind,
        actor,
        method,
        path,
        body,
        ok,
    }
}

/// The sustained mixed load.
#[derive(Debug, Default, Serialize)]
pub struct MixedFigures {
    pub rate: f64,
    pub duration_s: f64,
    pub planned: u64,
    pub completed: u64,
    pub achieved_per_sec: f64,
    /// From each request's planned start (so a client or server falling behind counts).
    pub latency: Distribution,
    /// From the moment it was actually sent.
    pub service: Summary,
    pub by_kind: BTreeMap<String, Summary>,
    pub home_sources: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub error_count: u64,
    /// Requests not sent because too many were in flight.
    pub shed: u64,
    pub server_cpu_ms: BTreeMap<String, f64>,
    pub server_cpu_ms_per_request: f64,
    pub client_cpu_ms: f64,
    /// The statements that took the most time meanwhile: (statement, calls, mean ms, total ms).
    pub heaviest: Vec<(String, i64, f64, f64)>,
    /// Per second of the planned schedule: (second, count, p50, p99, max).
    pub per_second: Vec<(u64, u64, f64, f64, f64)>,
    pub samples: Vec<ServerSample>,
}

/// Requests in flight beyond which the load client sheds instead of queueing without end.
const MAX_IN_FLIGHT: usize = 4_000;

struct Done {
    kind: Kind,
    second: u64,
    from_plan: Duration,
    from_send: Duration,
    outcome: Result<Option<String>, String>,
}

/// Whom and what the mixed load acts on.
pub struct Targets {
    pub drivers: Vec<Driver>,
    /// Every node's username.
    pub usernames: Vec<String>,
    /// Posts every driver may see (threads, likes).
    pub posts: Vec<Uuid>,
}

/// `rate` requests per second for `duration`, open loop: request `i` is due at `i / rate`
/// whatever happened to the earlier ones.
pub async fn mixed(
    client: &Arc<Client>,
    targets: Arc<Targets>,
    rate: f64,
    duration: Duration,
    servers: &ServerSet,
    run: u64,
    db: &mut PgConnection,
) -> anyhow::Result<MixedFigures> {
    let stats_before = pgstat::snapshot(db).await?;
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let (tx, mut rx) = mpsc::unbounded_channel::<Done>();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let shed = Arc::new(AtomicUsize::new(0));
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let dispatcher = {
        let (client, in_flight, shed) = (client.clone(), in_flight.clone(), shed.clone());
        tokio::spawn(async move {
            let mut rng = Rng::new(run ^ 0x313D);
            for i in 0..total {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due).await;
                let t = &targets;
                let planned = plan(&mut rng, i, run, &t.drivers, &t.usernames, &t.posts);
                if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                    shed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                in_flight.fetch_add(1, Ordering::Relaxed);
                let (client, tx, in_flight) = (client.clone(), tx.clone(), in_flight.clone());
                let token = targets.drivers[planned.actor].token.clone();
                tokio::spawn(async move {
                    let sent = tokio::time::Instant::now();
                    let answer = client
                        .call(
                            &token,
                            planned.method.clone(),
                            &planned.path,
                            planned.body.as_ref(),
                        )
                        .await;
                    let now = tokio::time::Instant::now();
                    let what = format!("{:?}", planned.kind).to_lowercase();
                    let outcome = expect(answer, &what, &[planned.ok]).map(|a| a.feed_source);
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                    let _ = tx.send(Done {
                        kind: planned.kind,
                        second: (due - start).as_secs(),
                        from_plan: now - due,
                        from_send: now - sent,
                        outcome,
                    });
                });
            }
        })
    };
    let client_before =
        crate::sampling::procfs::sample(std::process::id()).map_or(0, |s| s.cpu_ticks);
    let ticks = crate::sampling::procfs::clock_ticks_per_sec();
    let cpu_before = servers.cpu();
    let mut sampler = Sampler::start(servers);
    let mut every_second = tokio::time::interval(Duration::from_secs(1));
    let (mut all, mut service) = (Latency::new(), Latency::new());
    let mut by_kind: BTreeMap<Kind, Latency> = BTreeMap::new();
    let mut per_second: BTreeMap<u64, Latency> = BTreeMap::new();
    let mut figures = MixedFigures {
        rate,
        duration_s: duration.as_secs_f64(),
        planned: total,
        ..MixedFigures::default()
    };
    let mut dispatcher = Some(dispatcher);
    let started = Instant::now();
    loop {
        tokio::select! {
            done = rx.recv() => {
                let Some(done) = done else { break };
                figures.completed += 1;
                match done.outcome {
                    Ok(source) => {
                        all.record(done.from_plan);
                        service.record(done.from_send);
                        by_kind.entry(done.kind).or_default().record(done.from_plan);
                        per_second.entry(done.second).or_default().record(done.from_plan);
                        if let Some(source) = source {
                            *figures.home_sources.entry(source).or_default() += 1;
                        }
                    }
                    Err(why) => *figures.errors.entry(why).or_default() += 1,
                }
            }
            _ = every_second.tick() => {
                sampler.sample(figures.completed);
                if dispatcher.as_ref().is_some_and(tokio::task::JoinHandle::is_finished) {
                    if let Some(handle) = dispatcher.take() {
                        handle.await?;
                    }
                    // Every sender clone now lives in an in-flight request only.
                }
                if started.elapsed() > duration + Duration::from_secs(30) {
                    break;
                }
            }
        }
        if dispatcher.is_none() && in_flight.load(Ordering::Relaxed) == 0 && rx.is_empty() {
            break;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    figures.achieved_per_sec = figures.completed as f64 / duration.as_secs_f64().min(elapsed);
    figures.server_cpu_ms = cpu_before.delta_ms(&servers.cpu(), ticks);
    figures.server_cpu_ms_per_request =
        figures.server_cpu_ms.values().sum::<f64>() / figures.completed.max(1) as f64;
    let client_after =
        crate::sampling::procfs::sample(std::process::id()).map_or(0, |s| s.cpu_ticks);
    figures.client_cpu_ms =
        client_after.saturating_sub(client_before) as f64 * 1000.0 / ticks as f64;
    figures.latency = Distribution::of(&all);
    figures.service = service.summary();
    figures.by_kind = by_kind
        .iter()
        .map(|(k, h)| (format!("{k:?}").to_lowercase(), h.summary()))
        .collect();
    figures.per_second = per_second
        .iter()
        .map(|(s, h)| {
            let x = h.summary();
            (*s, x.count, x.p50_ms, x.p99_ms, x.max_ms)
        })
        .collect();
    figures.shed = shed.load(Ordering::Relaxed) as u64;
    figures.error_count = figures.errors.values().sum::<u64>() + figures.shed;
    figures.samples = sampler.samples;
    figures.heaviest = pgstat::heaviest(&stats_before, &pgstat::snapshot(db).await?, 8);
    Ok(figures)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_mix_is_95_percent_reads() {
        assert_eq!(MIX.iter().map(|(_, s)| s).sum::<u64>(), 1000);
        let reads: u64 = (0..1000)
            .filter(|&d| matches!(kind(d), Kind::Home | Kind::Profile | Kind::Thread))
            .count() as u64;
        assert_eq!(reads, 950);
        assert_eq!(kind(0), Kind::Home);
        assert_eq!(kind(999), Kind::Follow);
    }

    #[test]
    fn planned_requests_name_real_targets_and_never_follow_oneself() {
        let drivers: Vec<Driver> = (0..3)
            .map(|k| Driver {
                node: k,
                id: Uuid::from_u128(k as u128 + 1),
                username: format!("sbench_{k}"),
                token: "t".into(),
            })
            .collect();
        let usernames: Vec<String> = (0..10).map(graph::username).collect();
        let posts = vec![Uuid::from_u128(77)];
        let mut rng = Rng::new(3);
        let mut kinds = BTreeMap::new();
        for i in 0..5000 {
            let p = plan(&mut rng, i, 1, &drivers, &usernames, &posts);
            *kinds.entry(p.kind).or_insert(0) += 1;
            match p.kind {
                Kind::Follow => {
                    let me = &drivers[p.actor].username;
                    assert!(!p.path.contains(&format!("/{me}/")), "{}", p.path);
                }
                Kind::Thread | Kind::Like => assert!(p.path.contains(&posts[0].to_string())),
                Kind::Post => assert!(p.body.is_some() && p.ok == StatusCode::CREATED),
                _ => assert_eq!(p.method, Method::GET),
            }
        }
        assert_eq!(kinds.len(), 6, "{kinds:?}");
        assert!(kinds[&Kind::Home] > 2500);
    }

    #[test]
    fn a_page_holds_an_id_only_as_its_bytes() {
        assert!(contains(br#"{"posts":[{"id":"abc"}]}"#, "abc"));
        assert!(!contains(b"{}", "abc"));
        assert!(!contains(b"abc", ""));
        assert_eq!(
            timeline_key(Uuid::nil()),
            "tl:{00000000-0000-0000-0000-000000000000}"
        );
    }
}
