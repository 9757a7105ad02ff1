//! What the transport adapters ([`crate::native`], [`crate::websocket`]) share around the
//! sans-IO [`Session`](crate::session::Session): the real clocks, sleeping until the session's
//! next deadline, and the answer to relay work while the relay is not built.

use std::future::Future;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use haberci_kit::shutdown::Shutdown;

use haberci_wire::{ErrorCode, ErrorFrame, ServerFrame};

use crate::auth::TokenKeys;
use crate::revocation::{Revocations, Watch};
use crate::session::{Now, Relay, Session, SessionConfig};

/// What every realtime adapter needs.
#[derive(Clone)]
pub struct Realtime {
    pub keys: Arc<TokenKeys>,
    pub session: SessionConfig,
    pub revocations: Arc<Revocations>,
}

/// Follows a session's revocation once it is open; `None` before `Welcome`.
#[derive(Default)]
pub struct Revocable(Option<Watch>);

impl Revocable {
    /// Starts watching once the session has an identity.
    pub fn update(&mut self, session: &Session, revocations: &Arc<Revocations>) {
        if self.0.is_none() {
            if let Some(identity) = session.identity() {
                self.0 = Some(revocations.watch(identity.session));
            }
        }
    }

    /// Resolves when the session is revoked; never before it is open.
    pub async fn revoked(&self) {
        match &self.0 {
            Some(watch) => watch.revoked().await,
            None => std::future::pending().await,
        }
    }
}

/// What woke an adapter's loop.
pub enum Wake<T> {
    /// Input from the transport.
    Input(T),
    /// Shutdown, a revocation or a deadline; already applied to the session.
    Handled,
}

/// Waits for the next thing a session must react to: the transport's `input`, shutdown (once:
/// the session is drained and `draining` is set), the session's revocation, or its next
/// deadline. Everything but input is applied to `session` here, the same for every transport.
pub async fn next<T>(
    session: &mut Session,
    revocable: &Revocable,
    shutdown: &Shutdown,
    draining: &mut bool,
    input: impl Future<Output = T>,
) -> Wake<T> {
    let deadline = session.next_timeout();
    tokio::select! {
        _ = shutdown.cancelled(), if !*draining => {
            *draining = true;
            session.drain();
        }
        _ = revocable.revoked() => session.revoke(),
        _ = sleep_until(deadline) => session.handle_timeout(now()),
        input = input => return Wake::Input(input),
    }
    Wake::Handled
}

/// Reads both clocks.
pub fn now() -> Now {
    Now {
        instant: Instant::now(),
        unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0),
    }
}

/// Sleeps until `deadline`; forever when there is none.
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// What the client hears about relay work while the relay is not built (#6): a retryable
/// `unavailable` for what must arrive (nothing was stored), nothing for ephemeral frames.
pub fn unserved(relay: &Relay) -> Option<ServerFrame> {
    let client_msg_id = match relay {
        Relay::Send(_, send) => Some(send.client_msg_id),
        Relay::Ack(..) | Relay::Read(..) => None,
        Relay::Opened { .. } | Relay::Typing(..) | Relay::PresenceWatch(..) => return None,
    };
    Some(ServerFrame::Error(ErrorFrame {
        code: ErrorCode::Unavailable,
        message: "messaging is not served by this gateway yet".into(),
        client_msg_id,
    }))
}
