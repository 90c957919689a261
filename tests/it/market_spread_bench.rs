//! `bettong bench --app market-spread` on tiny inputs: the report must add up (every frame sent
//! counted, the reference's results all delivered, every probe timed), in-process and over
//! loopback.

use std::time::Duration;

use bettong::bench::BenchOptions;
use bettong::cli::{BenchApp, Cli, Command};
use bettong::corpus::split_frames;
use bettong::market_spread::bench::{run_market_bench, MarketBenchOptions, PROBE_SYMBOL};
use bettong::market_spread::gen::{generate, GenOptions};
use bettong::market_spread::reference::expected_results;
use clap::Parser;

fn tiny(in_process: bool) -> MarketBenchOptions {
    MarketBenchOptions {
        run: BenchOptions {
            in_process,
            repeat: 2,
            cores: Some(2),
            connections: 2,
            rate: Some(2_000),
            duration: Duration::from_millis(600),
            ..BenchOptions::default()
        },
        gen: GenOptions {
            symbols: 350,
            orders: 3_000,
            quotes: 500,
            seed: 5,
        },
    }
}

#[test]
fn the_cli_selects_the_market_spread_bench() {
    let cli = Cli::try_parse_from([
        "bettong",
        "bench",
        "--app",
        "market-spread",
        "--orders",
        "1000",
        "--quotes",
        "400",
        "--repeat",
        "4",
        "--in-process",
    ])
    .unwrap();
    let Some(Command::Bench(args)) = cli.command else {
        panic!("not the bench: {cli:?}");
    };
    assert_eq!(args.app, BenchApp::MarketSpread);
    let o = args.to_market_options().unwrap();
    assert!(o.run.in_process);
    assert_eq!(
        (o.gen.orders, o.gen.quotes, o.gen.symbols),
        (1000, 400, 350)
    );
    assert_eq!(o.run.repeat, 4);
    let Some(Command::Bench(args)) = Cli::try_parse_from(["bettong", "bench"]).unwrap().command
    else {
        panic!("not the bench");
    };
    assert_eq!(args.app, BenchApp::WordCount);
    let defaults = args.to_market_options().unwrap();
    assert_eq!(
        (defaults.gen.orders, defaults.gen.quotes),
        (1_000_000, 200_000)
    );
}

#[test]
fn in_process_counts_every_frame_and_makes_results() {
    let opts = tiny(true);
    let r = run_market_bench(&opts).unwrap();
    assert_eq!(r.mode, "in-process");
    assert_eq!(r.phases.len(), 1);
    let p = &r.phases[0];
    assert_eq!(p.orders, 3_000 * 2);
    assert_eq!(p.quotes, 500);
    assert_eq!(p.frames_in, 3_000 * 2 + 500);
    assert_eq!(p.messages(), p.frames_in);
    assert!(p.results() > 0 && p.results() <= p.orders, "{p:?}");
    assert!(p.msgs_per_sec() > 0.0);
    assert!(r.keys > 0 && r.keys <= 350, "{}", r.keys);
    assert_eq!(r.per_core.len(), 2);
    assert_eq!(r.server_cpus.len(), 2);
    let j = r.json();
    assert_eq!(j["app"], "market-spread");
    assert_eq!(j["phases"][0]["frames_in"], 6_500);
    assert!(j["msgs_per_sec"].as_f64().unwrap() > 0.0);
    assert!(j["latency_us"]["probe"].is_null());
    assert!(j["latency_us"]["engine"]["p99"].is_u64());
    assert!(r.table().contains("in-process"), "{}", r.table());
}

#[test]
fn loopback_delivers_every_expected_result_and_times_probes() {
    let opts = tiny(false);
    // The reference, computed apart from the bench: quotes all first, then the orders.
    let (orders, quotes) = generate(&opts.gen).unwrap();
    let per_pass = expected_results(
        &split_frames(&quotes).unwrap(),
        &split_frames(&orders).unwrap(),
    )
    .len() as u64;
    assert!(per_pass > 0);

    let r = run_market_bench(&opts).unwrap();
    assert_eq!(r.mode, "loopback");
    assert_eq!(r.phases.len(), 2, "{}", r.table());
    let full = &r.phases[0];
    assert_eq!((full.quotes, full.orders), (500, 3_000 * 2));
    assert_eq!(full.frames_in, full.messages());
    assert_eq!(full.expected_results, Some(per_pass * 2));
    assert_eq!(full.results(), per_pass * 2, "{}", r.table());
    assert!(full.msgs_per_sec() > 0.0 && full.orders_per_sec() > 0.0);

    let rated = &r.phases[1];
    assert_eq!(rated.phase.target_rate, Some(2_000));
    assert_eq!(rated.orders, 1_200); // 2000/s for 0.6 s
    assert!(rated.probes >= 50, "{rated:?}");
    assert_eq!(rated.frames_in, rated.orders + rated.probes);
    // Every probe's symbol is never quoted, so every probe gets a result, and each was timed.
    assert!(rated.results() >= rated.probes, "{rated:?}");
    let probe = rated.phase.probe_latency.expect("probe latency");
    assert_eq!(probe.count, rated.probes, "{}", r.table());
    assert!(probe.p50 > 0 && probe.max >= probe.p99 && probe.p99 >= probe.p50);
    assert!(rated.phase.engine_latency.count > 0);

    // 350 symbols plus the probe symbol, never quoted but held once an order asked for it.
    assert_eq!(r.keys, 351, "{PROBE_SYMBOL:?}");
    let j = r.json();
    assert_eq!(j["mode"], "loopback");
    assert!(j["orders_per_sec"].as_f64().unwrap() > 0.0);
    assert!(j["results_per_sec"].as_f64().unwrap() > 0.0);
    assert_eq!(j["latency_us"]["probe"]["count"], rated.probes);
    assert_eq!(j["per_core"].as_array().unwrap().len(), 2);
    let table = r.table();
    assert!(table.contains("fixed rate (2000/s)"), "{table}");
    // Both of this machine's CPUs serve (--cores 2), so the clients share them; said as such.
    assert!(table.contains("shared with the server"), "{table}");
    assert!(table.contains("records_in"), "{table}");
}
