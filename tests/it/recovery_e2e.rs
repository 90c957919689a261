//! Checkpoints and recovery of `bettong serve`, the real binary (issue 5): `kill -9` at random
//! points of a file replay, many times, and the final counts equal the reference exactly; a torn
//! shard file and a damaged manifest are detected and the previous checkpoint is used; a
//! checkpoint taken on 2 cores restores onto 1 and one taken on 1 onto 2; a TCP source resumes
//! its counts and says what it lost.
//!
//! Output goes to a [`Collector`] that keeps every line of every sink connection, so each test
//! checks the delivery contract under recovery: on each connection a word's counts go up by one
//! at a time; over all runs every count from 1 to the final one was emitted at least once (output
//! after the last checkpoint may be emitted again, never lost) and none above it. The state
//! itself is read back from the final checkpoint and compared with the reference, key by key.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bettong::corpus::{frame_lines, split_frames, BILL_OF_RIGHTS};
use bettong_engine::checkpoint::{self, SourceMark};

use crate::support::{diff_counts, final_metrics, reference_counts, Rng, Server, WAIT};

/// The lines of one sink connection, in order.
type Lines = Arc<Mutex<Vec<String>>>;

/// A sink that keeps every complete line of every connection, in order.
struct Collector {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<Lines>>>,
    readers: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl Collector {
    fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the collector");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("collector address");
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<Lines>>> = Arc::default();
        let readers: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let acceptor = {
            let (stop, conns, readers) = (stop.clone(), conns.clone(), readers.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            s.set_nonblocking(false).expect("blocking stream");
                            let lines = Arc::new(Mutex::new(Vec::new()));
                            conns.lock().unwrap().push(lines.clone());
                            let r = thread::spawn(move || {
                                // Only complete lines: a process killed mid-write leaves a tail
                                // that belongs to output after its last checkpoint.
                                for line in BufReader::new(s).split(b'\n').map_while(Result::ok) {
                                    lines
                                        .lock()
                                        .unwrap()
                                        .push(String::from_utf8_lossy(&line).into_owned());
                                }
                            });
                            readers.lock().unwrap().push(r);
                        }
                        Err(_) => thread::sleep(Duration::from_millis(2)),
                    }
                }
            })
        };
        Collector {
            addr,
            stop,
            conns,
            readers,
            acceptor: Some(acceptor),
        }
    }

    /// Waits until every connection accepted so far has ended (the server exited), then
    /// returns the lines of each connection, in accept order.
    fn lines(&self) -> Vec<Vec<String>> {
        let readers: Vec<_> = std::mem::take(&mut *self.readers.lock().unwrap());
        for r in readers {
            r.join().expect("a collector thread panicked");
        }
        self.conns
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.lock().unwrap().clone())
            .collect()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

fn parse(line: &str) -> (&str, u64) {
    let (w, n) = line
        .rsplit_once(" => ")
        .unwrap_or_else(|| panic!("malformed output line {line:?}"));
    let n = n
        .parse()
        .unwrap_or_else(|_| panic!("malformed count in {line:?}"));
    (w, n)
}

/// Checks the outputs of every run against the final reference counts: on each connection every
/// word goes up by one at a time; over all connections each count 1..=final was emitted at least
/// once and none above. Returns how many lines were emitted more than once.
#[track_caller]
fn check_outputs(conns: &[Vec<String>], expected: &HashMap<String, u64>, what: &str) -> usize {
    let mut seen: HashMap<&str, HashSet<u64>> = HashMap::new();
    let mut lines = 0usize;
    for (c, conn) in conns.iter().enumerate() {
        let mut last: HashMap<&str, u64> = HashMap::new();
        for line in conn {
            let (w, n) = parse(line);
            if let Some(&prev) = last.get(w) {
                assert_eq!(
                    n,
                    prev + 1,
                    "{what}: on connection {c}, {w:?} went from {prev} to {n}"
                );
            }
            last.insert(w, n);
            let max = expected.get(w).copied().unwrap_or(0);
            assert!(
                n >= 1 && n <= max,
                "{what}: {line:?} was emitted but {w:?} occurs {max} times in the input"
            );
            seen.entry(w).or_default().insert(n);
            lines += 1;
        }
    }
    for (w, &n) in expected {
        let got = seen.get(w.as_str()).map_or(0, HashSet::len) as u64;
        assert_eq!(
            got, n,
            "{what}: {w:?} occurs {n} times but only {got} of its counts 1..={n} were emitted"
        );
    }
    lines - expected.values().sum::<u64>() as usize
}

/// Checks that the newest checkpoint in `dir` holds exactly `expected` and read all of the file.
#[track_caller]
fn check_final_state(dir: &Path, expected: &HashMap<String, u64>, what: &str) -> u64 {
    let ck = checkpoint::latest::<u64>(dir)
        .unwrap_or_else(|e| panic!("{what}: reading the checkpoints in {}: {e}", dir.display()))
        .unwrap_or_else(|| panic!("{what}: no checkpoint in {}", dir.display()));
    let mut got: HashMap<String, u64> = ck.state.iter().cloned().collect();
    assert_eq!(got.len(), ck.state.len(), "{what}: a key appears twice");
    for (k, _) in &ck.in_flight {
        *got.entry(k.clone()).or_default() += 1;
    }
    let diff = diff_counts(expected, &got);
    assert!(
        diff.is_empty(),
        "{what}: checkpoint {} differs from the reference: {diff}",
        ck.id
    );
    match &ck.source {
        SourceMark::File { ranges, .. } => assert!(
            ranges.is_empty(),
            "{what}: checkpoint {} still has {ranges:?} to read",
            ck.id
        ),
        other => panic!("{what}: checkpoint {} records {other:?}", ck.id),
    }
    ck.id
}

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bettong-recovery-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create a scratch directory");
    d
}

/// Framed messages: a Zipf corpus with the Bill of Rights mixed in.
fn corpus(messages: usize, seed: u64) -> Vec<u8> {
    let mut framed = bettong::synth::zipf_corpus(messages, 10, 5_000, seed);
    framed.extend_from_slice(&frame_lines(BILL_OF_RIGHTS));
    framed
}

fn counts_of(framed: &[u8]) -> HashMap<String, u64> {
    reference_counts(split_frames(framed).expect("whole frames"))
}

/// `serve` reading `file`, checkpointing into `dir` every 25 ms.
fn serve_args<'a>(file: &'a str, out: &'a str, dir: &'a str, cores: &'a str) -> Vec<&'a str> {
    with_interval(file, out, dir, cores, "25ms")
}

fn with_interval<'a>(
    file: &'a str,
    out: &'a str,
    dir: &'a str,
    cores: &'a str,
    interval: &'a str,
) -> Vec<&'a str> {
    vec![
        "serve",
        "--in",
        file,
        "--out",
        out,
        "--cores",
        cores,
        "--resilience-dir",
        dir,
        "--checkpoint-interval",
        interval,
    ]
}

/// Runs the server to its end (it exits once the file is read); fails the test unless it exits
/// 0. Returns its stderr.
#[track_caller]
fn run_to_end(args: &[&str], what: &str) -> String {
    let mut server = Server::spawn(args);
    let status = server.wait_exit(WAIT);
    assert!(
        status.success(),
        "{what}: bettong {args:?} exited with {status}; its stderr:\n{}",
        server.stderr()
    );
    server.stderr()
}

/// The heart of issue 5: kill -9 at random moments of a file replay, restart with the same
/// command each time, and the final counts equal the reference exactly.
#[test]
fn kill_9_at_random_points_then_restart_gives_exact_counts() {
    const CRASHES: usize = 14;
    let dir = scratch("kill9");
    let framed = corpus(150_000, 0x5eed);
    let file = dir.join("input.bin");
    std::fs::write(&file, &framed).unwrap();
    let expected = counts_of(&framed);
    let collector = Collector::start();
    let (input, out) = (
        format!("file:{}", file.display()),
        collector.addr.to_string(),
    );
    let ckdir = dir.join("checkpoints").display().to_string();
    let args = serve_args(&input, &out, &ckdir, "2");

    let mut rng = Rng::new(0x9_4711);
    let (mut killed_mid_run, mut restored) = (0, 0);
    let mut stderrs = Vec::new();
    for crash in 0..CRASHES {
        let server = Server::spawn(&args);
        // Mostly while the file is being read; now and then right at start-up (while the
        // checkpoint is being restored) or right after a checkpoint is likely.
        let delay = match rng.below(5) {
            0 => rng.range(0, 30),
            _ => rng.range(30, 600),
        };
        thread::sleep(Duration::from_millis(delay as u64));
        let still_running = final_metrics(&server).is_none();
        server.signal("KILL");
        let mut server = server;
        let status = server.wait_exit(WAIT);
        if still_running && !status.success() {
            killed_mid_run += 1;
        }
        let log = server.stderr();
        if log.contains("restored checkpoint") {
            restored += 1;
            assert!(
                log.contains("s ago on 2 cores"),
                "crash {crash}: the restart does not say how old the checkpoint is:\n{log}"
            );
        }
        stderrs.push(log);
    }
    let last = run_to_end(&args, "the run after the last crash");
    let conns = collector.lines();
    let all_logs = || format!("{}\n--- final run ---\n{last}", stderrs.join("\n---\n"));
    assert!(
        killed_mid_run >= CRASHES / 2,
        "only {killed_mid_run} of {CRASHES} kills hit a running server: the test did not \
         exercise recovery; logs:\n{}",
        all_logs()
    );
    assert!(
        restored >= CRASHES / 2,
        "only {restored} of {CRASHES} restarts restored a checkpoint; logs:\n{}",
        all_logs()
    );
    let repeats = check_outputs(&conns, &expected, "after kill -9 and restarts");
    check_final_state(Path::new(&ckdir), &expected, "after kill -9 and restarts");
    eprintln!(
        "{CRASHES} kills ({killed_mid_run} mid-run), {restored} restores, {repeats} output \
         lines emitted again, {} connections",
        conns.len()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Restores alternate between 1 and 2 cores while the file is half read: each restore
/// re-shards the state and re-deals the unread ranges.
#[test]
fn kill_9_and_restart_on_alternating_core_counts_gives_exact_counts() {
    let dir = scratch("alternate");
    let framed = corpus(30_000, 0xa17e);
    let file = dir.join("input.bin");
    std::fs::write(&file, &framed).unwrap();
    let expected = counts_of(&framed);
    let collector = Collector::start();
    let (input, out) = (
        format!("file:{}", file.display()),
        collector.addr.to_string(),
    );
    let ckdir = dir.join("checkpoints").display().to_string();
    let mut rng = Rng::new(77);
    for crash in 0..6 {
        let cores = if crash % 2 == 0 { "2" } else { "1" };
        let mut server = Server::spawn(&serve_args(&input, &out, &ckdir, cores));
        thread::sleep(Duration::from_millis(rng.range(80, 300) as u64));
        server.signal("KILL");
        server.wait_exit(WAIT);
    }
    run_to_end(
        &serve_args(&input, &out, &ckdir, "1"),
        "final run on 1 core",
    );
    let conns = collector.lines();
    check_outputs(&conns, &expected, "alternating core counts");
    check_final_state(Path::new(&ckdir), &expected, "alternating core counts");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Appends `more` to the file at `path`.
fn append(path: &Path, more: &[u8]) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(more).unwrap();
}

/// The lines of the connections from index `from` on.
fn lines_since(conns: &[Vec<String>], from: usize) -> Vec<(String, u64)> {
    conns[from..]
        .iter()
        .flatten()
        .map(|l| {
            let (w, n) = parse(l);
            (w.to_string(), n)
        })
        .collect()
}

/// Checks that a run that resumed from `before` and read `more` emitted exactly the counts
/// `before[w] + 1 ..= after[w]` for every word, each once.
#[track_caller]
fn check_resumed_run(
    lines: &[(String, u64)],
    before: &HashMap<String, u64>,
    after: &HashMap<String, u64>,
    what: &str,
) {
    let mut got: HashMap<&str, Vec<u64>> = HashMap::new();
    for (w, n) in lines {
        got.entry(w).or_default().push(*n);
    }
    for (w, &total) in after {
        let from = before.get(w).copied().unwrap_or(0);
        let want: Vec<u64> = (from + 1..=total).collect();
        let mut have = got.remove(w.as_str()).unwrap_or_default();
        have.sort_unstable();
        assert_eq!(have, want, "{what}: the counts emitted for {w:?}");
    }
    assert!(got.is_empty(), "{what}: unexpected words {:?}", got.keys());
}

/// Restore onto a different core count: `from` cores read the first half, `to` cores resume
/// (the file grew) and continue every count from the checkpoint.
fn restore_onto(from: &str, to: &str) {
    let dir = scratch(&format!("onto-{from}-{to}"));
    let first = corpus(8_000, 1);
    let second = corpus(8_000, 2);
    let file = dir.join("input.bin");
    std::fs::write(&file, &first).unwrap();
    let collector = Collector::start();
    let (input, out) = (
        format!("file:{}", file.display()),
        collector.addr.to_string(),
    );
    let ckdir = dir.join("checkpoints").display().to_string();
    run_to_end(&serve_args(&input, &out, &ckdir, from), "first run");
    let after_first = collector.lines().len();
    append(&file, &second);
    let log = run_to_end(&serve_args(&input, &out, &ckdir, to), "resumed run");
    assert!(
        log.contains(&format!("on {from} cores (now re-sharded onto {to})")),
        "the resumed run does not say it re-sharded {from} → {to}:\n{log}"
    );
    let mut all = first.clone();
    all.extend_from_slice(&second);
    let (before, after) = (counts_of(&first), counts_of(&all));
    let conns = collector.lines();
    check_resumed_run(
        &lines_since(&conns, after_first),
        &before,
        &after,
        &format!("restored onto {to} from {from}"),
    );
    check_final_state(Path::new(&ckdir), &after, "after the resumed run");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn restore_onto_one_core_from_two() {
    restore_onto("2", "1");
}

#[test]
fn restore_onto_two_cores_from_one() {
    restore_onto("1", "2");
}

/// The checkpoint directories in `dir`, oldest first.
fn checkpoint_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("ckpt-")
        })
        .collect();
    v.sort();
    v
}

/// A torn shard file in the newest checkpoint, then a damaged manifest: each time the server
/// says so, restores the one before, and replays from there to exact counts.
#[test]
fn torn_checkpoint_falls_back_to_the_previous_one() {
    let dir = scratch("torn");
    let first = corpus(5_000, 3);
    let second = corpus(5_000, 4);
    let file = dir.join("input.bin");
    std::fs::write(&file, &first).unwrap();
    let collector = Collector::start();
    let (input, out) = (
        format!("file:{}", file.display()),
        collector.addr.to_string(),
    );
    let ckdir = dir.join("checkpoints");
    let ck = ckdir.display().to_string();
    // No periodic checkpoint within a run: each run commits just its final one, so the
    // checkpoints kept are known exactly.
    let args = with_interval(&input, &out, &ck, "2", "1h");
    run_to_end(&args, "first run");
    append(&file, &second);
    run_to_end(&args, "second run");
    let mut all = first.clone();
    all.extend_from_slice(&second);
    let (before, after) = (counts_of(&first), counts_of(&all));

    // The two kept: A (after the first half) and B (after all of it). Tear B's shard 1.
    let dirs = checkpoint_dirs(&ckdir);
    assert_eq!(dirs.len(), 2, "two checkpoints are kept: {dirs:?}");
    let (a, b) = (&dirs[0], &dirs[1]);
    let shard = b.join("shard-1.bin");
    let len = std::fs::metadata(&shard).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let mark = collector.lines().len();
    let log = run_to_end(&args, "run after tearing a shard file");
    let a_id = a.file_name().unwrap().to_string_lossy()[5..]
        .trim_start_matches('0')
        .to_string();
    assert!(
        log.contains("shard-1.bin: it has") && log.contains("torn or partial write"),
        "the torn shard file is not reported:\n{log}"
    );
    assert!(
        log.contains(&format!("restored checkpoint {a_id} ")),
        "checkpoint {a_id} (the one before the torn one) is not restored:\n{log}"
    );
    let conns = collector.lines();
    check_resumed_run(
        &lines_since(&conns, mark),
        &before,
        &after,
        "after the torn shard",
    );
    check_final_state(&ckdir, &after, "after the torn shard");

    // That run restored A and committed C; A and C are kept. Flip one byte of C's manifest:
    // A is used again.
    let newest = checkpoint_dirs(&ckdir).pop().unwrap();
    let manifest = newest.join("MANIFEST");
    let mut bytes = std::fs::read(&manifest).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x04;
    std::fs::write(&manifest, &bytes).unwrap();
    let mark = collector.lines().len();
    let log = run_to_end(&args, "run after damaging a manifest");
    assert!(
        log.contains("its manifest:"),
        "the damaged manifest is not reported:\n{log}"
    );
    assert!(
        log.contains(&format!("restored checkpoint {a_id} ")),
        "checkpoint {a_id} is not restored after the damaged manifest:\n{log}"
    );
    let conns = collector.lines();
    check_resumed_run(
        &lines_since(&conns, mark),
        &before,
        &after,
        "after the bad manifest",
    );
    check_final_state(&ckdir, &after, "after the bad manifest");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A TCP source: counts resume from the checkpoint after a restart, and the restart says which
/// checkpoint it restored, how old it is, and that TCP frames after it are lost.
#[test]
fn tcp_restart_resumes_counts_and_states_what_is_lost() {
    let dir = scratch("tcp");
    let ck = dir.join("checkpoints").display().to_string();
    let collector = Collector::start();
    let framed = frame_lines(BILL_OF_RIGHTS);
    let once = counts_of(&framed);
    let extra = ["--resilience-dir", ck.as_str()];
    for round in 1..=2u64 {
        let mut server = Server::serve("127.0.0.1:0", collector.addr, &extra);
        let mut s = server.connect();
        s.write_all(&framed).unwrap();
        drop(s);
        let deadline = Instant::now() + WAIT;
        let want = once.values().sum::<u64>() as usize * round as usize;
        while collector
            .conns
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.lock().unwrap().len())
            .sum::<usize>()
            < want
        {
            assert!(
                Instant::now() < deadline,
                "round {round}: output did not arrive"
            );
            thread::sleep(Duration::from_millis(5));
        }
        server.signal("TERM");
        assert!(server.wait_exit(WAIT).success(), "{}", server.stderr());
        let log = server.stderr();
        if round == 2 {
            assert!(
                log.contains("restored checkpoint") && log.contains("s ago on 2 cores"),
                "the restart does not say which checkpoint it restored and how old:\n{log}"
            );
            assert!(
                log.contains("cannot replay") && log.contains("are lost unless"),
                "the restart does not say what a TCP source loses:\n{log}"
            );
        }
    }
    let twice: HashMap<String, u64> = once.iter().map(|(w, n)| (w.clone(), 2 * n)).collect();
    let conns = collector.lines();
    assert_eq!(
        check_outputs(&conns, &twice, "TCP restart"),
        0,
        "no output repeated"
    );
    let ckp = checkpoint::latest::<u64>(Path::new(&ck)).unwrap().unwrap();
    let got: HashMap<String, u64> = ckp.state.into_iter().collect();
    assert_eq!(diff_counts(&twice, &got), "");
    std::fs::remove_dir_all(&dir).unwrap();
}
