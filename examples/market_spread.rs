//! Market Spread embedded in-process: Wallaroo's performance app, with no sockets.
//!
//! This example exists to show a typed, merged pipeline run as a library: two memory sources
//! (framed orders and framed NBBO quotes from `bettong::market_spread::gen::generate`), each
//! with its own decoder, merged into one state per stock symbol
//! (`bettong::market_spread::app::market_spread()`), and framed 55-byte order results out. The
//! results are checked against the sequential reference answer
//! (`bettong::market_spread::reference::expected_results`): exactly the orders whose symbol's
//! last quote was too wide get a result.
//!
//! The reference applies every quote before any order, in file order. Two sources of one run are
//! read side by side, and a memory source is split between the cores (each reads its own
//! contiguous share), so to give the engine that input order deterministically the example runs
//! twice with checkpoints in a temporary directory: the first run reads only the quotes, on one
//! core so that each symbol's last quote is the file's, and ends with a checkpoint of every
//! symbol's state; the second restores it, re-sharded onto every core, and reads only the
//! orders.
//!
//! ```sh
//! cargo run --release --example market_spread
//! cargo run --release --example market_spread -- --orders 1000000 --cores 1
//! ```

use std::collections::HashSet;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use bettong::corpus::split_frames;
use bettong::market_spread::app::market_spread;
use bettong::market_spread::gen::{generate, GenOptions};
use bettong::market_spread::reference::expected_results;
use bettong::market_spread::OrderResult;
use bettong_engine::{online_cpus, Checkpoints, Engine, MemorySource, SinkConfig, SourceConfig};

fn main() -> Result<()> {
    let (cores, orders) = parse_args()?;
    let opts = GenOptions {
        orders,
        ..GenOptions::default()
    };
    // Deterministic input: the same options give the same bytes. Both buffers are framed
    // (4-byte big-endian length, then a 53-byte order or a 42-byte quote).
    let (order_bytes, nbbo_bytes) = generate(&opts)?;
    let expected = expected_results(&split_frames(&nbbo_bytes)?, &split_frames(&order_bytes)?);
    println!(
        "Market Spread on {cores} core(s): {} symbols, {} quotes, then {} orders",
        opts.symbols, opts.quotes, opts.orders
    );

    let dir = std::env::temp_dir().join(format!("bettong-market-spread-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Sources are given in merge order: Orders (source 0), then Nbbo (source 1).
    let run = |cores: usize, orders: &[u8], nbbo: &[u8]| {
        Engine::new().cores(cores).run_with_checkpoints(
            market_spread(),
            [
                SourceConfig::Memory(MemorySource::from_framed(orders.to_vec())?),
                SourceConfig::Memory(MemorySource::from_framed(nbbo.to_vec())?),
            ],
            SinkConfig::Memory,
            Checkpoints::new(&dir),
        )
    };

    // 1. Every quote, no orders, on one core (in file order): no output, and a final checkpoint
    // of every symbol's state.
    let quotes = run(1, &[], &nbbo_bytes).context("the quotes run")?;
    let t = quotes.total();
    println!(
        "quotes: {} applied, {} symbols held, {} results",
        t.records_applied, t.keys, t.outputs
    );

    // 2. Restore that state, then every order.
    let start = Instant::now();
    let report = run(cores, &order_bytes, &[]).context("the orders run")?;
    let secs = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);

    // Each core's output is framed results, for the symbols that core owns.
    let mut got = HashSet::new();
    for output in &report.outputs {
        for payload in split_frames(output)? {
            let r = OrderResult::parse(payload)
                .map_err(|e| anyhow::anyhow!("a result frame does not parse: {e:?}"))?;
            ensure!(
                got.insert((r.symbol, r.order_id)),
                "order {:?} got two results",
                String::from_utf8_lossy(&r.order_id)
            );
        }
    }
    let t = report.total();
    println!(
        "orders: {} in {secs:.2} s with start and restore ({:.0} orders/s), {} routed to \
         their symbol's owner core",
        t.frames_in,
        t.frames_in as f64 / secs,
        t.records_routed
    );
    println!(
        "results: {} (the sequential reference expects {})",
        got.len(),
        expected.len()
    );
    let want: HashSet<_> = expected.iter().copied().collect();
    if got != want {
        bail!(
            "the results differ from the reference: {} missing, {} unexpected",
            want.difference(&got).count(),
            got.difference(&want).count()
        );
    }
    println!("every expected order got exactly one result, and no other order did");
    Ok(())
}

/// `--cores N` (default: up to 2 online cores) and `--orders N` (default: 100 000).
fn parse_args() -> Result<(usize, u64)> {
    let mut cores = online_cpus().len().min(2);
    let mut orders = GenOptions::default().orders;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> Result<u64> {
            let v = args
                .next()
                .with_context(|| format!("{name} needs a value"))?;
            v.parse()
                .with_context(|| format!("{name} expects a number, got {v:?}"))
        };
        match arg.as_str() {
            "--cores" => cores = value("--cores")? as usize,
            "--orders" => orders = value("--orders")?,
            other => bail!("unknown argument {other:?} (expected --cores N or --orders N)"),
        }
    }
    Ok((cores, orders))
}
