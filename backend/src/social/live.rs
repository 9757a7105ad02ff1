//! Live notifications: after a notification commits, the backend tells the user's open
//! realtime sessions with a `Notification` frame (docs/PROTOCOL.md, "Notifications").
//!
//! Best effort by design: the row in `notifications` is the truth. A session that misses the
//! frame (Redis down, no session open, a full mailbox) finds the notification with
//! `GET /v1/notifications`, so a publish failure is logged and never fails the action that
//! caused it.

use fred::interfaces::PubsubInterface;
use haberci_seam::streams::{Event, user_channel};
use haberci_wire::{Notification, NotificationKind, UserId};

use crate::social::notify::Kind;

/// Publishes `notification` on `user`'s channel (`u:{user}`), where every gateway holding a
/// session of the user forwards it. Call it only after the notification's transaction
/// committed, so a client never hears of a row it cannot read.
pub async fn publish(redis: &fred::clients::Client, user: UserId, notification: Notification) {
    let id = notification.id;
    let event = Event::Notification(notification);
    let sent: Result<i64, _> = redis.spublish(user_channel(user), event.to_json()).await;
    if let Err(err) = sent {
        tracing::warn!(
            %err,
            %user,
            notification = %id,
            "redis unavailable: live notification not published (GET /v1/notifications has it)"
        );
    }
}

/// The wire kind of a stored notification's kind.
pub fn wire_kind(kind: Kind) -> NotificationKind {
    match kind {
        Kind::Follow => NotificationKind::Follow,
        Kind::FollowRequest => NotificationKind::FollowRequest,
        Kind::Like => NotificationKind::Like,
        Kind::Comment => NotificationKind::Comment,
        Kind::Mention => NotificationKind::Mention,
        Kind::Repost => NotificationKind::Repost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The HTTP API's `kind` strings and the frame's `type` strings are one vocabulary.
    #[test]
    fn stored_kinds_map_to_the_wire_kind_of_the_same_name() {
        for kind in [
            Kind::Follow,
            Kind::FollowRequest,
            Kind::Like,
            Kind::Comment,
            Kind::Mention,
            Kind::Repost,
        ] {
            assert_eq!(wire_kind(kind).name(), kind.as_str());
        }
    }
}
