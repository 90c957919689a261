//! The engine's channel source and sink (`bettong_engine::channel_source`, `channel_sink`), the
//! plug-in through which another thread (the NATS bridge) feeds and drains the cores: exact
//! counts through both, with batches spread over lanes; and backpressure both ways: with the
//! sink's consumer stalled, the producer is held back with most of its input unsent, and
//! everything arrives once the consumer reads again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bettong_engine::channel_sink::{channel_sink, ChunkReceiver};
use bettong_engine::channel_source::{channel_source, BatchSender};
use bettong_engine::{Engine, SinkConfig, SourceConfig};

use crate::support::{frame_all, random_message, reference_counts, Rng, WAIT};

/// `n` batches of `per_batch` random messages each, framed, and the reference counts.
fn batches(seed: u64, n: usize, per_batch: usize) -> (Vec<Vec<u8>>, HashMap<String, u64>) {
    let mut rng = Rng::new(seed);
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut out = Vec::new();
    for _ in 0..n {
        let msgs: Vec<String> = (0..per_batch)
            .map(|_| random_message(&mut rng, 1, 10))
            .collect();
        for (w, c) in reference_counts(msgs.iter().map(|m| m.as_bytes())) {
            *counts.entry(w).or_insert(0) += c;
        }
        out.push(frame_all(&msgs));
    }
    (out, counts)
}

/// A runtime to wait on the queues from a plain thread, as the NATS bridge's does.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Sends every batch, lane `i % 3` for batch `i`, counting them in `sent`; then drops the
/// sender, which ends the source.
fn produce(tx: BatchSender, batches: Vec<Vec<u8>>, sent: Arc<AtomicU64>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let rt = runtime();
        for (i, b) in batches.into_iter().enumerate() {
            rt.block_on(tx.send(i % 3, Box::new(b)))
                .expect("the engine takes batches until the source ends");
            sent.fetch_add(1, SeqCst);
        }
    })
}

/// Reads every chunk until the engine has finished, once `go` is set; returns each word's last
/// count, checking that a word's counts arrive in increasing order.
fn consume(rx: ChunkReceiver, go: Arc<AtomicU64>) -> thread::JoinHandle<HashMap<String, u64>> {
    thread::spawn(move || {
        while go.load(SeqCst) == 0 {
            thread::sleep(Duration::from_millis(10));
        }
        let rt = runtime();
        let mut last: HashMap<String, u64> = HashMap::new();
        while let Some(chunk) = rt.block_on(rx.recv()) {
            for line in String::from_utf8(chunk.bytes).expect("UTF-8").lines() {
                let (w, c) = line.rsplit_once(" => ").expect("word => count");
                let c: u64 = c.parse().expect("a count");
                let prev = last.insert(w.to_string(), c).unwrap_or(0);
                assert_eq!(c, prev + 1, "{w}'s counts must follow each other");
            }
        }
        last
    })
}

#[test]
fn channel_source_and_sink_count_exactly_over_lanes() {
    let (input, expected) = batches(7, 300, 20);
    let (tx, src) = channel_source("test", 3, 4);
    let (sink, rx) = channel_sink(4);
    let sent = Arc::new(AtomicU64::new(0));
    let producer = produce(tx, input, sent.clone());
    let consumer = consume(rx, Arc::new(AtomicU64::new(1)));
    let report = Engine::new()
        .cores(2)
        .run(
            bettong::app::word_count(),
            SourceConfig::Channel(src),
            SinkConfig::Channel(sink),
        )
        .expect("the engine runs");
    producer.join().expect("the producer ends");
    let got = consumer.join().expect("the consumer ends");
    assert_eq!(sent.load(SeqCst), 300);
    assert_eq!(report.total().frames_in, 300 * 20);
    assert_eq!(got, expected, "the final counts must be the reference's");
}

#[test]
fn a_stalled_channel_sink_holds_the_producer_back() {
    let total = 4000;
    let (input, expected) = batches(11, total, 20);
    let (tx, src) = channel_source("test", 3, 2);
    let (mut sink, rx) = channel_sink(2);
    sink.max_held_bytes = 16 * 1024;
    let sent = Arc::new(AtomicU64::new(0));
    let go = Arc::new(AtomicU64::new(0));
    let producer = produce(tx, input, sent.clone());
    let consumer = consume(rx, go.clone());
    let running = Engine::new()
        .cores(2)
        .start(
            bettong::app::word_count(),
            SourceConfig::Channel(src),
            SinkConfig::Channel(sink),
        )
        .expect("the engine starts");
    // The sink's consumer reads nothing: the producer must come to a stop, most input unsent.
    let deadline = Instant::now() + WAIT;
    let mut seen = sent.load(SeqCst);
    loop {
        thread::sleep(Duration::from_millis(500));
        let now = sent.load(SeqCst);
        if now == seen {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the producer never stopped while the sink was stalled: {now} of {total} sent"
        );
        seen = now;
    }
    assert!(
        seen < total as u64 / 2,
        "a stalled sink let {seen} of {total} batches in"
    );
    go.store(1, SeqCst);
    producer.join().expect("the producer ends");
    let report = running.join().expect("the engine finishes");
    let got = consumer.join().expect("the consumer ends");
    assert_eq!(report.total().frames_in, total as u64 * 20);
    assert_eq!(got, expected, "the final counts must be the reference's");
}
