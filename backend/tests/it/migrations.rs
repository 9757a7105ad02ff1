//! Migrations run directly against Postgres and are idempotent.

use crate::env;

#[tokio::test]
async fn migrating_twice_applies_nothing_the_second_time() {
    let url = env("HABERCI_TEST_DIRECT_DATABASE_URL");
    haberci_backend::db::migrate(&url).await.unwrap();
    let again = haberci_backend::db::migrate(&url).await.unwrap();
    assert_eq!(again, 0);
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        applied as usize,
        haberci_backend::db::MIGRATOR.migrations.len()
    );
}

#[tokio::test]
async fn migrating_an_unreachable_database_fails_with_an_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let url = format!("postgres://nobody:x@127.0.0.1:{port}/none");
    assert!(haberci_backend::db::migrate(&url).await.is_err());
}

/// Every foreign key has a valid index that starts with its columns and holds every row the
/// key can match (no predicate but `IS NOT NULL`): deleting or re-keying the
/// referenced row (an account deletion cascades through a dozen tables) finds the referencing
/// rows by an index probe, not by a scan of the referencing table per row. Before
/// 20261207000002 deleting one account scanned `conversations` three times and `sessions`
/// once (its only index was partial, `WHERE revoked_at IS NULL`).
#[tokio::test]
async fn every_foreign_key_is_backed_by_an_index() {
    let url = env("HABERCI_TEST_DIRECT_DATABASE_URL");
    haberci_backend::db::migrate(&url).await.unwrap();
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    // Partitions inherit their parent's keys and indexes; the parent is what is checked.
    let unbacked: Vec<String> = sqlx::query_scalar(
        "SELECT format('%s (%s) -> %s', c.conrelid::regclass,
                      (SELECT string_agg(a.attname, ', ' ORDER BY k.n)
                       FROM unnest(c.conkey) WITH ORDINALITY AS k(attnum, n)
                       JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum),
                      c.confrelid::regclass)
         FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid
         WHERE c.contype = 'f' AND NOT r.relispartition
           AND r.relnamespace = 'public'::regnamespace
           AND NOT EXISTS (
               -- A valid index whose leading key columns are the key's, with no predicate
               -- but `<the key's column> IS NOT NULL` (which the action's `= $1` implies).
               SELECT 1 FROM pg_index i
               WHERE i.indrelid = c.conrelid AND i.indisvalid
                 AND i.indnkeyatts >= cardinality(c.conkey)
                 AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1] @> c.conkey
                 AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1] <@ c.conkey
                 AND (i.indpred IS NULL
                      OR (cardinality(c.conkey) = 1
                          AND pg_get_expr(i.indpred, i.indrelid) = format(
                              '(%s IS NOT NULL)',
                              (SELECT quote_ident(a.attname) FROM pg_attribute a
                               WHERE a.attrelid = c.conrelid AND a.attnum = c.conkey[1])))))
         ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(unbacked, Vec::<String>::new());
}
