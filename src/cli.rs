//! The command line: `bettong [serve|market-spread|send|receive|demo|bench|market-gen]`,
//! parsed with clap. With no subcommand, `bettong` runs a short loopback bench
//! ([`BenchArgs::default_run`]).
//!
//! Each subcommand maps onto one module's options struct, so the binary stays a thin layer.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::serve::ServeLimits;

/// Bettong: a thread-per-core stream-processing engine, serving Wallaroo's word count and
/// Market Spread.
///
/// With no subcommand it runs a short benchmark on loopback and prints the table.
#[derive(Debug, Parser)]
#[command(name = "bettong", version, about, long_about = None)]
pub struct Cli {
    /// What to run (default: a short loopback bench).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The log's format on stderr: `text` (colours only on a terminal) or `json` (one object
    /// a line, for log shippers).
    #[arg(long, global = true, value_enum, default_value_t = crate::logging::LogFormat::Text)]
    pub log_format: crate::logging::LogFormat,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve word count: framed text in on --in, `word => count` lines out to --out.
    Serve(ServeArgs),
    /// Serve Market Spread: --in Orders@HOST:PORT,Nbbo@HOST:PORT, framed order results out to
    /// --out. The other flags are `serve`'s.
    MarketSpread(ServeArgs),
    /// Send framed messages to a server (Wallaroo's giles sender).
    Send(SendArgs),
    /// Receive and count output lines, or with --market-spread framed order results
    /// (Wallaroo's data_receiver).
    Receive(ReceiveArgs),
    /// Run the server, a sender and a receiver on loopback and report what happened.
    Demo(DemoArgs),
    /// Measure throughput and latency, over loopback or in-process (the default command).
    Bench(BenchArgs),
    /// Write deterministic Market Spread input: a framed orders file and a framed quotes file.
    MarketGen(MarketGenArgs),
    /// A word-count job on NATS JetStream: create it, or show its members, owners and lag.
    #[command(subcommand)]
    Cluster(crate::nats::cli::ClusterCommand),
}

/// `bettong market-gen`.
#[derive(Debug, Args)]
pub struct MarketGenArgs {
    /// The orders file to write (framed 53-byte orders).
    #[arg(long, value_name = "FILE")]
    pub orders: PathBuf,
    /// The quotes file to write (framed 42-byte NBBO quotes; each symbol is quoted once first).
    #[arg(long, value_name = "FILE")]
    pub nbbo: PathBuf,
    /// Distinct stock symbols.
    #[arg(long, default_value_t = crate::market_spread::gen::GenOptions::default().symbols)]
    pub symbols: usize,
    /// Orders to write.
    #[arg(long, value_name = "N", default_value_t = crate::market_spread::gen::GenOptions::default().orders)]
    pub orders_count: u64,
    /// Quotes to write (at least --symbols).
    #[arg(long, value_name = "N", default_value_t = crate::market_spread::gen::GenOptions::default().quotes)]
    pub quotes_count: u64,
    /// Seed: the same arguments write the same bytes.
    #[arg(long, value_name = "S", default_value_t = crate::market_spread::gen::GenOptions::default().seed)]
    pub seed: u64,
}

impl MarketGenArgs {
    /// The generator's options.
    pub fn to_options(&self) -> crate::market_spread::gen::GenOptions {
        crate::market_spread::gen::GenOptions {
            symbols: self.symbols,
            orders: self.orders_count,
            quotes: self.quotes_count,
            seed: self.seed,
        }
    }
}

/// The app `bettong bench` measures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchApp {
    /// Word count: framed text in, `word => count` lines out.
    #[default]
    WordCount,
    /// Market Spread: quotes, then orders in; framed order results out.
    MarketSpread,
}

/// `bettong bench`.
#[derive(Debug, Args, Clone, Default)]
pub struct BenchArgs {
    /// The app to measure.
    #[arg(long, value_enum, default_value_t = BenchApp::WordCount)]
    pub app: BenchApp,
    /// Run the pipeline embedded (memory source, discarding sink) instead of over loopback.
    #[arg(long)]
    pub in_process: bool,
    /// A framed corpus, such as gen_corpus.py's output (default: a synthetic Zipf corpus).
    #[arg(long)]
    pub framed_file: Option<PathBuf>,
    /// Messages of the synthetic corpus.
    #[arg(long, default_value_t = 200_000)]
    pub messages: usize,
    /// Passes over the corpus at full speed.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Server cores (default: every server CPU).
    #[arg(long)]
    pub cores: Option<usize>,
    /// CPUs for the server's cores, a list such as `1`, `2-5` or `0,3` (default: every CPU but
    /// the first, which the clients get; on 1 CPU, that CPU).
    #[arg(long, value_name = "LIST")]
    pub cpus: Option<crate::placement::Cpus>,
    /// CPUs for the bench's sender, receiver and probe threads (default: the CPUs the server
    /// does not use, else every CPU).
    #[arg(long, value_name = "LIST")]
    pub client_cpus: Option<crate::placement::Cpus>,
    /// Sender connections.
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    /// Messages/s of the fixed-rate latency phase, orders/s for market-spread (default: half
    /// the full-speed rate; 0 skips it).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Seconds of the fixed-rate phase (at most a year).
    #[arg(long, default_value_t = 3.0, value_parser = parse_secs)]
    pub duration: f64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// The latency-throughput curve: after full speed, a fixed-rate phase (of --duration) at
    /// each of 10 %, 20 %, ... 100 % of the rate reached; writes --sweep-out's CSV and SVG plot.
    #[arg(long)]
    pub sweep: bool,
    /// Measure another word-count server instead (tokio-wc, or `bettong serve`): a command
    /// line with {IN} and {OUT}, run with `sh -c`, as loadgen takes; pin it in the command
    /// (`taskset -c 1 ...`). Its CPU/msg is the whole process's.
    #[arg(long, value_name = "CMD")]
    pub server_cmd: Option<String>,
    /// Where --sweep writes: PREFIX.csv and PREFIX.svg.
    #[arg(long, value_name = "PREFIX", default_value = "bench-sweep")]
    pub sweep_out: PathBuf,
    /// Market Spread: orders generated (sent --repeat times at full speed) [default: 1000000].
    #[arg(long, value_name = "N")]
    pub orders: Option<u64>,
    /// Market Spread: quotes generated, all sent before the orders (at least --symbols)
    /// [default: 200000].
    #[arg(long, value_name = "N")]
    pub quotes: Option<u64>,
    /// Market Spread: distinct stock symbols [default: 350].
    #[arg(long, value_name = "N")]
    pub symbols: Option<usize>,
}

impl BenchArgs {
    /// The bench's options.
    pub fn to_options(&self) -> crate::bench::BenchOptions {
        crate::bench::BenchOptions {
            in_process: self.in_process,
            framed_file: self.framed_file.clone(),
            messages: self.messages.max(1),
            repeat: self.repeat.max(1),
            cores: self.cores,
            cpus: self.cpus.clone().map(|c| c.0),
            client_cpus: self.client_cpus.clone().map(|c| c.0),
            connections: self.connections.max(1),
            rate: self.rate,
            duration: Duration::from_secs_f64(self.duration.max(0.1)),
            sweep: self.sweep,
            server_cmd: self.server_cmd.clone(),
        }
    }

    /// The Market Spread bench's options (`--app market-spread`); fails on the word-count
    /// options it has no use for.
    pub fn to_market_options(
        &self,
    ) -> anyhow::Result<crate::market_spread::bench::MarketBenchOptions> {
        if self.framed_file.is_some() {
            anyhow::bail!(
                "bench --app market-spread generates its input: --framed-file is for word-count"
            );
        }
        if self.server_cmd.is_some() {
            anyhow::bail!("bench --server-cmd measures word count; drop --app market-spread");
        }
        if self.sweep {
            anyhow::bail!("bench --sweep measures word count; drop --app market-spread");
        }
        let defaults = crate::market_spread::bench::MarketBenchOptions::default().gen;
        Ok(crate::market_spread::bench::MarketBenchOptions {
            run: self.to_options(),
            gen: crate::market_spread::gen::GenOptions {
                orders: self.orders.unwrap_or(defaults.orders).max(1),
                quotes: self.quotes.unwrap_or(defaults.quotes),
                symbols: self.symbols.unwrap_or(defaults.symbols),
                ..defaults
            },
        })
    }
}

/// `bettong serve`, and `bettong market-spread`, which takes the same flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on, `[NAME@]HOST:PORT`; or `file:PATH`, a framed file (like
    /// gen_corpus.py's output) read once, after which the server exits 0; or
    /// `nats://HOST:PORT/PREFIX`, the NATS JetStream stream PREFIX_in (with --job: a cluster
    /// member). For `market-spread`: `Orders@HOST:PORT,Nbbo@HOST:PORT`, either may be
    /// `nats://HOST:PORT/PREFIX`.
    #[arg(
        long = "in",
        value_name = "[NAME@]HOST:PORT|file:PATH|nats://HOST:PORT/PREFIX"
    )]
    pub input: String,
    /// Receiver to send the output to (word count's lines, Market Spread's framed results),
    /// `HOST:PORT`; or `nats://HOST:PORT/PREFIX`, published on the subjects PREFIX.out.<q>.
    #[arg(long = "out", value_name = "HOST:PORT|nats://HOST:PORT/PREFIX")]
    pub output: String,
    /// Cores to run on, one pinned executor each (default: every online core, or every CPU of
    /// --cpus; for a cluster member, --job, default 1, and its cores are pinned only when
    /// --cpus is given).
    #[arg(long)]
    pub cores: Option<usize>,
    /// CPUs to run on, one core pinned to each: a list such as `1`, `2-5` or `0,3` (default:
    /// the first --cores CPUs this process may use; a cluster member's cores: not pinned).
    #[arg(long, value_name = "LIST")]
    pub cpus: Option<crate::placement::Cpus>,
    /// Largest accepted frame payload in bytes; a connection sending a larger header is closed.
    #[arg(long, default_value_t = bettong_engine::codec::DEFAULT_MAX_FRAME,
          value_parser = size_parser(1, MAX_FRAME))]
    pub max_frame: usize,
    /// Checkpoint all state (and a file source's read position) into DIR, and on start
    /// resume from the newest checkpoint in it. A TCP source cannot replay: frames received
    /// after the last checkpoint before a crash are lost unless resent.
    #[arg(long, value_name = "DIR")]
    pub resilience_dir: Option<PathBuf>,
    /// Time between checkpoints with --resilience-dir: `1s`, `250ms`, `2m`, or seconds.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub checkpoint_interval: Duration,
    /// Open connections each core accepts; further ones are closed at once, unread (logged,
    /// counted in connections_refused).
    #[arg(long, value_name = "N", default_value_t = ServeLimits::default().max_connections_per_core,
          value_parser = size_parser(1, MAX_CONNECTIONS_PER_CORE))]
    pub max_connections_per_core: usize,
    /// Close a connection that sent part of a frame and then nothing for this long (slow
    /// loris); its partial frame is dropped. Connections idle between frames stay open. A frame
    /// must also be whole within three times this much time spent waiting for it, counted from
    /// its first byte, so a byte now and then does not keep it alive.
    /// Seconds (`30`, `0.5`) or `500ms`, `2m`.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Bytes of partial frames (received, not yet whole) each core's connections may hold
    /// together; past it the connections holding the most are closed, their partial frames
    /// dropped (logged, counted in connections_over_budget).
    #[arg(long, value_name = "BYTES", default_value_t = ServeLimits::default().partial_frame_budget,
          value_parser = size_parser(1, MAX_SINK_BUFFER))]
    pub partial_frame_budget: usize,
    /// Bytes of output each core holds for a slow or absent receiver before it stops reading
    /// its sources (TCP flow control then slows the senders).
    #[arg(long, value_name = "BYTES", default_value_t = ServeLimits::default().sink_buffer,
          value_parser = size_parser(1, MAX_SINK_BUFFER))]
    pub sink_buffer: usize,
    /// After SIGINT/SIGTERM, how long an unreachable or stalled receiver may take nothing before
    /// the output still held for it is dropped (the server then exits 1, saying how much).
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// With --resilience-dir, when the directory holds checkpoints and none of them can be read
    /// (damaged, from another build, unreadable): start from empty state instead of refusing to
    /// start. The unreadable checkpoints are moved aside (renamed `unreadable-ckpt-…`), never
    /// deleted. It does not override a checkpoint refused for another reason (another source
    /// kind, another file).
    #[arg(long)]
    pub start_empty_if_unreadable: bool,
    /// Serve the metrics on HOST:PORT: `/metrics` (Prometheus), `/metrics.json` and a live
    /// monitoring page at `/` (port 0: any free port, named in the ready line).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
    /// Time between progress lines in the log (msgs/s in, lines/s out, p99, connections,
    /// keys, sink): `10s`, `500ms`, `1m`; 0 turns them off.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub progress_interval: Duration,
    /// Longest key (word) kept, in bytes: a record with a longer key is dropped and counted in
    /// keys_rejected; the other words of its frame still count.
    #[arg(long, value_name = "BYTES", default_value_t = ServeLimits::default().max_key_bytes,
          value_parser = size_parser(1, MAX_FRAME))]
    pub max_key_bytes: usize,
    /// A member of a cluster job on NATS (`--in nats://HOST:PORT/PREFIX`).
    #[command(flatten)]
    pub nats: crate::nats::cli::NatsServeArgs,
}

impl ServeArgs {
    /// What the server shows while it runs (`--metrics-addr`, `--progress-interval`).
    pub fn observe(&self) -> crate::observe::ObserveOptions {
        crate::observe::ObserveOptions {
            metrics_addr: self.metrics_addr.clone(),
            progress_interval: self.progress_interval,
        }
    }

    /// The server options these flags give.
    pub fn options(self) -> crate::serve::ServeOptions {
        crate::serve::ServeOptions {
            limits: self.limits(),
            input: self.input,
            output: self.output,
            cores: self.cores,
            cpus: self.cpus.map(|c| c.0),
            max_frame: self.max_frame,
            resilience_dir: self.resilience_dir,
            checkpoint_interval: self.checkpoint_interval,
        }
    }

    /// The limits given on the command line.
    pub fn limits(&self) -> ServeLimits {
        ServeLimits {
            max_connections_per_core: self.max_connections_per_core,
            idle_timeout: self.idle_timeout,
            partial_frame_budget: self.partial_frame_budget,
            sink_buffer: self.sink_buffer,
            shutdown_grace: self.shutdown_grace,
            start_empty_if_unreadable: self.start_empty_if_unreadable,
            max_key_bytes: self.max_key_bytes,
        }
    }
}

/// The longest duration any flag takes: 365 days. Longer values are refused when the flags are
/// parsed, because the server adds them to `Instant::now()` (idle timers, checkpoint and stop
/// deadlines), which panics or wraps far below `Duration::MAX`; nobody means more than a year.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// The largest `--max-frame`: a frame's length header has 32 bits.
pub const MAX_FRAME: usize = u32::MAX as usize;

/// The largest `--max-connections-per-core`: 2^24, already more open descriptors than Linux
/// lets one process hold by default (1,048,576) sixteen times over.
pub const MAX_CONNECTIONS_PER_CORE: usize = 1 << 24;

/// The largest `--sink-buffer`: 1 TiB per core (the flag bounds memory; more bounds nothing).
pub const MAX_SINK_BUFFER: usize = 1 << 40;

/// A clap value parser for a count or a size in bytes between `min` and `max`: anything else
/// (including a number too large for the type) is refused with clap's error naming the flag.
pub fn size_parser(min: u64, max: usize) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(min..=max as u64)
}

/// Parses a duration: a number of seconds (`1.5`), or a number with `ms`, `s`, `m` or `h`; at
/// most [`MAX_DURATION`].
///
/// ```
/// use bettong::cli::parse_duration;
/// use std::time::Duration;
/// assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
/// assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
/// assert!(parse_duration("soon").is_err());
/// assert!(parse_duration("10000000000000000000").is_err());
/// assert!(parse_duration("8761h").is_err());
/// assert_eq!(parse_duration("8760h"), Ok(bettong::cli::MAX_DURATION));
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = parse_any_duration(s)?;
    if d > MAX_DURATION {
        return Err(format!(
            "{s:?} is too long: a duration is at most 365 days ({}s)",
            MAX_DURATION.as_secs()
        ));
    }
    Ok(d)
}

/// [`parse_duration`] for the flags kept as seconds in an `f64` (`bench --duration`,
/// `receive --idle-exit`): the same forms and the same bound.
pub fn parse_secs(s: &str) -> Result<f64, String> {
    parse_duration(s).map(|d| d.as_secs_f64())
}

/// A `send --interval` in milliseconds, at most [`MAX_DURATION`].
pub fn parse_millis(s: &str) -> Result<u64, String> {
    let max = MAX_DURATION.as_millis() as u64;
    match s.trim().parse::<u64>() {
        Ok(ms) if ms <= max => Ok(ms),
        Ok(_) => Err(format!("{s:?} is too long: at most {max} ms (365 days)")),
        Err(e) => Err(format!("{s:?} is not a number of milliseconds: {e}")),
    }
}

/// [`parse_duration`] without the upper bound.
fn parse_any_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let scale = match unit.trim() {
        "ms" => 1e-3,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("{s:?} is not a duration (use e.g. 500ms, 1s, 2m)")),
    };
    num.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .and_then(|v| Duration::try_from_secs_f64(v * scale).ok())
        .ok_or_else(|| format!("{s:?} is not a duration (use e.g. 500ms, 1s, 2m)"))
}

/// `bettong send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Server addresses, `HOST:PORT[,HOST:PORT…]`, used round robin by the connections.
    #[arg(long, value_delimiter = ',', required_unless_present = "nats")]
    pub host: Vec<String>,
    /// A text file: every non-empty line is one message.
    #[arg(long, conflicts_with = "framed_file")]
    pub file: Option<PathBuf>,
    /// A file that is already framed (4-byte big-endian length + payload), like gen_corpus.py's.
    #[arg(long)]
    pub framed_file: Option<PathBuf>,
    /// Stop after this many messages in total.
    #[arg(long)]
    pub messages: Option<u64>,
    /// Messages per write.
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
    /// Pause between batches, in milliseconds (at most a year).
    #[arg(long, value_parser = parse_millis)]
    pub interval: Option<u64>,
    /// Times to send the whole input (0: until --messages, or forever).
    #[arg(long, default_value_t = 1)]
    pub repeat: u64,
    /// TCP connections, one thread each.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Messages per second over all connections (0: as fast as the server takes them).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// When stderr is not a terminal (no progress bar): time between plain progress lines,
    /// `10s`, `500ms`; 0 turns them off.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub progress_interval: Duration,
    /// Publishing into a NATS input stream instead.
    #[command(flatten)]
    pub nats: crate::nats::cli::NatsSendArgs,
}

/// `bettong receive`.
#[derive(Debug, Args)]
pub struct ReceiveArgs {
    /// Address to listen on, `HOST:PORT`.
    #[arg(long, value_name = "HOST:PORT", required_unless_present = "nats")]
    pub listen: Option<String>,
    /// Count the output without writing it to stdout.
    #[arg(long)]
    pub no_write: bool,
    /// Check that every word's outputs come 1..N in order on one connection.
    #[arg(long)]
    pub validate: bool,
    /// Exit once this many lines have arrived.
    #[arg(long)]
    pub expect_lines: Option<u64>,
    /// Exit after this many seconds without data (once a connection was seen; at most a year).
    #[arg(long, value_parser = parse_secs)]
    pub idle_exit: Option<f64>,
    /// Receive Market Spread output (framed 55-byte order results) instead of lines: count the
    /// results (--expect-lines then counts results), check their framing and that each symbol
    /// stays on one connection; nothing is written.
    #[arg(long)]
    pub market_spread: bool,
    /// With --market-spread: the orders file sent (once), to check that exactly the orders the
    /// sequential reference expects, with every quote of --nbbo sent first, get a result.
    #[arg(long, value_name = "FILE", requires_all = ["market_spread", "nbbo"])]
    pub orders: Option<PathBuf>,
    /// With --orders: the quotes file sent before the orders.
    #[arg(long, value_name = "FILE", requires = "orders")]
    pub nbbo: Option<PathBuf>,
    /// With --orders: each symbol's results must come in the orders file's order (the orders
    /// were sent on one connection); otherwise any order is accepted.
    #[arg(long, requires = "orders")]
    pub in_order: bool,
    /// Reading a NATS output stream instead.
    #[command(flatten)]
    pub nats: crate::nats::cli::NatsReceiveArgs,
}

/// `bettong demo`: the first-run demo (the Bill of Rights sent many times, outputs checked).
/// `bettong` with no arguments runs the bench instead ([`BenchArgs::default_run`]).
#[derive(Debug, Args, Clone)]
pub struct DemoArgs {
    /// Cores for the server (default: every online core).
    #[arg(long)]
    pub cores: Option<usize>,
    /// Times the Bill of Rights is sent.
    #[arg(long, default_value_t = 4000)]
    pub repeat: u64,
    /// Sender connections.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
}

impl Default for DemoArgs {
    fn default() -> Self {
        DemoArgs {
            cores: None,
            repeat: 4000,
            connections: 4,
        }
    }
}

impl SendArgs {
    /// The sender's options; `progress` (a bar) is set when stderr is a terminal, otherwise it
    /// prints plain lines every `--progress-interval`.
    pub fn to_options(&self, progress: bool) -> anyhow::Result<crate::send::SendOptions> {
        use crate::send::{SendOptions, SendSource};
        let source = match (&self.file, &self.framed_file) {
            (Some(f), None) => SendSource::File(f.clone()),
            (None, Some(f)) => SendSource::FramedFile(f.clone()),
            _ => anyhow::bail!("bettong send needs exactly one of --file or --framed-file"),
        };
        let mut o = SendOptions::new(self.host.clone(), source);
        o.messages = self.messages;
        o.batch_size = self.batch_size.max(1);
        o.interval = self.interval.map(Duration::from_millis);
        o.repeat = self.repeat;
        o.connections = self.connections.max(1);
        o.rate = self.rate;
        o.progress = progress;
        if !progress {
            o.progress_lines = self.progress_interval;
        }
        Ok(o)
    }
}

impl ReceiveArgs {
    /// The receiver's options; fails if the Market Spread orders or quotes file cannot be read
    /// or is not a sequence of frames.
    pub fn to_options(&self) -> anyhow::Result<crate::receive::ReceiveOptions> {
        use anyhow::Context;
        let listen = self
            .listen
            .clone()
            .context("receive needs --listen HOST:PORT")?;
        let mut o = crate::receive::ReceiveOptions::new(listen);
        o.no_write = self.no_write;
        o.validate = self.validate;
        o.expect_lines = self.expect_lines;
        o.idle_exit = self.idle_exit.map(Duration::from_secs_f64);
        // A live status line on a terminal; plain lines in a log.
        o.bar = std::io::IsTerminal::is_terminal(&std::io::stderr());
        if self.market_spread {
            let expected = match (&self.orders, &self.nbbo) {
                (Some(orders), Some(nbbo)) => {
                    let read = |p: &PathBuf| {
                        std::fs::read(p).with_context(|| {
                            format!(
                                "receive: cannot read the Market Spread file {}",
                                p.display()
                            )
                        })
                    };
                    let (orders_bytes, nbbo_bytes) = (read(orders)?, read(nbbo)?);
                    let frames = |bytes, p: &PathBuf| {
                        crate::corpus::split_frames(bytes).with_context(|| {
                            format!("receive: {} is not a framed file", p.display())
                        })
                    };
                    Some(crate::market_spread::reference::expected_results(
                        &frames(&nbbo_bytes, nbbo)?,
                        &frames(&orders_bytes, orders)?,
                    ))
                }
                _ => None,
            };
            o.market_spread = Some(crate::receive::MarketSpreadCheck {
                expected,
                in_order: self.in_order,
            });
        }
        Ok(o)
    }
}

impl BenchArgs {
    /// What `bettong` with no arguments runs: a short loopback bench.
    pub fn default_run() -> Self {
        BenchArgs {
            messages: 200_000,
            repeat: 3,
            connections: 2,
            duration: 2.0,
            ..Default::default()
        }
    }
}
