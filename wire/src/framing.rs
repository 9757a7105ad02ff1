//! Turning bytes into frame bodies and frames into bytes, for every transport.
//!
//! - **Streams** (QUIC, WebTransport): each frame is a protobuf varint length prefix followed
//!   by that many bytes of body (prost's `encode_length_delimited` form).
//!   [`FrameDecoder`] splits a stream incrementally; [`encode_delimited`] writes a frame.
//! - **WebSocket**: one frame body per binary message, no prefix ([`websocket`]).
//! - **Datagrams** (QUIC, WebTransport): one frame body per datagram, no prefix, and only
//!   for frames whose `may_travel_as_datagram()` is true ([`datagram`]).
//!
//! The max frame size bounds the body (the prefix is not counted).

use bytes::{Buf, Bytes, BytesMut};
use prost::Message as _;

use crate::error::WireError;
use crate::frames::{ClientFrame, ServerFrame};
use crate::proto;

/// Default max frame size (body bytes): 64 KiB. The server announces its own in `Welcome`.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 64 * 1024;

/// A varint is at most 10 bytes for a u64.
const MAX_VARINT_LEN: usize = 10;

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::frames::ClientFrame {}
    impl Sealed for crate::frames::ServerFrame {}
}

/// A frame of either direction: [`ClientFrame`] or [`ServerFrame`]. Lets the codec functions
/// be written once.
pub trait Frame: sealed::Sealed + Sized + Clone {
    #[doc(hidden)]
    type Proto: prost::Message + Default + From<Self> + TryInto<Self, Error = WireError>;

    /// Decodes one frame body (no length prefix) and checks every field.
    fn decode(body: Bytes) -> Result<Self, WireError> {
        if body.is_empty() {
            return Err(WireError::EmptyFrame);
        }
        Self::Proto::decode(body)?.try_into()
    }

    /// The frame kind's name, for logs and errors.
    fn kind_name(&self) -> &'static str;

    /// Whether this frame may travel as a datagram (ephemeral frames only).
    fn datagram_ok(&self) -> bool;
}

impl Frame for ClientFrame {
    type Proto = proto::ClientFrame;
    fn kind_name(&self) -> &'static str {
        self.kind()
    }
    fn datagram_ok(&self) -> bool {
        self.may_travel_as_datagram()
    }
}

impl Frame for ServerFrame {
    type Proto = proto::ServerFrame;
    fn kind_name(&self) -> &'static str {
        self.kind()
    }
    fn datagram_ok(&self) -> bool {
        self.may_travel_as_datagram()
    }
}

fn checked_len(len: usize, max_frame_size: usize) -> Result<(), WireError> {
    if len > max_frame_size {
        return Err(WireError::FrameTooLarge {
            declared: len as u64,
            max: max_frame_size,
        });
    }
    Ok(())
}

/// Appends `frame` to `dst` as a length-delimited frame (for QUIC / WebTransport streams).
///
/// Fails with [`WireError::FrameTooLarge`] (writing nothing) if the body would exceed
/// `max_frame_size`, the limit the peer announced.
pub fn encode_delimited<F: Frame>(
    frame: &F,
    max_frame_size: usize,
    dst: &mut BytesMut,
) -> Result<(), WireError> {
    let proto = F::Proto::from(frame.clone());
    let len = proto.encoded_len();
    checked_len(len, max_frame_size)?;
    dst.reserve(prost::length_delimiter_len(len) + len);
    prost::encoding::encode_varint(len as u64, dst);
    proto.encode_raw(dst);
    Ok(())
}

/// Appends `frame`'s body to `dst` without a length prefix (a WebSocket message or a
/// datagram is the frame boundary). Fails with [`WireError::FrameTooLarge`] as
/// [`encode_delimited`] does.
pub fn encode_body<F: Frame>(
    frame: &F,
    max_frame_size: usize,
    dst: &mut BytesMut,
) -> Result<(), WireError> {
    let proto = F::Proto::from(frame.clone());
    let len = proto.encoded_len();
    checked_len(len, max_frame_size)?;
    dst.reserve(len);
    proto.encode_raw(dst);
    Ok(())
}

/// Splits a byte stream into frame bodies.
///
/// Feed it the stream's chunks in order with [`FrameDecoder::decode`]; it accepts any split
/// (a prefix or body cut anywhere, many frames in one chunk).
///
/// Invariants:
/// - It buffers at most one partial frame: at most 10 prefix bytes, then at most the
///   declared body length, which was checked against the max frame size *before* any body
///   byte is buffered. Buffer memory grows with bytes actually received, never up front
///   from the declared length.
/// - A frame lying whole inside one chunk is returned as a zero-copy slice of that chunk.
/// - After an error the stream is out of sync; every later call returns the same error.
#[derive(Debug)]
pub struct FrameDecoder {
    max_frame_size: usize,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Reading the varint prefix; `prefix[..len]` holds the bytes read so far.
    Prefix {
        prefix: [u8; MAX_VARINT_LEN],
        len: usize,
    },
    /// Reading a body of `len` bytes; `buf` holds those received so far.
    Body {
        len: usize,
        buf: BytesMut,
    },
    Failed(WireError),
}

const EMPTY_PREFIX: State = State::Prefix {
    prefix: [0; MAX_VARINT_LEN],
    len: 0,
};

enum FastPath {
    Frame(Bytes),
    NeedBody,
    IncompletePrefix,
}

/// Outcome of reading one prefix byte.
enum Varint {
    More,
    Done(u64),
}

/// Adds `byte` as the `index`-th (0-based) byte of a varint accumulated in `value`.
fn varint_step(value: &mut u64, index: usize, byte: u8) -> Result<Varint, WireError> {
    // The 10th byte may only carry the u64's top bit: anything more overflows.
    if index == MAX_VARINT_LEN - 1 && byte > 1 {
        return Err(WireError::MalformedLength);
    }
    *value |= u64::from(byte & 0x7f) << (7 * index);
    if byte & 0x80 == 0 {
        Ok(Varint::Done(*value))
    } else {
        Ok(Varint::More)
    }
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_SIZE)
    }
}

impl FrameDecoder {
    /// A decoder refusing bodies longer than `max_frame_size` bytes.
    pub fn new(max_frame_size: usize) -> Self {
        FrameDecoder {
            max_frame_size,
            state: EMPTY_PREFIX,
        }
    }

    pub fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }

    /// Bytes held for the partial frame in progress.
    pub fn buffered(&self) -> usize {
        match &self.state {
            State::Prefix { len, .. } => *len,
            State::Body { buf, .. } => buf.len(),
            State::Failed(_) => 0,
        }
    }

    /// Takes bytes from the front of `src` until a whole frame body is available, and
    /// returns it. `Ok(None)` means `src` is used up (it is then empty) and the decoder
    /// needs more bytes. Call in a loop until `Ok(None)`:
    ///
    /// ```
    /// # use haberci_wire::{FrameDecoder, WireError};
    /// # fn on_chunk(decoder: &mut FrameDecoder, mut chunk: bytes::Bytes) -> Result<(), WireError> {
    /// while let Some(body) = decoder.decode(&mut chunk)? {
    ///     // ClientFrame::decode(body) …
    /// #   let _ = body;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn decode(&mut self, src: &mut Bytes) -> Result<Option<Bytes>, WireError> {
        loop {
            match &mut self.state {
                State::Failed(e) => return Err(e.clone()),
                State::Prefix { len, .. } => {
                    if src.is_empty() {
                        return Ok(None);
                    }
                    if *len == 0 {
                        match self.fast_path(src)? {
                            FastPath::Frame(body) => return Ok(Some(body)),
                            FastPath::NeedBody => continue,
                            FastPath::IncompletePrefix => {}
                        }
                    }
                    if !self.read_prefix(src)? {
                        return Ok(None);
                    }
                }
                State::Body { len, buf } => {
                    let take = (*len - buf.len()).min(src.len());
                    buf.extend_from_slice(&src[..take]);
                    src.advance(take);
                    if buf.len() < *len {
                        return Ok(None);
                    }
                    let body = std::mem::take(buf).freeze();
                    self.state = EMPTY_PREFIX;
                    return Ok(Some(body));
                }
            }
        }
    }

    /// Reads a whole prefix from the front of `src` if it is there, and the body too if it
    /// is there (a zero-copy slice). Leaves `src` untouched when the prefix is incomplete.
    fn fast_path(&mut self, src: &mut Bytes) -> Result<FastPath, WireError> {
        let mut value = 0;
        for (i, &b) in src.iter().take(MAX_VARINT_LEN).enumerate() {
            match varint_step(&mut value, i, b) {
                Ok(Varint::More) => {}
                Err(e) => return Err(self.fail(e)),
                Ok(Varint::Done(declared)) => {
                    let body_len = self.check_declared(declared)?;
                    src.advance(i + 1);
                    if src.len() >= body_len {
                        return Ok(FastPath::Frame(src.split_to(body_len)));
                    }
                    self.state = State::Body {
                        len: body_len,
                        buf: BytesMut::new(),
                    };
                    return Ok(FastPath::NeedBody);
                }
            }
        }
        Ok(FastPath::IncompletePrefix)
    }

    /// Slow path, for a prefix split across chunks: takes prefix bytes one at a time.
    /// Returns whether the prefix is complete (the decoder then expects the body).
    fn read_prefix(&mut self, src: &mut Bytes) -> Result<bool, WireError> {
        let State::Prefix { prefix, len } = &mut self.state else {
            return Ok(true);
        };
        let mut value = 0;
        for (i, &b) in prefix[..*len].iter().enumerate() {
            // These bytes were accepted before, so this cannot fail.
            let _ = varint_step(&mut value, i, b);
        }
        let declared = loop {
            if !src.has_remaining() {
                return Ok(false);
            }
            let byte = src.get_u8();
            prefix[*len] = byte;
            match varint_step(&mut value, *len, byte) {
                Ok(Varint::Done(v)) => break v,
                Ok(Varint::More) => *len += 1,
                Err(e) => return Err(self.fail(e)),
            }
        };
        let body_len = self.check_declared(declared)?;
        self.state = State::Body {
            len: body_len,
            buf: BytesMut::new(),
        };
        Ok(true)
    }

    /// Checks a declared length against the limits before any body byte is buffered.
    fn check_declared(&mut self, declared: u64) -> Result<usize, WireError> {
        if declared == 0 {
            return Err(self.fail(WireError::EmptyFrame));
        }
        match usize::try_from(declared) {
            Ok(len) if len <= self.max_frame_size => Ok(len),
            _ => Err(self.fail(WireError::FrameTooLarge {
                declared,
                max: self.max_frame_size,
            })),
        }
    }

    fn fail(&mut self, e: WireError) -> WireError {
        self.state = State::Failed(e.clone());
        e
    }

    /// Call when the stream ends: an error if it ended inside a frame (or the decoder
    /// had already failed).
    pub fn finish(&self) -> Result<(), WireError> {
        match &self.state {
            State::Failed(e) => Err(e.clone()),
            State::Prefix { len: 0, .. } => Ok(()),
            _ => Err(WireError::Truncated {
                buffered: self.buffered(),
            }),
        }
    }
}

/// Decodes a whole buffer of length-delimited frames (e.g. a golden vector or a test
/// stream), checking each body. The stream must end on a frame boundary.
pub fn decode_stream<F: Frame>(bytes: Bytes, max_frame_size: usize) -> Result<Vec<F>, WireError> {
    let mut decoder = FrameDecoder::new(max_frame_size);
    let mut src = bytes;
    let mut frames = Vec::new();
    while let Some(body) = decoder.decode(&mut src)? {
        frames.push(F::decode(body)?);
    }
    decoder.finish()?;
    Ok(frames)
}

/// WebSocket: one frame body per binary message, no length prefix.
pub mod websocket {
    use super::*;

    /// The kind of a WebSocket data message (control frames never reach this layer).
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub enum MessageType {
        Binary,
        /// Refused with `text_message_refused`.
        Text,
    }

    /// Decodes one WebSocket data message into a frame.
    pub fn decode<F: Frame>(
        kind: MessageType,
        payload: Bytes,
        max_frame_size: usize,
    ) -> Result<F, WireError> {
        if kind == MessageType::Text {
            return Err(WireError::TextMessage);
        }
        checked_len(payload.len(), max_frame_size)?;
        F::decode(payload)
    }

    /// Encodes a frame as the payload of one binary message.
    pub fn encode<F: Frame>(frame: &F, max_frame_size: usize) -> Result<Bytes, WireError> {
        let mut dst = BytesMut::new();
        encode_body(frame, max_frame_size, &mut dst)?;
        Ok(dst.freeze())
    }
}

/// QUIC / WebTransport datagrams: one frame body per datagram, ephemeral frames only.
pub mod datagram {
    use super::*;

    /// Decodes one datagram. A frame kind that must arrive reliably is refused
    /// ([`WireError::NotDatagram`]): accepting it would teach peers a habit that loses data.
    pub fn decode<F: Frame>(payload: Bytes, max_frame_size: usize) -> Result<F, WireError> {
        checked_len(payload.len(), max_frame_size)?;
        let frame = F::decode(payload)?;
        if !frame.datagram_ok() {
            return Err(WireError::NotDatagram {
                kind: frame.kind_name(),
            });
        }
        Ok(frame)
    }

    /// Encodes an ephemeral frame as one datagram payload; refuses any other kind. The
    /// caller still checks the path's max datagram size (about 1,200 bytes) and drops the
    /// frame if it does not fit: ephemeral frames may be lost.
    pub fn encode<F: Frame>(frame: &F, max_frame_size: usize) -> Result<Bytes, WireError> {
        if !frame.datagram_ok() {
            return Err(WireError::NotDatagram {
                kind: frame.kind_name(),
            });
        }
        let mut dst = BytesMut::new();
        encode_body(frame, max_frame_size, &mut dst)?;
        Ok(dst.freeze())
    }
}
