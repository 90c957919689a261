//! The worker: everything one core owns, and the two things a core does with records.
//!
//! A [`Worker`] lives on exactly one core (it is `!Send`): its pipeline halves, its shard of
//! keyed state, its outboxes (one batch per other core), its ends of the SPSC rings and its sink
//! port. Source tasks call [`Worker::ingest`] on frames they read, then [`Worker::flush`];
//! one drain task per peer core applies the batches that arrive ([`drain_peer`]).
//!
//! Deadlock rule (glommio issue 555): a task that drains inbound rings never waits on an
//! outbound ring. Drain tasks only apply records and write to the sink; only source tasks (and
//! the checkpoint initiator, [`run_initiator`]) send batches, and they never drain.
//!
//! With checkpoints on, the worker also takes part in the snapshot protocol described in
//! [`crate::checkpoint`]: [`Worker::cut`] copies the shard out and sets the barriers aside,
//! whoever sends next sends them first ([`Worker::send_pending_barriers`]), [`drain_peer`] logs
//! the records in flight until each peer's barrier, and [`Worker::try_complete`] hands the
//! snapshot over once every barrier is in.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use futures_lite::future::or;
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::{GlommioError, ResourceType};

use crate::checkpoint::{push_entry, Contribution, CoreCheckpoint, Report};
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
    /// This core's checkpointing state, when the engine checkpoints.
    pub(crate) ck: Option<CoreCheckpoint<A::Value, A::State>>,
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
            ck: None,
        }
    }

    /// Turns checkpointing on for this worker.
    pub(crate) fn with_checkpoints(mut self, ck: CoreCheckpoint<A::Value, A::State>) -> Self {
        self.ck = Some(ck);
        self
    }

    /// Puts restored state into the shard: `state` holds `(key, encoded state)` entries this
    /// core owns, `in_flight` the records that were on their way to it at the cut (`(key,
    /// encoded value)`), which are applied on top, their output dropped (it was delivered
    /// before the checkpoint committed). Call before any input is read.
    pub(crate) fn restore(&self, state: &[u8], in_flight: &[u8]) -> u64 {
        let Some(ck) = &self.ck else { return 0 };
        let mut shard = self.shard.borrow_mut();
        let mut n = 0;
        // Every state and value was decoded once already when the checkpoint was checked.
        for (key, bytes) in crate::checkpoint::entries(state).map_while(Result::ok) {
            if let Some(s) = ck.state_codec.decode(bytes) {
                *shard.get_or_default(self.router.hash(key), key) = s;
                n += 1;
            }
        }
        let mut back = self.back.borrow_mut();
        let mut discard = Vec::new();
        for (key, bytes) in crate::checkpoint::entries(in_flight).map_while(Result::ok) {
            if let Some(v) = ck.value_codec.decode(bytes) {
                let s = shard.get_or_default(self.router.hash(key), key);
                back.apply(key, s, v, &mut discard);
                discard.clear();
            }
        }
        let m = self.core_metrics();
        CoreMetrics::set(&m.keys, shard.len() as u64);
        CoreMetrics::set(&m.state_bytes, shard.heap_bytes() as u64);
        n
    }

    /// Sets the file ranges this core reads, `(start, end)`; positions start at `start`.
    pub(crate) fn set_file_ranges(&self, ranges: &[(u64, u64)]) {
        if let Some(ck) = &self.ck {
            *ck.ranges.borrow_mut() = ranges.to_vec();
        }
    }

    /// Notes that the frames of file range `i` before offset `pos` have all been ingested.
    #[inline]
    pub(crate) fn note_file_position(&self, i: usize, pos: u64) {
        if let Some(ck) = &self.ck {
            if let Some(r) = ck.ranges.borrow_mut().get_mut(i) {
                r.0 = pos;
            }
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
        let out_before = out.len();
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
        if let Some(ck) = &self.ck {
            ck.add_produced(out.len() - out_before);
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
        // With checkpoints, batches go out under the send lock, and a cut's barriers go out
        // before any batch taken after it (the cut may happen while this flush waits).
        let _permit = match &self.ck {
            Some(ck) => ck.send_lock.acquire_permit(1).await.ok(),
            None => None,
        };
        for dest in 0..self.router.cores() {
            if dest == self.index {
                continue;
            }
            self.send_pending_barriers().await;
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
        // glommio preempts only at its 100 ms timer, and a source whose data is always ready
        // never blocks: give the drain tasks and the sink writer their turn after every flush.
        glommio::executor().yield_now().await;
    }

    /// Waits until the sink can take more output, or until shutdown. Returns true on shutdown.
    /// Sources call this before taking more input, so a stalled sink stops the reading (and
    /// TCP flow control pushes back on the sender) instead of output piling up.
    pub(crate) async fn wait_room_or_stop(&self) -> bool {
        futures_lite::future::or(
            async {
                self.sink.wait_room().await;
                false
            },
            async {
                self.shutdown.wait().await;
                true
            },
        )
        .await
    }

    /// Tells every other core that this core's sources are finished.
    pub(crate) async fn send_done(&self) {
        let _permit = match &self.ck {
            Some(ck) => {
                let p = ck.send_lock.acquire_permit(1).await.ok();
                self.send_pending_barriers().await;
                ck.done_sent.set(true);
                p
            }
            None => None,
        };
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

    /// Applies a batch that `peer` routed to this core (and logs it if it is in flight across a
    /// checkpoint's cut). Does not await.
    fn apply_from(&self, peer: usize, batch: &Batch<A::Value>) {
        self.apply(batch);
        if let Some(ck) = &self.ck {
            ck.log_if_in_flight(peer, batch);
        }
    }

    /// Applies a batch routed to this core. Does not await.
    fn apply(&self, batch: &Batch<A::Value>) {
        let mut back = self.back.borrow_mut();
        let mut shard = self.shard.borrow_mut();
        let mut out = self.sink.chunk();
        let out_before = out.len();
        let mut outputs = 0u64;
        for (hash, key, value) in batch.iter() {
            let state = shard.get_or_default(hash, key);
            outputs += back.apply(key, state, value, &mut out) as u64;
        }
        if let Some(ck) = &self.ck {
            ck.add_produced(out.len() - out_before);
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

    /// This core's cut for checkpoint `id` (if it has not cut for it yet): copies the shard out
    /// (the data path's only pause) and sets the outboxes, which hold only records read before
    /// now, aside to go out before the barriers. Does not await: a drain task may call it.
    pub(crate) fn cut(&self, id: u64) {
        let Some(ck) = &self.ck else { return };
        if ck.last_cut() >= id {
            return;
        }
        let started = Instant::now();
        let (body, keys) = self.encode_shard();
        let copy = started.elapsed();
        let pre_cut: Vec<Batch<A::Value>> = self
            .outbox
            .borrow_mut()
            .iter_mut()
            .map(std::mem::take)
            .collect();
        ck.cut(id, (body, keys, copy), pre_cut);
        self.try_complete();
    }

    /// Sends what the last cut set aside, then `Barrier(id)`, on every ring. The caller holds
    /// the send lock. Waits on outbound rings: never call it from a drain task.
    pub(crate) async fn send_pending_barriers(&self) {
        let Some(ck) = &self.ck else { return };
        while let Some((id, batches)) = ck.take_pending() {
            if ck.done_sent.get() {
                continue; // Peers count Done as every barrier; nothing may follow it.
            }
            for (dest, batch) in batches.into_iter().enumerate() {
                if dest == self.index {
                    continue;
                }
                if !batch.is_empty() {
                    self.send(dest, Envelope::Batch(batch)).await;
                }
                self.send(dest, Envelope::Barrier(id)).await;
            }
        }
    }

    /// Hands the checkpoint in progress to the coordinator once every peer's barrier (or Done)
    /// has arrived: the shard copied at the cut and the records logged in flight.
    pub(crate) fn try_complete(&self) {
        let Some(ck) = &self.ck else { return };
        let Some(done) = ck.take_complete() else {
            return;
        };
        let mut log = Vec::with_capacity(done.log.key_bytes() + 4 * done.log.len());
        let mut scratch = Vec::with_capacity(16);
        for (_, key, value) in done.log.iter() {
            scratch.clear();
            (ck.value_codec.persist)(&value, &mut scratch);
            push_entry(&mut log, key, &scratch);
        }
        let pause = done.copy;
        let m = self.core_metrics();
        CoreMetrics::add(&m.checkpoints, 1);
        CoreMetrics::set(&m.checkpoint_pause_us_last, pause.as_micros() as u64);
        CoreMetrics::add(&m.checkpoint_pause_us_total, pause.as_micros() as u64);
        if pause.as_micros() as u64 > m.checkpoint_pause_us_max.load(Relaxed) {
            CoreMetrics::set(&m.checkpoint_pause_us_max, pause.as_micros() as u64);
        }
        CoreMetrics::set(&m.checkpoint_in_flight_last, done.log.len() as u64);
        CoreMetrics::set(
            &m.checkpoint_bytes_last,
            (done.body.len() + log.len()) as u64,
        );
        ck.link.send(Report::Snapshot(Contribution {
            core: self.index,
            id: done.id,
            body: done.body,
            keys: done.keys,
            log_records: done.log.len() as u64,
            log,
            ranges: done.ranges_at_cut,
            // Everything produced so far includes the output of every record in the
            // checkpoint, the logged ones too (a restore applies those silently).
            out_mark: ck.produced(),
            pause,
        }));
    }

    /// The shard's entries in the checkpoint encoding, and how many there are.
    fn encode_shard(&self) -> (Vec<u8>, u64) {
        let Some(ck) = &self.ck else {
            return (Vec::new(), 0);
        };
        let shard = self.shard.borrow();
        let mut body = Vec::with_capacity(shard.len() * 24);
        let mut scratch = Vec::with_capacity(64);
        for (key, state) in shard.iter() {
            scratch.clear();
            (ck.state_codec.persist)(state, &mut scratch);
            push_entry(&mut body, key, &scratch);
        }
        (body, shard.len() as u64)
    }

    /// The end of this core's run, once its sources are finished and every peer has said Done:
    /// stops the initiator, completes any checkpoint still asked of this core, and hands the
    /// final state to the coordinator.
    pub(crate) async fn finish_checkpoints(&self, initiator: glommio::Task<()>) {
        let Some(ck) = &self.ck else { return };
        ck.finished.set(true);
        ck.poke.notify();
        initiator.await;
        while let Some(id) = ck.due() {
            self.cut(id);
        }
        // Every peer is done, so any cut above completed at once; its barriers are dropped.
        while ck.take_pending().is_some() {}
        let (body, keys) = self.encode_shard();
        ck.link.send(Report::Final(Contribution {
            core: self.index,
            id: ck.last_snapshot() + 1,
            body,
            keys,
            log: Vec::new(),
            log_records: 0,
            ranges: ck.ranges.borrow().clone(),
            out_mark: ck.produced(),
            pause: Duration::ZERO,
        }));
    }
}

/// Cuts this core for every checkpoint the coordinator asks for (or a peer's barrier announces)
/// until the run ends. Waits on outbound rings, so it never drains (see the module docs).
pub(crate) async fn run_initiator<A: App>(worker: Rc<Worker<A>>) {
    let Some(ck) = &worker.ck else { return };
    loop {
        if ck.finished.get() {
            return;
        }
        if let Some(id) = ck.due() {
            worker.cut(id);
        }
        if ck.has_pending() {
            let permit = ck.send_lock.acquire_permit(1).await.ok();
            worker.send_pending_barriers().await;
            drop(permit);
            continue;
        }
        // Requests come from another thread (polled); cuts made by drains wake it.
        or(
            glommio::timer::sleep(Duration::from_millis(1)),
            ck.poke.wait(),
        )
        .await;
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
                worker.apply_from(peer, &batch);
                worker.sink.flush().await;
                glommio::executor().yield_now().await;
            }
            Ok(Some(Envelope::Barrier(id))) => {
                if let Some(ck) = &worker.ck {
                    // The first barrier of a checkpoint cuts this core at once, before any
                    // record the peer sent after its own cut can be applied.
                    worker.cut(id);
                    if ck.barrier(peer, id) {
                        worker.try_complete();
                    } else {
                        tracing::error!(
                            core = worker.index,
                            "core {peer} sent a barrier for checkpoint {id}, which is not the \
                             one this core is taking; ignored"
                        );
                    }
                }
            }
            Ok(Some(Envelope::Done)) | Ok(None) => {
                if let Some(ck) = &worker.ck {
                    ck.peer_done(peer);
                    worker.try_complete();
                }
                break;
            }
            Err(e) => {
                tracing::error!(
                    core = worker.index,
                    "cannot read the ring from core {peer}: {e}"
                );
                if let Some(ck) = &worker.ck {
                    // Nothing more will come from it: do not wait for its barriers.
                    ck.peer_done(peer);
                    worker.try_complete();
                }
                break;
            }
        }
    }
}
