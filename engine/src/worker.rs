//! The worker: everything one core owns, and the two things a core does with records.
//!
//! A [`Worker`] lives on exactly one core (it is `!Send`): its pipeline halves, its shard of
//! keyed state, its outboxes (one batch per other core), its ends of the SPSC rings and its sink
//! port. Source tasks call [`Worker::ingest`] on frames they read, then [`Worker::flush`];
//! one drain task per peer core applies the batches that arrive ([`drain_peer`]).
//!
//! Deadlock rule (glommio issue 555): a task that drains inbound rings never waits on an
//! outbound ring. Drain tasks only apply records and write to the sink; only source tasks send
//! batches, and they never drain.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::{GlommioError, ResourceType};

use crate::metrics::{CoreMetrics, Metrics};
use crate::pipeline::{App, BackHalf, FrontHalf};
use crate::routing::{Batch, Envelope, Router};
use crate::shutdown::Shutdown;
use crate::sink::SinkPort;
use crate::state::Shard;

/// What one call to [`Worker::ingest`] saw, for the caller's logs.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Ingested {
    pub frames: u64,
    pub rejected: u64,
    pub first_error: Option<std::str::Utf8Error>,
}

/// One core's share of the engine.
pub(crate) struct Worker<A: App> {
    /// This core's index among the engine's cores (the mesh's peer id).
    pub index: usize,
    front: RefCell<A::Front>,
    back: RefCell<A::Back>,
    shard: RefCell<Shard<A::State>>,
    router: Router,
    outbox: RefCell<Vec<Batch<A::Value>>>,
    senders: Senders<Envelope<A::Value>>,
    pub sink: Rc<SinkPort>,
    pub metrics: Metrics,
    pub shutdown: Shutdown,
    last_reject_log: Cell<Option<Instant>>,
}

impl<A: App> Worker<A> {
    pub(crate) fn new(
        app: A,
        router: Router,
        senders: Senders<Envelope<A::Value>>,
        sink: Rc<SinkPort>,
        metrics: Metrics,
        shutdown: Shutdown,
    ) -> Self {
        let (front, back) = app.into_halves();
        let index = senders.peer_id();
        Worker {
            index,
            front: RefCell::new(front),
            back: RefCell::new(back),
            shard: RefCell::new(Shard::new()),
            outbox: RefCell::new((0..router.cores()).map(|_| Batch::default()).collect()),
            router,
            senders,
            sink,
            metrics,
            shutdown,
            last_reject_log: Cell::new(None),
        }
    }

    fn core_metrics(&self) -> &CoreMetrics {
        self.metrics.core(self.index)
    }

    /// Decodes every frame `produce` hands over: records this core owns are applied at once
    /// (their outputs go into the sink chunk), the others are copied into outboxes. Nothing here
    /// awaits; call [`Worker::flush`] afterwards.
    pub(crate) fn ingest<R>(
        &self,
        produce: impl FnOnce(&mut dyn FnMut(&[u8])) -> R,
    ) -> (R, Ingested) {
        let mut front = self.front.borrow_mut();
        let mut back = self.back.borrow_mut();
        let mut shard = self.shard.borrow_mut();
        let mut outbox = self.outbox.borrow_mut();
        let mut out = self.sink.chunk();
        let (me, router) = (self.index, &self.router);
        let now = Instant::now();
        let mut seen = Ingested::default();
        let (mut records, mut local, mut outputs, mut bytes) = (0u64, 0u64, 0u64, 0u64);
        let r = produce(&mut |frame: &[u8]| {
            seen.frames += 1;
            bytes += frame.len() as u64 + 4;
            let res = front.decode(frame, &mut |key, value| {
                records += 1;
                let hash = router.hash(key);
                let owner = router.owner(hash);
                if owner == me {
                    local += 1;
                    let state = shard.get_or_default(hash, key);
                    outputs += back.apply(key, state, value, &mut out) as u64;
                } else {
                    outbox[owner].push(hash, key, value);
                }
            });
            if let Err(e) = res {
                seen.rejected += 1;
                seen.first_error.get_or_insert(e);
            }
        });
        if outputs > 0 {
            self.sink.note_arrival(now);
        }
        for batch in outbox.iter_mut() {
            if !batch.is_empty() && batch.born.is_none() {
                batch.born = Some(now);
            }
        }
        let m = self.core_metrics();
        CoreMetrics::add(&m.frames_in, seen.frames);
        CoreMetrics::add(&m.frames_rejected, seen.rejected);
        CoreMetrics::add(&m.bytes_in, bytes);
        CoreMetrics::add(&m.records_in, records);
        CoreMetrics::add(&m.records_local, local);
        CoreMetrics::add(&m.records_routed, records - local);
        CoreMetrics::add(&m.records_applied, local);
        CoreMetrics::add(&m.outputs, outputs);
        if local > 0 {
            CoreMetrics::set(&m.keys, shard.len() as u64);
            CoreMetrics::set(&m.state_bytes, shard.heap_bytes() as u64);
        }
        (r, seen)
    }

    /// True when a rejected-frame warning may be logged now: at most one per second per core,
    /// so a client sending garbage cannot flood the log.
    pub(crate) fn may_log_reject(&self) -> bool {
        let now = Instant::now();
        match self.last_reject_log.get() {
            Some(t) if now.duration_since(t) < Duration::from_secs(1) => false,
            _ => {
                self.last_reject_log.set(Some(now));
                true
            }
        }
    }

    /// Sends every non-empty outbox to its core and hands the sink chunk to the writer. Waits
    /// while a ring or the sink queue is full: this is how a slow core or sink slows sources.
    pub(crate) async fn flush(&self) {
        for dest in 0..self.router.cores() {
            if dest == self.index {
                continue;
            }
            let batch = {
                let mut outbox = self.outbox.borrow_mut();
                if outbox[dest].is_empty() {
                    continue;
                }
                let cap = outbox[dest].len();
                let bytes = outbox[dest].key_bytes();
                std::mem::replace(&mut outbox[dest], Batch::with_capacity(cap, bytes))
            };
            self.send(dest, Envelope::Batch(batch)).await;
        }
        self.sink.flush().await;
    }

    /// Tells every other core that this core's sources are finished.
    pub(crate) async fn send_done(&self) {
        for dest in 0..self.router.cores() {
            if dest != self.index {
                self.send(dest, Envelope::Done).await;
            }
        }
    }

    async fn send(&self, dest: usize, msg: Envelope<A::Value>) {
        let m = self.core_metrics();
        let is_batch = matches!(msg, Envelope::Batch(_));
        let result = match self.senders.try_send_to(dest, msg) {
            Ok(()) => Ok(()),
            Err(GlommioError::WouldBlock(ResourceType::Channel(msg))) => {
                CoreMetrics::add(&m.ring_full_stalls, 1);
                self.senders.send_to(dest, msg).await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => CoreMetrics::add(&m.batches_sent, is_batch as u64),
            // A peer only closes its end when it is failing; the records are lost with it.
            Err(e) => tracing::error!(
                core = self.index,
                "ring to core {dest} is closed ({e}); a batch for it was dropped"
            ),
        }
    }

    /// Applies a batch routed to this core. Does not await.
    fn apply(&self, batch: &Batch<A::Value>) {
        let mut back = self.back.borrow_mut();
        let mut shard = self.shard.borrow_mut();
        let mut out = self.sink.chunk();
        let mut outputs = 0u64;
        for (hash, key, value) in batch.iter() {
            let state = shard.get_or_default(hash, key);
            outputs += back.apply(key, state, value, &mut out) as u64;
        }
        if outputs > 0 {
            self.sink
                .note_arrival(batch.born.unwrap_or_else(Instant::now));
        }
        let m = self.core_metrics();
        CoreMetrics::add(&m.records_applied, batch.len() as u64);
        CoreMetrics::add(&m.outputs, outputs);
        CoreMetrics::set(&m.keys, shard.len() as u64);
        CoreMetrics::set(&m.state_bytes, shard.heap_bytes() as u64);
    }
}

/// Applies every batch `peer` sends to this core until it says it is done. Never waits on an
/// outbound ring (see the module docs); it waits only on the sink queue.
pub(crate) async fn drain_peer<A: App>(
    worker: Rc<Worker<A>>,
    receivers: Rc<Receivers<Envelope<A::Value>>>,
    peer: usize,
) {
    loop {
        match receivers.recv_from(peer).await {
            Ok(Some(Envelope::Batch(batch))) => {
                worker.apply(&batch);
                worker.sink.flush().await;
            }
            Ok(Some(Envelope::Done)) | Ok(None) => break,
            Err(e) => {
                tracing::error!(
                    core = worker.index,
                    "cannot read the ring from core {peer}: {e}"
                );
                break;
            }
        }
    }
}
