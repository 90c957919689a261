//! `bettong serve`: the word-count server, and the address parsing and signal handling it needs.
//!
//! The server runs [`crate::app::word_count`] on every core with the TCP source on `--in` (or a
//! framed file, `--in file:PATH`) and the TCP sink on `--out`. SIGINT or SIGTERM stops it
//! gracefully (stop accepting, finish the frames received, flush every sink connection, exit 0);
//! a second signal exits at once. With only a file source it also exits 0 once the file is read
//! and all output flushed. With `--resilience-dir` it checkpoints all counts (and the file's read
//! positions) and resumes from the newest checkpoint when restarted.
//!
//! Besides its log (stderr, for people), `serve` prints two JSON lines on stdout for programs:
//! [`ready_line`] once it listens (or reads its file) and [`stopped_line`] with the final
//! counters once it has stopped.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::observe::{ObserveOptions, Observers};
use bettong_engine::sink::Records;
use bettong_engine::{
    Checkpoints, Engine, FileSourceConfig, IoBackend, MetricsSnapshot, PersistApp, Report, Running,
    SinkConfig, SourceConfig, TcpSinkConfig, TcpSourceConfig,
};

/// What `bettong serve` needs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// `[NAME@]HOST:PORT` to listen on.
    pub input: String,
    /// `HOST:PORT` of the receiver.
    pub output: String,
    /// Cores to run on (default: every online core).
    pub cores: Option<usize>,
    /// CPUs to pin the cores to (`--cpus`; default: the first online ones).
    pub cpus: Option<Vec<usize>>,
    /// Largest accepted frame payload, in bytes.
    pub max_frame: usize,
    /// Checkpoint directory (`--resilience-dir`): restore from it at start, checkpoint into it.
    pub resilience_dir: Option<PathBuf>,
    /// Time between checkpoints (`--checkpoint-interval`).
    pub checkpoint_interval: Duration,
    /// Connection, timeout and sink limits (`--max-connections-per-core`, `--idle-timeout`,
    /// `--sink-buffer`, `--shutdown-grace`).
    pub limits: ServeLimits,
}

/// The limits that keep the server's memory bounded and its stop bounded in time, whatever
/// clients and the receiver do. [`Default`] gives the engine's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeLimits {
    /// Open source connections per core; more are closed at once, unread.
    pub max_connections_per_core: usize,
    /// A source connection that sent part of a frame and then nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Bytes of partial frames each core's source connections may hold together; past it the
    /// connections holding the most are closed (`--partial-frame-budget`).
    pub partial_frame_budget: usize,
    /// Bytes of output each core holds for a slow or absent receiver before sources wait.
    pub sink_buffer: usize,
    /// After SIGINT/SIGTERM, how long an unreachable or stalled receiver may take nothing
    /// before the held output is dropped (and the server exits 1, saying how much).
    pub shutdown_grace: Duration,
    /// With `--resilience-dir`: start from empty state when the directory holds checkpoints
    /// and none can be read (`--start-empty-if-unreadable`), instead of refusing to start.
    /// They are moved aside either way, never deleted.
    pub start_empty_if_unreadable: bool,
    /// Longest key kept, in bytes (`--max-key-bytes`): a longer word is dropped and
    /// counted in `keys_rejected`, the other words of its frame still count.
    pub max_key_bytes: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        let source = TcpSourceConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
        let sink = TcpSinkConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
        ServeLimits {
            max_connections_per_core: source.max_connections_per_core,
            idle_timeout: source.idle_timeout,
            partial_frame_budget: source.partial_frame_budget,
            sink_buffer: sink.max_held_bytes,
            shutdown_grace: sink.shutdown_grace,
            start_empty_if_unreadable: false,
            max_key_bytes: bettong_engine::routing::DEFAULT_MAX_KEY_BYTES,
        }
    }
}

/// Splits Wallaroo's `name@host:port` form into its optional name and the address.
///
/// ```
/// use bettong::serve::parse_input;
/// let (name, addr) = parse_input("words@127.0.0.1:7000").unwrap();
/// assert_eq!(name.as_deref(), Some("words"));
/// assert_eq!(addr.port(), 7000);
/// assert!(parse_input("127.0.0.1").is_err());
/// ```
pub fn parse_input(spec: &str) -> Result<(Option<String>, SocketAddr)> {
    let (name, addr) = match spec.split_once('@') {
        Some((name, addr)) if !name.is_empty() => (Some(name.to_string()), addr),
        Some((_, addr)) => (None, addr),
        None => (None, spec),
    };
    Ok((name, resolve(addr, "--in")?))
}

/// Resolves `HOST:PORT`, saying which flag held it when it does not resolve.
pub fn resolve(addr: &str, flag: &str) -> Result<SocketAddr> {
    let mut addrs = addr
        .to_socket_addrs()
        .with_context(|| format!("{flag} {addr:?} is not a valid HOST:PORT address"))?;
    match addrs.next() {
        Some(a) => Ok(a),
        None => bail!("{flag} {addr:?} resolves to no address"),
    }
}

/// The socket backend the `BETTONG_IO` environment variable names (`uring` or `glommio`, any
/// case), or the engine's default ([`IoBackend::DEFAULT`]) when it is unset. Any other value is
/// an error: a typo must not silently measure the other backend.
///
/// The engine itself reads no environment variable; the server (and so the bench) reads this one
/// here, in [`start_server`].
pub fn io_backend_from_env() -> Result<IoBackend> {
    match std::env::var("BETTONG_IO") {
        Err(std::env::VarError::NotPresent) => Ok(IoBackend::DEFAULT),
        Err(e) => bail!("BETTONG_IO is set but unusable: {e}"),
        Ok(v) => v
            .parse()
            .map_err(|e| anyhow!("BETTONG_IO={v:?}: {e}; unset it for the default")),
    }
}

/// Starts the word-count server and returns it running (tests and the bench use this).
pub fn start_server(opts: &ServeOptions) -> Result<Running> {
    check_limits(opts)?;
    let (name, source) = word_count_source(opts)?;
    let running = start_app(
        opts,
        crate::app::word_count(),
        vec![source],
        Records::Delimited(b'\n'),
    )
    .with_context(|| format!("starting the word-count server on {}", opts.input))?;
    match running.local_addr() {
        Some(addr) => tracing::info!(
            source = name.as_deref().unwrap_or("-"),
            "listening on {addr} with {} cores (CPUs {:?}); output to {}",
            running.cpus().len(),
            running.cpus(),
            opts.output
        ),
        None => tracing::info!(
            "reading {} with {} cores (CPUs {:?}); output to {}; exits once it is read",
            opts.input,
            running.cpus().len(),
            running.cpus(),
            opts.output
        ),
    }
    Ok(running)
}

/// The source `--in` names: a framed file (`file:PATH`) or a TCP address (`[NAME@]HOST:PORT`),
/// with the name the address gave, if any.
pub fn word_count_source(opts: &ServeOptions) -> Result<(Option<String>, SourceConfig)> {
    Ok(match opts.input.strip_prefix("file:") {
        Some("") => bail!("--in file: needs a path, as in --in file:/data/corpus.bin"),
        Some(path) => {
            let mut f = FileSourceConfig::new(path);
            f.max_frame = opts.max_frame;
            (None, SourceConfig::File(f))
        }
        None => {
            let (name, input) = parse_input(&opts.input)?;
            (name, SourceConfig::Tcp(tcp_source(opts, input)?))
        }
    })
}

/// A TCP source on `addr` with the limits of `opts` (and the socket backend `BETTONG_IO` asks
/// for).
pub fn tcp_source(opts: &ServeOptions, addr: SocketAddr) -> Result<TcpSourceConfig> {
    let mut source = TcpSourceConfig::new(addr);
    source.max_frame = opts.max_frame;
    source.max_connections_per_core = opts.limits.max_connections_per_core;
    source.idle_timeout = opts.limits.idle_timeout;
    // A frame must be whole within three idle timeouts of waiting from its first byte.
    source.frame_timeout = opts.limits.idle_timeout.saturating_mul(3);
    source.partial_frame_budget = opts.limits.partial_frame_budget;
    source.io = io_backend_from_env()?;
    if let Some(bytes) = read_buffer_from_env()? {
        source.read_buffer = bytes;
    }
    Ok(source)
}

/// `BETTONG_READ_BUFFER=BYTES` (4096 to 1048576): the TCP source's read size (tuning.md, the
/// "read buffer" knob), for measuring what a read's size does to latency; unset, the engine's
/// default.
pub fn read_buffer_from_env() -> Result<Option<usize>> {
    match std::env::var("BETTONG_READ_BUFFER") {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(e) => bail!("BETTONG_READ_BUFFER is set but unusable: {e}"),
        Ok(v) => parse_read_buffer(&v).map(Some),
    }
}

fn parse_read_buffer(v: &str) -> Result<usize> {
    match v.trim().parse::<usize>() {
        Ok(n) if (4096..=1 << 20).contains(&n) => Ok(n),
        _ => bail!(
            "BETTONG_READ_BUFFER={v:?}: expected a number of bytes from 4096 to 1048576; unset it \
             for the default (65536)"
        ),
    }
}

/// Starts any app with the given sources (in the app's source order) and the TCP sink on
/// `--out` (whose output divides into `records`), with checkpoints when `--resilience-dir` is
/// set. Shared by every server command.
pub fn start_app<A: PersistApp>(
    opts: &ServeOptions,
    app: A,
    sources: Vec<SourceConfig>,
    records: Records,
) -> Result<Running> {
    let sink = tcp_sink(opts, records)?;
    start_app_with_sink(opts, app, sources, sink)
}

/// The TCP sink on `--out`, with the limits of `opts`, whose output divides into `records`.
pub fn tcp_sink(opts: &ServeOptions, records: Records) -> Result<SinkConfig> {
    let output = resolve(&opts.output, "--out")?;
    let mut sink = TcpSinkConfig::new(output);
    sink.max_held_bytes = opts.limits.sink_buffer;
    sink.shutdown_grace = opts.limits.shutdown_grace;
    sink.records = records;
    Ok(SinkConfig::Tcp(sink))
}

/// [`start_app`] with any sink.
pub fn start_app_with_sink<A: PersistApp>(
    opts: &ServeOptions,
    app: A,
    sources: Vec<SourceConfig>,
    sink: SinkConfig,
) -> Result<Running> {
    // The engine's own log names its limits but not the flags that set them: say it here.
    tracing::info!(
        "limits: --max-frame {} bytes, --max-connections-per-core {}, --idle-timeout {:?} (a \
         whole frame within 3x that), --partial-frame-budget {} bytes, --max-key-bytes {}, \
         --sink-buffer {} bytes, --shutdown-grace {:?}",
        opts.max_frame,
        opts.limits.max_connections_per_core,
        opts.limits.idle_timeout,
        opts.limits.partial_frame_budget,
        opts.limits.max_key_bytes,
        opts.limits.sink_buffer,
        opts.limits.shutdown_grace
    );
    let mut engine = Engine::new().max_key_bytes(opts.limits.max_key_bytes);
    if let Some(n) = opts.cores {
        engine = engine.cores(n);
    }
    if let Some(cpus) = &opts.cpus {
        engine = engine.cpus(cpus.clone());
    }
    let running = match &opts.resilience_dir {
        Some(dir) => {
            if opts.checkpoint_interval.is_zero() {
                bail!("--checkpoint-interval must be above zero");
            }
            let checkpoints = Checkpoints::new(dir)
                .interval(opts.checkpoint_interval)
                .start_empty_if_unreadable(opts.limits.start_empty_if_unreadable);
            engine.start_with_checkpoints(app, sources, sink, checkpoints)?
        }
        None => engine.start(app, sources, sink)?,
    };
    Ok(running)
}

/// Checks the limits every server command shares.
pub fn check_limits(opts: &ServeOptions) -> Result<()> {
    if opts.max_frame == 0 || opts.max_frame > u32::MAX as usize {
        bail!(
            "--max-frame {} is out of range: it must be between 1 and {} bytes",
            opts.max_frame,
            u32::MAX
        );
    }
    let limits = &opts.limits;
    if limits.max_connections_per_core == 0 {
        bail!("--max-connections-per-core 0 would refuse every connection: it must be at least 1");
    }
    if limits.max_connections_per_core > crate::cli::MAX_CONNECTIONS_PER_CORE {
        bail!(
            "--max-connections-per-core {} is out of range: it must be at most {}",
            limits.max_connections_per_core,
            crate::cli::MAX_CONNECTIONS_PER_CORE
        );
    }
    if limits.idle_timeout.is_zero() {
        bail!("--idle-timeout must be above zero");
    }
    if limits.sink_buffer == 0 || limits.sink_buffer > crate::cli::MAX_SINK_BUFFER {
        bail!(
            "--sink-buffer {} is out of range: it must be between 1 and {} bytes",
            limits.sink_buffer,
            crate::cli::MAX_SINK_BUFFER
        );
    }
    // The engine adds these to `Instant::now()`: a longer one panics or stops a thread.
    for (flag, d) in [
        ("--idle-timeout", limits.idle_timeout),
        ("--shutdown-grace", limits.shutdown_grace),
        ("--checkpoint-interval", opts.checkpoint_interval),
    ] {
        if d > crate::cli::MAX_DURATION {
            bail!("{flag} {d:?} is out of range: it must be at most 365 days");
        }
    }
    Ok(())
}

/// Runs the word-count server until SIGINT or SIGTERM, then stops it gracefully. The signal
/// handlers are installed first, so a signal during start-up (a long checkpoint restore) stops
/// the server gracefully as soon as it has started.
///
/// With `--in file:PATH`, a file that is shorter when the server stops than when it started
/// (truncated under it, as logrotate's copytruncate does) is an error: the frames past the cut
/// were never read, so the server exits 1 after its graceful stop, naming the file.
pub fn serve(observe: &ObserveOptions, opts: &ServeOptions) -> Result<()> {
    install_signal_handlers()?;
    first_line("serve", observe, opts);
    let file = opts
        .input
        .strip_prefix("file:")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    let len_at_start = file
        .as_deref()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| m.len());
    let running = start_server(opts)?;
    let input = match running.local_addr() {
        Some(addr) => addr.to_string(),
        None => opts.input.clone(),
    };
    run_until_signal(opts, observe, running, &input, "word-count server")?;
    if let (Some(path), Some(before)) = (file, len_at_start) {
        let now = std::fs::metadata(&path).map(|m| m.len());
        match now {
            Ok(now) if now >= before => {}
            Ok(now) => bail!(
                "file:{} shrank from {before} to {now} bytes while it was being read (truncated, \
                 as by logrotate's copytruncate): what was past the cut was never read",
                path.display()
            ),
            Err(e) => bail!(
                "file:{} went away while it was being read ({e}): it may not have been read \
                 whole",
                path.display()
            ),
        }
    }
    Ok(())
}

/// What the signal thread acts on: the running server's stop handle once there is one, and
/// how many signals came (one before the handle exists is acted on when it is set).
struct SignalState {
    stop: std::sync::Mutex<Option<bettong_engine::StopHandle>>,
    seen: std::sync::atomic::AtomicUsize,
    installed: std::sync::Mutex<bool>,
}

static SIGNALS: SignalState = SignalState {
    stop: std::sync::Mutex::new(None),
    seen: std::sync::atomic::AtomicUsize::new(0),
    installed: std::sync::Mutex::new(false),
};

/// Installs the SIGINT/SIGTERM handlers and their thread, once per process (later calls do
/// nothing). The first signal stops the server gracefully, at once if it runs, else as soon as
/// [`run_until_signal`] gets it; a second exits at once with status 130.
pub fn install_signal_handlers() -> Result<()> {
    use std::sync::atomic::Ordering::SeqCst;
    let mut installed = SIGNALS.installed.lock().unwrap_or_else(|e| e.into_inner());
    if *installed {
        return Ok(());
    }
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("installing the SIGINT/SIGTERM handlers")?;
    std::thread::Builder::new()
        .name("bettong-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let seen = SIGNALS.seen.fetch_add(1, SeqCst) + 1;
                if seen == 1 {
                    let stop = SIGNALS.stop.lock().unwrap_or_else(|e| e.into_inner());
                    match stop.as_ref() {
                        Some(stop) => {
                            tracing::info!(
                                "signal {sig}: stopping: no new connections, finishing the \
                                 frames received, flushing output (signal again to exit at once)"
                            );
                            stop.stop();
                        }
                        None => tracing::info!(
                            "signal {sig} during start-up: stopping gracefully as soon as the \
                             server has started (signal again to exit at once)"
                        ),
                    }
                } else {
                    tracing::warn!("second signal {sig}: exiting at once without flushing");
                    std::process::exit(130);
                }
            }
        })
        .context("starting the signal thread")?;
    *installed = true;
    Ok(())
}

/// Hands `stop` to the signal thread of [`install_signal_handlers`]: the first SIGINT or
/// SIGTERM stops that engine gracefully (at once if one already came during start-up). Also
/// used by the Python package's `run`.
pub fn stop_on_signal(stop: bettong_engine::StopHandle) {
    *SIGNALS.stop.lock().unwrap_or_else(|e| e.into_inner()) = Some(stop.clone());
    // A signal that came during start-up found no handle: act on it now.
    if SIGNALS.seen.load(std::sync::atomic::Ordering::SeqCst) > 0 {
        tracing::info!(
            "started after a signal: stopping: finishing the frames received, flushing output"
        );
        stop.stop();
    }
}

/// Prints the ready line, runs until SIGINT or SIGTERM, stops gracefully, prints the stopped
/// line and the final log. `what` names the server in errors.
pub fn run_until_signal(
    opts: &ServeOptions,
    observe: &ObserveOptions,
    running: Running,
    input: &str,
    what: &str,
) -> Result<()> {
    install_signal_handlers()?;
    let observers = match Observers::start(observe, running.metrics()) {
        Ok(o) => o,
        Err(e) => {
            running.stop();
            let _ = running.join();
            return Err(e);
        }
    };
    print_line(&ready_line_with_metrics(
        input,
        running.cpus().len(),
        observers.metrics_addr(),
    ));
    stop_on_signal(running.stop_handle());
    let report = running.join();
    drop(observers);
    let report = report.with_context(|| format!("running the {what}"))?;
    print_line(&stopped_line(&report));
    let t = report.total();
    tracing::info!(
        "stopped: {} frames ({} rejected), {} records, {} outputs, {} bytes out",
        t.frames_in,
        t.frames_rejected,
        t.records_in,
        t.outputs,
        t.bytes_out
    );
    tracing::info!("final metrics: {}", snapshot_json(&t));
    if opts.resilience_dir.is_some() && t.checkpoints > 0 {
        tracing::info!(
            "checkpoint pauses: longest {:.3} ms, mean {:.3} ms over {} core snapshots",
            report
                .metrics
                .iter()
                .map(|m| m.checkpoint_pause_us_max)
                .max()
                .unwrap_or(0) as f64
                / 1e3,
            t.checkpoint_pause_us_total as f64 / t.checkpoints as f64 / 1e3,
            t.checkpoints
        );
    }
    if t.sink_bytes_dropped > 0 {
        bail!(
            "{} bytes of output were never written: the receiver at {} stayed unreachable or \
             took nothing for {:?} after the stop (--shutdown-grace)",
            t.sink_bytes_dropped,
            opts.output,
            opts.limits.shutdown_grace
        );
    }
    Ok(())
}

/// The line `serve` prints on stdout once it listens:
/// `{"event":"ready","in":"HOST:PORT","cores":N}`, with the address it really listens on (the
/// port chosen when `--in` asked for port 0) and the number of cores it runs on. With a file
/// source, `in` is `--in` as given (`file:PATH`).
///
/// ```
/// assert_eq!(
///     bettong::serve::ready_line("127.0.0.1:7000", 2),
///     r#"{"event":"ready","in":"127.0.0.1:7000","cores":2}"#
/// );
/// ```
pub fn ready_line(input: &str, cores: usize) -> String {
    ready_line_with_metrics(input, cores, None)
}

/// [`ready_line`], with `"metrics":"HOST:PORT"` at its end when the metrics are served
/// (`--metrics-addr`; the port chosen when it asked for port 0).
///
/// ```
/// assert_eq!(
///     bettong::serve::ready_line_with_metrics("127.0.0.1:7000", 2, "127.0.0.1:9100".parse().ok()),
///     r#"{"event":"ready","in":"127.0.0.1:7000","cores":2,"metrics":"127.0.0.1:9100"}"#
/// );
/// ```
pub fn ready_line_with_metrics(input: &str, cores: usize, metrics: Option<SocketAddr>) -> String {
    let input = serde_json::Value::from(input);
    match metrics {
        Some(m) => format!(r#"{{"event":"ready","in":{input},"cores":{cores},"metrics":"{m}"}}"#),
        None => format!(r#"{{"event":"ready","in":{input},"cores":{cores}}}"#),
    }
}

/// The first line of a server command's log, before anything else it logs: the command, its
/// version and pid, and the addresses it is given: where it listens (`--in`), where it writes
/// (`--out`) and where its metrics are served (`--metrics-addr`). Ports given as 0 are chosen at
/// start: the ready line on stdout and the next log lines say which.
pub fn first_line(command: &str, observe: &ObserveOptions, opts: &ServeOptions) {
    tracing::info!(
        "bettong {} {command} (pid {}): listening on {} (--in), output to {} (--out), metrics {}",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        opts.input,
        opts.output,
        match &observe.metrics_addr {
            Some(a) => format!("on {a} (--metrics-addr)"),
            None => "not served (no --metrics-addr)".into(),
        }
    );
}

/// The line `serve` prints on stdout once it has stopped (gracefully or not, before its exit
/// status says which): `{"event":"stopped","metrics":{...},"per_core":[{...},...]}`, where
/// `metrics` is every counter of [`MetricsSnapshot`] summed over the cores and `per_core` each
/// core's own, in core order, fields in the snapshot's order.
pub fn stopped_line(report: &Report) -> String {
    let mut line = String::from(r#"{"event":"stopped","metrics":"#);
    push_snapshot(&mut line, &report.total());
    line.push_str(r#","per_core":["#);
    for (i, m) in report.metrics.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        push_snapshot(&mut line, m);
    }
    line.push_str("]}");
    line
}

/// `m` as one JSON object of its counters (the `metrics` of [`stopped_line`]).
pub fn snapshot_json(m: &MetricsSnapshot) -> String {
    let mut out = String::new();
    push_snapshot(&mut out, m);
    out
}

/// Appends `m` as a JSON object of its counters, every one of them, in the snapshot's order.
fn push_snapshot(out: &mut String, m: &MetricsSnapshot) {
    let fields = m.fields();
    out.push('{');
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, r#""{name}":{value}"#);
    }
    out.push('}');
}

/// Prints one machine-readable line on stdout and flushes it. A stdout nobody reads (closed)
/// does not stop the server: the failure is logged.
fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        tracing::warn!("cannot write to stdout: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every counter the engine displays is in the JSON, with its value, in the same order.
    #[test]
    fn stopped_line_has_every_counter() {
        let a = MetricsSnapshot {
            frames_in: 3,
            checkpoint_bytes_last: 7,
            ..Default::default()
        };
        let b = MetricsSnapshot {
            frames_in: 4,
            sink_bytes_dropped: 1,
            ..Default::default()
        };
        let report = Report {
            outputs: Vec::new(),
            metrics: vec![a, b],
        };
        let line = stopped_line(&report);
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(v["event"], "stopped");
        let displayed = |m: &MetricsSnapshot| -> Vec<(String, u64)> {
            m.to_string()
                .split_whitespace()
                .map(|kv| {
                    let (k, v) = kv.split_once('=').expect("name=value");
                    (k.to_string(), v.parse().expect("a number"))
                })
                .collect()
        };
        let as_pairs = |v: &serde_json::Value| -> Vec<(String, u64)> {
            v.as_object()
                .expect("an object")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_u64().expect("a number")))
                .collect()
        };
        let mut want = displayed(&report.total());
        let mut got = as_pairs(&v["metrics"]);
        want.sort();
        got.sort();
        assert_eq!(got, want);
        assert_eq!(v["metrics"]["frames_in"], 7);
        let per_core = v["per_core"].as_array().expect("an array");
        assert_eq!(per_core.len(), 2);
        assert_eq!(per_core[1]["sink_bytes_dropped"], 1);
        assert!(line.contains(r#""metrics":{"connections_accepted":0,"#));
    }

    #[test]
    fn ready_line_escapes_the_input() {
        let line = ready_line("file:/tmp/a \"b\".bin", 1);
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(v["in"], "file:/tmp/a \"b\".bin");
        assert_eq!(v["cores"], 1);
    }

    #[test]
    fn the_read_buffer_knob_takes_bytes_in_range_and_says_what_is_wrong() {
        assert_eq!(parse_read_buffer("16384").unwrap(), 16384);
        assert_eq!(parse_read_buffer(" 4096 ").unwrap(), 4096);
        for bad in ["4095", "2000000", "16k", ""] {
            let e = parse_read_buffer(bad).unwrap_err().to_string();
            assert!(
                e.contains("BETTONG_READ_BUFFER") && e.contains("4096 to 1048576"),
                "{e}"
            );
        }
    }
}
