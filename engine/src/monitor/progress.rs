//! Progress lines: one log line every interval saying what the engine did in it (messages in,
//! lines out, p99, connections, keys, the sink), in total and for any core far from the others.
//!
//! [`Progress::start`] runs a thread of its own that logs [`line()`] of a [`Sampler`]'s samples
//! with `tracing` (so `--log-format json` gives the figures as fields too).

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::sample::{Part, Sample, Sampler};
use crate::Metrics;

/// A core is "far from the others" when its input rate is below this fraction of the other
/// cores' mean (and they take at least [`MIN_RATE`] messages a second), or, with three cores or
/// more, above its inverse (with two, the busy one is the other side of the one far behind),
/// or its p99 latency above this many times the other cores' largest.
pub const FAR: f64 = 0.5;

/// Below this many messages a second per core, rates are not compared.
pub const MIN_RATE: f64 = 100.0;

/// Logs a progress line every interval until dropped.
#[derive(Debug)]
pub struct Progress {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts logging one line every `every` (which must be above zero) on a thread of its own.
    pub fn start(metrics: Metrics, every: Duration) -> std::io::Result<Progress> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bettong-progress".into())
            .spawn(move || {
                let mut sampler = Sampler::new(metrics);
                loop {
                    let (lock, cvar) = &*s;
                    let stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
                    let (stopped, _) = cvar
                        .wait_timeout_while(stopped, every, |s| !*s)
                        .unwrap_or_else(|e| e.into_inner());
                    if *stopped {
                        return;
                    }
                    drop(stopped);
                    log(&sampler.sample());
                }
            })?;
        Ok(Progress {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        *self.stop.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn log(s: &Sample) {
    let t = &s.total;
    tracing::info!(
        msgs_in_per_s = t.rate("frames_in").round() as u64,
        lines_out_per_s = t.rate("outputs").round() as u64,
        p99_us = t.percentiles("latency").p99,
        connections = t.now.connections_open,
        keys = t.now.keys,
        sink_connected = t.now.sink_connected,
        "{}",
        line(s)
    );
}

/// The progress line of one sample.
///
/// ```
/// use bettong_engine::monitor::sample::Sample;
/// let line = bettong_engine::monitor::progress::line(&Sample::default());
/// assert!(line.starts_with("progress: 0 msgs/s in, 0 lines/s out"), "{line}");
/// ```
pub fn line(s: &Sample) -> String {
    let t = &s.total;
    let mut out = format!(
        "progress: {} msgs/s in, {} lines/s out, p99 {}, {} connections, {} keys ({}), sink {}",
        si(t.rate("frames_in")),
        si(t.rate("outputs")),
        p99(t),
        t.now.connections_open,
        si(t.now.keys as f64),
        bytes(t.now.state_bytes),
        sink(t, s.per_core.len()),
    );
    if s.checkpoints.committed + s.checkpoints.failed > 0 {
        out.push_str(&format!(
            ", checkpoints {} committed ({} failed)",
            s.checkpoints.committed, s.checkpoints.failed
        ));
    }
    for (i, c) in s.per_core.iter().enumerate() {
        if let Some(why) = far(i, &s.per_core) {
            out.push_str(&format!(
                "; core {i} {why}: {} msgs/s in, {} lines/s out, p99 {}, {} connections",
                si(c.rate("frames_in")),
                si(c.rate("outputs")),
                p99(c),
                c.now.connections_open
            ));
        }
    }
    out
}

/// Why core `i` is far from the others, if it is.
fn far(i: usize, cores: &[Part]) -> Option<&'static str> {
    let others: Vec<&Part> = cores
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(_, c)| c)
        .collect();
    if others.is_empty() {
        return None;
    }
    let me = cores[i].rate("frames_in");
    let mean = others.iter().map(|c| c.rate("frames_in")).sum::<f64>() / others.len() as f64;
    if mean.max(me) >= MIN_RATE {
        if me < mean * FAR {
            return Some("is far behind the others");
        }
        if me * FAR > mean && others.len() >= 2 {
            return Some("takes far more than the others");
        }
    }
    let my_p99 = cores[i].percentiles("latency").p99;
    let their_p99 = others
        .iter()
        .map(|c| c.percentiles("latency").p99)
        .max()
        .unwrap_or(0);
    if their_p99 > 0 && my_p99 as f64 * FAR > their_p99 as f64 {
        return Some("has far higher latency");
    }
    None
}

fn p99(p: &Part) -> String {
    let l = p.percentiles("latency");
    if l.count == 0 {
        return "-".into();
    }
    if l.p99 >= 1000 {
        format!("{:.1} ms", l.p99 as f64 / 1e3)
    } else {
        format!("{} µs", l.p99)
    }
}

fn sink(t: &Part, cores: usize) -> String {
    let mut s = format!("{}/{cores} connected", t.now.sink_connected);
    if t.now.sink_bytes_at_risk > 0 {
        s.push_str(&format!(", {} at risk", bytes(t.now.sink_bytes_at_risk)));
    }
    if t.now.sink_bytes_dropped > 0 {
        s.push_str(&format!(", {} dropped", bytes(t.now.sink_bytes_dropped)));
    }
    s
}

/// `1234567.0` as `1.23 M`.
fn si(v: f64) -> String {
    match v.abs() {
        a if a >= 1e9 => format!("{:.2} G", v / 1e9),
        a if a >= 1e6 => format!("{:.2} M", v / 1e6),
        a if a >= 1e4 => format!("{:.1} k", v / 1e3),
        _ => format!("{v:.0}"),
    }
}

fn bytes(v: u64) -> String {
    match v {
        v if v >= 1 << 30 => format!("{:.1} GiB", v as f64 / (1u64 << 30) as f64),
        v if v >= 1 << 20 => format!("{:.1} MiB", v as f64 / (1u64 << 20) as f64),
        v if v >= 1 << 10 => format!("{:.1} KiB", v as f64 / 1024.0),
        v => format!("{v} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::sample::Percentiles;
    use crate::MetricsSnapshot;

    fn part(rate: f64, p99: u64, connections: u64) -> Part {
        Part {
            now: MetricsSnapshot {
                connections_open: connections,
                sink_connected: 1,
                ..Default::default()
            },
            per_s: vec![("frames_in", rate), ("outputs", rate * 10.0)],
            hist: vec![(
                "latency",
                Percentiles {
                    count: 100,
                    p99,
                    ..Default::default()
                },
            )],
        }
    }

    fn sample(cores: Vec<Part>) -> Sample {
        let mut total = Part {
            per_s: vec![("frames_in", cores.iter().map(|c| c.rate("frames_in")).sum())],
            ..Default::default()
        };
        for c in &cores {
            total.now += c.now;
        }
        Sample {
            total,
            per_core: cores,
            ..Default::default()
        }
    }

    #[test]
    fn the_line_names_only_cores_far_from_the_others() {
        let even = line(&sample(vec![part(1e6, 200, 2), part(0.9e6, 250, 2)]));
        assert!(even.starts_with("progress: 1.90 M msgs/s in"), "{even}");
        assert!(even.contains("4 connections"), "{even}");
        assert!(even.contains("sink 2/2 connected"), "{even}");
        assert!(!even.contains("core"), "{even}");
        let slow = line(&sample(vec![
            part(1e6, 200, 2),
            part(0.1e6, 250, 2),
            part(1e6, 200, 2),
        ]));
        assert!(
            slow.contains("; core 1 is far behind the others: 100.0 k msgs/s in"),
            "{slow}"
        );
        assert!(
            !slow.contains("core 0") && !slow.contains("core 2"),
            "{slow}"
        );
        let two = line(&sample(vec![part(1e6, 200, 3), part(0.2e6, 250, 1)]));
        assert!(two.contains("; core 1 is far behind"), "{two}");
        assert!(
            !two.contains("core 0"),
            "with two cores only the one behind: {two}"
        );
        let hot = line(&sample(vec![
            part(1e5, 200, 1),
            part(1e6, 200, 2),
            part(1e5, 200, 1),
        ]));
        assert!(
            hot.contains("; core 1 takes far more than the others"),
            "{hot}"
        );
        let late = line(&sample(vec![part(1e6, 200, 2), part(1e6, 9_000, 2)]));
        assert!(late.contains("core 1 has far higher latency"), "{late}");
        assert!(late.contains("p99 9.0 ms"), "{late}");
    }

    #[test]
    fn idle_cores_are_not_compared() {
        let idle = line(&sample(vec![part(10.0, 0, 0), part(0.0, 0, 0)]));
        assert!(!idle.contains("core"), "{idle}");
    }
}
