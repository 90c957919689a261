//! A deterministic synthetic corpus, so that `bettong bench` runs with no input file.
//!
//! It follows the shape of the shared `gen_corpus.py` (Zipf-distributed words over a fixed
//! vocabulary, some capitalised or wrapped in punctuation, an occasional newline inside a
//! message) without needing Python at run time. For published figures use gen_corpus.py's
//! output with `--framed-file`, so that peers are measured on the same bytes.

/// A small, fast, deterministic generator (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (any value; zero is remapped).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A float in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An integer in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// Framed messages of `words_per_msg` words drawn from a Zipf(1) law over `vocab` words.
///
/// ```
/// let framed = bettong::synth::zipf_corpus(100, 10, 1000, 1);
/// assert_eq!(bettong::corpus::count_frames(&framed).unwrap(), 100);
/// assert_eq!(framed, bettong::synth::zipf_corpus(100, 10, 1000, 1));
/// ```
pub fn zipf_corpus(messages: usize, words_per_msg: usize, vocab: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let vocab = vocab.max(1);
    let words: Vec<String> = (0..vocab)
        .map(|i| {
            // Distinct by construction: the index in base 26, padded with random letters.
            let mut w = String::new();
            let mut n = i;
            loop {
                w.push((b'a' + (n % 26) as u8) as char);
                n /= 26;
                if n == 0 {
                    break;
                }
            }
            w.push('q');
            for _ in 0..rng.below(5) {
                w.push((b'a' + rng.below(26) as u8) as char);
            }
            w
        })
        .collect();
    let mut cum = Vec::with_capacity(vocab);
    let mut total = 0.0;
    for i in 0..vocab {
        total += 1.0 / (i + 1) as f64;
        cum.push(total);
    }
    let deco = [
        ("", ","),
        ("", "."),
        ("\"", "\""),
        ("(", ")"),
        ("", "!"),
        ("", "?"),
    ];
    let mut out = Vec::new();
    let mut text = String::new();
    for _ in 0..messages {
        text.clear();
        for j in 0..words_per_msg {
            if j > 0 {
                text.push(if rng.below(100) < 2 { '\n' } else { ' ' });
            }
            let x = rng.next_f64() * total;
            let w = &words[cum.partition_point(|&c| c < x).min(vocab - 1)];
            let r = rng.below(10);
            let (pre, post) = if r < 2 {
                deco[rng.below(deco.len() as u64) as usize]
            } else {
                ("", "")
            };
            text.push_str(pre);
            if r == 0 {
                let mut c = w.chars();
                if let Some(f) = c.next() {
                    text.extend(f.to_uppercase());
                    text.push_str(c.as_str());
                }
            } else {
                text.push_str(w);
            }
            text.push_str(post);
        }
        bettong_engine::codec::encode_frame(text.as_bytes(), &mut out);
    }
    out
}
