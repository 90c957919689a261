//! `bettong bench --app market-spread`: throughput and latency of the Market Spread server.
//!
//! The input is made by [`gen::write_market`](super::gen::write_market) (350 symbols by
//! default), which also says how many orders get a result when every quote is applied first.
//! Over loopback, a result sink (counting framed 55-byte results, timing probe results), the
//! server and the senders run in this process, and two phases are measured:
//! - **full speed**: every quote is sent on one Nbbo connection and applied, then the orders are
//!   sent `repeat` times over `connections` Orders connections as fast as the server takes them.
//!   Orders change no state, so every pass gives the reference's count of results; throughput is
//!   all messages sent (quotes and orders) over the time from the first byte sent to the last
//!   expected result received;
//! - **fixed rate** (below saturation, so that coordinated omission cannot hide latency): orders
//!   are paced, and a probe connection sends one order per millisecond for a symbol that is never
//!   quoted (so each probe gets a result), numbered in its account; the sink matches each probe's
//!   result, which gives end-to-end latency from send to result received. The engine's own
//!   histogram (arrival at the engine → result written to the sink) is reported beside it.
//!
//! `--in-process` runs the app embedded, with two memory sources (the orders repeated, the quotes
//! once) and a discarding sink. Memory sources run side by side, so quotes do not all precede
//! orders there and the count of results varies; the throughput is the engine's frames in over
//! the run's wall time.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bettong_engine::{MemorySource, Metrics, SinkConfig, SourceConfig};
use serde_json::{json, Value};

use super::app::market_spread;
use super::gen::{write_market, GenOptions};
use super::result::RESULT_LEN;
use super::wire::{Order, Side};
use crate::bench::{BenchOptions, Percentiles, Phase};
use crate::probes::Probes;
use crate::send::{run_send, SendOptions, SendSource};
use crate::serve::ServeOptions;

/// The symbol of probe orders: a digit, which generated symbols (letters and spaces) never hold,
/// so it is never quoted and rejects every probe.
pub const PROBE_SYMBOL: [u8; 4] = *b"PRB0";

/// How long a phase may take to settle before the bench gives up.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

/// What the Market Spread bench measures, and how.
#[derive(Debug, Clone)]
pub struct MarketBenchOptions {
    /// How to run, as for word count: `in_process`, `repeat` (passes over the orders at full
    /// speed), `cores`, `connections` (Orders connections), `rate` (orders/s of the fixed-rate
    /// phase: None for half the full-speed orders rate, 0 to skip it) and `duration`. The corpus
    /// fields (`framed_file`, `messages`) are not used.
    pub run: BenchOptions,
    /// The generated market: symbols, orders, quotes and seed.
    pub gen: GenOptions,
}

impl Default for MarketBenchOptions {
    fn default() -> Self {
        MarketBenchOptions {
            run: BenchOptions::default(),
            gen: GenOptions {
                orders: 1_000_000,
                quotes: 200_000,
                ..GenOptions::default()
            },
        }
    }
}

/// The figures of one phase: word count's [`Phase`], whose `messages` are the quotes, orders and
/// probes sent, `words` the records the engine took in (one per valid message), `lines` the
/// order results received (loopback) or made (in-process), `bytes_out` their bytes and
/// `target_rate` the orders/s asked for; and the Market Spread counts.
#[derive(Debug, Clone, Default)]
pub struct MarketPhase {
    /// The figures common to every bench.
    pub phase: Phase,
    /// Quotes sent.
    pub quotes: u64,
    /// Orders sent, probes excluded.
    pub orders: u64,
    /// Probe orders sent.
    pub probes: u64,
    /// Frames the engine decoded during the phase.
    pub frames_in: u64,
    /// Results the reference expects, where it can tell (the full-speed phase).
    pub expected_results: Option<u64>,
}

impl MarketPhase {
    /// A phase named `name` that took `elapsed`, in which the engine took in `records` and
    /// `results` results arrived; the engine latency is read from `metrics`.
    fn new(name: &str, elapsed: Duration, metrics: &Metrics, records: u64, results: u64) -> Self {
        MarketPhase {
            phase: Phase {
                name: name.into(),
                words: records,
                lines: results,
                bytes_out: results * (4 + RESULT_LEN) as u64,
                elapsed,
                engine_latency: Percentiles::of(&metrics.latency_histogram()),
                ..Phase::default()
            },
            ..MarketPhase::default()
        }
    }

    /// Sets what was sent: quotes, orders and probe orders.
    fn sent(mut self, quotes: u64, orders: u64, probes: u64) -> Self {
        (self.quotes, self.orders, self.probes) = (quotes, orders, probes);
        self.phase.messages = quotes + orders + probes;
        self
    }

    /// Messages sent: quotes, orders and probes.
    pub fn messages(&self) -> u64 {
        self.phase.messages
    }

    /// Order results.
    pub fn results(&self) -> u64 {
        self.phase.lines
    }

    /// Messages (quotes and orders) per second.
    pub fn msgs_per_sec(&self) -> f64 {
        self.phase.msgs_per_sec()
    }

    /// Orders (probes included) per second.
    pub fn orders_per_sec(&self) -> f64 {
        (self.orders + self.probes) as f64 / self.phase.elapsed.as_secs_f64().max(1e-9)
    }

    /// Order results per second.
    pub fn results_per_sec(&self) -> f64 {
        self.phase.lines_per_sec()
    }

    fn json(&self) -> Value {
        let p = &self.phase;
        json!({
            "name": p.name,
            "quotes": self.quotes, "orders": self.orders, "probes": self.probes,
            "messages": self.messages(), "frames_in": self.frames_in,
            "records_in": p.words, "results": self.results(),
            "expected_results": self.expected_results, "bytes_out": p.bytes_out,
            "seconds": p.elapsed.as_secs_f64(),
            "msgs_per_sec": self.msgs_per_sec(), "orders_per_sec": self.orders_per_sec(),
            "results_per_sec": self.results_per_sec(), "target_rate": p.target_rate,
            "latency_us": latency_json(p.probe_latency.as_ref(), &p.engine_latency),
        })
    }
}

fn latency_json(probe: Option<&Percentiles>, engine: &Percentiles) -> Value {
    json!({ "probe": probe.map(Percentiles::json), "engine": engine.json() })
}

/// Everything a Market Spread bench run found.
#[derive(Debug, Clone, Default)]
pub struct MarketBenchReport {
    /// "loopback" or "in-process".
    pub mode: String,
    /// The CPUs the server's cores are pinned to.
    pub server_cpus: Vec<usize>,
    /// Where the senders and the sink run.
    pub clients: String,
    /// The input used.
    pub data: String,
    /// The phases, in order.
    pub phases: Vec<MarketPhase>,
    /// Symbols held at the end.
    pub keys: u64,
    /// Each server core's final counters, by core index.
    pub per_core: Vec<bettong_engine::MetricsSnapshot>,
}

impl MarketBenchReport {
    /// The first phase (full speed, or in-process).
    pub fn throughput_phase(&self) -> Option<&MarketPhase> {
        self.phases.first()
    }

    /// The fixed-rate phase when there is one, else the first.
    pub fn latency_phase(&self) -> Option<&MarketPhase> {
        self.phases
            .iter()
            .find(|p| p.phase.target_rate.is_some())
            .or(self.phases.first())
    }

    /// One JSON object; the top-level throughput is the first phase's, the latency the
    /// fixed-rate phase's when there is one (else the first phase's).
    pub fn json(&self) -> Value {
        let first = self.throughput_phase().cloned().unwrap_or_default();
        let lat = self.latency_phase().cloned().unwrap_or_default();
        json!({
            "app": "market-spread",
            "mode": self.mode,
            "server_cpus": self.server_cpus,
            "clients": self.clients,
            "data": self.data,
            "msgs_per_sec": first.msgs_per_sec(),
            "orders_per_sec": first.orders_per_sec(),
            "results_per_sec": first.results_per_sec(),
            "latency_us": latency_json(lat.phase.probe_latency.as_ref(), &lat.phase.engine_latency),
            "keys": self.keys,
            "per_core": self.per_core.iter().map(crate::metrics_table::snapshot_json).collect::<Vec<_>>(),
            "phases": self.phases.iter().map(MarketPhase::json).collect::<Vec<_>>(),
        })
    }

    /// The human table.
    pub fn table(&self) -> String {
        let pct = |p: &Percentiles| format!("{}/{}/{}/{}/{}", p.p50, p.p90, p.p99, p.p999, p.max);
        let mut s = format!(
            "bettong bench market-spread ({}): {}\ndata: {}\n",
            self.mode, self.clients, self.data
        );
        s += &format!(
            "{:<22} {:>10} {:>10} {:>10} {:>10} | {:>26} | {:>26}\n",
            "phase",
            "msgs/s",
            "orders/s",
            "results/s",
            "results",
            "engine µs p50/p90/p99/p99.9/max",
            "probe µs p50/p90/p99/p99.9/max"
        );
        for m in &self.phases {
            let p = &m.phase;
            let name = match p.target_rate {
                Some(r) => format!("{} ({r}/s)", p.name),
                None => p.name.clone(),
            };
            s += &format!(
                "{:<22} {:>10.0} {:>10.0} {:>10.0} {:>10} | {:>26} | {:>26}\n",
                name,
                m.msgs_per_sec(),
                m.orders_per_sec(),
                m.results_per_sec(),
                m.results(),
                pct(&p.engine_latency),
                p.probe_latency.as_ref().map_or_else(|| "-".into(), pct)
            );
        }
        s += &format!("state: {} symbols\n", self.keys);
        s += &crate::metrics_table::per_core_table(&self.per_core);
        s
    }
}

/// The generated input: framed orders and quotes, and the results one pass of the orders gets.
struct Market {
    orders: Vec<u8>,
    quotes: Vec<u8>,
    results_per_pass: u64,
    describe: String,
}

fn generate(opts: &MarketBenchOptions) -> Result<Market> {
    let t = Instant::now();
    let (mut orders, mut quotes) = (Vec::new(), Vec::new());
    let summary = write_market(&opts.gen, &mut orders, &mut quotes)?;
    let describe = format!(
        "{} quotes then {} orders × {} over {} symbols (seed {}, generated in {:.2?}); {} orders \
         a pass get a result",
        summary.quotes,
        summary.orders,
        opts.run.repeat.max(1),
        summary.symbols,
        opts.gen.seed,
        t.elapsed(),
        summary.results
    );
    Ok(Market {
        orders,
        quotes,
        results_per_pass: summary.results,
        describe,
    })
}

/// Runs the Market Spread bench.
pub fn run_market_bench(opts: &MarketBenchOptions) -> Result<MarketBenchReport> {
    let market = generate(opts)?;
    if opts.run.in_process {
        run_in_process(opts, market)
    } else {
        run_loopback(opts, market)
    }
}

fn per_core_and_keys(
    report: &bettong_engine::Report,
) -> (Vec<bettong_engine::MetricsSnapshot>, u64) {
    (report.metrics.clone(), report.total().keys)
}

fn run_in_process(opts: &MarketBenchOptions, market: Market) -> Result<MarketBenchReport> {
    let repeat = opts.run.repeat.max(1);
    let orders = MemorySource::from_framed(market.orders)?.repeat(repeat);
    let quotes = MemorySource::from_framed(market.quotes)?;
    let engine = crate::bench::engine_on(&opts.run);
    let start = Instant::now();
    let running = engine.start(
        market_spread(),
        vec![SourceConfig::Memory(orders), SourceConfig::Memory(quotes)],
        SinkConfig::Discard,
    )?;
    let cpus = running.cpus().to_vec();
    let metrics = running.metrics().clone();
    let report = running.join()?;
    let elapsed = start.elapsed();
    let t = report.total();
    let (per_core, keys) = per_core_and_keys(&report);
    // Both sources are read whole, so the quotes are the frames that are not orders.
    let orders_sent = opts.gen.orders * repeat as u64;
    Ok(MarketBenchReport {
        mode: "in-process".into(),
        clients: format!(
            "server on CPU {}; memory sources (orders, quotes side by side) and a discarding \
             sink, no sockets",
            bettong_engine::placement::CpuList(&cpus)
        ),
        server_cpus: cpus,
        data: market.describe,
        phases: vec![MarketPhase {
            frames_in: t.frames_in,
            ..MarketPhase::new("in-process", elapsed, &metrics, t.records_in, t.outputs).sent(
                t.frames_in.saturating_sub(orders_sent),
                orders_sent.min(t.frames_in),
                0,
            )
        }],
        keys,
        per_core,
    })
}

/// The receiving end: counts framed order results over all connections, times probe results.
struct ResultSink {
    addr: SocketAddr,
    results: Arc<AtomicU64>,
    /// Frames that were not 55-byte results (their connection is then dropped).
    malformed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl ResultSink {
    fn start(probes: Arc<Probes>) -> Result<ResultSink> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the result sink")?;
        let addr = listener.local_addr()?;
        let results = Arc::new(AtomicU64::new(0));
        let malformed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, m, s) = (results.clone(), malformed.clone(), stop.clone());
        std::thread::Builder::new()
            .name("bench-result-sink".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if s.load(Relaxed) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let (r, m, p) = (r.clone(), m.clone(), probes.clone());
                    std::thread::spawn(move || read_results(conn, &r, &m, &p));
                }
            })?;
        Ok(ResultSink {
            addr,
            results,
            malformed,
            stop,
        })
    }

    fn results(&self) -> u64 {
        self.results.load(Relaxed)
    }
}

impl Drop for ResultSink {
    fn drop(&mut self) {
        // Wake the accept loop so that it sees the stop and ends.
        self.stop.store(true, Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

/// Reads one sink connection to its end: whole result frames are counted, however the reads cut
/// them; a probe's result (its symbol is [`PROBE_SYMBOL`], its account the probe's number) is
/// timed.
fn read_results(mut conn: TcpStream, results: &AtomicU64, malformed: &AtomicU64, probes: &Probes) {
    const FRAME: usize = 4 + RESULT_LEN;
    let mut buf = vec![0u8; 1 << 18];
    let mut have = 0;
    loop {
        let n = match conn.read(&mut buf[have..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        have += n;
        let whole = have / FRAME * FRAME;
        for frame in buf[..whole].chunks_exact(FRAME) {
            if frame[..4] != (RESULT_LEN as u32).to_be_bytes() {
                malformed.fetch_add(1, Relaxed);
                return;
            }
            let payload = &frame[4..];
            if payload[11..15] == PROBE_SYMBOL {
                probes.received(
                    u32::from_be_bytes(payload[1..5].try_into().expect("4 bytes")) as usize,
                );
            }
        }
        results.fetch_add((whole / FRAME) as u64, Relaxed);
        buf.copy_within(whole..have, 0);
        have -= whole;
    }
}

/// Probe order `seq`: a buy of [`PROBE_SYMBOL`] whose account is `seq` and whose order id is
/// `seq` in base 36.
pub fn probe_order(seq: u32) -> Order {
    let mut order_id = [b'0'; 6];
    let mut n = seq;
    for b in order_id.iter_mut().rev() {
        *b = char::from_digit(n % 36, 36).map_or(b'0', |c| c.to_ascii_uppercase() as u8);
        n /= 36;
    }
    Order {
        side: Side::Buy,
        account: seq,
        order_id,
        symbol: PROBE_SYMBOL,
        qty: 100.0,
        price: 1.0,
        transact_time: *b"20150818-09:30:00.000",
    }
}

/// Sends one probe order per millisecond on its own connection until `stop`; returns how many.
fn send_probes(addr: SocketAddr, probes: &Probes, stop: &AtomicBool) -> Result<u64> {
    use std::io::Write;
    let mut conn =
        TcpStream::connect(addr).with_context(|| format!("probe connection to {addr}"))?;
    conn.set_nodelay(true)?;
    let mut frame = Vec::with_capacity(64);
    let mut next = Instant::now();
    let mut seq = 1u32;
    while !stop.load(Relaxed) && (seq as usize) < probes.capacity() {
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        next += Duration::from_millis(1);
        frame.clear();
        probe_order(seq).encode_frame(&mut frame);
        probes.sent(seq as usize);
        conn.write_all(&frame)
            .with_context(|| format!("sending probe {seq} to {addr}"))?;
        seq += 1;
    }
    Ok(u64::from(seq - 1))
}

/// Polls `done` every 200 µs until it holds; fails after [`SETTLE_TIMEOUT`] with `what()`.
fn wait_until(mut done: impl FnMut() -> bool, what: impl Fn() -> String) -> Result<()> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while !done() {
        if Instant::now() > deadline {
            bail!("{} within {SETTLE_TIMEOUT:?}", what());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

/// Waits until the engine has decoded `frames` frames since `frames_before`, applied every record
/// it took in, and the sink has every result the engine made.
fn settle(metrics: &Metrics, sink: &ResultSink, frames_before: u64, frames: u64) -> Result<()> {
    wait_until(
        || {
            let t = metrics.total();
            t.frames_in >= frames_before + frames
                && t.records_applied == t.records_in
                && sink.results() >= t.outputs
        },
        || {
            let t = metrics.total();
            format!(
                "the server decoded {} of {frames} frames, applied {} of {} records, and {} of \
                 its {} results arrived",
                t.frames_in - frames_before,
                t.records_applied,
                t.records_in,
                sink.results(),
                t.outputs
            )
        },
    )
}

fn run_loopback(opts: &MarketBenchOptions, market: Market) -> Result<MarketBenchReport> {
    let probes = Arc::new(Probes::new(
        (opts.run.duration.as_millis() as usize + 2000).max(4096),
    ));
    let place = crate::bench::placement(&opts.run)?;
    // The sink, sender and probe threads are started by this thread, so they inherit its CPUs.
    let _pinned = place.pin_clients()?;
    let sink = ResultSink::start(probes.clone())?;
    let server = super::serve::start(&ServeOptions {
        input: "Orders@127.0.0.1:0,Nbbo@127.0.0.1:0".into(),
        output: sink.addr.to_string(),
        cores: None,
        cpus: Some(place.server.clone()),
        max_frame: bettong_engine::codec::DEFAULT_MAX_FRAME,
        resilience_dir: None,
        checkpoint_interval: Duration::from_secs(1),
        limits: Default::default(),
    })?;
    let addrs = server.local_addrs();
    let (Some(orders_addr), Some(nbbo_addr)) = (addrs[0], addrs[1]) else {
        bail!("the Market Spread server has no TCP addresses");
    };
    let metrics = server.metrics().clone();
    let server_cpus = server.cpus().to_vec();
    let clients = place.describe(&format!(
        "order sender ({} connections), quote sender, probe sender and result sink threads",
        opts.run.connections.max(1)
    ));
    let repeat = opts.run.repeat.max(1) as u64;
    let mut phases = Vec::new();

    // Full speed: every quote first, applied; then the orders, `repeat` times.
    metrics.reset_latency();
    let start = Instant::now();
    let quotes = run_send(&SendOptions::new(
        vec![nbbo_addr.to_string()],
        SendSource::Bytes(market.quotes),
    ))
    .context("sending the quotes")?
    .messages;
    wait_until(
        || metrics.total().records_applied >= quotes,
        || {
            format!(
                "only {} of {quotes} quotes were applied",
                metrics.total().records_applied
            )
        },
    )?;
    let mut send = SendOptions::new(
        vec![orders_addr.to_string()],
        SendSource::Bytes(market.orders),
    );
    send.repeat = repeat;
    send.connections = opts.run.connections.max(1);
    send.progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let orders = run_send(&send)
        .context("sending the orders at full speed")?
        .messages;
    let expected = market.results_per_pass * repeat;
    wait_until(
        || sink.results() >= expected,
        || format!("only {} of {expected} results arrived", sink.results()),
    )?;
    let elapsed = start.elapsed();
    settle(&metrics, &sink, 0, quotes + orders)?;
    let t = metrics.total();
    phases.push(MarketPhase {
        frames_in: t.frames_in,
        expected_results: Some(expected),
        ..MarketPhase::new(
            "full speed",
            elapsed,
            &metrics,
            t.records_in,
            sink.results(),
        )
        .sent(quotes, orders, 0)
    });

    // Fixed rate, with probes.
    let rate = opts
        .run
        .rate
        .unwrap_or_else(|| (phases[0].orders_per_sec() / 2.0) as u64);
    if rate > 0 {
        let before = metrics.total();
        let results_before = sink.results();
        metrics.reset_latency();
        let mut paced = send.clone();
        paced.rate = rate;
        paced.repeat = 0;
        paced.messages = Some(((rate as f64 * opts.run.duration.as_secs_f64()) as u64).max(1));
        paced.progress = false;
        let stop = AtomicBool::new(false);
        let start = Instant::now();
        let (sent, probes_sent) = std::thread::scope(|s| {
            let prober = s.spawn(|| send_probes(orders_addr, &probes, &stop));
            let sent = run_send(&paced).context("sending the fixed-rate phase");
            stop.store(true, Relaxed);
            let probes_sent = prober
                .join()
                .map_err(|_| anyhow::anyhow!("the probe thread panicked"));
            (sent, probes_sent)
        });
        let (orders, probes_sent) = (sent?.messages, probes_sent??);
        settle(&metrics, &sink, before.frames_in, orders + probes_sent)?;
        let elapsed = start.elapsed();
        let probe = probes.percentiles();
        if probe.count < probes_sent {
            tracing::warn!(
                "only {} of {probes_sent} probe results were matched",
                probe.count
            );
        }
        let t = metrics.total();
        let mut phase = MarketPhase {
            frames_in: t.frames_in - before.frames_in,
            ..MarketPhase::new(
                "fixed rate",
                elapsed,
                &metrics,
                t.records_in - before.records_in,
                sink.results() - results_before,
            )
            .sent(0, orders, probes_sent)
        };
        phase.phase.probe_latency = Some(probe);
        phase.phase.target_rate = Some(rate);
        phases.push(phase);
    }
    server.stop();
    let report = server.join()?;
    let malformed = sink.malformed.load(Relaxed);
    if malformed > 0 {
        bail!("the result sink received {malformed} frames that are not 55-byte order results");
    }
    let (per_core, keys) = per_core_and_keys(&report);
    Ok(MarketBenchReport {
        mode: "loopback".into(),
        server_cpus,
        clients,
        data: market.describe,
        phases,
        keys,
        per_core,
    })
}
