//! The benches' per-core metrics as people and programs read them: an aligned table (one row
//! per counter, one column per core and the total) instead of a `key=value` wall, JSON objects
//! with every counter, and the per-core stage latencies (`bettong_engine::stage_latency`) as
//! rows of percentiles.

use bettong_engine::{Metrics, MetricsSnapshot};
use hdrhistogram::Histogram;

/// One stage's latency on one core, in microseconds (from nanosecond histograms).
#[derive(Debug, Clone, PartialEq)]
pub struct StageRow {
    /// The stage (`arrival_to_decode`, …).
    pub stage: &'static str,
    /// The core.
    pub core: usize,
    /// Events recorded (reads, batches or chunks, as the stage counts them).
    pub count: u64,
    /// Median, µs.
    pub p50: f64,
    /// 99th percentile, µs.
    pub p99: f64,
    /// 99.9th percentile, µs.
    pub p999: f64,
    /// Largest, µs.
    pub max: f64,
}

impl StageRow {
    fn of(stage: &'static str, core: usize, h: &Histogram<u64>) -> StageRow {
        let us = |ns: u64| ns as f64 / 1e3;
        StageRow {
            stage,
            core,
            count: h.len(),
            p50: us(h.value_at_quantile(0.5)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }

    /// The row as a JSON object.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "stage": self.stage, "core": self.core, "count": self.count,
            "p50_us": self.p50, "p99_us": self.p99, "p999_us": self.p999, "max_us": self.max,
        })
    }
}

/// Every stage of every core that recorded something, from the engine's live histograms.
pub fn stage_rows(metrics: &Metrics) -> Vec<StageRow> {
    metrics
        .stage_histograms()
        .into_iter()
        .flat_map(|(stage, cores)| {
            cores
                .into_iter()
                .enumerate()
                .filter(|(_, h)| !h.is_empty())
                .map(move |(core, h)| StageRow::of(stage, core, &h))
        })
        .collect()
}

/// The stage rows as an aligned table (µs).
pub fn stage_table(rows: &[StageRow]) -> String {
    let us = |v: f64| {
        if v < 10.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.0}")
        }
    };
    let mut cells = vec![[
        "  stage (µs)",
        "core",
        "count",
        "p50",
        "p99",
        "p99.9",
        "max",
    ]
    .map(String::from)
    .to_vec()];
    for r in rows {
        cells.push(vec![
            format!("  {}", r.stage),
            r.core.to_string(),
            r.count.to_string(),
            us(r.p50),
            us(r.p99),
            us(r.p999),
            us(r.max),
        ]);
    }
    align(&cells)
}

/// The table: counters as rows, cores and their total as columns. Counters that are zero on
/// every core are left out and counted in a last line (`--json` has them all).
///
/// ```
/// use bettong_engine::MetricsSnapshot;
/// let a = MetricsSnapshot { frames_in: 10, outputs: 1200, ..Default::default() };
/// let b = MetricsSnapshot { frames_in: 7, ..Default::default() };
/// let t = bettong::metrics_table::per_core_table(&[a, b]);
/// assert!(t.lines().any(|l| l.split_whitespace().eq(["frames_in", "10", "7", "17"])));
/// assert!(t.lines().any(|l| l.split_whitespace().eq(["outputs", "1200", "0", "1200"])));
/// ```
pub fn per_core_table(cores: &[MetricsSnapshot]) -> String {
    let mut total = MetricsSnapshot::default();
    for c in cores {
        total += *c;
    }
    let mut header = vec!["counter".to_string()];
    header.extend((0..cores.len()).map(|i| format!("core {i}")));
    header.push("total".into());
    let mut rows = vec![header];
    let mut omitted = 0;
    let per_core: Vec<_> = cores.iter().map(MetricsSnapshot::fields).collect();
    for (i, (name, sum)) in total.fields().into_iter().enumerate() {
        if per_core.iter().all(|f| f[i].1 == 0) {
            omitted += 1;
            continue;
        }
        let mut row = vec![name.to_string()];
        row.extend(per_core.iter().map(|f| f[i].1.to_string()));
        row.push(sum.to_string());
        rows.push(row);
    }
    let mut out = align(&rows);
    if omitted > 0 {
        out += &format!("({omitted} counters are zero on every core; --json has them all)\n");
    }
    out
}

/// Rows of cells as aligned text: the first column left-aligned, the others right-aligned,
/// each as wide as its widest cell, two spaces apart.
pub fn align(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let pad = width[c].saturating_sub(cell.chars().count());
            if c == 0 {
                line += cell;
                line += &" ".repeat(pad);
            } else {
                line += "  ";
                line += &" ".repeat(pad);
                line += cell;
            }
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}

/// One core's counters as a JSON object, every counter by name.
pub fn snapshot_json(m: &MetricsSnapshot) -> serde_json::Value {
    serde_json::Value::Object(
        m.fields()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_zero_rows_are_counted_not_shown() {
        let a = MetricsSnapshot {
            frames_in: 5,
            records_in: 123_456,
            ..Default::default()
        };
        let b = MetricsSnapshot {
            frames_in: 12,
            ..Default::default()
        };
        let t = per_core_table(&[a, b]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>()[0],
            "counter"
        );
        // Every number row ends at the same column.
        let ends: Vec<usize> = lines[..3].iter().map(|l| l.len()).collect();
        assert!(ends.iter().all(|&e| e == ends[0]), "{t}");
        assert_eq!(lines.len(), 4, "{t}");
        let zero = MetricsSnapshot::default().fields().len() - 2;
        assert!(lines[3].starts_with(&format!("({zero} counters")), "{t}");
    }

    #[test]
    fn json_has_every_counter() {
        let m = MetricsSnapshot {
            keys: 9,
            ..Default::default()
        };
        let j = snapshot_json(&m);
        assert_eq!(j["keys"], 9);
        assert_eq!(j.as_object().unwrap().len(), m.fields().len());
    }
}
