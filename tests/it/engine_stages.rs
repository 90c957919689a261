//! The engine's per-core stage latencies (`Metrics::stage_histograms`): every stage a run goes
//! through is recorded on the cores it happened on, and nothing else.

use bettong_engine::{Engine, MemorySource, SinkConfig, SourceConfig};

#[test]
fn an_in_process_run_records_the_stages_it_goes_through() {
    let frames: Vec<String> = (0..2_000)
        .map(|i| format!("w{} w{} w{} shared", i % 97, i % 13, i))
        .collect();
    let running = Engine::new()
        .cores(2)
        .start(
            bettong::app::word_count(),
            SourceConfig::Memory(MemorySource::from_frames(frames)),
            SinkConfig::Discard,
        )
        .unwrap();
    let metrics = running.metrics().clone();
    let report = running.join().unwrap();
    let stages = metrics.stage_histograms();
    let names: Vec<_> = stages.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "arrival_to_decode",
            "decode_to_apply_local",
            "decode_to_apply_crossed",
            "apply_to_sink_buffer",
            "sink_buffer_to_write"
        ]
    );
    let count = |name: &str| -> u64 {
        let (_, cores) = stages.iter().find(|(n, _)| *n == name).unwrap();
        assert_eq!(cores.len(), 2);
        cores.iter().map(|h| h.len()).sum()
    };
    // A memory source has no receive completions: no arrival stage.
    assert_eq!(count("arrival_to_decode"), 0);
    assert!(count("decode_to_apply_local") > 0);
    // Words cross between the two cores, in batches, each timed once.
    let batches: u64 = report.metrics.iter().map(|m| m.batches_sent).sum();
    assert!(batches > 0);
    assert_eq!(count("decode_to_apply_crossed"), batches);
    // Every chunk written is timed through the sink buffer, once.
    assert!(count("apply_to_sink_buffer") > 0);
    assert_eq!(count("apply_to_sink_buffer"), count("sink_buffer_to_write"));
    assert_eq!(
        count("sink_buffer_to_write"),
        metrics.latency_histogram().len()
    );
    metrics.reset_latency();
    assert!(metrics
        .stage_histograms()
        .iter()
        .all(|(_, cores)| cores.iter().all(|h| h.is_empty())));
}
