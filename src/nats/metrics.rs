//! A member's counters, shared by its partition tasks and printed in its `stopped` line.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// A member's counters (all since it started).
        #[derive(Debug, Default)]
        pub struct Metrics {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        impl Metrics {
            /// Every counter, as one JSON object.
            pub fn json(&self) -> serde_json::Value {
                serde_json::json!({ $(stringify!($name): self.$name.load(Relaxed),)* })
            }
        }
    };
}

counters! {
    /// Input messages read.
    input_messages,
    /// Frames read from them (valid or not).
    frames_in,
    /// Frames rejected: bad UTF-8, or the unframed rest of a message.
    frames_rejected,
    /// Words split from the valid frames.
    words,
    /// Repartition messages published.
    repartition_messages,
    /// Repartition sections skipped because they were already applied (replays).
    replayed_sections_skipped,
    /// `word => count` lines published.
    lines_out,
    /// Output messages published.
    output_messages,
    /// Checkpoints committed.
    checkpoints,
    /// Longest pause of a partition for one checkpoint (its snapshot; storing and committing
    /// run beside its work), in µs.
    checkpoint_pause_us_max,
    /// Total of those pauses, in µs.
    checkpoint_pause_us_total,
    /// Largest checkpoint object written, in bytes.
    checkpoint_bytes_max,
    /// Partitions taken.
    takes,
    /// Partitions handed over cleanly.
    releases,
    /// Partitions lost to fencing (lease run out or taken over).
    fenced,
}

impl Metrics {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Raises `gauge` to `n` if it is lower.
    pub fn max(gauge: &AtomicU64, n: u64) {
        gauge.fetch_max(n, Relaxed);
    }
}
