//! `db`: the database alone. In a database of its own (created here, dropped at the end
//! unless `--keep`), with the real migrations:
//!
//! 1. **history table**: `--messages` rows (10 million by default) over `--conversations`
//!    conversations, generated inside Postgres (`generate_series`, the `messages` constraints
//!    dropped during the load and added back with their exact definitions, then `ANALYZE`),
//!    bounded by `--generate-timeout`;
//! 2. **inserts**: the worker's insert path — `haberci_backend::messaging::store::commit`, the
//!    very function the worker runs per batch — through PgBouncer at each `--batch-sizes`, from
//!    `--writers` concurrent committers each on its own conversations (as stream shards are);
//!    messages stored per second and commit latency, on top of the big table;
//! 3. **history queries**: `HISTORY_SQL` (`GET /v1/conversations/{id}/messages?before&limit`)
//!    through PgBouncer, on random conversations, newest page and random pages.
//!
//! With `--online-partition` the history table is generated in the layout before the
//! partitioned `messages` (the migrations older than `db::PARTITIONING_MIGRATION`); then the
//! staging migration runs and `partition-messages` (`haberci_backend::partitioning::run`)
//! moves it while `--writers` commit batches of the first `--batch-sizes` all along, and the
//! phases above run on the partitioned table. The report says how long the move took and what
//! the writers' commits saw during it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use haberci_backend::messaging::batch::{SendRequest, Target as SendTarget};
use haberci_backend::messaging::store::{self, SendOutcome};
use haberci_wire::{ClientMsgId, MessageKind, Recipient, SendMessage, SessionId, UserId};
use serde::Serialize;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::report::latency::{Latency, Summary};
use crate::report::plots::Chart;
use crate::report::{self, Machine, bar, command_line};
use crate::sampling::servers::ServerSet;
use crate::target::Target;

#[derive(Debug, Args, Serialize)]
pub struct DbArgs {
    #[command(flatten)]
    pub target: Target,
    /// Postgres itself (not PgBouncer), as a role that may create databases; the bench
    /// database is made and dropped through it.
    #[arg(long, env = "HABERCI_BENCH_DATABASE_URL")]
    #[serde(skip)]
    pub database_url: String,
    /// PgBouncer, as the worker reaches the database (the database name is replaced).
    #[arg(long, env = "HABERCI_BENCH_BOUNCER_URL")]
    #[serde(skip)]
    pub bouncer_url: String,
    /// Rows of the history table.
    #[arg(long, default_value_t = 10_000_000)]
    pub messages: u64,
    /// Conversations they are spread over.
    #[arg(long, default_value_t = 10_000)]
    pub conversations: u64,
    /// Seconds the generation may take (it stops and fails past this).
    #[arg(long, default_value_t = 1800)]
    pub generate_timeout: u64,
    /// Batch sizes of the insert phase (messages per transaction).
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,500")]
    pub batch_sizes: Vec<usize>,
    /// Seconds of inserting per batch size.
    #[arg(long, default_value_t = 10.0)]
    pub insert_seconds: f64,
    /// Concurrent committers (worker consumers).
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// History queries per kind (newest page, random page).
    #[arg(long, default_value_t = 2000)]
    pub queries: usize,
    #[arg(long, default_value_t = 4)]
    pub query_concurrency: usize,
    /// Messages per history page.
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
    /// Keep the database (named after its size) and reuse it next time.
    #[arg(long)]
    pub keep: bool,
    /// Generate the table in the layout before partitioning and move it online (see above).
    #[arg(long, conflicts_with = "keep")]
    pub online_partition: bool,
    /// Writers plan as the API's connections do (`plan_cache_mode = auto`), not as the
    /// worker's (`db::connect_worker_pool`): the comparison of #18's ninth round.
    #[arg(long)]
    pub custom_plans: bool,
    /// Rows per copy statement of the online move.
    #[arg(long, default_value_t = haberci_backend::partitioning::DEFAULT_BATCH_ROWS)]
    pub partition_batch_rows: i64,
}

/// `url` with its database name replaced.
fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let (main, query) = match url.split_once('?') {
        Some((main, query)) => (main, Some(query)),
        None => (url, None),
    };
    let (base, _) = main
        .rsplit_once('/')
        .with_context(|| "a database URL ends with /NAME")?;
    Ok(match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    })
}

#[derive(Debug, Serialize)]
pub struct InsertFigures {
    pub batch_size: usize,
    pub writers: usize,
    pub batches: u64,
    pub stored: u64,
    pub refused: u64,
    pub failed_batches: u64,
    pub seconds: f64,
    pub messages_per_sec: f64,
    pub commit: Summary,
    pub server_cpu_ms: BTreeMap<String, f64>,
    pub server_cpu_ms_per_1000_messages: f64,
}

#[derive(Debug, Serialize)]
pub struct QueryFigures {
    pub kind: &'static str,
    pub queries: u64,
    pub rows: u64,
    pub failed: u64,
    pub queries_per_sec: f64,
    pub latency: Summary,
}

#[derive(Debug, Serialize)]
pub struct DbFigures {
    pub database: String,
    pub messages_in_table: i64,
    pub conversations: u64,
    pub generated_now: bool,
    pub generate_seconds: f64,
    pub table_bytes: i64,
    pub inserts: Vec<InsertFigures>,
    pub queries: Vec<QueryFigures>,
    pub history_plan: String,
    pub partition: Option<PartitionFigures>,
}

/// The online move (`--online-partition`).
#[derive(Debug, Serialize)]
pub struct PartitionFigures {
    pub rows_copied: u64,
    pub batches: u64,
    pub copy_seconds: f64,
    pub check_seconds: f64,
    pub swap_ms: f64,
    pub swap_attempts: u32,
    /// Rows and keys the check found missing and copied.
    pub repaired: u64,
    /// The writers' commits from the start of the move to its end.
    pub during: InsertFigures,
}

impl DbFigures {
    pub fn counts_add_up(&self, args: &DbArgs) -> bool {
        self.partition
            .as_ref()
            .is_none_or(|p| p.rows_copied >= args.messages && p.during.failed_batches == 0)
            && self.messages_in_table >= args.messages as i64
            && self
                .inserts
                .iter()
                .all(|i| i.failed_batches == 0 && i.refused == 0 && i.stored > 0)
            && self.queries.iter().all(|q| q.failed == 0 && q.rows > 0)
    }
}

/// The `messages` constraints dropped for the bulk load, with their definitions.
async fn constraints(conn: &mut PgConnection) -> anyhow::Result<Vec<(String, String)>> {
    Ok(sqlx::query_as::<_, (String, String)>(
        "SELECT conname::text, pg_get_constraintdef(oid)
         FROM pg_constraint WHERE conrelid = 'messages'::regclass
         ORDER BY CASE contype WHEN 'p' THEN 0 WHEN 'u' THEN 1 WHEN 'f' THEN 3 ELSE 2 END, conname",
    )
    .fetch_all(&mut *conn)
    .await?)
}

/// Fills the history table; returns (rows, seconds).
async fn generate(
    conn: &mut PgConnection,
    args: &DbArgs,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(args.generate_timeout);
    let per = args.messages.div_ceil(args.conversations.max(1)) as i64;
    let conversations = args.conversations.max(1) as i64;
    sqlx::query("SET synchronous_commit = off")
        .execute(&mut *conn)
        .await?;
    sqlx::query("SET maintenance_work_mem = '256MB'")
        .execute(&mut *conn)
        .await?;
    let sender = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO users (id, username, email, display_name) VALUES ($1, 'history_sender', 'history@bench.example.com', 'History')",
    )
    .bind(sender)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO conversations (id, kind, name, created_by, last_seq)
         SELECT gen_random_uuid(), 'group', 'history ' || i, $1, $2
         FROM generate_series(1, $3) i",
    )
    .bind(sender)
    .bind(per)
    .bind(conversations)
    .execute(&mut *conn)
    .await?;
    let partitioned = haberci_backend::partitioning::layout(conn).await?
        == haberci_backend::partitioning::Layout::Partitioned;
    let kept = constraints(conn).await?;
    for (name, _) in &kept {
        sqlx::query(&format!("ALTER TABLE messages DROP CONSTRAINT {name}"))
            .execute(&mut *conn)
            .await?;
    }
    let ids: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM conversations WHERE name LIKE 'history %' ORDER BY id")
            .fetch_all(&mut *conn)
            .await?;
    progress.set_length(ids.len() as u64 * per as u64);
    // Chunks of conversations: progress, and a deadline checked between statements.
    let chunk = (200_000 / per.max(1)).max(1) as usize;
    for part in ids.chunks(chunk) {
        if Instant::now() > deadline {
            bail!(
                "generating the history table took longer than --generate-timeout {}s",
                args.generate_timeout
            );
        }
        sqlx::query(
            "INSERT INTO messages (conversation_id, seq, id, sender_id, client_msg_id, type, content, created_at)
             SELECT c, s, gen_random_uuid(), $2, gen_random_uuid(), 'text',
                    'history message ' || s || ' ' || repeat('x', 80),
                    now() - make_interval(secs => ($3 - s))
             FROM unnest($1::uuid[]) c CROSS JOIN generate_series(1, $3) s",
        )
        .bind(part)
        .bind(sender)
        .bind(per)
        .execute(&mut *conn)
        .await?;
        progress.inc(part.len() as u64 * per as u64);
    }
    if partitioned {
        // The idempotency keys, as the worker writes them (the old layout keeps them in its
        // unique constraint; the online move copies them).
        sqlx::query(
            "INSERT INTO message_keys (sender_id, client_msg_id, conversation_id, seq)
             SELECT sender_id, client_msg_id, conversation_id, seq FROM messages",
        )
        .execute(&mut *conn)
        .await?;
    }
    progress.set_message("constraints and indexes");
    for (name, definition) in &kept {
        sqlx::query(&format!(
            "ALTER TABLE messages ADD CONSTRAINT {name} {definition}"
        ))
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query("ANALYZE messages").execute(&mut *conn).await?;
    sqlx::query("ANALYZE conversations")
        .execute(&mut *conn)
        .await?;
    sqlx::query("CREATE TABLE bench_meta (messages bigint NOT NULL)")
        .execute(&mut *conn)
        .await?;
    sqlx::query("INSERT INTO bench_meta VALUES ($1)")
        .bind(args.messages as i64)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Users for the insert phase: `writers × pairs` pairs, each writer owning its pairs.
async fn insert_users(conn: &mut PgConnection, n: usize) -> anyhow::Result<Vec<UserId>> {
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
    let names: Vec<String> = ids
        .iter()
        .map(|id| format!("w{}", &id.simple().to_string()[..24]))
        .collect();
    let emails: Vec<String> = names
        .iter()
        .map(|n| format!("{n}@bench.example.com"))
        .collect();
    sqlx::query(
        "INSERT INTO users (id, username, email, display_name)
         SELECT * , 'Writer' FROM unnest($1::uuid[], $2::text[], $3::text[])",
    )
    .bind(&ids)
    .bind(&names)
    .bind(&emails)
    .execute(&mut *conn)
    .await?;
    Ok(ids.into_iter().filter_map(UserId::new).collect())
}

const PAIRS_PER_WRITER: usize = 50;

/// When an insert phase ends.
#[derive(Clone)]
enum Until {
    Time(Instant),
    Flag(Arc<AtomicBool>),
}

impl Until {
    fn reached(&self) -> bool {
        match self {
            Until::Time(at) => Instant::now() >= *at,
            Until::Flag(flag) => flag.load(Ordering::Acquire),
        }
    }
}

async fn insert_phase(
    pool: &PgPool,
    users: &[UserId],
    args: &DbArgs,
    batch: usize,
    until: Until,
    servers: &ServerSet,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<InsertFigures> {
    let ticks = crate::sampling::procfs::clock_ticks_per_sec();
    let cpu_before = servers.cpu();
    let stored = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..args.writers.max(1) {
        let pairs: Vec<(UserId, UserId)> = (0..PAIRS_PER_WRITER)
            .map(|p| {
                let i = 2 * (w * PAIRS_PER_WRITER + p);
                (users[i], users[i + 1])
            })
            .collect();
        let (pool, stored, progress, until) = (
            pool.clone(),
            stored.clone(),
            progress.clone(),
            until.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut commit = Latency::new();
            let (mut batches, mut refused, mut failed) = (0u64, 0u64, 0u64);
            let mut next = 0usize;
            while !until.reached() {
                let sends: Vec<SendRequest> = (0..batch)
                    .map(|_| {
                        let (a, b) = pairs[next % pairs.len()];
                        next += 1;
                        send_request(a, b, next)
                    })
                    .collect();
                let t0 = Instant::now();
                match store::commit(&pool, &sends, &[]).await {
                    Ok(done) => {
                        commit.record(t0.elapsed());
                        batches += 1;
                        let ok = done
                            .sends
                            .iter()
                            .filter(|s| matches!(s, SendOutcome::Stored(_)))
                            .count() as u64;
                        refused += done.sends.len() as u64 - ok;
                        stored.fetch_add(ok, Ordering::Relaxed);
                        progress.inc(ok);
                    }
                    Err(_) => failed += 1,
                }
            }
            (commit, batches, refused, failed)
        }));
    }
    let mut commit = Latency::new();
    let (mut batches, mut refused, mut failed) = (0, 0, 0);
    for task in tasks {
        let (c, b, r, f) = task.await?;
        commit.merge(&c.buckets());
        batches += b;
        refused += r;
        failed += f;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_before.delta_ms(&servers.cpu(), ticks);
    let stored = stored.load(Ordering::Relaxed);
    let cpu_total: f64 = cpu.values().sum();
    Ok(InsertFigures {
        batch_size: batch,
        writers: args.writers,
        batches,
        stored,
        refused,
        failed_batches: failed,
        seconds,
        messages_per_sec: stored as f64 / seconds,
        commit: commit.summary(),
        server_cpu_ms_per_1000_messages: if stored == 0 {
            0.0
        } else {
            cpu_total * 1000.0 / stored as f64
        },
        server_cpu_ms: cpu,
    })
}

fn send_request(sender: UserId, recipient: UserId, n: usize) -> SendRequest {
    let id = |u: Uuid| ClientMsgId::new(u);
    SendRequest {
        sender,
        session: SessionId::new(Uuid::now_v7()).unwrap_or_else(|| unreachable!("v7 is never nil")),
        conversation: haberci_seam::streams::direct_conversation(sender, recipient),
        target: SendTarget::Direct(recipient),
        send: SendMessage {
            client_msg_id: id(Uuid::now_v7()).unwrap_or_else(|| unreachable!("v7 is never nil")),
            recipient: Recipient::User(recipient),
            kind: MessageKind::Text,
            content: format!("bench insert {n} {}", "x".repeat(80)),
            media: None,
        },
    }
}

/// A small, fast, seedable generator (xorshift): query parameters need no crypto.
struct Pick(u64);

impl Pick {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

async fn query_phase(
    pool: &PgPool,
    conversations: &[Uuid],
    per: i64,
    args: &DbArgs,
    newest: bool,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<QueryFigures> {
    let started = Instant::now();
    let per_task = args.queries.div_ceil(args.query_concurrency.max(1));
    let conversations = conversations
        .iter()
        .map(|&c| haberci_wire::ConversationId::try_from(c))
        .collect::<Result<Vec<_>, _>>()?;
    let conversations = Arc::new(conversations);
    let mut tasks = Vec::new();
    for t in 0..args.query_concurrency.max(1) {
        let (pool, conversations, progress) =
            (pool.clone(), conversations.clone(), progress.clone());
        let limit = args.limit;
        tasks.push(tokio::spawn(async move {
            let mut pick = Pick(0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1));
            let mut h = Latency::new();
            let (mut rows, mut failed) = (0u64, 0u64);
            for _ in 0..per_task {
                let c = conversations[pick.below(conversations.len() as u64) as usize];
                let before = if newest {
                    per + 1
                } else {
                    limit + 1 + pick.below((per - limit).max(1) as u64) as i64
                };
                let t0 = Instant::now();
                match haberci_backend::conversations::store::history(&pool, c, 0, before, limit)
                    .await
                {
                    Ok(page) => {
                        h.record(t0.elapsed());
                        rows += page.len() as u64;
                    }
                    Err(_) => failed += 1,
                }
                progress.inc(1);
            }
            (h, rows, failed)
        }));
    }
    let mut latency = Latency::new();
    let (mut rows, mut failed) = (0, 0);
    for task in tasks {
        let (h, r, f) = task.await?;
        latency.merge(&h.buckets());
        rows += r;
        failed += f;
    }
    let queries = latency.len();
    Ok(QueryFigures {
        kind: if newest { "newest page" } else { "random page" },
        queries,
        rows,
        failed,
        queries_per_sec: queries as f64 / started.elapsed().as_secs_f64(),
        latency: latency.summary(),
    })
}

pub async fn db(args: DbArgs) -> anyhow::Result<bool> {
    if args.conversations == 0 || args.messages < args.conversations {
        bail!("--messages must be at least --conversations");
    }
    if args.batch_sizes.is_empty() || args.batch_sizes.contains(&0) {
        bail!("--batch-sizes must be positive");
    }
    let target = &args.target;
    let started_at = report::now();
    let load_before = crate::sampling::procfs::load_average();
    let servers = ServerSet::discover(&target.dev_dir, &target.server_pids)?;
    let multi = report::progress();
    let database = if args.online_partition {
        format!("haberci_bench_online_{}", Uuid::new_v4().simple())
    } else if args.keep {
        format!("haberci_bench_history_{}", args.messages)
    } else {
        format!("haberci_bench_{}", Uuid::new_v4().simple())
    };
    let mut admin = PgConnection::connect(&args.database_url)
        .await
        .context("cannot connect to Postgres (--database-url)")?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)")
            .bind(&database)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        sqlx::query(&format!("CREATE DATABASE {database}"))
            .execute(&mut admin)
            .await?;
    }
    let direct = with_database(&args.database_url, &database)?;
    let bouncer = with_database(&args.bouncer_url, &database)?;
    let outcome = run(&args, &database, &direct, &bouncer, &servers, &multi).await;
    if !args.keep {
        // FORCE: PgBouncer may still hold server connections to it.
        let drop = sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
            .execute(&mut admin)
            .await;
        if let Err(err) = drop {
            eprintln!("haberci-bench: could not drop {database}: {err}");
        }
    }
    let _ = admin.close().await;
    let figures = outcome?;
    let ok = figures.counts_add_up(&args);
    let machine = Machine::now(load_before, 1);
    let md = markdown(&args, &figures, &machine);
    let charts = vec![(
        "inserts",
        Chart::new(
            "worker insert path through PgBouncer",
            "messages per transaction",
            "messages stored per second",
        )
        .line(
            "messages/s",
            figures
                .inserts
                .iter()
                .map(|i| (i.batch_size as f64, i.messages_per_sec))
                .collect(),
        ),
    )];
    report::finish(
        target,
        &report::Envelope {
            scenario: "db",
            command: command_line(),
            started_at,
            machine,
            settings: &args,
            servers: servers.processes(),
            setup: crate::users::SetupStats::default(),
            figures: &figures,
        },
        md,
        charts,
        ok,
    )
}

async fn run(
    args: &DbArgs,
    database: &str,
    direct: &str,
    bouncer: &str,
    servers: &ServerSet,
    multi: &indicatif::MultiProgress,
) -> anyhow::Result<DbFigures> {
    let mut conn = PgConnection::connect(direct).await?;
    if args.online_partition {
        haberci_backend::db::migrator_before(haberci_backend::db::PARTITIONING_MIGRATION)
            .run(&mut conn)
            .await
            .with_context(|| format!("migrating {database} to the layout before partitioning"))?;
    } else {
        haberci_backend::db::migrate(direct)
            .await
            .with_context(|| format!("migrating {database}"))?;
    }
    let complete: Option<i64> = sqlx::query_scalar(
        "SELECT messages FROM bench_meta WHERE to_regclass('bench_meta') IS NOT NULL",
    )
    .fetch_optional(&mut conn)
    .await
    .unwrap_or(None);
    let t_gen = Instant::now();
    let generated_now = complete != Some(args.messages as i64);
    if generated_now {
        if complete.is_some() || args.keep {
            // A kept database from an interrupted or different run: start it over.
            sqlx::query("TRUNCATE messages, members, conversations, users CASCADE")
                .execute(&mut conn)
                .await?;
            sqlx::query("DROP TABLE IF EXISTS bench_meta")
                .execute(&mut conn)
                .await?;
        }
        let progress = bar(multi, args.messages, "generate");
        generate(&mut conn, args, &progress).await?;
        progress.finish_with_message("generated");
    }
    let generate_seconds = t_gen.elapsed().as_secs_f64();
    let conversations: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM conversations WHERE name LIKE 'history %'")
            .fetch_all(&mut conn)
            .await?;
    let per = args.messages.div_ceil(args.conversations) as i64;
    let pool = haberci_backend::db::connect_pool(
        bouncer,
        (args.writers.max(args.query_concurrency) + 2) as u32,
    )?;
    let users = insert_users(&mut conn, 2 * PAIRS_PER_WRITER * args.writers.max(1)).await?;
    let partition = if args.online_partition {
        Some(move_online(direct, &pool, &users, args, servers, multi).await?)
    } else {
        None
    };
    // The writers connect as the worker does.
    let writers = if args.custom_plans {
        pool.clone()
    } else {
        haberci_backend::db::connect_worker_pool(bouncer, (args.writers + 2) as u32)?
    };
    let mut inserts = Vec::new();
    for &batch in &args.batch_sizes {
        let progress = bar(multi, 0, &format!("batch {batch}"));
        let until = Until::Time(Instant::now() + Duration::from_secs_f64(args.insert_seconds));
        let figures =
            insert_phase(&writers, &users, args, batch, until, servers, &progress).await?;
        progress.finish_with_message(format!("{:.0} messages/s", figures.messages_per_sec));
        inserts.push(figures);
    }
    let mut queries = Vec::new();
    for newest in [true, false] {
        let progress = bar(multi, args.queries as u64, "history");
        queries.push(query_phase(&pool, &conversations, per, args, newest, &progress).await?);
        progress.finish();
    }
    let plan: Vec<String> = sqlx::query_scalar(&format!(
        "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) {}",
        haberci_backend::conversations::store::HISTORY_SQL
            .replace(
                "$1",
                &format!(
                    "'{}'::uuid",
                    conversations.first().copied().unwrap_or_default()
                )
            )
            .replace("$2", "0")
            .replace("$3", &(per / 2).to_string())
            .replace("$4", &args.limit.to_string())
    ))
    .fetch_all(&mut conn)
    .await?;
    let messages_in_table: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM messages m JOIN conversations c ON c.id = m.conversation_id
         WHERE c.name LIKE 'history %'",
    )
    .fetch_one(&mut conn)
    .await?;
    // A partitioned table's own size is zero: its partitions hold the rows.
    let table_bytes: i64 = sqlx::query_scalar(
        "SELECT sum(pg_total_relation_size(relid))::bigint FROM pg_partition_tree('messages')",
    )
    .fetch_one(&mut conn)
    .await?;
    writers.close().await;
    pool.close().await;
    let _ = conn.close().await;
    Ok(DbFigures {
        database: database.into(),
        messages_in_table,
        conversations: args.conversations,
        generated_now,
        generate_seconds,
        table_bytes,
        inserts,
        queries,
        history_plan: plan.join("\n"),
        partition,
    })
}

/// `--online-partition`: the staging migration, then the move, with writers committing until
/// it is done.
async fn move_online(
    direct: &str,
    pool: &PgPool,
    users: &[UserId],
    args: &DbArgs,
    servers: &ServerSet,
    multi: &indicatif::MultiProgress,
) -> anyhow::Result<PartitionFigures> {
    // The staging migration first: the writers run this release's code, which needs the
    // tables it creates.
    haberci_backend::db::migrate(direct)
        .await
        .context("the staging migration")?;
    let done = Arc::new(AtomicBool::new(false));
    let progress = bar(multi, 0, "writes during the move");
    let batch = args.batch_sizes.first().copied().unwrap_or(1);
    let writers = insert_phase(
        pool,
        users,
        args,
        batch,
        Until::Flag(done.clone()),
        servers,
        &progress,
    );
    let moved = async {
        let moved = haberci_backend::partitioning::run(direct, args.partition_batch_rows).await;
        done.store(true, Ordering::Release);
        moved
    };
    let (during, report) = tokio::join!(writers, moved);
    let (during, report) = (during?, report.context("the online move")?);
    progress.finish_with_message(format!("{} stored", during.stored));
    Ok(PartitionFigures {
        rows_copied: report.rows,
        batches: report.batches,
        copy_seconds: report.copy.as_secs_f64(),
        check_seconds: report.check.as_secs_f64(),
        swap_ms: report.swap.as_secs_f64() * 1000.0,
        swap_attempts: report.swap_attempts,
        repaired: report.repaired,
        during,
    })
}

fn markdown(args: &DbArgs, f: &DbFigures, machine: &Machine) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### db: {} messages over {} conversations ({:.1} GiB with indexes), {} writer(s)\n",
        f.messages_in_table,
        f.conversations,
        f.table_bytes as f64 / (1u64 << 30) as f64,
        args.writers
    );
    let _ = writeln!(
        md,
        "{}; history table {} in {:.0} s\n",
        machine.line(),
        if f.generated_now {
            "generated"
        } else {
            "reused"
        },
        f.generate_seconds
    );
    let _ = writeln!(
        md,
        "Worker insert path (`messaging::store::commit`) through PgBouncer:\n\n| batch | messages/s | commits | commit p50 | p99 | max | server CPU per 1,000 messages | refused / failed batches |\n|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for i in &f.inserts {
        let _ = writeln!(
            md,
            "| {} | **{:.0}** | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.1} ms | {} / {} |",
            i.batch_size,
            i.messages_per_sec,
            i.batches,
            i.commit.p50_ms,
            i.commit.p99_ms,
            i.commit.max_ms,
            i.server_cpu_ms_per_1000_messages,
            i.refused,
            i.failed_batches
        );
    }
    let _ = writeln!(
        md,
        "\nHistory page (`HISTORY_SQL`, limit {}) through PgBouncer, {} at a time:\n\n| page | queries/s | p50 | p90 | p99 | p99.9 | max | failed |\n|---|---:|---:|---:|---:|---:|---:|---:|",
        args.limit, args.query_concurrency
    );
    for q in &f.queries {
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.2} | {:.2} | **{:.2}** | {:.2} | {:.2} | {} |",
            q.kind,
            q.queries_per_sec,
            q.latency.p50_ms,
            q.latency.p90_ms,
            q.latency.p99_ms,
            q.latency.p999_ms,
            q.latency.max_ms,
            q.failed
        );
    }
    let _ = writeln!(md, "\n```\n{}\n```", f.history_plan);
    if let Some(p) = &f.partition {
        let d = &p.during;
        let _ = writeln!(
            md,
            "\nOnline move to the partitioned table (`partition-messages`, {} rows per batch): {} rows copied in {} batches in {:.1} s, checked in {:.1} s ({} rows and keys repaired), swapped in {:.1} ms ({} attempt(s)). Meanwhile {} writer(s) committed batches of {}: {} messages in {:.1} s ({:.0}/s), commit p50 {:.2} ms, p99 {:.2} ms, max **{:.1} ms**, {} failed batches.",
            args.partition_batch_rows,
            p.rows_copied,
            p.batches,
            p.copy_seconds,
            p.check_seconds,
            p.repaired,
            p.swap_ms,
            p.swap_attempts,
            d.writers,
            d.batch_size,
            d.stored,
            d.seconds,
            d.messages_per_sec,
            d.commit.p50_ms,
            d.commit.p99_ms,
            d.commit.max_ms,
            d.failed_batches
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://u:p@127.0.0.1:5432/haberci", "x").ok(),
            Some("postgres://u:p@127.0.0.1:5432/x".into())
        );
        assert_eq!(
            with_database("postgres://u:p@h:1/db?sslmode=disable", "x").ok(),
            Some("postgres://u:p@h:1/x?sslmode=disable".into())
        );
    }

    #[test]
    fn picks_stay_in_range_and_vary() {
        let mut p = Pick(42);
        let picks: Vec<u64> = (0..1000).map(|_| p.below(10)).collect();
        assert!(picks.iter().all(|x| *x < 10));
        assert!((0..10).all(|v| picks.contains(&v)));
    }
}
