//! The wire's id newtypes as Postgres values (haberci-wire's `sqlx` feature): they bind and
//! read back as `uuid`, alone, optional and in arrays, and a nil UUID read from the database
//! is a decode error, never a panic and never an id.

use haberci_wire::{ConversationId, GroupId, MediaId, PostId, UserId};
use uuid::Uuid;

use crate::env;

async fn connection() -> sqlx::PgConnection {
    <sqlx::PgConnection as sqlx::Connection>::connect(&env("HABERCI_TEST_DATABASE_URL"))
        .await
        .unwrap()
}

#[tokio::test]
async fn ids_round_trip_through_postgres_as_uuids() {
    let mut db = connection().await;
    let user = UserId::new(Uuid::now_v7()).unwrap();
    let back: UserId = sqlx::query_scalar("SELECT $1::uuid")
        .bind(user)
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(back, user);
    // The same bytes as the UUID itself: what was stored before the newtypes reads the same.
    let text: String = sqlx::query_scalar("SELECT $1::uuid::text")
        .bind(user)
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(text, user.to_string());
    let as_uuid: Uuid = sqlx::query_scalar("SELECT $1::uuid")
        .bind(user)
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(as_uuid, user.as_uuid());

    let group = GroupId::new(Uuid::now_v7()).unwrap();
    let conversation: ConversationId = sqlx::query_scalar("SELECT $1::uuid")
        .bind(group)
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(conversation.as_uuid(), group.as_uuid());

    let none: Option<MediaId> = sqlx::query_scalar("SELECT NULL::uuid")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(none, None);

    let posts: Vec<PostId> = (0..3)
        .map(|_| PostId::new(Uuid::now_v7()).unwrap())
        .collect();
    let back: Vec<PostId> = sqlx::query_scalar("SELECT $1::uuid[]")
        .bind(&posts)
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(back, posts);
    let unnested: Vec<PostId> = sqlx::query_scalar("SELECT unnest($1::uuid[])")
        .bind(&posts[..])
        .fetch_all(&mut db)
        .await
        .unwrap();
    assert_eq!(unnested, posts);
}

#[tokio::test]
async fn a_nil_uuid_from_the_database_is_a_decode_error() {
    let mut db = connection().await;
    let nil = "SELECT '00000000-0000-0000-0000-000000000000'::uuid";
    let read = sqlx::query_scalar::<_, UserId>(nil)
        .fetch_one(&mut db)
        .await;
    let err = read.expect_err("a nil id must not decode");
    assert!(matches!(err, sqlx::Error::ColumnDecode { .. }), "{err:?}");
    assert!(err.to_string().contains("nil"), "{err}");
    // In an array too, and the connection stays usable.
    let read = sqlx::query_scalar::<_, Vec<PostId>>(
        "SELECT ARRAY[gen_random_uuid(), '00000000-0000-0000-0000-000000000000'::uuid]",
    )
    .fetch_one(&mut db)
    .await;
    assert!(read.is_err());
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(one, 1);
}
