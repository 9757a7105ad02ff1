//! The Postgres half of a batch: one transaction that numbers and stores its sends and moves
//! its receipt watermarks. What to read and what each send becomes is decided by
//! [`super::plan`]; this module runs its statements.
//!
//! Order inside the transaction, and why:
//!
//! 1. Senders and direct recipients must exist (one `SELECT … ANY`); blocks between a direct
//!    message's two users (either way) are read in one statement, and such a send is refused
//!    with `blocked` after step 4 (a retry of a message stored before the block is still
//!    answered with its original `Sent`) and creates no conversation in step 2.
//! 2. Missing direct conversations are created with both members (`INSERT … ON CONFLICT DO
//!    NOTHING`, in id order).
//! 3. The batch's conversations are locked `FOR UPDATE` in id order. Invariant: whoever
//!    numbers messages or changes a group's membership holds this lock, so from here on
//!    `last_seq` and membership cannot change under us. Membership is checked against the
//!    database inside the lock: correct by construction (a cache is a later optimisation).
//! 4. Duplicates by `(sender_id, client_msg_id)` are looked up *after* the lock: under READ
//!    COMMITTED each statement sees what committed before it, so a concurrent worker's
//!    insert of the same message is visible once its lock is released. A duplicate (in the
//!    database, or earlier in the same batch) is answered with the original's id, seq and
//!    timestamp; the same id reused for another conversation is refused. Then group
//!    membership (one statement) and media uploads (one statement, 4b).
//! 5. Seqs `last_seq + 1 …` in entry order, one multi-row `INSERT … SELECT FROM unnest`,
//!    `last_seq` updated. Timestamps come from the database clock (ms), read after the lock,
//!    so they never go backwards along a conversation's seqs.
//! 6. Receipts: `delivered_seq`/`read_seq` raised, never lowered, clamped to `last_seq`.
//!
//! A statement whose input is empty is not sent. A unique violation, serialization failure or
//! deadlock aborts the batch; the caller runs it again ([`Failure::Conflict`]) and the retry's
//! step 4 sees the rows that won.

use std::collections::{HashMap, HashSet};

use haberci_wire::{
    ClientMsgId, ConversationId, MediaId, MediaInfo, MessageId, Seq, Status, Timestamp, UserId,
};
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use super::batch::{SendRequest, Watermarks};
use super::plan::{Block, Locked, NewDirect, NewMessage, Original, Plan, StoredAs, Upload};
use crate::conversations;
use crate::media::store::MediaRow;

pub use super::plan::SendOutcome;

/// A member's watermarks that moved, and who hears about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MovedStatus {
    pub status: Status,
    pub audience: Audience,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    /// Both users' channels.
    Direct(UserId, UserId),
    /// The group conversation's channel: every member hears it.
    Group(ConversationId),
    /// Only the member's own channel (their other sessions): a group above
    /// [`STATUS_BROADCAST_MAX_MEMBERS`], where telling every member of every member's receipt
    /// would be O(members²) events per message. Only when the read mark may have moved.
    Own(UserId),
}

/// Groups up to this size hear each member's `Status`; in larger ones only the member's own
/// sessions do (docs/PROTOCOL.md, receipts). One message to a 10,000-member group brought
/// 10⁸ `Status` events before this, and closed the sessions as slow consumers.
pub const STATUS_BROADCAST_MAX_MEMBERS: i64 = 256;

/// What one committed batch did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Committed {
    /// One per send, in the order given.
    pub sends: Vec<SendOutcome>,
    pub statuses: Vec<MovedStatus>,
}

/// Why a batch did not commit, and what the caller should do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Lost a race (unique violation, serialization failure, deadlock): run it again now.
    Conflict,
    /// Postgres or PgBouncer unreachable or refusing work: back off, keep the entries.
    Outage,
    /// Postgres refused the data itself: some entry the checks let through is poison.
    /// Running the entries one by one finds it.
    Data,
}

/// Classifies an error from [`commit`].
pub fn classify(err: &sqlx::Error) -> Failure {
    match err {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("23505" | "40001" | "40P01") => Failure::Conflict,
            // Connection exceptions, insufficient resources, operator intervention (shutdown,
            // cancel), system errors: the server, not the data.
            Some(code)
                if code.starts_with("08")
                    || code.starts_with("53")
                    || code.starts_with("57")
                    || code.starts_with("58") =>
            {
                Failure::Outage
            }
            // PgBouncer reports its own errors without a SQLSTATE of those classes.
            None => Failure::Outage,
            Some(_) => Failure::Data,
        },
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::RowNotFound => Failure::Data,
        _ => Failure::Outage,
    }
}

/// Runs one batch in one transaction.
pub async fn commit(
    db: &PgPool,
    sends: &[SendRequest],
    receipts: &[Watermarks],
) -> Result<Committed, sqlx::Error> {
    if sends.is_empty() && receipts.is_empty() {
        return Ok(Committed::default());
    }
    let mut tx = db.begin().await?;
    let sends = store_sends(&mut tx, sends).await?;
    let statuses = move_watermarks(&mut tx, receipts).await?;
    tx.commit().await?;
    Ok(Committed { sends, statuses })
}

/// Steps 1 to 5: the statements a [`Plan`] asks for, in its order.
async fn store_sends(
    tx: &mut PgConnection,
    sends: &[SendRequest],
) -> Result<Vec<SendOutcome>, sqlx::Error> {
    if sends.is_empty() {
        return Ok(Vec::new());
    }
    let mut plan = Plan::new(sends);
    // 1, 1b.
    plan.users_found(&existing_users(tx, &plan.users()).await?);
    plan.blocks_found(&blocks(tx, &plan.direct_pairs()).await?);
    // 2.
    create_direct(tx, &plan.direct_conversations()).await?;
    // 3, 4: the lock, then what it protects.
    let locked = lock(tx, &plan.conversations()).await?;
    let originals = originals(tx, &plan.idempotency_keys()).await?;
    plan.locked(locked, &originals);
    plan.members_found(&members(tx, &plan.group_senders()).await?);
    // 4b.
    plan.uploads_found(&uploads(tx, &plan.media()).await?);
    // 5.
    let now = if plan.needs_clock() {
        Some(clock(tx).await?)
    } else {
        None
    };
    let decided = plan.number(now, crate::db::new_id::<MessageId>);
    if let Some(now) = now
        && !decided.inserts.is_empty()
    {
        insert_messages(tx, &decided.inserts, now.to_datetime()).await?;
        set_last_seqs(tx, &decided.last_seqs).await?;
    }
    Ok(decided.outcomes)
}

/// Step 1: which of `users` exist.
async fn existing_users(
    tx: &mut PgConnection,
    users: &[UserId],
) -> Result<HashSet<UserId>, sqlx::Error> {
    let ids: Vec<Uuid> = users.iter().map(UserId::as_uuid).collect();
    Ok(
        sqlx::query_scalar::<_, Uuid>("SELECT id FROM users WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .filter_map(UserId::new)
            .collect(),
    )
}

/// Step 1b: the `(sender, recipient)` pairs with a block between them, either way.
async fn blocks(
    tx: &mut PgConnection,
    pairs: &[(UserId, UserId)],
) -> Result<HashMap<(UserId, UserId), Block>, sqlx::Error> {
    if pairs.is_empty() {
        return Ok(HashMap::new());
    }
    let (senders, peers): (Vec<Uuid>, Vec<Uuid>) = pairs
        .iter()
        .map(|(sender, peer)| (sender.as_uuid(), peer.as_uuid()))
        .unzip();
    // `blocks` is keyed (blocker_id, blocked_id) with an index on (blocked_id, blocker_id):
    // both directions are index probes.
    let rows = sqlx::query_as::<_, (Uuid, Uuid, bool)>(
        "SELECT t.sender, t.peer,
                EXISTS (SELECT 1 FROM blocks b
                        WHERE b.blocker_id = t.sender AND b.blocked_id = t.peer) AS by_sender
         FROM unnest($1::uuid[], $2::uuid[]) AS t(sender, peer)
         WHERE blocked_between(t.sender, t.peer)",
    )
    .bind(&senders)
    .bind(&peers)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(sender, peer, by_sender)| {
            let block = if by_sender {
                Block::BySender
            } else {
                Block::ByRecipient
            };
            Some(((UserId::new(sender)?, UserId::new(peer)?), block))
        })
        .collect())
}

/// Step 2: direct conversations, created with both members the first time.
async fn create_direct(tx: &mut PgConnection, new: &[NewDirect]) -> Result<(), sqlx::Error> {
    if new.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = new.iter().map(|d| d.conversation.as_uuid()).collect();
    let lows: Vec<Uuid> = new.iter().map(|d| d.low.as_uuid()).collect();
    let highs: Vec<Uuid> = new.iter().map(|d| d.high.as_uuid()).collect();
    sqlx::query(
        "WITH created AS (
             INSERT INTO conversations (id, kind, user_low, user_high)
             SELECT id, 'direct', low, high
             FROM unnest($1::uuid[], $2::uuid[], $3::uuid[]) AS t(id, low, high)
             ORDER BY id
             ON CONFLICT (id) DO NOTHING
             RETURNING id, user_low, user_high)
         INSERT INTO members (conversation_id, user_id, role)
         SELECT id, user_low, 'member' FROM created
         UNION ALL
         SELECT id, user_high, 'member' FROM created
         ON CONFLICT DO NOTHING",
    )
    .bind(&ids)
    .bind(&lows)
    .bind(&highs)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Step 3: the numbering lock, in id order. A missing conversation is absent from the answer.
async fn lock(
    tx: &mut PgConnection,
    conversations: &[ConversationId],
) -> Result<HashMap<ConversationId, Locked>, sqlx::Error> {
    if conversations.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<Uuid> = conversations.iter().map(ConversationId::as_uuid).collect();
    let rows = sqlx::query_as::<_, (Uuid, String, i64)>(
        "SELECT id, kind, last_seq FROM conversations WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    // The table's CHECK allows only the kinds `conversations::Kind` knows; a row of any other
    // would be no conversation a send can go to, as if missing.
    Ok(rows
        .into_iter()
        .filter_map(|(id, kind, last_seq)| {
            let kind = conversations::Kind::try_from(kind).ok()?;
            Some((ConversationId::new(id)?, Locked { kind, last_seq }))
        })
        .collect())
}

/// A stored message found by its idempotency key.
#[derive(sqlx::FromRow)]
struct OriginalRow {
    sender_id: Uuid,
    client_msg_id: Uuid,
    conversation_id: Uuid,
    seq: i64,
    id: Uuid,
    created_at: OffsetDateTime,
}

impl OriginalRow {
    fn stored_as(&self) -> Option<StoredAs> {
        Some(StoredAs {
            id: MessageId::new(self.id)?,
            seq: Seq::new(u64::try_from(self.seq).ok()?)?,
            timestamp: Timestamp::from_datetime(self.created_at)?,
        })
    }
}

/// Step 4: the messages already stored under these idempotency keys.
async fn originals(
    tx: &mut PgConnection,
    keys: &[(UserId, ClientMsgId)],
) -> Result<HashMap<(UserId, ClientMsgId), Original>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let (senders, client_ids): (Vec<Uuid>, Vec<Uuid>) = keys
        .iter()
        .map(|(sender, id)| (sender.as_uuid(), id.as_uuid()))
        .unzip();
    let rows = sqlx::query_as::<_, OriginalRow>(
        "SELECT m.sender_id, m.client_msg_id, m.conversation_id, m.seq, m.id, m.created_at
         FROM messages m
         JOIN unnest($1::uuid[], $2::uuid[]) AS t(sender, client_msg_id)
           ON m.sender_id = t.sender AND m.client_msg_id = t.client_msg_id",
    )
    .bind(&senders)
    .bind(&client_ids)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let key = (
                UserId::new(row.sender_id)?,
                ClientMsgId::new(row.client_msg_id)?,
            );
            let original = Original {
                conversation: ConversationId::new(row.conversation_id),
                stored: row.stored_as(),
            };
            Some((key, original))
        })
        .collect())
}

/// Step 4: which of these `(conversation, user)` pairs are memberships.
async fn members(
    tx: &mut PgConnection,
    pairs: &[(ConversationId, UserId)],
) -> Result<HashSet<(ConversationId, UserId)>, sqlx::Error> {
    if pairs.is_empty() {
        return Ok(HashSet::new());
    }
    let (conversations, users): (Vec<Uuid>, Vec<Uuid>) = pairs
        .iter()
        .map(|(conversation, user)| (conversation.as_uuid(), user.as_uuid()))
        .unzip();
    let rows = sqlx::query_as::<_, (Uuid, Uuid)>(
        "SELECT m.conversation_id, m.user_id
         FROM members m
         JOIN unnest($1::uuid[], $2::uuid[]) AS t(conversation_id, user_id)
           ON m.conversation_id = t.conversation_id AND m.user_id = t.user_id",
    )
    .bind(&conversations)
    .bind(&users)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(conversation, user)| {
            Some((ConversationId::new(conversation)?, UserId::new(user)?))
        })
        .collect())
}

/// Step 4b: the uploads with these ids (one statement). A row of a kind this build does not
/// know is left out: no send may carry it.
async fn uploads(
    tx: &mut PgConnection,
    ids: &[MediaId],
) -> Result<HashMap<MediaId, Upload>, sqlx::Error> {
    Ok(crate::media::store::by_ids(&mut *tx, ids)
        .await?
        .into_iter()
        .filter_map(|row| {
            let upload = Upload {
                owner: row.owner_id,
                kind: row.kind()?,
                info: media_info(row.id, &row),
            };
            Some((row.id, upload))
        })
        .collect())
}

fn media_info(id: MediaId, row: &MediaRow) -> MediaInfo {
    use std::num::{NonZeroU32, NonZeroU64};
    MediaInfo {
        media_id: id,
        content_type: row.content_type.clone(),
        size_bytes: u64::try_from(row.size).unwrap_or(0),
        width: row
            .width
            .and_then(|v| u32::try_from(v).ok())
            .and_then(NonZeroU32::new),
        height: row
            .height
            .and_then(|v| u32::try_from(v).ok())
            .and_then(NonZeroU32::new),
        duration_ms: row
            .duration_ms
            .and_then(|v| u64::try_from(v).ok())
            .and_then(NonZeroU64::new),
        blurhash: row.blurhash.clone(),
        filename: row.filename.clone(),
    }
}

/// Step 5: the database's time, to the millisecond. Read after the lock, so timestamps never
/// go backwards along a conversation's seqs.
async fn clock(tx: &mut PgConnection) -> Result<Timestamp, sqlx::Error> {
    let now: OffsetDateTime =
        sqlx::query_scalar("SELECT date_trunc('milliseconds', clock_timestamp())")
            .fetch_one(&mut *tx)
            .await?;
    Ok(Timestamp::from_datetime(now).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// Step 5: the new messages, column by column, in one `INSERT … SELECT FROM unnest`.
async fn insert_messages(
    tx: &mut PgConnection,
    new: &[NewMessage],
    created_at: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    let mut conversation = Vec::with_capacity(new.len());
    let mut seq = Vec::with_capacity(new.len());
    let mut id = Vec::with_capacity(new.len());
    let mut sender = Vec::with_capacity(new.len());
    let mut client_msg_id = Vec::with_capacity(new.len());
    let mut kind = Vec::with_capacity(new.len());
    let mut content = Vec::with_capacity(new.len());
    let mut media_id = Vec::with_capacity(new.len());
    let mut media_content_type = Vec::with_capacity(new.len());
    let mut media_size = Vec::with_capacity(new.len());
    for NewMessage {
        client_msg_id: key,
        message,
    } in new
    {
        conversation.push(message.conversation_id.as_uuid());
        seq.push(i64::try_from(message.seq.get()).unwrap_or(i64::MAX));
        id.push(message.id.as_uuid());
        sender.push(message.sender_id.as_uuid());
        client_msg_id.push(key.as_uuid());
        kind.push(conversations::kind_name(message.kind));
        content.push(message.content.as_str());
        // What the server stored, never the Send's hints.
        let media = message.media.as_ref();
        media_id.push(media.map(|m| m.media_id.as_uuid()));
        media_content_type.push(
            media
                .filter(|m| !m.content_type.is_empty())
                .map(|m| m.content_type.as_str()),
        );
        media_size.push(media.and_then(|m| i64::try_from(m.size_bytes).ok()));
    }
    sqlx::query(
        "INSERT INTO messages (conversation_id, seq, id, sender_id, client_msg_id, type,
                               content, media_id, media_content_type, media_size, created_at)
         SELECT t.*, $11
         FROM unnest($1::uuid[], $2::bigint[], $3::uuid[], $4::uuid[], $5::uuid[],
                     $6::text[], $7::text[], $8::uuid[], $9::text[], $10::bigint[]) AS t",
    )
    .bind(&conversation)
    .bind(&seq)
    .bind(&id)
    .bind(&sender)
    .bind(&client_msg_id)
    .bind(&kind)
    .bind(&content)
    .bind(&media_id)
    .bind(&media_content_type)
    .bind(&media_size)
    .bind(created_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Step 5: the conversations' new `last_seq`s.
async fn set_last_seqs(
    tx: &mut PgConnection,
    last_seqs: &[(ConversationId, Seq)],
) -> Result<(), sqlx::Error> {
    let (ids, lasts): (Vec<Uuid>, Vec<i64>) = last_seqs
        .iter()
        .map(|(id, seq)| (id.as_uuid(), i64::try_from(seq.get()).unwrap_or(i64::MAX)))
        .unzip();
    sqlx::query(
        "UPDATE conversations c SET last_seq = t.last_seq
         FROM unnest($1::uuid[], $2::bigint[]) AS t(id, last_seq)
         WHERE c.id = t.id",
    )
    .bind(&ids)
    .bind(&lasts)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct MovedRow {
    conversation_id: Uuid,
    user_id: Uuid,
    delivered_seq: i64,
    read_seq: i64,
    kind: String,
    user_low: Option<Uuid>,
    user_high: Option<Uuid>,
    member_count: i32,
}

/// Raises members' watermarks (never lowers them), clamped to the conversation's
/// `last_seq`; returns the ones that moved. A receipt from a non-member matches no row and is
/// dropped.
async fn move_watermarks(
    tx: &mut PgConnection,
    marks: &[Watermarks],
) -> Result<Vec<MovedStatus>, sqlx::Error> {
    if marks.is_empty() {
        return Ok(Vec::new());
    }
    let as_i64 = |seq: Option<Seq>| seq.map_or(0, |s| i64::try_from(s.get()).unwrap_or(i64::MAX));
    let conversations: Vec<Uuid> = marks.iter().map(|m| m.conversation.as_uuid()).collect();
    let users: Vec<Uuid> = marks.iter().map(|m| m.user.as_uuid()).collect();
    let delivered: Vec<i64> = marks.iter().map(|m| as_i64(Some(m.delivered))).collect();
    let read: Vec<i64> = marks.iter().map(|m| as_i64(m.read)).collect();
    // Invariant: read <= delivered per input row and in every stored row, so the new
    // GREATEST(old_read, LEAST(read, last)) <= GREATEST(old_delivered, LEAST(delivered, last))
    // and the members_watermarks CHECK holds.
    //
    // The receipts are joined to their conversations first, in a materialized CTE, so that
    // each member row is found by its whole key. Joined in one FROM, the planner may reach
    // `members` from `conversations` by `conversation_id` alone (it expects ~6 members per
    // conversation) and filter the user out of every member of the group: in a 10,000-member
    // group that read 109,000 buffers for 42 receipts (58 ms) against 383 (1.8 ms) this way
    // (docs/BENCHMARKS.md, "Fan-out").
    let rows = sqlx::query_as::<_, MovedRow>(
        "WITH t AS MATERIALIZED (
           SELECT r.conversation_id, r.user_id,
                  LEAST(r.delivered, c.last_seq) AS delivered, LEAST(r.read, c.last_seq) AS read,
                  c.kind, c.user_low, c.user_high, c.member_count
           FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::bigint[])
                  AS r(conversation_id, user_id, delivered, read)
           JOIN conversations c ON c.id = r.conversation_id
         )
         UPDATE members m
         SET delivered_seq = GREATEST(m.delivered_seq, t.delivered),
             read_seq = GREATEST(m.read_seq, t.read)
         FROM t
         WHERE m.conversation_id = t.conversation_id AND m.user_id = t.user_id
           AND (t.delivered > m.delivered_seq OR t.read > m.read_seq)
         RETURNING m.conversation_id, m.user_id, m.delivered_seq, m.read_seq,
                   t.kind, t.user_low, t.user_high, t.member_count",
    )
    .bind(&conversations)
    .bind(&users)
    .bind(&delivered)
    .bind(&read)
    .fetch_all(&mut *tx)
    .await?;
    let dropped = marks.len() - rows.len();
    if dropped > 0 {
        tracing::debug!(
            dropped,
            "receipts that moved nothing (not a member, or not ahead)"
        );
    }
    // In a large group only the member's own devices hear their Status, and what they need
    // from it is the read mark (to clear what was read elsewhere); a delivery-only move (an
    // Ack) would echo back to the session that sent it. One message to 10,000 members brings
    // 10,000 Acks: announcing none of them saves as many frames as the message itself took.
    let reads: HashSet<(Uuid, Uuid)> = marks
        .iter()
        .filter(|m| m.read.is_some())
        .map(|m| (m.conversation.as_uuid(), m.user.as_uuid()))
        .collect();
    let seq = |n: i64| u64::try_from(n).ok().and_then(Seq::new);
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let conversation = ConversationId::new(row.conversation_id)?;
            let kind = conversations::Kind::try_from(row.kind).ok();
            let audience = match (kind, row.user_low, row.user_high) {
                (Some(conversations::Kind::Direct), Some(low), Some(high)) => {
                    Audience::Direct(UserId::new(low)?, UserId::new(high)?)
                }
                _ if i64::from(row.member_count) > STATUS_BROADCAST_MAX_MEMBERS => {
                    if !reads.contains(&(row.conversation_id, row.user_id)) {
                        return None;
                    }
                    Audience::Own(UserId::new(row.user_id)?)
                }
                _ => Audience::Group(conversation),
            };
            Some(MovedStatus {
                status: Status {
                    conversation_id: conversation,
                    user_id: UserId::new(row.user_id)?,
                    delivered: seq(row.delivered_seq),
                    read: seq(row.read_seq),
                },
                audience,
            })
        })
        .collect())
}
