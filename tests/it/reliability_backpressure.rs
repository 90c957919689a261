//! Backpressure end to end: a slow receiver slows the sources, and the server's memory stays
//! bounded however much the clients send.
//!
//! 50 connections flood the server while the receiver reads at a trickle. The server must stop
//! reading (its output held for the sink is bounded by `--sink-buffer`, and sources wait while it
//! is full), so its resident memory stays under a stated bound instead of growing with the
//! input; then the receiver speeds up and every word's outputs must still arrive 1..N in order on
//! one connection, with exactly the reference counts.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{
    frame_all, peak_rss_mib, reference_counts, rss_mib, total_lines, Flood, Pace, Rng, Server,
    TestSink, WAIT,
};

/// Flooding connections.
const CLIENTS: usize = 50;
/// Framed input per connection: 50 MiB in all, some 80 MiB of output. All of it would fit in
/// the kernel's socket buffers (about 4 MiB per connection), so only the server itself can hold
/// the reading back.
const INPUT_PER_CLIENT: usize = 1024 * 1024;
/// How long the receiver trickles while the clients flood.
const TRICKLE_FOR: Duration = Duration::from_secs(2);
/// The trickle: bytes per second per sink connection (two connections, one per core).
const TRICKLE: u64 = 64 * 1024;
/// The bound on how much the server's resident memory may grow above its level at rest, at its
/// peak over the whole test (the trickle, then draining at full speed). What may grow, per core:
/// the output held for the sink (`--sink-buffer`, 4 MiB), the batches in the rings between cores
/// (64 each way), one read's worth of output per connection waiting to be queued, and the
/// io_uring receive buffers (4 MiB). Measured on 2 cores in a debug build: 15 to 30 MiB (peak
/// 47 to 62 MiB from 32 MiB at rest). With the sink queue unbounded, the same run grows by 70 to
/// 80 MiB, and more the more is sent.
const GROWTH_BOUND_MIB: f64 = 48.0;

/// One client's input: messages of 10 to 60 words from a vocabulary of 3000 words shared by every
/// client, so that about half the words cross cores. The words are long so that the debug build
/// gets through 50 MiB in a few seconds.
fn client_input(c: usize) -> Vec<u8> {
    let mut rng = Rng::new(0xF100D + c as u64);
    let mut payloads = Vec::new();
    let mut size = 0;
    while size < INPUT_PER_CLIENT {
        let words: Vec<String> = (0..rng.range(10, 60))
            .map(|_| format!("backpressure-{:04}", rng.below(3000)))
            .collect();
        let msg = words.join(" ");
        size += msg.len() + 4;
        payloads.push(msg);
    }
    frame_all(&payloads)
}

#[test]
fn slow_receiver_bounds_server_memory_and_loses_nothing() {
    let sink = TestSink::start("127.0.0.1:0".parse().unwrap(), true, false);
    sink.set_pace(Pace::Trickle(TRICKLE));
    let server = Server::serve("127.0.0.1:0", sink.addr(), &[]);
    let pid = server.pid();
    let at_rest = rss_mib(pid);

    let inputs: Vec<Arc<Vec<u8>>> = (0..CLIENTS).map(|c| Arc::new(client_input(c))).collect();
    let expected: HashMap<String, u64> = reference_counts(
        inputs
            .iter()
            .flat_map(|framed| bettong::corpus::split_frames(framed).expect("whole frames")),
    );
    let lines = total_lines(&expected);
    let streams = (0..CLIENTS).map(|_| server.connect()).collect();
    let started = Instant::now();
    let flood = Flood::start(streams, inputs.clone(), 1, 16 * 1024);

    // The trickle: watch the server's memory while the clients flood.
    let mut max_rss = at_rest;
    while started.elapsed() < TRICKLE_FOR {
        max_rss = max_rss.max(rss_mib(pid));
        thread::sleep(Duration::from_millis(20));
    }
    let trickled = sink.lines();
    assert!(
        trickled < lines / 4,
        "the receiver got {trickled} of {lines} lines while trickling: it was not the bottleneck, \
         so this test shows nothing"
    );

    // The receiver speeds up: everything must come, in order.
    sink.set_pace(Pace::Full);
    flood.join(WAIT, &server);
    assert!(
        sink.wait_for_lines(lines, WAIT),
        "after the receiver sped up it got {} of {lines} lines within {WAIT:?}; the server's \
         stderr:\n{}",
        sink.lines(),
        server.stderr()
    );
    thread::sleep(crate::support::SETTLE);
    let peak = peak_rss_mib(pid);
    let drained = started.elapsed();
    let got = sink.finish().unwrap_or_else(|v| {
        panic!(
            "the output breaks the contract: {v}; the server's stderr:\n{}",
            server.stderr()
        )
    });
    let diff = crate::support::diff_counts(&expected, &got);
    assert!(diff.is_empty(), "final counts differ: {diff}");
    eprintln!(
        "{CLIENTS} clients, {} MiB in, {lines} lines out: RSS {at_rest:.1} MiB at rest, \
         {max_rss:.1} MiB at most while trickling, {peak:.1} MiB peak (+{:.1} MiB, bound \
         +{GROWTH_BOUND_MIB} MiB); {trickled} lines trickled in {TRICKLE_FOR:?}; all delivered \
         after {drained:.2?}",
        (CLIENTS * INPUT_PER_CLIENT) >> 20,
        peak - at_rest
    );
    assert!(
        peak - at_rest < GROWTH_BOUND_MIB,
        "the server's resident memory grew by {:.1} MiB, above the {GROWTH_BOUND_MIB} MiB bound \
         ({at_rest:.1} MiB at rest, {max_rss:.1} MiB at most while trickling, {peak:.1} MiB \
         peak); the server's stderr:\n{}",
        peak - at_rest,
        server.stderr()
    );
}
