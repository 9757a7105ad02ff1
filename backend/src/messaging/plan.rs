//! The decisions about a batch's sends, without the database (sans-IO): what [`super::store`]
//! must read, what each send becomes given what was read, and the rows it must write. No SQL,
//! no clock, no id generator in here: the time and the new message ids are passed in.
//!
//! The reads come in stages, because what a stage reads depends on what the earlier ones
//! decided, and the later ones must follow the numbering lock. The store drives a [`Plan`] in
//! this order (the step numbers are the store's):
//!
//! | step | the plan says what to read or write | the store's statement | the plan decides |
//! |---|---|---|---|
//! | 1 | [`Plan::users`] | which of them exist | [`Plan::users_found`]: sender gone, unknown recipient |
//! | 1b | [`Plan::direct_pairs`] | blocks either way | [`Plan::blocks_found`]: held back until step 4 |
//! | 2 | [`Plan::direct_conversations`] (asked with step 1) | create those whose users exist, unblocked (in step 1's statement) | |
//! | 3 | [`Plan::conversations`] | lock them, with kind and `last_seq` | |
//! | 4 | [`Plan::idempotency_keys`] | the originals stored under them (with step 3 in one round trip, read after the lock) | [`Plan::locked`]: duplicates, reused ids, blocks, wrong or missing conversation |
//! | 4 | [`Plan::group_senders`] | their memberships | [`Plan::members_found`]: not a member |
//! | 4b | [`Plan::media`] | the uploads | [`Plan::uploads_found`]: media refused |
//! | 5 | [`Plan::needs_clock`] | the database clock | [`Plan::number`]: duplicates within the batch, seqs, full conversations, the rows |
//!
//! Invariant: a send's first decision is final. Each stage looks only at the sends still
//! undecided, so the stage order above is the precedence of the rules (a retry of a stored
//! message is answered with its original even if its sender was blocked or left the group
//! since).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use haberci_wire::{
    ClientMsgId, ConversationId, ErrorCode, MediaId, MediaInfo, Message, MessageId, MessageKind,
    MessageStatus, RecipientId, Sent, Seq, Timestamp, UserId,
};

use super::batch::{Refusal, SendRequest, Target};
use crate::conversations;
use crate::media::MediaKind;

/// What became of one [`SendRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// Stored now, with this seq.
    Stored(Message),
    /// Stored before (a retry): the original's id, seq and timestamp.
    Duplicate(Sent),
    Refused(Refusal),
}

const NO_SENDER: Refusal = Refusal::new(ErrorCode::Forbidden, "the sending account is gone");
const UNKNOWN_RECIPIENT: Refusal = Refusal::new(ErrorCode::UnknownRecipient, "no such recipient");
const BLOCKED_BY_RECIPIENT: Refusal = Refusal::new(
    ErrorCode::Blocked,
    "the recipient does not accept messages from you",
);
const BLOCKED_BY_SENDER: Refusal = Refusal::new(
    ErrorCode::Blocked,
    "you blocked this user; unblock them to send",
);
const ID_REUSED: Refusal = Refusal::new(
    ErrorCode::InvalidField,
    "client_msg_id was already used for another conversation",
);
const UNREADABLE_ORIGINAL: Refusal =
    Refusal::new(ErrorCode::Unavailable, "the stored original is unreadable");
const NOT_A_MEMBER: Refusal = Refusal::new(ErrorCode::Forbidden, "not a member of this group");
const MEDIA_REFUSED: Refusal = Refusal::new(
    ErrorCode::MediaRefused,
    "the media is not an upload of yours of this message's type",
);
const CONVERSATION_FULL: Refusal =
    Refusal::new(ErrorCode::Forbidden, "the conversation has no seq left");
/// A send left undecided because the store skipped a stage it needed (a bug, not the
/// client's fault).
const NOT_DECIDED: Refusal = Refusal::new(ErrorCode::Unavailable, "not decided");

/// Who blocked whom, between a direct send's sender and recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    /// The sender blocked the recipient (whether or not the recipient blocked them back).
    BySender,
    /// Only the recipient blocked the sender.
    ByRecipient,
}

/// A direct conversation to create, with both members, if it does not exist yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewDirect {
    pub conversation: ConversationId,
    /// Invariant: `low < high` (the table's order of a direct conversation's two users).
    pub low: UserId,
    pub high: UserId,
}

/// A conversation as read under the numbering lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Locked {
    pub kind: conversations::Kind,
    /// `conversations.last_seq` as stored: the seq of its latest message, 0 before the first.
    pub last_seq: i64,
}

/// A message already stored under a send's idempotency key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Original {
    /// The conversation it was stored in; `None` for a nil id, which no send names.
    pub conversation: Option<ConversationId>,
    /// `None` when the stored row does not convert back (nil id, seq or timestamp out of
    /// range): answered [`UNREADABLE_ORIGINAL`].
    pub stored: Option<StoredAs>,
}

/// What a `Sent` repeats of an original.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredAs {
    pub id: MessageId,
    pub seq: Seq,
    pub timestamp: Timestamp,
}

/// An upload that a media send names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upload {
    pub owner: UserId,
    pub kind: MediaKind,
    /// What a message with this media carries: what the upload stored, never the send's hints.
    pub info: MediaInfo,
}

/// A message to insert, with the idempotency key it is stored under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    pub client_msg_id: ClientMsgId,
    pub message: Message,
}

/// The end of a plan: every send's outcome and the writes that make it true.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decided {
    /// One per send, in the order given.
    pub outcomes: Vec<SendOutcome>,
    /// The messages stored now, in entry order; all with the same timestamp.
    pub inserts: Vec<NewMessage>,
    /// Each conversation that got messages, by id, with its new `last_seq`.
    pub last_seqs: Vec<(ConversationId, Seq)>,
}

/// One batch's sends on their way from requests to outcomes; see the module docs for the
/// order of the calls.
#[derive(Debug)]
pub struct Plan<'a> {
    sends: &'a [SendRequest],
    /// Per send: what it became, `None` while undecided.
    outcomes: Vec<Option<SendOutcome>>,
    /// Per send: the refusal a block calls for, held back until after the duplicate lookup
    /// so that a retry of a message stored before the block still gets its original `Sent`.
    blocked: Vec<Option<Refusal>>,
    /// The conversations locked for numbering.
    locked: HashMap<ConversationId, Locked>,
    /// Per send: the media its message carries.
    media: Vec<Option<MediaInfo>>,
}

impl<'a> Plan<'a> {
    pub fn new(sends: &'a [SendRequest]) -> Plan<'a> {
        Plan {
            sends,
            outcomes: vec![None; sends.len()],
            blocked: vec![None; sends.len()],
            locked: HashMap::new(),
            media: vec![None; sends.len()],
        }
    }

    /// The sends still undecided, with their positions.
    fn undecided(&self) -> impl Iterator<Item = (usize, &'a SendRequest)> + '_ {
        let sends = self.sends;
        sends
            .iter()
            .enumerate()
            .filter(|(i, _)| self.outcomes[*i].is_none())
    }

    fn decide(&mut self, i: usize, outcome: SendOutcome) {
        self.outcomes[i] = Some(outcome);
    }

    /// Step 1: every sender and direct recipient, once each, in id order.
    pub fn users(&self) -> Vec<UserId> {
        let mut users = BTreeSet::new();
        for (_, send) in self.undecided() {
            users.insert(send.sender);
            if let Target::Direct(peer) = send.target {
                users.insert(peer);
            }
        }
        users.into_iter().collect()
    }

    /// Step 1, given which of [`Plan::users`] exist: a gone sender is refused first, then a
    /// direct send to nobody.
    pub fn users_found(&mut self, existing: &HashSet<UserId>) {
        for (i, send) in self.undecided().collect::<Vec<_>>() {
            let peer_missing = match send.target {
                Target::Direct(peer) => !existing.contains(&peer),
                Target::Group(_) => false,
            };
            if !existing.contains(&send.sender) {
                self.decide(i, SendOutcome::Refused(NO_SENDER));
            } else if peer_missing {
                self.decide(i, SendOutcome::Refused(UNKNOWN_RECIPIENT));
            }
        }
    }

    /// Step 1b: the `(sender, recipient)` pairs of the direct sends, once each, in order.
    pub fn direct_pairs(&self) -> Vec<(UserId, UserId)> {
        self.undecided()
            .filter_map(|(_, send)| match send.target {
                Target::Direct(peer) => Some((send.sender, peer)),
                Target::Group(_) => None,
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Step 1b, given the [`Plan::direct_pairs`] with a block between them (either way).
    /// The refusals wait for [`Plan::locked`].
    pub fn blocks_found(&mut self, blocks: &HashMap<(UserId, UserId), Block>) {
        for (i, send) in self.undecided().collect::<Vec<_>>() {
            if let Target::Direct(peer) = send.target {
                self.blocked[i] = blocks.get(&(send.sender, peer)).map(|block| match block {
                    Block::BySender => BLOCKED_BY_SENDER,
                    Block::ByRecipient => BLOCKED_BY_RECIPIENT,
                });
            }
        }
    }

    /// Step 2: the direct conversations to create if missing, in id order. None for a
    /// blocked send, so the blocker never sees an empty conversation appear. The store asks
    /// before users and blocks are known (step 2 runs in step 1's statement), so its SQL
    /// keeps only the pairs whose two users exist and have no block between them: what this
    /// answers once [`Plan::users_found`] and [`Plan::blocks_found`] have run.
    pub fn direct_conversations(&self) -> Vec<NewDirect> {
        let mut pairs = BTreeMap::new();
        for (i, send) in self.undecided() {
            if let (None, Target::Direct(peer)) = (self.blocked[i], send.target) {
                let (low, high) = if send.sender < peer {
                    (send.sender, peer)
                } else {
                    (peer, send.sender)
                };
                pairs.insert(
                    send.conversation,
                    NewDirect {
                        conversation: send.conversation,
                        low,
                        high,
                    },
                );
            }
        }
        pairs.into_values().collect()
    }

    /// Step 3: the conversations to lock for numbering, once each, in id order (the lock
    /// order every worker follows).
    pub fn conversations(&self) -> Vec<ConversationId> {
        self.undecided()
            .map(|(_, send)| send.conversation)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Step 4: the `(sender, client_msg_id)` of every undecided send, in entry order, to look
    /// up originals by. Read after the lock: a concurrent worker's insert of the same
    /// message is visible once it released the lock.
    pub fn idempotency_keys(&self) -> Vec<(UserId, ClientMsgId)> {
        self.undecided()
            .map(|(_, send)| (send.sender, send.send.client_msg_id))
            .collect()
    }

    /// Step 4, given the [`Plan::conversations`] as locked (missing ones absent) and the
    /// originals found by [`Plan::idempotency_keys`]. In this order: a stored duplicate is
    /// answered with its original (refused when the id went to another conversation), a
    /// blocked send refused, and a send to a conversation that is missing or of the other
    /// kind (a group that does not exist) is for an unknown recipient.
    pub fn locked(
        &mut self,
        locked: HashMap<ConversationId, Locked>,
        originals: &HashMap<(UserId, ClientMsgId), Original>,
    ) {
        self.locked = locked;
        for (i, send) in self.undecided().collect::<Vec<_>>() {
            let key = (send.sender, send.send.client_msg_id);
            if let Some(original) = originals.get(&key) {
                let outcome = if original.conversation != Some(send.conversation) {
                    SendOutcome::Refused(ID_REUSED)
                } else if let Some(stored) = original.stored {
                    SendOutcome::Duplicate(Sent {
                        client_msg_id: send.send.client_msg_id,
                        message_id: stored.id,
                        conversation_id: send.conversation,
                        seq: stored.seq,
                        timestamp: stored.timestamp,
                    })
                } else {
                    SendOutcome::Refused(UNREADABLE_ORIGINAL)
                };
                self.decide(i, outcome);
            }
        }
        for (i, _) in self.undecided().collect::<Vec<_>>() {
            if let Some(refusal) = self.blocked[i] {
                self.decide(i, SendOutcome::Refused(refusal));
            }
        }
        for (i, send) in self.undecided().collect::<Vec<_>>() {
            let kind = self.locked.get(&send.conversation).map(|c| c.kind);
            if kind != Some(kind_for(send.target)) {
                self.decide(i, SendOutcome::Refused(UNKNOWN_RECIPIENT));
            }
        }
    }

    /// Step 4: `(conversation, sender)` of every undecided group send, in entry order.
    pub fn group_senders(&self) -> Vec<(ConversationId, UserId)> {
        self.undecided()
            .filter(|(_, send)| matches!(send.target, Target::Group(_)))
            .map(|(_, send)| (send.conversation, send.sender))
            .collect()
    }

    /// Step 4, given which of [`Plan::group_senders`] are members. Read under the lock, so
    /// membership cannot change before the commit.
    pub fn members_found(&mut self, members: &HashSet<(ConversationId, UserId)>) {
        for (i, send) in self.undecided().collect::<Vec<_>>() {
            if matches!(send.target, Target::Group(_))
                && !members.contains(&(send.conversation, send.sender))
            {
                self.decide(i, SendOutcome::Refused(NOT_A_MEMBER));
            }
        }
    }

    /// Step 4b: the media the undecided sends name, once each, in id order.
    pub fn media(&self) -> Vec<MediaId> {
        self.undecided()
            .filter_map(|(_, send)| send.send.media.as_ref().map(|m| m.media_id))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Step 4b, given the uploads found for [`Plan::media`]: a media send must carry the
    /// sender's own upload, of the send's type.
    pub fn uploads_found(&mut self, uploads: &HashMap<MediaId, Upload>) {
        for (i, send) in self.undecided().collect::<Vec<_>>() {
            let Some(media) = &send.send.media else {
                continue;
            };
            let upload = uploads.get(&media.media_id).filter(|upload| {
                upload.owner == send.sender && Some(upload.kind) == media_kind(send.send.kind)
            });
            match upload {
                None => self.decide(i, SendOutcome::Refused(MEDIA_REFUSED)),
                Some(upload) => self.media[i] = Some(upload.info.clone()),
            }
        }
    }

    /// Step 5: whether anything is left to number, which needs the database's time.
    pub fn needs_clock(&self) -> bool {
        self.undecided().next().is_some()
    }

    /// Step 5: numbers what is left, in entry order, at `now` (`None` when
    /// [`Plan::needs_clock`] said no), with ids from `new_id`. A repeat of a send stored
    /// earlier in this batch is answered with it (refused when the id went to another
    /// conversation); a conversation past [`Seq::MAX`] takes no more.
    pub fn number(
        mut self,
        now: Option<Timestamp>,
        mut new_id: impl FnMut() -> MessageId,
    ) -> Decided {
        let mut first_of: HashMap<(UserId, ClientMsgId), usize> = HashMap::new();
        let mut numbered: BTreeMap<ConversationId, Seq> = BTreeMap::new();
        let mut inserts = Vec::new();
        for (i, send) in self.undecided().collect::<Vec<_>>() {
            let Some(now) = now else {
                self.decide(i, SendOutcome::Refused(NOT_DECIDED));
                continue;
            };
            let key = (send.sender, send.send.client_msg_id);
            if let Some(&first) = first_of.get(&key) {
                // Invariant: `first_of` only points at messages stored now.
                let outcome = match &self.outcomes[first] {
                    Some(SendOutcome::Stored(m)) if m.conversation_id == send.conversation => {
                        SendOutcome::Duplicate(Sent {
                            client_msg_id: send.send.client_msg_id,
                            message_id: m.id,
                            conversation_id: m.conversation_id,
                            seq: m.seq,
                            timestamp: m.timestamp,
                        })
                    }
                    _ => SendOutcome::Refused(ID_REUSED),
                };
                self.decide(i, outcome);
                continue;
            }
            let next = match numbered.get(&send.conversation) {
                Some(last) => last.next(),
                None => {
                    let last = self
                        .locked
                        .get(&send.conversation)
                        .map_or(0, |c| c.last_seq);
                    first_after(last)
                }
            };
            let Some(seq) = next else {
                self.decide(i, SendOutcome::Refused(CONVERSATION_FULL));
                continue;
            };
            numbered.insert(send.conversation, seq);
            let message = Message {
                id: new_id(),
                sender_id: send.sender,
                recipient_id: match send.target {
                    Target::Direct(peer) => RecipientId::from(peer),
                    Target::Group(group) => RecipientId::from(group),
                },
                kind: send.send.kind,
                content: send.send.content.clone(),
                timestamp: now,
                status: MessageStatus::Sent,
                conversation_id: send.conversation,
                seq,
                media: self.media[i].take(),
            };
            inserts.push(NewMessage {
                client_msg_id: send.send.client_msg_id,
                message: message.clone(),
            });
            first_of.insert(key, i);
            self.decide(i, SendOutcome::Stored(message));
        }
        Decided {
            outcomes: self
                .outcomes
                .into_iter()
                .map(|o| o.unwrap_or(SendOutcome::Refused(NOT_DECIDED)))
                .collect(),
            inserts,
            last_seqs: numbered.into_iter().collect(),
        }
    }
}

/// The kind of conversation a send's target lives in.
fn kind_for(target: Target) -> conversations::Kind {
    match target {
        Target::Direct(_) => conversations::Kind::Direct,
        Target::Group(_) => conversations::Kind::Group,
    }
}

/// The kind of upload a message of `kind` carries (`None`: text carries none).
fn media_kind(kind: MessageKind) -> Option<MediaKind> {
    match kind {
        MessageKind::Text => None,
        MessageKind::Image => Some(MediaKind::Image),
        MessageKind::Video => Some(MediaKind::Video),
        MessageKind::Audio => Some(MediaKind::Audio),
        MessageKind::File => Some(MediaKind::File),
    }
}

/// The seq after a stored `last_seq`; `None` when there is none left (or the stored value is
/// out of range).
fn first_after(last_seq: i64) -> Option<Seq> {
    let next = last_seq.checked_add(1)?;
    Seq::new(u64::try_from(next).ok()?)
}

#[cfg(test)]
mod tests {
    //! Every decision of a batch as one table: a world (what the database holds), a batch,
    //! and what each send becomes, which round trips the store makes, which direct
    //! conversations appear and where `last_seq` ends. [`run`] drives the plan in the
    //! store's order and answers its reads from the world.

    use std::num::NonZeroU32;

    use haberci_wire::{GroupId, MediaRef, Recipient, SendMessage, SessionId};
    use uuid::Uuid;

    use super::*;
    use crate::conversations::Kind;

    const fn uuid(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }
    const fn user(n: u128) -> UserId {
        match UserId::new(uuid(n)) {
            Some(id) => id,
            None => panic!("nil"),
        }
    }
    const fn group(n: u128) -> GroupId {
        match GroupId::new(uuid(n)) {
            Some(id) => id,
            None => panic!("nil"),
        }
    }
    const fn media(n: u128) -> MediaId {
        match MediaId::new(uuid(n)) {
            Some(id) => id,
            None => panic!("nil"),
        }
    }

    const AYSE: UserId = user(1);
    const BURAK: UserId = user(2);
    const CEM: UserId = user(3);
    /// Not a user (never was, or the account is gone).
    const DENIZ: UserId = user(4);
    /// Ayşe and Burak are members, at seq 7.
    const KULUP: GroupId = group(100);
    /// No such group.
    const NO_GROUP: GroupId = group(101);
    /// Ayşe's image.
    const PHOTO: MediaId = media(200);
    /// Burak's file.
    const DOC: MediaId = media(201);
    /// No such upload.
    const NO_MEDIA: MediaId = media(202);

    fn now() -> Timestamp {
        Timestamp::from_unix_millis(1_800_000_000_000).unwrap_or(Timestamp::UNIX_EPOCH)
    }
    fn earlier() -> Timestamp {
        Timestamp::from_unix_millis(1_700_000_000_000).unwrap_or(Timestamp::UNIX_EPOCH)
    }
    fn seq(n: u64) -> Seq {
        Seq::new(n).unwrap_or_else(|| unreachable!("seq {n}"))
    }
    fn cmid(n: u128) -> ClientMsgId {
        ClientMsgId::new(uuid(0x5000 + n)).unwrap_or_else(|| unreachable!())
    }
    fn message_id(n: u128) -> MessageId {
        MessageId::new(uuid(0x9000 + n)).unwrap_or_else(|| unreachable!())
    }
    fn direct(a: UserId, b: UserId) -> ConversationId {
        Target::Direct(b).conversation(a)
    }
    fn of_group(group: GroupId) -> ConversationId {
        Target::Group(group).conversation(AYSE)
    }

    fn request(
        sender: UserId,
        recipient: Recipient,
        kind: MessageKind,
        id: u128,
        media: Option<MediaId>,
    ) -> SendRequest {
        let target = match recipient {
            Recipient::User(user) => Target::Direct(user),
            Recipient::Group(group) => Target::Group(group),
        };
        SendRequest {
            sender,
            session: SessionId::new(uuid(0x7000 + id)).unwrap_or_else(|| unreachable!()),
            conversation: target.conversation(sender),
            target,
            send: SendMessage {
                client_msg_id: cmid(id),
                recipient,
                kind,
                content: format!("message {id}"),
                media: media.map(|media_id| MediaRef {
                    media_id,
                    content_type: "hint/only".into(),
                    size_bytes: 1,
                }),
            },
        }
    }
    /// A text message from `from` to `to`, with client_msg_id `id`.
    fn dm(from: UserId, to: UserId, id: u128) -> SendRequest {
        request(from, Recipient::User(to), MessageKind::Text, id, None)
    }
    /// A text message from `from` to a group.
    fn post(from: UserId, to: GroupId, id: u128) -> SendRequest {
        request(from, Recipient::Group(to), MessageKind::Text, id, None)
    }
    /// A media message of `kind` naming `media`.
    fn with_media(send: SendRequest, kind: MessageKind, media: MediaId) -> SendRequest {
        request(
            send.sender,
            send.send.recipient,
            kind,
            id_of(&send),
            Some(media),
        )
    }
    fn id_of(send: &SendRequest) -> u128 {
        send.send.client_msg_id.as_uuid().as_u128() - 0x5000
    }

    /// What the database holds before the batch.
    #[derive(Clone)]
    struct World {
        users: HashSet<UserId>,
        /// (blocker, blocked).
        blocks: HashSet<(UserId, UserId)>,
        conversations: BTreeMap<ConversationId, Locked>,
        members: HashSet<(ConversationId, UserId)>,
        originals: HashMap<(UserId, ClientMsgId), Original>,
        uploads: HashMap<MediaId, Upload>,
    }

    fn upload(id: MediaId, owner: UserId, kind: MediaKind, content_type: &str) -> Upload {
        Upload {
            owner,
            kind,
            info: MediaInfo {
                media_id: id,
                content_type: content_type.into(),
                size_bytes: 1234,
                width: NonZeroU32::new(640),
                height: NonZeroU32::new(480),
                duration_ms: None,
                blurhash: Some("LEHV6nWB2yk8pyo0adR*.7kCMdnj".into()),
                filename: None,
            },
        }
    }

    impl World {
        /// Ayşe, Burak and Cem; Ayşe and Burak's conversation at seq 3; [`KULUP`] at 7;
        /// [`PHOTO`] and [`DOC`].
        fn base() -> World {
            let ab = direct(AYSE, BURAK);
            let kulup = of_group(KULUP);
            World {
                users: [AYSE, BURAK, CEM].into(),
                blocks: HashSet::new(),
                conversations: [
                    (
                        ab,
                        Locked {
                            kind: Kind::Direct,
                            last_seq: 3,
                        },
                    ),
                    (
                        kulup,
                        Locked {
                            kind: Kind::Group,
                            last_seq: 7,
                        },
                    ),
                ]
                .into(),
                members: [(ab, AYSE), (ab, BURAK), (kulup, AYSE), (kulup, BURAK)].into(),
                originals: HashMap::new(),
                uploads: [
                    (PHOTO, upload(PHOTO, AYSE, MediaKind::Image, "image/jpeg")),
                    (DOC, upload(DOC, BURAK, MediaKind::File, "application/pdf")),
                ]
                .into(),
            }
        }
        fn block(mut self, blocker: UserId, blocked: UserId) -> World {
            self.blocks.insert((blocker, blocked));
            self
        }
        fn at(mut self, conversation: ConversationId, kind: Kind, last_seq: i64) -> World {
            self.conversations
                .insert(conversation, Locked { kind, last_seq });
            self
        }
        /// `sender`'s message `id` stored in `conversation` at `seq`.
        fn stored(
            mut self,
            sender: UserId,
            id: u128,
            conversation: ConversationId,
            seq: u64,
        ) -> World {
            let stored = StoredAs {
                id: message_id(u128::from(seq)),
                seq: super::tests::seq(seq),
                timestamp: earlier(),
            };
            self.originals.insert(
                (sender, cmid(id)),
                Original {
                    conversation: Some(conversation),
                    stored: Some(stored),
                },
            );
            self
        }
        fn unreadable(mut self, sender: UserId, id: u128, conversation: ConversationId) -> World {
            self.originals.insert(
                (sender, cmid(id)),
                Original {
                    conversation: Some(conversation),
                    stored: None,
                },
            );
            self
        }
    }

    /// What a send should become.
    #[derive(Debug)]
    enum Want {
        /// Stored now with this seq.
        Stored(u64),
        /// Answered with the original, stored before or earlier in the batch, at this seq.
        Duplicate(u64),
        Refused(Refusal),
    }
    use Want::{Duplicate, Refused, Stored};

    struct Case {
        name: &'static str,
        world: World,
        sends: Vec<SendRequest>,
        want: Vec<Want>,
        /// The store's statements, in order.
        trips: &'static str,
        /// The direct conversations that did not exist and do now.
        created: Vec<ConversationId>,
        /// Where each conversation that got messages ends.
        last_seqs: Vec<(ConversationId, u64)>,
    }

    /// What a batch did.
    struct Run {
        decided: Decided,
        trips: Vec<&'static str>,
        created: Vec<ConversationId>,
    }

    /// Runs `sends` through a plan as `store::plan_sends` and `store::write` do, answering its reads from
    /// `world` (and skipping a statement whose input is empty, as the store does).
    fn run(world: &World, sends: &[SendRequest]) -> Run {
        let mut world = world.clone();
        // Users, blocks and the creation of direct conversations are one round trip, the
        // pairs and the conversations to create taken before users are refused.
        let mut trips = vec!["users"];
        let mut plan = Plan::new(sends);
        let pairs = plan.direct_pairs();
        let offered = plan.direct_conversations();
        let existing = plan
            .users()
            .into_iter()
            .filter(|u| world.users.contains(u))
            .collect();
        plan.users_found(&existing);
        let blocks = pairs
            .into_iter()
            .filter_map(|(sender, peer)| {
                let block = if world.blocks.contains(&(sender, peer)) {
                    Block::BySender
                } else if world.blocks.contains(&(peer, sender)) {
                    Block::ByRecipient
                } else {
                    return None;
                };
                Some(((sender, peer), block))
            })
            .collect();
        plan.blocks_found(&blocks);

        // What the statement creates, by its SQL's rule: both users exist, no block either
        // way. The plan, knowing users and blocks now, names the same conversations.
        let kept: Vec<NewDirect> = offered
            .into_iter()
            .filter(|d| {
                world.users.contains(&d.low)
                    && world.users.contains(&d.high)
                    && !world.blocks.contains(&(d.low, d.high))
                    && !world.blocks.contains(&(d.high, d.low))
            })
            .collect();
        assert_eq!(
            kept,
            plan.direct_conversations(),
            "the SQL's rule is the plan's"
        );
        let mut created = Vec::new();
        for direct in kept {
            assert!(direct.low < direct.high, "{direct:?}");
            if !world.conversations.contains_key(&direct.conversation) {
                world = world.at(direct.conversation, Kind::Direct, 0);
                created.push(direct.conversation);
            }
        }

        // The lock, the clock and the originals are one round trip.
        let conversations = plan.conversations();
        let keys = plan.idempotency_keys();
        if !conversations.is_empty() || !keys.is_empty() {
            trips.push("lock");
        }
        let locked = conversations
            .into_iter()
            .filter_map(|c| Some((c, *world.conversations.get(&c)?)))
            .collect();
        let originals = keys
            .into_iter()
            .filter_map(|key| Some((key, *world.originals.get(&key)?)))
            .collect();
        plan.locked(locked, &originals);

        let senders = plan.group_senders();
        if !senders.is_empty() {
            trips.push("members");
        }
        let members = senders
            .into_iter()
            .filter(|pair| world.members.contains(pair))
            .collect();
        plan.members_found(&members);

        let ids = plan.media();
        if !ids.is_empty() {
            trips.push("media");
        }
        let uploads = ids
            .into_iter()
            .filter_map(|id| Some((id, world.uploads.get(&id)?.clone())))
            .collect();
        plan.uploads_found(&uploads);

        // The clock came with the originals.
        let now = plan.needs_clock().then(now);
        let mut next_id = 1000;
        let decided = plan.number(now, || {
            next_id += 1;
            message_id(next_id)
        });
        if now.is_some() && !decided.inserts.is_empty() {
            trips.push("write");
        }
        Run {
            decided,
            trips,
            created,
        }
    }

    fn cases() -> Vec<Case> {
        let ab = direct(AYSE, BURAK);
        let ac = direct(AYSE, CEM);
        let bc = direct(BURAK, CEM);
        let kulup = of_group(KULUP);
        let all = "users lock write";
        let max = Seq::MAX.get();
        let max_i64 = i64::try_from(max).unwrap_or(i64::MAX);
        vec![
            // Numbering.
            Case {
                name: "a first direct message creates the conversation and takes seq 1",
                world: World::base(),
                sends: vec![dm(AYSE, CEM, 1)],
                want: vec![Stored(1)],
                trips: all,
                created: vec![ac],
                last_seqs: vec![(ac, 1)],
            },
            Case {
                name: "a direct message continues its conversation's seqs",
                world: World::base(),
                sends: vec![dm(BURAK, AYSE, 1)],
                want: vec![Stored(4)],
                trips: all,
                created: vec![],
                last_seqs: vec![(ab, 4)],
            },
            Case {
                name: "sends to one conversation are numbered in entry order, either sender",
                world: World::base(),
                sends: vec![dm(AYSE, BURAK, 1), dm(BURAK, AYSE, 2), dm(AYSE, BURAK, 3)],
                want: vec![Stored(4), Stored(5), Stored(6)],
                trips: all,
                created: vec![],
                last_seqs: vec![(ab, 6)],
            },
            Case {
                name: "each conversation numbers its own sends, interleaved",
                world: World::base(),
                sends: vec![
                    dm(AYSE, BURAK, 1),
                    post(AYSE, KULUP, 2),
                    dm(AYSE, CEM, 3),
                    post(BURAK, KULUP, 4),
                    dm(BURAK, AYSE, 5),
                    dm(CEM, AYSE, 6),
                ],
                want: vec![
                    Stored(4),
                    Stored(8),
                    Stored(1),
                    Stored(9),
                    Stored(5),
                    Stored(2),
                ],
                trips: "users lock members write",
                created: vec![ac],
                last_seqs: vec![(ab, 5), (kulup, 9), (ac, 2)],
            },
            Case {
                name: "the last seq left is given, then the conversation is full",
                world: World::base().at(ab, Kind::Direct, max_i64 - 1),
                sends: vec![dm(AYSE, BURAK, 1), dm(AYSE, BURAK, 2)],
                want: vec![Stored(max), Refused(CONVERSATION_FULL)],
                trips: all,
                created: vec![],
                last_seqs: vec![(ab, max)],
            },
            Case {
                name: "a full conversation takes nothing, not even a repeat; the others go on",
                world: World::base().at(ab, Kind::Direct, max_i64),
                sends: vec![dm(AYSE, BURAK, 1), dm(AYSE, CEM, 2), dm(AYSE, BURAK, 1)],
                want: vec![
                    Refused(CONVERSATION_FULL),
                    Stored(1),
                    Refused(CONVERSATION_FULL),
                ],
                trips: all,
                created: vec![ac],
                last_seqs: vec![(ac, 1)],
            },
            Case {
                name: "a last_seq past any seq (or negative) is full",
                world: World::base()
                    .at(ab, Kind::Direct, i64::MAX)
                    .at(kulup, Kind::Group, -1),
                sends: vec![dm(AYSE, BURAK, 1), post(AYSE, KULUP, 2)],
                want: vec![Refused(CONVERSATION_FULL), Refused(CONVERSATION_FULL)],
                trips: "users lock members",
                created: vec![],
                last_seqs: vec![],
            },
            // Who exists.
            Case {
                name: "a direct message to nobody is refused before any other read",
                world: World::base(),
                sends: vec![dm(AYSE, DENIZ, 1)],
                want: vec![Refused(UNKNOWN_RECIPIENT)],
                trips: "users",
                created: vec![],
                last_seqs: vec![],
            },
            Case {
                name: "a gone sender is refused, whatever the recipient",
                world: World::base(),
                sends: vec![
                    dm(DENIZ, AYSE, 1),
                    post(DENIZ, KULUP, 2),
                    dm(DENIZ, user(5), 3),
                ],
                want: vec![Refused(NO_SENDER), Refused(NO_SENDER), Refused(NO_SENDER)],
                trips: "users",
                created: vec![],
                last_seqs: vec![],
            },
            // Groups.
            Case {
                name: "a member's send goes to the group",
                world: World::base(),
                sends: vec![post(BURAK, KULUP, 1)],
                want: vec![Stored(8)],
                trips: "users lock members write",
                created: vec![],
                last_seqs: vec![(kulup, 8)],
            },
            Case {
                name: "a non-member is refused and numbers nothing",
                world: World::base(),
                sends: vec![post(CEM, KULUP, 1), post(AYSE, KULUP, 2)],
                want: vec![Refused(NOT_A_MEMBER), Stored(8)],
                trips: "users lock members write",
                created: vec![],
                last_seqs: vec![(kulup, 8)],
            },
            Case {
                name: "a group that does not exist is an unknown recipient",
                world: World::base(),
                sends: vec![post(AYSE, NO_GROUP, 1)],
                want: vec![Refused(UNKNOWN_RECIPIENT)],
                trips: "users lock",
                created: vec![],
                last_seqs: vec![],
            },
            Case {
                name: "a conversation of the other kind is an unknown recipient",
                world: World::base()
                    .at(ac, Kind::Group, 0)
                    .at(of_group(NO_GROUP), Kind::Direct, 0),
                sends: vec![dm(AYSE, CEM, 1), post(AYSE, NO_GROUP, 2)],
                want: vec![Refused(UNKNOWN_RECIPIENT), Refused(UNKNOWN_RECIPIENT)],
                trips: "users lock",
                created: vec![],
                last_seqs: vec![],
            },
            // Blocks.
            Case {
                name: "a direct message to someone who blocked the sender is refused and creates nothing",
                world: World::base().block(CEM, AYSE),
                sends: vec![dm(AYSE, CEM, 1)],
                want: vec![Refused(BLOCKED_BY_RECIPIENT)],
                trips: "users lock",
                created: vec![],
                last_seqs: vec![],
            },
            Case {
                name: "a direct message to someone the sender blocked is refused with the sender's reason",
                world: World::base().block(AYSE, BURAK),
                sends: vec![dm(AYSE, BURAK, 1)],
                want: vec![Refused(BLOCKED_BY_SENDER)],
                trips: "users lock",
                created: vec![],
                last_seqs: vec![],
            },
            Case {
                name: "a block both ways is the sender's",
                world: World::base().block(AYSE, CEM).block(CEM, AYSE),
                sends: vec![dm(CEM, AYSE, 1)],
                want: vec![Refused(BLOCKED_BY_SENDER)],
                trips: "users lock",
                created: vec![],
                last_seqs: vec![],
            },
            Case {
                name: "a block leaves the rest of the batch alone",
                world: World::base().block(CEM, AYSE),
                sends: vec![
                    dm(AYSE, CEM, 1),
                    dm(AYSE, BURAK, 2),
                    dm(BURAK, CEM, 3),
                    post(AYSE, KULUP, 4),
                ],
                want: vec![
                    Refused(BLOCKED_BY_RECIPIENT),
                    Stored(4),
                    Stored(1),
                    Stored(8),
                ],
                trips: "users lock members write",
                created: vec![bc],
                last_seqs: vec![(ab, 4), (bc, 1), (kulup, 8)],
            },
            Case {
                name: "a block in a group is no refusal",
                world: World::base().block(BURAK, AYSE),
                sends: vec![post(AYSE, KULUP, 1)],
                want: vec![Stored(8)],
                trips: "users lock members write",
                created: vec![],
                last_seqs: vec![(kulup, 8)],
            },
            // Duplicates already stored.
            Case {
                name: "a retry of a stored message gets the original and stores nothing",
                world: World::base().stored(AYSE, 1, ab, 2),
                sends: vec![dm(AYSE, BURAK, 1)],
                want: vec![Duplicate(2)],
                trips: "users lock",
                created: vec![],
                last_seqs: vec![],
            },
            Case {
                name: "a retry gets its original even across a block made since",
                world: World::base().stored(AYSE, 1, ab, 2).block(BURAK, AYSE),
                sends: vec![dm(AYSE, BURAK, 1), dm(AYSE, BURAK, 2)],
                want: vec![Duplicate(2), Refused(BLOCKED_BY_RECIPIENT)],
                trips: "users lock",
                created: vec![],
                last_seqs: vec![],
            },
            Case {
                name: "a retry gets its original even after the sender left the group",
                world: World::base().stored(CEM, 1, kulup, 5),
                sends: vec![post(CEM, KULUP, 1), post(CEM, KULUP, 2)],
                want: vec![Duplicate(5), Refused(NOT_A_MEMBER)],
                trips: "users lock members",
                created: vec![],
                last_seqs: vec![],
            },
            Case {
                name: "a retry of a media message gets its original without a media check",
                world: World::base().stored(AYSE, 1, ab, 2),
                sends: vec![with_media(dm(AYSE, BURAK, 1), MessageKind::Image, NO_MEDIA)],
                want: vec![Duplicate(2)],
                trips: "users lock",
                created: vec![],
                last_seqs: vec![],
            },
            Case {
                name: "every copy of a stored message in a batch gets the original",
                world: World::base().stored(AYSE, 1, ab, 2),
                sends: vec![dm(AYSE, BURAK, 1), dm(AYSE, BURAK, 1), dm(AYSE, BURAK, 2)],
                want: vec![Duplicate(2), Duplicate(2), Stored(4)],
                trips: all,
                created: vec![],
                last_seqs: vec![(ab, 4)],
            },
            Case {
                name: "an id stored for another conversation is refused",
                world: World::base().stored(AYSE, 1, kulup, 5),
                sends: vec![dm(AYSE, BURAK, 1)],
                want: vec![Refused(ID_REUSED)],
                trips: "users lock",
                created: vec![],
                last_seqs: vec![],
            },
            Case {
                name: "an original that does not read back is unavailable",
                world: World::base().unreadable(AYSE, 1, ab),
                sends: vec![dm(AYSE, BURAK, 1)],
                want: vec![Refused(UNREADABLE_ORIGINAL)],
                trips: "users lock",
                created: vec![],
                last_seqs: vec![],
            },
            Case {
                name: "another sender's message under the same id is no duplicate",
                world: World::base().stored(BURAK, 1, ab, 2),
                sends: vec![dm(AYSE, BURAK, 1)],
                want: vec![Stored(4)],
                trips: all,
                created: vec![],
                last_seqs: vec![(ab, 4)],
            },
            // Duplicates within the batch.
            Case {
                name: "the same send twice in a batch is stored once",
                world: World::base(),
                sends: vec![dm(AYSE, BURAK, 1), dm(AYSE, BURAK, 1)],
                want: vec![Stored(4), Duplicate(4)],
                trips: all,
                created: vec![],
                last_seqs: vec![(ab, 4)],
            },
            Case {
                name: "an id used twice in a batch for two conversations: the second is refused",
                world: World::base(),
                sends: vec![post(AYSE, KULUP, 1), dm(AYSE, CEM, 1)],
                want: vec![Stored(8), Refused(ID_REUSED)],
                trips: "users lock members write",
                // Created before the numbering finds the repeat: a conversation with no
                // message, as before this plan.
                created: vec![ac],
                last_seqs: vec![(kulup, 8)],
            },
            Case {
                name: "two senders may use the same id",
                world: World::base(),
                sends: vec![dm(AYSE, BURAK, 1), dm(BURAK, AYSE, 1)],
                want: vec![Stored(4), Stored(5)],
                trips: all,
                created: vec![],
                last_seqs: vec![(ab, 5)],
            },
            Case {
                name: "a refused send is not the first of its id",
                world: World::base(),
                sends: vec![post(CEM, KULUP, 1), dm(CEM, AYSE, 1)],
                want: vec![Refused(NOT_A_MEMBER), Stored(1)],
                trips: "users lock members write",
                created: vec![ac],
                last_seqs: vec![(ac, 1)],
            },
            // Media.
            Case {
                name: "a media message carries the sender's own upload as stored",
                world: World::base(),
                sends: vec![
                    with_media(dm(AYSE, BURAK, 1), MessageKind::Image, PHOTO),
                    with_media(post(BURAK, KULUP, 2), MessageKind::File, DOC),
                ],
                want: vec![Stored(4), Stored(8)],
                trips: "users lock members media write",
                created: vec![],
                last_seqs: vec![(ab, 4), (kulup, 8)],
            },
            Case {
                name: "media that is someone else's, of another type, missing, or on a text is refused",
                world: World::base(),
                sends: vec![
                    with_media(dm(AYSE, BURAK, 1), MessageKind::File, DOC),
                    with_media(dm(AYSE, BURAK, 2), MessageKind::Video, PHOTO),
                    with_media(dm(AYSE, BURAK, 3), MessageKind::Image, NO_MEDIA),
                    with_media(dm(AYSE, BURAK, 4), MessageKind::Text, PHOTO),
                    with_media(dm(AYSE, BURAK, 5), MessageKind::Image, PHOTO),
                ],
                want: vec![
                    Refused(MEDIA_REFUSED),
                    Refused(MEDIA_REFUSED),
                    Refused(MEDIA_REFUSED),
                    Refused(MEDIA_REFUSED),
                    Stored(4),
                ],
                trips: "users lock media write",
                created: vec![],
                last_seqs: vec![(ab, 4)],
            },
            Case {
                name: "media is checked after membership",
                world: World::base(),
                sends: vec![with_media(post(CEM, KULUP, 1), MessageKind::Image, PHOTO)],
                want: vec![Refused(NOT_A_MEMBER)],
                trips: "users lock members",
                created: vec![],
                last_seqs: vec![],
            },
            Case {
                name: "refused media leaves no seq behind",
                world: World::base(),
                sends: vec![
                    with_media(dm(AYSE, BURAK, 1), MessageKind::Audio, PHOTO),
                    dm(AYSE, BURAK, 2),
                ],
                want: vec![Refused(MEDIA_REFUSED), Stored(4)],
                trips: "users lock media write",
                created: vec![],
                last_seqs: vec![(ab, 4)],
            },
            // All of it at once.
            Case {
                name: "one batch, every answer",
                world: World::base().block(BURAK, CEM).stored(AYSE, 9, ab, 3),
                sends: vec![
                    dm(DENIZ, AYSE, 1),
                    dm(AYSE, DENIZ, 2),
                    dm(CEM, BURAK, 3),
                    post(CEM, KULUP, 4),
                    post(AYSE, NO_GROUP, 5),
                    dm(AYSE, BURAK, 9),
                    post(AYSE, KULUP, 9),
                    with_media(dm(BURAK, AYSE, 6), MessageKind::Image, PHOTO),
                    dm(AYSE, CEM, 7),
                    dm(AYSE, CEM, 7),
                    post(BURAK, KULUP, 7),
                ],
                want: vec![
                    Refused(NO_SENDER),
                    Refused(UNKNOWN_RECIPIENT),
                    Refused(BLOCKED_BY_RECIPIENT),
                    Refused(NOT_A_MEMBER),
                    Refused(UNKNOWN_RECIPIENT),
                    Duplicate(3),
                    Refused(ID_REUSED),
                    Refused(MEDIA_REFUSED),
                    Stored(1),
                    Duplicate(1),
                    Stored(8),
                ],
                trips: "users lock members media write",
                created: vec![ac],
                last_seqs: vec![(ac, 1), (kulup, 8)],
            },
        ]
    }

    /// The message `send` should be stored as, with the id and seq it was given.
    fn expected_message(world: &World, send: &SendRequest, id: MessageId, seq: Seq) -> Message {
        Message {
            id,
            sender_id: send.sender,
            recipient_id: send.send.recipient.id(),
            kind: send.send.kind,
            content: send.send.content.clone(),
            timestamp: now(),
            status: MessageStatus::Sent,
            conversation_id: send.conversation,
            seq,
            media: send
                .send
                .media
                .as_ref()
                .and_then(|m| world.uploads.get(&m.media_id))
                .map(|upload| upload.info.clone()),
        }
    }

    #[test]
    fn every_decision_of_a_batch() {
        for case in cases() {
            let name = case.name;
            assert_eq!(
                case.sends.len(),
                case.want.len(),
                "{name}: the table itself"
            );
            let run = run(&case.world, &case.sends);
            let outcomes = &run.decided.outcomes;
            assert_eq!(outcomes.len(), case.sends.len(), "{name}");
            for (i, (send, want)) in case.sends.iter().zip(&case.want).enumerate() {
                let got = &outcomes[i];
                match (want, got) {
                    (Stored(n), SendOutcome::Stored(message)) => {
                        let wanted = expected_message(&case.world, send, message.id, seq(*n));
                        assert_eq!(message, &wanted, "{name}: send {i}");
                    }
                    (Duplicate(n), SendOutcome::Duplicate(sent)) => {
                        // The original: stored before, or earlier in this batch.
                        let original = case
                            .world
                            .originals
                            .get(&(send.sender, send.send.client_msg_id))
                            .and_then(|o| o.stored)
                            .map(|s| (s.id, s.timestamp))
                            .or_else(|| {
                                outcomes[..i].iter().find_map(|o| match o {
                                    SendOutcome::Stored(m)
                                        if m.conversation_id == send.conversation
                                            && m.seq == seq(*n) =>
                                    {
                                        Some((m.id, m.timestamp))
                                    }
                                    _ => None,
                                })
                            });
                        let Some((id, timestamp)) = original else {
                            panic!("{name}: send {i}: no original at seq {n}");
                        };
                        let wanted = Sent {
                            client_msg_id: send.send.client_msg_id,
                            message_id: id,
                            conversation_id: send.conversation,
                            seq: seq(*n),
                            timestamp,
                        };
                        assert_eq!(sent, &wanted, "{name}: send {i}");
                    }
                    (Refused(refusal), SendOutcome::Refused(got)) => {
                        assert_eq!(got, refusal, "{name}: send {i}");
                    }
                    _ => panic!("{name}: send {i}: wanted {want:?}, got {got:?}"),
                }
            }
            // The rows are the messages stored now, in entry order, under their keys.
            let stored: Vec<NewMessage> = case
                .sends
                .iter()
                .zip(outcomes)
                .filter_map(|(send, outcome)| match outcome {
                    SendOutcome::Stored(message) => Some(NewMessage {
                        client_msg_id: send.send.client_msg_id,
                        message: message.clone(),
                    }),
                    _ => None,
                })
                .collect();
            assert_eq!(run.decided.inserts, stored, "{name}: rows");
            let mut last_seqs: Vec<(ConversationId, Seq)> =
                case.last_seqs.iter().map(|&(c, n)| (c, seq(n))).collect();
            last_seqs.sort();
            assert_eq!(run.decided.last_seqs, last_seqs, "{name}: last_seq");
            assert_eq!(run.trips.join(" "), case.trips, "{name}: round trips");
            let (mut created, mut wanted) = (run.created, case.created);
            created.sort();
            wanted.sort();
            assert_eq!(created, wanted, "{name}: conversations created");
        }
    }

    #[test]
    fn the_reads_ask_for_each_thing_once_in_lock_order_and_only_for_sends_still_open() {
        let sends = [
            dm(CEM, AYSE, 1),
            dm(AYSE, BURAK, 2),
            dm(AYSE, BURAK, 3),
            dm(AYSE, DENIZ, 4),
            post(BURAK, KULUP, 5),
            with_media(dm(BURAK, AYSE, 6), MessageKind::Image, PHOTO),
            with_media(dm(BURAK, AYSE, 7), MessageKind::Image, PHOTO),
        ];
        let mut plan = Plan::new(&sends);
        assert_eq!(plan.users(), vec![AYSE, BURAK, CEM, DENIZ]);
        plan.users_found(&[AYSE, BURAK, CEM].into());
        assert_eq!(
            plan.direct_pairs(),
            vec![(AYSE, BURAK), (BURAK, AYSE), (CEM, AYSE)]
        );
        plan.blocks_found(&[((CEM, AYSE), Block::ByRecipient)].into());
        let ab = direct(AYSE, BURAK);
        assert_eq!(
            plan.direct_conversations(),
            vec![NewDirect {
                conversation: ab,
                low: AYSE,
                high: BURAK
            }]
        );
        // A blocked send's conversation is still locked (it may hold the send's original).
        let mut locks = vec![ab, direct(AYSE, CEM), of_group(KULUP)];
        locks.sort();
        assert_eq!(plan.conversations(), locks);
        assert_eq!(
            plan.idempotency_keys(),
            vec![
                (CEM, cmid(1)),
                (AYSE, cmid(2)),
                (AYSE, cmid(3)),
                (BURAK, cmid(5)),
                (BURAK, cmid(6)),
                (BURAK, cmid(7)),
            ]
        );
        let world = World::base();
        let locked = world.conversations.clone().into_iter().collect();
        plan.locked(locked, &HashMap::new());
        assert_eq!(plan.group_senders(), vec![(of_group(KULUP), BURAK)]);
        plan.members_found(&HashSet::new());
        assert_eq!(plan.media(), vec![PHOTO]);
    }

    #[test]
    fn a_plan_numbered_without_the_clock_decides_what_is_left_as_unavailable() {
        let sends = [dm(AYSE, BURAK, 1)];
        let decided = Plan::new(&sends).number(None, || message_id(1));
        assert_eq!(
            decided,
            Decided {
                outcomes: vec![SendOutcome::Refused(NOT_DECIDED)],
                inserts: vec![],
                last_seqs: vec![],
            }
        );
    }
}
