//! Running the real `bettong` binary: [`Server`] starts it as a child process, learns the
//! address it listens on, keeps everything it prints (for failure messages and for the tests that
//! check a log message on purpose), signals it, waits for its exit, and kills it when dropped, so
//! a failing test never leaks a server. [`final_metrics`] and [`number_after`] read what it says
//! when it stops.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bettong::receive::{ReceiveReport, Receiver};

use super::{check_counts, CORES, SETTLE, WAIT};

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
