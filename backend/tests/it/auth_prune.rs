//! Pruning deletes refresh tokens and sessions that can no longer authenticate anything, once
//! their grace / retention period has passed, and nothing else. Rows are inserted with
//! timestamps far enough in the past that rows other tests create (at "now") never qualify.

use std::time::Duration;

use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use haberci_backend::auth::sessions::{PruneCutoffs, prune};

use crate::support::Api;

const DAY: Duration = Duration::from_secs(24 * 3600);
const GRACE: Duration = Duration::from_secs(7 * 24 * 3600);
const RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

async fn session(
    db: &PgPool,
    user: Uuid,
    expires_at: OffsetDateTime,
    revoked_at: Option<OffsetDateTime>,
) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO sessions (id, user_id, family_id, expires_at, revoked_at, revoked_reason)
         VALUES ($1, $2, $3, $4, $5, CASE WHEN $5::timestamptz IS NULL THEN NULL ELSE 'logout' END)",
    )
    .bind(id)
    .bind(user)
    .bind(Uuid::new_v4())
    .bind(expires_at)
    .bind(revoked_at)
    .execute(db)
    .await
    .unwrap();
    id
}

async fn token(
    db: &PgPool,
    session: Uuid,
    expires_at: OffsetDateTime,
    used_at: Option<OffsetDateTime>,
) -> Vec<u8> {
    let hash = Uuid::new_v4()
        .as_bytes()
        .iter()
        .chain(Uuid::new_v4().as_bytes())
        .copied()
        .collect::<Vec<u8>>();
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, session_id, family_id, expires_at, used_at)
         SELECT $1, id, family_id, $3, $4 FROM sessions WHERE id = $2",
    )
    .bind(&hash)
    .bind(session)
    .bind(expires_at)
    .bind(used_at)
    .execute(db)
    .await
    .unwrap();
    hash
}

async fn session_exists(db: &PgPool, id: Uuid) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM sessions WHERE id = $1)")
        .bind(id)
        .fetch_one(db)
        .await
        .unwrap()
}

async fn token_exists(db: &PgPool, hash: &[u8]) -> bool {
    sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM refresh_tokens WHERE token_hash = $1)",
    )
    .bind(hash)
    .fetch_one(db)
    .await
    .unwrap()
}

#[tokio::test]
async fn prune_deletes_only_what_ended_before_the_cutoffs() {
    let api = Api::new();
    let (_, registered) = api.register().await;
    let user: Uuid = registered.str("/user/id").parse().unwrap();
    let db = &api.state.db;
    let now = OffsetDateTime::now_utc();
    let ago = |days: u64| now - DAY * u32::try_from(days).unwrap();
    let later = now + DAY * 20;

    // A live session: its live token and a recently spent one stay; a long-expired spent one goes.
    let live = session(db, user, later, None).await;
    let live_token = token(db, live, later, None).await;
    let spent_recently = token(db, live, ago(1), Some(ago(2))).await;
    let spent_long_ago = token(db, live, ago(8), Some(ago(40))).await;
    // Revoked within the grace period: all stays (a spent token presented now is still a reuse).
    let just_revoked = session(db, user, later, Some(ago(1))).await;
    let just_revoked_token = token(db, just_revoked, later, Some(ago(1))).await;
    // Revoked past the grace period but within retention: tokens go, the session stays.
    let revoked = session(db, user, later, Some(ago(10))).await;
    let revoked_token = token(db, revoked, later, None).await;
    // Revoked, or expired, past retention: the sessions go, with their tokens.
    let revoked_long_ago = session(db, user, later, Some(ago(40))).await;
    let expired_long_ago = session(db, user, ago(40), None).await;
    let expired_token = token(db, expired_long_ago, ago(40), None).await;

    // A batch of one: the pass loops over batches.
    let pruned = prune(db, PruneCutoffs::at(now, GRACE, RETENTION), 1)
        .await
        .unwrap();
    assert!(pruned.refresh_tokens >= 3, "{pruned:?}");
    assert!(pruned.sessions >= 2, "{pruned:?}");

    for (what, id, kept) in [
        ("live session", live, true),
        ("just revoked session", just_revoked, true),
        ("revoked session within retention", revoked, true),
        ("session revoked past retention", revoked_long_ago, false),
        ("session expired past retention", expired_long_ago, false),
    ] {
        assert_eq!(session_exists(db, id).await, kept, "{what}");
    }
    for (what, hash, kept) in [
        ("live token", &live_token, true),
        ("recently spent token", &spent_recently, true),
        (
            "token spent and expired past the grace",
            &spent_long_ago,
            false,
        ),
        ("token of a just revoked session", &just_revoked_token, true),
        (
            "token of a session revoked past the grace",
            &revoked_token,
            false,
        ),
        (
            "token of a session expired past retention",
            &expired_token,
            false,
        ),
    ] {
        assert_eq!(token_exists(db, hash).await, kept, "{what}");
    }

    // The live session still works.
    let me = api
        .get("/v1/me", Some(&registered.str("/tokens/accessToken")))
        .await;
    assert_eq!(me.status, http::StatusCode::OK);
}
