//! Property tests of framing: however a byte stream is cut into reads, the frames that come out
//! are exactly the frames that went in.
//!
//! This exists because the TCP source decodes frames in place in a [`ReadBuf`] that compacts
//! and grows as partial frames arrive, and the memory source cuts its input into slices: both
//! are easy to get subtly wrong at a boundary, and example tests only ever try a few boundaries.

use std::borrow::Cow;
use std::collections::HashMap;

use bettong_engine::codec::{encode_frame, FrameDecoder, FrameTooLarge, ReadBuf};
use bettong_engine::{online_cpus, Engine, MemorySource, Pipeline, SinkConfig, SourceConfig};
use proptest::collection::vec;
use proptest::prelude::*;

/// Feeds `wire` into `rb` in reads of the given sizes (cycled, and capped by the spare room),
/// draining complete frames after every read, as the TCP source does. Stops at the first error.
fn feed(
    wire: &[u8],
    capacity: usize,
    chunks: &[usize],
    dec: &FrameDecoder,
) -> (Vec<Vec<u8>>, Result<(), FrameTooLarge>, ReadBuf) {
    let mut rb = ReadBuf::with_capacity(capacity);
    let mut frames = Vec::new();
    let mut fed = 0;
    for &chunk in chunks.iter().cycle() {
        if fed == wire.len() {
            break;
        }
        let spare = rb.spare(dec);
        assert!(!spare.is_empty(), "spare() must never be empty");
        let n = chunk.min(spare.len()).min(wire.len() - fed);
        spare[..n].copy_from_slice(&wire[fed..fed + n]);
        rb.filled_by(n);
        fed += n;
        let before = frames.len();
        let drained = rb.drain_frames(dec, |f| frames.push(f.to_vec()));
        match drained {
            Ok(seen) => assert_eq!(seen, frames.len() - before, "drain_frames' count"),
            Err(e) => return (frames, Err(e), rb),
        }
    }
    (frames, Ok(()), rb)
}

/// Frames of arbitrary bytes (empty ones included) with at least one larger than any buffer
/// capacity below, so the buffer must grow to hold it.
fn frames_with_a_big_one() -> impl Strategy<Value = Vec<Vec<u8>>> {
    (
        vec(vec(any::<u8>(), 0..100), 0..30),
        vec(any::<u8>(), 65..600),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(mut frames, big, at)| {
            let i = at.index(frames.len() + 1);
            frames.insert(i, big);
            frames
        })
}

/// A tiny word count, keyed by whitespace-separated words.
fn word_count() -> impl bettong_engine::App {
    Pipeline::text()
        .flat_map(|text, emit| text.split_whitespace().for_each(|w| emit(Cow::Borrowed(w))))
        .key_by(|w| (w, ()))
        .state(|_w: &str, n: &mut u64, ()| {
            *n += 1;
            Some(*n)
        })
        .encode(|w, n, out| out.extend_from_slice(format!("{w} {n}\n").as_bytes()))
}

proptest! {
    #[test]
    fn any_chunking_decodes_the_original_frames(
        frames in frames_with_a_big_one(),
        capacity in 8usize..=64,
        chunks in vec(1usize..=97, 1..20),
    ) {
        let mut wire = Vec::new();
        for f in &frames {
            encode_frame(f, &mut wire);
        }
        let dec = FrameDecoder::new(1 << 16);
        let (got, result, rb) = feed(&wire, capacity, &chunks, &dec);
        prop_assert_eq!(result, Ok(()));
        prop_assert_eq!(got, frames);
        prop_assert!(rb.pending().is_empty(), "bytes left over: {:?}", rb.pending());
    }

    #[test]
    fn oversized_header_is_an_error_after_the_earlier_frames(
        (max, before) in (0usize..200).prop_flat_map(|max| {
            (Just(max), vec(vec(any::<u8>(), 0..=max), 0..10))
        }),
        excess in 1u64..=(u32::MAX as u64),
        trailing in vec(any::<u8>(), 0..50),
        capacity in 8usize..=64,
        chunks in vec(1usize..=97, 1..20),
    ) {
        let len = (max as u64 + excess).min(u32::MAX as u64) as usize;
        let mut wire = Vec::new();
        for f in &before {
            encode_frame(f, &mut wire);
        }
        wire.extend_from_slice(&(len as u32).to_be_bytes());
        wire.extend_from_slice(&trailing);
        let dec = FrameDecoder::new(max);
        let (got, result, _) = feed(&wire, capacity, &chunks, &dec);
        prop_assert_eq!(result, Err(FrameTooLarge { len, max }));
        prop_assert_eq!(got, before);
    }
}

proptest! {
    // Each case starts an engine: keep the count small.
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn word_count_is_the_same_however_the_source_is_sliced(
        frames in vec(
            vec(prop::sample::select(&["a", "b", "c", "dd", "eee", "\u{e9}t\u{e9}"][..]), 0..8)
                .prop_map(|ws| ws.join(" ")),
            0..80,
        ),
        slice_bytes in 1usize..=300,
        two in any::<bool>(),
    ) {
        let cores = if two { online_cpus().len().min(2) } else { 1 };
        let source = MemorySource::from_frames(&frames).slice_bytes(slice_bytes);
        let report = Engine::new()
            .cores(cores)
            .run(word_count(), SourceConfig::Memory(source), SinkConfig::Memory)
            .unwrap();

        let mut expected: HashMap<&str, u64> = HashMap::new();
        for w in frames.iter().flat_map(|f| f.split_whitespace()) {
            *expected.entry(w).or_default() += 1;
        }
        // Every word counts 1..N in order, within one core's output.
        let mut counts: HashMap<String, (usize, u64)> = HashMap::new();
        for (core, out) in report.outputs.iter().enumerate() {
            for line in std::str::from_utf8(out).unwrap().lines() {
                let (w, n) = line.split_once(' ').unwrap();
                let (owner, c) = counts.entry(w.to_owned()).or_insert((core, 0));
                prop_assert_eq!(*owner, core, "{} is on two cores", w);
                prop_assert_eq!(n.parse::<u64>().unwrap(), *c + 1, "{} out of order", w);
                *c += 1;
            }
        }
        let finals: HashMap<&str, u64> = counts.iter().map(|(w, &(_, c))| (w.as_str(), c)).collect();
        prop_assert_eq!(finals, expected);
        prop_assert_eq!(report.total().frames_in, frames.len() as u64);
    }
}
