//! Building and checking framed input for the word-count server.
//!
//! The server reads frames (a 4-byte big-endian length, then that many payload bytes, see
//! `word-count.md`). Tests, benches and the `send` tool all need to turn text into frames and to
//! walk an already framed buffer safely, so the few helpers for that live here, in one place,
//! instead of being re-derived (slightly differently) by each user.

use anyhow::{bail, Result};
use bettong_engine::codec::{frames, FrameError};

/// The Bill of Rights, the text of Wallaroo's word-count conformance case (20 non-empty lines).
pub const BILL_OF_RIGHTS: &str = include_str!("../data/bill_of_rights.txt");

/// Size of a frame header: a big-endian `u32` length.
pub const HEADER_LEN: usize = 4;

/// Frames `text` the way Wallaroo's giles sender does with `--file`: every non-empty line becomes
/// one frame holding that line without its line ending (`\n` or `\r\n`).
pub fn frame_lines(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 8 + HEADER_LEN);
    for line in text.lines().filter(|l| !l.is_empty()) {
        push_frame(&mut out, line.as_bytes());
    }
    out
}

/// Appends one frame (header and payload) holding `payload` to `out`.
///
/// # Panics
/// If `payload` is longer than `u32::MAX` bytes, which the wire format cannot express.
pub fn push_frame(out: &mut Vec<u8>, payload: &[u8]) {
    bettong_engine::codec::encode_frame(payload, out);
}

/// Returns the byte offset at which every frame of `framed` starts, followed by `framed.len()`, so
/// frame `i` spans `bounds[i]..bounds[i + 1]` (header included). An empty buffer gives `[0]`.
///
/// Fails if the buffer ends inside a header or a payload, naming the offset of that frame.
pub fn frame_bounds(framed: &[u8]) -> Result<Vec<usize>> {
    let mut bounds = vec![0];
    for frame in frames(framed) {
        match frame {
            Ok(frame) => bounds.push(frame.end()),
            Err(FrameError::Truncated { offset, size: None }) => bail!(
                "truncated frame header at byte offset {offset}: only {} of {HEADER_LEN} header \
                 bytes left in a {}-byte buffer",
                framed.len() - offset,
                framed.len()
            ),
            Err(FrameError::Truncated {
                offset,
                size: Some(size),
            }) => bail!(
                "truncated frame at byte offset {offset}: header says {} payload bytes but only \
                 {} are left in a {}-byte buffer",
                size - HEADER_LEN,
                framed.len() - offset - HEADER_LEN,
                framed.len()
            ),
            Err(FrameError::TooLarge { offset, error }) => {
                bail!("frame at byte offset {offset}: {error}")
            }
        }
    }
    Ok(bounds)
}

/// Counts the frames in `framed`; fails on a truncated buffer, naming the offset of the bad frame.
pub fn count_frames(framed: &[u8]) -> Result<usize> {
    Ok(frame_bounds(framed)?.len() - 1)
}

/// Returns the payload of every frame in `framed`, in order; fails on a truncated buffer, naming
/// the offset of the bad frame.
pub fn split_frames(framed: &[u8]) -> Result<Vec<&[u8]>> {
    let bounds = frame_bounds(framed)?;
    Ok(bounds
        .windows(2)
        .map(|w| &framed[w[0] + HEADER_LEN..w[1]])
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_non_empty_lines() {
        let framed = frame_lines("a b\n\nc\r\n\nlast");
        let frames = split_frames(&framed).unwrap();
        assert_eq!(frames, vec![&b"a b"[..], b"c", b"last"]);
        assert_eq!(count_frames(&framed).unwrap(), 3);
        assert_eq!(&framed[..4], &3u32.to_be_bytes());
    }

    #[test]
    fn bill_of_rights_has_twenty_messages() {
        assert_eq!(count_frames(&frame_lines(BILL_OF_RIGHTS)).unwrap(), 20);
    }

    #[test]
    fn empty_frames_and_buffer() {
        let mut out = Vec::new();
        assert_eq!(count_frames(&out).unwrap(), 0);
        push_frame(&mut out, b"");
        push_frame(&mut out, b"xy");
        assert_eq!(split_frames(&out).unwrap(), vec![&b""[..], b"xy"]);
        assert_eq!(frame_bounds(&out).unwrap(), vec![0, 4, 10]);
    }

    #[test]
    fn truncation_names_the_offset() {
        let mut out = Vec::new();
        push_frame(&mut out, b"hello");
        push_frame(&mut out, b"world");
        let err = count_frames(&out[..out.len() - 1]).unwrap_err().to_string();
        assert!(err.contains("offset 9"), "{err}");
        let err = split_frames(&out[..11]).unwrap_err().to_string();
        assert!(err.contains("header at byte offset 9"), "{err}");
    }
}
