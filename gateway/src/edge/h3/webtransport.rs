//! The WebTransport transport (`CONNECT /v1/rt`, `:protocol = webtransport`, over HTTP/3 on the
//! gateway's QUIC endpoint): the client opens one bidirectional stream of varint
//! length-delimited frames (as native QUIC), and datagrams carry ephemeral frames, one frame
//! body per datagram.
//!
//! Two parts:
//! - [`WtSession`]: what is WebTransport-specific. Accepting the session and its stream, and
//!   the [`Pipe`] it is: reading stream chunks and datagrams, writing, closing.
//! - [`crate::transport::link::StreamLink`]: the framing, shared with native QUIC, which the
//!   driver ([`crate::transport::drive`]) runs the [`haberci_session::Session`] over.
//!
//! h3-webtransport 0.1.2 quirks this works around:
//! - It takes over the whole h3 connection, so a connection that opens a session is a
//!   WebTransport connection from then on; later HTTP/3 requests on it are still served (by the
//!   session's acceptor task), a second CONNECT is refused with 429.
//! - It cannot send `CLOSE_WEBTRANSPORT_SESSION` and never reads the client's: the server closes
//!   the QUIC connection with the protocol's QUIC code, and a session whose client went away
//!   ends by the session's idle timeout (clients must `Ping`).
//! - h3-quinn hides quinn's `SendStream::stopped`, so the Closing frame cannot be waited for
//!   until acknowledged as native QUIC does: the connection closes a few round trips after it.
//! - h3-datagram 0.0.2 writes a zero quarter stream id on every datagram it sends, so ours
//!   reach only a session on stream 0 (see `WtSession::datagrams_reach`).

use std::future::poll_fn;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, Bytes};
use h3::quic::{BidiStream as _, RecvStream as _, SendStream as _, SendStreamUnframed as _};
use h3_datagram::datagram_handler::{DatagramReader, DatagramSender, SendDatagramError};
use h3_webtransport::SessionId;
use h3_webtransport::server::{AcceptedBi, WebTransportSession};
use haberci_kit::shutdown::Shutdown;
use haberci_wire::{ErrorCode, ServerFrame};
use quinn::VarInt;
use tokio::sync::oneshot;
use tokio_util::task::AbortOnDropHandle;

use super::{H3Connection, H3RequestStream, Http};
use crate::metrics::Transport;
use crate::transport::Realtime;
use crate::transport::drive::drive;
use crate::transport::link::{Inbound, Pipe, StreamLink};

/// Longest wait, after the Closing frame is written, before the connection is closed.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Shortest such wait: the frame must at least leave this process and cross the path once.
pub const MIN_CLOSE_LINGER: Duration = Duration::from_millis(100);
/// Round trips the Closing frame gets to arrive (a loss and its retransmission included).
const CLOSE_LINGER_RTTS: u32 = 4;

type Wt = WebTransportSession<h3_quinn::Connection, Bytes>;
type WtSend = h3_webtransport::stream::SendStream<h3_quinn::SendStream<Bytes>, Bytes>;
type WtRecv = h3_webtransport::stream::RecvStream<h3_quinn::RecvStream, Bytes>;

/// Why a session never got its stream.
enum NoStream {
    /// The connection ended first.
    Ended,
    /// No stream within the handshake timeout.
    TimedOut,
    /// The gateway is shutting down.
    Draining,
}

/// A WebTransport session with its one bidirectional stream.
pub struct WtSession {
    quic: quinn::Connection,
    session_id: SessionId,
    send: WtSend,
    recv: WtRecv,
    datagrams_in: DatagramReader<h3_quinn::datagram::RecvDatagramHandler>,
    datagrams_out: DatagramSender<h3_quinn::datagram::SendDatagramHandler, Bytes>,
    /// Whether our datagrams reach this session. h3-datagram 0.0.2 writes zeros where the
    /// quarter stream id goes (its `Datagram::encode` drops the varint it computed), so what it
    /// sends is right only for a session on stream 0: the first request of its connection, as
    /// browsers open one. Any other session gets its ephemeral frames on the stream.
    datagrams_reach: bool,
    // Keeps accepting streams and requests on the connection (and reading its HTTP/3 control
    // stream) for as long as the session lives.
    _acceptor: AbortOnDropHandle<()>,
}

impl WtSession {
    /// Answers the CONNECT, then waits (at most `hello_timeout`) for the client's stream.
    async fn accept(
        quic: quinn::Connection,
        h3: H3Connection,
        request: http::Request<()>,
        stream: H3RequestStream,
        http: Http,
        hello_timeout: Duration,
        shutdown: &Shutdown,
    ) -> Result<WtSession, NoStream> {
        let peer = quic.remote_address();
        let wt = match Wt::accept(request, stream, h3).await {
            Ok(wt) => std::sync::Arc::new(wt),
            Err(err) => {
                tracing::debug!(%peer, %err, "webtransport session refused");
                return Err(NoStream::Ended);
            }
        };
        let session_id = wt.session_id();
        let datagrams_in = wt.datagram_reader();
        let datagrams_out = wt.datagram_sender();
        let (stream_tx, stream_rx) = oneshot::channel();
        let acceptor = AbortOnDropHandle::new(tokio::spawn(accept_streams(
            wt, session_id, stream_tx, http, peer,
        )));
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return Err(NoStream::Draining),
            stream = tokio::time::timeout(hello_timeout, stream_rx) => match stream {
                Ok(Ok(stream)) => stream,
                Ok(Err(_)) => return Err(NoStream::Ended),
                Err(_) => return Err(NoStream::TimedOut),
            },
        };
        let (send, recv) = stream.split();
        let datagrams_reach = SessionId::try_from(0).ok() == Some(session_id);
        Ok(WtSession {
            quic,
            session_id,
            send,
            recv,
            datagrams_in,
            datagrams_out,
            datagrams_reach,
            _acceptor: acceptor,
        })
    }
}

impl Pipe for WtSession {
    /// The next stream chunk or datagram of this session. Cancel-safe: both sources keep their
    /// state between polls, so it can race deadlines in `select!`.
    async fn read(&mut self) -> Inbound {
        loop {
            tokio::select! {
                data = poll_fn(|cx| self.recv.poll_data(cx)) => return match data {
                    Ok(Some(bytes)) => Inbound::Stream(bytes),
                    Ok(None) => Inbound::Finished,
                    Err(err) => {
                        tracing::debug!(peer = %self.quic.remote_address(), %err, "webtransport stream ended");
                        Inbound::Failed
                    }
                },
                datagram = self.datagrams_in.read_datagram() => match datagram {
                    Ok(datagram) if SessionId::from(datagram.stream_id()) == self.session_id => {
                        return Inbound::Datagram(datagram.into_payload());
                    }
                    // Another session's datagram: with one session per connection, a stray.
                    Ok(_) => tracing::debug!("datagram for another webtransport session dropped"),
                    // Only a lost connection fails a datagram read; the stream ends with it.
                    Err(err) => {
                        tracing::debug!(peer = %self.quic.remote_address(), %err, "webtransport datagrams ended");
                        return Inbound::Failed;
                    }
                },
            }
        }
    }

    /// Writes bytes to the session's stream.
    async fn write(&mut self, mut bytes: Bytes) -> bool {
        while bytes.has_remaining() {
            if poll_fn(|cx| self.send.poll_send(cx, &mut bytes))
                .await
                .is_err()
            {
                return false;
            }
        }
        true
    }

    /// Sends an ephemeral frame as one datagram. `false` when it must go on the stream instead:
    /// it is not ephemeral, or does not fit in a datagram, or the client takes none (or our
    /// datagrams would not reach it, see `datagrams_reach`).
    fn datagram(&mut self, frame: &ServerFrame, max_frame: usize) -> bool {
        if !self.datagrams_reach {
            return false;
        }
        let Ok(payload) = haberci_wire::datagram::encode(frame, max_frame) else {
            return false;
        };
        match self.datagrams_out.send_datagram(payload) {
            Ok(()) => true,
            Err(SendDatagramError::TooLarge { .. } | SendDatagramError::NotAvailable { .. }) => {
                false
            }
            // The connection is gone; the reader notices. An ephemeral frame may be lost.
            Err(_) => true,
        }
    }

    /// Finishes the stream, gives the last frames a few round trips to arrive, then closes the
    /// QUIC connection with `code`'s QUIC code (h3-webtransport 0.1.2 cannot send
    /// `CLOSE_WEBTRANSPORT_SESSION`).
    async fn close(mut self, code: ErrorCode) {
        let _ = poll_fn(|cx| self.send.poll_finish(cx)).await;
        let linger = (self.quic.rtt() * CLOSE_LINGER_RTTS).clamp(MIN_CLOSE_LINGER, CLOSE_LINGER);
        // Ends early if the client closes first (it read the Closing frame).
        let _ = tokio::time::timeout(linger, self.quic.closed()).await;
        close(&self.quic, code);
    }

    fn finished(&mut self) {
        self.quic.close(VarInt::from_u32(0), b"");
    }

    fn peer(&self) -> SocketAddr {
        self.quic.remote_address()
    }
}

/// Accepts the session's stream (handed over through `first`), keeps serving HTTP/3 requests
/// on the connection, and drops streams a client must not open (a second bidi stream).
async fn accept_streams(
    wt: std::sync::Arc<Wt>,
    session_id: SessionId,
    first: oneshot::Sender<h3_webtransport::stream::BidiStream<h3_quinn::BidiStream<Bytes>, Bytes>>,
    http: Http,
    peer: SocketAddr,
) {
    let mut first = Some(first);
    loop {
        match wt.accept_bi().await {
            Ok(Some(AcceptedBi::BidiStream(id, stream))) => match first.take() {
                Some(first) if id == session_id => {
                    let _ = first.send(stream);
                }
                other => {
                    first = other;
                    tracing::debug!(%peer, "extra webtransport stream dropped");
                }
            },
            Ok(Some(AcceptedBi::Request(request, stream))) => {
                let http = http.clone();
                http.requests.clone().spawn(async move {
                    super::serve_request(request, stream, http, peer, None).await;
                });
            }
            Ok(None) => return,
            Err(err) => {
                tracing::debug!(%peer, %err, "webtransport connection ended");
                return;
            }
        }
    }
}

/// Serves one WebTransport session on a connection whose h3 layer it takes over.
pub async fn serve_session(
    quic: quinn::Connection,
    h3: H3Connection,
    request: http::Request<()>,
    stream: H3RequestStream,
    http: Http,
    realtime: Realtime,
    shutdown: Shutdown,
) {
    let accepted = WtSession::accept(
        quic.clone(),
        h3,
        request,
        stream,
        http,
        realtime.session.hello_timeout,
        &shutdown,
    )
    .await;
    let wt = match accepted {
        Ok(wt) => wt,
        Err(NoStream::Ended) => return,
        Err(NoStream::TimedOut) => return close(&quic, ErrorCode::IdleTimeout),
        Err(NoStream::Draining) => return close(&quic, ErrorCode::ServerDraining),
    };
    let max_frame = realtime.session.max_frame_size as usize;
    drive(
        StreamLink::new(wt, max_frame),
        Transport::WebTransport,
        realtime,
        shutdown,
    )
    .await;
}

fn close(connection: &quinn::Connection, code: ErrorCode) {
    let code_var = VarInt::from_u64(code.quic_code()).unwrap_or(VarInt::from_u32(0));
    connection.close(code_var, code.name().as_bytes());
}
