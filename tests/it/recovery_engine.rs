//! Checkpoints seen from inside, through the engine API: every checkpoint is a consistent cut
//! (its state is exactly the counts of the frames it says were read), the pause a checkpoint
//! imposes stays bounded under full load, and a pipeline with a state of its own type is
//! checkpointed and restored through `Persist`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bettong::corpus::{frame_bounds, frame_lines, BILL_OF_RIGHTS, HEADER_LEN};
use bettong_engine::checkpoint::{self, SourceMark};
use bettong_engine::{
    Checkpoints, Engine, FileSourceConfig, Pipeline, Report, SinkConfig, SourceConfig,
};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bettong-ck-engine-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create a scratch directory");
    d
}

fn corpus(messages: usize, seed: u64) -> Vec<u8> {
    let mut framed = bettong::synth::zipf_corpus(messages, 10, 5_000, seed);
    framed.extend_from_slice(&frame_lines(BILL_OF_RIGHTS));
    framed
}

/// Word count over `file`, 2 cores, checkpoints as given, output discarded.
fn run(file: &Path, checkpoints: Checkpoints) -> Report {
    Engine::new()
        .cores(2)
        .run_with_checkpoints(
            bettong::app::word_count(),
            SourceConfig::File(FileSourceConfig::new(file)),
            SinkConfig::Discard,
            checkpoints,
        )
        .expect("the engine runs")
}

/// Every checkpoint of a run (all kept) holds exactly the counts of the frames outside the
/// ranges it says are still to be read: no record is in a checkpoint without its frame's read
/// position being past it, and none is missing. This is what makes a restart exact.
#[test]
fn every_checkpoint_is_a_consistent_cut() {
    let dir = scratch("cuts");
    let framed = corpus(100_000, 11);
    let file = dir.join("input.bin");
    std::fs::write(&file, &framed).unwrap();
    let ckdir = dir.join("checkpoints");
    run(
        &file,
        Checkpoints::new(&ckdir)
            .interval(Duration::from_millis(3))
            .keep(usize::MAX),
    );

    // Each frame's words, once.
    let bounds = frame_bounds(&framed).unwrap();
    let frames: Vec<(u64, Vec<String>)> = bounds
        .windows(2)
        .map(|w| {
            let text = std::str::from_utf8(&framed[w[0] + HEADER_LEN..w[1]]).unwrap();
            let words = bettong::split::words(text)
                .map(|w| w.into_owned())
                .collect();
            (w[0] as u64, words)
        })
        .collect();
    let ids = checkpoint::ids(&ckdir).unwrap();
    assert!(
        ids.len() >= 4,
        "only {} checkpoints were taken: the run was too short to test cuts",
        ids.len()
    );
    let (mut partial, mut in_flight) = (0, 0);
    for id in ids {
        let ck = checkpoint::read::<u64>(&ckdir, id).unwrap();
        let SourceMark::File { ranges, len, .. } = &ck.source else {
            panic!("checkpoint {id} has no file position: {:?}", ck.source);
        };
        assert_eq!(*len, framed.len() as u64);
        let unread = |off: u64| ranges.iter().any(|&(a, b)| a <= off && off < b);
        let mut expected: HashMap<&str, u64> = HashMap::new();
        for (off, words) in &frames {
            if !unread(*off) {
                for w in words {
                    *expected.entry(w).or_default() += 1;
                }
            }
        }
        // The state a checkpoint stands for: its shards plus the records in flight at the cut
        // (word count's value is `()`: each record adds one).
        let mut got: HashMap<&str, u64> = ck.state.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        for (k, _) in &ck.in_flight {
            *got.entry(k.as_str()).or_default() += 1;
        }
        in_flight += ck.in_flight.len();
        let mut diffs: Vec<String> = expected
            .iter()
            .filter(|(w, n)| got.get(*w) != Some(n))
            .map(|(w, n)| format!("{w:?}: read {n}, checkpoint {:?}", got.get(w)))
            .chain(
                got.iter()
                    .filter(|(w, _)| !expected.contains_key(*w))
                    .map(|(w, n)| format!("{w:?}: not read, checkpoint {n}")),
            )
            .collect();
        diffs.truncate(5);
        assert!(
            diffs.is_empty(),
            "checkpoint {id} (unread {ranges:?}) is not a consistent cut: {}",
            diffs.join("; ")
        );
        partial += !ranges.is_empty() as usize;
    }
    assert!(
        partial >= 2,
        "only {partial} checkpoints were taken mid-file"
    );
    eprintln!("{partial} checkpoints mid-file, {in_flight} records in flight at their cuts");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Under full load (a file read as fast as the cores go), no checkpoint stops a core for long:
/// the longest pause (the shard copy at the cut; nothing waits for barriers) stays bounded, and
/// the metrics report it per core and per checkpoint.
#[test]
fn checkpoint_pause_is_bounded_under_load() {
    // Generous for a debug build on a busy 2-core machine (copying this test's ~5 000 keys
    // takes well under a millisecond in release).
    const BOUND: Duration = Duration::from_millis(250);
    let dir = scratch("pause");
    let file = dir.join("input.bin");
    std::fs::write(&file, corpus(150_000, 5)).unwrap();
    let report = run(
        &file,
        Checkpoints::new(dir.join("checkpoints")).interval(Duration::from_millis(20)),
    );
    let t = report.total();
    assert!(
        t.checkpoints >= 8,
        "only {} core snapshots were taken: the run was too short to measure pauses",
        t.checkpoints
    );
    let max = report
        .metrics
        .iter()
        .map(|m| m.checkpoint_pause_us_max)
        .max()
        .unwrap();
    let mean = t.checkpoint_pause_us_total / t.checkpoints;
    eprintln!(
        "{} snapshots, pause mean {mean} µs, max {max} µs",
        t.checkpoints
    );
    assert!(
        Duration::from_micros(max) < BOUND,
        "a checkpoint held a core's input for {max} µs (mean {mean} µs), above {BOUND:?}"
    );
    assert!(t.records_in > 1_000_000, "{t}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A pipeline whose state is not a plain counter: per key, the count and the longest value
/// seen. It is checkpointed through `Persist` and restored, re-sharded, onto another core count.
#[test]
fn a_composite_state_is_restored_through_persist() {
    let dir = scratch("composite");
    let file = dir.join("input.bin");
    let frames = |items: &[&str]| {
        let mut out = Vec::new();
        for i in items {
            bettong_engine::codec::encode_frame(i.as_bytes(), &mut out);
        }
        out
    };
    std::fs::write(&file, frames(&["a 3", "b 1", "a 5", "c 2"])).unwrap();
    let pipeline = Pipeline::text()
        .key_by(|line| {
            let (k, v) = line.split_once(' ').unwrap_or((line, "0"));
            (k, v.parse::<u64>().unwrap_or(0))
        })
        .state(|_k: &str, s: &mut (u64, Option<u64>), v: u64| {
            s.0 += 1;
            s.1 = Some(s.1.map_or(v, |m| m.max(v)));
            Some(*s)
        })
        .encode(|k, s, out| out.extend_from_slice(format!("{k} {} {:?}\n", s.0, s.1).as_bytes()));
    let ck = Checkpoints::new(dir.join("checkpoints"));
    let run = |cores: usize| {
        let mut lines: Vec<String> = Engine::new()
            .cores(cores)
            .run_with_checkpoints(
                pipeline.clone(),
                SourceConfig::File(FileSourceConfig::new(&file)),
                SinkConfig::Memory,
                ck.clone(),
            )
            .unwrap()
            .output_lines()
            .collect();
        lines.sort();
        lines
    };
    // One core first, so that the two records of `a` are applied in file order.
    assert_eq!(
        run(1),
        ["a 1 Some(3)", "a 2 Some(5)", "b 1 Some(1)", "c 1 Some(2)"]
    );
    let mut more = std::fs::read(&file).unwrap();
    more.extend(frames(&["a 4", "b 9"]));
    std::fs::write(&file, more).unwrap();
    assert_eq!(run(2), ["a 3 Some(5)", "b 2 Some(9)"]);
    let state: HashMap<String, (u64, Option<u64>)> =
        checkpoint::latest::<(u64, Option<u64>)>(&dir.join("checkpoints"))
            .unwrap()
            .unwrap()
            .state
            .into_iter()
            .collect();
    assert_eq!(state["a"], (3, Some(5)));
    assert_eq!(state["c"], (1, Some(2)));
    std::fs::remove_dir_all(&dir).unwrap();
}
