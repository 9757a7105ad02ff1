//! The Postgres half of a batch: one transaction that numbers and stores its sends and moves
//! its receipt watermarks. What to read and what each send becomes is decided by
//! [`super::plan`]; this module runs its statements.
//!
//! Order inside the transaction, and why (three round trips for a batch of direct messages
//! with receipts, plus `BEGIN` and `COMMIT`: steps 1–2, steps 3–4, steps 5–6; the ledger test
//! in `e2e/tests/it/ledger.rs` bounds them):
//!
//! 1. Senders and direct recipients must exist, and blocks between a direct message's two
//!    users (either way) are read, in one statement; a blocked send is refused with `blocked`
//!    after step 4 (a retry of a message stored before the block is still answered with its
//!    original `Sent`) and creates no conversation in step 2.
//! 2. In the same statement, missing direct conversations are created with both members
//!    (`INSERT … ON CONFLICT DO NOTHING`, in id order), for the pairs whose two users exist
//!    and have no block between them: the sends step 1 leaves open. (A statement of its own
//!    until #18's fourth round: one round trip per batch, for what is nearly always a
//!    conversation that exists.)
//! 3. The batch's conversations are locked `FOR UPDATE` in id order. Invariant: whoever
//!    numbers messages or changes a group's membership holds this lock, so from here on
//!    `last_seq` and membership cannot change under us. Membership is checked against the
//!    database inside the lock: correct by construction (a cache is a later optimisation).
//! 4. Duplicates by `(sender_id, client_msg_id)` are looked up *after* the lock: under READ
//!    COMMITTED each statement sees what committed before it, so a concurrent worker's
//!    insert of the same message is visible once its lock is released. Steps 3 and 4 are two
//!    statements of one function (`worker_lock_and_originals`), one round trip. A duplicate (in the
//!    database, or earlier in the same batch) is answered with the original's id, seq and
//!    timestamp; the same id reused for another conversation is refused. The database clock
//!    (ms) comes with this statement: read after the lock, timestamps never go backwards
//!    along a conversation's seqs. Then group membership (one statement, group sends only)
//!    and media uploads (one statement, 4b, media sends only).
//!    The lookup reads `message_keys`, then the partition of each key found (a retried send);
//!    while `messages` is being partitioned online it reads the view `message_originals`
//!    instead (migrations `20261205000003_partitioned_messages.sql`, `20261209000001`).
//! 5. Seqs `last_seq + 1 …` in entry order; the messages inserted with their idempotency keys
//!    (`message_keys`, whose primary key is the cross-conversation uniqueness), `last_seq`
//!    updated and
//! 6. the receipts' `delivered_seq`/`read_seq` raised (never lowered, clamped to `last_seq`),
//!    all in one statement of data-modifying CTEs. A batch of receipts alone is that one
//!    statement with no explicit transaction.
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
use super::plan::{
    Block, Decided, Locked, NewDirect, NewMessage, Original, Plan, StoredAs, Upload,
};
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
    /// One user's channel. In a direct conversation, the other user, for a delivery-only move
    /// (an `Ack`): the member's own sessions need only the read mark. In a group above
    /// [`STATUS_BROADCAST_MAX_MEMBERS`], the member's own sessions, only when the read mark
    /// may have moved: telling every member of every member's receipt would be O(members²)
    /// events per message.
    User(UserId),
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
            // An undefined function or table: the database is behind this release (its
            // migrations have not run yet). Nothing is wrong with the data: wait for them.
            Some("42883" | "42P01") => Failure::Outage,
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
    if sends.is_empty() {
        // One statement is its own transaction: no BEGIN and COMMIT round trips.
        let mut conn = db.acquire().await?;
        let statuses = write(&mut conn, &Decided::default(), None, receipts).await?;
        return Ok(Committed {
            sends: Vec::new(),
            statuses,
        });
    }
    let mut tx = db.begin().await?;
    let (decided, now) = plan_sends(&mut tx, sends).await?;
    let statuses = write(&mut tx, &decided, now, receipts).await?;
    tx.commit().await?;
    Ok(Committed {
        sends: decided.outcomes,
        statuses,
    })
}

/// Steps 1 to 5 up to the writes: the reads a [`Plan`] asks for, in its order, and what it
/// decides from them (with the database time it numbered at, if anything was numbered).
async fn plan_sends(
    tx: &mut PgConnection,
    sends: &[SendRequest],
) -> Result<(Decided, Option<Timestamp>), sqlx::Error> {
    let mut plan = Plan::new(sends);
    // 1, 1b and 2 in one round trip. The pairs are read before unknown users are refused: a
    // pair with a refused user is no longer undecided, so `blocks_found` passes it over. The
    // conversations offered for creation are every direct send's; the statement keeps those
    // the plan would keep once it knows users and blocks.
    let (users, blocks) = users_blocks_and_create(
        tx,
        &plan.users(),
        &plan.direct_pairs(),
        &plan.direct_conversations(),
    )
    .await?;
    plan.users_found(&users);
    plan.blocks_found(&blocks);
    // 3, 4 in one round trip: the lock, then what it protects (the clock comes with the
    // originals: it is read after the lock either way).
    let (locked, originals, clock) =
        lock_and_originals(tx, &plan.conversations(), &plan.idempotency_keys()).await?;
    plan.locked(locked, &originals);
    plan.members_found(&members(tx, &plan.group_senders()).await?);
    // 4b.
    plan.uploads_found(&uploads(tx, &plan.media()).await?);
    // 5.
    let now = if plan.needs_clock() { clock } else { None };
    Ok((plan.number(now, crate::db::new_id::<MessageId>), now))
}

/// Steps 1, 1b and 2 in one statement: which of `users` exist, the `(sender, recipient)`
/// pairs with a block between them (either way), and the direct conversations of `new`
/// created with both members where both users exist and no block stands between them.
async fn users_blocks_and_create(
    tx: &mut PgConnection,
    users: &[UserId],
    pairs: &[(UserId, UserId)],
    new: &[NewDirect],
) -> Result<(HashSet<UserId>, HashMap<(UserId, UserId), Block>), sqlx::Error> {
    let ids: Vec<Uuid> = users.iter().map(UserId::as_uuid).collect();
    let (senders, peers): (Vec<Uuid>, Vec<Uuid>) = pairs
        .iter()
        .map(|(sender, peer)| (sender.as_uuid(), peer.as_uuid()))
        .unzip();
    let conversations: Vec<Uuid> = new.iter().map(|d| d.conversation.as_uuid()).collect();
    let lows: Vec<Uuid> = new.iter().map(|d| d.low.as_uuid()).collect();
    let highs: Vec<Uuid> = new.iter().map(|d| d.high.as_uuid()).collect();
    // A row with no peer is a user that exists; a row with one is a blocked pair. `blocks` is
    // keyed (blocker_id, blocked_id) with an index on (blocked_id, blocker_id): both
    // directions are index probes. The data-modifying CTEs run whether or not the query reads
    // them; the reads see the users and blocks as of the statement's start, as the creation
    // does. Nearly every conversation exists already: the fence (`OFFSET 0`) keeps the planner
    // from checking users and blocks before that one probe rules it out (#18, sixth round).
    // The block probes are written out, not `blocked_between()`: a SQL function with
    // sub-queries is never inlined, so Postgres parsed and planned its body again on every
    // execution of this statement, 8 % of its CPU in a chat run (#18, seventh round).
    let rows = sqlx::query_as::<_, (Uuid, Option<Uuid>, Option<bool>)>(
        "WITH created AS (
             INSERT INTO conversations (id, kind, user_low, user_high)
             SELECT t.id, 'direct', t.low, t.high
             FROM (SELECT n.id, n.low, n.high
                   FROM unnest($4::uuid[], $5::uuid[], $6::uuid[]) AS n(id, low, high)
                   WHERE NOT EXISTS (SELECT 1 FROM conversations c WHERE c.id = n.id)
                   OFFSET 0) AS t
             WHERE EXISTS (SELECT 1 FROM users u WHERE u.id = t.low)
               AND EXISTS (SELECT 1 FROM users u WHERE u.id = t.high)
               AND NOT EXISTS (SELECT 1 FROM blocks b
                               WHERE b.blocker_id = t.low AND b.blocked_id = t.high)
               AND NOT EXISTS (SELECT 1 FROM blocks b
                               WHERE b.blocker_id = t.high AND b.blocked_id = t.low)
             ORDER BY t.id
             ON CONFLICT (id) DO NOTHING
             RETURNING id, user_low, user_high),
         joined AS (
             INSERT INTO members (conversation_id, user_id, role)
             SELECT id, user_low, 'member' FROM created
             UNION ALL
             SELECT id, user_high, 'member' FROM created
             ON CONFLICT DO NOTHING)
         SELECT id, NULL::uuid, NULL::boolean FROM users WHERE id = ANY($1)
         UNION ALL
         SELECT t.sender, t.peer, t.by_sender
         FROM (SELECT p.sender, p.peer,
                      EXISTS (SELECT 1 FROM blocks b
                              WHERE b.blocker_id = p.sender AND b.blocked_id = p.peer) AS by_sender,
                      EXISTS (SELECT 1 FROM blocks b
                              WHERE b.blocker_id = p.peer AND b.blocked_id = p.sender) AS by_peer
               FROM unnest($2::uuid[], $3::uuid[]) AS p(sender, peer)
               OFFSET 0) AS t
         WHERE t.by_sender OR t.by_peer",
    )
    .bind(&ids)
    .bind(&senders)
    .bind(&peers)
    .bind(&conversations)
    .bind(&lows)
    .bind(&highs)
    .fetch_all(&mut *tx)
    .await?;
    let mut existing = HashSet::new();
    let mut blocks = HashMap::new();
    for (user, peer, by_sender) in rows {
        let Some(user) = UserId::new(user) else {
            continue;
        };
        match peer.and_then(UserId::new) {
            None => {
                existing.insert(user);
            }
            Some(peer) => {
                let block = if by_sender == Some(true) {
                    Block::BySender
                } else {
                    Block::ByRecipient
                };
                blocks.insert((user, peer), block);
            }
        }
    }
    Ok((existing, blocks))
}

/// A stored message found by its idempotency key.
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

type Originals = HashMap<(UserId, ClientMsgId), Original>;

/// Steps 3 and 4 in one round trip (the function `worker_lock_and_originals`, migrations
/// `20261206000002` and `20261209000001`): the numbering lock on `conversations` in id order, then, in a statement
/// of its own and so in a snapshot taken after the lock was granted, the database's time to
/// the millisecond and the messages already stored under these idempotency keys. A
/// concurrent worker's insert of the same message is visible once it released the lock, and
/// timestamps never go backwards along a conversation's seqs. A missing conversation is
/// absent from the answer. Both inputs are empty or neither is (the plan's open sends).
async fn lock_and_originals(
    tx: &mut PgConnection,
    conversations: &[ConversationId],
    keys: &[(UserId, ClientMsgId)],
) -> Result<
    (
        HashMap<ConversationId, Locked>,
        Originals,
        Option<Timestamp>,
    ),
    sqlx::Error,
> {
    if conversations.is_empty() && keys.is_empty() {
        // Nothing undecided: nothing to lock or number either.
        return Ok((HashMap::new(), HashMap::new(), None));
    }
    let ids: Vec<Uuid> = conversations.iter().map(ConversationId::as_uuid).collect();
    let (senders, client_ids): (Vec<Uuid>, Vec<Uuid>) = keys
        .iter()
        .map(|(sender, id)| (sender.as_uuid(), id.as_uuid()))
        .unzip();
    let rows = sqlx::query_as::<_, LockedRow>(
        "SELECT row_kind, conversation_id, kind, last_seq, at, sender_id, client_msg_id, seq,
                message_id, created_at
         FROM worker_lock_and_originals($1, $2, $3)",
    )
    .bind(&ids)
    .bind(&senders)
    .bind(&client_ids)
    .fetch_all(&mut *tx)
    .await?;
    let mut locked = HashMap::new();
    let mut originals = HashMap::new();
    let mut clock = None;
    for row in rows {
        match row.row_kind.as_str() {
            // The table's CHECK allows only the kinds `conversations::Kind` knows; a row of
            // any other would be no conversation a send can go to, as if missing.
            "conversation" => {
                let found = (|| {
                    let kind = conversations::Kind::try_from(row.kind?).ok()?;
                    let id = ConversationId::new(row.conversation_id?)?;
                    Some((
                        id,
                        Locked {
                            kind,
                            last_seq: row.last_seq?,
                        },
                    ))
                })();
                locked.extend(found);
            }
            "clock" => {
                clock = row
                    .at
                    .map(|at| Timestamp::from_datetime(at).unwrap_or(Timestamp::UNIX_EPOCH));
            }
            "original" => {
                let Some(original) = row.original() else {
                    continue;
                };
                let (Some(sender), Some(client_msg_id)) = (
                    UserId::new(original.sender_id),
                    ClientMsgId::new(original.client_msg_id),
                ) else {
                    continue;
                };
                originals.insert(
                    (sender, client_msg_id),
                    Original {
                        conversation: ConversationId::new(original.conversation_id),
                        stored: original.stored_as(),
                    },
                );
            }
            _ => {}
        }
    }
    Ok((locked, originals, clock))
}

/// One row of `worker_lock_and_originals`: a locked conversation, the clock, or an original
/// (the columns of the other kinds null).
#[derive(sqlx::FromRow)]
struct LockedRow {
    row_kind: String,
    conversation_id: Option<Uuid>,
    kind: Option<String>,
    last_seq: Option<i64>,
    at: Option<OffsetDateTime>,
    sender_id: Option<Uuid>,
    client_msg_id: Option<Uuid>,
    seq: Option<i64>,
    message_id: Option<Uuid>,
    created_at: Option<OffsetDateTime>,
}

impl LockedRow {
    fn original(&self) -> Option<OriginalRow> {
        Some(OriginalRow {
            sender_id: self.sender_id?,
            client_msg_id: self.client_msg_id?,
            conversation_id: self.conversation_id?,
            seq: self.seq?,
            id: self.message_id?,
            created_at: self.created_at?,
        })
    }
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

/// Columns of the new messages, for `unnest`.
#[derive(Default)]
struct MessageColumns<'a> {
    conversation: Vec<Uuid>,
    seq: Vec<i64>,
    id: Vec<Uuid>,
    sender: Vec<Uuid>,
    client_msg_id: Vec<Uuid>,
    kind: Vec<&'static str>,
    content: Vec<&'a str>,
    media_id: Vec<Option<Uuid>>,
    media_content_type: Vec<Option<&'a str>>,
    media_size: Vec<Option<i64>>,
}

impl<'a> MessageColumns<'a> {
    fn of(new: &'a [NewMessage]) -> MessageColumns<'a> {
        let mut columns = MessageColumns::default();
        for NewMessage {
            client_msg_id: key,
            message,
        } in new
        {
            columns.conversation.push(message.conversation_id.as_uuid());
            columns.seq.push(as_i64(message.seq));
            columns.id.push(message.id.as_uuid());
            columns.sender.push(message.sender_id.as_uuid());
            columns.client_msg_id.push(key.as_uuid());
            columns.kind.push(conversations::kind_name(message.kind));
            columns.content.push(message.content.as_str());
            // What the server stored, never the Send's hints.
            let media = message.media.as_ref();
            columns.media_id.push(media.map(|m| m.media_id.as_uuid()));
            columns.media_content_type.push(
                media
                    .filter(|m| !m.content_type.is_empty())
                    .map(|m| m.content_type.as_str()),
            );
            columns
                .media_size
                .push(media.and_then(|m| i64::try_from(m.size_bytes).ok()));
        }
        columns
    }
}

fn as_i64(seq: Seq) -> i64 {
    i64::try_from(seq.get()).unwrap_or(i64::MAX)
}

/// Steps 5 and 6 in one statement: the new messages (one `INSERT … SELECT FROM unnest`, all
/// at `now`), the conversations' new `last_seq`s, and the receipts. Returns the watermarks
/// that moved.
///
/// Receipts raise members' watermarks (never lower them), clamped to the conversation's
/// `last_seq` as it was before this statement (the statement's snapshot: a receipt cannot
/// name a seq numbered in its own batch, since a client learns a seq only once its batch has
/// committed). A receipt from a non-member matches no row and is dropped.
async fn write(
    conn: &mut PgConnection,
    decided: &Decided,
    now: Option<Timestamp>,
    marks: &[Watermarks],
) -> Result<Vec<MovedStatus>, sqlx::Error> {
    let inserts = if now.is_some() {
        decided.inserts.as_slice()
    } else {
        &[]
    };
    if inserts.is_empty() && marks.is_empty() {
        return Ok(Vec::new());
    }
    let messages = MessageColumns::of(inserts);
    let (numbered, lasts): (Vec<Uuid>, Vec<i64>) = if inserts.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        decided
            .last_seqs
            .iter()
            .map(|(id, seq)| (id.as_uuid(), as_i64(*seq)))
            .unzip()
    };
    let receipt = |seq: Option<Seq>| seq.map_or(0, as_i64);
    let conversations: Vec<Uuid> = marks.iter().map(|m| m.conversation.as_uuid()).collect();
    let users: Vec<Uuid> = marks.iter().map(|m| m.user.as_uuid()).collect();
    let delivered: Vec<i64> = marks.iter().map(|m| receipt(Some(m.delivered))).collect();
    let read: Vec<i64> = marks.iter().map(|m| receipt(m.read)).collect();
    // Data-modifying CTEs run once each whether or not anything refers to them; an empty
    // `unnest` writes nothing.
    //
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
        "WITH inserted AS (
           INSERT INTO messages (conversation_id, seq, id, sender_id, client_msg_id, type,
                                 content, media_id, media_content_type, media_size, created_at)
           SELECT n.*, $11
           FROM unnest($1::uuid[], $2::bigint[], $3::uuid[], $4::uuid[], $5::uuid[],
                       $6::text[], $7::text[], $8::uuid[], $9::text[], $10::bigint[]) AS n
         ), keyed AS (
           INSERT INTO message_keys (sender_id, client_msg_id, conversation_id, seq)
           SELECT * FROM unnest($4::uuid[], $5::uuid[], $1::uuid[], $2::bigint[])
         ), numbered AS (
           UPDATE conversations c SET last_seq = l.last_seq
           FROM unnest($12::uuid[], $13::bigint[]) AS l(id, last_seq)
           WHERE c.id = l.id
         ), t AS MATERIALIZED (
           SELECT r.conversation_id, r.user_id,
                  LEAST(r.delivered, c.last_seq) AS delivered, LEAST(r.read, c.last_seq) AS read,
                  c.kind, c.user_low, c.user_high, c.member_count
           FROM unnest($14::uuid[], $15::uuid[], $16::bigint[], $17::bigint[])
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
    .bind(&messages.conversation)
    .bind(&messages.seq)
    .bind(&messages.id)
    .bind(&messages.sender)
    .bind(&messages.client_msg_id)
    .bind(&messages.kind)
    .bind(&messages.content)
    .bind(&messages.media_id)
    .bind(&messages.media_content_type)
    .bind(&messages.media_size)
    .bind(now.map(Timestamp::to_datetime))
    .bind(&numbered)
    .bind(&lasts)
    .bind(&conversations)
    .bind(&users)
    .bind(&delivered)
    .bind(&read)
    .fetch_all(&mut *conn)
    .await?;

    let dropped = marks.len() - rows.len();
    if dropped > 0 {
        tracing::debug!(
            dropped,
            "receipts that moved nothing (not a member, or not ahead)"
        );
    }
    // A member's own devices need a Status only for the read mark (to clear what was read
    // elsewhere); a delivery-only move (an Ack) would echo back to the session that sent it.
    // So a direct Ack is told to the other user alone, and in a large group, where only the
    // member's own devices hear their Status, not at all: one message to 10,000 members
    // brings 10,000 Acks, and announcing none of them saves as many frames as the message
    // itself took.
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
                    if reads.contains(&(row.conversation_id, row.user_id)) {
                        Audience::Direct(UserId::new(low)?, UserId::new(high)?)
                    } else {
                        let peer = if row.user_id == low { high } else { low };
                        Audience::User(UserId::new(peer)?)
                    }
                }
                _ if i64::from(row.member_count) > STATUS_BROADCAST_MAX_MEMBERS => {
                    if !reads.contains(&(row.conversation_id, row.user_id)) {
                        return None;
                    }
                    Audience::User(UserId::new(row.user_id)?)
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
