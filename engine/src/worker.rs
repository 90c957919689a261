//! The worker: everything one core owns, and the two things a core does with records.
//!
//! A [`Worker`] lives on exactly one core (it is `!Send`): its running copy of the pipeline
//! (the sources' front halves and the chain of state steps, with this core's shard of each
//! step's keys), its outboxes (one batch per other core and state step), its ends of the SPSC
//! rings and its sink port. Source tasks call [`Worker::ingest`] on frames they read, then
//! [`Worker::flush`]; one drain task per peer core applies the batches that arrive
//! ([`drain_peer`]).
//!
//! Deadlock rule (glommio issue 555): a task that drains inbound rings never waits on an
//! outbound ring. Drain tasks only apply records and write to the sink; batches are sent only
//! by source tasks, the forwarder ([`run_forwarder`], which sends what a chained pipeline's
//! later `key_by`s routed while draining) and the checkpoint initiator, and none of those
//! drains. Sources wait while the forwarder's outboxes are full, so a chain cannot buffer
//! without bound.
//!
//! With checkpoints on, the worker calls the hooks of its checkpoint
//! [`Participant`](crate::checkpoint::Participant) at each point the snapshot protocol needs.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::sync::Semaphore;
use glommio::{GlommioError, ResourceType};

use crate::checkpoint::{Participant, PreCut};
use crate::dataflow::{Chain, Cx, DecodeError, Fronts, Outbox, Stages};
use crate::key::Key;
use crate::metrics::{CoreMetrics, Metrics, ReadCounts};
use crate::notify::Notify;
use crate::pipeline::App;
use crate::routing::{AnyBatch, Envelope, Router};
use crate::shutdown::Shutdown;
use crate::sink::SinkPort;
use crate::stage_latency::Stage;
use crate::tcp::balance::{Handoff, Inbox};

/// What one call to [`Worker::ingest`] saw, for the caller's logs.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Ingested {
    pub frames: u64,
    pub rejected: u64,
    pub first_error: Option<DecodeError>,
}

/// Records a core lets wait in the outboxes of a chain's later steps before its sources stop
/// reading (the drains keep applying; the forwarder sends as the rings take them).
const FORWARD_LIMIT: usize = 64 * 1024;

type Key0<A> = <<A as App>::Fronts as Fronts>::Key;
type Value0<A> = <<A as App>::Fronts as Fronts>::Value;

/// One core's share of the engine.
pub(crate) struct Worker<A: App> {
    /// This core's index among the engine's cores (the mesh's peer id).
    pub index: usize,
    fronts: RefCell<A::Fronts>,
    pub(crate) chain: RefCell<A::Chain>,
    /// Records for the first state step owned by other cores.
    outbox: RefCell<Outbox<Key0<A>, Value0<A>>>,
    /// State steps in the chain.
    pub(crate) depth: usize,
    pub(crate) router: Router,
    senders: Senders<Envelope>,
    /// Held by whoever sends batches, so one ring's batches go out in the order they were
    /// filled (and, with checkpoints, barriers go out between the right batches).
    pub(crate) send_lock: Semaphore,
    /// Drains → forwarder: a later step's outbox holds records.
    forward: Notify,
    /// Forwarder → sources: the outboxes were emptied.
    forwarded: Notify,
    /// Per peer: how many state steps it has said `Done` for.
    done_from: RefCell<Vec<usize>>,
    progress: Notify,
    pub sink: Rc<SinkPort>,
    pub metrics: Metrics,
    pub shutdown: Shutdown,
    last_reject_log: Cell<Option<Instant>>,
    /// When the bytes the running read step decodes were seen by the core (set by the TCP
    /// source; see [`Worker::note_arrival`]).
    arrival: Cell<Option<Instant>>,
    /// Connections other cores handed to this one (`tcp/balance.rs`).
    pub(crate) inbox: Inbox,
    /// This core's part in checkpoints, when the engine checkpoints.
    pub(crate) ck: Option<Participant<A>>,
}

impl<A: App> Worker<A> {
    pub(crate) fn new(
        app: A,
        router: Router,
        senders: Senders<Envelope>,
        sink: Rc<SinkPort>,
        metrics: Metrics,
        shutdown: Shutdown,
    ) -> Self {
        let (fronts, chain) = app.build();
        let index = senders.peer_id();
        let depth = chain.depth();
        Worker {
            index,
            fronts: RefCell::new(fronts),
            chain: RefCell::new(chain),
            outbox: RefCell::new(Outbox::new()),
            depth,
            done_from: RefCell::new(vec![0; router.cores()]),
            router,
            senders,
            send_lock: Semaphore::new(1),
            forward: Notify::default(),
            forwarded: Notify::default(),
            progress: Notify::default(),
            sink,
            metrics,
            shutdown,
            last_reject_log: Cell::new(None),
            arrival: Cell::new(None),
            inbox: Inbox::default(),
            ck: None,
        }
    }

    /// Turns checkpointing on for this worker.
    pub(crate) fn with_checkpoints(mut self, ck: Participant<A>) -> Self {
        self.ck = Some(ck);
        self
    }

    /// Notes that the frames of file range `i` before offset `pos` have all been ingested.
    #[inline]
    pub(crate) fn note_file_position(&self, i: usize, pos: u64) {
        if let Some(ck) = &self.ck {
            ck.note_file_position(i, pos);
        }
    }

    /// Sets the file ranges this core reads, `(start, end)`; positions start at `start`.
    pub(crate) fn set_file_ranges(&self, ranges: &[(u64, u64)]) {
        if let Some(ck) = &self.ck {
            ck.set_file_ranges(ranges);
        }
    }

    pub(crate) fn core_metrics(&self) -> &CoreMetrics {
        self.metrics.core(self.index)
    }

    /// Publishes the shard sizes of every state step.
    fn note_keys(&self, chain: &A::Chain) {
        let (keys, bytes) = chain.keys();
        let m = self.core_metrics();
        CoreMetrics::set(&m.keys, keys);
        CoreMetrics::set(&m.state_bytes, bytes);
    }

    /// Decodes every frame `produce` hands over, as frames of source `source` (see
    /// [`Keyed::merge`](crate::pipeline::Keyed::merge)): records this core owns are applied at
    /// once (their outputs go into the sink chunk), the others are moved into outboxes.
    /// Nothing here awaits; call [`Worker::flush`] afterwards.
    pub(crate) fn ingest<R>(
        &self,
        source: usize,
        produce: impl FnOnce(&mut dyn FnMut(&[u8])) -> R,
    ) -> (R, Ingested) {
        let mut fronts = self.fronts.borrow_mut();
        let mut chain = self.chain.borrow_mut();
        let mut outbox = self.outbox.borrow_mut();
        let mut out = self.sink.chunk();
        let out_before = out.len();
        let now = Instant::now();
        let mut cx = Cx {
            me: self.index,
            router: &self.router,
            out: &mut out,
            born: now,
            applied: 0,
            outputs: 0,
            forwarded: 0,
            keys_rejected: 0,
        };
        let mut seen = Ingested::default();
        let (mut records, mut local, mut bytes) = (0u64, 0u64, 0u64);
        let mut keys_rejected = 0u64;
        let r = produce(&mut |frame: &[u8]| {
            seen.frames += 1;
            bytes += frame.len() as u64 + 4;
            let res = fronts.decode(source, frame, &mut |key: &Key0<A>, value| {
                if !cx.router.accepts(key) {
                    keys_rejected += 1;
                    return;
                }
                records += 1;
                let hash = cx.router.hash(key);
                let owner = cx.router.owner(hash);
                if owner == cx.me {
                    local += 1;
                    chain.apply(hash, key, value, &mut cx);
                } else {
                    outbox.push(owner, hash, key.to_owned_key(), value, now);
                }
            });
            if let Err(e) = res {
                seen.rejected += 1;
                seen.first_error.get_or_insert(e);
            }
        });
        let (applied, outputs, forwarded) = (cx.applied, cx.outputs, cx.forwarded);
        let keys_rejected = keys_rejected + cx.keys_rejected;
        let produced = out.len() - out_before;
        drop(out);
        let done = Instant::now();
        if outputs > 0 {
            self.sink.note_arrival(now, done);
        }
        let stages = self.metrics.stages(self.index);
        if let Some(arrived) = self.arrival.take() {
            stages.record(Stage::ArrivalToDecode, arrived, now);
        }
        if local > 0 {
            stages.record(Stage::DecodeToApplyLocal, now, done);
        }
        if let Some(ck) = &self.ck {
            ck.add_produced(produced);
        }
        self.core_metrics().publish_read(&ReadCounts {
            frames: seen.frames,
            rejected: seen.rejected,
            keys_rejected,
            bytes,
            records,
            local,
            routed: records - local + forwarded,
            applied,
            outputs,
        });
        if applied > 0 {
            self.note_keys(&chain);
        }
        (r, seen)
    }

    /// The bytes the running [`Worker::ingest`] decodes were seen by the core at `at` (a
    /// receive's completion): times the arrival → decode stage. Called by a source from inside
    /// `ingest`'s `produce`, so that it never outlives the read it describes.
    pub(crate) fn note_arrival(&self, at: Option<Instant>) {
        self.arrival.set(at);
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
        self.send_outboxes().await;
        self.sink.flush().await;
        // glommio preempts only at its 100 ms timer, and a source whose data is always ready
        // never blocks: give the drain tasks and the sink writer their turn after every flush.
        glommio::executor().yield_now().await;
    }

    /// Sends every non-empty outbox, of every state step, under the send lock.
    pub(crate) async fn send_outboxes(&self) {
        let _permit = self.send_lock.acquire_permit(1).await.ok();
        for dest in 0..self.router.cores() {
            if dest == self.index {
                continue;
            }
            // A cut may have happened while an earlier send waited: its barriers go first.
            if let Some(ck) = &self.ck {
                ck.send_pending_barriers(self).await;
            }
            // Every batch waiting is taken at once: all were filled before any cut that may
            // happen while they are sent, so they go out before its barriers.
            for env in self.take_first(dest) {
                self.send(dest, env).await;
            }
            if self.depth > 1 {
                for env in self.take_forwards(dest) {
                    self.send(dest, env).await;
                }
            }
        }
        self.forwarded.notify();
    }

    /// The batches of the first state step's outbox for `dest`, oldest first (several when the
    /// records exceed [`MAX_BATCH_BYTES`](crate::routing::MAX_BATCH_BYTES)).
    fn take_first(&self, dest: usize) -> Vec<Envelope> {
        let mut list = Vec::new();
        self.outbox
            .borrow_mut()
            .take(dest, &mut |records, len, born| {
                list.push(Envelope::Batch {
                    stage: 0,
                    records,
                    len,
                    born,
                })
            });
        list
    }

    /// The batches of the later state steps' outboxes for `dest`.
    fn take_forwards(&self, dest: usize) -> Vec<Envelope> {
        let mut list = Vec::new();
        self.chain
            .borrow_mut()
            .take_outboxes(0, dest, &mut |stage, records, len, born| {
                list.push(Envelope::Batch {
                    stage,
                    records,
                    len,
                    born,
                })
            });
        list
    }

    /// Takes every outbox's records (of every state step, for every core), for a checkpoint's
    /// cut: they were all read before it.
    pub(crate) fn take_all_outboxes(&self) -> PreCut {
        let mut all = Vec::new();
        for dest in 0..self.router.cores() {
            if dest == self.index {
                continue;
            }
            all.extend(self.take_first(dest).into_iter().map(|e| (dest, e)));
            all.extend(self.take_forwards(dest).into_iter().map(|e| (dest, e)));
        }
        all
    }

    /// Waits until the sink can take more output and a chain's later steps have room, or
    /// until shutdown. Returns true on shutdown. Sources call this before taking more input,
    /// so a stalled sink or core stops the reading (and TCP flow control pushes back on the
    /// sender) instead of output piling up.
    pub(crate) async fn wait_room_or_stop(&self) -> bool {
        futures_lite::future::or(
            async {
                loop {
                    self.sink.wait_room().await;
                    if self.chain.borrow().queued() <= FORWARD_LIMIT {
                        return false;
                    }
                    self.forward.notify();
                    self.forwarded.wait().await;
                }
            },
            async {
                self.shutdown.wait().await;
                true
            },
        )
        .await
    }

    /// Once this core's sources are finished: tells every peer, step by step, that it will
    /// send no more records for that step. Done for step `s + 1` goes out once every peer has
    /// said Done for step `s` (no record of step `s` can then arrive to produce more), after
    /// the outboxes are flushed.
    pub(crate) async fn finish_steps(&self) {
        for stage in 0..self.depth {
            if stage > 0 {
                loop {
                    let all = self
                        .done_from
                        .borrow()
                        .iter()
                        .enumerate()
                        .all(|(p, d)| p == self.index || *d >= stage);
                    if all {
                        break;
                    }
                    self.progress.wait().await;
                }
                self.send_outboxes().await;
            }
            let _permit = self.send_lock.acquire_permit(1).await.ok();
            if let Some(ck) = &self.ck {
                ck.send_pending_barriers(self).await;
                if stage + 1 == self.depth {
                    ck.mark_done_sent();
                }
            }
            for dest in 0..self.router.cores() {
                if dest != self.index {
                    self.send(dest, Envelope::Done { stage }).await;
                }
            }
        }
    }

    /// Hands an accepted connection to core `dest`, unless its ring is full or closed (the
    /// connection is then given back).
    pub(crate) fn hand_off(&self, dest: usize, h: Handoff) -> Result<(), Handoff> {
        match self.senders.try_send_to(dest, Envelope::Connection(h)) {
            Ok(()) => Ok(()),
            Err(GlommioError::WouldBlock(ResourceType::Channel(Envelope::Connection(h)))) => Err(h),
            Err(GlommioError::Closed(ResourceType::Channel(Envelope::Connection(h)))) => Err(h),
            Err(e) => {
                tracing::warn!(
                    core = self.index,
                    "cannot hand a connection to core {dest}: {e}; it is closed"
                );
                Ok(())
            }
        }
    }

    /// Sends one message to `dest`, waiting while its ring is full.
    pub(crate) async fn send(&self, dest: usize, msg: Envelope) {
        let m = self.core_metrics();
        let is_batch = matches!(msg, Envelope::Batch { .. });
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

    /// Applies a batch that `peer` routed to this core for state step `stage`. Does not await.
    fn apply_from(
        &self,
        peer: usize,
        stage: usize,
        records: AnyBatch,
        len: usize,
        born: Option<Instant>,
    ) {
        if let Some(born) = born {
            self.metrics
                .stages(self.index)
                .record_since(Stage::DecodeToApplyCrossed, born);
        }
        if let Some(ck) = &self.ck {
            ck.on_batch(peer, stage, &*records, &self.chain.borrow());
        }
        let mut chain = self.chain.borrow_mut();
        let mut out = self.sink.chunk();
        let out_before = out.len();
        let mut cx = Cx {
            me: self.index,
            router: &self.router,
            out: &mut out,
            born: born.unwrap_or_else(Instant::now),
            applied: 0,
            outputs: 0,
            forwarded: 0,
            keys_rejected: 0,
        };
        if chain.apply_any(stage, records, &mut cx).is_err() {
            tracing::error!(
                core = self.index,
                "core {peer} sent a batch of {len} records for state step {stage}, which does \
                 not take records of that type; dropped (an engine bug)"
            );
        }
        let (applied, outputs, forwarded) = (cx.applied, cx.outputs, cx.forwarded);
        let keys_rejected = cx.keys_rejected;
        let produced = out.len() - out_before;
        drop(out);
        if let Some(ck) = &self.ck {
            ck.add_produced(produced);
        }
        if outputs > 0 {
            let done = Instant::now();
            self.sink.note_arrival(born.unwrap_or(done), done);
        }
        let m = self.core_metrics();
        CoreMetrics::add(&m.records_applied, applied);
        CoreMetrics::add(&m.records_routed, forwarded);
        CoreMetrics::add(&m.keys_rejected, keys_rejected);
        CoreMetrics::add(&m.outputs, outputs);
        self.note_keys(&chain);
        if forwarded > 0 {
            self.forward.notify();
        }
    }

    /// Applies records outside the data path (a restore), with their output discarded.
    pub(crate) fn with_chain_discarding<R>(
        &self,
        f: impl FnOnce(&mut A::Chain, &mut Cx<'_>) -> R,
    ) -> R {
        let mut chain = self.chain.borrow_mut();
        let mut discard = Vec::new();
        let mut cx = Cx {
            me: self.index,
            router: &self.router,
            out: &mut discard,
            born: Instant::now(),
            applied: 0,
            outputs: 0,
            forwarded: 0,
            keys_rejected: 0,
        };
        let r = f(&mut chain, &mut cx);
        self.note_keys(&chain);
        r
    }

    /// Records that `peer` said Done for `stage`; true when that was its last step.
    fn peer_done(&self, peer: usize, stage: usize) -> bool {
        self.done_from.borrow_mut()[peer] = stage + 1;
        self.progress.notify();
        stage + 1 >= self.depth
    }
}

/// Sends what a chained pipeline's later `key_by`s routed while draining, as the rings take
/// it. Waits on outbound rings, so it never drains (see the module docs). Runs only for chains.
pub(crate) async fn run_forwarder<A: App>(worker: Rc<Worker<A>>) {
    loop {
        if worker.chain.borrow().queued() == 0 {
            worker.forward.wait().await;
            continue;
        }
        worker.send_outboxes().await;
    }
}

/// Applies every batch `peer` sends to this core until it says it is done with every state
/// step. Never waits on an outbound ring (see the module docs); it waits only on the sink queue.
pub(crate) async fn drain_peer<A: App>(
    worker: Rc<Worker<A>>,
    receivers: Rc<Receivers<Envelope>>,
    peer: usize,
) {
    loop {
        match receivers.recv_from(peer).await {
            Ok(Some(Envelope::Batch {
                stage,
                records,
                len,
                born,
            })) => {
                worker.apply_from(peer, stage, records, len, born);
                worker.sink.flush().await;
                glommio::executor().yield_now().await;
            }
            Ok(Some(Envelope::Connection(h))) => worker.inbox.push(h),
            Ok(Some(Envelope::Barrier(id))) => {
                if let Some(ck) = &worker.ck {
                    ck.on_barrier(&worker, peer, id);
                }
            }
            Ok(Some(Envelope::Done { stage })) => {
                if worker.peer_done(peer, stage) {
                    if let Some(ck) = &worker.ck {
                        ck.on_peer_done(&worker, peer);
                    }
                    break;
                }
            }
            Ok(None) => {
                worker.peer_done(peer, usize::MAX - 1);
                if let Some(ck) = &worker.ck {
                    ck.on_peer_done(&worker, peer);
                }
                break;
            }
            Err(e) => {
                tracing::error!(
                    core = worker.index,
                    "cannot read the ring from core {peer}: {e}"
                );
                worker.peer_done(peer, usize::MAX - 1);
                if let Some(ck) = &worker.ck {
                    // Nothing more will come from it: do not wait for its barriers.
                    ck.on_peer_done(&worker, peer);
                }
                break;
            }
        }
    }
}
