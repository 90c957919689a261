//! `bettong market-spread`: the Market Spread server, with Wallaroo's `--in` form.
//!
//! `--in Orders@HOST:PORT,Nbbo@HOST:PORT` (the two names exactly, either order) gives the two
//! TCP sources; everything else (`--out`, `--cores`, limits, `--resilience-dir`, signals, the
//! ready and stopped lines) is shared with `bettong serve` ([`crate::serve`]).

use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use bettong_engine::sink::Records;
use bettong_engine::{Running, SourceConfig};

use super::app::market_spread;
use crate::observe::ObserveOptions;
use crate::serve::{check_limits, resolve, run_until_signal, start_app, tcp_source, ServeOptions};

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
    let (mut orders, mut nbbo) = (None, None);
    for part in spec.split(',') {
        let Some((name, addr)) = part.split_once('@') else {
            bail!(
                "--in {spec:?}: {part:?} has no NAME@ (expected \
                 Orders@HOST:PORT,Nbbo@HOST:PORT)"
            );
        };
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
        *slot = Some(resolve(addr, "--in")?);
    }
    match (orders, nbbo) {
        (Some(o), Some(n)) => Ok((o, n)),
        _ => bail!("--in {spec:?} must name both sources: Orders@HOST:PORT,Nbbo@HOST:PORT"),
    }
}

/// Starts the Market Spread server and returns it running.
pub fn start(opts: &ServeOptions) -> Result<Running> {
    check_limits(opts)?;
    let (orders, nbbo) = parse_inputs(&opts.input)?;
    let sources = vec![
        SourceConfig::Tcp(tcp_source(opts, orders)?),
        SourceConfig::Tcp(tcp_source(opts, nbbo)?),
    ];
    let running = start_app(opts, market_spread(), sources, Records::Framed)
        .with_context(|| format!("starting the Market Spread server on {}", opts.input))?;
    tracing::info!(
        "Market Spread: Orders on {}, Nbbo on {}, {} cores (CPUs {:?}); results to {}",
        addr(&running, 0),
        addr(&running, 1),
        running.cpus().len(),
        running.cpus(),
        opts.output
    );
    Ok(running)
}

fn addr(running: &Running, i: usize) -> String {
    running.local_addrs()[i].map_or_else(|| "-".into(), |a| a.to_string())
}

/// Runs the Market Spread server until SIGINT or SIGTERM, then stops it gracefully. Its ready
/// line's `in` is `Orders@HOST:PORT,Nbbo@HOST:PORT` with the ports it really listens on.
pub fn serve(observe: &ObserveOptions, opts: &ServeOptions) -> Result<()> {
    // Before start-up, so a signal during a long restore stops gracefully.
    crate::serve::install_signal_handlers()?;
    crate::serve::first_line("market-spread", observe, opts);
    let running = start(opts)?;
    let input = format!("Orders@{},Nbbo@{}", addr(&running, 0), addr(&running, 1));
    run_until_signal(opts, observe, running, &input, "Market Spread server")
}
