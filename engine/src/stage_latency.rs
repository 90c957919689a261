//! Where a record's time goes inside the engine, per core: one histogram per stage of the data
//! path, so that a tail seen end to end can be placed.
//!
//! The stages, in a record's order ([`Stage`]):
//! 1. **arrival → decode**: from the moment the core saw the bytes (the io_uring backend: the
//!    reap of the receive's completion; the glommio backend: the return of the `recv`) to the
//!    start of the read step that decodes them;
//! 2. **decode → apply, local**: from the start of a read's decode to the end of its applies,
//!    for reads with records this core owns (the longest any of them waited);
//! 3. **decode → apply, crossed a ring**: from the start of the decode on the reading core to
//!    the owner core's apply of the batch;
//! 4. **apply → sink buffer**: from the apply that made output to the moment its chunk was
//!    queued for the sink writer;
//! 5. **sink buffer → write**: from the chunk's queueing to the end of the write that took its
//!    last byte.
//!
//! Each is recorded once per read, per batch or per output chunk, never per record: one clock
//! read and one uncontended lock per event. `BETTONG_STAGE_LATENCY=0` turns the recording off
//! (to measure what it costs).

use std::sync::Mutex;
use std::time::Instant;

use hdrhistogram::Histogram;

/// One stage of the data path (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The core saw the bytes → their read step started.
    ArrivalToDecode = 0,
    /// A read's decode started → its last local record was applied.
    DecodeToApplyLocal,
    /// The reading core's decode started → the owner applied the batch.
    DecodeToApplyCrossed,
    /// Output made → its chunk queued for the sink writer.
    ApplyToSinkBuffer,
    /// Chunk queued → its last byte written to the sink.
    SinkBufferToWrite,
}

impl Stage {
    /// Every stage, in a record's order.
    pub const ALL: [Stage; 5] = [
        Stage::ArrivalToDecode,
        Stage::DecodeToApplyLocal,
        Stage::DecodeToApplyCrossed,
        Stage::ApplyToSinkBuffer,
        Stage::SinkBufferToWrite,
    ];

    /// What it measures, one sentence (exporters' help text).
    pub fn help(self) -> &'static str {
        match self {
            Stage::ArrivalToDecode => {
                "Time from the core seeing input bytes to their read step starting."
            }
            Stage::DecodeToApplyLocal => {
                "Time from a read's decode starting to its last local record being applied."
            }
            Stage::DecodeToApplyCrossed => {
                "Time from the reading core's decode starting to the owner core applying the batch."
            }
            Stage::ApplyToSinkBuffer => {
                "Time from output being made to its chunk being queued for the sink."
            }
            Stage::SinkBufferToWrite => {
                "Time from an output chunk being queued to its last byte being written to the sink."
            }
        }
    }

    /// A short name, as the bench prints it and exporters label it.
    pub fn name(self) -> &'static str {
        match self {
            Stage::ArrivalToDecode => "arrival_to_decode",
            Stage::DecodeToApplyLocal => "decode_to_apply_local",
            Stage::DecodeToApplyCrossed => "decode_to_apply_crossed",
            Stage::ApplyToSinkBuffer => "apply_to_sink_buffer",
            Stage::SinkBufferToWrite => "sink_buffer_to_write",
        }
    }
}

/// An empty histogram of nanoseconds, 1 ns to 10 minutes, 2 significant digits (1 %).
pub fn new_stage_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 2).expect("static histogram bounds are valid")
}

/// One core's stage histograms (nanoseconds). Written by that core only.
#[derive(Debug)]
pub(crate) struct StageRecorder {
    on: bool,
    hists: [Mutex<Histogram<u64>>; 5],
}

impl StageRecorder {
    /// Recording unless `BETTONG_STAGE_LATENCY=0`.
    pub(crate) fn new(on: bool) -> Self {
        StageRecorder {
            on,
            hists: std::array::from_fn(|_| Mutex::new(new_stage_histogram())),
        }
    }

    /// Records the time from `from` to `to` (zero if `to` is earlier).
    #[inline]
    pub(crate) fn record(&self, stage: Stage, from: Instant, to: Instant) {
        if !self.on {
            return;
        }
        let ns = to.saturating_duration_since(from).as_nanos();
        let ns = ns.clamp(1, 600_000_000_000) as u64;
        if let Ok(mut h) = self.hists[stage as usize].lock() {
            let _ = h.record(ns);
        }
    }

    /// Records the time from `from` until now.
    #[inline]
    pub(crate) fn record_since(&self, stage: Stage, from: Instant) {
        if self.on {
            self.record(stage, from, Instant::now());
        }
    }

    /// A copy of one stage's histogram.
    pub(crate) fn histogram(&self, stage: Stage) -> Histogram<u64> {
        match self.hists[stage as usize].lock() {
            Ok(h) => h.clone(),
            Err(_) => new_stage_histogram(),
        }
    }

    /// Clears every stage.
    pub(crate) fn reset(&self) {
        for h in &self.hists {
            if let Ok(mut h) = h.lock() {
                h.reset();
            }
        }
    }
}

/// True unless the environment says `BETTONG_STAGE_LATENCY=0` (or `off`, `false`).
pub(crate) fn enabled_from_env() -> bool {
    !matches!(
        std::env::var("BETTONG_STAGE_LATENCY").as_deref(),
        Ok("0" | "off" | "false")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn records_each_stage_apart_and_resets() {
        let r = StageRecorder::new(true);
        let t = Instant::now();
        r.record(Stage::ArrivalToDecode, t, t + Duration::from_micros(5));
        r.record(Stage::SinkBufferToWrite, t, t + Duration::from_millis(2));
        r.record(Stage::SinkBufferToWrite, t + Duration::from_secs(1), t); // backwards: 0
        let a = r.histogram(Stage::ArrivalToDecode);
        assert_eq!(a.len(), 1);
        assert!((4_950..=5_050).contains(&a.max()), "{}", a.max());
        let w = r.histogram(Stage::SinkBufferToWrite);
        assert_eq!(w.len(), 2);
        assert_eq!(w.min(), 1);
        assert_eq!(r.histogram(Stage::DecodeToApplyCrossed).len(), 0);
        r.reset();
        assert_eq!(r.histogram(Stage::SinkBufferToWrite).len(), 0);
    }

    #[test]
    fn off_records_nothing() {
        let r = StageRecorder::new(false);
        r.record_since(Stage::ApplyToSinkBuffer, Instant::now());
        assert_eq!(r.histogram(Stage::ApplyToSinkBuffer).len(), 0);
    }

    #[test]
    fn names_are_distinct_and_in_order() {
        let names: Vec<_> = Stage::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names[0], "arrival_to_decode");
        assert_eq!(names[4], "sink_buffer_to_write");
        let mut dedup = names.clone();
        dedup.dedup();
        assert_eq!(dedup.len(), 5);
        for (i, s) in Stage::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i);
        }
    }
}
