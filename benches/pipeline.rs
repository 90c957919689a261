//! The whole word-count pipeline in process: `Engine::run` of `bettong::app::word_count()` over a
//! memory source, output encoded and discarded (`SinkConfig::Discard`), on 1 core and on every
//! online core. Each iteration starts the pinned executors, decodes, splits, routes, counts and
//! encodes the whole corpus, and joins the cores, so engine start-up and shutdown are included.
//!
//! Throughput is reported in words (`Throughput::Elements`) of the synthetic corpus
//! `bettong::synth::zipf_corpus(100_000, 10, 50_000, 1)` (100 000 framed messages, 1 000 000
//! words). No network is involved: for the TCP server figures use `bettong bench`.
//!
//! Run with:
//!
//! ```text
//! cargo bench --bench pipeline
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bettong::split::words;
use bettong::synth::zipf_corpus;
use bettong_engine::codec::FrameDecoder;
use bettong_engine::{online_cpus, Engine, MemorySource, SinkConfig, SourceConfig};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};

const MESSAGES: usize = 100_000;
const WORDS_PER_MSG: usize = 10;
const VOCAB: usize = 50_000;
const SEED: u64 = 1;

/// Words in the corpus, as the splitter sees them.
fn count_words(framed: &[u8]) -> u64 {
    let dec = FrameDecoder::new(bettong_engine::codec::DEFAULT_MAX_FRAME);
    let (mut pos, mut n) = (0, 0u64);
    while let Some((payload, used)) = dec.decode(&framed[pos..]).expect("frame too large") {
        let text = std::str::from_utf8(payload).expect("synthetic text is UTF-8");
        n += words(text).count() as u64;
        pos += used;
    }
    n
}

/// Runs the word count over `corpus` on `cores` cores and returns the words it counted.
fn run(cores: usize, corpus: &Arc<[u8]>) -> u64 {
    let source = MemorySource::from_framed(corpus.clone()).expect("corpus is whole frames");
    let report = Engine::new()
        .cores(cores)
        .run(
            bettong::app::word_count(),
            SourceConfig::Memory(source),
            SinkConfig::Discard,
        )
        .expect("engine run failed");
    report.total().records_applied
}

fn pipeline(c: &mut Criterion) {
    let corpus: Arc<[u8]> = zipf_corpus(MESSAGES, WORDS_PER_MSG, VOCAB, SEED).into();
    let words = count_words(&corpus);
    let online = online_cpus().len();
    let mut core_counts = vec![1];
    if online > 1 {
        core_counts.push(online);
    }
    // Every word must be counted exactly once, whatever the number of cores.
    for &n in &core_counts {
        assert_eq!(run(n, &corpus), words, "word count on {n} cores lost words");
    }

    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(words))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for n in core_counts {
        g.bench_function(format!("{MESSAGES}msgs/{n}cores"), |b| {
            b.iter(|| black_box(run(n, &corpus)))
        });
    }
    g.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
