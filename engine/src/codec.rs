//! Wire framing: Wallaroo's 4-byte big-endian length header followed by the payload.
//!
//! Decoding never copies a payload. A [`ReadBuf`] owns one connection's bytes; [`FrameDecoder`]
//! walks the complete frames inside it and hands out slices that point straight into that buffer.
//! Only a trailing partial frame is moved, to the front of the buffer, so that the next read can
//! complete it. Whatever the split of the byte stream into reads, the frames are the same.
//!
//! Every walk over framed bytes (a read buffer, a provided buffer, a memory or file source, a
//! file's range) goes through one iterator, [`frames`] / [`FrameDecoder::frames`].

use std::fmt;

/// Bytes in a frame header: a big-endian `u32` payload length.
pub const HEADER_LEN: usize = 4;

/// The default largest payload a source accepts: 1 MiB, as in the word-count spec.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

/// A frame header announced a payload larger than the configured maximum.
///
/// The stream cannot be resynchronised after this (the length is the only framing), so the
/// connection that sent it must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameTooLarge {
    /// The payload length the header announced.
    pub len: usize,
    /// The configured maximum.
    pub max: usize,
}

impl fmt::Display for FrameTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "frame header announces {} bytes, above the maximum frame size of {} bytes \
             (raise the maximum if such frames are legitimate)",
            self.len, self.max
        )
    }
}

impl std::error::Error for FrameTooLarge {}

/// Splits a byte stream into frames, enforcing a maximum payload size.
///
/// ```
/// use bettong_engine::codec::{FrameDecoder, encode_frame};
/// let mut wire = Vec::new();
/// encode_frame(b"hello world", &mut wire);
/// encode_frame(b"", &mut wire);
/// let dec = FrameDecoder::new(1024);
/// let (first, used) = dec.decode(&wire).unwrap().unwrap();
/// assert_eq!(first, b"hello world");
/// let (second, _) = dec.decode(&wire[used..]).unwrap().unwrap();
/// assert_eq!(second, b"");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    max_frame: usize,
}

impl FrameDecoder {
    /// A decoder that rejects payloads longer than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        FrameDecoder { max_frame }
    }

    /// The largest payload this decoder accepts.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Decodes the frame at the start of `buf`.
    ///
    /// Returns the payload and the number of bytes it occupied (header included), `Ok(None)` if
    /// `buf` holds only part of a frame, or an error if the header announces an oversized frame.
    #[inline]
    pub fn decode<'a>(&self, buf: &'a [u8]) -> Result<Option<(&'a [u8], usize)>, FrameTooLarge> {
        let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*header) as usize;
        if len > self.max_frame {
            return Err(FrameTooLarge {
                len,
                max: self.max_frame,
            });
        }
        let end = HEADER_LEN + len;
        Ok(buf.get(HEADER_LEN..end).map(|payload| (payload, end)))
    }

    /// The total size (header included) of the frame starting at `buf`, when its header is
    /// complete. Used to grow a read buffer for a frame larger than it.
    pub fn frame_size(&self, buf: &[u8]) -> Option<usize> {
        frame_size(buf)
    }

    /// The frames of `buf`, in order, under this decoder's maximum: see [`Frames`].
    pub fn frames<'a>(&self, buf: &'a [u8]) -> Frames<'a> {
        Frames {
            buf,
            pos: 0,
            decoder: *self,
            done: false,
        }
    }
}

/// The total size (header included) of the frame starting at `buf`, when its header is complete.
/// This and [`FrameDecoder::decode`] are the only places that read a frame header.
#[inline]
pub fn frame_size(buf: &[u8]) -> Option<usize> {
    buf.first_chunk::<HEADER_LEN>()
        .map(|h| HEADER_LEN + u32::from_be_bytes(*h) as usize)
}

/// The frames of a framed buffer, of any size a `u32` length allows: see [`Frames`].
///
/// ```
/// use bettong_engine::codec::{encode_frame, frames, FrameError};
/// let mut wire = Vec::new();
/// encode_frame(b"a b", &mut wire);
/// encode_frame(b"c", &mut wire);
/// wire.extend_from_slice(&[0, 0, 0, 9, b'x']);
/// let mut it = frames(&wire);
/// assert_eq!(it.next().unwrap().unwrap().payload, b"a b");
/// assert_eq!(it.next().unwrap().unwrap().end(), 12);
/// assert_eq!(it.next(), Some(Err(FrameError::Truncated { offset: 12, size: Some(13) })));
/// assert_eq!(it.next(), None);
/// ```
pub fn frames(buf: &[u8]) -> Frames<'_> {
    FrameDecoder::new(u32::MAX as usize).frames(buf)
}

/// The payloads of the whole frames at the start of `buf`, in order, stopping at the first
/// frame that is not whole (a truncated tail is left out): for buffers made of whole frames by
/// this engine's own peers, such as an offload helper's answer.
///
/// ```
/// use bettong_engine::codec::{encode_frame, payloads};
/// let mut wire = Vec::new();
/// encode_frame(b"ab", &mut wire);
/// encode_frame(b"", &mut wire);
/// encode_frame(b"xyz", &mut wire);
/// wire.extend_from_slice(&[0, 0, 0, 9, 1]);
/// assert_eq!(payloads(&wire).collect::<Vec<_>>(), [&b"ab"[..], b"", b"xyz"]);
/// ```
pub fn payloads(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    frames(buf).map_while(Result::ok).map(|f| f.payload)
}

/// One whole frame found by [`Frames`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The payload, a slice of the walked buffer.
    pub payload: &'a [u8],
    /// Where the frame (its header) starts in the walked buffer.
    pub offset: usize,
}

impl Frame<'_> {
    /// Where the frame ends in the walked buffer: the offset of the next one.
    pub fn end(&self) -> usize {
        self.offset + HEADER_LEN + self.payload.len()
    }
}

/// Why [`Frames`] stopped before the end of its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The buffer ends inside the frame starting at `offset`; `size` is that frame's whole size
    /// (header included) once its header is complete.
    Truncated {
        /// Where the partial frame starts.
        offset: usize,
        /// Its whole size, when its header is complete.
        size: Option<usize>,
    },
    /// The header at `offset` announces a payload above the decoder's maximum.
    TooLarge {
        /// Where that header starts.
        offset: usize,
        /// What it announced, and the maximum.
        error: FrameTooLarge,
    },
}

/// Walks a buffer's frames in order, without copying: every whole frame as `Ok`, then, if the
/// buffer does not end on a frame boundary, one `Err` saying why, and nothing after that.
/// [`Frames::offset`] is always where the next frame would start.
#[derive(Debug, Clone)]
pub struct Frames<'a> {
    buf: &'a [u8],
    pos: usize,
    decoder: FrameDecoder,
    done: bool,
}

impl Frames<'_> {
    /// Where the next frame starts: the end of the whole frames walked so far.
    pub fn offset(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, FrameError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos == self.buf.len() {
            return None;
        }
        let rest = &self.buf[self.pos..];
        let offset = self.pos;
        match self.decoder.decode(rest) {
            Ok(Some((payload, used))) => {
                self.pos += used;
                Some(Ok(Frame { payload, offset }))
            }
            Ok(None) => {
                self.done = true;
                Some(Err(FrameError::Truncated {
                    offset,
                    size: frame_size(rest),
                }))
            }
            Err(error) => {
                self.done = true;
                Some(Err(FrameError::TooLarge { offset, error }))
            }
        }
    }
}

/// Appends one frame (header and payload) to `out`.
///
/// # Panics
/// If the payload is longer than `u32::MAX` bytes, which no frame can carry.
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).expect("a frame payload must fit in a u32 length");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
}

/// One connection's read buffer: bytes are read into the spare tail and decoded in place.
///
/// ```
/// use bettong_engine::codec::{FrameDecoder, ReadBuf, encode_frame};
/// let mut wire = Vec::new();
/// encode_frame(b"a b", &mut wire);
/// encode_frame(b"c", &mut wire);
/// let mut rb = ReadBuf::with_capacity(16);
/// let dec = FrameDecoder::new(1024);
/// let mut frames = Vec::new();
/// // Feed the stream one byte at a time: the frames come out the same.
/// for byte in &wire {
///     rb.spare(&dec)[0] = *byte;
///     rb.filled_by(1);
///     rb.drain_frames(&dec, |f| frames.push(f.to_vec())).unwrap();
/// }
/// assert_eq!(frames, vec![b"a b".to_vec(), b"c".to_vec()]);
/// ```
#[derive(Debug)]
pub struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    base_capacity: usize,
}

impl ReadBuf {
    /// A buffer of `capacity` bytes (it grows only to hold a single frame larger than that, and
    /// then only as that frame's bytes arrive).
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(HEADER_LEN * 2);
        ReadBuf {
            buf: vec![0; capacity],
            start: 0,
            end: 0,
            base_capacity: capacity,
        }
    }

    /// Bytes received but not yet consumed as whole frames (a partial frame, if any).
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// The free space to read into. It is never empty: a partial frame is moved to the front,
    /// and the buffer grows when a single frame (at most the decoder's maximum) needs more room.
    pub fn spare(&mut self, decoder: &FrameDecoder) -> &mut [u8] {
        let room = self.buf.len() - self.end;
        let shrink = self.start == self.end && self.buf.len() > self.base_capacity;
        if room < (self.base_capacity / 4).max(1) || shrink {
            self.compact(decoder);
        }
        &mut self.buf[self.end..]
    }

    /// Marks `n` bytes of the spare space as filled by a read.
    pub fn filled_by(&mut self, n: usize) {
        debug_assert!(self.end + n <= self.buf.len());
        self.end += n;
    }

    /// Calls `on_frame` for every complete frame, in order, and consumes them.
    ///
    /// Returns the number of frames seen. On an oversized header the frames before it have
    /// already been delivered and the error is returned; the connection must then be closed.
    pub fn drain_frames(
        &mut self,
        decoder: &FrameDecoder,
        mut on_frame: impl FnMut(&[u8]),
    ) -> Result<usize, FrameTooLarge> {
        let mut count = 0;
        let mut walk = decoder.frames(&self.buf[self.start..self.end]);
        let result = loop {
            match walk.next() {
                Some(Ok(frame)) => {
                    on_frame(frame.payload);
                    count += 1;
                }
                None | Some(Err(FrameError::Truncated { .. })) => break Ok(count),
                Some(Err(FrameError::TooLarge { error, .. })) => break Err(error),
            }
        };
        self.start += walk.offset();
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        result
    }

    fn compact(&mut self, decoder: &FrameDecoder) {
        let pending = self.end - self.start;
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.start = 0;
            self.end = pending;
        }
        // A frame bigger than the buffer grows it, geometrically as its bytes arrive (never
        // past that frame's size, and so never past the maximum frame size, since an oversized
        // header is rejected before we get here): a header alone reserves nothing, so a client
        // announcing a large frame and sending little of it holds little memory. A partial frame
        // is always shorter than its full size, so some room is always left.
        let need = decoder
            .frame_size(self.pending())
            .unwrap_or(0)
            .max(self.base_capacity);
        let room = self.buf.len() - self.end;
        if need > self.buf.len() && room < (self.base_capacity / 4).max(1) {
            let grown = self.buf.len().saturating_mul(2).max(self.base_capacity);
            self.buf.resize(grown.min(need), 0);
        } else if pending == 0 && self.buf.len() > self.base_capacity {
            // Give the memory back once a large frame has gone through.
            self.buf.truncate(self.base_capacity);
            self.buf.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_header_is_rejected_before_payload_arrives() {
        let dec = FrameDecoder::new(10);
        let wire = 11u32.to_be_bytes();
        assert_eq!(dec.decode(&wire), Err(FrameTooLarge { len: 11, max: 10 }));
    }

    #[test]
    fn frame_at_exact_maximum_is_accepted() {
        let dec = FrameDecoder::new(3);
        let mut wire = Vec::new();
        encode_frame(b"abc", &mut wire);
        assert_eq!(dec.decode(&wire).unwrap(), Some((&b"abc"[..], 7)));
    }

    #[test]
    fn frames_walks_whole_frames_then_says_once_why_it_stopped() {
        let mut wire = Vec::new();
        encode_frame(b"ok", &mut wire);
        encode_frame(b"", &mut wire);
        wire.extend_from_slice(&11u32.to_be_bytes());
        let dec = FrameDecoder::new(10);
        let mut walk = dec.frames(&wire);
        let got: Vec<_> = walk.by_ref().collect();
        let too_large = FrameTooLarge { len: 11, max: 10 };
        assert_eq!(
            got,
            vec![
                Ok(Frame {
                    payload: b"ok",
                    offset: 0
                }),
                Ok(Frame {
                    payload: b"",
                    offset: 6
                }),
                Err(FrameError::TooLarge {
                    offset: 10,
                    error: too_large
                }),
            ]
        );
        assert_eq!(walk.offset(), 10);
        assert_eq!(walk.next(), None);
        let mut walk = frames(&wire[..3]);
        let truncated = FrameError::Truncated {
            offset: 0,
            size: None,
        };
        assert_eq!(walk.next(), Some(Err(truncated)));
        assert_eq!((walk.next(), walk.offset()), (None, 0));
        assert_eq!(frames(&[]).next(), None);
        assert_eq!(frames(&wire).filter(Result::is_ok).count(), 2);
    }

    #[test]
    fn large_frame_grows_the_buffer_then_shrinks_back() {
        let dec = FrameDecoder::new(1 << 16);
        let payload = vec![b'x'; 5000];
        let mut wire = Vec::new();
        encode_frame(&payload, &mut wire);
        let mut rb = ReadBuf::with_capacity(64);
        let mut got = Vec::new();
        let mut fed = 0;
        while fed < wire.len() {
            let spare = rb.spare(&dec);
            let n = spare.len().min(wire.len() - fed).min(100);
            spare[..n].copy_from_slice(&wire[fed..fed + n]);
            rb.filled_by(n);
            fed += n;
            rb.drain_frames(&dec, |f| got.push(f.len())).unwrap();
        }
        assert_eq!(got, vec![5000]);
        let _ = rb.spare(&dec);
        assert_eq!(rb.buf.len(), 64);
    }

    /// A header announcing a large frame reserves nothing: the buffer grows (at most doubling)
    /// only as the frame's bytes arrive, and never past the frame.
    #[test]
    fn buffer_grows_with_the_bytes_received_not_the_announced_size() {
        let dec = FrameDecoder::new(1 << 20);
        let payload = vec![b'x'; 1 << 20];
        let mut wire = Vec::new();
        encode_frame(&payload, &mut wire);
        let mut rb = ReadBuf::with_capacity(1024);
        let mut fed = 0;
        let mut got = 0;
        while fed < wire.len() {
            let spare = rb.spare(&dec);
            let n = spare.len().min(wire.len() - fed).min(300);
            spare[..n].copy_from_slice(&wire[fed..fed + n]);
            rb.filled_by(n);
            fed += n;
            rb.drain_frames(&dec, |f| got += f.len()).unwrap();
            let held = rb.pending().len();
            // (Once the frame is whole, the next `spare` shrinks the buffer back.)
            assert!(
                held == 0 || rb.buf.len() <= 2 * held + 1024,
                "{} bytes of buffer for {held} received",
                rb.buf.len()
            );
            assert!(rb.buf.len() <= wire.len());
        }
        assert_eq!(got, 1 << 20);
    }
}
