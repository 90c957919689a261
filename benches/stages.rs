//! Per-stage micro-benchmarks of the word-count hot path, each on one thread and with no engine
//! around it: `decode` (walking frames), `split` (frame payload to words), `hash_route` (key hash
//! and owner core), `state_update` (counting in a shard), `encode` (`word => count\n` lines) and
//! `batch` (copying words into a cross-core batch and reading them back).
//!
//! Every group reports throughput in words (`Throughput::Elements`), over the same synthetic
//! corpus: `bettong::synth::zipf_corpus(20_000, 10, 50_000, 1)`, 20 000 framed messages of 10
//! Zipf-distributed words. So the figures of different stages compare directly: the slowest
//! stage bounds what one core can do.
//!
//! Run with:
//!
//! ```text
//! cargo bench --bench stages
//! cargo bench --bench stages -- split      # one group only
//! ```

use std::borrow::Cow;
use std::hint::black_box;
use std::time::Duration;

use bettong::app::encode_line;
use bettong::split::{scalar_words, words};
use bettong::synth::zipf_corpus;
use bettong_engine::codec::{FrameDecoder, DEFAULT_MAX_FRAME};
use bettong_engine::key::SmallStr;
use bettong_engine::routing::{Batch, Router};
use bettong_engine::state::Shard;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};

/// Messages in the corpus: about 200 000 words, so one iteration takes milliseconds at most.
const MESSAGES: usize = 20_000;
const WORDS_PER_MSG: usize = 10;
const VOCAB: usize = 50_000;
const SEED: u64 = 1;
/// Cores the `hash_route` group spreads keys over.
const ROUTE_CORES: usize = 2;
/// Seed of the router's hash (any value: only the cost is measured).
const HASH_SEED: u64 = 0x6265_7474_6f6e_6721;
/// The `encode` group's output buffer is cleared when it grows past this.
const ENCODE_FLUSH: usize = 1 << 20;

/// The corpus and what earlier stages make of it, computed once outside the timed loops.
struct Fixture {
    framed: Vec<u8>,
    /// Every frame's payload as text.
    payloads: Vec<String>,
    /// Every word of every payload, in order.
    words: Vec<String>,
    /// Each word's hash from the router (as the decoding core computes it).
    hashes: Vec<u64>,
    /// Each word's running count, as the state stage would produce it.
    counts: Vec<u64>,
}

impl Fixture {
    fn new() -> Self {
        let framed = zipf_corpus(MESSAGES, WORDS_PER_MSG, VOCAB, SEED);
        let dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
        let mut payloads = Vec::with_capacity(MESSAGES);
        let mut pos = 0;
        while let Some((payload, used)) = dec.decode(&framed[pos..]).expect("frame too large") {
            payloads.push(String::from_utf8(payload.to_vec()).expect("synthetic text is UTF-8"));
            pos += used;
        }
        assert_eq!(pos, framed.len(), "corpus ends inside a frame");
        let words: Vec<String> = payloads
            .iter()
            .flat_map(|p| words(p).map(Cow::into_owned))
            .collect();
        let router = Router::new(ROUTE_CORES, HASH_SEED);
        let hashes: Vec<u64> = words.iter().map(|w| router.hash(w.as_str())).collect();
        let mut shard: Shard<str, u64> = Shard::new();
        let counts = words
            .iter()
            .zip(&hashes)
            .map(|(w, &h)| {
                let c = shard.get_or_insert_with(h, w.as_str(), |_| 0);
                *c += 1;
                *c
            })
            .collect();
        Fixture {
            framed,
            payloads,
            words,
            hashes,
            counts,
        }
    }

    fn word_count(&self) -> u64 {
        self.words.len() as u64
    }
}

/// A group that reports throughput in the corpus' words and keeps every run short.
fn group<'c>(
    c: &'c mut Criterion,
    name: &str,
    fx: &Fixture,
) -> BenchmarkGroup<'c, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(fx.word_count()))
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g
}

/// Splits every payload of the corpus with `split`, counting the words.
fn split_all<'a, I: Iterator<Item = std::borrow::Cow<'a, str>>>(
    fx: &'a Fixture,
    split: impl Fn(&'a str) -> I,
) -> usize {
    let mut n = 0usize;
    for p in &fx.payloads {
        for w in split(black_box(p)) {
            black_box(&w);
            n += 1;
        }
    }
    assert_eq!(n as u64, fx.word_count());
    n
}

fn stages(c: &mut Criterion) {
    let fx = Fixture::new();
    let id = format!("{MESSAGES}msgs");

    // Walk every frame of the corpus, in place, as a source does.
    let mut g = group(c, "decode", &fx);
    g.bench_function(&id, |b| {
        let dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
        b.iter(|| {
            let buf = black_box(&fx.framed[..]);
            let (mut pos, mut frames, mut bytes) = (0, 0usize, 0usize);
            while let Ok(Some((payload, used))) = dec.decode(&buf[pos..]) {
                frames += 1;
                bytes += payload.len();
                pos += used;
            }
            black_box((frames, bytes))
        })
    });
    g.finish();

    // Split every payload into words (lowercasing, punctuation stripping), counting them: the
    // splitter, then the byte-at-a-time scan it replaced (`scalar`), side by side.
    let mut g = group(c, "split", &fx);
    g.bench_function(&id, |b| b.iter(|| split_all(&fx, words)));
    g.bench_function(format!("{id}/scalar"), |b| {
        b.iter(|| split_all(&fx, scalar_words))
    });
    g.finish();

    // Hash every word once and pick its owner core.
    let mut g = group(c, "hash_route", &fx);
    g.bench_function(format!("{id}/{ROUTE_CORES}cores"), |b| {
        let router = Router::new(ROUTE_CORES, HASH_SEED);
        b.iter(|| {
            let mut per_core = [0usize; ROUTE_CORES];
            for w in &fx.words {
                let h = router.hash(black_box(w));
                per_core[router.owner(h)] += 1;
            }
            black_box(per_core)
        })
    });
    g.finish();

    // Count every word in a warm shard (the vocabulary is already present, as in steady state),
    // with the hash carried from the decoding core.
    let mut g = group(c, "state_update", &fx);
    g.bench_function(&id, |b| {
        let mut shard: Shard<str, u64> = Shard::new();
        for (w, &h) in fx.words.iter().zip(&fx.hashes) {
            *shard.get_or_insert_with(h, w.as_str(), |_| 0) += 1;
        }
        b.iter(|| {
            for (w, &h) in fx.words.iter().zip(&fx.hashes) {
                *shard.get_or_insert_with(black_box(h), w.as_str(), |_| 0) += 1;
            }
            shard.len()
        })
    });
    // The same, prefetching each word's slot 8 words ahead, as a core applies a batch.
    g.bench_function(format!("{id}/prefetch8"), |b| {
        let mut shard: Shard<str, u64> = Shard::new();
        for (w, &h) in fx.words.iter().zip(&fx.hashes) {
            *shard.get_or_insert_with(h, w.as_str(), |_| 0) += 1;
        }
        b.iter(|| {
            for (i, (w, &h)) in fx.words.iter().zip(&fx.hashes).enumerate() {
                if let Some(&ahead) = fx.hashes.get(i + 8) {
                    shard.prefetch(ahead);
                }
                *shard.get_or_insert_with(black_box(h), w.as_str(), |_| 0) += 1;
            }
            shard.len()
        })
    });
    g.finish();

    // Encode one `word => count\n` line per word into a sink chunk.
    let mut g = group(c, "encode", &fx);
    g.bench_function(&id, |b| {
        let mut out = Vec::with_capacity(ENCODE_FLUSH + 4096);
        b.iter(|| {
            for (w, &n) in fx.words.iter().zip(&fx.counts) {
                encode_line(w, black_box(n), &mut out);
                if out.len() > ENCODE_FLUSH {
                    black_box(&out);
                    out.clear();
                }
            }
            out.len()
        })
    });
    g.finish();

    // Copy every word into a cross-core batch (sized like the worker's refilled outboxes),
    // then read it back as the owner core does.
    let mut g = group(c, "batch", &fx);
    g.bench_function(&id, |b| {
        b.iter(|| {
            let mut batch: Batch<SmallStr, ()> = Batch::with_capacity(fx.words.len());
            for (w, &h) in fx.words.iter().zip(&fx.hashes) {
                batch.push(h, SmallStr::new(black_box(w)), ());
            }
            let mut sum = 0u64;
            for (h, k, ()) in batch.iter() {
                sum = sum.wrapping_add(h ^ k.as_bytes().len() as u64);
            }
            black_box(sum)
        })
    });
    g.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
