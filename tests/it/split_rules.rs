//! One test per rule of the word-count contract's "Splitting a message into words"
//! (`spec/word-count.md`), checked against `bettong::split`.

use std::borrow::Cow;
use std::collections::HashMap;

use bettong::split::{for_each_word, is_separator, words, PUNCT};

fn split(text: &str) -> Vec<String> {
    words(text).map(Cow::into_owned).collect()
}

// Rule 1: split on runs of space, \t, \n, VT, FF, \r.

#[test]
fn vertical_tab_is_a_separator() {
    assert!(is_separator(0x0b));
    // The reason the spec spells it out: the standard library would not have split here.
    assert!(!0x0b_u8.is_ascii_whitespace());
    assert_eq!(split("one\x0btwo"), ["one", "two"]);
}

#[test]
fn form_feed_is_a_separator() {
    assert!(is_separator(0x0c));
    assert_eq!(split("one\x0ctwo"), ["one", "two"]);
}

#[test]
fn crlf_is_a_separator() {
    assert!(is_separator(b'\r') && is_separator(b'\n'));
    assert_eq!(split("one\r\ntwo\r\n"), ["one", "two"]);
    assert_eq!(split("one\rtwo"), ["one", "two"]);
}

#[test]
fn tab_is_a_separator() {
    assert!(is_separator(b'\t'));
    assert_eq!(split("one\ttwo\t\tthree"), ["one", "two", "three"]);
}

#[test]
fn only_the_six_ascii_separators_separate() {
    let seps: Vec<u8> = (0..=255u8).filter(|&b| is_separator(b)).collect();
    assert_eq!(seps, [b'\t', b'\n', 0x0b, 0x0c, b'\r', b' ']);
    // Other ASCII controls belong to words.
    assert_eq!(split("a\x00b\x1fc\x7fd"), ["a\x00b\x1fc\x7fd"]);
}

#[test]
fn runs_of_mixed_whitespace_are_one_separator() {
    assert_eq!(
        split("alpha \t\n\x0b\x0c\r beta\r\n\r\n\t gamma"),
        ["alpha", "beta", "gamma"]
    );
}

#[test]
fn leading_and_trailing_whitespace_make_no_words() {
    assert_eq!(split(" \t\r\n\x0b\x0cword\x0c\x0b\n\r\t "), ["word"]);
    assert_eq!(split(" \t\r\n\x0b\x0c"), Vec::<String>::new());
}

#[test]
fn non_ascii_spaces_belong_to_words() {
    // U+00A0 NO-BREAK SPACE and U+3000 IDEOGRAPHIC SPACE are not separators.
    assert_eq!(split("a\u{a0}b c\u{3000}d"), ["a\u{a0}b", "c\u{3000}d"]);
    // Nor are they punctuation: they are not stripped either.
    assert_eq!(split("\u{a0}x\u{3000}"), ["\u{a0}x\u{3000}"]);
    // Other Unicode whitespace: U+2028 LINE SEPARATOR, U+0085 NEXT LINE.
    assert_eq!(split("a\u{2028}b\u{85}c"), ["a\u{2028}b\u{85}c"]);
}

// Rule 2: full Unicode lowercasing, final sigma included.

#[test]
fn ascii_is_lowercased() {
    assert_eq!(split("Hello WORLD mIxEd"), ["hello", "world", "mixed"]);
}

#[test]
fn unicode_is_lowercased() {
    assert_eq!(split("ÉCOLE"), ["école"]);
    assert_eq!(split("ÀÉÎÕÜ ΑΒΓ АБВ"), ["àéîõü", "αβγ", "абв"]);
}

#[test]
fn dotted_capital_i_lowercases_as_rust_does() {
    // Full lowercasing: İ (U+0130) becomes "i" + COMBINING DOT ABOVE (U+0307), two chars.
    assert_eq!("İ".to_lowercase(), "i\u{307}");
    assert_eq!(split("İ"), ["i\u{307}"]);
    assert_eq!(split("İSTANBUL"), ["i\u{307}stanbul"]);
    assert_eq!(split("(İ)"), ["i\u{307}"]);
}

#[test]
fn final_sigma_lowercases_to_final_form() {
    let w = split("ΟΔΟΣ");
    assert_eq!(w, ["οδος"]);
    assert_eq!(w[0].chars().last(), Some('\u{3c2}')); // ς FINAL SIGMA
    assert_eq!(w[0].chars().next(), Some('ο'));
    // Mid-word sigma is the ordinary σ.
    assert_eq!(split("ΣΑΣ"), ["σας"]);
    assert_eq!(split("ΟΔΟΣΑ"), ["οδοσα"]);
}

#[test]
fn final_sigma_survives_trailing_punctuation() {
    // The spec lowercases "ΟΔΟΣ." whole: "." is case-ignorable, so Σ is still word-final.
    assert_eq!("ΟΔΟΣ.".to_lowercase(), "οδος.");
    for text in ["ΟΔΟΣ.", "ΟΔΟΣ!!", "(ΟΔΟΣ)", "'ΟΔΟΣ'", "ΟΔΟΣ:", "«ΟΔΟΣ»"]
    {
        let w = split(text);
        assert_eq!(w.len(), 1, "{text:?}");
        let expected = text.to_lowercase();
        let expected = expected.trim_matches(|c: char| c.is_ascii() && PUNCT.contains(&(c as u8)));
        assert_eq!(w[0], expected, "{text:?}");
        assert!(w[0].contains('ς'), "{text:?} gave {:?}", w[0]);
    }
}

#[test]
fn lone_sigma_lowercases_to_medial_form() {
    // No cased letter before it: not word-final by Unicode's Final_Sigma.
    assert_eq!(split("Σ"), ["σ"]);
    assert_eq!(split("Σ."), ["σ"]);
    assert_eq!(split("'Σ'"), ["σ"]);
    assert_eq!(split("A.Σ"), ["a.ς"]);
}

// Rule 3: strip PUNCT from both ends; punctuation inside stays.

#[test]
fn punct_is_wallaroos_set_with_space() {
    assert_eq!(PUNCT, b" !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~");
    let ascii_punct: Vec<u8> = (0..=127u8).filter(u8::is_ascii_punctuation).collect();
    let mut p = PUNCT.to_vec();
    p.sort_unstable();
    assert_eq!(p[0], b' ');
    assert_eq!(p[1..], ascii_punct[..]);
}

#[test]
fn punctuation_inside_words_stays() {
    assert_eq!(split("it's a...b e-mail"), ["it's", "a...b", "e-mail"]);
    assert_eq!(split("don't!"), ["don't"]);
}

#[test]
fn leading_and_trailing_punctuation_is_stripped() {
    assert_eq!(split("\"(hello)\""), ["hello"]);
    assert_eq!(split("(hello)"), ["hello"]);
    assert_eq!(split("--x--"), ["x"]);
    assert_eq!(split("'quoted',"), ["quoted"]);
    assert_eq!(split("[{<a>}]"), ["a"]);
}

#[test]
fn non_ascii_punctuation_is_not_stripped() {
    assert_eq!(split("«mot» “word” ¡hola!"), ["«mot»", "“word”", "¡hola"]);
}

// Rule 4: drop empty words.

#[test]
fn punctuation_only_words_are_dropped() {
    assert_eq!(split("... -- !!"), Vec::<String>::new());
    assert_eq!(split("a ... b"), ["a", "b"]);
    let all = std::str::from_utf8(PUNCT).unwrap();
    assert_eq!(split(all), Vec::<String>::new());
}

#[test]
fn empty_text_has_no_words() {
    assert_eq!(words("").next(), None);
    assert_eq!(split(""), Vec::<String>::new());
}

// Zero-copy: lowercase ASCII words borrow, the rest are owned.

#[test]
fn lowercase_ascii_words_are_borrowed() {
    let text = "plain (words) it's a...b 42";
    let mut n = 0;
    for w in words(text) {
        assert!(matches!(w, Cow::Borrowed(_)), "{w:?}");
        n += 1;
    }
    assert_eq!(n, 5);
    // The borrowed slice points into the message.
    let range = text.as_bytes().as_ptr_range();
    for w in words(text) {
        let Cow::Borrowed(s) = w else { unreachable!() };
        assert!(range.contains(&s.as_ptr()));
    }
}

#[test]
fn uppercase_or_non_ascii_words_are_owned() {
    for text in [
        "Hello", "hellO", "école", "ÉCOLE", "a\u{a0}b", "οδος", "İ", "(Hi)",
    ] {
        let w: Vec<_> = words(text).collect();
        assert_eq!(w.len(), 1, "{text:?}");
        assert!(matches!(w[0], Cow::Owned(_)), "{text:?}: {:?}", w[0]);
    }
}

// The same words through the callback form.

#[test]
fn for_each_word_yields_the_same_words() {
    let text = "The (QUICK) brown fox\x0bjumps... -- ÜBER it's";
    let mut got = Vec::new();
    for_each_word(text, |w| got.push(w));
    assert_eq!(got, words(text).collect::<Vec<_>>());
    assert_eq!(
        got,
        ["the", "quick", "brown", "fox", "jumps", "über", "it's"]
    );
}

#[test]
fn iterator_is_fused() {
    let mut it = words("one ...");
    assert_eq!(it.next().as_deref(), Some("one"));
    assert_eq!(it.next(), None);
    assert_eq!(it.next(), None);
}

// The Wallaroo conformance case: the Bill of Rights.

#[test]
fn bill_of_rights_counts_match_wallaroo() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/wallaroo-word-count/count_this.txt"
    ))
    .expect("read count_this.txt");
    let expected = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/wallaroo-word-count/expected.json"
    ))
    .expect("read expected.json");
    let expected: serde_json::Value = serde_json::from_str(&expected).expect("parse expected.json");
    let expected: HashMap<String, u64> = expected
        .as_object()
        .expect("expected.json is an object")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().expect("count is a number")))
        .collect();

    let mut counts: HashMap<String, u64> = HashMap::new();
    for message in text.lines().filter(|l| !l.trim().is_empty()) {
        for_each_word(message, |w| *counts.entry(w.into_owned()).or_default() += 1);
    }

    assert_eq!(expected.len(), 217);
    assert_eq!(expected.values().sum::<u64>(), 482);
    assert_eq!(counts.len(), 217);
    assert_eq!(counts.values().sum::<u64>(), 482);
    assert_eq!(counts, expected);
}
