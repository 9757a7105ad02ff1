//! The async client: [`Client`] (requests), [`Events`] (what the server says) and the driver
//! task that runs one connection.
//!
//! Shape: the sans-IO [`Session`] sits behind a mutex shared by the `Client` handles and the
//! driver. A request locks it, queues a frame, and wakes the driver. The driver is one task per
//! connection that waits on three things — a server frame, a wake-up, the session's next
//! deadline — feeds each to the session, then hands queued bodies to a writer task and
//! outputs to their waiters and to `Events`.
//!
//! Invariant: the mutex is never held across an `.await`.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use haberci_wire::{
    ConversationId, ResumePosition, SendMessage, Sent, Seq, TypingState, UserId, Welcome,
};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::config::ClientConfig;
use crate::error::{ClientError, ConnectError, Disconnect, SendError};
use crate::session::{Event, Output, Phase, Session, Transmit};
use crate::transport::{self, FrameSink, FrameStream};

/// How long a local close may take to flush what was queued and say goodbye.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

type SendWaiter = oneshot::Sender<Result<Sent, SendError>>;
type PingWaiter = oneshot::Sender<Duration>;
type ClientSession = Session<SendWaiter, PingWaiter>;

/// A handle on one realtime connection. Cheap to clone; the connection closes when
/// [`Client::close`] is called or the last handle is dropped.
#[derive(Clone)]
pub struct Client {
    handle: Arc<Handle>,
}

/// Closes the connection when the last `Client` goes.
struct Handle {
    shared: Arc<Shared>,
}

struct Shared {
    session: Mutex<ClientSession>,
    /// Wakes the driver after a request queued something.
    wake: Notify,
    /// `true` once the driver has finished (the connection is gone).
    finished: watch::Receiver<bool>,
    welcome: Welcome,
    /// What the next connection starts from: the config, with the latest access token.
    config: Mutex<ClientConfig>,
}

impl Shared {
    fn session(&self) -> MutexGuard<'_, ClientSession> {
        // A panic while holding the lock cannot leave the session half-updated in a way that
        // matters more than losing the client: keep going with what is there.
        self.session.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn config(&self) -> MutexGuard<'_, ClientConfig> {
        self.config.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a request and wakes the driver.
    fn request<T>(&self, f: impl FnOnce(&mut ClientSession, std::time::Instant) -> T) -> T {
        let out = f(&mut self.session(), Instant::now().into_std());
        self.wake.notify_one();
        out
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.request(|session, now| session.close(now));
    }
}

impl Client {
    /// Opens the configured transport, sends `Hello` (with `config.resume`), and waits for
    /// `Welcome`. A `Closing` instead is [`ConnectError::Closed`] with its code.
    pub async fn connect(config: ClientConfig) -> Result<(Client, Events), ConnectError> {
        let limit = config.connect_timeout;
        tokio::time::timeout(limit, handshake(config))
            .await
            .map_err(|_| ConnectError::Timeout(limit))?
    }

    /// The server's `Welcome`: who the token says we are, the session id, the limits.
    pub fn welcome(&self) -> &Welcome {
        &self.handle.shared.welcome
    }

    pub fn user_id(&self) -> UserId {
        self.welcome().user_id
    }

    /// Sends a message and waits for the server's answer: `Sent` once it is stored, or
    /// [`SendError::Refused`] with the code of an `Error` naming its `client_msg_id`. Any
    /// number of sends may be in flight at once.
    pub async fn send(&self, message: SendMessage) -> Result<Sent, SendError> {
        let (waiter, answer) = oneshot::channel();
        self.shared()
            .request(|session, now| session.send(message, waiter, now))
            .map_err(|(_, err)| err)?;
        // The driver drops the waiter only when the connection ends without an answer.
        answer.await.unwrap_or(Err(SendError::Disconnected))
    }

    /// Acks every message of `conversation` up to `seq` (cumulative). Not needed with
    /// `auto_ack`.
    pub fn ack(&self, conversation: ConversationId, seq: Seq) -> Result<(), ClientError> {
        self.shared()
            .request(|session, now| session.ack(conversation, seq, now))
    }

    /// Marks every message of `conversation` up to `seq` read (cumulative).
    pub fn read(&self, conversation: ConversationId, seq: Seq) -> Result<(), ClientError> {
        self.shared()
            .request(|session, now| session.read(conversation, seq, now))
    }

    pub fn typing(
        &self,
        conversation: ConversationId,
        state: TypingState,
    ) -> Result<(), ClientError> {
        self.shared()
            .request(|session, now| session.typing(conversation, state, now))
    }

    /// Replaces the set of users whose presence this connection follows.
    pub fn presence_watch(&self, users: Vec<UserId>) -> Result<(), ClientError> {
        self.shared()
            .request(|session, now| session.presence_watch(users, now))
    }

    /// Hands the session a fresh access token (before the current one expires). There is no
    /// answer on success; [`Client::reconnect`] uses the new token too.
    pub fn refresh_auth(&self, access_token: impl Into<String>) -> Result<(), ClientError> {
        let token = access_token.into();
        self.shared()
            .request(|session, now| session.refresh_auth(token.clone(), now))?;
        self.shared().config().access_token = token;
        Ok(())
    }

    /// Pings the server and returns the round trip.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let (waiter, pong) = oneshot::channel();
        self.shared()
            .request(|session, now| session.ping(waiter, now))
            .map_err(|(_, err)| err)?;
        pong.await.map_err(|_| ClientError::Disconnected)
    }

    /// Per conversation, the highest seq held with no gap below: what to resume from.
    pub fn positions(&self) -> Vec<ResumePosition> {
        self.shared().session().positions()
    }

    /// Whether the session is open (not closing, not ended).
    pub fn is_open(&self) -> bool {
        self.shared().session().is_open()
    }

    /// Closes the connection normally and waits until it is gone. Sends in flight fail with
    /// [`SendError::Disconnected`]; `Events` ends with `Disconnected(Local)`.
    pub async fn close(&self) {
        self.shared().request(|session, now| session.close(now));
        self.closed().await;
    }

    /// Waits until the connection has ended, for whatever reason.
    pub async fn closed(&self) {
        let mut finished = self.shared().finished.clone();
        // An error means the driver is gone: finished either way.
        let _ = finished.wait_for(|done| *done).await;
    }

    /// The configuration a reconnect uses: this one's, with the latest access token and the
    /// tracked resume positions.
    pub fn resume_config(&self) -> ClientConfig {
        let mut config = self.shared().config().clone();
        config.resume = self.positions();
        config
    }

    /// Closes this connection (if still open) and opens a new one that resumes from
    /// [`Client::positions`]. Sends that were in flight are not resent: they failed with
    /// [`SendError::Disconnected`]; send them again with the same `client_msg_id` (the server
    /// stores each id once).
    pub async fn reconnect(&self) -> Result<(Client, Events), ConnectError> {
        self.close().await;
        Client::connect(self.resume_config()).await
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("session_id", &self.welcome().session_id)
            .field("user_id", &self.welcome().user_id)
            .finish_non_exhaustive()
    }
}

/// What the server says, in arrival order; `Disconnected` is always last, then `None`.
///
/// Unbounded: read it (or drop it, and events are discarded). Also a
/// [`futures::Stream`] of [`Event`].
#[derive(Debug)]
pub struct Events {
    rx: mpsc::UnboundedReceiver<Event>,
}

impl Events {
    /// The next event; `None` after `Disconnected`.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is already here.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

impl futures::Stream for Events {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

/// Transport, `Hello`, `Welcome`; then the driver takes over.
async fn handshake(config: ClientConfig) -> Result<(Client, Events), ConnectError> {
    let (sink, stream) = transport::connect(&config).await?;
    open(config, sink, stream).await
}

/// `Hello` and `Welcome` over an open transport; then spawns the driver.
async fn open(
    config: ClientConfig,
    mut sink: FrameSink,
    mut stream: FrameStream,
) -> Result<(Client, Events), ConnectError> {
    let mut session = ClientSession::new(
        config.session_settings(),
        &config.resume,
        Instant::now().into_std(),
    );
    session
        .hello(
            config.access_token.clone(),
            config.client_name.clone(),
            config.client_version.clone(),
            Instant::now().into_std(),
        )
        .map_err(|err| ConnectError::Config(format!("Hello: {err}")))?;
    while let Some(body) = session.poll_transmit() {
        sink.send_body(body).await.map_err(refused)?;
    }
    let welcome = loop {
        match session.phase() {
            Phase::Open => break session.welcome().cloned(),
            Phase::Closing(closing) => {
                return Err(ConnectError::Closed {
                    code: closing.code,
                    reason: closing.reason.clone(),
                    retry_after: closing
                        .retry_after_ms
                        .map(|ms| Duration::from_millis(u64::from(ms.get()))),
                    supported_versions: closing.supported_versions.clone(),
                });
            }
            Phase::AwaitingWelcome | Phase::Closed(_) => {}
        }
        let frame = stream.recv_frame().await.map_err(refused)?;
        session.handle_frame(frame, Instant::now().into_std());
    };
    let Some(welcome) = welcome else {
        return Err(ConnectError::Config("open without Welcome".into()));
    };
    stream.set_max_frame_size(welcome.limits.max_frame_size as usize);

    let (finished_tx, finished) = watch::channel(false);
    let shared = Arc::new(Shared {
        session: Mutex::new(session),
        wake: Notify::new(),
        finished,
        welcome,
        config: Mutex::new(config),
    });
    let (events_tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(drive(shared.clone(), sink, stream, events_tx, finished_tx));
    Ok((
        Client {
            handle: Arc::new(Handle { shared }),
        },
        Events { rx },
    ))
}

/// A transport end during the handshake: with a protocol code it is a refusal.
fn refused(reason: Disconnect) -> ConnectError {
    match reason {
        Disconnect::Server {
            code: Some(code),
            reason,
        } => ConnectError::Closed {
            code,
            reason,
            retry_after: None,
            supported_versions: Vec::new(),
        },
        other => ConnectError::Disconnected(other),
    }
}

/// Runs one connection until it ends.
async fn drive(
    shared: Arc<Shared>,
    sink: FrameSink,
    mut stream: FrameStream,
    events: mpsc::UnboundedSender<Event>,
    finished: watch::Sender<bool>,
) {
    let (bodies, queued) = mpsc::unbounded_channel();
    let mut writer = tokio::spawn(write(sink, queued));
    let mut writer_done = false;
    loop {
        let (deadline, ended) = {
            let mut session = shared.session();
            while let Some(transmit) = session.poll_transmit_frame() {
                // Fails only once the writer is gone, which the `select!` below reports.
                let _ = bodies.send(transmit);
            }
            while let Some(output) = session.poll_output() {
                dispatch(output, &events);
            }
            (session.poll_timeout(), session.is_closed())
        };
        if ended {
            break;
        }
        let timer = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            frame = stream.recv_frame() => {
                let now = Instant::now().into_std();
                let mut session = shared.session();
                match frame {
                    Ok(frame) => session.handle_frame(frame, now),
                    Err(reason) => session.handle_disconnect(reason),
                }
            }
            () = shared.wake.notified() => {}
            () = timer => shared.session().handle_timeout(Instant::now().into_std()),
            result = &mut writer, if !writer_done => {
                // The writer ends early only when a write failed.
                writer_done = true;
                let reason = result.unwrap_or_else(|err| Disconnect::Transport(err.to_string()));
                shared.session().handle_disconnect(reason);
            }
        }
    }
    // Closing the queue lets the writer flush what is left (a local close's last acks), then
    // close the transport normally.
    drop(bodies);
    if !writer_done
        && tokio::time::timeout(CLOSE_TIMEOUT, &mut writer)
            .await
            .is_err()
    {
        writer.abort();
    }
    drop(stream);
    let _ = finished.send(true);
}

/// Writes queued bodies in order until the queue closes (then closes the transport) or a
/// write fails (returned; the transport is dropped).
async fn write(mut sink: FrameSink, mut queued: mpsc::UnboundedReceiver<Transmit>) -> Disconnect {
    while let Some(transmit) = queued.recv().await {
        if let Err(reason) = sink.send(transmit).await {
            return reason;
        }
    }
    sink.close().await;
    Disconnect::Local
}

fn dispatch(output: Output<SendWaiter, PingWaiter>, events: &mpsc::UnboundedSender<Event>) {
    // A waiter or `Events` that was dropped no longer wants its answer.
    match output {
        Output::Event(event) => {
            let _ = events.send(event);
        }
        Output::SendDone(waiter, result) => {
            let _ = waiter.send(result);
        }
        Output::PingDone(waiter, rtt) => {
            let _ = waiter.send(rtt);
        }
    }
}

#[cfg(test)]
mod tests;
