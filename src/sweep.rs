//! `bettong bench --sweep`: the latency–throughput curve. The bench measures the maximum rate at
//! full speed, then runs one fixed-rate phase (with probes) at each of 10 %, 20 %, … 100 % of
//! it ([`SWEEP_FRACTIONS`]); this module writes those phases as a CSV and plots their probe
//! latency (p50, p99, p99.9) and the engine's p99 against the rate, as an SVG.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::bench::{BenchReport, Phase};

/// The fractions of the maximum rate a sweep runs at.
pub const SWEEP_FRACTIONS: [f64; 10] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

/// The CSV's header: one row per fixed-rate phase, latencies in µs.
pub const CSV_HEADER: &str = "target_rate,msgs_per_sec,probes,probe_p50_us,probe_p99_us,\
probe_p999_us,probe_max_us,engine_p50_us,engine_p99_us,engine_p999_us";

/// One line of the plot: its label, its points (msgs/s, µs) and its colour.
type Series = (&'static str, Vec<(f64, f64)>, RGBColor);

/// The fixed-rate phases of a report (those with probes), in rate order.
fn rated(report: &BenchReport) -> Vec<&Phase> {
    let mut v: Vec<&Phase> = report
        .phases
        .iter()
        .filter(|p| p.target_rate.is_some() && p.probe_latency.is_some())
        .collect();
    v.sort_by_key(|p| p.target_rate);
    v
}

/// The sweep as CSV text ([`CSV_HEADER`], then one row per fixed-rate phase).
pub fn csv(report: &BenchReport) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    for p in rated(report) {
        let probe = p.probe_latency.unwrap_or_default();
        let e = &p.engine_latency;
        let rate = if p.measurable() {
            format!("{:.0}", p.msgs_per_sec())
        } else {
            String::new()
        };
        out += &format!(
            "{},{rate},{},{},{},{},{},{},{},{}\n",
            p.target_rate.unwrap_or(0),
            probe.count,
            probe.p50,
            probe.p99,
            probe.p999,
            probe.max,
            e.p50,
            e.p99,
            e.p999
        );
    }
    out
}

/// True when a fixed-rate phase reached at least 90 % of the rate asked for: beyond that the
/// server (or the client) did not keep up, and its latency is a queue's, not a rate's.
pub fn sustained(p: &Phase) -> bool {
    p.measurable() && p.msgs_per_sec() >= 0.9 * p.target_rate.unwrap_or(0) as f64
}

/// Plots the sweep into an SVG at `path`: latency (µs, log scale) against the rate asked for,
/// for the rates that were [`sustained`] (the caption counts the others).
pub fn plot(report: &BenchReport, path: &Path) -> Result<()> {
    let all = rated(report);
    let phases: Vec<&Phase> = all.iter().copied().filter(|p| sustained(p)).collect();
    let dropped = all.len() - phases.len();
    let point = |f: fn(&Phase) -> u64| -> Vec<(f64, f64)> {
        phases
            .iter()
            .map(|p| (p.target_rate.unwrap_or(0) as f64, f(p).max(1) as f64))
            .collect()
    };
    let series: [Series; 4] = [
        (
            "probe p50",
            point(|p| p.probe_latency.unwrap_or_default().p50),
            BLUE,
        ),
        (
            "probe p99",
            point(|p| p.probe_latency.unwrap_or_default().p99),
            RED,
        ),
        (
            "probe p99.9",
            point(|p| p.probe_latency.unwrap_or_default().p999),
            MAGENTA,
        ),
        ("engine p99", point(|p| p.engine_latency.p99), GREEN),
    ];
    let x_max = phases.iter().map(|p| p.msgs_per_sec()).fold(1.0, f64::max) * 1.05;
    let y_max = series
        .iter()
        .flat_map(|(_, s, _)| s.iter().map(|&(_, y)| y))
        .fold(10.0, f64::max)
        * 2.0;
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "{}{}",
                    report.clients,
                    match dropped {
                        0 => String::new(),
                        n => format!("; {n} rate(s) not sustained, left out"),
                    }
                ),
                ("sans-serif", 13),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..x_max, (1f64..y_max).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("messages/s asked for (fixed-rate phase with a probe every ms)")
            .y_desc("latency")
            .x_label_formatter(&|x| format!("{:.0}k", x / 1e3))
            .y_label_formatter(&|y| match *y {
                y if y >= 1e6 => format!("{:.0} s", y / 1e6),
                y if y >= 1e3 => format!("{:.0} ms", y / 1e3),
                y => format!("{y:.0} µs"),
            })
            .draw()?;
        for (name, points, color) in &series {
            let color = *color;
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            chart.draw_series(
                points
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("drawing the sweep plot {}: {e}", path.display()))
}

/// Writes `PREFIX.csv` and `PREFIX.svg`; returns their paths.
pub fn write(report: &BenchReport, prefix: &Path) -> Result<(PathBuf, PathBuf)> {
    let csv_path = prefix.with_extension("csv");
    let svg_path = prefix.with_extension("svg");
    if let Some(dir) = prefix.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating {} for the sweep's files", dir.display()))?;
    }
    std::fs::write(&csv_path, csv(report))
        .with_context(|| format!("writing the sweep's CSV {}", csv_path.display()))?;
    plot(report, &svg_path)?;
    Ok((csv_path, svg_path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Percentiles;
    use std::time::Duration;

    fn phase(rate: u64, p99: u64) -> Phase {
        Phase {
            name: "fixed rate".into(),
            messages: rate,
            elapsed: Duration::from_secs(1),
            target_rate: Some(rate),
            probe_latency: Some(Percentiles {
                count: 900,
                p50: p99 / 2,
                p90: p99 / 2,
                p99,
                p999: p99 * 2,
                max: p99 * 3,
            }),
            ..Phase::default()
        }
    }

    fn report() -> BenchReport {
        BenchReport {
            clients: "server on CPU 1; clients on CPU 0 (separate from the server)".into(),
            phases: vec![
                Phase {
                    name: "full speed".into(),
                    messages: 1_000_000,
                    elapsed: Duration::from_secs(1),
                    ..Phase::default()
                },
                phase(200_000, 80),
                phase(100_000, 40),
            ],
            ..BenchReport::default()
        }
    }

    #[test]
    fn the_csv_has_one_row_per_rate_in_rate_order() {
        let text = csv(&report());
        let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split(',').collect()).collect();
        assert_eq!(rows.len(), 3, "{text}");
        let width = CSV_HEADER.split(',').count();
        assert!(rows.iter().all(|r| r.len() == width), "{text}");
        assert_eq!(rows[1][..5], ["100000", "100000", "900", "20", "40"]);
        assert_eq!(rows[2][0], "200000");
    }

    #[test]
    fn only_rates_reached_count_as_sustained() {
        assert!(sustained(&phase(100_000, 40)));
        let mut slow = phase(100_000, 40);
        slow.messages = 50_000;
        assert!(!sustained(&slow));
    }

    #[test]
    fn the_plot_is_an_svg_with_every_series() {
        let dir = std::env::temp_dir().join(format!("bettong-sweep-{}", std::process::id()));
        let (csv_path, svg_path) = write(&report(), &dir.join("sweep")).unwrap();
        assert!(std::fs::read_to_string(&csv_path)
            .unwrap()
            .starts_with("target_rate,"));
        let svg = std::fs::read_to_string(&svg_path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        for label in ["probe p50", "probe p99", "probe p99.9", "engine p99"] {
            assert!(svg.contains(label), "{label} missing from the plot");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
