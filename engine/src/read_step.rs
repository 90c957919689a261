//! The one step every source takes per read: wait until the sink has room (or the stop), hand
//! the frames read to the worker, log rejected frames, flush.
//!
//! Every source (TCP on either backend, a memory buffer, a file) reads through [`read_step`], so
//! they all obey the same backpressure and report the same way:
//! - the wait for sink room comes first: a stalled sink stops the reading, and for a socket TCP
//!   flow control then pushes back on the sender;
//! - frames whose payload the pipeline rejects are counted by the worker (`frames_rejected`) and
//!   logged here at most once a second per core ([`Worker::may_log_reject`]);
//! - the flush waits while a ring to another core or the sink queue is full, which is how a slow
//!   core or sink slows every source.

use std::fmt;

use crate::pipeline::App;
use crate::worker::{Ingested, Worker};

/// Waits until the sink has room, then [`ingest_and_flush`]. None when the stop came first
/// (nothing was ingested): the source should finish.
pub(crate) async fn read_step<A: App, R>(
    worker: &Worker<A>,
    source: usize,
    from: &dyn fmt::Display,
    produce: impl FnOnce(&mut dyn FnMut(&[u8])) -> R,
) -> Option<R> {
    if worker.wait_room_or_stop().await {
        return None;
    }
    Some(ingest_and_flush(worker, source, from, produce).await)
}

/// Ingests the frames `produce` hands over as frames of pipeline source `source`, logs rejected ones (naming `from`), flushes. Used
/// without the wait for sink room only while a stopping source finishes what it had received.
pub(crate) async fn ingest_and_flush<A: App, R>(
    worker: &Worker<A>,
    source: usize,
    from: &dyn fmt::Display,
    produce: impl FnOnce(&mut dyn FnMut(&[u8])) -> R,
) -> R {
    let (r, seen) = if crate::offload::active() {
        offloaded(worker, source, from, produce).await
    } else {
        worker.ingest(source, produce)
    };
    if seen.rejected > 0 && worker.may_log_reject() {
        let core = worker.index;
        tracing::warn!(
            core,
            %from,
            "core {core}: rejected {} frame(s) from {from} that the pipeline's decoder refused \
             ({}); reading goes on (further rejections are counted in frames_rejected, logged \
             at most once a second)",
            seen.rejected,
            seen.first_error.map(|e| e.to_string()).unwrap_or_default()
        );
    }
    worker.flush().await;
    r
}

/// With an [offload](crate::offload) helper: the frames `produce` hands over go to the helper
/// as one batch, and the pipeline ingests the helper's answer instead. A helper that is gone
/// loses the batch (logged at most once a second per core; whoever runs the helper sees it
/// die and stops the engine).
async fn offloaded<A: App, R>(
    worker: &Worker<A>,
    source: usize,
    from: &dyn fmt::Display,
    produce: impl FnOnce(&mut dyn FnMut(&[u8])) -> R,
) -> (R, Ingested) {
    // The source's index first, so the helper knows whose steps to run.
    let mut batch = (source as u32).to_be_bytes().to_vec();
    let r = produce(&mut |frame: &[u8]| {
        batch.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        batch.extend_from_slice(frame);
    });
    if batch.len() == 4 {
        return (r, Ingested::default());
    }
    match crate::offload::exchange(batch).await {
        Ok(answer) => {
            let ((), seen) = worker.ingest(source, |on_frame| {
                crate::codec::payloads(&answer).for_each(on_frame)
            });
            (r, seen)
        }
        Err(e) => {
            if worker.may_log_reject() {
                let core = worker.index;
                tracing::error!(
                    core,
                    %from,
                    "core {core}: the offload helper failed ({e}); the batch read from {from} \
                     is lost"
                );
            }
            (r, Ingested::default())
        }
    }
}
