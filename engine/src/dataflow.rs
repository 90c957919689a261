//! The dataflow as one core runs it: sources' front halves, then a chain of state steps.
//!
//! A pipeline ([`crate::pipeline`]) is a description. Each core builds its own running copy of
//! it on its own thread: the [`Fronts`] (one per source: decode a frame, run the stateless
//! steps, key each record) and a [`Chain`] of state steps. A state step ([`StateStage`]) owns
//! this core's [`Shard`] of its keys; what it emits goes to its tail: an [`Encoder`] writing
//! bytes for the sink, or a [`Forward`] that runs more stateless steps, keys the results again
//! and routes them to the next state step.
//!
//! **Records cross cores at each `key_by` and nowhere else.** A keyed record whose owner is
//! this core is applied at once, by a direct call; one owned by another core is moved into that
//! core's [`Outbox`] for that step, which the worker sends as one batch ([`crate::worker`]).
//! Batches of every step share the rings, tagged with their step's index; the receiving core
//! hands them to [`Chain::apply_any`], which finds the step and its types again.

use std::marker::PhantomData;
use std::time::Instant;

use crate::key::{owned_heap_bytes, Key};
use crate::pipeline::steps::TypedStep;
use crate::routing::{AnyBatch, Batch, Router, MAX_BATCH_BYTES};
use crate::state::Shard;

/// Why a frame was rejected by a source's decoder. `Copy` and allocation-free, so a flood of
/// bad frames costs nothing but a counter.
///
/// ```
/// use bettong_engine::DecodeError;
/// let e = DecodeError::new("an order payload must be 53 bytes").with_value(52);
/// assert_eq!(e.to_string(), "an order payload must be 53 bytes (got 52)");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError {
    reason: &'static str,
    value: Option<u64>,
}

impl DecodeError {
    /// A rejection for `reason`.
    pub const fn new(reason: &'static str) -> Self {
        DecodeError {
            reason,
            value: None,
        }
    }

    /// The same, naming the offending value (a length, a type byte, an offset).
    pub const fn with_value(self, value: u64) -> Self {
        DecodeError {
            reason: self.reason,
            value: Some(value),
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.value {
            Some(v) => write!(f, "{} (got {v})", self.reason),
            None => f.write_str(self.reason),
        }
    }
}

impl std::error::Error for DecodeError {}

impl From<std::str::Utf8Error> for DecodeError {
    fn from(e: std::str::Utf8Error) -> Self {
        DecodeError::new("the frame is not valid UTF-8; first bad byte at offset")
            .with_value(e.valid_up_to() as u64)
    }
}

/// One source's front half: frame → records → keyed records.
pub trait Front: Clone + Send + 'static {
    /// The key `key_by` makes.
    type Key: ?Sized + Key;
    /// The value routed with it.
    type Value: Send + 'static;
    /// Decodes one frame and passes every keyed record to `route`. A frame the decoder rejects
    /// routes nothing.
    fn decode(
        &mut self,
        frame: &[u8],
        route: &mut impl FnMut(&Self::Key, Self::Value),
    ) -> Result<(), DecodeError>;
}

/// The front halves of every source of a pipeline (one, or several merged into one state
/// step), addressed by source index in the order they were merged.
pub trait Fronts: Clone + Send + 'static {
    /// The key every source's `key_by` makes.
    type Key: ?Sized + Key;
    /// The value every source routes.
    type Value: Send + 'static;
    /// Number of sources.
    fn count(&self) -> usize;
    /// [`Front::decode`] of source `source`.
    fn decode(
        &mut self,
        source: usize,
        frame: &[u8],
        route: &mut impl FnMut(&Self::Key, Self::Value),
    ) -> Result<(), DecodeError>;
}

impl<F: Front> Fronts for F {
    type Key = F::Key;
    type Value = F::Value;
    fn count(&self) -> usize {
        1
    }
    #[inline]
    fn decode(
        &mut self,
        _source: usize,
        frame: &[u8],
        route: &mut impl FnMut(&Self::Key, Self::Value),
    ) -> Result<(), DecodeError> {
        Front::decode(self, frame, route)
    }
}

/// Two groups of sources merged into one state step (Wallaroo's `merge`): sources `0..a` are
/// `A`'s, the next are `B`'s.
#[derive(Clone)]
pub struct Merge<A, B> {
    pub(crate) a: A,
    pub(crate) b: B,
}

impl<A: Fronts, B: Fronts<Key = A::Key, Value = A::Value>> Fronts for Merge<A, B> {
    type Key = A::Key;
    type Value = A::Value;
    fn count(&self) -> usize {
        self.a.count() + self.b.count()
    }
    #[inline]
    fn decode(
        &mut self,
        source: usize,
        frame: &[u8],
        route: &mut impl FnMut(&Self::Key, Self::Value),
    ) -> Result<(), DecodeError> {
        let n = self.a.count();
        if source < n {
            self.a.decode(source, frame, route)
        } else {
            self.b.decode(source - n, frame, route)
        }
    }
}

/// What applying records on one core did, and where its outputs go.
pub struct Cx<'a> {
    /// This core's index.
    pub me: usize,
    pub router: &'a Router,
    /// The sink chunk encoders append to.
    pub out: &'a mut Vec<u8>,
    /// When the records being applied arrived at the engine.
    pub born: Instant,
    /// Records applied to a state step.
    pub applied: u64,
    /// Outputs encoded for the sink.
    pub outputs: u64,
    /// Records a forward step moved into an outbox for another core.
    pub forwarded: u64,
    /// Records a forward step dropped because their key was too long
    /// ([`Router::accepts`]).
    pub keys_rejected: u64,
}

/// Keyed records waiting to be sent to other cores for one state step, per core: batches of
/// at most [`MAX_BATCH_BYTES`] of records each (estimated: a record's `size_of` plus its key's
/// heap bytes), so one batch on a ring is bounded in bytes whatever the frames were.
pub(crate) struct Outbox<K: ?Sized + Key, V> {
    per_dest: Vec<DestBatches<K::Owned, V>>,
    queued: usize,
}

/// One destination's waiting records: batches already full, oldest first, and the one filling.
struct DestBatches<K, V> {
    full: Vec<Batch<K, V>>,
    filling: Batch<K, V>,
    /// Estimated bytes of `filling`'s records.
    bytes: usize,
}

impl<K, V> Default for DestBatches<K, V> {
    fn default() -> Self {
        DestBatches {
            full: Vec::new(),
            filling: Batch::default(),
            bytes: 0,
        }
    }
}

impl<K: ?Sized + Key, V: Send + 'static> Outbox<K, V> {
    /// Estimated bytes of one record in a batch, not counting its key's heap bytes.
    const RECORD: usize = std::mem::size_of::<(u64, K::Owned, V)>();
    /// Records of [`Outbox::RECORD`] bytes that fill a batch.
    const MAX_RECORDS: usize = {
        let n = MAX_BATCH_BYTES / if Self::RECORD == 0 { 1 } else { Self::RECORD };
        if n == 0 {
            1
        } else {
            n
        }
    };

    pub(crate) fn new() -> Self {
        Outbox {
            per_dest: Vec::new(),
            queued: 0,
        }
    }

    /// Moves a record into core `dest`'s batch (copying a borrowed key into its owned form),
    /// starting a new batch when this one would exceed [`MAX_BATCH_BYTES`].
    #[inline]
    pub(crate) fn push(&mut self, dest: usize, hash: u64, key: K::Owned, value: V, born: Instant) {
        if dest >= self.per_dest.len() {
            self.per_dest.resize_with(dest + 1, DestBatches::default);
        }
        let d = &mut self.per_dest[dest];
        let size = Self::RECORD + owned_heap_bytes::<K>(&key);
        if d.bytes + size > MAX_BATCH_BYTES && !d.filling.is_empty() {
            let cap = d.filling.len().min(Self::MAX_RECORDS);
            d.full
                .push(std::mem::replace(&mut d.filling, Batch::with_capacity(cap)));
            d.bytes = 0;
        }
        let b = &mut d.filling;
        if b.born.is_none() {
            b.born = Some(born);
        }
        b.push(hash, key, value);
        d.bytes += size;
        self.queued += 1;
    }

    /// Records waiting, over every destination.
    pub(crate) fn queued(&self) -> usize {
        self.queued
    }

    /// Hands `f` every batch for core `dest` that holds records, oldest first, leaving an
    /// empty one with room for as many records as the last.
    pub(crate) fn take(
        &mut self,
        dest: usize,
        f: &mut dyn FnMut(AnyBatch, usize, Option<Instant>),
    ) {
        let Some(d) = self.per_dest.get_mut(dest) else {
            return;
        };
        let full = std::mem::take(&mut d.full);
        let last = if d.filling.is_empty() {
            None
        } else {
            let cap = d.filling.len().min(Self::MAX_RECORDS);
            d.bytes = 0;
            Some(std::mem::replace(&mut d.filling, Batch::with_capacity(cap)))
        };
        for batch in full.into_iter().chain(last) {
            self.queued -= batch.len();
            let (len, born) = (batch.len(), batch.born);
            f(Box::new(batch), len, born);
        }
    }

    /// Batches waiting for core `dest` (full ones and the one filling, if it holds records).
    #[cfg(test)]
    pub(crate) fn batches(&self, dest: usize) -> usize {
        self.per_dest
            .get(dest)
            .map_or(0, |d| d.full.len() + usize::from(!d.filling.is_empty()))
    }
}

/// A batch handed to a step that is not of its types: a bug, reported by the worker.
pub struct WrongBatch;

/// What every part of a running chain does besides taking records: the state steps it holds
/// (counted from `rel` 0, the next step to take routed records), their outboxes and shards.
pub trait Stages: 'static {
    /// Number of state steps held.
    #[doc(hidden)]
    fn depth(&self) -> usize;

    /// Applies a batch routed to step `rel` (0 = the first step held).
    #[doc(hidden)]
    #[allow(private_interfaces)]
    fn apply_any(&mut self, rel: usize, batch: AnyBatch, cx: &mut Cx<'_>)
        -> Result<(), WrongBatch>;

    /// Hands `f` every non-empty outbox batch for core `dest` of the steps held, with its
    /// absolute step index (`base` is the index of the first outbox's step).
    #[doc(hidden)]
    #[allow(clippy::type_complexity)]
    fn take_outboxes(
        &mut self,
        base: usize,
        dest: usize,
        f: &mut dyn FnMut(usize, AnyBatch, usize, Option<Instant>),
    );

    /// Records waiting in the outboxes held.
    #[doc(hidden)]
    fn queued(&self) -> usize;

    /// Keys held and their approximate heap bytes, over every step.
    #[doc(hidden)]
    fn keys(&self) -> (u64, u64);
}

/// A chain of state steps as one core runs it: the first step and everything after it.
pub trait Chain: Stages {
    /// The first step's key.
    type Key: ?Sized + Key;
    /// The value the first step takes.
    type Value: Send + 'static;

    /// Applies one record owned by this core to the first step.
    #[doc(hidden)]
    #[allow(private_interfaces)]
    fn apply(&mut self, hash: u64, key: &Self::Key, value: Self::Value, cx: &mut Cx<'_>);
}

/// What a state step's outputs go to: the encoder, or the steps after a further `key_by`.
pub trait Tail<K: ?Sized, O>: Stages {
    /// Takes one output of the step before.
    #[doc(hidden)]
    #[allow(private_interfaces)]
    fn emit(&mut self, key: &K, out: O, cx: &mut Cx<'_>);
}

/// How many records ahead of the one being applied a batch prefetches its state slot
/// ([`Shard::prefetch`]).
const PREFETCH_AHEAD: usize = 8;

/// One state step on one core: this core's shard of its keys, the user's initial-state and
/// update functions, and the tail its outputs go to.
pub struct StateStage<K: ?Sized + Key, V, S, I, U, T> {
    pub(crate) shard: Shard<K, S>,
    pub(crate) init: I,
    pub(crate) update: U,
    pub(crate) tail: T,
    pub(crate) _v: PhantomData<fn(V)>,
}

impl<K, V, S, I, U, R, T> Stages for StateStage<K, V, S, I, U, T>
where
    K: ?Sized + Key + 'static,
    V: Send + 'static,
    S: 'static,
    I: FnMut(&K) -> S + 'static,
    U: FnMut(&K, &mut S, V) -> R + 'static,
    R: IntoIterator,
    T: Tail<K, R::Item>,
{
    fn depth(&self) -> usize {
        1 + self.tail.depth()
    }

    fn apply_any(
        &mut self,
        rel: usize,
        batch: AnyBatch,
        cx: &mut Cx<'_>,
    ) -> Result<(), WrongBatch> {
        if rel > 0 {
            return self.tail.apply_any(rel - 1, batch, cx);
        }
        let batch = batch
            .downcast::<Batch<K::Owned, V>>()
            .map_err(|_| WrongBatch)?;
        let mut records = batch.into_records();
        while let Some((hash, key, value)) = records.next() {
            if let Some((ahead, _, _)) = records.as_slice().get(PREFETCH_AHEAD - 1) {
                self.shard.prefetch(*ahead);
            }
            self.apply(hash, K::borrow_owned(&key), value, cx);
        }
        Ok(())
    }

    fn take_outboxes(
        &mut self,
        base: usize,
        dest: usize,
        f: &mut dyn FnMut(usize, AnyBatch, usize, Option<Instant>),
    ) {
        self.tail.take_outboxes(base + 1, dest, f)
    }

    fn queued(&self) -> usize {
        self.tail.queued()
    }

    fn keys(&self) -> (u64, u64) {
        let (k, b) = self.tail.keys();
        (
            k + self.shard.len() as u64,
            b + self.shard.heap_bytes() as u64,
        )
    }
}

impl<K, V, S, I, U, R, T> Chain for StateStage<K, V, S, I, U, T>
where
    K: ?Sized + Key + 'static,
    V: Send + 'static,
    S: 'static,
    I: FnMut(&K) -> S + 'static,
    U: FnMut(&K, &mut S, V) -> R + 'static,
    R: IntoIterator,
    T: Tail<K, R::Item>,
{
    type Key = K;
    type Value = V;

    #[inline]
    fn apply(&mut self, hash: u64, key: &K, value: V, cx: &mut Cx<'_>) {
        let StateStage {
            shard,
            init,
            update,
            tail,
            ..
        } = self;
        let state = shard.get_or_insert_with(hash, key, &mut *init);
        cx.applied += 1;
        for o in update(key, state, value) {
            tail.emit(key, o, cx);
        }
    }
}

/// The last tail: encodes each output for the sink.
pub struct Encoder<E> {
    pub(crate) encode: E,
}

impl<K: ?Sized, O, E> Tail<K, O> for Encoder<E>
where
    E: FnMut(&K, &O, &mut Vec<u8>) + 'static,
{
    #[inline]
    fn emit(&mut self, key: &K, out: O, cx: &mut Cx<'_>) {
        (self.encode)(key, &out, cx.out);
        cx.outputs += 1;
    }
}

impl<E: 'static> Stages for Encoder<E> {
    fn depth(&self) -> usize {
        0
    }
    fn apply_any(&mut self, _: usize, _: AnyBatch, _: &mut Cx<'_>) -> Result<(), WrongBatch> {
        Err(WrongBatch)
    }
    fn take_outboxes(
        &mut self,
        _: usize,
        _: usize,
        _: &mut dyn FnMut(usize, AnyBatch, usize, Option<Instant>),
    ) {
    }
    fn queued(&self) -> usize {
        0
    }
    fn keys(&self) -> (u64, u64) {
        (0, 0)
    }
}

/// A tail that runs more stateless steps on each output, keys the results again and routes
/// them to the next state step: this is where a chained pipeline crosses cores again.
pub struct Forward<P, F, C: Chain> {
    pub(crate) steps: P,
    pub(crate) key: F,
    pub(crate) outbox: Outbox<C::Key, C::Value>,
    pub(crate) next: C,
}

impl<K, O, P, F, C, K2> Tail<K, O> for Forward<P, F, C>
where
    K: ?Sized,
    P: TypedStep<O>,
    F: FnMut(P::Out) -> (K2, C::Value) + 'static,
    C: Chain<Key = K2>,
    K2: Key + Sized,
    O: 'static,
{
    #[inline]
    fn emit(&mut self, _key: &K, out: O, cx: &mut Cx<'_>) {
        let Forward {
            steps,
            key,
            outbox,
            next,
        } = self;
        steps.run(out, &mut |item| {
            let (k, v) = key(item);
            if !cx.router.accepts(&k) {
                cx.keys_rejected += 1;
                return;
            }
            let hash = cx.router.hash(&k);
            let owner = cx.router.owner(hash);
            if owner == cx.me {
                next.apply(hash, &k, v, cx);
            } else {
                outbox.push(owner, hash, k.to_owned_key(), v, cx.born);
                cx.forwarded += 1;
            }
        });
    }
}

impl<P: 'static, F: 'static, C: Chain> Stages for Forward<P, F, C> {
    fn depth(&self) -> usize {
        self.next.depth()
    }
    fn apply_any(
        &mut self,
        rel: usize,
        batch: AnyBatch,
        cx: &mut Cx<'_>,
    ) -> Result<(), WrongBatch> {
        self.next.apply_any(rel, batch, cx)
    }
    fn take_outboxes(
        &mut self,
        base: usize,
        dest: usize,
        f: &mut dyn FnMut(usize, AnyBatch, usize, Option<Instant>),
    ) {
        self.outbox
            .take(dest, &mut |batch, len, born| f(base, batch, len, born));
        self.next.take_outboxes(base, dest, f)
    }
    fn queued(&self) -> usize {
        self.outbox.queued() + self.next.queued()
    }
    fn keys(&self) -> (u64, u64) {
        self.next.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take_all(o: &mut Outbox<str, ()>, dest: usize) -> Vec<Batch<crate::key::SmallStr, ()>> {
        let mut got = Vec::new();
        o.take(dest, &mut |b, len, born| {
            let b = b.downcast::<Batch<crate::key::SmallStr, ()>>().unwrap();
            assert_eq!(b.len(), len);
            assert!(born.is_some());
            got.push(*b);
        });
        got
    }

    /// A flood of one-letter words (what a 1 MiB frame holds) is split into batches of at most
    /// MAX_BATCH_BYTES each, in order, none lost.
    #[test]
    fn outbox_splits_batches_at_the_byte_cap() {
        let mut o: Outbox<str, ()> = Outbox::new();
        let rec = Outbox::<str, ()>::RECORD;
        assert_eq!(rec, 32);
        let n = 512 * 1024;
        let now = Instant::now();
        for i in 0..n {
            o.push(1, i as u64, "a".to_owned_key(), (), now);
        }
        assert_eq!(o.queued(), n);
        assert_eq!(o.batches(1), n * rec / MAX_BATCH_BYTES);
        let got = take_all(&mut o, 1);
        assert_eq!(o.queued(), 0);
        assert_eq!(o.batches(1), 0);
        assert_eq!(got.len(), n * rec / MAX_BATCH_BYTES);
        let mut next = 0u64;
        for b in &got {
            assert!(
                b.len() * rec <= MAX_BATCH_BYTES,
                "a batch of {} records",
                b.len()
            );
            for (h, _, _) in b.iter() {
                assert_eq!(*h, next);
                next += 1;
            }
        }
        assert_eq!(next, n as u64);
        assert!(take_all(&mut o, 1).is_empty());
        assert!(take_all(&mut o, 5).is_empty());
    }

    /// Long keys count their heap bytes; one key above the cap travels alone.
    #[test]
    fn outbox_counts_long_keys_heap_bytes() {
        let mut o: Outbox<str, ()> = Outbox::new();
        let now = Instant::now();
        let long = "x".repeat(300 * 1024);
        for _ in 0..10 {
            o.push(0, 0, long.as_str().to_owned_key(), (), now);
        }
        // Three 300 KiB keys fit in 1 MiB, a fourth does not.
        let sizes: Vec<usize> = take_all(&mut o, 0).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [3, 3, 3, 1]);
        let huge = "y".repeat(2 * MAX_BATCH_BYTES);
        o.push(0, 0, "a".to_owned_key(), (), now);
        o.push(0, 0, huge.as_str().to_owned_key(), (), now);
        o.push(0, 0, "b".to_owned_key(), (), now);
        let sizes: Vec<usize> = take_all(&mut o, 0).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [1, 1, 1]);
    }
}
