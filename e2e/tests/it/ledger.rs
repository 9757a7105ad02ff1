//! The cost ledger as a regression test (#18): a small chat on real processes, counted rather
//! than timed. It has a database of its own (so `pg_stat_statements` counts only its work) and,
//! like every cluster, a Redis of its own (so `INFO commandstats` does too). The bounds are what
//! today's build costs with some room; a change that adds Postgres or Redis work per delivery
//! fails here, on any machine, however busy. docs/BENCHMARKS.md has the full ledger of `./dev
//! bench` runs; tighten these bounds as the hot path gets leaner.

use std::collections::BTreeMap;

use futures::future::join_all;
use haberci_backend::social::fanout;
use haberci_bench::sampling::resp::{Redis, command_calls};
use haberci_client::{MessageKind, Recipient};
use haberci_testkit::{TransportKind, env};
use sqlx::{Connection, PgConnection};

use crate::peer::Peer;
use crate::support::{Cluster, binary};

const PAIRS: usize = 25;
const PER_PAIR: u64 = 20;

// Upper bounds per delivered message (each also acknowledged to `delivered`): today's design in
// its worst case, every send and every acknowledgement a batch of its own. A send: `BEGIN`,
// users, blocks and the conversation created in one statement, the lock with the originals and
// the clock in another, one write, `COMMIT` (5 statements, 1 commit; 7 before #18's fourth
// round); an
// acknowledgement: one statement, no explicit transaction (held for sends to ride with, but
// alone when none come). An XADD each; a `SentMessage` to the sender's channel, the message to the
// recipient's and a `Status` to the sender (3 publishes; a little over for presence). How much
// batching saves depends on timing, so it cannot be asserted; it can only make the counts
// lower. Measured on the project's 2-core machine (Dec 2026): before the worker's round trips
// were merged and `Sent` joined the sender's copy, 1.31 statements, 0.10 commits, 5.73 Redis
// commands (spublish 3.86, xadd 1.43, xack 0.32, xreadgroup 0.10); after, 0.70 statements,
// 0.09 commits, 4.35 Redis commands (spublish 2.46, xadd 1.46, xack 0.32, xreadgroup 0.10).
const MAX_PG_STATEMENTS: f64 = 6.0;
const MAX_PG_COMMITS: f64 = 1.0;
const MAX_REDIS_COMMANDS: f64 = 9.0;
const MAX_XADDS: f64 = 2.0;
const MAX_SPUBLISHES: f64 = 3.2;
/// Backlog queries (`SYNC_SQL`) per delivery: none is needed here (every conversation is new and
/// starts live at seq 1; a gap or a resync would need one). Before dd3a631 each new direct
/// conversation cost one per session of each user: 0.1 per delivery in this chat.
const MAX_SYNCS: f64 = 0.02;
/// The worker's fan-out looks at an empty outbox only when told (a post's `NOTIFY`), or on its
/// fallback every `fanout::FALLBACK_POLL`; before #18's fourth round it looked every 50 ms.
const FALLBACK_POLLS_SLACK: u64 = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_chat_costs_no_more_postgres_and_redis_work_per_delivery_than_allowed() {
    let database = Database::create().await;
    let cluster = Cluster::start_on(database.pooled_url(), 1, 1).await;
    let mut peers = Vec::new();
    for i in 0..2 * PAIRS {
        let user = cluster.register(&format!("l{i}")).await;
        let config = cluster.client_config(0, TransportKind::Quic, &user.token);
        peers.push((user.id, Peer::connect(&user, config).await));
    }

    let before = Counts::read(&cluster, &database.name).await;
    let started = std::time::Instant::now();
    let chats = (0..PAIRS).map(|p| {
        let (sender, recipient) = (&peers[2 * p], &peers[2 * p + 1]);
        async move {
            let mut conversation = None;
            for k in 0..PER_PAIR {
                let message = haberci_client::message(
                    Recipient::User(recipient.0),
                    MessageKind::Text,
                    format!("pair {p} #{k}"),
                );
                conversation = Some(sender.1.send_reliably(message).await.conversation_id);
            }
            let conversation = conversation.expect("sent");
            recipient.1.wait_for_seq(conversation, PER_PAIR).await;
            // The recipient's acknowledgement is part of a delivery's cost: wait until the
            // sender hears the watermark moved.
            sender
                .1
                .wait("told the chat was delivered", |log| {
                    log.status_reached(conversation, recipient.0, PER_PAIR, 0)
                })
                .await;
        }
    });
    join_all(chats).await;
    let after = Counts::read(&cluster, &database.name).await;
    let elapsed = started.elapsed();

    let deliveries = (PAIRS as u64 * PER_PAIR) as f64;
    let per = |n: u64| n as f64 / deliveries;
    let statements = per(after.statements - before.statements);
    let commits = per(after.commits - before.commits);
    let syncs = per(after.syncs - before.syncs);
    let redis: BTreeMap<&str, f64> = after
        .redis
        .iter()
        .filter(|(command, _)| command.as_str() != "info")
        .map(|(command, n)| {
            let was = before.redis.get(command).copied().unwrap_or(0);
            (command.as_str(), per(n - was))
        })
        .filter(|(_, n)| *n > 0.0)
        .collect();
    let redis_total: f64 = redis.values().sum();
    let outbox_polls = after.outbox_polls - before.outbox_polls;
    let allowed_polls = elapsed.as_secs() / fanout::FALLBACK_POLL.as_secs() + FALLBACK_POLLS_SLACK;
    let ledger = format!(
        "per delivery: {statements:.2} Postgres statements, {commits:.2} commits, {syncs:.3} \
         backlog queries, {redis_total:.2} Redis commands {redis:?}; {outbox_polls} looks at \
         the feed outbox in {elapsed:?}"
    );
    eprintln!("{ledger}");
    assert!(
        statements > 0.0 && redis_total > 0.0,
        "nothing counted: {ledger}"
    );
    assert!(statements <= MAX_PG_STATEMENTS, "{ledger}");
    assert!(commits <= MAX_PG_COMMITS, "{ledger}");
    assert!(syncs <= MAX_SYNCS, "{ledger}");
    assert!(outbox_polls <= allowed_polls, "{ledger}");
    assert!(redis_total <= MAX_REDIS_COMMANDS, "{ledger}");
    let calls = |command: &str| redis.get(command).copied().unwrap_or(0.0);
    assert!(calls("xadd") <= MAX_XADDS, "{ledger}");
    assert!(calls("spublish") <= MAX_SPUBLISHES, "{ledger}");

    drop(peers);
    drop(cluster);
    database.drop().await;
}

/// Cumulative counters of the run's database and Redis.
struct Counts {
    statements: u64,
    commits: u64,
    /// Calls of the backlog query (`SYNC_SQL`).
    syncs: u64,
    /// The fan-out's looks at the feed outbox.
    outbox_polls: u64,
    redis: BTreeMap<String, u64>,
}

impl Counts {
    async fn read(cluster: &Cluster, database: &str) -> Counts {
        // pg_stat_statements is updated as each statement ends (no stats-collector delay); it
        // is readable from the test database, where `./dev` created the extension.
        let mut stats = PgConnection::connect(&env::direct_database_url())
            .await
            .expect("connect to the test database");
        let sync_start = haberci_backend::conversations::store::SYNC_SQL
            .lines()
            .next()
            .expect("SYNC_SQL has a first line");
        let (statements, commits, syncs, outbox_polls): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT coalesce(sum(s.calls), 0)::bigint,
                    coalesce(sum(s.calls) FILTER (WHERE s.query ILIKE 'commit%'), 0)::bigint,
                    coalesce(sum(s.calls) FILTER (WHERE starts_with(s.query, $2)), 0)::bigint,
                    coalesce(sum(s.calls) FILTER (WHERE starts_with(s.query, $3)), 0)::bigint
             FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
             WHERE d.datname = $1",
        )
        .bind(database)
        .bind(sync_start)
        .bind(
            fanout::OUTBOX_SQL
                .lines()
                .next()
                .expect("one line at least"),
        )
        .fetch_one(&mut stats)
        .await
        .expect("pg_stat_statements (./dev creates the extension)");
        let _ = stats.close().await;
        let mut redis = Redis::connect(&cluster.redis.url())
            .await
            .expect("connect to the cluster's Redis");
        let info = redis
            .command(&["INFO", "commandstats"])
            .await
            .and_then(|reply| reply.text())
            .expect("INFO commandstats");
        Counts {
            statements: u64::try_from(statements).unwrap_or(0),
            commits: u64::try_from(commits).unwrap_or(0),
            syncs: u64::try_from(syncs).unwrap_or(0),
            outbox_polls: u64::try_from(outbox_polls).unwrap_or(0),
            redis: command_calls(&info).into_iter().collect(),
        }
    }
}

/// A database of the test's own on the shared Postgres, migrated: its counters, and its
/// queues (the feed outbox), are the test's alone.
pub(crate) struct Database {
    name: String,
}

impl Database {
    pub(crate) async fn create() -> Database {
        let name = format!(
            "haberci_ledger_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let mut admin = PgConnection::connect(&env::direct_database_url())
            .await
            .expect("connect to the test database");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create the ledger's database (the test role has CREATEDB)");
        let _ = admin.close().await;
        let database = Database { name };
        let out = std::process::Command::new(binary("haberci-backend"))
            .arg("migrate")
            .env(
                "HABERCI_MIGRATE_DATABASE_URL",
                with_database(&env::direct_database_url(), &database.name),
            )
            .env("HABERCI_LOG", "warn")
            .output()
            .expect("run migrate");
        assert!(
            out.status.success(),
            "migrate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        database
    }

    pub(crate) fn pooled_url(&self) -> String {
        with_database(&env::database_url(), &self.name)
    }

    pub(crate) fn direct_url(&self) -> String {
        with_database(&env::direct_database_url(), &self.name)
    }

    pub(crate) async fn drop(self) {
        let mut admin = PgConnection::connect(&env::direct_database_url())
            .await
            .expect("connect to the test database");
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await
        .expect("drop the ledger's database");
    }
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("a database URL ends in /name");
    format!("{base}/{name}")
}
