//! The `bettong` binary: a thin command-line layer over the `bettong` library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use bettong::cli::{BenchApp, BenchArgs, Cli, Command};
use bettong::nats::cli as nats;

fn main() -> ExitCode {
    let cli = Cli::parse();
    bettong::logging::init(cli.log_format);
    let result = match cli
        .command
        .unwrap_or(Command::Bench(BenchArgs::default_run()))
    {
        Command::Serve(a) if nats::is_nats(&a.input) && a.nats.job.is_some() => {
            nats::serve_member(&a)
        }
        Command::Serve(a) if nats::is_nats(&a.input) || nats::is_nats(&a.output) => {
            bettong::nats::standalone::serve(a)
        }
        Command::Serve(a) => nats::refuse_cluster_flags(&a.nats)
            .and_then(|()| bettong::serve::serve(&a.observe(), &a.options())),
        Command::MarketSpread(a) => market_spread(a),
        Command::Send(a) if a.nats.nats.is_some() => nats::send(&a),
        Command::Receive(a) if a.nats.nats.is_some() => nats::receive(&a),
        Command::Cluster(c) => nats::cluster(&c),
        Command::Send(a) => a
            .to_options(std::io::stderr().is_terminal())
            .and_then(|o| bettong::send::run_send(&o))
            .map(|r| {
                eprintln!(
                    "sent {} messages ({} bytes) over {} connections in {:.2?}: {:.0} msgs/s",
                    r.messages,
                    r.bytes,
                    r.connections,
                    r.elapsed,
                    r.messages_per_sec()
                )
            }),
        Command::Receive(a) => a.to_options().and_then(|opts| {
            bettong::receive::run_receive(&opts, &mut std::io::stdout().lock()).and_then(|r| {
                eprintln!(
                    "received {} {}, {} bytes over {} connections in {:.2?}",
                    r.lines,
                    if r.market_spread { "results" } else { "lines" },
                    r.bytes,
                    r.connections,
                    r.elapsed
                );
                r.check()
            })
        }),
        Command::Demo(a) => bettong::demo::run_demo(&a),
        Command::Bench(a) => run_bench(&a).map(|(json, table)| {
            if a.json {
                println!("{json}");
            } else {
                print!("{table}");
            }
        }),
        Command::MarketGen(a) => {
            bettong::market_spread::gen::write_files(&a.to_options(), &a.orders, &a.nbbo).map(|s| {
                eprintln!(
                    "market-gen: wrote {} orders ({} bytes) to {} and {} quotes ({} bytes) to {} \
                     over {} symbols; {} symbols reject after their last quote, so {} orders get \
                     a result when every quote is sent first",
                    s.orders,
                    s.order_bytes,
                    a.orders.display(),
                    s.quotes,
                    s.nbbo_bytes,
                    a.nbbo.display(),
                    s.symbols,
                    s.rejecting_symbols,
                    s.results
                )
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bettong: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `bettong bench`: runs the bench of the app asked for; returns its JSON report and its table.
fn run_bench(a: &BenchArgs) -> anyhow::Result<(serde_json::Value, String)> {
    match a.app {
        BenchApp::WordCount => {
            let r = bettong::bench::run_bench(&a.to_options())?;
            let mut table = r.table();
            if a.sweep {
                let (csv, svg) = bettong::sweep::write(&r, &a.sweep_out)?;
                table += &format!("sweep: {} and {}\n", csv.display(), svg.display());
            }
            Ok((r.json(), table))
        }
        BenchApp::MarketSpread => a
            .to_market_options()
            .and_then(|o| bettong::market_spread::bench::run_market_bench(&o))
            .map(|r| (r.json(), r.table())),
    }
}

/// `market-spread`: `--partitions` and `--in-partitions` apply where a stream is `nats://…`.
fn market_spread(a: bettong::cli::ServeArgs) -> anyhow::Result<()> {
    let uses_nats = a.input.contains("nats://") || nats::is_nats(&a.output);
    bettong::nats::standalone::refuse_member_flags(&a.nats, uses_nats)?;
    let partitions = a.nats.partitions.unwrap_or(nats::DEFAULT_PARTITIONS);
    let in_partitions = a.nats.in_partitions.unwrap_or(nats::DEFAULT_IN_PARTITIONS);
    let observe = a.observe();
    bettong::market_spread::serve::serve(&observe, &a.options(), (partitions, in_partitions))
}
