//! One interval of a running engine, as people watch it: rates of every counter, levels of
//! every gauge and latency percentiles over the interval, per core and in total.
//!
//! A [`Sampler`] keeps the previous reading of the metrics and turns the next one into a
//! [`Sample`]. It is what the monitoring page (`/metrics.json`) and the progress lines show;
//! both take their readings off the cores (counters are relaxed atomic loads, histograms are
//! copied: see [`Metrics::histograms`]).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use super::names::{kind, Kind};
use crate::metrics::{new_histogram, CheckpointStats};
use crate::{Metrics, MetricsSnapshot};

/// Percentiles of one histogram over one interval, in microseconds (all 0 when it recorded
/// nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    /// Values recorded in the interval.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

impl Percentiles {
    /// The percentiles of `h`.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }

    fn json(&self) -> Value {
        json!({"count": self.count, "p50": self.p50, "p99": self.p99, "p999": self.p999,
               "max": self.max})
    }
}

/// One core's interval, or the engine's.
#[derive(Debug, Clone, Default)]
pub struct Part {
    /// The counters and gauges at the end of the interval.
    pub now: MetricsSnapshot,
    /// Each counter's increase per second over the interval, by field name.
    pub per_s: Vec<(&'static str, f64)>,
    /// Each histogram's percentiles over the interval, by name.
    pub hist: Vec<(&'static str, Percentiles)>,
}

impl Part {
    /// The rate of counter `field` per second (0 if there is no such counter).
    pub fn rate(&self, field: &str) -> f64 {
        self.per_s
            .iter()
            .find(|(n, _)| *n == field)
            .map_or(0.0, |(_, v)| *v)
    }

    /// The percentiles of histogram `name` over the interval.
    pub fn percentiles(&self, name: &str) -> Percentiles {
        self.hist
            .iter()
            .find(|(n, _)| *n == name)
            .map_or_else(Percentiles::default, |(_, p)| *p)
    }

    fn json(&self) -> Value {
        let mut counters = Map::new();
        for (name, v) in self.now.fields() {
            counters.insert(name.into(), v.into());
        }
        let mut per_s = Map::new();
        for (name, v) in &self.per_s {
            per_s.insert((*name).into(), json!((v * 10.0).round() / 10.0));
        }
        let mut hist = Map::new();
        for (name, p) in &self.hist {
            hist.insert((*name).into(), p.json());
        }
        json!({"now": counters, "per_s": per_s, "hist_us": hist})
    }
}

/// One interval of the engine.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// When it was taken, in ms since the Unix epoch.
    pub unix_ms: u64,
    /// The interval's length in seconds.
    pub interval_s: f64,
    /// The engine's total (counters summed, `_max` and `_us_last` the largest core's; histograms
    /// merged).
    pub total: Part,
    /// Each core's, by core index.
    pub per_core: Vec<Part>,
    /// The engine-wide checkpoint counters.
    pub checkpoints: CheckpointStats,
}

impl Sample {
    /// The sample as one JSON object (the body of `/metrics.json`).
    pub fn json(&self) -> Value {
        let c = &self.checkpoints;
        json!({
            "unix_ms": self.unix_ms,
            "interval_s": (self.interval_s * 1000.0).round() / 1000.0,
            "cores": self.per_core.len(),
            "total": self.total.json(),
            "per_core": self.per_core.iter().map(Part::json).collect::<Vec<_>>(),
            "checkpoints": {
                "committed": c.committed, "failed": c.failed, "last_id": c.last_id,
                "last_unix_ms": c.last_unix_ms, "last_pause_us": c.last_pause_us,
                "max_pause_us": c.max_pause_us, "last_commit_us": c.last_commit_us,
                "last_bytes": c.last_bytes, "restored_id": c.restored_id,
            },
        })
    }
}

/// Turns successive readings of the metrics into [`Sample`]s.
#[derive(Debug)]
pub struct Sampler {
    metrics: Metrics,
    at: Instant,
    counters: Vec<MetricsSnapshot>,
    /// Each histogram's per-core copies at the last reading, by histogram, then core.
    hists: Vec<Vec<Histogram<u64>>>,
}

impl Sampler {
    /// A sampler whose first interval starts now.
    pub fn new(metrics: Metrics) -> Self {
        let counters = metrics.per_core();
        let hists = metrics
            .histograms()
            .into_iter()
            .map(|h| h.per_core)
            .collect();
        Sampler {
            metrics,
            at: Instant::now(),
            counters,
            hists,
        }
    }

    /// The interval since the last call (or since [`Sampler::new`]).
    pub fn sample(&mut self) -> Sample {
        let now = Instant::now();
        let secs = now.duration_since(self.at).as_secs_f64().max(1e-3);
        let counters = self.metrics.per_core();
        let hists = self.metrics.histograms();
        let mut per_core: Vec<Part> = counters
            .iter()
            .zip(&self.counters)
            .map(|(now, before)| Part {
                now: *now,
                per_s: rates(now, before, secs),
                hist: Vec::new(),
            })
            .collect();
        let mut total = Part {
            now: sum(&counters),
            per_s: rates(&sum(&counters), &sum(&self.counters), secs),
            hist: Vec::new(),
        };
        for (i, h) in hists.iter().enumerate() {
            let mut merged = new_histogram();
            for (core, now) in h.per_core.iter().enumerate() {
                let mut delta = now.clone();
                if let Some(before) = self.hists.get(i).and_then(|b| b.get(core)) {
                    // A histogram reset since (`Metrics::reset_latency`) has fewer counts than
                    // before: then the whole histogram is this interval's.
                    if before.len() <= now.len() && delta.subtract(before).is_err() {
                        delta = now.clone();
                    }
                }
                let _ = merged.add(&delta);
                if let Some(part) = per_core.get_mut(core) {
                    part.hist.push((h.name, Percentiles::of(&delta)));
                }
            }
            total.hist.push((h.name, Percentiles::of(&merged)));
        }
        self.at = now;
        self.counters = counters;
        self.hists = hists.into_iter().map(|h| h.per_core).collect();
        Sample {
            unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            interval_s: secs,
            total,
            per_core,
            checkpoints: self.metrics.checkpoint_stats(),
        }
    }
}

fn sum(snaps: &[MetricsSnapshot]) -> MetricsSnapshot {
    let mut t = MetricsSnapshot::default();
    for s in snaps {
        t += *s;
    }
    t
}

/// Every counter's increase per second (a counter that went down, after a restart of the count,
/// gives 0).
fn rates(now: &MetricsSnapshot, before: &MetricsSnapshot, secs: f64) -> Vec<(&'static str, f64)> {
    now.fields()
        .into_iter()
        .zip(before.fields())
        .filter(|((name, _), _)| kind(name) == Kind::Counter)
        .map(|((name, a), (_, b))| (name, a.saturating_sub(b) as f64 / secs))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::CoreMetrics;

    #[test]
    fn a_sample_gives_rates_levels_and_the_intervals_percentiles() {
        let m = Metrics::new(2);
        let mut s = Sampler::new(m.clone());
        CoreMetrics::add(&m.core(0).frames_in, 100);
        CoreMetrics::add(&m.core(1).frames_in, 300);
        CoreMetrics::set(&m.core(1).keys, 7);
        for _ in 0..10 {
            m.latency(1)
                .record(Instant::now() - std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        let a = s.sample();
        assert!(a.total.rate("frames_in") > 0.0);
        let ratio = a.per_core[1].rate("frames_in") / a.per_core[0].rate("frames_in");
        assert!((ratio - 3.0).abs() < 1e-9, "{ratio}");
        assert_eq!(a.total.now.keys, 7);
        assert_eq!(a.total.rate("keys"), 0.0, "a gauge has no rate");
        let p = a.per_core[1].percentiles("latency");
        assert_eq!(p.count, 10);
        assert!((4_900..6_000).contains(&p.p99), "{p:?}");
        assert_eq!(a.per_core[0].percentiles("latency").count, 0);
        assert_eq!(a.total.percentiles("latency").count, 10);
        // The next interval holds only what came since.
        m.latency(0).record(Instant::now());
        let b = s.sample();
        assert_eq!(b.total.percentiles("latency").count, 1);
        assert_eq!(b.total.rate("frames_in"), 0.0);
        let v = b.json();
        assert_eq!(v["cores"], 2);
        assert_eq!(v["total"]["now"]["frames_in"], 400);
        assert_eq!(v["per_core"][0]["hist_us"]["latency"]["count"], 1);
    }

    #[test]
    fn a_reset_histogram_does_not_break_the_next_sample() {
        let m = Metrics::new(1);
        m.latency(0).record(Instant::now());
        m.latency(0).record(Instant::now());
        let mut s = Sampler::new(m.clone());
        m.reset_latency();
        m.latency(0).record(Instant::now());
        assert_eq!(s.sample().total.percentiles("latency").count, 1);
    }
}
