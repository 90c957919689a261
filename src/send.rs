//! The load generator: Bettong's equivalent of Wallaroo's giles sender.
//!
//! Benchmarks of the server are only meaningful if the sender costs far less CPU than the server
//! it drives, and tests need exact message totals and a steady, known rate. So the input is framed
//! once into a single shared buffer with precomputed frame boundaries, every connection thread
//! writes large contiguous slices of it (up to `batch_size` frames per `write_all`), pacing is done
//! per batch against a schedule rather than per message, and progress is sampled from shared
//! counters a few times a second.

use std::io::{self, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::corpus::{frame_bounds, frame_lines};

/// Inputs smaller than this are repeated in memory until at least this size, so that writes stay
/// large even for a corpus of a few frames.
const MIN_BUFFER: usize = 1 << 20;
/// Writes per second and connection that rate pacing aims for (smaller batches at low rates).
const PACED_WRITES_PER_SEC: f64 = 2000.0;
/// A paced connection that falls further than this behind its schedule (a slow server, a long
/// `interval`) restarts its schedule instead of bursting to catch up.
const MAX_LAG: Duration = Duration::from_millis(100);
/// How often the progress bar is updated.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Where the messages to send come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendSource {
    /// A text file: each non-empty line is one message (giles sender `--file`).
    File(PathBuf),
    /// A file already framed (4-byte big-endian length + payload per message), sent as is.
    FramedFile(PathBuf),
    /// Already framed bytes held in memory.
    Bytes(Vec<u8>),
}

impl SendSource {
    fn describe(&self) -> String {
        match self {
            SendSource::File(p) => format!("text file {}", p.display()),
            SendSource::FramedFile(p) => format!("framed file {}", p.display()),
            SendSource::Bytes(b) => format!("{} framed bytes in memory", b.len()),
        }
    }
}

/// What [`run_send`] should send, where, and how fast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendOptions {
    /// Server addresses (`host:port`); connection `i` goes to `hosts[i % hosts.len()]`.
    pub hosts: Vec<String>,
    /// The messages.
    pub source: SendSource,
    /// Stop after this many messages in total (over all connections), cycling through the input
    /// as needed, but never past `repeat` passes unless `repeat` is 0.
    pub messages: Option<u64>,
    /// Most messages written by one `write_all` (default 500).
    pub batch_size: usize,
    /// Pause after every batch, on every connection.
    pub interval: Option<Duration>,
    /// Number of times the whole input is sent in total (default 1); 0 means no limit, so with
    /// `messages` unset the sender runs until it fails. With `messages` set, whichever limit comes
    /// first stops it: set `repeat` to 0 to send `messages` messages from a shorter input.
    pub repeat: u64,
    /// Number of TCP connections, each with its own thread (default 1).
    pub connections: usize,
    /// Messages per second over all connections, 0 for as fast as possible (default 0).
    pub rate: u64,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Without the bar: print a plain progress line on stderr this often (zero: never).
    pub progress_lines: Duration,
    /// How long to keep retrying to connect while the server is not listening yet (default 10 s).
    pub connect_timeout: Duration,
}

impl SendOptions {
    /// Options with the defaults: one connection, one pass over the input, batches of 500, no rate
    /// limit, no progress bar, 10 s connect retry.
    pub fn new(hosts: Vec<String>, source: SendSource) -> Self {
        Self {
            hosts,
            source,
            messages: None,
            batch_size: 500,
            interval: None,
            repeat: 1,
            connections: 1,
            rate: 0,
            progress: false,
            progress_lines: Duration::ZERO,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// What [`run_send`] sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReport {
    /// Messages (frames) written, over all connections.
    pub messages: u64,
    /// Bytes written (headers included), over all connections.
    pub bytes: u64,
    /// Time from the start of sending (all connections open) until the last write returned.
    pub elapsed: Duration,
    /// Connections used.
    pub connections: usize,
}

impl SendReport {
    /// Messages per second over [`elapsed`](Self::elapsed) (0 for an instant run).
    pub fn messages_per_sec(&self) -> f64 {
        if self.elapsed.is_zero() {
            0.0
        } else {
            self.messages as f64 / self.elapsed.as_secs_f64()
        }
    }
}

/// The framed input, repeated to a useful size, with its frame boundaries.
struct Input {
    buf: Vec<u8>,
    /// `bounds[i]..bounds[i + 1]` is frame `i` of `buf`; `bounds.len() == frames + 1`.
    bounds: Vec<usize>,
}

impl Input {
    fn frames(&self) -> usize {
        self.bounds.len() - 1
    }

    /// Frames `[from, from + n)` of the buffer as one slice.
    fn slice(&self, from: usize, n: usize) -> &[u8] {
        &self.buf[self.bounds[from]..self.bounds[from + n]]
    }
}

/// Reads and frames the source; returns the buffer (grown to at least [`MIN_BUFFER`] by whole
/// copies of the input) and the number of messages in one pass over the input.
fn load(source: &SendSource) -> Result<(Input, u64)> {
    let what = source.describe();
    let framed = match source {
        SendSource::File(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("send: cannot read the text file {}", path.display()))?;
            frame_lines(&text)
        }
        SendSource::FramedFile(path) => std::fs::read(path)
            .with_context(|| format!("send: cannot read the framed file {}", path.display()))?,
        SendSource::Bytes(bytes) => bytes.clone(),
    };
    let frames = frame_bounds(&framed)
        .with_context(|| format!("send: the {what} is not a valid sequence of frames"))?
        .len()
        - 1;
    if frames == 0 {
        bail!("send: the {what} holds no message to send");
    }
    let copies = MIN_BUFFER.div_ceil(framed.len()).max(1);
    let buf = framed.repeat(copies);
    let bounds = frame_bounds(&buf).expect("copies of valid frames are valid frames");
    Ok((Input { buf, bounds }, frames as u64))
}

/// Connects to `host`, retrying until `timeout` has passed.
fn connect(host: &str, conn: usize, timeout: Duration) -> Result<TcpStream> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(10);
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        let attempt = (|| -> io::Result<TcpStream> {
            let mut last = None;
            for addr in host.to_socket_addrs()? {
                match TcpStream::connect_timeout(&addr, left.max(Duration::from_millis(10))) {
                    Ok(s) => return Ok(s),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address")
            }))
        })();
        match attempt {
            Ok(s) => {
                // Small paced batches should leave at once; big batches are unaffected.
                s.set_nodelay(true)
                    .with_context(|| format!("send: cannot set TCP_NODELAY on {host}"))?;
                return Ok(s);
            }
            Err(e) => {
                let left = timeout.saturating_sub(start.elapsed());
                if left.is_zero() {
                    return Err(anyhow!(e).context(format!(
                        "send: connection {conn} could not connect to {host} within {timeout:?} \
                         (is the server listening there?)"
                    )));
                }
                thread::sleep(delay.min(left));
                delay = (delay * 2).min(Duration::from_millis(250));
            }
        }
    }
}

/// One connection's share of the work.
struct Plan {
    conn: usize,
    host: String,
    /// First frame of the buffer this connection sends.
    start: usize,
    /// Messages to send, `None` for no limit.
    count: Option<u64>,
    /// Messages per second for this connection, 0 for no limit.
    rate: f64,
    /// Messages per write.
    batch: usize,
}

/// Counters shared by the connection threads and the progress bar.
#[derive(Default)]
struct Counters {
    messages: AtomicU64,
    bytes: AtomicU64,
    /// Set when a connection fails, so the others stop too.
    abort: AtomicBool,
}

/// Sends one connection's share; returns the messages it sent.
fn send_conn(
    plan: &Plan,
    mut stream: TcpStream,
    input: &Input,
    opts: &SendOptions,
    counters: &Counters,
) -> Result<u64> {
    let frames = input.frames();
    let mut pos = plan.start;
    let mut sent = 0u64;
    let mut t0 = Instant::now();
    loop {
        let left = plan.count.map_or(u64::MAX, |c| c - sent);
        if left == 0 || counters.abort.load(Ordering::Relaxed) {
            break;
        }
        if plan.rate > 0.0 {
            let due = t0 + Duration::from_secs_f64(sent as f64 / plan.rate);
            let now = Instant::now();
            if now < due {
                thread::sleep(due - now);
            } else if now - due > MAX_LAG {
                t0 = now - Duration::from_secs_f64(sent as f64 / plan.rate);
            }
        }
        let n = (plan.batch as u64).min(left).min((frames - pos) as u64) as usize;
        let slice = input.slice(pos, n);
        stream.write_all(slice).with_context(|| {
            format!(
                "send: connection {} to {} failed after {sent} messages",
                plan.conn, plan.host
            )
        })?;
        sent += n as u64;
        pos = (pos + n) % frames;
        counters.messages.fetch_add(n as u64, Ordering::Relaxed);
        counters
            .bytes
            .fetch_add(slice.len() as u64, Ordering::Relaxed);
        if let Some(pause) = opts.interval {
            thread::sleep(pause);
        }
    }
    // Tell the server this connection is done; a failure here only means it is gone already.
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
    Ok(sent)
}

/// Splits the work between the connections: an exact share of the total each (the first
/// `total % connections` send one more), each reading its own contiguous run of the cycled input.
fn plan(opts: &SendOptions, input: &Input, total: Option<u64>) -> Vec<Plan> {
    let n = opts.connections as u64;
    let rate = opts.rate as f64 / opts.connections as f64;
    let batch = if opts.rate == 0 {
        opts.batch_size
    } else {
        ((rate / PACED_WRITES_PER_SEC).ceil() as usize).clamp(1, opts.batch_size)
    };
    let frames = input.frames() as u64;
    (0..opts.connections)
        .map(|conn| {
            let c = conn as u64;
            let (start, count) = match total {
                Some(total) => {
                    let (share, extra) = (total / n, total % n);
                    let first = c * share + c.min(extra);
                    (first % frames, Some(share + u64::from(c < extra)))
                }
                None => (c * frames / n, None),
            };
            Plan {
                conn,
                host: opts.hosts[conn % opts.hosts.len()].clone(),
                start: start as usize,
                count,
                rate,
                batch,
            }
        })
        .collect()
}

/// Runs the load generator: frames the input once, opens `connections` connections (retrying for
/// up to `connect_timeout` each), sends the messages over all of them at the asked rate, and
/// reports what was sent. Fails if the input is unusable, a connection cannot be opened, or a
/// write fails (the other connections then stop too).
pub fn run_send(opts: &SendOptions) -> Result<SendReport> {
    if opts.hosts.is_empty() {
        bail!("send: no server address given");
    }
    if opts.connections == 0 {
        bail!("send: the number of connections must be at least 1");
    }
    if opts.batch_size == 0 {
        bail!("send: the batch size must be at least 1");
    }
    let (input, per_pass) = load(&opts.source)?;
    let by_repeat = (opts.repeat > 0).then(|| per_pass.saturating_mul(opts.repeat));
    let total = match (opts.messages, by_repeat) {
        (Some(m), Some(r)) => Some(m.min(r)),
        (m, r) => m.or(r),
    };
    let plans = plan(opts, &input, total);

    let streams: Vec<TcpStream> = thread::scope(|s| {
        let tries: Vec<_> = plans
            .iter()
            .map(|p| s.spawn(|| connect(&p.host, p.conn, opts.connect_timeout)))
            .collect();
        tries
            .into_iter()
            .map(|t| t.join().expect("connect thread panicked"))
            .collect::<Result<_>>()
    })?;

    let counters = Counters::default();
    let done = AtomicBool::new(false);
    let start = Instant::now();
    let results: Vec<Result<u64>> = thread::scope(|s| {
        let senders: Vec<_> = plans
            .iter()
            .zip(streams)
            .map(|(plan, stream)| {
                let (input, counters) = (&input, &counters);
                s.spawn(move || {
                    let r = send_conn(plan, stream, input, opts, counters);
                    if r.is_err() {
                        counters.abort.store(true, Ordering::Relaxed);
                    }
                    r
                })
            })
            .collect();
        if opts.progress {
            let (counters, done) = (&counters, &done);
            s.spawn(move || show_progress(total, counters, done));
        } else if !opts.progress_lines.is_zero() {
            let (counters, done, every) = (&counters, &done, opts.progress_lines);
            s.spawn(move || print_progress(total, counters, done, every));
        }
        let results = senders
            .into_iter()
            .map(|h| h.join().expect("send thread panicked"))
            .collect();
        done.store(true, Ordering::Relaxed);
        results
    });
    let elapsed = start.elapsed();
    let mut messages = 0;
    for r in results {
        messages += r?;
    }
    Ok(SendReport {
        messages,
        bytes: counters.bytes.load(Ordering::Relaxed),
        elapsed,
        connections: opts.connections,
    })
}

/// Prints a plain progress line on stderr every `every` until `done` (for a stderr that is not a
/// terminal, where a bar would be a wall of control codes).
fn print_progress(total: Option<u64>, counters: &Counters, done: &AtomicBool, every: Duration) {
    let (mut last, mut last_at) = (0u64, Instant::now());
    let mut next = last_at + every;
    while !done.load(Ordering::Relaxed) {
        thread::sleep(PROGRESS_EVERY);
        let now = Instant::now();
        if now < next {
            continue;
        }
        let sent = counters.messages.load(Ordering::Relaxed);
        eprintln!("{}", progress_line(sent, total, sent - last, now - last_at));
        (last, last_at, next) = (sent, now, now + every);
    }
}

/// One plain progress line: messages sent (of how many), and the rate since the last line.
///
/// ```text
/// send: 1500000 of 2000000 msgs (75%), 150000 msgs/s
/// ```
fn progress_line(sent: u64, total: Option<u64>, delta: u64, dt: Duration) -> String {
    let rate = delta as f64 / dt.as_secs_f64().max(1e-3);
    match total {
        Some(t) if t > 0 => format!(
            "send: {sent} of {t} msgs ({:.0}%), {rate:.0} msgs/s",
            sent as f64 * 100.0 / t as f64
        ),
        _ => format!("send: {sent} msgs, {rate:.0} msgs/s"),
    }
}

/// Draws a progress bar on stderr from the shared counters until `done`.
fn show_progress(total: Option<u64>, counters: &Counters, done: &AtomicBool) {
    let bar = match total {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{wide_bar}] {human_pos}/{human_len} msgs, {per_sec}, eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {elapsed_precise} {human_pos} msgs, {per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    while !done.load(Ordering::Relaxed) {
        bar.set_position(counters.messages.load(Ordering::Relaxed));
        thread::sleep(PROGRESS_EVERY);
    }
    bar.set_position(counters.messages.load(Ordering::Relaxed));
    bar.finish_and_clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::push_frame;

    fn bytes_input(frames: usize) -> Input {
        let mut framed = Vec::new();
        for i in 0..frames {
            push_frame(&mut framed, format!("m{i}").as_bytes());
        }
        load(&SendSource::Bytes(framed)).unwrap().0
    }

    #[test]
    fn progress_lines_give_the_count_and_the_rate() {
        assert_eq!(
            progress_line(150, Some(200), 100, Duration::from_secs(2)),
            "send: 150 of 200 msgs (75%), 50 msgs/s"
        );
        assert_eq!(
            progress_line(7, None, 7, Duration::from_secs(1)),
            "send: 7 msgs, 7 msgs/s"
        );
    }

    #[test]
    fn small_inputs_are_repeated_to_a_large_buffer() {
        let mut framed = Vec::new();
        push_frame(&mut framed, b"abc");
        let (input, per_pass) = load(&SendSource::Bytes(framed)).unwrap();
        assert_eq!(per_pass, 1);
        assert!(input.buf.len() >= MIN_BUFFER);
        assert_eq!(input.frames(), input.buf.len() / 7);
    }

    #[test]
    fn bad_inputs_are_refused() {
        let err = load(&SendSource::Bytes(vec![0, 0, 0, 5, b'a']))
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("offset 0"), "{err:#}");
        let err = load(&SendSource::Bytes(Vec::new())).err().unwrap();
        assert!(err.to_string().contains("no message"), "{err}");
        let err = load(&SendSource::File("/nonexistent/x.txt".into()))
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/x.txt"), "{err}");
    }

    #[test]
    fn plans_split_the_total_exactly() {
        let input = bytes_input(10);
        let mut opts =
            SendOptions::new(vec!["a:1".into(), "b:2".into()], SendSource::Bytes(vec![]));
        opts.connections = 3;
        let plans = plan(&opts, &input, Some(1001));
        let counts: Vec<_> = plans.iter().map(|p| p.count.unwrap()).collect();
        assert_eq!(counts, [334, 334, 333]);
        let hosts: Vec<_> = plans.iter().map(|p| p.host.as_str()).collect();
        assert_eq!(hosts, ["a:1", "b:2", "a:1"]);
        assert_eq!(plans[1].start, 334 % input.frames());
        assert_eq!(plans[0].batch, 500);
        // 60000/s over 3 connections at PACED_WRITES_PER_SEC writes/s each: 10 per write.
        opts.rate = 60_000;
        assert_eq!(plan(&opts, &input, None)[0].batch, 10);
        opts.rate = 10;
        assert_eq!(plan(&opts, &input, None)[0].batch, 1);
    }
}
