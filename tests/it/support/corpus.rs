//! Building test input: the project's deterministic [`Rng`] with the helpers tests want,
//! [`random_message`] (text that exercises the splitting rules) and [`frame_all`] (framing).

/// The project's deterministic generator (`bettong::synth::Rng`), with the helpers tests want.
#[derive(Debug, Clone)]
pub struct Rng(bettong::synth::Rng);

impl Rng {
    /// A generator for `seed` (any value; 0 is remapped).
    pub fn new(seed: u64) -> Self {
        Rng(bettong::synth::Rng::new(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True once in `n` times on average.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// A random element of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Frames every payload into one buffer.
pub fn frame_all<T: AsRef<[u8]>>(payloads: &[T]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in payloads {
        bettong::corpus::push_frame(&mut out, p.as_ref());
    }
    out
}

/// Words that exercise the splitting rules beyond plain ASCII: Unicode case mappings (final
/// sigma, `ß`, `İ`, the Kelvin sign), inner punctuation that stays, a no-break space that
/// belongs to its word, and pieces that are only punctuation.
const TRICKY_WORDS: &[&str] = &[
    "ÉCOLE",
    "Straße",
    "ΟΔΟΣ",
    "ΣΑΣ.",
    "naïve",
    "it's",
    "a...b",
    "--",
    "!!!",
    "x\u{a0}y",
    "İstanbul",
    "\u{212a}elvin",
    "Ωmega",
    "o'clock",
    "e-mail",
    "(parens)",
    "ǅemal",
];

/// Separators between tokens: the spec's six, alone and in runs.
const SEPARATORS: &[&str] = &[
    " ", " ", " ", "\t", "\n", "\x0b", "\x0c", "\r", "  ", "\r\n", " \t\x0b ",
];

/// A random separator from [`SEPARATORS`].
fn separator(rng: &mut Rng) -> &'static str {
    SEPARATORS[rng.below(SEPARATORS.len())]
}

/// A random message of `lo..=hi` tokens drawn from the Bill of Rights and [`TRICKY_WORDS`], in
/// random case, with random punctuation around them and random separators between them.
pub fn random_message(rng: &mut Rng, lo: usize, hi: usize) -> String {
    thread_local! {
        static BILL: Vec<&'static str> =
            bettong::corpus::BILL_OF_RIGHTS.split_ascii_whitespace().collect();
    }
    let punct: Vec<char> = bettong::split::PUNCT
        .iter()
        .filter(|&&b| b != b' ')
        .map(|&b| b as char)
        .collect();
    let mut msg = String::new();
    if rng.one_in(4) {
        msg.push_str(separator(rng));
    }
    for i in 0..rng.range(lo, hi) {
        if i > 0 {
            msg.push_str(separator(rng));
        }
        for _ in 0..rng.below(3) {
            if rng.one_in(2) {
                msg.push(*rng.pick(&punct));
            }
        }
        let base = if rng.one_in(4) {
            *rng.pick(TRICKY_WORDS)
        } else {
            BILL.with(|b| *rng.pick(b))
        };
        match rng.below(4) {
            0 => msg.push_str(base),
            1 => msg.push_str(&base.to_lowercase()),
            2 => msg.push_str(&base.to_uppercase()),
            _ => {
                for c in base.chars() {
                    if rng.one_in(2) {
                        msg.extend(c.to_uppercase());
                    } else {
                        msg.extend(c.to_lowercase());
                    }
                }
            }
        }
        for _ in 0..rng.below(3) {
            if rng.one_in(2) {
                msg.push(*rng.pick(&punct));
            }
        }
    }
    if rng.one_in(4) {
        msg.push_str(separator(rng));
    }
    msg
}
