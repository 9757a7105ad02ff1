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
