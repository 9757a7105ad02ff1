//! Conversations: groups and their members, and reading stored messages (history, the
//! conversation list, the gateways' resume sync). The worker (`crate::messaging`) writes
//! messages and moves receipt watermarks; this module only reads them, and changes
//! membership.
//!
//! - [`Role`], [`GroupName`]: values that can only be valid.
//! - [`status_for`]: a message's status as one member sees it, from the watermarks.
//! - [`MessageRow::to_message`]: a stored row as the API's message object
//!   ([`haberci_wire::Message`]); [`kind_name`] / [`kind_named`]: a message kind as
//!   `messages.type` stores it (the worker writes it, this module reads it).
//! - [`store`]: the SQL.
//!
//! Invariant: membership changes take the conversation row `FOR UPDATE`, the lock the worker
//! takes while it numbers a batch, so a member's `joined_seq` is exactly the last seq stored
//! before they joined and a message is never numbered against a stale member list.

pub mod store;

use std::fmt;

use haberci_wire::{
    ConversationId, GroupId, MediaId, Message, MessageId, MessageKind, MessageStatus, RecipientId,
    Seq, Timestamp, UserId,
};
use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::accounts::Invalid;

/// Members a group may start with (besides its owner), in `POST /v1/groups`.
pub const MAX_INITIAL_MEMBERS: usize = 256;
/// Members a group may have, owner included.
pub const MAX_GROUP_MEMBERS: usize = 10_000;
/// Groups one user may be a member of: each is a channel every session of theirs subscribes
/// and a backlog it fetches at start.
pub const MAX_GROUPS_PER_USER: usize = 500;

/// What a member may do in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Exactly one per group with members: adds and removes anyone, names admins.
    Owner,
    /// Adds plain members, removes plain members.
    Admin,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }
}

impl TryFrom<String> for Role {
    type Error = Invalid;
    fn try_from(text: String) -> Result<Role, Invalid> {
        match text.as_str() {
            "owner" => Ok(Role::Owner),
            "admin" => Ok(Role::Admin),
            "member" => Ok(Role::Member),
            _ => Err(Invalid("unknown role")),
        }
    }
}

/// A role that can be given through the API: `admin` or `member` (ownership only passes when
/// the owner leaves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantableRole(Role);

impl GrantableRole {
    pub const MEMBER: GrantableRole = GrantableRole(Role::Member);

    pub fn role(self) -> Role {
        self.0
    }
}

impl<'de> Deserialize<'de> for GrantableRole {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match String::deserialize(deserializer)?.as_str() {
            "admin" => Ok(GrantableRole(Role::Admin)),
            "member" => Ok(GrantableRole(Role::Member)),
            _ => Err(serde::de::Error::custom(
                "role must be \"admin\" or \"member\"",
            )),
        }
    }
}

/// A group's name: 1–64 characters after trimming, no control, bidirectional or invisible
/// characters (`accounts::names::deceptive_char`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupName(String);

impl GroupName {
    pub const MAX: usize = 64;

    pub fn parse(text: &str) -> Result<GroupName, Invalid> {
        let name = text.trim();
        if name.is_empty() {
            return Err(Invalid("name must not be empty"));
        }
        if name.chars().count() > Self::MAX {
            return Err(Invalid("name must be at most 64 characters"));
        }
        if name.chars().any(char::is_control) {
            return Err(Invalid("name must not contain control characters"));
        }
        if crate::accounts::names::deceptive_char(name).is_some() {
            return Err(Invalid(
                "name must not contain bidirectional controls or invisible characters",
            ));
        }
        Ok(GroupName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for GroupName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        GroupName::parse(&String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

/// `direct` or `group`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Direct,
    Group,
}

impl TryFrom<String> for Kind {
    type Error = Invalid;
    fn try_from(text: String) -> Result<Kind, Invalid> {
        match text.as_str() {
            "direct" => Ok(Kind::Direct),
            "group" => Ok(Kind::Group),
            _ => Err(Invalid("unknown conversation kind")),
        }
    }
}

/// Where the other members' receipts stand: the lowest `delivered_seq` and `read_seq` among
/// every member but the viewer (0 when there is no other member).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OthersWatermarks {
    pub delivered: i64,
    pub read: i64,
}

/// The status of message `seq` sent by `sender`, as `viewer` (whose read watermark is
/// `viewer_read`) sees it.
///
/// - The viewer's own message: `read` once **every** other member has read it, else
///   `delivered` once every other member has it, else `sent`. With no other member (everyone
///   else left) nobody got it: `sent`.
/// - Someone else's message: the viewer has it (it is being shown to them), so `delivered`,
///   or `read` once the viewer's read watermark reached it.
pub fn status_for(
    viewer: UserId,
    sender: UserId,
    seq: i64,
    viewer_read: i64,
    others: OthersWatermarks,
) -> MessageStatus {
    if sender == viewer {
        if others.read >= seq {
            MessageStatus::Read
        } else if others.delivered >= seq {
            MessageStatus::Delivered
        } else {
            MessageStatus::Sent
        }
    } else if viewer_read >= seq {
        MessageStatus::Read
    } else {
        MessageStatus::Delivered
    }
}

/// `messages.type`: the name a message kind is stored under. The one mapping between the two;
/// [`kind_named`] is its inverse.
pub fn kind_name(kind: MessageKind) -> &'static str {
    match kind {
        MessageKind::Text => "text",
        MessageKind::Image => "image",
        MessageKind::Video => "video",
        MessageKind::Audio => "audio",
        MessageKind::File => "file",
    }
}

/// The kind stored as `name` (`messages.type`); `None` for a name [`kind_name`] never gives.
pub fn kind_named(name: &str) -> Option<MessageKind> {
    // Every kind `kind_name` names; one added to the wire enum must be added here too (until
    // then its messages read back as corrupt rows).
    const KINDS: [MessageKind; 5] = [
        MessageKind::Text,
        MessageKind::Image,
        MessageKind::Video,
        MessageKind::Audio,
        MessageKind::File,
    ];
    KINDS.into_iter().find(|&kind| kind_name(kind) == name)
}

/// A stored message with what it takes to address it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MessageRow {
    pub conversation_id: ConversationId,
    pub seq: i64,
    pub id: MessageId,
    pub sender_id: UserId,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub content: String,
    pub created_at: OffsetDateTime,
    #[sqlx(flatten)]
    pub media: MediaColumns,
}

/// A message's media as history and resume read it: what the message row recorded, and what
/// the upload's row knows (`LEFT JOIN media md`). All `None` for text.
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct MediaColumns {
    pub media_id: Option<MediaId>,
    pub media_content_type: Option<String>,
    pub media_size: Option<i64>,
    pub media_width: Option<i32>,
    pub media_height: Option<i32>,
    pub media_duration_ms: Option<i64>,
    pub media_blurhash: Option<String>,
    pub media_filename: Option<String>,
}

impl MediaColumns {
    /// The wire's view; `None` without a media id.
    pub fn info(&self) -> Option<haberci_wire::MediaInfo> {
        let id = self.media_id?;
        Some(haberci_wire::MediaInfo {
            media_id: id,
            content_type: self.media_content_type.clone().unwrap_or_default(),
            size_bytes: self
                .media_size
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(0),
            width: self
                .media_width
                .and_then(|v| u32::try_from(v).ok())
                .and_then(std::num::NonZeroU32::new),
            height: self
                .media_height
                .and_then(|v| u32::try_from(v).ok())
                .and_then(std::num::NonZeroU32::new),
            duration_ms: self
                .media_duration_ms
                .and_then(|v| u64::try_from(v).ok())
                .and_then(std::num::NonZeroU64::new),
            blurhash: self.media_blurhash.clone(),
            filename: self.media_filename.clone(),
        })
    }
}

/// Who a direct conversation is between (`user_low < user_high`); `None` for a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectPair {
    pub low: UserId,
    pub high: UserId,
}

impl DirectPair {
    pub fn from_columns(low: Option<UserId>, high: Option<UserId>) -> Option<DirectPair> {
        Some(DirectPair {
            low: low?,
            high: high?,
        })
    }

    /// The member of the pair who is not `user`.
    pub fn peer_of(self, user: UserId) -> UserId {
        if user == self.low {
            self.high
        } else {
            self.low
        }
    }
}

/// A stored value that breaks an invariant the schema should have kept (a bug, not a client
/// error).
#[derive(Debug, thiserror::Error)]
#[error("stored message {id} is invalid: {what}")]
pub struct CorruptRow {
    pub id: MessageId,
    pub what: &'static str,
}

impl MessageRow {
    /// The API's message object, with its status for the viewer. `pair` is the direct
    /// conversation's two users (`None` for a group: the recipient is the group).
    pub fn to_message(
        &self,
        pair: Option<DirectPair>,
        status: MessageStatus,
    ) -> Result<Message, CorruptRow> {
        let bad = |what| CorruptRow { id: self.id, what };
        let recipient = match pair {
            Some(pair) => RecipientId::from(pair.peer_of(self.sender_id)),
            // A group's id is its conversation's.
            None => RecipientId::from(group_of(self.conversation_id)),
        };
        let kind = kind_named(&self.kind).ok_or(bad("type"))?;
        Ok(Message {
            id: self.id,
            sender_id: self.sender_id,
            recipient_id: recipient,
            kind,
            content: self.content.clone(),
            timestamp: Timestamp::from_datetime(self.created_at).ok_or(bad("timestamp"))?,
            status,
            conversation_id: self.conversation_id,
            seq: u64::try_from(self.seq)
                .ok()
                .and_then(Seq::new)
                .ok_or(bad("seq"))?,
            media: self.media.info(),
        })
    }
}

/// A membership change to announce on the affected user's channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipChange {
    /// Joined a group; history starts after `after` (the group's last seq then).
    Joined {
        after: i64,
    },
    Left,
}

/// Publishes each change of `group`'s membership (`streams::Event::Joined` / `Left`) on
/// `streams::user_channel` of its user, so that gateways holding that user's sessions
/// subscribe to or drop the group's channel. Call after the change committed.
///
/// A Redis failure is logged, not returned: the change is in Postgres, and gateways also
/// learn every membership when a session starts (`GET /internal/v1/users/{id}/conversations`),
/// so a session that misses the event is only late to follow (or to stop following) the
/// group until it reconnects; messages it missed come back on resume, from Postgres. At the
/// first failure the rest are skipped, so an unreachable Redis costs one command timeout.
pub async fn announce(
    redis: &fred::clients::Client,
    group: GroupId,
    changes: &[(UserId, MembershipChange)],
) {
    use fred::interfaces::PubsubInterface;
    use haberci_seam::streams::{Event, group_conversation, user_channel};

    let conversation = group_conversation(group);
    for (done, &(user, change)) in changes.iter().enumerate() {
        let event = match change {
            MembershipChange::Joined { after } => Event::Joined {
                conversation,
                group: true,
                after: u64::try_from(after).ok().and_then(Seq::new),
            },
            MembershipChange::Left => Event::Left { conversation },
        };
        let sent: Result<i64, _> = redis.spublish(user_channel(user), event.to_json()).await;
        if let Err(err) = sent {
            tracing::error!(
                %err,
                %conversation,
                skipped = changes.len() - done - 1,
                "redis unavailable: membership change not published (gateways learn it at the next session start)"
            );
            return;
        }
    }
}

/// The group whose conversation this is, for a group conversation: the same id
/// (`haberci_seam::streams::group_conversation` the other way round).
pub fn group_of(conversation: ConversationId) -> GroupId {
    // Invariant: both are never-nil UUIDs, and a group's conversation has the group's id.
    GroupId::new(conversation.as_uuid()).unwrap_or_else(|| unreachable!("ids are never nil"))
}

/// A seq as stored (`bigint`), from the API's `u64`; `None` past [`Seq::MAX`].
pub fn stored_seq(value: u64) -> Option<i64> {
    (value <= Seq::MAX.get()).then(|| i64::try_from(value).ok())?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(n: u128) -> UserId {
        UserId::new(uuid::Uuid::from_u128(n)).unwrap_or_else(|| unreachable!())
    }

    #[test]
    fn status_table() {
        use MessageStatus::*;
        let me = user(1);
        let other = user(2);
        let w = |delivered, read| OthersWatermarks { delivered, read };
        // (sender, seq, my read, others) → status
        let cases = [
            (me, 5, 0, w(4, 3), Sent),
            (me, 5, 0, w(5, 4), Delivered),
            (me, 5, 0, w(9, 5), Read),
            (me, 5, 9, w(0, 0), Sent), // no other member, or nobody got it
            (other, 5, 4, w(0, 0), Delivered),
            (other, 5, 5, w(0, 0), Read),
        ];
        for (sender, seq, mine, others, want) in cases {
            assert_eq!(
                status_for(me, sender, seq, mine, others),
                want,
                "{seq} {mine} {others:?}"
            );
        }
    }

    #[test]
    fn group_names() {
        assert_eq!(GroupName::parse("  Team  ").map(|n| n.0), Ok("Team".into()));
        assert!(GroupName::parse("   ").is_err());
        assert!(GroupName::parse(&"é".repeat(64)).is_ok());
        assert!(GroupName::parse(&"é".repeat(65)).is_err());
        assert!(GroupName::parse("a\nb").is_err());
    }

    #[test]
    fn grantable_roles() {
        let parse = |json| serde_json::from_str::<GrantableRole>(json).map(GrantableRole::role);
        assert_eq!(parse("\"admin\"").ok(), Some(Role::Admin));
        assert_eq!(parse("\"member\"").ok(), Some(Role::Member));
        assert!(parse("\"owner\"").is_err());
    }

    #[test]
    fn message_kinds_round_trip() {
        use MessageKind::*;
        for kind in [Text, Image, Video, Audio, File] {
            assert_eq!(kind_named(kind_name(kind)), Some(kind), "{kind:?}");
        }
        assert_eq!(kind_named("sticker"), None);
    }

    #[test]
    fn seqs_round_trip() {
        assert_eq!(stored_seq(0), Some(0));
        assert_eq!(
            stored_seq(Seq::MAX.get()),
            i64::try_from(Seq::MAX.get()).ok()
        );
        assert_eq!(stored_seq(Seq::MAX.get() + 1), None);
    }
}
