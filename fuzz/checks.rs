//! The properties the fuzz targets check, shared by the targets (`fuzz_targets/*.rs`) and by the
//! corpus replay test (`tests/it/reliability_fuzz_corpus.rs`), which includes this file with
//! `#[path]` so that every `cargo test` runs the saved corpus without a fuzzer.
//!
//! Each check panics (with what differed) when the property does not hold.

use bettong_engine::codec::{FrameDecoder, FrameTooLarge, ReadBuf, HEADER_LEN};

/// Maximum frame sizes the decoder check picks from (the first input byte chooses).
const MAX_FRAMES: [usize; 6] = [0, 1, 7, 64, 4096, 1 << 20];
/// Read buffer capacities the decoder check picks from (the second input byte chooses).
const CAPACITIES: [usize; 5] = [1, 8, 16, 64, 1000];

/// The frame decoder: `data` is `[max-frame choice, buffer choice, split seed, stream…]`.
///
/// The stream is fed to a [`ReadBuf`] in reads whose sizes come from the seed (1 byte to a few
/// hundred, never more than the spare room the buffer offers), decoding after every read. The
/// frames, the oversized-header error and the bytes left pending must be exactly those of a
/// plain walk over the whole stream: whatever the split, the same messages.
pub fn check_frame_decoder(data: &[u8]) {
    let [m, c, seed, ref stream @ ..] = *data else {
        return;
    };
    let max_frame = MAX_FRAMES[m as usize % MAX_FRAMES.len()];
    let capacity = CAPACITIES[c as usize % CAPACITIES.len()];
    let dec = FrameDecoder::new(max_frame);

    // The reference: walk the whole stream.
    let mut expected: Vec<&[u8]> = Vec::new();
    let mut expected_err = None;
    let mut pos = 0;
    while let Some(h) = stream[pos..].first_chunk::<HEADER_LEN>() {
        let len = u32::from_be_bytes(*h) as usize;
        if len > max_frame {
            expected_err = Some(FrameTooLarge {
                len,
                max: max_frame,
            });
            break;
        }
        let Some(payload) = stream.get(pos + HEADER_LEN..pos + HEADER_LEN + len) else {
            break;
        };
        expected.push(payload);
        pos += HEADER_LEN + len;
    }

    // The decoder, fed in pieces.
    let mut rb = ReadBuf::with_capacity(capacity);
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut err = None;
    let mut rng = u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut fed = 0;
    while fed < stream.len() {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let want = match rng % 4 {
            0 => 1,
            1 => 1 + (rng >> 8) as usize % 4,
            2 => 1 + (rng >> 8) as usize % 32,
            _ => 1 + (rng >> 8) as usize % 512,
        };
        let spare = rb.spare(&dec);
        assert!(
            !spare.is_empty(),
            "the read buffer offered no room to read into"
        );
        let n = want.min(spare.len()).min(stream.len() - fed);
        spare[..n].copy_from_slice(&stream[fed..fed + n]);
        rb.filled_by(n);
        fed += n;
        let before = got.len();
        match rb.drain_frames(&dec, |f| got.push(f.to_vec())) {
            Ok(frames) => assert_eq!(frames, got.len() - before, "frames reported vs delivered"),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    assert_eq!(
        got.len(),
        expected.len(),
        "frame count differs (max frame {max_frame}, buffer {capacity})"
    );
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g.as_slice(), *e, "frame {i} differs");
    }
    assert_eq!(err, expected_err, "oversized-header error differs");
    if err.is_none() {
        assert_eq!(
            rb.pending(),
            &stream[pos..],
            "pending partial frame differs"
        );
    }
}

/// The spec's punctuation, stripped from both ends of every word.
const PUNCT: &str = " !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// The spec's splitting rules written as plainly as possible (the Python reference, in Rust).
pub fn reference_words(text: &str) -> Vec<String> {
    text.split([' ', '\t', '\n', '\x0b', '\x0c', '\r'])
        .map(|piece| {
            piece
                .to_lowercase()
                .trim_matches(|c| PUNCT.contains(c))
                .to_string()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// The word splitter: `data` (any bytes) is a message; an invalid UTF-8 message is also split
/// after lossy decoding, so every input exercises the splitter. The words must be exactly the
/// reference's, and [`bettong::split::for_each_word`] must agree with
/// [`bettong::split::words`].
pub fn check_splitter(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let got: Vec<String> = bettong::split::words(&text)
        .map(|w| w.into_owned())
        .collect();
    let expected = reference_words(&text);
    assert_eq!(got, expected, "words of {text:?}");
    let mut each = Vec::new();
    bettong::split::for_each_word(&text, |w| each.push(w.into_owned()));
    assert_eq!(each, got, "for_each_word and words differ on {text:?}");
}
