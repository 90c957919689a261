//! Latency probes for the benches: when each probe was sent, and the histogram of the time
//! until its output arrived. Shared by the word-count and Market Spread benches, which differ
//! only in how a probe's sequence number travels (a unique word; an order's account).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

use bettong_engine::metrics::new_histogram;
use hdrhistogram::Histogram;

use crate::bench::Percentiles;

/// Send times of up to `capacity` probes, and the histogram of their end-to-end latency (µs).
pub struct Probes {
    base: Instant,
    /// Nanoseconds after `base` at which probe `i` was sent (0: not sent).
    sent_ns: Vec<AtomicU64>,
    hist: Mutex<Histogram<u64>>,
}

impl Probes {
    /// Room for `capacity` probes, numbered from 0.
    pub fn new(capacity: usize) -> Self {
        Probes {
            base: Instant::now(),
            sent_ns: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            hist: Mutex::new(new_histogram()),
        }
    }

    /// How many probes fit.
    pub fn capacity(&self) -> usize {
        self.sent_ns.len()
    }

    /// Probe `seq` is being sent now.
    pub fn sent(&self, seq: usize) {
        if let Some(s) = self.sent_ns.get(seq) {
            s.store((self.base.elapsed().as_nanos() as u64).max(1), Relaxed);
        }
    }

    /// The output of probe `seq` arrived now: records its latency (unknown probes are ignored).
    pub fn received(&self, seq: usize) {
        let now = self.base.elapsed().as_nanos() as u64;
        let sent = self.sent_ns.get(seq).map_or(0, |s| s.load(Relaxed));
        if sent > 0 && now >= sent {
            if let Ok(mut h) = self.hist.lock() {
                let _ = h.record(((now - sent) / 1000).max(1));
            }
        }
    }

    /// Forgets every probe sent and every latency recorded (between two phases, once every
    /// probe's output has arrived).
    pub fn reset(&self) {
        for s in &self.sent_ns {
            s.store(0, Relaxed);
        }
        if let Ok(mut h) = self.hist.lock() {
            h.reset();
        }
    }

    /// The latencies recorded so far.
    pub fn percentiles(&self) -> Percentiles {
        match self.hist.lock() {
            Ok(h) => Percentiles::of(&h),
            Err(_) => Percentiles::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sent_probes_are_timed() {
        let p = Probes::new(4);
        p.received(0); // never sent
        p.sent(1);
        std::thread::sleep(std::time::Duration::from_millis(2));
        p.received(1);
        p.received(9); // out of range
        let q = p.percentiles();
        assert_eq!(q.count, 1);
        assert!(q.p50 >= 2000, "{q:?}");
        p.reset();
        p.received(1); // sent before the reset
        assert_eq!(p.percentiles().count, 0);
    }
}
