//! A second app on the same engine: a running average temperature per sensor.
//!
//! This example exists to show that the pipeline API is not tied to word count or to text.
//! Frames hold several readings, one per line (`sensor-17 21.5`). A typed pipeline
//! (`Pipeline::decode`) parses each frame **once** into `Reading` structs (unparsable lines are
//! skipped; a frame that is not UTF-8 is rejected whole, with a reason the engine counts and
//! logs); out-of-range readings are dropped with `filter`; readings are keyed by the sensor's
//! number (an owned `u32` key); the state is `(sum, count)`; every reading emits
//! `sensor-17 avg=21.50 n=3`. It runs twice: once to completion with `Engine::run`, and once
//! with `Engine::start`, watching live metrics and stopping it from code.
//!
//! ```sh
//! cargo run --release --example sensors
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use bettong_engine::{
    online_cpus, App, DecodeError, Engine, MemorySource, Pipeline, SinkConfig, SourceConfig,
};

const SENSORS: u64 = 8;

/// One reading, parsed once, on the core that read its frame.
#[derive(Debug, Clone, Copy)]
struct Reading {
    sensor: u32,
    celsius: f64,
}

impl Reading {
    /// `sensor-<id> <celsius>`, or `None` for a line that does not say that.
    fn parse(line: &str) -> Option<Reading> {
        let (id, value) = line.split_once(' ')?;
        Some(Reading {
            sensor: id.strip_prefix("sensor-")?.parse().ok()?,
            celsius: value.parse().ok()?,
        })
    }

    /// A plausible temperature.
    fn plausible(&self) -> bool {
        (-50.0..=60.0).contains(&self.celsius)
    }
}

/// A frame's readings. Only a frame that is not text is rejected (the engine counts it in
/// `frames_rejected`); unparsable lines inside a good frame are skipped.
fn decode(frame: &[u8]) -> Result<Vec<Reading>, DecodeError> {
    let text = std::str::from_utf8(frame)?;
    Ok(text.lines().filter_map(Reading::parse).collect())
}

fn running_average() -> impl App {
    Pipeline::decode(decode)
        // One frame, several readings: emit each. Runs on the core that read the frame.
        .flat_map(|readings: Vec<Reading>, emit| readings.into_iter().for_each(emit))
        .filter(Reading::plausible)
        // Key = sensor number, value = the reading. Readings cross to the core owning their
        // sensor here, and nowhere else.
        .key_by(|r: Reading| (r.sensor, r.celsius))
        // On the owner core: one (sum, count) per sensor, created as (0.0, 0).
        .state(|_sensor: &u32, (sum, n): &mut (f64, u64), celsius: f64| {
            *sum += celsius;
            *n += 1;
            Some((*sum / *n as f64, *n))
        })
        .encode(|sensor, (avg, n), out| {
            writeln!(out, "sensor-{sensor} avg={avg:.2} n={n}")
                .expect("writing to a Vec cannot fail")
        })
}

/// `frames` deterministic frames of 5 readings each; about one reading in five is bad.
fn readings(frames: usize) -> Vec<String> {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut reading = move || {
        let (id, r) = (next() % SENSORS, next());
        match r % 10 {
            0 => format!("sensor-{id} n/a\n"),   // unparsable
            1 => format!("sensor-{id} 999.0\n"), // out of range
            _ => format!("sensor-{id} {:.1}\n", 15.0 + (r % 150) as f64 / 10.0),
        }
    };
    (0..frames)
        .map(|_| (0..5).map(|_| reading()).collect())
        .collect()
}

fn main() -> Result<(), bettong_engine::Error> {
    let cores = online_cpus().len().min(2);

    // 1. Run to completion over a finite memory source.
    let frames = readings(1000);
    let report = Engine::new().cores(cores).run(
        running_average(),
        SourceConfig::Memory(MemorySource::from_frames(&frames)),
        SinkConfig::Memory,
    )?;
    // Each sensor's outputs all come from its owner core, in order: its last line is final.
    let mut last = BTreeMap::new();
    for line in report.output_lines() {
        let id = line
            .split_once(' ')
            .map(|(id, _)| id.to_owned())
            .unwrap_or_default();
        last.insert(id, line);
    }
    println!(
        "final averages after {} frames on {cores} core(s):",
        frames.len()
    );
    for line in last.values() {
        println!("  {line}");
    }
    let t = report.total();
    println!(
        "{} readings kept, {} outputs ({} lines unparsable or implausible)\n",
        t.records_in,
        t.outputs,
        frames.len() * 5 - t.records_in as usize
    );

    // 2. Start in the background, watch live metrics, stop from code. The source repeats with
    // a pause between slices, so it would run for a long while on its own.
    let source = MemorySource::from_frames(&frames)
        .repeat(1_000_000)
        .slice_bytes(4096)
        .pause(Duration::from_millis(1));
    let running = Engine::new().cores(cores).start(
        running_average(),
        SourceConfig::Memory(source),
        SinkConfig::Memory,
    )?;
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(100));
        let t = running.metrics().total();
        println!("running: {} frames in, {} outputs", t.frames_in, t.outputs);
    }
    running.stop(); // Graceful: sources stop, what was read is finished and flushed.
    let report = running.join()?;
    println!("stopped after {} frames in total", report.total().frames_in);
    Ok(())
}
