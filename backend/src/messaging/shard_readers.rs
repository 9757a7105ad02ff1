//! Reading new entries on a Redis Cluster: one blocking reader per shard.
//!
//! On a single Redis one `XREADGROUP … BLOCK` reads every shard at once
//! ([`Shards::read_new`]). On a Redis Cluster the shards' keys (`msg:in:{N}`) hash to different
//! slots, usually on different nodes, and a command may not span slots. Each shard then gets a
//! task of its own, with a client of its own (a blocked connection serves nothing else, and
//! shards that share a node must not wait behind each other's block), which passes what it
//! reads to the consumer through a channel.
//!
//! What a reader has read is pending for this consumer until the batch it lands in is
//! acknowledged. Entries still in the channel when the worker stops stay pending, and another
//! worker claims them after `HABERCI_CLAIM_IDLE`: late, never lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fred::prelude::*;
use tokio::sync::mpsc;

use super::streams::{RawEntry, Shards, StreamError};

/// After a failed read, a reader waits this long at first, doubling up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

type Read = Result<Vec<RawEntry>, StreamError>;

pub struct ShardReaders {
    rx: mpsc::Receiver<Read>,
    stop: Arc<AtomicBool>,
    tasks: Vec<(Client, tokio::task::JoinHandle<()>)>,
    block: Duration,
}

impl ShardReaders {
    /// One reader per shard, each on a new client made like `blocking`, reading up to `count`
    /// entries at a time and blocking up to `block` per read.
    pub fn start(shards: &Shards, blocking: &Client, count: u32, block: Duration) -> ShardReaders {
        let shard_count = shards.all().count();
        let (tx, rx) = mpsc::channel(shard_count * 2);
        let stop = Arc::new(AtomicBool::new(false));
        let block_ms = u64::try_from(block.as_millis()).unwrap_or(u64::MAX);
        let tasks = shards
            .all()
            .map(|shard| {
                let client = blocking.clone_new();
                let _connection = client.connect();
                let task = tokio::spawn(read_shard(
                    shards.clone(),
                    client.clone(),
                    shard,
                    count,
                    block_ms,
                    tx.clone(),
                    stop.clone(),
                ));
                (client, task)
            })
            .collect();
        ShardReaders {
            rx,
            stop,
            tasks,
            block,
        }
    }

    /// What the readers have read: waits up to `block` for the first read (`None`: only what
    /// is already there), then adds every read already waiting while fewer than `count`.
    pub async fn read(&mut self, count: usize, block: Option<Duration>) -> Read {
        let first = match block {
            Some(block) => match tokio::time::timeout(block, self.rx.recv()).await {
                Ok(Some(read)) => read,
                Ok(None) | Err(_) => return Ok(Vec::new()),
            },
            None => match self.rx.try_recv() {
                Ok(read) => read,
                Err(_) => return Ok(Vec::new()),
            },
        };
        let mut entries = first?;
        while entries.len() < count {
            match self.rx.try_recv() {
                Ok(Ok(more)) => entries.extend(more),
                // The reader that failed retries by itself; these entries go first.
                Ok(Err(_)) | Err(_) => break,
            }
        }
        Ok(entries)
    }

    /// Stops every reader: each ends when its read in flight does (at most one block).
    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Readers blocked on a full channel must be able to finish their send.
        self.rx.close();
        for (client, task) in self.tasks {
            if tokio::time::timeout(self.block * 2, task).await.is_err() {
                tracing::warn!("a shard reader did not stop in time");
            }
            let _ = client.quit().await;
        }
    }
}

async fn read_shard(
    shards: Shards,
    client: Client,
    shard: u16,
    count: u32,
    block_ms: u64,
    tx: mpsc::Sender<Read>,
    stop: Arc<AtomicBool>,
) {
    let mut backoff = MIN_BACKOFF;
    while !stop.load(Ordering::Relaxed) {
        match shards
            .read_new_from(&client, shard, count, Some(block_ms))
            .await
        {
            Ok(entries) if entries.is_empty() => backoff = MIN_BACKOFF,
            Ok(entries) => {
                backoff = MIN_BACKOFF;
                if tx.send(Ok(entries)).await.is_err() {
                    return;
                }
            }
            Err(err) => {
                if tx.send(Err(err)).await.is_err() {
                    return;
                }
                // Pacing retries through an outage, not a wait for an event.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
