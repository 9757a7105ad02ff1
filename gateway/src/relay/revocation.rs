//! Revoked sessions are closed within a second: the backend publishes every revocation
//! (logout, revoke, refresh-token reuse) on Redis channel `auth:revoked` as a
//! [`haberci_seam::revocation::Announcement`]; [`listen`] receives them and wakes the realtime
//! sessions of that id that this gateway holds ([`Revocations::watch`]).
//!
//! A revoked session's access token stays valid until it expires, so the ids announced are
//! also remembered for [`REMEMBERED_FOR`]: a new realtime session opened with such a token is
//! closed as soon as it is open, like the ones that were open at the announcement.
//!
//! Pub/sub loses what is published while the subscriber reconnects (or before this gateway
//! started); a session missed that way still ends when its access token expires (≤ 15 min),
//! and cannot refresh it in-band, since the refreshed token would come from a revoked session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::prelude::*;
use haberci_kit::shutdown::Shutdown;
use haberci_seam::revocation::{self, Announcement};
use haberci_wire::SessionId;
use tokio::sync::Notify;

/// Pub/sub messages buffered for this gateway before it counts as lagging (fred's default 32
/// is too small for a burst of logouts).
pub const MESSAGE_BUFFER: usize = 4096;

/// How long a revoked session id is remembered: longer than an access token lives (15 min).
pub const REMEMBERED_FOR: Duration = Duration::from_secs(20 * 60);

/// One open session's wake-up, tagged so its [`Watch`] can remove exactly itself.
type Watcher = (u64, Arc<Notify>);

/// The realtime sessions this gateway holds, by session id, and the session ids revoked lately.
#[derive(Default)]
pub struct Revocations {
    watchers: Mutex<HashMap<SessionId, Vec<Watcher>>>,
    /// Revoked session ids and when they may be forgotten.
    revoked: Mutex<HashMap<SessionId, Instant>>,
    next_id: AtomicU64,
    subscribed: tokio::sync::watch::Sender<bool>,
}

/// Held by a session while it is open; [`Watch::revoked`] resolves when its session is revoked.
pub struct Watch {
    registry: Arc<Revocations>,
    session: SessionId,
    id: u64,
    notify: Arc<Notify>,
}

impl Revocations {
    pub fn watch(self: &Arc<Self>, session: SessionId) -> Watch {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        let already_revoked = self
            .revoked
            .lock()
            .ok()
            .and_then(|revoked| revoked.get(&session).copied())
            .is_some_and(|until| Instant::now() < until);
        if already_revoked {
            // A token of a revoked session, not expired yet: the permit ends it at once.
            notify.notify_one();
        }
        if let Ok(mut watchers) = self.watchers.lock() {
            watchers
                .entry(session)
                .or_default()
                .push((id, notify.clone()));
        }
        Watch {
            registry: self.clone(),
            session,
            id,
            notify,
        }
    }

    /// Wakes every open session of `session` and remembers the id; returns how many were open.
    pub fn revoke(&self, session: SessionId) -> usize {
        if let Ok(mut revoked) = self.revoked.lock() {
            let now = Instant::now();
            revoked.retain(|_, until| now < *until);
            revoked.insert(session, now + REMEMBERED_FOR);
        }
        let woken = self
            .watchers
            .lock()
            .ok()
            .and_then(|mut watchers| watchers.remove(&session))
            .unwrap_or_default();
        for (_, notify) in &woken {
            crate::metrics::revoked();
            // A stored permit: the session sees it even if it is not waiting right now.
            notify.notify_one();
        }
        woken.len()
    }

    /// Resolves once the subscription to [`revocation::CHANNEL`] is in place.
    pub async fn subscribed(&self) {
        let mut subscribed = self.subscribed.subscribe();
        let _ = subscribed.wait_for(|s| *s).await;
    }
}

impl Watch {
    pub async fn revoked(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Ok(mut watchers) = self.registry.watchers.lock() {
            if let Some(list) = watchers.get_mut(&self.session) {
                list.retain(|(id, _)| *id != self.id);
                if list.is_empty() {
                    watchers.remove(&self.session);
                }
            }
        }
    }
}

/// Subscribes to [`revocation::CHANNEL`] on `redis_url` and applies every announcement until
/// shutdown. Reconnects (and resubscribes) on its own.
pub async fn listen(registry: Arc<Revocations>, redis_url: String, shutdown: Shutdown) {
    let client = match subscriber(&redis_url) {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(%err, "cannot build the revocation subscriber; revocations reach sessions only at token expiry");
            return;
        }
    };
    let _connection = client.connect();
    let _resubscribe = client.manage_subscriptions();
    let mut messages = client.message_rx();
    loop {
        let subscribed = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = client.subscribe(revocation::CHANNEL) => result,
        };
        match subscribed {
            Ok(()) => break,
            Err(err) => {
                tracing::warn!(%err, "revocation subscription failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
    registry.subscribed.send_replace(true);
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            message = messages.recv() => message,
        };
        match message {
            Ok(message) => {
                let text = message.value.convert::<String>().ok();
                match text.and_then(|t| Announcement::from_json(&t).ok()) {
                    Some(announcement) => {
                        let closed = registry.revoke(announcement.session_id);
                        if closed > 0 {
                            tracing::info!(session = %announcement.session_id, closed, "revoked session closed");
                        }
                    }
                    None => tracing::warn!(
                        channel = revocation::CHANNEL,
                        "unreadable revocation message"
                    ),
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                // A fault, not a detail: those sessions stay open until their tokens expire.
                tracing::error!(missed, "revocation messages lost (subscriber lagged)");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
        }
    }
    let _ = client.quit().await;
}

fn subscriber(url: &str) -> Result<fred::clients::SubscriberClient, fred::error::Error> {
    let mut config = Config::from_url(url)?;
    config.fail_fast = false;
    Builder::from_config(config)
        .with_performance_config(|p| p.broadcast_channel_capacity = MESSAGE_BUFFER)
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .build_subscriber_client()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use futures::FutureExt;

    use super::*;

    fn sid() -> SessionId {
        SessionId::new(uuid::Uuid::now_v7()).unwrap()
    }

    #[tokio::test]
    async fn revoke_wakes_every_watch_of_that_session_only() {
        let registry = Arc::new(Revocations::default());
        let (a, b) = (sid(), sid());
        let a1 = registry.watch(a);
        let a2 = registry.watch(a);
        let b1 = registry.watch(b);
        assert_eq!(registry.revoke(a), 2);
        // Permits are stored: the watches see the revocation though nobody was waiting.
        a1.revoked().await;
        a2.revoked().await;
        assert_eq!(
            registry.revoke(a),
            0,
            "a revoked session's watches are gone"
        );
        drop(b1);
        assert_eq!(registry.revoke(b), 0, "a closed session is forgotten");
    }

    #[tokio::test]
    async fn a_session_opened_after_its_revocation_is_revoked_at_once() {
        let registry = Arc::new(Revocations::default());
        let (revoked, other) = (sid(), sid());
        assert_eq!(registry.revoke(revoked), 0);
        let late = registry.watch(revoked);
        // The permit is stored at `watch`: the first poll resolves, no waiting involved.
        assert!(
            late.revoked().now_or_never().is_some(),
            "a watch of a revoked session resolves at once"
        );
        let fine = registry.watch(other);
        assert!(
            fine.revoked().now_or_never().is_none(),
            "another session stays open"
        );
    }
}
