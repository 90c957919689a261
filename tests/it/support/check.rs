//! Checking the output: [`reference_counts`] computes every word's final count with the library's
//! own splitter, the reference for the spec's splitting rules, and [`check_counts`] /
//! [`diff_counts`] compare a receiver's verdict with it, saying which words differ.

use std::collections::HashMap;

use bettong::receive::ReceiveReport;

/// The final count of every word in `payloads` under the spec's rules (the library's splitter);
/// payloads that are not UTF-8 count for nothing, as the server rejects them whole.
pub fn reference_counts<'a>(payloads: impl IntoIterator<Item = &'a [u8]>) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    for p in payloads {
        if let Ok(text) = std::str::from_utf8(p) {
            for w in bettong::split::words(text) {
                *counts.entry(w.into_owned()).or_insert(0) += 1;
            }
        }
    }
    counts
}

/// The number of output lines `counts` stands for: one per word occurrence.
pub fn total_lines(counts: &HashMap<String, u64>) -> u64 {
    counts.values().sum()
}

/// Fails the test unless `report` has no contract violation, exactly the total lines of
/// `expected` and exactly its final counts (saying which words differ).
#[track_caller]
pub fn check_counts(
    report: &ReceiveReport,
    expected: &HashMap<String, u64>,
    what: &str,
    server_stderr: &str,
) {
    assert!(
        report.violations.is_none(),
        "{what}: the output breaks the contract: {}; the server's stderr:\n{server_stderr}",
        report.violations.as_deref().unwrap_or_default()
    );
    let got = report.counts.as_ref().expect("the receiver validates");
    let diff = diff_counts(expected, got);
    assert!(
        diff.is_empty(),
        "{what}: final counts differ from the reference ({} words expected, {} received): {}; \
         the server's stderr:\n{server_stderr}",
        expected.len(),
        got.len(),
        diff
    );
    assert_eq!(
        report.lines,
        total_lines(expected),
        "{what}: wrong number of output lines; the server's stderr:\n{server_stderr}"
    );
}

/// A short description of the first few words whose counts differ (empty when none do).
pub fn diff_counts(expected: &HashMap<String, u64>, got: &HashMap<String, u64>) -> String {
    let mut words: Vec<&String> = expected.keys().chain(got.keys()).collect();
    words.sort();
    words.dedup();
    let diffs: Vec<String> = words
        .into_iter()
        .filter(|w| expected.get(*w) != got.get(*w))
        .map(|w| {
            format!(
                "{w:?}: expected {}, got {}",
                expected.get(w).copied().unwrap_or(0),
                got.get(w).copied().unwrap_or(0)
            )
        })
        .collect();
    if diffs.len() > 10 {
        format!("{} … and {} more", diffs[..10].join("; "), diffs.len() - 10)
    } else {
        diffs.join("; ")
    }
}
