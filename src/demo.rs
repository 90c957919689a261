//! The first-run demo: the server on every core, a built-in sender feeding the Bill of Rights and
//! a built-in receiver that checks the output contract, all on loopback. It prints the top words
//! and the messages per second reached.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cli::DemoArgs;
use crate::corpus::{count_frames, frame_lines, BILL_OF_RIGHTS};
use crate::receive::Receiver;
use crate::send::{run_send, SendOptions, SendSource};
use crate::serve::{start_server, ServeOptions};

/// Runs the demo and prints its summary to stdout.
pub fn run_demo(args: &DemoArgs) -> Result<()> {
    let framed = frame_lines(BILL_OF_RIGHTS);
    let frames = count_frames(&framed)? as u64;
    let words_per_pass: u64 = BILL_OF_RIGHTS
        .lines()
        .map(|l| crate::split::words(l).count() as u64)
        .sum();
    let receiver = Receiver::start("127.0.0.1:0", true).context("starting the demo receiver")?;
    let server = start_server(&ServeOptions {
        input: "demo@127.0.0.1:0".into(),
        output: receiver.local_addr().to_string(),
        cores: args.cores,
        cpus: None,
        max_frame: bettong_engine::codec::DEFAULT_MAX_FRAME,
        resilience_dir: None,
        checkpoint_interval: std::time::Duration::from_secs(1),
        limits: Default::default(),
    })?;
    let addr = server
        .local_addr()
        .context("the server reported no listening address")?;
    println!(
        "bettong demo: word count on {} core(s) (CPUs {:?}), listening on {addr}",
        server.cpus().len(),
        server.cpus()
    );
    println!(
        "sending the Bill of Rights ({frames} messages, {words_per_pass} words) {} times over {} connections…",
        args.repeat, args.connections
    );
    let mut opts = SendOptions::new(vec![addr.to_string()], SendSource::Bytes(framed));
    opts.repeat = args.repeat;
    opts.connections = args.connections.max(1);
    opts.progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let start = Instant::now();
    let sent = run_send(&opts).context("sending the demo input")?;
    let expected = words_per_pass * args.repeat;
    if !receiver.wait_for_lines(expected, Duration::from_secs(120)) {
        bail!(
            "only {} of {expected} output lines arrived within 120 s",
            receiver.lines()
        );
    }
    let elapsed = start.elapsed();
    server.stop();
    let report = server.join().context("stopping the demo server")?;
    let received = receiver.finish()?;
    received.check()?;
    let mut top: Vec<(String, u64)> = received.counts.unwrap_or_default().into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    println!("top words:");
    for (w, c) in top.iter().take(10) {
        println!("  {w:>12} => {c}");
    }
    let secs = elapsed.as_secs_f64();
    let t = report.total();
    println!(
        "{} messages ({} words) in {:.2} s: {:.0} messages/s, {:.0} words/s; {} output lines, all in order",
        sent.messages,
        t.records_in,
        secs,
        sent.messages as f64 / secs,
        t.records_in as f64 / secs,
        received.lines
    );
    Ok(())
}
