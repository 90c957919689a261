//! The word-count application: Wallaroo's canonical example, written against the public
//! `bettong-engine` API exactly as a user would write their own app.
//!
//! Frames are split into words by [`crate::split`]; each word is keyed by itself, so it crosses
//! to the core that owns it; that core keeps the word's running total and emits
//! `word => count\n` for every occurrence.

use bettong_engine::PersistApp;
use bettong_engine::Pipeline;

/// Appends one output line, `word => count\n`.
///
/// ```
/// let mut out = Vec::new();
/// bettong::app::encode_line("amendment", 10, &mut out);
/// assert_eq!(out, b"amendment => 10\n");
/// ```
#[inline]
pub fn encode_line(word: &str, count: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(word.as_bytes());
    out.extend_from_slice(b" => ");
    out.extend_from_slice(itoa::Buffer::new().format(count).as_bytes());
    out.push(b'\n');
}

/// The word-count pipeline: split, key by word, count, encode.
///
/// Its state is one `u64` per word and its routed value is `()`, and the return type says so:
/// that is what lets `serve --resilience-dir` checkpoint it (both implement
/// `bettong_engine::Persist`).
///
/// ```
/// use bettong_engine::{Engine, MemorySource, SinkConfig, SourceConfig};
/// let src = MemorySource::from_frames(["Hello, world!", "hello again"]);
/// let report = Engine::new()
///     .cores(1)
///     .run(bettong::app::word_count(), SourceConfig::Memory(src), SinkConfig::Memory)
///     .unwrap();
/// let lines: Vec<String> = report.output_lines().collect();
/// assert_eq!(lines, ["hello => 1", "world => 1", "hello => 2", "again => 1"]);
/// ```
pub fn word_count() -> impl PersistApp {
    Pipeline::text()
        // Each core's copy of this closure owns its own scratch buffer for lowercasing.
        .flat_map({
            let mut scratch = String::new();
            move |text, emit| crate::split::for_each_word_reusing(&text, &mut scratch, emit)
        })
        .key_by(|word| (word, ()))
        .state(|_word: &str, count: &mut u64, ()| {
            *count += 1;
            Some(*count)
        })
        .encode(|word, count, out| encode_line(word, *count, out))
}
