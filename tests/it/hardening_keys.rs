//! Hardening of keys and cross-core batches (issue 10, items 8 and 9): batches between cores
//! are bounded in bytes whatever the frames hold, the key hash is seeded per process and the
//! seed is kept in checkpoints, and a key longer than `--max-key-bytes` is rejected and counted
//! while the other words of its frame still count.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use bettong_engine::routing::{DEFAULT_MAX_KEY_BYTES, MAX_BATCH_BYTES};
use bettong_engine::{
    Checkpoints, Engine, FileSourceConfig, MemorySource, SinkConfig, SourceConfig,
};

use crate::support::{frame_all, reference_counts, start_receiver, total_lines, Server};

/// A fresh directory under the system's temporary directory.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "bettong-hardening-keys-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Word count's final count of every word in an engine's output (`word => n` lines).
fn final_counts(lines: impl Iterator<Item = String>) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    for l in lines {
        let (w, n) = l.split_once(" => ").expect("a `word => n` line");
        let n: u64 = n.parse().unwrap();
        let c = counts.entry(w.to_string()).or_insert(0);
        *c = (*c).max(n);
    }
    counts
}

/// Item 8: one frame of nearly 1 MiB of one-letter words (about 512 Ki words, 32 bytes each in
/// a batch: 16 MiB of records) used to go to the other core as one batch per destination;
/// now no batch holds more than MAX_BATCH_BYTES of records, so there are at least as many
/// batches as that many bytes need. Every word is still counted.
#[test]
fn one_huge_frame_of_one_letter_words_makes_batches_under_the_cap() {
    let letters: Vec<String> = (b'a'..=b'z').map(|c| (c as char).to_string()).collect();
    let mut frame = String::new();
    let mut i = 0;
    while frame.len() + 2 <= (1 << 20) - 2 {
        frame.push_str(&letters[i % letters.len()]);
        frame.push(' ');
        i += 1;
    }
    let words = i as u64;
    let report = Engine::new()
        .cores(2)
        // A fixed seed, so that the 26 letters are known to spread over both cores.
        .seed(7)
        .run(
            bettong::app::word_count(),
            SourceConfig::Memory(MemorySource::from_frames([frame.as_bytes()])),
            SinkConfig::Memory,
        )
        .unwrap();
    let t = report.total();
    assert_eq!(t.records_in, words, "{t}");
    assert_eq!(t.outputs, words, "{t}");
    assert!(t.records_routed > words / 10, "too few words routed: {t}");
    // A word-count record in a batch: hash, 24-byte inline key, no value.
    let per_batch = (MAX_BATCH_BYTES / 32) as u64;
    let least = t.records_routed.div_ceil(per_batch);
    assert!(
        t.batches_sent >= least,
        "{} records routed in {} batches: some batch held more than {per_batch} records \
         ({MAX_BATCH_BYTES} bytes); {t}",
        t.records_routed,
        t.batches_sent
    );
    let counts = final_counts(report.output_lines());
    assert_eq!(counts.values().sum::<u64>(), words);
    assert_eq!(counts.len(), 26);
}

/// Item 8: two engines pick different hash seeds; one given a seed uses it.
#[test]
fn each_engine_picks_its_own_seed() {
    let seed_of = |engine: Engine| {
        let running = engine
            .cores(1)
            .start(
                bettong::app::word_count(),
                SourceConfig::Memory(MemorySource::from_frames(["a"])),
                SinkConfig::Memory,
            )
            .unwrap();
        let seed = running.seed();
        running.join().unwrap();
        seed
    };
    let (a, b) = (seed_of(Engine::new()), seed_of(Engine::new()));
    assert_ne!(a, b, "two engines hashed keys with the same seed");
    assert_eq!(seed_of(Engine::new().seed(42)), 42);
}

/// Item 8: the seed is written in every checkpoint's manifest; a restored run takes it (so it
/// routes as the run that wrote it did) unless `Engine::seed` says otherwise, and re-sharding
/// with another seed still finds every key's count.
#[test]
fn the_seed_is_kept_in_checkpoints_and_restored() {
    let dir = temp_dir("seed");
    let file = dir.join("in.bin");
    let text: Vec<String> = (0..200).map(|i| format!("w{} common", i % 50)).collect();
    std::fs::write(&file, frame_all(&text)).unwrap();
    let ck = dir.join("ck");
    let start = |engine: Engine, source: SourceConfig| {
        engine
            .cores(2)
            .start_with_checkpoints(
                bettong::app::word_count(),
                source,
                SinkConfig::Memory,
                Checkpoints::new(&ck),
            )
            .unwrap()
    };
    let file_source = || SourceConfig::File(FileSourceConfig::new(&file));
    let manifest_seeds = || -> Vec<String> {
        let mut seeds = Vec::new();
        for e in std::fs::read_dir(&ck).unwrap() {
            let p = e.unwrap().path().join("MANIFEST");
            if let Ok(text) = std::fs::read_to_string(&p) {
                let line = text
                    .lines()
                    .find(|l| l.starts_with("seed "))
                    .map(str::to_owned);
                seeds
                    .push(line.unwrap_or_else(|| panic!("{} names no seed:\n{text}", p.display())));
            }
        }
        seeds
    };

    let first = start(Engine::new(), file_source());
    let s1 = first.seed();
    let report = first.join().unwrap();
    assert_eq!(report.output_lines().count(), 400);
    let seeds = manifest_seeds();
    assert!(!seeds.is_empty());
    assert!(
        seeds.iter().all(|l| *l == format!("seed {s1:016x}")),
        "{seeds:?} against {s1:016x}"
    );

    // Restored: the checkpoint's seed, not a new one.
    let second = start(Engine::new(), file_source());
    assert_eq!(
        second.seed(),
        s1,
        "a restored run did not take the checkpoint's seed"
    );
    assert_eq!(second.join().unwrap().output_lines().count(), 0);

    // Another seed given: the restored counts are re-sharded with it and all found again.
    let other = s1 ^ 0x5555_5555_5555_5555;
    let third = start(
        Engine::new().seed(other),
        SourceConfig::Memory(MemorySource::from_frames(["common w0 w49"])),
    );
    assert_eq!(third.seed(), other);
    let counts = final_counts(third.join().unwrap().output_lines());
    assert_eq!(counts["common"], 201);
    assert_eq!(counts["w0"], 5);
    assert_eq!(counts["w49"], 5);
    // ...and the next run restores that seed.
    let fourth = start(
        Engine::new(),
        SourceConfig::Memory(MemorySource::from_frames(["common"])),
    );
    assert_eq!(fourth.seed(), other);
    let counts = final_counts(fourth.join().unwrap().output_lines());
    assert_eq!(counts["common"], 202);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 9, engine API: a key over `max_key_bytes` is dropped and counted, the rest of its
/// frame counts; the limit is inclusive.
#[test]
fn engine_rejects_keys_over_max_key_bytes() {
    let at = "k".repeat(DEFAULT_MAX_KEY_BYTES);
    let over = "o".repeat(DEFAULT_MAX_KEY_BYTES + 1);
    let frame = format!("a {at} b {over} a");
    let report = Engine::new()
        .cores(2)
        .run(
            bettong::app::word_count(),
            SourceConfig::Memory(MemorySource::from_frames([frame.as_bytes(), b"c"])),
            SinkConfig::Memory,
        )
        .unwrap();
    let t = report.total();
    assert_eq!(t.keys_rejected, 1, "{t}");
    assert_eq!(t.records_in, 5, "{t}");
    let counts = final_counts(report.output_lines());
    assert_eq!(counts.len(), 4);
    assert_eq!(
        (counts["a"], counts[&at], counts["b"], counts["c"]),
        (2, 1, 1, 1)
    );

    let report = Engine::new()
        .cores(1)
        .max_key_bytes(1)
        .run(
            bettong::app::word_count(),
            SourceConfig::Memory(MemorySource::from_frames(["a bb c"])),
            SinkConfig::Memory,
        )
        .unwrap();
    assert_eq!(report.total().keys_rejected, 1);
    assert_eq!(report.output_lines().count(), 2);
}

/// Item 9, the real binary: a frame holding a 1 MiB word between normal words. The long word
/// is rejected and counted in keys_rejected; every other word is counted exactly, and a busy
/// client beside it is unaffected.
#[test]
fn serve_rejects_a_one_mib_word_and_counts_the_others() {
    let receiver = start_receiver();
    let mut server = Server::serve(
        "127.0.0.1:0",
        receiver.local_addr(),
        &["--max-frame", "2097152"],
    );
    let huge = "x".repeat(1 << 20);
    let over = "y".repeat(DEFAULT_MAX_KEY_BYTES + 1);
    let at = "z".repeat(DEFAULT_MAX_KEY_BYTES);
    let hostile = vec![
        format!("alpha beta {huge} gamma alpha"),
        format!("delta {over} {at} delta"),
    ];
    let busy: Vec<String> = (0..500).map(|i| format!("busy{} alpha", i % 37)).collect();
    let mut expected = reference_counts(hostile.iter().chain(&busy).map(|s| s.as_bytes()));
    expected.remove(&huge);
    expected.remove(&over);
    let mut conn = server.connect();
    conn.write_all(&frame_all(&hostile)).unwrap();
    let mut busy_conn = server.connect();
    busy_conn.write_all(&frame_all(&busy)).unwrap();
    server.await_lines(
        &receiver,
        total_lines(&expected),
        "a 1 MiB word beside normal words",
    );
    drop((conn, busy_conn));
    thread::sleep(Duration::from_millis(200));
    let m = server.stop_gracefully();
    assert_eq!(m["keys_rejected"], 2, "{}", server.stderr());
    assert_eq!(m["frames_rejected"], 0, "{}", server.stderr());
    server.finish_and_check(receiver, &expected, "a 1 MiB word beside normal words");
}

/// Item 9: `--max-key-bytes` sets the limit (here 4: `alpha` is rejected, `beta` kept), and 0
/// is refused naming the flag.
#[test]
fn serve_max_key_bytes_flag() {
    let receiver = start_receiver();
    let mut server = Server::serve(
        "127.0.0.1:0",
        receiver.local_addr(),
        &["--max-key-bytes", "4"],
    );
    let frames = ["alpha beta", "beta gamma"];
    let mut expected = reference_counts(frames.iter().map(|s| s.as_bytes()));
    expected.remove("alpha");
    expected.remove("gamma");
    let mut conn = server.connect();
    conn.write_all(&frame_all(&frames)).unwrap();
    server.await_lines(&receiver, total_lines(&expected), "--max-key-bytes 4");
    drop(conn);
    let m = server.stop_gracefully();
    assert_eq!(m["keys_rejected"], 2, "{}", server.stderr());
    server.finish_and_check(receiver, &expected, "--max-key-bytes 4");

    let (status, stderr) = crate::support::run_to_exit(&[
        "serve",
        "--in",
        "127.0.0.1:0",
        "--out",
        "127.0.0.1:9",
        "--max-key-bytes",
        "0",
    ]);
    assert!(!status.success());
    assert!(stderr.contains("--max-key-bytes"), "{stderr}");
}
