//! `bettong market-spread`: the Market Spread server, with Wallaroo's `--in` form.
//!
//! `--in Orders@HOST:PORT,Nbbo@HOST:PORT` (the two names exactly, either order) gives the two
//! TCP sources; either may instead be a NATS input stream, `Orders@nats://HOST:PORT/PREFIX`
//! (the stream `PREFIX_in`, read from its first message, every message many order or quote
//! frames). `--out nats://HOST:PORT/PREFIX` publishes the result frames on `PREFIX.out.<q>`,
//! many per message, `q = fnv1a32(symbol) % --partitions` ([`crate::nats::standalone`]).
//! Everything else (`--out`, `--cores`, limits, `--resilience-dir`, signals, the
//! ready and stopped lines) is shared with `bettong serve` ([`crate::serve`]).

use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use bettong_engine::sink::Records;
use bettong_engine::{Running, SourceConfig};

use super::app::market_spread;
use crate::nats::cli::is_nats;
use crate::nats::engine_sink::Layout;
use crate::nats::standalone::{nats_sink, nats_source, parse_url, Bridge};
use crate::observe::ObserveOptions;
use crate::serve::{
    check_limits, resolve, run_until_signal, start_app, start_app_with_sink, tcp_sink, tcp_source,
    ServeOptions,
};

/// The two source addresses of `--in`, Orders first.
///
/// ```
/// use bettong::market_spread::serve::parse_inputs;
/// let (o, n) = parse_inputs("Nbbo@127.0.0.1:7001,Orders@127.0.0.1:7000").unwrap();
/// assert_eq!((o.port(), n.port()), (7000, 7001));
/// assert!(parse_inputs("orders@127.0.0.1:7000,Nbbo@127.0.0.1:7001").is_err());
/// assert!(parse_inputs("Orders@127.0.0.1:7000").is_err());
/// ```
pub fn parse_inputs(spec: &str) -> Result<(SocketAddr, SocketAddr)> {
    let (orders, nbbo) = parse_sources(spec)?;
    Ok((resolve(&orders, "--in")?, resolve(&nbbo, "--in")?))
}

/// The two source specs of `--in`, Orders first, each `HOST:PORT` or `nats://…`.
///
/// ```
/// use bettong::market_spread::serve::parse_sources;
/// let (o, n) = parse_sources("Nbbo@nats://h:4222/q,Orders@127.0.0.1:7000").unwrap();
/// assert_eq!((o.as_str(), n.as_str()), ("127.0.0.1:7000", "nats://h:4222/q"));
/// assert!(parse_sources("Orders@nats://h:4222/o").is_err());
/// ```
pub fn parse_sources(spec: &str) -> Result<(String, String)> {
    let (mut orders, mut nbbo) = (None, None);
    for part in spec.split(',') {
        let (name, addr) = part.split_once('@').with_context(|| {
            format!(
                "--in {spec:?}: {part:?} has no NAME@ (expected \
                 Orders@HOST:PORT,Nbbo@HOST:PORT, either may be nats://HOST:PORT/PREFIX)"
            )
        })?;
        let slot = match name {
            "Orders" => &mut orders,
            "Nbbo" => &mut nbbo,
            other => bail!(
                "--in {spec:?}: unknown source name {other:?} (the names are Orders and Nbbo, \
                 case-sensitive)"
            ),
        };
        if slot.is_some() {
            bail!("--in {spec:?}: {name} is given twice");
        }
        *slot = Some(addr.to_string());
    }
    match (orders, nbbo) {
        (Some(o), Some(n)) => Ok((o, n)),
        _ => bail!("--in {spec:?} must name both sources: Orders@HOST:PORT,Nbbo@HOST:PORT"),
    }
}

/// Whether `--in` or `--out` names a NATS stream.
pub fn uses_nats(opts: &ServeOptions) -> bool {
    opts.input.contains("nats://") || is_nats(&opts.output)
}

/// Starts the Market Spread server and returns it running, with the NATS bridge it needs when
/// a source or the sink is a NATS stream (`nats`: `--partitions` and `--in-partitions`).
pub fn start_with_nats(opts: &ServeOptions, nats: (u32, u32)) -> Result<(Running, Option<Bridge>)> {
    check_limits(opts)?;
    if !uses_nats(opts) {
        return Ok((start(opts)?, None));
    }
    if opts.resilience_dir.is_some() {
        bail!(
            "--resilience-dir cannot be used with a nats:// source or sink: a NATS input stream \
             is read from its start at every start, so a restored checkpoint would apply it twice"
        );
    }
    let (partitions, in_partitions) = nats;
    let (orders, nbbo) = parse_sources(&opts.input)?;
    let mut inputs = Vec::new();
    let mut sources = Vec::new();
    for (name, spec) in [("Orders", orders), ("Nbbo", nbbo)] {
        if is_nats(&spec) {
            let url = parse_url(&spec, "--in")?;
            let (source, input) = nats_source(&url, opts, in_partitions);
            sources.push(source);
            inputs.push(input);
        } else {
            let addr = resolve(&spec, &format!("--in {name}@"))?;
            sources.push(SourceConfig::Tcp(tcp_source(opts, addr)?));
        }
    }
    let (sink, output) = if is_nats(&opts.output) {
        let url = parse_url(&opts.output, "--out")?;
        // The result payload's symbol: after side (1), account (4) and order id (6).
        let (sink, output) = nats_sink(&url, opts, partitions, Layout::Frames { key: (11, 15) });
        (sink, Some(output))
    } else {
        (tcp_sink(opts, Records::Framed)?, None)
    };
    let bridge = Bridge::start(inputs, output, opts.limits.shutdown_grace)?;
    match start_app_with_sink(opts, market_spread(), sources, sink) {
        Ok(running) => {
            log_started(&running, opts);
            Ok((running, Some(bridge)))
        }
        Err(e) => {
            let _ = bridge.finish();
            Err(e.context(format!(
                "starting the Market Spread server on {}",
                opts.input
            )))
        }
    }
}

/// Starts the Market Spread server (TCP sources) and returns it running.
pub fn start(opts: &ServeOptions) -> Result<Running> {
    check_limits(opts)?;
    let (orders, nbbo) = parse_inputs(&opts.input)?;
    let sources = vec![
        SourceConfig::Tcp(tcp_source(opts, orders)?),
        SourceConfig::Tcp(tcp_source(opts, nbbo)?),
    ];
    let running = start_app(opts, market_spread(), sources, Records::Framed)
        .with_context(|| format!("starting the Market Spread server on {}", opts.input))?;
    log_started(&running, opts);
    Ok(running)
}

fn log_started(running: &Running, opts: &ServeOptions) {
    tracing::info!(
        "Market Spread: Orders on {}, Nbbo on {}, {} cores (CPUs {:?}); results to {}",
        addr(running, 0),
        addr(running, 1),
        running.cpus().len(),
        running.cpus(),
        opts.output
    );
}

fn addr(running: &Running, i: usize) -> String {
    running.local_addrs()[i].map_or_else(|| "a NATS stream".into(), |a| a.to_string())
}

/// Runs the Market Spread server until SIGINT or SIGTERM, then stops it gracefully. Its ready
/// line's `in` is `Orders@HOST:PORT,Nbbo@HOST:PORT` with the ports it really listens on.
pub fn serve(observe: &ObserveOptions, opts: &ServeOptions, nats: (u32, u32)) -> Result<()> {
    // Before start-up, so a signal during a long restore stops gracefully.
    crate::serve::install_signal_handlers()?;
    crate::serve::first_line("market-spread", observe, opts);
    let (running, bridge) = start_with_nats(opts, nats)?;
    let input = if uses_nats(opts) {
        opts.input.clone()
    } else {
        format!("Orders@{},Nbbo@{}", addr(&running, 0), addr(&running, 1))
    };
    let ran = run_until_signal(opts, observe, running, &input, "Market Spread server");
    // The engine has stopped: the bridge publishes what the sink still holds, then ends.
    match bridge {
        Some(b) => ran.and(b.finish()),
        None => ran,
    }
}
