//! `bettong serve`: the word-count server, and the address parsing and signal handling it needs.
//!
//! The server runs [`crate::app::word_count`] on every core with the TCP source on `--in` and the
//! TCP sink on `--out`. SIGINT or SIGTERM stops it gracefully (stop accepting, finish the frames
//! received, flush every sink connection, exit 0); a second signal exits at once.

use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::{bail, Context, Result};
use bettong_engine::{Engine, Running, SinkConfig, SourceConfig, TcpSinkConfig, TcpSourceConfig};

/// What `bettong serve` needs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// `[NAME@]HOST:PORT` to listen on.
    pub input: String,
    /// `HOST:PORT` of the receiver.
    pub output: String,
    /// Cores to run on (default: every online core).
    pub cores: Option<usize>,
    /// Largest accepted frame payload, in bytes.
    pub max_frame: usize,
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

/// Starts the word-count server and returns it running (tests and the bench use this).
pub fn start_server(opts: &ServeOptions) -> Result<Running> {
    let (name, input) = parse_input(&opts.input)?;
    let output = resolve(&opts.output, "--out")?;
    if opts.max_frame == 0 || opts.max_frame > u32::MAX as usize {
        bail!(
            "--max-frame {} is out of range: it must be between 1 and {} bytes",
            opts.max_frame,
            u32::MAX
        );
    }
    let mut source = TcpSourceConfig::new(input);
    source.max_frame = opts.max_frame;
    let mut engine = Engine::new();
    if let Some(n) = opts.cores {
        engine = engine.cores(n);
    }
    let running = engine
        .start(
            crate::app::word_count(),
            SourceConfig::Tcp(source),
            SinkConfig::Tcp(TcpSinkConfig::new(output)),
        )
        .with_context(|| format!("starting the word-count server on {}", opts.input))?;
    tracing::info!(
        source = name.as_deref().unwrap_or("-"),
        "listening on {} with {} cores (CPUs {:?}); output to {output}",
        running
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        running.cpus().len(),
        running.cpus()
    );
    Ok(running)
}

/// Runs the server until SIGINT or SIGTERM, then stops it gracefully.
pub fn serve(opts: &ServeOptions) -> Result<()> {
    let running = start_server(opts)?;
    let stop = running.stop_handle();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("installing the SIGINT/SIGTERM handlers")?;
    std::thread::Builder::new()
        .name("bettong-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                seen += 1;
                if seen == 1 {
                    tracing::info!(
                        "signal {sig}: stopping: no new connections, finishing the frames \
                         received, flushing output (signal again to exit at once)"
                    );
                    stop.stop();
                } else {
                    tracing::warn!("second signal {sig}: exiting at once without flushing");
                    std::process::exit(130);
                }
            }
        })
        .context("starting the signal thread")?;
    let report = running.join().context("running the word-count server")?;
    let t = report.total();
    tracing::info!(
        "stopped: {} frames ({} rejected), {} words, {} outputs, {} bytes out",
        t.frames_in,
        t.frames_rejected,
        t.records_in,
        t.outputs,
        t.bytes_out
    );
    Ok(())
}
