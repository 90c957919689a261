//! The sink side of the word count: Bettong's equivalent of Wallaroo's `data_receiver`.
//!
//! The server opens one TCP connection per core to its `--out` address and writes `word => count`
//! lines on each. Something has to listen there, take any number of those connections, measure the
//! output rate, optionally keep the data, and (for tests and benchmarks) check the output contract
//! while the data streams past. [`Receiver`] does that in background threads so tests and the bench
//! can drive it; [`run_receive`] is the `bettong receive` command built on top of it.
//!
//! The same receiver takes Market Spread's output instead (framed 55-byte order results): then it
//! counts results where it counts lines, checks them with a [`ResultChecker`], and writes nothing.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use crate::market_spread::check::ResultChecker;
use crate::validate::OrderValidator;

/// Bytes read from a connection at a time.
const READ_BUF: usize = 256 * 1024;
/// How often the accepting thread looks for new connections and a stop request.
const ACCEPT_POLL: Duration = Duration::from_millis(5);
/// How often [`run_receive`] checks its stop conditions when no data arrives.
const CHECK_EVERY: Duration = Duration::from_millis(10);
/// Chunks queued between the connection threads and the writer of [`run_receive`].
const FORWARD_QUEUE: usize = 64;

/// What [`run_receive`] should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiveOptions {
    /// Address to listen on, `host:port` (port 0 picks a free port).
    pub listen: String,
    /// Count the data but do not write it to the output.
    pub no_write: bool,
    /// Check the output contract with an [`OrderValidator`] while receiving.
    pub validate: bool,
    /// Stop once this many lines have arrived.
    pub expect_lines: Option<u64>,
    /// Stop after no data (and no new connection) for this long, once a connection was accepted.
    pub idle_exit: Option<Duration>,
    /// Period of the rate report printed to stderr; `Duration::ZERO` turns it off.
    pub report_every: Duration,
    /// Show the rate report as a live status line (a terminal's) instead of one line each time.
    pub bar: bool,
    /// With `Some`, receive Market Spread's framed order results instead of lines: count them
    /// (as `lines`), check them, write nothing. `validate` is then ignored.
    pub market_spread: Option<MarketSpreadCheck>,
}

/// What a receiver of Market Spread results checks besides the framing and one connection per
/// symbol, which it always checks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MarketSpreadCheck {
    /// The `(symbol, order id)` of exactly the results expected, as from
    /// [`expected_results`](crate::market_spread::reference::expected_results); `None` for any.
    pub expected: Option<Vec<([u8; 4], [u8; 6])>>,
    /// Whether each symbol's results must come in the order of `expected` (the orders were sent
    /// on one connection) rather than in any order.
    pub in_order: bool,
}

impl MarketSpreadCheck {
    /// The checker for these expectations.
    pub fn checker(&self) -> ResultChecker {
        match &self.expected {
            Some(e) => ResultChecker::expecting(e, self.in_order),
            None => ResultChecker::new(),
        }
    }
}

impl ReceiveOptions {
    /// Options to listen on `listen`, writing the data, without validation or stop condition, and
    /// reporting rates every second.
    pub fn new(listen: impl Into<String>) -> Self {
        Self {
            listen: listen.into(),
            no_write: false,
            validate: false,
            expect_lines: None,
            idle_exit: None,
            report_every: Duration::from_secs(1),
            bar: false,
            market_spread: None,
        }
    }
}

/// What arrived at a [`Receiver`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReceiveReport {
    /// Complete lines (newline characters) received, over all connections; for Market Spread
    /// output, complete result frames.
    pub lines: u64,
    /// Bytes received, over all connections.
    pub bytes: u64,
    /// Connections accepted.
    pub connections: usize,
    /// Time from the first byte received to the last one (zero if nothing arrived).
    pub elapsed: Duration,
    /// With validation on, the first contract violation (and how many more followed), including a
    /// connection left mid-line; `None` if the output was valid or validation was off.
    pub violations: Option<String>,
    /// With validation on, the highest count seen per word; `None` if validation was off.
    pub counts: Option<HashMap<String, u64>>,
    /// Whether this was Market Spread output (order results) rather than word-count lines.
    pub market_spread: bool,
}

impl ReceiveReport {
    /// Fails with the violation message if validation found one.
    pub fn check(&self) -> Result<()> {
        match &self.violations {
            Some(v) => Err(anyhow!(
                "the received output breaks the {} contract: {v}",
                if self.market_spread {
                    "Market Spread"
                } else {
                    "word-count"
                }
            )),
            None => Ok(()),
        }
    }

    /// Lines per second over [`elapsed`](Self::elapsed) (0 if nothing arrived).
    pub fn lines_per_sec(&self) -> f64 {
        per_sec(self.lines, self.elapsed)
    }
}

/// State shared by the accepting thread, the connection threads and the [`Receiver`] handle.
struct Shared {
    start: Instant,
    lines: AtomicU64,
    bytes: AtomicU64,
    connections: AtomicUsize,
    /// Nanoseconds since `start` of the first and last byte received (`u64::MAX` = none yet).
    first_byte: AtomicU64,
    last_byte: AtomicU64,
    /// Nanoseconds since `start` of the last accept or read.
    last_activity: AtomicU64,
    stop: AtomicBool,
    validator: Option<Mutex<OrderValidator>>,
    /// Set for Market Spread output: checks (and counts) the result frames.
    market: Option<Mutex<ResultChecker>>,
    /// Clones of the accepted streams, to shut them down on stop.
    streams: Mutex<Vec<TcpStream>>,
    readers: Mutex<Vec<JoinHandle<()>>>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
    /// Where connection threads send whole lines to be written, if anywhere.
    forward: Mutex<Option<SyncSender<Vec<u8>>>>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// Locks `m`, going on with the data if a thread panicked while holding it (the counters in it stay
/// meaningful, and the panic itself is reported when the thread is joined).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn per_sec(n: u64, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}

/// A listening sink for word-count output, running in background threads.
///
/// It accepts any number of connections (a thread each), counts lines and bytes, and with
/// validation on checks the output contract as data arrives. Dropping it without
/// [`finish`](Self::finish) stops it the same way, discarding the report.
pub struct Receiver {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl Receiver {
    /// Binds `listen` (`host:port`, port 0 for any free port) and starts accepting in the
    /// background; returns as soon as the socket listens.
    pub fn start(listen: &str, validate: bool) -> Result<Receiver> {
        Self::spawn(listen, validate, None, None)
    }

    /// Like [`start`](Self::start), for Market Spread output: every connection carries framed
    /// 55-byte order results, which `checker` checks as they arrive; [`lines`](Self::lines)
    /// counts the complete results.
    pub fn start_market_spread(listen: &str, checker: ResultChecker) -> Result<Receiver> {
        Self::spawn(listen, false, None, Some(checker))
    }

    /// [`start`](Self::start), sending every chunk of whole lines received to `forward` if given,
    /// or checking Market Spread results with `market`.
    fn spawn(
        listen: &str,
        validate: bool,
        forward: Option<SyncSender<Vec<u8>>>,
        market: Option<ResultChecker>,
    ) -> Result<Receiver> {
        let listener = TcpListener::bind(listen)
            .with_context(|| format!("receiver: cannot listen on {listen}"))?;
        let addr = listener
            .local_addr()
            .with_context(|| format!("receiver: cannot read the bound address of {listen}"))?;
        listener.set_nonblocking(true).with_context(|| {
            format!("receiver: cannot make the listener on {addr} non-blocking")
        })?;
        let shared = Arc::new(Shared {
            start: Instant::now(),
            lines: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
            first_byte: AtomicU64::new(u64::MAX),
            last_byte: AtomicU64::new(u64::MAX),
            last_activity: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            validator: (validate && market.is_none()).then(|| Mutex::new(OrderValidator::new())),
            forward: Mutex::new(forward.filter(|_| market.is_none())),
            market: market.map(Mutex::new),
            streams: Mutex::new(Vec::new()),
            readers: Mutex::new(Vec::new()),
            acceptor: Mutex::new(None),
        });
        let acceptor = {
            let shared = shared.clone();
            thread::Builder::new()
                .name("receive-accept".into())
                .spawn(move || accept_loop(&shared, listener, addr))
                .context("receiver: cannot start the accepting thread")?
        };
        *lock(&shared.acceptor) = Some(acceptor);
        Ok(Receiver { shared, addr })
    }

    /// The address actually listened on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Complete lines received so far (with validation on, all of them already checked).
    pub fn lines(&self) -> u64 {
        self.shared.lines.load(Ordering::Acquire)
    }

    /// Bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Time since the last connection was accepted or the last data arrived (since the start if
    /// neither happened yet).
    pub fn idle_time(&self) -> Duration {
        let last = self.shared.last_activity.load(Ordering::Relaxed);
        Duration::from_nanos(self.shared.now_ns().saturating_sub(last))
    }

    /// Waits until at least `n` lines have arrived or `timeout` has passed; returns whether the
    /// lines arrived.
    pub fn wait_for_lines(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.lines() >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Stops accepting, closes every connection and stops forwarding; the connection threads end
    /// on their own once they have handed over what they already read. Idempotent.
    fn stop_inputs(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = lock(&self.shared.acceptor).take() {
            // The accepting thread does nothing that can panic on its own; a panic there would
            // already have been printed, and there is nothing more to report.
            let _ = acceptor.join();
        }
        for s in lock(&self.shared.streams).iter() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        lock(&self.shared.forward).take();
    }

    /// Stops accepting, closes the open connections and reports what arrived so far: line and byte
    /// totals and, with validation on, the verdict (a connection that ended mid-line is a
    /// violation). Contract violations are reported in [`ReceiveReport::violations`], not as an
    /// error; the error is for a connection thread that panicked.
    pub fn finish(self) -> Result<ReceiveReport> {
        self.stop_inputs();
        let readers = std::mem::take(&mut *lock(&self.shared.readers));
        let mut panicked = 0;
        for r in readers {
            if r.join().is_err() {
                panicked += 1;
            }
        }
        if panicked > 0 {
            return Err(anyhow!(
                "receiver on {}: {panicked} connection thread(s) panicked",
                self.addr
            ));
        }
        let sh = &self.shared;
        let first = sh.first_byte.load(Ordering::Relaxed);
        let last = sh.last_byte.load(Ordering::Relaxed);
        let elapsed = if first == u64::MAX {
            Duration::ZERO
        } else {
            Duration::from_nanos(last.saturating_sub(first))
        };
        let (violations, counts) = match &sh.validator {
            None if sh.market.is_some() => (market_verdict(sh), None),
            None => (None, None),
            Some(v) => {
                let v = lock(v);
                match v.finish() {
                    Ok(summary) => (None, Some(summary.counts)),
                    Err(first) => {
                        let mut msg = first.to_string();
                        let more = v.violations().saturating_sub(1);
                        if more > 0 {
                            msg.push_str(&format!(" (and {more} more violating lines)"));
                        }
                        (Some(msg), Some(v.counts().clone()))
                    }
                }
            }
        };
        Ok(ReceiveReport {
            lines: sh.lines.load(Ordering::Acquire),
            bytes: sh.bytes.load(Ordering::Relaxed),
            connections: sh.connections.load(Ordering::Relaxed),
            elapsed,
            violations,
            counts,
            market_spread: sh.market.is_some(),
        })
    }
}

/// The Market Spread checker's verdict, as a violation message (with the count of further ones).
fn market_verdict(sh: &Shared) -> Option<String> {
    let checker = lock(sh.market.as_ref()?);
    let first = checker.finish().err()?;
    let mut msg = first.to_string();
    let more = checker.violations().saturating_sub(1);
    if more > 0 {
        msg.push_str(&format!(" (and {more} more violations)"));
    }
    Some(msg)
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop_inputs();
    }
}

/// Accepts connections until asked to stop, starting a reading thread for each.
fn accept_loop(shared: &Arc<Shared>, listener: TcpListener, addr: SocketAddr) {
    while !shared.stop.load(Ordering::SeqCst) {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(ACCEPT_POLL);
                continue;
            }
            Err(e) => {
                tracing::warn!("receiver on {addr}: accept failed: {e}");
                thread::sleep(ACCEPT_POLL);
                continue;
            }
        };
        let conn = shared.connections.fetch_add(1, Ordering::Relaxed);
        shared
            .last_activity
            .store(shared.now_ns(), Ordering::Relaxed);
        tracing::debug!("receiver on {addr}: connection {conn} from {peer}");
        if let Err(e) = start_reader(shared, conn, stream) {
            tracing::warn!("receiver on {addr}: connection {conn} from {peer} dropped: {e:#}");
        }
    }
}

/// Registers an accepted connection and starts its reading thread.
fn start_reader(shared: &Arc<Shared>, conn: usize, stream: TcpStream) -> Result<()> {
    stream
        .set_nonblocking(false)
        .context("cannot make the connection blocking")?;
    let clone = stream
        .try_clone()
        .context("cannot clone the connection handle")?;
    lock(&shared.streams).push(clone);
    let forward = lock(&shared.forward).clone();
    let handle = {
        let shared = shared.clone();
        thread::Builder::new()
            .name(format!("receive-{conn}"))
            .spawn(move || read_loop(&shared, conn, stream, forward))
            .context("cannot start a thread for the connection")?
    };
    lock(&shared.readers).push(handle);
    Ok(())
}

/// Reads one connection to its end: counts, validates and forwards whole lines.
fn read_loop(
    shared: &Shared,
    conn: usize,
    mut stream: TcpStream,
    mut forward: Option<SyncSender<Vec<u8>>>,
) {
    let mut buf = vec![0u8; READ_BUF];
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if !shared.stop.load(Ordering::SeqCst) {
                    tracing::warn!("receiver: reading connection {conn} failed: {e}");
                }
                break;
            }
        };
        let data = &buf[..n];
        let now = shared.now_ns();
        let _ =
            shared
                .first_byte
                .compare_exchange(u64::MAX, now, Ordering::Relaxed, Ordering::Relaxed);
        shared.last_byte.store(now, Ordering::Relaxed);
        shared.last_activity.store(now, Ordering::Relaxed);
        if let Some(m) = &shared.market {
            let mut m = lock(m);
            let before = m.violations();
            if let Err(e) = m.feed(conn, data) {
                if before == 0 {
                    tracing::warn!("receiver: Market Spread output contract broken: {e}");
                }
            }
            shared.bytes.fetch_add(n as u64, Ordering::Relaxed);
            shared.lines.store(m.results(), Ordering::Release);
            continue;
        }
        if let Some(v) = &shared.validator {
            let mut v = lock(v);
            let before = v.violations();
            if let Err(e) = v.feed(conn, data) {
                if before == 0 {
                    tracing::warn!("receiver: output contract broken: {e}");
                }
            }
        }
        let newlines = data.iter().filter(|&&b| b == b'\n').count() as u64;
        shared.bytes.fetch_add(n as u64, Ordering::Relaxed);
        shared.lines.fetch_add(newlines, Ordering::Release);
        if let Some(tx) = &forward {
            let chunk = match data.iter().rposition(|&b| b == b'\n') {
                None => {
                    carry.extend_from_slice(data);
                    continue;
                }
                Some(i) => {
                    let mut chunk = std::mem::take(&mut carry);
                    chunk.extend_from_slice(&data[..=i]);
                    carry.extend_from_slice(&data[i + 1..]);
                    chunk
                }
            };
            if tx.send(chunk).is_err() {
                forward = None;
            }
        }
    }
    if let (Some(tx), false) = (&forward, carry.is_empty()) {
        tracing::warn!(
            "receiver: connection {conn} ended inside a line; its last {} bytes are written on a \
             line of their own",
            carry.len()
        );
        carry.push(b'\n');
        let _ = tx.send(carry);
    }
}

/// Runs the `receive` command: listens on `opts.listen`, writes whole lines of every connection to
/// `out` (unless `no_write`), prints line and byte rates to stderr every `report_every`, and stops
/// once `expect_lines` lines arrived or after `idle_exit` without data; otherwise runs until the
/// process ends. Contract violations found with `validate` are in the report, not an error.
pub fn run_receive(opts: &ReceiveOptions, out: &mut dyn Write) -> Result<ReceiveReport> {
    let market = opts.market_spread.as_ref().map(MarketSpreadCheck::checker);
    let (tx, rx) = if opts.no_write || market.is_some() {
        (None, None)
    } else {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(FORWARD_QUEUE);
        (Some(tx), Some(rx))
    };
    let unit = if market.is_some() { "results" } else { "lines" };
    let checking = opts.validate || market.is_some();
    let receiver = Receiver::spawn(&opts.listen, opts.validate, tx, market)?;
    let addr = receiver.local_addr();
    tracing::info!("receive: listening on {addr}");
    let write = |out: &mut dyn Write, chunk: &[u8]| {
        out.write_all(chunk)
            .with_context(|| format!("receive: writing the data received on {addr} failed"))
    };
    let report_on = !opts.report_every.is_zero();
    let bar = (report_on && opts.bar).then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar
    });
    let mut next_report = Instant::now() + opts.report_every;
    let (mut last_lines, mut last_bytes, mut last_at) = (0u64, 0u64, Instant::now());
    loop {
        let wait = if report_on {
            CHECK_EVERY.min(next_report.saturating_duration_since(Instant::now()))
        } else {
            CHECK_EVERY
        };
        match &rx {
            Some(rx) => match rx.recv_timeout(wait) {
                Ok(chunk) => write(out, &chunk)?,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
            },
            None => thread::sleep(wait),
        }
        let now = Instant::now();
        if report_on && now >= next_report {
            let (lines, bytes) = (receiver.lines(), receiver.bytes());
            let dt = now - last_at;
            let status = format!(
                "receive: {:.0} {unit}/s, {:.0} bytes/s ({lines} {unit}, {bytes} bytes, {} \
                 connections)",
                per_sec(lines - last_lines, dt),
                per_sec(bytes - last_bytes, dt),
                receiver.connections(),
            );
            match &bar {
                Some(bar) => bar.set_message(status),
                None => eprintln!("{status}"),
            }
            (last_lines, last_bytes, last_at) = (lines, bytes, now);
            next_report = now + opts.report_every;
            if rx.is_some() {
                out.flush()
                    .with_context(|| format!("receive: flushing the output of {addr} failed"))?;
            }
        }
        if opts.expect_lines.is_some_and(|n| receiver.lines() >= n) {
            break;
        }
        if opts
            .idle_exit
            .is_some_and(|idle| receiver.connections() > 0 && receiver.idle_time() >= idle)
        {
            break;
        }
    }
    receiver.stop_inputs();
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if let Some(rx) = rx {
        for chunk in rx.iter() {
            write(out, &chunk)?;
        }
        out.flush()
            .with_context(|| format!("receive: flushing the output of {addr} failed"))?;
    }
    let report = receiver.finish()?;
    eprintln!(
        "receive: {} {unit}, {} bytes on {} connections in {:.3} s ({:.0} {unit}/s){}",
        report.lines,
        report.bytes,
        report.connections,
        report.elapsed.as_secs_f64(),
        report.lines_per_sec(),
        match (&report.violations, checking) {
            (Some(v), _) => format!(", INVALID: {v}"),
            (None, true) => ", output valid".to_string(),
            (None, false) => String::new(),
        }
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A local address that was free a moment ago (for `run_receive`, which binds by itself).
    fn free_addr() -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    }

    fn connect_retry(addr: &str) -> TcpStream {
        let t = Instant::now();
        loop {
            match TcpStream::connect(addr) {
                Ok(s) => return s,
                Err(e) if t.elapsed() > Duration::from_secs(5) => panic!("{addr}: {e}"),
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    #[test]
    fn receives_validates_and_reports() {
        let r = Receiver::start("127.0.0.1:0", true).unwrap();
        let mut a = TcpStream::connect(r.local_addr()).unwrap();
        let mut b = TcpStream::connect(r.local_addr()).unwrap();
        a.write_all(b"x => 1\nx =").unwrap();
        b.write_all(b"y => 1\n").unwrap();
        a.write_all(b"> 2\n").unwrap();
        assert!(r.wait_for_lines(3, Duration::from_secs(5)));
        drop((a, b));
        let report = r.finish().unwrap();
        assert_eq!(report.lines, 3);
        assert_eq!(report.bytes, 21);
        assert_eq!(report.connections, 2);
        assert_eq!(report.violations, None);
        assert_eq!(report.counts.unwrap()["x"], 2);
    }

    #[test]
    fn partial_line_is_a_violation() {
        let r = Receiver::start("127.0.0.1:0", true).unwrap();
        let mut a = TcpStream::connect(r.local_addr()).unwrap();
        a.write_all(b"x => 1\nx => 2").unwrap();
        assert!(r.wait_for_lines(1, Duration::from_secs(5)));
        // Wait for the tail to be read too.
        let t = Instant::now();
        while r.bytes() < 13 && t.elapsed() < Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(1));
        }
        let report = r.finish().unwrap();
        let v = report.violations.clone().unwrap();
        assert!(v.contains("ended inside a line"), "{v}");
        assert!(report.check().is_err());
    }

    #[test]
    fn run_receive_writes_whole_lines_and_stops_at_expected() {
        let listen = free_addr();
        let opts = ReceiveOptions {
            validate: true,
            expect_lines: Some(4),
            report_every: Duration::ZERO,
            ..ReceiveOptions::new(listen.clone())
        };
        let sender = thread::spawn(move || {
            let (mut a, mut b) = (connect_retry(&listen), connect_retry(&listen));
            a.write_all(b"aa => 1\naa").unwrap();
            a.flush().unwrap();
            thread::sleep(Duration::from_millis(20));
            b.write_all(b"bb => 1\nbb => 2\n").unwrap();
            a.write_all(b" => 2\n").unwrap();
            thread::sleep(Duration::from_millis(200));
        });
        let mut out = Vec::new();
        let report = run_receive(&opts, &mut out).unwrap();
        sender.join().unwrap();
        assert_eq!(report.lines, 4);
        assert_eq!(report.violations, None);
        let text = String::from_utf8(out).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort();
        assert_eq!(lines, ["aa => 1", "aa => 2", "bb => 1", "bb => 2"]);
    }

    #[test]
    fn idle_exit_after_a_connection() {
        let listen = free_addr();
        let opts = ReceiveOptions {
            no_write: true,
            idle_exit: Some(Duration::from_millis(50)),
            report_every: Duration::from_millis(20),
            ..ReceiveOptions::new(listen.clone())
        };
        let sender = thread::spawn(move || {
            let mut a = connect_retry(&listen);
            a.write_all(b"w => 1\n").unwrap();
        });
        let t = Instant::now();
        let report = run_receive(&opts, &mut io::sink()).unwrap();
        sender.join().unwrap();
        assert_eq!((report.lines, report.connections), (1, 1));
        assert!(t.elapsed() < Duration::from_secs(3));
    }

    /// Framed results for `(symbol, order id)` pairs, as Market Spread writes them.
    fn market_results(items: &[(&[u8; 4], &[u8; 6])]) -> Vec<u8> {
        use crate::market_spread::{encode_result, Order, Side, SymbolState};
        let mut out = Vec::new();
        for (symbol, id) in items {
            let order = Order {
                side: Side::Buy,
                account: 7,
                order_id: **id,
                symbol: **symbol,
                qty: 100.0,
                price: 9.5,
                transact_time: *b"20150818-09:30:00.000",
            };
            encode_result(&order, &SymbolState::default(), 1, &mut out);
        }
        out
    }

    #[test]
    fn market_spread_results_split_across_reads_are_counted_and_checked() {
        let check = MarketSpreadCheck {
            expected: Some(vec![
                (*b"AA  ", *b"000001"),
                (*b"BB  ", *b"000002"),
                (*b"AA  ", *b"000003"),
            ]),
            in_order: true,
        };
        let listen = free_addr();
        let opts = ReceiveOptions {
            expect_lines: Some(3),
            report_every: Duration::ZERO,
            market_spread: Some(check),
            ..ReceiveOptions::new(listen.clone())
        };
        let a_bytes = market_results(&[(b"AA  ", b"000001"), (b"AA  ", b"000003")]);
        let b_bytes = market_results(&[(b"BB  ", b"000002")]);
        let sender = thread::spawn(move || {
            let (mut a, mut b) = (connect_retry(&listen), connect_retry(&listen));
            a.write_all(&a_bytes[..30]).unwrap();
            a.flush().unwrap();
            thread::sleep(Duration::from_millis(20));
            b.write_all(&b_bytes).unwrap();
            a.write_all(&a_bytes[30..]).unwrap();
            thread::sleep(Duration::from_millis(200));
        });
        let mut out = Vec::new();
        let report = run_receive(&opts, &mut out).unwrap();
        sender.join().unwrap();
        assert!(out.is_empty(), "results are not written");
        assert_eq!((report.lines, report.bytes), (3, 3 * 59));
        assert_eq!(report.violations, None);
        assert!(report.market_spread);
        report.check().unwrap();
    }

    #[test]
    fn market_spread_faults_are_reported() {
        let r = Receiver::start_market_spread("127.0.0.1:0", ResultChecker::new()).unwrap();
        let mut a = TcpStream::connect(r.local_addr()).unwrap();
        let mut b = TcpStream::connect(r.local_addr()).unwrap();
        a.write_all(&market_results(&[(b"AA  ", b"000001")]))
            .unwrap();
        assert!(r.wait_for_lines(1, Duration::from_secs(5)));
        let moved = market_results(&[(b"AA  ", b"000002")]);
        b.write_all(&moved[..40]).unwrap();
        let t = Instant::now();
        while r.bytes() < 99 && t.elapsed() < Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(1));
        }
        b.write_all(&moved[40..]).unwrap();
        assert!(r.wait_for_lines(2, Duration::from_secs(5)));
        a.write_all(&moved[..10]).unwrap();
        let t = Instant::now();
        while r.bytes() < 128 && t.elapsed() < Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(1));
        }
        drop((a, b));
        let report = r.finish().unwrap();
        let v = report.violations.clone().unwrap();
        assert!(v.starts_with("symbol \"AA  \" changed connection"), "{v}");
        let err = report.check().unwrap_err().to_string();
        assert!(err.contains("breaks the Market Spread contract"), "{err}");
    }

    #[test]
    fn bind_error_names_the_address() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = held.local_addr().unwrap().to_string();
        let err = Receiver::start(&taken, false).err().unwrap();
        assert!(format!("{err:#}").contains(&taken), "{err:#}");
    }
}
