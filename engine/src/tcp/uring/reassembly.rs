//! Frames decoded in place from the buffers the kernel filled, and the few that straddle two.
//!
//! A connection's bytes arrive as a sequence of provided buffers, cut wherever the kernel cut
//! them. Every complete frame inside one buffer is handed out as a slice of that buffer. Only a
//! frame that starts in one buffer and ends in a later one is copied, into the connection's
//! carry buffer, which then holds exactly that one partial frame. The carry grows with the bytes
//! received (at most doubling, and never past the frame's size once its header is known), not
//! with the size a header announces: a client that announces a large frame and sends little of
//! it holds little memory. Whatever the cut, the frames are the same,
//! and the maximum frame size is enforced as soon as a header is complete, as [`FrameDecoder`]
//! does for the glommio backend.

use crate::codec::{FrameDecoder, FrameError, FrameTooLarge, HEADER_LEN};

/// Carry buffers larger than this are released after the frame that grew them.
const KEEP_CAPACITY: usize = 64 * 1024;

/// The smallest carry allocated.
const MIN_CAPACITY: usize = 256;

/// One connection's partial frame, between buffers.
#[derive(Debug, Default)]
pub(crate) struct Reassembly {
    carry: Vec<u8>,
}

impl Reassembly {
    /// Bytes of a partial frame held (0 between frames).
    pub(crate) fn pending(&self) -> usize {
        self.carry.len()
    }

    /// Decodes the frames `data` completes or holds, calling `on_frame` for each, in order.
    ///
    /// On an oversized header, the frames before it have been delivered and the error is
    /// returned; the connection cannot be resynchronised and must be closed.
    pub(crate) fn feed(
        &mut self,
        mut data: &[u8],
        decoder: &FrameDecoder,
        on_frame: &mut dyn FnMut(&[u8]),
    ) -> Result<(), FrameTooLarge> {
        if !self.carry.is_empty() {
            data = self.complete_carry(data, decoder, on_frame)?;
        }
        for frame in decoder.frames(data) {
            match frame {
                Ok(frame) => on_frame(frame.payload),
                Err(FrameError::Truncated { offset, size }) => {
                    self.append(&data[offset..], size);
                }
                Err(FrameError::TooLarge { error, .. }) => return Err(error),
            }
        }
        Ok(())
    }

    /// Adds the start of `data` to the partial frame; returns what is left of `data` once the
    /// frame is complete (and delivered), or an empty slice if it still is not.
    fn complete_carry<'a>(
        &mut self,
        mut data: &'a [u8],
        decoder: &FrameDecoder,
        on_frame: &mut dyn FnMut(&[u8]),
    ) -> Result<&'a [u8], FrameTooLarge> {
        if self.carry.len() < HEADER_LEN {
            let take = (HEADER_LEN - self.carry.len()).min(data.len());
            self.append(&data[..take], None);
            data = &data[take..];
            if self.carry.len() < HEADER_LEN {
                return Ok(data);
            }
            // The header is whole: check it before waiting for its payload.
            decoder.decode(&self.carry)?;
        }
        let size = decoder
            .frame_size(&self.carry)
            .expect("a carried frame has its whole header here");
        let take = (size - self.carry.len()).min(data.len());
        self.append(&data[..take], Some(size));
        data = &data[take..];
        if self.carry.len() == size {
            on_frame(&self.carry[HEADER_LEN..]);
            self.carry.clear();
            if self.carry.capacity() > KEEP_CAPACITY {
                self.carry = Vec::new();
            }
        }
        Ok(data)
    }

    /// Appends `bytes` to the carry, growing it geometrically with what has been received:
    /// at most to twice its bytes (or to what they need), never past `size`, the whole frame's
    /// size when its header is known.
    fn append(&mut self, bytes: &[u8], size: Option<usize>) {
        let need = self.carry.len() + bytes.len();
        if need > self.carry.capacity() {
            let mut grown = need
                .max(self.carry.capacity().saturating_mul(2))
                .max(MIN_CAPACITY);
            if let Some(size) = size {
                grown = grown.min(size).max(need);
            }
            self.carry.reserve_exact(grown - self.carry.len());
        }
        self.carry.extend_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode_frame;

    fn wire(frames: &[&[u8]]) -> Vec<u8> {
        let mut w = Vec::new();
        for f in frames {
            encode_frame(f, &mut w);
        }
        w
    }

    /// Feeds `wire` cut into pieces of `cut` bytes; returns the frames and the final state.
    fn feed_cut(
        wire: &[u8],
        cut: usize,
        max: usize,
    ) -> (Vec<Vec<u8>>, Result<(), FrameTooLarge>, usize) {
        let dec = FrameDecoder::new(max);
        let mut r = Reassembly::default();
        let mut got = Vec::new();
        for piece in wire.chunks(cut) {
            if let Err(e) = r.feed(piece, &dec, &mut |f| got.push(f.to_vec())) {
                return (got, Err(e), r.pending());
            }
        }
        (got, Ok(()), r.pending())
    }

    #[test]
    fn frames_are_the_same_whatever_the_cut() {
        let frames: Vec<Vec<u8>> = (0..50)
            .map(|i| format!("frame {i} {}", "x".repeat(i * 7)).into_bytes())
            .chain([Vec::new(), b"tail".to_vec()])
            .collect();
        let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
        let w = wire(&refs);
        for cut in [1, 2, 3, 4, 5, 7, 64, 100, 333, w.len()] {
            let (got, res, pending) = feed_cut(&w, cut, 1 << 20);
            assert!(res.is_ok());
            assert_eq!(got, frames, "cut {cut}");
            assert_eq!(pending, 0);
        }
    }

    /// A header announcing a large frame reserves nothing: the carry grows (at most doubling,
    /// so a few times over a frame) only as the frame's bytes arrive, and never past the frame.
    #[test]
    fn carry_grows_with_the_bytes_received_not_the_announced_size() {
        let big = vec![b'a'; 1 << 20];
        let w = wire(&[b"x", &big, b"y"]);
        let dec = FrameDecoder::new(1 << 20);
        let mut r = Reassembly::default();
        let mut got = Vec::new();
        let mut capacities = Vec::new();
        for piece in w.chunks(4096) {
            r.feed(piece, &dec, &mut |f| got.push(f.len())).unwrap();
            let (held, cap) = (r.pending(), r.carry.capacity());
            if held > 0 {
                assert!(
                    cap <= (2 * held).max(MIN_CAPACITY),
                    "{cap} bytes for {held}"
                );
            }
            assert!(cap <= HEADER_LEN + big.len());
            capacities.push(cap);
        }
        assert_eq!(got, vec![1, 1 << 20, 1]);
        let grown: std::collections::BTreeSet<_> = capacities.into_iter().collect();
        assert!(grown.len() <= 16, "the carry grew too often: {grown:?}");
    }

    #[test]
    fn oversized_header_split_across_buffers_is_refused_before_its_payload() {
        let mut w = wire(&[b"ok"]);
        w.extend_from_slice(&11u32.to_be_bytes());
        for cut in [1, 2, 3, 5, 7] {
            let (got, res, _) = feed_cut(&w, cut, 10);
            assert_eq!(got, vec![b"ok".to_vec()], "cut {cut}");
            assert_eq!(res, Err(FrameTooLarge { len: 11, max: 10 }), "cut {cut}");
        }
    }

    #[test]
    fn partial_frame_at_the_end_is_pending() {
        let mut w = wire(&[b"abc"]);
        w.extend_from_slice(&[0, 0, 0, 9, b'z']);
        let (got, res, pending) = feed_cut(&w, 3, 100);
        assert!(res.is_ok());
        assert_eq!(got, vec![b"abc".to_vec()]);
        assert_eq!(pending, 5);
    }

    proptest::proptest! {
        /// Any frames, cut into reads anywhere: the same frames come out, whole and in order,
        /// and nothing is left pending at the end.
        #[test]
        fn any_cut_of_any_frames_gives_them_back(
            frames in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..300), 0..20),
            cuts in proptest::collection::vec(1usize..400, 1..40),
        ) {
            let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
            let w = wire(&refs);
            let dec = FrameDecoder::new(1 << 20);
            let mut r = Reassembly::default();
            let mut got = Vec::new();
            let (mut pos, mut i) = (0, 0);
            while pos < w.len() {
                let end = (pos + cuts[i % cuts.len()]).min(w.len());
                r.feed(&w[pos..end], &dec, &mut |f| got.push(f.to_vec())).unwrap();
                pos = end;
                i += 1;
            }
            proptest::prop_assert_eq!(got, frames);
            proptest::prop_assert_eq!(r.pending(), 0);
        }

        /// Arbitrary bytes in arbitrary reads never panic; every frame delivered is within the
        /// maximum, and an oversized header is reported, not delivered; what is pending never
        /// exceeds one frame's size.
        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2000),
            cut in 1usize..300,
            max in 0usize..600,
        ) {
            let dec = FrameDecoder::new(max);
            let mut r = Reassembly::default();
            for piece in bytes.chunks(cut) {
                let mut ok = true;
                let res = r.feed(piece, &dec, &mut |f| ok &= f.len() <= max);
                proptest::prop_assert!(ok, "a frame above the maximum was delivered");
                if res.is_err() {
                    break;
                }
                proptest::prop_assert!(r.pending() <= max + HEADER_LEN);
            }
        }
    }
}
