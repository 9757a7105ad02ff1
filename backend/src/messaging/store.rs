//! The Postgres half of a batch: one transaction that numbers and stores its sends and moves
//! its receipt watermarks.
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
//!    timestamp; the same id reused for another conversation is refused.
//! 5. Seqs `last_seq + 1 …` in entry order, one multi-row `INSERT … SELECT FROM unnest`,
//!    `last_seq` updated. Timestamps come from the database clock (ms), read after the lock,
//!    so they never go backwards along a conversation's seqs.
//! 6. Receipts: `delivered_seq`/`read_seq` raised, never lowered, clamped to `last_seq`.
//!
//! A unique violation, serialization failure or deadlock aborts the batch; the caller runs it
//! again ([`Failure::Conflict`]) and the retry's step 4 sees the rows that won.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use haberci_wire::{
    ClientMsgId, ConversationId, ErrorCode, MediaId, MediaInfo, Message, MessageId, MessageKind,
    MessageStatus, RecipientId, Sent, Seq, Status, Timestamp, UserId,
};
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use super::batch::{Refusal, SendRequest, Target, Watermarks};
use crate::media::store::MediaRow;

/// What became of one [`SendRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// Stored now, with this seq.
    Stored(Message),
    /// Stored before (a retry): the original's id, seq and timestamp.
    Duplicate(Sent),
    Refused(Refusal),
}

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

const UNKNOWN_RECIPIENT: Refusal = Refusal::new(ErrorCode::UnknownRecipient, "no such recipient");
const NOT_A_MEMBER: Refusal = Refusal::new(ErrorCode::Forbidden, "not a member of this group");
const NO_SENDER: Refusal = Refusal::new(ErrorCode::Forbidden, "the sending account is gone");
const ID_REUSED: Refusal = Refusal::new(
    ErrorCode::InvalidField,
    "client_msg_id was already used for another conversation",
);
const CONVERSATION_FULL: Refusal =
    Refusal::new(ErrorCode::Forbidden, "the conversation has no seq left");

const BLOCKED_BY_RECIPIENT: Refusal = Refusal::new(
    ErrorCode::Blocked,
    "the recipient does not accept messages from you",
);
const BLOCKED_BY_SENDER: Refusal = Refusal::new(
    ErrorCode::Blocked,
    "you blocked this user; unblock them to send",
);

/// Per send, the refusal a block between a direct message's two users calls for (`None`:
/// no block, a group send, or already refused). One statement for the whole batch.
async fn blocked_sends(
    tx: &mut PgConnection,
    sends: &[SendRequest],
    out: &[Option<SendOutcome>],
) -> Result<Vec<Option<Refusal>>, sqlx::Error> {
    let (senders, peers): (Vec<Uuid>, Vec<Uuid>) = sends
        .iter()
        .enumerate()
        .filter_map(|(i, send)| match (&out[i], send.target) {
            (None, Target::Direct(peer)) => Some((send.sender.as_uuid(), peer.as_uuid())),
            _ => None,
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .unzip();
    if senders.is_empty() {
        return Ok(vec![None; sends.len()]);
    }
    // `blocks` is keyed (blocker_id, blocked_id) with an index on (blocked_id, blocker_id):
    // both directions are index probes.
    let found: HashMap<(Uuid, Uuid), bool> = sqlx::query_as::<_, (Uuid, Uuid, bool)>(
        "SELECT t.sender, t.peer,
                EXISTS (SELECT 1 FROM blocks b
                        WHERE b.blocker_id = t.sender AND b.blocked_id = t.peer) AS by_sender
         FROM unnest($1::uuid[], $2::uuid[]) AS t(sender, peer)
         WHERE blocked_between(t.sender, t.peer)",
    )
    .bind(&senders)
    .bind(&peers)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|(sender, peer, by_sender)| ((sender, peer), by_sender))
    .collect();
    Ok(sends
        .iter()
        .enumerate()
        .map(|(i, send)| match (&out[i], send.target) {
            (None, Target::Direct(peer)) => found
                .get(&(send.sender.as_uuid(), peer.as_uuid()))
                .map(|&by_sender| {
                    if by_sender {
                        BLOCKED_BY_SENDER
                    } else {
                        BLOCKED_BY_RECIPIENT
                    }
                }),
            _ => None,
        })
        .collect())
}

/// A stored message found by its idempotency key.
#[derive(sqlx::FromRow)]
struct Original {
    sender_id: Uuid,
    client_msg_id: Uuid,
    conversation_id: Uuid,
    seq: i64,
    id: Uuid,
    created_at: OffsetDateTime,
}

async fn store_sends(
    tx: &mut PgConnection,
    sends: &[SendRequest],
) -> Result<Vec<SendOutcome>, sqlx::Error> {
    let mut out: Vec<Option<SendOutcome>> = vec![None; sends.len()];
    if sends.is_empty() {
        return Ok(Vec::new());
    }
    // 1. Who exists.
    let mut users: BTreeSet<Uuid> = BTreeSet::new();
    for send in sends {
        users.insert(send.sender.as_uuid());
        if let Target::Direct(peer) = send.target {
            users.insert(peer.as_uuid());
        }
    }
    let users: Vec<Uuid> = users.into_iter().collect();
    let existing: HashSet<Uuid> =
        sqlx::query_scalar::<_, Uuid>("SELECT id FROM users WHERE id = ANY($1)")
            .bind(&users)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
    for (i, send) in sends.iter().enumerate() {
        let peer_missing = match send.target {
            Target::Direct(peer) => !existing.contains(&peer.as_uuid()),
            Target::Group(_) => false,
        };
        if !existing.contains(&send.sender.as_uuid()) {
            out[i] = Some(SendOutcome::Refused(NO_SENDER));
        } else if peer_missing {
            out[i] = Some(SendOutcome::Refused(UNKNOWN_RECIPIENT));
        }
    }

    // 1b. Blocks, either way, between direct senders and recipients (one query). A blocked
    // send is refused below, after the duplicate lookup, so a retry of a message stored
    // before the block still gets its original `Sent`; and it creates no conversation, so
    // the blocker never sees an empty one appear.
    let blocked = blocked_sends(tx, sends, &out).await?;

    // 2. Direct conversations, created with both members the first time.
    let mut pairs: BTreeMap<Uuid, (Uuid, Uuid)> = BTreeMap::new();
    for (i, send) in sends.iter().enumerate() {
        if blocked[i].is_some() {
            continue;
        }
        if let (None, Target::Direct(peer)) = (&out[i], send.target) {
            let (low, high) = if send.sender < peer {
                (send.sender, peer)
            } else {
                (peer, send.sender)
            };
            pairs.insert(send.conversation.as_uuid(), (low.as_uuid(), high.as_uuid()));
        }
    }
    if !pairs.is_empty() {
        let ids: Vec<Uuid> = pairs.keys().copied().collect();
        let lows: Vec<Uuid> = pairs.values().map(|p| p.0).collect();
        let highs: Vec<Uuid> = pairs.values().map(|p| p.1).collect();
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
    }

    // 3. The numbering lock.
    let conversations: Vec<Uuid> = sends
        .iter()
        .enumerate()
        .filter(|(i, _)| out[*i].is_none())
        .map(|(_, s)| s.conversation.as_uuid())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let locked: HashMap<Uuid, (String, i64)> = sqlx::query_as::<_, (Uuid, String, i64)>(
        "SELECT id, kind, last_seq FROM conversations WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(&conversations)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|(id, kind, last)| (id, (kind, last)))
    .collect();

    // 4. Duplicates already stored.
    let (senders, client_ids): (Vec<Uuid>, Vec<Uuid>) = sends
        .iter()
        .enumerate()
        .filter(|(i, _)| out[*i].is_none())
        .map(|(_, s)| (s.sender.as_uuid(), s.send.client_msg_id.as_uuid()))
        .unzip();
    let originals: HashMap<(Uuid, Uuid), Original> = sqlx::query_as::<_, Original>(
        "SELECT m.sender_id, m.client_msg_id, m.conversation_id, m.seq, m.id, m.created_at
         FROM messages m
         JOIN unnest($1::uuid[], $2::uuid[]) AS t(sender, client_msg_id)
           ON m.sender_id = t.sender AND m.client_msg_id = t.client_msg_id",
    )
    .bind(&senders)
    .bind(&client_ids)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|o| ((o.sender_id, o.client_msg_id), o))
    .collect();
    for (i, send) in sends.iter().enumerate() {
        if out[i].is_some() {
            continue;
        }
        let key = (send.sender.as_uuid(), send.send.client_msg_id.as_uuid());
        if let Some(original) = originals.get(&key) {
            out[i] = Some(if original.conversation_id == send.conversation.as_uuid() {
                match original_sent(send.send.client_msg_id, send.conversation, original) {
                    Some(sent) => SendOutcome::Duplicate(sent),
                    None => SendOutcome::Refused(Refusal::new(
                        ErrorCode::Unavailable,
                        "the stored original is unreadable",
                    )),
                }
            } else {
                SendOutcome::Refused(ID_REUSED)
            });
        }
    }

    // Neither of a direct conversation's users blocked the other.
    for (i, refusal) in blocked.into_iter().enumerate() {
        if let (None, Some(refusal)) = (&out[i], refusal) {
            out[i] = Some(SendOutcome::Refused(refusal));
        }
    }

    // The recipient group exists; the sender is a member.
    for (i, send) in sends.iter().enumerate() {
        if out[i].is_some() {
            continue;
        }
        let kind = locked
            .get(&send.conversation.as_uuid())
            .map(|(kind, _)| kind.as_str());
        let expected = match send.target {
            Target::Direct(_) => "direct",
            Target::Group(_) => "group",
        };
        if kind != Some(expected) {
            out[i] = Some(SendOutcome::Refused(UNKNOWN_RECIPIENT));
        }
    }
    let (group_ids, group_senders): (Vec<Uuid>, Vec<Uuid>) = sends
        .iter()
        .enumerate()
        .filter(|(i, s)| out[*i].is_none() && matches!(s.target, Target::Group(_)))
        .map(|(_, s)| (s.conversation.as_uuid(), s.sender.as_uuid()))
        .unzip();
    if !group_ids.is_empty() {
        let members: HashSet<(Uuid, Uuid)> = sqlx::query_as::<_, (Uuid, Uuid)>(
            "SELECT m.conversation_id, m.user_id
             FROM members m
             JOIN unnest($1::uuid[], $2::uuid[]) AS t(conversation_id, user_id)
               ON m.conversation_id = t.conversation_id AND m.user_id = t.user_id",
        )
        .bind(&group_ids)
        .bind(&group_senders)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        for (i, send) in sends.iter().enumerate() {
            if out[i].is_none()
                && matches!(send.target, Target::Group(_))
                && !members.contains(&(send.conversation.as_uuid(), send.sender.as_uuid()))
            {
                out[i] = Some(SendOutcome::Refused(NOT_A_MEMBER));
            }
        }
    }

    // 4b. Media: each media Send carries the sender's own upload, of the Send's type.
    let media = sends_media(tx, sends, &mut out).await?;

    // 5. Number and insert what is left.
    if out.iter().any(Option::is_none) {
        let now: OffsetDateTime =
            sqlx::query_scalar("SELECT date_trunc('milliseconds', clock_timestamp())")
                .fetch_one(&mut *tx)
                .await?;
        let timestamp = Timestamp::from_datetime(now).unwrap_or(Timestamp::UNIX_EPOCH);
        let mut last: HashMap<Uuid, i64> =
            locked.iter().map(|(id, (_, last))| (*id, *last)).collect();
        let mut first_of: HashMap<(Uuid, Uuid), usize> = HashMap::new();
        let mut rows = Rows::default();
        for (i, send) in sends.iter().enumerate() {
            if out[i].is_some() {
                continue;
            }
            let key = (send.sender.as_uuid(), send.send.client_msg_id.as_uuid());
            if let Some(&first) = first_of.get(&key) {
                // Invariant: `first_of` only points at stored messages.
                out[i] = Some(match &out[first] {
                    Some(SendOutcome::Stored(m)) if m.conversation_id == send.conversation => {
                        SendOutcome::Duplicate(sent_for(send.send.client_msg_id, m))
                    }
                    _ => SendOutcome::Refused(ID_REUSED),
                });
                continue;
            }
            let conversation = send.conversation.as_uuid();
            let next = last.get(&conversation).copied().unwrap_or(0) + 1;
            let Some(seq) = u64::try_from(next).ok().and_then(Seq::new) else {
                out[i] = Some(SendOutcome::Refused(CONVERSATION_FULL));
                continue;
            };
            last.insert(conversation, next);
            let message = Message {
                id: new_message_id(),
                sender_id: send.sender,
                recipient_id: match send.target {
                    Target::Direct(peer) => RecipientId::from(peer),
                    Target::Group(group) => RecipientId::from(group),
                },
                kind: send.send.kind,
                content: send.send.content.clone(),
                timestamp,
                status: MessageStatus::Sent,
                conversation_id: send.conversation,
                seq,
                media: send
                    .send
                    .media
                    .as_ref()
                    .and_then(|m| media.get(&m.media_id.as_uuid()).cloned()),
            };
            rows.push(&message, send);
            first_of.insert(key, i);
            out[i] = Some(SendOutcome::Stored(message));
        }
        if !rows.seq.is_empty() {
            rows.insert(&mut *tx, timestamp.to_datetime()).await?;
            let (ids, lasts): (Vec<Uuid>, Vec<i64>) = last
                .iter()
                .filter(|(id, seq)| locked.get(*id).is_some_and(|(_, was)| was != *seq))
                .map(|(id, seq)| (*id, *seq))
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
        }
    }
    Ok(out
        .into_iter()
        .map(|o| {
            o.unwrap_or(SendOutcome::Refused(Refusal::new(
                ErrorCode::Unavailable,
                "not decided",
            )))
        })
        .collect())
}

fn new_message_id() -> MessageId {
    // Invariant: a v7 UUID carries version bits, so it is never nil.
    MessageId::new(Uuid::now_v7()).unwrap_or_else(|| unreachable!("a UUIDv7 is never nil"))
}

fn sent_for(client_msg_id: ClientMsgId, message: &Message) -> Sent {
    Sent {
        client_msg_id,
        message_id: message.id,
        conversation_id: message.conversation_id,
        seq: message.seq,
        timestamp: message.timestamp,
    }
}

fn original_sent(
    client_msg_id: ClientMsgId,
    conversation: ConversationId,
    original: &Original,
) -> Option<Sent> {
    Some(Sent {
        client_msg_id,
        message_id: MessageId::new(original.id)?,
        conversation_id: conversation,
        seq: Seq::new(u64::try_from(original.seq).ok()?)?,
        timestamp: Timestamp::from_datetime(original.created_at)?,
    })
}

/// The messages of one batch, column by column, for `INSERT … SELECT FROM unnest`.
#[derive(Default)]
struct Rows {
    conversation: Vec<Uuid>,
    seq: Vec<i64>,
    id: Vec<Uuid>,
    sender: Vec<Uuid>,
    client_msg_id: Vec<Uuid>,
    kind: Vec<&'static str>,
    content: Vec<String>,
    media_id: Vec<Option<Uuid>>,
    media_content_type: Vec<Option<String>>,
    media_size: Vec<Option<i64>>,
}

impl Rows {
    fn push(&mut self, message: &Message, send: &SendRequest) {
        self.conversation.push(message.conversation_id.as_uuid());
        self.seq
            .push(i64::try_from(message.seq.get()).unwrap_or(i64::MAX));
        self.id.push(message.id.as_uuid());
        self.sender.push(message.sender_id.as_uuid());
        self.client_msg_id.push(send.send.client_msg_id.as_uuid());
        self.kind.push(kind_name(message.kind));
        self.content.push(message.content.clone());
        // What the server stored, never the Send's hints.
        let media = message.media.as_ref();
        self.media_id.push(media.map(|m| m.media_id.as_uuid()));
        self.media_content_type.push(
            media
                .filter(|m| !m.content_type.is_empty())
                .map(|m| m.content_type.clone()),
        );
        self.media_size
            .push(media.and_then(|m| i64::try_from(m.size_bytes).ok()));
    }

    async fn insert(self, tx: &mut PgConnection, created_at: OffsetDateTime) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO messages (conversation_id, seq, id, sender_id, client_msg_id, type,
                                   content, media_id, media_content_type, media_size, created_at)
             SELECT t.*, $11
             FROM unnest($1::uuid[], $2::bigint[], $3::uuid[], $4::uuid[], $5::uuid[],
                         $6::text[], $7::text[], $8::uuid[], $9::text[], $10::bigint[]) AS t",
        )
        .bind(&self.conversation)
        .bind(&self.seq)
        .bind(&self.id)
        .bind(&self.sender)
        .bind(&self.client_msg_id)
        .bind(&self.kind)
        .bind(&self.content)
        .bind(&self.media_id)
        .bind(&self.media_content_type)
        .bind(&self.media_size)
        .bind(created_at)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

const MEDIA_REFUSED: Refusal = Refusal::new(
    ErrorCode::MediaRefused,
    "the media is not an upload of yours of this message's type",
);

/// Looks up the media of the Sends still undecided (one statement), refuses those whose
/// media is missing, someone else's, or of another kind than the Send's type, and returns
/// what the delivered messages carry.
async fn sends_media(
    tx: &mut PgConnection,
    sends: &[SendRequest],
    out: &mut [Option<SendOutcome>],
) -> Result<HashMap<Uuid, MediaInfo>, sqlx::Error> {
    let ids: Vec<Uuid> = sends
        .iter()
        .enumerate()
        .filter(|(i, _)| out[*i].is_none())
        .filter_map(|(_, s)| s.send.media.as_ref().map(|m| m.media_id.as_uuid()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let rows: HashMap<Uuid, MediaRow> = crate::media::store::by_ids(&mut *tx, &ids)
        .await?
        .into_iter()
        .map(|row| (row.id, row))
        .collect();
    let mut infos = HashMap::new();
    for (i, send) in sends.iter().enumerate() {
        let Some(media) = &send.send.media else {
            continue;
        };
        if out[i].is_some() {
            continue;
        }
        let row = rows.get(&media.media_id.as_uuid()).filter(|row| {
            row.owner_id == send.sender.as_uuid() && row.kind == kind_name(send.send.kind)
        });
        match row {
            None => out[i] = Some(SendOutcome::Refused(MEDIA_REFUSED)),
            Some(row) => {
                infos.insert(row.id, media_info(media.media_id, row));
            }
        }
    }
    Ok(infos)
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

fn kind_name(kind: MessageKind) -> &'static str {
    match kind {
        MessageKind::Text => "text",
        MessageKind::Image => "image",
        MessageKind::Video => "video",
        MessageKind::Audio => "audio",
        MessageKind::File => "file",
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
            let audience = match (row.kind.as_str(), row.user_low, row.user_high) {
                ("direct", Some(low), Some(high)) => {
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
