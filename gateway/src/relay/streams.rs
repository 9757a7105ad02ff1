//! The gateway's handle on the message path: stream entries in, events out, and the backend's
//! internal sync API for what pub/sub cannot promise.
//!
//! - [`Relay::append`]: `XADD` a validated [`Inbound`] to its conversation's stream shard.
//!   Invariant: no `MAXLEN`; the workers trim only what every consumer acknowledged (see
//!   docs/MESSAGING.md, "Stream trimming"), so nothing unacknowledged is ever cut away.
//! - [`Relay::publish`]: `SPUBLISH` an ephemeral event (typing, presence).
//! - [`Relay::conversations`] / [`Relay::sync`]: the backend's internal endpoints
//!   (`haberci_seam::internal`), for a session's first sync and for every gap.
//! - [`Relay::hub`]: the one subscriber every session's mailbox hangs on ([`crate::relay::hub`]).

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use haberci_kit::shutdown::Shutdown;
use haberci_seam::internal::{
    self, ConversationKind, InternalToken, PRESENCE_VISIBLE_PATH, PresenceVisibleAnswer,
    PresenceVisibleRequest, SyncAnswer, SyncPosition, SyncRequest, UserConversations,
};
use haberci_seam::streams::{self, Event, Inbound};
use haberci_session::{Backlog, ConversationInfo, FetchFrom, Identity};
use haberci_wire::UserId;

use super::backend::{Backend, InternalError};
use super::hub::{Hub, SUBSCRIBER_BUFFER};

/// Most messages per conversation in one backlog page.
pub const SYNC_PAGE: u32 = 200;
const _: () = assert!(SYNC_PAGE <= internal::MAX_SYNC_LIMIT);
/// A Redis command (XADD, SPUBLISH) gives up after this; the client hears `unavailable`.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone, Debug)]
pub struct RelayConfig {
    pub redis_url: String,
    pub shards: u16,
    pub stream_prefix: String,
    /// The backend's internal API secret (`HABERCI_INTERNAL_TOKEN`).
    pub internal_token: InternalToken,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("backend: {0}")]
    Backend(String),
    #[error("session refused: {0}")]
    SessionRefused(String),
}

pub struct Relay {
    config: RelayConfig,
    redis: fred::clients::Client,
    hub: Arc<Hub>,
    backend: Backend,
}

impl Relay {
    /// Connects to Redis and starts the hub's listener (until `shutdown`).
    pub async fn start(
        config: RelayConfig,
        backend: Backend,
        shutdown: Shutdown,
    ) -> Result<Arc<Relay>, RelayError> {
        // Not async work, but kept async so callers need not change if it ever waits.
        tokio::task::yield_now().await;
        let mut redis_config = Config::from_url(&config.redis_url)?;
        redis_config.fail_fast = false;
        let policy = ReconnectPolicy::new_exponential(0, 100, 2_000, 2);
        let redis = Builder::from_config(redis_config.clone())
            .set_policy(policy.clone())
            .with_connection_config(|c| c.connection_timeout = Duration::from_secs(2))
            .with_performance_config(|p| p.default_command_timeout = COMMAND_TIMEOUT)
            .build()?;
        // Connect in the background: a gateway starts (and serves HTTP) while Redis is down;
        // commands wait for the connection (fail_fast off) within their timeouts.
        let _connection = redis.connect();
        let subscriber = Builder::from_config(redis_config)
            .with_performance_config(|p| {
                p.broadcast_channel_capacity = SUBSCRIBER_BUFFER;
                // A subscribe waits at most this while Redis is away; the session is then
                // closed `server_draining` and the client comes back later.
                p.default_command_timeout = COMMAND_TIMEOUT;
            })
            .set_policy(policy)
            .build_subscriber_client()?;
        let _subscription = subscriber.connect();
        let hub = Hub::new(subscriber);
        tokio::spawn(hub.clone().listen(shutdown));
        Ok(Arc::new(Relay {
            config,
            redis,
            hub,
            backend,
        }))
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Appends `entry` to its conversation's stream shard.
    pub async fn append(&self, entry: &Inbound) -> Result<(), RelayError> {
        let shard = streams::shard_of(entry.conversation(), self.config.shards);
        let key = streams::stream_key(&self.config.stream_prefix, shard);
        let _: String = self
            .redis
            .xadd(
                key,
                false,
                None,
                "*",
                vec![(streams::ENTRY_FIELD, entry.to_json())],
            )
            .await?;
        Ok(())
    }

    /// Publishes an ephemeral event (typing, presence).
    pub async fn publish(&self, channel: String, event: &Event) -> Result<(), RelayError> {
        let _: i64 = self.redis.spublish(channel, event.to_json()).await?;
        Ok(())
    }

    /// The redis client (presence keys).
    pub fn redis(&self) -> &fred::clients::Client {
        &self.redis
    }

    /// Every conversation `user` is a member of.
    /// The conversations of `identity`'s user, once the backend found `identity`'s session
    /// active and the user's own ([`RelayError::SessionRefused`] otherwise).
    pub async fn conversations(
        &self,
        identity: Identity,
    ) -> Result<Vec<ConversationInfo>, RelayError> {
        let path = internal::user_conversations_path(identity.user, identity.session);
        let listing: UserConversations = self
            .backend
            .internal(&path, &self.config.internal_token, None::<&()>)
            .await
            .map_err(|err| match err {
                InternalError::Forbidden(why) => RelayError::SessionRefused(why),
                InternalError::Failed(why) => RelayError::Backend(why),
            })?;
        Ok(listing
            .conversations
            .into_iter()
            .map(|c| ConversationInfo {
                id: c.id,
                peer: match c.kind {
                    ConversationKind::Direct => c.peer,
                    ConversationKind::Group => None,
                },
                last_seq: c.last_seq,
                delivered_seq: c.delivered_seq,
            })
            .collect())
    }

    /// The users of `users` whose presence `viewer` may watch (the backend's rule).
    pub async fn presence_visible(
        &self,
        viewer: UserId,
        users: &[UserId],
    ) -> Result<Vec<UserId>, RelayError> {
        let request = PresenceVisibleRequest {
            viewer,
            user_ids: users.to_vec(),
        };
        let answer: PresenceVisibleAnswer = self
            .backend
            .internal(
                PRESENCE_VISIBLE_PATH,
                &self.config.internal_token,
                Some(&request),
            )
            .await
            .map_err(|err| RelayError::Backend(err.to_string()))?;
        Ok(answer.user_ids)
    }

    /// One page of each backlog asked for.
    pub async fn sync(&self, user: UserId, from: &[FetchFrom]) -> Result<Vec<Backlog>, RelayError> {
        let mut pages: Vec<Backlog> = Vec::with_capacity(from.len());
        // A request names at most MAX_SYNC_POSITIONS conversations (the contract's limit).
        for chunk in from.chunks(internal::MAX_SYNC_POSITIONS) {
            let request = SyncRequest {
                user_id: user,
                positions: chunk
                    .iter()
                    .map(|f| SyncPosition {
                        conversation_id: f.conversation,
                        after: f.after,
                    })
                    .collect(),
                limit: Some(SYNC_PAGE),
            };
            let answer: SyncAnswer = self
                .backend
                .internal(
                    internal::SYNC_PATH,
                    &self.config.internal_token,
                    Some(&request),
                )
                .await
                .map_err(|err| RelayError::Backend(err.to_string()))?;
            pages.extend(answer.conversations.into_iter().map(|c| Backlog {
                conversation: c.conversation_id,
                messages: c.messages,
                more: c.more,
            }));
        }
        // A conversation the backend left out (no longer a member) ends its fetch empty.
        for f in from {
            if !pages.iter().any(|p| p.conversation == f.conversation) {
                pages.push(Backlog {
                    conversation: f.conversation,
                    messages: Vec::new(),
                    more: false,
                });
            }
        }
        Ok(pages)
    }
}
