//! `/metrics`: the engine's metrics in the Prometheus (OpenMetrics) text format, encoded by the
//! `prometheus-client` crate.
//!
//! A [`Collector`] reads the metrics at each scrape, on the monitor's HTTP thread: every counter
//! and gauge of every core with a `core` label (relaxed atomic loads, no lock), every histogram
//! of [`Metrics::histograms`] as a Prometheus histogram in seconds with a `core` label (each
//! core's copy is taken under its lock for the time of one copy), and the engine-wide
//! checkpoint counters. Names are given by [`super::names`].

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::names::{prom_field, Kind};
use crate::Metrics;

/// Upper bounds of the latency buckets, in microseconds: 10 µs to 10 s, 1-2.5-5 steps.
pub const BUCKETS_US: &[u64] = &[
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// The content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Reads the engine's metrics at each scrape.
#[derive(Debug)]
struct EngineCollector {
    metrics: Metrics,
}

type CoreLabel = [(&'static str, String); 1];

fn core_label(core: usize) -> CoreLabel {
    [("core", core.to_string())]
}

impl Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let per_core = self.metrics.per_core();
        let docs = crate::metrics::field_docs();
        let fields = per_core.first().copied().unwrap_or_default().fields();
        for (i, (field, _)) in fields.iter().enumerate() {
            let f = prom_field(field);
            let doc = docs.get(i).copied().unwrap_or(field);
            // Exported in seconds, not in the microseconds the engine counts.
            let help = doc.replace(" (µs)", "");
            let unit = f.unit.map(|u| u.unit());
            let kind = match f.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
            };
            let mut family = encoder.encode_descriptor(&f.name, &help, unit.as_ref(), kind)?;
            for (core, snap) in per_core.iter().enumerate() {
                let raw = snap.fields()[i].1;
                let label = core_label(core);
                let mut m = family.encode_family(&label)?;
                match (f.kind, f.unit.is_some() && f.scale != 1.0) {
                    (Kind::Counter, false) => m.encode_counter::<NoLabelSet, _, u64>(&raw, None)?,
                    (Kind::Counter, true) => {
                        m.encode_counter::<NoLabelSet, _, f64>(&(raw as f64 * f.scale), None)?
                    }
                    (Kind::Gauge, false) => m.encode_gauge(&raw)?,
                    (Kind::Gauge, true) => m.encode_gauge(&(raw as f64 * f.scale))?,
                }
            }
        }
        for h in self.metrics.histograms() {
            let mut family = encoder.encode_descriptor(
                h.name,
                h.help,
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for (core, hist) in h.per_core.iter().enumerate() {
                let label = core_label(core);
                let (sum, count, buckets) = buckets(hist);
                family
                    .encode_family(&label)?
                    .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            }
        }
        let c = self.metrics.checkpoint_stats();
        let engine_counters: [(&str, &str, u64); 2] = [
            (
                "checkpoints_committed",
                "Checkpoints committed by this run.",
                c.committed,
            ),
            (
                "checkpoints_failed",
                "Checkpoints that failed to commit.",
                c.failed,
            ),
        ];
        for (name, help, v) in engine_counters {
            encoder
                .encode_descriptor(name, help, None, MetricType::Counter)?
                .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
        let seconds_gauges: [(&str, &str, f64); 3] = [
            (
                "checkpoint_last_commit_timestamp",
                "When the last committed checkpoint was asked for, since the Unix epoch (0: none).",
                c.last_unix_ms as f64 / 1e3,
            ),
            (
                "checkpoint_last_commit_duration",
                "Time to write and commit the last checkpoint once every snapshot was in.",
                c.last_commit_us as f64 / 1e6,
            ),
            (
                "checkpoint_max_pause",
                "The longest pause of any core in any checkpoint of this run.",
                c.max_pause_us as f64 / 1e6,
            ),
        ];
        for (name, help, v) in seconds_gauges {
            encoder
                .encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Gauge)?
                .encode_gauge(&v)?;
        }
        encoder
            .encode_descriptor(
                "cores",
                "Cores the engine runs on.",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&(per_core.len() as u64))?;
        Ok(())
    }
}

/// A histogram of microseconds as Prometheus wants it: the sum in seconds (from the mean: hdr
/// histograms keep no exact sum, so it is within their 0.1 % precision), the count, and the
/// count in each bucket of [`BUCKETS_US`] (not cumulative: the encoder adds them up), in
/// seconds, ending with `+Inf`.
fn buckets(h: &hdrhistogram::Histogram<u64>) -> (f64, u64, Vec<(f64, u64)>) {
    let count = h.len();
    let sum = if count == 0 {
        0.0
    } else {
        h.mean() * count as f64 / 1e6
    };
    let mut out = Vec::with_capacity(BUCKETS_US.len() + 1);
    let mut below = 0u64;
    for &le in BUCKETS_US {
        // Values up to `le` (hdr's buckets at this precision are exact to 0.1 %).
        let cumulative = h.count_between(0, le).min(count);
        out.push((le as f64 / 1e6, cumulative.saturating_sub(below)));
        below = cumulative.max(below);
    }
    out.push((f64::MAX, count.saturating_sub(below)));
    (sum, count, out)
}

/// A registry (prefix `bettong`) that reads `metrics` at each scrape.
pub fn registry(metrics: Metrics) -> Registry {
    let mut registry = Registry::with_prefix("bettong");
    registry.register_collector(Box::new(EngineCollector { metrics }));
    registry
}

/// The text of one scrape of `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        // Only a `fmt::Write` into a String: this cannot fail, but say so if it ever does.
        out = format!("# encoding the metrics failed: {e}\n# EOF\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::CoreMetrics;
    use std::time::{Duration, Instant};

    fn sample_value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn counters_gauges_and_histograms_are_exported_per_core() {
        let m = Metrics::new(2);
        CoreMetrics::add(&m.core(1).frames_in, 42);
        CoreMetrics::add(&m.core(0).bytes_out, 1000);
        CoreMetrics::set(&m.core(0).keys, 9);
        CoreMetrics::add(&m.core(1).checkpoint_pause_us_total, 2_500_000);
        m.latency(1)
            .record(Instant::now() - Duration::from_millis(3));
        m.latency(1)
            .record(Instant::now() - Duration::from_micros(700));
        let text = encode(&registry(m));
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("# TYPE bettong_frames_in counter"), "{text}");
        assert_eq!(
            sample_value(&text, r#"bettong_frames_in_total{core="1"}"#),
            Some(42.0)
        );
        assert_eq!(
            sample_value(&text, r#"bettong_frames_in_total{core="0"}"#),
            Some(0.0)
        );
        assert_eq!(
            sample_value(&text, r#"bettong_output_bytes_total{core="0"}"#),
            Some(1000.0)
        );
        assert_eq!(sample_value(&text, r#"bettong_keys{core="0"}"#), Some(9.0));
        assert_eq!(
            sample_value(&text, r#"bettong_checkpoint_pause_seconds_total{core="1"}"#),
            Some(2.5)
        );
        assert!(
            text.contains("# TYPE bettong_latency_seconds histogram"),
            "{text}"
        );
        let bucket = |le: &str| {
            sample_value(
                &text,
                &format!(r#"bettong_latency_seconds_bucket{{le="{le}",core="1"}}"#),
            )
        };
        assert_eq!(bucket("0.0005"), Some(0.0));
        assert_eq!(bucket("0.001"), Some(1.0));
        assert_eq!(bucket("0.005"), Some(2.0));
        assert_eq!(bucket("+Inf"), Some(2.0));
        assert_eq!(
            sample_value(&text, r#"bettong_latency_seconds_count{core="1"}"#),
            Some(2.0)
        );
        let sum = sample_value(&text, r#"bettong_latency_seconds_sum{core="1"}"#).unwrap();
        assert!((0.0036..0.0040).contains(&sum), "{sum}");
        assert_eq!(sample_value(&text, "bettong_cores"), Some(2.0));
    }

    #[test]
    fn buckets_split_values_at_their_bounds() {
        let mut h = crate::metrics::new_histogram();
        for v in [5, 10, 11, 2_000_000, 20_000_000] {
            h.record(v).unwrap();
        }
        let (_, count, b) = buckets(&h);
        assert_eq!(count, 5);
        assert_eq!(b[0], (10e-6, 2));
        assert_eq!(b[1].1, 1);
        assert_eq!(b.iter().map(|x| x.1).sum::<u64>(), 5);
        assert_eq!(*b.last().unwrap(), (f64::MAX, 1));
    }
}
