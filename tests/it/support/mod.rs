//! Helpers shared by the end-to-end tests that drive the real `bettong` binary.
//!
//! - [`Server`] starts `bettong serve` as a child process, reads the address it listens on from
//!   its log, keeps every stderr line for failure messages, and kills the process when dropped,
//!   so a failing test never leaks a server.
//! - [`Rng`], [`chunk_cuts`] and [`send_in_chunks`] write framed bytes over TCP in random pieces
//!   (headers split from payloads, frames split over writes) with a fixed seed.
//! - [`reference_counts`] and [`check_counts`] compute and compare the final count of every word
//!   with the library's own splitter, the reference for the spec's splitting rules.
//! - For the reliability tests: [`rss_mib`] and [`peak_rss_mib`] read the server's memory from
//!   `/proc`; [`TestSink`] is a receiver whose pace (full, trickle, stalled) and presence (gone,
//!   back) the test controls; [`Flood`] writes from many connections at once; [`final_metrics`]
//!   reads the counters the server logs when it stops.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bettong::receive::{ReceiveReport, Receiver};

/// Executors the test servers run on (the machine the tests run on has 2 cores).
pub const CORES: &str = "2";

/// Upper bound of every wait in the tests: long enough for a debug build on a busy machine.
pub const WAIT: Duration = Duration::from_secs(20);

/// How long to keep listening after the expected lines arrived, to catch extra ones.
pub const SETTLE: Duration = Duration::from_millis(100);

/// The path of the `bettong` binary built for these tests.
pub fn bettong_bin() -> &'static str {
    env!("CARGO_BIN_EXE_bettong")
}

/// Every stderr line of a child process so far, and a signal for each new one.
#[derive(Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

/// A `bettong` child process whose stderr is collected; killed (if still running) on drop.
pub struct Server {
    child: Child,
    addr: Option<SocketAddr>,
    log: Arc<Log>,
    reader: Option<JoinHandle<()>>,
}

impl Server {
    /// Runs `bettong ARGS` with stderr collected, logging at `info` without colours.
    pub fn spawn(args: &[&str]) -> Server {
        let mut child = Command::new(bettong_bin())
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} {args:?}: {e}", bettong_bin()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Log::default());
        let reader = {
            let log = log.clone();
            thread::Builder::new()
                .name("bettong-stderr".into())
                .spawn(move || collect_lines(stderr, &log))
                .expect("cannot start the stderr reader thread")
        };
        Server {
            child,
            addr: None,
            log,
            reader: Some(reader),
        }
    }

    /// Starts `bettong serve --in INPUT --out OUT --cores 2 EXTRA…` and waits until it logs the
    /// address it listens on. `input` is `[NAME@]127.0.0.1:0` in tests, so the port is free.
    #[track_caller]
    pub fn serve(input: &str, out: SocketAddr, extra: &[&str]) -> Server {
        let out = out.to_string();
        let mut args = vec!["serve", "--in", input, "--out", &out, "--cores", CORES];
        args.extend_from_slice(extra);
        let mut server = Server::spawn(&args);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(addr) = server.stderr_lines().iter().find_map(|l| listening_addr(l)) {
                server.addr = Some(addr);
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                server.join_reader();
                panic!(
                    "bettong {args:?} exited ({status}) before listening; its stderr:\n{}",
                    server.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "bettong {args:?} logged no `listening on ADDR with` line within {WAIT:?}; \
                 its stderr:\n{}",
                server.stderr()
            );
            server.wait_for_more_stderr(Duration::from_millis(50));
        }
    }

    /// The address the server listens on (from its `listening on` log line).
    pub fn addr(&self) -> SocketAddr {
        self.addr
            .expect("this process was not started with Server::serve")
    }

    /// The process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Opens a client connection to the server: no Nagle delay (so small writes leave as small
    /// segments), and bounded reads and writes so a stuck server cannot hang the test.
    #[track_caller]
    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr()).unwrap_or_else(|e| {
            panic!(
                "cannot connect to the server at {}: {e}; its stderr:\n{}",
                self.addr(),
                self.stderr()
            )
        });
        s.set_nodelay(true).expect("set TCP_NODELAY");
        s.set_read_timeout(Some(WAIT)).expect("set a read timeout");
        s.set_write_timeout(Some(WAIT))
            .expect("set a write timeout");
        s
    }

    /// Every stderr line so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.log
            .lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Everything on stderr so far, one line each, for failure messages.
    pub fn stderr(&self) -> String {
        let lines = self.stderr_lines();
        if lines.is_empty() {
            "(nothing)".to_string()
        } else {
            lines.join("\n")
        }
    }

    /// Whether some stderr line so far contains `needle`.
    pub fn stderr_contains(&self, needle: &str) -> bool {
        self.stderr_lines().iter().any(|l| l.contains(needle))
    }

    /// Waits until a stderr line contains `needle`, for at most `timeout`; returns whether one
    /// did.
    pub fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_for_stderr_line(|l| l.contains(needle), timeout)
            .is_some()
    }

    /// Waits until a stderr line satisfies `pred`, for at most `timeout`, and returns it.
    pub fn wait_for_stderr_line(
        &self,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.log.lines.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(l) = lines.iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            lines = self
                .log
                .grew
                .wait_timeout(lines, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Like [`wait_for_stderr`](Self::wait_for_stderr), failing the test with the whole stderr
    /// when the line does not come.
    #[track_caller]
    pub fn expect_stderr(&self, needle: &str, why: &str) {
        assert!(
            self.wait_for_stderr(needle, WAIT),
            "{why}: no stderr line contains {needle:?} within {WAIT:?}; the server's stderr:\n{}",
            self.stderr()
        );
    }

    fn wait_for_more_stderr(&self, timeout: Duration) {
        let lines = self.log.lines.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self.log.grew.wait_timeout(lines, timeout);
    }

    /// Sends `signal` (`"TERM"`, `"INT"`, …) to the process with kill(1).
    #[track_caller]
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill -{signal}: {e}"));
        assert!(
            status.success(),
            "kill -{signal} {} failed ({status}); the server's stderr:\n{}",
            self.pid(),
            self.stderr()
        );
    }

    /// Waits for the process to exit, for at most `timeout`, and returns its status once all of
    /// its stderr is collected; fails the test if it is still running.
    #[track_caller]
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.join_reader();
                    return status;
                }
                Ok(None) => {}
                Err(e) => panic!("cannot wait for bettong (pid {}): {e}", self.pid()),
            }
            assert!(
                Instant::now() < deadline,
                "bettong (pid {}) still runs {timeout:?} later; its stderr:\n{}",
                self.pid(),
                self.stderr()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until `receiver` has at least `n` lines, failing the test with both sides' state if
    /// they do not come within [`WAIT`]; then listens [`SETTLE`] longer so extra lines show up.
    #[track_caller]
    pub fn await_lines(&self, receiver: &Receiver, n: u64, what: &str) {
        if !receiver.wait_for_lines(n, WAIT) {
            panic!(
                "{what}: the receiver got {} of {n} expected lines within {WAIT:?} \
                 ({} sink connections); the server's stderr:\n{}",
                receiver.lines(),
                receiver.connections(),
                self.stderr()
            );
        }
        thread::sleep(SETTLE);
    }

    /// Stops the receiver and checks its report: no contract violation, exactly `expected`'s
    /// total lines, and exactly `expected`'s final counts.
    #[track_caller]
    pub fn finish_and_check(
        &self,
        receiver: Receiver,
        expected: &HashMap<String, u64>,
        what: &str,
    ) -> ReceiveReport {
        let report = receiver
            .finish()
            .unwrap_or_else(|e| panic!("{what}: the receiver failed: {e:#}"));
        check_counts(&report, expected, what, &self.stderr());
        report
    }

    fn join_reader(&mut self) {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        self.join_reader();
    }
}

/// Reads `stream` line by line into `log` until it ends (the child exited).
fn collect_lines(stream: impl Read, log: &Log) {
    let mut r = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = strip_ansi(String::from_utf8_lossy(&buf).trim_end());
                log.lines
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(line);
                log.grew.notify_all();
            }
        }
    }
}

/// Removes ANSI escape sequences (`ESC [ … letter`), in case the log is coloured anyway.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The address in a `listening on 127.0.0.1:PORT with …` log line.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let (addr, after) = rest.split_once(' ')?;
    if !after.starts_with("with") {
        return None;
    }
    addr.parse().ok()
}

/// Runs `bettong ARGS` to its end (at most [`WAIT`]) and returns its status and stderr.
#[track_caller]
pub fn run_to_exit(args: &[&str]) -> (ExitStatus, String) {
    let mut p = Server::spawn(args);
    let status = p.wait_exit(WAIT);
    (status, p.stderr())
}

/// Starts a validating receiver on a free loopback port.
pub fn start_receiver() -> Receiver {
    Receiver::start("127.0.0.1:0", true).expect("cannot start the receiver")
}

/// A reserved-then-released loopback address on which nothing listens (for a while).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("read the free port")
}

/// The project's deterministic generator (`bettong::synth::Rng`), with the helpers tests want.
#[derive(Debug, Clone)]
pub struct Rng(bettong::synth::Rng);

impl Rng {
    /// A generator for `seed` (any value; 0 is remapped).
    pub fn new(seed: u64) -> Self {
        Rng(bettong::synth::Rng::new(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True once in `n` times on average.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// A random element of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Where to cut `framed` into writes: increasing offsets ending at `framed.len()`. Most pieces
/// are 1 byte to 4 KiB (a quarter of them 8 bytes or less); about one cut in six goes into the
/// header of the next frame on purpose (however far that is), so headers arrive split as well
/// as payloads.
pub fn chunk_cuts(framed: &[u8], rng: &mut Rng) -> Vec<usize> {
    let bounds = bettong::corpus::frame_bounds(framed).expect("chunk_cuts needs whole frames");
    let mut cuts = Vec::new();
    let mut pos = 0;
    while pos < framed.len() {
        let mut next = if rng.one_in(6) {
            // Inside the header of the next frame that starts after `pos`.
            let i = bounds.partition_point(|&b| b <= pos);
            match bounds.get(i) {
                Some(&start) if start < framed.len() => start + rng.range(1, 3),
                _ => framed.len(),
            }
        } else {
            match rng.below(4) {
                0 => pos + rng.range(1, 8),
                1 => pos + rng.range(9, 256),
                _ => pos + rng.range(257, 4096),
            }
        };
        next = next.min(framed.len());
        cuts.push(next);
        pos = next;
    }
    cuts
}

/// How many of `cuts` fall strictly inside a frame header of `framed`.
pub fn header_splits(framed: &[u8], cuts: &[usize]) -> usize {
    let bounds = bettong::corpus::frame_bounds(framed).expect("whole frames");
    let mut starts = bounds[..bounds.len() - 1].iter().peekable();
    let mut n = 0;
    for &c in cuts {
        while starts.next_if(|&&s| s + 4 <= c).is_some() {}
        if let Some(&&s) = starts.peek() {
            if s < c && c < s + 4 {
                n += 1;
            }
        }
    }
    n
}

/// Writes `framed` to `stream` in the pieces [`chunk_cuts`] chooses, pausing briefly after some
/// tiny pieces so the server's reads really do see them apart.
pub fn send_in_chunks(stream: &mut TcpStream, framed: &[u8], rng: &mut Rng) -> std::io::Result<()> {
    let mut pos = 0;
    for cut in chunk_cuts(framed, rng) {
        stream.write_all(&framed[pos..cut])?;
        if cut - pos <= 8 && rng.one_in(2) {
            thread::sleep(Duration::from_micros(200));
        }
        pos = cut;
    }
    stream.flush()
}

/// The final count of every word in `payloads` under the spec's rules (the library's splitter);
/// payloads that are not UTF-8 count for nothing, as the server rejects them whole.
pub fn reference_counts<'a>(payloads: impl IntoIterator<Item = &'a [u8]>) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    for p in payloads {
        if let Ok(text) = std::str::from_utf8(p) {
            for w in bettong::split::words(text) {
                *counts.entry(w.into_owned()).or_insert(0) += 1;
            }
        }
    }
    counts
}

/// The number of output lines `counts` stands for: one per word occurrence.
pub fn total_lines(counts: &HashMap<String, u64>) -> u64 {
    counts.values().sum()
}

/// Fails the test unless `report` has no contract violation, exactly the total lines of
/// `expected` and exactly its final counts (saying which words differ).
#[track_caller]
pub fn check_counts(
    report: &ReceiveReport,
    expected: &HashMap<String, u64>,
    what: &str,
    server_stderr: &str,
) {
    assert!(
        report.violations.is_none(),
        "{what}: the output breaks the contract: {}; the server's stderr:\n{server_stderr}",
        report.violations.as_deref().unwrap_or_default()
    );
    let got = report.counts.as_ref().expect("the receiver validates");
    let diff = diff_counts(expected, got);
    assert!(
        diff.is_empty(),
        "{what}: final counts differ from the reference ({} words expected, {} received): {}; \
         the server's stderr:\n{server_stderr}",
        expected.len(),
        got.len(),
        diff
    );
    assert_eq!(
        report.lines,
        total_lines(expected),
        "{what}: wrong number of output lines; the server's stderr:\n{server_stderr}"
    );
}

/// A short description of the first few words whose counts differ (empty when none do).
pub fn diff_counts(expected: &HashMap<String, u64>, got: &HashMap<String, u64>) -> String {
    let mut words: Vec<&String> = expected.keys().chain(got.keys()).collect();
    words.sort();
    words.dedup();
    let diffs: Vec<String> = words
        .into_iter()
        .filter(|w| expected.get(*w) != got.get(*w))
        .map(|w| {
            format!(
                "{w:?}: expected {}, got {}",
                expected.get(w).copied().unwrap_or(0),
                got.get(w).copied().unwrap_or(0)
            )
        })
        .collect();
    if diffs.len() > 10 {
        format!("{} … and {} more", diffs[..10].join("; "), diffs.len() - 10)
    } else {
        diffs.join("; ")
    }
}

/// Frames every payload into one buffer.
pub fn frame_all<T: AsRef<[u8]>>(payloads: &[T]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in payloads {
        bettong::corpus::push_frame(&mut out, p.as_ref());
    }
    out
}

/// Words that exercise the splitting rules beyond plain ASCII: Unicode case mappings (final
/// sigma, `ß`, `İ`, the Kelvin sign), inner punctuation that stays, a no-break space that
/// belongs to its word, and pieces that are only punctuation.
const TRICKY_WORDS: &[&str] = &[
    "ÉCOLE",
    "Straße",
    "ΟΔΟΣ",
    "ΣΑΣ.",
    "naïve",
    "it's",
    "a...b",
    "--",
    "!!!",
    "x\u{a0}y",
    "İstanbul",
    "\u{212a}elvin",
    "Ωmega",
    "o'clock",
    "e-mail",
    "(parens)",
    "ǅemal",
];

/// Separators between tokens: the spec's six, alone and in runs.
const SEPARATORS: &[&str] = &[
    " ", " ", " ", "\t", "\n", "\x0b", "\x0c", "\r", "  ", "\r\n", " \t\x0b ",
];

/// A random separator from [`SEPARATORS`].
fn separator(rng: &mut Rng) -> &'static str {
    SEPARATORS[rng.below(SEPARATORS.len())]
}

/// A random message of `lo..=hi` tokens drawn from the Bill of Rights and [`TRICKY_WORDS`], in
/// random case, with random punctuation around them and random separators between them.
pub fn random_message(rng: &mut Rng, lo: usize, hi: usize) -> String {
    thread_local! {
        static BILL: Vec<&'static str> =
            bettong::corpus::BILL_OF_RIGHTS.split_ascii_whitespace().collect();
    }
    let punct: Vec<char> = bettong::split::PUNCT
        .iter()
        .filter(|&&b| b != b' ')
        .map(|&b| b as char)
        .collect();
    let mut msg = String::new();
    if rng.one_in(4) {
        msg.push_str(separator(rng));
    }
    for i in 0..rng.range(lo, hi) {
        if i > 0 {
            msg.push_str(separator(rng));
        }
        for _ in 0..rng.below(3) {
            if rng.one_in(2) {
                msg.push(*rng.pick(&punct));
            }
        }
        let base = if rng.one_in(4) {
            *rng.pick(TRICKY_WORDS)
        } else {
            BILL.with(|b| *rng.pick(b))
        };
        match rng.below(4) {
            0 => msg.push_str(base),
            1 => msg.push_str(&base.to_lowercase()),
            2 => msg.push_str(&base.to_uppercase()),
            _ => {
                for c in base.chars() {
                    if rng.one_in(2) {
                        msg.extend(c.to_uppercase());
                    } else {
                        msg.extend(c.to_lowercase());
                    }
                }
            }
        }
        for _ in 0..rng.below(3) {
            if rng.one_in(2) {
                msg.push(*rng.pick(&punct));
            }
        }
    }
    if rng.one_in(4) {
        msg.push_str(separator(rng));
    }
    msg
}

// ---------------------------------------------------------------------------------------------
// Reliability helpers: process memory, a sink whose pace and presence the test controls, and
// flooding clients.

/// A line of `/proc/PID/status` in KiB (`VmRSS`: resident now; `VmHWM`: the peak so far).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim_start_matches(':')
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Resident memory of process `pid` now, in MiB (0 if it is gone).
pub fn rss_mib(pid: u32) -> f64 {
    proc_status_kib(pid, "VmRSS").unwrap_or(0) as f64 / 1024.0
}

/// Peak resident memory of process `pid` so far, in MiB (0 if it is gone).
pub fn peak_rss_mib(pid: u32) -> f64 {
    proc_status_kib(pid, "VmHWM").unwrap_or(0) as f64 / 1024.0
}

/// How a [`TestSink`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// As fast as it can.
    Full,
    /// About this many bytes per second on each connection.
    Trickle(u64),
    /// Not at all (the connections stay open).
    Stalled,
}

/// What a [`TestSink`] saw on one connection.
#[derive(Debug, Clone, Default)]
pub struct SinkConn {
    /// The server's end of the connection (its sink socket's local address).
    pub peer: Option<SocketAddr>,
    /// Bytes read.
    pub bytes: u64,
    /// Everything read, when the sink records.
    pub data: Vec<u8>,
}

#[derive(Default)]
struct SinkShared {
    conns: Mutex<Vec<SinkConn>>,
    validator: Option<Mutex<bettong::validate::OrderValidator>>,
    lines: std::sync::atomic::AtomicU64,
    /// 0: full speed; u64::MAX: stalled; else bytes per second per connection.
    pace: std::sync::atomic::AtomicU64,
    /// Set to make every connection close and the listener go away.
    away: std::sync::atomic::AtomicBool,
    stop: std::sync::atomic::AtomicBool,
    record: bool,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// A receiver for the server's output whose pace (full, trickle, stalled) and presence (listening
/// or gone, connections closed) the test controls. It counts lines, and can validate the output
/// contract as it reads (for long streams) or record every connection's bytes (for tests that
/// inspect what arrived on which connection).
pub struct TestSink {
    addr: SocketAddr,
    shared: Arc<SinkShared>,
}

impl TestSink {
    /// Listens on `addr` (port 0 for a free port).
    pub fn start(addr: SocketAddr, validate: bool, record: bool) -> TestSink {
        let shared = Arc::new(SinkShared {
            validator: validate.then(|| Mutex::new(bettong::validate::OrderValidator::new())),
            record,
            ..Default::default()
        });
        let listener = std::net::TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("test sink: cannot listen on {addr}: {e}"));
        let addr = listener.local_addr().expect("the test sink's address");
        let sink = TestSink { addr, shared };
        sink.accept_on(listener);
        sink
    }

    fn accept_on(&self, listener: std::net::TcpListener) {
        listener
            .set_nonblocking(true)
            .expect("make the test sink's listener non-blocking");
        let shared = self.shared.clone();
        let handle = thread::spawn(move || {
            use std::sync::atomic::Ordering::SeqCst;
            while !shared.stop.load(SeqCst) && !shared.away.load(SeqCst) {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        stream.set_nonblocking(false).expect("blocking stream");
                        let id = {
                            let mut conns = lock(&shared.conns);
                            conns.push(SinkConn {
                                peer: Some(peer),
                                ..Default::default()
                            });
                            conns.len() - 1
                        };
                        let s = shared.clone();
                        let h = thread::spawn(move || sink_read_loop(&s, id, stream));
                        lock(&shared.threads).push(h);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(2))
                    }
                    Err(e) => panic!("test sink: accept failed: {e}"),
                }
            }
        });
        lock(&self.shared.threads).push(handle);
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes how fast every connection is read.
    pub fn set_pace(&self, pace: Pace) {
        let v = match pace {
            Pace::Full => 0,
            Pace::Trickle(n) => n.clamp(1, u64::MAX - 1),
            Pace::Stalled => u64::MAX,
        };
        self.shared
            .pace
            .store(v, std::sync::atomic::Ordering::SeqCst);
    }

    /// Complete lines read so far.
    pub fn lines(&self) -> u64 {
        self.shared.lines.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until at least `n` lines were read, for at most `timeout`.
    pub fn wait_for_lines(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.lines() < n {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// Connections accepted so far, in order, with what each carried.
    pub fn conns(&self) -> Vec<SinkConn> {
        lock(&self.shared.conns).clone()
    }

    /// The receiver goes away: the listener closes and every connection is closed, with whatever
    /// the server sent into it unread. Returns once all of that is done.
    pub fn go_away(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.shared.away.store(true, SeqCst);
        let threads = std::mem::take(&mut *lock(&self.shared.threads));
        for t in threads {
            t.join().expect("a test sink thread panicked");
        }
    }

    /// The receiver comes back on the same address.
    pub fn come_back(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.shared.away.store(false, SeqCst);
        let listener = std::net::TcpListener::bind(self.addr)
            .unwrap_or_else(|e| panic!("test sink: cannot listen on {} again: {e}", self.addr));
        self.accept_on(listener);
    }

    /// Stops and returns the validator's verdict: `Err` with the first violation (including a
    /// connection that ended mid-line), else the highest count of every word.
    pub fn finish(self) -> Result<HashMap<String, u64>, String> {
        use std::sync::atomic::Ordering::SeqCst;
        self.shared.stop.store(true, SeqCst);
        let threads = std::mem::take(&mut *lock(&self.shared.threads));
        for t in threads {
            t.join().expect("a test sink thread panicked");
        }
        let v = lock(
            self.shared
                .validator
                .as_ref()
                .expect("finish needs a validating sink"),
        );
        match v.finish() {
            Ok(summary) => Ok(summary.counts),
            Err(first) => Err(format!(
                "{first} ({} violating lines in all)",
                v.violations().max(1)
            )),
        }
    }
}

impl Drop for TestSink {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.shared.stop.store(true, SeqCst);
        for t in std::mem::take(&mut *lock(&self.shared.threads)) {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads one sink connection at the sink's pace until it ends or the sink stops or goes away.
fn sink_read_loop(shared: &SinkShared, id: usize, mut stream: TcpStream) {
    use std::sync::atomic::Ordering::SeqCst;
    stream
        .set_read_timeout(Some(Duration::from_millis(20)))
        .expect("set a read timeout");
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        if shared.stop.load(SeqCst) || shared.away.load(SeqCst) {
            break;
        }
        let want = match shared.pace.load(SeqCst) {
            0 => buf.len(),
            u64::MAX => {
                thread::sleep(Duration::from_millis(5));
                continue;
            }
            rate => (rate / 100).clamp(1, buf.len() as u64) as usize,
        };
        let n = match stream.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(_) => break,
        };
        let data = &buf[..n];
        if let Some(v) = &shared.validator {
            let _ = lock(v).feed(id, data);
        }
        {
            let mut conns = lock(&shared.conns);
            let c = &mut conns[id];
            c.bytes += n as u64;
            if shared.record {
                c.data.extend_from_slice(data);
            }
        }
        let newlines = data.iter().filter(|&&b| b == b'\n').count() as u64;
        shared.lines.fetch_add(newlines, SeqCst);
        if want < buf.len() {
            thread::sleep(Duration::from_millis(10));
        }
    }
    // Dropping the stream closes it; unread bytes in it make the kernel reset the connection.
}

/// Clients that write their framed input to the server from their own threads, as fast as the
/// server takes it, until told to stop or done.
pub struct Flood {
    stop: Arc<std::sync::atomic::AtomicBool>,
    sent: Arc<Vec<std::sync::atomic::AtomicU64>>,
    streams: Vec<TcpStream>,
    handles: Vec<JoinHandle<Result<(), String>>>,
}

impl Flood {
    /// Starts one thread per stream; each writes `inputs[i]` (`repeat` times over) to stream `i`
    /// in `piece`-byte writes. A write that fails (or stays blocked past the stream's write
    /// timeout) is an error unless the flood was stopped.
    pub fn start(
        streams: Vec<TcpStream>,
        inputs: Vec<Arc<Vec<u8>>>,
        repeat: usize,
        piece: usize,
    ) -> Flood {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sent: Arc<Vec<_>> = Arc::new(
            (0..streams.len())
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
        );
        let clones = streams
            .iter()
            .map(|s| s.try_clone().expect("clone a client stream"))
            .collect();
        let handles = streams
            .into_iter()
            .zip(inputs)
            .enumerate()
            .map(|(i, (mut s, input))| {
                let (stop, sent) = (stop.clone(), sent.clone());
                thread::spawn(move || {
                    use std::sync::atomic::Ordering::SeqCst;
                    for _ in 0..repeat {
                        for chunk in input.chunks(piece.max(1)) {
                            if stop.load(SeqCst) {
                                return Ok(());
                            }
                            if let Err(e) = s.write_all(chunk) {
                                if stop.load(SeqCst) {
                                    return Ok(());
                                }
                                return Err(format!("flood client {i}: write failed: {e}"));
                            }
                            sent[i].fetch_add(chunk.len() as u64, SeqCst);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        Flood {
            stop,
            sent,
            streams: clones,
            handles,
        }
    }

    /// Bytes each client has written so far.
    pub fn sent(&self) -> Vec<u64> {
        self.sent
            .iter()
            .map(|s| s.load(std::sync::atomic::Ordering::SeqCst))
            .collect()
    }

    /// Whether every client has written all of its input (or failed).
    pub fn is_done(&self) -> bool {
        self.handles.iter().all(|h| h.is_finished())
    }

    /// Waits for every client to finish, for at most `timeout`; fails the test on a client error
    /// or when they do not finish.
    #[track_caller]
    pub fn join(self, timeout: Duration, server: &Server) {
        let deadline = Instant::now() + timeout;
        while !self.is_done() {
            assert!(
                Instant::now() < deadline,
                "flood clients still writing after {timeout:?} (sent {:?}); the server's \
                 stderr:\n{}",
                self.sent(),
                server.stderr()
            );
            thread::sleep(Duration::from_millis(5));
        }
        for h in self.handles {
            if let Err(e) = h.join().expect("a flood client panicked") {
                panic!("{e}; the server's stderr:\n{}", server.stderr());
            }
        }
    }

    /// Stops every client at once (a blocked write is cut short by shutting the socket down),
    /// waits for them, and returns the bytes each had written.
    pub fn stop(self) -> Vec<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for s in &self.streams {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        for h in self.handles {
            let _ = h.join();
        }
        self.sent
            .iter()
            .map(|s| s.load(std::sync::atomic::Ordering::SeqCst))
            .collect()
    }
}

/// The number in a log line right after `prefix` (for example `"after writing "`).
pub fn number_after(line: &str, prefix: &str) -> Option<u64> {
    let rest = &line[line.find(prefix)? + prefix.len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// The server's final counters, from its `final metrics: name=value …` log line.
pub fn final_metrics(server: &Server) -> Option<HashMap<String, u64>> {
    let line = server
        .stderr_lines()
        .into_iter()
        .find(|l| l.contains("final metrics: "))?;
    let rest = &line[line.find("final metrics: ")? + "final metrics: ".len()..];
    Some(
        rest.split_whitespace()
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect(),
    )
}
