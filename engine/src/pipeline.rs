//! The pipeline API: what a user writes.
//!
//! A pipeline is: a source of frames → UTF-8 decoding → stateless steps ([`Pipeline::map`],
//! [`Pipeline::flat_map`], [`Pipeline::filter`]) → [`Pipeline::key_by`] → a state step
//! ([`Keyed::state`]: one user state per key and a function that updates it) → an encoder
//! ([`Stateful::encode`]) → a sink.
//!
//! Everything before `key_by` runs on the core that read the frame, on text borrowed from the
//! connection's read buffer: items are `Cow<str>`, borrowed unless a step had to build a new
//! string. **`key_by` is where data crosses cores**: the key is hashed once, and the record goes
//! to the core that owns that hash (or stays, if that is this core). The state step and the
//! encoder run on the owner, so all of one key's outputs leave through one sink connection, in
//! order.
//!
//! ```
//! use bettong_engine::Pipeline;
//! use std::borrow::Cow;
//!
//! // Count characters per line label: "label: text" → "label => total chars".
//! let pipeline = Pipeline::text()
//!     .flat_map(|text, emit| text.lines().for_each(|l| emit(Cow::Borrowed(l))))
//!     .filter(|line| line.contains(':'))
//!     .key_by(|line| {
//!         let (label, rest) = line.split_once(':').unwrap_or((line, ""));
//!         (label.trim(), rest.trim().len() as u64)
//!     })
//!     .state(|_label: &str, total: &mut u64, n: u64| {
//!         *total += n;
//!         Some(*total)
//!     })
//!     .encode(|label, total, out| {
//!         out.extend_from_slice(format!("{label} => {total}\n").as_bytes())
//!     });
//! # let _ = pipeline;
//! ```

use std::borrow::Cow;
use std::marker::PhantomData;
use std::str::Utf8Error;

/// A stage of the stateless front half: takes one item and emits zero or more.
///
/// Implemented by the engine's combinators; users build them with [`Pipeline`]'s methods.
pub trait Step: Clone + Send + 'static {
    /// Runs the step on `item`, passing every output to `emit`.
    fn run(&mut self, item: Cow<'_, str>, emit: &mut impl FnMut(Cow<'_, str>));
}

/// The front half's first step: the decoded frame text itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct Identity;

impl Step for Identity {
    #[inline]
    fn run(&mut self, item: Cow<'_, str>, emit: &mut impl FnMut(Cow<'_, str>)) {
        emit(item)
    }
}

/// [`Pipeline::map`].
#[derive(Clone, Debug)]
pub struct Map<P, F> {
    prev: P,
    f: F,
}

impl<P: Step, F> Step for Map<P, F>
where
    F: FnMut(Cow<'_, str>) -> Cow<'_, str> + Clone + Send + 'static,
{
    #[inline]
    fn run(&mut self, item: Cow<'_, str>, emit: &mut impl FnMut(Cow<'_, str>)) {
        let f = &mut self.f;
        self.prev.run(item, &mut |x| emit(f(x)))
    }
}

/// [`Pipeline::flat_map`].
#[derive(Clone, Debug)]
pub struct FlatMap<P, F> {
    prev: P,
    f: F,
}

impl<P: Step, F> Step for FlatMap<P, F>
where
    F: FnMut(Cow<'_, str>, &mut dyn FnMut(Cow<'_, str>)) + Clone + Send + 'static,
{
    #[inline]
    fn run(&mut self, item: Cow<'_, str>, emit: &mut impl FnMut(Cow<'_, str>)) {
        let f = &mut self.f;
        self.prev.run(item, &mut |x| f(x, emit))
    }
}

/// [`Pipeline::filter`].
#[derive(Clone, Debug)]
pub struct Filter<P, F> {
    prev: P,
    f: F,
}

impl<P: Step, F> Step for Filter<P, F>
where
    F: FnMut(&str) -> bool + Clone + Send + 'static,
{
    #[inline]
    fn run(&mut self, item: Cow<'_, str>, emit: &mut impl FnMut(Cow<'_, str>)) {
        let f = &mut self.f;
        self.prev.run(item, &mut |x| {
            if f(&x) {
                emit(x)
            }
        })
    }
}

/// The stateless front half of a pipeline, under construction.
#[derive(Clone, Debug)]
pub struct Pipeline<P> {
    steps: P,
}

impl Pipeline<Identity> {
    /// A pipeline whose frames are UTF-8 text. A frame that is not valid UTF-8 is rejected
    /// whole: none of it reaches the steps, and the engine counts and logs it.
    pub fn text() -> Self {
        Pipeline { steps: Identity }
    }
}

impl<P: Step> Pipeline<P> {
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

    /// Splits each item into a key (a slice of the item) and a value. **This is where records
    /// cross cores:** the key is hashed once and the record is applied on the core that owns the
    /// hash; the key is copied only if it must travel to another core or becomes a new key.
    pub fn key_by<K, V>(self, key: K) -> Keyed<P, K>
    where
        K: FnMut(&str) -> (&str, V) + Clone + Send + 'static,
        V: Copy + Send + 'static,
    {
        Keyed {
            steps: self.steps,
            key,
        }
    }
}

/// A pipeline whose records have been keyed; next comes its state step.
#[derive(Clone, Debug)]
pub struct Keyed<P, K> {
    steps: P,
    key: K,
}

impl<P: Step, K> Keyed<P, K> {
    /// The state step. Each key has one `S` (created with `S::default()` the first time the key
    /// is seen) on its owner core; `update(key, state, value)` runs there for every record and
    /// may return an output for the encoder.
    pub fn state<V, S, O, U>(self, update: U) -> Stateful<P, K, U>
    where
        K: FnMut(&str) -> (&str, V) + Clone + Send + 'static,
        V: Copy + Send + 'static,
        S: Default + 'static,
        U: FnMut(&str, &mut S, V) -> Option<O> + Clone + Send + 'static,
    {
        Stateful {
            steps: self.steps,
            key: self.key,
            update,
        }
    }
}

/// A pipeline with its state step; next comes its encoder.
#[derive(Clone, Debug)]
pub struct Stateful<P, K, U> {
    steps: P,
    key: K,
    update: U,
}

impl<P: Step, K, U> Stateful<P, K, U> {
    /// The encoder: appends the bytes for one output to the sink's buffer.
    pub fn encode<E, V, S, O>(self, encode: E) -> Dataflow<P, K, U, E, V, S, O>
    where
        K: FnMut(&str) -> (&str, V) + Clone + Send + 'static,
        V: Copy + Send + 'static,
        S: Default + 'static,
        O: 'static,
        U: FnMut(&str, &mut S, V) -> Option<O> + Clone + Send + 'static,
        E: FnMut(&str, &O, &mut Vec<u8>) + Clone + Send + 'static,
    {
        Dataflow {
            front: Front {
                steps: self.steps,
                key: self.key,
                _types: PhantomData,
            },
            back: Back {
                update: self.update,
                encode,
                _types: PhantomData,
            },
        }
    }
}

/// A complete pipeline, ready to run on an [`Engine`](crate::Engine).
pub struct Dataflow<P, K, U, E, V, S, O> {
    front: Front<P, K, V>,
    back: Back<U, E, V, S, O>,
}

impl<P: Clone, K: Clone, U: Clone, E: Clone, V, S, O> Clone for Dataflow<P, K, U, E, V, S, O> {
    fn clone(&self) -> Self {
        Dataflow {
            front: self.front.clone(),
            back: self.back.clone(),
        }
    }
}

/// The half of a pipeline that runs where a frame was read: decoding, stateless steps, key_by.
pub struct Front<P, K, V> {
    steps: P,
    key: K,
    _types: PhantomData<fn() -> V>,
}

impl<P: Clone, K: Clone, V> Clone for Front<P, K, V> {
    fn clone(&self) -> Self {
        Front {
            steps: self.steps.clone(),
            key: self.key.clone(),
            _types: PhantomData,
        }
    }
}

/// The half of a pipeline that runs on a key's owner core: the state step and the encoder.
pub struct Back<U, E, V, S, O> {
    update: U,
    encode: E,
    _types: PhantomData<fn(V, S) -> O>,
}

impl<U: Clone, E: Clone, V, S, O> Clone for Back<U, E, V, S, O> {
    fn clone(&self) -> Self {
        Back {
            update: self.update.clone(),
            encode: self.encode.clone(),
            _types: PhantomData,
        }
    }
}

/// The front half as the runtime sees it.
pub trait FrontHalf: 'static {
    /// The value carried with each key across cores.
    type Value: Copy + Send + 'static;

    /// Decodes one frame and passes every keyed record to `route`. A frame that is not valid
    /// UTF-8 is rejected whole, before any record is routed.
    fn decode(
        &mut self,
        frame: &[u8],
        route: &mut impl FnMut(&str, Self::Value),
    ) -> Result<(), Utf8Error>;
}

/// The back half as the runtime sees it.
pub trait BackHalf: 'static {
    /// The value carried with each key across cores.
    type Value: Copy + Send + 'static;
    /// The state kept per key.
    type State: Default + 'static;

    /// Applies one record to its key's state on the owner core, appending any output to `out`.
    /// Returns true when an output was produced.
    fn apply(
        &mut self,
        key: &str,
        state: &mut Self::State,
        value: Self::Value,
        out: &mut Vec<u8>,
    ) -> bool;
}

/// What the runtime needs from a pipeline. Implemented by [`Dataflow`]; the runtime is written
/// against this trait only, so word count is one application among others.
pub trait App: Clone + Send + 'static {
    /// The value carried with each key across cores.
    type Value: Copy + Send + 'static;
    /// The state kept per key.
    type State: Default + 'static;
    /// The part that runs on the decoding core.
    type Front: FrontHalf<Value = Self::Value>;
    /// The part that runs on the owner core.
    type Back: BackHalf<Value = Self::Value, State = Self::State>;

    /// Splits the pipeline into its two halves (each core does this on its own copy).
    fn into_halves(self) -> (Self::Front, Self::Back);
}

impl<P, K, V> FrontHalf for Front<P, K, V>
where
    P: Step,
    K: FnMut(&str) -> (&str, V) + Clone + Send + 'static,
    V: Copy + Send + 'static,
{
    type Value = V;

    #[inline]
    fn decode(&mut self, frame: &[u8], route: &mut impl FnMut(&str, V)) -> Result<(), Utf8Error> {
        let text = std::str::from_utf8(frame)?;
        let key = &mut self.key;
        self.steps.run(Cow::Borrowed(text), &mut |item| {
            let (k, v) = key(&item);
            route(k, v)
        });
        Ok(())
    }
}

impl<U, E, V, S, O> BackHalf for Back<U, E, V, S, O>
where
    V: Copy + Send + 'static,
    S: Default + 'static,
    O: 'static,
    U: FnMut(&str, &mut S, V) -> Option<O> + Clone + Send + 'static,
    E: FnMut(&str, &O, &mut Vec<u8>) + Clone + Send + 'static,
{
    type Value = V;
    type State = S;

    #[inline]
    fn apply(&mut self, key: &str, state: &mut S, value: V, out: &mut Vec<u8>) -> bool {
        match (self.update)(key, state, value) {
            Some(o) => {
                (self.encode)(key, &o, out);
                true
            }
            None => false,
        }
    }
}

impl<P, K, U, E, V, S, O> App for Dataflow<P, K, U, E, V, S, O>
where
    P: Step,
    K: FnMut(&str) -> (&str, V) + Clone + Send + 'static,
    V: Copy + Send + 'static,
    S: Default + 'static,
    O: 'static,
    U: FnMut(&str, &mut S, V) -> Option<O> + Clone + Send + 'static,
    E: FnMut(&str, &O, &mut Vec<u8>) + Clone + Send + 'static,
{
    type Value = V;
    type State = S;
    type Front = Front<P, K, V>;
    type Back = Back<U, E, V, S, O>;

    fn into_halves(self) -> (Self::Front, Self::Back) {
        (self.front, self.back)
    }
}
