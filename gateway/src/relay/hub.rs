//! The relay hub: one sharded-pub/sub subscriber per gateway. Each session has a [`Mailbox`];
//! a channel (`u:{user}`, `c:{conversation}`, `p:{user}`) is subscribed while at least one
//! mailbox wants it, so a group message costs one publish per gateway, not per member. Each
//! event is decoded once and shared (`Arc`) by every local recipient.
//!
//! Invariant: pub/sub may lose messages (a lagging receiver, a reconnect); then every mailbox
//! gets [`Inbox::Resync`] and its session fetches what it may have missed, so delivery rests on
//! Postgres seqs, never on pub/sub alone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fred::prelude::*;
use haberci_kit::shutdown::Shutdown;
use haberci_seam::streams::Event;
use tokio::sync::{Notify, mpsc};

use super::RelayError;

/// Events queued for one session before it counts as a slow consumer.
pub const MAILBOX_CAPACITY: usize = 512;
/// Pub/sub messages buffered by the subscriber before it lags (fred's default, 32, is far
/// too small for a gateway's fan-in).
pub const SUBSCRIBER_BUFFER: usize = 65_536;
/// On a Redis Cluster, how often the subscriber re-reads the cluster's slot map. A planned
/// failover or a resharding moves slots without closing any connection, and Redis tells a
/// subscriber of the moved channels only by an unsolicited `SUNSUBSCRIBE`, which fred drops:
/// until the hub subscribes again at the new owner, those channels are silent. This bounds
/// that window (plus the resync that follows).
pub const TOPOLOGY_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// What reaches a session's mailbox.
#[derive(Debug, Clone)]
pub enum Inbox {
    Event(Arc<Event>),
    /// Live events may have been lost: fetch every conversation from its position.
    Resync,
}

/// One mailbox on a channel.
struct Member {
    id: u64,
    tx: mpsc::Sender<Inbox>,
    overflow: Arc<Overflow>,
}

/// Set when a mailbox had to refuse an event that must arrive.
#[derive(Default)]
pub struct Overflow {
    flag: AtomicBool,
    notify: Notify,
}

impl Overflow {
    fn raise(&self) {
        if !self.flag.swap(true, Ordering::Relaxed) {
            self.notify.notify_one();
        }
    }

    /// Resolves once the mailbox overflowed.
    pub async fn raised(&self) {
        self.notify.notified().await;
    }
}

pub struct Hub {
    subscriber: fred::clients::SubscriberClient,
    routes: Mutex<HashMap<String, Vec<Member>>>,
    /// Serializes SSUBSCRIBE / SUNSUBSCRIBE so that an unsubscribe decided for an empty channel
    /// can never overtake a subscribe for a newcomer.
    ops: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
}

impl Hub {
    /// A hub on `subscriber` (connected by the caller); [`Hub::listen`] must run for it to
    /// deliver anything.
    pub fn new(subscriber: fred::clients::SubscriberClient) -> Arc<Hub> {
        Arc::new(Hub {
            subscriber,
            routes: Mutex::new(HashMap::new()),
            ops: tokio::sync::Mutex::new(()),
            next_id: AtomicU64::new(0),
        })
    }

    /// A new, empty mailbox.
    pub fn mailbox(self: &Arc<Self>) -> Mailbox {
        let (tx, rx) = mpsc::channel(MAILBOX_CAPACITY);
        Mailbox {
            hub: self.clone(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            tx,
            rx,
            overflow: Arc::new(Overflow::default()),
            channels: Vec::new(),
        }
    }

    async fn add(&self, channel: &str, member: Member) -> Result<(), RelayError> {
        let _op = self.ops.lock().await;
        let first = {
            let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
            let members = routes.entry(channel.to_owned()).or_default();
            members.push(member);
            members.len() == 1
        };
        if first {
            if let Err(err) = self.subscriber.ssubscribe(channel).await {
                // Leave the member in place: a later resubscribe (reconnect) may still serve it,
                // but tell the caller so the session can give up cleanly.
                return Err(err.into());
            }
        }
        Ok(())
    }

    async fn remove(&self, channel: &str, id: u64) {
        let _op = self.ops.lock().await;
        let empty = {
            let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
            match routes.get_mut(channel) {
                Some(members) => {
                    members.retain(|m| m.id != id);
                    if members.is_empty() {
                        routes.remove(channel);
                        true
                    } else {
                        false
                    }
                }
                None => false,
            }
        };
        if empty {
            if let Err(err) = self.subscriber.sunsubscribe(channel).await {
                tracing::debug!(%err, channel, "sunsubscribe failed");
            }
        }
    }

    /// How many channels this gateway listens to (metrics, tests).
    pub fn channels(&self) -> usize {
        self.routes.lock().map(|r| r.len()).unwrap_or(0)
    }

    fn deliver(&self, channel: &str, event: Arc<Event>) {
        let must_arrive = !event.is_droppable();
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let Some(members) = routes.get(channel) else {
            return;
        };
        for member in members {
            match member.tx.try_send(Inbox::Event(event.clone())) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) if must_arrive => member.overflow.raise(),
                // Ephemeral frames are dropped first; a closed mailbox is on its way out.
                Err(_) => {}
            }
        }
    }

    /// Subscribes again to every channel a mailbox wants, after the subscriber reconnected.
    ///
    /// Not fred's `manage_subscriptions`: fred 10.1 resubscribes plain channels first, sends
    /// `SUBSCRIBE` with no channel when there are none (as here: the hub uses only sharded
    /// channels), gets an error, and never reaches the sharded ones — after a Redis restart
    /// the gateway would deliver nothing live until its sessions reconnect.
    async fn resubscribe(&self) {
        let _op = self.ops.lock().await;
        let channels: Vec<String> = self
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        for channel in channels {
            if let Err(err) = self.subscriber.ssubscribe(channel.as_str()).await {
                // The next reconnect tries again; the resync that follows covers the gap.
                tracing::error!(%err, channel, "cannot resubscribe after a reconnect");
            }
        }
    }

    fn resync_all(&self) {
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        for member in routes.values().flatten() {
            if let Err(mpsc::error::TrySendError::Full(_)) = member.tx.try_send(Inbox::Resync) {
                member.overflow.raise();
            }
        }
    }

    pub async fn listen(self: Arc<Self>, shutdown: Shutdown) {
        let mut messages = self.subscriber.message_rx();
        let mut reconnects = self.subscriber.reconnect_rx();
        let mut topology = self.subscriber.cluster_change_rx();
        let clustered = self.subscriber.is_clustered();
        let mut topology_check = tokio::time::interval(TOPOLOGY_CHECK);
        topology_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = topology_check.tick(), if clustered => {
                    if let Err(err) = self.subscriber.sync_cluster().await {
                        tracing::debug!(%err, "cannot read the Redis Cluster's slot map");
                    }
                }
                changed = topology.recv() => {
                    if let Err(tokio::sync::broadcast::error::RecvError::Closed) = changed {
                        break;
                    }
                    // Slots moved: subscribe again where each channel lives now, then fetch
                    // what was published meanwhile.
                    self.resubscribe().await;
                    tracing::warn!("redis cluster slots moved; resubscribed, sessions resync from the backend");
                    self.resync_all();
                }
                reconnected = reconnects.recv() => {
                    if reconnected.is_err() {
                        break;
                    }
                    // Whatever was published while we were away is lost to pub/sub: listen
                    // again first, then fetch, so nothing falls between the two.
                    self.resubscribe().await;
                    tracing::warn!("relay subscriber reconnected; sessions resync from the backend");
                    self.resync_all();
                }
                message = messages.recv() => match message {
                    Ok(message) => {
                        let channel = message.channel.to_string();
                        let Some(bytes) = message.value.as_bytes() else {
                            tracing::warn!(channel, "relay event without a payload");
                            continue;
                        };
                        match Event::from_json(bytes) {
                            Ok(event) => self.deliver(&channel, Arc::new(event)),
                            Err(err) => tracing::warn!(channel, %err, "unreadable relay event"),
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        // A fault, not a detail: recover through the backlog.
                        tracing::error!(missed, "relay subscriber lagged; sessions resync from the backend");
                        self.resync_all();
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
            }
        }
        let _ = self.subscriber.quit().await;
    }
}

/// A session's inbox on the hub. Dropping it leaves every channel it joined.
pub struct Mailbox {
    hub: Arc<Hub>,
    id: u64,
    tx: mpsc::Sender<Inbox>,
    rx: mpsc::Receiver<Inbox>,
    overflow: Arc<Overflow>,
    channels: Vec<String>,
}

impl Mailbox {
    /// Starts receiving `channel`'s events; resolves once the subscription is in place.
    pub async fn join(&mut self, channel: String) -> Result<(), RelayError> {
        if self.channels.contains(&channel) {
            return Ok(());
        }
        let member = Member {
            id: self.id,
            tx: self.tx.clone(),
            overflow: self.overflow.clone(),
        };
        self.channels.push(channel.clone());
        self.hub.add(&channel, member).await
    }

    pub async fn leave(&mut self, channel: &str) {
        if let Some(at) = self.channels.iter().position(|c| c == channel) {
            self.channels.swap_remove(at);
            self.hub.remove(channel, self.id).await;
        }
    }

    pub async fn recv(&mut self) -> Option<Inbox> {
        self.rx.recv().await
    }

    /// What is already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Inbox> {
        self.rx.try_recv().ok()
    }

    pub fn overflow(&self) -> Arc<Overflow> {
        self.overflow.clone()
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        let channels = std::mem::take(&mut self.channels);
        if channels.is_empty() {
            return;
        }
        let hub = self.hub.clone();
        let id = self.id;
        // Dropping cannot await; the hub's ops lock keeps this ordered with later joins.
        tokio::spawn(async move {
            for channel in channels {
                hub.remove(&channel, id).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    use haberci_wire::{ConversationId, Presence, Status, Typing, TypingState, UserId};

    fn hub() -> Arc<Hub> {
        // Never connected: these tests drive `deliver` directly.
        let subscriber = Builder::default_centralized()
            .build_subscriber_client()
            .unwrap();
        Hub::new(subscriber)
    }

    fn user(n: u128) -> UserId {
        UserId::new(uuid::Uuid::from_u128(n)).unwrap()
    }

    fn status() -> Arc<Event> {
        Arc::new(Event::Status(Status {
            conversation_id: ConversationId::new(uuid::Uuid::from_u128(9)).unwrap(),
            user_id: user(1),
            delivered: None,
            read: None,
        }))
    }

    fn typing() -> Arc<Event> {
        Arc::new(Event::Typing(Typing {
            conversation_id: ConversationId::new(uuid::Uuid::from_u128(9)).unwrap(),
            user_id: user(1),
            state: TypingState::Started,
        }))
    }

    /// Registers `mailbox` on `channel` without Redis (the subscribe itself is not the point).
    fn attach(hub: &Hub, mailbox: &Mailbox, channel: &str) {
        hub.routes
            .lock()
            .unwrap()
            .entry(channel.to_owned())
            .or_default()
            .push(Member {
                id: mailbox.id,
                tx: mailbox.tx.clone(),
                overflow: mailbox.overflow.clone(),
            });
    }

    #[tokio::test]
    async fn a_full_mailbox_drops_ephemeral_events_and_overflows_on_one_that_must_arrive() {
        let hub = hub();
        let mut slow = hub.mailbox();
        let mut fine = hub.mailbox();
        attach(&hub, &slow, "u:{a}");
        attach(&hub, &fine, "u:{b}");
        for _ in 0..MAILBOX_CAPACITY {
            hub.deliver("u:{a}", status());
        }
        hub.deliver("u:{a}", typing());
        assert!(
            !slow.overflow.flag.load(Ordering::Relaxed),
            "typing is dropped, not fatal"
        );
        hub.deliver(
            "u:{a}",
            Arc::new(Event::Notification(haberci_wire::Notification {
                id: haberci_wire::NotificationId::new(uuid::Uuid::now_v7()).unwrap(),
                kind: haberci_wire::NotificationKind::Like,
                actor_id: user(2),
                actor_username: "ayse".into(),
                post_id: None,
                comment_id: None,
                created_at: haberci_wire::Timestamp::from_unix_millis(0).unwrap(),
                unread_count: 1,
            })),
        );
        assert!(
            !slow.overflow.flag.load(Ordering::Relaxed),
            "a notification is dropped, not fatal (GET /v1/notifications has it)"
        );
        hub.deliver("u:{a}", status());
        tokio::time::timeout(Duration::from_secs(1), slow.overflow().raised())
            .await
            .expect("a status that does not fit overflows the mailbox");
        // The other mailbox is untouched.
        hub.deliver(
            "u:{b}",
            Arc::new(Event::Presence(Presence {
                user_id: user(2),
                online: true,
                last_seen: None,
            })),
        );
        assert!(matches!(fine.try_recv(), Some(Inbox::Event(_))));
        assert!(!fine.overflow.flag.load(Ordering::Relaxed));
        // What fit is still there, in order.
        assert!(matches!(slow.try_recv(), Some(Inbox::Event(e)) if matches!(*e, Event::Status(_))));
    }
}
