//! A chained pipeline: two state steps, two `key_by`s, so records cross cores twice.
//!
//! This example exists to show what follows a state step when it does not end the pipeline.
//! Step one counts each word (keyed by the word); its outputs are keyed again by the word's
//! first letter, and step two keeps, per letter, how many distinct words start with it and how
//! many words in all. Each `key_by` is where records cross to the core that owns their key, and
//! the only place they do: a word's count lives on the word's owner core, a letter's totals on
//! the letter's owner core, which may be another one. The final totals are checked against a
//! plain sequential count.
//!
//! ```sh
//! cargo run --release --example chained
//! cargo run --release --example chained -- 2000   # passes over the Bill of Rights
//! ```

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use anyhow::{bail, ensure, Context, Result};
use bettong::corpus::{frame_lines, BILL_OF_RIGHTS};
use bettong::split::{for_each_word, words};
use bettong_engine::{online_cpus, App, Engine, MemorySource, Pipeline, SinkConfig, SourceConfig};

/// Per letter: distinct words starting with it, and words in all.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Letter {
    distinct: u64,
    words: u64,
}

fn letters() -> impl App {
    Pipeline::text()
        // On the core that read the frame: split it into words, borrowed from the read buffer.
        .flat_map(|text, emit| for_each_word(&text, emit))
        // Crossing 1: each word goes to the core that owns it.
        .key_by(|word| (word, ()))
        // State step 1, on the word's owner: its count. It emits the word's first letter and
        // whether this was the word's first occurrence.
        .state(|word: &str, count: &mut u64, ()| {
            *count += 1;
            word.chars().next().map(|c| (c, *count == 1))
        })
        // Crossing 2: each output goes to the core that owns its letter.
        .key_by(|(letter, first)| (letter, first))
        // State step 2, on the letter's owner: its totals, emitted after every update.
        .state(|_letter: &char, l: &mut Letter, first: bool| {
            l.distinct += first as u64;
            l.words += 1;
            Some(*l)
        })
        .encode(|letter, l, out| {
            writeln!(out, "{letter} {} {}", l.distinct, l.words).expect("a Vec takes any write")
        })
}

fn main() -> Result<()> {
    let repeat: usize = match std::env::args().nth(1) {
        Some(n) => n
            .parse()
            .with_context(|| format!("passes: {n:?} is not a number"))?,
        None => 200,
    };
    let cores = online_cpus().len().min(2);
    let source = MemorySource::from_framed(frame_lines(BILL_OF_RIGHTS))?.repeat(repeat);
    let report = Engine::new().cores(cores).run(
        letters(),
        SourceConfig::Memory(source),
        SinkConfig::Memory,
    )?;

    // A letter's outputs all leave its owner core, in the order they were made, and its totals
    // only grow: its last line is final.
    let mut last: BTreeMap<char, Letter> = BTreeMap::new();
    for line in report.output_lines() {
        let mut parts = line.split(' ');
        let (Some(c), Some(d), Some(w)) = (parts.next(), parts.next(), parts.next()) else {
            bail!("unexpected output line {line:?}");
        };
        let letter = c.chars().next().context("empty letter")?;
        last.insert(
            letter,
            Letter {
                distinct: d.parse()?,
                words: w.parse()?,
            },
        );
    }
    println!(
        "{repeat} x the Bill of Rights on {cores} core(s): per first letter, distinct words / words"
    );
    for (c, l) in &last {
        println!("  {c}: {:>4} / {:>8}", l.distinct, l.words);
    }
    let t = report.total();
    println!(
        "{} words read; {} records crossed cores (at either key_by); {} outputs",
        t.records_in, t.records_routed, t.outputs
    );

    // The same, sequentially.
    let mut seen: HashMap<String, ()> = HashMap::new();
    let mut want: BTreeMap<char, Letter> = BTreeMap::new();
    for _ in 0..repeat {
        for line in BILL_OF_RIGHTS.lines() {
            for w in words(line) {
                let Some(c) = w.chars().next() else { continue };
                let l = want.entry(c).or_default();
                l.distinct += seen.insert(w.into_owned(), ()).is_none() as u64;
                l.words += 1;
            }
        }
    }
    ensure!(
        last == want,
        "the engine's totals differ from the sequential count"
    );
    println!("matches a sequential count");
    Ok(())
}
