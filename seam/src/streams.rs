//! What gateways and workers exchange through Redis. Not seen by clients; both sides are
//! built from this one module, so they cannot drift apart.
//!
//! - **In**: a gateway `XADD`s an [`Inbound`] (JSON, field [`ENTRY_FIELD`]) to the stream
//!   shard of its conversation, [`stream_key`]`(`[`shard_of`]`(conversation))`. Workers read
//!   the shards in one consumer group ([`CONSUMER_GROUP`]).
//! - **Out**: workers (and gateways, for ephemeral frames) `SPUBLISH` an [`Event`] (JSON) to a
//!   user's channel ([`user_channel`]), a group conversation's channel
//!   ([`conversation_channel`]) or a user's presence channel ([`presence_channel`]).
//!
//! Invariant: every conversation id can be computed from what a `Send` names, without a
//! lookup ([`direct_conversation`], [`group_conversation`]), so the gateway picks the shard by
//! itself and all traffic of one conversation goes through one stream shard.
//!
//! Keys and channels carry their id in `{…}`, a Redis Cluster hash tag, so that each one has
//! a slot of its own when the deployment moves to a cluster.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use haberci_wire::{
    ClientMsgId, ConversationId, ErrorFrame, GroupId, Message, Notification, Presence, Recipient,
    SendMessage, Sent, Seq, SessionId, Status, Typing, UserId,
};

/// The consumer group every worker reads the inbound streams in.
pub const CONSUMER_GROUP: &str = "workers";
/// The stream entry field that holds the JSON of an [`Inbound`].
pub const ENTRY_FIELD: &str = "e";
/// Default number of inbound stream shards (`HABERCI_STREAM_SHARDS`).
pub const DEFAULT_SHARDS: u16 = 8;

/// Namespace of direct conversation ids (UUIDv5). Never change it: stored ids depend on it.
const DIRECT_NAMESPACE: Uuid = Uuid::from_u128(0x6861_6265_7263_6940_8000_6469_7265_6374);

/// The direct conversation between `a` and `b` (in either order): UUIDv5 of the smaller id's
/// bytes followed by the larger's.
pub fn direct_conversation(a: UserId, b: UserId) -> ConversationId {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    let mut name = [0u8; 32];
    name[..16].copy_from_slice(low.as_bytes());
    name[16..].copy_from_slice(high.as_bytes());
    let id = Uuid::new_v5(&DIRECT_NAMESPACE, &name);
    // Invariant: a v5 UUID has version bits set, so it is never nil.
    ConversationId::new(id).unwrap_or_else(|| unreachable!("a UUIDv5 is never nil"))
}

/// A group's conversation: the same id.
pub fn group_conversation(group: GroupId) -> ConversationId {
    ConversationId::new(group.as_uuid()).unwrap_or_else(|| unreachable!("ids are never nil"))
}

/// The conversation a message from `sender` to `recipient` belongs to.
pub fn conversation_of(sender: UserId, recipient: Recipient) -> ConversationId {
    match recipient {
        Recipient::User(peer) => direct_conversation(sender, peer),
        Recipient::Group(group) => group_conversation(group),
    }
}

/// Which of `shards` inbound streams carries `conversation`'s traffic.
pub fn shard_of(conversation: ConversationId, shards: u16) -> u16 {
    let bytes = conversation.as_bytes();
    let mut tail = [0u8; 8];
    tail.copy_from_slice(&bytes[8..]);
    // The last 8 bytes are random (v7) or hashed (v5): evenly spread.
    let shards = u64::from(shards.max(1));
    u16::try_from(u64::from_be_bytes(tail) % shards).unwrap_or(0)
}

/// Default prefix of the inbound stream keys (`HABERCI_STREAM_PREFIX`). Tests use a prefix of
/// their own so that workers of parallel tests never read each other's entries.
pub const DEFAULT_STREAM_PREFIX: &str = "msg:in:";

/// Whether `url` names a Redis every process can use: one server (`redis://`) or a Redis
/// Cluster (`redis-cluster://[user:password@]host:port?node=host:port&node=…`, fred's form;
/// list several nodes so a client can start while one is down). TLS is not built in.
pub fn is_redis_url(url: &str) -> bool {
    url.starts_with("redis://") || url.starts_with("redis-cluster://")
}

/// The inbound stream of one shard: `msg:in:{3}` with the default prefix.
pub fn stream_key(prefix: &str, shard: u16) -> String {
    format!("{prefix}{{{shard}}}")
}

/// Every session of `user` listens here (messages of direct conversations, `Sent`, receipts,
/// membership changes).
pub fn user_channel(user: UserId) -> String {
    format!("u:{{{user}}}")
}

/// Every gateway holding a member of the group conversation listens here.
pub fn conversation_channel(conversation: ConversationId) -> String {
    format!("c:{{{conversation}}}")
}

/// Presence changes of `user`.
pub fn presence_channel(user: UserId) -> String {
    format!("p:{{{user}}}")
}

/// The hash that says which gateways hold a session of `user` (one field per gateway). A field
/// counts while its gateway is alive in [`GATEWAYS_KEY`].
pub fn presence_key(user: UserId) -> String {
    format!("presence:{{{user}}}")
}

/// The sorted set of gateways that hold sessions: member the gateway's id, score until when
/// it is alive (Unix ms), pushed forward while it runs.
pub const GATEWAYS_KEY: &str = "presence:gateways";

/// The set of users with a session on `gateway`, so that another gateway can take them
/// offline once this one is dead.
pub fn gateway_users_key(gateway: &str) -> String {
    format!("presence:gateway:{{{gateway}}}:users")
}

/// Held by the one gateway that is taking a dead `gateway`'s users offline.
pub fn gateway_reaper_key(gateway: &str) -> String {
    format!("presence:gateway:{{{gateway}}}:reaper")
}

/// The key that holds when `user` was last seen online (Unix ms).
pub fn last_seen_key(user: UserId) -> String {
    format!("seen:{{{user}}}")
}

/// The key of the TLS session-ticket key of rotation period `epoch` (32 random bytes, shared by
/// the gateways; gateway `edge::tickets`). Only the gateways' Redis user may read it.
pub fn ticket_key(epoch: u64) -> String {
    format!("tls:ticket-key:{epoch}")
}

/// One entry of an inbound stream.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Inbound {
    /// A client's `Send`, validated by its gateway.
    #[serde(rename_all = "camelCase")]
    Send {
        sender: UserId,
        /// The session to answer `Sent` (or a refusal) to.
        session: SessionId,
        conversation: ConversationId,
        send: SendMessage,
    },
    /// Cumulative delivery receipt.
    #[serde(rename_all = "camelCase")]
    Ack {
        user: UserId,
        conversation: ConversationId,
        seq: Seq,
    },
    /// Cumulative read receipt (implies delivered).
    #[serde(rename_all = "camelCase")]
    Read {
        user: UserId,
        conversation: ConversationId,
        seq: Seq,
    },
}

impl Inbound {
    pub fn conversation(&self) -> ConversationId {
        match self {
            Inbound::Send { conversation, .. }
            | Inbound::Ack { conversation, .. }
            | Inbound::Read { conversation, .. } => *conversation,
        }
    }

    pub fn to_json(&self) -> String {
        // Invariant: these types always serialize (no maps with non-string keys, no floats).
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(json: &[u8]) -> Result<Inbound, serde_json::Error> {
        serde_json::from_slice(json)
    }
}

/// What a worker or gateway publishes for gateways to deliver.
///
/// Upgrades: a gateway drops an event it cannot read (logged), so a new kind of event needs
/// every gateway upgraded before the workers that publish it. `SentMessage` is one: a gateway
/// older than it would leave the sender's `Send` unanswered until its 20 s resend.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "camelCase")]
pub enum Event {
    /// A stored message, for every session of the members: a group's on its conversation's
    /// channel, a direct one on its recipient's (the sender's copy is [`Event::SentMessage`]).
    Message(Message),
    /// The answer to one session's `Send`: stored.
    #[serde(rename_all = "camelCase")]
    Sent { session: SessionId, sent: Sent },
    /// A stored direct message on its sender's channel: the sender's copy, for every session
    /// of the sender, and the answer to its `Send` for the session that sent it (`Sent`, then
    /// the message). One publication where [`Event::Sent`] and [`Event::Message`] would be two.
    #[serde(rename_all = "camelCase")]
    SentMessage {
        session: SessionId,
        client_msg_id: ClientMsgId,
        message: Message,
    },
    /// The answer to one session's `Send`: refused (unknown recipient, not a member, …).
    #[serde(rename_all = "camelCase")]
    Refused {
        session: SessionId,
        error: ErrorFrame,
    },
    /// A member's receipt watermarks moved.
    Status(Status),
    /// Ephemeral: someone types.
    Typing(Typing),
    /// Ephemeral: someone came online or went away.
    Presence(Presence),
    /// The user became a member of a conversation (sent on the user's channel): its sessions
    /// start following it from `after` (the seq before they joined).
    #[serde(rename_all = "camelCase")]
    Joined {
        conversation: ConversationId,
        group: bool,
        after: Option<Seq>,
    },
    /// The user is no longer a member (left or removed).
    #[serde(rename_all = "camelCase")]
    Left { conversation: ConversationId },
    /// A notification was stored for the user (sent on the user's channel by the backend,
    /// after its commit), for every session of the user. Best effort, like typing and
    /// presence: dropped from a full mailbox, never resumed (the client re-reads
    /// `GET /v1/notifications`).
    Notification(Notification),
}

impl Event {
    /// Whether a session may lose this event without owing the client anything: a full
    /// mailbox drops it instead of closing the session as a slow consumer.
    pub const fn is_droppable(&self) -> bool {
        matches!(
            self,
            Event::Typing(_) | Event::Presence(_) | Event::Notification(_)
        )
    }
}

impl Event {
    /// The `Sent` this event answers `session` with, if any.
    pub fn sent_to(&self, session: SessionId) -> Option<Sent> {
        match self {
            Event::Sent { session: to, sent } if *to == session => Some(*sent),
            Event::SentMessage {
                session: to,
                client_msg_id,
                message,
            } if *to == session => Some(Sent {
                client_msg_id: *client_msg_id,
                message_id: message.id,
                conversation_id: message.conversation_id,
                seq: message.seq,
                timestamp: message.timestamp,
            }),
            _ => None,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(json: &[u8]) -> Result<Event, serde_json::Error> {
        serde_json::from_slice(json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(n: u128) -> UserId {
        UserId::new(Uuid::from_u128(n)).unwrap_or_else(|| unreachable!())
    }

    #[test]
    fn direct_conversation_ignores_order_and_differs_per_pair() {
        assert_eq!(
            direct_conversation(user(1), user(2)),
            direct_conversation(user(2), user(1))
        );
        assert_ne!(
            direct_conversation(user(1), user(2)),
            direct_conversation(user(1), user(3))
        );
    }

    #[test]
    fn direct_conversation_is_stable() {
        // Stored ids depend on this value: changing the namespace or layout breaks them.
        let id = direct_conversation(
            user(0x0190_0000_0000_7000_8000_0000_0000_0001),
            user(0x0190_0000_0000_7000_8000_0000_0000_0002),
        );
        assert_eq!(id.to_string(), GOLDEN_DIRECT);
        // The worked example of docs/PROTOCOL.md ("Conversation ids").
        let alice = 0x0192_0000_0000_7000_8000_0000_0000_a11c;
        let bob = 0x0192_0000_0000_7000_8000_0000_0000_0b0b;
        assert_eq!(
            direct_conversation(user(alice), user(bob)).to_string(),
            "fed322fd-be84-5894-bf7d-eb10829849da"
        );
    }
    // Computed independently: Python `uuid.UUID(bytes=sha1(ns + low + high)[:16], version=5)`.
    const GOLDEN_DIRECT: &str = "43932eb0-41e9-5f02-a254-979808ba7765";

    #[test]
    fn shards_spread_and_stay_in_range() {
        let mut counts = [0u32; 8];
        for n in 0..8000u128 {
            let c = direct_conversation(user(n + 1), user(n + 100_000));
            counts[usize::from(shard_of(c, 8))] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        assert_eq!(shard_of(direct_conversation(user(1), user(2)), 1), 0);
    }

    #[test]
    fn inbound_round_trips_through_json() {
        let entry = Inbound::Ack {
            user: user(7),
            conversation: direct_conversation(user(7), user(8)),
            seq: Seq::FIRST,
        };
        let json = entry.to_json();
        assert!(json.contains("\"op\":\"ack\""), "{json}");
        assert_eq!(Inbound::from_json(json.as_bytes()).ok(), Some(entry));
    }
}
