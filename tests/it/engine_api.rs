//! Integration tests of the public engine API (`bettong_engine`), driven in-process through the
//! in-memory source and sink: the word-count output contract on 1 and 2 cores, the metrics,
//! rejected frames, construction errors, stateless steps, and stopping a TCP-fed engine.
//!
//! These exist so that the engine's guarantees are checked where a user sees them (a `Report`,
//! a `Running`), without sockets or external processes except in the one TCP test.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bettong::app::word_count;
use bettong::corpus::push_frame;
use bettong::split::words;
use bettong_engine::{
    online_cpus, Engine, Error, MemorySource, Pipeline, Report, SinkConfig, SourceConfig,
    TcpSourceConfig,
};

/// Two cores when the machine has them (the tests still run, on one core, where it does not).
fn two_cores() -> usize {
    online_cpus().len().min(2)
}

/// `n` deterministic frames of 0 to 11 words each, with case, punctuation and non-ASCII text
/// so that the splitter's rules matter, and a long tail of rare words.
fn generate_frames(n: usize, seed: u64) -> Vec<String> {
    const VOCAB: &[&str] = &[
        "the",
        "The,",
        "THE",
        "bettong",
        "Bettong!",
        "wallaroo",
        "(quokka)",
        "potoroo's",
        "it's",
        "--",
        "...",
        "École",
        "ÉCOLE.",
        "ΣΊΣΥΦΟΣ",
        "naïve",
        "a",
        "a-b",
        "x\ty",
        "\"quoted\"",
        "end.",
    ];
    let mut s = seed | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    (0..n)
        .map(|_| {
            let len = next() % 12;
            let mut frame = String::new();
            for i in 0..len {
                if i > 0 {
                    frame.push(if next() % 5 == 0 { '\n' } else { ' ' });
                }
                let r = next();
                if r % 7 == 0 {
                    frame.push_str(&format!("rare{}", r % 500));
                } else {
                    frame.push_str(VOCAB[(r % VOCAB.len() as u64) as usize]);
                }
            }
            frame
        })
        .collect()
}

/// Final count of every word, computed directly with the splitter.
fn reference_counts<T: AsRef<str>>(frames: &[T]) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    for f in frames {
        for w in words(f.as_ref()) {
            *counts.entry(w.into_owned()).or_default() += 1;
        }
    }
    counts
}

/// Checks the word-count output contract on a report: every output line is `word => n`, each
/// word's lines are all in one core's output (its owner's), counting 1, 2, …, N in order.
/// Returns every word's final count N.
fn check_word_count_outputs(report: &Report) -> HashMap<String, u64> {
    let mut owner: HashMap<String, usize> = HashMap::new();
    let mut counts: HashMap<String, u64> = HashMap::new();
    for (core, output) in report.outputs.iter().enumerate() {
        let text = std::str::from_utf8(output).expect("word-count output is UTF-8");
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "core {core}'s output ends mid-line"
        );
        for line in text.lines() {
            let (word, n) = line
                .rsplit_once(" => ")
                .unwrap_or_else(|| panic!("bad output line {line:?}"));
            let n: u64 = n.parse().unwrap();
            let first = *owner.entry(word.to_owned()).or_insert(core);
            assert_eq!(
                first, core,
                "{word:?} has outputs on cores {first} and {core}"
            );
            let c = counts.entry(word.to_owned()).or_default();
            assert_eq!(
                n,
                *c + 1,
                "{word:?} on core {core}: expected {}, got {n}",
                *c + 1
            );
            *c = n;
        }
    }
    counts
}

fn run_word_count(cores: usize, frames: &[String]) -> Report {
    // Small slices, so each core flushes (and sends batches) many times.
    let source = MemorySource::from_frames(frames).slice_bytes(2048);
    Engine::new()
        .cores(cores)
        .run(
            word_count(),
            SourceConfig::Memory(source),
            SinkConfig::Memory,
        )
        .unwrap()
}

#[test]
fn word_count_on_one_core_matches_the_reference() {
    let frames = generate_frames(3000, 1);
    let report = run_word_count(1, &frames);
    assert_eq!(report.outputs.len(), 1);
    assert_eq!(check_word_count_outputs(&report), reference_counts(&frames));
    assert_eq!(report.total().records_routed, 0, "one core never routes");
}

#[test]
fn word_count_on_two_cores_matches_the_reference() {
    let cores = two_cores();
    let frames = generate_frames(4000, 2);
    let report = run_word_count(cores, &frames);
    assert_eq!(report.outputs.len(), cores);
    assert_eq!(check_word_count_outputs(&report), reference_counts(&frames));
    if cores == 2 {
        let t = report.total();
        assert!(t.records_routed > 0, "some words must cross cores: {t}");
        assert!(
            report.outputs.iter().all(|o| !o.is_empty()),
            "both cores own words"
        );
    }
}

#[test]
fn metrics_add_up_and_invalid_utf8_frames_are_rejected_whole() {
    let valid = generate_frames(2000, 3);
    let mut framed = Vec::new();
    let mut invalid = 0;
    for (i, f) in valid.iter().enumerate() {
        push_frame(&mut framed, f.as_bytes());
        if i % 100 == 0 {
            // Valid words around a bad byte: none of them may come out.
            push_frame(&mut framed, b"poisoned words \xff here");
            push_frame(&mut framed, b"truncated \xc3");
            invalid += 2;
        }
    }
    let framed_len = framed.len() as u64;
    let source = MemorySource::from_framed(framed).unwrap().slice_bytes(4096);
    assert_eq!(source.frames(), valid.len() + invalid);
    let report = Engine::new()
        .cores(two_cores())
        .run(
            word_count(),
            SourceConfig::Memory(source),
            SinkConfig::Memory,
        )
        .unwrap();

    let reference = reference_counts(&valid);
    let words_in: u64 = reference.values().sum();
    let t = report.total();
    assert_eq!(t.frames_in, (valid.len() + invalid) as u64, "{t}");
    assert_eq!(t.frames_rejected, invalid as u64, "{t}");
    assert_eq!(t.bytes_in, framed_len, "{t}");
    assert_eq!(t.records_in, words_in, "{t}");
    assert_eq!(t.records_local + t.records_routed, t.records_in, "{t}");
    assert_eq!(t.records_applied, t.records_in, "{t}");
    assert_eq!(t.outputs, t.records_in, "{t}");
    assert_eq!(
        t.keys,
        reference.len() as u64,
        "each word is held by one core: {t}"
    );
    let out_bytes: usize = report.outputs.iter().map(Vec::len).sum();
    assert_eq!(t.bytes_out, out_bytes as u64, "{t}");
    for (core, m) in report.metrics.iter().enumerate() {
        assert_eq!(
            m.outputs,
            report.outputs[core].iter().filter(|&&b| b == b'\n').count() as u64
        );
    }

    let counts = check_word_count_outputs(&report);
    for w in ["poisoned", "here", "truncated"] {
        assert!(
            !counts.contains_key(w),
            "{w:?} from a rejected frame was counted"
        );
    }
    assert_eq!(counts, reference);
}

#[test]
fn wallaroo_conformance_case_on_two_cores() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/wallaroo-word-count"
    );
    let input = std::fs::read_to_string(format!("{dir}/count_this.txt")).unwrap();
    let expected: HashMap<String, u64> =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/expected.json")).unwrap())
            .unwrap();
    let frames: Vec<&str> = input.lines().filter(|l| !l.is_empty()).collect();
    let source = MemorySource::from_frames(&frames);
    let report = Engine::new()
        .cores(two_cores())
        .run(
            word_count(),
            SourceConfig::Memory(source),
            SinkConfig::Memory,
        )
        .unwrap();
    assert_eq!(check_word_count_outputs(&report), expected);
    assert_eq!(report.total().frames_in, frames.len() as u64);
}

#[test]
fn truncated_framed_input_names_the_offset() {
    let mut framed = Vec::new();
    push_frame(&mut framed, b"hello"); // bytes 0..9
    push_frame(&mut framed, b"world"); // bytes 9..18
    assert_eq!(
        MemorySource::from_framed(framed.clone()).unwrap().frames(),
        2
    );
    assert_eq!(MemorySource::from_framed(Vec::new()).unwrap().frames(), 0);
    for (len, offset) in [(17, 9), (11, 9), (9 + 4, 9), (8, 0), (2, 0)] {
        match MemorySource::from_framed(framed[..len].to_vec()) {
            Err(Error::TruncatedInput { offset: o }) => {
                assert_eq!(o, offset, "buffer cut to {len} bytes")
            }
            other => panic!("buffer cut to {len} bytes: expected TruncatedInput, got {other:?}"),
        }
    }
}

#[test]
fn zero_or_too_many_cores_are_errors() {
    let src = || SourceConfig::Memory(MemorySource::from_frames(["a"]));
    let err = Engine::new()
        .cores(0)
        .run(word_count(), src(), SinkConfig::Memory)
        .unwrap_err();
    assert!(matches!(err, Error::NoCores), "{err:?}");

    let available = online_cpus().len();
    let err = Engine::new()
        .cores(available + 1)
        .run(word_count(), src(), SinkConfig::Memory)
        .unwrap_err();
    match err {
        Error::TooManyCores {
            requested,
            available: a,
        } => assert_eq!((requested, a), (available + 1, available)),
        other => panic!("expected TooManyCores, got {other:?}"),
    }
}

#[test]
fn stateless_steps_filter_and_map() {
    // Words; drop comments (`#...`) and short words; uppercase the rest; key by the word and
    // carry its length; keep a total length per word, and emit only every second occurrence.
    let pipeline = || {
        Pipeline::text()
            .flat_map(|text, emit| text.split_whitespace().for_each(|w| emit(Cow::Borrowed(w))))
            .filter(|w| !w.starts_with('#'))
            .filter(|w| w.len() >= 3)
            .map(|w| Cow::Owned(w.to_uppercase()))
            .key_by(|w| {
                let len = w.len() as u64;
                (w, len)
            })
            .state(|_w: &str, (seen, total): &mut (u64, u64), len: u64| {
                *seen += 1;
                *total += len;
                (*seen % 2 == 0).then_some(*total)
            })
            .encode(|w, total, out| out.extend_from_slice(format!("{w}:{total}\n").as_bytes()))
    };
    let frames = [
        "ab abc #abc abcd",
        "abc x #x abcd",
        "abc abc",
        "#only #comments",
        "",
    ];

    let report = Engine::new()
        .cores(1)
        .run(
            pipeline(),
            SourceConfig::Memory(MemorySource::from_frames(frames)),
            SinkConfig::Memory,
        )
        .unwrap();
    let lines: Vec<String> = report.output_lines().collect();
    assert_eq!(lines, ["ABC:6", "ABCD:8", "ABC:12"]);
    let t = report.total();
    assert_eq!((t.frames_in, t.records_in, t.outputs), (5, 6, 3), "{t}");

    // The same on two cores: the same lines, each key's in order on its owner.
    let report = Engine::new()
        .cores(two_cores())
        .run(
            pipeline(),
            SourceConfig::Memory(MemorySource::from_frames(frames).slice_bytes(1)),
            SinkConfig::Memory,
        )
        .unwrap();
    let mut lines: Vec<String> = report.output_lines().collect();
    lines.sort();
    assert_eq!(lines, ["ABC:12", "ABC:6", "ABCD:8"]);
    let abc: Vec<String> = report
        .output_lines()
        .filter(|l| l.starts_with("ABC:"))
        .collect();
    assert_eq!(abc, ["ABC:6", "ABC:12"]);
}

#[test]
fn stop_with_a_tcp_source_returns_promptly() {
    let running = Engine::new()
        .cores(two_cores())
        .start(
            word_count(),
            SourceConfig::Tcp(TcpSourceConfig::new("127.0.0.1:0".parse().unwrap())),
            SinkConfig::Memory,
        )
        .unwrap();
    let addr = running.local_addr().expect("a TCP source has an address");
    assert_ne!(addr.port(), 0);
    assert_eq!(running.cpus().len(), two_cores());

    // Send two frames and leave the connection open: stop must not wait for the client.
    let mut framed = Vec::new();
    push_frame(&mut framed, b"Hello, hello");
    push_frame(&mut framed, b"world");
    let mut client = TcpStream::connect(addr).unwrap();
    client.write_all(&framed).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while running.metrics().total().outputs < 3 {
        assert!(Instant::now() < deadline, "{}", running.metrics().total());
        std::thread::sleep(Duration::from_millis(5));
    }

    let stopped = Instant::now();
    running.stop();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(running.join()));
    let report = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("join() did not return within 5 s of stop()")
        .unwrap();
    assert!(
        stopped.elapsed() < Duration::from_secs(2),
        "{:?}",
        stopped.elapsed()
    );
    drop(client);

    let mut lines: Vec<String> = report.output_lines().collect();
    lines.sort();
    assert_eq!(lines, ["hello => 1", "hello => 2", "world => 1"]);
    let t = report.total();
    assert_eq!((t.connections_accepted, t.frames_in), (1, 2), "{t}");
}
