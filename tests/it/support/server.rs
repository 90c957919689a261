//! Running the real `bettong` binary: [`Server`] starts it as a child process, learns the
//! address it listens on from its `{"event":"ready",…}` line on stdout, keeps everything it
//! prints (stderr for failure messages and for the tests that check a log message on purpose),
//! signals it, waits for its exit, and kills it when dropped, so a failing test never leaks a
//! server. [`final_metrics`] reads the counters of its `{"event":"stopped",…}` line;
//! [`number_after`] reads a number out of a log message.

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

/// Every line a child process wrote to one stream so far, and a signal for each new one.
#[derive(Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

/// A `bettong` child process whose stdout and stderr are collected; killed (if still running)
/// on drop.
pub struct Server {
    child: Child,
    addr: Option<SocketAddr>,
    /// stderr: the log.
    log: Arc<Log>,
    /// stdout: the machine-readable lines (`serve`'s JSON events).
    out: Arc<Log>,
    readers: Vec<JoinHandle<()>>,
}

impl Server {
    /// Runs `bettong ARGS` with stdout and stderr collected, logging at `info` without colours.
    pub fn spawn(args: &[&str]) -> Server {
        Self::spawn_command(Command::new(bettong_bin()), args)
    }

    /// Like [`spawn`](Self::spawn), through `nice -n NICENESS`: the process and all its
    /// threads at a lower CPU priority.
    pub fn spawn_niced(niceness: &str, args: &[&str]) -> Server {
        let mut nice = Command::new("nice");
        nice.args(["-n", niceness, bettong_bin()]);
        Self::spawn_command(nice, args)
    }

    fn spawn_command(mut command: Command, args: &[&str]) -> Server {
        let mut child = command
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} {args:?}: {e}", bettong_bin()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (log, out) = (Arc::new(Log::default()), Arc::new(Log::default()));
        let readers = vec![
            spawn_collector("bettong-stderr", stderr, log.clone()),
            spawn_collector("bettong-stdout", stdout, out.clone()),
        ];
        Server {
            child,
            addr: None,
            log,
            out,
            readers,
        }
    }

    /// Starts `bettong serve --in INPUT --out OUT --cores 2 EXTRA…` and waits for its ready line
    /// (`{"event":"ready","in":"HOST:PORT","cores":N}` on stdout), which says the address it
    /// listens on. `input` is `[NAME@]127.0.0.1:0` in tests, so the port is free.
    #[track_caller]
    pub fn serve(input: &str, out: SocketAddr, extra: &[&str]) -> Server {
        let out = out.to_string();
        let mut args = vec!["serve", "--in", input, "--out", &out, "--cores", CORES];
        args.extend_from_slice(extra);
        let mut server = Server::spawn(&args);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(ready) = server.event("ready") {
                let addr = ready["in"].as_str().and_then(|a| a.parse().ok());
                server.addr = Some(addr.unwrap_or_else(|| {
                    panic!("bettong {args:?}: no HOST:PORT in its ready line {ready}")
                }));
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                server.join_readers();
                panic!(
                    "bettong {args:?} exited ({status}) before listening; its stdout:\n{}\n\
                     its stderr:\n{}",
                    server.stdout(),
                    server.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "bettong {args:?} printed no ready line within {WAIT:?}; its stdout:\n{}\n\
                 its stderr:\n{}",
                server.stdout(),
                server.stderr()
            );
            server.out.wait_for_more(Duration::from_millis(50));
        }
    }

    /// The address the server listens on (from its ready line).
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
        self.log.lines()
    }

    /// Everything on stderr so far, one line each, for failure messages.
    pub fn stderr(&self) -> String {
        self.log.text()
    }

    /// Everything on stdout so far, one line each, for failure messages.
    pub fn stdout(&self) -> String {
        self.out.text()
    }

    /// The first JSON line on stdout so far whose `event` is `name` (`"ready"`, `"stopped"`).
    pub fn event(&self, name: &str) -> Option<serde_json::Value> {
        self.out.lines().iter().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["event"] == name).then_some(v)
        })
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
                    self.join_readers();
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

    /// Stops the server the way an operator does (SIGTERM), fails the test unless it exits 0
    /// within [`WAIT`], and returns its final counters (summed over its cores) from its
    /// `{"event":"stopped",…}` line.
    #[track_caller]
    pub fn stop_gracefully(&mut self) -> HashMap<String, u64> {
        self.signal("TERM");
        let status = self.wait_exit(WAIT);
        assert_eq!(
            status.code(),
            Some(0),
            "SIGTERM should stop bettong with exit 0, got {status}; stderr:\n{}",
            self.stderr()
        );
        final_metrics(self).unwrap_or_else(|| {
            panic!(
                "bettong exited 0 without its stopped line; stdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            )
        })
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

    fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
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
        self.join_readers();
    }
}

impl Log {
    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every line so far, joined, or `(nothing)`.
    fn text(&self) -> String {
        let lines = self.lines();
        if lines.is_empty() {
            "(nothing)".to_string()
        } else {
            lines.join("\n")
        }
    }

    /// Waits for a new line, for at most `timeout`.
    fn wait_for_more(&self, timeout: Duration) {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self.grew.wait_timeout(lines, timeout);
    }
}

/// Starts a thread that collects `stream` into `log`.
fn spawn_collector(
    name: &str,
    stream: impl Read + Send + 'static,
    log: Arc<Log>,
) -> JoinHandle<()> {
    thread::Builder::new()
        .name(name.into())
        .spawn(move || collect_lines(stream, &log))
        .unwrap_or_else(|e| panic!("cannot start the {name} reader thread: {e}"))
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

/// The server's final counters (summed over its cores), from the `metrics` of its
/// `{"event":"stopped",…}` line on stdout; `None` while it has not stopped (or when it exited
/// without stopping gracefully).
pub fn final_metrics(server: &Server) -> Option<HashMap<String, u64>> {
    let stopped = server.event("stopped")?;
    let metrics = stopped["metrics"].as_object()?;
    Some(
        metrics
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
            .collect(),
    )
}
