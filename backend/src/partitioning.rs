//! `haberci-backend partition-messages`: the online half of moving `messages` to the table
//! partitioned by hash of conversation_id (migration `20261205000003_partitioned_messages.sql`
//! stages it; docs/OPERATIONS.md "Partitioned messages" is the procedure).
//!
//! While the service runs:
//! 1. **copy** today's rows in batches of `batch_rows`, in primary-key order, each batch one
//!    statement (its own transaction) that also records how far it got, so a run that stops
//!    resumes there. Rows stored meanwhile are copied by the migration's trigger; every insert
//!    here is `ON CONFLICT DO NOTHING`, so the two never collide.
//! 2. **check** that no row of today's table is missing from the partitioned one or from
//!    `message_keys` (two anti-joins, no lock that blocks writes); rows the copy never saw
//!    (behind a resumed copy's position, or without a key) are copied then, and checked again;
//! 3. **swap** the tables in one transaction under a short `lock_timeout`
//!    ([`SWAP_LOCK_TIMEOUT`]): a few catalog changes, retried until the locks are had.
//!
//! Invariant: after the copy, every committed row of today's table is in the partitioned one —
//! copied, or inserted by the trigger in the transaction that stored it — and cascaded deletes
//! reach both tables through their own foreign keys. The check proves it before the swap.

use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use uuid::Uuid;

/// Rows per copy statement: large enough that the copy of 10M rows is minutes, small enough
/// that a batch holds its row locks (the foreign keys' `KEY SHARE` on conversations) briefly.
pub const DEFAULT_BATCH_ROWS: i64 = 5_000;

/// How long the swap waits for its locks before giving up and trying again. Shorter than
/// Postgres's `deadlock_timeout` (1 s) on purpose: a worker transaction that read `messages`
/// (its idempotency lookup) and then inserts into it queues behind the swap's request, a
/// deadlock Postgres would break by aborting one of the two after 1 s. The swap gives up first,
/// so no worker transaction fails; a worker waits at most this long.
pub const SWAP_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '50ms'";

/// Swap attempts before the command fails, [`SWAP_RETRY_PAUSE`] apart.
pub const SWAP_ATTEMPTS: u32 = 100;

/// Between two swap attempts: the writers' queue drains.
pub const SWAP_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The advisory lock a run holds (any constant unique to this command).
const RUN_LOCK: i64 = 0x6861_6265_7263_6970; // "habercip"

/// Which layout the database has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Before the migration that stages the partitioned table: run `migrate` first.
    Unmigrated,
    /// Staged: `messages` is the old table, `messages_partitioned` the new one.
    Staged,
    /// `messages` is partitioned: nothing to do.
    Partitioned,
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Rows read from the old table by the copy (rows already there count too).
    pub rows: u64,
    pub batches: u64,
    pub copy: Duration,
    pub check: Duration,
    /// Rows and keys the check found missing and copied (usually none).
    pub repaired: u64,
    /// The swap transaction that succeeded, from `BEGIN` to `COMMIT`.
    pub swap: Duration,
    pub swap_attempts: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the database is not migrated to the partitioned layout yet: run `migrate` first")]
    Unmigrated,
    #[error(
        "{0} rows of the old `messages` are still missing from the partitioned table or \
         `message_keys` after copying them again; nothing was swapped"
    )]
    Missing(i64),
    #[error("another partition-messages is running on this database")]
    Running,
    #[error("the swap did not get its locks in {SWAP_ATTEMPTS} attempts; nothing was swapped")]
    Locked,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

pub async fn layout(conn: &mut PgConnection) -> Result<Layout, sqlx::Error> {
    let (partitioned, staged): (Option<bool>, bool) = sqlx::query_as(
        "SELECT (SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass('messages')),
                to_regclass('messages_partitioned') IS NOT NULL",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(match (partitioned, staged) {
        (Some(true), _) => Layout::Partitioned,
        (_, true) => Layout::Staged,
        _ => Layout::Unmigrated,
    })
}

/// Copies, checks and swaps; on a partitioned database it does nothing.
pub async fn run(url: &str, batch_rows: i64) -> Result<Report, Error> {
    // The copy and the check are long statements by design: not worth a warning each.
    let options = url
        .parse::<PgConnectOptions>()?
        .application_name("haberci-partition-messages")
        .log_slow_statements(tracing::log::LevelFilter::Off, Duration::ZERO);
    let mut conn = PgConnection::connect_with(&options).await?;
    let mut report = Report::default();
    // One run at a time (the lock is the session's: it ends with the connection).
    let alone: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(RUN_LOCK)
        .fetch_one(&mut conn)
        .await?;
    if !alone {
        return Err(Error::Running);
    }
    match layout(&mut conn).await? {
        Layout::Partitioned => return Ok(report),
        Layout::Unmigrated => return Err(Error::Unmigrated),
        Layout::Staged => {}
    }
    let started = Instant::now();
    copy(&mut conn, batch_rows.max(1), &mut report).await?;
    report.copy = started.elapsed();
    let started = Instant::now();
    if missing(&mut conn).await? > 0 {
        // Rows the copy never saw: behind its position when it resumed from a record left by
        // an earlier run, or stored without a key by a worker of the release before this one
        // (the trigger adds keys; a row written before the trigger existed has none).
        report.repaired = repair(&mut conn).await?;
        let still = missing(&mut conn).await?;
        if still > 0 {
            return Err(Error::Missing(still));
        }
    }
    report.check = started.elapsed();
    swap(&mut conn, &mut report).await?;
    let _ = conn.close().await;
    Ok(report)
}

/// One batch: the next `$3` rows after `($1, $2)`, copied with their keys, and the position
/// recorded, in one statement.
const COPY_SQL: &str = "WITH batch AS MATERIALIZED (
    SELECT * FROM messages
    WHERE (conversation_id, seq) > ($1, $2)
    ORDER BY conversation_id, seq
    LIMIT $3
), copied AS (
    INSERT INTO messages_partitioned (conversation_id, seq, id, sender_id, client_msg_id, type,
                                      content, media_id, media_content_type, media_size,
                                      created_at)
    SELECT conversation_id, seq, id, sender_id, client_msg_id, type, content, media_id,
           media_content_type, media_size, created_at
    FROM batch ORDER BY conversation_id, seq
    ON CONFLICT DO NOTHING
), keyed AS (
    INSERT INTO message_keys (sender_id, client_msg_id, conversation_id, seq)
    SELECT sender_id, client_msg_id, conversation_id, seq FROM batch
    ON CONFLICT DO NOTHING
), last AS (
    INSERT INTO messages_partitioning (conversation_id, seq)
    SELECT conversation_id, seq FROM batch ORDER BY conversation_id DESC, seq DESC LIMIT 1
    ON CONFLICT (one) DO UPDATE SET conversation_id = excluded.conversation_id,
                                    seq = excluded.seq
    RETURNING conversation_id, seq
)
SELECT (SELECT count(*) FROM batch), (SELECT conversation_id FROM last),
       (SELECT seq FROM last)";

async fn copy(conn: &mut PgConnection, batch_rows: i64, report: &mut Report) -> Result<(), Error> {
    let resumed: Option<(Uuid, i64)> =
        sqlx::query_as("SELECT conversation_id, seq FROM messages_partitioning")
            .fetch_optional(&mut *conn)
            .await?;
    let mut after = resumed.unwrap_or((Uuid::nil(), 0));
    if resumed.is_some() {
        tracing::info!(conversation = %after.0, seq = after.1, "resuming the copy");
    }
    loop {
        let result = sqlx::query_as::<_, (i64, Option<Uuid>, Option<i64>)>(COPY_SQL)
            .bind(after.0)
            .bind(after.1)
            .bind(batch_rows)
            .fetch_one(&mut *conn)
            .await;
        let (rows, last) = match result {
            Ok((rows, Some(id), Some(seq))) => (rows, (id, seq)),
            Ok(_) => return Ok(()),
            // A conversation or user deleted between the read and the insert (foreign key),
            // or a deadlock with a worker's transaction: the batch is read again.
            Err(sqlx::Error::Database(db))
                if matches!(db.code().as_deref(), Some("23503" | "40P01")) =>
            {
                tracing::debug!(error = %db, "copy batch raced a write; reading it again");
                continue;
            }
            Err(err) => return Err(err.into()),
        };
        after = last;
        report.rows += u64::try_from(rows).unwrap_or(0);
        report.batches += 1;
        if report.batches % 100 == 0 {
            tracing::info!(rows = report.rows, "copied");
        }
    }
}

/// Rows of the old table without their copy or their key. Two anti-joins, not one scan with
/// `NOT EXISTS … OR NOT EXISTS`: that form cannot be planned as a join, and probed both tables
/// once per row (10M rows: minutes).
async fn missing(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM messages l
                 WHERE NOT EXISTS (SELECT 1 FROM messages_partitioned p
                                   WHERE p.conversation_id = l.conversation_id
                                     AND p.seq = l.seq))
              + (SELECT count(*) FROM messages l
                 WHERE NOT EXISTS (SELECT 1 FROM message_keys k
                                   WHERE k.sender_id = l.sender_id
                                     AND k.client_msg_id = l.client_msg_id))",
    )
    .fetch_one(&mut *conn)
    .await
}

/// Copies every row and key of the old table that the new ones lack; returns how many.
const REPAIR_SQL: &str = "WITH copied AS (
    INSERT INTO messages_partitioned (conversation_id, seq, id, sender_id, client_msg_id, type,
                                      content, media_id, media_content_type, media_size,
                                      created_at)
    SELECT conversation_id, seq, id, sender_id, client_msg_id, type, content, media_id,
           media_content_type, media_size, created_at
    FROM messages l
    WHERE NOT EXISTS (SELECT 1 FROM messages_partitioned p
                      WHERE p.conversation_id = l.conversation_id AND p.seq = l.seq)
    ON CONFLICT DO NOTHING
    RETURNING 1
), keyed AS (
    INSERT INTO message_keys (sender_id, client_msg_id, conversation_id, seq)
    SELECT sender_id, client_msg_id, conversation_id, seq
    FROM messages l
    WHERE NOT EXISTS (SELECT 1 FROM message_keys k
                      WHERE k.sender_id = l.sender_id AND k.client_msg_id = l.client_msg_id)
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM copied) + (SELECT count(*) FROM keyed)";

async fn repair(conn: &mut PgConnection) -> Result<u64, Error> {
    loop {
        match sqlx::query_scalar::<_, i64>(REPAIR_SQL)
            .fetch_one(&mut *conn)
            .await
        {
            Ok(n) => return Ok(u64::try_from(n).unwrap_or(0)),
            // As in the copy: a row whose conversation or sender was deleted meanwhile.
            Err(sqlx::Error::Database(db))
                if matches!(db.code().as_deref(), Some("23503" | "40P01")) => {}
            Err(err) => return Err(err.into()),
        }
    }
}

async fn swap(conn: &mut PgConnection, report: &mut Report) -> Result<(), Error> {
    for attempt in 1..=SWAP_ATTEMPTS {
        report.swap_attempts = attempt;
        let started = Instant::now();
        let mut tx = conn.begin().await?;
        sqlx::query(SWAP_LOCK_TIMEOUT).execute(&mut *tx).await?;
        let swapped = sqlx::query("SELECT messages_partitioning_swap(false)")
            .execute(&mut *tx)
            .await;
        match swapped {
            Ok(_) => {
                sqlx::query("DROP FUNCTION messages_partitioning_swap(boolean)")
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                report.swap = started.elapsed();
                return Ok(());
            }
            // lock_not_available (or, should it come first, a deadlock): transactions hold
            // the tables. Nothing changed; let them finish and try again.
            Err(sqlx::Error::Database(db))
                if matches!(db.code().as_deref(), Some("55P03" | "40P01")) =>
            {
                tx.rollback().await?;
                tracing::debug!(attempt, "the swap did not get its locks in time");
                tokio::time::sleep(SWAP_RETRY_PAUSE).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
    Err(Error::Locked)
}
