//! The link native QUIC and WebTransport share: one client-opened bidirectional stream of
//! varint length-delimited frames, and datagrams (one frame body each) for ephemeral frames —
//! typing in, typing and presence out (on the stream when a datagram cannot carry them).
//! Each transport brings a [`Pipe`] (bytes and datagrams); [`StreamLink`] does the framing.

use std::future::Future;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use haberci_wire::{ClientFrame, ErrorCode, Frame, FrameDecoder, ServerFrame, WireError};

use super::drive::Link;

/// What woke a [`Pipe`] reader.
pub enum Inbound {
    /// Bytes from the stream, split anywhere.
    Stream(Bytes),
    /// One datagram's payload.
    Datagram(Bytes),
    /// The client finished its stream: a clean goodbye.
    Finished,
    /// The stream or the connection failed; nothing more will arrive.
    Failed,
}

/// A transport's stream and datagrams, as bytes.
pub trait Pipe: Send {
    /// The next stream chunk or datagram. Must be cancel-safe: the driver races it.
    fn read(&mut self) -> impl Future<Output = Inbound> + Send;
    /// Writes bytes to the stream; `false` when the client is gone.
    fn write(&mut self, bytes: Bytes) -> impl Future<Output = bool> + Send;
    /// Sends an ephemeral frame as one datagram; `false` when it must go on the stream (it
    /// does not fit, or the client takes no datagrams).
    fn datagram(&mut self, frame: &ServerFrame, max_frame: usize) -> bool;
    /// The client finished its stream: end the connection cleanly (code 0).
    fn finished(&mut self);
    /// Ends the connection with `code`, after giving the frames written a chance to arrive.
    fn close(self, code: ErrorCode) -> impl Future<Output = ()> + Send;
    fn peer(&self) -> SocketAddr;
}

/// Frames over a [`Pipe`].
pub struct StreamLink<P> {
    pipe: P,
    decoder: FrameDecoder,
    /// Stream bytes read but not decoded yet.
    buffered: Bytes,
    /// The stream is out of sync after a framing error: nothing more is decoded from it.
    broken: bool,
    /// A frame came on the stream (the first one is `Hello`).
    hello_seen: bool,
    max_frame: usize,
    outbound: BytesMut,
}

impl<P: Pipe> StreamLink<P> {
    pub fn new(pipe: P, max_frame: usize) -> StreamLink<P> {
        StreamLink {
            pipe,
            decoder: FrameDecoder::new(max_frame),
            buffered: Bytes::new(),
            broken: false,
            hello_seen: false,
            max_frame,
            outbound: BytesMut::new(),
        }
    }
}

impl<P: Pipe> Link for StreamLink<P> {
    async fn recv(&mut self) -> Option<Result<ClientFrame, WireError>> {
        loop {
            if !self.broken {
                match self.decoder.decode(&mut self.buffered) {
                    Ok(Some(body)) => {
                        self.hello_seen = true;
                        return Some(ClientFrame::decode(body));
                    }
                    Ok(None) => {}
                    Err(err) => {
                        self.broken = true;
                        return Some(Err(err));
                    }
                }
            }
            match self.pipe.read().await {
                Inbound::Stream(bytes) => self.buffered = bytes,
                Inbound::Datagram(payload) => {
                    // Datagrams may overtake the stream, so one can arrive before Hello: it is
                    // ephemeral, so it is dropped rather than taken as "a frame before Hello".
                    if !self.hello_seen {
                        tracing::debug!(peer = %self.pipe.peer(), "datagram before Hello dropped");
                        continue;
                    }
                    let frame =
                        haberci_wire::datagram::decode::<ClientFrame>(payload, self.max_frame);
                    if let Err(err) = &frame {
                        // docs/PROTOCOL.md: a datagram that is not an ephemeral frame is bad_frame.
                        tracing::debug!(peer = %self.pipe.peer(), %err, "bad datagram");
                    }
                    return Some(frame);
                }
                Inbound::Finished => {
                    // A stream that ends inside a frame is truncated: bad_frame, not a
                    // goodbye. (After a framing error the session is closing already.)
                    if !self.broken
                        && let Err(err) = self.decoder.finish()
                    {
                        self.broken = true;
                        return Some(Err(err));
                    }
                    self.pipe.finished();
                    return None;
                }
                Inbound::Failed => return None,
            }
        }
    }

    async fn send(&mut self, frames: &[ServerFrame]) -> bool {
        for frame in frames {
            if !(frame.may_travel_as_datagram() && self.pipe.datagram(frame, self.max_frame)) {
                if let Err(err) =
                    haberci_wire::encode_delimited(frame, self.max_frame, &mut self.outbound)
                {
                    // Our own frames always fit; a failure here is a bug, not the peer's doing.
                    tracing::error!(%err, kind = frame.kind(), "cannot encode a server frame");
                }
            }
        }
        if self.outbound.is_empty() {
            return true;
        }
        self.pipe.write(self.outbound.split().freeze()).await
    }

    async fn close(self, code: ErrorCode) {
        self.pipe.close(code).await;
    }
}
