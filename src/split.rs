//! Splitting a message into words, exactly as the word-count contract says
//! (`spec/word-count.md`, "Splitting a message into words"):
//!
//! 1. split on runs of the six ASCII separators: space, `\t`, `\n`, `\x0b` (VT), `\x0c` (FF), `\r`
//!    (VT included, unlike [`u8::is_ascii_whitespace`]; non-ASCII spaces belong to words);
//! 2. lowercase each piece with full Unicode lowercasing ([`str::to_lowercase`], final sigma
//!    included);
//! 3. strip [`PUNCT`] from both ends (punctuation inside a word stays);
//! 4. drop empty words.
//!
//! This is the hot path of the word-count server, so the splitter is zero-copy and
//! allocation-free for the common case: the scan finds the end of a word eight bytes at a time
//! with bit tricks on a `u64` (no `char` decoding, no `unsafe`), and a word that is already
//! lowercase ASCII is yielded as a
//! [`Cow::Borrowed`] slice of the message. Only words holding an ASCII uppercase letter or any
//! non-ASCII character are lowercased into a fresh [`String`].
//!
//! # Why stripping before lowercasing is the same as the spec's lowercase-then-strip
//!
//! The spec lowercases the whole piece and then strips; we strip the piece first and lowercase
//! only its core. For a piece `p = prefix + core + suffix`, where `prefix` and `suffix` are the
//! maximal runs of [`PUNCT`] bytes at its ends, the two agree because:
//!
//! * `str::to_lowercase` maps every character on its own, except `Σ` (the final-sigma rule, see
//!   below). Every [`PUNCT`] character lowercases to itself, so
//!   `lower(p) = prefix + lower(core) + suffix` as long as `core`'s sigmas come out the same.
//! * No character lowercases to a string holding ASCII punctuation: ASCII characters other than
//!   `A`..=`Z` map to themselves, and the only non-ASCII characters whose lowercase holds ASCII
//!   are `İ` (U+0130, to `i` + U+0307) and the Kelvin sign (U+212A, to `k`): letters, not
//!   punctuation (`tests/it/split_props.rs` checks this over every `char`). `core` starts and ends
//!   with a non-[`PUNCT`] character, so `lower(core)` starts and ends with a non-[`PUNCT`]
//!   character too, and stripping `lower(p)` removes exactly `prefix` and `suffix`.
//! * The final-sigma rule (Rust's `map_uppercase_sigma`, Unicode's `Final_Sigma`) turns `Σ` into
//!   `ς` iff, skipping case-ignorable characters, the nearest character before it is cased and
//!   the nearest after it is not (or there is none). Some [`PUNCT`] characters are
//!   case-ignorable (`'`, `.`, `:`, `^`, `` ` ``), but none is cased. So if the look-around from a
//!   `Σ` in `core` runs off the end of `core` into `prefix` or `suffix`, it either skips all of
//!   it and hits the end of the piece, or stops at an uncased punctuation character: both give
//!   "not cased", which is what hitting the end of `core` gives. The context of every `Σ` is
//!   the same in `p` and in `core`, so every sigma lowercases the same way.
//!
//! Hence `lower(p).strip(PUNCT) == lower(core)`. The code still trims the owned lowercase word
//! again when its first or last byte is punctuation (never, by the argument above, and cheap to
//! check) and drops it if it ends up empty (also never: no character lowercases to nothing).

use std::borrow::Cow;
use std::iter::FusedIterator;

/// Wallaroo's punctuation set, space included: the bytes stripped from both ends of every word.
///
/// All of them are ASCII, so stripping them byte by byte always leaves a valid `&str`.
///
/// ```
/// use bettong::split::PUNCT;
/// assert_eq!(PUNCT, b" !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~");
/// assert_eq!(PUNCT.len(), 33);
/// assert!(PUNCT.iter().all(|b| b.is_ascii_punctuation() || *b == b' '));
/// ```
pub const PUNCT: &[u8] = b" !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// Byte classes, one bit each, looked up in [`CLASS`].
const SEP: u8 = 1;
const PUN: u8 = 2;
/// An ASCII uppercase letter or any byte of a non-ASCII character: the word needs lowercasing.
const LOW: u8 = 4;

/// The class of every byte value, built at compile time.
static CLASS: [u8; 256] = build_class_table();

const fn build_class_table() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut b = 0usize;
    while b < 256 {
        let byte = b as u8;
        if is_separator(byte) {
            t[b] |= SEP;
        }
        if byte.is_ascii_uppercase() || !byte.is_ascii() {
            t[b] |= LOW;
        }
        b += 1;
    }
    let mut i = 0;
    while i < PUNCT.len() {
        t[PUNCT[i] as usize] |= PUN;
        i += 1;
    }
    t
}

#[inline(always)]
fn class(b: u8) -> u8 {
    CLASS[b as usize]
}

#[inline(always)]
fn is_punct_char(c: char) -> bool {
    c.is_ascii() && class(c as u8) & PUN != 0
}

/// Whether `b` separates words: space, `\t`, `\n`, `\x0b` (VT), `\x0c` (FF) or `\r`.
///
/// Unlike [`u8::is_ascii_whitespace`], VT is a separator. Bytes of non-ASCII characters
/// (U+00A0, U+3000, ...) never are: those spaces belong to words.
///
/// ```
/// use bettong::split::is_separator;
/// assert!(is_separator(b'\x0b'));
/// assert!(!b'\x0b'.is_ascii_whitespace());
/// for b in [b' ', b'\t', b'\n', b'\x0c', b'\r'] {
///     assert!(is_separator(b));
/// }
/// assert!(!is_separator(b'a'));
/// assert!(!is_separator(0xA0));
/// ```
#[inline]
pub const fn is_separator(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// The words of `text`, in order, lowercased and stripped of [`PUNCT`] at both ends, empty ones
/// dropped (see the [module docs](self) for the rules).
///
/// Words that are already lowercase ASCII borrow from `text`; the others are lowercased into an
/// owned `String`.
///
/// ```
/// use std::borrow::Cow;
/// use bettong::split::words;
///
/// let w: Vec<_> = words("\"Hello,\"  it's\x0bthe ÉCOLE... -- !!").collect();
/// assert_eq!(w, ["hello", "it's", "the", "école"]);
/// assert!(matches!(w[1], Cow::Borrowed("it's")));
/// assert!(matches!(w[3], Cow::Owned(_)));
/// ```
#[inline]
pub fn words(text: &str) -> Words<'_> {
    Words { text, pos: 0 }
}

/// Calls `f` on every word of `text`, in order: the same words as [`words`].
///
/// ```
/// use bettong::split::for_each_word;
///
/// let mut n = 0;
/// for_each_word("To be, or not to be.", |w| {
///     assert!(w == "to" || w == "be" || w == "or" || w == "not");
///     n += 1;
/// });
/// assert_eq!(n, 6);
/// ```
#[inline]
pub fn for_each_word<'a>(text: &'a str, mut f: impl FnMut(Cow<'a, str>)) {
    for w in words(text) {
        f(w);
    }
}

/// Iterator over the words of a message, made by [`words`].
///
/// Yields `Cow::Borrowed` slices of the message for lowercase-ASCII words and `Cow::Owned`
/// lowercased copies for the others. It is fused: once it returns `None` it always does.
///
/// ```
/// use bettong::split::words;
///
/// let mut it = words("(Bettong)\r\n");
/// assert_eq!(it.next().as_deref(), Some("bettong"));
/// assert_eq!(it.next(), None);
/// assert_eq!(it.next(), None);
/// ```
#[derive(Debug, Clone)]
pub struct Words<'a> {
    text: &'a str,
    /// Byte offset where the scan resumes: always 0, `text.len()`, or just after a piece, i.e.
    /// on an ASCII byte or at the end, hence a char boundary.
    pos: usize,
}

impl<'a> Words<'a> {
    /// The next piece stripped of [`PUNCT`], not yet lowercased, and whether it needs
    /// lowercasing (it holds an ASCII uppercase letter or a non-ASCII character).
    #[inline]
    fn next_core(&mut self) -> Option<(&'a str, bool)> {
        self.next_core_by(scan_piece)
    }

    /// [`Words::next_core`] with the byte-at-a-time scan ([`scan_piece_scalar`]).
    #[inline]
    fn next_core_scalar(&mut self) -> Option<(&'a str, bool)> {
        self.next_core_by(scan_piece_scalar)
    }

    /// The next piece, its end found by `scan`, stripped of [`PUNCT`]. Skipping the separators
    /// before a piece (nearly always one) and stripping its ends (a byte or two) go byte by
    /// byte: a SWAR skip measured the same (tuning.md, "Issue 11, point 6").
    #[inline(always)]
    fn next_core_by(
        &mut self,
        scan: impl Fn(&[u8], usize) -> (usize, bool),
    ) -> Option<(&'a str, bool)> {
        let text = self.text;
        let bytes = text.as_bytes();
        let len = bytes.len();
        let mut i = self.pos;
        loop {
            // Skip a run of separators.
            while i < len && class(bytes[i]) & SEP != 0 {
                i += 1;
            }
            if i == len {
                self.pos = len;
                return None;
            }
            let start = i;
            let (end, needs_lower) = scan(bytes, start);
            i = end;
            if let Some(core) = strip(text, start, end) {
                self.pos = end;
                return Some((core, needs_lower));
            }
        }
    }

    /// The next word, its core found by `next_core` (one of the two scans above).
    #[inline(always)]
    fn next_word(
        &mut self,
        next_core: fn(&mut Self) -> Option<(&'a str, bool)>,
    ) -> Option<Cow<'a, str>> {
        loop {
            let (core, needs_lower) = next_core(self)?;
            if !needs_lower {
                return Some(Cow::Borrowed(core));
            }
            if let Some(lower) = lowercase_core(core) {
                return Some(Cow::Owned(lower));
            }
        }
    }
}

/// Where the piece starting at `start` (not a separator) ends, the next separator or the end
/// of `bytes`, and whether it needs lowercasing, eight bytes at a time ([`swar`]). PUNCT bytes
/// are lowercase ASCII, so the flag over the piece equals the flag over its core.
#[inline(always)]
fn scan_piece(bytes: &[u8], start: usize) -> (usize, bool) {
    let len = bytes.len();
    let mut i = start;
    let mut needs_lower = 0;
    loop {
        if i >= len {
            return (len, needs_lower != 0);
        }
        let (x, pad) = swar::chunk(bytes, i);
        let seps = swar::separators(x) | pad;
        if seps != 0 {
            // Bits up to and including the first separator's top bit: the bytes of the
            // piece, and the separator, which never needs lowercasing.
            needs_lower |= swar::needs_lower(x) & (seps ^ (seps - 1));
            return (i + swar::first_byte(seps), needs_lower != 0);
        }
        needs_lower |= swar::needs_lower(x);
        i += 8;
    }
}

/// [`scan_piece`] one byte at a time with the [`CLASS`] table: the splitter before the SWAR
/// scan, kept as the reference the property tests and the `split` bench compare it with.
#[inline(always)]
fn scan_piece_scalar(bytes: &[u8], start: usize) -> (usize, bool) {
    let mut i = start;
    let mut needs_lower = 0;
    while i < bytes.len() {
        let c = class(bytes[i]);
        if c & SEP != 0 {
            break;
        }
        needs_lower |= c;
        i += 1;
    }
    (i, needs_lower & LOW != 0)
}

/// `text[start..end]`, a piece, stripped of [`PUNCT`] at both ends; None if nothing is left.
/// Separators and PUNCT are ASCII, so the cuts fall on char boundaries and cannot panic.
#[inline(always)]
fn strip(text: &str, start: usize, end: usize) -> Option<&str> {
    let bytes = text.as_bytes();
    let mut s = start;
    while s < end && class(bytes[s]) & PUN != 0 {
        s += 1;
    }
    let mut e = end;
    while e > s && class(bytes[e - 1]) & PUN != 0 {
        e -= 1;
    }
    (s < e).then(|| &text[s..e])
}

/// SWAR ("SIMD within a register"): classifying eight bytes at once in a `u64`, without
/// `unsafe` or platform intrinsics. Byte `k` of a chunk is the message's byte `i + k` (a
/// little-endian load), and every mask below marks a byte by setting its top bit.
///
/// Every test works on the low seven bits of each byte (`x & !HI`), to which it adds a per-byte
/// constant below `0x80`: the sum stays below `0x100`, so no carry crosses into the next byte
/// and each test is exact, not the usual "may report false positives above the first hit"
/// zero-byte trick. Bytes with the top bit set (the bytes of non-ASCII characters) are then
/// taken out of the separator test and into the needs-lowercasing one.
mod swar {
    /// `0x01` in every byte.
    const LO: u64 = 0x0101_0101_0101_0101;
    /// `0x80` in every byte: the bit each mask sets.
    pub(super) const HI: u64 = 0x8080_8080_8080_8080;

    /// Top bit of each byte set iff it is at least `n` (for `n` in `1..=0x80`), looking at its
    /// low seven bits only.
    #[inline(always)]
    const fn at_least(low7: u64, n: u8) -> u64 {
        low7 + LO * (0x80 - n as u64)
    }

    /// Top bit set in each byte that is a separator: `\t`, `\n`, VT, FF, `\r` (9..=13) or space.
    #[inline(always)]
    pub(super) const fn separators(x: u64) -> u64 {
        let low7 = x & !HI;
        let controls = at_least(low7, 9) & !at_least(low7, 14);
        // A byte of `low7 ^ 0x20` is zero iff the byte is a space (its top bit aside); adding
        // 0x7f sets the top bit of every byte but the zero ones.
        let spaces = !((low7 ^ (LO * 0x20)) + LO * 0x7f);
        (controls | spaces) & !x & HI
    }

    /// Top bit set in each byte that needs lowercasing: `A`..=`Z`, or any non-ASCII byte.
    #[inline(always)]
    pub(super) const fn needs_lower(x: u64) -> u64 {
        let low7 = x & !HI;
        let upper = at_least(low7, b'A') & !at_least(low7, b'Z' + 1);
        (upper | x) & HI
    }

    /// Index of the first byte (the lowest) whose top bit is set in a non-zero mask.
    #[inline(always)]
    pub(super) const fn first_byte(mask: u64) -> usize {
        (mask.trailing_zeros() / 8) as usize
    }

    /// The eight bytes from `i` (`i < bytes.len()`), and a mask marking the ones past the end
    /// of `bytes`, which read as 0 and are to be taken as separators. Near the end of a message
    /// of at least eight bytes, its last eight bytes are loaded and shifted down, so that only
    /// messages shorter than eight bytes pay for a copy.
    #[inline(always)]
    pub(super) fn chunk(bytes: &[u8], i: usize) -> (u64, u64) {
        let len = bytes.len();
        if i + 8 <= len {
            return (load(bytes, i), 0);
        }
        let rest = len - i; // 1..=7
        let past_end = HI << (8 * rest);
        if len >= 8 {
            (load(bytes, len - 8) >> (8 * (8 - rest)), past_end)
        } else {
            let mut buf = [0u8; 8];
            buf[..rest].copy_from_slice(&bytes[i..]);
            (u64::from_le_bytes(buf), past_end)
        }
    }

    #[inline(always)]
    fn load(bytes: &[u8], i: usize) -> u64 {
        let eight: [u8; 8] = bytes[i..i + 8].try_into().expect("eight bytes");
        u64::from_le_bytes(eight)
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::split::{class, LOW, SEP};

        /// Every byte value in every one of the eight positions, with every other position
        /// holding each byte class: the masks agree with the lookup table.
        #[test]
        fn masks_agree_with_the_class_table() {
            for b in 0..=255u8 {
                for fill in [0u8, b' ', b'A', b'a', 0x80, 0xff, b'\t', b'Z', b'@', b'['] {
                    for k in 0..8 {
                        let mut bytes = [fill; 8];
                        bytes[k] = b;
                        let x = u64::from_le_bytes(bytes);
                        let (seps, lower) = (separators(x), needs_lower(x));
                        for (j, &byte) in bytes.iter().enumerate() {
                            let top = 8 * j as u32 + 7;
                            assert_eq!(seps >> top & 1 == 1, class(byte) & SEP != 0, "{byte:#x}");
                            assert_eq!(lower >> top & 1 == 1, class(byte) & LOW != 0, "{byte:#x}");
                            assert_eq!((seps | lower) & !HI, 0);
                        }
                    }
                }
            }
        }

        #[test]
        fn chunk_marks_the_bytes_past_the_end() {
            let text = b"abcdefghij";
            for len in 1..=text.len() {
                for i in 0..len {
                    let (x, pad) = chunk(&text[..len], i);
                    let bytes = x.to_le_bytes();
                    let n = (len - i).min(8);
                    assert_eq!(&bytes[..n], &text[i..i + n]);
                    assert!(bytes[n..].iter().all(|&b| b == 0));
                    assert_eq!(pad.count_ones() as usize, 8 - n);
                    assert_eq!(pad & !HI, 0);
                    if n < 8 {
                        assert_eq!(first_byte(pad), n);
                    }
                }
            }
        }
    }
}

/// The words of `text` found by the scalar scan (the splitter before the SWAR one), for the
/// property tests and the `split` bench to compare with [`words`]: the same words, in order.
///
/// ```
/// use bettong::split::{scalar_words, words};
/// let text = "\"Hello,\"  it's\x0bthe ÉCOLE... -- !!";
/// assert!(scalar_words(text).eq(words(text)));
/// ```
#[doc(hidden)]
pub fn scalar_words(text: &str) -> ScalarWords<'_> {
    ScalarWords(words(text))
}

/// Iterator made by [`scalar_words`].
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct ScalarWords<'a>(Words<'a>);

impl<'a> Iterator for ScalarWords<'a> {
    type Item = Cow<'a, str>;

    fn next(&mut self) -> Option<Cow<'a, str>> {
        self.0.next_word(Words::next_core_scalar)
    }
}

/// Lowercases a stripped core that needs it; None if nothing is left (never, see the module
/// docs, but cheap to check). Lowercasing the core equals lowercasing the piece then stripping.
fn lowercase_core(core: &str) -> Option<String> {
    let lower = core.to_lowercase();
    let lb = lower.as_bytes();
    let ends_in_punct = match (lb.first(), lb.last()) {
        (Some(&f), Some(&l)) => class(f) & PUN != 0 || class(l) & PUN != 0,
        _ => false,
    };
    let lower = if ends_in_punct {
        lower.trim_matches(is_punct_char).to_owned()
    } else {
        lower
    };
    (!lower.is_empty()).then_some(lower)
}

/// Calls `f` on every word of `text`, like [`for_each_word`], but lowercases ASCII words into
/// `scratch` instead of a new `String`: no allocation at all unless a word is non-ASCII. Each
/// word passed to `f` is valid only during that call. The word-count app keeps one `scratch`
/// per core.
///
/// ```
/// let mut scratch = String::new();
/// let mut got = Vec::new();
/// bettong::split::for_each_word_reusing("The CAT, the ÉCOLE", &mut scratch, |w| {
///     got.push(w.into_owned())
/// });
/// assert_eq!(got, ["the", "cat", "the", "école"]);
/// ```
#[inline]
pub fn for_each_word_reusing(text: &str, scratch: &mut String, mut f: impl FnMut(Cow<'_, str>)) {
    let mut it = words(text);
    while let Some((core, needs_lower)) = it.next_core() {
        if !needs_lower {
            f(Cow::Borrowed(core));
        } else if core.is_ascii() {
            // ASCII lowercasing maps letters to letters: no PUNCT can appear at the ends.
            scratch.clear();
            scratch.push_str(core);
            scratch.make_ascii_lowercase();
            f(Cow::Borrowed(scratch.as_str()));
        } else if let Some(lower) = lowercase_core(core) {
            f(Cow::Owned(lower));
        }
    }
}

impl<'a> Iterator for Words<'a> {
    type Item = Cow<'a, str>;

    /// The next word, or `None` at the end of the message.
    fn next(&mut self) -> Option<Cow<'a, str>> {
        self.next_word(Words::next_core)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        // Each word takes at least one byte plus a separator, except the last.
        let rest = self.text.len() - self.pos;
        (0, Some(rest.div_ceil(2)))
    }
}

impl FusedIterator for Words<'_> {}
