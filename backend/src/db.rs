//! Postgres access. Every query goes through PgBouncer except migrations.
//!
//! PgBouncer here is Debian 12's 1.18, run in `pool_mode = session` (see
//! `deploy/pgbouncer.ini`): sqlx names and caches prepared statements per connection, which
//! transaction pooling in 1.18 breaks ("prepared statement already exists", and worse, unnamed
//! statements answered with another client's rows). Session pooling keeps one server connection
//! per client connection, so sqlx's statement cache is safe. The `pgbouncer_safety` integration
//! test guards this.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

/// A new id for a row the backend creates: a UUIDv7, so ids sort by creation time (the
/// cursors of posts, comments and notifications rely on it), as any id newtype.
pub fn new_id<T: TryFrom<uuid::Uuid>>() -> T {
    // Invariant: a UUIDv7 carries version bits, so it is never nil and every id type takes it.
    T::try_from(uuid::Uuid::now_v7()).unwrap_or_else(|_| unreachable!("a UUIDv7 is never nil"))
}

/// How long a request waits for a free pooled connection before failing.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The embedded migrations from `migrations/` at the workspace root.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// The migration that stages the partitioned `messages` ([`crate::partitioning`]).
pub const PARTITIONING_MIGRATION: i64 = 20261205000003;

/// The embedded migrations older than `version`: a database as a release before it left it
/// (the partitioning test and the `db` bench start from the schema before
/// [`PARTITIONING_MIGRATION`]).
pub fn migrator_before(version: i64) -> sqlx::migrate::Migrator {
    sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(
            MIGRATOR
                .iter()
                .filter(|m| m.version < version)
                .cloned()
                .collect(),
        ),
        ..sqlx::migrate::Migrator::DEFAULT
    }
}

/// A pool to PgBouncer. Connections are opened lazily so a process can start (and say it is not
/// ready) while the database is still coming up.
pub fn connect_pool(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    Ok(pool_options(max_connections).connect_lazy_with(connect_options(url)?))
}

/// The worker's pool for the message consumer and the feed fan-out: [`connect_pool`] whose
/// connections plan each statement once (`plan_cache_mode = force_generic_plan`, set on every
/// new connection).
///
/// The consumer runs a handful of statements over and over with arrays of varying length.
/// Left to `auto`, Postgres keeps custom plans while their average estimate stays below the
/// generic plan's, which with batches of one message is for ever: it planned every
/// execution, a quarter of its CPU at 300 msg/s (#18, ninth round). These statements are key
/// and array lookups whose generic plan is the custom plan's shape (`messages` pruned at run
/// time). Not for statements whose plan depends on a value's selectivity (the worker's
/// pruning by cutoff time keeps [`connect_pool`]).
pub fn connect_worker_pool(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    Ok(pool_options(max_connections)
        .after_connect(|conn, _| {
            Box::pin(async move {
                // A simple query: a `SET` needs no prepared statement. PgBouncer (session
                // pooling) resets it with `DISCARD ALL` when this client goes.
                sqlx::Executor::execute(&mut *conn, FORCE_GENERIC_PLANS).await?;
                Ok(())
            })
        })
        .connect_lazy_with(connect_options(url)?))
}

/// What [`connect_worker_pool`] runs on every new connection.
pub const FORCE_GENERIC_PLANS: &str = "SET plan_cache_mode = force_generic_plan";

fn connect_options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    Ok(options
        .application_name("haberci-backend")
        .log_statements(tracing::log::LevelFilter::Trace))
}

fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(DEFAULT_ACQUIRE_TIMEOUT)
        .idle_timeout(Some(Duration::from_secs(60)))
}

/// How long a migration's statement waits for a lock on a live database.
pub const MIGRATION_LOCK_TIMEOUT: &str = "SET lock_timeout = '5s'";

/// Applies pending migrations directly to Postgres; returns how many were applied.
pub async fn migrate(url: &str) -> Result<usize, sqlx::migrate::MigrateError> {
    use sqlx::Connection;
    // One connection, one attempt: a migration run is a command, not a service that waits.
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .map_err(sqlx::migrate::MigrateError::Execute)?;
    // On a live database a DDL statement queued behind a long transaction would hold up every
    // query queued behind it: give up after MIGRATION_LOCK_TIMEOUT instead (the migration
    // fails, nothing is applied, run it again) — docs/OPERATIONS.md "Migrations".
    sqlx::query(MIGRATION_LOCK_TIMEOUT)
        .execute(&mut conn)
        .await
        .map_err(sqlx::migrate::MigrateError::Execute)?;
    let applied_before = applied_count(&mut conn).await;
    MIGRATOR.run(&mut conn).await?;
    let applied_after = applied_count(&mut conn).await;
    let _ = conn.close().await;
    Ok(applied_after.saturating_sub(applied_before))
}

async fn applied_count(conn: &mut sqlx::PgConnection) -> usize {
    // The table does not exist before the first run; that counts as zero.
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(conn)
        .await
        .map(|n| usize::try_from(n).unwrap_or(0))
        .unwrap_or(0)
}
