//! What a session's relay outputs ([`haberci_session::Relay`]) do, one function each. The
//! session decides; this carries it out on Redis and the backend and says, as an [`Outcome`],
//! what the session must hear back. Work that needs a round trip to the backend runs in a task
//! of its own and comes back to the session's loop as [`Done`], so a session keeps answering
//! pings while its backlog loads.

use std::sync::Arc;
use std::time::Duration;

use haberci_seam::streams::{self, Event, Inbound};
use haberci_session::{Backlog, ConversationInfo, FetchFrom, Identity, Relay as Work, Route};
use haberci_wire::{
    Ack, ClientMsgId, ConversationId, ErrorCode, ErrorFrame, Presence as PresenceFrame,
    PresenceWatch, Read, SendMessage, ServerFrame, Typing, UserId,
};
use tokio::sync::mpsc;

use super::Relay;
use super::hub::{Mailbox, Overflow};
use super::presence::{Online, Presence};
use super::streams::RelayError;

/// Pause before a failed backlog fetch is asked again.
pub const FETCH_RETRY: Duration = Duration::from_millis(500);

/// Messaging: the relay and presence on it. A gateway without Redis (or without the internal
/// API's secret) has none, and answers what needs it `unavailable`.
#[derive(Clone)]
pub struct Messaging {
    pub relay: Arc<Relay>,
    pub presence: Arc<Presence>,
    /// A user's realtime sessions open at once, across every gateway.
    pub max_sessions_per_user: u32,
}

/// A session's footprint on the relay.
#[derive(Default)]
pub struct Attached {
    mailbox: Option<Mailbox>,
    /// Keeps the user online while the session lives.
    online: Option<Online>,
    /// Users whose presence the session watches.
    watching: Vec<UserId>,
}

impl Attached {
    /// The session's mailbox, once it is open on a gateway with messaging.
    pub fn mailbox(&mut self) -> Option<&mut Mailbox> {
        self.mailbox.as_mut()
    }

    /// Raised when the mailbox had to refuse an event that must arrive.
    pub fn overflow(&self) -> Option<Arc<Overflow>> {
        self.mailbox.as_ref().map(Mailbox::overflow)
    }
}

/// The result of work a session's loop handed to a task.
pub enum Done {
    Synced(Vec<ConversationInfo>),
    /// The backend found the session revoked, expired, unknown or another user's.
    SessionRefused,
    /// The user has this many sessions open already.
    TooManySessions(u32),
    SyncFailed,
    Fetched(Vec<Backlog>),
    FetchFailed(Vec<FetchFrom>),
    /// The presence a `PresenceWatch` may follow (`visible`), and what to tell now of every
    /// user it named.
    Presence {
        visible: Vec<UserId>,
        states: Vec<PresenceFrame>,
    },
}

/// What the session hears about a piece of relay work.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Nothing,
    /// Write this frame to the client now.
    Write(Box<ServerFrame>),
    /// The send could not reach its stream: [`haberci_session::Session::send_unavailable`].
    SendUnavailable(ClientMsgId),
    /// The session cannot go on here:
    /// [`haberci_session::Session::close_unavailable`].
    CloseUnavailable(&'static str),
    /// No messaging here (tests; a gateway without Redis or the internal API's secret): the
    /// session opens with no conversations and its session unchecked.
    OpenUnchecked,
}

/// Carries out one piece of relay work.
pub async fn carry_out(
    work: Work,
    messaging: Option<&Messaging>,
    attached: &mut Attached,
    done: &mpsc::Sender<Done>,
) -> Outcome {
    let Some(messaging) = messaging else {
        return unserved(&work);
    };
    match work {
        Work::Opened { identity } => opened(messaging, attached, identity, done).await,
        Work::Send(identity, message) => send(&messaging.relay, identity, message).await,
        Work::Ack(identity, ack) => receipt(&messaging.relay, ack_entry(identity, ack)).await,
        Work::Read(identity, read) => receipt(&messaging.relay, read_entry(identity, read)).await,
        Work::Typing(identity, typing, route) => {
            publish_typing(&messaging.relay, identity, typing, route).await
        }
        Work::PresenceWatch(identity, watch) => {
            watch_presence(messaging, identity, attached, watch, done).await
        }
        Work::Fetch(identity, from) => {
            fetch(messaging.relay.clone(), identity, from, done.clone());
            Outcome::Nothing
        }
        Work::Subscribe(conversation) => subscribe(attached, conversation).await,
        Work::Unsubscribe(conversation) => unsubscribe(attached, conversation).await,
    }
}

/// What the client hears about relay work on a gateway without messaging: sends and receipts
/// are answered `unavailable` (sends by the session, with the sends queued behind them),
/// nothing else is.
pub fn unserved(work: &Work) -> Outcome {
    match work {
        Work::Opened { .. } => Outcome::OpenUnchecked,
        Work::Send(_, send) => Outcome::SendUnavailable(send.client_msg_id),
        Work::Ack(..) | Work::Read(..) => {
            Outcome::Write(Box::new(ServerFrame::Error(ErrorFrame {
                code: ErrorCode::Unavailable,
                message: haberci_session::UNAVAILABLE.into(),
                client_msg_id: None,
            })))
        }
        _ => Outcome::Nothing,
    }
}

/// The session is open: its mailbox joins the user's channel, the user is online, and the
/// conversations are listed (in a task). Subscribe first, list second: a message stored after
/// the listing arrives live.
async fn opened(
    messaging: &Messaging,
    attached: &mut Attached,
    identity: Identity,
    done: &mpsc::Sender<Done>,
) -> Outcome {
    let mut inbox = messaging.relay.hub().mailbox();
    if let Err(err) = inbox.join(streams::user_channel(identity.user)).await {
        tracing::warn!(%err, session = %identity.session, "cannot subscribe a session's user channel");
        return Outcome::CloseUnavailable("messaging is unavailable; retry");
    }
    attached.mailbox = Some(inbox);
    attached.online = Some(messaging.presence.online(identity.user).await);
    let (relay, presence) = (messaging.relay.clone(), messaging.presence.clone());
    let limit = messaging.max_sessions_per_user;
    let done = done.clone();
    tokio::spawn(async move {
        // The session check and the count of the user's sessions, at once: no extra wait.
        let (listed, open) = tokio::join!(
            relay.conversations(identity),
            presence.sessions_of(identity.user)
        );
        let result = match listed {
            Ok(_) if open > u64::from(limit) => {
                tracing::info!(session = %identity.session, user = %identity.user, open, limit, "session refused: too many open");
                Done::TooManySessions(limit)
            }
            Ok(list) => Done::Synced(list),
            Err(RelayError::SessionRefused(why)) => {
                tracing::info!(session = %identity.session, user = %identity.user, %why, "session refused at Hello");
                Done::SessionRefused
            }
            Err(err) => {
                tracing::warn!(%err, session = %identity.session, user = %identity.user, "session sync failed");
                Done::SyncFailed
            }
        };
        let _ = done.send(result).await;
    });
    Outcome::Nothing
}

/// A checked send goes to its conversation's stream shard.
async fn send(relay: &Relay, identity: Identity, send: SendMessage) -> Outcome {
    let client_msg_id = send.client_msg_id;
    let entry = Inbound::Send {
        sender: identity.user,
        session: identity.session,
        conversation: streams::conversation_of(identity.user, send.recipient),
        send,
    };
    match relay.append(&entry).await {
        Ok(()) => Outcome::Nothing,
        Err(err) => {
            tracing::warn!(%err, session = %identity.session, %client_msg_id, "cannot append a send to its stream");
            Outcome::SendUnavailable(client_msg_id)
        }
    }
}

fn ack_entry(identity: Identity, ack: Ack) -> Inbound {
    Inbound::Ack {
        user: identity.user,
        conversation: ack.conversation_id,
        seq: ack.seq,
    }
}

fn read_entry(identity: Identity, read: Read) -> Inbound {
    Inbound::Read {
        user: identity.user,
        conversation: read.conversation_id,
        seq: read.seq,
    }
}

/// Receipts are cumulative: a lost one is made good by the next, so a failure is only logged.
async fn receipt(relay: &Relay, entry: Inbound) -> Outcome {
    if let Err(err) = relay.append(&entry).await {
        tracing::debug!(%err, "receipt not appended");
    }
    Outcome::Nothing
}

/// Typing is ephemeral: published to the peer's or the group's channel, never stored.
async fn publish_typing(
    relay: &Relay,
    identity: Identity,
    typing: haberci_wire::ClientTyping,
    route: Route,
) -> Outcome {
    let channel = match route {
        Route::Direct(peer) => streams::user_channel(peer),
        Route::Group => streams::conversation_channel(typing.conversation_id),
    };
    let event = Event::Typing(Typing {
        conversation_id: typing.conversation_id,
        user_id: identity.user,
        state: typing.state,
    });
    if let Err(err) = relay.publish(channel, &event).await {
        tracing::debug!(%err, "typing not published");
    }
    Outcome::Nothing
}

/// A new watch list: channels of users no longer named are left now; the backend says whose
/// presence the user may see ([`Done::Presence`]), and [`watched`] joins those. Anyone else
/// reads as offline and never seen, whether they exist or not, so a watch reveals nothing.
async fn watch_presence(
    messaging: &Messaging,
    identity: Identity,
    attached: &mut Attached,
    watch: PresenceWatch,
    done: &mpsc::Sender<Done>,
) -> Outcome {
    let Some(mailbox) = attached.mailbox.as_mut() else {
        return Outcome::Nothing;
    };
    for user in &attached.watching {
        if !watch.user_ids.contains(user) {
            mailbox.leave(&streams::presence_channel(*user)).await;
        }
    }
    attached.watching = watch.user_ids.clone();
    let (relay, presence, done) = (
        messaging.relay.clone(),
        messaging.presence.clone(),
        done.clone(),
    );
    tokio::spawn(async move {
        let visible = match relay.presence_visible(identity.user, &watch.user_ids).await {
            Ok(visible) => visible,
            Err(err) => {
                // Fails closed: nobody's presence until the client watches again.
                tracing::warn!(%err, session = %identity.session, "presence visibility not known");
                Vec::new()
            }
        };
        let mut states = Vec::with_capacity(watch.user_ids.len());
        for user in watch.user_ids {
            states.push(match visible.contains(&user) {
                true => presence.state(user).await,
                false => PresenceFrame {
                    user_id: user,
                    online: false,
                    last_seen: None,
                },
            });
        }
        let _ = done.send(Done::Presence { visible, states }).await;
    });
    Outcome::Nothing
}

/// The backend's answer to a watch: the channels of the visible users still watched are
/// joined, the others' left.
pub async fn watched(attached: &mut Attached, visible: &[UserId]) {
    let Some(mailbox) = attached.mailbox.as_mut() else {
        return;
    };
    for user in &attached.watching {
        let channel = streams::presence_channel(*user);
        if !visible.contains(user) {
            mailbox.leave(&channel).await;
        } else if let Err(err) = mailbox.join(channel).await {
            tracing::debug!(%err, "cannot watch presence");
        }
    }
}

/// One backlog page of each conversation asked for, in a task; a failure comes back after
/// [`FETCH_RETRY`] so the session asks again.
fn fetch(relay: Arc<Relay>, identity: Identity, from: Vec<FetchFrom>, done: mpsc::Sender<Done>) {
    tokio::spawn(async move {
        let result = match relay.sync(identity.user, &from).await {
            Ok(pages) => Done::Fetched(pages),
            Err(err) => {
                tracing::warn!(%err, session = %identity.session, user = %identity.user, "backlog fetch failed; retrying");
                tokio::time::sleep(FETCH_RETRY).await;
                Done::FetchFailed(from)
            }
        };
        let _ = done.send(result).await;
    });
}

async fn subscribe(attached: &mut Attached, conversation: ConversationId) -> Outcome {
    if let Some(mailbox) = attached.mailbox.as_mut() {
        if let Err(err) = mailbox
            .join(streams::conversation_channel(conversation))
            .await
        {
            tracing::warn!(%err, %conversation, "cannot subscribe a group channel");
        }
    }
    Outcome::Nothing
}

async fn unsubscribe(attached: &mut Attached, conversation: ConversationId) -> Outcome {
    if let Some(mailbox) = attached.mailbox.as_mut() {
        mailbox
            .leave(&streams::conversation_channel(conversation))
            .await;
    }
    Outcome::Nothing
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use haberci_wire::{MessageKind, Recipient, Seq, SessionId};
    use uuid::Uuid;

    use super::*;

    #[test]
    fn without_messaging_sends_and_receipts_are_unavailable_and_the_rest_is_quiet() {
        let identity = Identity {
            user: UserId::new(Uuid::from_u128(1)).unwrap(),
            session: SessionId::new(Uuid::from_u128(2)).unwrap(),
        };
        let conversation = ConversationId::new(Uuid::from_u128(3)).unwrap();
        let id = ClientMsgId::new(Uuid::from_u128(4)).unwrap();
        let send = SendMessage {
            client_msg_id: id,
            recipient: Recipient::User(UserId::new(Uuid::from_u128(5)).unwrap()),
            kind: MessageKind::Text,
            content: "hi".into(),
            media: None,
        };
        let ack = Ack {
            conversation_id: conversation,
            seq: Seq::FIRST,
        };
        let unavailable = |outcome: Outcome| match outcome {
            Outcome::Write(frame) => matches!(
                *frame,
                ServerFrame::Error(ErrorFrame {
                    code: ErrorCode::Unavailable,
                    client_msg_id: None,
                    ..
                })
            ),
            _ => false,
        };
        assert_eq!(
            unserved(&Work::Send(identity, send)),
            Outcome::SendUnavailable(id)
        );
        assert!(unavailable(unserved(&Work::Ack(identity, ack))));
        assert!(unavailable(unserved(&Work::Read(
            identity,
            Read {
                conversation_id: conversation,
                seq: Seq::FIRST,
            }
        ))));
        assert_eq!(unserved(&Work::Subscribe(conversation)), Outcome::Nothing);
        assert_eq!(
            unserved(&Work::Opened { identity }),
            Outcome::OpenUnchecked,
            "the session opens unchecked; messaging answers unavailable when used"
        );
    }
}
