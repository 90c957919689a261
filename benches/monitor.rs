//! What watching a running engine costs, off its cores and on them: the copy of one core's
//! latency histogram (the only time a reader holds the lock a core records into), one Prometheus
//! scrape of 2 cores' metrics and one `/metrics.json` sample. The metrics are those of a real
//! 2-core word-count run over a memory source (every counter and histogram filled).
//!
//! Run with:
//!
//! ```text
//! cargo bench --bench monitor
//! ```

use std::hint::black_box;

use bettong::synth::zipf_corpus;
use bettong_engine::metrics::new_histogram;
use bettong_engine::monitor::{prometheus, Sampler};
use bettong_engine::{Engine, MemorySource, Metrics, SinkConfig, SourceConfig};
use criterion::{criterion_group, criterion_main, Criterion};

/// The metrics of a finished 2-core word-count run.
fn filled_metrics() -> Metrics {
    let framed = zipf_corpus(20_000, 10, 5_000, 1);
    let running = Engine::new()
        .cores(2)
        .start(
            bettong::app::word_count(),
            SourceConfig::Memory(MemorySource::from_framed(framed).expect("whole frames")),
            SinkConfig::Discard,
        )
        .expect("start the engine");
    let metrics = running.metrics().clone();
    running.join().expect("run the engine");
    metrics
}

fn bench(c: &mut Criterion) {
    // A histogram with values spread from 1 µs to 1 s, as a busy core's is.
    let mut h = new_histogram();
    let mut v = 1u64;
    for _ in 0..100_000 {
        h.record(v).unwrap();
        v = (v * 7 + 13) % 1_000_000 + 1;
    }
    c.bench_function("latency histogram copy (the lock held)", |b| {
        b.iter(|| black_box(h.clone()))
    });
    let metrics = filled_metrics();
    let registry = prometheus::registry(metrics.clone());
    c.bench_function("scrape /metrics, 2 cores", |b| {
        b.iter(|| black_box(prometheus::encode(&registry)))
    });
    let mut sampler = Sampler::new(metrics);
    c.bench_function("sample for /metrics.json, 2 cores", |b| {
        b.iter(|| black_box(sampler.sample().json().to_string()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
