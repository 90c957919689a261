//! One core's side of a checkpoint: its cut, the barriers it sends, and the records in flight.
//!
//! This is Chandy–Lamport's snapshot with channel state, which never stops a data path:
//! - **The cut.** A core cuts for checkpoint `id` at the first of: its initiator seeing the
//!   coordinator's request, or the first `Barrier(id)` arriving from a peer (so a peer's records
//!   sent after its barrier always arrive after this core's cut). Cutting is synchronous: the
//!   shard is copied out (the only pause), the read positions noted, and the outboxes, which hold
//!   only records read before the cut, are set aside to go out before the barrier.
//! - **The barriers.** The next task to hold the send lock (a source's flush or the initiator)
//!   first sends the set-aside batches and then `Barrier(id)` on every ring, before any batch of
//!   records read after the cut.
//! - **Channel state.** Records that a peer sent before its own cut can still be on the ring when
//!   this core cuts: they are applied as usual and also logged, until that peer's barrier (or
//!   Done) arrives. Once every peer's has, the snapshot and the log are handed to the
//!   coordinator. Restoring applies the log to the snapshot: that is the state after every record
//!   read before the cut on every core, and no other.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use super::coordinator::Link;
use crate::notify::Notify;
use crate::routing::Envelope;

/// A checkpoint this core has cut for and whose channel state is still being logged.
pub(crate) struct InFlight {
    pub id: u64,
    /// The shard at the cut, encoded, and its number of keys.
    pub body: Vec<u8>,
    pub keys: u64,
    /// How long copying the shard took (the data path's pause).
    pub copy: Duration,
    /// `(next offset, end)` of this core's file ranges at its cut.
    pub ranges_at_cut: Vec<(u64, u64)>,
    /// Which peers' barriers have arrived (this core's own slot is set).
    barrier: Vec<bool>,
    /// Records from peers that arrived after the cut and before their sender's barrier,
    /// encoded as `(step, key, value)` entries, and how many.
    pub log: Vec<u8>,
    pub log_records: u64,
}

/// Batches set aside at a cut, by destination core, to go out before its barrier.
pub(crate) type PreCut = Vec<(usize, Envelope)>;

/// One core's checkpointing state (present only when the engine runs with checkpoints).
pub(crate) struct CoreCheckpoint {
    pub link: Link,
    /// Done went out on every ring: no barrier may follow it.
    pub done_sent: Cell<bool>,
    peer_done: RefCell<Vec<bool>>,
    last_cut: Cell<u64>,
    last_snapshot: Cell<u64>,
    inflight: RefCell<Option<InFlight>>,
    /// Batches read before a cut, and the barrier to send after them, oldest cut first.
    pending: RefCell<std::collections::VecDeque<(u64, PreCut)>>,
    /// Woken at a cut: the initiator sends the barriers.
    pub poke: Notify,
    /// Bytes of output produced on this core so far (what the sink must take before the
    /// checkpoint that covers them commits).
    produced: Cell<u64>,
    /// `(next offset, end)` of each file range this core reads, kept current by the file source.
    pub ranges: RefCell<Vec<(u64, u64)>>,
    /// Set at the end of the run: the initiator stops.
    pub finished: Cell<bool>,
}

impl CoreCheckpoint {
    /// The state of core `core` of `cores`, whose checkpoints so far end at `last_id`.
    pub(crate) fn new(core: usize, cores: usize, link: Link, last_id: u64) -> Self {
        CoreCheckpoint {
            link,
            done_sent: Cell::new(false),
            peer_done: RefCell::new((0..cores).map(|p| p == core).collect()),
            last_cut: Cell::new(last_id),
            last_snapshot: Cell::new(last_id),
            inflight: RefCell::new(None),
            pending: RefCell::default(),
            poke: Notify::default(),
            produced: Cell::new(0),
            ranges: RefCell::new(Vec::new()),
            finished: Cell::new(false),
        }
    }

    /// The checkpoint the coordinator asks this core to cut for, if it has not yet.
    pub(crate) fn due(&self) -> Option<u64> {
        let want = self.link.requested();
        (want > self.last_cut.get()).then_some(want)
    }

    /// The id of the last checkpoint this core cut for.
    pub(crate) fn last_cut(&self) -> u64 {
        self.last_cut.get()
    }

    /// The id of the last checkpoint this core handed its snapshot over for.
    pub(crate) fn last_snapshot(&self) -> u64 {
        self.last_snapshot.get()
    }

    /// Records the cut for `id`: the shard copy `body` (of `keys` keys, made in `copy`) and the
    /// outboxes taken at the cut, which go out before the barrier.
    pub(crate) fn cut(
        &self,
        id: u64,
        (body, keys, copy): (Vec<u8>, u64, Duration),
        pre_cut: PreCut,
    ) {
        let barrier = self.peer_done.borrow().clone();
        *self.inflight.borrow_mut() = Some(InFlight {
            id,
            body,
            keys,
            copy,
            ranges_at_cut: self.ranges.borrow().clone(),
            barrier,
            log: Vec::new(),
            log_records: 0,
        });
        self.pending.borrow_mut().push_back((id, pre_cut));
        self.last_cut.set(id);
        self.poke.notify();
    }

    /// The batches and barrier still to send, if a cut set them aside.
    pub(crate) fn take_pending(&self) -> Option<(u64, PreCut)> {
        self.pending.borrow_mut().pop_front()
    }

    /// True when a cut's barriers are still to be sent.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.borrow().is_empty()
    }

    /// Records that `peer`'s barrier for `id` arrived (its later records are after the cut).
    /// Returns false for a barrier of another checkpoint than the one being logged, which would
    /// be a protocol bug.
    pub(crate) fn barrier(&self, peer: usize, id: u64) -> bool {
        match self.inflight.borrow_mut().as_mut() {
            Some(f) if f.id == id => {
                f.barrier[peer] = true;
                true
            }
            _ => false,
        }
    }

    /// Records that `peer` has sent everything it ever will.
    pub(crate) fn peer_done(&self, peer: usize) {
        self.peer_done.borrow_mut()[peer] = true;
        if let Some(f) = self.inflight.borrow_mut().as_mut() {
            f.barrier[peer] = true;
        }
    }

    /// Logs a batch about to be applied from `peer` (`encode` appends its records and returns
    /// how many), if it is channel state of the checkpoint in progress: it arrived after this
    /// core's cut and before `peer`'s barrier.
    pub(crate) fn log_if_in_flight(&self, peer: usize, encode: impl FnOnce(&mut Vec<u8>) -> u64) {
        if let Some(f) = self.inflight.borrow_mut().as_mut() {
            if !f.barrier[peer] {
                f.log_records += encode(&mut f.log);
            }
        }
    }

    /// When every peer's barrier (or Done) has arrived, takes the checkpoint in progress out, to
    /// be handed to the coordinator.
    pub(crate) fn take_complete(&self) -> Option<InFlight> {
        let mut slot = self.inflight.borrow_mut();
        if slot.as_ref()?.barrier.iter().all(|b| *b) {
            let f = slot.take()?;
            self.last_snapshot.set(f.id);
            Some(f)
        } else {
            None
        }
    }

    /// Counts `n` bytes of output produced.
    #[inline]
    pub(crate) fn add_produced(&self, n: usize) {
        self.produced.set(self.produced.get() + n as u64);
    }

    /// Bytes of output produced so far.
    pub(crate) fn produced(&self) -> u64 {
        self.produced.get()
    }
}
