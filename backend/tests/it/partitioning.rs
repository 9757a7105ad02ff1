//! The move of `messages` to its partitioned table on a database that already holds messages:
//! the staging migration, then `partition-messages` while the worker's own commit path keeps
//! storing sends. Each test makes a database of its own (the role may create databases) at
//! the schema before the move, so the shared test database (a new install, partitioned by
//! its migration at once) is not touched.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use haberci_backend::db::PARTITIONING_MIGRATION;
use haberci_backend::messaging::batch::{SendRequest, Target};
use haberci_backend::messaging::store::{self, SendOutcome};
use haberci_backend::partitioning::{self, Layout};
use haberci_wire::{
    ClientMsgId, ErrorCode, MessageKind, Recipient, SendMessage, SessionId, UserId,
};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::env;

/// A database of its own, at the schema before the partitioning migration; dropped with it.
struct Scratch {
    name: String,
    url: String,
}

impl Scratch {
    async fn new() -> Scratch {
        let admin_url = env("HABERCI_TEST_DIRECT_DATABASE_URL");
        let name = format!("haberci_partition_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let (base, _) = admin_url.rsplit_once('/').unwrap();
        let url = format!("{base}/{name}");
        let before = haberci_backend::db::migrator_before(PARTITIONING_MIGRATION);
        let mut conn = PgConnection::connect(&url).await.unwrap();
        before.run(&mut conn).await.unwrap();
        Scratch { name, url }
    }

    async fn conn(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.unwrap()
    }
}

/// Dropped even when the test fails (a panic unwinds through here): in a thread of its own,
/// since the test's runtime may be gone.
impl Drop for Scratch {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let url = env("HABERCI_TEST_DIRECT_DATABASE_URL");
                if let Ok(mut admin) = PgConnection::connect(&url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                }
            });
        })
        .join();
    }
}

async fn users(conn: &mut PgConnection, n: usize) -> Vec<UserId> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let id = Uuid::now_v7();
        let name = format!("p{}", &id.simple().to_string()[20..]);
        sqlx::query(
            "INSERT INTO users (id, username, email, display_name) VALUES ($1, $2, $2 || '@example.com', $2)",
        )
        .bind(id)
        .bind(&name)
        .execute(&mut *conn)
        .await
        .unwrap();
        ids.push(UserId::new(id).unwrap());
    }
    ids
}

/// A direct conversation of `a` and `b` as the old schema stored one, numbered up to
/// `last_seq`; returns it and its lower user (who sends its messages here).
async fn direct(
    conn: &mut PgConnection,
    a: UserId,
    b: UserId,
    last_seq: i64,
) -> (haberci_wire::ConversationId, UserId) {
    let conversation = haberci_seam::streams::direct_conversation(a, b);
    let (low, high) = if a.as_uuid() < b.as_uuid() {
        (a, b)
    } else {
        (b, a)
    };
    sqlx::query(
        "INSERT INTO conversations (id, kind, user_low, user_high, last_seq)
         VALUES ($1, 'direct', $2, $3, $4)",
    )
    .bind(conversation.as_uuid())
    .bind(low.as_uuid())
    .bind(high.as_uuid())
    .bind(last_seq)
    .execute(&mut *conn)
    .await
    .unwrap();
    (conversation, low)
}

fn send(sender: UserId, recipient: UserId, client_msg_id: Uuid, n: usize) -> SendRequest {
    SendRequest {
        sender,
        session: SessionId::new(Uuid::now_v7()).unwrap(),
        conversation: haberci_seam::streams::direct_conversation(sender, recipient),
        target: Target::Direct(recipient),
        send: SendMessage {
            client_msg_id: ClientMsgId::new(client_msg_id).unwrap(),
            recipient: Recipient::User(recipient),
            kind: MessageKind::Text,
            content: format!("message {n}"),
            media: None,
        },
    }
}

/// Commits one send through the worker's path, retrying lost races as the worker does (a
/// conflict that outlasts many retries is no race: a key the lookup missed).
async fn commit(db: &PgPool, request: &SendRequest) -> SendOutcome {
    for _ in 0..100 {
        match store::commit(db, std::slice::from_ref(request), &[]).await {
            Ok(mut committed) => return committed.sends.remove(0),
            Err(err) if store::classify(&err) == store::Failure::Conflict => continue,
            Err(err) => panic!("commit failed: {err}"),
        }
    }
    panic!("still conflicting after 100 attempts")
}

async fn layout(scratch: &Scratch) -> Layout {
    partitioning::layout(&mut scratch.conn().await)
        .await
        .unwrap()
}

#[tokio::test]
async fn partitioning_before_the_staging_migration_is_refused() {
    let scratch = Scratch::new().await;
    assert_eq!(layout(&scratch).await, Layout::Unmigrated);
    let err = partitioning::run(&scratch.url, 100).await.unwrap_err();
    assert!(
        matches!(err, partitioning::Error::Unmigrated),
        "unexpected: {err}"
    );
    assert!(err.to_string().contains("run `migrate` first"), "{err}");
}

#[tokio::test]
async fn a_second_run_at_once_is_refused() {
    let scratch = Scratch::new().await;
    let mut first = scratch.conn().await;
    // What a running partition-messages holds.
    sqlx::query("SELECT pg_advisory_lock(x'6861626572636970'::bigint)")
        .execute(&mut first)
        .await
        .unwrap();
    let err = partitioning::run(&scratch.url, 100).await.unwrap_err();
    assert!(
        matches!(err, partitioning::Error::Running),
        "unexpected: {err}"
    );
    assert!(
        err.to_string().contains("another partition-messages"),
        "{err}"
    );
}

#[tokio::test]
async fn a_database_without_messages_is_partitioned_by_the_migration_itself() {
    let scratch = Scratch::new().await;
    haberci_backend::db::migrate(&scratch.url).await.unwrap();
    assert_eq!(layout(&scratch).await, Layout::Partitioned);
    let mut conn = scratch.conn().await;
    let (partitions, legacy, leftovers): (i64, bool, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM pg_inherits WHERE inhparent = 'messages'::regclass),
                to_regclass('messages_legacy') IS NOT NULL,
                (SELECT count(*) FROM pg_proc
                 WHERE proname IN ('messages_mirror', 'messages_partitioning_swap'))",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(partitions, 16);
    assert!(!legacy, "the empty old table is dropped");
    assert_eq!(leftovers, 0, "the staging functions are dropped");
    drop(conn);
}

/// A swap that never gets its locks (a transaction holds `messages` throughout) gives up with
/// a clear error, swaps nothing, and a later run completes the move.
#[tokio::test]
async fn a_swap_that_cannot_get_its_locks_changes_nothing() {
    let scratch = Scratch::new().await;
    let mut conn = scratch.conn().await;
    let people = users(&mut conn, 2).await;
    let (conversation, low) = direct(&mut conn, people[0], people[1], 1).await;
    sqlx::query(
        "INSERT INTO messages (conversation_id, seq, id, sender_id, client_msg_id, type, content)
         VALUES ($1, 1, gen_random_uuid(), $2, gen_random_uuid(), 'text', 'held')",
    )
    .bind(conversation.as_uuid())
    .bind(low.as_uuid())
    .execute(&mut conn)
    .await
    .unwrap();
    haberci_backend::db::migrate(&scratch.url).await.unwrap();
    let mut holder = scratch.conn().await;
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("SELECT count(*) FROM messages")
        .execute(&mut holder)
        .await
        .unwrap();

    let err = partitioning::run(&scratch.url, 100).await.unwrap_err();

    assert!(
        matches!(err, partitioning::Error::Locked),
        "unexpected: {err}"
    );
    assert!(err.to_string().contains("nothing was swapped"), "{err}");
    assert_eq!(layout(&scratch).await, Layout::Staged);
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    partitioning::run(&scratch.url, 100).await.unwrap();
    assert_eq!(layout(&scratch).await, Layout::Partitioned);
}

/// A run that resumes from where an earlier one recorded it got to copies only what lies
/// after that position; the rows before it, which that earlier run did not finish, are found
/// missing by the check, copied with their keys, and the swap follows.
#[tokio::test]
async fn a_resumed_copy_repairs_what_lies_behind_its_position() {
    let scratch = Scratch::new().await;
    let mut conn = scratch.conn().await;
    let people = users(&mut conn, 2).await;
    let (conversation, low) = direct(&mut conn, people[0], people[1], 200).await;
    sqlx::query(
        "INSERT INTO messages (conversation_id, seq, id, sender_id, client_msg_id, type, content)
         SELECT $1, s, gen_random_uuid(), $2, gen_random_uuid(), 'text', 'old ' || s
         FROM generate_series(1, 200) s",
    )
    .bind(conversation.as_uuid())
    .bind(low.as_uuid())
    .execute(&mut conn)
    .await
    .unwrap();
    haberci_backend::db::migrate(&scratch.url).await.unwrap();
    // What an earlier run left: its position after seq 120, none of its copies.
    sqlx::query("INSERT INTO messages_partitioning (conversation_id, seq) VALUES ($1, 120)")
        .bind(conversation.as_uuid())
        .execute(&mut conn)
        .await
        .unwrap();

    let report = partitioning::run(&scratch.url, 50).await.unwrap();

    assert_eq!(
        report.rows, 80,
        "the copy resumed after seq 120: {report:?}"
    );
    assert_eq!(
        report.repaired,
        2 * 120,
        "120 rows and their keys: {report:?}"
    );
    assert_eq!(layout(&scratch).await, Layout::Partitioned);
    let (rows, keys, gapless): (i64, i64, bool) = sqlx::query_as(
        "SELECT count(*), (SELECT count(*) FROM message_keys),
                array_agg(seq ORDER BY seq) = array(SELECT generate_series(1, 200)::bigint)
         FROM messages",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!((rows, keys, gapless), (200, 200, true));
}

/// The whole move, with sends committed all along: nothing lost, nothing stored twice, every
/// conversation's seqs still gapless, and idempotency kept across the swap for messages stored
/// before it (a retry is answered with the original; the id reused elsewhere is refused).
#[tokio::test]
async fn messages_move_to_the_partitioned_table_while_sends_are_stored() {
    let scratch = Scratch::new().await;
    let mut conn = scratch.conn().await;
    let people = users(&mut conn, 8).await;
    // The worker's own pool: its statements run on generic plans, staged and after the swap.
    let db = haberci_backend::db::connect_worker_pool(&scratch.url, 6).unwrap();

    // Before the staging migration, as the old code stored them: four direct conversations,
    // 750 messages each, so the copy takes many batches.
    sqlx::query(
        "INSERT INTO conversations (id, kind, user_low, user_high, last_seq)
         SELECT id, 'direct', least(a, b), greatest(a, b), 750
         FROM unnest($1::uuid[], $2::uuid[], $3::uuid[]) AS t(id, a, b)",
    )
    .bind(
        (0..4)
            .map(|w| haberci_seam::streams::direct_conversation(people[w], people[4 + w]).as_uuid())
            .collect::<Vec<_>>(),
    )
    .bind((0..4).map(|w| people[w].as_uuid()).collect::<Vec<_>>())
    .bind((4..8).map(|w| people[w].as_uuid()).collect::<Vec<_>>())
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO members (conversation_id, user_id, role)
         SELECT id, user_low, 'member' FROM conversations
         UNION ALL SELECT id, user_high, 'member' FROM conversations",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    // Sender: the conversation's first user of `people` (the low half).
    let old: Vec<(Uuid, Uuid, Uuid, i64, Uuid)> = sqlx::query_as(
        "INSERT INTO messages (conversation_id, seq, id, sender_id, client_msg_id, type, content)
         SELECT c.id, s, gen_random_uuid(), t.a, gen_random_uuid(), 'text', 'old ' || s
         FROM unnest($1::uuid[], $2::uuid[]) AS t(a, b)
         JOIN conversations c ON c.user_low = least(t.a, t.b) AND c.user_high = greatest(t.a, t.b)
         CROSS JOIN generate_series(1, 750) s
         RETURNING sender_id, client_msg_id, conversation_id, seq, id",
    )
    .bind((0..4).map(|w| people[w].as_uuid()).collect::<Vec<_>>())
    .bind((4..8).map(|w| people[w].as_uuid()).collect::<Vec<_>>())
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(before, 4 * 750);

    // Staged: the code stores through the old table, the trigger copies, keys are written.
    haberci_backend::db::migrate(&scratch.url).await.unwrap();
    assert_eq!(layout(&scratch).await, Layout::Staged);

    // A worker of the release before, still running: it stores a message without its key.
    // The staging trigger writes the key (had it not, the check would have copied it).
    let late: (Uuid, Uuid, Uuid, i64, Uuid) = sqlx::query_as(
        "WITH c AS (UPDATE conversations SET last_seq = last_seq + 1
                    WHERE id = $1 RETURNING id, last_seq)
         INSERT INTO messages (conversation_id, seq, id, sender_id, client_msg_id, type, content)
         SELECT c.id, c.last_seq, gen_random_uuid(), $2, gen_random_uuid(), 'text', 'late'
         FROM c
         RETURNING sender_id, client_msg_id, conversation_id, seq, id",
    )
    .bind(haberci_seam::streams::direct_conversation(people[0], people[4]).as_uuid())
    .bind(people[0].as_uuid())
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let before = before + 1;

    // Staged, before the copy: the old rows' keys are not in `message_keys` yet, and a retry
    // of one is still answered with its original (the lookup reads the old table's key).
    let (sender, client_msg_id, _, seq, id) = old[0];
    let sender = UserId::new(sender).unwrap();
    let w = people.iter().position(|p| *p == sender).unwrap();
    match commit(&db, &send(sender, people[4 + w], client_msg_id, 0)).await {
        SendOutcome::Duplicate(sent) => {
            assert_eq!(sent.message_id.as_uuid(), id);
            assert_eq!(sent.seq.get(), seq as u64);
        }
        other => panic!("a retry while staged: {other:?}"),
    }

    // Writers on every conversation until the move is done, then a few more after it.
    let done = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let db = db.clone();
        let done = done.clone();
        let (from, to) = (people[w], people[4 + w]);
        writers.push(tokio::spawn(async move {
            let mut stored = 0usize;
            let mut after_done = 0;
            while after_done < 5 {
                if done.load(Ordering::Acquire) {
                    after_done += 1;
                }
                match commit(&db, &send(from, to, Uuid::now_v7(), stored)).await {
                    SendOutcome::Stored(_) => stored += 1,
                    other => panic!("not stored: {other:?}"),
                }
            }
            stored
        }));
    }
    let report = partitioning::run(&scratch.url, 200).await.unwrap();
    done.store(true, Ordering::Release);
    let mut written = 0;
    for writer in writers {
        written += writer.await.unwrap();
    }
    assert!(report.batches >= 15, "{report:?}");
    assert!(report.rows >= before as u64, "{report:?}");
    assert!(report.swap_attempts >= 1, "{report:?}");
    assert_eq!(layout(&scratch).await, Layout::Partitioned);

    // Every row is in the partitioned table, once, with its key; seqs are gapless.
    let (rows, keys, legacy): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM message_keys),
                (SELECT count(*) FROM messages_legacy)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(rows, before + written as i64);
    assert_eq!(keys, rows);
    assert!(legacy >= before && legacy <= rows, "{legacy} of {rows}");
    let gaps: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM conversations c
         WHERE c.last_seq <> (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id)
            OR c.last_seq <> (SELECT max(seq) FROM messages m WHERE m.conversation_id = c.id)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(gaps, 0, "every conversation holds seqs 1..=last_seq");

    // A retry of a message stored before the move gets its original; its id reused for another
    // conversation is refused.
    for (sender, client_msg_id, _, seq, id) in old.iter().step_by(601).chain([&late]) {
        let sender = UserId::new(*sender).unwrap();
        let w = people.iter().position(|p| *p == sender).unwrap();
        match commit(&db, &send(sender, people[4 + w], *client_msg_id, 0)).await {
            SendOutcome::Duplicate(sent) => {
                assert_eq!(sent.message_id.as_uuid(), *id);
                assert_eq!(sent.seq.get(), *seq as u64);
            }
            other => panic!("a retry after the move: {other:?}"),
        }
        let elsewhere = send(sender, people[4 + (w + 1) % 4], *client_msg_id, 0);
        match commit(&db, &elsewhere).await {
            SendOutcome::Refused(refusal) => assert_eq!(refusal.code, ErrorCode::InvalidField),
            other => panic!("an id reused after the move: {other:?}"),
        }
    }

    // Running it again is a no-op.
    let again = partitioning::run(&scratch.url, 200).await.unwrap();
    assert_eq!(again.swap_attempts, 0);
    db.close().await;
    drop(conn);
}
