//! Per-core metrics: what each core did, readable live from any thread.
//!
//! Each core owns one [`CoreMetrics`] and is its only writer. The hot path counts into plain
//! local variables and publishes them with one relaxed atomic add per read or per batch, so the
//! counters cost nothing per word. Readers (a [`Running`](crate::Running) engine's caller, the
//! bench, the server's `stopped` line and final log, tests) take a [`MetricsSnapshot`] at any
//! time; nothing in the engine logs them on its own.
//!
//! Summing snapshots over cores ([`Metrics::total`], `+=`) follows one rule per kind of field:
//! - counters (`frames_in`, `outputs`, …, `checkpoint_pause_us_total`) and size gauges (`keys`,
//!   `state_bytes`, `checkpoint_in_flight_last`, `checkpoint_bytes_last`) **add up**, so the
//!   total is the engine's: every key held, the whole last checkpoint's bytes;
//! - gauges ending in `_max` (the longest pause so far) and durations ending in `_us_last` (the
//!   pause at the last checkpoint) take the **maximum** over cores: cores pause side by side,
//!   so the engine's longest pause is the longest core's, not the sum.

use std::fmt;
use std::sync::atomic::{
    AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hdrhistogram::Histogram;

use crate::stage_latency::{Stage, StageRecorder};

macro_rules! counters {
    ($( $(#[doc = $doc:literal])* $name:ident ),* $(,)?) => {
        /// One core's live counters. Written only by that core; read by anyone.
        #[derive(Debug, Default)]
        #[repr(align(128))]
        pub(crate) struct CoreMetrics {
            $( $(#[doc = $doc])* pub(crate) $name: AtomicU64, )*
        }

        /// Each counter's doc comment, in the order of [`MetricsSnapshot::fields`] (exporters'
        /// help texts).
        pub fn field_docs() -> Vec<&'static str> {
            vec![ $( concat!($($doc, )* "").trim_start(), )* ]
        }

        /// A plain copy of one core's counters, or their total over cores (`+=`: see the
        /// [module docs](self) for which fields add up and which take the maximum).
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct MetricsSnapshot {
            $( $(#[doc = $doc])* pub $name: u64, )*
        }

        impl MetricsSnapshot {
            /// Every counter with its name, in declaration order (for exporters: JSON lines,
            /// Prometheus).
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![ $( (stringify!($name), self.$name), )* ]
            }
        }

        impl CoreMetrics {
            /// Reads every counter.
            pub(crate) fn snapshot(&self) -> MetricsSnapshot {
                // Acquire, in declaration order: once `frames_in` shows a read's frames, the
                // counters read after it show that read's records ([`CoreMetrics::publish_read`]).
                MetricsSnapshot { $( $name: self.$name.load(Acquire), )* }
            }
        }

        /// Combines another core's snapshot into this total: `_max` gauges and `_us_last`
        /// durations take the maximum, every other field adds up (see the module docs).
        impl std::ops::AddAssign for MetricsSnapshot {
            fn add_assign(&mut self, o: Self) {
                $(
                    self.$name = if takes_max(stringify!($name)) {
                        self.$name.max(o.$name)
                    } else {
                        self.$name + o.$name
                    };
                )*
            }
        }

        impl fmt::Display for MetricsSnapshot {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut first = true;
                $(
                    if !first { f.write_str(" ")?; }
                    first = false;
                    write!(f, "{}={}", stringify!($name), self.$name)?;
                )*
                let _ = first;
                Ok(())
            }
        }
    };
}

/// True for the fields whose total over cores is their maximum, not their sum: gauges named
/// `*_max` and durations named `*_us_last`.
const fn takes_max(name: &str) -> bool {
    let b = name.as_bytes();
    ends_with(b, b"_max") || ends_with(b, b"_us_last")
}

const fn ends_with(s: &[u8], suffix: &[u8]) -> bool {
    if s.len() < suffix.len() {
        return false;
    }
    let off = s.len() - suffix.len();
    let mut i = 0;
    while i < suffix.len() {
        if s[off + i] != suffix[i] {
            return false;
        }
        i += 1;
    }
    true
}

counters! {
    /// Connections this core reads: accepted by its listener, or handed over by another core.
    connections_accepted,
    /// Connections this core's listener accepted and handed to a core with fewer open.
    connections_handed_off,
    /// Connections closed because a frame header exceeded the maximum frame size.
    connections_oversized,
    /// Connections that ended inside a frame (the partial frame was dropped).
    connections_truncated,
    /// Connections closed at once because the core already had `max_connections_per_core`.
    connections_refused,
    /// Connections closed because they sent part of a frame and then nothing for `idle_timeout`,
    /// or did not complete a frame within `frame_timeout` of waiting from its first byte.
    connections_idle_closed,
    /// Connections closed because the core's partial frames went over `partial_frame_budget`
    /// bytes (the connections holding the most are closed first).
    connections_over_budget,
    /// Source connections open now (a gauge).
    connections_open,
    /// Frames decoded (valid or not).
    frames_in,
    /// Frames rejected whole by the pipeline's decoder (for a text pipeline: not valid UTF-8).
    frames_rejected,
    /// Keyed records dropped because their key was longer than `max_key_bytes` (the other
    /// records of their frame still count).
    keys_rejected,
    /// Bytes read from sources.
    bytes_in,
    /// Keyed records produced by decoding (words, for word count).
    records_in,
    /// Records whose key this core owns: applied here without crossing a ring.
    records_local,
    /// Records moved into a batch for another core, at any `key_by` of the pipeline.
    records_routed,
    /// Batches sent to other cores.
    batches_sent,
    /// Times a send found the ring to the destination full and had to wait.
    ring_full_stalls,
    /// Records applied to this core's state (its own and those routed to it).
    records_applied,
    /// Outputs encoded for the sink.
    outputs,
    /// Bytes written to the sink.
    bytes_out,
    /// Distinct keys held in this core's shards (of every state step).
    keys,
    /// Approximate heap bytes of this core's shards (of every state step).
    state_bytes,
    /// Times the sink connection was (re)established.
    sink_connects,
    /// Failed sink connection attempts.
    sink_connect_failures,
    /// 1 while this core's sink connection is up, 0 while it is down or closed (a gauge; the
    /// total is the number of cores connected).
    sink_connected,
    /// Bytes handed to a sink connection that then broke: they may not have arrived.
    sink_bytes_at_risk,
    /// Bytes of output never written: the sink stayed unreachable (or took nothing) for
    /// `shutdown_grace` after a stop was requested.
    sink_bytes_dropped,
    /// Checkpoint snapshots this core took.
    checkpoints,
    /// How long the last checkpoint stopped this core's data path (µs): the time to copy its
    /// shard out at the cut. Nothing else waits for a checkpoint.
    checkpoint_pause_us_last,
    /// The longest such pause so far (µs).
    checkpoint_pause_us_max,
    /// All such pauses added up (µs): divided by `checkpoints`, the mean pause.
    checkpoint_pause_us_total,
    /// Records in flight to this core at the last checkpoint's cut, saved with its snapshot.
    checkpoint_in_flight_last,
    /// Bytes of this core's last snapshot.
    checkpoint_bytes_last,
}

impl CoreMetrics {
    /// Adds `n` to a counter. Only the owning core calls this.
    #[inline]
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        if n != 0 {
            counter.fetch_add(n, Relaxed);
        }
    }

    /// Publishes what one read (or memory slice) brought in, so that a snapshot never sees its
    /// frames without its records: every other count goes first, `frames_in` last with
    /// `Release`, and [`CoreMetrics::snapshot`] loads `frames_in` (declared before the others)
    /// with `Acquire` before them. Only the owning core calls this.
    pub(crate) fn publish_read(&self, r: &ReadCounts) {
        Self::add(&self.frames_rejected, r.rejected);
        Self::add(&self.keys_rejected, r.keys_rejected);
        Self::add(&self.bytes_in, r.bytes);
        Self::add(&self.records_in, r.records);
        Self::add(&self.records_local, r.local);
        Self::add(&self.records_routed, r.routed);
        Self::add(&self.records_applied, r.applied);
        Self::add(&self.outputs, r.outputs);
        if r.frames != 0 {
            self.frames_in.fetch_add(r.frames, Release);
        }
    }

    /// Subtracts `n` from a gauge. Only the owning core calls this.
    #[inline]
    pub(crate) fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Relaxed);
    }

    /// Sets a gauge. Only the owning core calls this.
    #[inline]
    pub(crate) fn set(counter: &AtomicU64, n: u64) {
        counter.store(n, Relaxed);
    }
}

/// What one read added to its core's counters ([`CoreMetrics::publish_read`]).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ReadCounts {
    pub frames: u64,
    pub rejected: u64,
    pub keys_rejected: u64,
    pub bytes: u64,
    pub records: u64,
    pub local: u64,
    pub routed: u64,
    pub applied: u64,
    pub outputs: u64,
}

/// One core's latency histogram: microseconds from an input's arrival at the engine (the read
/// that brought it in) to the moment the output chunk holding its result was written to the
/// sink. Recorded once per output chunk (not per record), so the lock is off the per-record path
/// and uncontended except while someone takes a snapshot.
#[derive(Debug)]
pub(crate) struct LatencyRecorder {
    hist: Mutex<Histogram<u64>>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        LatencyRecorder {
            hist: Mutex::new(new_histogram()),
        }
    }
}

/// An empty histogram of microseconds, 1 µs to 1 hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

impl LatencyRecorder {
    /// Records the time from `born` until now.
    pub(crate) fn record(&self, born: Instant) {
        let us = born.elapsed().as_micros().clamp(1, 3_600_000_000) as u64;
        if let Ok(mut h) = self.hist.lock() {
            let _ = h.record(us);
        }
    }

    /// A copy of the histogram. The lock is held only for the copy of its counts (one
    /// allocation and a `memcpy`), so a reader delays the core's next `record` by that at most.
    pub(crate) fn copy(&self) -> Histogram<u64> {
        match self.hist.lock() {
            Ok(h) => h.clone(),
            Err(_) => new_histogram(),
        }
    }
}

/// One histogram of every core, by name, for exporters ([`Metrics::histograms`]).
#[derive(Debug, Clone)]
pub struct NamedHistogram {
    /// Its name without unit, `snake_case` (the Prometheus exporter makes it
    /// `bettong_<name>_seconds`).
    pub name: &'static str,
    /// What it measures, one sentence.
    pub help: &'static str,
    /// Each core's histogram, by core index, in microseconds.
    pub per_core: Vec<Histogram<u64>>,
}

/// A stage histogram of nanoseconds as one of microseconds, the unit of [`NamedHistogram`]
/// (values under a microsecond count as 0 µs).
fn nanos_to_micros(ns: &Histogram<u64>) -> Histogram<u64> {
    // The stages' own precision (2 significant digits): an eighth of `new_histogram`'s memory,
    // which matters because exporters convert every stage of every core at each sample.
    let mut us =
        Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("static histogram bounds are valid");
    for v in ns.iter_recorded() {
        us.saturating_record_n(v.value_iterated_to() / 1000, v.count_at_value());
    }
    us
}

/// Checkpoints as the coordinator sees them (engine-wide, zero when checkpoints are off).
///
/// Written only by the engine; [`Metrics::checkpoint_stats`] gives a plain copy.
#[derive(Debug, Default)]
pub(crate) struct CheckpointMetrics {
    pub(crate) committed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) last_id: AtomicU64,
    pub(crate) last_unix_ms: AtomicU64,
    pub(crate) last_pause_us: AtomicU64,
    pub(crate) max_pause_us: AtomicU64,
    pub(crate) last_commit_us: AtomicU64,
    pub(crate) last_bytes: AtomicU64,
    pub(crate) restored_id: AtomicU64,
}

/// Checkpoints as the coordinator sees them (engine-wide, zero when checkpoints are off): a
/// plain copy, from [`Metrics::checkpoint_stats`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointStats {
    /// Checkpoints committed by this run (the final one included).
    pub committed: u64,
    /// Checkpoints that failed to commit (I/O errors, a sink that never took the output).
    pub failed: u64,
    /// Id of the last committed checkpoint.
    pub last_id: u64,
    /// When the last committed checkpoint was asked for, in ms since the Unix epoch.
    pub last_unix_ms: u64,
    /// The longest pause of any core in the last committed checkpoint (µs).
    pub last_pause_us: u64,
    /// The longest pause of any core in any checkpoint of this run (µs).
    pub max_pause_us: u64,
    /// Time to write and commit the last checkpoint once every snapshot was in (µs).
    pub last_commit_us: u64,
    /// Bytes of the last committed checkpoint's shard files.
    pub last_bytes: u64,
    /// Id of the checkpoint this run restored from (0: none).
    pub restored_id: u64,
}

/// Every core's metrics, shared between the cores and whoever watches them.
#[derive(Debug, Clone)]
pub struct Metrics {
    cores: Arc<[CoreMetrics]>,
    latency: Arc<[LatencyRecorder]>,
    stages: Arc<[StageRecorder]>,
    checkpoints: Arc<CheckpointMetrics>,
}

impl Metrics {
    /// Zeroed metrics for `cores` cores.
    pub(crate) fn new(cores: usize) -> Self {
        Metrics {
            cores: (0..cores).map(|_| CoreMetrics::default()).collect(),
            latency: (0..cores).map(|_| LatencyRecorder::default()).collect(),
            stages: {
                let on = crate::stage_latency::enabled_from_env();
                (0..cores).map(|_| StageRecorder::new(on)).collect()
            },
            checkpoints: Arc::default(),
        }
    }

    /// Engine-wide checkpoint counters (per-core pauses are in each core's counters).
    pub(crate) fn checkpoints(&self) -> &CheckpointMetrics {
        &self.checkpoints
    }

    /// A copy of the engine-wide checkpoint counters.
    pub fn checkpoint_stats(&self) -> CheckpointStats {
        let c = &self.checkpoints;
        CheckpointStats {
            committed: c.committed.load(Relaxed),
            failed: c.failed.load(Relaxed),
            last_id: c.last_id.load(Relaxed),
            last_unix_ms: c.last_unix_ms.load(Relaxed),
            last_pause_us: c.last_pause_us.load(Relaxed),
            max_pause_us: c.max_pause_us.load(Relaxed),
            last_commit_us: c.last_commit_us.load(Relaxed),
            last_bytes: c.last_bytes.load(Relaxed),
            restored_id: c.restored_id.load(Relaxed),
        }
    }

    /// Core `i`'s latency recorder.
    pub(crate) fn latency(&self, i: usize) -> &LatencyRecorder {
        &self.latency[i]
    }

    /// Every core's latency histogram merged (microseconds, arrival to output written).
    pub fn latency_histogram(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for l in self.latency.iter() {
            if let Ok(h) = l.hist.lock() {
                let _ = all.add(&*h);
            }
        }
        all
    }

    /// Every histogram the engine keeps, each core's copy, for exporters (the monitor's
    /// `/metrics` and `/metrics.json`, progress lines). A new histogram appears in all of them
    /// once it is listed here.
    pub fn histograms(&self) -> Vec<NamedHistogram> {
        let mut all = vec![NamedHistogram {
            name: "latency",
            help: "Time from an input's arrival at the engine to its output being written to \
                   the sink.",
            per_core: self.latency.iter().map(LatencyRecorder::copy).collect(),
        }];
        all.extend(self.stage_histograms().into_iter().zip(Stage::ALL).map(
            |((name, per_core), stage)| NamedHistogram {
                name,
                help: stage.help(),
                per_core: per_core.iter().map(nanos_to_micros).collect(),
            },
        ));
        all
    }

    /// Clears every latency histogram, the stages' included (to measure one phase of a run).
    pub fn reset_latency(&self) {
        for l in self.latency.iter() {
            if let Ok(mut h) = l.hist.lock() {
                h.reset();
            }
        }
        self.stages.iter().for_each(StageRecorder::reset);
    }

    /// Core `i`'s stage recorder.
    pub(crate) fn stages(&self, i: usize) -> &StageRecorder {
        &self.stages[i]
    }

    /// Every stage of the data path ([`Stage::ALL`] order) with each core's histogram of it,
    /// by core index, in **nanoseconds** (see [`stage_latency`](crate::stage_latency)).
    pub fn stage_histograms(&self) -> Vec<(&'static str, Vec<Histogram<u64>>)> {
        Stage::ALL
            .iter()
            .map(|&s| {
                (
                    s.name(),
                    self.stages.iter().map(|r| r.histogram(s)).collect(),
                )
            })
            .collect()
    }

    /// Core `i`'s counters.
    pub(crate) fn core(&self, i: usize) -> &CoreMetrics {
        &self.cores[i]
    }

    /// A snapshot of each core, by core index.
    pub fn per_core(&self) -> Vec<MetricsSnapshot> {
        self.cores.iter().map(CoreMetrics::snapshot).collect()
    }

    /// The total over all cores: counters and sizes summed, `_max` gauges and `_us_last`
    /// durations the maximum (see the module docs).
    pub fn total(&self) -> MetricsSnapshot {
        let mut t = MetricsSnapshot::default();
        for c in self.cores.iter() {
            t += c.snapshot();
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn totals_sum_counters_and_sizes_but_take_the_max_of_max_gauges_and_pauses() {
        let a = MetricsSnapshot {
            frames_in: 10,
            keys: 3,
            state_bytes: 300,
            checkpoints: 2,
            checkpoint_pause_us_last: 40,
            checkpoint_pause_us_max: 900,
            checkpoint_pause_us_total: 1000,
            checkpoint_in_flight_last: 5,
            checkpoint_bytes_last: 64,
            ..MetricsSnapshot::default()
        };
        let b = MetricsSnapshot {
            frames_in: 7,
            keys: 4,
            state_bytes: 100,
            checkpoints: 2,
            checkpoint_pause_us_last: 70,
            checkpoint_pause_us_max: 500,
            checkpoint_pause_us_total: 600,
            checkpoint_in_flight_last: 1,
            checkpoint_bytes_last: 36,
            ..MetricsSnapshot::default()
        };
        let mut t = MetricsSnapshot::default();
        t += a;
        t += b;
        // Counters and sizes add up.
        assert_eq!(t.frames_in, 17);
        assert_eq!(t.keys, 7);
        assert_eq!(t.state_bytes, 400);
        assert_eq!(t.checkpoints, 4);
        assert_eq!(t.checkpoint_pause_us_total, 1600);
        assert_eq!(t.checkpoint_in_flight_last, 6);
        assert_eq!(t.checkpoint_bytes_last, 100);
        // Pauses happen side by side on the cores: the longest one, not a sum.
        assert_eq!(t.checkpoint_pause_us_max, 900);
        assert_eq!(t.checkpoint_pause_us_last, 70);
    }

    #[test]
    fn metrics_total_follows_the_same_rule() {
        let m = Metrics::new(2);
        CoreMetrics::add(&m.core(0).outputs, 2);
        CoreMetrics::add(&m.core(1).outputs, 3);
        CoreMetrics::set(&m.core(0).checkpoint_pause_us_max, 8);
        CoreMetrics::set(&m.core(1).checkpoint_pause_us_max, 5);
        let t = m.total();
        assert_eq!(t.outputs, 5);
        assert_eq!(t.checkpoint_pause_us_max, 8);
    }

    #[test]
    fn a_snapshot_never_sees_a_reads_frames_without_its_records() {
        // The snapshot relies on `frames_in` being loaded before the counts it guards.
        let names: Vec<_> = MetricsSnapshot::default()
            .fields()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let at = |n: &str| names.iter().position(|&x| x == n).unwrap();
        for later in [
            "records_in",
            "records_local",
            "records_applied",
            "bytes_in",
            "outputs",
        ] {
            assert!(
                at("frames_in") < at(later),
                "{later} is declared before frames_in"
            );
        }
        // A core publishing reads of 1 frame and 10 records while another thread snapshots.
        let m = Metrics::new(1);
        let done = AtomicBool::new(false);
        let read = ReadCounts {
            frames: 1,
            bytes: 64,
            records: 10,
            local: 10,
            applied: 10,
            outputs: 10,
            ..ReadCounts::default()
        };
        let (checked, torn) = std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..300_000 {
                    m.core(0).publish_read(&read);
                }
                done.store(true, Relaxed);
            });
            let (mut checked, mut torn) = (0u64, None);
            while !done.load(Relaxed) {
                let t = m.total();
                checked += 1;
                if t.records_in < 10 * t.frames_in || t.bytes_in < 64 * t.frames_in {
                    torn.get_or_insert((t.frames_in, t.records_in, t.bytes_in));
                }
            }
            (checked, torn)
        });
        assert_eq!(
            torn, None,
            "a snapshot (frames, records, bytes) saw frames without their records ({checked} taken)"
        );
        let t = m.total();
        assert_eq!((t.frames_in, t.records_in), (300_000, 3_000_000));
    }

    #[test]
    fn only_max_gauges_and_pause_durations_take_the_max() {
        assert!(takes_max("checkpoint_pause_us_max"));
        assert!(takes_max("checkpoint_pause_us_last"));
        assert!(!takes_max("checkpoint_bytes_last"));
        assert!(!takes_max("checkpoint_in_flight_last"));
        assert!(!takes_max("checkpoint_pause_us_total"));
        assert!(!takes_max("keys"));
    }
}
