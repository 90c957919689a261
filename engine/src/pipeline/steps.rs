//! The stateless steps (map, flat_map, filter) as composable types.
//!
//! Two families. [`TextStep`]s work on text borrowed from the read buffer (`Cow<str>`: borrowed
//! unless a step had to build a new string), which is how word count stays zero-copy.
//! [`TypedStep`]s work on owned values of any type: decoded records, or a state step's outputs
//! in a chained pipeline. Each combinator wraps the one before it, so a chain of steps compiles
//! to one inlined loop. These types are built only by [`Pipeline`](crate::Pipeline)'s methods.

use std::borrow::Cow;
use std::marker::PhantomData;

/// A stage of a text pipeline's front half: takes one item and emits zero or more.
pub trait TextStep: Clone + Send + 'static {
    /// Runs the step on `item`, passing every output to `emit`.
    fn run(&mut self, item: Cow<'_, str>, emit: &mut impl FnMut(Cow<'_, str>));
}

/// A stage over owned values: takes a `T` and emits zero or more [`TypedStep::Out`]s.
pub trait TypedStep<T>: Clone + Send + 'static {
    /// What the step emits.
    type Out;
    /// Runs the step on `item`, passing every output to `emit`.
    fn run(&mut self, item: T, emit: &mut impl FnMut(Self::Out));
}

/// The first step: the item itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct Identity;

impl TextStep for Identity {
    #[inline]
    fn run(&mut self, item: Cow<'_, str>, emit: &mut impl FnMut(Cow<'_, str>)) {
        emit(item)
    }
}

impl<T> TypedStep<T> for Identity {
    type Out = T;
    #[inline]
    fn run(&mut self, item: T, emit: &mut impl FnMut(T)) {
        emit(item)
    }
}

/// `map`.
#[derive(Clone, Debug)]
pub struct Map<P, F> {
    pub(crate) prev: P,
    pub(crate) f: F,
}

impl<P: TextStep, F> TextStep for Map<P, F>
where
    F: FnMut(Cow<'_, str>) -> Cow<'_, str> + Clone + Send + 'static,
{
    #[inline]
    fn run(&mut self, item: Cow<'_, str>, emit: &mut impl FnMut(Cow<'_, str>)) {
        let f = &mut self.f;
        self.prev.run(item, &mut |x| emit(f(x)))
    }
}

/// `map` over owned values (its output type is carried in the type).
#[derive(Debug)]
pub struct MapTo<P, F, U> {
    pub(crate) prev: P,
    pub(crate) f: F,
    pub(crate) _out: PhantomData<fn() -> U>,
}

impl<P: Clone, F: Clone, U> Clone for MapTo<P, F, U> {
    fn clone(&self) -> Self {
        MapTo {
            prev: self.prev.clone(),
            f: self.f.clone(),
            _out: PhantomData,
        }
    }
}

impl<T, P: TypedStep<T>, F, U: 'static> TypedStep<T> for MapTo<P, F, U>
where
    F: FnMut(P::Out) -> U + Clone + Send + 'static,
{
    type Out = U;
    #[inline]
    fn run(&mut self, item: T, emit: &mut impl FnMut(U)) {
        let f = &mut self.f;
        self.prev.run(item, &mut |x| emit(f(x)))
    }
}

/// `flat_map`.
#[derive(Clone, Debug)]
pub struct FlatMap<P, F> {
    pub(crate) prev: P,
    pub(crate) f: F,
}

impl<P: TextStep, F> TextStep for FlatMap<P, F>
where
    F: FnMut(Cow<'_, str>, &mut dyn FnMut(Cow<'_, str>)) + Clone + Send + 'static,
{
    #[inline]
    fn run(&mut self, item: Cow<'_, str>, emit: &mut impl FnMut(Cow<'_, str>)) {
        let f = &mut self.f;
        self.prev.run(item, &mut |x| f(x, emit))
    }
}

/// `flat_map` over owned values.
#[derive(Debug)]
pub struct FlatMapTo<P, F, U> {
    pub(crate) prev: P,
    pub(crate) f: F,
    pub(crate) _out: PhantomData<fn() -> U>,
}

impl<P: Clone, F: Clone, U> Clone for FlatMapTo<P, F, U> {
    fn clone(&self) -> Self {
        FlatMapTo {
            prev: self.prev.clone(),
            f: self.f.clone(),
            _out: PhantomData,
        }
    }
}

impl<T, P: TypedStep<T>, F, U: 'static> TypedStep<T> for FlatMapTo<P, F, U>
where
    F: FnMut(P::Out, &mut dyn FnMut(U)) + Clone + Send + 'static,
{
    type Out = U;
    #[inline]
    fn run(&mut self, item: T, emit: &mut impl FnMut(U)) {
        let f = &mut self.f;
        self.prev.run(item, &mut |x| f(x, emit))
    }
}

/// `filter`.
#[derive(Clone, Debug)]
pub struct Filter<P, F> {
    pub(crate) prev: P,
    pub(crate) f: F,
}

impl<P: TextStep, F> TextStep for Filter<P, F>
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

impl<T, P: TypedStep<T>, F> TypedStep<T> for Filter<P, F>
where
    F: FnMut(&P::Out) -> bool + Clone + Send + 'static,
{
    type Out = P::Out;
    #[inline]
    fn run(&mut self, item: T, emit: &mut impl FnMut(P::Out)) {
        let f = &mut self.f;
        self.prev.run(item, &mut |x| {
            if f(&x) {
                emit(x)
            }
        })
    }
}
