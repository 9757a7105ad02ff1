//! Message worker throughput: stores, numbers and publishes sends already waiting in the
//! streams, on the real Postgres (through PgBouncer) and Redis of `./dev up`:
//!
//! ```sh
//! HABERCI_TEST_DATABASE_URL=postgres://…@127.0.0.1:56432/haberci_test \
//! HABERCI_TEST_REDIS_URL=redis://127.0.0.1:56379 \
//!   cargo run --release -p haberci-backend --example worker_bench -- [sends] [pairs] [workers]
//! ```
//!
//! `XADD`s `sends` direct messages spread over `pairs` conversations (own stream prefix), then
//! starts `workers` consumers in this process and reports sends stored per second, from the
//! start until every entry is acknowledged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use fred::prelude::*;
use haberci_backend::config::MessagingSettings;
use haberci_kit::shutdown::Shutdown;
use haberci_seam::streams::{self, Inbound};
use haberci_wire::{ClientMsgId, MessageKind, Recipient, SendMessage, SessionId, UserId};
use uuid::Uuid;

fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("{key} is not set"))
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let sends: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let pairs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let workers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let db = haberci_backend::db::connect_pool(&env("HABERCI_TEST_DATABASE_URL"), 4).unwrap();
    let redis_url = env("HABERCI_TEST_REDIS_URL");
    let redis = haberci_backend::redis::connect(&redis_url).unwrap();
    redis.wait_for_connect().await.unwrap();
    let settings = MessagingSettings {
        stream_prefix: format!("bench:{}:in:", Uuid::new_v4().simple()),
        ..MessagingSettings::default()
    };

    let mut users = Vec::new();
    for _ in 0..2 * pairs {
        let id = Uuid::now_v7();
        let name = format!("b_{}", &Uuid::new_v4().simple().to_string()[..16]);
        sqlx::query(
            "INSERT INTO users (id, username, email, display_name) VALUES ($1, $2, $3, 'B')",
        )
        .bind(id)
        .bind(&name)
        .bind(format!("{name}@example.com"))
        .execute(&db)
        .await
        .unwrap();
        users.push(UserId::new(id).unwrap());
    }
    let mut pipeline = redis.pipeline();
    for n in 0..sends {
        let (sender, recipient) = (users[2 * (n % pairs)], users[2 * (n % pairs) + 1]);
        let conversation = streams::direct_conversation(sender, recipient);
        let entry = Inbound::Send {
            sender,
            session: SessionId::new(Uuid::new_v4()).unwrap(),
            conversation,
            send: SendMessage {
                client_msg_id: ClientMsgId::new(Uuid::new_v4()).unwrap(),
                recipient: Recipient::User(recipient),
                kind: MessageKind::Text,
                content: format!("message {n}"),
                media: None,
            },
        };
        let key = streams::stream_key(
            &settings.stream_prefix,
            streams::shard_of(conversation, settings.shards),
        );
        let () = pipeline
            .xadd(
                key,
                false,
                None,
                "*",
                vec![(streams::ENTRY_FIELD, entry.to_json())],
            )
            .await
            .unwrap();
        if n % 1000 == 999 {
            let _: Vec<Value> = pipeline.all().await.unwrap();
            pipeline = redis.pipeline();
        }
    }
    let _: Vec<Value> = pipeline.all().await.unwrap();

    let shutdown = Shutdown::new();
    let started = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (db, url, settings, stop) = (
                db.clone(),
                redis_url.clone(),
                settings.clone(),
                shutdown.clone(),
            );
            tokio::spawn(
                async move { haberci_backend::messaging::run(db, &url, settings, stop).await },
            )
        })
        .collect();
    let senders: Vec<Uuid> = users.iter().map(UserId::as_uuid).collect();
    loop {
        let stored: i64 =
            sqlx::query_scalar("SELECT count(*) FROM messages WHERE sender_id = ANY($1)")
                .bind(&senders)
                .fetch_one(&db)
                .await
                .unwrap();
        if stored as usize >= sends {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    shutdown.cancel();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    println!(
        "{sends} sends over {pairs} conversations, {workers} worker(s): {:.2} s, {:.0} sends/s",
        elapsed.as_secs_f64(),
        sends as f64 / elapsed.as_secs_f64()
    );
    for shard in 0..settings.shards {
        let _: i64 = redis
            .del(streams::stream_key(&settings.stream_prefix, shard))
            .await
            .unwrap();
    }
}
