//! The in-memory source, for embedding the engine, tests and in-process benchmarks.
//!
//! Each core feeds its share of a [`MemorySource`](crate::source::MemorySource) through the same
//! [`read_step`] as a TCP connection (wait for sink room, ingest, log rejects, flush), one slice
//! of frames at a time, so an in-process run measures the engine without the sockets.

use std::rc::Rc;

use crate::codec::frames;
use crate::pipeline::App;
use crate::read_step::read_step;
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
    for _ in 0..src.repeat {
        let mut pos = 0;
        while pos < share.len() {
            if worker.shutdown.is_triggered() {
                return;
            }
            let end = (pos + src.slice_bytes).min(share.len());
            let step = read_step(&worker, source, &"the memory source", |on_frame| {
                // Whole frames starting in [pos, end): a slice always makes progress.
                let mut next = pos;
                for frame in frames(&share[pos..]) {
                    let frame = frame.expect("memory sources are validated at construction");
                    if pos + frame.offset >= end {
                        break;
                    }
                    on_frame(frame.payload);
                    next = pos + frame.end();
                }
                next
            })
            .await;
            match step {
                Some(next) => pos = next,
                None => return,
            }
            if let Some(d) = src.pause {
                glommio::timer::sleep(d).await;
            }
        }
    }
}
