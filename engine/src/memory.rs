//! The in-memory source and sink, for embedding the engine, tests and in-process benchmarks.
//!
//! Each core feeds its share of a [`MemorySource`](crate::MemorySource) through exactly the same
//! ingest and flush path as a TCP connection, one slice of frames at a time, so an in-process run
//! measures the engine without the sockets.

use std::rc::Rc;

use crate::codec::FrameDecoder;
use crate::pipeline::App;
use crate::source::MemorySource;
use crate::worker::Worker;

/// Feeds this core's share of `src`, `src.repeat` times, stopping early on shutdown.
pub(crate) async fn run_memory_source<A: App>(
    worker: Rc<Worker<A>>,
    source: usize,
    src: MemorySource,
    cores: usize,
) {
    let share = src.share(worker.index, cores);
    let decoder = FrameDecoder::new(u32::MAX as usize);
    for _ in 0..src.repeat {
        let mut pos = 0;
        while pos < share.len() {
            if worker.shutdown.is_triggered() {
                return;
            }
            let end = (pos + src.slice_bytes).min(share.len());
            let (consumed, _) = worker.ingest(source, |on_frame| {
                // Whole frames starting in [pos, end): a slice always makes progress.
                let mut p = pos;
                while p < end {
                    match decoder.decode(&share[p..]) {
                        Ok(Some((frame, used))) => {
                            on_frame(frame);
                            p += used;
                        }
                        _ => unreachable!("memory sources are validated at construction"),
                    }
                }
                p
            });
            pos = consumed;
            worker.flush().await;
            if let Some(d) = src.pause {
                glommio::timer::sleep(d).await;
            }
        }
    }
}
