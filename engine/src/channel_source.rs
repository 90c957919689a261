//! The channel source: batches of frames handed to the engine by another thread (a message
//! broker's client running its own runtime, for instance the `bettong` NATS bridge), over one
//! bounded queue shared by every core.
//!
//! A batch is any byte buffer holding whole frames back to back (4-byte big-endian length, then
//! payload): typically one broker message, which carries many frames. The producer waits while
//! the queue is full ([`BatchSender::send`]), so a core that stops taking batches (its sink is
//! full, a peer's ring is full) slows the producer, and nothing is buffered without bound.
//!
//! A core never blocks on the queue: it awaits a batch (the producer's thread wakes it through
//! glommio's foreign wakers), then takes every batch already queued up to
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
    rx: flume::Receiver<Batch>,
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
            .field("queued", &self.rx.len())
            .field("max_frame", &self.max_frame)
            .field("step_bytes", &self.step_bytes)
            .finish()
    }
}

/// The producer side of a channel source; clone it for several producers.
#[derive(Clone)]
pub struct BatchSender {
    tx: flume::Sender<Batch>,
}

/// The engine is gone (every core's source has finished): the batch was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the engine's channel source has finished: it takes no more batches")]
pub struct SourceClosed;

impl BatchSender {
    /// Queues `batch`, waiting (asynchronously, on the caller's runtime) while the queue is full.
    pub async fn send(&self, batch: Batch) -> Result<(), SourceClosed> {
        self.tx.send_async(batch).await.map_err(|_| SourceClosed)
    }

    /// Batches queued and not yet taken by a core.
    pub fn queued(&self) -> usize {
        self.tx.len()
    }

    /// True once every core's source has finished.
    pub fn is_closed(&self) -> bool {
        self.tx.is_disconnected()
    }
}

/// A channel source named `name` whose queue holds at most `capacity` batches (at least 1).
///
/// ```
/// use bettong_engine::channel_source::channel_source;
/// let (tx, src) = channel_source("example", 4);
/// assert_eq!(tx.queued(), 0);
/// assert_eq!(&*src.name, "example");
/// ```
pub fn channel_source(name: &str, capacity: usize) -> (BatchSender, ChannelSource) {
    let (tx, rx) = flume::bounded(capacity.max(1));
    (
        BatchSender { tx },
        ChannelSource {
            rx,
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

/// Takes batches from `src` until it is closed and empty, or the stop.
pub(crate) async fn run_channel_source<A: App>(
    worker: Rc<Worker<A>>,
    source: usize,
    src: ChannelSource,
) {
    let core = worker.index;
    let decoder = FrameDecoder::new(src.max_frame);
    let bad = LogLimit::default();
    let from = src.name.clone();
    // Ingests `first` and then every batch already queued, up to the step's bytes (or, at the
    // stop, up to `limit` batches).
    let take = |first: Batch, limit: usize, on_frame: &mut dyn FnMut(&[u8])| {
        let m = worker.metrics.core(core);
        let mut bytes = 0;
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(batch) = next.take() {
            let data = (*batch).as_ref();
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
                next = src.rx.try_recv().ok();
            }
        }
    };
    loop {
        let batch = futures_lite::future::or(
            async { Some(src.rx.recv_async().await.ok()) },
            futures_lite::future::or(
                async {
                    worker.shutdown.wait().await;
                    Some(None)
                },
                async {
                    glommio::timer::sleep(RECHECK).await;
                    None
                },
            ),
        )
        .await;
        let batch = match batch {
            Some(Some(b)) => b,
            // Closed and empty, or the stop.
            Some(None) => break,
            None => match src.rx.try_recv() {
                Ok(b) => b,
                Err(flume::TryRecvError::Empty) => continue,
                Err(flume::TryRecvError::Disconnected) => break,
            },
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
        let queued = src.rx.len();
        if let Ok(first) = src.rx.try_recv() {
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
