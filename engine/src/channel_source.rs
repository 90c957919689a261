//! The channel source: batches of frames handed to the engine by another thread (a message
//! broker's client running its own runtime, for instance the `bettong` NATS bridge), over
//! bounded queues, the source's **lanes**.
//!
//! A batch is any byte buffer holding whole frames back to back (4-byte big-endian length, then
//! payload): typically one broker message, which carries many frames. The producer picks a lane
//! per batch; lane `l` is read by core `l % cores` only, in order, so the order of one lane's
//! frames is kept as the order of one TCP connection's is (a broker's partition maps to a lane,
//! and one key's records, routed from one core, reach their owner in that order). With more
//! cores than lanes the extra cores read nothing from this source. The producer waits while a
//! lane is full ([`BatchSender::send`]), so a core that stops taking batches (its sink is full,
//! a peer's ring is full) slows the producer, and nothing is buffered without bound.
//!
//! A core never blocks on a lane: it awaits a batch (the producer's thread wakes it through
//! glommio's foreign wakers), then takes every batch already queued in its lanes up to
//! [`ChannelSource::step_bytes`] and hands them all to one read step (wait for sink room,
//! ingest, log rejects, flush) as every source does. A batch that is not a whole number of valid frames has its valid
//! leading frames applied, and the rest counted as one rejected frame and logged.
//!
//! The source ends when every [`BatchSender`] is dropped and the queue is empty, or at a stop:
//! then each core ingests the batch it holds and those queued at that moment, and finishes.

use std::fmt;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::codec::{FrameDecoder, FrameError, DEFAULT_MAX_FRAME};
use crate::metrics::CoreMetrics;
use crate::pipeline::App;
use crate::read_step::ingest_and_flush;
use crate::tcp::log_limit::LogLimit;
use crate::worker::Worker;

/// One batch of frames, back to back: any owned bytes (a `Vec<u8>`, a broker client's buffer).
pub type Batch = Box<dyn AsRef<[u8]> + Send>;

/// The engine side of a channel source: give it to the engine as
/// [`SourceConfig::Channel`](crate::SourceConfig::Channel). Made by [`channel_source`].
#[derive(Clone)]
pub struct ChannelSource {
    lanes: Vec<flume::Receiver<Batch>>,
    /// What the source is, in log lines (a broker URL, say).
    pub name: Arc<str>,
    /// Largest accepted frame payload; a frame announcing more ends its batch (rejected).
    pub max_frame: usize,
    /// Bytes of batches a core takes into one read step, at most (at least one batch).
    pub step_bytes: usize,
}

impl fmt::Debug for ChannelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelSource")
            .field("name", &self.name)
            .field("lanes", &self.lanes.len())
            .field("max_frame", &self.max_frame)
            .field("step_bytes", &self.step_bytes)
            .finish()
    }
}

/// The producer side of a channel source; clone it for several producers.
#[derive(Clone)]
pub struct BatchSender {
    lanes: Vec<flume::Sender<Batch>>,
}

/// The engine is gone (every core's source has finished): the batch was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the engine's channel source has finished: it takes no more batches")]
pub struct SourceClosed;

impl BatchSender {
    /// Queues `batch` on lane `lane % lanes`, waiting (asynchronously, on the caller's
    /// runtime) while that lane is full.
    pub async fn send(&self, lane: usize, batch: Batch) -> Result<(), SourceClosed> {
        let tx = &self.lanes[lane % self.lanes.len()];
        tx.send_async(batch).await.map_err(|_| SourceClosed)
    }

    /// The number of lanes.
    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// Batches queued and not yet taken by a core, over every lane.
    pub fn queued(&self) -> usize {
        self.lanes.iter().map(flume::Sender::len).sum()
    }
}

/// A channel source named `name` with `lanes` lanes (at least 1), each holding at most
/// `capacity` batches (at least 1). Give it as many lanes as the engine has cores to keep every
/// core reading.
///
/// ```
/// use bettong_engine::channel_source::channel_source;
/// let (tx, src) = channel_source("example", 2, 4);
/// assert_eq!((tx.lanes(), tx.queued()), (2, 0));
/// assert_eq!(&*src.name, "example");
/// ```
pub fn channel_source(name: &str, lanes: usize, capacity: usize) -> (BatchSender, ChannelSource) {
    let (txs, rxs) = (0..lanes.max(1))
        .map(|_| flume::bounded(capacity.max(1)))
        .unzip();
    (
        BatchSender { lanes: txs },
        ChannelSource {
            lanes: rxs,
            name: name.into(),
            max_frame: DEFAULT_MAX_FRAME,
            step_bytes: 256 * 1024,
        },
    )
}

/// Decodes `batch`'s frames into `on_frame`; returns the frames it rejected (0 or 1: the first
/// bad frame ends the batch) and why.
fn decode(decoder: &FrameDecoder, batch: &[u8], on_frame: &mut dyn FnMut(&[u8])) -> Option<String> {
    for frame in decoder.frames(batch) {
        match frame {
            Ok(f) => on_frame(f.payload),
            Err(FrameError::Truncated { offset, .. }) => {
                return Some(format!(
                    "the batch ends inside the frame at offset {offset}"
                ))
            }
            Err(FrameError::TooLarge { offset, error }) => {
                return Some(format!(
                    "the frame at offset {offset} announces {} bytes",
                    error.len
                ))
            }
        }
    }
    None
}

/// How long a core waiting for a batch goes without looking at the queue again, in case a
/// foreign wake-up was missed: a bound on the latency such a miss could add, nothing more.
const RECHECK: Duration = Duration::from_millis(5);

/// The lanes, among `lanes`, that core `core` of `cores` reads.
fn lane_indices(lanes: usize, core: usize, cores: usize) -> Vec<usize> {
    (core..lanes).step_by(cores.max(1)).collect()
}

/// The lanes core `core` of `cores` reads.
fn my_lanes(src: &ChannelSource, core: usize, cores: usize) -> Vec<flume::Receiver<Batch>> {
    lane_indices(src.lanes.len(), core, cores)
        .into_iter()
        .map(|i| src.lanes[i].clone())
        .collect()
}

/// A batch from any of `lanes` if one is queued, starting at lane `*next` (round robin);
/// `Err(true)` when every lane is closed and empty.
fn try_take(lanes: &[flume::Receiver<Batch>], next: &mut usize) -> Result<Batch, bool> {
    let mut closed = 0;
    for k in 0..lanes.len() {
        let i = (*next + k) % lanes.len();
        match lanes[i].try_recv() {
            Ok(b) => {
                *next = i;
                return Ok(b);
            }
            Err(flume::TryRecvError::Disconnected) => closed += 1,
            Err(flume::TryRecvError::Empty) => {}
        }
    }
    Err(closed == lanes.len())
}

/// Takes batches from this core's lanes of `src` until they are closed and empty, or the stop.
pub(crate) async fn run_channel_source<A: App>(
    worker: Rc<Worker<A>>,
    source: usize,
    src: ChannelSource,
    cores: usize,
) {
    let core = worker.index;
    let lanes = my_lanes(&src, core, cores);
    if lanes.is_empty() {
        return;
    }
    let decoder = FrameDecoder::new(src.max_frame);
    let bad = LogLimit::default();
    let from = src.name.clone();
    let next = std::cell::Cell::new(0usize);
    // Ingests `first` and then batches already queued in this core's lanes, up to the step's
    // bytes and at most `limit` batches.
    let take = |first: Batch, limit: usize, on_frame: &mut dyn FnMut(&[u8])| {
        let m = worker.metrics.core(core);
        let mut bytes = 0;
        let mut batch = Some(first);
        let mut taken = 0;
        while let Some(b) = batch.take() {
            let data = (*b).as_ref();
            bytes += data.len();
            taken += 1;
            if let Some(why) = decode(&decoder, data, on_frame) {
                CoreMetrics::add(&m.frames_rejected, 1);
                if let Some(held_back) = bad.allow() {
                    tracing::warn!(
                        core,
                        "core {core}: bad batch from {from}: {why}: its valid leading frames \
                         are applied, the rest is rejected (counted in frames_rejected){}",
                        LogLimit::note(held_back)
                    );
                }
            }
            if bytes < src.step_bytes && taken < limit {
                let mut n = next.get();
                batch = try_take(&lanes, &mut n).ok();
                next.set(n);
            }
        }
    };
    loop {
        let mut n = next.get();
        let ready = try_take(&lanes, &mut n);
        next.set(n);
        let batch = match ready {
            Ok(b) => b,
            Err(true) => break,
            Err(false) => {
                if worker.shutdown.is_triggered() {
                    break;
                }
                // Wait for the lane looked at first (woken by the producer), the stop, or
                // RECHECK, then look at every lane again.
                let lane = &lanes[next.get() % lanes.len()];
                let woke = futures_lite::future::or(
                    async { lane.recv_async().await.ok() },
                    futures_lite::future::or(
                        async {
                            worker.shutdown.wait().await;
                            None
                        },
                        async {
                            glommio::timer::sleep(RECHECK).await;
                            None
                        },
                    ),
                )
                .await;
                match woke {
                    Some(b) => b,
                    None => continue,
                }
            }
        };
        // As `read_step` does, but the batch already taken is ingested even when the stop
        // comes first: it was received.
        let stopped = worker.wait_room_or_stop().await;
        let limit = if stopped { 1 } else { usize::MAX };
        ingest_and_flush(&worker, source, &from, |on_frame| {
            take(batch, limit, on_frame)
        })
        .await;
        if stopped {
            break;
        }
    }
    if worker.shutdown.is_triggered() {
        // Finish what was received: the batches queued now, not those the producer adds later.
        let queued: usize = lanes.iter().map(flume::Receiver::len).sum();
        let mut n = next.get();
        if let Ok(first) = try_take(&lanes, &mut n) {
            next.set(n);
            ingest_and_flush(&worker, source, &from, |on_frame| {
                take(first, queued, on_frame)
            })
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode_frame;

    #[test]
    fn each_lane_has_one_core_and_every_lane_a_core() {
        let mut seen = [0; 5];
        for core in 0..2 {
            for i in lane_indices(5, core, 2) {
                assert_eq!(i % 2, core);
                seen[i] += 1;
            }
        }
        assert_eq!(seen, [1; 5]);
        assert!(lane_indices(5, 5, 6).is_empty());
        assert_eq!(lane_indices(2, 1, 4), [1]);
    }

    #[test]
    fn try_take_goes_round_robin_and_sees_the_end() {
        let (tx, src) = channel_source("t", 2, 4);
        let lanes = my_lanes(&src, 0, 1);
        let mut next = 0;
        assert_eq!(try_take(&lanes, &mut next).err(), Some(false));
        futures_lite::future::block_on(async {
            tx.send(1, Box::new(vec![1u8])).await.unwrap();
            tx.send(0, Box::new(vec![0u8])).await.unwrap();
        });
        let b = try_take(&lanes, &mut next).unwrap();
        assert_eq!((*b).as_ref(), [0]);
        next += 1;
        let b = try_take(&lanes, &mut next).unwrap();
        assert_eq!((*b).as_ref(), [1]);
        drop(tx);
        assert_eq!(try_take(&lanes, &mut next).err(), Some(true));
    }

    #[test]
    fn decode_applies_leading_frames_and_rejects_the_rest() {
        let mut buf = Vec::new();
        encode_frame(b"a b", &mut buf);
        encode_frame(b"c", &mut buf);
        let mut seen = Vec::new();
        let why = decode(&FrameDecoder::new(16), &buf, &mut |f| seen.push(f.to_vec()));
        assert_eq!(why, None);
        assert_eq!(seen, [b"a b".to_vec(), b"c".to_vec()]);
        buf.extend_from_slice(&[0, 0, 0, 9, b'x']);
        seen.clear();
        let why = decode(&FrameDecoder::new(16), &buf, &mut |f| seen.push(f.to_vec()));
        assert!(why.unwrap().contains("offset 12"));
        assert_eq!(seen.len(), 2);
        let mut big = Vec::new();
        encode_frame(&[b'y'; 40], &mut big);
        let why = decode(&FrameDecoder::new(16), &big, &mut |_| panic!("too large"));
        assert!(why.unwrap().contains("announces 40 bytes"));
    }
}
