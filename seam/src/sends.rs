//! The rules every `Send` obeys, written once: a gateway checks them before a send goes to a
//! stream (so the client hears at once), and the worker checks them again, because the stream
//! is a trust boundary too ([`check_entry`]). What needs the database (that the recipient
//! exists, membership, blocks) only the worker can check.

use haberci_wire::{
    ConversationId, ErrorCode, GroupId, MessageKind, Recipient, SendMessage, UserId,
};

use crate::streams::conversation_of;

/// Whom a checked `Send` goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A direct message to another user.
    Direct(UserId),
    Group(GroupId),
}

impl Target {
    /// The conversation a send from `sender` to this target belongs to.
    pub fn conversation(self, sender: UserId) -> ConversationId {
        match self {
            Target::Direct(peer) => conversation_of(sender, Recipient::User(peer)),
            Target::Group(group) => conversation_of(sender, Recipient::Group(group)),
        }
    }
}

/// Why a `Send` is not stored: the `Error` its session hears.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: &'static str,
}

impl Refusal {
    /// Invariant: `code` is non-fatal — a refusal travels in `Error`, which the client's
    /// decoder rejects with a fatal code (checked at compile time for the constants).
    pub const fn new(code: ErrorCode, message: &'static str) -> Refusal {
        assert!(
            !code.is_fatal(),
            "a refusal travels in Error: non-fatal codes only"
        );
        Refusal { code, message }
    }
}

const SELF_DIRECT: Refusal = Refusal::new(
    ErrorCode::InvalidField,
    "a direct message needs another user",
);
const TOO_LARGE: Refusal = Refusal::new(
    ErrorCode::ContentTooLarge,
    "content is above the content limit",
);
const EMPTY_TEXT: Refusal = Refusal::new(ErrorCode::InvalidField, "a text message needs content");
const NO_MEDIA: Refusal = Refusal::new(ErrorCode::InvalidField, "a media message needs media");
const NUL_CONTENT: Refusal = Refusal::new(
    ErrorCode::InvalidField,
    "content must not contain NUL characters",
);
const NUL_CONTENT_TYPE: Refusal = Refusal::new(
    ErrorCode::InvalidField,
    "media content type must not contain NUL characters",
);
const MEDIA_SIZE: Refusal = Refusal::new(ErrorCode::InvalidField, "media size is out of range");
const WRONG_CONVERSATION: Refusal = Refusal::new(
    ErrorCode::InvalidField,
    "the conversation is not the recipient's",
);

/// The checks of a `Send` from `sender` that need nothing but the send: whom it goes to, the
/// content limit, content or media as its kind asks, and what a stored row cannot hold
/// (Postgres `text` has no NUL; sizes are `bigint`).
pub fn check(sender: UserId, send: &SendMessage) -> Result<Target, Refusal> {
    let target = match send.recipient {
        Recipient::User(user) if user == sender => return Err(SELF_DIRECT),
        Recipient::User(user) => Target::Direct(user),
        Recipient::Group(group) => Target::Group(group),
    };
    if send.content.len() > haberci_wire::MAX_CONTENT_BYTES {
        return Err(TOO_LARGE);
    }
    if send.kind == MessageKind::Text && send.content.is_empty() {
        return Err(EMPTY_TEXT);
    }
    if send.kind != MessageKind::Text && send.media.is_none() {
        return Err(NO_MEDIA);
    }
    if send.content.contains('\0') {
        return Err(NUL_CONTENT);
    }
    if let Some(media) = &send.media {
        if media.content_type.contains('\0') {
            return Err(NUL_CONTENT_TYPE);
        }
        if i64::try_from(media.size_bytes).is_err() {
            return Err(MEDIA_SIZE);
        }
    }
    Ok(target)
}

/// [`check`] for a stream entry, which also names its conversation: it must be the one the
/// recipient's is (the gateway computed it; the worker trusts no stream entry blindly).
pub fn check_entry(
    sender: UserId,
    conversation: ConversationId,
    send: &SendMessage,
) -> Result<Target, Refusal> {
    let target = check(sender, send)?;
    if target.conversation(sender) == conversation {
        Ok(target)
    } else {
        Err(WRONG_CONVERSATION)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use haberci_wire::{ClientMsgId, MediaId, MediaRef};
    use uuid::Uuid;

    use super::*;
    use crate::streams::{direct_conversation, group_conversation};

    fn user(n: u128) -> UserId {
        UserId::new(Uuid::from_u128(n)).unwrap()
    }

    fn group(n: u128) -> GroupId {
        GroupId::new(Uuid::from_u128(n)).unwrap()
    }

    fn text(recipient: Recipient, content: &str) -> SendMessage {
        SendMessage {
            client_msg_id: ClientMsgId::new(Uuid::from_u128(99)).unwrap(),
            recipient,
            kind: MessageKind::Text,
            content: content.to_owned(),
            media: None,
        }
    }

    fn media(content_type: &str, size_bytes: u64) -> Option<MediaRef> {
        Some(MediaRef {
            media_id: MediaId::new(Uuid::from_u128(42)).unwrap(),
            content_type: content_type.to_owned(),
            size_bytes,
        })
    }

    #[test]
    fn every_rule_in_one_table() {
        let me = user(1);
        let peer = Recipient::User(user(2));
        let with = |f: fn(&mut SendMessage)| {
            let mut send = text(peer, "hi");
            f(&mut send);
            send
        };
        let cases: Vec<(&str, SendMessage, Result<Target, Refusal>)> = vec![
            ("direct", text(peer, "hi"), Ok(Target::Direct(user(2)))),
            (
                "group",
                text(Recipient::Group(group(7)), "hi"),
                Ok(Target::Group(group(7))),
            ),
            (
                "to myself",
                text(Recipient::User(me), "hi"),
                Err(SELF_DIRECT),
            ),
            (
                "content at the limit",
                text(peer, &"x".repeat(haberci_wire::MAX_CONTENT_BYTES)),
                Ok(Target::Direct(user(2))),
            ),
            (
                "content above the limit",
                text(peer, &"x".repeat(haberci_wire::MAX_CONTENT_BYTES + 1)),
                Err(TOO_LARGE),
            ),
            ("empty text", text(peer, ""), Err(EMPTY_TEXT)),
            ("NUL in content", text(peer, "a\0b"), Err(NUL_CONTENT)),
            (
                "image without media",
                with(|s| s.kind = MessageKind::Image),
                Err(NO_MEDIA),
            ),
            (
                "image with empty caption",
                with(|s| {
                    s.kind = MessageKind::Image;
                    s.content.clear();
                    s.media = media("image/png", 10);
                }),
                Ok(Target::Direct(user(2))),
            ),
            (
                "NUL in the media type",
                with(|s| {
                    s.kind = MessageKind::File;
                    s.media = media("text/\0plain", 10);
                }),
                Err(NUL_CONTENT_TYPE),
            ),
            (
                "media size past bigint",
                with(|s| {
                    s.kind = MessageKind::File;
                    s.media = media("text/plain", u64::MAX);
                }),
                Err(MEDIA_SIZE),
            ),
        ];
        for (name, send, expected) in cases {
            assert_eq!(check(me, &send), expected, "{name}");
        }
    }

    #[test]
    fn an_entry_must_name_the_recipients_conversation() {
        let (me, peer) = (user(1), user(2));
        let send = text(Recipient::User(peer), "hi");
        let right = direct_conversation(me, peer);
        assert_eq!(check_entry(me, right, &send), Ok(Target::Direct(peer)));
        let wrong = direct_conversation(me, user(3));
        assert_eq!(check_entry(me, wrong, &send), Err(WRONG_CONVERSATION));
        let to_group = text(Recipient::Group(group(5)), "hi");
        assert_eq!(
            check_entry(me, group_conversation(group(5)), &to_group),
            Ok(Target::Group(group(5)))
        );
        assert_eq!(check_entry(me, right, &to_group), Err(WRONG_CONVERSATION));
    }
}
