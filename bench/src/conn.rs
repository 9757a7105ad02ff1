//! One load-generating session, whatever it speaks: a Haberci [`Client`] (QUIC, WebTransport,
//! WebSocket) or a Socket.IO client of the comparison peer. The scenarios send and count
//! through this, so both systems are driven by the same code.

use std::pin::Pin;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use haberci_client::{Client, Event, GroupId, Recipient, UserId};

pub use crate::socketio::Incoming;
use crate::socketio::SioClient;

/// Where a message goes.
#[derive(Clone, Copy, Debug)]
pub enum To {
    User(uuid::Uuid),
    Group(uuid::Uuid),
}

/// A connected session.
#[derive(Clone)]
pub enum Conn {
    Haberci(Client),
    SocketIo(SioClient),
}

/// What a session hears: message contents, and its end.
pub type Inbox = Pin<Box<dyn Stream<Item = Incoming> + Send>>;

/// A Haberci event stream as an [`Inbox`].
pub fn haberci_inbox(events: haberci_client::Events) -> Inbox {
    Box::pin(events.filter_map(|event| {
        futures::future::ready(match event {
            Event::Message(message) => Some(Incoming::Message(message.content)),
            Event::Disconnected(why) => Some(Incoming::Disconnected(why.to_string())),
            _ => None,
        })
    }))
}

/// A Socket.IO event channel as an [`Inbox`].
pub fn socketio_inbox(events: tokio::sync::mpsc::UnboundedReceiver<Incoming>) -> Inbox {
    Box::pin(tokio_stream_from(events))
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

impl Conn {
    /// Sends a text message; the future resolves with the server's acceptance (`Sent` for
    /// Haberci, the ack for Socket.IO) or why not. Invariant: the frame is handed to the
    /// connection on the future's first poll, so sends polled in order leave in order.
    pub fn send_text(&self, to: To, content: String) -> BoxFuture<'static, Result<(), String>> {
        match self {
            Conn::Haberci(client) => {
                let recipient = match to {
                    To::User(id) => UserId::new(id).map(Recipient::User),
                    To::Group(id) => GroupId::new(id).map(Recipient::Group),
                };
                let Some(recipient) = recipient else {
                    return futures::future::ready(Err("a nil recipient id".into())).boxed();
                };
                let message =
                    haberci_client::message(recipient, haberci_client::MessageKind::Text, content);
                let client = client.clone();
                async move {
                    client
                        .send(message)
                        .await
                        .map(|_| ())
                        .map_err(|err| err.to_string())
                }
                .boxed()
            }
            Conn::SocketIo(client) => {
                let to = match to {
                    To::User(id) | To::Group(id) => id.to_string(),
                };
                let id = uuid::Uuid::now_v7().to_string();
                client.send(&to, &id, content).boxed()
            }
        }
    }

    pub async fn close(&self) {
        match self {
            Conn::Haberci(client) => client.close().await,
            Conn::SocketIo(client) => client.close().await,
        }
    }
}

/// Closes every session, for at most `limit`.
pub async fn close_all(conns: &[Conn], limit: Duration) {
    let closes = conns.iter().map(Conn::close);
    let _ = tokio::time::timeout(limit, futures::future::join_all(closes)).await;
}
