//! Per-core metrics: what each core did, readable live from any thread.
//!
//! Each core owns one [`CoreMetrics`] and is its only writer. The hot path counts into plain
//! local variables and publishes them with one relaxed atomic add per read or per batch, so the
//! counters cost nothing per word. Readers (the bench, the server's periodic log, tests) take a
//! [`MetricsSnapshot`] at any time.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hdrhistogram::Histogram;

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// One core's live counters. Written only by that core; read by anyone.
        #[derive(Debug, Default)]
        #[repr(align(128))]
        pub struct CoreMetrics {
            $( $(#[$doc])* pub $name: AtomicU64, )*
        }

        /// A plain copy of one core's counters (or their sum over cores).
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct MetricsSnapshot {
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl CoreMetrics {
            /// Reads every counter.
            pub fn snapshot(&self) -> MetricsSnapshot {
                MetricsSnapshot { $( $name: self.$name.load(Relaxed), )* }
            }
        }

        impl std::ops::AddAssign for MetricsSnapshot {
            fn add_assign(&mut self, o: Self) {
                $( self.$name += o.$name; )*
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

counters! {
    /// Connections accepted by this core's listener.
    connections_accepted,
    /// Connections closed because a frame header exceeded the maximum frame size.
    connections_oversized,
    /// Connections that ended inside a frame (the partial frame was dropped).
    connections_truncated,
    /// Connections closed at once because the core already had `max_connections_per_core`.
    connections_refused,
    /// Connections closed because they sent part of a frame and then nothing for `idle_timeout`.
    connections_idle_closed,
    /// Frames decoded (valid or not).
    frames_in,
    /// Frames rejected whole because their payload was not valid UTF-8.
    frames_rejected,
    /// Bytes read from sources.
    bytes_in,
    /// Keyed records produced by decoding (words, for word count).
    records_in,
    /// Records whose key this core owns: applied here without crossing a ring.
    records_local,
    /// Records copied into a batch for another core.
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
    /// Distinct keys held in this core's shard.
    keys,
    /// Approximate heap bytes of this core's shard.
    state_bytes,
    /// Times the sink connection was (re)established.
    sink_connects,
    /// Failed sink connection attempts.
    sink_connect_failures,
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
    pub fn add(counter: &AtomicU64, n: u64) {
        if n != 0 {
            counter.fetch_add(n, Relaxed);
        }
    }

    /// Sets a gauge. Only the owning core calls this.
    #[inline]
    pub fn set(counter: &AtomicU64, n: u64) {
        counter.store(n, Relaxed);
    }
}

/// One core's latency histogram: microseconds from an input's arrival at the engine (the read
/// that brought it in) to the moment the output chunk holding its result was written to the
/// sink. Recorded once per output chunk (not per record), so the lock is off the per-record path
/// and uncontended except while someone takes a snapshot.
#[derive(Debug)]
pub struct LatencyRecorder {
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
    pub fn record(&self, born: Instant) {
        let us = born.elapsed().as_micros().clamp(1, 3_600_000_000) as u64;
        if let Ok(mut h) = self.hist.lock() {
            let _ = h.record(us);
        }
    }
}

/// Checkpoints as the coordinator sees them (engine-wide, zero when checkpoints are off).
#[derive(Debug, Default)]
pub struct CheckpointMetrics {
    /// Checkpoints committed by this run (the final one included).
    pub committed: AtomicU64,
    /// Checkpoints that failed to commit (I/O errors, a sink that never took the output).
    pub failed: AtomicU64,
    /// Id of the last committed checkpoint.
    pub last_id: AtomicU64,
    /// When the last committed checkpoint was asked for, in ms since the Unix epoch.
    pub last_unix_ms: AtomicU64,
    /// The longest pause of any core in the last committed checkpoint (µs).
    pub last_pause_us: AtomicU64,
    /// The longest pause of any core in any checkpoint of this run (µs).
    pub max_pause_us: AtomicU64,
    /// Time to write and commit the last checkpoint once every snapshot was in (µs).
    pub last_commit_us: AtomicU64,
    /// Bytes of the last committed checkpoint's shard files.
    pub last_bytes: AtomicU64,
    /// Id of the checkpoint this run restored from (0: none).
    pub restored_id: AtomicU64,
}

/// Every core's metrics, shared between the cores and whoever watches them.
#[derive(Debug, Clone)]
pub struct Metrics {
    cores: Arc<[CoreMetrics]>,
    latency: Arc<[LatencyRecorder]>,
    checkpoints: Arc<CheckpointMetrics>,
}

impl Metrics {
    /// Zeroed metrics for `cores` cores.
    pub fn new(cores: usize) -> Self {
        Metrics {
            cores: (0..cores).map(|_| CoreMetrics::default()).collect(),
            latency: (0..cores).map(|_| LatencyRecorder::default()).collect(),
            checkpoints: Arc::default(),
        }
    }

    /// Engine-wide checkpoint counters (per-core pauses are in each core's counters).
    pub fn checkpoints(&self) -> &CheckpointMetrics {
        &self.checkpoints
    }

    /// Core `i`'s latency recorder.
    pub fn latency(&self, i: usize) -> &LatencyRecorder {
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

    /// Clears every latency histogram (to measure one phase of a run).
    pub fn reset_latency(&self) {
        for l in self.latency.iter() {
            if let Ok(mut h) = l.hist.lock() {
                h.reset();
            }
        }
    }

    /// Core `i`'s counters.
    pub fn core(&self, i: usize) -> &CoreMetrics {
        &self.cores[i]
    }

    /// A snapshot of each core, by core index.
    pub fn per_core(&self) -> Vec<MetricsSnapshot> {
        self.cores.iter().map(CoreMetrics::snapshot).collect()
    }

    /// The sum over all cores.
    pub fn total(&self) -> MetricsSnapshot {
        let mut t = MetricsSnapshot::default();
        for c in self.cores.iter() {
            t += c.snapshot();
        }
        t
    }
}
