//! Where the server and the bench's clients run (`--cpus`, `--client-cpus`), and the word-count
//! bench's figures: placement printed, every phase's rates from one window of messages whose
//! output arrived, per-core counters as a table and in full in the JSON.

use std::time::Duration;

use bettong::bench::{run_bench, BenchOptions};
use bettong::cli::{Cli, Command};
use bettong_engine::placement::system_cpus;
use clap::Parser;

use crate::support::*;

fn bench_args(args: &[&str]) -> bettong::cli::BenchArgs {
    let mut all = vec!["bettong", "bench"];
    all.extend_from_slice(args);
    match Cli::try_parse_from(all).unwrap().command {
        Some(Command::Bench(b)) => b,
        other => panic!("not the bench: {other:?}"),
    }
}

#[test]
fn cpu_lists_parse_on_serve_and_bench_and_bad_ones_are_refused() {
    let o = bench_args(&["--cpus", "2-5", "--client-cpus", "0,1"]).to_options();
    assert_eq!(o.cpus, Some(vec![2, 3, 4, 5]));
    assert_eq!(o.client_cpus, Some(vec![0, 1]));
    let o = bench_args(&[]).to_options();
    assert_eq!((o.cpus, o.client_cpus), (None, None));
    assert!(!o.sweep);
    let b = bench_args(&["--sweep", "--sweep-out", "docs/x"]);
    assert!(b.to_options().sweep);
    assert_eq!(b.sweep_out, std::path::PathBuf::from("docs/x"));
    assert!(bench_args(&["--sweep", "--app", "market-spread"])
        .to_market_options()
        .is_err());
    let cli = Cli::try_parse_from([
        "bettong", "serve", "--in", "a:1", "--out", "b:2", "--cpus", "1",
    ])
    .unwrap();
    let Some(Command::Serve(s)) = cli.command else {
        panic!("not serve");
    };
    assert_eq!(s.options().cpus, Some(vec![1]));
    for bad in ["", "x", "3-1", "1,,2"] {
        let e = Cli::try_parse_from(["bettong", "bench", "--cpus", bad]).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("--cpus") && e.contains("CPU list"),
            "{bad:?}: {e}"
        );
    }
}

#[test]
fn serve_pins_its_cores_to_the_cpus_given_and_refuses_offline_ones() {
    let cpus = system_cpus();
    let last = *cpus.last().unwrap();
    let receiver = start_receiver();
    let out = receiver.local_addr().to_string();
    let serve = |cpus: &str| -> Vec<String> {
        [
            "serve",
            "--in",
            "127.0.0.1:0",
            "--out",
            &out,
            "--cpus",
            cpus,
        ]
        .map(String::from)
        .into()
    };
    let args = serve(&last.to_string());
    let mut server = Server::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let said = format!("with 1 cores (CPUs [{last}])");
    assert!(
        server.wait_for_stderr(&said, Duration::from_secs(20)),
        "serve --cpus {last} must run one core on CPU {last}; its stderr:\n{}",
        server.stderr()
    );
    server.signal("TERM");
    assert!(server.wait_exit(Duration::from_secs(20)).success());

    let args = serve("1000");
    let (status, log) = run_to_exit(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("CPU 1000 is not online"), "{log}");
}

fn tiny() -> BenchOptions {
    BenchOptions {
        messages: 4_000,
        repeat: 2,
        connections: 2,
        rate: Some(3_000),
        duration: Duration::from_millis(500),
        ..BenchOptions::default()
    }
}

#[test]
fn the_loopback_bench_places_its_clients_apart_and_its_figures_add_up() {
    let cpus = bettong_engine::online_cpus();
    let r = run_bench(&tiny()).unwrap();
    // The default: clients on the first CPU, the server on the others (1 CPU: shared).
    if cpus.len() >= 2 {
        assert_eq!(r.server_cpus, cpus[1..]);
        assert_eq!(r.client_cpus, [cpus[0]]);
        assert!(
            r.clients.contains("(separate from the server)"),
            "{}",
            r.clients
        );
    } else {
        assert!(
            r.clients.contains("(shared with the server)"),
            "{}",
            r.clients
        );
    }
    let table = r.table();
    assert!(
        table.lines().next().unwrap().contains(&r.clients),
        "the placement is the table's first line:\n{table}"
    );
    let full = &r.phases[0];
    // Every message sent was taken in and every word's output line arrived, in one window.
    assert_eq!(full.messages, 4_000 * 2, "{table}");
    assert_eq!(full.words, full.lines, "{table}");
    assert_eq!(full.words, 4_000 * 2 * 10, "{table}");
    let rated = &r.phases[1];
    assert_eq!(rated.target_rate, Some(3_000));
    let probes = rated.probe_latency.expect("probe latency").count;
    assert!(probes >= 100, "{table}");
    // The paced messages (1500) and the probes, each with its output.
    assert_eq!(rated.messages, 1_500 + probes, "{table}");
    assert_eq!(rated.words, rated.lines, "{table}");
    // The stages of the fixed-rate phase, on the server's cores, beside the probe latency.
    for stage in [
        "arrival_to_decode",
        "decode_to_apply_local",
        "apply_to_sink_buffer",
        "sink_buffer_to_write",
    ] {
        assert!(
            rated.stages.iter().any(|s| s.stage == stage && s.count > 0),
            "{stage} missing:\n{table}"
        );
        assert!(table.contains(&format!("  {stage} ")), "{table}");
    }
    assert!(rated.stages.iter().all(|s| s.core < r.server_cpus.len()));

    // Per-core counters: a table in the text, every counter in the JSON.
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().next() == Some("records_in")),
        "{table}"
    );
    let j = r.json();
    let core0 = j["per_core"][0].as_object().unwrap();
    assert!(core0.contains_key("ring_full_stalls") && core0.contains_key("records_in"));
    assert_eq!(j["server_cpus"], serde_json::json!(r.server_cpus));
    assert_eq!(j["client_cpus"], serde_json::json!(r.client_cpus));
    let kind = if cpus.len() >= 2 {
        "separate"
    } else {
        "shared"
    };
    assert_eq!(j["placement"], kind);
}

#[test]
fn explicit_shared_placement_is_said_and_kept() {
    let cpus = bettong_engine::online_cpus();
    let all = cpus.clone();
    let r = run_bench(&BenchOptions {
        cpus: Some(all.clone()),
        client_cpus: Some(all.clone()),
        rate: Some(0),
        ..tiny()
    })
    .unwrap();
    assert_eq!(r.server_cpus, all);
    assert_eq!(r.client_cpus, all);
    assert_eq!(r.per_core.len(), all.len());
    assert_eq!(r.phases.len(), 1);
    assert_eq!(r.json()["placement"], "shared");
    if all.len() >= 2 {
        // Two cores: words cross between them, and that stage is timed.
        let crossed = r.phases[0]
            .stages
            .iter()
            .filter(|s| s.stage == "decode_to_apply_crossed")
            .count();
        assert!(crossed > 0, "{}", r.table());
    }
}

#[test]
fn the_bench_measures_an_external_server_with_the_same_clients() {
    // `bettong serve` as the other process: every message's words come back as lines, and the
    // probes are matched, as for the engine in process.
    let cmd = format!(
        "{} serve --in {{IN}} --out {{OUT}} --cores 1 --progress-interval 0",
        env!("CARGO_BIN_EXE_bettong")
    );
    let r = run_bench(&BenchOptions {
        server_cmd: Some(cmd),
        ..tiny()
    })
    .unwrap();
    assert_eq!(r.mode, "external");
    assert!(
        r.per_core.is_empty(),
        "an external server has no engine counters"
    );
    assert_eq!(r.phases.len(), 2);
    let full = &r.phases[0];
    assert_eq!(full.lines, full.words);
    // tiny(): 4000 synthetic messages sent twice, each with at least one word.
    assert_eq!(full.messages, 8_000);
    assert!(
        full.lines >= 8_000,
        "{} lines for 8000 messages",
        full.lines
    );
    let paced = &r.phases[1];
    let probes = paced.probe_latency.expect("the paced phase has probes");
    assert!(probes.count > 0, "no probe was matched");
    assert!(
        paced.messages >= 1_500 + probes.count,
        "{} messages",
        paced.messages
    );
    assert!(paced.engine_latency.count == 0 && paced.stages.is_empty());
    assert!(
        r.table().contains("bettong bench (external)"),
        "{}",
        r.table()
    );
}
