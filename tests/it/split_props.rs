//! Property tests: `bettong::split::words` against a reference written exactly as the spec's
//! Python (`spec/word-count.md`, "Splitting a message into words"):
//!
//! ```python
//! words = [w for w in (x.lower().strip(PUNCT) for x in re.split(r"[ \t\n\x0b\x0c\r]+", text)) if w]
//! ```
//!
//! The splitter strips before lowercasing (to stay zero-copy); these tests check that the order
//! makes no difference, on inputs heavy in the characters where it could.

use std::borrow::Cow;

use bettong::split::{for_each_word, for_each_word_reusing, scalar_words, words, PUNCT};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

const SEPARATORS: [char; 6] = [' ', '\t', '\n', '\x0b', '\x0c', '\r'];

fn is_punct(c: char) -> bool {
    c.is_ascii() && PUNCT.contains(&(c as u8))
}

/// The spec's reference, step by step: split on the six separators, lowercase the whole piece,
/// then strip PUNCT, then drop empty words. Splitting on single separators instead of runs only
/// adds empty pieces, which the last step drops.
fn reference(text: &str) -> Vec<String> {
    text.split(SEPARATORS)
        .map(|piece| piece.to_lowercase().trim_matches(is_punct).to_owned())
        .filter(|w| !w.is_empty())
        .collect()
}

/// For each word the reference keeps, the input slice it comes from: the piece stripped of
/// PUNCT before any lowercasing.
fn reference_slices(text: &str) -> Vec<&str> {
    text.split(SEPARATORS)
        .filter(|piece| !piece.to_lowercase().trim_matches(is_punct).is_empty())
        .map(|piece| piece.trim_matches(is_punct))
        .collect()
}

/// Characters weighted towards the ones the rules care about.
fn interesting_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => prop::sample::select(SEPARATORS.to_vec()),
        4 => prop::sample::select(PUNCT.iter().map(|&b| b as char).collect::<Vec<_>>()),
        4 => prop::char::range('A', 'Z'),
        3 => prop::char::range('a', 'z'),
        2 => Just('Σ'),
        1 => Just('ς'),
        1 => Just('İ'),
        1 => Just('\u{212a}'), // KELVIN SIGN, lowercases to ASCII 'k'
        1 => Just('\u{a0}'),   // NO-BREAK SPACE
        1 => Just('\u{3000}'), // IDEOGRAPHIC SPACE
        1 => Just('\u{307}'),  // COMBINING DOT ABOVE: case-ignorable
        1 => Just('\u{ad}'),   // SOFT HYPHEN: case-ignorable
        1 => prop::sample::select(vec!['É', 'Ω', 'Ж', 'ß', 'ẞ', 'Ǆ', 'ǅ', 'é', 'ω']),
        2 => any::<char>(),
    ]
}

fn interesting_text() -> impl Strategy<Value = String> {
    prop::collection::vec(interesting_char(), 0..48).prop_map(|cs| cs.into_iter().collect())
}

/// Greek words around sigma with punctuation, for the final-sigma rule in particular.
fn sigma_text() -> impl Strategy<Value = String> {
    let c = prop_oneof![
        3 => Just('Σ'),
        3 => prop::sample::select(vec!['Α', 'Ο', 'Δ', 'α', 'ο']),
        3 => prop::sample::select(vec!['.', '\'', ':', '^', '`', '-', '!', '(', ')']),
        1 => Just(' '),
        1 => Just('\u{307}'),
    ];
    prop::collection::vec(c, 0..16).prop_map(|cs| cs.into_iter().collect())
}

proptest! {
    // Saved failures live beside this file (split_props.proptest-regressions). Proptest's
    // default would put them under tests/proptest-regressions/ now that tests/it/ has a main.rs.
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions"
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn words_match_the_spec_reference(text in interesting_text()) {
        let got: Vec<String> = words(&text).map(Cow::into_owned).collect();
        prop_assert_eq!(got, reference(&text));
    }

    #[test]
    fn final_sigma_matches_the_spec_reference(text in sigma_text()) {
        let got: Vec<String> = words(&text).map(Cow::into_owned).collect();
        prop_assert_eq!(got, reference(&text));
    }

    #[test]
    fn words_match_the_spec_reference_on_any_string(text in any::<String>()) {
        let got: Vec<String> = words(&text).map(Cow::into_owned).collect();
        prop_assert_eq!(got, reference(&text));
    }

    /// The SWAR scan against the byte-at-a-time one it replaced: the same words, borrowed or
    /// owned alike, on any string (non-ASCII included) and on texts dense in separators,
    /// punctuation and capitals, long enough to cross several eight-byte chunks.
    #[test]
    fn swar_scan_matches_the_scalar_scan(
        any_text in any::<String>(),
        text in interesting_text(),
        ascii in "[ \t\n\x0b\x0c\r\x00-\x08\x0e-\x1fA-Za-z.,!'\"()\x7f-]{0,80}",
    ) {
        for t in [any_text.as_str(), text.as_str(), ascii.as_str()] {
            let swar: Vec<Cow<'_, str>> = words(t).collect();
            let scalar: Vec<Cow<'_, str>> = scalar_words(t).collect();
            prop_assert_eq!(&swar, &scalar);
            for (a, b) in swar.iter().zip(&scalar) {
                prop_assert_eq!(matches!(a, Cow::Borrowed(_)), matches!(b, Cow::Borrowed(_)));
                prop_assert_eq!(a.as_ptr() == b.as_ptr(), matches!(a, Cow::Borrowed(_)));
            }
        }
    }

    #[test]
    fn borrowed_iff_word_is_its_input_slice(text in interesting_text()) {
        let got: Vec<Cow<'_, str>> = words(&text).collect();
        let slices = reference_slices(&text);
        prop_assert_eq!(got.len(), slices.len());
        for (w, slice) in got.iter().zip(slices) {
            // No copy exactly when the input slice is already the word (lowercase ASCII).
            let unchanged = slice.is_ascii() && w.as_ref() == slice;
            prop_assert_eq!(matches!(w, Cow::Borrowed(_)), unchanged, "{:?} from {:?}", w, slice);
            if let Cow::Borrowed(b) = w {
                // And the borrow is that very slice of the message.
                prop_assert_eq!(b.as_ptr(), slice.as_ptr());
                prop_assert_eq!(b.len(), slice.len());
            }
        }
    }

    #[test]
    fn for_each_word_matches_words(text in interesting_text()) {
        let mut got = Vec::new();
        for_each_word(&text, |w| got.push(w));
        prop_assert_eq!(got, words(&text).collect::<Vec<_>>());
    }

    #[test]
    fn for_each_word_reusing_matches_the_spec_reference(text in interesting_text()) {
        // One scratch buffer across several messages, as the app keeps one per core.
        let mut scratch = String::from("leftover");
        for _ in 0..2 {
            let mut got = Vec::new();
            for_each_word_reusing(&text, &mut scratch, |w| got.push(w.into_owned()));
            prop_assert_eq!(got, reference(&text));
        }
    }

    #[test]
    fn size_hint_bounds_the_word_count(text in interesting_text()) {
        let mut it = words(&text);
        loop {
            let (lo, hi) = it.size_hint();
            let rest = it.clone().count();
            prop_assert!(lo <= rest && hi.is_some_and(|hi| rest <= hi));
            if it.next().is_none() {
                break;
            }
        }
    }
}

/// The lemma behind stripping before lowercasing: no character lowercases to a string holding
/// PUNCT (apart from PUNCT characters themselves, which lowercase to themselves), nor to nothing.
#[test]
fn lowercasing_never_produces_punctuation() {
    for c in (0..=0x10ffff).filter_map(char::from_u32) {
        let lower: String = c.to_lowercase().collect();
        assert!(!lower.is_empty(), "{c:?} lowercases to nothing");
        if is_punct(c) {
            assert_eq!(lower, c.to_string());
        } else {
            assert!(
                !lower.chars().any(is_punct),
                "{c:?} lowercases to {lower:?}"
            );
        }
    }
}
