//! The channel sink: each core's encoded output handed, chunk by chunk, to another thread (a
//! message broker's client running its own runtime, for instance the `bettong` NATS bridge)
//! over one bounded queue shared by every core.
//!
//! Each core's writer takes the chunks its tasks produce, in order, and queues them. While the
//! queue is full the writer waits (asynchronously: the consumer's thread wakes it through
//! glommio's foreign wakers), the core's sink port fills, and then the sources stop reading, as
//! with a slow TCP receiver: a slow broker slows consumption, and nothing is buffered without
//! bound. A chunk holds whole records (every output of a read or batch), tagged with its core;
//! one core's chunks arrive in the order they were produced.
//!
//! `bytes_out` counts a chunk once it is queued. When the consumer is gone (every
//! [`ChunkReceiver`] dropped), or stays full for [`ChannelSinkConfig::shutdown_grace`] after a
//! stop, the output is dropped, counted in `sink_bytes_dropped` and logged.

use std::rc::Rc;
use std::time::Duration;

use futures_lite::future::or;

use crate::metrics::{CoreMetrics, Metrics};
use crate::shutdown::Shutdown;
use crate::sink::{SinkPort, DEFAULT_MAX_HELD_BYTES};

/// One core's output, whole records, in the order that core produced them.
#[derive(Debug)]
pub struct OutputChunk {
    /// The core that produced it.
    pub core: usize,
    /// Encoded output records.
    pub bytes: Vec<u8>,
}

/// The engine side of a channel sink: give it to the engine as
/// [`SinkConfig::Channel`](crate::SinkConfig::Channel). Made by [`channel_sink`].
#[derive(Debug, Clone)]
pub struct ChannelSinkConfig {
    tx: flume::Sender<OutputChunk>,
    /// Most bytes of output each core holds (handed to its writer, not yet queued) before the
    /// tasks producing output wait, and with them the sources.
    pub max_held_bytes: usize,
    /// After a stop, how long the queue may stay full before the core drops what it holds.
    pub shutdown_grace: Duration,
}

/// The consumer side of a channel sink.
pub struct ChunkReceiver {
    rx: flume::Receiver<OutputChunk>,
}

impl ChunkReceiver {
    /// The next chunk, waiting (asynchronously, on the caller's runtime); `None` once every core
    /// has finished its output and the queue is empty.
    pub async fn recv(&self) -> Option<OutputChunk> {
        self.rx.recv_async().await.ok()
    }

    /// The next chunk if one is queued now.
    pub fn try_recv(&self) -> Option<OutputChunk> {
        self.rx.try_recv().ok()
    }
}

/// A channel sink whose queue holds at most `capacity` chunks (at least 1).
///
/// ```
/// use bettong_engine::channel_sink::channel_sink;
/// let (cfg, rx) = channel_sink(8);
/// assert!(rx.try_recv().is_none());
/// assert_eq!(cfg.max_held_bytes, bettong_engine::sink::DEFAULT_MAX_HELD_BYTES);
/// ```
pub fn channel_sink(capacity: usize) -> (ChannelSinkConfig, ChunkReceiver) {
    let (tx, rx) = flume::bounded(capacity.max(1));
    (
        ChannelSinkConfig {
            tx,
            max_held_bytes: DEFAULT_MAX_HELD_BYTES,
            shutdown_grace: Duration::from_secs(10),
        },
        ChunkReceiver { rx },
    )
}

/// Drains a core's output into the queue of `cfg`.
pub(crate) async fn run_channel_sink(
    cfg: ChannelSinkConfig,
    rx: Rc<SinkPort>,
    metrics: Metrics,
    core: usize,
    shutdown: Shutdown,
) {
    rx.limit_held(cfg.max_held_bytes);
    let m = metrics.core(core);
    let mut dropped = 0usize;
    let mut why = "";
    while let Some(mut chunk) = rx.next().await {
        let n = chunk.bytes.len();
        // The bytes go to the other thread: this chunk is not recycled.
        if why.is_empty() {
            let out = OutputChunk {
                core,
                bytes: std::mem::take(&mut chunk.bytes),
            };
            let sent = or(
                async { Some(cfg.tx.send_async(out).await.is_ok()) },
                async {
                    shutdown.wait().await;
                    glommio::timer::sleep(cfg.shutdown_grace).await;
                    None
                },
            )
            .await;
            match sent {
                Some(true) => {
                    CoreMetrics::add(&m.bytes_out, n as u64);
                    chunk.written(&metrics, core);
                }
                Some(false) => why = "its consumer is gone",
                None => why = "its queue stayed full past the shutdown grace after the stop",
            }
        }
        if !why.is_empty() {
            dropped += n;
            CoreMetrics::add(&m.sink_bytes_dropped, n as u64);
        }
        rx.release(n);
    }
    if dropped > 0 {
        tracing::error!(
            core,
            "core {core}: dropped {dropped} bytes of output for the channel sink: {why} \
             (counted in sink_bytes_dropped)"
        );
    }
}
