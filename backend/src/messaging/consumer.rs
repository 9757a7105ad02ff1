//! The consumer loop: read a batch, commit it, publish, acknowledge; reclaim and trim on
//! their intervals; hold on through outages.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fred::prelude::*;
use haberci_kit::shutdown::Shutdown;
use haberci_seam::streams::{self, Event};
use haberci_wire::{ErrorFrame, Sent};
use sqlx::PgPool;

use super::batch::{self, Decoded, Refusal, SendRequest, Watermarks};
use super::linger::{Held, Hold, Linger};
use super::shard_readers::ShardReaders;
use super::store::{self, Audience, Committed, Failure, SendOutcome};
use super::streams::{EntryId, RawEntry, Shards, StreamError};
use crate::config::MessagingSettings;

/// A batch that loses this many races in a row is treated like an outage (backed off).
pub const MAX_CONFLICT_RETRIES: u32 = 8;
/// First pause after a failure; doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Most `XAUTOCLAIM` rounds per shard per reclaim pass (each up to a batch).
pub const MAX_CLAIM_ROUNDS: u32 = 16;

/// A unique consumer name: host, process id and a random part, so that two processes never
/// share a pending list, not even after a pid is reused.
pub fn consumer_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &random[..8])
}

/// One outage of a dependency: logged once when it starts and once when it ends, and the
/// pause before the next attempt.
#[derive(Debug)]
struct Outage {
    what: &'static str,
    since: Option<Instant>,
    delay: Duration,
}

impl Outage {
    fn new(what: &'static str) -> Outage {
        Outage {
            what,
            since: None,
            delay: MIN_BACKOFF,
        }
    }

    /// Records a failure; returns how long to wait.
    fn failed(&mut self, error: &dyn std::fmt::Display) -> Duration {
        match self.since {
            None => {
                tracing::warn!(dependency = self.what, %error, "unavailable; holding the batch and retrying");
                self.since = Some(Instant::now());
                self.delay = MIN_BACKOFF;
            }
            Some(_) => {
                tracing::debug!(dependency = self.what, %error, "still unavailable");
                self.delay = (self.delay * 2).min(MAX_BACKOFF);
            }
        }
        self.delay
    }

    fn recovered(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                dependency = self.what,
                down_ms = since.elapsed().as_millis() as u64,
                "available again"
            );
        }
        self.delay = MIN_BACKOFF;
    }
}

/// Whether a wait ended because of shutdown.
async fn pause(delay: Duration, shutdown: &Shutdown) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(delay) => false,
    }
}

/// A batch could not finish.
enum Stopped {
    /// Shutdown arrived while waiting out an outage: leave the entries pending.
    Shutdown,
    /// Postgres refused the data (see [`Failure::Data`]).
    Data(sqlx::Error),
}

/// One worker's consumer of every shard.
pub struct Consumer {
    db: PgPool,
    /// Acknowledgements, publishes, claims, trims.
    redis: Client,
    /// `XREADGROUP BLOCK` only (a blocked connection serves nothing else).
    blocking: Client,
    /// On a Redis Cluster: one reader per shard (a command may not span hash slots).
    readers: Option<ShardReaders>,
    shards: Shards,
    settings: MessagingSettings,
    linger: Linger,
    /// Receipts alone, held for sends to share their transaction ([`Hold`]); pending in the
    /// streams meanwhile, like any entry read and not yet acknowledged.
    hold: Hold,
    held: Vec<RawEntry>,
    postgres_outage: Outage,
    redis_outage: Outage,
}

impl Consumer {
    /// A consumer named `name`; see [`consumer_name`].
    pub fn new(
        db: PgPool,
        redis: Client,
        blocking: Client,
        settings: MessagingSettings,
        name: &str,
    ) -> Consumer {
        Consumer {
            db,
            redis,
            blocking,
            readers: None,
            shards: Shards::new(&settings.stream_prefix, settings.shards, name),
            linger: Linger::new(
                settings.linger,
                usize::try_from(settings.batch_size).unwrap_or(usize::MAX),
            ),
            hold: Hold::new(
                settings.receipt_hold,
                usize::try_from(settings.batch_size).unwrap_or(usize::MAX),
            ),
            held: Vec::new(),
            settings,
            postgres_outage: Outage::new("postgres"),
            redis_outage: Outage::new("redis"),
        }
    }

    pub fn name(&self) -> &str {
        self.shards.consumer()
    }

    /// Consumes until `shutdown`; the batch in hand is finished first.
    pub async fn run(mut self, shutdown: Shutdown) {
        tracing::info!(consumer = self.name(), shards = self.settings.shards, prefix = %self.settings.stream_prefix, "message consumer starting");
        if !self.ensure_groups(&shutdown).await {
            return;
        }
        // Entries this consumer read before and never acknowledged come first.
        if !self.drain_own_pending(&shutdown).await {
            return;
        }
        if self.blocking.is_clustered() {
            self.readers = Some(ShardReaders::start(
                &self.shards,
                &self.blocking,
                self.settings.batch_size,
                self.settings.block,
            ));
        }
        let mut next_claim = Instant::now();
        let mut next_trim = Instant::now() + self.settings.trim_interval;
        while !shutdown.is_cancelled() {
            if Instant::now() >= next_claim {
                if !self.reclaim(&shutdown).await {
                    break;
                }
                next_claim = Instant::now() + self.settings.claim_interval;
            }
            if Instant::now() >= next_trim {
                self.trim().await;
                next_trim = Instant::now() + self.settings.trim_interval;
            }
            // Not raced with shutdown: a read cancelled in flight could leave entries
            // delivered to us and unprocessed. The block bounds how long shutdown waits.
            let block = self.hold.read_block(self.settings.block, Instant::now());
            let read = self.read_new(self.settings.batch_size, block).await;
            match read {
                Ok(mut entries) => {
                    self.redis_outage.recovered();
                    self.linger_for_more(&mut entries).await;
                    if let Some(batch) = self.hold_receipts(entries)
                        && !self.process(batch, &shutdown).await
                    {
                        break;
                    }
                }
                Err(StreamError::NoGroup(why)) => {
                    tracing::warn!(%why, "consumer group missing (Redis lost its data?); recreating it");
                    if !self.ensure_groups(&shutdown).await {
                        break;
                    }
                }
                Err(err) => {
                    // Held receipts do not wait out the outage's backoff: they go now (their
                    // acknowledgement may fail too; then they are reclaimed).
                    let held = std::mem::take(&mut self.held);
                    if !held.is_empty() && !self.process(held, &shutdown).await {
                        break;
                    }
                    let delay = self.redis_outage.failed(&err);
                    if pause(delay, &shutdown).await {
                        break;
                    }
                }
            }
        }
        let held = std::mem::take(&mut self.held);
        if !held.is_empty() {
            // Shutdown arriving while Postgres is down leaves them pending, for others.
            self.process(held, &shutdown).await;
        }
        if let Some(readers) = self.readers.take() {
            readers.stop().await;
        }
        if let Err(err) = self.shards.leave(&self.redis).await {
            tracing::debug!(%err, "could not remove this consumer from its groups");
        }
        tracing::info!(consumer = self.name(), "message consumer stopped");
    }

    /// Waits as [`Linger`] says and adds what came meanwhile to the batch (a read that fails
    /// adds nothing; the next read meets the error). Not raced with shutdown: the wait is a
    /// few milliseconds.
    async fn linger_for_more(&mut self, entries: &mut Vec<RawEntry>) {
        let wait = self.linger.after_read(entries.len(), Instant::now());
        if wait.is_zero() {
            return;
        }
        tokio::time::sleep(wait).await;
        let room = self
            .settings
            .batch_size
            .saturating_sub(u32::try_from(entries.len()).unwrap_or(u32::MAX));
        if room > 0
            && let Ok(more) = self.read_new(room, None).await
        {
            entries.extend(more);
        }
        self.linger.read_again(Instant::now());
    }

    /// Adds `entries` to the receipts held and returns the batch to commit now, if it is time
    /// ([`Hold`]): at once when any entry is not a receipt.
    fn hold_receipts(&mut self, entries: Vec<RawEntry>) -> Option<Vec<RawEntry>> {
        let receipts_only = entries
            .iter()
            .all(|entry| matches!(batch::decode(entry.payload.as_deref()), Decoded::Receipt(_)));
        self.held.extend(entries);
        if self.held.is_empty() {
            return None;
        }
        match self
            .hold
            .decide(self.held.len(), receipts_only, Instant::now())
        {
            Held::Go => Some(std::mem::take(&mut self.held)),
            Held::Until(_) => None,
        }
    }

    /// New entries from every shard, at most about `count` (per shard on a single Redis);
    /// `block`: how long to wait for the first (`None`: not at all).
    async fn read_new(
        &mut self,
        count: u32,
        block: Option<Duration>,
    ) -> Result<Vec<RawEntry>, StreamError> {
        // `BLOCK 0` would wait forever.
        let block = block.filter(|wait| !wait.is_zero());
        match &mut self.readers {
            Some(readers) => {
                readers
                    .read(usize::try_from(count).unwrap_or(usize::MAX), block)
                    .await
            }
            None => {
                let block_ms =
                    block.map(|wait| u64::try_from(wait.as_millis().max(1)).unwrap_or(u64::MAX));
                self.shards.read_new(&self.blocking, count, block_ms).await
            }
        }
    }

    /// Creates the groups, retrying through a Redis outage. `false`: shutdown.
    async fn ensure_groups(&mut self, shutdown: &Shutdown) -> bool {
        loop {
            match self.shards.ensure_groups(&self.redis).await {
                Ok(()) => {
                    self.redis_outage.recovered();
                    return true;
                }
                Err(err) => {
                    let delay = self.redis_outage.failed(&err);
                    if pause(delay, shutdown).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Processes this consumer's own pending entries (read with ID `0`, then after the last
    /// one seen, so a failing acknowledgement cannot make it loop). `false`: shutdown.
    async fn drain_own_pending(&mut self, shutdown: &Shutdown) -> bool {
        for shard in self.shards.all() {
            let mut after = EntryId::ZERO;
            loop {
                let read = self
                    .shards
                    .read_pending(&self.redis, shard, after, self.settings.batch_size)
                    .await;
                match read {
                    Ok(entries) => {
                        let Some(last) = entries.last().map(|e| e.id) else {
                            break;
                        };
                        after = last;
                        if !self.process(entries, shutdown).await {
                            return false;
                        }
                    }
                    Err(StreamError::NoGroup(_)) => {
                        if !self.ensure_groups(shutdown).await {
                            return false;
                        }
                        break;
                    }
                    Err(err) => {
                        let delay = self.redis_outage.failed(&err);
                        if pause(delay, shutdown).await {
                            return false;
                        }
                    }
                }
            }
        }
        true
    }

    /// Takes over entries other consumers (dead ones, or slow ones) left unacknowledged for
    /// longer than the claim idle time, and processes them like new ones: the batch is
    /// idempotent (duplicates are answered, receipts never move back). `false`: shutdown.
    async fn reclaim(&mut self, shutdown: &Shutdown) -> bool {
        let min_idle = u64::try_from(self.settings.claim_idle.as_millis()).unwrap_or(u64::MAX);
        for shard in self.shards.all() {
            let mut cursor = EntryId::ZERO;
            for _ in 0..MAX_CLAIM_ROUNDS {
                let claimed = self
                    .shards
                    .autoclaim(
                        &self.redis,
                        shard,
                        min_idle,
                        cursor,
                        self.settings.batch_size,
                    )
                    .await;
                match claimed {
                    Ok((entries, next)) => {
                        if !entries.is_empty() {
                            tracing::info!(
                                shard,
                                entries = entries.len(),
                                "reclaimed unacknowledged entries"
                            );
                            if !self.process(entries, shutdown).await {
                                return false;
                            }
                        }
                        if next == EntryId::ZERO {
                            break;
                        }
                        cursor = next;
                    }
                    Err(StreamError::NoGroup(_)) => {
                        if !self.ensure_groups(shutdown).await {
                            return false;
                        }
                        break;
                    }
                    Err(err) => {
                        tracing::debug!(shard, %err, "reclaim failed; next interval");
                        break;
                    }
                }
            }
        }
        true
    }

    /// Trims every shard below its trim point (see [`Shards::trim_point`]).
    async fn trim(&self) {
        for shard in self.shards.all() {
            let result = match self.shards.trim_point(&self.redis, shard).await {
                Ok(Some(point)) => self.shards.trim(&self.redis, shard, point).await,
                Ok(None) => Ok(0),
                Err(err) => Err(err),
            };
            match result {
                Ok(0) => {}
                Ok(trimmed) => tracing::debug!(shard, trimmed, "trimmed acknowledged entries"),
                Err(err) => tracing::debug!(shard, %err, "trim failed; next interval"),
            }
        }
    }

    /// One batch: decode, commit, publish, acknowledge. `false`: shutdown arrived while
    /// Postgres was down; the entries stay pending (this consumer's, reclaimable by others).
    async fn process(&mut self, entries: Vec<RawEntry>, shutdown: &Shutdown) -> bool {
        let mut decoded = Vec::with_capacity(entries.len());
        let mut sends: Vec<SendRequest> = Vec::new();
        let mut receipts = Vec::new();
        let mut poison = 0usize;
        for entry in &entries {
            let item = batch::decode(entry.payload.as_deref());
            match &item {
                Decoded::Send(send) => sends.push(send.clone()),
                Decoded::Receipt(receipt) => receipts.push(*receipt),
                Decoded::Poison(why) => {
                    poison += 1;
                    tracing::error!(
                        stream = %self.shards.key(entry.shard),
                        id = %entry.id,
                        %why,
                        "poison stream entry: acknowledged and skipped"
                    );
                }
                Decoded::Refused { .. } => {}
            }
            decoded.push(item);
        }
        let receipt_entries = receipts.len();
        let marks = batch::coalesce(receipts);
        let started = Instant::now();
        let committed = match self.commit_with_retry(&sends, &marks, shutdown).await {
            Ok(committed) => committed,
            Err(Stopped::Shutdown) => return false,
            Err(Stopped::Data(err)) => {
                tracing::error!(%err, entries = entries.len(), "postgres refused the batch; storing its entries one by one");
                match self.one_by_one(&sends, &marks, shutdown).await {
                    Some(committed) => committed,
                    None => return false,
                }
            }
        };
        let publications = publications(&decoded, &committed);
        let stored = committed
            .sends
            .iter()
            .filter(|o| matches!(o, SendOutcome::Stored(_)))
            .count();
        let duplicates = committed
            .sends
            .iter()
            .filter(|o| matches!(o, SendOutcome::Duplicate(_)))
            .count();
        let refused = decoded
            .iter()
            .filter(|d| matches!(d, Decoded::Refused { .. }))
            .count()
            + committed
                .sends
                .iter()
                .filter(|o| matches!(o, SendOutcome::Refused(_)))
                .count();
        crate::metrics::batch_committed(&crate::metrics::Batch {
            entries: entries.len(),
            took: started.elapsed(),
            stored,
            duplicates,
            refused,
            poison,
            receipts: receipt_entries,
        });
        tracing::debug!(
            entries = entries.len(),
            stored,
            duplicates,
            refused,
            poison,
            receipts = marks.len(),
            statuses = committed.statuses.len(),
            "batch committed"
        );
        // Publish, then acknowledge: if either fails the entries stay pending, and whoever
        // reclaims them answers again from the stored rows (at least once, never twice stored).
        if let Err(err) = self.publish(publications).await {
            crate::metrics::publish_failed();
            tracing::warn!(%err, "publishing a committed batch failed; its entries stay pending for reclaim");
            return true;
        }
        let mut by_shard: BTreeMap<u16, Vec<EntryId>> = BTreeMap::new();
        for entry in &entries {
            by_shard.entry(entry.shard).or_default().push(entry.id);
        }
        if let Err(err) = self.shards.ack(&self.redis, &by_shard).await {
            tracing::warn!(%err, "acknowledging a committed batch failed; its entries will be reclaimed");
        }
        true
    }

    async fn commit_with_retry(
        &mut self,
        sends: &[SendRequest],
        marks: &[Watermarks],
        shutdown: &Shutdown,
    ) -> Result<Committed, Stopped> {
        let mut conflicts = 0;
        loop {
            match store::commit(&self.db, sends, marks).await {
                Ok(committed) => {
                    self.postgres_outage.recovered();
                    return Ok(committed);
                }
                Err(err) => match store::classify(&err) {
                    Failure::Conflict if conflicts < MAX_CONFLICT_RETRIES => {
                        conflicts += 1;
                        crate::metrics::postgres_retry("conflict");
                        tracing::debug!(%err, conflicts, "batch lost a race; running it again");
                    }
                    failure @ (Failure::Conflict | Failure::Outage) => {
                        crate::metrics::postgres_retry(match failure {
                            Failure::Conflict => "conflict",
                            _ => "outage",
                        });
                        let delay = self.postgres_outage.failed(&err);
                        if pause(delay, shutdown).await {
                            return Err(Stopped::Shutdown);
                        }
                    }
                    Failure::Data => return Err(Stopped::Data(err)),
                },
            }
        }
    }

    /// Stores the entries of a refused batch one at a time, so that only the poison one is
    /// refused (`invalid_field`; a poison receipt is dropped). `None`: shutdown.
    async fn one_by_one(
        &mut self,
        sends: &[SendRequest],
        marks: &[Watermarks],
        shutdown: &Shutdown,
    ) -> Option<Committed> {
        let mut all = Committed::default();
        for send in sends {
            match self
                .commit_with_retry(std::slice::from_ref(send), &[], shutdown)
                .await
            {
                Ok(one) => all.sends.extend(one.sends),
                Err(Stopped::Shutdown) => return None,
                Err(Stopped::Data(err)) => {
                    tracing::error!(%err, session = %send.session, sender = %send.sender, client_msg_id = %send.send.client_msg_id, "postgres refused a send; answering invalid_field");
                    // Postgres refused this message's data: resending it as is cannot help.
                    all.sends.push(SendOutcome::Refused(Refusal::new(
                        haberci_wire::ErrorCode::InvalidField,
                        "the message could not be stored",
                    )));
                }
            }
        }
        for mark in marks {
            match self
                .commit_with_retry(&[], std::slice::from_ref(mark), shutdown)
                .await
            {
                Ok(one) => all.statuses.extend(one.statuses),
                Err(Stopped::Shutdown) => return None,
                Err(Stopped::Data(err)) => {
                    tracing::error!(%err, user = %mark.user, conversation = %mark.conversation, "postgres refused a receipt; dropped");
                }
            }
        }
        Some(all)
    }

    /// Publishes in order on one pipeline (one connection, so per-channel order is the
    /// order given).
    async fn publish(&self, publications: Vec<(String, Event)>) -> Result<(), fred::error::Error> {
        if publications.is_empty() {
            return Ok(());
        }
        let pipeline = self.redis.pipeline();
        for (channel, event) in publications {
            let () = pipeline.spublish(channel, event.to_json()).await?;
        }
        let _: Vec<Value> = pipeline.all().await?;
        Ok(())
    }
}

/// What to publish for a committed batch, in entry order (so each conversation's messages go
/// out in seq order), receipts last.
pub fn publications(decoded: &[Decoded], committed: &Committed) -> Vec<(String, Event)> {
    let mut out = Vec::new();
    let mut outcomes = committed.sends.iter();
    for item in decoded {
        match item {
            Decoded::Refused {
                sender,
                session,
                send,
                refusal,
            } => out.push(refused(*sender, *session, send.client_msg_id, *refusal)),
            Decoded::Send(request) => match outcomes.next() {
                Some(SendOutcome::Stored(message)) => match request.target {
                    batch::Target::Direct(peer) => {
                        out.push((
                            streams::user_channel(request.sender),
                            Event::SentMessage {
                                session: request.session,
                                client_msg_id: request.send.client_msg_id,
                                message: message.clone(),
                            },
                        ));
                        out.push((streams::user_channel(peer), Event::Message(message.clone())));
                    }
                    batch::Target::Group(_) => {
                        let sent = Sent {
                            client_msg_id: request.send.client_msg_id,
                            message_id: message.id,
                            conversation_id: message.conversation_id,
                            seq: message.seq,
                            timestamp: message.timestamp,
                        };
                        out.push((
                            streams::user_channel(request.sender),
                            Event::Sent {
                                session: request.session,
                                sent,
                            },
                        ));
                        out.push((
                            streams::conversation_channel(message.conversation_id),
                            Event::Message(message.clone()),
                        ));
                    }
                },
                Some(SendOutcome::Duplicate(sent)) => out.push((
                    streams::user_channel(request.sender),
                    Event::Sent {
                        session: request.session,
                        sent: *sent,
                    },
                )),
                Some(SendOutcome::Refused(refusal)) => out.push(refused(
                    request.sender,
                    request.session,
                    request.send.client_msg_id,
                    *refusal,
                )),
                None => {}
            },
            Decoded::Receipt(_) | Decoded::Poison(_) => {}
        }
    }
    for moved in &committed.statuses {
        let event = Event::Status(moved.status);
        match moved.audience {
            Audience::Direct(low, high) => {
                out.push((streams::user_channel(low), event.clone()));
                out.push((streams::user_channel(high), event));
            }
            Audience::Group(conversation) => {
                out.push((streams::conversation_channel(conversation), event));
            }
            Audience::User(user) => out.push((streams::user_channel(user), event)),
        }
    }
    out
}

fn refused(
    sender: haberci_wire::UserId,
    session: haberci_wire::SessionId,
    client_msg_id: haberci_wire::ClientMsgId,
    refusal: Refusal,
) -> (String, Event) {
    (
        streams::user_channel(sender),
        Event::Refused {
            session,
            error: ErrorFrame {
                code: refusal.code,
                message: refusal.message.to_owned(),
                client_msg_id: Some(client_msg_id),
            },
        },
    )
}
