//! One core's part in checkpoints, as the data path sees it: a few named hooks.
//!
//! The worker ([`crate::worker`]) knows nothing of the snapshot protocol ([`super::cut`]); it
//! calls its [`Participant`]'s hooks where the protocol needs them:
//! - [`Participant::on_batch`] before applying a batch from a peer (logs channel state);
//! - [`Participant::on_barrier`] and [`Participant::on_peer_done`] when a ring says so;
//! - [`Participant::send_pending_barriers`] before any batch is sent;
//! - [`Participant::add_produced`] after output is made, and the file-position notes;
//! - [`run_initiator`] as a task, [`Participant::restore`] at start and
//!   [`Participant::finish`] at the end.
//!
//! The engine is generic over every step's key, state and value types, so serialising them
//! is [`PersistStages`]'s job: implemented for a chain whose keys are [`PersistKey`] and whose
//! states and routed values are [`Persist`], and turned into plain function pointers
//! ([`CkOps`]) where those bounds are known, so the runtime needs no bound unless checkpoints
//! are on.

// Builder and callback types name every user type they carry; aliases would only hide them.
#![allow(clippy::type_complexity)]

use std::any::Any;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use futures_lite::future::or;

use super::coordinator::{Contribution, CoreReport, Link};
use super::cut::CoreCheckpoint;
use super::format::{entries, push_entry};
use super::Persist;
use crate::dataflow::{Chain, Cx, Encoder, Forward, Stages, StateStage, Tail};
use crate::key::PersistKey;
use crate::metrics::CoreMetrics;
use crate::pipeline::App;
use crate::routing::{Batch, Envelope, Router};
use crate::worker::Worker;

/// The state steps of a chain, whose keys, states and values can be written into a
/// checkpoint. Implemented by the engine for every chain whose keys implement [`PersistKey`]
/// and whose states and routed values implement [`Persist`]. Steps are counted from `rel` 0,
/// the first step held; `base` is that step's absolute index.
#[allow(private_interfaces)]
pub trait PersistStages: Stages {
    /// Appends every `(step, key, state)` entry of this core's shards; returns how many.
    #[doc(hidden)]
    fn snapshot(&self, base: usize, body: &mut Vec<u8>) -> u64;
    /// Appends the records of `batch`, for step `rel`, as `(step, key, value)` entries;
    /// returns how many.
    #[doc(hidden)]
    fn log_batch(&self, rel: usize, base: usize, batch: &dyn Any, log: &mut Vec<u8>) -> u64;
    /// Puts one restored state entry of step `rel` into its shard.
    #[doc(hidden)]
    fn restore_state(&mut self, rel: usize, key: &[u8], state: &[u8], router: &Router) -> bool;
    /// Applies one logged record of step `rel` (a restore).
    #[doc(hidden)]
    fn replay(&mut self, rel: usize, key: &[u8], value: &[u8], cx: &mut Cx<'_>) -> bool;
    /// The hash of a key of step `rel`, from its bytes.
    #[doc(hidden)]
    fn key_hash(&self, rel: usize, key: &[u8], router: &Router) -> Option<u64>;
    /// True when the key and the state (or value) decode as step `rel`'s types.
    #[doc(hidden)]
    fn check(&self, rel: usize, key: &[u8], state: Option<&[u8]>, value: Option<&[u8]>) -> bool;
}

/// Decodes a whole value: `None` unless it uses every byte.
fn decode_all<T: Persist>(mut bytes: &[u8]) -> Option<T> {
    let v = T::restore(&mut bytes)?;
    bytes.is_empty().then_some(v)
}

#[allow(private_interfaces)]
impl<K, V, S, I, U, R, T> PersistStages for StateStage<K, V, S, I, U, T>
where
    K: ?Sized + PersistKey + 'static,
    V: Persist + Send + 'static,
    S: Persist + 'static,
    I: FnMut(&K) -> S + 'static,
    U: FnMut(&K, &mut S, V) -> R + 'static,
    R: IntoIterator,
    T: Tail<K, R::Item> + PersistStages,
{
    fn snapshot(&self, base: usize, body: &mut Vec<u8>) -> u64 {
        let (mut key, mut state) = (Vec::with_capacity(32), Vec::with_capacity(32));
        for (k, s) in self.shard.iter() {
            key.clear();
            state.clear();
            k.write_key(&mut key);
            s.persist(&mut state);
            push_entry(body, base, &key, &state);
        }
        self.shard.len() as u64 + self.tail.snapshot(base + 1, body)
    }

    fn log_batch(&self, rel: usize, base: usize, batch: &dyn Any, log: &mut Vec<u8>) -> u64 {
        if rel > 0 {
            return self.tail.log_batch(rel - 1, base + 1, batch, log);
        }
        let Some(batch) = batch.downcast_ref::<Batch<K::Owned, V>>() else {
            return 0;
        };
        let (mut key, mut value) = (Vec::with_capacity(32), Vec::with_capacity(16));
        for (_, k, v) in batch.iter() {
            key.clear();
            value.clear();
            K::borrow_owned(k).write_key(&mut key);
            v.persist(&mut value);
            push_entry(log, base, &key, &value);
        }
        batch.len() as u64
    }

    fn restore_state(&mut self, rel: usize, key: &[u8], state: &[u8], router: &Router) -> bool {
        if rel > 0 {
            return self.tail.restore_state(rel - 1, key, state, router);
        }
        let (Some(k), Some(s)) = (K::read_key(key), decode_all::<S>(state)) else {
            return false;
        };
        let hash = router.hash(K::borrow_owned(&k));
        self.shard.insert_owned(hash, k, s);
        true
    }

    fn replay(&mut self, rel: usize, key: &[u8], value: &[u8], cx: &mut Cx<'_>) -> bool {
        if rel > 0 {
            return self.tail.replay(rel - 1, key, value, cx);
        }
        let (Some(k), Some(v)) = (K::read_key(key), decode_all::<V>(value)) else {
            return false;
        };
        let k = K::borrow_owned(&k);
        let hash = cx.router.hash(k);
        self.apply(hash, k, v, cx);
        true
    }

    fn key_hash(&self, rel: usize, key: &[u8], router: &Router) -> Option<u64> {
        if rel > 0 {
            return self.tail.key_hash(rel - 1, key, router);
        }
        K::read_key(key).map(|k| router.hash(K::borrow_owned(&k)))
    }

    fn check(&self, rel: usize, key: &[u8], state: Option<&[u8]>, value: Option<&[u8]>) -> bool {
        if rel > 0 {
            return self.tail.check(rel - 1, key, state, value);
        }
        K::read_key(key).is_some()
            && state.is_none_or(|s| decode_all::<S>(s).is_some())
            && value.is_none_or(|v| decode_all::<V>(v).is_some())
    }
}

#[allow(private_interfaces)]
impl<E: 'static> PersistStages for Encoder<E> {
    fn snapshot(&self, _: usize, _: &mut Vec<u8>) -> u64 {
        0
    }
    fn log_batch(&self, _: usize, _: usize, _: &dyn Any, _: &mut Vec<u8>) -> u64 {
        0
    }
    fn restore_state(&mut self, _: usize, _: &[u8], _: &[u8], _: &Router) -> bool {
        false
    }
    fn replay(&mut self, _: usize, _: &[u8], _: &[u8], _: &mut Cx<'_>) -> bool {
        false
    }
    fn key_hash(&self, _: usize, _: &[u8], _: &Router) -> Option<u64> {
        None
    }
    fn check(&self, _: usize, _: &[u8], _: Option<&[u8]>, _: Option<&[u8]>) -> bool {
        false
    }
}

#[allow(private_interfaces)]
impl<P: 'static, F: 'static, C: Chain + PersistStages> PersistStages for Forward<P, F, C> {
    fn snapshot(&self, base: usize, body: &mut Vec<u8>) -> u64 {
        self.next.snapshot(base, body)
    }
    fn log_batch(&self, rel: usize, base: usize, batch: &dyn Any, log: &mut Vec<u8>) -> u64 {
        self.next.log_batch(rel, base, batch, log)
    }
    fn restore_state(&mut self, rel: usize, key: &[u8], state: &[u8], router: &Router) -> bool {
        self.next.restore_state(rel, key, state, router)
    }
    fn replay(&mut self, rel: usize, key: &[u8], value: &[u8], cx: &mut Cx<'_>) -> bool {
        self.next.replay(rel, key, value, cx)
    }
    fn key_hash(&self, rel: usize, key: &[u8], router: &Router) -> Option<u64> {
        self.next.key_hash(rel, key, router)
    }
    fn check(&self, rel: usize, key: &[u8], state: Option<&[u8]>, value: Option<&[u8]>) -> bool {
        self.next.check(rel, key, state, value)
    }
}

/// A pipeline that can be checkpointed: every state step's key is [`PersistKey`] and its
/// state and routed value are [`Persist`]. Implemented automatically; name it as a return
/// type (`-> impl PersistApp`) so callers can pass your pipeline to
/// [`Engine::start_with_checkpoints`](crate::Engine::start_with_checkpoints).
pub trait PersistApp: App<Chain: PersistStages> {}

impl<A: App> PersistApp for A where A::Chain: PersistStages {}

/// [`PersistStages`]' methods as plain function pointers.
pub(crate) struct CkOps<C> {
    pub snapshot: fn(&C, usize, &mut Vec<u8>) -> u64,
    pub log_batch: fn(&C, usize, usize, &dyn Any, &mut Vec<u8>) -> u64,
    pub restore_state: fn(&mut C, usize, &[u8], &[u8], &Router) -> bool,
    pub replay: fn(&mut C, usize, &[u8], &[u8], &mut Cx<'_>) -> bool,
    pub key_hash: fn(&C, usize, &[u8], &Router) -> Option<u64>,
    pub check: fn(&C, usize, &[u8], Option<&[u8]>, Option<&[u8]>) -> bool,
}

impl<C> Clone for CkOps<C> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<C> Copy for CkOps<C> {}

impl<C: PersistStages> CkOps<C> {
    pub(crate) fn of() -> Self {
        CkOps {
            snapshot: C::snapshot,
            log_batch: C::log_batch,
            restore_state: C::restore_state,
            replay: C::replay,
            key_hash: C::key_hash,
            check: C::check,
        }
    }
}

/// One core's checkpointing: the protocol state and the chain's serialisers.
pub(crate) struct Participant<A: App> {
    core: CoreCheckpoint,
    ops: CkOps<A::Chain>,
    index: usize,
}

impl<A: App> Participant<A> {
    /// Core `index` of `cores`, reporting to the coordinator over `link`.
    pub(crate) fn new(
        index: usize,
        cores: usize,
        link: Link,
        ops: CkOps<A::Chain>,
        last_id: u64,
    ) -> Self {
        Participant {
            core: CoreCheckpoint::new(index, cores, link, last_id),
            ops,
            index,
        }
    }

    /// Puts restored state into the shards: `state` holds the `(step, key, state)` entries
    /// this core owns, `in_flight` the records that were on their way to it at the cut, which
    /// are applied on top, their output dropped (it was delivered before the checkpoint
    /// committed). Call before any input is read. Returns the entries restored.
    pub(crate) fn restore(&self, worker: &Worker<A>, state: &[u8], in_flight: &[u8]) -> u64 {
        let ops = self.ops;
        worker.with_chain_discarding(|chain, cx| {
            let mut n = 0;
            // Every entry was decoded once already when the checkpoint was checked.
            for (stage, key, bytes) in entries(state).map_while(Result::ok) {
                n += (ops.restore_state)(chain, stage, key, bytes, cx.router) as u64;
            }
            for (stage, key, bytes) in entries(in_flight).map_while(Result::ok) {
                (ops.replay)(chain, stage, key, bytes, cx);
            }
            n
        })
    }

    /// Sets the file ranges this core reads, `(start, end)`; positions start at `start`.
    pub(crate) fn set_file_ranges(&self, ranges: &[(u64, u64)]) {
        *self.core.ranges.borrow_mut() = ranges.to_vec();
    }

    /// Notes that the frames of file range `i` before offset `pos` have all been ingested.
    #[inline]
    pub(crate) fn note_file_position(&self, i: usize, pos: u64) {
        if let Some(r) = self.core.ranges.borrow_mut().get_mut(i) {
            r.0 = pos;
        }
    }

    /// Counts `n` bytes of output produced.
    #[inline]
    pub(crate) fn add_produced(&self, n: usize) {
        self.core.add_produced(n);
    }

    /// The last Done went out: no barrier may follow it.
    pub(crate) fn mark_done_sent(&self) {
        self.core.done_sent.set(true);
    }

    /// Before a batch from `peer` for step `stage` is applied: logs it if it is channel state.
    pub(crate) fn on_batch(&self, peer: usize, stage: usize, batch: &dyn Any, chain: &A::Chain) {
        let ops = self.ops;
        self.core
            .log_if_in_flight(peer, |log| (ops.log_batch)(chain, stage, 0, batch, log));
    }

    /// `peer`'s barrier for checkpoint `id` arrived.
    pub(crate) fn on_barrier(&self, worker: &Worker<A>, peer: usize, id: u64) {
        // The first barrier of a checkpoint cuts this core at once, before any record the
        // peer sent after its own cut can be applied.
        self.cut(worker, id);
        if self.core.barrier(peer, id) {
            self.try_complete(worker);
        } else {
            tracing::error!(
                core = self.index,
                "core {peer} sent a barrier for checkpoint {id}, which is not the one this \
                 core is taking; ignored"
            );
        }
    }

    /// `peer` will send nothing more: it counts as every barrier.
    pub(crate) fn on_peer_done(&self, worker: &Worker<A>, peer: usize) {
        self.core.peer_done(peer);
        self.try_complete(worker);
    }

    /// This core's cut for checkpoint `id` (if it has not cut for it yet): copies every shard
    /// out (the data path's only pause) and sets the outboxes, which hold only records read
    /// before now, aside to go out before the barriers. Does not await: a drain may call it.
    fn cut(&self, worker: &Worker<A>, id: u64) {
        if self.core.last_cut() >= id {
            return;
        }
        let started = Instant::now();
        let (body, keys) = self.snapshot(worker);
        let copy = started.elapsed();
        let pre_cut = worker.take_all_outboxes();
        self.core.cut(id, (body, keys, copy), pre_cut);
        self.try_complete(worker);
    }

    fn snapshot(&self, worker: &Worker<A>) -> (Vec<u8>, u64) {
        let chain = worker.chain.borrow();
        let (keys, _) = chain.keys();
        let mut body = Vec::with_capacity(keys as usize * 24);
        let n = (self.ops.snapshot)(&chain, 0, &mut body);
        (body, n)
    }

    /// Sends what the last cut set aside, then `Barrier(id)`, on every ring. The caller holds
    /// the send lock. Waits on outbound rings: never call it from a drain task.
    pub(crate) async fn send_pending_barriers(&self, worker: &Worker<A>) {
        while let Some((id, batches)) = self.core.take_pending() {
            if self.core.done_sent.get() {
                continue; // Peers count Done as every barrier; nothing may follow it.
            }
            for (dest, env) in batches {
                worker.send(dest, env).await;
            }
            for dest in 0..worker.router.cores() {
                if dest != self.index {
                    worker.send(dest, Envelope::Barrier(id)).await;
                }
            }
        }
    }

    /// Hands the checkpoint in progress to the coordinator once every peer's barrier (or
    /// Done) has arrived: the shards copied at the cut and the records logged in flight.
    fn try_complete(&self, worker: &Worker<A>) {
        let Some(done) = self.core.take_complete() else {
            return;
        };
        let pause = done.copy;
        let m = worker.core_metrics();
        CoreMetrics::add(&m.checkpoints, 1);
        CoreMetrics::set(&m.checkpoint_pause_us_last, pause.as_micros() as u64);
        CoreMetrics::add(&m.checkpoint_pause_us_total, pause.as_micros() as u64);
        if pause.as_micros() as u64 > m.checkpoint_pause_us_max.load(Relaxed) {
            CoreMetrics::set(&m.checkpoint_pause_us_max, pause.as_micros() as u64);
        }
        CoreMetrics::set(&m.checkpoint_in_flight_last, done.log_records);
        CoreMetrics::set(
            &m.checkpoint_bytes_last,
            (done.body.len() + done.log.len()) as u64,
        );
        self.core.link.send(CoreReport::Snapshot(Contribution {
            core: self.index,
            id: done.id,
            body: done.body,
            keys: done.keys,
            log_records: done.log_records,
            log: done.log,
            ranges: done.ranges_at_cut,
            // Everything produced so far includes the output of every record in the
            // checkpoint, the logged ones too (a restore applies those silently).
            out_mark: self.core.produced(),
            pause,
        }));
    }

    /// The end of this core's run, once its sources are finished and every peer has said
    /// Done: stops the initiator, completes any checkpoint still asked of this core, and hands
    /// the final state to the coordinator.
    pub(crate) async fn finish(&self, worker: &Worker<A>, initiator: glommio::Task<()>) {
        self.core.finished.set(true);
        self.core.poke.notify();
        initiator.await;
        while let Some(id) = self.core.due() {
            self.cut(worker, id);
        }
        // Every peer is done, so any cut above completed at once; its barriers are dropped.
        while self.core.take_pending().is_some() {}
        let (body, keys) = self.snapshot(worker);
        self.core.link.send(CoreReport::Final(Contribution {
            core: self.index,
            id: self.core.last_snapshot() + 1,
            body,
            keys,
            log: Vec::new(),
            log_records: 0,
            ranges: self.core.ranges.borrow().clone(),
            out_mark: self.core.produced(),
            pause: Duration::ZERO,
        }));
    }
}

/// Cuts this core for every checkpoint the coordinator asks for (or a peer's barrier announces)
/// until the run ends. Waits on outbound rings, so it never drains (see [`crate::worker`]).
pub(crate) async fn run_initiator<A: App>(worker: Rc<Worker<A>>) {
    let Some(ck) = &worker.ck else { return };
    let link = &ck.core.link;
    loop {
        // Created before `due()` looks, so a request posted in between is not missed.
        let requested = link.next_request();
        if ck.core.finished.get() {
            return;
        }
        if let Some(id) = ck.core.due() {
            ck.cut(&worker, id);
        }
        if ck.core.has_pending() {
            let permit = worker.send_lock.acquire_permit(1).await.ok();
            ck.send_pending_barriers(&worker).await;
            drop(permit);
            continue;
        }
        // Requests come from the coordinator's thread, cuts made by drains and the end of the
        // run from this core: either wakes it, and nothing else does.
        or(requested, ck.core.poke.wait()).await;
    }
}
