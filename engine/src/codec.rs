//! Wire framing: Wallaroo's 4-byte big-endian length header followed by the payload.
//!
//! Decoding never copies a payload. A [`ReadBuf`] owns one connection's bytes; [`FrameDecoder`]
//! walks the complete frames inside it and hands out slices that point straight into that buffer.
//! Only a trailing partial frame is moved, to the front of the buffer, so that the next read can
//! complete it. Whatever the split of the byte stream into reads, the frames are the same.

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
             (raise it with --max-frame if such frames are legitimate)",
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
        buf.first_chunk::<HEADER_LEN>()
            .map(|h| HEADER_LEN + u32::from_be_bytes(*h) as usize)
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
    /// A buffer of `capacity` bytes (it grows only to hold a single frame larger than that).
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
        let mut frames = 0;
        let mut pos = self.start;
        let result = loop {
            match decoder.decode(&self.buf[pos..self.end]) {
                Ok(Some((payload, used))) => {
                    on_frame(payload);
                    pos += used;
                    frames += 1;
                }
                Ok(None) => break Ok(frames),
                Err(e) => break Err(e),
            }
        };
        self.start = pos;
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
        // A frame bigger than the buffer grows it to hold exactly that frame. This is bounded by
        // the maximum frame size, since an oversized header is rejected before we get here. A
        // partial frame is always shorter than its full size, so some room is always left.
        let need = decoder
            .frame_size(self.pending())
            .unwrap_or(0)
            .max(self.base_capacity);
        if need > self.buf.len() {
            self.buf.resize(need, 0);
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
}
