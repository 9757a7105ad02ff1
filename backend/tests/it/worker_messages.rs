//! The message worker against real Redis and Postgres (through PgBouncer): entries go in with
//! `XADD` as a gateway writes them, results are observed on the sharded pub/sub channels a
//! gateway listens to, and in the tables. Every test has its own stream prefix, users and
//! conversations, so tests running at once never read each other's entries.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use fred::prelude::*;
use haberci_backend::config::MessagingSettings;
use haberci_backend::messaging::batch::{SendRequest, Target};
use haberci_backend::messaging::streams::{EntryId, Shards};
use haberci_backend::messaging::{self, store};
use haberci_kit::shutdown::Shutdown;
use haberci_seam::streams::{self, Event, Inbound};
use haberci_wire::{
    ClientMsgId, ConversationId, ErrorCode, GroupId, MessageKind, MessageStatus, Recipient,
    SendMessage, Sent, Seq, SessionId, Status, UserId,
};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::env;
use crate::support::{TIMEOUT, unique_name};

/// One test's world: its stream prefix, a database pool, a Redis client for `XADD`.
struct World {
    settings: MessagingSettings,
    db: PgPool,
    redis: Client,
    redis_url: String,
}

impl World {
    async fn new() -> World {
        World::with(|_| {}).await
    }

    async fn with(tune: impl FnOnce(&mut MessagingSettings)) -> World {
        // The worker's logs, shown for a failing test (RUST_LOG picks the level).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "haberci_backend=info".into()),
            )
            .with_test_writer()
            .try_init();
        let mut settings = MessagingSettings {
            shards: 2,
            stream_prefix: format!("test:{}:in:", Uuid::new_v4().simple()),
            block: Duration::from_millis(200),
            ..MessagingSettings::default()
        };
        tune(&mut settings);
        let redis_url = env("HABERCI_TEST_REDIS_URL");
        let redis = haberci_backend::redis::connect(&redis_url).unwrap();
        redis.wait_for_connect().await.unwrap();
        World {
            settings,
            // The worker's own pool: its statements run on generic plans here too.
            db: haberci_backend::db::connect_worker_pool(&env("HABERCI_TEST_DATABASE_URL"), 4)
                .unwrap(),
            redis,
            redis_url,
        }
    }

    /// Starts a worker's consumer in this process.
    fn start_worker(&self) -> Worker {
        let shutdown = Shutdown::new();
        let (db, url, settings, stop) = (
            self.db.clone(),
            self.redis_url.clone(),
            self.settings.clone(),
            shutdown.clone(),
        );
        let task = tokio::spawn(async move { messaging::run(db, &url, settings, stop).await });
        Worker { shutdown, task }
    }

    fn key_of(&self, conversation: ConversationId) -> String {
        streams::stream_key(
            &self.settings.stream_prefix,
            streams::shard_of(conversation, self.settings.shards),
        )
    }

    async fn xadd_raw(&self, key: &str, fields: Vec<(&str, String)>) -> String {
        self.redis
            .xadd(key, false, None, "*", fields)
            .await
            .unwrap()
    }

    async fn xadd(&self, entry: &Inbound) -> String {
        let key = self.key_of(entry.conversation());
        self.xadd_raw(&key, vec![(streams::ENTRY_FIELD, entry.to_json())])
            .await
    }

    async fn user(&self) -> UserId {
        let id = Uuid::now_v7();
        let name = unique_name("w");
        sqlx::query(
            "INSERT INTO users (id, username, email, display_name) VALUES ($1, $2, $3, 'Worker Test')",
        )
        .bind(id)
        .bind(&name)
        .bind(format!("{name}@example.com"))
        .execute(&self.db)
        .await
        .unwrap();
        UserId::new(id).unwrap()
    }

    /// A group owned by `members[0]`.
    async fn group(&self, members: &[UserId]) -> GroupId {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO conversations (id, kind, name, created_by) VALUES ($1, 'group', 'Test group', $2)",
        )
        .bind(id)
        .bind(members[0].as_uuid())
        .execute(&self.db)
        .await
        .unwrap();
        for (i, member) in members.iter().enumerate() {
            sqlx::query("INSERT INTO members (conversation_id, user_id, role) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(member.as_uuid())
                .bind(if i == 0 { "owner" } else { "member" })
                .execute(&self.db)
                .await
                .unwrap();
        }
        GroupId::new(id).unwrap()
    }

    async fn listen(&self, channels: Vec<String>) -> Listener {
        let mut config = Config::from_url(&self.redis_url).unwrap();
        config.fail_fast = true;
        let client = Builder::from_config(config)
            .with_performance_config(|p| p.broadcast_channel_capacity = 65_536)
            .build()
            .unwrap();
        client.init().await.unwrap();
        let rx = client.message_rx();
        client.ssubscribe(channels).await.unwrap();
        Listener { client, rx }
    }

    async fn pending(&self, key: &str) -> u64 {
        let summary: Value = self
            .redis
            .xpending(key, streams::CONSUMER_GROUP, ())
            .await
            .unwrap();
        summary.into_array()[0].as_u64().unwrap_or(0)
    }

    /// Waits (bounded) until nothing is pending in `key`'s group.
    async fn until_acknowledged(&self, key: &str) {
        self.pending_becomes(key, 0).await;
    }

    /// Waits (bounded) until exactly `count` entries are pending in `key`'s group.
    async fn pending_becomes(&self, key: &str, count: u64) {
        tokio::time::timeout(TIMEOUT, async {
            while self.pending(key).await != count {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{key} never had {count} entries pending"));
    }

    async fn stored(&self, conversation: ConversationId) -> Vec<(i64, Uuid, Uuid)> {
        sqlx::query_as(
            "SELECT seq, id, client_msg_id FROM messages WHERE conversation_id = $1 ORDER BY seq",
        )
        .bind(conversation.as_uuid())
        .fetch_all(&self.db)
        .await
        .unwrap()
    }

    async fn watermarks(&self, conversation: ConversationId, user: UserId) -> (i64, i64) {
        sqlx::query_as(
            "SELECT delivered_seq, read_seq FROM members WHERE conversation_id = $1 AND user_id = $2",
        )
        .bind(conversation.as_uuid())
        .bind(user.as_uuid())
        .fetch_one(&self.db)
        .await
        .unwrap()
    }
}

struct Worker {
    shutdown: Shutdown,
    task: JoinHandle<Result<(), fred::error::Error>>,
}

impl Worker {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(TIMEOUT, self.task)
            .await
            .expect("the worker stops on shutdown")
            .unwrap()
            .unwrap();
    }
}

struct Listener {
    #[allow(dead_code)]
    client: Client,
    rx: tokio::sync::broadcast::Receiver<fred::types::Message>,
}

impl Listener {
    async fn next(&mut self) -> (String, Event) {
        let message = tokio::time::timeout(TIMEOUT, self.rx.recv())
            .await
            .expect("an event within the timeout")
            .expect("no lag, no close");
        let event = Event::from_json(message.value.as_bytes().unwrap()).unwrap();
        (message.channel.to_string(), event)
    }

    /// The next `n` events, as (channel, event).
    async fn take(&mut self, n: usize) -> Vec<(String, Event)> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.next().await);
        }
        out
    }
}

fn send(
    sender: UserId,
    recipient: Recipient,
    client_msg_id: ClientMsgId,
    content: &str,
) -> (SessionId, Inbound) {
    let session = SessionId::new(Uuid::new_v4()).unwrap();
    let conversation = match recipient {
        Recipient::User(user) => streams::direct_conversation(sender, user),
        Recipient::Group(group) => streams::group_conversation(group),
    };
    let entry = Inbound::Send {
        sender,
        session,
        conversation,
        send: SendMessage {
            client_msg_id,
            recipient,
            kind: MessageKind::Text,
            content: content.into(),
            media: None,
        },
    };
    (session, entry)
}

fn cmid() -> ClientMsgId {
    ClientMsgId::new(Uuid::new_v4()).unwrap()
}

fn seq(n: u64) -> Seq {
    Seq::new(n).unwrap()
}

fn sent_of(event: &Event) -> Option<(SessionId, Sent)> {
    match event {
        Event::Sent { session, .. } | Event::SentMessage { session, .. } => {
            Some((*session, event.sent_to(*session)?))
        }
        _ => None,
    }
}

fn refusal_of(event: &Event) -> Option<(SessionId, ErrorCode, Option<ClientMsgId>)> {
    match event {
        Event::Refused { session, error } => Some((*session, error.code, error.client_msg_id)),
        _ => None,
    }
}

#[tokio::test]
async fn a_direct_send_is_stored_then_answered_and_delivered_to_both_users() {
    let world = World::new().await;
    let (alice, bob) = (world.user().await, world.user().await);
    let mut alice_rx = world.listen(vec![streams::user_channel(alice)]).await;
    let mut bob_rx = world.listen(vec![streams::user_channel(bob)]).await;
    let worker = world.start_worker();

    let id = cmid();
    let (session, entry) = send(alice, Recipient::User(bob), id, "Merhaba Bob! 👋");
    world.xadd(&entry).await;

    // Alice's channel: one event, the answer to her session and her copy in one.
    let (_, event) = alice_rx.next().await;
    let (answered, sent) = sent_of(&event).expect("Sent");
    assert_eq!(answered, session);
    assert_eq!(sent.client_msg_id, id);
    assert_eq!(sent.seq, Seq::FIRST);
    let conversation = streams::direct_conversation(alice, bob);
    assert_eq!(sent.conversation_id, conversation);
    let Event::SentMessage { message: mine, .. } = &event else {
        panic!("the message with its Sent: {event:?}")
    };
    let (_, Event::Message(theirs)) = bob_rx.next().await else {
        panic!("bob gets the message")
    };
    assert_eq!(mine, &theirs);
    assert_eq!(theirs.id, sent.message_id);
    assert_eq!(theirs.sender_id, alice);
    assert_eq!(theirs.recipient_id, bob.into());
    assert_eq!(theirs.content, "Merhaba Bob! 👋");
    assert_eq!(theirs.status, MessageStatus::Sent);
    assert_eq!(theirs.timestamp, sent.timestamp);

    // Stored as announced: the conversation with both members, the row, last_seq.
    let stored = world.stored(conversation).await;
    assert_eq!(stored, vec![(1, sent.message_id.as_uuid(), id.as_uuid())]);
    let (kind, low, high, last_seq): (String, Uuid, Uuid, i64) = sqlx::query_as(
        "SELECT kind, user_low, user_high, last_seq FROM conversations WHERE id = $1",
    )
    .bind(conversation.as_uuid())
    .fetch_one(&world.db)
    .await
    .unwrap();
    assert_eq!(kind, "direct");
    assert!(low < high);
    assert_eq!(
        BTreeSet::from([low, high]),
        BTreeSet::from([alice.as_uuid(), bob.as_uuid()])
    );
    assert_eq!(last_seq, 1);
    let roles: Vec<String> =
        sqlx::query_scalar("SELECT role FROM members WHERE conversation_id = $1")
            .bind(conversation.as_uuid())
            .fetch_all(&world.db)
            .await
            .unwrap();
    assert_eq!(roles, vec!["member", "member"]);
    let created_at: time::OffsetDateTime =
        sqlx::query_scalar("SELECT created_at FROM messages WHERE id = $1")
            .bind(sent.message_id.as_uuid())
            .fetch_one(&world.db)
            .await
            .unwrap();
    assert_eq!(created_at, sent.timestamp.to_datetime());
    world.until_acknowledged(&world.key_of(conversation)).await;
    worker.stop().await;
}

#[tokio::test]
async fn a_retried_send_is_stored_once_and_every_retry_gets_the_original() {
    let world = World::new().await;
    let (alice, bob, carol) = (world.user().await, world.user().await, world.user().await);
    let mut alice_rx = world.listen(vec![streams::user_channel(alice)]).await;
    let id = cmid();
    // Two copies before the worker starts: they arrive in one batch.
    let (first, entry) = send(alice, Recipient::User(bob), id, "once");
    world.xadd(&entry).await;
    let (second, entry) = send(alice, Recipient::User(bob), id, "once");
    world.xadd(&entry).await;
    let worker = world.start_worker();

    let mut answers = HashMap::new();
    while answers.len() < 2 {
        if let Some((session, sent)) = sent_of(&alice_rx.next().await.1) {
            answers.insert(session, sent);
        }
    }
    // A third copy, in a later batch: deduplicated against the stored row.
    let (third, entry) = send(alice, Recipient::User(bob), id, "once");
    world.xadd(&entry).await;
    let sent = loop {
        if let Some((session, sent)) = sent_of(&alice_rx.next().await.1) {
            assert_eq!(session, third);
            break sent;
        }
    };
    assert_eq!(answers[&first], answers[&second]);
    assert_eq!(answers[&first], sent);
    assert_eq!(sent.seq, Seq::FIRST);
    let conversation = streams::direct_conversation(alice, bob);
    assert_eq!(world.stored(conversation).await.len(), 1);

    // The same client_msg_id for another conversation is refused, and stores nothing.
    let (fourth, entry) = send(alice, Recipient::User(carol), id, "elsewhere");
    world.xadd(&entry).await;
    let refusal = loop {
        if let Some(refusal) = refusal_of(&alice_rx.next().await.1) {
            break refusal;
        }
    };
    assert_eq!(refusal, (fourth, ErrorCode::InvalidField, Some(id)));
    assert!(
        world
            .stored(streams::direct_conversation(alice, carol))
            .await
            .is_empty()
    );
    worker.stop().await;
}

#[tokio::test]
async fn two_workers_number_concurrent_sends_to_one_conversation_without_gaps() {
    // Small batches, so that the two workers' batches interleave.
    let world = World::with(|s| s.batch_size = 7).await;
    let (alice, bob) = (world.user().await, world.user().await);
    let mut rx = world
        .listen(vec![
            streams::user_channel(alice),
            streams::user_channel(bob),
        ])
        .await;
    let workers = [world.start_worker(), world.start_worker()];
    const EACH: usize = 100;
    let mut expected = BTreeSet::new();
    let adders = [(alice, bob), (bob, alice)].map(|(from, to)| {
        let entries: Vec<Inbound> = (0..EACH)
            .map(|n| send(from, Recipient::User(to), cmid(), &format!("{n}")).1)
            .collect();
        for entry in &entries {
            if let Inbound::Send { send, .. } = entry {
                expected.insert(send.client_msg_id);
            }
        }
        let redis = world.redis.clone();
        let key = world.key_of(streams::direct_conversation(alice, bob));
        tokio::spawn(async move {
            for entry in entries {
                let _: String = redis
                    .xadd(
                        key.as_str(),
                        false,
                        None,
                        "*",
                        vec![(streams::ENTRY_FIELD, entry.to_json())],
                    )
                    .await
                    .unwrap();
            }
        })
    });
    for adder in adders {
        adder.await.unwrap();
    }
    let mut answered: HashMap<ClientMsgId, Sent> = HashMap::new();
    while answered.len() < 2 * EACH {
        if let Some((_, sent)) = sent_of(&rx.next().await.1) {
            assert!(answered.insert(sent.client_msg_id, sent).is_none());
        }
    }
    let conversation = streams::direct_conversation(alice, bob);
    let stored = world.stored(conversation).await;
    let seqs: Vec<i64> = stored.iter().map(|row| row.0).collect();
    assert_eq!(seqs, (1..=2 * EACH as i64).collect::<Vec<_>>());
    let stored_ids: BTreeSet<ClientMsgId> = stored
        .iter()
        .map(|row| ClientMsgId::new(row.2).unwrap())
        .collect();
    assert_eq!(stored_ids, expected);
    for (seq, id, client_msg_id) in stored {
        let sent = answered[&ClientMsgId::new(client_msg_id).unwrap()];
        assert_eq!(
            (sent.seq.get() as i64, sent.message_id.as_uuid()),
            (seq, id)
        );
    }
    let last_seq: i64 = sqlx::query_scalar("SELECT last_seq FROM conversations WHERE id = $1")
        .bind(conversation.as_uuid())
        .fetch_one(&world.db)
        .await
        .unwrap();
    assert_eq!(last_seq, 2 * EACH as i64);
    for worker in workers {
        worker.stop().await;
    }
}

#[tokio::test]
async fn group_sends_need_membership_and_unknown_recipients_are_refused() {
    let world = World::new().await;
    let (alice, bob, carol) = (world.user().await, world.user().await, world.user().await);
    let group = world.group(&[alice, bob]).await;
    let conversation = streams::group_conversation(group);
    let mut group_rx = world
        .listen(vec![streams::conversation_channel(conversation)])
        .await;
    let mut alice_rx = world.listen(vec![streams::user_channel(alice)]).await;
    let mut carol_rx = world.listen(vec![streams::user_channel(carol)]).await;
    let worker = world.start_worker();

    let (session, entry) = send(alice, Recipient::Group(group), cmid(), "hello group");
    world.xadd(&entry).await;
    let (answered, sent) = sent_of(&alice_rx.next().await.1).expect("Sent");
    assert_eq!((answered, sent.seq), (session, Seq::FIRST));
    let (channel, Event::Message(message)) = group_rx.next().await else {
        panic!("the message on the group's channel")
    };
    assert_eq!(channel, streams::conversation_channel(conversation));
    assert_eq!(message.recipient_id, group.into());
    assert_eq!(message.id, sent.message_id);

    // Refusals, each answered to its own session on the sender's channel.
    let ghost_group = GroupId::new(Uuid::now_v7()).unwrap();
    let ghost_user = UserId::new(Uuid::now_v7()).unwrap();
    let too_big = "x".repeat(haberci_wire::MAX_CONTENT_BYTES + 1);
    let cases = [
        (
            carol,
            Recipient::Group(group),
            "not mine",
            ErrorCode::Forbidden,
        ),
        (
            carol,
            Recipient::Group(ghost_group),
            "nobody",
            ErrorCode::UnknownRecipient,
        ),
        (
            carol,
            Recipient::User(ghost_user),
            "nobody",
            ErrorCode::UnknownRecipient,
        ),
        (carol, Recipient::User(carol), "me", ErrorCode::InvalidField),
        (
            carol,
            Recipient::User(alice),
            too_big.as_str(),
            ErrorCode::ContentTooLarge,
        ),
    ];
    for (sender, recipient, content, code) in cases {
        let id = cmid();
        let (session, entry) = send(sender, recipient, id, content);
        world.xadd(&entry).await;
        let (channel, event) = carol_rx.next().await;
        assert_eq!(channel, streams::user_channel(carol));
        assert_eq!(
            refusal_of(&event),
            Some((session, code, Some(id))),
            "{recipient:?}"
        );
    }
    // A conversation that does not match the recipient is refused too.
    let id = cmid();
    let (session, mut entry) = send(carol, Recipient::User(alice), id, "crossed");
    if let Inbound::Send { conversation, .. } = &mut entry {
        *conversation = streams::group_conversation(group);
    }
    world.xadd(&entry).await;
    assert_eq!(
        refusal_of(&carol_rx.next().await.1),
        Some((session, ErrorCode::InvalidField, Some(id)))
    );

    assert_eq!(world.stored(conversation).await.len(), 1);
    for conversation in [
        streams::group_conversation(ghost_group),
        streams::direct_conversation(carol, ghost_user),
    ] {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM conversations WHERE id = $1)")
                .bind(conversation.as_uuid())
                .fetch_one(&world.db)
                .await
                .unwrap();
        assert!(!exists);
    }
    worker.stop().await;
}

#[tokio::test]
async fn poison_entries_are_acknowledged_and_do_not_block_the_stream() {
    let world = World::with(|s| s.shards = 1).await;
    let (alice, bob) = (world.user().await, world.user().await);
    let mut alice_rx = world.listen(vec![streams::user_channel(alice)]).await;
    let key = streams::stream_key(&world.settings.stream_prefix, 0);
    world
        .xadd_raw(&key, vec![(streams::ENTRY_FIELD, "{not json".to_owned())])
        .await;
    world
        .xadd_raw(&key, vec![("other", "no entry field".to_owned())])
        .await;
    world
        .xadd_raw(
            &key,
            vec![(
                streams::ENTRY_FIELD,
                r#"{"op":"ack","user":"nil"}"#.to_owned(),
            )],
        )
        .await;
    let (session, entry) = send(alice, Recipient::User(bob), cmid(), "after the poison");
    world.xadd(&entry).await;
    let worker = world.start_worker();

    let (answered, sent) = sent_of(&alice_rx.next().await.1).expect("Sent");
    assert_eq!((answered, sent.seq), (session, Seq::FIRST));
    world.until_acknowledged(&key).await;
    worker.stop().await;
}

#[tokio::test]
async fn receipts_raise_watermarks_never_backwards_clamped_and_announce_them() {
    let world = World::new().await;
    let (alice, bob, carol) = (world.user().await, world.user().await, world.user().await);
    let conversation = streams::direct_conversation(alice, bob);
    let mut alice_rx = world.listen(vec![streams::user_channel(alice)]).await;
    let mut bob_rx = world.listen(vec![streams::user_channel(bob)]).await;
    let worker = world.start_worker();
    for n in 0..3 {
        world
            .xadd(&send(alice, Recipient::User(bob), cmid(), &format!("m{n}")).1)
            .await;
    }
    // alice: one SentMessage per send; bob: Message per send.
    alice_rx.take(3).await;
    bob_rx.take(3).await;

    let ack = |user, n| Inbound::Ack {
        user,
        conversation,
        seq: seq(n),
    };
    let read = |user, n| Inbound::Read {
        user,
        conversation,
        seq: seq(n),
    };
    let status = |delivered: Option<u64>, read: Option<u64>| {
        Event::Status(Status {
            conversation_id: conversation,
            user_id: bob,
            delivered: delivered.map(seq),
            read: read.map(seq),
        })
    };
    // Each step: entries, then the status alice hears next, and whether bob's own sessions
    // hear it too (only when a read is among the receipts: an Ack alone is for the sender).
    // Should bob hear a step he should not, his next assertion meets the wrong status.
    type Step = (Vec<Inbound>, Event, bool, (i64, i64));
    let steps: Vec<Step> = vec![
        (vec![ack(bob, 2)], status(Some(2), None), false, (2, 0)),
        (vec![read(bob, 1)], status(Some(2), Some(1)), true, (2, 1)),
        // Backwards, a non-member, then one that moves: only the last is announced. (No Read
        // among them: whether bob hears would then depend on how the worker batches them.)
        (
            vec![ack(bob, 1), ack(carol, 3), ack(bob, 3)],
            status(Some(3), Some(1)),
            false,
            (3, 1),
        ),
        // Beyond the last message: clamped to last_seq.
        (vec![read(bob, 99)], status(Some(3), Some(3)), true, (3, 3)),
    ];
    for (entries, expected, bob_hears, marks) in steps {
        for entry in &entries {
            world.xadd(entry).await;
        }
        assert_eq!(alice_rx.next().await.1, expected);
        if bob_hears {
            assert_eq!(bob_rx.next().await.1, expected);
        }
        assert_eq!(world.watermarks(conversation, bob).await, marks);
    }
    // Carol is no member: nothing was created for her.
    let rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM members WHERE conversation_id = $1 AND user_id = $2",
    )
    .bind(conversation.as_uuid())
    .bind(carol.as_uuid())
    .fetch_one(&world.db)
    .await
    .unwrap();
    assert_eq!(rows, 0);

    // In a group, the status goes to the conversation's channel.
    let group = world.group(&[alice, bob]).await;
    let group_conversation = streams::group_conversation(group);
    let mut group_rx = world
        .listen(vec![streams::conversation_channel(group_conversation)])
        .await;
    world
        .xadd(&send(alice, Recipient::Group(group), cmid(), "g").1)
        .await;
    assert!(matches!(group_rx.next().await.1, Event::Message(_)));
    world
        .xadd(&Inbound::Read {
            user: bob,
            conversation: group_conversation,
            seq: Seq::FIRST,
        })
        .await;
    assert_eq!(
        group_rx.next().await.1,
        Event::Status(Status {
            conversation_id: group_conversation,
            user_id: bob,
            delivered: Some(Seq::FIRST),
            read: Some(Seq::FIRST),
        })
    );
    worker.stop().await;
}

#[tokio::test]
async fn entries_a_dead_consumer_left_unacknowledged_are_reclaimed_and_stored_once() {
    let world = World::with(|s| {
        s.shards = 1;
        s.claim_idle = Duration::from_millis(300);
        s.claim_interval = Duration::from_millis(100);
    })
    .await;
    let (alice, bob) = (world.user().await, world.user().await);
    let mut alice_rx = world.listen(vec![streams::user_channel(alice)]).await;
    let key = streams::stream_key(&world.settings.stream_prefix, 0);
    let shards = Shards::new(&world.settings.stream_prefix, 1, "dead-worker");
    shards.ensure_groups(&world.redis).await.unwrap();
    let mut entries = Vec::new();
    for n in 0..5 {
        let (_, entry) = send(alice, Recipient::User(bob), cmid(), &format!("m{n}"));
        world.xadd(&entry).await;
        entries.push(entry);
    }
    // The dead worker read all five, committed the first, and died before acknowledging.
    let read = shards
        .read_pending(&world.redis, 0, EntryId::ZERO, 100)
        .await
        .unwrap();
    assert!(read.is_empty(), "nothing pending before the read");
    let taken: Value = world
        .redis
        .xreadgroup(
            streams::CONSUMER_GROUP,
            "dead-worker",
            Some(100),
            None,
            false,
            key.as_str(),
            ">",
        )
        .await
        .unwrap();
    assert!(!taken.is_null());
    assert_eq!(world.pending(&key).await, 5);
    let Inbound::Send {
        sender,
        session,
        conversation,
        send: first,
    } = entries[0].clone()
    else {
        unreachable!()
    };
    let committed = store::commit(
        &world.db,
        &[SendRequest {
            sender,
            session,
            conversation,
            target: Target::Direct(bob),
            send: first.clone(),
        }],
        &[],
    )
    .await
    .unwrap();
    let store::SendOutcome::Stored(original) = &committed.sends[0] else {
        panic!("{committed:?}")
    };

    let worker = world.start_worker();
    let mut answered: HashMap<ClientMsgId, Sent> = HashMap::new();
    while answered.len() < 5 {
        if let Some((_, sent)) = sent_of(&alice_rx.next().await.1) {
            answered.insert(sent.client_msg_id, sent);
        }
    }
    // The one the dead worker committed is answered with its original.
    let again = answered[&first.client_msg_id];
    assert_eq!(
        (again.message_id, again.seq, again.timestamp),
        (original.id, original.seq, original.timestamp)
    );
    let stored = world.stored(conversation).await;
    assert_eq!(
        stored.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    world.until_acknowledged(&key).await;
    worker.stop().await;
}

#[tokio::test]
async fn trimming_removes_only_acknowledged_entries() {
    let world = World::with(|s| s.shards = 1).await;
    let shards = Shards::new(&world.settings.stream_prefix, 1, "trim-test");
    let key = shards.key(0);
    let redis = &world.redis;
    // No stream yet: nothing to trim.
    assert_eq!(shards.trim_point(redis, 0).await.unwrap(), None);
    shards.ensure_groups(redis).await.unwrap();
    let mut ids = Vec::new();
    for n in 0..3 {
        let id = world
            .xadd_raw(&key, vec![(streams::ENTRY_FIELD, format!("{n}"))])
            .await;
        ids.push(id.parse::<EntryId>().unwrap());
    }
    let len = |redis: Client, key: String| async move {
        let n: u64 = redis.xlen(key).await.unwrap();
        n
    };
    // Nothing delivered: nothing goes.
    let point = shards.trim_point(redis, 0).await.unwrap().unwrap();
    assert_eq!(shards.trim(redis, 0, point).await.unwrap(), 0);

    // Deliver the three; acknowledge the first two; add two that nobody has read yet.
    let read = shards
        .read_pending(redis, 0, EntryId::ZERO, 10)
        .await
        .unwrap();
    assert!(read.is_empty());
    let _: Value = redis
        .xreadgroup(
            streams::CONSUMER_GROUP,
            "trim-test",
            Some(3),
            None,
            false,
            key.as_str(),
            ">",
        )
        .await
        .unwrap();
    shards
        .ack(redis, &[(0, ids[..2].to_vec())].into())
        .await
        .unwrap();
    for n in 3..5 {
        let id = world
            .xadd_raw(&key, vec![(streams::ENTRY_FIELD, format!("{n}"))])
            .await;
        ids.push(id.parse::<EntryId>().unwrap());
    }
    let point = shards.trim_point(redis, 0).await.unwrap().unwrap();
    assert_eq!(point, ids[2], "the oldest pending entry");
    assert_eq!(shards.trim(redis, 0, point).await.unwrap(), 2);
    assert_eq!(len(redis.clone(), key.clone()).await, 3);

    // Acknowledged, nothing pending: trimmed up to the last delivered, never the unread.
    shards
        .ack(redis, &[(0, ids[2..3].to_vec())].into())
        .await
        .unwrap();
    let point = shards.trim_point(redis, 0).await.unwrap().unwrap();
    assert_eq!(point, ids[2].next());
    assert_eq!(shards.trim(redis, 0, point).await.unwrap(), 1);
    let left: Value = redis.xrange(key.as_str(), "-", "+", None).await.unwrap();
    let left: Vec<String> = left
        .into_array()
        .into_iter()
        .map(|entry| entry.into_array()[0].as_string().unwrap())
        .collect();
    assert_eq!(left, vec![ids[3].to_string(), ids[4].to_string()]);
}

#[tokio::test]
async fn a_worker_recreates_a_lost_consumer_group_and_reads_what_came_meanwhile() {
    let world = World::with(|s| s.shards = 1).await;
    let (alice, bob) = (world.user().await, world.user().await);
    let mut alice_rx = world.listen(vec![streams::user_channel(alice)]).await;
    let key = streams::stream_key(&world.settings.stream_prefix, 0);
    let worker = world.start_worker();
    world
        .xadd(&send(alice, Recipient::User(bob), cmid(), "before").1)
        .await;
    assert!(sent_of(&alice_rx.next().await.1).is_some());
    world.until_acknowledged(&key).await;

    // As if Redis restarted without its data: the stream and its group are gone.
    let _: i64 = world.redis.del(key.as_str()).await.unwrap();
    let (session, entry) = send(alice, Recipient::User(bob), cmid(), "after");
    world.xadd(&entry).await;
    let (answered, sent) = loop {
        if let Some(sent) = sent_of(&alice_rx.next().await.1) {
            break sent;
        }
    };
    assert_eq!((answered, sent.seq), (session, seq(2)));
    worker.stop().await;
}

#[tokio::test]
async fn in_a_large_group_only_a_members_read_is_announced_and_only_to_their_own_sessions() {
    let world = World::new().await;
    let mut members = Vec::new();
    for _ in 0..=store::STATUS_BROADCAST_MAX_MEMBERS {
        members.push(world.user().await);
    }
    let (alice, bob) = (members[0], members[1]);
    let group = world.group(&members).await;
    let conversation = streams::group_conversation(group);
    let mut group_rx = world
        .listen(vec![streams::conversation_channel(conversation)])
        .await;
    let mut bob_rx = world.listen(vec![streams::user_channel(bob)]).await;
    let worker = world.start_worker();

    world
        .xadd(&send(alice, Recipient::Group(group), cmid(), "one").1)
        .await;
    assert!(matches!(group_rx.next().await.1, Event::Message(_)));
    // Bob's Ack moves his delivered mark and is announced to no one: not on the group's
    // channel, where the next thing is the next message (the worker publishes batch after
    // batch, so a Status there would come first)…
    world
        .xadd(&Inbound::Ack {
            user: bob,
            conversation,
            seq: Seq::FIRST,
        })
        .await;
    world
        .xadd(&send(alice, Recipient::Group(group), cmid(), "two").1)
        .await;
    match group_rx.next().await.1 {
        Event::Message(message) => assert_eq!(message.content, "two"),
        other => panic!("expected the second message, got {other:?}"),
    }
    let two = Seq::new(2).unwrap();
    world
        .xadd(&Inbound::Read {
            user: bob,
            conversation,
            seq: two,
        })
        .await;
    // …nor on Bob's own channel, where the first Status is his Read's: his other sessions
    // hear what he read.
    let expected = Event::Status(Status {
        conversation_id: conversation,
        user_id: bob,
        delivered: Some(two),
        read: Some(two),
    });
    loop {
        let (channel, event) = bob_rx.next().await;
        assert_eq!(channel, streams::user_channel(bob));
        if matches!(event, Event::Status(_)) {
            assert_eq!(event, expected, "the Ack was not announced");
            break;
        }
    }
    // The Read is not on the group's channel either.
    world
        .xadd(&send(alice, Recipient::Group(group), cmid(), "three").1)
        .await;
    match group_rx.next().await.1 {
        Event::Message(message) => assert_eq!(message.content, "three"),
        other => panic!("expected the third message, got {other:?}"),
    }
    worker.stop().await;
}

impl World {
    async fn block(&self, blocker: UserId, blocked: UserId) {
        sqlx::query("INSERT INTO blocks (blocker_id, blocked_id) VALUES ($1, $2)")
            .bind(blocker.as_uuid())
            .bind(blocked.as_uuid())
            .execute(&self.db)
            .await
            .unwrap();
    }

    async fn unblock(&self, blocker: UserId, blocked: UserId) {
        sqlx::query("DELETE FROM blocks WHERE blocker_id = $1 AND blocked_id = $2")
            .bind(blocker.as_uuid())
            .bind(blocked.as_uuid())
            .execute(&self.db)
            .await
            .unwrap();
    }

    async fn conversation_exists(&self, conversation: ConversationId) -> bool {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM conversations WHERE id = $1)")
            .bind(conversation.as_uuid())
            .fetch_one(&self.db)
            .await
            .unwrap()
    }
}

fn direct_request(sender: UserId, peer: UserId, content: &str) -> SendRequest {
    let (session, entry) = send(sender, Recipient::User(peer), cmid(), content);
    let Inbound::Send {
        conversation, send, ..
    } = entry
    else {
        unreachable!()
    };
    SendRequest {
        sender,
        session,
        conversation,
        target: Target::Direct(peer),
        send,
    }
}

#[tokio::test]
async fn a_direct_send_across_a_block_is_refused_either_way_and_goes_through_after_unblock() {
    let world = World::new().await;
    let (sender, recipient) = (world.user().await, world.user().await);
    let conversation = streams::direct_conversation(sender, recipient);
    let mut sender_rx = world.listen(vec![streams::user_channel(sender)]).await;
    let mut recipient_rx = world.listen(vec![streams::user_channel(recipient)]).await;
    let worker = world.start_worker();

    // The recipient blocked the sender; then the sender blocked the recipient too; then
    // only the sender's block is left. Each is refused with `blocked`, nothing is stored,
    // and no conversation appears in either user's list.
    world.block(recipient, sender).await;
    for step in 0..3 {
        if step == 1 {
            world.block(sender, recipient).await;
        }
        if step == 2 {
            world.unblock(recipient, sender).await;
        }
        let id = cmid();
        let (session, entry) = send(sender, Recipient::User(recipient), id, "merhaba");
        world.xadd(&entry).await;
        let (channel, event) = sender_rx.next().await;
        assert_eq!(channel, streams::user_channel(sender));
        assert_eq!(
            refusal_of(&event),
            Some((session, ErrorCode::Blocked, Some(id))),
            "step {step}: {event:?}"
        );
        let Event::Refused { error, .. } = &event else {
            unreachable!()
        };
        assert!(!error.code.is_fatal() && !error.code.retryable());
        world.until_acknowledged(&world.key_of(conversation)).await;
        assert!(world.stored(conversation).await.is_empty(), "step {step}");
        assert!(
            !world.conversation_exists(conversation).await,
            "step {step}"
        );
    }

    // Unblocked: the same kind of send goes through and reaches the recipient.
    world.unblock(sender, recipient).await;
    let id = cmid();
    let (session, entry) = send(sender, Recipient::User(recipient), id, "tekrar merhaba");
    world.xadd(&entry).await;
    let (answered, sent) = sent_of(&sender_rx.next().await.1).expect("Sent after unblock");
    assert_eq!(
        (answered, sent.client_msg_id, sent.seq),
        (session, id, Seq::FIRST)
    );
    let (_, Event::Message(message)) = recipient_rx.next().await else {
        panic!("the message reaches the recipient")
    };
    assert_eq!(message.content, "tekrar merhaba");
    assert_eq!(world.stored(conversation).await.len(), 1);
    worker.stop().await;
}

#[tokio::test]
async fn a_blocked_send_in_a_batch_leaves_the_others_and_a_retry_of_a_stored_one_gets_its_original()
{
    let world = World::new().await;
    let (alice, bob, carol) = (world.user().await, world.user().await, world.user().await);
    // Stored before the block.
    let earlier = direct_request(alice, bob, "before");
    let committed = store::commit(&world.db, std::slice::from_ref(&earlier), &[])
        .await
        .unwrap();
    let store::SendOutcome::Stored(original) = &committed.sends[0] else {
        panic!("{committed:?}")
    };
    world.block(bob, alice).await;

    // One batch: a blocked send, a send to someone else, the retry of the stored one, and
    // a send the other way across the block.
    let blocked = direct_request(alice, bob, "after");
    let to_carol = direct_request(alice, carol, "hi carol");
    let back = direct_request(bob, alice, "from the blocker");
    let batch = [blocked, to_carol, earlier.clone(), back];
    let committed = store::commit(&world.db, &batch, &[]).await.unwrap();
    let codes: Vec<_> = committed
        .sends
        .iter()
        .map(|outcome| match outcome {
            store::SendOutcome::Refused(refusal) => Some(refusal.code),
            _ => None,
        })
        .collect();
    assert_eq!(
        codes,
        [
            Some(ErrorCode::Blocked),
            None,
            None,
            Some(ErrorCode::Blocked)
        ],
        "{committed:?}"
    );
    assert!(matches!(&committed.sends[1], store::SendOutcome::Stored(m) if m.seq == Seq::FIRST));
    match &committed.sends[2] {
        store::SendOutcome::Duplicate(sent) => {
            assert_eq!((sent.message_id, sent.seq), (original.id, original.seq))
        }
        other => panic!("the retry gets its original: {other:?}"),
    }
    let ab = streams::direct_conversation(alice, bob);
    assert_eq!(
        world.stored(ab).await.len(),
        1,
        "only the message before the block"
    );
    assert_eq!(
        world
            .stored(streams::direct_conversation(alice, carol))
            .await
            .len(),
        1
    );
}

/// The worker's connections plan each statement once (docs/BENCHMARKS.md, #18 ninth round):
/// left to `auto`, Postgres planned every execution of a batch of one again.
#[tokio::test]
async fn the_workers_connections_plan_each_statement_once() {
    let db =
        haberci_backend::db::connect_worker_pool(&env("HABERCI_TEST_DATABASE_URL"), 1).unwrap();
    let mode: String = sqlx::query_scalar("SELECT current_setting('plan_cache_mode')")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(mode, "force_generic_plan");
    // Only the worker's: the API's connections keep Postgres's default, also on the server
    // connection PgBouncer hands on once the worker's client has gone (`DISCARD ALL`).
    db.close().await;
    let api = haberci_backend::db::connect_pool(&env("HABERCI_TEST_DATABASE_URL"), 1).unwrap();
    let mode: String = sqlx::query_scalar("SELECT current_setting('plan_cache_mode')")
        .fetch_one(&api)
        .await
        .unwrap();
    assert_eq!(mode, "auto");
}

/// A database behind this release (a function or table its migrations add is missing) is
/// an outage to wait out, not bad data: a batch refused as data would answer every send
/// `invalid_field` and acknowledge it. A value Postgres cannot store stays bad data.
#[tokio::test]
async fn a_database_behind_this_release_is_waited_for_and_bad_data_is_not() {
    let db = haberci_backend::db::connect_pool(&env("HABERCI_TEST_DATABASE_URL"), 1).unwrap();
    let missing_function = sqlx::query("SELECT worker_function_of_a_later_release($1)")
        .bind(1_i64)
        .execute(&db)
        .await
        .unwrap_err();
    assert_eq!(store::classify(&missing_function), store::Failure::Outage);
    let missing_table = sqlx::query("SELECT 1 FROM table_of_a_later_release")
        .execute(&db)
        .await
        .unwrap_err();
    assert_eq!(store::classify(&missing_table), store::Failure::Outage);
    let nul = sqlx::query("SELECT $1::text")
        .bind("a\0b")
        .execute(&db)
        .await
        .unwrap_err();
    assert_eq!(store::classify(&nul), store::Failure::Data, "{nul}");
}

/// Receipts alone are held for sends to share their transaction: read, pending, not yet
/// stored. A send that comes takes them along; held ones still there at shutdown are
/// committed before the worker stops.
#[tokio::test]
async fn receipts_alone_wait_for_a_send_and_are_committed_at_shutdown() {
    // A hold far longer than the test: only a send or the shutdown can release them.
    let world = World::with(|s| s.receipt_hold = Duration::from_secs(600)).await;
    let (alice, bob) = (world.user().await, world.user().await);
    let conversation = streams::direct_conversation(alice, bob);
    let mut alice_rx = world.listen(vec![streams::user_channel(alice)]).await;
    let worker = world.start_worker();
    for n in 0..3 {
        world
            .xadd(&send(alice, Recipient::User(bob), cmid(), &format!("m{n}")).1)
            .await;
    }
    alice_rx.take(3).await;
    let key = world.key_of(conversation);
    world.until_acknowledged(&key).await;
    let ack = |n| Inbound::Ack {
        user: bob,
        conversation,
        seq: seq(n),
    };

    // Held: the worker has read it (pending), and the watermark has not moved.
    world.xadd(&ack(1)).await;
    world.pending_becomes(&key, 1).await;
    assert_eq!(world.watermarks(conversation, bob).await, (0, 0));

    // A send takes it along: both in one batch, the receipt stored and announced.
    world
        .xadd(&send(alice, Recipient::User(bob), cmid(), "m3").1)
        .await;
    world.pending_becomes(&key, 0).await;
    assert_eq!(world.watermarks(conversation, bob).await, (1, 0));

    // Held again, then the shutdown commits it.
    world.xadd(&ack(3)).await;
    world.pending_becomes(&key, 1).await;
    assert_eq!(world.watermarks(conversation, bob).await, (1, 0));
    worker.stop().await;
    assert_eq!(world.watermarks(conversation, bob).await, (3, 0));
    world.pending_becomes(&key, 0).await;
}
