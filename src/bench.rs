//! `bettong bench`: one command that measures the word-count server.
//!
//! Over loopback it starts a receiver (a lean sink that counts lines and times probes), the
//! server and the sender in this process, places them (by default the server on every CPU but
//! the first and the clients on the first: `placement.rs`), says where each runs, and runs two
//! phases:
//! - **full speed**: the corpus is sent as fast as the server takes it; messages, words and
//!   lines per second are all counted over one window, from the first byte sent to the last
//!   output line received, and only once every message's output has arrived; a window too
//!   short to time says so instead of giving a figure;
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

use crate::external_server::ExternalServer;
use crate::metrics_table::{per_core_table, snapshot_json, stage_rows, stage_table, StageRow};
use crate::placement::Placement;
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
    /// Server cores (default: every server CPU).
    pub cores: Option<usize>,
    /// The server's CPUs (`--cpus`; default: see [`Placement::choose`]).
    pub cpus: Option<Vec<usize>>,
    /// The client threads' CPUs (`--client-cpus`; default: see [`Placement::choose`]).
    pub client_cpus: Option<Vec<usize>>,
    /// Sender connections.
    pub connections: usize,
    /// Messages/s of the fixed-rate phase; None: half the full-speed rate; Some(0): skip it.
    pub rate: Option<u64>,
    /// Length of the fixed-rate phase.
    pub duration: Duration,
    /// Instead of one fixed-rate phase, one at each of [`crate::sweep::SWEEP_FRACTIONS`] of
    /// the full-speed rate (`--sweep`).
    pub sweep: bool,
    /// Measure another word-count server instead of the engine (`--server-cmd`): a command line
    /// with `{IN}` and `{OUT}`, as loadgen takes ([`crate::external_server`]).
    pub server_cmd: Option<String>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            in_process: false,
            framed_file: None,
            messages: 200_000,
            repeat: 3,
            cores: None,
            cpus: None,
            client_cpus: None,
            connections: 2,
            rate: None,
            duration: Duration::from_secs(3),
            sweep: false,
            server_cmd: None,
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
    /// The engine's per-core stage latencies over the phase.
    pub stages: Vec<StageRow>,
    /// CPU time the engine's threads used over the phase (from `/proc`, 10 ms resolution).
    pub engine_cpu: Option<Duration>,
}

/// The shortest phase whose rates are given: the end of a phase is seen by polling (every
/// 200 µs) and its start includes connecting, so below this the error passes a few percent.
pub const MIN_WINDOW: Duration = Duration::from_millis(250);

impl Phase {
    /// False when the phase was too short to time ([`MIN_WINDOW`]): its rates are then not
    /// figures, and the table and JSON say so.
    pub fn measurable(&self) -> bool {
        self.elapsed >= MIN_WINDOW
    }

    fn per_sec(&self, n: u64) -> f64 {
        n as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The engine's CPU time per message taken in, µs.
    pub fn cpu_us_per_msg(&self) -> Option<f64> {
        let cpu = self.engine_cpu?;
        (self.messages > 0).then(|| cpu.as_secs_f64() * 1e6 / self.messages as f64)
    }

    /// Why the phase has no rates, if it has none.
    pub fn too_short(&self) -> Option<String> {
        (!self.measurable()).then(|| {
            format!(
                "too short to time: {:.0} ms, under {} ms; send more (--repeat, --messages, \
                 --duration)",
                self.elapsed.as_secs_f64() * 1e3,
                MIN_WINDOW.as_millis()
            )
        })
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
        let rate = |r: f64| self.measurable().then_some(r);
        serde_json::json!({
            "name": self.name,
            "messages": self.messages, "words": self.words, "lines": self.lines,
            "bytes_out": self.bytes_out, "seconds": self.elapsed.as_secs_f64(),
            "too_short": self.too_short(),
            "msgs_per_sec": rate(self.msgs_per_sec()), "words_per_sec": rate(self.words_per_sec()),
            "lines_per_sec": rate(self.lines_per_sec()),
            "mb_per_sec_out": rate(self.mb_per_sec_out()),
            "target_rate": self.target_rate,
            "engine_cpu_seconds": self.engine_cpu.map(|d| d.as_secs_f64()),
            "engine_cpu_us_per_msg": self.cpu_us_per_msg(),
            "latency_us": self.engine_latency.json(),
            "probe_latency_us": self.probe_latency.map(|p| p.json()),
            "stages": self.stages.iter().map(StageRow::json).collect::<Vec<_>>(),
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
    /// The CPUs the client threads may run on (empty in-process).
    pub client_cpus: Vec<usize>,
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
    /// Each server core's final counters, by core index.
    pub per_core: Vec<MetricsSnapshot>,
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
        let rate = |r: f64| first.measurable().then_some(r);
        serde_json::json!({
            "mode": self.mode,
            "server_cpus": self.server_cpus,
            "client_cpus": self.client_cpus,
            "placement": placement_kind(&self.server_cpus, &self.client_cpus),
            "clients": self.clients,
            "corpus": self.corpus,
            "words_per_sec": rate(first.words_per_sec()),
            "msgs_per_sec": rate(first.msgs_per_sec()),
            "lines_per_sec": rate(first.lines_per_sec()),
            "mb_per_sec_out": rate(first.mb_per_sec_out()),
            "latency_us": lat.probe_latency.unwrap_or(lat.engine_latency).json(),
            "engine_latency_us": lat.engine_latency.json(),
            "keys": self.keys,
            "bytes_per_key": self.bytes_per_key,
            "per_core": self.per_core.iter().map(snapshot_json).collect::<Vec<_>>(),
            "phases": self.phases.iter().map(Phase::json).collect::<Vec<_>>(),
        })
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        s += &format!(
            "bettong bench ({}): {}\ncorpus: {}\n",
            self.mode, self.clients, self.corpus
        );
        s += &format!(
            "{:<22} {:>10} {:>11} {:>11} {:>9} {:>7} | {:>26} | {:>26}\n",
            "phase",
            "msgs/s",
            "words/s",
            "lines/s",
            "MB/s out",
            "CPU/msg",
            "engine µs p50/p90/p99/p99.9/max",
            "probe µs p50/p90/p99/p99.9/max"
        );
        let pct = |p: &Percentiles| match p.count {
            0 => "-".into(),
            _ => format!("{}/{}/{}/{}/{}", p.p50, p.p90, p.p99, p.p999, p.max),
        };
        for p in &self.phases {
            let name = match p.target_rate {
                Some(r) => format!("{} ({r}/s)", p.name),
                None => p.name.clone(),
            };
            let rates = if p.measurable() {
                format!(
                    "{:>10.0} {:>11.0} {:>11.0} {:>9.1}",
                    p.msgs_per_sec(),
                    p.words_per_sec(),
                    p.lines_per_sec(),
                    p.mb_per_sec_out()
                )
            } else {
                let short = format!(
                    "too short to time ({:.0} ms)",
                    p.elapsed.as_secs_f64() * 1e3
                );
                format!("{short:<44}")
            };
            let cpu = p
                .cpu_us_per_msg()
                .map_or_else(|| "-".into(), |c| format!("{c:.2}µs"));
            s += &format!(
                "{:<22} {rates} {cpu:>7} | {:>26} | {:>26}\n",
                name,
                pct(&p.engine_latency),
                p.probe_latency
                    .as_ref()
                    .map(pct)
                    .unwrap_or_else(|| "-".into())
            );
        }
        for p in self.phases.iter().filter(|p| !p.stages.is_empty()) {
            s += &format!("{}: where the engine's time went, per core\n", p.name);
            s += &stage_table(&p.stages);
        }
        // An external server (`--server-cmd`) has no engine counters to show.
        if !self.per_core.is_empty() {
            s += &format!(
                "state: {} distinct words, ~{:.0} bytes each\n",
                self.keys, self.bytes_per_key
            );
            s += &per_core_table(&self.per_core);
        }
        s
    }
}

/// "separate" when no client thread may run on a server CPU, "shared" otherwise, "in-process"
/// without clients.
fn placement_kind(server: &[usize], clients: &[usize]) -> &'static str {
    match clients {
        [] => "in-process",
        c if c.iter().any(|c| server.contains(c)) => "shared",
        _ => "separate",
    }
}

/// Where a loopback bench puts the server and its clients, from `--cpus`, `--client-cpus` and
/// `--cores` (see [`Placement::choose`]), among the CPUs this process may use (a container's
/// cpuset, `taskset`), so that the clients can be pinned where the default puts them.
pub fn placement(opts: &BenchOptions) -> Result<Placement> {
    Placement::choose(
        &bettong_engine::online_cpus(),
        opts.cpus.as_deref(),
        opts.client_cpus.as_deref(),
        opts.cores,
    )
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
    if opts.in_process && opts.server_cmd.is_some() {
        bail!("--server-cmd measures a server over loopback; drop --in-process");
    }
    if opts.in_process {
        run_in_process(opts, corpus, corpus_name)
    } else {
        run_loopback(opts, corpus, corpus_name)
    }
}

fn state_figures(m: &MetricsSnapshot) -> (u64, f64) {
    (m.keys, m.state_bytes as f64 / m.keys.max(1) as f64)
}

/// An in-process engine on the cores and CPUs the options ask for.
pub fn engine_on(opts: &BenchOptions) -> Engine {
    let mut engine = Engine::new();
    if let Some(n) = opts.cores {
        engine = engine.cores(n);
    }
    if let Some(cpus) = &opts.cpus {
        engine = engine.cpus(cpus.clone());
    }
    engine
}

fn run_in_process(opts: &BenchOptions, corpus: Vec<u8>, name: String) -> Result<BenchReport> {
    let src = MemorySource::from_framed(corpus)?.repeat(opts.repeat.max(1));
    let engine = engine_on(opts);
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
    let per_core = report.metrics.clone();
    Ok(BenchReport {
        mode: "in-process".into(),
        clients: format!(
            "server on CPU {}; memory source and discarding sink, no sockets",
            bettong_engine::placement::CpuList(&cpus)
        ),
        server_cpus: cpus,
        client_cpus: Vec::new(),
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
            stages: stage_rows(&metrics),
            engine_cpu: None,
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
    let place = placement(opts)?;
    // The sink, sender and probe threads are started by this thread, so they inherit its CPUs
    // (so would an external server: its command pins it, `taskset -c`).
    let _pinned = place.pin_clients()?;
    let mut bench = Loopback::start(opts, &place)?;
    let clients = place.describe(&format!(
        "sender ({} connections), receiver and probe threads",
        opts.connections
    ));
    let mut phases = vec![bench.full_speed(&corpus, opts)?];
    let rate = match opts.rate {
        Some(r) => r,
        None if phases[0].measurable() => (phases[0].msgs_per_sec() / 2.0) as u64,
        None => {
            tracing::warn!(
                "no fixed-rate phase: the full-speed phase was too short to give its rate; \
                 give --rate or a longer corpus"
            );
            0
        }
    };
    if opts.sweep && phases[0].measurable() {
        let max = phases[0].msgs_per_sec();
        for f in crate::sweep::SWEEP_FRACTIONS {
            let rate = ((max * f) as u64).max(1);
            phases.push(bench.fixed_rate(&corpus, opts, rate)?);
        }
    } else if rate > 0 {
        phases.push(bench.fixed_rate(&corpus, opts, rate)?);
    }
    let external = bench.server.is_external();
    let (keys, bytes_per_key, per_core) = match bench.finish()? {
        Some(report) => {
            let (keys, per_key) = state_figures(&report.total());
            (keys, per_key, report.metrics)
        }
        None => (0, 0.0, Vec::new()),
    };
    Ok(BenchReport {
        mode: if external { "external" } else { "loopback" }.into(),
        server_cpus: place.server.clone(),
        client_cpus: place.clients.clone(),
        clients,
        corpus: name,
        phases,
        keys,
        bytes_per_key,
        per_core,
    })
}

/// The server a loopback bench measures: the engine, in this process, or another process.
enum Server {
    Engine(bettong_engine::Running),
    External(ExternalServer),
}

impl Server {
    fn is_external(&self) -> bool {
        matches!(self, Server::External(_))
    }
}

/// A word-count server on loopback with the bench's receiver and probes, between phases.
struct Loopback {
    server: Server,
    addr: SocketAddr,
    sink: BenchSink,
    probes: Arc<Probes>,
    connections: usize,
}

impl Loopback {
    fn start(opts: &BenchOptions, place: &Placement) -> Result<Loopback> {
        let max_probes = (opts.duration.as_millis() as usize + 2000).max(4096);
        let probes = Arc::new(Probes::new(max_probes));
        let sink = BenchSink::start(probes.clone())?;
        if let Some(cmd) = &opts.server_cmd {
            let server = ExternalServer::start(cmd, sink.addr)?;
            return Ok(Loopback {
                addr: server.addr,
                server: Server::External(server),
                sink,
                probes,
                connections: opts.connections.max(1),
            });
        }
        let server = start_server(&ServeOptions {
            input: "bench@127.0.0.1:0".into(),
            output: sink.addr.to_string(),
            cores: None,
            cpus: Some(place.server.clone()),
            max_frame: bettong_engine::codec::DEFAULT_MAX_FRAME,
            resilience_dir: None,
            checkpoint_interval: std::time::Duration::from_secs(1),
            limits: Default::default(),
        })?;
        let addr = server.local_addr().context("the server has no address")?;
        Ok(Loopback {
            server: Server::Engine(server),
            addr,
            sink,
            probes,
            connections: opts.connections.max(1),
        })
    }

    fn sender(&self, corpus: &[u8]) -> SendOptions {
        let mut send = SendOptions::new(
            vec![self.addr.to_string()],
            SendSource::Bytes(corpus.to_vec()),
        );
        send.connections = self.connections;
        send
    }

    /// Sends the corpus `repeat` times as fast as the server takes it.
    fn full_speed(&mut self, corpus: &[u8], opts: &BenchOptions) -> Result<Phase> {
        let mut send = self.sender(corpus);
        send.repeat = opts.repeat.max(1) as u64;
        send.progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let mut phase = self.measure("full speed", || {
            run_send(&send)
                .context("sending the full-speed phase")
                .map(|r| (r.messages, 0))
        })?;
        phase.target_rate = None;
        Ok(phase)
    }

    /// Sends `rate` messages/s for the phase's duration, with a probe every millisecond.
    fn fixed_rate(&mut self, corpus: &[u8], opts: &BenchOptions, rate: u64) -> Result<Phase> {
        let mut paced = self.sender(corpus);
        paced.rate = rate;
        paced.repeat = 0;
        paced.messages = Some((rate as f64 * opts.duration.as_secs_f64()).max(1.0) as u64);
        self.probes.reset();
        let (probes, addr) = (self.probes.clone(), self.addr);
        let mut phase = self.measure("fixed rate", || {
            let stop = Arc::new(AtomicBool::new(false));
            let probe_thread = {
                let (p, s) = (probes, stop.clone());
                std::thread::spawn(move || run_probes(addr, p, s))
            };
            let sent = run_send(&paced).context("sending the fixed-rate phase");
            stop.store(true, Relaxed);
            let probes_sent = probe_thread
                .join()
                .map_err(|_| anyhow::anyhow!("the probe thread panicked"))??;
            sent.map(|r| (r.messages, probes_sent))
        })?;
        let probe = self.probes.percentiles();
        phase.probe_latency = Some(probe);
        phase.target_rate = Some(rate);
        Ok(phase)
    }

    /// Runs `send` (which returns the messages and the probes it sent) and waits until every
    /// message's output has arrived; the phase's figures all come from that one window.
    fn measure(&mut self, name: &str, send: impl FnOnce() -> Result<(u64, u64)>) -> Result<Phase> {
        let metrics = match &mut self.server {
            Server::External(server) => {
                return measure_external(server, &self.sink, &self.probes, name, send)
            }
            Server::Engine(running) => running.metrics().clone(),
        };
        let before = metrics.total();
        let lines_before = self.sink.lines.load(Relaxed);
        let bytes_before = self.sink.bytes.load(Relaxed);
        metrics.reset_latency();
        let cpu_before = crate::thread_cpu::engine_cpu();
        let start = Instant::now();
        let (sent, probes_sent) = send()?;
        let words = settle(
            &metrics,
            &self.sink,
            before,
            lines_before,
            sent + probes_sent,
        )?;
        let elapsed = start.elapsed();
        let engine_cpu = crate::thread_cpu::engine_cpu()
            .zip(cpu_before)
            .map(|(a, b)| a.saturating_sub(b));
        let after = metrics.total();
        warn_unmatched_probes(&self.probes, probes_sent);
        Ok(Phase {
            name: name.into(),
            // Frames the engine took in: every one of them has its output at the receiver.
            messages: after.frames_in - before.frames_in,
            words,
            lines: self.sink.lines.load(Relaxed) - lines_before,
            bytes_out: self.sink.bytes.load(Relaxed) - bytes_before,
            elapsed,
            engine_latency: Percentiles::of(&metrics.latency_histogram()),
            probe_latency: None,
            target_rate: None,
            stages: stage_rows(&metrics),
            engine_cpu,
        })
    }

    /// Stops the server; the engine's report (None for an external server).
    fn finish(self) -> Result<Option<bettong_engine::Report>> {
        match self.server {
            Server::Engine(running) => {
                running.stop();
                Ok(Some(running.join()?))
            }
            Server::External(server) => {
                drop(server);
                Ok(None)
            }
        }
    }
}

/// Warns when more than a few of the `sent` probes had no output line matched.
fn warn_unmatched_probes(probes: &Probes, sent: u64) {
    let matched = probes.percentiles().count;
    if sent > 0 && matched + 10 < sent {
        tracing::warn!("only {matched} of {sent} probe outputs were matched");
    }
}

/// [`Loopback::measure`] against an external server: the phase ends with the last output line
/// that arrived (the output then stays still), words are output lines (one per word), and the
/// CPU is the server process's.
fn measure_external(
    server: &mut ExternalServer,
    sink: &BenchSink,
    probes: &Probes,
    name: &str,
    send: impl FnOnce() -> Result<(u64, u64)>,
) -> Result<Phase> {
    let lines_before = sink.lines.load(Relaxed);
    let bytes_before = sink.bytes.load(Relaxed);
    let cpu_before = server.cpu();
    let start = Instant::now();
    let (sent, probes_sent) = send()?;
    let (lines, last) = server.settle(|| sink.lines.load(Relaxed), lines_before)?;
    let cpu = server
        .cpu()
        .zip(cpu_before)
        .map(|(a, b)| a.saturating_sub(b));
    warn_unmatched_probes(probes, probes_sent);
    Ok(Phase {
        name: name.into(),
        messages: sent + probes_sent,
        words: lines - lines_before,
        lines: lines - lines_before,
        bytes_out: sink.bytes.load(Relaxed) - bytes_before,
        elapsed: last.duration_since(start),
        engine_latency: Percentiles::default(),
        probe_latency: None,
        target_rate: None,
        stages: Vec::new(),
        engine_cpu: cpu,
    })
}

/// Waits until the server has taken in the `sent` messages sent since `before` (a sender's
/// last write returns while its bytes can still be in the kernel's buffers) and every word of
/// them has its output line at the receiver; returns the words taken in since `before`.
fn settle(
    metrics: &bettong_engine::Metrics,
    sink: &BenchSink,
    before: MetricsSnapshot,
    lines_before: u64,
    sent: u64,
) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let t = metrics.total();
        let words = t.records_in - before.records_in;
        // Quiescent when every message sent was taken in, everything taken in so far has been
        // applied (absolute totals, so a snapshot taken while records were crossing cores
        // cannot skew the comparison) and its output lines have arrived.
        let quiescent = t.frames_in - before.frames_in >= sent && t.records_applied == t.records_in;
        // A snapshot that shows a read's frames shows its records too (the engine publishes
        // `frames_in` last: `CoreMetrics::publish_read`), so `words` is complete here.
        if quiescent && sink.wait_for(lines_before + words, Duration::from_millis(50)) {
            return Ok(words);
        }
        if Instant::now() > deadline {
            bail!(
                "the server took in {} of {sent} messages sent, {words} words ({} of all {} \
                 taken in applied) and {} output lines arrived within 120 s",
                t.frames_in - before.frames_in,
                t.records_applied,
                t.records_in,
                sink.lines.load(Relaxed) - lines_before
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(ms: u64) -> Phase {
        Phase {
            name: "full speed".into(),
            messages: 1_000,
            words: 10_000,
            lines: 10_000,
            elapsed: Duration::from_millis(ms),
            ..Phase::default()
        }
    }

    #[test]
    fn a_phase_too_short_to_time_gives_no_rates() {
        let short = BenchReport {
            phases: vec![phase(40)],
            ..BenchReport::default()
        };
        let table = short.table();
        assert!(table.contains("too short to time (40 ms)"), "{table}");
        let j = short.json();
        assert!(
            j["msgs_per_sec"].is_null() && j["words_per_sec"].is_null(),
            "{j}"
        );
        assert!(j["phases"][0]["too_short"]
            .as_str()
            .unwrap()
            .contains("40 ms"));

        let long = BenchReport {
            phases: vec![phase(500)],
            ..BenchReport::default()
        };
        assert_eq!(long.json()["msgs_per_sec"], 2_000.0);
        assert_eq!(long.json()["words_per_sec"], 20_000.0);
        assert!(long.json()["phases"][0]["too_short"].is_null());
        assert!(!long.table().contains("too short"));
    }
}
