//! `social` (#15): the home feed and the social API on a generated network.
//!
//! Data: `--users` accounts with a power-law follow graph (a few accounts followed by more
//! than half of everyone, whose posts the feed merges at read time; everyone else fanned out
//! on write) and `--posts` posts, generated straight into the dev database the stack uses
//! (`data`, `graph`), once. The `--drivers` users that requests are sent as are registered
//! through the API like every bench user (`users::Pool`, their own cache file) and take slots
//! of the same graph: the celebrities, the largest fanned-out authors, and readers spread over
//! every popularity.
//!
//! Measured through the gateway over HTTP/2 (`client`), in this order (`phases`):
//!
//! 1. `warm`: home pages (limit 20, hydrated) read a second time, from the Redis timeline;
//! 2. `statements`: Postgres statements per warm page (`pg_stat_statements`, `pgstat`);
//! 3. `cold`: home pages after deleting the reader's `tl:{user}`, so rebuilt from Postgres;
//!    the plans of the rebuild and of the page's statement for one reader;
//! 4. `visibility`: a celebrity posts; time from its 201 to a follower's first page with it;
//! 5. `fanout`: the largest fanned-out authors post together; timeline inserts per second
//!    until the worker has emptied the outbox;
//! 6. `mixed`: 95 % reads, 5 % writes at `--rate` requests/s for `--duration`, open loop.

pub mod client;
pub mod data;
pub mod graph;
pub mod phases;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde::Serialize;
use sqlx::{Connection, PgConnection};

use self::client::{Client, Driver};
use self::data::{DataFigures, Shape};
use self::graph::{Layout, Role};
use self::phases::{
    FanoutFigures, FanoutSetup, MixedFigures, Plans, ReadFigures, StatementFigures, Targets,
    VisibilityFigures,
};
use crate::api::ApiTarget;
use crate::report::charts::cpu_chart;
use crate::report::plots::Chart;
use crate::report::{self, Machine, bar, command_line, run_id};
use crate::sampling::servers::ServerSet;
use crate::target::{Target, ca_store};
use crate::users::{Pool, SetupStats};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Warm,
    Statements,
    Cold,
    Visibility,
    Fanout,
    Mixed,
}

#[derive(Debug, Args, Serialize)]
pub struct SocialArgs {
    #[command(flatten)]
    pub target: Target,
    /// Postgres itself (not PgBouncer): the dev database, where the data is generated and
    /// `pg_stat_statements` read.
    #[arg(long, env = "HABERCI_BENCH_DATABASE_URL")]
    #[serde(skip)]
    pub database_url: String,
    /// PgBouncer, as the API reaches the database (the fan-out phase rebuilds timelines
    /// through the backend's own feed code).
    #[arg(long, env = "HABERCI_BENCH_BOUNCER_URL")]
    #[serde(skip)]
    pub bouncer_url: String,
    /// The stack's Redis.
    #[arg(
        long,
        env = "HABERCI_BENCH_REDIS_URL",
        default_value = "redis://127.0.0.1:56379"
    )]
    #[serde(skip)]
    pub redis_url: String,
    /// Accounts in the graph (the driven users among them).
    #[arg(long, default_value_t = 100_000)]
    pub users: usize,
    /// Generated posts.
    #[arg(long, default_value_t = 1_000_000)]
    pub posts: usize,
    /// Registered users the requests are sent as (argon2id: ≈ 50 registrations/s, once).
    #[arg(long, default_value_t = 300)]
    pub drivers: usize,
    /// Accounts followed by 52–80 % of the users (their posts merged at read time).
    #[arg(long, default_value_t = 5)]
    pub celebrities: usize,
    /// The largest fanned-out accounts, which post in the fan-out phase.
    #[arg(long, default_value_t = 2)]
    pub fanout_authors: usize,
    /// The API's and worker's `HABERCI_FEED_FANOUT_LIMIT`.
    #[arg(long, default_value_t = 10_000)]
    pub fanout_limit: usize,
    /// The API's and worker's `HABERCI_FEED_TIMELINE_CAP`.
    #[arg(long, default_value_t = 800)]
    pub timeline_cap: usize,
    #[arg(long, default_value_t = 15)]
    pub seed: u64,
    /// Seconds the generation may take.
    #[arg(long, default_value_t = 1800)]
    pub generate_timeout: u64,
    /// Which phases to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "warm,statements,cold,visibility,fanout,mixed"
    )]
    pub phases: Vec<Phase>,
    /// Warm and cold: pages measured, and pages in flight.
    #[arg(long, default_value_t = 3000)]
    pub warm_reads: usize,
    #[arg(long, default_value_t = 600)]
    pub cold_reads: usize,
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Statements: warm pages read one by one, and the idle window subtracted.
    #[arg(long, default_value_t = 500)]
    pub statement_pages: usize,
    #[arg(long, default_value_t = 5.0)]
    pub idle_seconds: f64,
    /// Visibility: celebrity posts watched.
    #[arg(long, default_value_t = 10)]
    pub visibility_trials: usize,
    /// Fan-out: posts per author, and seconds spent building the followers' timelines
    /// beforehand.
    #[arg(long, default_value_t = 20)]
    pub fanout_posts: usize,
    #[arg(long, default_value_t = 60)]
    pub prebuild_seconds: u64,
    /// Mixed load: requests per second, and seconds.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// First run the mixed load at this lower rate too (for `--baseline-duration` seconds):
    /// what the machine sustains, beside the floor's rate.
    #[arg(long)]
    pub baseline_rate: Option<f64>,
    #[arg(long, default_value_t = 30.0)]
    pub baseline_duration: f64,
    /// HTTP/2 connections to the gateway, shared by all requests.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// The driven users' cache (default: DEV_DIR/bench/social-users.json).
    #[arg(long)]
    pub pool_file: Option<PathBuf>,
}

/// A floor of issue #15 and where the run stands.
#[derive(Debug, Serialize)]
pub struct Floor {
    pub what: &'static str,
    pub figure: f64,
    pub floor: f64,
    pub unit: &'static str,
    /// `true`: the figure must be at most the floor; `false`: at least.
    pub at_most: bool,
    pub met: bool,
}

impl Floor {
    fn new(
        what: &'static str,
        figure: f64,
        floor: f64,
        unit: &'static str,
        at_most: bool,
    ) -> Floor {
        let met = if at_most {
            figure <= floor
        } else {
            figure >= floor
        };
        Floor {
            what,
            figure,
            floor,
            unit,
            at_most,
            met,
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct SocialFigures {
    pub data: DataFigures,
    /// `HABERCI_RATE_*` and `HABERCI_FEED_*` of the running API (from /proc).
    pub api_settings: BTreeMap<String, String>,
    pub drivers: usize,
    pub readers: usize,
    pub warm: Option<ReadFigures>,
    pub statements: Option<StatementFigures>,
    pub cold: Option<ReadFigures>,
    pub plans: Option<Plans>,
    pub visibility: Option<VisibilityFigures>,
    pub fanout: Option<FanoutFigures>,
    pub mixed: Option<MixedFigures>,
    /// The same load at `--baseline-rate`, run before it.
    pub baseline: Option<MixedFigures>,
    /// Users whose count columns differ from their rows, after the run.
    pub count_mismatches: i64,
    pub floors: Vec<Floor>,
}

impl SocialFigures {
    pub fn counts_add_up(&self) -> bool {
        let reads_clean = [&self.warm, &self.cold]
            .iter()
            .all(|r| r.as_ref().is_none_or(|r| r.errors.is_empty()));
        reads_clean
            && self.count_mismatches == 0
            && self.statements.as_ref().is_none_or(|s| s.errors.is_empty())
            && self.visibility.as_ref().is_none_or(|v| v.seen == v.trials)
            && self
                .fanout
                .as_ref()
                .is_none_or(|f| f.drained && f.errors.is_empty())
            && self.mixed.as_ref().is_none_or(|m| m.error_count == 0)
            && self.baseline.as_ref().is_none_or(|m| m.error_count == 0)
    }

    fn floors(&self) -> Vec<Floor> {
        let mut floors = Vec::new();
        if let Some(w) = &self.warm {
            floors.push(Floor::new(
                "home page, warm: p99",
                w.latency.summary.p99_ms,
                15.0,
                "ms",
                true,
            ));
        }
        if let Some(c) = &self.cold {
            floors.push(Floor::new(
                "home page, cold (rebuilt): p99",
                c.latency.summary.p99_ms,
                80.0,
                "ms",
                true,
            ));
        }
        if let Some(m) = &self.mixed {
            floors.push(Floor::new(
                "mixed load: p99",
                m.latency.summary.p99_ms,
                50.0,
                "ms",
                true,
            ));
            floors.push(Floor::new(
                "mixed load: errors",
                m.error_count as f64,
                0.0,
                "",
                true,
            ));
        }
        if let Some(f) = &self.fanout {
            floors.push(Floor::new(
                "fan-out: timeline inserts/s",
                f.inserts_per_sec,
                100_000.0,
                "/s",
                false,
            ));
        }
        if let Some(v) = &self.visibility {
            let worst = if v.seen == v.trials {
                v.latency.summary.max_ms
            } else {
                f64::INFINITY
            };
            floors.push(Floor::new(
                "celebrity post visible to a follower: max",
                worst,
                1000.0,
                "ms",
                true,
            ));
        }
        if let Some(s) = &self.statements {
            floors.push(Floor::new(
                "Postgres statements per warm page",
                s.per_page,
                2.0,
                "",
                true,
            ));
        }
        floors
    }
}

/// `HABERCI_RATE_*` and `HABERCI_FEED_*` from a process's `environ` (NUL-separated): what the
/// running API was started with. Nothing else is kept (the environment holds secrets).
pub fn feed_and_rate_settings(environ: &[u8]) -> BTreeMap<String, String> {
    environ
        .split(|b| *b == 0)
        .filter_map(|entry| {
            let text = std::str::from_utf8(entry).ok()?;
            let (key, value) = text.split_once('=')?;
            (key.starts_with("HABERCI_RATE_") || key.starts_with("HABERCI_FEED_"))
                .then(|| (key.to_owned(), value.to_owned()))
        })
        .collect()
}

/// Lowers this process's priority (every thread: Linux keeps a nice value per thread) to the
/// load clients' (`HABERCI_BENCH_CLIENT_NICE`), so the servers get the cores first.
fn nice_self() {
    let nice = crate::load::coordinator::client_nice();
    if nice == 0 {
        return;
    }
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    let tids: Vec<String> = tasks
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    let _ = std::process::Command::new("renice")
        .arg("-n")
        .arg(nice.to_string())
        .arg("-p")
        .args(&tids)
        .stdout(std::process::Stdio::null())
        .status();
}

pub async fn social(args: SocialArgs) -> anyhow::Result<bool> {
    if args.rate <= 0.0 || args.duration <= 0.0 || args.concurrency == 0 {
        bail!("--rate, --duration and --concurrency must be positive");
    }
    let target = &args.target;
    let started_at = report::now();
    let load_before = crate::sampling::procfs::load_average();
    let servers = ServerSet::discover(&target.dev_dir, &target.server_pids)?;
    let multi = report::progress();
    let (prepared, mut db) = prepare(&args, &multi).await?;
    nice_self();
    let figures = measure(&args, &prepared, &servers, &mut db).await?;
    let _ = db.close().await;
    let ok = figures.counts_add_up();
    let machine = Machine::now(load_before, 1);
    let md = markdown(&args, &figures, &machine, &prepared.setup);
    let charts = charts(&figures);
    report::finish(
        target,
        &report::Envelope {
            scenario: "social",
            command: command_line(),
            started_at,
            machine,
            settings: &args,
            servers: servers.processes(),
            setup: prepared.setup.clone(),
            figures: &figures,
        },
        md,
        charts,
        ok,
    )
}

/// What the phases start from: the graph in the database and the driven users with tokens.
struct Prepared {
    api: ApiTarget,
    sources: Vec<std::net::IpAddr>,
    graph: data::Graph,
    data: DataFigures,
    drivers: Vec<Driver>,
    setup: SetupStats,
}

/// Registers the driven users (they exist before the graph that includes them), makes or
/// reuses the data, and gives the drivers tokens valid for the rest of the run.
async fn prepare(
    args: &SocialArgs,
    multi: &indicatif::MultiProgress,
) -> anyhow::Result<(Prepared, PgConnection)> {
    let target = &args.target;
    let layout = Layout::new(
        args.users,
        args.celebrities,
        args.fanout_authors,
        args.fanout_limit,
        args.drivers,
    )?;
    // The driven users exist before the graph that includes them.
    let api = ApiTarget::of(target, ca_store(target)?).await?;
    let pool_file = args
        .pool_file
        .clone()
        .unwrap_or_else(|| target.dev_dir.join("bench/social-users.json"));
    let mut pool = Pool::open(&pool_file, &target.api)?;
    let sources = api.sources(target.source_addresses);
    let progress = bar(multi, args.drivers as u64, "users");
    let registered = pool
        .prepare(
            &api,
            args.drivers,
            Duration::ZERO,
            &sources,
            target.setup_concurrency,
            &progress,
        )
        .await?;
    progress.finish();
    let shape = Shape {
        users: args.users,
        posts: args.posts,
        seed: args.seed,
        celebrities: args.celebrities,
        fanout_authors: args.fanout_authors,
        fanout_limit: args.fanout_limit,
        drivers: pool.users()[..args.drivers].iter().map(|u| u.id).collect(),
    };
    let mut db = PgConnection::connect(&args.database_url)
        .await
        .context("cannot connect to Postgres (--database-url)")?;
    let progress = bar(multi, 0, "data");
    let (graph, data) = data::ensure(
        &mut db,
        &data::marker_path(&target.dev_dir),
        &shape,
        layout,
        Duration::from_secs(args.generate_timeout),
        &progress,
    )
    .await?;
    progress.finish_with_message(if data.generated_now {
        "generated"
    } else {
        "reused"
    });

    // Tokens valid for the rest of the run (access tokens live 15 minutes).
    let progress = bar(multi, args.drivers as u64, "tokens");
    let refreshed = pool
        .prepare(
            &api,
            args.drivers,
            Duration::from_secs(14 * 60),
            &sources,
            target.setup_concurrency,
            &progress,
        )
        .await?;
    progress.finish();
    let drivers: Vec<Driver> = pool.users()[..args.drivers]
        .iter()
        .enumerate()
        .map(|(k, u)| Driver {
            node: graph.layout.drivers[k],
            id: u.id,
            username: graph.usernames[graph.layout.drivers[k]].clone(),
            token: u.access_token.clone(),
        })
        .collect();
    let setup = SetupStats {
        registered: registered.registered,
        refreshed: registered.refreshed + refreshed.refreshed,
        logged_in: registered.logged_in + refreshed.logged_in,
        reused_tokens: refreshed.reused_tokens,
        seconds: registered.seconds + refreshed.seconds,
    };
    Ok((
        Prepared {
            api,
            sources,
            graph,
            data,
            drivers,
            setup,
        },
        db,
    ))
}

/// Runs the phases asked for, in order.
async fn measure(
    args: &SocialArgs,
    prepared: &Prepared,
    servers: &ServerSet,
    db: &mut PgConnection,
) -> anyhow::Result<SocialFigures> {
    let run = run_id();
    let (graph, drivers) = (&prepared.graph, &prepared.drivers);
    let of_role = |role: Role| -> Vec<Driver> {
        drivers
            .iter()
            .enumerate()
            .filter(|(k, _)| graph.layout.role(*k) == role)
            .map(|(_, d)| d.clone())
            .collect()
    };
    let (celebrities, authors, readers) = (
        of_role(Role::Celebrity),
        of_role(Role::FanoutAuthor),
        of_role(Role::Reader),
    );
    let client = Client::new(
        prepared.api.clone(),
        prepared.sources.clone(),
        args.connections,
        Duration::from_secs(10),
    )
    .await?;
    let mut figures = SocialFigures {
        data: prepared.data.clone(),
        drivers: drivers.len(),
        readers: readers.len(),
        api_settings: servers
            .pid_of("api")
            .and_then(|pid| std::fs::read(format!("/proc/{pid}/environ")).ok())
            .map(|env| feed_and_rate_settings(&env))
            .unwrap_or_default(),
        ..SocialFigures::default()
    };
    let wants = |p: Phase| args.phases.contains(&p);
    let step = |what: &str| eprintln!("haberci-bench social: {what}");

    if wants(Phase::Warm) || wants(Phase::Statements) {
        step("building the readers' timelines (first reads, not measured)");
        phases::home_reads(
            &client,
            &readers,
            readers.len(),
            args.concurrency,
            None,
            servers,
            db,
        )
        .await?;
    }
    if wants(Phase::Warm) {
        step("warm home pages");
        figures.warm = Some(
            phases::home_reads(
                &client,
                &readers,
                args.warm_reads,
                args.concurrency,
                None,
                servers,
                db,
            )
            .await?,
        );
    }
    if wants(Phase::Statements) {
        step("statements per warm page");
        figures.statements = Some(
            phases::statements_per_page(
                &client,
                &readers,
                args.statement_pages,
                Duration::from_secs_f64(args.idle_seconds),
                db,
            )
            .await?,
        );
    }
    if wants(Phase::Cold) {
        step("cold home pages");
        figures.cold = Some(
            phases::home_reads(
                &client,
                &readers,
                args.cold_reads,
                args.concurrency,
                Some(&args.redis_url),
                servers,
                db,
            )
            .await?,
        );
        // The reader following the most accounts: the largest rebuild.
        let busiest = busiest_reader(db, &readers).await?;
        let _ = client.home(&busiest.token).await;
        figures.plans = Some(
            phases::plans(
                db,
                &args.redis_url,
                busiest.id,
                args.fanout_limit,
                args.timeline_cap,
            )
            .await?,
        );
    }
    if wants(Phase::Visibility) {
        step("celebrity posts until a follower sees them");
        let pairs = celebrity_followers(db, &celebrities, &readers).await?;
        figures.visibility =
            Some(phases::visibility(&client, &pairs, args.visibility_trials, run).await?);
    }
    if wants(Phase::Fanout) {
        step("fan-out: building followers' timelines, then posting");
        let pool = haberci_backend::db::connect_pool(&args.bouncer_url, 8)?;
        let feed =
            haberci_backend::social::feed::Feed::new(haberci_backend::social::feed::FeedSettings {
                fanout_limit: i64::try_from(args.fanout_limit)?,
                cap: args.timeline_cap,
                ttl: haberci_backend::social::feed::DEFAULT_TIMELINE_TTL,
            });
        let setup = FanoutSetup {
            redis_url: &args.redis_url,
            pool: &pool,
            feed,
            prebuild: Duration::from_secs(args.prebuild_seconds),
            posts_per_author: args.fanout_posts,
        };
        figures.fanout = Some(phases::fanout(&client, &authors, setup, servers, db, run).await?);
        pool.close().await;
    }
    if wants(Phase::Mixed) {
        step("mixed load");
        phases::wait_for_empty_outbox(db).await?;
        let posts = data::sample_posts(db, 20_000).await?;
        let targets = Arc::new(Targets {
            drivers: drivers.to_vec(),
            usernames: graph.usernames.clone(),
            posts,
        });
        if let Some(rate) = args.baseline_rate {
            step("mixed load at the baseline rate");
            let duration = Duration::from_secs_f64(args.baseline_duration);
            figures.baseline = Some(
                phases::mixed(
                    &client,
                    targets.clone(),
                    rate,
                    duration,
                    servers,
                    run ^ 1,
                    db,
                )
                .await?,
            );
            phases::wait_for_empty_outbox(db).await?;
            step("mixed load at the floor's rate");
        }
        let duration = Duration::from_secs_f64(args.duration);
        figures.mixed =
            Some(phases::mixed(&client, targets, args.rate, duration, servers, run, db).await?);
    }
    step("checking every count column against its rows");
    phases::wait_for_empty_outbox(db).await?;
    figures.count_mismatches = data::count_mismatches(db).await?;
    figures.floors = figures.floors();
    Ok(figures)
}

async fn busiest_reader(db: &mut PgConnection, readers: &[Driver]) -> anyhow::Result<Driver> {
    let ids: Vec<uuid::Uuid> = readers.iter().map(|r| r.id).collect();
    let id: Option<uuid::Uuid> = sqlx::query_scalar(
        "SELECT id FROM users WHERE id = ANY($1) ORDER BY following_count DESC LIMIT 1",
    )
    .bind(&ids)
    .fetch_optional(db)
    .await?;
    readers
        .iter()
        .find(|r| Some(r.id) == id)
        .cloned()
        .context("no reader")
}

/// (celebrity, a reader that follows it, the celebrity's followers) for every celebrity that
/// a reader follows.
async fn celebrity_followers(
    db: &mut PgConnection,
    celebrities: &[Driver],
    readers: &[Driver],
) -> anyhow::Result<Vec<(Driver, Driver, i64)>> {
    let ids: Vec<uuid::Uuid> = readers.iter().map(|r| r.id).collect();
    let mut pairs = Vec::new();
    for (k, celebrity) in celebrities.iter().enumerate() {
        let followers: Vec<uuid::Uuid> = sqlx::query_scalar(
            "SELECT follower_id FROM follows WHERE followee_id = $1 AND follower_id = ANY($2)
             ORDER BY follower_id",
        )
        .bind(celebrity.id)
        .bind(&ids)
        .fetch_all(&mut *db)
        .await?;
        let count: i64 = sqlx::query_scalar("SELECT followers_count FROM users WHERE id = $1")
            .bind(celebrity.id)
            .fetch_one(&mut *db)
            .await?;
        // A different follower per celebrity where possible.
        if let Some(f) = followers.get(k % followers.len().max(1)) {
            if let Some(reader) = readers.iter().find(|r| r.id == *f) {
                pairs.push((celebrity.clone(), reader.clone(), count));
            }
        }
    }
    Ok(pairs)
}

fn cpu_line(cpu: &BTreeMap<String, f64>) -> String {
    cpu.iter()
        .map(|(role, ms)| format!("{role} {ms:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `key ×n` for the most frequent keys (at most 8), most frequent first.
fn counts(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    let mut rows: Vec<(&String, &u64)> = map.iter().collect();
    rows.sort_by(|a, b| b.1.cmp(a.1));
    let mut text = rows
        .iter()
        .take(8)
        .map(|(k, v)| format!("{k} ×{v}"))
        .collect::<Vec<_>>()
        .join(", ");
    if rows.len() > 8 {
        let _ = write!(text, ", and {} other reasons", rows.len() - 8);
    }
    text
}

fn read_rows(md: &mut String, what: &str, r: &ReadFigures) {
    let s = &r.latency.summary;
    let _ = writeln!(
        md,
        "| {what} | {} | {:.0} | {:.2} | {:.2} | **{:.2}** | {:.2} | {:.2} | {} | {} | {:.2} |",
        r.reads,
        r.reads_per_sec,
        s.p50_ms,
        s.p90_ms,
        s.p99_ms,
        s.p999_ms,
        s.max_ms,
        counts(&r.sources),
        counts(&r.errors),
        r.server_cpu_ms_per_read
    );
}

fn markdown(args: &SocialArgs, f: &SocialFigures, machine: &Machine, setup: &SetupStats) -> String {
    let mut md = String::new();
    let d = &f.data;
    let _ = writeln!(
        md,
        "### social: {} users, {} follows, {} posts; {} driven users ({} readers)\n",
        d.users, d.follows, d.posts, f.drivers, f.readers
    );
    let _ = writeln!(
        md,
        "{}; data {} in {:.0} s; users: {} registered, {} refreshed, {} reused\n",
        machine.line(),
        if d.generated_now {
            "generated"
        } else {
            "reused"
        },
        d.seconds,
        setup.registered,
        setup.refreshed,
        setup.reused_tokens
    );
    let _ = writeln!(
        md,
        "Followers: celebrities {:?}, fan-out authors {:?}. API settings: {}. Count columns that differ from their rows after the run: {}.\n",
        d.celebrity_followers,
        d.fanout_author_followers,
        if f.api_settings.is_empty() {
            "defaults".to_owned()
        } else {
            f.api_settings
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        },
        f.count_mismatches
    );
    if !d.steps.is_empty() {
        let steps = d
            .steps
            .iter()
            .map(|(s, t)| format!("{s} {t:.0} s"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(md, "Generation: {steps}.\n");
    }
    let _ = writeln!(
        md,
        "| floor (#15) | figure | floor | |\n|---|---:|---:|---|"
    );
    for floor in &f.floors {
        let _ = writeln!(
            md,
            "| {} | {:.2}{} | {} {}{} | {} |",
            floor.what,
            floor.figure,
            floor.unit,
            if floor.at_most { "≤" } else { "≥" },
            floor.floor,
            floor.unit,
            if floor.met { "met" } else { "**missed**" }
        );
    }
    if f.warm.is_some() || f.cold.is_some() {
        let _ = writeln!(
            md,
            "\nHome pages (`GET /v1/feed/home?limit=20`), {} at a time:\n\n| pages | count | pages/s | p50 | p90 | p99 | p99.9 | max | source | errors | server CPU ms/page |\n|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|",
            args.concurrency
        );
        if let Some(w) = &f.warm {
            read_rows(&mut md, "warm (second read)", w);
        }
        if let Some(c) = &f.cold {
            read_rows(&mut md, "cold (`DEL tl:{user}` first)", c);
        }
        for (what, r) in [("warm", &f.warm), ("cold", &f.cold)] {
            if let Some(r) = r {
                let _ = writeln!(
                    md,
                    "\nServer CPU, {what} ({:.1} s): {}. Heaviest statements meanwhile (calls, mean ms, total ms):\n",
                    r.seconds,
                    cpu_line(&r.server_cpu_ms)
                );
                for (q, calls, mean, total) in &r.heaviest {
                    let _ = writeln!(md, "- {calls} × {mean:.2} ms = {total:.0} ms: `{q}`");
                }
            }
        }
    }
    if let Some(s) = &f.statements {
        let _ = writeln!(
            md,
            "\nStatements per warm page ({} pages in {:.1} s, one at a time; idle window {:.1} s subtracted; sources {}; errors {}): **{:.2}**\n\n| per page | mean ms | calls (busy / idle) | statement |\n|---:|---:|---|---|",
            s.pages,
            s.busy_seconds,
            s.idle_seconds,
            counts(&s.sources),
            counts(&s.errors),
            s.per_page
        );
        for r in &s.statements {
            let _ = writeln!(
                md,
                "| {:.3} | {:.3} | {} / {} | `{}` |",
                r.per_request, r.mean_ms, r.calls, r.idle_calls, r.statement
            );
        }
    }
    if let Some(p) = &f.plans {
        let _ = writeln!(
            md,
            "\nPlans for reader {} (the one following the most accounts).\n\nRebuild (`rebuild_ids`):\n\n```\n{}\n```\n\nPage (`window`):\n\n```\n{}\n```",
            p.reader, p.rebuild, p.window
        );
    }
    if let Some(v) = &f.visibility {
        let s = &v.latency.summary;
        let _ = writeln!(
            md,
            "\nCelebrity posts (followers {:?}) seen by a follower: {} / {}; POST 201 → first page holding it p50 {:.1} ms, max **{:.1} ms**; pages read per trial {:?}; POST itself p50 {:.1} ms; errors {}.",
            v.authors_followers,
            v.seen,
            v.trials,
            s.p50_ms,
            s.max_ms,
            v.polls,
            v.post_latency.p50_ms,
            counts(&v.errors)
        );
    }
    if let Some(x) = &f.fanout {
        let _ = writeln!(
            md,
            "\nFan-out: {} authors (followers {:?}) posted {} of {} posts at once. Their {} followers' timelines: {} built before, {} rebuilt now ({:.0} s), the rest created by one unmeasured post of each author first. {} timeline inserts owed (Σ followers + 1), {} `ZADD`s counted by Redis; first POST → outbox empty {:.2} s{}: **{:.0} inserts/s**. Server CPU meanwhile: {}. Errors: {}.",
            x.authors,
            x.authors_followers,
            x.posted,
            x.posts,
            x.follower_timelines,
            x.built_before,
            x.built_now,
            x.prebuild_seconds,
            x.inserts_expected,
            x.zadds_counted,
            x.seconds,
            if x.drained { "" } else { " (**not drained**)" },
            x.inserts_per_sec,
            cpu_line(&x.server_cpu_ms),
            counts(&x.errors)
        );
    }
    if let Some(m) = &f.baseline {
        mixed_section(&mut md, "Mixed load at the baseline rate", m);
    }
    if let Some(m) = &f.mixed {
        mixed_section(&mut md, "Mixed load", m);
    }
    md
}

fn mixed_section(md: &mut String, title: &str, m: &MixedFigures) {
    let s = &m.latency.summary;
    let _ = writeln!(
        md,
        "\n{title}: {:.0} requests/s planned for {:.0} s ({} requests), {} answered ({:.0}/s), {} shed by the client; latency from each request's planned start p50 {:.2} / p90 {:.2} / **p99 {:.2}** / p99.9 {:.2} / max {:.2} ms (from its actual send: p50 {:.2}, p99 {:.2}); errors {} ({}); home sources {}.\n",
        m.rate,
        m.duration_s,
        m.planned,
        m.completed,
        m.achieved_per_sec,
        m.shed,
        s.p50_ms,
        s.p90_ms,
        s.p99_ms,
        s.p999_ms,
        s.max_ms,
        m.service.p50_ms,
        m.service.p99_ms,
        m.error_count,
        counts(&m.errors),
        counts(&m.home_sources)
    );
    let _ = writeln!(
        md,
        "| kind | count | p50 | p90 | p99 | max |\n|---|---:|---:|---:|---:|---:|"
    );
    for (kind, k) in &m.by_kind {
        let _ = writeln!(
            md,
            "| {kind} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            k.count, k.p50_ms, k.p90_ms, k.p99_ms, k.max_ms
        );
    }
    let _ = writeln!(
        md,
        "\nServer CPU: {} ms ({:.2} ms per request); the load client {:.0} ms. Heaviest statements (calls, mean ms, total ms):\n",
        cpu_line(&m.server_cpu_ms),
        m.server_cpu_ms_per_request,
        m.client_cpu_ms
    );
    for (q, calls, mean, total) in &m.heaviest {
        let _ = writeln!(md, "- {calls} × {mean:.2} ms = {total:.0} ms: `{q}`");
    }
}

fn charts(f: &SocialFigures) -> Vec<(&'static str, Chart)> {
    let mut cdf = Chart::new("home and mixed-load latency", "percentile", "ms").nines();
    for (name, d) in [
        ("warm home page", f.warm.as_ref().map(|r| &r.latency)),
        ("cold home page", f.cold.as_ref().map(|r| &r.latency)),
        ("mixed load", f.mixed.as_ref().map(|m| &m.latency)),
        (
            "mixed load, baseline rate",
            f.baseline.as_ref().map(|m| &m.latency),
        ),
        (
            "celebrity post visible",
            f.visibility.as_ref().map(|v| &v.latency),
        ),
    ] {
        if let Some(d) = d {
            cdf = cdf.line(name, d.cdf.clone());
        }
    }
    let mut charts = vec![("latency-cdf", cdf)];
    if let Some(m) = &f.mixed {
        let pick = |i: usize| -> Vec<(f64, f64)> {
            m.per_second
                .iter()
                .map(|row| {
                    let v = [row.2, row.3, row.4][i];
                    (row.0 as f64, v)
                })
                .collect()
        };
        charts.push((
            "mixed-latency",
            Chart::new(
                "mixed load, per second of the schedule",
                "second",
                "ms from planned start",
            )
            .line("p50", pick(0))
            .line("p99", pick(1))
            .line("max", pick(2)),
        ));
        charts.push((
            "mixed-cpu",
            cpu_chart("server CPU during the mixed load", &m.samples),
        ));
    }
    if let Some(x) = &f.fanout {
        charts.push((
            "fanout",
            Chart::new(
                "fan-out outbox backlog",
                "seconds since the first post",
                "outbox rows",
            )
            .line(
                "rows left",
                x.backlog.iter().map(|(t, n)| (*t, *n as f64)).collect(),
            ),
        ));
    }
    charts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_feed_and_rate_settings_leave_the_environment() {
        let env = b"HABERCI_DATABASE_URL=postgres://u:secret@h/db\0HABERCI_RATE_POST=100/1s\0HABERCI_FEED_FANOUT_LIMIT=10000\0PATH=/bin\0";
        let s = feed_and_rate_settings(env);
        assert_eq!(s.len(), 2);
        assert_eq!(s["HABERCI_RATE_POST"], "100/1s");
        assert!(!s.values().any(|v| v.contains("secret")));
    }

    #[test]
    fn floors_compare_in_their_direction() {
        assert!(Floor::new("p99", 14.9, 15.0, "ms", true).met);
        assert!(!Floor::new("p99", 15.1, 15.0, "ms", true).met);
        assert!(Floor::new("inserts", 100_000.0, 100_000.0, "/s", false).met);
        assert!(!Floor::new("inserts", 99_999.0, 100_000.0, "/s", false).met);
    }
}
