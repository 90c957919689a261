//! Helpers shared by the end-to-end tests that drive the real `bettong` binary.
//!
//! - [`Server`] starts `bettong serve` as a child process, reads the address it listens on from
//!   its log, keeps every stderr line for failure messages, and kills the process when dropped,
//!   so a failing test never leaks a server.
//! - [`Rng`], [`chunk_cuts`] and [`send_in_chunks`] write framed bytes over TCP in random pieces
//!   (headers split from payloads, frames split over writes) with a fixed seed.
//! - [`reference_counts`] and [`check_counts`] compute and compare the final count of every word
//!   with the library's own splitter, the reference for the spec's splitting rules.
//!
//! Each test binary uses only some of these, hence the `dead_code` allowance.
#![allow(dead_code)]

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

/// xorshift64*: a tiny deterministic generator, enough to vary test inputs reproducibly.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value; 0 is remapped).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
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
