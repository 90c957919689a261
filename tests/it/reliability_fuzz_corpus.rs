//! Replays the fuzzers' saved corpus on every `cargo test`, so that CI checks every input the
//! fuzzers found interesting without a fuzzer (or nightly).
//!
//! The targets live in `fuzz/` (a crate of its own, outside the workspace; run one with
//! `cargo +nightly fuzz run frame_decoder` from `fuzz/`); the properties they check are in
//! `fuzz/checks.rs`, included here as is. Every file of `fuzz/corpus/<target>/` is one input.

#[path = "../../fuzz/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

/// The corpus files of `target`, sorted; fails the test if there are none (a missing corpus
/// must not pass as an empty one).
fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the corpus {}: {e}", dir.display()))
        .map(|e| e.expect("a corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "the corpus {} has {} inputs: it should hold at least the seeds",
        dir.display(),
        files.len()
    );
    files
}

/// Runs `check` on every corpus input of `target`, naming the input that fails.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let files = corpus(target);
    for path in &files {
        let data = std::fs::read(path).expect("read a corpus input");
        if let Err(panic) = std::panic::catch_unwind(|| check(&data)) {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!(
                "{target}: corpus input {} fails: {why}\n(reproduce with `cargo +nightly fuzz \
                 run {target} {}` in fuzz/)",
                path.display(),
                path.display()
            );
        }
    }
    files.len()
}

#[test]
fn frame_decoder_corpus_replays_clean() {
    let n = replay("frame_decoder", checks::check_frame_decoder);
    eprintln!("frame_decoder: {n} corpus inputs replayed");
}

#[test]
fn splitter_corpus_replays_clean() {
    let n = replay("splitter", checks::check_splitter);
    eprintln!("splitter: {n} corpus inputs replayed");
}

#[test]
fn the_reference_splitter_follows_the_spec() {
    // The splitter is checked against this reference: it must not be vacuous.
    assert_eq!(
        checks::reference_words("\"Hello,\"  it's\x0bthe ÉCOLE... -- !!\u{a0}x ΣΑΣ."),
        ["hello", "it's", "the", "école", "\u{a0}x", "σας"]
    );
}
