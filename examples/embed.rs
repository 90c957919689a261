//! Embedding Bettong: word count run entirely inside this process, with no sockets.
//!
//! This example exists to show the smallest complete use of the engine as a library: build the
//! word-count app, feed it from memory, collect its output from memory, and read its metrics.
//! It also marks the one place where data crosses cores, so you can see what is shared and what
//! is not.
//!
//! ```sh
//! cargo run --release --example embed                            # every core, 20 000 passes
//! cargo run --release --example embed -- --cores 1 --repeat 5000
//! ```

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bettong::corpus::{frame_lines, BILL_OF_RIGHTS};
use bettong_engine::{online_cpus, Engine, MemorySource, SinkConfig, SourceConfig};

fn main() -> Result<()> {
    let (cores, repeat) = parse_args()?;

    // The input: the Bill of Rights, one frame per non-empty line (4-byte length + text), fed
    // `repeat` times. The buffer is shared read-only (an `Arc<[u8]>`) by every core: each core
    // reads its own contiguous share of the frames, so nothing crosses cores on the way in.
    let source = MemorySource::from_framed(frame_lines(BILL_OF_RIGHTS))?.repeat(repeat);
    let frames = source.frames() * repeat;

    // The app: `bettong::app::word_count()` is
    //
    //   Pipeline::text()                                   on the core that read the frame
    //       .flat_map(split into words)                    on the core that read the frame
    //       .key_by(|word| (word, ()))                     <- THE ONLY CROSSING: each word is
    //                                                         hashed and, unless this core owns
    //                                                         it, copied into a batch for its
    //                                                         owner core (SPSC ring, no locks)
    //       .state(count += 1)                             on the owner core, in its own shard
    //       .encode("word => count\n")                     on the owner core, into its own sink
    //
    // Each core gets its own clone of the pipeline; no state is shared between cores.
    let app = bettong::app::word_count();

    println!(
        "word count on {cores} core(s), {frames} frames ({repeat} x the Bill of Rights), in memory"
    );
    let start = Instant::now();
    // `run` starts one pinned executor per core and waits until the memory source is consumed
    // and every core has flushed. With `SinkConfig::Memory` each core keeps its own output.
    let report =
        Engine::new()
            .cores(cores)
            .run(app, SourceConfig::Memory(source), SinkConfig::Memory)?;
    let elapsed = start.elapsed();

    // Back on the main thread: the cores have stopped and handed their outputs over (this is
    // the second place data leaves a core, once, at the end). `report.outputs[i]` is core i's
    // output in the order it produced it. A word lives on exactly one core, so its lines are
    // all in that core's output and its last line holds its final count.
    let mut counts: HashMap<&str, u64> = HashMap::new();
    for output in &report.outputs {
        let text = std::str::from_utf8(output).context("output is not UTF-8")?;
        for line in text.lines() {
            let Some((word, n)) = line.rsplit_once(" => ") else {
                bail!("unexpected output line {line:?}");
            };
            counts.insert(word, n.parse()?);
        }
    }
    let mut top: Vec<(&str, u64)> = counts.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    println!("top 10 words:");
    for (word, n) in top.iter().take(10) {
        println!("  {word:>12} => {n}");
    }

    // Metrics are per core; `total()` sums them. `records_routed` counts the words that crossed
    // to another core, `records_local` those whose owner was the core that read them.
    let t = report.total();
    let secs = elapsed.as_secs_f64();
    println!(
        "{} frames, {} words in {secs:.2} s: {:.0} frames/s, {:.0} words/s",
        t.frames_in,
        t.records_in,
        t.frames_in as f64 / secs,
        t.records_in as f64 / secs,
    );
    println!(
        "{} words stayed on the core that read them, {} crossed to their owner core",
        t.records_local, t.records_routed
    );
    for (i, m) in report.metrics.iter().enumerate() {
        println!(
            "  core {i}: read {} frames, owns {} words, wrote {} output lines",
            m.frames_in, m.keys, m.outputs
        );
    }
    Ok(())
}

/// `--cores N` (default: every online core) and `--repeat N` (default: 20 000).
fn parse_args() -> Result<(usize, usize)> {
    let mut cores = online_cpus().len();
    let mut repeat = 20_000;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> Result<usize> {
            let v = args
                .next()
                .with_context(|| format!("{name} needs a value"))?;
            v.parse()
                .with_context(|| format!("{name} expects a number, got {v:?}"))
        };
        match arg.as_str() {
            "--cores" => cores = value("--cores")?,
            "--repeat" => repeat = value("--repeat")?,
            other => bail!("unknown argument {other:?} (expected --cores N or --repeat N)"),
        }
    }
    Ok((cores, repeat))
}
