//! `bettong bench`: one command that measures the word-count server.
//!
//! Over loopback it starts a receiver (a lean sink that counts lines and times probes), the
//! server and the sender in this process, says which CPUs each runs on, and runs two phases:
//! - **full speed**: the corpus is sent as fast as the server takes it; throughput is measured
//!   from the first byte sent to the last output line received;
//! - **fixed rate** (below saturation, so that coordinated omission cannot hide latency): the
//!   sender is paced, and a probe connection sends a message holding one unique word every
//!   millisecond; the receiver matches each probe's output line, which gives end-to-end latency
//!   from the probe's send to its output's arrival. The engine's own histogram (arrival at the
//!   engine → output written to the sink) is reported beside it.
//!
//! `--in-process` runs the same pipeline embedded, with the in-memory source and a discarding
//! sink: the engine without sockets.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bettong_engine::{Engine, MemorySource, MetricsSnapshot, SinkConfig, SourceConfig};
use hdrhistogram::Histogram;

use crate::probes::Probes;
use crate::send::{run_send, SendOptions, SendSource};
use crate::serve::{start_server, ServeOptions};

/// What `bettong bench` measures, and how.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Run embedded (memory source, discarding sink) instead of over loopback.
    pub in_process: bool,
    /// A framed corpus (gen_corpus.py's output); None generates a synthetic one.
    pub framed_file: Option<std::path::PathBuf>,
    /// Messages of the synthetic corpus.
    pub messages: usize,
    /// Passes over the corpus in the full-speed phase.
    pub repeat: usize,
    /// Server cores (default: every online core).
    pub cores: Option<usize>,
    /// Sender connections.
    pub connections: usize,
    /// Messages/s of the fixed-rate phase; None: half the full-speed rate; Some(0): skip it.
    pub rate: Option<u64>,
    /// Length of the fixed-rate phase.
    pub duration: Duration,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            in_process: false,
            framed_file: None,
            messages: 200_000,
            repeat: 3,
            cores: None,
            connections: 2,
            rate: None,
            duration: Duration::from_secs(3),
        }
    }
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    /// Samples behind the figures.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
}

impl Percentiles {
    /// Reads the percentiles of a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        Percentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }

    /// The percentiles as a JSON object (`count`, `p50`, … `max`).
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "count": self.count, "p50": self.p50, "p90": self.p90, "p99": self.p99,
            "p999": self.p999, "max": self.max,
        })
    }
}

/// The figures of one phase.
#[derive(Debug, Clone, Default)]
pub struct Phase {
    /// "full speed", "fixed rate" or "in-process".
    pub name: String,
    /// Messages in.
    pub messages: u64,
    /// Words in.
    pub words: u64,
    /// Output lines.
    pub lines: u64,
    /// Output bytes.
    pub bytes_out: u64,
    /// Wall time of the phase.
    pub elapsed: Duration,
    /// The engine's histogram: arrival at the engine → output written to the sink.
    pub engine_latency: Percentiles,
    /// Probes: message sent by the client → its output line received (loopback only).
    pub probe_latency: Option<Percentiles>,
    /// The rate the sender was asked for (fixed-rate phase).
    pub target_rate: Option<u64>,
}

impl Phase {
    fn per_sec(&self, n: u64) -> f64 {
        n as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Messages per second.
    pub fn msgs_per_sec(&self) -> f64 {
        self.per_sec(self.messages)
    }

    /// Words per second.
    pub fn words_per_sec(&self) -> f64 {
        self.per_sec(self.words)
    }

    /// Output lines per second.
    pub fn lines_per_sec(&self) -> f64 {
        self.per_sec(self.lines)
    }

    /// Output megabytes (10^6 bytes) per second.
    pub fn mb_per_sec_out(&self) -> f64 {
        self.per_sec(self.bytes_out) / 1e6
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "messages": self.messages, "words": self.words, "lines": self.lines,
            "bytes_out": self.bytes_out, "seconds": self.elapsed.as_secs_f64(),
            "msgs_per_sec": self.msgs_per_sec(), "words_per_sec": self.words_per_sec(),
            "lines_per_sec": self.lines_per_sec(), "mb_per_sec_out": self.mb_per_sec_out(),
            "target_rate": self.target_rate,
            "latency_us": self.engine_latency.json(),
            "probe_latency_us": self.probe_latency.map(|p| p.json()),
        })
    }
}

/// Everything a bench run found.
#[derive(Debug, Clone, Default)]
pub struct BenchReport {
    /// "loopback" or "in-process".
    pub mode: String,
    /// The CPUs the server's cores are pinned to.
    pub server_cpus: Vec<usize>,
    /// Where the sender and receiver run.
    pub clients: String,
    /// The corpus used.
    pub corpus: String,
    /// The phases, in order.
    pub phases: Vec<Phase>,
    /// Distinct words held at the end, and the engine's estimate of their memory.
    pub keys: u64,
    /// Approximate bytes of state per distinct word.
    pub bytes_per_key: f64,
    /// Each server core's final counters (`name=value …`), by core index.
    pub per_core: Vec<String>,
}

impl BenchReport {
    /// One JSON object; the top-level figures are the first phase's throughput and the
    /// latency of the fixed-rate phase when there is one (else the first phase's).
    pub fn json(&self) -> serde_json::Value {
        let first = self.phases.first().cloned().unwrap_or_default();
        let lat = self
            .phases
            .iter()
            .find(|p| p.target_rate.is_some())
            .unwrap_or(&first);
        serde_json::json!({
            "mode": self.mode,
            "server_cpus": self.server_cpus,
            "clients": self.clients,
            "corpus": self.corpus,
            "words_per_sec": first.words_per_sec(),
            "msgs_per_sec": first.msgs_per_sec(),
            "lines_per_sec": first.lines_per_sec(),
            "mb_per_sec_out": first.mb_per_sec_out(),
            "latency_us": lat.probe_latency.unwrap_or(lat.engine_latency).json(),
            "engine_latency_us": lat.engine_latency.json(),
            "keys": self.keys,
            "bytes_per_key": self.bytes_per_key,
            "per_core": self.per_core,
            "phases": self.phases.iter().map(Phase::json).collect::<Vec<_>>(),
        })
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        s += &format!(
            "bettong bench ({}): server on CPUs {:?}; {}\ncorpus: {}\n",
            self.mode, self.server_cpus, self.clients, self.corpus
        );
        s += &format!(
            "{:<12} {:>10} {:>11} {:>11} {:>9} | {:>26} | {:>26}\n",
            "phase",
            "msgs/s",
            "words/s",
            "lines/s",
            "MB/s out",
            "engine µs p50/p90/p99/p99.9/max",
            "probe µs p50/p90/p99/p99.9/max"
        );
        let pct = |p: &Percentiles| format!("{}/{}/{}/{}/{}", p.p50, p.p90, p.p99, p.p999, p.max);
        for p in &self.phases {
            let name = match p.target_rate {
                Some(r) => format!("{} ({r}/s)", p.name),
                None => p.name.clone(),
            };
            s += &format!(
                "{:<12} {:>10.0} {:>11.0} {:>11.0} {:>9.1} | {:>26} | {:>26}\n",
                name,
                p.msgs_per_sec(),
                p.words_per_sec(),
                p.lines_per_sec(),
                p.mb_per_sec_out(),
                pct(&p.engine_latency),
                p.probe_latency
                    .as_ref()
                    .map(pct)
                    .unwrap_or_else(|| "-".into())
            );
        }
        s += &format!(
            "state: {} distinct words, ~{:.0} bytes each\n",
            self.keys, self.bytes_per_key
        );
        for (i, c) in self.per_core.iter().enumerate() {
            s += &format!("core {i}: {c}\n");
        }
        s
    }
}

/// Loads the corpus the options name, or generates the synthetic one.
fn load_corpus(opts: &BenchOptions) -> Result<(Vec<u8>, String)> {
    match &opts.framed_file {
        Some(p) => {
            let bytes =
                std::fs::read(p).with_context(|| format!("reading the corpus {}", p.display()))?;
            crate::corpus::count_frames(&bytes)
                .with_context(|| format!("checking the framing of {}", p.display()))?;
            Ok((bytes, p.display().to_string()))
        }
        None => Ok((
            crate::synth::zipf_corpus(opts.messages, 10, 50_000, 1),
            format!(
                "synthetic: {} messages of 10 words, Zipf over 50k words",
                opts.messages
            ),
        )),
    }
}

/// Runs the bench.
pub fn run_bench(opts: &BenchOptions) -> Result<BenchReport> {
    let (corpus, corpus_name) = load_corpus(opts)?;
    if opts.in_process {
        run_in_process(opts, corpus, corpus_name)
    } else {
        run_loopback(opts, corpus, corpus_name)
    }
}

fn state_figures(m: &MetricsSnapshot) -> (u64, f64) {
    (m.keys, m.state_bytes as f64 / m.keys.max(1) as f64)
}

fn run_in_process(opts: &BenchOptions, corpus: Vec<u8>, name: String) -> Result<BenchReport> {
    let src = MemorySource::from_framed(corpus)?.repeat(opts.repeat.max(1));
    let mut engine = Engine::new();
    if let Some(n) = opts.cores {
        engine = engine.cores(n);
    }
    let start = Instant::now();
    let running = engine.start(
        crate::app::word_count(),
        SourceConfig::Memory(src),
        SinkConfig::Discard,
    )?;
    let cpus = running.cpus().to_vec();
    let metrics = running.metrics().clone();
    let report = running.join()?;
    let elapsed = start.elapsed();
    let t = report.total();
    let (keys, bytes_per_key) = state_figures(&t);
    let per_core = report.metrics.iter().map(|m| m.to_string()).collect();
    Ok(BenchReport {
        mode: "in-process".into(),
        server_cpus: cpus,
        clients: "memory source and discarding sink, no sockets".into(),
        corpus: name,
        phases: vec![Phase {
            name: "in-process".into(),
            messages: t.frames_in,
            words: t.records_in,
            lines: t.outputs,
            bytes_out: t.bytes_out,
            elapsed,
            engine_latency: Percentiles::of(&metrics.latency_histogram()),
            probe_latency: None,
            target_rate: None,
        }],
        keys,
        bytes_per_key,
        per_core,
    })
}

/// The receiving end of the bench: counts lines and bytes, and times probe lines.
///
/// Probe words start with `0`, which the corpora never produce (their words are letters), so a
/// probe's output line is recognised by its first byte: `0p<seq> => 1`.
struct BenchSink {
    addr: SocketAddr,
    lines: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

/// The sequence number of a probe's output line, `0p<seq> => 1`.
fn probe_seq(line: &[u8]) -> usize {
    line.get(2..)
        .unwrap_or_default()
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0usize, |n, &b| {
            n.wrapping_mul(10).wrapping_add((b - b'0') as usize)
        })
}

impl BenchSink {
    fn start(probes: Arc<Probes>) -> Result<BenchSink> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the bench receiver")?;
        let addr = listener.local_addr()?;
        let lines = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, b, p) = (lines.clone(), bytes.clone(), probes.clone());
        std::thread::Builder::new()
            .name("bench-sink".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    let (l, b, p) = (l.clone(), b.clone(), p.clone());
                    std::thread::spawn(move || read_output(conn, &l, &b, &p));
                }
            })?;
        Ok(BenchSink {
            addr,
            lines,
            bytes,
            stop,
        })
    }

    fn wait_for(&self, lines: u64, timeout: Duration) -> bool {
        let t = Instant::now();
        while self.lines.load(Relaxed) < lines {
            if t.elapsed() > timeout || self.stop.load(Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        true
    }
}

fn read_output(mut conn: TcpStream, lines: &AtomicU64, bytes: &AtomicU64, probes: &Probes) {
    let mut buf = vec![0u8; 1 << 18];
    // A probe line cut by the end of a read, and whether the last read ended inside a line.
    let mut carry: Option<Vec<u8>> = None;
    let mut mid_line = false;
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let data = &buf[..n];
        let mut count = 0;
        let mut line_start = 0;
        for (i, _) in data.iter().enumerate().filter(|(_, &c)| c == b'\n') {
            count += 1;
            if let Some(mut c) = carry.take() {
                c.extend_from_slice(&data[..i]);
                probes.received(probe_seq(&c));
            } else if !(line_start == 0 && mid_line) && data.get(line_start) == Some(&b'0') {
                probes.received(probe_seq(&data[line_start..i]));
            }
            line_start = i + 1;
        }
        if line_start < n {
            match carry.as_mut() {
                Some(c) => c.extend_from_slice(&data[line_start..]),
                None if !(line_start == 0 && mid_line) && data[line_start] == b'0' => {
                    carry = Some(data[line_start..].to_vec())
                }
                None => {}
            }
            mid_line = true;
        } else {
            mid_line = false;
        }
        lines.fetch_add(count, Relaxed);
        bytes.fetch_add(n as u64, Relaxed);
    }
}

/// Sends one probe per millisecond on its own connection until `stop`.
fn run_probes(addr: SocketAddr, probes: Arc<Probes>, stop: Arc<AtomicBool>) -> Result<u64> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("probe connection to {addr}"))?;
    s.set_nodelay(true)?;
    let mut seq = 1usize;
    let mut next = Instant::now();
    let mut frame = Vec::with_capacity(32);
    while !stop.load(Relaxed) && seq < probes.capacity() {
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now);
        }
        next += Duration::from_millis(1);
        frame.clear();
        let payload = format!("0p{seq}");
        bettong_engine::codec::encode_frame(payload.as_bytes(), &mut frame);
        probes.sent(seq);
        s.write_all(&frame)
            .with_context(|| format!("sending probe {seq} to {addr}"))?;
        seq += 1;
    }
    Ok(seq as u64 - 1)
}

fn run_loopback(opts: &BenchOptions, corpus: Vec<u8>, name: String) -> Result<BenchReport> {
    let max_probes = (opts.duration.as_millis() as usize + 2000).max(4096);
    let probes = Arc::new(Probes::new(max_probes));
    let sink = BenchSink::start(probes.clone())?;
    let server = start_server(&ServeOptions {
        input: "bench@127.0.0.1:0".into(),
        output: sink.addr.to_string(),
        cores: opts.cores,
        max_frame: bettong_engine::codec::DEFAULT_MAX_FRAME,
        resilience_dir: None,
        checkpoint_interval: std::time::Duration::from_secs(1),
        limits: Default::default(),
    })?;
    let addr = server.local_addr().context("the server has no address")?;
    let metrics = server.metrics().clone();
    let all_cpus = bettong_engine::online_cpus();
    let clients = format!(
        "sender ({} connections) and receiver threads unpinned, sharing CPUs {all_cpus:?}",
        opts.connections
    );
    let mut phases = Vec::new();

    // Full speed.
    let before = metrics.total();
    let lines_before = sink.lines.load(Relaxed);
    let bytes_before = sink.bytes.load(Relaxed);
    metrics.reset_latency();
    let mut send = SendOptions::new(vec![addr.to_string()], SendSource::Bytes(corpus.clone()));
    send.repeat = opts.repeat.max(1) as u64;
    send.connections = opts.connections.max(1);
    send.progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let start = Instant::now();
    let sent = run_send(&send).context("sending the full-speed phase")?;
    let words = settle(&metrics, &sink, before, lines_before)?;
    let elapsed = start.elapsed();
    phases.push(Phase {
        name: "full speed".into(),
        messages: sent.messages,
        words,
        lines: sink.lines.load(Relaxed) - lines_before,
        bytes_out: sink.bytes.load(Relaxed) - bytes_before,
        elapsed,
        engine_latency: Percentiles::of(&metrics.latency_histogram()),
        probe_latency: None,
        target_rate: None,
    });

    // Fixed rate, with probes.
    let rate = opts
        .rate
        .unwrap_or_else(|| (phases[0].msgs_per_sec() / 2.0) as u64);
    if rate > 0 {
        let before = metrics.total();
        let lines_before = sink.lines.load(Relaxed);
        let bytes_before = sink.bytes.load(Relaxed);
        metrics.reset_latency();
        let mut paced = send.clone();
        paced.rate = rate;
        paced.repeat = 0;
        paced.messages = Some((rate as f64 * opts.duration.as_secs_f64()) as u64);
        paced.progress = false;
        let stop = Arc::new(AtomicBool::new(false));
        let probe_thread = {
            let (p, s) = (probes.clone(), stop.clone());
            std::thread::spawn(move || run_probes(addr, p, s))
        };
        let start = Instant::now();
        let sent = run_send(&paced).context("sending the fixed-rate phase")?;
        stop.store(true, Relaxed);
        let probes_sent = probe_thread
            .join()
            .map_err(|_| anyhow::anyhow!("the probe thread panicked"))??;
        let words = settle(&metrics, &sink, before, lines_before)?;
        let elapsed = start.elapsed();
        let probe = probes.percentiles();
        if probe.count + 10 < probes_sent {
            tracing::warn!(
                "only {} of {probes_sent} probe outputs were matched",
                probe.count
            );
        }
        phases.push(Phase {
            name: "fixed rate".into(),
            messages: sent.messages + probes_sent,
            words,
            lines: sink.lines.load(Relaxed) - lines_before,
            bytes_out: sink.bytes.load(Relaxed) - bytes_before,
            elapsed,
            engine_latency: Percentiles::of(&metrics.latency_histogram()),
            probe_latency: Some(probe),
            target_rate: Some(rate),
        });
    }
    server.stop();
    let report = server.join()?;
    let (keys, bytes_per_key) = state_figures(&report.total());
    let per_core = report.metrics.iter().map(|m| m.to_string()).collect();
    Ok(BenchReport {
        mode: "loopback".into(),
        server_cpus: all_cpus[..report.metrics.len()].to_vec(),
        clients,
        corpus: name,
        phases,
        keys,
        bytes_per_key,
        per_core,
    })
}

/// Waits until every word the server took in has its output line at the receiver; returns the
/// words taken in since `before`.
fn settle(
    metrics: &bettong_engine::Metrics,
    sink: &BenchSink,
    before: MetricsSnapshot,
    lines_before: u64,
) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let t = metrics.total();
        let words = t.records_in - before.records_in;
        // Quiescent when everything taken in so far has been applied (absolute totals, so a
        // snapshot taken while records were crossing cores cannot skew the comparison) and its
        // output lines have arrived.
        let quiescent = t.records_applied == t.records_in;
        if quiescent && sink.wait_for(lines_before + words, Duration::from_millis(50)) {
            return Ok(words);
        }
        if Instant::now() > deadline {
            bail!(
                "the server took in {words} words ({} of all {} taken in applied) and {} output \
                 lines arrived within 120 s",
                t.records_applied,
                t.records_in,
                sink.lines.load(Relaxed) - lines_before
            );
        }
    }
}
