//! The pipeline API: what a user writes.
//!
//! A pipeline is: one or more sources, each with a decoder → stateless steps (`map`,
//! `flat_map`, `filter`) → `key_by`; then a state step (one user state per key and a function
//! that updates it); then either an encoder for the sink, or more stateless steps, another
//! `key_by` and another state step, and so on.
//!
//! - [`Pipeline::text`] decodes each frame as UTF-8 text and keeps it **borrowed from the read
//!   buffer**: items are `Cow<str>`, borrowed unless a step had to build a new string, and
//!   `key_by` returns a key borrowed from the item. This is word count's zero-copy path.
//! - [`Pipeline::decode`] turns each frame into any owned type `T` with your decoder; steps then
//!   work over any types, and `key_by` returns any owned `Hash + Eq` key (integers, byte arrays,
//!   strings, your structs).
//!
//! **`key_by` is where records cross cores**, and the only place: the key is hashed once and
//! the record (its key and value, moved, not serialised) is applied on the core that owns the
//! hash. The state step and whatever follows it run on that owner, so all of one key's outputs
//! leave through one sink connection, in order. Several sources feed one state step with
//! [`Keyed::merge`].
//!
//! ```
//! use bettong_engine::{DecodeError, Pipeline};
//!
//! // Frames are "account amount"; keep a balance per account, then count, per balance
//! // bucket, how many updates landed in it (a second key_by, so a second crossing).
//! let pipeline = Pipeline::decode(|frame: &[u8]| {
//!     let text = std::str::from_utf8(frame)?;
//!     let (acct, amount) = text.split_once(' ').ok_or(DecodeError::new("expected 'account amount'"))?;
//!     let amount: i64 = amount.parse().map_err(|_| DecodeError::new("amount is not an integer"))?;
//!     Ok((acct.to_string(), amount))
//! })
//! .key_by(|(acct, amount)| (acct, amount))
//! .state(|_acct: &String, balance: &mut i64, amount| {
//!     *balance += amount;
//!     Some(*balance)
//! })
//! .map(|balance| balance / 100)
//! .key_by(|bucket| (bucket, ()))
//! .state(|_bucket: &i64, n: &mut u64, ()| {
//!     *n += 1;
//!     Some(*n)
//! })
//! .encode(|bucket, n, out| out.extend_from_slice(format!("{bucket}: {n}\n").as_bytes()));
//! # let _ = pipeline;
//! ```

// Builder and callback types name every user type they carry; aliases would only hide them.
#![allow(clippy::type_complexity)]

mod merge_all;
pub(crate) mod steps;

pub use merge_all::MergeAll;

use std::borrow::Cow;
use std::marker::PhantomData;

use crate::dataflow::{
    Chain, DecodeError, Encoder, Forward, Front, Fronts, Merge, Outbox, StateStage, Tail,
};
use crate::key::Key;
use crate::state::Shard;
use steps::{Filter, FlatMap, FlatMapTo, Identity, Map, MapTo, TextStep, TypedStep};

/// A text pipeline's front half under construction; also where every pipeline starts.
#[derive(Clone, Debug)]
pub struct Pipeline<P> {
    steps: P,
}

impl Pipeline<Identity> {
    /// A pipeline whose frames are UTF-8 text, borrowed from the read buffer. A frame that is
    /// not valid UTF-8 is rejected whole: none of it reaches the steps, and the engine counts
    /// and logs it.
    pub fn text() -> Self {
        Pipeline { steps: Identity }
    }

    /// A pipeline whose frames `decoder` turns into values of any type. A frame the decoder
    /// rejects with a [`DecodeError`] reaches no step; the engine counts it and logs the
    /// reason (rate-limited), and the connection goes on.
    pub fn decode<D, T>(decoder: D) -> Typed<D, Identity, T>
    where
        D: FnMut(&[u8]) -> Result<T, DecodeError> + Clone + Send + 'static,
    {
        Typed {
            decoder,
            steps: Identity,
            _t: PhantomData,
        }
    }
}

impl<P: TextStep> Pipeline<P> {
    /// Replaces each item with `f(item)`.
    pub fn map<F>(self, f: F) -> Pipeline<Map<P, F>>
    where
        F: FnMut(Cow<'_, str>) -> Cow<'_, str> + Clone + Send + 'static,
    {
        Pipeline {
            steps: Map {
                prev: self.steps,
                f,
            },
        }
    }

    /// Replaces each item with every item `f` passes to its second argument.
    pub fn flat_map<F>(self, f: F) -> Pipeline<FlatMap<P, F>>
    where
        F: FnMut(Cow<'_, str>, &mut dyn FnMut(Cow<'_, str>)) + Clone + Send + 'static,
    {
        Pipeline {
            steps: FlatMap {
                prev: self.steps,
                f,
            },
        }
    }

    /// Keeps the items for which `f` is true.
    pub fn filter<F>(self, f: F) -> Pipeline<Filter<P, F>>
    where
        F: FnMut(&str) -> bool + Clone + Send + 'static,
    {
        Pipeline {
            steps: Filter {
                prev: self.steps,
                f,
            },
        }
    }

    /// Splits each item into a key borrowed from it (a `&str`, a `&[u8]`, …) and a value of
    /// any `Send` type. **This is where records cross cores:** the key is hashed once and the
    /// record is applied on the core that owns the hash; the key is copied only if it must
    /// travel to another core or becomes a new key.
    pub fn key_by<F, K, V>(self, key: F) -> Keyed<TextFront<P, F, K, V>>
    where
        F: FnMut(&str) -> (&K, V) + Clone + Send + 'static,
        K: ?Sized + Key + 'static,
        V: Send + 'static,
    {
        Keyed {
            fronts: TextFront {
                steps: self.steps,
                key,
                _kv: PhantomData,
            },
        }
    }
}

/// A typed pipeline's front half under construction: a decoder and steps over owned values.
pub struct Typed<D, P, T> {
    decoder: D,
    steps: P,
    _t: PhantomData<fn() -> T>,
}

impl<D: Clone, P: Clone, T> Clone for Typed<D, P, T> {
    fn clone(&self) -> Self {
        Typed {
            decoder: self.decoder.clone(),
            steps: self.steps.clone(),
            _t: PhantomData,
        }
    }
}

impl<D, P, T> Typed<D, P, T>
where
    D: FnMut(&[u8]) -> Result<T, DecodeError> + Clone + Send + 'static,
    P: TypedStep<T>,
{
    /// Replaces each item with `f(item)`.
    pub fn map<F, U>(self, f: F) -> Typed<D, MapTo<P, F, U>, T>
    where
        F: FnMut(P::Out) -> U + Clone + Send + 'static,
    {
        Typed {
            decoder: self.decoder,
            steps: MapTo {
                prev: self.steps,
                f,
                _out: PhantomData,
            },
            _t: PhantomData,
        }
    }

    /// Replaces each item with every item `f` passes to its second argument.
    pub fn flat_map<F, U>(self, f: F) -> Typed<D, FlatMapTo<P, F, U>, T>
    where
        F: FnMut(P::Out, &mut dyn FnMut(U)) + Clone + Send + 'static,
    {
        Typed {
            decoder: self.decoder,
            steps: FlatMapTo {
                prev: self.steps,
                f,
                _out: PhantomData,
            },
            _t: PhantomData,
        }
    }

    /// Keeps the items for which `f` is true.
    pub fn filter<F>(self, f: F) -> Typed<D, Filter<P, F>, T>
    where
        F: FnMut(&P::Out) -> bool + Clone + Send + 'static,
    {
        Typed {
            decoder: self.decoder,
            steps: Filter {
                prev: self.steps,
                f,
            },
            _t: PhantomData,
        }
    }

    /// Splits each item into an owned key of any `Hash + Eq + Clone + Send` type and a value of
    /// any `Send` type. **This is where records cross cores** (see [`Pipeline::key_by`]).
    pub fn key_by<F, K, V>(self, key: F) -> Keyed<TypedFront<D, P, F, T>>
    where
        F: FnMut(P::Out) -> (K, V) + Clone + Send + 'static,
        K: Key + 'static,
        V: Send + 'static,
    {
        Keyed {
            fronts: TypedFront {
                decoder: self.decoder,
                steps: self.steps,
                key,
                _t: PhantomData,
            },
        }
    }
}

/// A text source's front half, as the runtime runs it.
pub struct TextFront<P, F, K: ?Sized, V> {
    steps: P,
    key: F,
    _kv: PhantomData<fn(&K) -> V>,
}

impl<P: Clone, F: Clone, K: ?Sized, V> Clone for TextFront<P, F, K, V> {
    fn clone(&self) -> Self {
        TextFront {
            steps: self.steps.clone(),
            key: self.key.clone(),
            _kv: PhantomData,
        }
    }
}

impl<P, F, K, V> Front for TextFront<P, F, K, V>
where
    P: TextStep,
    F: FnMut(&str) -> (&K, V) + Clone + Send + 'static,
    K: ?Sized + Key + 'static,
    V: Send + 'static,
{
    type Key = K;
    type Value = V;

    #[inline]
    fn decode(&mut self, frame: &[u8], route: &mut impl FnMut(&K, V)) -> Result<(), DecodeError> {
        let text = std::str::from_utf8(frame)?;
        let key = &mut self.key;
        self.steps.run(Cow::Borrowed(text), &mut |item| {
            let (k, v) = key(&item);
            route(k, v)
        });
        Ok(())
    }
}

/// A typed source's front half, as the runtime runs it.
pub struct TypedFront<D, P, F, T> {
    decoder: D,
    steps: P,
    key: F,
    _t: PhantomData<fn() -> T>,
}

impl<D: Clone, P: Clone, F: Clone, T> Clone for TypedFront<D, P, F, T> {
    fn clone(&self) -> Self {
        TypedFront {
            decoder: self.decoder.clone(),
            steps: self.steps.clone(),
            key: self.key.clone(),
            _t: PhantomData,
        }
    }
}

impl<D, P, F, T, K, V> Front for TypedFront<D, P, F, T>
where
    D: FnMut(&[u8]) -> Result<T, DecodeError> + Clone + Send + 'static,
    P: TypedStep<T>,
    F: FnMut(P::Out) -> (K, V) + Clone + Send + 'static,
    K: Key + 'static,
    V: Send + 'static,
    T: 'static,
{
    type Key = K;
    type Value = V;

    #[inline]
    fn decode(&mut self, frame: &[u8], route: &mut impl FnMut(&K, V)) -> Result<(), DecodeError> {
        let item = (self.decoder)(frame)?;
        let key = &mut self.key;
        self.steps.run(item, &mut |x| {
            let (k, v) = key(x);
            route(&k, v)
        });
        Ok(())
    }
}

/// Keyed records from one or more sources; next comes their state step.
#[derive(Clone)]
pub struct Keyed<Fr> {
    fronts: Fr,
}

/// The initial state of a key, for [`Keyed::state`]: `S::default()`.
fn default_state<K: ?Sized, S: Default>(_: &K) -> S {
    S::default()
}

impl<Fr: Fronts> Keyed<Fr> {
    /// Feeds `other`'s records into the same state step (Wallaroo's `merge`). Both must make
    /// the same key and value types; for different record types, route an enum. Sources are
    /// numbered in merge order: this pipeline's first, then `other`'s. Each source has its own
    /// decoder and may be of a different kind (TCP, file, memory).
    pub fn merge<G>(self, other: Keyed<G>) -> Keyed<Merge<Fr, G>>
    where
        G: Fronts<Key = Fr::Key, Value = Fr::Value>,
    {
        Keyed {
            fronts: Merge {
                a: self.fronts,
                b: other.fronts,
            },
        }
    }

    /// The state step. Each key has one `S` (created with `S::default()` the first time the
    /// key is seen) on its owner core; `update(key, state, value)` runs there for every record
    /// and returns zero or more outputs (an `Option`, a `Vec`, any `IntoIterator`).
    #[allow(clippy::type_complexity)]
    pub fn state<S, U, R>(
        self,
        update: U,
    ) -> Stateful<Fr, Root, StateSpec<Fr::Key, Fr::Value, S, fn(&Fr::Key) -> S, U>, Identity>
    where
        S: Default + 'static,
        U: FnMut(&Fr::Key, &mut S, Fr::Value) -> R + Clone + Send + 'static,
        R: IntoIterator,
    {
        self.state_with(default_state::<Fr::Key, S> as fn(&Fr::Key) -> S, update)
    }

    /// [`Keyed::state`] with each key's first state made by `init(key)`.
    pub fn state_with<S, I, U, R>(
        self,
        init: I,
        update: U,
    ) -> Stateful<Fr, Root, StateSpec<Fr::Key, Fr::Value, S, I, U>, Identity>
    where
        S: 'static,
        I: FnMut(&Fr::Key) -> S + Clone + Send + 'static,
        U: FnMut(&Fr::Key, &mut S, Fr::Value) -> R + Clone + Send + 'static,
        R: IntoIterator,
    {
        Stateful {
            fronts: self.fronts,
            outer: Root,
            state: StateSpec {
                init,
                update,
                _t: PhantomData,
            },
            steps: Identity,
        }
    }
}

/// A state step as written: its initial-state and update functions.
pub struct StateSpec<K: ?Sized, V, S, I, U> {
    init: I,
    update: U,
    _t: PhantomData<fn(&K, V) -> S>,
}

impl<K: ?Sized, V, S, I: Clone, U: Clone> Clone for StateSpec<K, V, S, I, U> {
    fn clone(&self) -> Self {
        StateSpec {
            init: self.init.clone(),
            update: self.update.clone(),
            _t: PhantomData,
        }
    }
}

impl<K: ?Sized + Key, V, S, I, U> StateSpec<K, V, S, I, U> {
    fn into_stage<T>(self, tail: T) -> StateStage<K, V, S, I, U, T> {
        StateStage {
            shard: Shard::new(),
            init: self.init,
            update: self.update,
            tail,
            _v: PhantomData,
        }
    }
}

/// Builds the state steps before the current one around it, once the pipeline is complete.
pub trait Wrap<C>: Clone + Send + 'static {
    /// The whole chain.
    type Out;
    /// Puts `inner` (the current step and everything after it) behind the earlier steps.
    fn wrap(self, inner: C) -> Self::Out;
}

/// No state step before this one.
#[derive(Clone, Copy, Debug)]
pub struct Root;

impl<C> Wrap<C> for Root {
    type Out = C;
    fn wrap(self, inner: C) -> C {
        inner
    }
}

/// An earlier state step, the steps after it and the `key_by` that leads to the next one.
pub struct Chained<W, St, P, F> {
    outer: W,
    state: St,
    steps: P,
    key: F,
}

impl<W: Clone, St: Clone, P: Clone, F: Clone> Clone for Chained<W, St, P, F> {
    fn clone(&self) -> Self {
        Chained {
            outer: self.outer.clone(),
            state: self.state.clone(),
            steps: self.steps.clone(),
            key: self.key.clone(),
        }
    }
}

impl<C, W, K, V, S, I, U, P, F> Wrap<C> for Chained<W, StateSpec<K, V, S, I, U>, P, F>
where
    C: Chain,
    K: ?Sized + Key + 'static,
    W: Wrap<StateStage<K, V, S, I, U, Forward<P, F, C>>>,
    StateSpec<K, V, S, I, U>: Clone + Send + 'static,
    P: Clone + Send + 'static,
    F: Clone + Send + 'static,
{
    type Out = W::Out;
    fn wrap(self, inner: C) -> W::Out {
        let forward = Forward {
            steps: self.steps,
            key: self.key,
            outbox: Outbox::new(),
            next: inner,
        };
        self.outer.wrap(self.state.into_stage(forward))
    }
}

/// A pipeline with its latest state step; next come stateless steps on its outputs, or the
/// encoder.
pub struct Stateful<Fr, W, St, P> {
    fronts: Fr,
    outer: W,
    state: St,
    steps: P,
}

impl<Fr: Clone, W: Clone, St: Clone, P: Clone> Clone for Stateful<Fr, W, St, P> {
    fn clone(&self) -> Self {
        Stateful {
            fronts: self.fronts.clone(),
            outer: self.outer.clone(),
            state: self.state.clone(),
            steps: self.steps.clone(),
        }
    }
}

/// The output type of a state step: what its update function's return value yields.
type OutOf<U, K, S, V> = <<U as UpdateFn<K, S, V>>::Ret as IntoIterator>::Item;

/// Names a state update function's return type, so later steps can be typed by it.
pub trait UpdateFn<K: ?Sized, S, V> {
    /// What it returns.
    type Ret: IntoIterator;
}

impl<K: ?Sized, S, V, R: IntoIterator, U: FnMut(&K, &mut S, V) -> R> UpdateFn<K, S, V> for U {
    type Ret = R;
}

impl<Fr, W, K, V, S, I, U, P> Stateful<Fr, W, StateSpec<K, V, S, I, U>, P>
where
    Fr: Fronts,
    K: ?Sized + Key + 'static,
    U: UpdateFn<K, S, V>,
    P: TypedStep<OutOf<U, K, S, V>>,
{
    /// Replaces each output of the state step with `f(output)`.
    pub fn map<F, X>(self, f: F) -> Stateful<Fr, W, StateSpec<K, V, S, I, U>, MapTo<P, F, X>>
    where
        F: FnMut(P::Out) -> X + Clone + Send + 'static,
    {
        Stateful {
            fronts: self.fronts,
            outer: self.outer,
            state: self.state,
            steps: MapTo {
                prev: self.steps,
                f,
                _out: PhantomData,
            },
        }
    }

    /// Replaces each output with every item `f` passes to its second argument.
    pub fn flat_map<F, X>(
        self,
        f: F,
    ) -> Stateful<Fr, W, StateSpec<K, V, S, I, U>, FlatMapTo<P, F, X>>
    where
        F: FnMut(P::Out, &mut dyn FnMut(X)) + Clone + Send + 'static,
    {
        Stateful {
            fronts: self.fronts,
            outer: self.outer,
            state: self.state,
            steps: FlatMapTo {
                prev: self.steps,
                f,
                _out: PhantomData,
            },
        }
    }

    /// Keeps the outputs for which `f` is true.
    pub fn filter<F>(self, f: F) -> Stateful<Fr, W, StateSpec<K, V, S, I, U>, Filter<P, F>>
    where
        F: FnMut(&P::Out) -> bool + Clone + Send + 'static,
    {
        Stateful {
            fronts: self.fronts,
            outer: self.outer,
            state: self.state,
            steps: Filter {
                prev: self.steps,
                f,
            },
        }
    }

    /// Keys the outputs again for a further state step. **Records cross cores here again**,
    /// to the owner of the new key.
    pub fn key_by<F, K2, V2>(
        self,
        key: F,
    ) -> KeyedAgain<Fr, Chained<W, StateSpec<K, V, S, I, U>, P, F>, K2, V2>
    where
        F: FnMut(P::Out) -> (K2, V2) + Clone + Send + 'static,
        K2: Key + 'static,
        V2: Send + 'static,
    {
        KeyedAgain {
            fronts: self.fronts,
            outer: Chained {
                outer: self.outer,
                state: self.state,
                steps: self.steps,
                key,
            },
            _kv: PhantomData,
        }
    }
}

impl<Fr, W, K, V, S, I, U> Stateful<Fr, W, StateSpec<K, V, S, I, U>, Identity>
where
    Fr: Fronts,
    K: ?Sized + Key + 'static,
    U: UpdateFn<K, S, V>,
{
    /// The encoder: appends the bytes for one output of the last state step to the sink's
    /// buffer, on the key's owner core. This completes the pipeline.
    pub fn encode<E>(self, encode: E) -> Dataflow<Fr, W, StateSpec<K, V, S, I, U>, E>
    where
        E: FnMut(&K, &OutOf<U, K, S, V>, &mut Vec<u8>) + Clone + Send + 'static,
    {
        Dataflow {
            fronts: self.fronts,
            outer: self.outer,
            state: self.state,
            encode,
            _o: PhantomData,
        }
    }
}

/// Outputs of a state step keyed again; next comes the next state step.
pub struct KeyedAgain<Fr, W, K, V> {
    fronts: Fr,
    outer: W,
    _kv: PhantomData<fn(K, V)>,
}

impl<Fr: Clone, W: Clone, K, V> Clone for KeyedAgain<Fr, W, K, V> {
    fn clone(&self) -> Self {
        KeyedAgain {
            fronts: self.fronts.clone(),
            outer: self.outer.clone(),
            _kv: PhantomData,
        }
    }
}

impl<Fr: Fronts, W, K: Key + 'static, V: Send + 'static> KeyedAgain<Fr, W, K, V> {
    /// The next state step (see [`Keyed::state`]).
    #[allow(clippy::type_complexity)]
    pub fn state<S, U, R>(
        self,
        update: U,
    ) -> Stateful<Fr, W, StateSpec<K, V, S, fn(&K) -> S, U>, Identity>
    where
        S: Default + 'static,
        U: FnMut(&K, &mut S, V) -> R + Clone + Send + 'static,
        R: IntoIterator,
    {
        self.state_with(default_state::<K, S> as fn(&K) -> S, update)
    }

    /// The next state step, with each key's first state made by `init(key)`.
    pub fn state_with<S, I, U, R>(
        self,
        init: I,
        update: U,
    ) -> Stateful<Fr, W, StateSpec<K, V, S, I, U>, Identity>
    where
        S: 'static,
        I: FnMut(&K) -> S + Clone + Send + 'static,
        U: FnMut(&K, &mut S, V) -> R + Clone + Send + 'static,
        R: IntoIterator,
    {
        Stateful {
            fronts: self.fronts,
            outer: self.outer,
            state: StateSpec {
                init,
                update,
                _t: PhantomData,
            },
            steps: Identity,
        }
    }
}

/// A complete pipeline, ready to run on an [`Engine`](crate::Engine).
pub struct Dataflow<Fr, W, St, E> {
    fronts: Fr,
    outer: W,
    state: St,
    encode: E,
    _o: PhantomData<fn()>,
}

impl<Fr: Clone, W: Clone, St: Clone, E: Clone> Clone for Dataflow<Fr, W, St, E> {
    fn clone(&self) -> Self {
        Dataflow {
            fronts: self.fronts.clone(),
            outer: self.outer.clone(),
            state: self.state.clone(),
            encode: self.encode.clone(),
            _o: PhantomData,
        }
    }
}

/// What the runtime needs from a pipeline: each core builds its own running copy. Implemented
/// by complete pipelines ([`Dataflow`]); the runtime is written against this trait only, so
/// word count is one application among others.
pub trait App: Clone + Send + 'static {
    /// The sources' front halves.
    type Fronts: Fronts;
    /// The state steps.
    type Chain: Chain<Key = <Self::Fronts as Fronts>::Key, Value = <Self::Fronts as Fronts>::Value>;
    /// Builds one core's running copy (on that core's thread).
    #[doc(hidden)]
    fn build(self) -> (Self::Fronts, Self::Chain);
}

impl<Fr, W, K, V, S, I, U, R, E> App for Dataflow<Fr, W, StateSpec<K, V, S, I, U>, E>
where
    Fr: Fronts,
    K: ?Sized + Key + 'static,
    V: Send + 'static,
    S: 'static,
    I: FnMut(&K) -> S + Clone + Send + 'static,
    U: FnMut(&K, &mut S, V) -> R + Clone + Send + 'static,
    R: IntoIterator,
    E: Clone + Send + 'static,
    Encoder<E>: Tail<K, R::Item>,
    W: Wrap<StateStage<K, V, S, I, U, Encoder<E>>>,
    W::Out: Chain<Key = Fr::Key, Value = Fr::Value>,
{
    type Fronts = Fr;
    type Chain = W::Out;

    fn build(self) -> (Fr, W::Out) {
        let last = self.state.into_stage(Encoder {
            encode: self.encode,
        });
        (self.fronts, self.outer.wrap(last))
    }
}
